//! Hostile inputs, each listed below with the exact rejection it must meet:
//!
//! - events from an upstream, fed to a follower under the deterministic runtime (E1-E17): each is
//!   rejected with its check named, counted against its source, and after all of them marshal's
//!   archives and the execution store themselves (not the serving API) hold none of their blocks
//!   or certificates;
//! - answers to fetches, as the resolver's sources see them (F1-F9): each is refused, with what
//!   was wrong recorded against the source;
//! - bytes off the wire (W1-W7): each fails to decode into anything that could be stored.

use cairn_epoch::{MAX_CERTIFICATE_BYTES, decode_certificate, encode_certificate};
use cairn_feed::FeedState;
use cairn_follow::{
    Engine, EngineConfig, Upstreams,
    upstream::{QuarantineConfig, Sources, UpstreamError, UpstreamRequests, in_process},
};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::execution::ExecutionProvider as _;
use cairn_tests::{MemoryChain, TestCommittee, committee_chain};
use commonware_consensus::{marshal::Identifier, types::Height};
use commonware_runtime::{Clock, Runner, Spawner as _, Supervisor as _, deterministic};
use std::time::Duration;
use tokio::sync::mpsc;

const EPOCH_LENGTH: u64 = 5;

/// `certified` with its block replaced by `block` (the certificate unchanged).
fn with_block(certified: &CertifiedBlock, block: Block) -> CertifiedBlock {
    CertifiedBlock {
        digest: block.hash().0,
        block: Some(block),
        ..certified.clone()
    }
}

/// A copy of `block` with one more millisecond in its timestamp: another hash.
fn sibling(block: &Block) -> Block {
    let (mut header, body) = block.clone().into_parts();
    header.timestamp_millis_part = (header.timestamp_millis_part + 1) % 1000;
    Block::new(header, body).expect("body unchanged")
}

/// A copy of `block` with `extra` as its `extraData`.
fn with_extra(block: &Block, extra: Vec<u8>) -> Block {
    let (mut header, body) = block.clone().into_parts();
    header.inner.extra_data = extra.into();
    Block::new(header, body).expect("body unchanged")
}

/// `certified`'s certificate with the signatures of `other`'s.
fn with_signatures_of(certified: &CertifiedBlock, other: &CertifiedBlock) -> CertifiedBlock {
    let mut finalization = decode_certificate(&certified.certificate).expect("decodes");
    finalization.certificate = decode_certificate(&other.certificate)
        .expect("decodes")
        .certificate;
    CertifiedBlock {
        certificate: encode_certificate(&finalization),
        ..certified.clone()
    }
}

/// The hostile events, each with the text its rejection must contain. The honest chain has 9
/// blocks (epochs 0 and 1); the follower has executed 5 when they arrive.
fn hostile_events(
    committee: &TestCommittee,
    chain: &[CertifiedBlock],
) -> Vec<(&'static str, CertifiedBlock, &'static str)> {
    let six = &chain[5];
    let block6 = six.block.clone().expect("block");
    let block7 = chain[6].block.clone().expect("block");
    let boundary = chain[8].block.clone().expect("block");
    let stranger = TestCommittee::new(&committee.namespace, 77, 4);
    let certificate_bytes = alloy_primitives::hex::decode(&six.certificate).expect("hex");
    let half = alloy_primitives::hex::encode(&certificate_bytes[..certificate_bytes.len() / 2]);
    let outcome = committee.outcome(2, false).to_bytes();
    let certify_boundary = |extra: Vec<u8>| committee.certify(with_extra(&boundary, extra), 1, 9);
    vec![
        (
            "E1 a certificate that is not hex",
            CertifiedBlock {
                certificate: "zz".into(),
                ..six.clone()
            },
            "malformed",
        ),
        (
            "E2 an empty certificate",
            CertifiedBlock {
                certificate: String::new(),
                ..six.clone()
            },
            "malformed",
        ),
        (
            "E3 half a certificate",
            CertifiedBlock {
                certificate: half,
                ..six.clone()
            },
            "malformed",
        ),
        (
            "E4 a certificate with a trailing byte",
            CertifiedBlock {
                certificate: format!("{}00", six.certificate),
                ..six.clone()
            },
            "malformed",
        ),
        (
            "E5 an oversized certificate",
            CertifiedBlock {
                certificate: "00".repeat(MAX_CERTIFICATE_BYTES + 1),
                ..six.clone()
            },
            "malformed",
        ),
        (
            "E6 a certificate without its block",
            CertifiedBlock {
                block: None,
                ..six.clone()
            },
            "malformed",
        ),
        (
            "E7 a sibling block under the certificate",
            with_block(six, sibling(&block6)),
            "digest mismatch",
        ),
        (
            "E8 the next block under this certificate",
            with_block(six, block7.clone()),
            "digest mismatch",
        ),
        (
            "E9 the right committee signing the block in another epoch",
            committee.certify(block6.clone(), 2, 6),
            "epoch mismatch",
        ),
        (
            "E10 another committee signing the block",
            stranger.certify(block6.clone(), 1, 6),
            "bad signature",
        ),
        (
            "E11 the signatures of the previous block's certificate",
            with_signatures_of(six, &chain[4]),
            "bad signature",
        ),
        (
            "E12 the certificate of a sibling, for this block",
            CertifiedBlock {
                certificate: committee.certify(sibling(&block6), 1, 6).certificate,
                ..six.clone()
            },
            "digest mismatch",
        ),
        (
            "E13 a signed boundary whose extraData is no outcome",
            certify_boundary(vec![0xde, 0xad, 0xbe, 0xef]),
            "carries no valid DKG outcome",
        ),
        (
            "E14 a signed boundary with an empty extraData",
            certify_boundary(Vec::new()),
            "carries no valid DKG outcome",
        ),
        (
            "E15 a signed boundary with half an outcome",
            certify_boundary(outcome[..outcome.len() / 2].to_vec()),
            "carries no valid DKG outcome",
        ),
        (
            "E16 a signed boundary announcing the outcome of epoch 5",
            certify_boundary(committee.outcome(5, false).to_bytes()),
            "carries the outcome for epoch 5, expected 2",
        ),
        (
            "E17 a stranger signing a future block",
            stranger.certify(block7, 1, 7),
            "bad signature",
        ),
    ]
}

async fn settle<E: Clock>(context: &E) {
    context.sleep(Duration::from_millis(50)).await;
}

#[test]
fn hostile_events_are_rejected_by_name_and_nothing_reaches_the_stores() {
    let committee = TestCommittee::new(b"TEMPO", 31, 4);
    let (profile, chain) = committee_chain(&committee, 9, EPOCH_LENGTH);
    let hostile = hostile_events(&committee, &chain);
    assert!(hostile.len() >= 17);
    deterministic::Runner::seeded(9).start(|context| async move {
        let (feed, memory) = (FeedState::default(), MemoryChain::default());
        for block in &chain[..5] {
            memory.insert(block.clone());
        }
        let (notifications, receiver) = mpsc::channel(256);
        let (actor, upstream) =
            in_process::init("upstream", 0, feed.clone(), memory, notifications);
        context
            .child("upstream")
            .spawn(|context| actor.run(context));
        let follower: Engine<_> = Engine::init(
            context.child("follower"),
            EngineConfig {
                partition_prefix: "hostile".into(),
                ..EngineConfig::new(profile.clone())
            },
            Upstreams {
                notifications: receiver,
                sources: Sources::single("upstream", upstream),
            },
        )
        .await
        .expect("starts");
        feed.publish_finalized(chain[4].clone());
        crate::follow::executed(&context, &follower, 5).await;
        assert_eq!(*follower.executed.borrow(), 5);

        for (index, (name, event, rejection)) in hostile.iter().enumerate() {
            feed.publish_finalized(event.clone());
            let mut health = follower.sources.health();
            for _ in 0..500 {
                if health[0].invalid as usize > index {
                    break;
                }
                settle(&context).await;
                health = follower.sources.health();
            }
            assert_eq!(health[0].invalid as usize, index + 1, "{name}: counted");
            let recorded = health[0].last_invalid.clone().unwrap_or_default();
            assert!(
                recorded.contains(rejection),
                "{name}: expected `{rejection}`, got `{recorded}`"
            );
            assert_eq!(
                follower.upstream.borrow().rejected as usize,
                index + 1,
                "{name}: rejected"
            );
        }
        settle(&context).await;

        // Nothing of it in the stores themselves.
        assert_eq!(*follower.executed.borrow(), 5, "nothing executed");
        let execution = follower.chain.execution();
        let marshal = follower.chain.marshal();
        assert_eq!(execution.finalized_height(), 5);
        for (name, event, _) in &hostile {
            let Some(block) = &event.block else {
                continue;
            };
            let digest: Digest = block.hash();
            assert!(
                execution
                    .block_by_hash(digest)
                    .await
                    .expect("reads")
                    .is_none(),
                "{name}: in the execution store"
            );
            assert!(
                marshal
                    .get_block(Identifier::Digest(digest))
                    .await
                    .is_none(),
                "{name}: in marshal's archives"
            );
        }
        for height in 6..=9 {
            assert!(
                marshal
                    .get_finalization(Height::new(height))
                    .await
                    .is_none(),
                "no finalization stored at {height}"
            );
            assert!(
                marshal
                    .get_block(Identifier::Height(Height::new(height)))
                    .await
                    .is_none(),
                "no block stored at {height}"
            );
            assert!(
                execution
                    .block_by_number(height)
                    .await
                    .expect("reads")
                    .is_none(),
                "no block executed at {height}"
            );
        }
        // Epoch 2 was never registered from a forged boundary.
        assert!(
            follower
                .provider
                .verifier(commonware_consensus::types::Epoch::new(2))
                .is_none()
        );
    });
}

/// How a scripted source answers every request.
#[derive(Clone)]
enum Answer {
    Block(Box<Block>),
    Finalization(Box<CertifiedBlock>),
    Error(UpstreamError),
}

#[derive(Clone)]
struct Scripted(Answer);

impl UpstreamRequests for Scripted {
    async fn get_finalization(&self, _: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        match &self.0 {
            Answer::Finalization(certified) => Ok(Some(certified.as_ref().clone())),
            Answer::Error(err) => Err(err.clone()),
            Answer::Block(_) => Ok(None),
        }
    }

    async fn get_block(&self, _: Digest) -> Result<Option<Block>, UpstreamError> {
        match &self.0 {
            Answer::Block(block) => Ok(Some(block.as_ref().clone())),
            Answer::Error(err) => Err(err.clone()),
            Answer::Finalization(_) => Ok(None),
        }
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.get_finalization(0).await
    }

    async fn get_blocks(&self, _: u64, _: u64) -> Result<Vec<Block>, UpstreamError> {
        Ok(self
            .get_block(Digest::from([0; 32]))
            .await?
            .into_iter()
            .collect())
    }
}

#[tokio::test]
async fn hostile_fetch_answers_are_refused_and_recorded() {
    let committee = TestCommittee::new(b"TEMPO", 32, 4);
    let (profile, chain) = committee_chain(&committee, 9, EPOCH_LENGTH);
    let three = &chain[2];
    let block3 = three.block.clone().expect("block");
    let stranger = TestCommittee::new(b"TEMPO", 78, 4);
    let verifier = cairn_epoch::FinalizationVerifier::new(
        profile.epochs.clone(),
        profile.scheme_provider(commonware_utils::NZUsize!(8)),
    );
    let requested = block3.hash();
    // Each answer to a request for block 3 (by hash) or finalization 3.
    let cases: Vec<(&str, Answer, bool, &str)> = vec![
        (
            "F1 another block for the hash",
            Answer::Block(Box::new(chain[3].block.clone().expect("block"))),
            false,
            "for requested hash",
        ),
        (
            "F2 a sibling for the hash",
            Answer::Block(Box::new(sibling(&block3))),
            false,
            "for requested hash",
        ),
        (
            "F3 a finalization without its block",
            Answer::Finalization(Box::new(CertifiedBlock {
                block: None,
                ..three.clone()
            })),
            true,
            "without its block",
        ),
        (
            "F4 the finalization of another height",
            Answer::Finalization(Box::new(chain[3].clone())),
            true,
            "block 4 for requested height 3",
        ),
        (
            "F5 a certificate that does not decode",
            Answer::Finalization(Box::new(CertifiedBlock {
                certificate: "0011".into(),
                ..three.clone()
            })),
            true,
            "does not decode",
        ),
        (
            "F6 a certificate signing a sibling",
            Answer::Finalization(Box::new(with_block(three, sibling(&block3)))),
            true,
            "signing",
        ),
        (
            "F7 another committee's certificate",
            Answer::Finalization(Box::new(stranger.certify(block3.clone(), 0, 3))),
            true,
            "bad signature",
        ),
        (
            "F8 the right committee in the wrong epoch",
            Answer::Finalization(Box::new(committee.certify(block3.clone(), 1, 3))),
            true,
            "epoch mismatch",
        ),
        (
            "F9 a block whose body does not match its roots",
            Answer::Error(UpstreamError::MalformedBlock(
                "the transactions do not match the header's transactions root".into(),
            )),
            false,
            "malformed block",
        ),
    ];
    for (name, answer, finalization, rejection) in cases {
        let sources = Sources::new(
            vec![
                ("liar".into(), Scripted(answer)),
                (
                    "empty".into(),
                    Scripted(Answer::Error(UpstreamError::NotConnected)),
                ),
            ],
            QuarantineConfig::default(),
        )
        .with_verifier(verifier.clone());
        sources.book().set_connected(0, true);
        sources.book().announced(0, 9);
        let result = if finalization {
            sources.get_finalization(3).await.map(|got| got.is_some())
        } else {
            sources.get_block(requested).await.map(|got| got.is_some())
        };
        assert!(
            !matches!(result, Ok(true)),
            "{name}: nothing is handed on, got {result:?}"
        );
        let health = sources.book().health();
        assert_eq!(health[0].invalid, 1, "{name}");
        assert!(health[0].quarantined_for.is_some(), "{name}: quarantined");
        let recorded = health[0].last_invalid.clone().unwrap_or_default();
        assert!(
            recorded.contains(rejection),
            "{name}: expected `{rejection}`, got `{recorded}`"
        );
    }
}

#[test]
fn hostile_wire_bytes_do_not_decode() {
    let committee = TestCommittee::new(b"TEMPO", 33, 4);
    let (_, chain) = committee_chain(&committee, 3, EPOCH_LENGTH);
    let certified = chain[1].clone();
    let block = certified.block.clone().expect("block");
    let json = serde_json::to_value(&certified).expect("json");

    // W1: an event notification that is not JSON.
    assert!(serde_json::from_str::<cairn_primitives::Event>("{\"type\":\"finalized\",").is_err());
    // W2: an event of an unknown type.
    assert!(
        serde_json::from_value::<cairn_primitives::Event>(
            serde_json::json!({"type": "confirmed", "seen": 1})
        )
        .is_err()
    );
    // W3: a certified block whose body lost a transaction (its root no longer matches).
    let mut dropped = json.clone();
    dropped["block"]["body"]["transactions"]
        .as_array_mut()
        .expect("transactions")
        .pop();
    let err = serde_json::from_value::<CertifiedBlock>(dropped).expect_err("refused");
    assert!(err.to_string().contains("root"), "{err}");
    // W4: an eth_getBlockByHash answer whose body lost a transaction.
    let mut rpc = serde_json::to_value(cairn_feed::rpc_block(&block, true)).expect("json");
    rpc["transactions"]
        .as_array_mut()
        .expect("transactions")
        .pop();
    let rpc: cairn_feed::RpcBlock = serde_json::from_value(rpc).expect("parses");
    let err = cairn_feed::block_from_rpc(rpc).expect_err("refused");
    assert!(err.to_string().contains("root"), "{err}");
    // W5: an eth_getBlockByHash answer with transaction hashes only.
    let rpc = cairn_feed::rpc_block(&block, false);
    assert!(matches!(
        cairn_feed::block_from_rpc(rpc),
        Err(cairn_feed::RpcBlockError::HashesOnly)
    ));
    // W6: a raw block cut short.
    let raw = block.raw_rlp().expect("body");
    assert!(Block::decode_raw_rlp(&raw[..raw.len() - 1]).is_err());
    // W7: a raw block with a byte of a transaction changed.
    let mut changed = raw.clone();
    let at = changed.len() - 40;
    changed[at] ^= 0x01;
    assert!(
        Block::decode_raw_rlp(&changed).map(|decoded| decoded.hash() == block.hash()) != Ok(true),
        "a changed raw block never decodes to the block"
    );
}
