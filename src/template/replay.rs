//! Prefetch: when a template file is first opened on a mount, fetch the
//! blocks its build's recorded working set lists, in list order, into the
//! cache, so a VM resumed from it finds them there (the REAP idea: a
//! snapshot's working set is small and stable across runs, so fetching it
//! eagerly beats faulting it in page by page).
//!
//! The trace comes from the build's `metadata.json` (`prefetch.memory`,
//! E2B's, or `prefetch.rootfs`, tdfs's own; see `format::trace`), else
//! from a local recording `<prefetch dir>/<build>/<file>.prefetch.json`.
//! metadata.json is read from the store at the file's first open, never
//! cached: E2B may re-upload it with the trace after the build appears, and
//! a file first opened after that replays the new trace.
//! With `--prefetch-source last-cycle` (E2B's `resume-prefetch-source`
//! value of that name) a layered build's own diff blocks are the working
//! set instead, in template offset order: a VM resumed from a snapshot
//! first touches what it dirtied last. A build that is no layer has none
//! (its own diff is the whole image). Sources are tried in the order given
//! (`trace,last-cycle`: the trace, else the build's own blocks); the
//! `user.tdfs.prefetch` xattr and the log say which one was replayed. Off
//! by default: not measured against the trace yet.
//!
//! One thread per template file maps the working set's blocks through the
//! header's mappings, hands each diff's Chunker the wanted ranges with
//! their first-touch ranks (`Chunker::plan_prefetch`, which groups units
//! adjacent in the object into runs fetched with one store request each),
//! and queues the runs of all diffs in the order of their first-touched
//! block (`Chunker::prefetch_run`, below every reader and read-ahead
//! fetch); while the pool has no room for prefetch it waits `BUSY_WAIT`
//! and asks again. `--prefetch-max` bounds the bytes queued per build. A
//! trace that cannot be used is one warning naming the build; the mount
//! serves as without it.
//!
//! Prefetched bytes stay in tdfs's cache: they are not pushed into the
//! kernel page cache (FUSE_NOTIFY_STORE). Tried (a thread behind the walk
//! read each landed run of blocks and `Notifier::store`d it, up to 1 MiB a
//! call) on the restore benchmark (512 MiB memfile, a 48 MiB recorded
//! trace replayed from 4 threads, 2 cores at load 11): the replay's own
//! CPU fell by a quarter (0.17–0.22 s against 0.23–0.27 s), as its faults
//! found the pages, but wall time did not win: medians over 5 interleaved
//! pairs 1.75 s against 1.33 s without on the slow store and 2.75 s
//! against 1.59 s on the local one, with single runs spread 0.9–5 s.

use std::collections::HashMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use uuid::Uuid;

use super::TemplateFile;
use crate::chunker::{Chunker, PrefetchRun, PrefetchStart};
use crate::format::limits::MAX_METADATA_LEN;
use crate::format::trace::{self, Parsed};
use crate::format::{Blob, FileKind, Header, ObjectKey};
use crate::store::{Store, StoreError};
use crate::sync;

/// How long prefetch waits for room in the fetch pool before asking again.
/// Short against a store request (tens of ms to first byte on object
/// stores), so the pool's prefetch slots never stay idle for long.
const BUSY_WAIT: Duration = Duration::from_millis(2);

/// Settings of prefetch on a mount.
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    /// Replay traces at all (`--prefetch on|off`).
    pub enabled: bool,
    /// Bytes of fetch units one build may prefetch (`--prefetch-max`); 0 =
    /// no bound.
    pub max_bytes: u64,
    /// Local recordings replayed for builds whose metadata lists none
    /// (`--prefetch-dir`).
    pub dir: Option<PathBuf>,
    /// Where the first-touch order of each template file read is recorded
    /// (`--record-prefetch`; see `template::record`).
    pub record_dir: Option<PathBuf>,
    /// Where the blocks to replay come from (`--prefetch-source`).
    pub sources: PrefetchSources,
}

/// Where a replay's blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchSource {
    /// The file's trace: its build's metadata.json, else a recording in
    /// `PrefetchConfig::dir`.
    Trace,
    /// A layered build's own diff blocks, in template offset order (E2B's
    /// "last-cycle" source).
    LastCycle,
}

impl PrefetchSource {
    /// The source's name in `--prefetch-source`.
    pub fn name(self) -> &'static str {
        match self {
            PrefetchSource::Trace => "trace",
            PrefetchSource::LastCycle => "last-cycle",
        }
    }
}

/// Sources tried in order: the first that lists blocks is replayed.
/// `trace` by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchSources(Vec<PrefetchSource>);

impl Default for PrefetchSources {
    fn default() -> Self {
        PrefetchSources(vec![PrefetchSource::Trace])
    }
}

impl FromStr for PrefetchSources {
    type Err = String;

    /// A comma-separated list of `trace` and `last-cycle`, each at most
    /// once.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut sources = Vec::new();
        for name in s.split(',') {
            let source = match name.trim() {
                "trace" => PrefetchSource::Trace,
                "last-cycle" => PrefetchSource::LastCycle,
                other => {
                    return Err(format!(
                        "unknown prefetch source {other:?} (give trace, last-cycle, or both \
                         comma-separated in the order to try them)"
                    ));
                }
            };
            if sources.contains(&source) {
                return Err(format!("prefetch source {} given twice", source.name()));
            }
            sources.push(source);
        }
        Ok(PrefetchSources(sources))
    }
}

/// A mount's defaults (`--prefetch on`, no `--prefetch-*` flag).
impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            // Replaying what a build's metadata recorded is why it was
            // recorded; a build without a trace costs one metadata read.
            enabled: true,
            // No bound: a trace is a working set, bounded by what was read.
            max_bytes: 0,
            // Only the traces in the builds' metadata.
            dir: None,
            // Recording is asked for (`--record-prefetch`): it writes files.
            record_dir: None,
            // The trace only: the last cycle is not measured yet.
            sources: PrefetchSources::default(),
        }
    }
}

/// Where a template file's prefetch stands, as the `user.tdfs.prefetch`
/// xattr shows it.
#[derive(Debug, Default)]
pub struct PrefetchState {
    started: AtomicBool,
    phase: Mutex<Phase>,
    /// Runs queued so far.
    walked: AtomicUsize,
    /// Runs to queue.
    total: AtomicUsize,
}

#[derive(Debug, Default, Clone)]
enum Phase {
    #[default]
    None,
    Running,
    /// Replayed: from where.
    Done(String),
    Skipped(String),
}

impl PrefetchState {
    /// `none`, `running n/m` (runs queued of all), `done (<source>)` or
    /// `skipped: <why>`.
    pub fn describe(&self) -> String {
        match &*sync::lock(&self.phase) {
            Phase::None => "none".to_string(),
            Phase::Running => format!(
                "running {}/{}",
                self.walked.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed)
            ),
            Phase::Done(source) => format!("done ({source})"),
            Phase::Skipped(why) => format!("skipped: {why}"),
        }
    }

    fn set(&self, phase: Phase) {
        *sync::lock(&self.phase) = phase;
    }
}

/// The prefetch threads of one `Builds`; dropping it stops and joins them.
pub(super) struct Prefetcher {
    config: PrefetchConfig,
    store: Arc<dyn Store>,
    /// Bytes queued per build, against `max_bytes`.
    queued: Mutex<HashMap<Uuid, Arc<AtomicU64>>>,
    /// Where each template file's prefetch stands: kept here, not in the
    /// `TemplateFile` (a new one is made at every open), so it is started
    /// once per mount and the xattr reads it without opening the file.
    states: Mutex<HashMap<(Uuid, FileKind), Arc<PrefetchState>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl Prefetcher {
    pub(super) fn new(config: PrefetchConfig, store: Arc<dyn Store>) -> Prefetcher {
        Prefetcher {
            config,
            store,
            queued: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Where the prefetch of `build`'s `file` stands (`none` before its
    /// first open), as `PrefetchState::describe` says it.
    pub(super) fn describe(&self, build: Uuid, file: FileKind) -> String {
        sync::lock(&self.states)
            .get(&(build, file))
            .map_or_else(|| "none".to_string(), |s| s.describe())
    }

    /// Start `file`'s prefetch, the first time only.
    pub(super) fn start(&self, file: &Arc<TemplateFile>) {
        let state = Arc::clone(
            sync::lock(&self.states)
                .entry((file.build_id(), file.file()))
                .or_default(),
        );
        if state.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if !self.config.enabled {
            state.set(Phase::Skipped("prefetch is off (--prefetch off)".into()));
            return;
        }
        let build = file.build_id();
        let run = Run {
            template: Arc::downgrade(file),
            header: Arc::clone(&file.header),
            build,
            file: file.file(),
            state: Arc::clone(&state),
            store: Arc::clone(&self.store),
            dir: self.config.dir.clone(),
            sources: self.config.sources.clone(),
            max_bytes: self.config.max_bytes,
            queued: Arc::clone(sync::lock(&self.queued).entry(build).or_default()),
            stop: Arc::clone(&self.stop),
        };
        let spawned = thread::Builder::new()
            .name(format!("tdfs-prefetch-{}", &build.to_string()[..8]))
            .spawn(move || run.run());
        let mut threads = sync::lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                log::warn!("build {build} {}: prefetch not started: {e}", file.file());
                state.set(Phase::Skipped(format!("no thread: {e}")));
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in sync::lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

/// One template file's prefetch, run on its own thread.
struct Run {
    /// Held strongly only while the trace is replayed: looking for it (a
    /// metadata fetch) must not keep the build's Chunkers open after the
    /// file's last close.
    template: Weak<TemplateFile>,
    /// The file's header (holding it keeps no Chunker open).
    header: Arc<Header>,
    build: Uuid,
    file: FileKind,
    state: Arc<PrefetchState>,
    store: Arc<dyn Store>,
    dir: Option<PathBuf>,
    sources: PrefetchSources,
    max_bytes: u64,
    queued: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// Storage ranges of one diff a replay wants, each with its first-touch
/// rank (`Chunker::plan_prefetch`'s input).
type Wanted = Vec<(usize, Range<u64>)>;

/// The working set found for a template file.
enum Found {
    /// A trace, and where it came from.
    Trace(Parsed, String),
    /// The build's own diff: its template ranges in offset order.
    OwnBlocks(Vec<Range<u64>>),
}

impl Run {
    fn run(self) {
        let state = &self.state;
        let (build, file) = (self.build, self.file);
        let found = match self.find() {
            Ok(Some(found)) => found,
            Ok(None) => {
                log::debug!("build {build} {file}: no prefetch working set to replay");
                return state.set(Phase::None);
            }
            Err(why) => return state.set(Phase::Skipped(why)),
        };
        let Some(template) = self.template.upgrade() else {
            // Closed before its trace was found: the next open starts over.
            state.set(Phase::None);
            state.started.store(false, Ordering::Release);
            return;
        };
        let (ranges, source) = match found {
            Found::Trace(parsed, from) => (
                self.trace_ranges(parsed, &from, template.size()),
                format!("trace from {from}"),
            ),
            Found::OwnBlocks(ranges) => (ranges, "last cycle: the build's own diff".to_string()),
        };
        log::info!(
            "build {build} {file}: prefetch from {source}: {} bytes in {} ranges",
            ranges.iter().map(|r| r.end - r.start).sum::<u64>(),
            ranges.len()
        );
        state.set(Phase::Running);
        if let Err(why) = self.replay(&template, &ranges) {
            return state.set(Phase::Skipped(why));
        }
        // Done once the last fetches queued have ended.
        while template
            .diffs
            .iter()
            .any(|(_, c)| c.prefetches_in_flight() > 0)
        {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            thread::sleep(BUSY_WAIT);
        }
        log::debug!("build {build} {file}: prefetched from {source}");
        state.set(Phase::Done(source));
    }

    /// The working set of the first source that has one. A trace that
    /// cannot be used is warned about, and the next source is tried; `Err`
    /// says why when none is left.
    fn find(&self) -> Result<Option<Found>, String> {
        let (build, file) = (self.build, self.file);
        let mut failed = None;
        for source in &self.sources.0 {
            match source {
                PrefetchSource::Trace => match self.load() {
                    Ok(Some((parsed, from))) => return Ok(Some(Found::Trace(parsed, from))),
                    Ok(None) => {}
                    Err(why) => {
                        log::warn!("build {build} {file}: prefetch trace skipped: {why}");
                        failed = Some(why);
                    }
                },
                PrefetchSource::LastCycle => {
                    let ranges = own_blocks(&self.header, build);
                    if !ranges.is_empty() {
                        return Ok(Some(Found::OwnBlocks(ranges)));
                    }
                }
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// The template-file ranges of `parsed`'s blocks inside a file of
    /// `size` bytes, in first-touch order; repairs are warned about.
    fn trace_ranges(&self, parsed: Parsed, from: &str, size: u64) -> Vec<Range<u64>> {
        let Parsed {
            mut trace,
            mut notes,
        } = parsed;
        let past_end = trace.clamp_to(size);
        if past_end > 0 {
            notes.push(format!(
                "{past_end} blocks past the end of the file ({size} bytes) skipped"
            ));
        }
        if !notes.is_empty() {
            log::warn!(
                "build {} {}: prefetch trace from {from} repaired: {}",
                self.build,
                self.file,
                notes.join("; ")
            );
        }
        // In range: `clamp_to` kept only blocks starting in the file.
        trace
            .indices
            .iter()
            .map(|&index| {
                let off = index * trace.block_size;
                off..off.saturating_add(trace.block_size).min(size)
            })
            .collect()
    }

    /// The trace to replay and where it came from; `None` when there is
    /// none.
    fn load(&self) -> Result<Option<(Parsed, String)>, String> {
        let (build, file) = (self.build, self.file);
        let key = ObjectKey::blob(build, Blob::Metadata);
        match self.store.read_all(&key, MAX_METADATA_LEN) {
            Ok(bytes) => {
                if let Some(parsed) =
                    trace::parse_metadata(&bytes, file).map_err(|e| e.to_string())?
                {
                    return Ok(Some((parsed, "metadata.json".into())));
                }
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(format!("metadata.json: {e}")),
        }
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = recording_path(dir, build, file);
        match read_bounded(&path) {
            Ok(Some(bytes)) => trace::parse_trace_file(&bytes)
                .map(|p| Some((p, path.display().to_string())))
                .map_err(|e| format!("{}: {e}", path.display())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Queue the units holding the template-file bytes `ranges` (in
    /// first-touch order), through the mappings: grouped into runs per
    /// diff, queued in the order of each run's first-touched range; waits
    /// while the pool has no room. `Err` says why prefetch stops.
    fn replay(&self, file: &TemplateFile, ranges: &[Range<u64>]) -> Result<(), String> {
        // Per diff, the wanted storage ranges with their rank.
        let mut wanted: Vec<(Uuid, Wanted)> = Vec::new();
        for (rank, range) in ranges.iter().enumerate() {
            let mut pos = range.start;
            while pos < range.end {
                let Some(hit) = file.header.mappings.lookup(pos) else {
                    break;
                };
                let n = hit.remaining.min(range.end - pos);
                pos += n;
                if hit.build_id.is_nil() {
                    continue;
                }
                let storage = hit.storage_offset..hit.storage_offset.saturating_add(n);
                match wanted.iter_mut().find(|(id, _)| *id == hit.build_id) {
                    Some((_, list)) => list.push((rank, storage)),
                    None => wanted.push((hit.build_id, vec![(rank, storage)])),
                }
            }
        }
        let mut runs: Vec<(&Chunker, PrefetchRun)> = Vec::new();
        for (build, list) in &wanted {
            let Ok(chunker) = file.chunker(*build) else {
                continue;
            };
            runs.extend(
                chunker
                    .plan_prefetch(list)
                    .into_iter()
                    .map(|r| (chunker, r)),
            );
        }
        runs.sort_by_key(|(_, run)| run.first_touch());
        self.state.total.store(runs.len(), Ordering::Relaxed);
        for (chunker, mut run) in runs {
            if self.max_bytes > 0 && self.queued.load(Ordering::Relaxed) >= self.max_bytes {
                return Err(format!(
                    "--prefetch-max of {} bytes reached for this build",
                    self.max_bytes
                ));
            }
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return Err("the mount is stopping".into());
                }
                match chunker.prefetch_run(&mut run) {
                    PrefetchStart::Started { queued_bytes } => {
                        self.queued.fetch_add(queued_bytes, Ordering::Relaxed);
                        break;
                    }
                    PrefetchStart::Busy { queued_bytes } => {
                        self.queued.fetch_add(queued_bytes, Ordering::Relaxed);
                        thread::sleep(BUSY_WAIT);
                    }
                }
            }
            self.state.walked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The template-file ranges `build`'s own diff holds, in offset order,
/// when `header` is a layer's (some mapping reads another build); none for
/// a build that is no layer, whose own diff is the whole image.
fn own_blocks(header: &Header, build: Uuid) -> Vec<Range<u64>> {
    let mappings = header.mappings.as_slice();
    let layered = mappings
        .iter()
        .any(|m| !m.build_id.is_nil() && m.build_id != build);
    if !layered {
        return Vec::new();
    }
    mappings
        .iter()
        .filter(|m| m.build_id == build)
        .map(|m| m.offset..m.end())
        .collect()
}

/// Where a recording of `build`'s `file` lives under `dir`.
pub fn recording_path(dir: &Path, build: Uuid, file: FileKind) -> PathBuf {
    dir.join(build.to_string())
        .join(format!("{}.prefetch.json", file.name()))
}

/// The file at `path` (a recording or a metadata.json), `None` when there
/// is none.
///
/// # Errors
/// When it cannot be read, or is over `MAX_METADATA_LEN` bytes (checked
/// before it is read).
pub fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_METADATA_LEN {
        return Err(std::io::Error::other(format!(
            "{len} bytes, over the limit of {MAX_METADATA_LEN}"
        )));
    }
    fs::read(path).map(Some)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::store::{Fault, FaultStore, LocalStore};
    use crate::template::{Builds, TemplateConfig};

    /// A layer of the v4-zstd fixture.
    const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";

    fn cache_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("cache".as_ref()))
            .count()
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Looking for a trace (a metadata fetch that may take long) does not
    /// keep the file's Chunkers open after its last close; the next open
    /// looks again.
    #[test]
    fn a_closed_file_is_not_held_while_its_trace_is_looked_for() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2b/v4-zstd");
        let store = Arc::new(FaultStore::new(Arc::new(LocalStore::open(root).unwrap())));
        let build = Uuid::parse_str(LAYER).unwrap();
        let metadata = ObjectKey::blob(build, Blob::Metadata);
        store.inject(Some(metadata), Fault::Hang, Some(1));
        let dir = tempfile::tempdir().unwrap();
        let mut config = TemplateConfig::for_tool(dir.path().join("cache"));
        config.max_idle_diffs = 0;
        config.prefetch.enabled = true;
        // The metadata lists no trace: a recording does.
        let recordings = dir.path().join("record");
        let recording = recording_path(&recordings, build, FileKind::Memfile);
        fs::create_dir_all(recording.parent().unwrap()).unwrap();
        fs::write(&recording, br#"{"indices": [3], "block_size": 4096}"#).unwrap();
        config.prefetch.dir = Some(recordings);
        let builds = Builds::new(store.clone(), config);

        let file = Arc::new(builds.open(build, FileKind::Memfile).unwrap());
        builds.start_prefetch(&file);
        wait_until("the metadata fetch hangs", || store.hanging() == 1);
        let cache = builds.cache_dir().unwrap().to_path_buf();
        assert!(cache_files(&cache) > 0);
        drop(file);
        let open_after_close = cache_files(&cache);
        // Healed before asserting: a failed test must not leave the run
        // hanging (the Prefetcher joins it when dropped).
        store.heal();
        assert_eq!(open_after_close, 0, "Chunkers closed at the last close");
        let file = Arc::new(builds.open(build, FileKind::Memfile).unwrap());
        // Once the first run found the file gone, an open starts over.
        wait_until("the next open looks again", || {
            builds.start_prefetch(&file);
            store.requests_for(&metadata) == 2
        });
        wait_until("replayed", || {
            builds
                .prefetch_state(build, FileKind::Memfile)
                .starts_with("done")
        });
    }
}
