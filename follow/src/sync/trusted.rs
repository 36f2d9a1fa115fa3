//! Blocks an operator trusts at their heights (`--trusted-block`, weak subjectivity). A walk
//! from genesis trusts every committee the chain ever had; a recent block pinned by hash means
//! leaked keys of an old committee cannot certify another history. Before a checkpoint start
//! stores anything, each trusted block at or below the checkpoint is found in the verified
//! chain: the blocks from its height up to the lowest verified block above it (a boundary the
//! walk verified, or the checkpoint) are fetched, linked by their parent hashes, and the one at
//! the trusted height must be the trusted block. Blocks written later (by a catch-up, marshal or
//! the backfill) are checked by the execution store as they are written (see
//! [`cairn_storage::execution::EmbeddedExecution::trust`]).

use cairn_epoch::TrustedBlock;
use cairn_primitives::{Block, Digest};
use std::{collections::BTreeMap, future::Future};

/// Blocks fetched per request while linking a trusted block to a verified one.
const CHUNK: u64 = 1000;

/// Why a trusted block could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The verified chain holds another block at the trusted height.
    #[error(
        "the verified chain holds {chain} at height {height}, not the trusted block {trusted}: refused before anything was stored"
    )]
    Mismatch {
        /// The trusted height.
        height: u64,
        /// The trusted hash.
        trusted: Digest,
        /// The hash the verified chain holds there.
        chain: Digest,
    },
    /// The blocks linking it to a verified block could not be fetched, or did not link.
    #[error("the trusted block at height {height} could not be checked: {reason}")]
    Unchecked {
        /// The trusted height.
        height: u64,
        /// Why.
        reason: String,
    },
}

/// Checks every trusted block at or below the highest of `verified` (heights and hashes of
/// blocks whose certificates verified, in any order): each must be the block the chain under
/// the lowest verified block at or above its height holds there. `fetch(first, last)` returns
/// the blocks of heights `first..=last` from an upstream. Returns how many were checked.
pub async fn check<F, Fut>(
    trusted: &[TrustedBlock],
    verified: &[(u64, Digest)],
    fetch: F,
) -> Result<usize, TrustError>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Result<Vec<Block>, String>>,
{
    let mut verified = verified.to_vec();
    verified.sort_unstable();
    let mut checked = 0;
    for block in trusted {
        let Some(&(anchor_height, anchor_hash)) =
            verified.iter().find(|(height, _)| *height >= block.height)
        else {
            continue;
        };
        let chain = hash_at(block.height, anchor_height, anchor_hash, &fetch).await?;
        if chain != block.hash {
            return Err(TrustError::Mismatch {
                height: block.height,
                trusted: block.hash,
                chain,
            });
        }
        checked += 1;
    }
    Ok(checked)
}

/// The hash of the block at `height` in the chain under the verified block at `anchor_height`
/// hashing to `anchor_hash`: the blocks above `height` are fetched top down, each must hash to
/// what the one above it names as its parent, and the lowest names the hash at `height`.
async fn hash_at<F, Fut>(
    height: u64,
    anchor_height: u64,
    anchor_hash: Digest,
    fetch: &F,
) -> Result<Digest, TrustError>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Result<Vec<Block>, String>>,
{
    let unchecked = |reason: String| TrustError::Unchecked { height, reason };
    // A height and the hash the verified chain holds there.
    let mut known = (anchor_height, anchor_hash);
    while known.0 > height {
        let first = known.0.saturating_sub(CHUNK - 1).max(height + 1);
        let served = fetch(first, known.0).await.map_err(unchecked)?;
        let served: BTreeMap<u64, Block> = served
            .into_iter()
            .map(|block| (block.height(), block))
            .collect();
        for at in (first..=known.0).rev() {
            let block = served
                .get(&at)
                .ok_or_else(|| unchecked(format!("the upstream did not serve block {at}")))?;
            if block.hash() != known.1 {
                return Err(unchecked(format!(
                    "the upstream served block {at} hashing to {}, not {}",
                    block.hash(),
                    known.1
                )));
            }
            known = (at - 1, block.parent());
        }
    }
    Ok(known.1)
}
