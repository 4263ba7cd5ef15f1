//! What a worker host's service manager and monitoring see of a mount:
//! `--metrics-listen` serves histograms that move while files are read, in
//! text Prometheus' own parser accepts; a mount run by systemd (here: with
//! `$NOTIFY_SOCKET` set by the test) sends READY=1 with a status once it
//! answers and STOPPING=1 when it is stopped.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available};
use common::process::wait_until;
use common::tools::tool_available;

/// Bound on one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of `GET /metrics` from the endpoint the mount logged.
fn scrape(mount: &MountGuard) -> String {
    let log = mount.log();
    let address = log
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("the mount logged no metrics address:\n{log}"));
    let mut stream = TcpStream::connect(address).expect("connecting to the metrics endpoint");
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// The counts of the histograms that reads of `memfile` move.
fn read_counts(text: &str) -> [f64; 3] {
    [
        sample(text, "tdfs_read_latency_seconds_count{file=\"memfile\"}"),
        sample(text, "tdfs_store_request_seconds_count"),
        sample(text, "tdfs_fetch_wait_seconds_count"),
    ]
}

/// Parse `text` with the Python prometheus_client OpenMetrics parser and
/// return the families it found, one `name type` per line. `None` only when
/// the parser is missing and TDFS_SKIP_PYTHON=1 allows that.
fn python_parse(text: &str) -> Option<String> {
    const SCRIPT: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type)\n";
    let have_parser = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !tool_available(
        have_parser,
        "TDFS_SKIP_PYTHON",
        "python3 with prometheus_client",
        "it checks the metrics text (apt-get install python3-prometheus-client, or pip \
         install prometheus_client)",
    ) {
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn memfiles(mount: &MountGuard) -> Vec<PathBuf> {
    std::fs::read_dir(mount.path())
        .expect("listing the mount")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("memfile"))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn metrics_endpoint_histograms_move_during_reads() {
    if !fuse_available() {
        return;
    }
    let mount = MountGuard::start(
        fixture_store("v4-zstd"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let before = scrape(&mount);
    let files = memfiles(&mount);
    assert!(!files.is_empty(), "no memfile in the mount");
    let reader = std::thread::spawn(move || {
        for file in files {
            std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    });
    // Scrapes while the reader runs must answer too.
    wait_until(Duration::from_secs(180), "reading the memfiles", || {
        scrape(&mount);
        reader.is_finished()
    });
    reader.join().expect("reader");
    let after = scrape(&mount);
    let (b, a) = (read_counts(&before), read_counts(&after));
    for (i, what) in ["memfile read latency", "store request", "fetch wait"]
        .iter()
        .enumerate()
    {
        assert!(
            a[i] > b[i],
            "{what} count did not move: {} -> {}",
            b[i],
            a[i]
        );
    }
    assert!(sample(&after, "tdfs_cache_size_bytes") > 0.0, "{after}");
    // `.stats` renders the same registry.
    let stats = std::fs::read_to_string(mount.join(".stats")).expect(".stats");
    assert!(
        stats.contains("tdfs_fetch_wait_seconds_bucket{le=\"60.0\"}"),
        "{stats}"
    );
    assert!(stats.ends_with("# EOF\n"), "{stats}");

    if let Some(families) = python_parse(&after) {
        for family in [
            "tdfs_read_latency_seconds histogram",
            "tdfs_store_request_seconds histogram",
            "tdfs_store_first_byte_seconds histogram",
            "tdfs_fetch_wait_seconds histogram",
            "tdfs_cache_size_bytes gauge",
            "tdfs_cache_budget_bytes gauge",
            "tdfs_reads counter",
        ] {
            assert!(
                families.lines().any(|l| l == family),
                "{family}:\n{families}"
            );
        }
    }
}

/// Receive notices on `socket` until one contains `want` (bounded).
fn notices_until(socket: &UnixDatagram, want: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    wait_until(
        Duration::from_secs(30),
        &format!("a {want:?} notice"),
        || {
            if let Ok(n) = socket.recv(&mut buf) {
                let notice = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push_str(&notice);
                seen.push('\n');
                if notice.contains(want) {
                    return Ok(notice);
                }
            }
            Err(format!("got:\n{seen}"))
        },
    )
}

#[test]
fn systemd_hears_ready_with_status_then_stopping() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("notify");
    let socket = UnixDatagram::bind(path).expect("binding the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut mount = MountGuard::options(fixture_store("v4-zstd"))
        .env(&[("NOTIFY_SOCKET", path.display().to_string())])
        .start();
    let ready = notices_until(&socket, "READY=1");
    assert!(ready.contains("STATUS=serving 3 builds of "), "{ready}");
    assert!(
        ready.contains(&mount.path().display().to_string()),
        "{ready}"
    );
    mount.signal_and_wait(libc::SIGTERM).expect("tdfs ran");
    let stopping = notices_until(&socket, "STOPPING=1");
    assert!(stopping.contains("STATUS=unmounting "), "{stopping}");
}
