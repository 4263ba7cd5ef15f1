//! Running programs from tests: the built `tdfs` binary and external tools,
//! every wait bounded so that a failure never hangs the run.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

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
