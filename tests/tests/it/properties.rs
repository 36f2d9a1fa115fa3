//! Property tests: headers round-trip through RLP and JSON, blocks through the storage codec,
//! and a body that does not match its header's transactions root is refused.

use alloy_primitives::{Address, B64, B256, Bloom, Bytes, U256};
use cairn_primitives::{Block, BlockCodecConfig, BlockError, Body, ConsensusContext, TempoHeader};
use commonware_codec::{Decode, Encode};
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
        context in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>(), b256())),
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
            consensus_context: context.map(|(epoch, view, parent_view, proposer)| ConsensusContext {
                epoch, view, parent_view, proposer,
            }),
        }
    }
}

fn transactions() -> impl Strategy<Value = Vec<Bytes>> {
    proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 1..200).prop_map(Bytes::from),
        0..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn header_rlp_round_trip(header in header()) {
        let rlp = header.rlp();
        prop_assert_eq!(rlp.len(), header.rlp_len());
        let decoded = TempoHeader::decode_rlp(&rlp).expect("own encoding decodes");
        prop_assert_eq!(decoded.hash(), header.hash());
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
        let body = Body { transactions: txs };
        header.inner.transactions_root = body.transactions_root();
        let block = Block::new(header, with_body.then_some(body)).expect("root matches");
        // What commonware's marshal sees of the block.
        prop_assert_eq!(commonware_consensus::Heightable::height(&block).get(), block.header().number());
        prop_assert_eq!(commonware_consensus::Block::parent(&block).0, block.header().inner.parent_hash);
        let encoded = block.encode();
        let decoded = Block::decode_cfg(encoded, &BlockCodecConfig::default()).expect("decodes");
        prop_assert_eq!(decoded.hash(), block.hash());
        prop_assert_eq!(&decoded, &block);

        let json = serde_json::to_string(&block).expect("serializes");
        let parsed: Block = serde_json::from_str(&json).expect("parses");
        prop_assert_eq!(parsed, block);
    }

    #[test]
    fn body_must_match_transactions_root(header in header(), txs in transactions()) {
        let body = Body { transactions: txs };
        prop_assume!(body.transactions_root() != header.inner.transactions_root);
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
