//! Running programs from tests: the built `tdfs` binary and external tools,
//! every wait bounded so that a failure never hangs the run.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The built `tdfs` binary.
pub const TDFS: &str = env!("CARGO_BIN_EXE_tdfs");

/// Bound on one external command.
pub const COMMAND_TIMEOUT_SECS: u32 = 120;

/// Run `program args…` under `timeout`, returning its output.
pub fn run<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("timeout")
        .args(["-k", "5", &COMMAND_TIMEOUT_SECS.to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// `run`, asserting success; returns stdout as text.
pub fn run_ok<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `f` on a thread and give up (panicking) after `secs`: in-process
/// reads of the mount must not hang the test. A thread stuck in the mount is
/// freed when the guard tears the mount down.
pub fn within<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// How often `wait_until` looks again: short beside every timeout it is
/// given, long enough not to busy-spin two shared cores.
const POLL: Duration = Duration::from_millis(10);

/// What `wait_until` polls: `true`, `Some` or `Ok` ends the wait; `Err`'s
/// value is kept for the message when the wait times out.
pub trait Ready {
    type Value;
    /// The value once ready, else what was seen instead.
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Result<(), Option<String>> {
        self.then_some(()).ok_or(None)
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Ready for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Poll `check` until it is ready (`true`, `Some(v)`, `Ok(v)`) and return
/// its value; panic naming `what` (and the last `Err` seen) when `timeout`
/// passes first. The one way tests wait for an event another thread or
/// process makes: never a fixed sleep, never an unbounded loop.
pub fn wait_until<R: Ready>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().ready() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            match last {
                Some(last) => panic!("{what}: not within {timeout:?} (last seen: {last})"),
                None => panic!("{what}: not within {timeout:?}"),
            }
        }
        thread::sleep(POLL);
    }
}

/// `tdfs pack` of the images at `memfile` and `rootfs` into the local store
/// at `store` as build `build`, with `extra` options (e.g. `--compress`,
/// `--base`); panics with tdfs's output when it fails.
pub fn tdfs_pack(store: &Path, build: &str, memfile: &Path, rootfs: &Path, extra: &[&str]) {
    let mut args: Vec<OsString> = vec![
        "pack".into(),
        "--store".into(),
        store.into(),
        "--build-id".into(),
        build.into(),
        "--memfile".into(),
        memfile.into(),
        "--rootfs".into(),
        rootfs.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    run_ok(TDFS, &args);
}

/// Run the built `tdfs` binary.
pub fn tdfs(args: &[&str]) -> Output {
    Command::new(TDFS)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run tdfs")
}

/// Run `tdfs`, require success, return stdout.
pub fn tdfs_ok(args: &[&str]) -> String {
    let out = tdfs(args);
    assert!(
        out.status.success(),
        "tdfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A required external program; fails loudly when it is missing.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is required by this test (install it: apt-get install {name})"
    );
}
