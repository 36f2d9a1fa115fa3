//! `cairn` processes for end-to-end tests: started with piped stdout read line by line, stopped
//! with SIGTERM or SIGKILL, and always killed when dropped.

use alloy_primitives::U64;
use cairn_primitives::{CertifiedBlock, Query};
use jsonrpsee::{
    core::client::ClientT,
    http_client::{HttpClient, HttpClientBuilder},
    rpc_params,
};
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Writes to `out` the chain profile at `chain` without its genesis header (as the built-in
/// Tempo profiles are: only the genesis outcome), with the fields of `extra` merged in.
pub fn profile_without_genesis_header(chain: &Path, out: &Path, extra: serde_json::Value) {
    let text = std::fs::read_to_string(chain).expect("chain profile readable");
    let mut profile: serde_json::Value = serde_json::from_str(&text).expect("chain profile JSON");
    let object = profile.as_object_mut().expect("a profile is an object");
    object.remove("genesisHeader");
    if let serde_json::Value::Object(extra) = extra {
        object.extend(extra);
    }
    std::fs::write(out, profile.to_string()).expect("profile written");
}

/// A running `cairn` command.
pub struct CairnProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The RPC address it printed (`rpc listening on ADDR`), once known.
    pub addr: String,
}

impl CairnProcess {
    /// Starts `binary` with `args`; stderr goes to `stderr` (a log file, or null).
    pub fn start<S: AsRef<OsStr>>(
        binary: &Path,
        args: impl IntoIterator<Item = S>,
        stderr: Stdio,
    ) -> Self {
        Self::start_with_env(binary, args, stderr, &[])
    }

    /// [`Self::start`] with extra environment variables.
    pub fn start_with_env<S: AsRef<OsStr>>(
        binary: &Path,
        args: impl IntoIterator<Item = S>,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cairn starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            addr: String::new(),
        }
    }

    /// Starts `cairn devnet --datadir DATADIR ARGS...` and waits for its RPC address.
    pub fn devnet(binary: &Path, datadir: &Path, args: &[&str]) -> Self {
        let mut all: Vec<&OsStr> = vec!["devnet".as_ref(), "--datadir".as_ref(), datadir.as_ref()];
        all.extend(args.iter().map(|arg| OsStr::new(*arg)));
        Self::start(binary, all, Stdio::null()).with_rpc_addr()
    }

    /// Starts `cairn devnet --consensus simplex` on `datadir`: `validators` validator processes
    /// in committees of `committee`, epochs of 20 blocks, ports the OS picks; waits until it has
    /// started them.
    pub fn simplex_devnet(
        binary: &Path,
        datadir: &Path,
        validators: usize,
        committee: usize,
    ) -> Self {
        let (count, size) = (validators.to_string(), committee.to_string());
        let args: [&OsStr; 13] = [
            "devnet".as_ref(),
            "--datadir".as_ref(),
            datadir.as_ref(),
            "--consensus".as_ref(),
            "simplex".as_ref(),
            "--validators".as_ref(),
            count.as_ref(),
            "--committee".as_ref(),
            size.as_ref(),
            "--epoch-length".as_ref(),
            "20".as_ref(),
            "--rpc-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
        ];
        let devnet = Self::start(binary, args, Stdio::null());
        devnet.wait_for_line(&format!("started {validators} simplex validators"));
        devnet
    }

    /// Starts a devnet with epochs of 5 blocks, a full DKG at epoch 2, one block every
    /// `block_time` and its RPC on `addr` (port 0 lets the OS choose), with `extra` arguments.
    pub fn small_devnet(
        binary: &Path,
        datadir: &Path,
        block_time: &str,
        addr: &str,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "--epoch-length",
            "5",
            "--block-time",
            block_time,
            "--full-dkg-at-epochs",
            "2",
            "--rpc-addr",
            addr,
        ];
        args.extend_from_slice(extra);
        Self::devnet(binary, datadir, &args)
    }

    /// Starts `cairn follow` of `chain` from `upstream` in `datadir`, serving RPC on an
    /// OS-chosen port, with its info-level log in `log`; waits for its RPC address.
    pub fn follower(
        binary: &Path,
        chain: &Path,
        upstream: &str,
        datadir: &Path,
        log: &Path,
    ) -> Self {
        Self::follower_with(binary, chain, upstream, datadir, log, &[]).with_rpc_addr()
    }

    /// [`Self::follower`] with extra arguments, returning at once (the caller reads the lines
    /// printed before the RPC address, then calls [`Self::with_rpc_addr`]).
    pub fn follower_with(
        binary: &Path,
        chain: &Path,
        upstream: &str,
        datadir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let mut args: Vec<&OsStr> = vec![
            "follow".as_ref(),
            "--chain".as_ref(),
            chain.as_ref(),
            "--upstream".as_ref(),
            upstream.as_ref(),
            "--datadir".as_ref(),
            datadir.as_ref(),
            "--rpc-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
        ];
        args.extend(extra.iter().map(|arg| OsStr::new(*arg)));
        Self::start_with_env(
            binary,
            args,
            Stdio::from(log),
            &[("CAIRN_LOG", "info"), ("NO_COLOR", "1")],
        )
    }

    /// Waits for the `rpc listening on ADDR` line and records the address.
    pub fn with_rpc_addr(self) -> Self {
        self.with_rpc_addr_within(Duration::from_secs(120))
    }

    /// [`Self::with_rpc_addr`] waiting up to `limit` (a follower prints the address once it
    /// serves its chain, after its start-up catch-up).
    pub fn with_rpc_addr_within(mut self, limit: Duration) -> Self {
        let line = self.wait_for_line_within("rpc listening on ", limit);
        self.addr = line
            .trim_start_matches("rpc listening on ")
            .split_whitespace()
            .next()
            .expect("an address follows")
            .to_string();
        self
    }

    /// Waits for the `status page at http://ADDR/status` line a follower prints once its RPC
    /// server is bound, before its start-up (checkpoint walk, catch-up) is done, and records the
    /// address: the server then answers `eth_syncing` and `cairn_status`.
    pub fn with_status_addr(mut self) -> Self {
        let line = self.wait_for_line("status page at http://");
        self.addr = line
            .trim_start_matches("status page at http://")
            .split('/')
            .next()
            .expect("an address follows")
            .to_string();
        self
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The next line starting with `prefix` (earlier lines are skipped); panics when it has not
    /// come within two minutes or when the process closes its output.
    pub fn wait_for_line(&self, prefix: &str) -> String {
        self.wait_for_line_within(prefix, Duration::from_secs(120))
    }

    /// [`Self::wait_for_line`] waiting up to `limit` in all (other lines arriving do not extend
    /// it).
    pub fn wait_for_line_within(&self, prefix: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|err| panic!("no line starting with {prefix:?}: {err}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// An HTTP JSON-RPC client for the recorded address.
    pub fn http(&self) -> HttpClient {
        HttpClientBuilder::default()
            .build(format!("http://{}", self.addr))
            .expect("http client")
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process with SIGTERM and asserts a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("the process exits");
        assert!(exit.success(), "clean shutdown on SIGTERM, got {exit}");
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own and returns its exit code.
    pub fn wait(mut self) -> Option<i32> {
        self.child.wait().expect("the process exits").code()
    }
}

impl Drop for CairnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `consensus_getFinalization` at `height`; panics when the node does not answer with one.
pub async fn finalization(client: &HttpClient, height: u64) -> CertifiedBlock {
    client
        .request(
            "consensus_getFinalization",
            rpc_params![Query::Height(height)],
        )
        .await
        .unwrap_or_else(|err| panic!("finalization {height}: {err}"))
}

/// The certificate a follower serves at `height`, or `None` when it holds the block without
/// one (a block repaired through its successor's parent hash); panics on any other answer.
pub async fn served_certificate(client: &HttpClient, height: u64) -> Option<CertifiedBlock> {
    match client
        .request(
            "consensus_getFinalization",
            rpc_params![Query::Height(height)],
        )
        .await
    {
        Ok(certified) => Some(certified),
        Err(err)
            if err
                .to_string()
                .contains("authenticated through the parent hash") =>
        {
            None
        }
        Err(err) => panic!("finalization {height}: {err}"),
    }
}

/// Checks every certificate `follower` serves in `heights` against the one `devnet` serves, and
/// that every boundary (with epochs of `epoch_length`) has one. Returns how many heights the
/// follower holds without a certificate.
pub async fn same_certificates(
    follower: &HttpClient,
    devnet: &HttpClient,
    heights: std::ops::RangeInclusive<u64>,
    epoch_length: u64,
) -> usize {
    let mut without = 0;
    for height in heights {
        match served_certificate(follower, height).await {
            Some(certified) => assert_eq!(
                certified,
                finalization(devnet, height).await,
                "certificate at {height}"
            ),
            None => {
                assert_ne!(
                    (height + 1) % epoch_length,
                    0,
                    "boundary {height} is served with its certificate"
                );
                without += 1;
            }
        }
    }
    without
}

/// The certificate coverage a follower's `cairn_status` reports: (served heights, of those
/// without their own certificate, certificates filled since its start).
pub async fn certificate_coverage(client: &HttpClient) -> (u64, u64, u64) {
    let status: serde_json::Value = client
        .request("cairn_status", rpc_params![])
        .await
        .expect("cairn_status");
    let certificates = &status["certificates"];
    let number = |key: &str| certificates[key].as_u64().unwrap_or_default();
    (number("served"), number("missing"), number("filled"))
}

/// What a failing test shows of a node's log: every warning, error and panic line, then its
/// last 20 lines, at most 80 lines in all, so the cause stays in view where test output is cut.
pub fn log_excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let notable = lines.iter().filter(|line| {
        line.contains(" WARN ")
            || line.contains(" ERROR ")
            || line.contains("panicked")
            || line.starts_with("error")
    });
    let mut shown: Vec<&str> = notable.copied().collect();
    if shown.len() > 60 {
        shown.drain(..shown.len() - 60);
    }
    shown.push("...");
    shown.extend(&lines[lines.len().saturating_sub(20)..]);
    shown.join("\n")
}

/// `eth_blockNumber`, or 0 while the node has nothing finalized (or does not answer).
pub async fn block_number(client: &HttpClient) -> u64 {
    let number: Result<U64, _> = client.request("eth_blockNumber", rpc_params![]).await;
    number.map(|n| n.to::<u64>()).unwrap_or(0)
}

/// Polls `client` until it serves `target` and returns the height it reached; panics after
/// `limit`.
pub async fn wait_for_height(client: &HttpClient, target: u64, limit: Duration) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let current = block_number(client).await;
        if current >= target {
            return current;
        }
        assert!(
            start.elapsed() < limit,
            "stuck at {current} waiting for {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CPU list (`0-1`) a `/proc/.../status` text says its process or thread may run on.
pub fn allowed_cpus(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_string())
}

/// The first CPU this process may run on (from /proc/self/status), for `cairn follow --cpus`.
pub fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    allowed_cpus(&status)
        .and_then(|list| list.split([',', '-']).next().map(str::to_string))
        .expect("Cpus_allowed_list")
}

/// The sending half of a raw WebSocket connection.
pub type RawSender = soketto::connection::Sender<tokio_util::compat::Compat<tokio::net::TcpStream>>;
/// The receiving half of a raw WebSocket connection.
pub type RawReceiver =
    soketto::connection::Receiver<tokio_util::compat::Compat<tokio::net::TcpStream>>;

/// A raw WebSocket connection to `addr` that subscribes `subscriptions` times (request ids 1,
/// 2, ...) and then reads nothing until the caller does; dropping both halves closes it.
pub async fn silent_subscriber(
    addr: impl tokio::net::ToSocketAddrs,
    subscriptions: usize,
) -> (RawSender, RawReceiver) {
    use tokio_util::compat::TokioAsyncReadCompatExt as _;
    let socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut handshake = soketto::handshake::Client::new(socket.compat(), "127.0.0.1", "/");
    let response = handshake.handshake().await.expect("websocket handshake");
    assert!(matches!(
        response,
        soketto::handshake::ServerResponse::Accepted { .. }
    ));
    let (mut sender, receiver) = handshake.into_builder().finish();
    for id in 1..=subscriptions {
        sender
            .send_text(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"consensus_subscribe","params":[]}}"#
            ))
            .await
            .expect("sends");
    }
    sender.flush().await.expect("flushes");
    (sender, receiver)
}
