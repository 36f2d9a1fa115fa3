//! Decoder robustness: random, truncated and adversarial bytes into the certificate, outcome,
//! header and block decoders, and into the network-facing JSON decoders (a `consensus_event`
//! notification, a `consensus_getFinalization` answer, an `eth_getBlockByHash` block with full
//! transactions), never panic and never allocate more than the input justifies.

use alloy_primitives::hex;
use cairn_dkg::{DkgOutcome, OutcomeError};
use cairn_epoch::{MAX_CERTIFICATE_BYTES, MalformedError, decode_certificate};
use cairn_primitives::{Block, BlockCodecConfig, HeaderExt as _, TempoHeader};
use cairn_tests::{AllocationMeter, fixture_hex, mainnet_boundary, mainnet_regular, test_block};
use commonware_codec::{Decode, Encode, EncodeSize, Write, varint::UInt};
use proptest::prelude::*;

/// Allowed peak allocation while decoding `len` input bytes: a fixed slack for small
/// bookkeeping plus a constant factor of the input.
fn allowance(len: usize) -> usize {
    64 * 1024 + 64 * len
}

/// Runs `decode` on `input` and checks the peak allocation it caused.
fn within_allowance<T>(what: &str, input: &[u8], decode: impl FnOnce(&[u8]) -> T) -> T {
    AllocationMeter::reset();
    let result = decode(input);
    let peak = AllocationMeter::peak();
    assert!(
        peak <= allowance(input.len()),
        "{what}: {peak} bytes allocated for {} input bytes",
        input.len()
    );
    result
}

fn decode_block(bytes: &[u8]) -> Result<Block, commonware_codec::Error> {
    Block::decode_cfg(bytes.to_vec(), &BlockCodecConfig::default())
}

/// The JSON decoders a follower runs on what an upstream sends: an event notification, a
/// certified block, and an RPC block converted to a block (hash and roots checked).
fn decode_json(what: &str, bytes: &[u8]) {
    match what {
        "event json" => {
            let _ = serde_json::from_slice::<cairn_primitives::Event>(bytes);
        }
        "certified json" => {
            let _ = serde_json::from_slice::<cairn_primitives::CertifiedBlock>(bytes);
        }
        _ => {
            let _ = serde_json::from_slice::<cairn_feed::RpcBlock>(bytes)
                .ok()
                .map(cairn_feed::block_from_rpc);
        }
    }
}

fn json_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let boundary = mainnet_boundary();
    let block = test_block(77, 3, 9, Vec::new());
    let event = cairn_primitives::Event::Finalized {
        block: boundary.clone(),
        seen: 1_700_000_000_000,
    };
    vec![
        ("event json", serde_json::to_vec(&event).expect("json")),
        (
            "certified json",
            serde_json::to_vec(&boundary).expect("json"),
        ),
        (
            "rpc block json",
            serde_json::to_vec(&cairn_feed::rpc_block(&block, true)).expect("json"),
        ),
    ]
}

fn certificate_bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).expect("fixture certificate is hex")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_or_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        let hex_text = hex::encode(&bytes);
        within_allowance("certificate", hex_text.as_bytes(), |_| decode_certificate(&hex_text).ok());
        within_allowance("outcome", &bytes, |b| DkgOutcome::decode(b).ok());
        within_allowance("header", &bytes, |b| TempoHeader::decode_rlp(b).ok());
        within_allowance("block", &bytes, |b| decode_block(b).ok());
        within_allowance("raw block", &bytes, |b| Block::decode_raw_rlp(b).ok());
        for what in ["event json", "certified json", "rpc block json"] {
            within_allowance(what, &bytes, |b| decode_json(what, b));
        }
    }

    /// Valid JSON from an upstream with one byte changed and cut anywhere.
    #[test]
    fn mutated_upstream_json_never_panics(position in any::<prop::sample::Index>(), value in any::<u8>(), cut in any::<prop::sample::Index>()) {
        for (what, bytes) in json_encodings() {
            let mut mutated = bytes.clone();
            let at = position.index(mutated.len());
            mutated[at] = value;
            mutated.truncate(cut.index(mutated.len() + 1));
            within_allowance(what, &mutated, |b| decode_json(what, b));
        }
    }

    /// Random bytes behind a plausible prefix reach deeper into each decoder.
    #[test]
    fn mutated_valid_encodings_never_panic(position in any::<prop::sample::Index>(), value in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let inputs = valid_encodings();
        for (what, bytes) in &inputs {
            let mut mutated = bytes.clone();
            let at = position.index(mutated.len());
            mutated[at] = value;
            mutated.truncate(cut.index(mutated.len() + 1));
            match *what {
                "certificate" => {
                    let hex_text = hex::encode(&mutated);
                    within_allowance(what, hex_text.as_bytes(), |_| decode_certificate(&hex_text).ok());
                }
                "outcome" => { within_allowance(what, &mutated, |b| DkgOutcome::decode(b).ok()); }
                "header" => { within_allowance(what, &mutated, |b| TempoHeader::decode_rlp(b).ok()); }
                "raw block" => { within_allowance(what, &mutated, |b| Block::decode_raw_rlp(b).ok()); }
                _ => { within_allowance(what, &mutated, |b| decode_block(b).ok()); }
            }
        }
    }
}

fn valid_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let boundary = mainnet_boundary();
    let block = test_block(77, 3, 9, fixture_hex("presto-genesis-extradata.hex"));
    vec![
        ("certificate", certificate_bytes(&boundary.certificate)),
        (
            "certificate",
            certificate_bytes(&mainnet_regular().certificate),
        ),
        ("outcome", fixture_hex("presto-genesis-extradata.hex")),
        ("outcome", cairn_tests::extra_data(&boundary)),
        (
            "header",
            boundary.block.as_ref().expect("block").header().rlp(),
        ),
        ("block", block.encode().to_vec()),
        (
            "raw block",
            block.raw_rlp().expect("the test block has a body"),
        ),
    ]
}

#[test]
fn every_truncation_of_a_valid_encoding_is_an_error() {
    for (what, bytes) in valid_encodings() {
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            let failed = match what {
                "certificate" => {
                    let hex_text = hex::encode(prefix);
                    within_allowance(what, hex_text.as_bytes(), |_| {
                        decode_certificate(&hex_text).is_err()
                    })
                }
                "outcome" => within_allowance(what, prefix, |b| DkgOutcome::decode(b).is_err()),
                "header" => within_allowance(what, prefix, |b| TempoHeader::decode_rlp(b).is_err()),
                "raw block" => {
                    within_allowance(what, prefix, |b| Block::decode_raw_rlp(b).is_err())
                }
                _ => within_allowance(what, prefix, |b| decode_block(b).is_err()),
            };
            assert!(
                failed,
                "{what}: a {len}-byte prefix of {} bytes decoded",
                bytes.len()
            );
        }
    }
}

/// The prefix of an outcome up to and including the sharing's `total` field.
fn outcome_prefix(total: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    UInt(5u64).write(&mut bytes);
    bytes.extend_from_slice(&[0u8; 32]); // summary
    bytes.push(0); // mode: NonZeroCounter
    bytes.extend_from_slice(&total.to_be_bytes());
    bytes
}

#[test]
fn oversized_participant_counts_are_refused_before_allocating() {
    let err = within_allowance("outcome", &outcome_prefix(u32::MAX), DkgOutcome::decode)
        .expect_err("u32::MAX participants");
    assert!(
        matches!(err, OutcomeError::LengthOutOfRange(n) if n == u32::MAX as usize),
        "{err}"
    );

    // Within the limit, but the input cannot possibly list that many players.
    let mut bytes = outcome_prefix(1000);
    bytes.extend_from_slice(&[0u8; 64]);
    let err = within_allowance("outcome", &bytes, DkgOutcome::decode)
        .expect_err("1000 players in 64 bytes");
    assert!(
        matches!(
            err,
            OutcomeError::ImplausibleParticipantCount { claimed: 1000, .. }
        ),
        "{err}"
    );

    // A polynomial length prefix beyond the limit.
    let mut bytes = outcome_prefix(4);
    UInt(1_000_000u64).write(&mut bytes);
    bytes.extend_from_slice(&[0u8; 200]);
    let err = within_allowance("outcome", &bytes, DkgOutcome::decode).expect_err("huge polynomial");
    assert!(matches!(err, OutcomeError::LengthOutOfRange(_)), "{err}");
}

#[test]
fn oversized_block_length_prefixes_are_refused() {
    let limits = BlockCodecConfig::default();

    let mut huge_header = Vec::new();
    UInt(u32::MAX).write(&mut huge_header);
    let err = within_allowance("block", &huge_header, decode_block).expect_err("huge header");
    assert!(
        matches!(err, commonware_codec::Error::InvalidLength(_)),
        "{err}"
    );

    let mut overlong_varint = Vec::new();
    UInt(1u64 << 40).write(&mut overlong_varint);
    let err = within_allowance("block", &overlong_varint, decode_block).expect_err("not a usize");
    assert!(
        matches!(err, commonware_codec::Error::InvalidVarint(_)),
        "{err}"
    );

    let header = test_block(1, 0, 1, Vec::new()).header().rlp();
    let mut big_body = Vec::new();
    header.len().write(&mut big_body);
    big_body.extend_from_slice(&header);
    true.write(&mut big_body);
    (limits.max_body_bytes + 1).write(&mut big_body);
    let err = within_allowance("block", &big_body, decode_block).expect_err("oversized body");
    assert!(
        matches!(err, commonware_codec::Error::InvalidLength(_)),
        "{err}"
    );

    // A claimed body length far above what follows fails without a large allocation.
    let mut claimed = Vec::new();
    header.len().write(&mut claimed);
    claimed.extend_from_slice(&header);
    true.write(&mut claimed);
    limits.max_body_bytes.write(&mut claimed);
    within_allowance("block", &claimed, decode_block).expect_err("truncated body");

    // A raw block whose list header claims far more than follows fails the same way.
    let mut raw = Vec::new();
    alloy_rlp::Header {
        list: true,
        payload_length: 1 << 30,
    }
    .encode(&mut raw);
    raw.extend_from_slice(&header);
    within_allowance("raw block", &raw, Block::decode_raw_rlp).expect_err("truncated raw block");
}

#[test]
fn oversized_certificates_are_refused_before_decoding() {
    let long = "00".repeat(MAX_CERTIFICATE_BYTES + 1);
    assert_eq!(
        decode_certificate(&long).expect_err("too long"),
        MalformedError::CertificateTooLong(long.len())
    );
    // The longest legal certificate is not refused for its length.
    let real = mainnet_boundary().certificate;
    assert!(real.len() <= 2 * MAX_CERTIFICATE_BYTES);
    let prefixed = format!("0x{real}");
    assert!(
        decode_certificate(&prefixed).is_ok(),
        "a 0x prefix is accepted"
    );
}

#[test]
fn trailing_bytes_are_refused_everywhere() {
    for (what, mut bytes) in valid_encodings() {
        bytes.push(0);
        let refused = match what {
            "certificate" => matches!(
                decode_certificate(&hex::encode(&bytes)),
                Err(MalformedError::CertificateCodec(_))
            ),
            "outcome" => matches!(
                DkgOutcome::decode(&bytes),
                Err(OutcomeError::TrailingBytes(1))
            ),
            "header" => matches!(
                TempoHeader::decode_rlp(&bytes),
                Err(cairn_primitives::HeaderDecodeError::TrailingBytes(1))
            ),
            "raw block" => matches!(
                Block::decode_raw_rlp(&bytes),
                Err(cairn_primitives::BlockError::TrailingBytes(1))
            ),
            _ => matches!(
                decode_block(&bytes),
                Err(commonware_codec::Error::ExtraData(1))
            ),
        };
        assert!(refused, "{what} with a trailing byte");
    }
    let block = test_block(2, 0, 2, Vec::new());
    assert_eq!(block.encode().len(), block.encode_size());
}

#[test]
fn valid_upstream_json_decodes_within_the_allowance() {
    for (what, bytes) in json_encodings() {
        within_allowance(what, &bytes, |b| decode_json(what, b));
    }
    let (_, rpc) = json_encodings().pop().expect("rpc block");
    let rpc: cairn_feed::RpcBlock = serde_json::from_slice(&rpc).expect("parses");
    assert_eq!(
        cairn_feed::block_from_rpc(rpc).expect("converts").height(),
        77
    );
}

#[test]
fn the_allocation_meter_sees_allocations() {
    let input = vec![0u8; 16];
    let held = within_allowance("small", &input, |b| b.to_vec());
    assert_eq!(held.len(), 16);
    AllocationMeter::reset();
    let big = vec![1u8; 4 * 1024 * 1024];
    assert!(AllocationMeter::peak() >= big.len());
    drop(big);
    let result = std::panic::catch_unwind(|| {
        within_allowance("oversized", &input, |_| vec![0u8; allowance(16) + 1].len())
    });
    assert!(
        result.is_err(),
        "an allocation over the allowance fails the check"
    );
}
