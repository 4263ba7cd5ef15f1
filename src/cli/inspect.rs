//! `tdfs inspect`: a build's headers as a readable table or as JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::pack::render_footprint;
use super::parse::parse_file_kind;
use super::{CliError, StoredBuild, header_reader, human_bytes, open_store_arg};
use crate::format::limits::MAX_METADATA_LEN;
use crate::format::trace::{self, Parsed};
use crate::format::{Blob, FileKind, Header, ObjectKey, hex};
use crate::pack::{Footprint, footprint};
use crate::template::Builds;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub build: StoredBuild,
    /// Only this file: memfile or rootfs.ext4 (default: both).
    #[arg(value_parser = parse_file_kind)]
    pub file: Option<FileKind>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub build_id: String,
    pub store: String,
    /// The build's metadata.json, when present and valid JSON.
    pub metadata_json: Option<serde_json::Value>,
    pub snapfile_size: Option<u64>,
    pub files: Vec<FileReport>,
}

#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    pub header_key: String,
    pub header_version: u16,
    pub version_word: u64,
    pub block_size: u64,
    pub size: u64,
    pub generation: u64,
    pub build_id: String,
    pub base_build_id: String,
    pub mappings: MappingSummary,
    pub builds: Vec<BuildEntryReport>,
    /// The file's prefetch trace in metadata.json (`prefetch.memory` or
    /// `prefetch.rootfs`).
    pub prefetch: PrefetchSummary,
}

/// A prefetch trace, summed up.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PrefetchSummary {
    /// metadata.json lists none (or there is no metadata.json).
    None,
    Listed {
        /// Blocks listed (as a mount replays them: at most
        /// `MAX_PREFETCH_ENTRIES`).
        entries: usize,
        /// Bytes per block.
        block_size: u64,
        /// entries × block_size.
        bytes: u64,
        /// Block indices first and last in list order.
        first: Option<u64>,
        last: Option<u64>,
        /// Lowest and highest block index listed.
        lowest: Option<u64>,
        highest: Option<u64>,
        /// Blocks that start at or past the end of the file (a mount skips
        /// them).
        past_end: usize,
        /// What a mount repairs when it reads the trace.
        notes: Vec<String>,
        /// How the trace is laid out in storage and what its replay
        /// touches (`pack::Footprint`).
        replay: Footprint,
    },
    /// The trace a mount would skip, and why.
    Error { error: String },
    /// metadata.json's `version` makes E2B (and so tdfs) read none of its
    /// fields, a trace included; why.
    Ignored { reason: String },
}

#[derive(Debug, Serialize)]
pub struct MappingSummary {
    pub count: usize,
    pub zero_bytes: u64,
    /// Bytes and mappings per source build.
    pub by_build: Vec<SourceBytes>,
}

#[derive(Debug, Serialize)]
pub struct SourceBytes {
    pub build_id: String,
    pub mappings: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct BuildEntryReport {
    pub build_id: String,
    pub file_size: u64,
    /// Hex SHA-256 of the uncompressed diff; None when unknown (all zero).
    pub sha256: Option<String>,
    pub compression: String,
    pub frames: usize,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    /// uncompressed / compressed of the listed frames.
    pub ratio: Option<f64>,
    /// Why E2B would misread this build's frames (a frame off the header's
    /// block grid); None when they are on it.
    pub off_grid: Option<String>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let builds = header_reader(open_store_arg(&args.build.store, false)?);
    let files = match args.file {
        Some(f) => vec![f],
        None => FileKind::ALL.to_vec(),
    };
    let report = build_report(&builds, args.build.id, &files)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

/// What `inspect` shows of `build`: its headers (of `files`), metadata.json
/// and the snapfile's size.
///
/// # Errors
/// `TemplateError::NotFound` for a file with neither header nor data,
/// `CorruptHeader` for a header that does not decode, store errors.
pub fn build_report(
    builds: &Builds,
    build: Uuid,
    files: &[FileKind],
) -> Result<BuildReport, CliError> {
    let metadata = builds.read_whole_blob(build, Blob::Metadata, MAX_METADATA_LEN)?;
    let mut reports = Vec::new();
    for &file in files {
        let header = builds.header(build, file)?;
        let mut report = file_report(&header, file, build);
        if let Some(bytes) = &metadata {
            report.prefetch = match trace::fields_ignored(bytes) {
                Some(reason) => PrefetchSummary::Ignored { reason },
                None => prefetch_summary(trace::parse_metadata(bytes, file), &header),
            };
        }
        reports.push(report);
    }
    let metadata_json = metadata.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let snapfile_size = builds.blob_size(build, Blob::Snapfile)?;
    Ok(BuildReport {
        build_id: build.to_string(),
        store: builds.location(),
        metadata_json,
        snapfile_size,
        files: reports,
    })
}

fn file_report(header: &Header, file: FileKind, build: Uuid) -> FileReport {
    let md = &header.metadata;
    let mut zero_bytes = 0;
    let mut by_build: BTreeMap<Uuid, (usize, u64)> = BTreeMap::new();
    // Bytes are counted within the logical size (a last mapping may run to
    // the next page boundary).
    for m in header.mappings.as_slice() {
        let len = m.end().min(md.size).saturating_sub(m.offset);
        if m.is_zero() {
            zero_bytes += len;
        } else {
            let e = by_build.entry(m.build_id).or_default();
            e.0 += 1;
            e.1 += len;
        }
    }
    let builds = header
        .builds
        .iter()
        .map(|b| {
            let frames = b.frames.frames();
            let uncompressed_bytes: u64 = frames.iter().map(|f| u64::from(f.size_u)).sum();
            let compressed_bytes: u64 = frames.iter().map(|f| u64::from(f.size_c)).sum();
            BuildEntryReport {
                build_id: b.build_id.to_string(),
                file_size: b.file_size,
                sha256: (b.sha256 != [0; 32]).then(|| hex(&b.sha256)),
                compression: b.frames.compression().name().to_string(),
                frames: frames.len(),
                uncompressed_bytes,
                compressed_bytes,
                ratio: (compressed_bytes > 0)
                    .then(|| uncompressed_bytes as f64 / compressed_bytes as f64),
                off_grid: b
                    .frames
                    .first_off_grid(md.block_size, b.file_size)
                    .map(|o| o.to_string()),
            }
        })
        .collect();
    FileReport {
        file: file.name().to_string(),
        header_key: ObjectKey::header(build, file).to_string(),
        header_version: header.version(),
        version_word: md.version,
        block_size: md.block_size,
        size: md.size,
        generation: md.generation,
        build_id: md.build_id.to_string(),
        base_build_id: md.base_build_id.to_string(),
        mappings: MappingSummary {
            count: header.mappings.as_slice().len(),
            zero_bytes,
            by_build: by_build
                .into_iter()
                .map(|(build_id, (mappings, bytes))| SourceBytes {
                    build_id: build_id.to_string(),
                    mappings,
                    bytes,
                })
                .collect(),
        },
        builds,
        prefetch: PrefetchSummary::None,
    }
}

/// `parsed` (a file's trace in metadata.json) summed up against the
/// file's header.
fn prefetch_summary(
    parsed: Result<Option<Parsed>, trace::TraceError>,
    header: &Header,
) -> PrefetchSummary {
    match parsed {
        Ok(None) => PrefetchSummary::None,
        Err(e) => PrefetchSummary::Error {
            error: e.to_string(),
        },
        Ok(Some(Parsed { mut trace, notes })) => {
            let listed = trace.indices.clone();
            let past_end = trace.clamp_to(header.metadata.size);
            PrefetchSummary::Listed {
                entries: listed.len(),
                block_size: trace.block_size,
                bytes: (listed.len() as u64).saturating_mul(trace.block_size),
                first: listed.first().copied(),
                last: listed.last().copied(),
                lowest: listed.iter().min().copied(),
                highest: listed.iter().max().copied(),
                past_end,
                notes,
                replay: footprint(header, &trace),
            }
        }
    }
}

/// One line on `summary`.
fn render_prefetch(summary: &PrefetchSummary) -> String {
    match summary {
        PrefetchSummary::None => "none".to_string(),
        PrefetchSummary::Error { error } => format!("unusable: {error}"),
        PrefetchSummary::Ignored { reason } => format!("none: {reason}"),
        PrefetchSummary::Listed {
            entries,
            block_size,
            bytes,
            first,
            last,
            lowest,
            highest,
            past_end,
            notes,
            replay,
        } => {
            let mut line = format!(
                "{entries} block{} of {} ({})",
                if *entries == 1 { "" } else { "s" },
                human_bytes(*block_size),
                human_bytes(*bytes)
            );
            if let (Some(f), Some(l), Some(lo), Some(hi)) = (first, last, lowest, highest) {
                line += &format!(", first {f}, last {l}, blocks {lo}..={hi}");
            }
            if *past_end > 0 {
                line += &format!(", {past_end} past the end of the file");
            }
            for n in notes {
                line += &format!("; {n}");
            }
            line += &format!("\n  layout        {}", render_footprint(replay));
            line
        }
    }
}

fn render_text(r: &BuildReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "build {}  (store {})", r.build_id, r.store);
    if let Some(size) = r.snapfile_size {
        let _ = writeln!(out, "  snapfile       {}", human_bytes(size));
    }
    if let Some(md) = &r.metadata_json {
        // The traces are summed up per file below, not listed whole.
        let mut shown = md.clone();
        if let Some(p) = shown.get_mut("prefetch") {
            *p = serde_json::Value::String("(see prefetch below)".into());
        }
        let _ = writeln!(out, "  metadata.json  {shown}");
    }
    for f in &r.files {
        let own = |id: &String| {
            if *id == f.build_id {
                " (this build)"
            } else {
                ""
            }
        };
        let _ = writeln!(out, "\n{}  ({})", f.file, f.header_key);
        let _ = writeln!(
            out,
            "  header        V{} (version word {:#x}), block size {}, size {} ({} bytes)",
            f.header_version,
            f.version_word,
            human_bytes(f.block_size),
            human_bytes(f.size),
            f.size
        );
        let _ = writeln!(
            out,
            "  generation    {}, base build {}",
            f.generation, f.base_build_id
        );
        let _ = writeln!(out, "  prefetch      {}", render_prefetch(&f.prefetch));
        let _ = writeln!(
            out,
            "  mappings      {} ({} zeros)",
            f.mappings.count,
            human_bytes(f.mappings.zero_bytes)
        );
        for s in &f.mappings.by_build {
            let _ = writeln!(
                out,
                "    {}  {:>10} in {} mapping(s){}",
                s.build_id,
                human_bytes(s.bytes),
                s.mappings,
                own(&s.build_id)
            );
        }
        if f.builds.is_empty() {
            let _ = writeln!(out, "  builds        none listed (V1-V3: all uncompressed)");
            continue;
        }
        let _ = writeln!(out, "  builds        {}", f.builds.len());
        for b in &f.builds {
            let _ = writeln!(
                out,
                "    {}  {:<4}  diff {:>10}  sha256 {}{}",
                b.build_id,
                b.compression,
                human_bytes(b.file_size),
                b.sha256.as_deref().unwrap_or("unknown"),
                own(&b.build_id)
            );
            if b.frames > 0 {
                let _ = writeln!(
                    out,
                    "      frames {}: {} -> {} (ratio {:.2})",
                    b.frames,
                    human_bytes(b.uncompressed_bytes),
                    human_bytes(b.compressed_bytes),
                    b.ratio.unwrap_or(0.0)
                );
            }
            if let Some(why) = &b.off_grid {
                let _ = writeln!(out, "      warning: {why}");
            }
        }
    }
    out
}
