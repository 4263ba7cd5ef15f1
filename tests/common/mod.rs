//! The one support module of the integration tests: every test binary
//! declares `mod common;` and uses the parts it needs.
//!
//! - `fixtures`: the independent E2B fixture stores (tests/fixtures/e2b) and
//!   their manifests, the oracle every read is checked against.
//! - `oracle`: an independent reader of a store (whole-object decode and
//!   flatten over mappings) that shares no code with tdfs's read path.
//! - `rng`: the deterministic random numbers and noise bytes of every test.
//! - `digest`: hex and SHA-256 text, as the manifests write them.
//! - `process`: running the built `tdfs` binary and other programs, and
//!   bounding every wait so that a failure never hangs the run: `within`
//!   for a call that may block, `wait_until` for an event another thread
//!   or process makes (the only way tests wait: no fixed sleeps).
//! - `tools`: the switch that lets a machine without a tool skip the tests
//!   that need it (below).
//! - `mount`: a `tdfs mount` on a temporary mountpoint, torn down on drop
//!   (`MountGuard::start`, or `MountGuard::options` for environment, user,
//!   open file limit or a remount over a crashed one), and what tests read
//!   of a mount: `xattr`, `settled` (prefetch ended), `wait_for_log`.
//! - `tmpfs`: a small tmpfs for a cache disk that fills up.
//! - `garage`, `fake_gcs`: throwaway S3 and GCS servers on loopback.
//! - `redis`: a throwaway redis-server on loopback (the fleet registry).
//! - `chunker`: a Chunker over a fault-injecting local store, diff objects
//!   the tests write themselves (`Env::objects`: raw, zstd and LZ4), the
//!   `cache_files` Chunkers leave and `wait_budget_empty`.
//! - `builds`: builds a test writes itself (any header version, mappings
//!   and diffs), for cases the fixture stores do not have.
//! - `peer`: mounts serving ChunkService, a gRPC client of it, and mTLS
//!   certificates made with openssl.
//! - `pack`: VM-like images and a local store for the pack and CLI tests.
//!
//! A test that needs a missing tool fails and says what to install, unless
//! the tool's switch is set to 1, when the test returns early (a switch
//! never skips a test whose tool is present):
//!
//! - `TDFS_SKIP_FUSE`: /dev/fuse (every `mount_*`, `peer_*`, `reliability_*`
//!   test that mounts).
//! - `TDFS_SKIP_S3`: the `garage` S3 server (`mount_s3` and the other
//!   `s3_*` tests).
//! - `TDFS_SKIP_GCS`: fake-gcs-server (`s3_gcs`).
//! - `TDFS_SKIP_REDIS`: redis-server (`peer_registry`'s fleet tests).
//! - `TDFS_SKIP_VM`: QEMU, a kernel in /boot and busybox (`vm_boot`).
//! - `TDFS_SKIP_PYTHON`: python3 with prometheus_client, which parses the
//!   metrics text in `mount_service` (that check alone is skipped).
//!
//! The everyday tools (openssl, zstd, lz4, e2fsprogs, python3, getfattr from
//! `attr`) have no switch: `process::require_tool` or the call itself
//! fails naming them. `.ci/run` installs all of the above.
//!
//! Benches include this module too (`#[path = "../tests/common/mod.rs"]`).

// Rust compiles this module once per test binary, and each binary uses a
// different part of it: what one binary leaves unused is not dead code.
#![allow(dead_code)]

pub mod builds;
pub mod chunker;
pub mod digest;
pub mod e2b;
pub mod fake_gcs;
pub mod fixtures;
pub mod garage;
pub mod mount;
pub mod oracle;
pub mod pack;
pub mod peer;
pub mod process;
pub mod redis;
pub mod rng;
pub mod tmpfs;
pub mod tools;
