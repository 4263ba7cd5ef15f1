//! `tdfs mount --peer`: a mount asks the peer owning each unit before its
//! store. Two real mounts on loopback (B reading through A, with A's store
//! or with none of its own data objects), a fake peer for every fault B
//! must survive (its bytes stay right, the fallback is counted by reason
//! and logged once, and B goes back to the peer once it is healthy), and
//! mutual TLS.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available};
use common::oracle::{oracle_flatten, whole_diff};
use common::peer::{FakeMode, FakePeer, free_loopback_addr, make_certs, mount_serving};
use common::process::wait_until;
use tdfs::format::FileKind;
use tdfs::peer::Ring;
use tdfs::store::{LocalStore, Store};
use uuid::Uuid;

/// The base build of the v3-none fixture: an uncompressed memfile of
/// 12 MiB, three 4 MiB chunks.
const V3_BASE: &str = "cd62c694-5fb3-4cd8-b26e-db3191758be8";
/// The top layer of the v3-none fixture (its memfile maps the diffs of
/// all three builds, uncompressed; V3 headers carry no diff sizes).
const V3_LAYER: &str = "8d669677-0ddf-4b0c-9036-d9a9d0b5e680";
/// A layer of the v4-zstd fixture (its memfile maps its own diff and its
/// base's, both zstd frames).
const V4_LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
const CHUNK: u64 = 4 << 20;
/// What a test reads of a chunk: well inside it, kernel read-ahead included.
const PIECE: usize = 64 << 10;
/// The first back-off of the test mounts (`--peer-backoff`, 5 s by
/// default): short, yet long past the one read a test makes inside it.
const BACKOFF: &str = "1s";

fn store(path: &Path) -> Arc<dyn Store> {
    Arc::new(LocalStore::open(path.to_path_buf()).expect("store"))
}

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap()
}

/// The bytes of `path` at `off`, `len` of them.
fn pread(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, off)
        .unwrap_or_else(|e| panic!("{} at {off}: {e}", path.display()));
    buf
}

fn fallbacks(mount: &MountGuard, reason: &str) -> u64 {
    mount.stat(&format!("tdfs_peer_fallbacks_total{{reason=\"{reason}\"}}"))
}

/// Flags of a mount that asks `peer` and fetches only what is read.
fn client_flags(peer: &str) -> Vec<String> {
    [
        "--peer",
        peer,
        "--peer-timeout",
        "300ms",
        "--peer-backoff",
        BACKOFF,
        "--readahead",
        "0",
        "--prefetch",
        "off",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_mount_reads_every_unit_through_its_peer() {
    if !fuse_available() {
        return;
    }
    let path = fixture_store("v3-none");
    let expected = oracle_flatten(store(&path).as_ref(), uuid(V3_BASE), FileKind::Memfile);
    let (a, addr) = mount_serving(&path, &["--prefetch", "off"]);
    let b = MountGuard::start(&path, &strs(&client_flags(&format!("http://{addr}"))));
    let got = std::fs::read(b.join(format!("{V3_BASE}/memfile"))).expect("read through B");
    assert!(got == expected, "B's memfile equals the oracle's");
    assert_eq!(b.stat("tdfs_store_requests_total"), 0, "A owns every unit");
    assert_eq!(b.stat("tdfs_peer_requests_total"), 3, "three chunks");
    assert_eq!(b.stat("tdfs_peer_bytes_total"), 3 * CHUNK);
    assert_eq!(a.stat("tdfs_peer_served_bytes_total"), 3 * CHUNK);
    assert_eq!(
        a.stat("tdfs_store_requests_total"),
        3,
        "A fetched each once"
    );
}

#[test]
fn units_this_host_owns_come_from_its_store_the_rest_from_the_peer() {
    if !fuse_available() {
        return;
    }
    let path = fixture_store("v3-none");
    let expected = oracle_flatten(store(&path).as_ref(), uuid(V3_BASE), FileKind::Memfile);
    let (_a, a_addr) = mount_serving(&path, &["--prefetch", "off"]);
    let b_addr = free_loopback_addr();
    let (a_url, b_url) = (format!("http://{a_addr}"), format!("http://{b_addr}"));
    let dir = tempfile::tempdir().unwrap();
    let peers_file = dir.path().join("peers");
    std::fs::write(
        &peers_file,
        format!("# the fleet\n{a_url}\n{b_url} # B itself\nbogus\n"),
    )
    .unwrap();
    let b = MountGuard::start(
        &path,
        &[
            "--peers-file",
            peers_file.to_str().unwrap(),
            "--peer-listen",
            &b_addr.to_string(),
            "--readahead",
            "0",
            "--prefetch",
            "off",
        ],
    );
    let ring = Ring::new(&[a_url.clone(), b_url.clone()], Some(&b_url));
    let owned_by_b = (0..3)
        .filter(|&u| {
            ring.owner(uuid(V3_BASE), FileKind::Memfile, u)
                .unwrap()
                .is_self
        })
        .count() as u64;
    let got = std::fs::read(b.join(format!("{V3_BASE}/memfile"))).expect("read through B");
    assert!(got == expected, "B's memfile equals the oracle's");
    assert_eq!(b.stat("tdfs_store_requests_total"), owned_by_b);
    assert_eq!(b.stat("tdfs_peer_requests_total"), 3 - owned_by_b);
    assert_eq!(
        b.log().matches("\"bogus\"").count(),
        1,
        "a bad line is warned about once:\n{}",
        b.log()
    );
}

/// B mounts a copy of `fixture` without the data objects `is_data` picks
/// (headers only) and reads `build`'s memfile through A: every byte comes
/// through A, sizes of uncompressed diffs included (`GetBuildFileSize`).
fn headers_only_case(fixture: &str, build: &str, is_data: fn(&str) -> bool) {
    let path = fixture_store(fixture);
    let expected = oracle_flatten(store(&path).as_ref(), uuid(build), FileKind::Memfile);
    let dir = tempfile::tempdir().unwrap();
    let headers_only = dir.path().join("store");
    common::process::run_ok(
        "cp",
        ["-r", path.to_str().unwrap(), headers_only.to_str().unwrap()],
    );
    let mut removed = 0;
    for entry in walk(&headers_only) {
        let name = entry.file_name().unwrap().to_str().unwrap().to_string();
        if is_data(&name) {
            std::fs::remove_file(&entry).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "{fixture}: no data object removed");
    let (a, addr) = mount_serving(&path, &["--prefetch", "off"]);
    let b = MountGuard::start(
        &headers_only,
        &strs(&client_flags(&format!("http://{addr}"))),
    );
    let got = std::fs::read(b.join(format!("{build}/memfile"))).expect("read through B");
    assert!(got == expected, "B's memfile equals the oracle's");
    assert_eq!(b.stat("tdfs_store_requests_total"), 0);
    assert_eq!(b.stat("tdfs_fetch_errors_total"), 0);
    for reason in PEER_FAULTS {
        assert_eq!(fallbacks(&b, reason), 0, "{reason}:\n{}", b.log());
    }
    assert!(b.stat("tdfs_peer_bytes_total") > 0);
    assert!(a.stat("tdfs_peer_served_bytes_total") > 0);
}

/// Fallback reasons that mean a peer failed (not `not_available`).
const PEER_FAULTS: [&str; 6] = ["error", "timeout", "short", "long", "malformed", "backoff"];

#[test]
fn a_mount_without_data_objects_serves_every_byte_through_its_peer() {
    if !fuse_available() {
        return;
    }
    headers_only_case("v4-zstd", V4_LAYER, |name| name.ends_with(".zstd"));
}

#[test]
fn a_mount_without_uncompressed_data_objects_asks_its_peer_their_sizes() {
    if !fuse_available() {
        return;
    }
    headers_only_case("v3-none", V3_LAYER, |name| {
        name == "memfile" || name == "rootfs.ext4"
    });
}

/// Two mounts whose lists each name the other as owner of every unit (each
/// `--peer` the other, neither lists itself), as while a peers file rolls
/// out: A asks B, and B answers from its store without asking A back, so
/// no request waits out the peer timeout.
#[test]
fn two_mounts_that_each_name_the_other_owner_do_not_loop() {
    if !fuse_available() {
        return;
    }
    let path = fixture_store("v3-none");
    let expected = oracle_flatten(store(&path).as_ref(), uuid(V3_BASE), FileKind::Memfile);
    let (a_addr, b_addr) = (free_loopback_addr(), free_loopback_addr());
    let mount = |listen: std::net::SocketAddr, peer: std::net::SocketAddr| {
        let mut flags = client_flags(&format!("http://{peer}"));
        flags.extend(["--peer-listen".to_string(), listen.to_string()]);
        MountGuard::start(&path, &strs(&flags))
    };
    let a = mount(a_addr, b_addr);
    let b = mount(b_addr, a_addr);
    let got = std::fs::read(a.join(format!("{V3_BASE}/memfile"))).expect("read through A");
    assert!(got == expected, "A's memfile equals the oracle's");
    for (name, m) in [("A", &a), ("B", &b)] {
        for reason in PEER_FAULTS {
            assert_eq!(fallbacks(m, reason), 0, "{name}: {reason}:\n{}", m.log());
        }
    }
    assert_eq!(
        a.stat("tdfs_peer_bytes_total"),
        3 * CHUNK,
        "A read through B"
    );
    assert_eq!(a.stat("tdfs_store_requests_total"), 0);
    assert_eq!(
        b.stat("tdfs_peer_requests_total"),
        0,
        "B never asked A back"
    );
    assert_eq!(b.stat("tdfs_store_requests_total"), 3);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// B reads the start of chunk 0 of the v3 base's diff from a fake peer
/// answering `mode`: right bytes from the store, the fallback counted as
/// `reason` and logged once. Then the peer turns healthy and B, once the
/// back-off (if any) is over, reads chunk 2 through it. Reads stay within
/// the chunk they test: the kernel reads ahead up to 1 MiB.
fn fault_case(mode: FakeMode, reason: &str, log_says: &str, backoff: bool) {
    if !fuse_available() {
        return;
    }
    let path = fixture_store("v3-none");
    let diff = whole_diff(store(&path).as_ref(), uuid(V3_BASE), FileKind::Memfile);
    let diffs = HashMap::from([((V3_BASE.to_string(), "memfile".to_string()), diff.clone())]);
    let fake = FakePeer::start(diffs, mode);
    let b = MountGuard::start(&path, &strs(&client_flags(&fake.url())));
    let file = b.join(format!("{V3_BASE}/diff/memfile"));
    let start = |chunk: u64| (chunk * CHUNK) as usize;
    assert!(
        pread(&file, 0, PIECE) == diff[..PIECE],
        "{mode:?}: chunk 0 right"
    );
    assert_eq!(fallbacks(&b, reason), 1, "{mode:?}: counted as {reason}");
    assert_eq!(b.stat("tdfs_store_requests_total"), 1, "{mode:?}");
    let lines = b
        .log()
        .lines()
        .filter(|l| l.contains(&format!("peer {}: ", fake.url())) && l.contains(log_says))
        .count();
    assert_eq!(lines, 1, "{mode:?}: one log line:\n{}", b.log());

    fake.set_mode(FakeMode::Healthy);
    if backoff {
        let got = pread(&file, CHUNK, PIECE);
        assert!(got == diff[start(1)..][..PIECE], "{mode:?}: in back-off");
        assert_eq!(
            fallbacks(&b, "backoff"),
            1,
            "{mode:?}: skipped while in back-off"
        );
        // Bounded under the default 5 s, so an ignored --peer-backoff fails.
        let over = format!("peer {}: back-off over", fake.url());
        wait_until(Duration::from_secs(4), &over, || b.log().contains(&over));
    }
    let got = pread(&file, 2 * CHUNK, PIECE);
    assert!(got == diff[start(2)..][..PIECE], "{mode:?}: chunk 2 right");
    assert_eq!(
        b.stat("tdfs_peer_bytes_total"),
        CHUNK,
        "{mode:?}: back to the peer"
    );
    assert_eq!(b.stat("tdfs_fetch_errors_total"), 0, "{mode:?}");
    assert!(
        std::fs::read(&file).unwrap() == diff,
        "{mode:?}: the whole diff"
    );
}

#[test]
fn peer_not_available_falls_back_without_back_off() {
    fault_case(
        FakeMode::NotAvailable,
        "not_available",
        "not_available for",
        false,
    );
}

#[test]
fn peer_use_storage_is_skipped_for_a_while() {
    fault_case(
        FakeMode::UseStorage,
        "use_storage",
        "use_storage reading",
        true,
    );
}

#[test]
fn peer_short_stream() {
    fault_case(FakeMode::Short, "short", "short reading", true);
}

#[test]
fn peer_long_stream() {
    fault_case(FakeMode::Long, "long", "long reading", true);
}

#[test]
fn peer_availability_past_the_first_message() {
    fault_case(
        FakeMode::LateAvailability,
        "malformed",
        "malformed reading",
        true,
    );
}

#[test]
fn peer_message_over_the_limit() {
    fault_case(FakeMode::Oversized, "malformed", "malformed reading", true);
}

#[test]
fn peer_silent_past_the_first_byte_timeout() {
    fault_case(FakeMode::Stall, "timeout", "timeout reading", true);
}

#[test]
fn peer_stalling_midway() {
    fault_case(FakeMode::StallMidway, "timeout", "stalled", true);
}

#[test]
fn peer_failing_midway() {
    fault_case(FakeMode::ErrorMidway, "error", "error reading", true);
}

#[test]
fn a_killed_peer_is_survived() {
    if !fuse_available() {
        return;
    }
    let path = fixture_store("v3-none");
    let diff = whole_diff(store(&path).as_ref(), uuid(V3_BASE), FileKind::Memfile);
    let (a, addr) = mount_serving(&path, &["--prefetch", "off"]);
    let b = MountGuard::start(&path, &strs(&client_flags(&format!("http://{addr}"))));
    let file = b.join(format!("{V3_BASE}/diff/memfile"));
    assert!(pread(&file, 0, PIECE) == diff[..PIECE]);
    assert_eq!(b.stat("tdfs_peer_bytes_total"), CHUNK);
    let _dead = a.crash();
    let got = pread(&file, 2 * CHUNK, PIECE);
    assert!(got == diff[2 * CHUNK as usize..][..PIECE], "from the store");
    assert_eq!(fallbacks(&b, "error"), 1);
    assert_eq!(b.stat("tdfs_store_requests_total"), 1);
    assert_eq!(b.stat("tdfs_fetch_errors_total"), 0);
    assert!(std::fs::read(&file).unwrap() == diff, "the whole diff");
}

#[test]
fn mutual_tls_peers_share_and_a_stranger_gets_nothing() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for d in ["fleet", "other"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let fleet = make_certs(&dir.path().join("fleet"));
    let other = make_certs(&dir.path().join("other"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let path = fixture_store("v3-none");
    let diff = whole_diff(store(&path).as_ref(), uuid(V3_BASE), FileKind::Memfile);
    let (_a, addr) = mount_serving(
        &path,
        &[
            "--prefetch",
            "off",
            "--peer-tls-cert",
            &s(&fleet.server_cert),
            "--peer-tls-key",
            &s(&fleet.server_key),
            "--peer-tls-ca",
            &s(&fleet.ca),
        ],
    );
    let url = format!("https://{addr}");
    let client = |cert: &Path, key: &Path| {
        let mut flags = client_flags(&url);
        flags.extend([
            "--peer-tls-cert".to_string(),
            s(cert),
            "--peer-tls-key".to_string(),
            s(key),
            "--peer-tls-ca".to_string(),
            s(&fleet.ca),
        ]);
        MountGuard::start(&path, &strs(&flags))
    };
    let b = client(&fleet.client_cert, &fleet.client_key);
    let got = pread(&b.join(format!("{V3_BASE}/diff/memfile")), 0, PIECE);
    assert!(got == diff[..PIECE]);
    assert_eq!(b.stat("tdfs_peer_bytes_total"), CHUNK, "through A");
    assert_eq!(b.stat("tdfs_store_requests_total"), 0);

    let stranger = client(&other.client_cert, &other.client_key);
    let got = pread(&stranger.join(format!("{V3_BASE}/diff/memfile")), 0, PIECE);
    assert!(got == diff[..PIECE], "from its own store");
    assert_eq!(stranger.stat("tdfs_peer_bytes_total"), 0, "nothing from A");
    assert_eq!(fallbacks(&stranger, "error"), 1);
}
