//! `tdfs pack`: write a build from raw images; the encoding flags and the
//! summary it shares with `tdfs working-set`.

use std::io::IsTerminal;
use std::path::PathBuf;

use uuid::Uuid;

use super::parse::{parse_build, parse_compression, parse_size};
use super::{CliError, human_bytes, open_store_arg};
use crate::format::Compression;
use crate::pack::{
    DEFAULT_FRAME_SIZE, Footprint, Layout, PackInputs, PackOptions, PackReport, pack_build,
};

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
    /// Order of the new diff when a trace is given. working-set (the
    /// default): the trace's blocks this build stores come first, in
    /// first-touch order, then the rest in template order, so a replay
    /// reads one stretch of the object instead of a frame here and there
    /// (on a trace of 9% of a 1 GiB memfile, the template order left the
    /// working set in nearly every frame); readers, E2B's included, find
    /// every block through the header as before. template: every block in
    /// template order, as E2B's writers store it. Without a trace both are
    /// the template order.
    #[arg(long, value_enum, default_value = "working-set")]
    pub layout: LayoutArg,
    #[command(flatten)]
    pub encoding: EncodingArgs,
    /// Memfile block size, 4KiB or 2MiB (default: the base's, else 2MiB).
    #[arg(long, value_parser = parse_size)]
    pub memfile_block_size: Option<u64>,
}

/// `--layout`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    WorkingSet,
    Template,
}

/// How a new diff and its header are encoded (`pack`, `working-set`).
#[derive(Debug, clap::Args)]
pub struct EncodingArgs {
    /// Compression of the diffs: zstd, lz4 or none.
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub compress: Compression,
    /// zstd level (default 3).
    #[arg(long, allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// Uncompressed bytes per compressed frame: a multiple of the block
    /// size (E2B's cache marks whole blocks).
    #[arg(long, default_value_t = DEFAULT_FRAME_SIZE, value_parser = parse_size)]
    pub frame_size: u64,
    /// Header version 3, 4 or 5 (default: 3 uncompressed, 4 compressed).
    #[arg(long, value_parser = clap::value_parser!(u16).range(3..=5))]
    pub header_version: Option<u16>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let store = open_store_arg(&args.store, true)?;
    let opts = PackOptions {
        memfile_block_size: args.memfile_block_size,
        layout: match args.layout {
            LayoutArg::WorkingSet => Layout::WorkingSet,
            LayoutArg::Template => Layout::Template,
        },
        ..args.encoding.options(args.base, args.build_id)
    };
    let inputs = PackInputs {
        memfile: args.memfile,
        rootfs: args.rootfs,
        snapfile: args.snapfile,
        metadata: args.metadata,
        prefetch_memfile: args.prefetch_memfile,
        prefetch_rootfs: args.prefetch_rootfs,
    };
    print_report(&pack_build(store, &opts, &inputs)?);
    Ok(())
}

impl EncodingArgs {
    /// Pack options with these encodings, over `base`, as `build_id`.
    pub fn options(&self, base: Option<Uuid>, build_id: Option<Uuid>) -> PackOptions {
        PackOptions {
            base,
            build_id,
            compression: self.compress,
            level: self.level,
            frame_size: self.frame_size,
            header_version: self.header_version,
            progress: std::io::stderr().is_terminal(),
            ..PackOptions::default()
        }
    }
}

/// The new build's id on stdout (for scripts), a summary on stderr.
pub fn print_report(report: &PackReport) {
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
        if let Some(fp) = &f.trace {
            eprintln!("  {:<12} trace: {}", "", render_footprint(fp));
        }
    }
}

/// One line on what a replay of a trace costs (`pack`, `inspect`).
pub fn render_footprint(fp: &Footprint) -> String {
    let layout = match fp.own_first {
        Some(true) => "this build's blocks of it stored first, in first-touch order",
        Some(false) => "this build's blocks of it not stored first",
        None => "this build stores none of it",
    };
    format!(
        "{} ({} zeros), {} in {} stretch(es) of storage, longest {}; a replay touches {} unit(s); {layout}",
        human_bytes(fp.trace_bytes),
        human_bytes(fp.zero_bytes),
        human_bytes(fp.trace_bytes - fp.zero_bytes),
        fp.runs,
        human_bytes(fp.contiguous_bytes),
        fp.units,
    )
}
