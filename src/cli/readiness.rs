//! Readiness notices to the service manager (sd_notify): `READY=1` and a
//! `STATUS=` line once the mount answers, `STOPPING=1` when it winds down,
//! so units ordered after a `Type=notify` tdfs unit start only once its
//! files are there. Without `$NOTIFY_SOCKET` (not run by systemd, or by a
//! unit of another type) every notice is a no-op.

use std::path::Path;

use sd_notify::NotifyState;

/// What the status line says once the mount serves `builds` builds of
/// `store`.
pub fn serving_status(builds: usize, store: &str, mountpoint: &Path) -> String {
    format!(
        "serving {builds} builds of {store} at {}",
        mountpoint.display()
    )
}

/// Tell the service manager the mount serves, with `status`
/// (`serving_status`).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tell the service manager the mount is being taken down.
pub fn stopping(mountpoint: &Path) {
    let status = format!("unmounting {}", mountpoint.display());
    send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
}

fn send(states: &[NotifyState]) {
    // A lost notice costs the unit a start timeout, not the mount: log it.
    if let Err(e) = sd_notify::notify(states) {
        log::warn!(
            "telling systemd ({}) about the mount: {e}",
            std::env::var("NOTIFY_SOCKET").unwrap_or_default()
        );
    }
}
