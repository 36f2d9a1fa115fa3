//! What `cairn_status` answers, typed: a follower's status snapshot with the evidence found in
//! its datadir, a devnet's own view, or a validator's. The servers serialise it, `cairn status` reads it back
//! and prints it through [`std::fmt::Display`], so a field renamed on one side fails to parse
//! rather than printing 0.

use crate::followers::FollowerView;
use cairn_feed::page::{CeremonyView, CommitteeView};
use cairn_follow::status::FollowerStatus;
use cairn_storage::registry::IdentityChange;
use cairn_validator::status::ValidatorStatus;
use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    fmt::{self, Display, Formatter},
};

/// A node's status, tagged by its `role`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum NodeStatus {
    /// A follower.
    Follower(FollowerReport),
    /// A devnet.
    Devnet(DevnetStatus),
    /// A simplex validator.
    Validator(ValidatorStatus),
}

/// A follower's status and the evidence files of conflicting certificates in its datadir.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FollowerReport {
    /// The newest snapshot.
    #[serde(flatten)]
    pub status: FollowerStatus,
    /// The evidence files found.
    #[serde(default)]
    pub evidence: Vec<EvidenceSummary>,
}

/// One evidence file, as the status reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvidenceSummary {
    /// Its path.
    pub file: String,
    /// The height both blocks claim.
    pub height: u64,
    /// Their epoch.
    pub epoch: u64,
    /// Where the first came from (or why the file could not be read).
    pub first: String,
    /// Where the second came from.
    pub second: String,
}

/// The devnet's own view, answered by `cairn_status` and shown on its status page: the tip
/// (produced, stored and served, so verified, executed and target alike), the newest
/// committees with their ceremonies, and the devnet's own followers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevnetStatus {
    pub chain: String,
    pub epoch_length: u64,
    pub verified_height: u64,
    pub executed_height: u64,
    pub blocks_per_second: f64,
    pub target_height: u64,
    pub history_from: u64,
    pub identities: Vec<IdentityChange>,
    pub epoch: u64,
    pub key_epoch: u64,
    pub committees: VecDeque<CommitteeView>,
    pub ceremonies: VecDeque<CeremonyView>,
    pub followers: Vec<FollowerView>,
}

/// The first 14 and last 10 characters of a long hex string (any text the node sent, so cut
/// by characters, never inside one).
fn short(hex: &str) -> String {
    let chars: Vec<char> = hex.chars().collect();
    if chars.len() > 26 {
        let head: String = chars[..14].iter().collect();
        let tail: String = chars[chars.len() - 10..].iter().collect();
        format!("{head}…{tail}")
    } else {
        hex.to_string()
    }
}

/// The heights, epoch and rate line every node starts with.
#[allow(clippy::too_many_arguments)]
fn heights(
    f: &mut Formatter<'_>,
    role: &str,
    chain: &str,
    executed: u64,
    verified: u64,
    target: u64,
    epoch: u64,
    epoch_length: u64,
    rate: f64,
) -> fmt::Result {
    writeln!(
        f,
        "{role} of {chain} | executed {executed} | verified {verified} | target {target} | lag {} | epoch {epoch} (epochs of {epoch_length}) | {rate:.1} blocks/s",
        target.saturating_sub(executed),
    )
}

fn identities(f: &mut Formatter<'_>, changes: &[IdentityChange]) -> fmt::Result {
    writeln!(f, "identities:")?;
    for change in changes {
        let from = match change.boundary {
            Some(boundary) => format!("boundary {boundary}"),
            None => "genesis".to_string(),
        };
        writeln!(
            f,
            "  epoch {} from {from}: {}",
            change.epoch,
            short(&change.identity)
        )?;
    }
    Ok(())
}

/// The committees and ceremonies a devnet or a validator lists.
fn committees(
    f: &mut Formatter<'_>,
    committees: &VecDeque<CommitteeView>,
    ceremonies: &VecDeque<CeremonyView>,
) -> fmt::Result {
    writeln!(f, "committees:")?;
    for committee in committees {
        writeln!(
            f,
            "  epoch {} (heights {}..={}): threshold {} of {} ({})",
            committee.epoch,
            committee.first_height,
            committee.last_height,
            committee.threshold,
            committee.validators.len(),
            committee.validators.join(", "),
        )?;
    }
    writeln!(f, "ceremonies:")?;
    for ceremony in ceremonies {
        writeln!(
            f,
            "  for epoch {}: {} ({} dealers, {} players)",
            ceremony.for_epoch, ceremony.kind, ceremony.dealers, ceremony.players,
        )?;
    }
    Ok(())
}

/// A validator's status: its heights and place, its certificates and skipped views, then the
/// committees and ceremonies as its finalized boundaries announced them.
fn validator(f: &mut Formatter<'_>, status: &ValidatorStatus) -> fmt::Result {
    writeln!(
        f,
        "validator {} of chain {} | finalized {} | epoch {} (epochs of {}) | {} | {:.1} blocks/s",
        status.index,
        status.chain,
        status.verified_height,
        status.epoch,
        status.epoch_length,
        if status.in_committee {
            "in the committee"
        } else {
            "not in the committee"
        },
        status.blocks_per_second,
    )?;
    writeln!(
        f,
        "key {} | view {} | views skipped {} | certificates for {} of {} blocks served since start",
        short(&status.public_key),
        status.view,
        status.skipped_views,
        status.certified,
        status.served,
    )?;
    identities(f, &status.identities)?;
    committees(f, &status.committees, &status.ceremonies)
}

impl Display for NodeStatus {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::Follower(report) => report.fmt(f),
            Self::Devnet(status) => status.fmt(f),
            Self::Validator(status) => validator(f, status),
        }
    }
}

impl Display for FollowerReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let status = &self.status;
        heights(
            f,
            "follower",
            &status.chain,
            status.executed_height,
            status.verified_height,
            status.target_height,
            status.epoch,
            status.epoch_length,
            status.blocks_per_second,
        )?;
        writeln!(
            f,
            "history from height {} | newest epoch with a key {}",
            status.history_from,
            status
                .key_epoch
                .map_or("none".to_string(), |epoch| epoch.to_string())
        )?;
        identities(f, &status.identities)?;
        self.upstreams(f)?;
        self.certificates(f)?;
        self.rejections_and_damage(f)?;
        if self.evidence.is_empty() {
            writeln!(f, "evidence of conflicting certificates: none")?;
        }
        for found in &self.evidence {
            writeln!(
                f,
                "HALTED: conflicting certificates at height {} (epoch {}) from {} and {}; evidence {}",
                found.height, found.epoch, found.first, found.second, found.file,
            )?;
        }
        Ok(())
    }
}

impl FollowerReport {
    fn upstreams(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let upstreams = &self.status.upstreams;
        let healthy = upstreams.iter().filter(|upstream| upstream.healthy).count();
        writeln!(f, "upstreams {healthy}/{} healthy:", upstreams.len())?;
        for upstream in upstreams {
            let state = if let Some(left) = upstream.quarantined_secs {
                format!("quarantined ({left} s)")
            } else if upstream.healthy {
                "healthy".into()
            } else if upstream.connected {
                "unhealthy".into()
            } else {
                "disconnected".into()
            };
            let latency = upstream
                .latency_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
            writeln!(
                f,
                "  {} {state} | announced {} | latency {latency} | served {} | failed {} | invalid {} | drops {} | calls {}, slowed down {} ({:.1}%)",
                upstream.url,
                upstream.announced_height,
                upstream.served,
                upstream.failed,
                upstream.invalid,
                upstream.disconnects,
                upstream.calls,
                upstream.slowed_down,
                100.0 * upstream.slowed_down as f64 / upstream.calls.max(1) as f64,
            )?;
        }
        Ok(())
    }

    fn certificates(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let certificates = &self.status.certificates;
        writeln!(
            f,
            "certificates ({}): {} of {} served heights have their own ({:.1}%), {} missing | filled {} ({:.1}/s), on demand {}, refused {}",
            certificates.mode,
            certificates.certified,
            certificates.served,
            100.0 * certificates.coverage(),
            certificates.missing,
            certificates.filled,
            certificates.filled_per_second,
            certificates.on_demand,
            certificates.refused,
        )
    }

    fn rejections_and_damage(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let status = &self.status;
        let by_check = status
            .rejected_by_check
            .iter()
            .map(|(check, count)| format!("{check} {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            f,
            "rejected events {}{}",
            status.rejected,
            if by_check.is_empty() {
                String::new()
            } else {
                format!(": {by_check}")
            }
        )?;
        if status.damaged_blocks > 0 {
            writeln!(
                f,
                "damaged blocks on disk {}, fetched again and repaired {}",
                status.damaged_blocks, status.repaired_blocks
            )?;
        }
        if status.damaged_certificates > 0 {
            writeln!(
                f,
                "damaged finalizations on disk {}, fetched again, verified and repaired {}",
                status.damaged_certificates, status.repaired_certificates
            )?;
        }
        Ok(())
    }
}

impl Display for DevnetStatus {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        heights(
            f,
            "devnet",
            &self.chain,
            self.executed_height,
            self.verified_height,
            self.target_height,
            self.epoch,
            self.epoch_length,
            self.blocks_per_second,
        )?;
        identities(f, &self.identities)?;
        committees(f, &self.committees, &self.ceremonies)?;
        writeln!(f, "followers:")?;
        for follower in &self.followers {
            writeln!(
                f,
                "  {} at {} | verified {} | lag {}",
                follower.name,
                follower.rpc.as_deref().unwrap_or("(no rpc yet)"),
                follower.height,
                follower.lag,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        CommitteeView, DevnetStatus, EvidenceSummary, FollowerReport, NodeStatus, ValidatorStatus,
        short,
    };
    use cairn_follow::status::FollowerStatus;

    #[test]
    fn long_values_are_shortened_by_characters() {
        let hex = format!("0x{}", "ab".repeat(48));
        assert_eq!(short(&hex), "0xabababababab…ababababab");
        // Multi-byte characters from a misbehaving node are never cut in half.
        let odd = "é".repeat(40);
        assert_eq!(short(&odd).chars().count(), 25);
        assert_eq!(short("0x12"), "0x12");
    }

    #[test]
    fn a_follower_status_reads_back_as_sent_and_a_renamed_field_fails() {
        let report = FollowerReport {
            status: FollowerStatus {
                chain: "tempo-mainnet".into(),
                executed_height: 41,
                target_height: 45,
                ..FollowerStatus::default()
            },
            evidence: vec![EvidenceSummary {
                file: "evidence-12.json".into(),
                height: 12,
                epoch: 2,
                first: "ws://a".into(),
                second: "ws://b".into(),
            }],
        };
        let sent = serde_json::to_value(NodeStatus::Follower(report)).expect("serialises");
        assert_eq!(sent["role"], "follower");
        assert_eq!(sent["executedHeight"], 41);
        let read: NodeStatus = serde_json::from_value(sent.clone()).expect("reads back");
        let text = read.to_string();
        assert!(
            text.starts_with(
                "follower of tempo-mainnet | executed 41 | verified 0 | target 45 | lag 4 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("HALTED: conflicting certificates at height 12 (epoch 2) from ws://a and ws://b; evidence evidence-12.json"),
            "{text}"
        );
        let mut renamed = sent;
        let object = renamed.as_object_mut().expect("an object");
        let height = object.remove("executedHeight").expect("present");
        object.insert("executed".into(), height);
        assert!(serde_json::from_value::<NodeStatus>(renamed).is_err());
    }

    #[test]
    fn a_devnet_status_reads_back_as_sent() {
        let status = DevnetStatus {
            chain: "cairn-devnet".into(),
            executed_height: 7,
            target_height: 7,
            ..DevnetStatus::default()
        };
        let sent = serde_json::to_value(NodeStatus::Devnet(status)).expect("serialises");
        assert_eq!(sent["role"], "devnet");
        let read: NodeStatus = serde_json::from_value(sent).expect("reads back");
        let text = read.to_string();
        assert!(
            text.starts_with("devnet of cairn-devnet | executed 7 | verified 0 | target 7 | lag 0"),
            "{text}"
        );
        assert!(
            text.contains("committees:\nceremonies:\nfollowers:\n"),
            "{text}"
        );
    }

    #[test]
    fn a_validator_status_reads_back_and_prints_its_place_views_and_committees() {
        let status = ValidatorStatus {
            chain: "1337".into(),
            index: 2,
            public_key: "ab".repeat(32),
            epoch_length: 20,
            verified_height: 45,
            epoch: 2,
            in_committee: true,
            served: 45,
            certified: 44,
            view: 47,
            skipped_views: 2,
            committees: [CommitteeView {
                epoch: 2,
                first_height: 40,
                last_height: 59,
                validators: vec!["0a0b0c0d".into(), "01020304".into()],
                threshold: 2,
                identity: "0x12".into(),
            }]
            .into(),
            ..ValidatorStatus::default()
        };
        let sent = serde_json::to_value(NodeStatus::Validator(status)).expect("serialises");
        assert_eq!(sent["role"], "validator");
        assert_eq!(sent["skippedViews"], 2);
        let read: NodeStatus = serde_json::from_value(sent).expect("reads back");
        let text = read.to_string();
        assert!(
            text.starts_with(
                "validator 2 of chain 1337 | finalized 45 | epoch 2 (epochs of 20) | in the committee"
            ),
            "{text}"
        );
        assert!(
            text.contains("| views skipped 2 | certificates for 44 of 45 "),
            "{text}"
        );
        assert!(
            text.contains("  epoch 2 (heights 40..=59): threshold 2 of 2 (0a0b0c0d, 01020304)"),
            "{text}"
        );
    }
}
