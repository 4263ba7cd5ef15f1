use super::*;

use clap::Parser;

#[derive(clap::Parser)]
struct Wrapper {
    #[command(flatten)]
    args: MountArgs,
}

fn try_args(extra: &[&str]) -> Result<MountArgs, clap::Error> {
    let mut argv = vec!["tdfs", "STORE", "/mnt"];
    argv.extend_from_slice(extra);
    Wrapper::try_parse_from(argv).map(|w| w.args)
}

#[test]
fn bad_stores_are_refused_clearly() {
    let args = |extra: &[&str]| try_args(extra).unwrap();
    let err = connect_store(&args(&[]), "/nonexistent/tdfs-store")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tdfs-store"), "{err}");
    let err = connect_store(&args(&["--region", "x"]), "/tmp")
        .unwrap_err()
        .to_string();
    assert!(err.contains("--region"), "{err}");
    let err = connect_store(&args(&[]), "ftp://host/x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported"), "{err}");
}

#[test]
fn readahead_and_bench_throttle() {
    let plain = try_args(&[]).unwrap();
    assert_eq!(
        (plain.readahead, plain.bench_throttle),
        (READAHEAD_CHUNKS, None)
    );
    let slow = try_args(&["--readahead", "0", "--bench-throttle", "20ms,100MB"]).unwrap();
    assert_eq!(slow.readahead, 0);
    assert_eq!(
        slow.bench_throttle,
        Some(Throttle {
            first_byte: Duration::from_millis(20),
            bytes_per_sec: 100_000_000
        })
    );
    let err = try_args(&["--bench-throttle", "fast"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("LATENCY,BANDWIDTH"), "{err}");
    // Benchmarks only: not in the help a user reads.
    let help = Wrapper::try_parse_from(["tdfs", "--help"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(help.contains("--readahead"), "{help}");
    assert!(!help.contains("bench-throttle"), "{help}");
}

#[test]
fn prefetch_flags() {
    let plain = try_args(&[]).unwrap();
    assert!(plain.prefetch);
    assert_eq!((plain.prefetch_max, plain.prefetch_dir), (0, None));
    let off = try_args(&["--prefetch", "off", "--prefetch-max", "1GiB"]).unwrap();
    assert!(!off.prefetch);
    assert_eq!(off.prefetch_max, 1 << 30);
    let err = try_args(&["--prefetch", "yes"]).unwrap_err().to_string();
    assert!(err.contains("say on or off"), "{err}");
}

#[test]
fn local_stores_become_absolute() {
    assert_eq!(absolute_store("s3://b/p"), "s3://b/p");
    let here = std::env::current_dir().unwrap();
    assert_eq!(
        absolute_store("rel/store"),
        here.join("rel/store").display().to_string()
    );
    assert_eq!(absolute_store("/srv/t"), "/srv/t");
}
