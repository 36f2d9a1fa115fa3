//! Wire types of Tempo's `consensus` JSON-RPC namespace, with exactly Tempo's JSON shapes.
//!
//! Nothing in these types is trusted: `epoch`, `view` and `digest` are informational and the
//! verifier recomputes them from the certificate and the block.

use crate::Block;
use alloy_primitives::B256;
use serde::{Deserialize, Serialize};

/// A block with its threshold certificate, as `consensus_getFinalization` returns it.
///
/// `certificate` is the unprefixed hex of the commonware codec encoding of the finalization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertifiedBlock {
    /// Epoch claimed by the server.
    pub epoch: u64,
    /// View claimed by the server.
    pub view: u64,
    /// Block height, when the server knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Block hash claimed by the server.
    pub digest: B256,
    /// Unprefixed hex of the encoded finalization certificate.
    pub certificate: String,
    /// The certified block, when the server includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<Block>,
}

/// A finalization with the block's header only, as `consensus_getFinalizedHeader` returns it
/// and `consensus_subscribeFinalizedHeaders` streams it: what light clients and bridges need
/// to check a header against its epoch's key, without the transactions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertifiedHeader {
    /// The finalization's epoch.
    pub epoch: u64,
    /// Its view.
    pub view: u64,
    /// The block hash it signs.
    pub digest: B256,
    /// Unprefixed hex of the encoded finalization certificate.
    pub certificate: String,
    /// The block's header.
    pub header: crate::TempoHeader,
}

impl CertifiedHeader {
    /// The header-only form of `certified`; `None` when it carries no block.
    pub fn of(certified: &CertifiedBlock) -> Option<Self> {
        let block = certified.block.as_ref()?;
        Some(Self {
            epoch: certified.epoch,
            view: certified.view,
            digest: certified.digest,
            certificate: certified.certificate.clone(),
            header: block.header().clone(),
        })
    }
}

/// A `consensus_event` notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// A block was notarized.
    Notarized {
        /// The notarized block and its certificate.
        #[serde(flatten)]
        block: CertifiedBlock,
        /// Unix milliseconds at which the serving node observed it.
        seen: u64,
    },
    /// A block was finalized.
    Finalized {
        /// The finalized block and its certificate.
        #[serde(flatten)]
        block: CertifiedBlock,
        /// Unix milliseconds at which the serving node observed it.
        seen: u64,
    },
    /// A view was nullified.
    Nullified {
        /// Epoch of the nullified view.
        epoch: u64,
        /// The nullified view.
        view: u64,
        /// Unix milliseconds at which the serving node observed it.
        seen: u64,
    },
}

/// The argument of `consensus_getFinalization`: `"latest"` or `{"height": N}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Query {
    /// The latest finalized block.
    Latest,
    /// The finalized block at this height.
    Height(u64),
}

/// The answer of `consensus_getLatest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsensusState {
    /// The latest finalized block, if any.
    pub finalized: Option<CertifiedBlock>,
    /// The latest notarized block not yet finalized, if any.
    pub notarized: Option<CertifiedBlock>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_shapes_match_tempo() {
        assert_eq!(
            serde_json::to_value(Query::Latest).expect("ser"),
            json!("latest")
        );
        assert_eq!(
            serde_json::to_value(Query::Height(7)).expect("ser"),
            json!({"height": 7})
        );
        let parsed: Query = serde_json::from_value(json!({"height": 42})).expect("parses");
        assert_eq!(parsed, Query::Height(42));
        assert!(serde_json::from_value::<Query>(json!({"height": -1})).is_err());
        assert!(serde_json::from_value::<Query>(json!("earliest")).is_err());
    }

    #[test]
    fn nullified_event_shape_matches_tempo() {
        let event = Event::Nullified {
            epoch: 3,
            view: 9,
            seen: 1_700_000_000_000,
        };
        let value = serde_json::to_value(&event).expect("ser");
        assert_eq!(
            value,
            json!({"type": "nullified", "epoch": 3, "view": 9, "seen": 1_700_000_000_000u64})
        );
        assert_eq!(serde_json::from_value::<Event>(value).expect("de"), event);
    }

    #[test]
    fn finalized_event_flattens_the_certified_block() {
        let event = json!({
            "type": "finalized",
            "epoch": 1, "view": 2, "height": 20,
            "digest": format!("0x{}", "11".repeat(32)),
            "certificate": "abcd",
            "seen": 5
        });
        let parsed: Event = serde_json::from_value(event.clone()).expect("parses");
        let Event::Finalized { block, seen } = &parsed else {
            panic!("expected a finalized event, got {parsed:?}");
        };
        assert_eq!(
            (block.epoch, block.view, block.height, *seen),
            (1, 2, Some(20), 5)
        );
        assert_eq!(block.certificate, "abcd");
        assert!(block.block.is_none());
        assert_eq!(serde_json::to_value(&parsed).expect("ser"), event);
    }

    #[test]
    fn consensus_state_nulls() {
        let state = ConsensusState::default();
        assert_eq!(
            serde_json::to_value(&state).expect("ser"),
            json!({"finalized": null, "notarized": null})
        );
    }
}
