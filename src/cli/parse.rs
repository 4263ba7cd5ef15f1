//! Parsers of the values flags take, one per kind, each with an error that
//! says what a good value looks like: sizes (`4KiB`), durations with units
//! (`300ms`, `30s`, `2m`), `on`/`off`, build ids, template files,
//! compressions and prefetch sources.

use std::time::Duration;

use uuid::Uuid;

use crate::format::{Compression, FileKind, parse_build_id};
use crate::template::PrefetchSources;

/// A size: plain bytes or with a binary unit (`4KiB`, `2MiB`, `1GiB`;
/// `K`, `M`, `G`, `T` mean the same).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size (examples: 4096, 4KiB, 2MiB, 1GiB)");
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A build id in canonical form (`3f1c…-…`, as the store names it).
pub fn parse_build(text: &str) -> Result<Uuid, String> {
    parse_build_id(text).ok_or_else(|| {
        format!("{text:?} is not a build id (a UUID like 3f1c0000-0000-4000-8000-000000000001)")
    })
}

/// `memfile` or `rootfs.ext4`.
pub fn parse_file_kind(text: &str) -> Result<FileKind, String> {
    FileKind::from_name(text)
        .ok_or_else(|| format!("{text:?} is not a template file (memfile or rootfs.ext4)"))
}

/// `zstd`, `lz4` or `none`.
pub fn parse_compression(text: &str) -> Result<Compression, String> {
    [Compression::Zstd, Compression::Lz4, Compression::None]
        .into_iter()
        .find(|c| c.name() == text)
        .ok_or_else(|| format!("{text:?} is not a compression (zstd, lz4 or none)"))
}

/// A duration with its unit: `300ms`, `2s`, `1.5s`, `2m`; more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: give a positive number with a unit, ms, s or m (e.g. 300ms, 2s, 1.5s, 2m)"
        )
    };
    let t = text.trim();
    let (number, seconds_per_unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(bad());
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

/// Longest `--fetch-timeout`: a reader stuck longer than an hour is a
/// hung VM, not a slow store.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

/// `--fetch-timeout`: a duration with a unit, or bare seconds (what the flag
/// took before it had units), from 1 ms to `MAX_FETCH_TIMEOUT`.
pub fn parse_fetch_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let timeout = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t
            .parse()
            .map_err(|_| format!("{text:?} is too many seconds"))?;
        Duration::from_secs(secs)
    } else {
        parse_duration(t)?
    };
    if timeout.is_zero() || timeout > MAX_FETCH_TIMEOUT {
        return Err(format!(
            "{text:?}: give a timeout from 1ms to {} s (e.g. 30s, 300ms, 2m)",
            MAX_FETCH_TIMEOUT.as_secs()
        ));
    }
    Ok(timeout)
}

/// `on` or `off` (`--prefetch`, `--passthrough`).
pub fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{value:?}: say on or off")),
    }
}

/// A comma-separated list of prefetch sources (`--prefetch-source`), e.g.
/// `trace,last-cycle`.
pub fn parse_prefetch_sources(text: &str) -> Result<PrefetchSources, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["", "MiB", "2.5MiB", "-1", "4KB", "12 apples"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        for bad in ["300", "0ms", "-1s", "fast", "", "ms", "1h", "NaNs", "1e30s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
            assert!(err.contains("300ms"), "{bad}: {err}");
        }
    }

    #[test]
    fn fetch_timeouts_take_units_or_bare_seconds() {
        assert_eq!(parse_fetch_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_fetch_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_fetch_timeout("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_fetch_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_fetch_timeout("3600"), Ok(MAX_FETCH_TIMEOUT));
        for bad in ["0", "3601", "61m", "99999999999999999999999"] {
            let err = parse_fetch_timeout(bad).unwrap_err();
            assert!(
                err.contains("timeout") || err.contains("seconds"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse_fetch_timeout("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn on_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        for bad in ["yes", "ON", "1", ""] {
            assert!(
                parse_on_off(bad).unwrap_err().contains("say on or off"),
                "{bad}"
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(parse_compression("lz4"), Ok(Compression::Lz4));
        assert!(parse_compression("gzip").is_err());
        assert_eq!(parse_file_kind("memfile"), Ok(FileKind::Memfile));
        assert!(parse_file_kind("snapfile").is_err());
        let id = Uuid::new_v4();
        assert_eq!(parse_build(&id.to_string()), Ok(id));
        assert!(parse_build("nope").is_err());
    }
}
