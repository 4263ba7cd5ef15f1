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
//!   bounding every wait so that a failure never hangs the run.
//! - `mount`: a `tdfs mount` on a temporary mountpoint, torn down on drop.
//! - `tmpfs`: a small tmpfs for a cache disk that fills up.
//! - `garage`, `fake_gcs`: throwaway S3 and GCS servers on loopback.
//! - `chunker`: a Chunker over a fault-injecting local store, and diff
//!   objects the tests write themselves.
//! - `builds`: builds a test writes itself (any header version, mappings
//!   and diffs), for cases the fixture stores do not have.
//! - `peer`: mounts serving ChunkService, a gRPC client of it, and mTLS
//!   certificates made with openssl.
//! - `pack`: VM-like images and a local store for the pack and CLI tests.
//!
//! Benches include this module too (`#[path = "../tests/common/mod.rs"]`).

// Rust compiles this module once per test binary, and each binary uses a
// different part of it: what one binary leaves unused is not dead code.
#![allow(dead_code)]

pub mod builds;
pub mod chunker;
pub mod digest;
pub mod fake_gcs;
pub mod fixtures;
pub mod garage;
pub mod mount;
pub mod oracle;
pub mod pack;
pub mod peer;
pub mod process;
pub mod rng;
pub mod tmpfs;
