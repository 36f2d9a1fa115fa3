//! Pieces every long-running `cairn` command shares: the datadir lock and the shutdown signal.

use eyre::{WrapErr, eyre};
use std::{fs::File, path::Path};

/// Creates `datadir` and takes its lock, held for as long as the returned file lives: two
/// processes writing one store would corrupt it.
pub fn lock_datadir(datadir: &Path) -> eyre::Result<File> {
    std::fs::create_dir_all(datadir)
        .wrap_err_with(|| format!("creating datadir {}", datadir.display()))?;
    let lock_path = datadir.join("LOCK");
    let lock =
        File::create(&lock_path).wrap_err_with(|| format!("creating {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        eyre!(
            "datadir {} is in use by another cairn process",
            datadir.display()
        )
    })?;
    Ok(lock)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
