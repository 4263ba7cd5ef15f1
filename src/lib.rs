//! tdfs: a read-only FUSE filesystem that shows E2B-format VM template builds
//! (memory snapshot and rootfs, stored as diffs over base builds in an object
//! store) as plain files.
//!
//! Layers, each depending only on those below it (ARCHITECTURE.md at the
//! top of the repository describes them): `cli` → `fs` → `template` →
//! `chunker` → `store` → `format`; `pack` is the write side, called by
//! `cli`: it reads base builds (their headers and bytes) through `template`
//! and writes through `store`; `peer` (E2B's ChunkService, serving diffs to
//! other hosts) sits beside `fs` over `template`. `codec` (frame compression and decoding) is pure like
//! `format` and shared by both sides; `sync` is the crate's lock policy.

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
