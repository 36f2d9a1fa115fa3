//! Property tests: headers round-trip through RLP and JSON, blocks with real signed
//! transactions through the storage codec, raw RLP and JSON, and a body that does not match its
//! header's roots is refused.

use alloy_consensus::proofs::calculate_transaction_root;
use alloy_primitives::{Address, B64, B256, Bloom, Bytes, U256};
use cairn_devnet::transactions::TransactionFactory;
use cairn_primitives::{
    Block, BlockCodecConfig, BlockError, BlockHeader as _, Body, HeaderExt as _, ProposerKey,
    TempoConsensusContext, TempoHeader, TempoTxEnvelope,
};
use commonware_codec::{Decode, Encode};
use commonware_cryptography::{Signer as _, ed25519::PrivateKey};
use proptest::prelude::*;

fn b256() -> impl Strategy<Value = B256> {
    any::<[u8; 32]>().prop_map(B256::from)
}

prop_compose! {
    fn header()(
        numbers in any::<[u64; 8]>(),
        hashes in proptest::collection::vec(b256(), 9),
        beneficiary in any::<[u8; 20]>(),
        bloom in proptest::collection::vec(any::<u8>(), 256),
        difficulty in any::<[u8; 32]>(),
        nonce in any::<[u8; 8]>(),
        extra in proptest::collection::vec(any::<u8>(), 0..300),
        fork_level in 0usize..=6,
        context in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>())),
    ) -> TempoHeader {
        let inner = alloy_consensus::Header {
            parent_hash: hashes[0],
            ommers_hash: hashes[1],
            beneficiary: Address::from(beneficiary),
            state_root: hashes[2],
            transactions_root: hashes[3],
            receipts_root: hashes[4],
            logs_bloom: Bloom::from_slice(&bloom),
            difficulty: U256::from_be_bytes(difficulty),
            number: numbers[3],
            gas_limit: numbers[4],
            gas_used: numbers[5],
            timestamp: numbers[6],
            extra_data: Bytes::from(extra),
            mix_hash: hashes[5],
            nonce: B64::from(nonce),
            // Optional fields appear in fork order: each one present only if all before it are.
            base_fee_per_gas: (fork_level >= 1).then_some(numbers[7]),
            withdrawals_root: (fork_level >= 2).then_some(hashes[6]),
            blob_gas_used: (fork_level >= 3).then_some(numbers[0] / 2),
            excess_blob_gas: (fork_level >= 3).then_some(numbers[1] / 2),
            parent_beacon_block_root: (fork_level >= 4).then_some(hashes[7]),
            requests_hash: (fork_level >= 5).then_some(hashes[8]),
            ..Default::default()
        };
        TempoHeader {
            general_gas_limit: numbers[0],
            shared_gas_limit: numbers[1],
            timestamp_millis_part: numbers[2],
            inner,
            consensus_context: context.map(|(epoch, view, parent_view, seed)| TempoConsensusContext {
                epoch, view, parent_view, proposer: proposer(seed),
            }),
        }
    }
}

/// A valid ed25519 proposer key (Tempo's header decoder checks the point).
fn proposer(seed: u64) -> ProposerKey {
    let key = PrivateKey::from_seed(seed).public_key();
    ProposerKey::try_from(B256::from_slice(&commonware_codec::Encode::encode(&key)))
        .expect("an ed25519 key is a valid proposer")
}

/// Real signed transactions of every type the devnet makes, picked from its first 200 heights.
fn transactions() -> impl Strategy<Value = Vec<TempoTxEnvelope>> {
    proptest::collection::vec((1u64..200, 0usize..3), 0..8).prop_map(|picks| {
        let factory = TransactionFactory::new(1337, 1_000_000_000);
        picks
            .into_iter()
            .map(|(height, index)| factory.transactions(height).expect("signs")[index].clone())
            .collect()
    })
}

/// A body of `transactions` whose header commits to it (transactions root, no ommers, and the
/// empty withdrawals list when the header has a withdrawals root).
fn body_for(header: &mut TempoHeader, transactions: Vec<TempoTxEnvelope>) -> Body {
    let body = Body {
        withdrawals: header.inner.withdrawals_root.map(|_| Default::default()),
        ommers: Vec::new(),
        transactions,
    };
    header.inner.transactions_root = calculate_transaction_root(&body.transactions);
    header.inner.ommers_hash = body.calculate_ommers_root();
    header.inner.withdrawals_root = body.calculate_withdrawals_root();
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn header_rlp_round_trip(header in header()) {
        let rlp = header.rlp();
        prop_assert_eq!(rlp.len(), header.rlp_len());
        let decoded = TempoHeader::decode_rlp(&rlp).expect("own encoding decodes");
        prop_assert_eq!(decoded.digest(), header.digest());
        prop_assert_eq!(decoded, header);
    }

    #[test]
    fn header_json_round_trip(header in header()) {
        let json = serde_json::to_string(&header).expect("serializes");
        let decoded: TempoHeader = serde_json::from_str(&json).expect("parses");
        prop_assert_eq!(decoded, header);
    }

    #[test]
    fn block_codec_and_json_round_trip(mut header in header(), txs in transactions(), with_body in any::<bool>()) {
        let body = body_for(&mut header, txs);
        let block = Block::new(header, with_body.then_some(body)).expect("roots match");
        // What commonware's marshal sees of the block.
        prop_assert_eq!(commonware_consensus::Heightable::height(&block).get(), block.header().number());
        prop_assert_eq!(commonware_consensus::Block::parent(&block).0, block.header().inner.parent_hash);
        let encoded = block.encode();
        let decoded = Block::decode_cfg(encoded, &BlockCodecConfig::default()).expect("decodes");
        prop_assert_eq!(decoded.hash(), block.hash());
        prop_assert_eq!(&decoded, &block);

        let json = serde_json::to_string(&block).expect("serializes");
        let parsed: Block = serde_json::from_str(&json).expect("parses");
        prop_assert_eq!(&parsed, &block);

        // The raw form execution clients serve (`debug_getRawBlock`). A block known by its
        // header only has one when the header commits to an empty body, and it is that body.
        if let Some(raw) = block.raw_rlp() {
            let decoded = Block::decode_raw_rlp(&raw).expect("own raw block decodes");
            prop_assert_eq!(decoded.hash(), block.hash());
            match block.body() {
                Some(_) => prop_assert_eq!(decoded, block),
                None => prop_assert!(
                    decoded.transactions().is_empty()
                        && decoded.body().is_some_and(|body| body.ommers.is_empty())
                ),
            }
        } else {
            prop_assert!(block.body().is_none() && !with_body);
        }
    }

    #[test]
    fn body_must_match_transactions_root(header in header(), txs in transactions()) {
        let body = Body { transactions: txs, ommers: Vec::new(), withdrawals: header.inner.withdrawals_root.map(|_| Default::default()) };
        prop_assume!(calculate_transaction_root(&body.transactions) != header.inner.transactions_root);
        let err = Block::new(header.clone(), Some(body.clone())).expect_err("root mismatch");
        let is_root_mismatch = matches!(err, BlockError::TransactionsRootMismatch { .. });
        prop_assert!(is_root_mismatch);

        // The same mismatch inside JSON is refused at parse time.
        let json = serde_json::json!({"header": header, "body": body});
        prop_assert!(serde_json::from_value::<Block>(json).is_err());
    }
}

#[test]
fn header_only_block_json_has_no_body() {
    let block = cairn_tests::mainnet_regular()
        .block
        .expect("fixture has a block");
    assert!(block.body().is_none());
    let value = serde_json::to_value(&block).expect("serializes");
    assert!(value.get("body").is_none());
    assert!(value.get("header").is_some());
}
