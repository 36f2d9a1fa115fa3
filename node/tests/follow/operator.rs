//! What an operator sees of a running follower: its Prometheus metrics (parsed with a parser
//! library), its status page rendered by headless Chromium, and `cairn status`.

use super::{cairn, seeded_devnet_at};
use cairn_tests::process::{CairnProcess, wait_for_height};
use headless_chrome::{
    Browser, LaunchOptions, Tab, protocol::cdp::Page::CaptureScreenshotFormatOption,
};
use prometheus_parse::{Sample, Scrape, Value};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

async fn scrape(url: &str) -> Scrape {
    let body = reqwest::get(url)
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .text()
        .await
        .expect("a text body");
    Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).expect("valid Prometheus text")
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
        other => panic!("{} is not a number: {other:?}", sample.metric),
    }
}

/// The value of the follower's metric `name` (without its prefix) whose labels include
/// `labels`.
fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let full = format!("cairn_follower_status_{name}");
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == full
                && labels
                    .iter()
                    .all(|(key, wanted)| sample.labels.get(key) == Some(*wanted))
        })
        .map(value)
}

fn required(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(scrape, name, labels).unwrap_or_else(|| {
        let names: Vec<_> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        panic!("no metric {name} {labels:?} among {names:?}")
    })
}

/// The Chromium binary: on PATH, else `None` (which fails under CI, where `.ci/run` installs
/// it).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required under CI (.ci/run installs Debian's chromium package)"
        );
        eprintln!("chromium not found: the status page is not rendered in this run");
    }
    found
}

fn text(tab: &Tab, id: &str) -> String {
    let value = tab
        .evaluate(
            &format!("document.getElementById('{id}').textContent"),
            false,
        )
        .expect("the page evaluates")
        .value
        .expect("a value");
    value.as_str().unwrap_or_default().trim().to_string()
}

fn number(tab: &Tab, id: &str) -> Option<u64> {
    text(tab, id).parse().ok()
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn screenshot(tab: &Tab, path: &Path) {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("a screenshot");
    std::fs::write(path, png).expect("the screenshot is written");
    eprintln!("status page screenshot: {}", path.display());
}

/// Renders the follower's and the devnet's status pages in headless Chromium: the follower's
/// live height advances (from its own subscription), its identity history shows the full DKG
/// of epoch 2 announced by boundary 9, and the devnet's page shows its committees and
/// ceremonies. Screenshots go to the test's target directory.
fn render_pages(chromium: PathBuf, follower: &str, devnet: &str, shots: &Path) {
    let options = LaunchOptions::default_builder()
        .path(Some(chromium))
        .sandbox(false)
        .window_size(Some((1280, 1100)))
        .build()
        .expect("launch options");
    let browser = Browser::new(options).expect("chromium starts");
    let tab: Arc<Tab> = browser.new_tab().expect("a tab");
    tab.navigate_to(&format!("http://{follower}/status"))
        .expect("navigates")
        .wait_until_navigated()
        .expect("loads");
    tab.wait_for_element_with_custom_timeout(
        "#identities tbody tr[data-epoch='2']",
        Duration::from_secs(30),
    )
    .expect("the identity history shows the full DKG of epoch 2");
    let identities = tab
        .evaluate(
            "Array.from(document.querySelectorAll('#identities tbody tr')).map(r => r.cells[0].textContent + '@' + r.cells[1].textContent).join(',')",
            false,
        )
        .expect("evaluates")
        .value
        .expect("a value");
    assert_eq!(identities.as_str(), Some("0@genesis,2@9"));
    wait_until(Duration::from_secs(10), "a first height", || {
        number(&tab, "first-height").is_some()
    });
    let first = number(&tab, "first-height").expect("a first height");
    wait_until(
        Duration::from_secs(30),
        "the live height to advance",
        || {
            number(&tab, "height").is_some_and(|height| height >= first + 5)
                && number(&tab, "events").is_some_and(|events| events > 0)
        },
    );
    assert_eq!(text(&tab, "connection"), "live");
    let upstream_state = tab
        .evaluate(
            "document.querySelector('#upstreams tbody tr').cells[1].textContent",
            false,
        )
        .expect("evaluates")
        .value
        .expect("a value");
    assert!(
        matches!(upstream_state.as_str(), Some("healthy" | "unhealthy")),
        "{upstream_state}"
    );
    let rejected = tab
        .wait_for_element_with_custom_timeout(
            "#rejected tbody tr[data-check='bad_signature']",
            Duration::from_secs(30),
        )
        .expect("rejected events by check")
        .get_inner_text()
        .expect("text");
    assert!(rejected.starts_with("bad_signature"), "{rejected}");

    // The charts draw the node's last minutes and move as new samples come.
    let chart = |id: &str| {
        tab.evaluate(
            &format!(
                "(() => {{ const svg = document.getElementById('{id}'); const line = svg.querySelector('polyline.main'); return line ? svg.dataset.end + '|' + svg.dataset.points + '|' + line.getAttribute('points') : ''; }})()"
            ),
            false,
        )
        .expect("evaluates")
        .value
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
    };
    for id in ["chart-height", "chart-lag", "chart-rate", "chart-coverage"] {
        wait_until(Duration::from_secs(10), id, || !chart(id).is_empty());
    }
    let before = chart("chart-height");
    wait_until(Duration::from_secs(15), "the height chart to move", || {
        let now = chart("chart-height");
        now.split('|').next() != before.split('|').next() && now != before
    });
    let points: usize = chart("chart-height")
        .split('|')
        .nth(1)
        .and_then(|points| points.parse().ok())
        .unwrap_or_default();
    assert!(points >= 2, "{points} points");
    // The epochs as a timeline: two identities, the rotation at epoch 2 announced by boundary 9.
    let timeline = tab
        .evaluate(
            "document.querySelectorAll('#timeline rect.band').length + ':' + Array.from(document.querySelectorAll('#timeline line.rotation')).map(l => l.dataset.epoch + '@' + l.dataset.boundary).join(',')",
            false,
        )
        .expect("evaluates")
        .value
        .expect("a value");
    assert_eq!(timeline.as_str(), Some("2:2@9"));
    // The explain box answers for a height a visitor types, and says what it cannot explain.
    let explain = |height: u64| {
        tab.evaluate(
            &format!(
                "document.getElementById('explain-height').value = '{height}'; document.getElementById('explain-form').requestSubmit(); true"
            ),
            false,
        )
        .expect("submits");
    };
    explain(12);
    tab.wait_for_element_with_custom_timeout(
        "#explain-result[data-height='12']",
        Duration::from_secs(10),
    )
    .expect("block 12 is explained");
    let auth = text(&tab, "explain-auth");
    assert!(
        auth == "its own certificate" || auth.starts_with("the parent hash of block 13"),
        "{auth}"
    );
    assert!(text(&tab, "explain-certificate").contains("verified with identity 0x"));
    assert!(text(&tab, "explain-root").starts_with("the genesis outcome"));
    assert!(
        text(&tab, "explain-bytes").contains(" from "),
        "{}",
        text(&tab, "explain-bytes")
    );
    explain(99_999_999);
    wait_until(Duration::from_secs(10), "the explain error", || {
        text(&tab, "explain-error").contains("block 99999999 is not served")
    });
    screenshot(&tab, &shots.join("status-follower.png"));

    let tab = browser.new_tab().expect("a tab");
    tab.navigate_to(&format!("http://{devnet}/status"))
        .expect("navigates")
        .wait_until_navigated()
        .expect("loads");
    tab.wait_for_element_with_custom_timeout("#committees tbody tr", Duration::from_secs(30))
        .expect("the devnet shows its committees");
    let ceremonies = tab
        .evaluate(
            "Array.from(document.querySelectorAll('#ceremonies tbody tr')).map(r => r.cells[0].textContent + ':' + r.cells[1].textContent).join(',')",
            false,
        )
        .expect("evaluates")
        .value
        .expect("a value");
    let ceremonies = ceremonies.as_str().unwrap_or_default().to_string();
    assert!(ceremonies.contains("2:full DKG"), "{ceremonies}");
    assert!(ceremonies.contains("3:reshare"), "{ceremonies}");
    assert_eq!(text(&tab, "role"), "devnet");
    screenshot(&tab, &shots.join("status-devnet.png"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_page_and_status_command_follow_a_devnet_through_a_full_dkg() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A third of the events carry a bad signature: the follower rejects them and repairs the
    // blocks through its resolver, so the rejected counter and the fetch histogram move.
    let devnet = seeded_devnet_at(
        &dir.path().join("devnet"),
        "100ms",
        "127.0.0.1:0",
        &["--fault", "bad-signature:0.3"],
    );
    let follower = CairnProcess::follower_with(
        cairn(),
        &dir.path().join("devnet").join("chain.json"),
        &devnet.addr,
        &dir.path().join("follower"),
        &dir.path().join("follower.log"),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let metrics_line = follower.wait_for_line("metrics on http://");
    let metrics_url = metrics_line
        .trim_start_matches("metrics on ")
        .trim()
        .to_string();
    let follower = follower.with_rpc_addr();
    let client = follower.http();
    wait_for_height(&client, 15, Duration::from_secs(60)).await;

    // The metrics are sampled every 250 ms: they reach what the RPC served a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let first = scrape(&metrics_url).await;
        if required(&first, "executed_height", &[]) >= 15.0 {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "the executed height metric stays below 15"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let height = required(&first, "executed_height", &[]);
    assert!(required(&first, "verified_height", &[]) >= height);
    let lag = required(&first, "lag", &[]);
    assert!(lag <= 10.0, "lag {lag}");
    assert_eq!(required(&first, "identity_rotations_total", &[]), 1.0);
    let upstream = format!("ws://{}", devnet.addr);
    assert_eq!(
        required(&first, "upstream_connected", &[("url", &upstream)]),
        1.0
    );
    assert!(required(&first, "epoch", &[]) >= 3.0);

    // The heights advance; the rejected counter moved with the injected bad events.
    let deadline = Instant::now() + Duration::from_secs(30);
    let later = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = scrape(&metrics_url).await;
        let rejected = metric(
            &later,
            "rejected_events_total",
            &[("check", "bad_signature")],
        );
        if required(&later, "executed_height", &[]) >= height + 5.0
            && rejected.is_some_and(|count| count > 0.0)
        {
            break later;
        }
        assert!(
            Instant::now() < deadline,
            "no progress or no rejected event"
        );
    };
    assert!(required(&later, "target_height", &[]) >= required(&later, "executed_height", &[]));
    assert!(
        required(&later, "upstream_invalid_total", &[("url", &upstream)]) > 0.0,
        "the bad events are counted against their upstream"
    );
    let fetched = later
        .samples
        .iter()
        .find(|sample| sample.metric == "cairn_follower_status_fetch_latency_seconds")
        .map(|sample| match &sample.value {
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            other => panic!("fetch latency is not a histogram: {other:?}"),
        })
        .expect("a fetch latency histogram");
    assert!(fetched > 0.0, "repairs were fetched and timed");
    // Marshal's own metrics ride on the same registry.
    assert!(
        later
            .samples
            .iter()
            .any(|sample| sample.metric.starts_with("cairn_follower_marshal_")),
        "marshal's metrics are exported"
    );

    // `cairn status` prints the same summary.
    let output = Command::new(cairn())
        .args(["status", "--rpc", &follower.addr])
        .output()
        .expect("cairn status runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("follower of cairn-devnet"), "{printed}");
    assert!(printed.contains("epoch 2 from boundary 9"), "{printed}");
    assert!(printed.contains(&upstream), "{printed}");
    assert!(printed.contains("bad_signature"), "{printed}");

    if let Some(chromium) = chromium() {
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let (follower_addr, devnet_addr) = (follower.addr.clone(), devnet.addr.clone());
        tokio::task::spawn_blocking(move || {
            render_pages(chromium, &follower_addr, &devnet_addr, &shots);
        })
        .await
        .expect("the pages render");
    }
    follower.stop();
    devnet.stop();
}
