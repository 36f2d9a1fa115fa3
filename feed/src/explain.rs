//! What `cairn_explain` answers: how the block at a height came to be trusted. The follower
//! builds it from what it stored; `cairn explain` prints it.

use cairn_primitives::Digest;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The method that answers an [`Explanation`].
pub const EXPLAIN_METHOD: &str = "cairn_explain";

/// How the block at one height came to be trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The height.
    pub height: u64,
    /// The stored block's hash.
    pub hash: Digest,
    /// What authenticates the block.
    pub authentication: Authentication,
    /// Who served its bytes, and when; `None` when that was not recorded (blocks stored before
    /// provenance was kept, or in the last second before a kill).
    pub bytes: Option<BytesOrigin>,
    /// Where the chain of trust starts.
    pub trust_root: TrustRoot,
}

/// What authenticates a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Authentication {
    /// Its own certificate.
    #[serde(rename_all = "camelCase")]
    Certificate {
        /// The certificate.
        certificate: CertificateTrust,
    },
    /// The parent hash of the block above it, which is authenticated in turn, up to the
    /// nearest block with its own certificate.
    #[serde(rename_all = "camelCase")]
    ParentHash {
        /// The block above, whose parent hash is this block's hash.
        child: u64,
        /// That block's hash.
        child_hash: Digest,
        /// Parent-hash links from this block up to the certified one.
        links: u64,
        /// The nearest certified block above.
        certificate: CertificateTrust,
    },
    /// A block the operator's profile pins by hash (`trustedBlocks`), with no certified block
    /// above it stored yet.
    TrustedBlock,
    /// The genesis block, which the chain profile carries.
    Genesis,
}

/// A verified certificate and the key that verified it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateTrust {
    /// The certified block's height.
    pub height: u64,
    /// The certificate's epoch.
    pub epoch: u64,
    /// The certificate's view.
    pub view: u64,
    /// The threshold public key of the epoch (BLS12-381 G2, 0x-prefixed hex), if known.
    pub identity: Option<String>,
    /// Where that epoch's key came from.
    pub key_from: KeyOrigin,
}

/// Where an epoch's key came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum KeyOrigin {
    /// Epoch 0: the genesis block's DKG outcome.
    GenesisOutcome,
    /// The DKG outcome in the last block of the epoch before.
    #[serde(rename_all = "camelCase")]
    Boundary {
        /// The boundary block's height.
        height: u64,
        /// Its hash, when this node stores it (a checkpoint start proves the keys below the
        /// checkpoint by a boundary walk without storing those blocks).
        hash: Option<Digest>,
    },
}

/// Who served a block's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BytesOrigin {
    /// The upstream's address; `None` when unknown (the checkpoint block).
    pub source: Option<String>,
    /// When they arrived, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How the follower took them: `live`, `catch-up`, `repair`, `backfill` or `checkpoint`.
    pub how: String,
}

/// Where the chain of trust starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TrustRoot {
    /// The genesis block's DKG outcome (epoch 0's key), which the chain profile carries.
    #[serde(rename_all = "camelCase")]
    GenesisOutcome {
        /// Epoch 0's key, if known.
        identity: Option<String>,
    },
    /// A checkpoint, verified with its epoch's key after a walk of the boundary certificates
    /// from the genesis outcome.
    #[serde(rename_all = "camelCase")]
    Checkpoint {
        /// The checkpoint's height.
        height: u64,
        /// Its hash.
        hash: Digest,
        /// Its epoch.
        epoch: u64,
    },
    /// A block the operator's profile pins by hash.
    #[serde(rename_all = "camelCase")]
    TrustedBlock {
        /// Its height.
        height: u64,
        /// Its hash.
        hash: Digest,
    },
}

fn time(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

fn short(identity: Option<&String>) -> String {
    match identity {
        Some(identity) if identity.len() > 18 => format!("{}…", &identity[..18]),
        Some(identity) => identity.clone(),
        None => "unknown".into(),
    }
}

fn certificate_line(out: &mut String, certificate: &CertificateTrust) {
    let _ = writeln!(
        out,
        "  certificate of block {}: epoch {}, view {}, verified with identity {}",
        certificate.height,
        certificate.epoch,
        certificate.view,
        short(certificate.identity.as_ref())
    );
    let _ = match &certificate.key_from {
        KeyOrigin::GenesisOutcome => writeln!(out, "  epoch 0's key: the genesis outcome"),
        KeyOrigin::Boundary { height, hash } => writeln!(
            out,
            "  epoch {}'s key: announced by boundary block {height}{}",
            certificate.epoch,
            hash.map_or_else(
                || " (proved by the checkpoint's boundary walk, not stored here)".into(),
                |hash| format!(" ({hash})")
            )
        ),
    };
}

impl Explanation {
    /// The explanation as lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "block {}", self.height);
        let _ = writeln!(out, "  hash {}", self.hash);
        match &self.authentication {
            Authentication::Certificate { certificate } => {
                let _ = writeln!(out, "authenticated by its own certificate");
                certificate_line(&mut out, certificate);
            }
            Authentication::ParentHash {
                child,
                child_hash,
                links,
                certificate,
            } => {
                let _ = writeln!(
                    out,
                    "authenticated through the hash chain: it is the parent of block {child} ({child_hash}), {links} link{} below certified block {}",
                    if *links == 1 { "" } else { "s" },
                    certificate.height
                );
                certificate_line(&mut out, certificate);
            }
            Authentication::TrustedBlock => {
                let _ = writeln!(out, "authenticated by the profile's trusted blocks");
            }
            Authentication::Genesis => {
                let _ = writeln!(out, "the genesis block the chain profile carries");
            }
        }
        let _ = match &self.bytes {
            Some(bytes) => writeln!(
                out,
                "bytes: {} from {} at {}",
                bytes.how,
                bytes
                    .source
                    .as_deref()
                    .unwrap_or("an upstream not recorded"),
                time(bytes.at_ms)
            ),
            None => writeln!(out, "bytes: source not recorded"),
        };
        let _ = match &self.trust_root {
            TrustRoot::GenesisOutcome { identity } => writeln!(
                out,
                "trust root: the genesis outcome (identity {})",
                short(identity.as_ref())
            ),
            TrustRoot::Checkpoint {
                height,
                hash,
                epoch,
            } => writeln!(
                out,
                "trust root: checkpoint {height} ({hash}, epoch {epoch}), its key walked from the genesis outcome"
            ),
            TrustRoot::TrustedBlock { height, hash } => {
                writeln!(out, "trust root: trusted block {height} ({hash})")
            }
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explanation_round_trips_through_json_and_renders_each_part() {
        let explanation = Explanation {
            height: 7,
            hash: Digest([7; 32].into()),
            authentication: Authentication::ParentHash {
                child: 8,
                child_hash: Digest([8; 32].into()),
                links: 2,
                certificate: CertificateTrust {
                    height: 9,
                    epoch: 1,
                    view: 12,
                    identity: Some("0xabcdef".into()),
                    key_from: KeyOrigin::Boundary {
                        height: 4,
                        hash: None,
                    },
                },
            },
            bytes: Some(BytesOrigin {
                source: Some("ws://127.0.0.1:1".into()),
                at_ms: 1_000,
                how: "catch-up".into(),
            }),
            trust_root: TrustRoot::GenesisOutcome { identity: None },
        };
        let json = serde_json::to_value(&explanation).expect("serializes");
        assert_eq!(json["authentication"]["kind"], "parentHash");
        assert_eq!(
            json["authentication"]["certificate"]["keyFrom"]["kind"],
            "boundary"
        );
        assert_eq!(json["trustRoot"]["kind"], "genesisOutcome");
        let back: Explanation = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, explanation);
        let text = explanation.render();
        assert!(text.contains("parent of block 8"), "{text}");
        assert!(text.contains("2 links below certified block 9"), "{text}");
        assert!(
            text.contains("catch-up from ws://127.0.0.1:1 at 1970-01-01T00:00:01.000Z"),
            "{text}"
        );
        assert!(text.contains("not stored here"), "{text}");
    }
}
