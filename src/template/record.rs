//! Recording (`--record-prefetch DIR`): the first-touch order of the blocks
//! of each template file read on a mount, written as a prefetch trace to
//! `DIR/<build>/<file>.prefetch.json` (the shape `--prefetch-dir` replays
//! and `pack --prefetch-*` stores), so a host learns a build's working set
//! from its own first start.
//!
//! Only reads the kernel asks for are noted (demand reads and mmap faults,
//! through `fs/handles.rs`), never tdfs's own read-ahead or prefetch. A
//! block is the header's block size. Each recorded file has an atomic
//! bitset of the blocks seen, so a read of blocks already seen costs one
//! relaxed load per block; a first touch also appends the block to the
//! order, under a lock. Memory: one bit per block (capped at
//! `MAX_RECORDED_BLOCKS`) and at most `MAX_PREFETCH_ENTRIES` indices, held
//! only while the file is open.
//!
//! The trace is written atomically (temporary file, fsync, rename) when the
//! file's last handle closes and at unmount (`Builds::finish_recordings`).
//! A file reopened on the same mount starts from what was written, so each
//! write holds the union in first-touch order (the old order kept, new
//! blocks appended); a recording of an earlier mount is replaced. A write
//! that fails is one warning naming the path; the mount is unaffected.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::TemplateFile;
use super::live_chunkers::FileId;
use super::replay::{read_bounded, recording_path};
use crate::format::PAGE_SIZE;
use crate::format::limits::{MAX_DIFF_SIZE, MAX_PREFETCH_ENTRIES};
use crate::format::trace::{Trace, parse_trace_file};
use crate::sync;

/// Most blocks a recorded file may have: its bitset is then 32 MiB, as a
/// Chunker's present bitmap of the largest diff served (`MAX_DIFF_SIZE`).
/// A larger file (a header may claim any size over holes) is not recorded.
const MAX_RECORDED_BLOCKS: u64 = MAX_DIFF_SIZE / PAGE_SIZE;

/// The recordings of one mount (see the module docs).
pub(super) struct Recorder {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Files open now: their touches and how many handles hold them.
    open: HashMap<FileId, (Arc<Touches>, usize)>,
    /// Files whose trace this mount wrote: a reopen starts from it.
    written: HashSet<FileId>,
    /// Files whose trace could not be written (warned once).
    failed: HashSet<FileId>,
}

/// One file's blocks seen and their first-touch order.
struct Touches {
    id: FileId,
    /// Bytes per block: the header's block size.
    block_size: u64,
    /// Bytes of the file: reads past it note nothing.
    size: u64,
    /// One bit per block, set at its first touch.
    seen: Box<[AtomicU64]>,
    /// Blocks in first-touch order (at most `MAX_PREFETCH_ENTRIES`).
    order: Mutex<Vec<u64>>,
}

/// An open file's share of its recording: reads are noted through it, and
/// the trace is written when the last share of a file is dropped.
pub struct Recording {
    recorder: Arc<Recorder>,
    touches: Arc<Touches>,
}

impl Recording {
    /// Note that the kernel reads `len` bytes at `off` of the file.
    pub fn note(&self, off: u64, len: u64) {
        self.touches.note(off, len);
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.recorder.close(self.touches.id);
    }
}

impl Recorder {
    /// Recordings written under `dir` (made when first written).
    pub(super) fn new(dir: PathBuf) -> Arc<Recorder> {
        Arc::new(Recorder {
            dir,
            state: Mutex::new(State::default()),
        })
    }

    /// A share of `file`'s recording for one open handle; `None` (with a
    /// warning) when the file cannot be recorded.
    pub(super) fn open(self: &Arc<Self>, file: &TemplateFile) -> Option<Recording> {
        let id = (file.build_id(), file.file());
        let mut state = sync::lock(&self.state);
        if let Some((touches, handles)) = state.open.get_mut(&id) {
            *handles += 1;
            let touches = Arc::clone(touches);
            return Some(Recording {
                recorder: Arc::clone(self),
                touches,
            });
        }
        let touches = match Touches::new(id, file.block_size(), file.size()) {
            Ok(t) => t,
            Err(why) => {
                log::warn!(
                    "build {} {}: not recorded (--record-prefetch): {why}",
                    id.0,
                    id.1
                );
                return None;
            }
        };
        if state.written.contains(&id) {
            self.seed(&touches);
        }
        let touches = Arc::new(touches);
        state.open.insert(id, (Arc::clone(&touches), 1));
        Some(Recording {
            recorder: Arc::clone(self),
            touches,
        })
    }

    /// Write every recording still open (at unmount); later closes write
    /// nothing more.
    pub(super) fn finish(&self) {
        let mut state = sync::lock(&self.state);
        let open: Vec<_> = state.open.drain().collect();
        for (_, (touches, _)) in open {
            self.write(&mut state, &touches);
        }
    }

    /// One handle of `id` closed: at the last one, write its trace.
    fn close(&self, id: FileId) {
        // The write is made with the lock held, so a reopen of the same
        // file waits for it and starts from it (a few ms of local I/O).
        let mut state = sync::lock(&self.state);
        let Some((_, handles)) = state.open.get_mut(&id) else {
            return;
        };
        *handles -= 1;
        if *handles > 0 {
            return;
        }
        if let Some((touches, _)) = state.open.remove(&id) {
            self.write(&mut state, &touches);
        }
    }

    /// Start `touches` from the trace this mount wrote for its file.
    fn seed(&self, touches: &Touches) {
        let path = recording_path(&self.dir, touches.id.0, touches.id.1);
        let parsed = match read_bounded(&path) {
            Ok(Some(bytes)) => parse_trace_file(&bytes).map_err(|e| e.to_string()),
            Ok(None) => Err("it is gone".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(p) if p.trace.block_size == touches.block_size => {
                for index in p.trace.indices {
                    touches.note_block(index);
                }
            }
            Ok(_) => log::debug!("{}: another block size, started over", path.display()),
            Err(why) => log::debug!("{}: started over: {why}", path.display()),
        }
    }

    fn write(&self, state: &mut State, touches: &Touches) {
        let id = touches.id;
        let path = recording_path(&self.dir, id.0, id.1);
        let indices = sync::lock(&touches.order).clone();
        let result = Trace::of_reads(touches.block_size, indices)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|t| write_atomically(&path, &serde_json::to_vec(&t.to_json())?));
        match result {
            Ok(()) => {
                state.written.insert(id);
                log::debug!("recorded {}", path.display());
            }
            Err(e) => {
                if state.failed.insert(id) {
                    log::warn!(
                        "build {} {}: recording not written to {}: {e} (check that the \
                         --record-prefetch directory is writable)",
                        id.0,
                        id.1,
                        path.display()
                    );
                }
            }
        }
    }
}

impl Touches {
    fn new(id: FileId, block_size: u64, size: u64) -> Result<Touches, String> {
        // The block size a trace allows (checked again when written).
        Trace::of_reads(block_size, Vec::new()).map_err(|e| e.to_string())?;
        let blocks = size.div_ceil(block_size);
        if blocks > MAX_RECORDED_BLOCKS {
            return Err(format!(
                "{blocks} blocks of {block_size} bytes, over the limit of {MAX_RECORDED_BLOCKS}"
            ));
        }
        // In range: at most MAX_RECORDED_BLOCKS / 64 words.
        let words = blocks.div_ceil(64) as usize;
        Ok(Touches {
            id,
            block_size,
            size,
            seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
            order: Mutex::new(Vec::new()),
        })
    }

    fn note(&self, off: u64, len: u64) {
        if len == 0 || off >= self.size {
            return;
        }
        let end = off.saturating_add(len).min(self.size);
        for block in off / self.block_size..=(end - 1) / self.block_size {
            self.note_block(block);
        }
    }

    fn note_block(&self, block: u64) {
        let Some(word) = usize::try_from(block / 64)
            .ok()
            .and_then(|w| self.seen.get(w))
        else {
            return;
        };
        let bit = 1u64 << (block % 64);
        // The hot path: a block seen before costs this one load.
        if word.load(Ordering::Relaxed) & bit != 0 {
            return;
        }
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            let mut order = sync::lock(&self.order);
            if order.len() < MAX_PREFETCH_ENTRIES {
                order.push(block);
            }
        }
    }
}

/// Write `bytes` to `path` so a reader sees the old file or the new one,
/// never a part: a temporary file beside it, fsync, rename, fsync of the
/// directory. Makes the directory when missing.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(name);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FileKind;
    use crate::template::testing::fixture_builds;
    use crate::template::{Builds, TemplateConfig};
    use uuid::Uuid;

    /// A layer of the v4-zstd fixture: a 16 MiB memfile.
    const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";

    fn recorded(dir: &Path, file: FileKind) -> Trace {
        let layer = Uuid::parse_str(LAYER).unwrap();
        let bytes = fs::read(recording_path(dir, layer, file)).unwrap();
        parse_trace_file(&bytes).unwrap().trace
    }

    fn builds(cache: &Path, record: &Path) -> Arc<Builds> {
        let mut config = TemplateConfig::for_tool(cache.to_path_buf());
        config.prefetch.record_dir = Some(record.to_path_buf());
        fixture_builds("v4-zstd", config)
    }

    #[test]
    fn first_touches_in_order_written_at_last_close_and_kept_across_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let record = tmp.path().join("record");
        let builds = builds(&tmp.path().join("cache"), &record);
        let layer = Uuid::parse_str(LAYER).unwrap();
        let file = builds.open(layer, FileKind::Memfile).unwrap();
        let bs = file.block_size();
        let a = builds.record(&file).unwrap();
        let b = builds.record(&file).unwrap();
        a.note(7 * bs, 1);
        b.note(2 * bs + 5, bs); // blocks 2 and 3
        a.note(7 * bs, bs); // seen: nothing new
        a.note(file.size(), 4096); // past the end
        drop(a);
        assert!(!record.exists(), "another handle is still open");
        drop(b);
        assert_eq!(recorded(&record, FileKind::Memfile).indices, [7, 2, 3]);
        assert_eq!(recorded(&record, FileKind::Memfile).block_size, bs);

        // A reopen on the same mount keeps the first part.
        let c = builds.record(&file).unwrap();
        c.note(0, 1);
        c.note(2 * bs, 1);
        drop(c);
        assert_eq!(recorded(&record, FileKind::Memfile).indices, [7, 2, 3, 0]);

        // Still open at unmount: written then, and not again at close.
        let d = builds.record(&file).unwrap();
        d.note(5 * bs, 1);
        builds.finish_recordings();
        assert_eq!(
            recorded(&record, FileKind::Memfile).indices,
            [7, 2, 3, 0, 5]
        );
        let mut names: Vec<_> = fs::read_dir(record.join(LAYER))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["memfile.prefetch.json"], "no temporary file left");
        drop(d);
    }

    #[test]
    fn a_recording_of_an_earlier_mount_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let record = tmp.path().join("record");
        let layer = Uuid::parse_str(LAYER).unwrap();
        for (n, block) in [(0, 5u64), (1, 6)] {
            let builds = builds(&tmp.path().join(format!("cache{n}")), &record);
            let file = builds.open(layer, FileKind::Memfile).unwrap();
            let r = builds.record(&file).unwrap();
            r.note(block * file.block_size(), 1);
        }
        assert_eq!(recorded(&record, FileKind::Memfile).indices, [6]);
    }

    #[test]
    fn an_unwritable_directory_leaves_reads_working() {
        let tmp = tempfile::tempdir().unwrap();
        let not_a_dir = tmp.path().join("file");
        fs::write(&not_a_dir, b"x").unwrap();
        let builds = builds(&tmp.path().join("cache"), &not_a_dir);
        let layer = Uuid::parse_str(LAYER).unwrap();
        let file = builds.open(layer, FileKind::Memfile).unwrap();
        let r = builds.record(&file).unwrap();
        r.note(0, 1);
        drop(r);
        let mut buf = vec![0; 4096];
        assert_eq!(file.read_at(&mut buf, 0).unwrap(), 4096);
    }
}
