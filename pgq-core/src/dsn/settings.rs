//! From settings by keyword to the driver's: the keywords we know, the environment and libpq's
//! defaults that fill in what a string leaves out, and the checks on each value.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};
use tokio_postgres::Config;

use super::tls::{RootCert, SslMode, TlsPolicy};
use crate::error::{Error, Result};

/// The libpq keywords we accept, in display order, with the environment variable that supplies
/// each when the string does not.
pub(super) const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("dbname", Some("PGDATABASE")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("options", Some("PGOPTIONS")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("channel_binding", Some("PGCHANNELBINDING")),
];

/// libpq keywords this crate knows but does not implement.
const UNSUPPORTED: &[&str] = &[
    "service",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "sslcertmode",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "requirepeer",
    "require_auth",
    "replication",
    "load_balance_hosts",
];

/// libpq's default Unix socket directory on Debian-style systems.
pub(super) const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Keepalive and user-timeout defaults, where libpq leaves them to the operating system (on
/// Linux: the first probe after 2 hours idle, and about 15 minutes of retransmissions before
/// unacknowledged data gives up). With these, a peer that vanished without a FIN or RST (a
/// crashed host, a dropped NAT or firewall entry, a cut link) is noticed within 2 minutes, idle
/// or not; a live server, however busy with a long statement, answers the probes from its
/// kernel, so long statements are never cut. 2 minutes outlasts a routine failover of a
/// network path (seconds) and is the order of Go's and the JDBC pools' defaults. Unix sockets
/// are not affected. This one: seconds idle before the first probe.
const DEFAULT_KEEPALIVES_IDLE: u64 = 60;
/// Seconds between probes (see [`DEFAULT_KEEPALIVES_IDLE`]): 60 s + 6 probes 10 s apart = 2
/// minutes.
const DEFAULT_KEEPALIVES_INTERVAL: u64 = 10;
/// Unanswered probes before the connection is dropped (see [`DEFAULT_KEEPALIVES_IDLE`]).
const DEFAULT_KEEPALIVES_COUNT: u64 = 6;
/// Milliseconds sent data may stay unacknowledged: the same 2 minutes (see
/// [`DEFAULT_KEEPALIVES_IDLE`]).
const DEFAULT_TCP_USER_TIMEOUT: u64 = 120_000;

/// Settings by keyword, indexed like [`KEYWORDS`].
#[derive(Clone)]
pub(super) struct Params {
    pub(super) values: Vec<Option<String>>,
}

impl Params {
    pub(super) fn new() -> Params {
        Params {
            values: vec![None; KEYWORDS.len()],
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.values[index(key)].as_deref()
    }

    pub(super) fn set(&mut self, key: &str, value: String) {
        self.values[index(key)] = Some(value);
    }

    /// Sets a keyword from user input; the last setting of a keyword wins and an empty value
    /// means the default, as in libpq.
    pub(super) fn set_named(&mut self, key: &str, value: String) -> Result<()> {
        match KEYWORDS.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.values[i] = Some(value).filter(|value| !value.is_empty());
                Ok(())
            }
            None if UNSUPPORTED.contains(&key) => Err(invalid(format!(
                "connection option {key:?} is not supported"
            ))),
            None => Err(invalid(format!("unknown connection option {key:?}"))),
        }
    }
}

/// The position of a known keyword in [`KEYWORDS`].
pub(super) fn index(key: &str) -> usize {
    KEYWORDS
        .iter()
        .position(|(k, _)| *k == key)
        .unwrap_or_else(|| unreachable!("{key} is not in KEYWORDS"))
}

/// Builds the driver settings and the TLS policy from complete settings.
pub(super) fn build(params: &Params) -> Result<(Config, TlsPolicy)> {
    let get = |key| params.get(key);
    let mut config = Config::new();

    let hosts: Vec<String> = get("host")
        .unwrap_or_default()
        .split(',')
        .map(|host| {
            if host.is_empty() {
                default_host()
            } else {
                host.to_owned()
            }
        })
        .collect();
    for host in &hosts {
        config.host(host);
    }
    if let Some(addrs) = get("hostaddr") {
        let addrs = addrs
            .split(',')
            .map(|addr| {
                addr.parse::<IpAddr>()
                    .map_err(|_| invalid(format!("invalid hostaddr {addr:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if addrs.len() != hosts.len() {
            return Err(invalid(format!(
                "{} host names but {} hostaddr values",
                hosts.len(),
                addrs.len()
            )));
        }
        for addr in addrs {
            config.hostaddr(addr);
        }
    }
    let ports = get("port")
        .unwrap_or_default()
        .split(',')
        .collect::<Vec<_>>();
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(invalid(format!(
            "{} host names but {} ports",
            hosts.len(),
            ports.len()
        )));
    }
    for port in ports {
        config.port(parse_port(port)?);
    }

    config.user(get("user").unwrap_or_default());
    config.dbname(get("dbname").unwrap_or_default());
    if let Some(password) = get("password") {
        config.password(password);
    }
    if let Some(name) = get("application_name").or_else(|| get("fallback_application_name")) {
        config.application_name(name);
    }
    if let Some(options) = get("options") {
        config.options(options);
    }
    if let Some(secs) = get("connect_timeout") {
        let secs = parse_int::<i64>("connect_timeout", secs)?;
        if secs > 0 {
            config.connect_timeout(Duration::from_secs(secs.unsigned_abs().max(2)));
        }
    }
    set_keepalives(&mut config, params)?;
    if let Some(attrs) = get("target_session_attrs") {
        config.target_session_attrs(match attrs {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" | "standby" | "prefer-standby" => {
                return Err(invalid(format!(
                    "target_session_attrs={attrs} is not supported (use any, read-write or \
                     read-only)"
                )))
            }
            other => return Err(invalid(format!("invalid target_session_attrs {other:?}"))),
        });
    }
    if let Some(binding) = get("channel_binding") {
        config.channel_binding(match binding {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => return Err(invalid(format!("invalid channel_binding {other:?}"))),
        });
    }

    let mode: SslMode = get("sslmode").unwrap_or_default().parse()?;
    let sockets_only = hosts.iter().all(|host| host.starts_with('/'));
    config.ssl_mode(match mode {
        _ if sockets_only => tokio_postgres::config::SslMode::Disable,
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let tls = TlsPolicy {
        mode,
        root_cert: get("sslrootcert").map(|path| {
            if path == "system" {
                RootCert::System
            } else {
                RootCert::File(PathBuf::from(path))
            }
        }),
        client_cert: get("sslcert").map(PathBuf::from),
        client_key: get("sslkey").map(PathBuf::from),
    };
    Ok((config, tls))
}

/// TCP keepalives and `tcp_user_timeout`: the user's values, else the defaults (see
/// [`DEFAULT_KEEPALIVES_IDLE`]); `0` leaves a setting to the operating system, as in libpq.
fn set_keepalives(config: &mut Config, params: &Params) -> Result<()> {
    let setting = |key: &str, default: u64| -> Result<Option<u64>> {
        let value = params
            .get(key)
            .map(|value| parse_int::<u64>(key, value))
            .transpose()?;
        Ok(Some(value.unwrap_or(default)).filter(|n| *n > 0))
    };
    if let Some(on) = params.get("keepalives") {
        config.keepalives(parse_int::<i64>("keepalives", on)? != 0);
    }
    // tokio-postgres always sets the idle time: 2 hours is the operating system's default.
    let idle = setting("keepalives_idle", DEFAULT_KEEPALIVES_IDLE)?.unwrap_or(7200);
    config.keepalives_idle(Duration::from_secs(idle));
    if let Some(secs) = setting("keepalives_interval", DEFAULT_KEEPALIVES_INTERVAL)? {
        config.keepalives_interval(Duration::from_secs(secs));
    }
    if let Some(count) = setting("keepalives_count", DEFAULT_KEEPALIVES_COUNT)? {
        let count = u32::try_from(count)
            .map_err(|_| invalid(format!("invalid keepalives_count value \"{count}\"")))?;
        config.keepalives_retries(count);
    }
    if let Some(millis) = setting("tcp_user_timeout", DEFAULT_TCP_USER_TIMEOUT)? {
        config.tcp_user_timeout(Duration::from_millis(millis));
    }
    Ok(())
}

fn parse_port(port: &str) -> Result<u16> {
    if port.is_empty() {
        return Ok(5432);
    }
    match port.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(format!("invalid port number {port:?}"))),
    }
}

fn parse_int<T: FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(format!("invalid {key} value {value:?}")))
}

/// libpq's default host: the Unix socket directory when it exists, else `localhost`.
pub(super) fn default_host() -> String {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        DEFAULT_SOCKET_DIR.to_owned()
    } else {
        "localhost".to_owned()
    }
}

/// A set, non-empty environment variable.
pub(super) fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|value| !value.is_empty())
}

/// A file under the home directory.
pub(super) fn home_file(relative: &str) -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(relative))
}

pub(super) fn invalid(reason: String) -> Error {
    Error::InvalidDsn { reason }
}
