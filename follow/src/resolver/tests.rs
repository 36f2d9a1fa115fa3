//! The resolver's fetcher against a stand-in upstream, in the deterministic runtime: where each
//! key is answered from, what is checked before an answer is handed to marshal, and how often
//! and how long a failing upstream is asked.

use super::{FetchConfig, UpstreamFetcher};
use crate::upstream::{UpstreamError, UpstreamRequests};
use bytes::Bytes;
use cairn_epoch::decode_certificate;
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::execution::EmbeddedExecution;
use cairn_testkit::{TestCommittee, committee_chain};
use commonware_codec::Encode as _;
use commonware_consensus::{marshal::resolver::handler::Key, types::Height};
use commonware_resolver::opaque::Fetcher as _;
use commonware_runtime::{Clock as _, Runner as _, Supervisor as _, deterministic};
use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

/// An upstream answering from maps, counting every request; a silent one never answers.
#[derive(Clone, Default)]
struct Upstream {
    blocks: Arc<HashMap<Digest, Block>>,
    certified: Arc<HashMap<u64, CertifiedBlock>>,
    silent: bool,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn called(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.silent {
            std::future::pending::<()>().await;
        }
    }
}

impl UpstreamRequests for Upstream {
    async fn get_finalization(&self, height: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.called().await;
        Ok(self.certified.get(&height).cloned())
    }

    async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        self.called().await;
        Ok(self.blocks.get(&digest).cloned())
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.called().await;
        Ok(None)
    }

    async fn get_blocks(&self, _first: u64, _last: u64) -> Result<Vec<Block>, UpstreamError> {
        self.called().await;
        Ok(Vec::new())
    }
}

/// A certified chain of 6 blocks (epochs of 4) and its genesis.
fn chain() -> (Block, Vec<CertifiedBlock>) {
    let committee = TestCommittee::new(b"TEMPO", 3, 4);
    let (profile, chain) = committee_chain(&committee, 6, 4);
    let genesis = Block::header_only(profile.genesis_header.expect("genesis header"));
    (genesis, chain)
}

fn block_of(certified: &CertifiedBlock) -> Block {
    certified.block.clone().expect("with its block")
}

fn config() -> FetchConfig {
    FetchConfig {
        attempt_timeout: Duration::from_secs(2),
        attempts: NonZeroU32::new(3).expect("non-zero"),
        backoff: Duration::from_millis(100),
    }
}

fn finalized(height: u64) -> Key<Digest> {
    Key::Finalized {
        height: Height::new(height),
    }
}

/// Runs `test` with a fetcher over `upstream` and an execution store holding only genesis.
fn with_fetcher<F, Fut>(upstream: Upstream, genesis: Block, test: F)
where
    F: FnOnce(
            deterministic::Context,
            UpstreamFetcher<
                deterministic::Context,
                Upstream,
                EmbeddedExecution<deterministic::Context>,
            >,
        ) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send,
{
    deterministic::Runner::seeded(4).start(|context| async move {
        let execution = EmbeddedExecution::open(context.child("execution"), &genesis)
            .await
            .expect("opens");
        let fetcher = UpstreamFetcher::new(context.child("fetcher"), upstream, execution, config());
        test(context, fetcher).await;
    });
}

#[test]
fn a_block_the_store_holds_is_answered_without_asking_the_upstream() {
    let (genesis, _) = chain();
    let upstream = Upstream::default();
    let asked = upstream.clone();
    let expected = Bytes::from(genesis.encode().to_vec());
    let digest = genesis.hash();
    with_fetcher(upstream, genesis, move |_, fetcher| async move {
        assert_eq!(fetcher.fetch(Key::Block(digest)).await, Some(expected));
        assert_eq!(asked.calls(), 0, "the store answered");
    });
}

#[test]
fn a_block_from_the_upstream_is_handed_on_only_when_its_hash_is_the_one_asked() {
    let (genesis, chain) = chain();
    let (first, second, unknown) = (
        block_of(&chain[0]),
        block_of(&chain[1]),
        block_of(&chain[2]),
    );
    // Honest for the first block; for the second's hash it sends the first block.
    let upstream = Upstream {
        blocks: Arc::new(HashMap::from([
            (first.hash(), first.clone()),
            (second.hash(), first.clone()),
        ])),
        ..Upstream::default()
    };
    let asked = upstream.clone();
    with_fetcher(upstream, genesis, move |context, fetcher| async move {
        assert_eq!(
            fetcher.fetch(Key::Block(first.hash())).await,
            Some(Bytes::from(first.encode().to_vec()))
        );
        assert_eq!(asked.calls(), 1);
        let started = context.current();
        assert_eq!(fetcher.fetch(Key::Block(second.hash())).await, None);
        // Every attempt asked, with the backoff between them (100 ms, then 200 ms).
        assert_eq!(asked.calls(), 1 + 3);
        let waited = context.current().duration_since(started).expect("later");
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        // A hash nobody has: asked each attempt, answered with nothing.
        assert_eq!(fetcher.fetch(Key::Block(unknown.hash())).await, None);
        assert_eq!(asked.calls(), 1 + 3 + 3);
    });
}

#[test]
fn a_finalized_height_comes_with_its_block_and_both_must_match() {
    let (genesis, chain) = chain();
    let honest = chain[2].clone();
    let height = honest.height.expect("height");
    let mut certified = HashMap::from([(height, honest.clone())]);
    // At 4: the block of height 5 with its own certificate (another height than asked).
    let mut other_height = chain[4].clone();
    other_height.height = Some(4);
    certified.insert(4, other_height);
    // At 5: its own block under the certificate of block 6 (the payload is another hash).
    let mut other_payload = chain[4].clone();
    other_payload.certificate = chain[5].certificate.clone();
    certified.insert(5, other_payload);
    // At 6: a certificate that does not decode.
    let mut garbage = chain[5].clone();
    garbage.certificate = "00ff".into();
    certified.insert(6, garbage);
    // At 2: a certificate without its block.
    let mut headless = chain[1].clone();
    headless.block = None;
    certified.insert(2, headless);
    let upstream = Upstream {
        certified: Arc::new(certified),
        ..Upstream::default()
    };
    with_fetcher(upstream, genesis, move |_, fetcher| async move {
        let finalization = decode_certificate(&honest.certificate).expect("decodes");
        let expected = Bytes::from((finalization, block_of(&honest)).encode().to_vec());
        assert_eq!(fetcher.fetch(finalized(height)).await, Some(expected));
        for height in [2, 4, 5, 6, 1] {
            assert_eq!(
                fetcher.fetch(finalized(height)).await,
                None,
                "height {height}"
            );
        }
    });
}

#[test]
fn an_upstream_that_never_answers_costs_each_attempt_its_timeout_and_nothing_more() {
    let (genesis, chain) = chain();
    let upstream = Upstream {
        silent: true,
        ..Upstream::default()
    };
    let asked = upstream.clone();
    let digest = block_of(&chain[0]).hash();
    with_fetcher(upstream, genesis, move |context, fetcher| async move {
        let started = context.current();
        assert_eq!(fetcher.fetch(Key::Block(digest)).await, None);
        let waited = context.current().duration_since(started).expect("later");
        assert_eq!(asked.calls(), 3);
        // Three timeouts of 2 s and the two backoffs between them, and no more.
        let expected = Duration::from_millis(3 * 2_000 + 100 + 200);
        assert!(
            waited >= expected && waited < expected + Duration::from_millis(50),
            "{waited:?}"
        );
    });
}

#[test]
fn a_notarized_key_stays_pending_and_asks_nobody() {
    let (genesis, _) = chain();
    let upstream = Upstream::default();
    let asked = upstream.clone();
    with_fetcher(upstream, genesis, move |context, fetcher| async move {
        let round = commonware_consensus::types::Round::new(
            commonware_consensus::types::Epoch::new(0),
            commonware_consensus::types::View::new(3),
        );
        let fetch = fetcher.fetch(Key::Notarized { round });
        let answered = tokio::select! {
            answer = fetch => Some(answer),
            () = context.sleep(Duration::from_secs(3600)) => None,
        };
        assert_eq!(answered, None, "still pending after an hour");
        assert_eq!(asked.calls(), 0);
    });
}
