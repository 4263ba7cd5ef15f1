//! `tdfs verify`: check that a build is sound. Both headers decode and
//! describe this build; every frame of the build's own diffs that a header
//! lists decodes to exactly its `size_u`; diff sizes and SHA-256 match the
//! builds section; every range the mappings use lies inside a diff (and its
//! frames); every referenced ancestor is present. Frames off the header's
//! block grid are a warning: tdfs reads them right, E2B would not.

use std::io::Read;
use std::ops::Range;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{CliError, StoredBuild, header_reader, human_bytes, open_store_arg};
use crate::codec::{decode_frame, diff_reader};
use crate::format::{Compression, FileKind, FrameTable, Header, ObjectKey, hex};
use crate::pack::{default_threads, ordered_map};
use crate::store::{Store, StoreError};
use crate::template::TemplateError;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub build: StoredBuild,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let store = open_store_arg(&args.build.store, false)?;
    // Headers load as every reader loads them (a legacy build without one
    // gets its identity mapping); the checks below read the store directly.
    let builds = header_reader(store.clone());
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut summaries = Vec::new();
    for file in FileKind::ALL {
        let header = match builds.header(args.build.id, file) {
            Ok(h) => h,
            Err(e @ (TemplateError::NotFound { .. } | TemplateError::CorruptHeader { .. })) => {
                problems.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        summaries.push(verify_file(
            store.as_ref(),
            args.build.id,
            file,
            &header,
            &mut problems,
        )?);
        warnings.extend(off_grid_warnings(args.build.id, file, &header));
    }
    for w in &warnings {
        eprintln!("tdfs: verify: warning: {w}");
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("tdfs: verify: {p}");
        }
        return Err(CliError::VerifyFailed {
            build: args.build.id,
            count: problems.len(),
        });
    }
    println!("build {}: ok", args.build.id);
    for s in summaries {
        println!("  {s}");
    }
    Ok(())
}

/// Frame tables of `header` off its block grid. Not a problem of the build
/// for tdfs, which reads it byte-exact (its unit of fetch is the frame), but
/// E2B's readers would serve wrong bytes from it: said, not failed.
fn off_grid_warnings(build: Uuid, file: FileKind, header: &Header) -> Vec<String> {
    let header_key = ObjectKey::header(build, file);
    header
        .builds
        .iter()
        .filter_map(|b| {
            let off = b
                .frames
                .first_off_grid(header.metadata.block_size, b.file_size)?;
            Some(format!("{header_key}: build {}'s {off}", b.build_id))
        })
        .collect()
}

/// A store failure that means "the build is broken" (missing or short
/// object) becomes a problem; anything else (I/O, network) is an error.
fn problem_or_error(e: StoreError) -> Result<String, CliError> {
    match e {
        e @ (StoreError::NotFound { .. }
        | StoreError::ShortRead { .. }
        | StoreError::TooLarge { .. }) => Ok(e.to_string()),
        other => Err(other.into()),
    }
}

fn verify_file(
    store: &dyn Store,
    build: Uuid,
    file: FileKind,
    header: &Header,
    problems: &mut Vec<String>,
) -> Result<String, CliError> {
    let header_key = ObjectKey::header(build, file);
    let md = &header.metadata;
    if md.build_id != build {
        problems.push(format!(
            "{header_key}: describes build {}, not {build}",
            md.build_id
        ));
    }

    let mut own_ranges: Vec<Range<u64>> = Vec::new();
    let mut ancestors: Vec<(Uuid, Vec<Range<u64>>)> = Vec::new();
    for m in header.mappings.as_slice().iter().filter(|m| !m.is_zero()) {
        let range = m.storage_offset..m.storage_offset + m.length;
        if m.build_id == build {
            own_ranges.push(range);
        } else {
            match ancestors.iter_mut().find(|(id, _)| *id == m.build_id) {
                Some((_, r)) => r.push(range),
                None => ancestors.push((m.build_id, vec![range])),
            }
        }
    }

    let own_entry = if header.version() >= 4 {
        header.build(&build)
    } else {
        None
    };
    let frames = own_entry.map(|e| e.frames.clone()).unwrap_or_default();
    let compression = if frames.is_compressed() {
        frames.compression()
    } else {
        Compression::None
    };
    let data_key = ObjectKey::data(build, file, compression);
    let problems_before = problems.len();

    let object_size = match store.size(&data_key) {
        Ok(n) => Some(n),
        Err(StoreError::NotFound { .. }) if own_ranges.is_empty() => None,
        Err(e) => {
            problems.push(format!("{}: {}", header_key, problem_or_error(e)?));
            None
        }
    };

    let mut summary = format!("{file}: V{}, {}", header.version(), compression.name());
    if let Some(object_size) = object_size {
        let diff_size = if frames.is_compressed() {
            check_compressed(
                store,
                &data_key,
                object_size,
                own_entry.map(|e| (e.file_size, e.sha256)),
                &frames,
                problems,
                &mut summary,
            )?
        } else {
            check_uncompressed(
                store,
                &data_key,
                object_size,
                own_entry.map(|e| (e.file_size, e.sha256)),
                problems,
                &mut summary,
            )?
        };
        for r in &own_ranges {
            if r.end > diff_size {
                problems.push(format!(
                    "{header_key}: a mapping uses bytes {}..{} of {data_key}, whose diff is {diff_size} bytes",
                    r.start, r.end
                ));
            }
        }
        if frames.is_compressed() {
            check_coverage(&header_key, build, &frames, &own_ranges, problems);
        }
    }

    for (ancestor, ranges) in &ancestors {
        let key = ObjectKey::header(*ancestor, file);
        match store.exists(&key) {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "{header_key}: references build {ancestor}, whose header {key} is missing"
            )),
            Err(e) => problems.push(format!("{header_key}: {}", problem_or_error(e)?)),
        }
        if let Some(entry) = header.build(ancestor)
            && entry.frames.is_compressed()
        {
            check_coverage(&header_key, *ancestor, &entry.frames, ranges, problems);
        }
    }
    if problems.len() == problems_before {
        summary.push_str(&format!(
            ", {} mappings, {} ancestor(s)",
            header.mappings.as_slice().len(),
            ancestors.len()
        ));
    }
    Ok(summary)
}

/// Every range must lie in frames listed by `table`, without gaps.
fn check_coverage(
    header_key: &ObjectKey,
    build: Uuid,
    table: &FrameTable,
    ranges: &[Range<u64>],
    problems: &mut Vec<String>,
) {
    let frames = table.frames();
    for r in ranges {
        let mut off = r.start;
        while off < r.end {
            match table.locate(off) {
                Ok(i) => off = frames[i].end_u(),
                Err(_) => {
                    problems.push(format!(
                        "{header_key}: bytes {}..{} of build {build}'s diff are used by a mapping, \
                         but offset {off} is in no listed frame",
                        r.start, r.end
                    ));
                    break;
                }
            }
        }
    }
}

fn check_uncompressed(
    store: &dyn Store,
    key: &ObjectKey,
    object_size: u64,
    entry: Option<(u64, [u8; 32])>,
    problems: &mut Vec<String>,
    summary: &mut String,
) -> Result<u64, CliError> {
    summary.push_str(&format!(", diff {}", human_bytes(object_size)));
    let Some((file_size, sha)) = entry else {
        return Ok(object_size);
    };
    let known = file_size != 0 || sha != [0; 32];
    if known && file_size != object_size {
        problems.push(format!(
            "{key}: object is {object_size} bytes, the header says {file_size}"
        ));
    }
    if sha != [0; 32] {
        let reader = store.read_range(key, 0, object_size)?;
        match hash_stream(reader) {
            Ok((n, got)) if n == object_size && got == sha => summary.push_str(", sha256 ok"),
            Ok((n, got)) => problems.push(format!(
                "{key}: sha256 of {n} bytes is {}, expected {}",
                hex(&got),
                hex(&sha)
            )),
            Err(e) => problems.push(format!("{key}: reading: {e}")),
        }
    }
    Ok(object_size)
}

/// Decode every listed frame (in parallel, hashing in order), check sizes
/// and the checksum; returns the diff size the mappings may use.
#[allow(clippy::too_many_arguments)]
fn check_compressed(
    store: &dyn Store,
    key: &ObjectKey,
    object_size: u64,
    entry: Option<(u64, [u8; 32])>,
    frames: &FrameTable,
    problems: &mut Vec<String>,
    summary: &mut String,
) -> Result<u64, CliError> {
    let (file_size, sha) = entry.unwrap_or((0, [0; 32]));
    let list = frames.frames();
    let listed_end = list.last().map_or(0, |f| f.end_u());
    let sidecar = store.uncompressed_size(key)?;
    if let Some(n) = sidecar
        && file_size != 0
        && n != file_size
    {
        problems.push(format!(
            "{}: says {n} bytes, the header says {file_size}",
            key.size_sidecar()
        ));
    }
    let diff_size = if file_size != 0 {
        file_size
    } else {
        sidecar.unwrap_or(listed_end)
    };
    if listed_end > diff_size {
        problems.push(format!(
            "{key}: frames reach uncompressed offset {listed_end}, past the diff size {diff_size}"
        ));
    }
    // A table that lists every frame from 0 to the end lets the checksum be
    // computed from the decoded frames in one pass.
    let complete = list.first().is_none_or(|f| f.start_u == 0)
        && list.windows(2).all(|w| w[0].end_u() == w[1].start_u)
        && listed_end == diff_size;

    let mut hasher = Sha256::new();
    let mut decoded_bytes = 0u64;
    let mut frame_problems = Vec::new();
    ordered_map(
        list.len(),
        default_threads(),
        |i| -> Result<Result<Vec<u8>, String>, CliError> {
            let f = list[i];
            let at = format!(
                "{key}: frame {i} (compressed offset {}, {} bytes; uncompressed offset {}, {} bytes)",
                f.start_c, f.size_c, f.start_u, f.size_u
            );
            if f.end_c() > object_size {
                return Ok(Err(format!(
                    "{at}: ends past the object's {object_size} bytes"
                )));
            }
            let raw = match store.read_exact_range(key, f.start_c, u64::from(f.size_c)) {
                Ok(raw) => raw,
                Err(e) => return Ok(Err(format!("{at}: {}", problem_or_error(e)?))),
            };
            // A frame table holds no frame over `limits::MAX_FRAME_SIZE`,
            // which bounds this buffer.
            let mut out = vec![0u8; f.size_u as usize];
            Ok(decode_frame(frames.compression(), &raw, &mut out)
                .map(|()| out)
                .map_err(|e| format!("{at}: {e}")))
        },
        |_, decoded| {
            match decoded {
                Ok(bytes) => {
                    decoded_bytes += bytes.len() as u64;
                    if complete {
                        hasher.update(&bytes);
                    }
                }
                Err(p) => frame_problems.push(p),
            }
            Ok(())
        },
    )?;
    let frames_ok = frame_problems.is_empty();
    problems.extend(frame_problems);
    summary.push_str(&format!(
        ", {} frame(s) decoded ({} -> {})",
        list.len(),
        human_bytes(object_size),
        human_bytes(decoded_bytes)
    ));

    if sha != [0; 32] && frames_ok {
        let (n, got) = if complete {
            (decoded_bytes, hasher.finalize().into())
        } else {
            // A sparse table: decode the whole object as a stream of frames.
            let reader = store.read_range(key, 0, object_size)?;
            let stream = match diff_reader(frames.compression(), reader) {
                Ok(stream) => stream,
                Err(e) => {
                    problems.push(format!("{key}: {e}"));
                    return Ok(diff_size);
                }
            };
            match hash_stream(stream) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{key}: whole object does not decode: {e}"));
                    return Ok(diff_size);
                }
            }
        };
        if n != file_size || got != sha {
            problems.push(format!(
                "{key}: decodes to {n} bytes with sha256 {}, the header says {file_size} bytes with {}",
                hex(&got),
                hex(&sha)
            ));
        } else {
            summary.push_str(", sha256 ok");
        }
    }
    Ok(diff_size)
}

fn hash_stream(mut reader: impl Read) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok((total, hasher.finalize().into())),
            n => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
        }
    }
}
