//! Pieces every long-running `cairn` command shares: the datadir lock, the shutdown signal and
//! the metrics endpoint.

use commonware_runtime::Metrics;
use eyre::{WrapErr, eyre};
use std::{fs::File, net::SocketAddr, path::Path};

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

/// The progress bar shown on the terminal, if any.
static PROGRESS_BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Shows `bar` (or none) under the lines [`print_line`] writes.
pub fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    *PROGRESS_BAR
        .lock()
        .unwrap_or_else(|poison| poison.into_inner()) = bar;
}

/// Writes `line` and a newline to stdout. When stdout is a pipe whose reader has gone (as in
/// `cairn ... | head`), the process exits at once with status 0 and no message, as Unix tools
/// do; other write errors are dropped (progress output never stops a node).
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let write = || {
        let mut out = std::io::stdout().lock();
        out.write_fmt(line)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
    };
    // A progress bar on the terminal is cleared for the line, then drawn again under it.
    let bar = PROGRESS_BAR
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    let written = match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    };
    if let Err(err) = written
        && err.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, caught from the moment this is created: a signal that arrives
/// before anything waits for it is kept, so a node stops cleanly at any point of its start-up.
pub struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Starts catching the signals (the process no longer dies of them).
    pub fn install() -> eyre::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).wrap_err("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).wrap_err("catching SIGTERM")?,
        })
    }

    /// Resolves on the next Ctrl-C or SIGTERM (at once for one already received).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (caught from the first poll on).
pub async fn shutdown_signal() {
    match Shutdown::install() {
        Ok(mut shutdown) => shutdown.wait().await,
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Longest a metrics client may take to send its request headers.
const METRICS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a metrics connection stays open (a scraper connects again).
const METRICS_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves the Prometheus text encoding of every metric registered in `context`'s runtime at
/// `http://addr/metrics`, in the background; returns the address bound. At most
/// [`crate::fds::METRICS_CONNECTIONS`] connections are served at once (more wait in the
/// listen backlog, holding no descriptor of this process); a client that has not sent its
/// headers within 5 s, or whose connection has lasted a minute, is disconnected.
pub async fn serve_metrics<M: Metrics + Send + Sync + 'static>(
    addr: &str,
    context: M,
) -> eyre::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .wrap_err_with(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let context = std::sync::Arc::new(context);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let context = context.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    context.encode(),
                )
            }
        }),
    );
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(crate::fds::METRICS_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, most likely: wait for some to be freed.
                    tracing::warn!(%err, "the metrics server could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    continue;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(METRICS_HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(METRICS_CONNECTION_LIFETIME, connection).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}
