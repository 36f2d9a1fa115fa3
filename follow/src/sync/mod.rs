//! Bulk sync, outside the live path: the checkpoint start ([`checkpoint`]) walks the boundary
//! certificates from the genesis outcome to a verified finalization; catch-up ([`catchup`])
//! authenticates the blocks below a verified finalization through their parent hashes and
//! writes them in batches; backfill ([`backfill`]) runs the same fetch and write pipeline down
//! from a checkpoint; [`trusted`] checks the blocks an operator pins.

pub mod backfill;
pub mod catchup;
pub mod checkpoint;
pub mod trusted;
