//! The block layout: a final block's `extraData` read by Tempo's outcome reader and by glue,
//! the refusals of blocks whose payload or context is missing, misplaced or inconsistent, and
//! the refusal of TIP-1123 chains.

use super::{
    ValidatorBlock, ValidatorBlockConfig, ValidatorBlockError, ValidatorEpochInfo,
    ValidatorPayload, check_outcome_fork, extra_data,
};
use cairn_dkg::{DkgOutcome, NextCeremony, OutcomeFork, OutcomeLayout, OutcomeLimits};
use cairn_primitives::{Block, BlockCodecConfig};
use cairn_testkit::{TestCommittee, test_block, test_proposer};
use commonware_codec::{Decode as _, Encode as _};
use commonware_consensus::{
    CertifiableBlock as _,
    types::{Epoch, Round, View},
};
use commonware_glue::dkg::{ReshareBlock as _, types::EpochOutcome};
use commonware_utils::sequence::Unit;
use std::num::{NonZeroU32, NonZeroU64};

const EPOCH_LENGTH: u64 = 20;

fn config() -> ValidatorBlockConfig {
    ValidatorBlockConfig {
        epoch_length: NonZeroU64::new(EPOCH_LENGTH).expect("non-zero"),
        max_participants: NonZeroU32::new(16).expect("non-zero"),
        block: BlockCodecConfig::default(),
    }
}

/// Epoch `epoch`'s information: the output of one committee, the next two as its players and
/// the players after.
fn info(epoch: u64) -> ValidatorEpochInfo {
    let dealers = TestCommittee::new(b"TEMPO", 70 + epoch, 4);
    let players = TestCommittee::new(b"TEMPO", 80 + epoch, 4);
    let next = TestCommittee::new(b"TEMPO", 90 + epoch, 4);
    ValidatorEpochInfo {
        outcome: EpochOutcome::Success,
        epoch: Epoch::new(epoch),
        output: dealers.ceremony.output.clone(),
        players: players.ceremony.output.players().clone(),
        next_players: next.ceremony.output.players().clone(),
        directory: Unit,
    }
}

#[test]
fn a_final_block_holds_tempo_s_outcome_then_glue_s_epoch_information() {
    let info = info(3);
    let payload = ValidatorPayload::EpochInfo(info.clone());
    let extra = extra_data(&payload);
    let height = 3 * EPOCH_LENGTH - 1;
    let block = ValidatorBlock::new(test_block(height, 2, 7, extra.clone()), &config())
        .expect("a final block with its information");
    assert!(
        block.payload() == Some(payload.clone()),
        "glue reads it back"
    );

    // Tempo's reader (and cairn's follower, which reads boundaries the same way): the legacy
    // outcome first, glue's bytes after it ignored.
    let limits = OutcomeLimits::default();
    let (outcome, trailing) = DkgOutcome::decode_boundary(&extra, OutcomeLayout::Legacy, &limits)
        .expect("Tempo reads the outcome");
    assert_eq!(outcome.epoch, 3);
    assert_eq!(outcome.identity(), info.output.public().public());
    assert_eq!(
        outcome.next,
        Some(NextCeremony {
            players: info.players.clone(),
            full_dkg: false
        })
    );
    assert_eq!(
        trailing,
        payload.encode().len(),
        "exactly glue's bytes follow"
    );

    // What marshal stores decodes to the same block, context and payload included.
    let stored = block.encode();
    let read = ValidatorBlock::decode_cfg(stored, &config()).expect("decodes");
    assert!(read == block);
}

#[test]
fn the_context_comes_from_the_header_and_genesis_has_epoch_zero_s_first_dealer() {
    let block = ValidatorBlock::new(test_block(5, 1, 9, Vec::new()), &config()).expect("reads");
    let context = block.context();
    assert_eq!(context.round, Round::new(Epoch::new(1), View::new(9)));
    assert_eq!(context.parent, (View::new(8), block.block().parent()));
    assert_eq!(context.leader, test_proposer().to_inner());
    assert!(block.payload().is_none());

    // Genesis: Tempo's outcome alone, as the certifying devnet writes it; epoch 0's
    // information follows from it, with the outcome's players for epochs 0 and 1.
    let info = info(0);
    let genesis = super::genesis(info.output.clone(), info.players.clone(), 1_000, &config())
        .expect("genesis");
    let extra = genesis.block().header().inner.extra_data.clone();
    DkgOutcome::decode_strict(&extra, OutcomeLayout::Legacy, &OutcomeLimits::default())
        .expect("nothing but Tempo's outcome");
    let Some(ValidatorPayload::EpochInfo(read)) = genesis.payload() else {
        panic!("genesis carries epoch 0's information");
    };
    assert_eq!(
        (read.epoch, &read.output, &read.players, &read.next_players),
        (Epoch::zero(), &info.output, &info.players, &info.players)
    );
    let context = genesis.context();
    assert_eq!(context.round, Round::new(Epoch::zero(), View::zero()));
    assert_eq!(
        Some(&context.leader),
        info.output.players().iter().next(),
        "epoch 0's first dealer"
    );
}

#[test]
fn blocks_without_what_they_must_carry_or_with_it_misplaced_are_refused() {
    let info = info(2);
    let epoch_info = extra_data(&ValidatorPayload::EpochInfo(info.clone()));

    // Epoch information off a final block: glue's encoding alone, or with Tempo's outcome
    // before it (which is no payload there).
    let glue_only = ValidatorPayload::EpochInfo(info.clone()).encode().to_vec();
    let err = ValidatorBlock::new(test_block(7, 0, 7, glue_only), &config()).expect_err("refused");
    assert!(
        matches!(err, ValidatorBlockError::Misplaced { height: 7, .. }),
        "{err}"
    );
    let err = ValidatorBlock::new(test_block(7, 0, 7, epoch_info), &config()).expect_err("refused");
    assert!(
        matches!(err, ValidatorBlockError::Payload { height: 7, .. }),
        "{err}"
    );

    // The Tempo half announcing other players than glue's half.
    let other = TestCommittee::new(b"TEMPO", 99, 4);
    let mut disagreeing = DkgOutcome {
        epoch: 2,
        output: info.output.clone(),
        next: Some(NextCeremony {
            players: other.ceremony.output.players().clone(),
            full_dkg: false,
        }),
    }
    .to_bytes();
    disagreeing.extend_from_slice(&ValidatorPayload::EpochInfo(info.clone()).encode());
    let height = 2 * EPOCH_LENGTH - 1;
    let err =
        ValidatorBlock::new(test_block(height, 1, 3, disagreeing), &config()).expect_err("refused");
    assert!(
        err.to_string().contains("disagree"),
        "names the disagreement: {err}"
    );

    // A final block with Tempo's outcome alone (no glue half), and bytes that are no payload
    // on an ordinary block.
    let tempo_only = DkgOutcome {
        epoch: 2,
        output: info.output.clone(),
        next: Some(NextCeremony {
            players: info.players.clone(),
            full_dkg: false,
        }),
    }
    .to_bytes();
    let err =
        ValidatorBlock::new(test_block(height, 1, 3, tempo_only), &config()).expect_err("refused");
    assert!(matches!(err, ValidatorBlockError::Payload { .. }), "{err}");
    let err =
        ValidatorBlock::new(test_block(8, 0, 8, vec![7, 7, 7]), &config()).expect_err("refused");
    assert!(
        matches!(err, ValidatorBlockError::Payload { height: 8, .. }),
        "{err}"
    );

    // A block above genesis without its consensus context, and genesis without information.
    let (mut header, body) = test_block(4, 0, 4, Vec::new()).into_parts();
    header.consensus_context = None;
    let block = Block::new(header, body).expect("the body is unchanged");
    let err = ValidatorBlock::new(block.clone(), &config()).expect_err("refused");
    assert!(matches!(err, ValidatorBlockError::NoContext(4)), "{err}");
    let (mut header, body) = test_block(0, 0, 0, Vec::new()).into_parts();
    header.consensus_context = None;
    let genesis = Block::new(header, body).expect("the body is unchanged");
    let err = ValidatorBlock::new(genesis, &config()).expect_err("refused");
    assert!(matches!(err, ValidatorBlockError::NoGenesisInfo), "{err}");

    // Through the codec, as a block from a peer or the disk arrives: refused there too.
    let err = ValidatorBlock::decode_cfg(block.encode(), &config()).expect_err("refused");
    assert!(err.to_string().contains("validator block"), "{err}");
}

#[test]
fn tip1123_s_strict_reader_leaves_no_room_for_glue_so_such_chains_are_refused() {
    let extra = extra_data(&ValidatorPayload::EpochInfo(info(1)));
    let strict =
        DkgOutcome::decode_boundary(&extra, OutcomeLayout::Tip1123, &OutcomeLimits::default());
    assert!(strict.is_err(), "a strict reader refuses the glue half");
    assert!(matches!(
        check_outcome_fork(&OutcomeFork {
            tip1123_time: Some(1_767_225_700)
        }),
        Err(ValidatorBlockError::Tip1123)
    ));
    assert!(check_outcome_fork(&OutcomeFork::NEVER).is_ok());
}
