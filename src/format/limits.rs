//! The limits of the format that every part of tdfs checks: `pack` refuses
//! to write past them, `verify` and `inspect` report a build past them, and
//! a mount refuses to serve one. One definition each, so the three never
//! disagree about which builds are sound.

/// Largest frame, compressed or uncompressed, in bytes. A fetch worker
/// holds one compressed frame and decodes into a scratch buffer of the
/// uncompressed size, so this bounds the memory of one fetch. E2B writes
/// frames of 2 MiB multiples (FORMAT.md "Frame table"); 64 MiB leaves room
/// for writers that choose larger frames.
pub const MAX_FRAME_SIZE: u32 = 64 << 20;

/// Most frames one frame table may list (FORMAT.md "Frame table"): bounds
/// a table's allocation whatever count a header claims; `pack` refuses a
/// diff that would need more.
pub const MAX_FRAMES: u32 = 1_048_576;

/// Largest header object loaded, in bytes. A V3 header of a huge,
/// fragmented memfile is tens of MiB; anything near this is not a header.
pub const MAX_HEADER_LEN: u64 = 512 << 20;

/// Largest diff (a build's own data object, uncompressed) served, in bytes:
/// bounds a Chunker's present bitmap to 32 MiB whatever size a header
/// claims.
pub const MAX_DIFF_SIZE: u64 = 1 << 40;

/// Largest `metadata.json` (or recorded prefetch trace file) read, in
/// bytes: checked before anything is read. E2B's metadata is a few KiB plus
/// its prefetch trace, under 20 bytes per block listed, so a trace of
/// `MAX_PREFETCH_ENTRIES` fits.
pub const MAX_METADATA_LEN: u64 = 32 << 20;

/// Most blocks one prefetch trace lists (`prefetch.memory` or
/// `prefetch.rootfs` of metadata.json, or a recording): later entries are
/// ignored, so a trace never costs more than 8 bytes times this. With E2B's
/// 4 KiB blocks it covers a 4 GiB working set; a recording stops noting
/// first touches at this many.
pub const MAX_PREFETCH_ENTRIES: usize = 1 << 20;

/// Largest block size of a prefetch trace, in bytes (E2B writes the
/// memfile's 4 KiB pages or 2 MiB huge pages).
pub const MAX_PREFETCH_BLOCK_SIZE: u64 = 1 << 30;
