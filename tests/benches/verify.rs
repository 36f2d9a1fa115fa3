//! Certificate verification throughput: single verification against commonware's batch
//! verifier (batches of 8, 64 and 1024), all measured in one process, printed as microseconds
//! per certificate and the ratio to single verification.
//!
//! `cargo bench -p cairn-tests --bench verify` runs the full measurement; without `--bench`
//! (as `cargo test --all-targets` runs it) it does a seconds-long smoke run of every row.

use cairn_epoch::{
    ChainProfile, DEFAULT_MAX_EPOCHS, Finalization, FinalizationScheme, FinalizationVerifier,
    decode_certificate,
};
use cairn_tests::{TestCommittee, mainnet_regular, test_block};
use commonware_consensus::{
    simplex::types::Subject,
    types::{Epoch, Round, View},
};
use commonware_cryptography::certificate::Verifier;
use commonware_parallel::{Rayon, Sequential, Strategy};
use commonware_utils::iter::NonEmpty;
use rand::{SeedableRng, rngs::StdRng};
use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

const NAMESPACE: &[u8] = b"TEMPO";
/// Committee size of Tempo mainnet from epoch 1515 on.
const COMMITTEE: usize = 15;

struct Row {
    name: String,
    micros_per_cert: f64,
}

/// Median over `rounds` of the time `run` takes, divided by `certs` per run.
fn measure(rounds: usize, certs: usize, mut run: impl FnMut()) -> f64 {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6 / certs as f64
}

fn certificates(committee: &TestCommittee, count: usize) -> Vec<Finalization> {
    (0..count as u64)
        .map(|i| {
            let block = test_block(i + 1, 0, i + 1, Vec::new());
            committee
                .signer
                .finalize(
                    Round::new(Epoch::zero(), View::new(i + 1)),
                    View::new(i),
                    block.hash(),
                    &committee.quorum_from(i as usize),
                )
                .expect("a quorum signs")
        })
        .collect()
}

fn verify_batches(
    scheme: &FinalizationScheme,
    certificates: &[Finalization],
    batch: usize,
    strategy: &impl Strategy,
    rng: &mut StdRng,
) {
    for chunk in certificates.chunks(batch) {
        let items = chunk.iter().map(|finalization| {
            (
                Subject::Finalize {
                    proposal: &finalization.proposal,
                },
                &finalization.certificate,
            )
        });
        let items = NonEmpty::try_new(items).expect("chunks are non-empty");
        assert!(scheme.verify_certificates::<_, cairn_primitives::Digest, _>(rng, items, strategy));
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (count, rounds) = if full { (1024, 7) } else { (64, 1) };
    let batches: Vec<usize> = [8, 64, 1024].into_iter().filter(|b| *b <= count).collect();

    eprintln!("signing {count} certificates with a {COMMITTEE}-member committee ...");
    let committee = TestCommittee::new(NAMESPACE, 1, COMMITTEE);
    let identity = *committee.ceremony.output.public().public();
    let scheme = FinalizationScheme::certificate_verifier(NAMESPACE, identity);
    let certs = certificates(&committee, count);
    let mut rng = StdRng::seed_from_u64(9);
    let two_threads = Rayon::new(NonZeroUsize::new(2).expect("2 > 0")).expect("thread pool");

    let mut rows = Vec::new();
    let single = measure(rounds, certs.len(), || {
        for finalization in &certs {
            assert!(finalization.verify(&mut rng, &scheme, &Sequential));
        }
    });
    rows.push(Row {
        name: "single".into(),
        micros_per_cert: single,
    });
    for &batch in &batches {
        rows.push(Row {
            name: format!("batch of {batch}"),
            micros_per_cert: measure(rounds, certs.len(), || {
                verify_batches(&scheme, &certs, batch, &Sequential, &mut rng)
            }),
        });
    }
    let largest = *batches.last().expect("at least one batch size");
    rows.push(Row {
        name: format!("batch of {largest}, 2 threads"),
        micros_per_cert: measure(rounds, certs.len(), || {
            verify_batches(&scheme, &certs, largest, &two_threads, &mut rng)
        }),
    });

    // The whole path for one real mainnet block: hex and codec decode, keccak of the header,
    // epoch and identity choice, and the pairing check.
    let profile = ChainProfile::builtin("tempo-mainnet").expect("built in");
    let verifier = FinalizationVerifier::new(
        profile.epochs.clone(),
        profile.scheme_provider(DEFAULT_MAX_EPOCHS),
    );
    let certified = mainnet_regular();
    let repeats = if full { 256 } else { 8 };
    rows.push(Row {
        name: "mainnet certificate decode only (hex, codec, G1 point checks)".into(),
        micros_per_cert: measure(rounds, repeats, || {
            for _ in 0..repeats {
                decode_certificate(&certified.certificate).expect("real certificate decodes");
            }
        }),
    });
    rows.push(Row {
        name: "mainnet block, full verify path".into(),
        micros_per_cert: measure(rounds, repeats, || {
            for _ in 0..repeats {
                verifier
                    .verify(&mut rng, &certified)
                    .expect("real certificate verifies");
            }
        }),
    });

    println!(
        "certificate verification ({} certificates, median of {rounds} rounds{})",
        count,
        if full { "" } else { ", smoke run" }
    );
    println!("| mode | us per certificate | ratio to single |");
    println!("|---|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.2} |",
            row.name,
            row.micros_per_cert,
            row.micros_per_cert / single
        );
    }
}
