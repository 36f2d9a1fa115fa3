//! The verified finalizations a follower stored beside marshal's: those catch-up verified
//! (boundaries and tips) and those the certificate fill fetched, by height and block hash.

use crate::archive::{SharedArchive, StoreContext, archive_config, page_cache};
use cairn_epoch::Finalization;
use cairn_primitives::Digest;
use commonware_storage::archive::immutable;

/// The verified finalizations marshal's archive does not hold, by height and block hash.
pub type AnchorStore<E> = SharedArchive<immutable::Archive<E, Digest, Finalization>>;

/// Opens the anchor store in the partitions named after `prefix`.
pub async fn open_anchors<E: StoreContext>(
    context: E,
    prefix: &str,
) -> Result<AnchorStore<E>, commonware_storage::archive::Error> {
    let archive =
        immutable::Archive::init(context, archive_config(prefix, page_cache(), ())).await?;
    Ok(SharedArchive::new(archive))
}
