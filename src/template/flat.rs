//! Flattened copies of wholly cached template files, for FUSE passthrough:
//! once every diff a template file maps is wholly in the cache, a
//! background thread writes the file's bytes, resolved through its header,
//! into one plain file in the cache directory (`flat-<build>-<file>`; holes
//! stay holes). The mount can then hand that file to the kernel, which
//! serves reads and mmap faults of the template file from it without asking
//! tdfs (see `fs::passthrough`).
//!
//! Why a copy and not the diff's cache file: a memfile maps its zero pages
//! to no build, so its diff stores the used pages packed together and the
//! cache file is not the template file's bytes at the template file's
//! offsets; and the Chunkers evict and punch cache units, which a file the
//! kernel reads directly must never see. A flat file is written once, never
//! changed, charged to the cache budget (`--max-cache-size`) while it lives,
//! and deleted with the mount's cache directory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use super::TemplateFile;
use super::live_chunkers::FileId;
use crate::chunker::CacheBudget;
use crate::sync;

/// Bytes copied per read of the template file while flattening: one FUSE
/// read's worth, so the copy reads the cache as a reader would.
const PIECE: usize = 1 << 20;

/// One flattened template file: opened read-only, charged to the budget
/// while it lives; its file is deleted on drop.
#[derive(Debug)]
pub struct FlatFile {
    file: File,
    path: PathBuf,
    /// Bytes written (the template file's mapped bytes; holes are not
    /// written), as charged to the budget.
    bytes: u64,
    budget: Option<Arc<CacheBudget>>,
}

impl AsFd for FlatFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for FlatFile {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.bytes);
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::debug!("removing flat file {}: {e}", self.path.display());
        }
    }
}

/// Where the flat file of one template file stands.
enum FlatState {
    /// A thread is writing it.
    Making,
    Ready(Arc<FlatFile>),
    /// Not made, and why; tried again at the next open or close.
    Skipped(String),
    /// Writing it failed; not tried again.
    Failed(String),
}

/// The flat files of a `Builds`, and the threads making them.
pub(super) struct FlatFiles {
    enabled: bool,
    files: Arc<Mutex<HashMap<FileId, FlatState>>>,
    /// Set on drop: a thread still writing stops at its next piece.
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for FlatFiles {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in sync::lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl FlatFiles {
    /// Flat files are made only when `enabled` (the mount's `--passthrough`).
    pub(super) fn new(enabled: bool) -> Self {
        FlatFiles {
            enabled,
            files: Arc::new(Mutex::new(HashMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// True when flat files are made (`--passthrough`).
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The flat file of `id` once written.
    pub(super) fn ready(&self, id: FileId) -> Option<Arc<FlatFile>> {
        match sync::lock(&self.files).get(&id) {
            Some(FlatState::Ready(flat)) => Some(flat.clone()),
            _ => None,
        }
    }

    /// Where the flat file of `id` stands, as `user.tdfs.passthrough` shows
    /// it: `off`, `not cached`, `flattening`, `ready`, `skipped: why`,
    /// `failed: why`.
    pub(super) fn describe(&self, id: FileId) -> String {
        if !self.enabled {
            return "off".into();
        }
        match sync::lock(&self.files).get(&id) {
            None => "not cached".into(),
            Some(FlatState::Making) => "flattening".into(),
            Some(FlatState::Ready(_)) => "ready".into(),
            Some(FlatState::Skipped(why)) => format!("skipped: {why}"),
            Some(FlatState::Failed(why)) => format!("failed: {why}"),
        }
    }

    /// Start writing `file`'s flat file in `dir` when every diff it maps is
    /// wholly cached and its bytes fit the budget; does nothing when it is
    /// made, being made, or failed before.
    pub(super) fn make_when_cached(
        &self,
        file: &Arc<TemplateFile>,
        dir: &Path,
        budget: Option<&Arc<CacheBudget>>,
    ) {
        if !self.enabled {
            return;
        }
        let id = (file.build_id(), file.file());
        let mut files = sync::lock(&self.files);
        if matches!(
            files.get(&id),
            Some(FlatState::Making | FlatState::Ready(_) | FlatState::Failed(_))
        ) {
            return;
        }
        if !file.diffs.iter().all(|(_, c)| c.cached_bytes() >= c.size()) {
            return;
        }
        let bytes = mapped_bytes(file);
        if let Some(b) = budget
            && b.used() + bytes > b.limit()
        {
            let why = format!(
                "{bytes} bytes do not fit the cache budget ({} of {} used)",
                b.used(),
                b.limit()
            );
            files.insert(id, FlatState::Skipped(why));
            return;
        }
        files.insert(id, FlatState::Making);
        drop(files);
        let path = dir.join(format!("flat-{}-{}", id.0.simple(), id.1.name()));
        let job = Job {
            file: Arc::clone(file),
            path,
            bytes,
            budget: budget.cloned(),
            stop: Arc::clone(&self.stop),
        };
        let files = Arc::clone(&self.files);
        let stop = Arc::clone(&self.stop);
        let spawned = thread::Builder::new()
            .name(format!("tdfs-flatten-{}", &id.0.to_string()[..8]))
            .spawn(move || {
                let start = Instant::now();
                let state = match job.run() {
                    Ok(flat) => {
                        log::debug!(
                            "build {} {}: flattened for passthrough, {} bytes in {:?}",
                            id.0,
                            id.1,
                            flat.bytes,
                            start.elapsed()
                        );
                        FlatState::Ready(Arc::new(flat))
                    }
                    // Stopped by the end of the mount: nothing to tell.
                    Err(why) if stop.load(Ordering::Relaxed) => FlatState::Failed(why),
                    Err(why) => {
                        log::warn!(
                            "build {} {}: not flattened for passthrough: {why}; it is served \
                             through tdfs instead",
                            id.0,
                            id.1
                        );
                        FlatState::Failed(why)
                    }
                };
                sync::lock(&files).insert(id, state);
            });
        match spawned {
            Ok(t) => {
                let mut threads = sync::lock(&self.threads);
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => {
                sync::lock(&self.files).insert(id, FlatState::Failed(e.to_string()));
            }
        }
    }
}

/// Bytes of `file` that its mappings take from a diff (not holes).
fn mapped_bytes(file: &TemplateFile) -> u64 {
    file.header
        .mappings
        .as_slice()
        .iter()
        .filter(|m| !m.is_zero())
        .map(|m| m.length)
        .sum()
}

/// Writing one flat file.
struct Job {
    file: Arc<TemplateFile>,
    path: PathBuf,
    bytes: u64,
    budget: Option<Arc<CacheBudget>>,
    stop: Arc<AtomicBool>,
}

impl Job {
    /// Write the file and open it read-only; on failure nothing is left
    /// behind or charged.
    fn run(self) -> Result<FlatFile, String> {
        let written = self.write();
        let flat = written.and_then(|()| {
            let file = File::open(&self.path).map_err(|e| e.to_string())?;
            if let Some(budget) = &self.budget {
                budget.charge(self.bytes);
            }
            Ok(FlatFile {
                file,
                path: self.path.clone(),
                bytes: self.bytes,
                budget: self.budget.clone(),
            })
        });
        if flat.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        flat
    }

    fn write(&self) -> Result<(), String> {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        // Sized first, so what is never written reads as zeros.
        out.set_len(self.file.size())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut buf = vec![0u8; PIECE];
        for m in self.file.header.mappings.as_slice() {
            if m.is_zero() {
                continue;
            }
            let mut off = m.offset;
            let end = m.offset + m.length;
            while off < end {
                if self.stop.load(Ordering::Relaxed) {
                    return Err("the mount is ending".into());
                }
                let want = (end - off).min(PIECE as u64) as usize;
                let n = self
                    .file
                    .read_at(&mut buf[..want], off)
                    .map_err(|e| format!("reading at {off}: {e}"))?;
                if n == 0 {
                    return Err(format!("the file ends at {off}, inside a mapping"));
                }
                out.write_all_at(&buf[..n], off)
                    .map_err(|e| format!("{}: {e}", self.path.display()))?;
                off += n as u64;
            }
        }
        // On disk before the kernel may read it: a write the disk lost
        // (EIO, ENOSPC at writeback) would otherwise read back as zeros
        // once the pages leave the page cache, with no error to anyone.
        out.sync_data()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
impl FlatFile {
    /// An empty flat file at `path`, charged to no budget.
    pub(crate) fn for_test(path: &Path) -> FlatFile {
        FlatFile {
            file: File::create(path).expect("creating a test flat file"),
            path: path.to_path_buf(),
            bytes: 0,
            budget: None,
        }
    }
}
