//! What a validator tells about itself on `cairn_status` and its status page: the height it
//! serves, how many of those blocks it holds its own certificate for, the views its chain
//! skipped, whether it sits in the current committee, and the newest committees and ceremonies
//! as the boundary blocks it finalized announce them.
//!
//! [`StatusBoard`] is fed by the serving loop, one finalized block at a time (after the block is
//! stored), so the page never shows a height the validator does not serve.

use crate::{ValidatorBlock, ValidatorEpochInfo};
use alloy_primitives::hex;
use cairn_feed::page::{CeremonyView, CommitteeView, remember_epoch};
use cairn_storage::registry::IdentityChange;
use commonware_codec::Encode as _;
use commonware_consensus::CertifiableBlock as _;
use commonware_cryptography::ed25519::PublicKey;
use commonware_glue::dkg::types::{EpochOutcome, Payload};
use commonware_utils::N3f1;
use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

/// Blocks the rate is measured over (by their proposers' timestamps).
const RATE_WINDOW: usize = 64;

/// A validator's status, as `cairn_status` answers it (under `"role": "validator"`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatorStatus {
    /// The chain, by its EVM chain id.
    pub chain: String,
    /// This validator's position in the pool.
    pub index: usize,
    /// Its ed25519 public key, hex.
    pub public_key: String,
    /// Blocks per epoch.
    pub epoch_length: u64,
    /// The newest finalized height it stores and serves.
    pub verified_height: u64,
    /// The epoch of that height.
    pub epoch: u64,
    /// Whether it is in that epoch's committee (so votes and signs).
    pub in_committee: bool,
    /// Blocks per second over the newest blocks, by their proposers' timestamps.
    pub blocks_per_second: f64,
    /// Blocks served since genesis, genesis excluded.
    pub served: u64,
    /// Of those, the ones stored with their own finalization certificate (the rest were
    /// finalized through a descendant's, and are linked to the chain by their hash).
    pub certified: u64,
    /// The view of the newest block.
    pub view: u64,
    /// Views no block was finalized in, summed over the served blocks (a leader that timed
    /// out, or whose proposal was nullified).
    pub skipped_views: u64,
    /// Every identity the chain's keys have had, from genesis.
    pub identities: Vec<IdentityChange>,
    /// The newest committees, from the boundaries finalized.
    pub committees: VecDeque<CommitteeView>,
    /// The ceremonies that made their keys.
    pub ceremonies: VecDeque<CeremonyView>,
}

/// The first bytes of a validator's key, as the status lists committee members.
fn short_key(key: &PublicKey) -> String {
    hex::encode(&key.encode()[..4])
}

impl ValidatorStatus {
    /// Notes the epoch information `block` carries (genesis' or a boundary's).
    fn announce(&mut self, info: &ValidatorEpochInfo, boundary: Option<u64>) {
        let epoch = info.epoch.get();
        let identity = hex::encode_prefixed(info.output.public().public().encode());
        if self.identities.last().map(|change| &change.identity) != Some(&identity) {
            self.identities.push(IdentityChange {
                epoch,
                boundary,
                identity: identity.clone(),
            });
        }
        let first_height = epoch * self.epoch_length;
        let committee = info.output.players();
        let committee_view = CommitteeView {
            epoch,
            first_height,
            last_height: first_height + self.epoch_length.saturating_sub(1),
            validators: committee.iter().map(short_key).collect(),
            threshold: info.output.quorum::<N3f1>(),
            identity,
        };
        let outcome = match info.outcome {
            EpochOutcome::Success => "success",
            EpochOutcome::Failure => "failure (the previous key carries on)",
        };
        let ceremony = CeremonyView {
            for_epoch: epoch,
            kind: match boundary {
                None => "genesis".to_string(),
                Some(_) => format!("reshare: {outcome}"),
            },
            boundary,
            dealers: info.output.dealers().len(),
            players: committee.len(),
        };
        remember_epoch(
            &mut self.committees,
            &mut self.ceremonies,
            committee_view,
            ceremony,
        );
    }
}

/// The status a validator's serving loop keeps up to date and its RPC server reads.
#[derive(Clone, Debug, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<Board>>,
}

#[derive(Debug, Default)]
struct Board {
    status: ValidatorStatus,
    /// This validator's key, to tell whether it sits in a committee.
    me: Option<PublicKey>,
    /// The committee of each epoch still ahead or current, by epoch.
    committees: VecDeque<(u64, Vec<PublicKey>)>,
    /// (height, proposer's timestamp in milliseconds) of the newest blocks.
    stamps: VecDeque<(u64, u64)>,
}

impl StatusBoard {
    /// A board for validator `index` (key `me`) of chain `chain_id` with epochs of
    /// `epoch_length`.
    pub fn new(chain_id: u64, index: usize, me: PublicKey, epoch_length: u64) -> Self {
        let board = Board {
            status: ValidatorStatus {
                chain: chain_id.to_string(),
                index,
                public_key: hex::encode(me.encode()),
                epoch_length,
                ..ValidatorStatus::default()
            },
            me: Some(me),
            ..Board::default()
        };
        Self {
            inner: Arc::new(Mutex::new(board)),
        }
    }

    /// A copy of the status as it stands.
    pub fn snapshot(&self) -> ValidatorStatus {
        self.lock().status.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Notes that `block` is stored and served, `certified` when with its own finalization.
    pub fn served(&self, block: &ValidatorBlock, certified: bool) {
        let mut board = self.lock();
        let height = block.block().height();
        if height > 0 {
            let context = block.context();
            let view = context.round.view().get();
            board.status.served += 1;
            board.status.certified += u64::from(certified);
            board.status.view = view;
            board.status.skipped_views += view.saturating_sub(context.parent.0.get() + 1);
        }
        board
            .stamps
            .push_back((height, block.block().header().timestamp_millis()));
        if board.stamps.len() > RATE_WINDOW {
            board.stamps.pop_front();
        }
        board.status.blocks_per_second = rate(&board.stamps);
        board.reached(block);
    }

    /// Notes `block`, served before this start: its height and epoch, and what it announces
    /// (the counts and the rate cover only what is served from now on).
    pub fn restored(&self, block: &ValidatorBlock) {
        self.lock().reached(block);
    }
}

impl Board {
    /// Moves the tip to `block`, noting the epoch information it carries.
    fn reached(&mut self, block: &ValidatorBlock) {
        let height = block.block().height();
        let epoch = block.context().round.epoch().get();
        self.status.verified_height = height;
        self.status.epoch = epoch;
        let announced = self.committees.back().map(|(epoch, _)| *epoch);
        if let Some(Payload::EpochInfo(info)) = block.payload_ref()
            && announced.is_none_or(|announced| announced < info.epoch.get())
        {
            self.status.announce(info, (height > 0).then_some(height));
            let members = info.output.players().iter().cloned().collect();
            self.committees.push_back((info.epoch.get(), members));
        }
        while self.committees.len() > 1 && self.committees[1].0 <= epoch {
            self.committees.pop_front();
        }
        self.status.in_committee = match (&self.me, self.committees.front()) {
            (Some(me), Some((at, members))) if *at == epoch => members.contains(me),
            _ => false,
        };
    }
}

/// Blocks per second between the oldest and newest of `stamps`.
fn rate(stamps: &VecDeque<(u64, u64)>) -> f64 {
    match (stamps.front(), stamps.back()) {
        (Some((first, then)), Some((last, now))) if now > then => {
            (last - first) as f64 * 1000.0 / (now - then) as f64
        }
        _ => 0.0,
    }
}
