//! The certificate fill, under the deterministic runtime: after a catch-up through the hash
//! chain every served height gets its own certificate, equal to the devnet's, and so does a
//! follower of that follower; a tampered certificate is refused and never stored, its source
//! held a liar; a source that lacks certificates is asked after the others and never punished;
//! with `on-demand`, only what a client asks for is fetched. `explain` says how each block
//! came to be trusted, before and after its certificate is filled, for a boundary, a block
//! taken live, a backfilled block and a checkpoint start. The background fill waits while the
//! follower is far behind its upstreams.

use cairn_devnet::{Devnet, DevnetConfig};
use cairn_epoch::{ChainProfile, decode_certificate, encode_certificate};
use cairn_feed::{
    ChainReader, Explained, FeedState, ReadError,
    explain::{Authentication, Explanation, KeyOrigin, TrustRoot},
};
use cairn_follow::{
    Engine, EngineConfig, StartFrom, Upstreams,
    certificates::{CertificateMode, CoverageReport, FillConfig},
    engine::EngineContext,
    sync::catchup::CatchUpConfig,
    sync::checkpoint::Checkpoint,
    upstream::{QuarantineConfig, Sources, in_process},
};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use commonware_runtime::{Clock, Runner as _, Spawner as _, Supervisor as _, deterministic};
use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;

const EPOCH_LENGTH: u64 = 4;
const BLOCKS: u64 = 42;
/// Interior heights (not boundaries, not the tip) a lying source tampers with.
const TAMPERED: [u64; 5] = [5, 6, 9, 13, 30];

/// A devnet of [`BLOCKS`] heights in epochs of [`EPOCH_LENGTH`], with a feed whose latest
/// finalization is its tip.
async fn devnet<E: EngineContext>(context: &E) -> (Devnet<E>, ChainProfile, FeedState) {
    let config = DevnetConfig {
        validators: 5,
        committee: 4,
        epoch_length: EPOCH_LENGTH,
        full_dkg_at_epochs: BTreeSet::from([3]),
        ..DevnetConfig::default()
    };
    crate::follow::devnet_from(context, config, BLOCKS).await
}

/// A follower of `chains` (each an in-process upstream over `feed`) that catches up through
/// the hash chain and fills certificates in `mode`.
async fn follow<E: EngineContext, C: ChainReader + Clone>(
    context: &E,
    label: &'static str,
    profile: &ChainProfile,
    feed: &FeedState,
    chains: Vec<C>,
    mode: CertificateMode,
) -> Engine<E> {
    let (notifications, receiver) = mpsc::channel(256);
    let mut requests = Vec::new();
    for (source, chain) in chains.into_iter().enumerate() {
        let name = format!("{label}-upstream-{source}");
        let (actor, handle) = in_process::init(
            name.clone(),
            source,
            feed.clone(),
            chain,
            notifications.clone(),
        );
        context
            .child("upstream")
            .spawn(|context| actor.run(context));
        requests.push((name, handle));
    }
    let config = EngineConfig {
        partition_prefix: format!("follow-{label}"),
        catch_up: CatchUpConfig {
            min_gap: 1,
            ..CatchUpConfig::default()
        },
        certificates: FillConfig {
            mode,
            batch: std::num::NonZeroUsize::new(16).expect("non-zero"),
            ..FillConfig::default()
        },
        ..EngineConfig::new(profile.clone())
    };
    let sources = Sources::new(requests, QuarantineConfig::default());
    cairn_tests::start_follower(context, label, config, receiver, sources).await
}

/// Waits (in simulated time, up to thirty minutes: a liar's quarantines double up to ten
/// minutes each) until `done` holds for `follower`'s coverage.
pub(crate) async fn coverage_until<E: EngineContext + Clock>(
    context: &E,
    follower: &Engine<E>,
    what: &str,
    done: impl Fn(&CoverageReport) -> bool,
) -> CoverageReport {
    for _ in 0..180_000 {
        let report = follower.coverage.report();
        if done(&report) {
            return report;
        }
        context.sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: coverage stuck at {:?}", follower.coverage.report());
}

/// How `follower` explains the block at `height` (it must be served).
async fn explain<E: EngineContext>(follower: &Engine<E>, height: u64) -> Explanation {
    match follower.chain.explain(height).await.expect("explains") {
        Explained::Block(explanation) => *explanation,
        other => panic!("block {height} is not explained: {other:?}"),
    }
}

/// Every height `1..=to` is served with the certificate `reference` serves, read from the
/// follower's stores (nothing fetched).
pub(crate) async fn assert_certificates_equal<E: EngineContext>(
    follower: &Engine<E>,
    reference: &impl ChainReader,
    to: u64,
) {
    for height in 1..=to {
        let stored = follower
            .chain
            .stored_certificate(height)
            .await
            .expect("reads")
            .unwrap_or_else(|| panic!("a certificate is stored at {height}"));
        let theirs = reference
            .certified_at(height)
            .await
            .expect("reads")
            .expect("served");
        assert_eq!(
            encode_certificate(&stored),
            theirs.certificate,
            "certificate {height}"
        );
        let served = follower.chain.certified_at(height).await.expect("reads");
        assert_eq!(served.as_ref(), Some(&theirs), "height {height}");
    }
}

#[test]
fn a_hash_chain_catch_up_is_filled_with_every_certificate_and_so_is_a_follower_of_it() {
    deterministic::Runner::seeded(3).start(|context| async move {
        let (mut devnet, profile, feed) = devnet(&context).await;
        let first = follow(
            &context,
            "first",
            &profile,
            &feed,
            vec![devnet.store().clone()],
            CertificateMode::All,
        )
        .await;
        let caught_up = first
            .caught_up
            .clone()
            .expect("caught up through the hash chain");
        assert_eq!(caught_up.to, BLOCKS);
        // Only the boundaries and the tip were verified on the way.
        assert!(caught_up.certificates < BLOCKS / 2, "{caught_up:?}");

        let report = coverage_until(&context, &first, "first follower", |report| {
            report.served == BLOCKS && report.missing() == 0
        })
        .await;
        assert!(report.filled >= BLOCKS / 2, "{report:?}");
        assert_eq!(report.refused, 0);
        assert_certificates_equal(&first, devnet.store(), BLOCKS).await;

        // A follower of the follower catches up through the hash chain from it and fills from
        // it too.
        let second = follow(
            &context,
            "second",
            &profile,
            &first.feed,
            vec![first.chain.clone()],
            CertificateMode::All,
        )
        .await;
        assert_eq!(
            second.caught_up.as_ref().map(|report| report.to),
            Some(BLOCKS)
        );
        coverage_until(&context, &second, "second follower", |report| {
            report.served == BLOCKS && report.missing() == 0
        })
        .await;
        assert_certificates_equal(&second, devnet.store(), BLOCKS).await;

        // A block taken live: its own certificate came with it, and so did its bytes.
        let produced = devnet.produce_next().await.expect("produces");
        feed.publish_finalized(produced.certified);
        crate::follow::executed(&context, &first, BLOCKS + 1).await;
        let live = explain(&first, BLOCKS + 1).await;
        assert!(matches!(
            &live.authentication,
            Authentication::Certificate { certificate } if certificate.height == BLOCKS + 1
        ));
        let bytes = live.bytes.expect("recorded");
        assert_eq!(
            (bytes.source.as_deref(), bytes.how.as_str()),
            (Some("first-upstream-0"), "live")
        );
        // The second follower's blocks came from the first.
        let bytes = explain(&second, 20).await.bytes.expect("recorded");
        assert_eq!(bytes.source.as_deref(), Some("second-upstream-0"));
    });
}

/// A chain served with altered certificates: when `lies`, those at [`TAMPERED`] heights carry
/// another block's signatures (even heights: they decode and sign the right block, but do not
/// verify) or are another block's certificate (odd heights: valid, for another block); while
/// `lacking` is set, interior heights have none (as on a node that caught up through the hash
/// chain itself).
#[derive(Clone)]
struct Altered<C> {
    inner: C,
    lies: bool,
    lacking: Arc<AtomicBool>,
}

/// Whether `height` is an interior height: not a boundary, not the tip.
fn interior(height: u64) -> bool {
    !(height + 1).is_multiple_of(EPOCH_LENGTH) && height < BLOCKS
}

impl<C: ChainReader> ChainReader for Altered<C> {
    fn finalized_height(&self) -> Option<u64> {
        self.inner.finalized_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        if self.lacking.load(Ordering::Relaxed) && interior(height) {
            return Ok(None);
        }
        let Some(mut certified) = self.inner.certified_at(height).await? else {
            return Ok(None);
        };
        if self.lies && TAMPERED.contains(&height) {
            let other = self.inner.certified_at(height + 1).await?.expect("served");
            if height.is_multiple_of(2) {
                let mut finalization = decode_certificate(&certified.certificate).expect("decodes");
                finalization.certificate = decode_certificate(&other.certificate)
                    .expect("decodes")
                    .certificate;
                certified.certificate = encode_certificate(&finalization);
            } else {
                certified.certificate = other.certificate;
            }
        }
        Ok(Some(certified))
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.inner.block_at(height).await
    }

    async fn raw_block_at(&self, height: u64) -> Result<Option<Vec<u8>>, ReadError> {
        self.inner.raw_block_at(height).await
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        self.inner.block_by_hash(hash).await
    }

    async fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> Result<Option<(Block, usize)>, ReadError> {
        self.inner.transaction_by_hash(hash).await
    }
}

#[test]
fn a_tampered_certificate_is_refused_never_stored_and_its_source_quarantined() {
    deterministic::Runner::seeded(5).start(|context| async move {
        let (devnet, profile, feed) = devnet(&context).await;
        let lacking = Arc::new(AtomicBool::new(true));
        // Source 0 lacks every interior certificate at first; source 1 lies at five heights.
        let honest = Altered {
            inner: devnet.store().clone(),
            lies: false,
            lacking: lacking.clone(),
        };
        let liar = Altered {
            inner: devnet.store().clone(),
            lies: true,
            lacking: Arc::default(),
        };
        let follower = follow(
            &context,
            "tampered",
            &profile,
            &feed,
            vec![honest, liar],
            CertificateMode::All,
        )
        .await;

        // The liar is asked for what the honest source lacks: each tampered certificate is
        // refused, and the liar quarantined for longer each time; everything else is filled
        // from it. The source that lacked certificates is not punished.
        let tampered = TAMPERED.len() as u64;
        let report = coverage_until(&context, &follower, "around the lies", |report| {
            report.served == BLOCKS && report.missing() == tampered && report.refused >= tampered
        })
        .await;
        assert_eq!(report.filled, BLOCKS - 11 - tampered, "{report:?}");
        let health = follower.sources.health();
        assert!(
            health[1].invalid >= 2,
            "the liar is held a liar: {:?}",
            health[1]
        );
        assert!(
            health[1]
                .last_invalid
                .as_deref()
                .is_some_and(|what| what.contains("does not verify")
                    || what.contains("but the block stored there hashes to")),
            "{:?}",
            health[1]
        );
        assert_eq!(
            health[0].invalid, 0,
            "lacking certificates is never punished"
        );
        assert!(health[0].quarantined_for.is_none());
        for height in TAMPERED {
            assert!(
                follower
                    .chain
                    .stored_certificate(height)
                    .await
                    .expect("reads")
                    .is_none(),
                "nothing is stored at {height}"
            );
        }

        // Once the honest source has them, every height is filled, each with the devnet's own
        // certificate (a tampered one stored would differ).
        lacking.store(false, Ordering::Relaxed);
        coverage_until(&context, &follower, "from the honest source", |report| {
            report.missing() == 0
        })
        .await;
        assert_certificates_equal(&follower, devnet.store(), BLOCKS).await;
        let health = follower.sources.health();
        assert_eq!(health[0].invalid, 0);
        assert!(health[0].quarantined_for.is_none());
    });
}

#[test]
fn on_demand_fetches_only_what_a_client_asks_for() {
    deterministic::Runner::seeded(7).start(|context| async move {
        let (devnet, profile, feed) = devnet(&context).await;
        let follower = follow(
            &context,
            "on_demand",
            &profile,
            &feed,
            vec![devnet.store().clone()],
            CertificateMode::OnDemand,
        )
        .await;
        let before = coverage_until(&context, &follower, "classified", |report| {
            report.served == BLOCKS
        })
        .await;
        // Let time pass: nothing is fetched in the background.
        context.sleep(Duration::from_secs(5)).await;
        let idle = follower.coverage.report();
        assert_eq!(idle.filled, 0, "{idle:?}");
        assert_eq!(idle.missing(), before.missing());
        assert!(idle.missing() > BLOCKS / 2, "{idle:?}");

        let height = 10;
        assert!(follower.coverage.is_missing(height));
        // Before its certificate is fetched, block 10 is the parent of block 11, authenticated
        // through the hash chain up to the next certified block (the boundary 11).
        let before = explain(&follower, height).await;
        let block = devnet
            .store()
            .block_at(height)
            .await
            .expect("reads")
            .expect("stored");
        assert_eq!(before.hash, block.hash());
        let Authentication::ParentHash {
            child,
            child_hash,
            links,
            certificate,
        } = &before.authentication
        else {
            panic!("authenticated through the hash chain: {before:?}");
        };
        let above = devnet
            .store()
            .block_at(height + 1)
            .await
            .expect("reads")
            .expect("stored");
        assert_eq!((*child, *child_hash), (height + 1, above.hash()));
        assert_eq!(above.parent(), block.hash());
        assert_eq!((*links, certificate.height), (1, 11));
        assert_eq!(certificate.epoch, 2);
        let boundary = devnet
            .store()
            .block_at(7)
            .await
            .expect("reads")
            .expect("stored");
        assert_eq!(
            certificate.key_from,
            KeyOrigin::Boundary {
                height: 7,
                hash: Some(boundary.hash())
            }
        );
        assert!(
            certificate
                .identity
                .as_deref()
                .is_some_and(|id| id.starts_with("0x"))
        );
        let bytes = before.bytes.clone().expect("the source is recorded");
        assert_eq!(
            (bytes.source.as_deref(), bytes.how.as_str()),
            (Some("on_demand-upstream-0"), "catch-up")
        );
        assert!(matches!(
            before.trust_root,
            TrustRoot::GenesisOutcome { identity: Some(_) }
        ));
        // An interior block further from the next boundary counts its links.
        let Authentication::ParentHash {
            links, certificate, ..
        } = explain(&follower, 8).await.authentication
        else {
            panic!("block 8 is authenticated through the hash chain");
        };
        assert_eq!((links, certificate.height), (3, 11));
        // Boundaries were verified on the way: each has its own certificate; epoch 0's key is
        // the genesis outcome's.
        let Authentication::Certificate { certificate } =
            explain(&follower, 7).await.authentication
        else {
            panic!("boundary 7 has its own certificate");
        };
        assert_eq!((certificate.height, certificate.epoch), (7, 1));
        assert_eq!(
            certificate.key_from,
            KeyOrigin::Boundary {
                height: 3,
                hash: Some(
                    devnet
                        .store()
                        .block_at(3)
                        .await
                        .expect("reads")
                        .expect("stored")
                        .hash()
                )
            }
        );
        let Authentication::Certificate { certificate } =
            explain(&follower, 3).await.authentication
        else {
            panic!("boundary 3 has its own certificate");
        };
        assert_eq!(certificate.key_from, KeyOrigin::GenesisOutcome);
        assert_eq!(
            explain(&follower, 0).await.authentication,
            Authentication::Genesis
        );
        assert_eq!(
            follower.chain.explain(BLOCKS + 1).await.expect("answers"),
            Explained::NotServed
        );
        let served = follower
            .chain
            .certified_at(height)
            .await
            .expect("reads")
            .expect("fetched on demand");
        assert_eq!(
            Some(served),
            devnet.store().certified_at(height).await.expect("reads")
        );
        assert!(
            follower
                .chain
                .stored_certificate(height)
                .await
                .expect("reads")
                .is_some(),
            "stored once fetched"
        );
        let after = follower.coverage.report();
        assert_eq!((after.filled, after.on_demand), (1, 1), "{after:?}");
        assert_eq!(after.missing(), idle.missing() - 1);
        assert!(!follower.coverage.is_missing(height));
        // Once fetched, it is authenticated by its own certificate; its bytes did not change.
        let after = explain(&follower, height).await;
        let Authentication::Certificate { certificate } = &after.authentication else {
            panic!("its own certificate now: {after:?}");
        };
        assert_eq!((certificate.height, certificate.epoch), (height, 2));
        assert_eq!(after.bytes, before.bytes);
        assert_eq!(after.hash, before.hash);
        // Above the tip: nothing is fetched.
        assert!(
            follower
                .chain
                .certified_at(BLOCKS + 5)
                .await
                .expect("reads")
                .is_none()
        );
    });
}

#[test]
fn history_backfilled_under_a_checkpoint_gets_its_certificates_too() {
    deterministic::Runner::seeded(9).start(|context| async move {
        let (devnet, profile, feed) = devnet(&context).await;
        let chain = devnet.store().clone();
        let mut certified = Vec::new();
        for height in 1..=BLOCKS {
            certified.push(
                chain
                    .certified_at(height)
                    .await
                    .expect("reads")
                    .expect("served"),
            );
        }
        let identities = cairn_tests::verify_chain(&profile, &certified);
        // A checkpoint inside epoch 5, whose key the walk to it proved.
        let at = 22;
        let checkpoint = &certified[at as usize - 1];
        let epoch = profile.epochs.epoch_of(at).get();
        let config = EngineConfig {
            partition_prefix: "follow-backfilled".into(),
            start: StartFrom::Checkpoint(Box::new(Checkpoint {
                block: checkpoint.block.clone().expect("block"),
                finalization: decode_certificate(&checkpoint.certificate).expect("decodes"),
                identities: vec![(epoch, identities[&epoch])],
            })),
            backfill: true,
            catch_up: CatchUpConfig {
                min_gap: 1,
                ..CatchUpConfig::default()
            },
            certificates: FillConfig {
                batch: std::num::NonZeroUsize::new(16).expect("non-zero"),
                ..FillConfig::default()
            },
            ..EngineConfig::new(profile.clone())
        };
        let (notifications, receiver) = mpsc::channel(256);
        let (actor, requests) = in_process::init("devnet", 0, feed.clone(), chain, notifications);
        context
            .child("upstream")
            .spawn(|context| actor.run(context));
        let follower = Engine::init(
            context.child("follower"),
            config,
            Upstreams {
                notifications: receiver,
                sources: Sources::single("devnet", requests),
            },
        )
        .await
        .expect("the follower starts");
        // The history under the checkpoint is served, each height with its own certificate,
        // verified with keys read from the backfilled boundary blocks.
        coverage_until(&context, &follower, "the backfilled history", |report| {
            report.served == BLOCKS && report.missing() == 0
        })
        .await;
        assert_eq!(
            ChainReader::first_height(&follower.chain),
            0,
            "backfilled to genesis"
        );
        assert_certificates_equal(&follower, devnet.store(), BLOCKS).await;

        // The checkpoint block: its own certificate, its bytes taken at the checkpoint start,
        // and the checkpoint as the root of trust of every block.
        let explained = explain(&follower, at).await;
        assert!(matches!(
            &explained.authentication,
            Authentication::Certificate { certificate } if certificate.height == at
        ));
        let bytes = explained.bytes.expect("recorded");
        assert_eq!((bytes.source, bytes.how.as_str()), (None, "checkpoint"));
        let root = TrustRoot::Checkpoint {
            height: at,
            hash: checkpoint.block.as_ref().expect("block").hash(),
            epoch,
        };
        assert_eq!(explained.trust_root, root);
        // A backfilled block: fetched by the backfill from the devnet.
        let backfilled = explain(&follower, 5).await;
        let bytes = backfilled.bytes.expect("recorded");
        assert_eq!(
            (bytes.source.as_deref(), bytes.how.as_str()),
            (Some("devnet"), "backfill")
        );
        assert_eq!(backfilled.trust_root, root);
        assert_eq!(
            backfilled.hash,
            devnet
                .store()
                .block_at(5)
                .await
                .expect("reads")
                .expect("stored")
                .hash()
        );
        // Above the checkpoint: caught up from the devnet.
        let above = explain(&follower, at + 3).await;
        assert_eq!(above.bytes.expect("recorded").how, "catch-up");
        assert_eq!(above.trust_root, root);
    });
}

/// A chain that shows its blocks only up to `visible` and, until `certificates` is set, only
/// the certificate of its visible tip (as a node that caught up through the hash chain, and
/// then fell behind, would).
#[derive(Clone)]
struct Gated<C> {
    inner: C,
    visible: Arc<std::sync::atomic::AtomicU64>,
    certificates: Arc<AtomicBool>,
}

impl<C: ChainReader> Gated<C> {
    fn shows(&self, height: u64) -> bool {
        height <= self.visible.load(Ordering::Relaxed)
    }
}

impl<C: ChainReader + Clone> ChainReader for Gated<C> {
    fn finalized_height(&self) -> Option<u64> {
        let visible = self.visible.load(Ordering::Relaxed);
        self.inner
            .finalized_height()
            .map(|height| height.min(visible))
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        let tip = self.finalized_height().unwrap_or_default();
        if !self.shows(height) || (height < tip && !self.certificates.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        self.inner.certified_at(height).await
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        if !self.shows(height) {
            return Ok(None);
        }
        self.inner.block_at(height).await
    }

    async fn raw_block_at(&self, height: u64) -> Result<Option<Vec<u8>>, ReadError> {
        if !self.shows(height) {
            return Ok(None);
        }
        self.inner.raw_block_at(height).await
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        let block = self.inner.block_by_hash(hash).await?;
        Ok(block.filter(|block| self.shows(block.height())))
    }

    async fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> Result<Option<(Block, usize)>, ReadError> {
        self.inner.transaction_by_hash(hash).await
    }
}

#[test]
fn the_background_fill_waits_while_the_follower_is_far_behind_and_resumes_once_it_is_not() {
    deterministic::Runner::seeded(11).start(|context| async move {
        // One long epoch, so that an event far ahead verifies with the key already known.
        let config = DevnetConfig {
            validators: 5,
            committee: 4,
            epoch_length: 1_000,
            ..DevnetConfig::default()
        };
        let (mut devnet, profile, feed) =
            crate::follow::devnet_from(&context, config, BLOCKS).await;
        let visible = Arc::new(std::sync::atomic::AtomicU64::new(BLOCKS));
        let certificates = Arc::new(AtomicBool::new(false));
        let upstream = Gated {
            inner: devnet.store().clone(),
            visible: visible.clone(),
            certificates: certificates.clone(),
        };
        let follower = follow(
            &context,
            "behind",
            &profile,
            &feed,
            vec![upstream],
            CertificateMode::All,
        )
        .await;
        let missing = coverage_until(&context, &follower, "classified", |report| {
            report.served == BLOCKS
        })
        .await
        .missing();
        assert!(missing > BLOCKS / 2, "{missing}");

        // The chain moves 40 heights on; the upstream announces the newest but serves none of
        // the blocks in between yet: the follower is 40 heights behind.
        let ahead = BLOCKS + 40;
        let mut newest = None;
        while devnet.next_height() <= ahead {
            newest = Some(devnet.produce_next().await.expect("produces").certified);
        }
        feed.publish_finalized(newest.expect("produced"));
        for _ in 0..6_000 {
            let announced = follower
                .sources
                .health()
                .iter()
                .map(|source| source.announced_height)
                .max();
            if announced == Some(ahead) {
                break;
            }
            context.sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*follower.executed.borrow(), BLOCKS);
        // The certificates are there now, but the fill leaves the upstream's budget to the
        // gap: over a minute (twice the longest pause between empty batches) it fetches none.
        certificates.store(true, Ordering::Relaxed);
        context.sleep(Duration::from_secs(60)).await;
        let waiting = follower.coverage.report();
        assert_eq!(waiting.filled, 0, "{waiting:?}");
        assert_eq!(waiting.missing(), missing);

        // Once the blocks are served, the follower closes the gap and the fill resumes.
        visible.store(ahead, Ordering::Relaxed);
        crate::follow::executed(&context, &follower, ahead).await;
        let report = coverage_until(&context, &follower, "after the gap", |report| {
            report.served == ahead && report.missing() == 0
        })
        .await;
        assert!(report.filled >= missing, "{report:?}");
    });
}
