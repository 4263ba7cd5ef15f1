use super::*;

use std::time::Duration;

use clap::Parser;

use crate::fs::MountConfig;
use crate::store::Throttle;
use crate::template::{PrefetchConfig, READAHEAD_CHUNKS, TemplateConfig};

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

#[test]
fn flag_defaults_are_the_configuration_defaults() {
    let parsed = try_args(&[]).unwrap();
    assert_eq!(parsed, MountArgs::new("STORE".into(), "/mnt".into()));
    let config = parsed.template_config("/cache".into(), None, 9);
    let default = TemplateConfig::default();
    assert_eq!(config.fetch_timeout, Duration::from_secs(30));
    assert_eq!(
        (config.fetch_timeout, config.readahead, config.fetch_workers),
        (
            default.fetch_timeout,
            default.readahead,
            default.fetch_workers
        )
    );
    assert_eq!(
        (
            config.listing_ttl,
            config.max_cache_size,
            config.max_idle_diffs
        ),
        (default.listing_ttl, default.max_cache_size, 9)
    );
    assert_eq!(config.prefetch.enabled, PrefetchConfig::default().enabled);
    assert!(!config.passthrough && !config.verify_checksums && config.peers.is_none());
    let options = parsed.mount_config();
    let default = MountConfig::default();
    assert_eq!(
        (options.threads, options.allow_other),
        (default.threads, default.allow_other)
    );
}

#[test]
fn timeouts_take_units() {
    for (flag, want) in [
        ("30", Duration::from_secs(30)),
        ("300ms", Duration::from_millis(300)),
        ("2m", Duration::from_secs(120)),
    ] {
        let args = try_args(&["--fetch-timeout", flag]).unwrap();
        assert_eq!(args.fetch_timeout, want, "{flag}");
    }
    let err = try_args(&["--fetch-timeout", "0"]).unwrap_err().to_string();
    assert!(err.contains("give a timeout"), "{err}");
    let err = try_args(&["--peer-timeout", "300"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a duration"), "{err}");
}

#[test]
fn peer_registry_flags() {
    let check = |extra: &[&str]| try_args(extra).unwrap().peer.check();
    let (_, client) = check(&[
        "--peer-registry",
        "redis://127.0.0.1:6390/2",
        "--peer-listen",
        "127.0.0.1:5008",
    ])
    .unwrap();
    assert_eq!(
        client.registry.map(|r| r.to_string()).as_deref(),
        Some("redis://127.0.0.1:6390/2")
    );
    assert_eq!(client.self_url.as_deref(), Some("http://127.0.0.1:5008"));
    assert_eq!(client.listen, Some("127.0.0.1:5008".parse().unwrap()));
    // Only asking the fleet: no entry of its own.
    let (_, client) = check(&["--peer-registry", "redis://127.0.0.1"]).unwrap();
    assert!(client.registry.is_some() && client.self_url.is_none());
    for (extra, why) in [
        (
            &["--peer-registry", "rediss://h:6379"][..],
            "the scheme is not redis://",
        ),
        (&["--peer-registry", "redis://h:70000"], "out of 1..=65535"),
        (
            &[
                "--peer-registry",
                "redis://h",
                "--peer-advertise",
                "http://10.0.0.1:5008",
            ],
            "without --peer-listen",
        ),
        (
            &[
                "--peer-registry",
                "redis://h",
                "--peer-listen",
                "0.0.0.0:5008",
                "--peer-insecure",
            ],
            "add --peer-advertise",
        ),
    ] {
        let err = check(extra).unwrap_err().to_string();
        assert!(
            err.starts_with("--peer-registry") && err.contains(why),
            "{extra:?}: {err}"
        );
    }
}
