//! tdfs: a read-only FUSE filesystem that shows E2B-format VM template builds
//! (memory snapshot and rootfs, stored as diffs over base builds in an object
//! store) as plain files.
//!
//! Layers, each using only those below it (ARCHITECTURE.md at the top of
//! the repository describes them, and `tests/architecture.rs` holds the
//! code to it): `cli`; then the edges `fs` (the kernel), `peer` (other
//! hosts) and `pack` (the write side); `template`; `chunker`; `store`;
//! `metrics`; `codec`; and `format` and `sync` at the bottom.

pub mod chunker;
pub mod cli;
pub mod codec;
pub mod format;
pub mod fs;
pub mod metrics;
pub mod pack;
pub mod peer;
pub mod store;
pub mod sync;
pub mod template;
