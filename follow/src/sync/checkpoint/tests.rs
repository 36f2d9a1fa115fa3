//! The checkpoint start against upstreams on loopback: a finalization request answered with
//! another height's (valid) finalization, or a verified chain without a block the operator
//! trusts, is refused naming both, and the checkpoint store holds nothing afterwards; with
//! several upstreams, the walk passes over one that lies or is gone, as every fetch does.

use crate::{
    sync::checkpoint::{self, CheckpointError, CheckpointStore, CheckpointTarget},
    upstream::{ClientConfig, QuarantineConfig, Sources, UpstreamClient, UpstreamError},
};
use cairn_feed::{ChainReader, FeedState, ReadError, RpcConfig};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_testkit::{MemoryChain, TestCommittee, committee_chain};
use commonware_runtime::{Runner as _, Supervisor as _};
use std::sync::Arc;

/// A chain that answers a finalization request for a height with the one at the height `.1`
/// gives, or with none.
#[derive(Clone)]
struct Remapped(MemoryChain, fn(u64) -> Option<u64>);

/// Answers the finalization request for 11 with the one at 12.
fn off_by_one(chain: MemoryChain) -> Remapped {
    Remapped(chain, |height| {
        Some(if height == 11 { height + 1 } else { height })
    })
}

impl ChainReader for Remapped {
    fn finalized_height(&self) -> Option<u64> {
        self.0.finalized_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        match (self.1)(height) {
            Some(height) => self.0.certified_at(height).await,
            None => Ok(None),
        }
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.0.block_at(height).await
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        self.0.block_by_hash(hash).await
    }

    async fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> Result<Option<(Block, usize)>, ReadError> {
        self.0.transaction_by_hash(hash).await
    }
}

/// `chain` in a [`MemoryChain`].
fn memory(chain: &[CertifiedBlock]) -> MemoryChain {
    let memory = MemoryChain::default();
    for certified in chain {
        memory.insert(certified.clone());
    }
    memory
}

/// Runs `test` in a tokio runtime whose storage is a temporary directory.
fn on_disk<F, Fut>(test: F)
where
    F: FnOnce(commonware_runtime::tokio::Context) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let config = commonware_runtime::tokio::Config::new()
        .with_worker_threads(2)
        .with_storage_directory(dir.path());
    commonware_runtime::tokio::Runner::new(config).start(test);
}

/// What a checkpoint test works with: `chain` served on loopback with `config`, a client of
/// it, and an empty checkpoint store.
async fn serving(
    context: &commonware_runtime::tokio::Context,
    chain: impl ChainReader,
    config: RpcConfig,
) -> (
    cairn_feed::RunningServer,
    Arc<UpstreamClient>,
    CheckpointStore<commonware_runtime::tokio::Context>,
) {
    let (server, upstream) = serve(chain, config).await;
    let store = CheckpointStore::open(context.child("checkpoint"), "checkpoint")
        .await
        .expect("store opens");
    (server, upstream, store)
}

/// `chain` served on loopback with `config`, and a client of it.
async fn serve(
    chain: impl ChainReader,
    config: RpcConfig,
) -> (cairn_feed::RunningServer, Arc<UpstreamClient>) {
    let server = cairn_feed::start("127.0.0.1:0", chain, FeedState::default(), config)
        .await
        .expect("server starts");
    let upstream = UpstreamClient::connect(
        &format!("ws://{}", server.local_addr),
        &ClientConfig::default(),
    )
    .await
    .expect("connects");
    (server, Arc::new(upstream))
}

#[test]
fn a_checkpoint_of_another_height_is_refused_and_nothing_is_stored() {
    let committee = TestCommittee::new(b"TEMPO", 51, 4);
    let (profile, chain) = committee_chain(&committee, 12, 5);
    on_disk(|context| async move {
        let (server, upstream, mut store) =
            serving(&context, off_by_one(memory(&chain)), RpcConfig::default()).await;
        let mut rng = rand::rng();
        let err = checkpoint::establish(
            &mut rng,
            &profile,
            &Sources::single("upstream", upstream.clone()),
            &mut store,
            CheckpointTarget::Height(11),
            8,
            &[],
        )
        .await
        .expect_err("another height is refused");
        assert!(
            matches!(
                &err,
                CheckpointError::Upstream(UpstreamError::Invalid(reason))
                    if reason == "block 12 for requested height 11"
            ),
            "{err}"
        );
        assert!(
            store.checkpoint().expect("reads").is_none(),
            "no checkpoint stored"
        );
        assert!(store.ledger().expect("reads").is_none(), "no ledger stored");

        // The honest height is taken.
        let (checkpoint, report) = checkpoint::establish(
            &mut rng,
            &profile,
            &Sources::single("upstream", upstream.clone()),
            &mut store,
            CheckpointTarget::Height(12),
            8,
            &[],
        )
        .await
        .expect("height 12 verifies");
        assert_eq!(checkpoint.height(), 12);
        assert_eq!(report.boundaries, 2, "the boundaries of epochs 0 and 1");
        assert!(store.checkpoint().expect("reads").is_some());
        server.handle.stop().expect("stops");
    });
}

#[test]
fn a_checkpoint_whose_chain_does_not_hold_a_trusted_block_is_refused_and_nothing_is_stored() {
    let committee = TestCommittee::new(b"TEMPO", 52, 4);
    let (profile, chain) = committee_chain(&committee, 40, 5);
    let chain = &chain;
    let hash = |height: u64| {
        chain[height as usize - 1]
            .block
            .as_ref()
            .expect("block")
            .hash()
    };
    let trusted = |height: u64, hash: Digest| cairn_epoch::TrustedBlock { height, hash };
    on_disk(|context| async move {
        let (server, upstream, mut store) =
            serving(&context, memory(chain), RpcConfig::default()).await;
        let mut rng = rand::rng();
        // Block 23 (inside epoch 4, under the boundary at 24), block 24 (a boundary), and the
        // checkpoint itself, each pinned to a hash the chain does not hold there.
        for (height, wrong) in [(23, hash(22)), (24, hash(23)), (37, hash(36))] {
            let err = checkpoint::establish(
                &mut rng,
                &profile,
                &Sources::single("upstream", upstream.clone()),
                &mut store,
                CheckpointTarget::Height(37),
                8,
                &[trusted(height, wrong)],
            )
            .await
            .expect_err("refused");
            assert!(
                matches!(
                    &err,
                    CheckpointError::Trusted(crate::sync::trusted::TrustError::Mismatch { height: at, trusted, chain })
                        if *at == height && *trusted == wrong && *chain == hash(height)
                ),
                "{err}"
            );
            assert!(
                store.checkpoint().expect("reads").is_none(),
                "no checkpoint stored"
            );
            assert!(store.ledger().expect("reads").is_none(), "no ledger stored");
        }

        // The chain's own blocks: the checkpoint is taken; one above it is left to the store.
        let (checkpoint, _) = checkpoint::establish(
            &mut rng,
            &profile,
            &Sources::single("upstream", upstream.clone()),
            &mut store,
            CheckpointTarget::Height(37),
            8,
            &[
                trusted(3, hash(3)),
                trusted(23, hash(23)),
                trusted(37, hash(37)),
                trusted(39, hash(1)),
            ],
        )
        .await
        .expect("on the chain");
        assert_eq!(checkpoint.height(), 37);
        assert!(store.checkpoint().expect("reads").is_some());
        server.handle.stop().expect("stops");
    });
}

/// An upstream that answers as public RPC nodes do: 5 ms away, 20 calls per second, batches of
/// at most 8 calls, `debug_*` refused.
const PUBLIC: cairn_feed::public::PublicNode = cairn_feed::public::PublicNode {
    latency: std::time::Duration::from_millis(5),
    calls_per_second: 20,
    max_batch: 8,
    refuse_debug: true,
};

#[test]
fn through_a_public_node_the_walk_completes_and_blocks_come_in_smaller_batches_without_debug() {
    let committee = TestCommittee::new(b"TEMPO", 53, 4);
    let (profile, chain) = committee_chain(&committee, 120, 5);
    let chain = &chain;
    on_disk(|context| async move {
        let config = RpcConfig {
            public_node: Some(PUBLIC),
            ..RpcConfig::default()
        };
        let (server, upstream, mut store) = serving(&context, memory(chain), config).await;
        let url = format!("ws://{}", server.local_addr);

        // 24 boundaries fetched 8 at a time against a budget of 20 calls per second: calls
        // are refused with -32005 and sent again until the walk completes.
        let mut rng = rand::rng();
        let (checkpoint, report) = checkpoint::establish(
            &mut rng,
            &profile,
            &Sources::single("upstream", upstream.clone()),
            &mut store,
            CheckpointTarget::Latest,
            8,
            &[],
        )
        .await
        .expect("the walk completes");
        assert_eq!((checkpoint.height(), report.boundaries), (120, 24));
        let (calls, refused) = upstream.call_counts();
        assert!(refused > 0, "the budget was hit: {calls} calls");

        // Blocks: the batch of 40 is refused for its size and split down to 8, debug_getRawBlock
        // is refused, and eth_getBlockByNumber batches bring every block, each equal to the
        // chain's.
        let blocks = upstream.get_blocks(41, 80).await.expect("blocks");
        let expected: Vec<Block> = chain[40..80]
            .iter()
            .map(|certified| certified.block.clone().expect("block"))
            .collect();
        assert_eq!(blocks, expected);
        // With a budget under the node's, nothing is refused.
        let paced = UpstreamClient::connect(
            &url,
            &ClientConfig {
                calls_per_second: Some(15),
                ..ClientConfig::default()
            },
        )
        .await
        .expect("connects");
        // The node's budget refills each second: start in a fresh one.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let blocks = paced.get_blocks(1, 16).await.expect("blocks");
        assert_eq!(blocks.len(), 16);
        let (calls, refused) = paced.call_counts();
        assert_eq!(refused, 0, "{calls} calls at 15 per second");
        server.handle.stop().expect("stops");
    });
}

#[test]
fn the_walk_passes_over_an_upstream_that_lies_or_is_gone() {
    let committee = TestCommittee::new(b"TEMPO", 53, 4);
    let (profile, chain) = committee_chain(&committee, 12, 5);
    on_disk(|context| async move {
        let (liar, lying, mut store) =
            serving(&context, off_by_one(memory(&chain)), RpcConfig::default()).await;
        let (gone, stopped) = serve(memory(&chain), RpcConfig::default()).await;
        let (honest, upstream) = serve(memory(&chain), RpcConfig::default()).await;
        gone.handle.stop().expect("stops");
        gone.handle.clone().stopped().await;
        let sources = Sources::new(
            vec![
                ("liar".to_string(), lying),
                ("gone".to_string(), stopped),
                ("honest".to_string(), upstream),
            ],
            QuarantineConfig::default(),
        );
        let (checkpoint, report) = checkpoint::establish(
            &mut rand::rng(),
            &profile,
            &sources,
            &mut store,
            CheckpointTarget::Height(11),
            8,
            &[],
        )
        .await
        .expect("the honest upstream answers");
        assert_eq!((checkpoint.height(), report.to_epoch), (11, 2));
        assert_eq!(checkpoint.block, chain[10].block.clone().expect("block"));
        assert_eq!(
            store
                .checkpoint()
                .expect("reads")
                .map(|stored| stored.height()),
            Some(11)
        );
        let health = sources.book().health();
        assert!(health[0].invalid > 0, "the liar is marked: {:?}", health[0]);
        assert!(health[2].served > 0, "the honest upstream served");
        liar.handle.stop().expect("stops");
        honest.handle.stop().expect("stops");
    });
}

#[test]
fn with_no_upstream_answering_the_refusal_names_each_one_and_nothing_is_stored() {
    let committee = TestCommittee::new(b"TEMPO", 55, 4);
    let (profile, chain) = committee_chain(&committee, 12, 5);
    on_disk(|context| async move {
        let (first, first_client, mut store) =
            serving(&context, memory(&chain), RpcConfig::default()).await;
        let (second, second_client) = serve(memory(&chain), RpcConfig::default()).await;
        let names = [
            format!("ws://{}", first.local_addr),
            format!("ws://{}", second.local_addr),
        ];
        for server in [first, second] {
            server.handle.stop().expect("stops");
            server.handle.clone().stopped().await;
        }
        let sources = Sources::new(
            vec![
                (names[0].clone(), first_client),
                (names[1].clone(), second_client),
            ],
            QuarantineConfig::default(),
        );
        let err = checkpoint::establish(
            &mut rand::rng(),
            &profile,
            &sources,
            &mut store,
            CheckpointTarget::Latest,
            8,
            &[],
        )
        .await
        .expect_err("no upstream answers");
        let CheckpointError::Upstream(UpstreamError::NoneAnswered(each)) = &err else {
            panic!("{err}");
        };
        for name in &names {
            assert!(each.contains(&format!("{name}: ")), "{name} in {err}");
        }
        assert!(
            store.checkpoint().expect("reads").is_none(),
            "no checkpoint"
        );
        assert!(store.ledger().expect("reads").is_none(), "no ledger");
    });
}

#[test]
fn a_walk_cut_short_starts_again_from_the_boundaries_it_verified() {
    // Past the first round of 256 boundaries, so the walk saves once on its way and once more
    // at the boundary it could not fetch.
    const EPOCH_LENGTH: u64 = 2;
    const GAP: u64 = 266 * EPOCH_LENGTH + 1;
    let epochs = 280;
    let committee = TestCommittee::new(b"TEMPO", 54, 4);
    let (profile, chain) = committee_chain(&committee, epochs * EPOCH_LENGTH, EPOCH_LENGTH);
    let target = CheckpointTarget::Height(epochs * EPOCH_LENGTH);
    let gap_epoch = profile.epochs.epoch_of(GAP).get();
    assert!(
        profile.epochs.boundary_height(profile.epochs.epoch_of(GAP)) == Some(GAP),
        "the gap is a boundary"
    );
    let early = cairn_epoch::TrustedBlock {
        height: 3,
        hash: chain[2].block.as_ref().expect("block").hash(),
    };
    on_disk(|context| async move {
        let holed = Remapped(memory(&chain), |height| (height != GAP).then_some(height));
        let (holed, lacking, _) = serving(&context, holed, RpcConfig::default()).await;
        let (server, upstream) = serve(memory(&chain), RpcConfig::default()).await;
        let mut rng = rand::rng();
        // Started again with the same trust: only the boundaries after the stored ones. With a
        // trusted block under the stored boundaries: from genesis, so that block is reached from
        // the boundary just above it.
        for (partition, trusted, resumed) in [("same", vec![], true), ("early", vec![early], false)]
        {
            let mut store = CheckpointStore::open(context.child(partition), partition)
                .await
                .expect("store opens");
            let err = checkpoint::establish(
                &mut rng,
                &profile,
                &Sources::single("upstream", lacking.clone()),
                &mut store,
                target,
                8,
                &[],
            )
            .await
            .expect_err("a boundary is missing");
            assert!(err.to_string().contains(&GAP.to_string()), "{err}");
            assert!(
                store.checkpoint().expect("reads").is_none(),
                "no checkpoint"
            );
            let ledger = store.ledger().expect("reads").expect("the ledger so far");
            let kept = cairn_epoch::IdentityLedger::restore(&profile, ledger)
                .expect("restores")
                .known_through();
            assert_eq!(kept, gap_epoch, "every boundary verified before the gap");

            let (checkpoint, report) = checkpoint::establish(
                &mut rng,
                &profile,
                &Sources::single("upstream", upstream.clone()),
                &mut store,
                target,
                8,
                &trusted,
            )
            .await
            .expect("the walk completes");
            assert_eq!(checkpoint.height(), epochs * EPOCH_LENGTH);
            let from = if resumed { kept } else { 0 };
            assert_eq!(
                (report.from_epoch, report.to_epoch, report.boundaries),
                (from, epochs, epochs - from),
                "{partition}"
            );
        }

        // A trusted block the second round contradicts: refused after the first round was
        // kept, and that is removed too, so the refusal leaves nothing stored.
        let wrong = cairn_epoch::TrustedBlock {
            height: 270 * EPOCH_LENGTH,
            hash: early.hash,
        };
        let mut store = CheckpointStore::open(context.child("refused"), "refused")
            .await
            .expect("store opens");
        let err = checkpoint::establish(
            &mut rng,
            &profile,
            &Sources::single("upstream", upstream.clone()),
            &mut store,
            target,
            8,
            &[wrong],
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, CheckpointError::Trusted(_)), "{err}");
        assert!(
            store.checkpoint().expect("reads").is_none(),
            "no checkpoint"
        );
        assert!(store.ledger().expect("reads").is_none(), "no ledger");
        holed.handle.stop().expect("stops");
        server.handle.stop().expect("stops");
    });
}

#[test]
fn targets_parse() {
    assert_eq!("latest".parse(), Ok(CheckpointTarget::Latest));
    assert_eq!("genesis".parse(), Ok(CheckpointTarget::Genesis));
    assert_eq!("1234".parse(), Ok(CheckpointTarget::Height(1234)));
    assert!("-1".parse::<CheckpointTarget>().is_err());
    assert!("tip".parse::<CheckpointTarget>().is_err());
}
