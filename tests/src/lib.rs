//! Support for cairn's cross-crate and process tests and benchmarks: everything in
//! [`cairn_testkit`], and running the `cairn` binary ([`process`]).

pub mod process;

pub use cairn_testkit::*;
