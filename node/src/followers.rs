//! The followers `cairn devnet --followers N` starts: `cairn follow` child processes, each with
//! its own datadir under the devnet's, following the devnet's RPC. Their progress lines are read
//! from their output; their logs go to `follow.log` in their datadir.

use eyre::{WrapErr, eyre};
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// One follower child process.
pub struct FollowerProcess {
    child: Child,
    verified: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    rpc: Arc<Mutex<Option<String>>>,
    datadir: PathBuf,
}

/// One follower as the devnet's status page shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerView {
    /// `f1`, `f2`, ...
    pub name: String,
    /// Its RPC address, once it serves.
    pub rpc: Option<String>,
    /// Its verified height (from its progress lines).
    pub height: u64,
    /// Blocks behind the devnet.
    pub lag: u64,
    /// Why it is not following, when it exited.
    pub exited: Option<String>,
}

impl FollowerProcess {
    /// Starts follower `index` of the chain in `chain_profile`, following `upstream`.
    pub fn start(
        devnet_datadir: &Path,
        index: usize,
        chain_profile: &Path,
        upstream: &str,
    ) -> eyre::Result<Self> {
        let datadir = devnet_datadir.join("followers").join(index.to_string());
        std::fs::create_dir_all(&datadir)
            .wrap_err_with(|| format!("creating {}", datadir.display()))?;
        let log_path = datadir.join("follow.log");
        let log =
            File::create(&log_path).wrap_err_with(|| format!("creating {}", log_path.display()))?;
        let binary = std::env::current_exe().wrap_err("locating the cairn binary")?;
        let mut child = Command::new(binary)
            .arg("follow")
            .arg("--chain")
            .arg(chain_profile)
            .args(["--upstream", upstream, "--datadir"])
            .arg(&datadir)
            .args(["--rpc-addr", "127.0.0.1:0"])
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .wrap_err_with(|| format!("starting follower {index}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| eyre!("follower {index} has no stdout"))?;
        let verified = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        let rpc = Arc::new(Mutex::new(None));
        let (seen_verified, seen_connected, seen_rpc) =
            (verified.clone(), connected.clone(), rpc.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("verified ") {
                    if let Some(height) = rest
                        .split_whitespace()
                        .next()
                        .and_then(|height| height.parse().ok())
                    {
                        seen_verified.store(height, Ordering::Relaxed);
                    }
                    // `... | upstreams 1/1 healthy | ...`: connected while one is healthy.
                    let healthy = line
                        .split(" | ")
                        .filter_map(|part| part.strip_prefix("upstreams "))
                        .filter_map(|rest| rest.split('/').next())
                        .any(|count| count.parse::<usize>().is_ok_and(|count| count > 0));
                    seen_connected.store(healthy, Ordering::Relaxed);
                } else if let Some(addr) = line.strip_prefix("rpc listening on ") {
                    say!("follower {index}: rpc listening on {addr}");
                    if let Some(bound) = addr.split_whitespace().next() {
                        *seen_rpc.lock().unwrap_or_else(|poison| poison.into_inner()) =
                            Some(bound.to_string());
                    }
                }
            }
        });
        Ok(Self {
            child,
            verified,
            connected,
            rpc,
            datadir,
        })
    }

    /// The follower for the devnet's status page.
    pub fn view(&mut self, index: usize, chain_height: u64) -> FollowerView {
        let height = self.verified.load(Ordering::Relaxed);
        FollowerView {
            name: format!("f{index}"),
            rpc: self
                .rpc
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
            height,
            lag: chain_height.saturating_sub(height),
            exited: match self.child.try_wait() {
                Ok(Some(exit)) => Some(exit.to_string()),
                _ => None,
            },
        }
    }

    /// The follower's status for the devnet's status line.
    pub fn status(&mut self, index: usize, chain_height: u64) -> String {
        let view = self.view(index, chain_height);
        if let Some(exit) = &view.exited {
            return format!(
                "{} exited ({exit}; see {})",
                view.name,
                self.datadir.join("follow.log").display()
            );
        }
        let connection = if self.connected.load(Ordering::Relaxed) {
            ""
        } else {
            ", connecting"
        };
        format!(
            "{} {} (lag {}{connection})",
            view.name, view.height, view.lag
        )
    }

    /// Stops the follower with SIGTERM, waiting up to `grace` before killing it.
    pub fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FollowerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
