#![recursion_limit = "256"]
//! cairn's cross-crate tests, in one binary: conformance with real Tempo data, ceremonies and
//! certificates, property tests, and decoder robustness.

mod ceremonies;
mod certificates;
mod crash;
mod decoders;
mod devnet;
mod follow;
mod hostile;
mod ledger;
mod properties;
mod rpc;
mod sources;
mod tempo;
mod tip1123;

#[global_allocator]
static ALLOCATOR: cairn_tests::AllocationMeter = cairn_tests::AllocationMeter;
