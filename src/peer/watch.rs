//! The registry watcher: a thread of its own that, every `POLL`, renews
//! this host's registry entry (when it advertises one) and re-reads the
//! live members, handing each answer to the fleet. Fetches never wait on
//! it: they take the fleet's last ring, so a registry that is slow or gone
//! costs nothing on the read path. An outage is warned about once (and its
//! end logged once); each bad entry is warned about once while it stays in
//! the answers; on a clean stop this host's entry is removed at once.

use std::collections::HashSet;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::registry::{Me, Registry, check_entry};

/// How often the entry is renewed and the members re-read: a joining host
/// is used by the others within this, and a poll is one small script.
pub const POLL: Duration = Duration::from_secs(2);
/// How long an entry lives without a heartbeat: a host that died drops out
/// of every ring within this plus `POLL`. Five heartbeats, so one slow or
/// lost heartbeat never drops a live host.
pub const TTL: Duration = Duration::from_secs(10);
/// Bound on connecting to the registry and on each command's answer.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(1);

/// What a poll brought the fleet.
#[derive(Debug)]
pub enum Poll {
    /// The live members, checked (this host's own URL among them when it
    /// is registered).
    Members(Vec<String>),
    /// The registry did not answer (or refused): keep the last members.
    Failed,
}

/// The running watcher; dropping it stops the thread (removing this
/// host's entry) and waits for it, at most about `REGISTRY_TIMEOUT`.
#[derive(Debug)]
pub struct Watch {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The watcher's own state between polls.
struct Watcher {
    registry: Registry,
    me: Me,
    /// In an outage (warned once).
    failing: bool,
    /// Bad entries of the last answer, already warned about.
    warned: HashSet<String>,
}

impl Watch {
    /// Read the members once now (so a mount starts with the fleet it can
    /// see), then every `POLL` on a thread named `tdfs-registry` renew this
    /// host's entry and read them, handing each poll to `publish`. The
    /// first renewal waits for the thread: by then the mount's peer server
    /// listens, so no peer is sent to a port that is not open yet.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(
        registry: Registry,
        me: Me,
        publish: impl Fn(Poll) + Send + 'static,
    ) -> std::io::Result<Watch> {
        let mut watcher = Watcher {
            registry,
            me,
            failing: false,
            warned: HashSet::new(),
        };
        publish(watcher.poll(false));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("tdfs-registry".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
                    publish(watcher.poll(true));
                }
                watcher.leave();
            })?;
        Ok(Watch {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Disconnecting the channel ends the thread's wait at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the registry watcher panicked");
        }
    }
}

impl Watcher {
    /// One poll; with `renew`, this host's entry (if any) is renewed.
    fn poll(&mut self, renew: bool) -> Poll {
        let url = self.registry.url().clone();
        let own = self.me.url.as_deref().filter(|_| renew);
        match self.registry.heartbeat_and_read(own, TTL) {
            Ok(entries) => {
                if self.failing {
                    self.failing = false;
                    log::info!("--peer-registry {url}: answering again");
                }
                Poll::Members(self.check(&url.to_string(), &entries))
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    log::warn!(
                        "--peer-registry: {e}; keeping the members last seen (none: reading the store) until it answers (warned once per outage)"
                    );
                }
                Poll::Failed
            }
        }
    }

    /// The members among `entries`; a bad one is warned about when it was
    /// not in the last answer's bad ones.
    fn check(&mut self, registry: &str, entries: &[String]) -> Vec<String> {
        let mut members = Vec::with_capacity(entries.len());
        let mut bad = HashSet::new();
        for entry in entries {
            match check_entry(entry, &self.me) {
                Ok(url) => members.push(url),
                Err(why) => {
                    if !self.warned.contains(entry) {
                        log::warn!("--peer-registry {registry}: {why}; skipped");
                    }
                    bad.insert(entry.clone());
                }
            }
        }
        self.warned = bad;
        members
    }

    /// Remove this host's entry (a clean stop): peers stop asking it now
    /// rather than within `TTL`.
    fn leave(&mut self) {
        let Some(url) = self.me.url.clone() else {
            return;
        };
        match self.registry.leave(&url) {
            Ok(()) => log::debug!("--peer-registry: {url} left the fleet"),
            Err(e) => {
                log::info!("--peer-registry: leaving: {e}; the entry expires within {TTL:?}")
            }
        }
    }
}
