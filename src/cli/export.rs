//! `tdfs export`: flatten a template file of a build to a raw file through
//! the read path, on all cores. Ranges the header maps to zeros are left as
//! holes, so the output is sparse; it appears under its name only when
//! complete.

use std::fs::{self, File};
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::parse::parse_file_kind;
use super::{CliError, StoredBuild, human_bytes, open_store_arg};
use crate::format::FileKind;
use crate::pack::{ScratchDir, byte_bar, default_threads, ordered_map};
use crate::template::{Builds, TemplateConfig, TemplateFile};

/// Bytes per work item.
const PIECE: u64 = 4 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub build: StoredBuild,
    /// memfile or rootfs.ext4.
    #[arg(value_parser = parse_file_kind)]
    pub file: FileKind,
    /// Output path; `-` writes to standard output (holes as zeros: a pipe
    /// has none).
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let store = open_store_arg(&args.build.store, false)?;
    let scratch = ScratchDir::new(None)?;
    let builds = Builds::new(
        store,
        TemplateConfig::for_tool(scratch.path().join("cache")),
    );
    let template = builds.open(args.build.id, args.file)?;
    let progress = std::io::stderr().is_terminal();
    let size = human_bytes(template.size());
    if args.output.as_os_str() == "-" {
        let data_bytes = export_to(&template, &mut std::io::stdout().lock(), progress)?;
        let data = human_bytes(data_bytes);
        eprintln!("wrote {size} ({data} of data, the rest zeros) to standard output");
    } else {
        let data = human_bytes(export(&template, &args.output, progress)?);
        let to = args.output.display();
        eprintln!("wrote {size} ({data} of data, the rest holes) to {to}");
    }
    Ok(())
}

/// Write `template` flattened to `output` (via a temporary sibling renamed
/// into place); returns the bytes written as data rather than holes.
pub fn export(template: &TemplateFile, output: &Path, progress: bool) -> Result<u64, CliError> {
    let size = template.size();
    let pieces = data_pieces(template);
    let data_bytes: u64 = pieces.iter().map(|(_, len)| len).sum();

    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".to_string());
    let tmp = output.with_file_name(format!(".{name}.tdfs-{}", Uuid::new_v4().simple()));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Io { path, source }
    };
    let out = File::create(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        out.set_len(size).map_err(io_err(&tmp))?;
        let bar = byte_bar(progress, data_bytes, "export");
        ordered_map(
            pieces.len(),
            default_threads(),
            |i| -> Result<u64, CliError> {
                let (off, len) = pieces[i];
                let buf = read_piece(template, off, len)?;
                out.write_all_at(&buf, off).map_err(io_err(&tmp))?;
                Ok(len)
            },
            |_, len| {
                bar.inc(len);
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        out.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, output).map_err(io_err(output))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| data_bytes)
}

/// Write `template` flattened to `out` in order, the ranges mapped to
/// zeros as zeros; returns the bytes written as data rather than zeros.
pub fn export_to(
    template: &TemplateFile,
    out: &mut impl Write,
    progress: bool,
) -> Result<u64, CliError> {
    let size = template.size();
    let pieces = data_pieces(template);
    let data_bytes: u64 = pieces.iter().map(|(_, len)| len).sum();
    let io_err = |source| CliError::Io {
        path: PathBuf::from("standard output"),
        source,
    };
    let mut out = BufWriter::with_capacity(PIECE as usize, out);
    let mut written = 0u64;
    let bar = byte_bar(progress, data_bytes, "export");
    ordered_map(
        pieces.len(),
        default_threads(),
        |i| read_piece(template, pieces[i].0, pieces[i].1),
        |i, buf| {
            let (off, len) = pieces[i];
            write_zeros(&mut out, off - written).map_err(io_err)?;
            out.write_all(&buf).map_err(io_err)?;
            written = off + buf.len() as u64;
            bar.inc(len);
            Ok(())
        },
    )?;
    write_zeros(&mut out, size - written).map_err(io_err)?;
    out.flush().map_err(io_err)?;
    bar.finish_and_clear();
    Ok(data_bytes)
}

/// The `len` bytes of `template` at `off`, fewer only where the file ends.
fn read_piece(template: &TemplateFile, off: u64, len: u64) -> Result<Vec<u8>, CliError> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match template.read_at(&mut buf[filled..], off + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// `n` zero bytes.
fn write_zeros(out: &mut impl Write, n: u64) -> std::io::Result<()> {
    std::io::copy(&mut std::io::repeat(0).take(n), out).map(|_| ())
}

/// `(offset, len)` pieces of at most `PIECE` bytes covering every range the
/// header maps to a build (not to zeros), within the file's size.
fn data_pieces(template: &TemplateFile) -> Vec<(u64, u64)> {
    let size = template.size();
    let mut pieces = Vec::new();
    for m in template.header().mappings.as_slice() {
        if m.is_zero() {
            continue;
        }
        let end = m.end().min(size);
        let mut off = m.offset;
        while off < end {
            let len = PIECE.min(end - off);
            pieces.push((off, len));
            off += len;
        }
    }
    pieces
}
