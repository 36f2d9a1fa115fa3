//! The free-space guard of a node's datadir. commonware's marshal panics when a write fails
//! (a full disk among the causes), so the node stops itself, cleanly and with exit status 1,
//! once the free space under its datadir falls below a reserve, before any write can fail.
//! What it stored is consistent at any instant (it survives a kill), so the next start, with
//! room again, continues.

use eyre::{WrapErr, eyre};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// How often the free space is read.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Bytes in a mebibyte.
const MIB: u64 = 1024 * 1024;

/// Bytes available to this process on the file system holding `path`.
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Stops the node when the free space under a datadir falls below a reserve.
#[derive(Clone, Debug)]
pub struct DiskGuard {
    datadir: PathBuf,
    reserve: u64,
}

impl DiskGuard {
    /// A guard keeping `reserve_mib` MiB free under `datadir` (0 turns it off).
    pub fn new(datadir: &Path, reserve_mib: u64) -> Self {
        Self {
            datadir: datadir.to_path_buf(),
            reserve: reserve_mib.saturating_mul(MIB),
        }
    }

    /// The datadir it watches.
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// An error when the datadir's file system has less than the reserve free.
    pub fn check(&self) -> eyre::Result<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        let available = available_bytes(&self.datadir).wrap_err_with(|| {
            format!(
                "reading the free space of {} (--min-free-disk)",
                self.datadir.display()
            )
        })?;
        if available < self.reserve {
            return Err(eyre!(
                "disk full: {} MiB free under {}, below the {} MiB this node keeps free (--min-free-disk); stopped before a write could fail. Everything stored is consistent: free some space and start again to continue",
                available / MIB,
                self.datadir.display(),
                self.reserve / MIB
            ));
        }
        Ok(())
    }

    /// Resolves with the error of [`Self::check`] once the free space falls below the reserve;
    /// never, when the guard is off.
    pub async fn full(&self) -> eyre::Report {
        loop {
            if let Err(err) = self.check() {
                return err;
            }
            if self.reserve == 0 {
                return std::future::pending().await;
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    }
}

/// Whether a panic reports a failed storage operation: its message names an I/O error (a full
/// disk, a quota, a read-only file system, too few file descriptors), or it is one of the
/// panics commonware's marshal and stores raise on a store they could not open, write, sync,
/// read or prune. Those messages name the operation ("failed to insert finalization: journal
/// error: runtime error: write failed") but not always the I/O error, so they are told apart by
/// where they were raised: `location` is the panicking source file.
pub fn is_storage_failure(message: &str, location: &str) -> bool {
    const IO_SIGNS: [&str; 9] = [
        "No space left on device",
        "os error 28",
        "Disk quota exceeded",
        "os error 122",
        "Input/output error",
        "Read-only file system",
        "Too many open files",
        "journal error",
        "write failed",
    ];
    const STORE_SOURCES: [&str; 3] = [
        "commonware-consensus",
        "commonware-storage",
        "commonware-runtime",
    ];
    const STORE_SIGNS: [&str; 5] = [
        "failed to ",
        "archive",
        "must sync",
        "sync must succeed",
        "storage",
    ];
    IO_SIGNS.iter().any(|sign| message.contains(sign))
        || (STORE_SOURCES.iter().any(|source| location.contains(source))
            && STORE_SIGNS.iter().any(|sign| message.contains(sign)))
}

/// What the node says when a store under `datadir` failed with `message`: where, how much
/// room is left, and that the next start continues.
pub fn storage_failed(datadir: &Path, message: &str) -> String {
    let free = available_bytes(datadir)
        .map(|bytes| format!("{} MiB free on its file system", bytes / MIB))
        .unwrap_or_else(|err| format!("its free space unreadable: {err}"));
    format!(
        "storage failed under {} ({free}): {message}. Everything synced is consistent: fix the cause (free space, open-file limit, the disk) and start again to continue",
        datadir.display()
    )
}

/// Turns a panic that reports a storage failure (marshal and commonware's archives panic on a
/// failed write) into exit status 1 with a message naming the datadir: the guard above stops
/// the node before the disk fills, and this covers what it cannot see coming (another process
/// filling the disk at once, an I/O error). Other panics keep the default report.
pub fn exit_cleanly_on_storage_panics(datadir: &Path) {
    let datadir = datadir.to_path_buf();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let location = info.location().map(|at| at.file()).unwrap_or_default();
        if is_storage_failure(message, location) {
            eprintln!("error: {}", storage_failed(&datadir, message));
            std::process::exit(1);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::{DiskGuard, available_bytes, is_storage_failure, storage_failed};

    #[test]
    fn the_guard_reads_the_free_space_and_refuses_below_its_reserve() {
        let dir = std::env::temp_dir();
        let available = available_bytes(&dir).expect("statvfs");
        assert!(available > 0);
        assert!(DiskGuard::new(&dir, 0).check().is_ok(), "0 turns it off");
        assert!(DiskGuard::new(&dir, 1).check().is_ok());
        let err = DiskGuard::new(&dir, u64::MAX / (2 * 1024 * 1024))
            .check()
            .expect_err("more than any disk has");
        let message = err.to_string();
        assert!(message.contains("disk full") && message.contains(&dir.display().to_string()));
    }

    #[test]
    fn storage_failures_are_told_apart_from_other_panics() {
        const MARSHAL: &str = "/root/.cargo/registry/src/index.crates.io-0/commonware-consensus-2026.10.0/src/marshal/core/cache.rs";
        const OURS: &str = "follow/src/engine/mod.rs";
        // I/O errors, wherever raised.
        assert!(is_storage_failure(
            "failed to persist notarized: Blob(Io(Os { code: 28, kind: StorageFull, message: \"No space left on device\" }))",
            OURS
        ));
        assert!(is_storage_failure(
            "write failed: Input/output error (os error 5)",
            OURS
        ));
        // Marshal's panics on a store, seen on a full disk: they name the operation only.
        for message in [
            "failed to insert finalization: journal error: runtime error: write failed",
            "failed to initialize certified archive",
            "failed to sync finalization archives: x",
            "failed to prune data below floor: x",
        ] {
            assert!(is_storage_failure(message, MARSHAL), "{message}");
        }
        // A panic of marshal that is not about its stores, and any panic of ours that names no
        // I/O error, keep the default report.
        assert!(!is_storage_failure(
            "floor finalization epoch unavailable",
            MARSHAL
        ));
        assert!(!is_storage_failure("failed to decode the outcome", OURS));
    }

    #[test]
    fn a_write_the_executor_saw_fail_is_told_with_the_datadir() {
        // What the follower stopped with when the disk filled under its executor (seen in CI).
        let seen = "archive writing a block: freezer error: journal error: runtime error: io error: No space left on device (os error 28)";
        assert!(is_storage_failure(seen, ""));
        let dir = std::env::temp_dir();
        let told = storage_failed(&dir, seen);
        assert!(
            told.contains(&dir.display().to_string()) && told.contains("MiB free"),
            "{told}"
        );
        assert!(told.contains("No space left on device"), "{told}");
    }
}
