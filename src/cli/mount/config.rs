//! Flags become configuration here and nowhere else: `MountArgs` methods
//! give the store's options, the read path's `TemplateConfig`, the tree's
//! `FsConfig` and the mount's `MountConfig`; `PeerArgs::check` gives the
//! peer server's and client's settings; and the paths flags name are made
//! absolute (the daemon changes directory to `/`).

use std::env;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{MountArgs, MountError, PeerArgs};
use crate::chunker::PeerSource;
use crate::fs::{FsConfig, MountConfig};
use crate::peer::{
    PeerBackoff, PeerClientConfig, PeerError, PeerListen, TlsFiles, check_registry_url,
    parse_peer_url,
};
use crate::store::{StoreConfig, StoreLocation};
use crate::template::{PrefetchConfig, TemplateConfig};

impl MountArgs {
    /// How the store is opened (`--endpoint-url`, `--region`).
    pub(super) fn store_config(&self) -> StoreConfig {
        StoreConfig {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            ..StoreConfig::default()
        }
    }

    /// The read path's settings: the flags, over `TemplateConfig`'s
    /// defaults for what no flag sets. `cache_dir` is the resolved parent
    /// (`cache_root`), `peers` the client made after the fork, and
    /// `max_idle_diffs` what the open file limit allows.
    pub(super) fn template_config(
        &self,
        cache_dir: PathBuf,
        peers: Option<Arc<dyn PeerSource>>,
        max_idle_diffs: usize,
    ) -> TemplateConfig {
        TemplateConfig {
            cache_dir,
            max_cache_size: self.max_cache_size,
            fetch_timeout: self.fetch_timeout,
            readahead: self.readahead,
            verify_checksums: self.verify_checksums,
            max_idle_diffs,
            prefetch: PrefetchConfig {
                enabled: self.prefetch,
                max_bytes: self.prefetch_max,
                dir: self.prefetch_dir.clone(),
                record_dir: self.record_prefetch.clone(),
            },
            peers,
            passthrough: self.passthrough,
            ..TemplateConfig::default()
        }
    }

    /// Who owns the tree's nodes (`--uid`, `--gid`; else the mounting user).
    pub(super) fn fs_config(&self) -> FsConfig {
        let user = FsConfig::default();
        FsConfig {
            uid: self.uid.unwrap_or(user.uid),
            gid: self.gid.unwrap_or(user.gid),
        }
    }

    /// How the mount is exposed (`--allow-other`, `--threads`).
    pub(super) fn mount_config(&self) -> MountConfig {
        MountConfig {
            allow_other: self.allow_other,
            threads: usize::from(self.threads),
        }
    }
}

impl PeerArgs {
    /// The server's settings and the client's (no peers: an empty list).
    ///
    /// # Errors
    /// The `PeerError` of the first flag that is wrong.
    pub fn check(&self) -> Result<(Option<PeerListen>, PeerClientConfig), PeerError> {
        let tls = TlsFiles::from_flags(
            self.peer_tls_cert.clone(),
            self.peer_tls_key.clone(),
            self.peer_tls_ca.clone(),
        )?;
        let has_peers =
            !self.peers.is_empty() || self.peers_file.is_some() || self.peer_registry.is_some();
        let listen =
            PeerListen::from_flags(self.peer_listen, tls.clone(), self.peer_insecure, has_peers)?;
        for peer in &self.peers {
            parse_peer_url(peer).map_err(|detail| PeerError::BadPeer { detail })?;
        }
        if let Some(file) = &self.peers_file {
            std::fs::metadata(file).map_err(|source| PeerError::PeersFile {
                path: file.clone(),
                source,
            })?;
        }
        if let Some(url) = &self.peer_registry {
            check_registry_url(url)?;
        }
        let self_url = match (&self.peer_advertise, self.peer_listen) {
            (Some(url), _) => Some(parse_peer_url(url).map_err(|detail| PeerError::BadPeer {
                detail: format!("(--peer-advertise) {detail}"),
            })?),
            (None, Some(addr)) => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Some(format!("{scheme}://{addr}"))
            }
            (None, None) => None,
        };
        let client = PeerClientConfig {
            peers: self.peers.clone(),
            peers_file: self.peers_file.clone(),
            self_url,
            timeout: self.peer_timeout,
            tls,
            backoff: match self.peer_backoff {
                Some(start) => PeerBackoff {
                    start,
                    timeout_start: start,
                    ..PeerBackoff::default()
                },
                None => PeerBackoff::default(),
            },
            registry: self.peer_registry.clone(),
        };
        Ok((listen, client))
    }
}

/// `dir` made absolute (the daemon changes directory to `/`), when given.
pub(super) fn absolute_dir(
    dir: Option<&Path>,
    what: &'static str,
) -> Result<Option<PathBuf>, MountError> {
    dir.map(|d| {
        std::path::absolute(d).map_err(|source| MountError::File {
            what,
            path: d.to_path_buf(),
            source,
        })
    })
    .transpose()
}

/// A local store path made absolute: the daemon changes directory to `/`.
pub(super) fn absolute_store(location: &str) -> String {
    match StoreLocation::parse(location) {
        Ok(StoreLocation::Local(dir)) => std::path::absolute(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| location.to_string()),
        _ => location.to_string(),
    }
}

/// The parent of this mount's cache directory (`--cache-dir` or the
/// default), absolute: the daemon changes directory to `/`. The read path
/// makes the mount's cache directory (`mount-<uuid>`) there, so mounts never
/// share files.
pub(super) fn cache_root(root: Option<&Path>) -> Result<PathBuf, MountError> {
    match root {
        Some(r) => std::path::absolute(r).map_err(|source| MountError::File {
            what: "cache directory",
            path: r.to_path_buf(),
            source,
        }),
        None => Ok(default_cache_root()),
    }
}

fn default_cache_root() -> PathBuf {
    if let Some(xdg) = env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("tdfs");
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/tdfs");
    }
    match env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache/tdfs"),
        None => env::temp_dir().join("tdfs-cache"),
    }
}
