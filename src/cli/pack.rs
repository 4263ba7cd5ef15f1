//! `tdfs pack`: write a build from raw images.

use std::io::IsTerminal;
use std::path::PathBuf;

use uuid::Uuid;

use super::parse::{parse_build, parse_compression, parse_size};
use super::{CliError, human_bytes, open_store_arg};
use crate::format::Compression;
use crate::pack::{DEFAULT_FRAME_SIZE, PackInputs, PackOptions, pack_build};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store to write to (a local directory; created if missing).
    #[arg(long)]
    pub store: String,
    /// Build to layer on: only blocks that differ from its view are stored.
    #[arg(long, value_parser = parse_build)]
    pub base: Option<Uuid>,
    /// Id of the new build (default: a random UUID).
    #[arg(long, value_parser = parse_build)]
    pub build_id: Option<Uuid>,
    /// Raw memory image.
    #[arg(long)]
    pub memfile: PathBuf,
    /// Raw rootfs image.
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Snapshot state file, stored as is.
    #[arg(long)]
    pub snapfile: Option<PathBuf>,
    /// metadata.json to store as is (default: a minimal one); traces given
    /// below are merged into it, every other key kept.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Prefetch trace of the memfile, stored as metadata.json's
    /// prefetch.memory: a recording (`tdfs mount --record-prefetch`'s
    /// memfile.prefetch.json) or a metadata.json that lists one.
    #[arg(long, value_name = "FILE")]
    pub prefetch_memfile: Option<PathBuf>,
    /// Prefetch trace of the rootfs, stored as prefetch.rootfs (a
    /// recording's rootfs.ext4.prefetch.json, or a metadata.json).
    #[arg(long, value_name = "FILE")]
    pub prefetch_rootfs: Option<PathBuf>,
    /// Compression of the diffs: zstd, lz4 or none.
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub compress: Compression,
    /// zstd level (default 3).
    #[arg(long, allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// Uncompressed bytes per compressed frame.
    #[arg(long, default_value_t = DEFAULT_FRAME_SIZE, value_parser = parse_size)]
    pub frame_size: u64,
    /// Memfile block size, 4KiB or 2MiB (default: the base's, else 2MiB).
    #[arg(long, value_parser = parse_size)]
    pub memfile_block_size: Option<u64>,
    /// Header version 3, 4 or 5 (default: 3 uncompressed, 4 compressed).
    #[arg(long, value_parser = clap::value_parser!(u16).range(3..=5))]
    pub header_version: Option<u16>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let store = open_store_arg(&args.store, true)?;
    let opts = PackOptions {
        base: args.base,
        build_id: args.build_id,
        compression: args.compress,
        level: args.level,
        frame_size: args.frame_size,
        memfile_block_size: args.memfile_block_size,
        header_version: args.header_version,
        progress: std::io::stderr().is_terminal(),
        ..PackOptions::default()
    };
    let inputs = PackInputs {
        memfile: args.memfile,
        rootfs: args.rootfs,
        snapfile: args.snapfile,
        metadata: args.metadata,
        prefetch_memfile: args.prefetch_memfile,
        prefetch_rootfs: args.prefetch_rootfs,
    };
    let report = pack_build(store, &opts, &inputs)?;
    // stdout carries only the build id, for scripts; the summary goes to stderr.
    println!("{}", report.build_id);
    eprintln!(
        "packed build {} (generation {}, base {})",
        report.build_id, report.generation, report.base_build_id
    );
    for f in &report.files {
        eprintln!(
            "  {:<12} V{} size {}, {} mappings: {} changed, {} kept, {} zeros; stored {} in {} frame(s)",
            f.file.name(),
            f.header_version,
            human_bytes(f.size),
            f.mappings,
            human_bytes(f.changed_bytes),
            human_bytes(f.unchanged_bytes),
            human_bytes(f.zero_bytes),
            human_bytes(f.stored_size),
            f.frames,
        );
    }
    Ok(())
}
