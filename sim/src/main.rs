//! `cairn-sim`: runs seeds of random fault plans against validators and followers in the
//! deterministic runtime, one line per seed, and exits with status 1 if any property broke.

use cairn_sim::{Rates, Simulation};
use clap::Parser;
use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    ops::Range,
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Instant,
};

/// Explore random fault plans (crashes, partitions, link changes, failing disks, lying RPCs,
/// power cuts) against a chain made by five simplex validators (or the certifying producer)
/// and two cairn followers, checking that the followers serve only the finalized chain, byte
/// for byte, keep what they served, register each key from its boundary, halt only on real
/// conflicts and reach the tip once the faults heal. The same seed gives the same run and
/// digest; the exit status is 1 on any violation.
#[derive(Parser, Debug)]
#[command(name = "cairn-sim", version)]
struct Args {
    /// Seeds to run, as A..B (B excluded).
    #[arg(long, value_name = "A..B", value_parser = parse_range, conflicts_with = "seed")]
    seeds: Option<Range<u64>>,
    /// Replay one seed, printing every stop and violation.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Log the run (the plan's actions, stops) to standard error, at this level
    /// (error, warn, info, debug).
    #[arg(long, value_name = "LEVEL")]
    log: Option<tracing::Level>,
    /// What makes the chain: five simplex validators in committees of four, or the
    /// certifying producer (the same pool and committees, a full DKG every third epoch).
    #[arg(long, value_enum, default_value = "validators")]
    maker: Maker,
    /// Seeds run at once, each on its own thread (each run is single-threaded).
    #[arg(long, value_name = "N", default_value = "1")]
    jobs: NonZeroUsize,
}

/// What makes the chain.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Maker {
    /// Simplex validators.
    Validators,
    /// The certifying producer.
    Producer,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not a range A..B"))?;
    let start: u64 = start
        .parse()
        .map_err(|_| format!("`{start}` is not a seed"))?;
    let end: u64 = end.parse().map_err(|_| format!("`{end}` is not a seed"))?;
    if end <= start {
        return Err(format!("the range {text} holds no seed"));
    }
    Ok(start..end)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(level) = args.log {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .init();
    }
    // Nodes that panic (commonware's actors stop so on a failed disk) are reported as stops;
    // their panic messages go to the log only.
    let logging = args.log.is_some();
    std::panic::set_hook(Box::new(move |info| {
        if logging {
            eprintln!("panic: {info}");
        }
    }));
    let (seeds, replay) = match (args.seeds, args.seed) {
        (_, Some(seed)) => (seed..seed + 1, true),
        (Some(seeds), None) => (seeds, false),
        (None, None) => (0..10, false),
    };
    let rates = Rates::default();
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let (done, reports) = mpsc::channel();
    let (mut runs, mut violations, mut failed) = (0, 0, false);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.get() {
            let (next, done, rates, end) = (&next, done.clone(), &rates, seeds.end);
            let maker = args.maker;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let simulation = match maker {
                        Maker::Validators => Simulation::explored(),
                        Maker::Producer => Simulation::explored_with_producer(),
                    }
                    .with_random_plan(seed, rates);
                    let report = simulation.run(seed);
                    if done.send((seed, simulation, report)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done);
        // Printed in seed order, whichever thread finishes first.
        let mut waiting = BTreeMap::new();
        let mut expected = seeds.start;
        for (seed, simulation, report) in reports {
            waiting.insert(seed, (simulation, report));
            while let Some((simulation, report)) = waiting.remove(&expected) {
                expected += 1;
                let report = match report {
                    Ok(report) => report,
                    Err(err) => {
                        eprintln!("seed {}: {err}", expected - 1);
                        failed = true;
                        continue;
                    }
                };
                runs += 1;
                violations += report.violations.len();
                println!("{report}");
                if replay {
                    for (at, node, stop) in &report.stops {
                        println!("  at {:.3} s {node} stopped: {stop:?}", at.as_secs_f64());
                    }
                    for (when, action) in &simulation.plan.actions {
                        println!("  plan: {when:?} {action:?}");
                    }
                }
            }
        }
    });
    println!(
        "{runs} seeds, {violations} violations ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if violations == 0 && !failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
