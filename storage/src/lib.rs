//! The on-disk stores of a cairn node, each in commonware-storage: the blocks it serves with
//! their transaction index ([`blocks`]), the execution store that extends the finalized chain
//! one block at a time ([`execution`]), the verified finalizations marshal's archive does not
//! hold ([`anchors`]), the epoch registry with the network identity's history ([`registry`]),
//! and who served each block ([`provenance`]). [`archive`] holds what they share.

pub mod anchors;
pub mod archive;
pub mod blocks;
pub mod execution;
pub mod provenance;
pub mod registry;

pub use anchors::{AnchorStore, open_anchors};
pub use archive::{SharedArchive, StoreContext, StoreError, archive_config, is_damage, page_cache};
pub use blocks::{BlockStore, DEFAULT_TX_INDEX_LIMIT, TxLocation};
