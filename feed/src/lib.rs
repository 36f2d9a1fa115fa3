//! The feed: the state of verified finalized blocks a cairn node serves, and the JSON-RPC
//! server (`consensus_*`, `eth_getBlockBy*`, `debug_getRaw*`) that followers and the devnet
//! use. It builds on the verification in `cairn-epoch`; the server itself lands with the devnet.
