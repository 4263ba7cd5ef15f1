//! E2B's registry of origin peers (`--peer-registry redis://HOST:PORT[/DB]`).
//! When a sandbox is paused or checkpointed, the E2B node holding it writes
//! the Redis key `peer:<buildID>` = `NODE_IP:PORT` (its ChunkService) before
//! uploading the new build, and deletes it once the upload ended; in that
//! window the build exists only on that node. `Origins` looks a build's key
//! up (answers, found or not, trusted for `LOOKUP_TTL`; each lookup bounded
//! by the peer timeout) and remembers the builds an origin told to read the
//! store (`use_storage`), for the rest of the mount.
//!
//! The blocking Redis client is used: a lookup is one GET from a fetch
//! worker or a FUSE thread, which block anyway, and the connection is taken
//! out of its slot while in use, so no lock is held across the network.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::PeerError;
use crate::sync;

/// How long an answer of the registry is trusted: a build registered a
/// moment ago is found within this, and a lookup costs one GET per build
/// per period, not one per read.
const LOOKUP_TTL: Duration = Duration::from_secs(3);
/// Cached answers kept at most: names looked up by the kernel (any UUID a
/// user types) cannot grow the cache without bound.
const MAX_CACHED: usize = 4096;
/// A failing registry is logged at most this often.
const FAULT_LOG: Duration = Duration::from_secs(60);

/// The key E2B writes for `build`.
pub fn registry_key(build: Uuid) -> String {
    format!("peer:{build}")
}

/// The registry client; see the module docs.
pub struct Origins {
    client: redis::Client,
    /// The `--peer-registry` URL, for messages.
    url: String,
    timeout: Duration,
    /// `HOST:PORT` forms of this host's own ChunkService: a build
    /// registered by this host is not asked of itself.
    self_addrs: Vec<String>,
    /// An idle connection; taken while a GET runs.
    idle: Mutex<Option<redis::Connection>>,
    /// `build` → (its origin's URL, when looked up).
    cached: Mutex<HashMap<Uuid, (Option<String>, Instant)>>,
    /// Builds an origin answered `use_storage` for.
    switched: Mutex<HashSet<Uuid>>,
    fault_logged: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origins").field("url", &self.url).finish()
    }
}

impl Origins {
    /// A client of the registry at `url`; connects at the first lookup.
    /// `self_addrs` are this host's own `HOST:PORT`s.
    ///
    /// # Errors
    /// `BadRegistry` when `url` is not redis://HOST:PORT[/DB].
    pub fn new(
        url: &str,
        timeout: Duration,
        self_addrs: Vec<String>,
    ) -> Result<Origins, PeerError> {
        check_registry_url(url)?;
        let client = redis::Client::open(url).map_err(|e| PeerError::BadRegistry {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Origins {
            client,
            url: url.to_string(),
            timeout,
            self_addrs,
            idle: Mutex::new(None),
            cached: Mutex::new(HashMap::new()),
            switched: Mutex::new(HashSet::new()),
            fault_logged: Mutex::new(None),
        })
    }

    /// The URL (`http://NODE_IP:PORT`) of the origin peer of `build`: set
    /// while its upload is in flight, `None` otherwise, once the build was
    /// switched to the store, when this host is the origin, or when the
    /// registry cannot be asked (logged; the store is read then).
    pub fn origin(&self, build: Uuid) -> Option<String> {
        if self.is_switched(build) {
            return None;
        }
        if let Some((url, at)) = sync::lock(&self.cached).get(&build)
            && at.elapsed() < LOOKUP_TTL
        {
            return url.clone();
        }
        let url = match self.get(&registry_key(build)) {
            Ok(value) => value.and_then(|v| self.origin_url(build, &v)),
            Err(e) => {
                self.log_fault(&e);
                None
            }
        };
        let mut cached = sync::lock(&self.cached);
        if cached.len() >= MAX_CACHED {
            cached.retain(|_, (_, at)| at.elapsed() < LOOKUP_TTL);
            if cached.len() >= MAX_CACHED {
                cached.clear();
            }
        }
        cached.insert(build, (url.clone(), Instant::now()));
        url
    }

    /// Note that `build`'s origin answered `use_storage`; true the first
    /// time for the build.
    pub fn switch(&self, build: Uuid) -> bool {
        let first = sync::lock(&self.switched).insert(build);
        if first {
            log::info!("build {build}: its origin peer says it is uploaded; reading the store");
        }
        first
    }

    /// Whether `build` was switched to the store.
    pub fn is_switched(&self, build: Uuid) -> bool {
        sync::lock(&self.switched).contains(&build)
    }

    /// `value` of `build`'s key as a peer URL; `None` (logged) when it is
    /// this host or not `HOST:PORT`.
    fn origin_url(&self, build: Uuid, value: &str) -> Option<String> {
        let value = value.trim();
        if self.self_addrs.iter().any(|a| a == value) {
            return None;
        }
        match super::parse_peer_url(&format!("http://{value}")) {
            Ok(url) => Some(url),
            Err(detail) => {
                log::warn!(
                    "registry {}: {} = {value:?} is not NODE_IP:PORT ({detail}); reading the store",
                    self.url,
                    registry_key(build)
                );
                None
            }
        }
    }

    /// One GET, within the timeout, on an idle connection or a new one.
    fn get(&self, key: &str) -> redis::RedisResult<Option<String>> {
        let taken = sync::lock(&self.idle).take();
        let mut conn = match taken {
            Some(c) => c,
            None => {
                let c = self.client.get_connection_with_timeout(self.timeout)?;
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                c
            }
        };
        let value = redis::cmd("GET").arg(key).query(&mut conn)?;
        // Only a connection that answered goes back: a failed one is dropped
        // and the next lookup connects anew.
        sync::lock(&self.idle).get_or_insert(conn);
        Ok(value)
    }

    fn log_fault(&self, e: &redis::RedisError) {
        let mut logged = sync::lock(&self.fault_logged);
        if logged.is_none_or(|t| t.elapsed() >= FAULT_LOG) {
            *logged = Some(Instant::now());
            log::warn!(
                "registry {}: {e}; reading the store for builds it would name (logged once a minute)",
                self.url
            );
        }
    }
}

/// Check that `url` is redis://HOST:PORT with an optional /DB number.
///
/// # Errors
/// `BadRegistry` naming what is wrong.
pub fn check_registry_url(url: &str) -> Result<(), PeerError> {
    let bad = |detail: &str| PeerError::BadRegistry {
        url: url.to_string(),
        detail: detail.to_string(),
    };
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| bad("it must start with redis://"))?;
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("give the port: redis://HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad("give HOST:PORT with a port number"));
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(bad("the database after / must be a number"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls() {
        for good in ["redis://127.0.0.1:6379", "redis://redis.local:6380/2"] {
            check_registry_url(good).unwrap();
        }
        for bad in [
            "127.0.0.1:6379",
            "http://h:1",
            "redis://h",
            "redis://:1",
            "redis://h:x",
            "redis://h:1/db",
        ] {
            assert!(check_registry_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_host_and_bad_values_are_not_origins() {
        let origins = Origins::new(
            "redis://127.0.0.1:1",
            Duration::from_millis(100),
            vec!["10.0.0.1:5008".into()],
        )
        .unwrap();
        let build = Uuid::nil();
        assert_eq!(origins.origin_url(build, "10.0.0.1:5008"), None);
        assert_eq!(origins.origin_url(build, "not an address"), None);
        assert_eq!(
            origins.origin_url(build, "10.0.0.2:5008").as_deref(),
            Some("http://10.0.0.2:5008")
        );
        // Nothing listens on port 1: no origin, and a prompt answer.
        let start = Instant::now();
        assert_eq!(origins.origin(build), None);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(origins.switch(build));
        assert!(!origins.switch(build), "once per build");
    }
}
