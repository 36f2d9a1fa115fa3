//! Progress output of `cairn follow`. On a terminal: one progress bar with the verified height,
//! the target, the rate and the time left, redrawn from the follower's status, with the other
//! output lines printed above it. Elsewhere (a pipe, a log file): plain lines.

use cairn_feed::FeedState;
use cairn_follow::status::{FollowerStatus, StatusBoard};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::{
    io::IsTerminal as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How often the bar is redrawn.
const REFRESH: Duration = Duration::from_millis(250);

/// The progress display of one follower.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Arc<AtomicBool>,
}

/// The bar's message: the rate, the epoch, the upstreams' health and the rejected events.
fn message(status: &FollowerStatus) -> String {
    let healthy = status.upstreams.iter().filter(|u| u.healthy).count();
    format!(
        "{:.0} blocks/s | epoch {} | upstreams {healthy}/{} | rejected {}",
        status.blocks_per_second,
        status.epoch,
        status.upstreams.len(),
        status.rejected
    )
}

impl Progress {
    /// Starts showing the progress `board` reports: a bar when stdout is a terminal, else a
    /// plain line every `interval` while the follower starts (its catch-up). `eth_syncing` on
    /// `feed` follows the same progress. After [`Self::started`], the caller prints its own
    /// lines.
    pub fn show(board: &StatusBoard, feed: &FeedState, interval: Duration) -> Self {
        let started = Arc::new(AtomicBool::new(false));
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {pos}/{len} [{bar:24}] ETA {eta} | {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            crate::common::set_progress_bar(Some(bar.clone()));
            bar
        });
        let mut updates = board.subscribe();
        let (shown, done, feed) = (bar.clone(), started.clone(), feed.clone());
        tokio::spawn(async move {
            let mut last_line = tokio::time::Instant::now();
            loop {
                if updates.changed().await.is_err() {
                    break;
                }
                let status = updates.borrow_and_update().clone();
                feed.set_sync_target(status.executed_height, status.target_height);
                match &shown {
                    Some(bar) => {
                        bar.set_length(status.target_height.max(status.executed_height));
                        bar.set_position(status.executed_height);
                        bar.set_message(message(&status));
                        bar.tick();
                    }
                    None if !done.load(Ordering::Relaxed)
                        && last_line.elapsed() >= interval
                        && status.lag > 0 =>
                    {
                        last_line = tokio::time::Instant::now();
                        let eta = (status.blocks_per_second >= 1.0).then(|| {
                            Duration::from_secs_f64(status.lag as f64 / status.blocks_per_second)
                        });
                        say!(
                            "catching up: stored {} of {} | ETA {} | {}",
                            status.executed_height,
                            status.target_height,
                            eta.map_or("unknown".into(), |eta| humantime::format_duration(
                                Duration::from_secs(eta.as_secs())
                            )
                            .to_string()),
                            message(&status)
                        );
                    }
                    None => {}
                }
                tokio::time::sleep(REFRESH).await;
            }
        });
        Self { bar, started }
    }

    /// The follower has started: from now on the caller prints its own progress lines (none
    /// when a bar is shown).
    pub fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Whether a bar is shown (progress lines would garble it).
    pub fn has_bar(&self) -> bool {
        self.bar.is_some()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            crate::common::set_progress_bar(None);
            bar.finish_and_clear();
        }
    }
}
