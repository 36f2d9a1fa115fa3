//! cairn's cross-crate tests, in one binary: conformance with real Tempo data, ceremonies and
//! certificates, property tests, and decoder robustness.

mod backfill;
mod catchup;
mod ceremonies;
mod certificates;
mod checkpoint;
mod crash;
mod decoders;
mod devnet;
mod driver;
mod execution;
mod follow;
mod hostile;
mod ledger;
mod properties;
mod rpc;
mod sources;
mod tempo;
mod tip1123;
mod upstream;

#[global_allocator]
static ALLOCATOR: cairn_tests::AllocationMeter = cairn_tests::AllocationMeter;
