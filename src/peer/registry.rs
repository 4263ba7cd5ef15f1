//! The fleet's registry in Redis (`--peer-registry redis://HOST:PORT[/DB]`):
//! the live members, each kept alive by its own heartbeat.
//!
//! Scheme: one sorted set, `MEMBERS_KEY`, whose members are peer URLs and
//! whose scores are the time each entry expires, in milliseconds of the
//! Redis server's clock. One Lua script (atomic, one round trip) drops the
//! expired entries, adds or renews this host's (when it advertises one)
//! and returns the live ones; the set itself expires a TTL after its last
//! heartbeat, so a fleet that is gone leaves nothing behind. A sorted set
//! rather than a key per member: reading the fleet is one `ZRANGEBYSCORE`
//! instead of a `SCAN` over a Redis that E2B shares with other data, and
//! expiry by the server's clock means hosts whose clocks disagree still
//! agree on who is live.
//!
//! Entries are untrusted: the answer is bounded in count and each entry in
//! length by the script itself, and `check_entry` says which to skip.
//! A `Registry` holds one connection, opened lazily with a timeout and
//! dropped on any error (the next call reconnects); every command is
//! bounded by the same timeout. E2B's per-build keys (`peer:<buildID>`)
//! live in the same Redis: a lookup of them belongs here, beside
//! `members`, on the same connection settings.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tonic::codegen::http::Uri;

use super::fleet::parse_peer_url;

/// The sorted set of live members (URL → expiry, ms of the server's clock).
pub const MEMBERS_KEY: &str = "tdfs:peers";
/// Most entries read from the registry at once: a fleet is tens of hosts;
/// a registry holding more is not one this mount trusts whole.
pub const MAX_MEMBERS: usize = 1024;
/// Longest entry taken: a URL of a host name and a port fits many times;
/// longer ones are cut to this plus one byte by the script and skipped.
pub const MAX_ENTRY_LEN: usize = 256;

/// Heartbeat and read in one step; see the module docs. KEYS[1]: the set;
/// ARGV: this host's URL ('' for none), TTL in ms, most entries, longest
/// entry (cut to one byte more, so the client sees it is too long).
const HEARTBEAT_AND_READ: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
for i, m in ipairs(live) do live[i] = string.sub(m, 1, tonumber(ARGV[4]) + 1) end
return live
";

/// A checked `--peer-registry` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryUrl {
    host: String,
    port: u16,
    db: i64,
}

impl RegistryUrl {
    /// `redis://HOST:PORT[/DB]` (port 6379 when left out, DB 0).
    ///
    /// # Errors
    /// What is wrong and what a good one looks like: another scheme, no
    /// host, a port out of 1..=65535, a DB that is not a number, a user or
    /// password (which the command line would show to every user).
    pub fn parse(text: &str) -> Result<RegistryUrl, String> {
        let bad = |why: &str| {
            Err(format!(
                "{text:?}: {why} (give redis://HOST:PORT or redis://HOST:PORT/DB)"
            ))
        };
        let Some(rest) = text.trim().strip_prefix("redis://") else {
            return bad("the scheme is not redis://");
        };
        let (authority, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, db)) => match db.parse::<u32>() {
                Ok(db) => (a, i64::from(db)),
                Err(_) => return bad("the database is not a number"),
            },
            None => (rest, 0),
        };
        if authority.contains('@') {
            return bad("no user or password here: every user can read a command line");
        }
        let Ok(uri) = format!("redis://{authority}").parse::<Uri>() else {
            return bad("not a URL");
        };
        let Some(a) = uri.authority() else {
            return bad("no host");
        };
        let host = a.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return bad("no host");
        }
        let port = match (a.port_u16(), a.as_str().rsplit_once(':')) {
            (Some(0), _) => return bad("the port is out of 1..=65535"),
            (Some(p), _) => p,
            (None, Some((_, p))) if !a.as_str().ends_with(']') && !p.is_empty() => {
                return bad("the port is out of 1..=65535");
            }
            (None, _) => 6379,
        };
        Ok(RegistryUrl {
            host: host.to_string(),
            port,
            db,
        })
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "redis://[{ip}]:{}/{}", self.port, self.db),
            _ => write!(f, "redis://{}:{}/{}", self.host, self.port, self.db),
        }
    }
}

/// A connection to the registry; see the module docs.
pub struct Registry {
    url: RegistryUrl,
    client: redis::Client,
    connection: Option<redis::Connection>,
    /// Bound on connecting and on each command's answer.
    timeout: Duration,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Registry {
    /// A registry at `url`, not connected yet; every connect and command
    /// waits at most `timeout`.
    ///
    /// # Errors
    /// The redis client's refusal of the location (not expected of a
    /// parsed `RegistryUrl`).
    pub fn new(url: RegistryUrl, timeout: Duration) -> Result<Registry, String> {
        use redis::IntoConnectionInfo;
        let info = redis::ConnectionAddr::Tcp(url.host.clone(), url.port)
            .into_connection_info()
            .map_err(|e| format!("{url}: {e}"))?
            .set_redis_settings(redis::RedisConnectionInfo::default().set_db(url.db));
        let client = redis::Client::open(info).map_err(|e| format!("{url}: {e}"))?;
        Ok(Registry {
            url,
            client,
            connection: None,
            timeout,
        })
    }

    /// The registry's location, for messages.
    pub fn url(&self) -> &RegistryUrl {
        &self.url
    }

    /// Renew `advertise`'s entry for `ttl` (when given) and return the
    /// live entries, unchecked (see `check_entry`): at most `MAX_MEMBERS`,
    /// each at most `MAX_ENTRY_LEN` + 1 bytes.
    ///
    /// # Errors
    /// The connection's or the server's error, naming the registry.
    pub fn heartbeat_and_read(
        &mut self,
        advertise: Option<&str>,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let mut script = redis::cmd("EVAL");
        script
            .arg(HEARTBEAT_AND_READ)
            .arg(1)
            .arg(MEMBERS_KEY)
            .arg(advertise.unwrap_or(""))
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(MAX_MEMBERS)
            .arg(MAX_ENTRY_LEN);
        self.query(&script)
    }

    /// Remove `url`'s entry now (a clean unmount), rather than let it
    /// expire.
    ///
    /// # Errors
    /// The connection's or the server's error, naming the registry.
    pub fn leave(&mut self, url: &str) -> Result<(), String> {
        let mut remove = redis::cmd("ZREM");
        remove.arg(MEMBERS_KEY).arg(url);
        self.query::<i64>(&remove).map(drop)
    }

    /// Run `cmd` on the connection (made first when there is none); any
    /// error drops the connection, so the next call starts afresh.
    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        let answer = self.connection().and_then(|c| cmd.query::<T>(c));
        answer.map_err(|e| {
            self.connection = None;
            format!("{}: {e}", self.url)
        })
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        let c = match self.connection.take() {
            Some(c) => c,
            None => {
                let c = self.client.get_connection_with_timeout(self.timeout)?;
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                c
            }
        };
        Ok(self.connection.insert(c))
    }
}

/// This mount as the registry may name it: its own URL (the entry that
/// is this host) and the address its peer server listens on.
#[derive(Debug, Clone, Default)]
pub struct Me {
    /// `--peer-advertise` (or derived from `--peer-listen`), checked.
    pub url: Option<String>,
    /// `--peer-listen`.
    pub listen: Option<SocketAddr>,
    /// Whether https:// members can be asked (`--peer-tls-*` given).
    pub tls: bool,
}

/// The registry entry `entry` as a member's URL, or why it is skipped: it
/// is not an http(s)://HOST:PORT URL (a port out of 1..=65535 included),
/// it is too long, it names no reachable host (0.0.0.0, ::), it names this
/// mount's own server other than by its own URL (asking it would be asking
/// this host), or it is https:// without TLS files. `me.url` itself is a
/// member (this host).
///
/// # Errors
/// The reason, for a warning.
pub fn check_entry(entry: &str, me: &Me) -> Result<String, String> {
    if entry.len() > MAX_ENTRY_LEN {
        return Err(format!(
            "an entry of over {MAX_ENTRY_LEN} bytes ({:?}…)",
            entry.chars().take(32).collect::<String>()
        ));
    }
    let url = parse_peer_url(entry)?;
    if me.url.as_deref() == Some(url.as_str()) {
        return Ok(url);
    }
    let uri: Uri = url.parse().map_err(|_| format!("{entry:?}: not a URL"))?;
    let (host, port) = match uri.authority() {
        Some(a) => (
            a.host().trim_start_matches('[').trim_end_matches(']'),
            a.port_u16().unwrap_or(0),
        ),
        None => return Err(format!("{entry:?}: no host")),
    };
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_some_and(|ip| ip.is_unspecified()) {
        return Err(format!("{entry:?}: names no host a peer can reach"));
    }
    if names_me(host, ip, port, me) {
        return Err(format!(
            "{entry:?}: names this host's own peer server (its URL here is {})",
            me.url.as_deref().unwrap_or("not advertised")
        ));
    }
    if uri.scheme_str() == Some("https") && !me.tls {
        return Err(format!(
            "{entry:?}: https:// members need --peer-tls-cert, --peer-tls-key and --peer-tls-ca"
        ));
    }
    Ok(url)
}

/// Whether `host:port` is this mount's own server: the host and port of
/// its own URL (under another scheme or spelling), or its listen address
/// (a loopback name for a loopback or wildcard listen address).
fn names_me(host: &str, ip: Option<IpAddr>, port: u16, me: &Me) -> bool {
    let own_url = me.url.as_deref().and_then(|u| u.parse::<Uri>().ok());
    if let Some(a) = own_url.as_ref().and_then(|u| u.authority()) {
        let own_host = a.host().trim_start_matches('[').trim_end_matches(']');
        if a.port_u16() == Some(port) && own_host.eq_ignore_ascii_case(host) {
            return true;
        }
    }
    let Some(listen) = me.listen else {
        return false;
    };
    if listen.port() != port {
        return false;
    }
    let loopback = ip.is_some_and(|ip| ip.is_loopback()) || host.eq_ignore_ascii_case("localhost");
    ip == Some(listen.ip())
        || (loopback && (listen.ip().is_loopback() || listen.ip().is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_are_checked() {
        let url = RegistryUrl::parse("redis://10.0.0.5:6380/2").unwrap();
        assert_eq!(url.to_string(), "redis://10.0.0.5:6380/2");
        assert_eq!(
            RegistryUrl::parse("redis://cache.internal")
                .unwrap()
                .to_string(),
            "redis://cache.internal:6379/0"
        );
        assert_eq!(
            RegistryUrl::parse("redis://[::1]:7000/")
                .unwrap()
                .to_string(),
            "redis://[::1]:7000/0"
        );
        for bad in [
            "10.0.0.5:6379",
            "rediss://h:6379",
            "http://h:6379",
            "redis://",
            "redis://:6379",
            "redis://h:0",
            "redis://h:65536",
            "redis://h:port",
            "redis://h:6379/x",
            "redis://h:6379/-1",
            "redis://user:secret@h:6379",
        ] {
            let e = RegistryUrl::parse(bad).unwrap_err();
            assert!(e.contains("redis://HOST:PORT"), "{bad}: {e}");
        }
    }

    fn me() -> Me {
        Me {
            url: Some("http://10.0.0.1:5008".into()),
            listen: Some("0.0.0.0:5008".parse().unwrap()),
            tls: false,
        }
    }

    #[test]
    fn good_entries_are_members_and_self_is_one() {
        let me = me();
        assert_eq!(
            check_entry("http://10.0.0.2:5008/", &me).unwrap(),
            "http://10.0.0.2:5008"
        );
        assert_eq!(
            check_entry("http://10.0.0.1:5008", &me).unwrap(),
            "http://10.0.0.1:5008"
        );
        // Another mount on this machine, on another port.
        assert!(check_entry("http://127.0.0.1:5009", &me).is_ok());
        let tls = Me { tls: true, ..me };
        assert!(check_entry("https://peer.example:443", &tls).is_ok());
    }

    #[test]
    fn bad_entries_say_why_they_are_skipped() {
        let me = me();
        let long = format!("http://{}:5008", "h".repeat(MAX_ENTRY_LEN));
        for (entry, why) in [
            ("not a url", "http://HOST:PORT"),
            ("10.0.0.2:5008", "http://HOST:PORT"),
            ("http://10.0.0.2:99999", "http://HOST:PORT"),
            ("http://10.0.0.2:0", "http://HOST:PORT"),
            ("http://10.0.0.2", "http://HOST:PORT"),
            (long.as_str(), "over 256 bytes"),
            ("http://0.0.0.0:5008", "no host a peer can reach"),
            ("http://[::]:5008", "no host a peer can reach"),
            ("https://10.0.0.1:5008", "this host's own peer server"),
            ("http://127.0.0.1:5008", "this host's own peer server"),
            ("http://LOCALHOST:5008", "this host's own peer server"),
            ("https://10.0.0.3:5008", "--peer-tls-cert"),
        ] {
            let e = check_entry(entry, &me).unwrap_err();
            assert!(e.contains(why), "{entry}: {e}");
        }
        // Listening on one address: only that address is this host.
        let specific = Me {
            url: None,
            listen: Some("127.0.0.1:5008".parse().unwrap()),
            tls: false,
        };
        assert!(check_entry("http://127.0.0.1:5008", &specific).is_err());
        assert!(check_entry("http://10.0.0.1:5008", &specific).is_ok());
        assert!(check_entry("http://127.0.0.1:5008", &Me::default()).is_ok());
    }
}
