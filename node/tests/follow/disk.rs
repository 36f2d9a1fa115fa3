//! A follower whose disk fills: during its catch-up and while it follows live, it stops with
//! exit status 1 and a message saying the disk is full, before a write fails; with the reserve
//! turned off, a write that really fails ends it the same way. With room again, it starts
//! again on the same datadir and converges on the devnet's chain byte for byte.

use super::{cairn, raw_block};
use cairn_tests::process::{CairnProcess, block_number, log_excerpt, wait_for_height};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// A small tmpfs mounted for the test (needs root, as CI and the development machines run),
/// unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs at {} (the test runs as root)",
            path.display()
        );
        Self {
            path: path.to_path_buf(),
        }
    }

    /// Fills the disk with a ballast file until about `leave_mib` MiB are free (less when the
    /// follower writes meanwhile: a ballast that no longer fits is made smaller).
    fn fill_leaving(&self, leave_mib: u64) {
        let ballast = self.path.join("ballast");
        let current = std::fs::metadata(&ballast).map_or(0, |meta| meta.len() / (1024 * 1024));
        let mut size = (current + free_mib(&self.path)).saturating_sub(leave_mib);
        loop {
            let status = Command::new("fallocate")
                .args(["-l", &format!("{size}MiB")])
                .arg(&ballast)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("fallocate runs");
            if status.success() {
                return;
            }
            assert!(size > current, "no ballast fits");
            size -= 1;
        }
    }

    fn make_room(&self) {
        let _ = std::fs::remove_file(self.path.join("ballast"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn free_mib(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1M"])
        .arg(path)
        .output()
        .expect("df runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free space")
}

/// Waits for `follower` to exit on its own and returns its exit code and its log.
fn exit_of(mut follower: CairnProcess, log: &Path, limit: Duration) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + limit;
    while follower.exited().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not stop within {limit:?}: {}",
            log_excerpt(&std::fs::read_to_string(log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        follower.wait(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

/// Every block `1..=to` the follower serves is the devnet's, byte for byte.
async fn assert_converged(follower: &CairnProcess, devnet: &CairnProcess, what: &str) -> u64 {
    let (ours, theirs) = (follower.http(), devnet.http());
    let to = wait_for_height(&ours, block_number(&theirs).await, Duration::from_secs(300)).await;
    for height in 0..=to {
        assert_eq!(
            raw_block(&ours, height).await,
            raw_block(&theirs, height).await,
            "{what}: block {height}"
        );
    }
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_follower_with_status_1_and_room_again_lets_it_converge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = super::bulk_devnet(&dir.path().join("devnet"), 3000, &["--block-time", "100ms"]);
    wait_for_height(&devnet.http(), 3000, Duration::from_secs(300)).await;
    let chain = dir.path().join("devnet").join("chain.json");
    let disk = SmallDisk::mount(&dir.path().join("disk"), 48);
    let datadir = disk.path.join("follower");
    let follower = |run: &str, extra: &[&str]| {
        let log = dir.path().join(format!("{run}.log"));
        let process =
            CairnProcess::follower_with(cairn(), &chain, &devnet.addr, &datadir, &log, extra);
        (process, log)
    };
    let reserve = ["--min-free-disk", "8"];

    // During the catch-up: 3,000 blocks take about 5 MiB; 2 MiB above the reserve are free.
    disk.fill_leaving(10);
    let (process, log) = follower("catch-up-full", &reserve);
    let (code, text) = exit_of(process, &log, Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", log_excerpt(&text));
    assert!(
        text.contains("disk full") && text.contains(&datadir.display().to_string()),
        "{}",
        log_excerpt(&text)
    );
    assert!(!text.contains("panicked"), "{}", log_excerpt(&text));
    disk.make_room();
    let (process, log) = follower("catch-up-room", &reserve);
    let process = process.with_rpc_addr_within(Duration::from_secs(300));
    assert_converged(
        &process,
        &devnet,
        "after the disk filled during the catch-up",
    )
    .await;

    // While following live.
    disk.fill_leaving(4);
    let (code, text) = exit_of(process, &log, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{}", log_excerpt(&text));
    assert!(text.contains("disk full"), "{}", log_excerpt(&text));
    disk.make_room();
    let (process, _) = follower("live-room", &reserve);
    let process = process.with_rpc_addr_within(Duration::from_secs(300));
    assert_converged(&process, &devnet, "after the disk filled while live").await;
    process.stop();

    // Without the reserve a write fails for real: still status 1 and a message, no panic
    // report, and nothing lost.
    disk.fill_leaving(0);
    let (process, log) = follower("enospc", &["--min-free-disk", "0"]);
    let (code, text) = exit_of(process, &log, Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", log_excerpt(&text));
    // The failed write surfaces as an I/O error or as one of marshal's storage panics; either
    // way the message names the datadir and the full disk.
    assert!(
        (text.contains("No space left on device") || text.contains("(0 MiB free"))
            && text.contains(&datadir.display().to_string()),
        "{}",
        log_excerpt(&text)
    );
    disk.make_room();
    let (process, _) = follower("enospc-room", &reserve);
    let process = process.with_rpc_addr_within(Duration::from_secs(300));
    assert_converged(&process, &devnet, "after a write failed on a full disk").await;
    process.stop();
    devnet.stop();
}
