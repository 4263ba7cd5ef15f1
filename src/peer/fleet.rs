//! The fleet's member list: `--peer` URLs plus the lines of `--peers-file`,
//! re-read when the file's modification time changes (looked at no more
//! than every `RECHECK`), plus the live members of `--peer-registry` (kept
//! current by `watch`'s thread), with this host's own URL marking "self".
//! A bad line is warned about once and skipped; a file that cannot be read
//! later keeps the last list (warned once per change of its error), and a
//! registry that does not answer keeps its last members. Hosts whose lists
//! differ for a moment only cost fallbacks: a peer asked for a unit it
//! does not own reads its own store, never another peer (`server`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tonic::codegen::http::Uri;

use super::PeerError;
use super::client::PeerClientConfig;
use super::registry::{Me, Registry};
use super::ring::Ring;
use super::watch::{Poll, REGISTRY_TIMEOUT, Watch};
use crate::metrics::Stats;
use crate::sync;

/// How often the peers file's modification time is looked at, at most: a
/// `stat` per fetch would be wasted, and fleets change in seconds, not
/// milliseconds.
const RECHECK: Duration = Duration::from_secs(2);

/// A peer's URL, checked and normalized (no trailing `/`).
///
/// # Errors
/// What is wrong with it and what a good one looks like.
pub fn parse_peer_url(text: &str) -> Result<String, String> {
    let url = text.trim().trim_end_matches('/');
    let bad = |why: &str| {
        Err(format!(
            "{text:?}: {why} (give http://HOST:PORT or https://HOST:PORT)"
        ))
    };
    let Ok(uri) = url.parse::<Uri>() else {
        return bad("not a URL");
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return bad("the scheme is not http or https"),
        None => return bad("no http:// or https:// in front"),
    }
    match uri.authority() {
        Some(a) if a.port_u16().is_some_and(|p| p != 0) && !a.host().is_empty() => {}
        _ => return bad("it needs a host and a port from 1 to 65535"),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad("a peer's URL has no path");
    }
    Ok(url.to_string())
}

/// The member list; see the module docs. With a registry, a watcher
/// thread (`watch`) keeps it current; it stops when the fleet is dropped.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    /// The registry's watcher, if any: dropping it stops the thread, which
    /// removes this host's entry.
    _watch: Option<Watch>,
}

/// What the fleet and its watcher share.
#[derive(Debug)]
struct Shared {
    /// `--peer` URLs, checked.
    flags: Vec<String>,
    file: Option<PathBuf>,
    self_url: Option<String>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    ring: Arc<Ring>,
    checked: Instant,
    /// The file's modification time when last read.
    read_at: Option<SystemTime>,
    /// Bad lines and read errors already warned about.
    warned: HashSet<String>,
    /// The peers file's URLs, as last read.
    listed: Vec<String>,
    /// The registry's live members, as last read.
    registered: Vec<String>,
    /// Where the member count and registry errors go, once the mount's
    /// figures exist (`count_into`).
    stats: Option<Arc<Stats>>,
    /// Registry errors before that.
    unreported_errors: u64,
}

impl Fleet {
    /// The fleet of `config`'s `--peer` URLs, the lines of its
    /// `--peers-file` and the live members of its `--peer-registry` (all
    /// three together), where the entry equal to `self_url` is this host.
    /// With a registry, its first answer is waited for (at most about
    /// `REGISTRY_TIMEOUT`; a registry that does not answer is warned about
    /// and polled again), then a watcher thread keeps the list current.
    ///
    /// # Errors
    /// `BadPeer` for a `--peer` that is not an http(s)://HOST:PORT URL;
    /// `PeersFile` when the file cannot be read at start; `Registry` when
    /// the watcher cannot start.
    pub fn new(config: &PeerClientConfig) -> Result<Fleet, PeerError> {
        let flags = config
            .peers
            .iter()
            .map(|p| parse_peer_url(p).map_err(|detail| PeerError::BadPeer { detail }))
            .collect::<Result<Vec<_>, _>>()?;
        let self_url = config
            .self_url
            .as_deref()
            .map(|u| parse_peer_url(u).map_err(|detail| PeerError::BadPeer { detail }))
            .transpose()?;
        let mut state = State {
            ring: Arc::new(Ring::default()),
            checked: Instant::now(),
            read_at: None,
            warned: HashSet::new(),
            listed: Vec::new(),
            registered: Vec::new(),
            stats: None,
            unreported_errors: 0,
        };
        if let Some(path) = &config.peers_file {
            let (lines, mtime) = read_list(path).map_err(|source| PeerError::PeersFile {
                path: path.clone(),
                source,
            })?;
            state.read_at = mtime;
            state.listed = parse_lines(path, &lines, &mut state.warned);
        }
        let shared = Arc::new(Shared {
            flags,
            file: config.peers_file.clone(),
            self_url: self_url.clone(),
            state: Mutex::new(state),
        });
        shared.rebuild(&mut sync::lock(&shared.state));
        let watch = match &config.registry {
            None => None,
            Some(url) => {
                let registry = Registry::new(url.clone(), REGISTRY_TIMEOUT)
                    .map_err(|detail| PeerError::Registry { detail })?;
                let me = Me {
                    url: self_url,
                    listen: config.listen,
                    tls: config.tls.is_some(),
                };
                let to = Arc::clone(&shared);
                let watch = Watch::start(registry, me, move |poll| to.registry_polled(poll))
                    .map_err(|e| PeerError::Registry {
                        detail: format!("{url}: starting its watcher: {e}"),
                    })?;
                Some(watch)
            }
        };
        Ok(Fleet {
            shared,
            _watch: watch,
        })
    }

    /// The members now: the peers file is re-read when it changed; the
    /// registry's members are the watcher's last answer (never waited for).
    pub fn ring(&self) -> Arc<Ring> {
        self.shared.ring()
    }

    /// Count the member number (`tdfs_peer_members`) and registry errors
    /// (`tdfs_peer_registry_errors_total`) into `stats` from now on (and
    /// the errors seen before).
    pub fn count_into(&self, stats: Arc<Stats>) {
        let mut state = sync::lock(&self.shared.state);
        stats.peer_members.set(state.ring.members().len() as u64);
        stats
            .peer_registry_errors
            .fetch_add(state.unreported_errors, Relaxed);
        state.unreported_errors = 0;
        state.stats = Some(stats);
    }
}

impl Shared {
    /// Make the ring of every source again (`state` is this fleet's, locked).
    fn rebuild(&self, state: &mut State) {
        let mut all = self.flags.clone();
        all.extend_from_slice(&state.listed);
        all.extend_from_slice(&state.registered);
        state.ring = Arc::new(Ring::new(&all, self.self_url.as_deref()));
        if let Some(stats) = &state.stats {
            stats.peer_members.set(state.ring.members().len() as u64);
        }
    }

    /// Take a poll of the registry watcher.
    fn registry_polled(&self, poll: Poll) {
        let mut state = sync::lock(&self.state);
        match poll {
            Poll::Members(members) => {
                if members != state.registered {
                    state.registered = members;
                    self.rebuild(&mut state);
                    log::info!(
                        "--peer-registry: {} members now",
                        state.ring.members().len()
                    );
                }
            }
            Poll::Failed => match &state.stats {
                Some(stats) => {
                    stats.peer_registry_errors.fetch_add(1, Relaxed);
                }
                None => state.unreported_errors += 1,
            },
        }
    }

    fn ring(&self) -> Arc<Ring> {
        let mut state = sync::lock(&self.state);
        let Some(path) = &self.file else {
            return state.ring.clone();
        };
        if state.checked.elapsed() < RECHECK {
            return state.ring.clone();
        }
        state.checked = Instant::now();
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == state.read_at {
            return state.ring.clone();
        }
        match read_list(path) {
            Ok((lines, mtime)) => {
                state.listed = parse_lines(path, &lines, &mut state.warned);
                state.read_at = mtime;
                self.rebuild(&mut state);
                log::info!(
                    "--peers-file {}: {} members now",
                    path.display(),
                    state.ring.members().len()
                );
            }
            Err(e) => {
                let key = format!("read error: {e}");
                if state.warned.insert(key) {
                    log::warn!(
                        "--peers-file {}: {e}; keeping the last list (fix the file; it is read again when it changes)",
                        path.display()
                    );
                }
            }
        }
        state.ring.clone()
    }
}

fn read_list(path: &Path) -> std::io::Result<(String, Option<SystemTime>)> {
    let mtime = std::fs::metadata(path)?.modified().ok();
    Ok((std::fs::read_to_string(path)?, mtime))
}

/// The URLs of a peers file's text: one a line, `#` starts a comment;
/// bad lines warned once (by text) and skipped.
fn parse_lines(path: &Path, text: &str, warned: &mut HashSet<String>) -> Vec<String> {
    let mut urls = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match parse_peer_url(line) {
            Ok(url) => urls.push(url),
            Err(detail) => {
                if warned.insert(line.to_string()) {
                    log::warn!(
                        "--peers-file {} line {}: {detail}; skipped",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peers: &[&str], file: Option<PathBuf>, self_url: Option<&str>) -> PeerClientConfig {
        PeerClientConfig {
            peers: peers.iter().map(|p| p.to_string()).collect(),
            peers_file: file,
            self_url: self_url.map(str::to_string),
            ..PeerClientConfig::default()
        }
    }

    #[test]
    fn urls_are_checked_and_normalized() {
        assert_eq!(
            parse_peer_url(" http://10.0.0.1:5008/ ").unwrap(),
            "http://10.0.0.1:5008"
        );
        assert!(parse_peer_url("https://host.example:443").is_ok());
        for bad in [
            "10.0.0.1:5008",
            "ftp://h:1",
            "http://h",
            "http://h:1/x",
            "",
            "http://",
            "http://h:99999",
            "http://h:0",
        ] {
            let e = parse_peer_url(bad).unwrap_err();
            assert!(e.contains("http://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn peers_file_lines_comments_bad_lines_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        std::fs::write(
            &path,
            "# fleet\nhttp://10.0.0.1:5008\n\nnot a url\nhttp://10.0.0.2:5008 # me\n",
        )
        .unwrap();
        let fleet = Fleet::new(&config(
            &["http://10.0.0.9:5008"],
            Some(path.clone()),
            Some("http://10.0.0.2:5008"),
        ))
        .unwrap();
        let ring = fleet.ring();
        let urls: Vec<_> = ring.members().iter().map(|m| m.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.9:5008",
                "http://10.0.0.1:5008",
                "http://10.0.0.2:5008"
            ]
        );
        assert!(ring.members()[2].is_self);

        std::fs::write(&path, "http://10.0.0.3:5008\n").unwrap();
        // A later modification time than the first read's.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        sync::lock(&fleet.shared.state).checked -= RECHECK;
        let urls: Vec<_> = fleet
            .ring()
            .members()
            .iter()
            .map(|m| m.url.clone())
            .collect();
        assert_eq!(urls, ["http://10.0.0.9:5008", "http://10.0.0.3:5008"]);

        assert!(matches!(
            Fleet::new(&config(&["nope"], None, None)),
            Err(PeerError::BadPeer { .. })
        ));
        assert!(matches!(
            Fleet::new(&config(&[], Some(dir.path().join("missing")), None)),
            Err(PeerError::PeersFile { .. })
        ));
    }
}
