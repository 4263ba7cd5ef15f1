//! `tdfs mount --peer-registry`: a fleet that forms itself in a real
//! `redis-server`. Three mounts joined only by the registry read every
//! file byte-exact with each unit fetched from the store once fleet-wide;
//! one killed, the others keep reading right bytes and drop it from their
//! rings within the TTL; Redis stopped, they keep reading (through the
//! peers they knew, then the store). Bad registry entries are skipped with
//! one warning each, and a registry that never answers leaves the mount to
//! its store.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available};
use common::oracle::oracle_flatten;
use common::peer::free_loopback_addr;
use common::process::wait_until;
use common::redis::RedisServer;
use tdfs::format::FileKind;
use tdfs::peer::{REGISTRY_POLL, REGISTRY_TTL};
use tdfs::store::{LocalStore, Store};
use uuid::Uuid;

/// The v4-zstd fixture's chain (1 MiB zstd frames): base, then two layers.
const BASE: &str = "4c8cee25-4691-41ad-bee6-af9d9284b55b";
const LAYER1: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
const LAYER2: &str = "1be99a9b-c149-472e-9bf0-63629925f54a";
/// The warning of a registry outage (logged once per outage).
const OUTAGE: &str = "keeping the members last seen";

fn store(path: &Path) -> Arc<dyn Store> {
    Arc::new(LocalStore::open(path.to_path_buf()).expect("store"))
}

/// `build`'s `file` read whole through `mount`, checked against the oracle.
fn read_exact(mount: &MountGuard, store: &dyn Store, build: &str, file: FileKind) {
    let id = Uuid::parse_str(build).unwrap();
    let got = std::fs::read(mount.join(format!("{build}/{}", file.name())))
        .unwrap_or_else(|e| panic!("reading {build}/{file}: {e}\n{}", mount.log()));
    assert!(
        got == oracle_flatten(store, id, file),
        "{build}/{file} differs from the oracle's"
    );
}

/// Both template files of `build` through `mount`, byte-exact.
fn read_build(mount: &MountGuard, store: &dyn Store, build: &str) {
    for file in FileKind::ALL {
        read_exact(mount, store, build, file);
    }
}

/// Flags of a mount that fetches only what is read; a peer timeout long
/// enough that two busy cores never turn a live peer into a fallback.
const QUIET: [&str; 6] = [
    "--readahead",
    "0",
    "--prefetch",
    "off",
    "--peer-timeout",
    "5s",
];

/// A mount serving peers on `listen` and joining `registry`.
fn fleet_mount(store: &Path, registry: &str, listen: SocketAddr) -> MountGuard {
    let listen = listen.to_string();
    let mut args = vec!["--peer-listen", &listen, "--peer-registry", registry];
    args.extend_from_slice(&QUIET);
    MountGuard::start(store, &args)
}

fn members(mount: &MountGuard) -> u64 {
    mount.stat("tdfs_peer_members")
}

/// How long a dead member may stay in a ring: its entry's TTL, the poll
/// that notices, and room for a loaded machine.
fn dropout_bound() -> Duration {
    REGISTRY_TTL + 2 * REGISTRY_POLL + Duration::from_secs(5)
}

#[test]
fn three_mounts_form_a_fleet_and_outlive_a_member_and_the_registry() {
    if !fuse_available() {
        return;
    }
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let path = fixture_store("v4-zstd");
    let s = store(&path);

    // The units of the base build: what one mount alone fetches.
    let lone = MountGuard::start(&path, &QUIET);
    read_build(&lone, s.as_ref(), BASE);
    let unique = lone.stat("tdfs_store_requests_total");
    assert!(unique > 3, "the base has units to spread: {unique}");
    drop(lone);

    let mut fleet: Vec<MountGuard> = (0..3)
        .map(|_| fleet_mount(&path, &redis.url(), free_loopback_addr()))
        .collect();
    wait_until(
        REGISTRY_POLL * 3 + Duration::from_secs(10),
        "every mount sees the three",
        || fleet.iter().all(|m| members(m) == 3),
    );
    for m in &fleet {
        read_build(m, s.as_ref(), BASE);
    }
    let fetched: u64 = fleet
        .iter()
        .map(|m| m.stat("tdfs_store_requests_total"))
        .sum();
    assert_eq!(
        fetched, unique,
        "each unit fetched from the store once fleet-wide"
    );
    for m in &fleet {
        assert!(
            m.stat("tdfs_peer_bytes_total") > 0,
            "every mount read through a peer"
        );
        assert_eq!(m.stat("tdfs_peer_registry_errors_total"), 0);
    }

    // A member dies without leaving: the others keep right bytes and drop
    // it once its entry expires.
    let mut dead = fleet.pop().unwrap();
    let killed = Instant::now();
    dead.signal_and_wait(libc::SIGKILL);
    for m in &fleet {
        read_build(m, s.as_ref(), LAYER1);
    }
    wait_until(dropout_bound(), "the dead member leaves both rings", || {
        fleet.iter().all(|m| members(m) == 2)
    });
    assert!(
        killed.elapsed() >= REGISTRY_TTL - REGISTRY_POLL,
        "the live entry lasted its TTL, not less: {:?}",
        killed.elapsed()
    );
    drop(dead);

    // The registry stops: the last members stay, one warning each.
    redis.stop();
    let peer_bytes: Vec<u64> = fleet
        .iter()
        .map(|m| m.stat("tdfs_peer_bytes_total"))
        .collect();
    for m in &fleet {
        read_exact(m, s.as_ref(), LAYER2, FileKind::Memfile);
    }
    let through_peers = fleet
        .iter()
        .zip(&peer_bytes)
        .any(|(m, &before)| m.stat("tdfs_peer_bytes_total") > before);
    assert!(
        through_peers,
        "the peers known before the outage still serve"
    );
    wait_until(
        REGISTRY_POLL * 4 + Duration::from_secs(5),
        "failed polls are counted",
        || {
            fleet
                .iter()
                .all(|m| m.stat("tdfs_peer_registry_errors_total") >= 3)
        },
    );
    for m in &fleet {
        assert_eq!(members(m), 2, "the last members are kept");
        assert_eq!(
            m.log().matches(OUTAGE).count(),
            1,
            "one warning:\n{}",
            m.log()
        );
    }

    // Then the other peer goes too: the last mount reads its store.
    let mut other = fleet.pop().unwrap();
    other.signal_and_wait(libc::SIGKILL);
    read_exact(&fleet[0], s.as_ref(), LAYER2, FileKind::Rootfs);
    drop(other);
}

#[test]
fn bad_registry_entries_are_skipped_with_one_warning_each() {
    if !fuse_available() {
        return;
    }
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let path = fixture_store("v4-zstd");
    let listen = free_loopback_addr();
    // Expiring in the 23rd century, by the server's clock in ms.
    let forever = "9999999999999";
    let me_elsewhere = format!("http://localhost:{}", listen.port());
    let bad = [
        "not a url",
        "http://127.0.0.1:99999",
        "http://0.0.0.0:5008",
        me_elsewhere.as_str(),
    ];
    for entry in bad {
        let added = redis.cli(&["ZADD", tdfs::peer::MEMBERS_KEY, forever, entry]);
        assert_eq!(added.as_deref(), Some("1"), "{entry}");
    }
    let mount = fleet_mount(&path, &redis.url(), listen);
    // Its own entry is renewed from the second poll on.
    wait_until(
        REGISTRY_POLL * 3 + Duration::from_secs(5),
        "this host joins",
        || members(&mount) == 1,
    );
    // Two more polls (two more renewals of its entry) see the same entries.
    let own = format!("http://{listen}");
    let expiry = || redis.cli(&["ZSCORE", tdfs::peer::MEMBERS_KEY, &own]);
    for _ in 0..2 {
        let before = expiry();
        wait_until(REGISTRY_POLL * 3, "the entry is renewed", || {
            expiry() != before
        });
    }
    assert_eq!(members(&mount), 1, "only this host is a member");
    let log = mount.log();
    for entry in bad {
        let warnings = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("{entry:?}")))
            .count();
        assert_eq!(warnings, 1, "{entry}: one warning\n{log}");
    }
    read_build(&mount, store(&path).as_ref(), BASE);
    assert_eq!(
        mount.stat("tdfs_peer_requests_total"),
        0,
        "this host owns all"
    );
    assert_eq!(mount.stat("tdfs_peer_registry_errors_total"), 0);
}

#[test]
fn a_registry_that_never_answers_leaves_the_mount_to_its_store() {
    if !fuse_available() {
        return;
    }
    let path = fixture_store("v4-zstd");
    // Connections are taken (by the kernel's backlog) and never answered:
    // every poll waits out its timeout, and reads must not.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = format!("redis://{}", silent.local_addr().unwrap());
    let mount = fleet_mount(&path, &registry, free_loopback_addr());
    read_build(&mount, store(&path).as_ref(), BASE);
    assert!(mount.stat("tdfs_store_requests_total") > 0);
    assert_eq!(
        mount.stat("tdfs_peer_requests_total"),
        0,
        "no member to ask"
    );
    assert_eq!(members(&mount), 0);
    wait_until(
        REGISTRY_POLL * 6 + Duration::from_secs(10),
        "failed polls are counted",
        || mount.stat("tdfs_peer_registry_errors_total") >= 3,
    );
    assert_eq!(
        mount.log().matches(OUTAGE).count(),
        1,
        "one warning:\n{}",
        mount.log()
    );
}
