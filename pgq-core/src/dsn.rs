//! Connection settings read the way libpq reads them, with TLS through rustls; see [`Dsn`].

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{DbContext, Error, Result};

/// The libpq keywords we accept, in display order, with the environment variable that supplies
/// each when the string does not.
const KEYWORDS: &[(&str, Option<&str>)] = &[
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
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Shown instead of a password.
const REDACTED: &str = "********";

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

/// What daemon sessions append to the startup `options`: a `search_path` that a database's or
/// role's default cannot replace and `RESET ALL` keeps (a startup option is the session's reset
/// value).
const PINNED_SEARCH_PATH: &str = "-c search_path=pg_catalog,pg_temp";

/// How a connection uses TLS; the libpq `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without checking the certificate. Unlike libpq,
    /// TLS is tried first.
    Allow,
    /// Use TLS when the server offers it, without checking the certificate (the default).
    #[default]
    Prefer,
    /// Insist on TLS; check the certificate chain only when a root certificate is available.
    Require,
    /// Insist on TLS and check the certificate chain, but not the host name.
    VerifyCa,
    /// Insist on TLS, check the certificate chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;

    /// Reads a libpq `sslmode` value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDsn`] for anything but the six libpq values.
    fn from_str(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(invalid(format!(
                    "invalid sslmode {other:?} (expected disable, allow, prefer, require, \
                     verify-ca or verify-full)"
                )))
            }
        })
    }
}

/// Parsed connection settings.
///
/// Built with [`Dsn::parse`] or [`Dsn::from_env`]. `Display` and `Debug` print the effective
/// settings in keyword/value form with the password replaced by `********`.
///
/// # Keywords
///
/// [`Dsn::parse`] accepts libpq keyword/value strings (`host=db1 dbname=app sslmode=verify-full`)
/// and URLs (`postgres://app@db1/app?sslmode=verify-full`). Settings missing from the string come
/// from the libpq environment variables, then from libpq's defaults:
///
/// | keyword            | variable               | default                                              |
/// |--------------------|------------------------|------------------------------------------------------|
/// | `host`             | `PGHOST`               | `/var/run/postgresql` if that directory exists, else `localhost` |
/// | `hostaddr`         | `PGHOSTADDR`           |                                                      |
/// | `port`             | `PGPORT`               | `5432`                                               |
/// | `user`             | `PGUSER`               | the `USER` (else `LOGNAME`) variable                 |
/// | `password`         | `PGPASSWORD`           | the password file                                    |
/// | `passfile`         | `PGPASSFILE`           | `~/.pgpass`                                          |
/// | `dbname`           | `PGDATABASE`           | the user name                                        |
/// | `sslmode`          | `PGSSLMODE`            | `prefer` (`verify-full` with `sslrootcert=system`)   |
/// | `sslrootcert`      | `PGSSLROOTCERT`        | `~/.postgresql/root.crt`                             |
/// | `sslcert`          | `PGSSLCERT`            | `~/.postgresql/postgresql.crt` if it exists          |
/// | `sslkey`           | `PGSSLKEY`             | `~/.postgresql/postgresql.key`                       |
/// | `application_name` | `PGAPPNAME`            | `fallback_application_name`                          |
/// | `options`          | `PGOPTIONS`            |                                                      |
/// | `connect_timeout`  | `PGCONNECT_TIMEOUT`    | none (seconds; values below 2 mean 2)                |
/// | `keepalives`       |                        | `1` (on; `0` turns TCP keepalives off)               |
/// | `keepalives_idle`  |                        | `60` (seconds idle before the first probe)           |
/// | `keepalives_interval` |                     | `10` (seconds between probes)                        |
/// | `keepalives_count` |                        | `6` (unanswered probes before the connection is dropped) |
/// | `tcp_user_timeout` |                        | `120000` (milliseconds sent data may stay unacknowledged) |
/// | `target_session_attrs` | `PGTARGETSESSIONATTRS` | `any` (`read-write` and `read-only` also work)  |
/// | `channel_binding`  | `PGCHANNELBINDING`     | `prefer`                                             |
///
/// Other libpq keywords (`service`, `sslcrl`, `gssencmode`, ...) are rejected as unsupported;
/// anything else is rejected as unknown.
///
/// # Dead peers
///
/// Unlike libpq, TCP connections detect a dead peer by default: keepalive probes after 60
/// seconds idle, 10 seconds apart, 6 unanswered ones drop the connection; data sent and not
/// acknowledged for 2 minutes (`tcp_user_timeout`) does too. So a server host that crashed or
/// became unreachable without closing the connection costs a statement at most about 2
/// minutes, not hours (the operating system's defaults). A value of `0` means the operating
/// system's default, as in libpq.
///
/// # Password file
///
/// The password file has libpq's format: `host:port:database:user:password` lines, `*` matching
/// anything, `\` escaping `:` and `\`. It is ignored when group or world can access it. Its entry
/// for `localhost` also serves the default Unix socket directory. With several hosts, the first
/// host and port choose the entry.
///
/// # TLS
///
/// `sslmode` follows libpq: `disable` never uses TLS; `allow` and `prefer` try TLS without
/// checking the certificate and fall back to plain connections; `require` insists on TLS without
/// checking the certificate, unless a root certificate is given (or `~/.postgresql/root.crt`
/// exists), which makes it `verify-ca`; `verify-ca` checks the certificate chain against the root
/// certificate; `verify-full` checks the chain and that the certificate names the `host` (a DNS
/// name or an IP address). `sslrootcert=system` trusts the Mozilla root set. PostgreSQL offers no
/// TLS on Unix sockets, so TLS settings do not apply to socket hosts; when every host is a socket,
/// no TLS is attempted, as with libpq. Unlike libpq, `allow` tries TLS first.
#[derive(Clone)]
pub struct Dsn {
    /// Effective settings, indexed like [`KEYWORDS`]; the password slot is never displayed.
    params: Params,
    /// Driver settings without a password-file password.
    base: Config,
    /// `base` plus the password-file password, if one applies.
    config: Config,
    /// What the TLS connector must check.
    tls: TlsPolicy,
}

impl Dsn {
    /// Parses a libpq keyword/value string (`host=db1 port=5432 dbname=app user=app
    /// password='it\'s' sslmode=verify-full`, values quoted with `'` and escaped with `\`) or a
    /// `postgres://` / `postgresql://` URL (percent-encoded, settings in query parameters,
    /// several `host:port` pairs separated by commas, `ssl=true` meaning `sslmode=require`).
    ///
    /// Settings missing from `s` come from the environment and libpq's defaults (see
    /// [`Dsn`]); the password file is read here.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDsn`] naming the unknown or unsupported keyword, the malformed value, or
    /// the syntax error; the message never contains a password.
    pub fn parse(s: &str) -> Result<Dsn> {
        let pairs = match uri_rest(s.trim_start()) {
            Some(rest) => parse_uri(rest)?,
            None => parse_keyword_value(s)?,
        };
        let mut params = Params::new();
        for (key, value) in pairs {
            params.set_named(&key, value)?;
        }
        Dsn::resolve(params)
    }

    /// Settings from the environment: `PGQ_DSN`, else `DATABASE_URL`, else the libpq variables
    /// when any of `PGHOST`, `PGPORT`, `PGUSER` or `PGDATABASE` is set. Empty variables count as
    /// unset.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDsn`] when the chosen setting does not parse; the message names the
    /// variable.
    pub fn from_env() -> Result<Option<Dsn>> {
        for var in ["PGQ_DSN", "DATABASE_URL"] {
            if let Some(value) = env(var) {
                return Dsn::parse(&value).map(Some).map_err(|err| match err {
                    Error::InvalidDsn { reason } => invalid(format!("{var}: {reason}")),
                    other => other,
                });
            }
        }
        if ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE"]
            .iter()
            .any(|var| env(var).is_some())
        {
            return Dsn::parse("").map(Some);
        }
        Ok(None)
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.params.get("dbname").unwrap_or_default()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.params.get("user").unwrap_or_default()
    }

    /// The `sslmode` setting.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    /// The same settings for another database. A password from the password file is looked up
    /// again for the new database.
    pub fn with_dbname(&self, db: &str) -> Dsn {
        let mut dsn = self.clone();
        dsn.params.set("dbname", db.to_owned());
        dsn.base.dbname(db);
        dsn.config = dsn.with_passfile_password();
        dsn
    }

    /// The same settings for another user. A password from the password file is looked up again
    /// for the new user.
    pub fn with_user(&self, user: &str) -> Dsn {
        let mut dsn = self.clone();
        dsn.params.set("user", user.to_owned());
        dsn.base.user(user);
        dsn.config = dsn.with_passfile_password();
        dsn
    }

    /// The same settings for a daemon's session (the ticker, the replay worker, the base
    /// backup): `-c search_path=pg_catalog,pg_temp` is appended to the startup `options`,
    /// after any the user gave, so that neither a `search_path` set on the database or the
    /// role (`ALTER DATABASE ... SET search_path = evil, pg_catalog`) nor one in the user's
    /// `options` decides what the daemon's unqualified names resolve to, and `RESET ALL` keeps
    /// it. Sessions that run users' SQL (consumer handlers) keep the user's `search_path`.
    pub fn with_pinned_search_path(&self) -> Dsn {
        let options = match self.params.get("options") {
            Some(user) => format!("{user} {PINNED_SEARCH_PATH}"),
            None => PINNED_SEARCH_PATH.to_owned(),
        };
        let mut dsn = self.clone();
        dsn.base.options(&options);
        dsn.config.options(&options);
        dsn.params.set("options", options);
        dsn
    }

    /// Asks the server to cancel the statement running on a connection made with these
    /// settings, over a connection of its own that uses the same TLS settings as the original
    /// (so the cancel key is never sent in clear where the connection was encrypted, and
    /// `sslmode=require` is honoured). Best effort: the server does not say whether a
    /// statement was cancelled.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the certificate files cannot be loaded; [`Error::Db`] with op
    /// `cancel` when the cancel connection fails.
    pub async fn cancel_query(&self, token: &tokio_postgres::CancelToken) -> Result<()> {
        token.cancel_query(self.tls.connector()?).await.op("cancel")
    }

    /// Connects and spawns the connection task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the certificate files cannot be loaded; [`Error::Db`] with op
    /// `connect` when no host accepts the connection (the source says why, e.g. that the
    /// certificate is not valid for the host name).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let tls = self.tls.connector()?;
        let (client, connection) = self.config.connect(tls).await.op("connect")?;
        let db = self.dbname().to_owned();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(%err, db, "connection ended with an error");
            }
        });
        Ok(client)
    }

    /// Like [`Dsn::connect`], for a dedicated connection that LISTENs: the server's
    /// notifications arrive on the returned receiver, which ends when the connection does.
    ///
    /// # Errors
    ///
    /// As for [`Dsn::connect`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect_with_notifications(
        &self,
    ) -> Result<(
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    )> {
        let tls = self.tls.connector()?;
        let (client, mut connection) = self.config.connect(tls).await.op("connect")?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let db = self.dbname().to_owned();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        // The receiver may be gone; the connection still serves the client.
                        let _ = sender.send(n);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        tracing::warn!(%err, db, "connection ended with an error");
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok((client, receiver))
    }

    /// A deadpool-postgres pool of up to `max_size` connections with these settings and TLS,
    /// recycling connections with [`deadpool_postgres::RecyclingMethod::Fast`]. No connection is
    /// opened here.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the certificate files cannot be loaded; [`Error::InvalidDsn`] when
    /// the pool cannot be built.
    pub fn pool(&self, max_size: usize) -> Result<deadpool_postgres::Pool> {
        let manager = deadpool_postgres::Manager::from_config(
            self.config.clone(),
            self.tls.connector()?,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .build()
            .map_err(|err| invalid(format!("cannot build a connection pool: {err}")))
    }

    /// The effective value of a libpq keyword: from the string, else the environment, else
    /// libpq's default (`host`, `port`, `user`, `dbname`, `sslmode`). `None` for a keyword that
    /// is not set or not known, and always for `password` (see [`Dsn::password_source`]).
    pub fn setting(&self, key: &str) -> Option<&str> {
        let i = KEYWORDS.iter().position(|(k, _)| *k == key)?;
        if key == "password" {
            return None;
        }
        self.params.values[i].as_deref()
    }

    /// Where the password comes from, when there is one: given (in the string or
    /// `PGPASSWORD`), or read from a password file.
    pub fn password_source(&self) -> Option<PasswordSource> {
        if self.params.get("password").is_some() {
            return Some(PasswordSource::Given);
        }
        self.config.get_password()?;
        self.passfile().map(PasswordSource::File)
    }

    /// The tokio-postgres settings, password included. `sslmode` there is only `disable`,
    /// `prefer` or `require`; certificate checks happen in the TLS connector that
    /// [`Dsn::connect`] and [`Dsn::pool`] build.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Fills in the environment and defaults, then builds the driver settings.
    fn resolve(mut params: Params) -> Result<Dsn> {
        for (i, (_, var)) in KEYWORDS.iter().enumerate() {
            if params.values[i].is_none() {
                params.values[i] = var.and_then(env);
            }
        }
        if params.get("sslrootcert") == Some("system") {
            match params.get("sslmode") {
                None => params.set("sslmode", "verify-full".to_owned()),
                Some("verify-full") => {}
                Some(mode) => {
                    return Err(invalid(format!(
                        "sslmode {mode:?} may not be used with sslrootcert=system \
                         (use verify-full)"
                    )))
                }
            }
        }
        if params.get("host").is_none() {
            match params.values[index("hostaddr")].take() {
                Some(addrs) => params.set("host", addrs),
                None => params.set("host", default_host()),
            }
        }
        if params.get("port").is_none() {
            params.set("port", "5432".to_owned());
        }
        if params.get("user").is_none() {
            let user = env("USER").or_else(|| env("LOGNAME")).ok_or_else(|| {
                invalid("no user name given: set user, PGUSER or USER".to_owned())
            })?;
            params.set("user", user);
        }
        if params.get("dbname").is_none() {
            let user = params.get("user").unwrap_or_default().to_owned();
            params.set("dbname", user);
        }
        if params.get("sslmode").is_none() {
            params.set("sslmode", SslMode::Prefer.as_str().to_owned());
        }
        let (base, tls) = build(&params)?;
        let mut dsn = Dsn {
            config: base.clone(),
            params,
            base,
            tls,
        };
        dsn.config = dsn.with_passfile_password();
        Ok(dsn)
    }

    /// `base`, plus the password-file password when no password was given.
    fn with_passfile_password(&self) -> Config {
        let mut config = self.base.clone();
        if self.params.get("password").is_some() {
            return config;
        }
        let Some(path) = self.passfile() else {
            return config;
        };
        let host = self
            .params
            .get("host")
            .and_then(|hosts| hosts.split(',').next())
            .filter(|host| !host.is_empty())
            .map_or_else(default_host, str::to_owned);
        let port = self
            .params
            .get("port")
            .and_then(|ports| ports.split(',').next())
            .filter(|port| !port.is_empty())
            .unwrap_or("5432");
        if let Some(password) = passfile_password(&path, &host, port, self.dbname(), self.user()) {
            config.password(password);
        }
        config
    }
}

impl Dsn {
    /// The password file: `passfile`, else `~/.pgpass`.
    fn passfile(&self) -> Option<PathBuf> {
        self.params
            .get("passfile")
            .map(PathBuf::from)
            .or_else(|| home_file(".pgpass"))
    }
}

/// Where a [`Dsn`]'s password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// Given in the connection string or in `PGPASSWORD`.
    Given,
    /// Read from this password file (`passfile`, `PGPASSFILE` or `~/.pgpass`).
    File(PathBuf),
}

impl Dsn {
    /// The settings as a libpq keyword/value string for a child process (`psql`, `pgqd`, a
    /// Python consumer), without the password: hand that over in `PGPASSWORD`, so it stays out
    /// of command lines and configuration files.
    pub fn conninfo(&self) -> String {
        self.conninfo_showing(Password::Omitted)
    }

    /// The settings as a libpq keyword/value string, the password included (the given one or
    /// the password file's): for a child that has no other way to get it. The string is a
    /// secret; never log it.
    pub fn conninfo_with_password(&self) -> String {
        self.conninfo_showing(Password::Revealed)
    }

    fn conninfo_showing(&self, password: Password) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_conninfo(&mut out, password);
        out
    }

    /// Writes every effective setting as `key=value`, values quoted where libpq needs it.
    fn write_conninfo(&self, out: &mut impl fmt::Write, password: Password) -> fmt::Result {
        let mut first = true;
        for (i, (key, _)) in KEYWORDS.iter().enumerate() {
            let value = if *key == "password" {
                let given = self.config.get_password();
                match password {
                    Password::Omitted => None,
                    Password::Redacted => given.map(|_| Cow::Borrowed(REDACTED)),
                    Password::Revealed => given.map(String::from_utf8_lossy),
                }
            } else {
                self.params.values[i].as_deref().map(Cow::Borrowed)
            };
            let Some(value) = value else { continue };
            if !first {
                out.write_str(" ")?;
            }
            first = false;
            write!(out, "{key}=")?;
            write_quoted(out, &value)?;
        }
        Ok(())
    }
}

/// How a conninfo string shows the password.
#[derive(Clone, Copy)]
enum Password {
    Omitted,
    Redacted,
    Revealed,
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_conninfo(f, Password::Redacted)
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dsn").field(&format_args!("{self}")).finish()
    }
}

impl FromStr for Dsn {
    type Err = Error;

    /// Same as [`Dsn::parse`].
    fn from_str(s: &str) -> Result<Dsn> {
        Dsn::parse(s)
    }
}

/// Settings by keyword, indexed like [`KEYWORDS`].
#[derive(Clone)]
struct Params {
    values: Vec<Option<String>>,
}

impl Params {
    fn new() -> Params {
        Params {
            values: vec![None; KEYWORDS.len()],
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values[index(key)].as_deref()
    }

    fn set(&mut self, key: &str, value: String) {
        self.values[index(key)] = Some(value);
    }

    /// Sets a keyword from user input; the last setting of a keyword wins and an empty value
    /// means the default, as in libpq.
    fn set_named(&mut self, key: &str, value: String) -> Result<()> {
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
fn index(key: &str) -> usize {
    KEYWORDS
        .iter()
        .position(|(k, _)| *k == key)
        .unwrap_or_else(|| unreachable!("{key} is not in KEYWORDS"))
}

/// Builds the driver settings and the TLS policy from complete settings.
fn build(params: &Params) -> Result<(Config, TlsPolicy)> {
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
fn default_host() -> String {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        DEFAULT_SOCKET_DIR.to_owned()
    } else {
        "localhost".to_owned()
    }
}

/// A set, non-empty environment variable.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|value| !value.is_empty())
}

/// A file under the home directory.
fn home_file(relative: &str) -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(relative))
}

fn invalid(reason: String) -> Error {
    Error::InvalidDsn { reason }
}

/// What follows a `postgres://` or `postgresql://` prefix.
fn uri_rest(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

/// Splits a libpq keyword/value string into pairs.
fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_ascii_whitespace()) {
            key.push(c);
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return Err(invalid(format!(
                "missing \"=\" after {key:?} in connection info string"
            )));
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(invalid(format!(
                            "unterminated quoted value for {key:?} in connection info string"
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Splits the part of a URL after the scheme into keyword/value pairs, like libpq.
fn parse_uri(rest: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_owned(), percent_decode(user, "user name")?));
            }
            if let Some(password) = password {
                pairs.push(("password".to_owned(), percent_decode(password, "password")?));
            }
            hostspec
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in hostspec.split(',') {
            let (host, port) = split_host_port(spec)?;
            hosts.push(percent_decode(host, "host")?);
            ports.push(percent_decode(port, "port")?);
        }
        pairs.push(("host".to_owned(), hosts.join(",")));
        if ports.iter().any(|port| !port.is_empty()) {
            pairs.push(("port".to_owned(), ports.join(",")));
        }
    }
    if let Some(dbname) = path.filter(|path| !path.is_empty()) {
        pairs.push((
            "dbname".to_owned(),
            percent_decode(dbname, "database name")?,
        ));
    }
    for param in query.unwrap_or_default().split('&') {
        if param.is_empty() {
            continue;
        }
        let Some((key, value)) = param.split_once('=') else {
            return Err(invalid(format!(
                "missing key/value separator \"=\" in URL query parameter {param:?}"
            )));
        };
        let key = percent_decode(key, "query parameter name")?;
        let value = percent_decode(value, "query parameter value")?;
        if key == "ssl" {
            if value != "true" {
                return Err(invalid(format!(
                    "invalid URL query parameter ssl={value:?} (only ssl=true is accepted)"
                )));
            }
            pairs.push(("sslmode".to_owned(), "require".to_owned()));
        } else {
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

/// Splits `host[:port]` or `[v6addr][:port]`.
fn split_host_port(spec: &str) -> Result<(&str, &str)> {
    if let Some(bracketed) = spec.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| {
            invalid(format!(
                "unterminated IPv6 address {spec:?} in URL (missing \"]\")"
            ))
        })?;
        if host.is_empty() {
            return Err(invalid("empty IPv6 address in URL".to_owned()));
        }
        return match after {
            "" => Ok((host, "")),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, port)),
                None => Err(invalid(format!(
                    "unexpected {after:?} after IPv6 address in URL"
                ))),
            },
        };
    }
    Ok(spec.split_once(':').unwrap_or((spec, "")))
}

/// Decodes `%XX` escapes; `what` names the part of the URL for errors, which never echo the
/// input (it may be a password).
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(hi), Some(lo)) => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
                _ => None,
            }
            .ok_or_else(|| invalid(format!("invalid percent-encoding in URL {what}")))?;
            if byte == 0 {
                return Err(invalid(format!("forbidden %00 in URL {what}")));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("URL {what} is not valid UTF-8")))
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Writes a value the way libpq reads it back: bare when possible, else in single quotes with
/// `'` and `\` escaped.
fn write_quoted(f: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if !needs_quotes {
        return f.write_str(value);
    }
    f.write_str("'")?;
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("'")
}

/// The password for a connection from a libpq password file, if the file is usable and has a
/// matching line.
fn passfile_password(path: &Path, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; permissions should be u=rw (0600) \
                 or less; ignoring it"
            );
            return None;
        }
    }
    let text = fs::read_to_string(path).ok()?;
    let host = if host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    passfile_lookup(&text, host, port, db, user)
}

/// The password of the first password-file line matching the connection.
fn passfile_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let fields = passfile_fields(line);
            let [h, p, d, u, password, ..] = fields.as_slice() else {
                return None;
            };
            let matches = |(raw, value): &(&str, String), want: &str| raw == &"*" || value == want;
            (matches(h, host) && matches(p, port) && matches(d, db) && matches(u, user))
                .then(|| password.1.clone())
        })
}

/// Splits a password-file line at unescaped `:`, giving each field raw and unescaped.
fn passfile_fields(line: &str) -> Vec<(&str, String)> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut value = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => value.push('\\'),
            },
            ':' => {
                fields.push((&line[start..i], std::mem::take(&mut value)));
                start = i + 1;
            }
            c => value.push(c),
        }
    }
    fields.push((&line[start..], value));
    fields
}

/// Where trust comes from for certificate checks.
#[derive(Clone, Debug)]
enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The Mozilla root set (`sslrootcert=system`).
    System,
}

/// What the TLS connector checks, derived from `sslmode` and the certificate settings.
#[derive(Clone, Debug)]
struct TlsPolicy {
    mode: SslMode,
    root_cert: Option<RootCert>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

impl TlsPolicy {
    /// Builds the rustls connector, reading the certificate files.
    fn connector(&self) -> Result<MakeTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_error(format!("cannot set up TLS: {err}")))?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier(&provider)?);
        let config = match self.client_identity()? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|err| tls_error(format!("cannot use the client certificate: {err}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeTls(MakeRustlsConnect::new(config)))
    }

    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ServerCertVerifier>> {
        let default_root = || {
            home_file(".postgresql/root.crt")
                .filter(|path| path.exists())
                .map(RootCert::File)
        };
        let (root, check_name) = match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => (None, false),
            SslMode::Require => (self.root_cert.clone().or_else(default_root), false),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let root = self
                    .root_cert
                    .clone()
                    .or_else(default_root)
                    .ok_or_else(|| {
                        tls_error(format!(
                            "sslmode={} needs a root certificate: set sslrootcert (a file, or \
                         \"system\") or create ~/.postgresql/root.crt",
                            self.mode
                        ))
                    })?;
                (Some(root), self.mode == SslMode::VerifyFull)
            }
        };
        let Some(root) = root else {
            return Ok(Arc::new(NoVerification(Arc::clone(provider))));
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(&root)?),
            Arc::clone(provider),
        )
        .build()
        .map_err(|err| tls_error(format!("cannot set up certificate checks: {err}")))?;
        Ok(if check_name {
            webpki
        } else {
            Arc::new(IgnoreName(webpki))
        })
    }

    /// The client certificate chain and key: `sslcert`/`sslkey`, else
    /// `~/.postgresql/postgresql.crt`/`.key` when the certificate file exists.
    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let cert_path = match &self.client_cert {
            Some(path) => path.clone(),
            None => match home_file(".postgresql/postgresql.crt").filter(|path| path.exists()) {
                Some(path) => path,
                None => return Ok(None),
            },
        };
        let key_path = match &self.client_key {
            Some(path) => path.clone(),
            None => home_file(".postgresql/postgresql.key").ok_or_else(|| {
                tls_error(format!(
                    "client certificate {} given but no sslkey",
                    cert_path.display()
                ))
            })?,
        };
        let certs = read_pem_certs(&cert_path, "sslcert")?;
        let file = open(&key_path, "sslkey")?;
        let key = rustls_pemfile::private_key(&mut BufReader::new(file))
            .map_err(|err| tls_error(format!("cannot read sslkey {}: {err}", key_path.display())))?
            .ok_or_else(|| {
                tls_error(format!(
                    "no private key found in sslkey {}",
                    key_path.display()
                ))
            })?;
        Ok(Some((certs, key)))
    }
}

fn root_store(root: &RootCert) -> Result<RootCertStore> {
    let path = match root {
        RootCert::System => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        RootCert::File(path) => path,
    };
    let mut store = RootCertStore::empty();
    for cert in read_pem_certs(path, "sslrootcert")? {
        store.add(cert).map_err(|err| {
            tls_error(format!(
                "bad certificate in sslrootcert {}: {err}",
                path.display()
            ))
        })?;
    }
    Ok(store)
}

fn read_pem_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let file = open(path, key)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|err| tls_error(format!("cannot read {key} {}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "no PEM certificates found in {key} {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn open(path: &Path, key: &str) -> Result<fs::File> {
    fs::File::open(path)
        .map_err(|err| tls_error(format!("cannot open {key} {}: {err}", path.display())))
}

fn tls_error(reason: String) -> Error {
    Error::Tls { reason }
}

/// Accepts any server certificate (`sslmode` `allow`, `prefer`, `require` without a root
/// certificate) while still checking the handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full webpki check except that the certificate need not name the host.
/// webpki checks the name last, so ignoring that one error skips no other check.
#[derive(Debug)]
struct IgnoreName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

/// The rustls connector, accepting the empty host name tokio-postgres passes for Unix sockets
/// (PostgreSQL never offers TLS there, so the placeholder name is never checked).
#[derive(Clone)]
struct MakeTls(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(
        &mut self,
        hostname: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let name = if hostname.is_empty() {
            "localhost"
        } else {
            hostname
        };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.0, name)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use tokio_postgres::config::Host;

    use super::*;

    /// Serializes the tests that touch the process environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    /// Holds the environment lock with every variable the module reads cleared, `USER=tester`
    /// and `HOME` an empty directory; restores the old values on drop.
    struct TestEnv {
        saved: Vec<(&'static str, Option<OsString>)>,
        home: PathBuf,
        _lock: MutexGuard<'static, ()>,
    }

    impl TestEnv {
        fn new(vars: &[(&str, &str)]) -> TestEnv {
            let lock = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            let names = KEYWORDS.iter().filter_map(|(_, var)| *var).chain([
                "PGQ_DSN",
                "DATABASE_URL",
                "USER",
                "LOGNAME",
                "HOME",
            ]);
            let saved = names.map(|name| (name, std::env::var_os(name))).collect();
            let home = temp_dir();
            let env = TestEnv {
                saved,
                home,
                _lock: lock,
            };
            for (name, _) in &env.saved {
                std::env::remove_var(name);
            }
            std::env::set_var("USER", "tester");
            std::env::set_var("HOME", &env.home);
            for (name, value) in vars {
                std::env::set_var(name, value);
            }
            env
        }
    }

    impl Drop for TestEnv {
        fn drop(&mut self) {
            for (name, value) in &self.saved {
                match value {
                    Some(value) => std::env::set_var(name, value),
                    None => std::env::remove_var(name),
                }
            }
            let _ = fs::remove_dir_all(&self.home);
        }
    }

    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgq-dsn-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    fn write_private(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn tcp_hosts(dsn: &Dsn) -> Vec<String> {
        dsn.config()
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => format!("unix:{}", path.display()),
            })
            .collect()
    }

    fn password(dsn: &Dsn) -> Option<&str> {
        dsn.config()
            .get_password()
            .map(|p| std::str::from_utf8(p).unwrap())
    }

    fn reason(err: Error) -> String {
        match err {
            Error::InvalidDsn { reason } | Error::Tls { reason } => reason,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn keyword_value_form() {
        let _env = TestEnv::new(&[]);
        let dsn = Dsn::parse(
            "host=db1 port=6543 dbname=app user=alice password=secret sslmode=require \
             application_name=ticker connect_timeout=10 options='-c search_path=x'",
        )
        .unwrap();
        assert_eq!(tcp_hosts(&dsn), ["db1"]);
        assert_eq!(dsn.config().get_ports(), [6543]);
        assert_eq!(dsn.dbname(), "app");
        assert_eq!(dsn.user(), "alice");
        assert_eq!(dsn.config().get_user(), Some("alice"));
        assert_eq!(password(&dsn), Some("secret"));
        assert_eq!(dsn.ssl_mode(), SslMode::Require);
        assert_eq!(
            dsn.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(dsn.config().get_application_name(), Some("ticker"));
        assert_eq!(dsn.config().get_options(), Some("-c search_path=x"));
        assert_eq!(
            dsn.config().get_connect_timeout(),
            Some(&Duration::from_secs(10))
        );
        let from_str: Dsn = "dbname=other".parse().unwrap();
        assert_eq!(from_str.dbname(), "other");
    }

    #[test]
    fn keepalives_on_by_default() {
        let _env = TestEnv::new(&[]);
        let config = Dsn::parse("host=db1").unwrap().config().clone();
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(config.get_keepalives_retries(), Some(6));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(120))
        );
        assert!(
            !Dsn::parse("host=db1")
                .unwrap()
                .to_string()
                .contains("keepalive"),
            "defaults are not shown as if the user had set them"
        );
    }

    #[test]
    fn keepalive_settings_in_both_forms() {
        let _env = TestEnv::new(&[]);
        for text in [
            "host=db1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3 \
             tcp_user_timeout=4500",
            "postgres://db1/?keepalives_idle=5&keepalives_interval=2&keepalives_count=3\
             &tcp_user_timeout=4500",
        ] {
            let config = Dsn::parse(text).unwrap().config().clone();
            assert!(config.get_keepalives(), "{text}");
            assert_eq!(config.get_keepalives_idle(), Duration::from_secs(5));
            assert_eq!(
                config.get_keepalives_interval(),
                Some(Duration::from_secs(2))
            );
            assert_eq!(config.get_keepalives_retries(), Some(3));
            assert_eq!(
                config.get_tcp_user_timeout(),
                Some(&Duration::from_millis(4500))
            );
        }
        let off = Dsn::parse("postgres://db1/?keepalives=0").unwrap();
        assert!(!off.config().get_keepalives());
        let os = Dsn::parse(
            "host=db1 keepalives_idle=0 keepalives_interval=0 keepalives_count=0 \
             tcp_user_timeout=0",
        )
        .unwrap();
        let config = os.config();
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(7200));
        assert_eq!(config.get_keepalives_interval(), None);
        assert_eq!(config.get_keepalives_retries(), None);
        assert_eq!(config.get_tcp_user_timeout(), None);

        for (text, expected) in [
            (
                "keepalives_idle=-1",
                r#"invalid keepalives_idle value "-1""#,
            ),
            (
                "keepalives_interval=1s",
                r#"invalid keepalives_interval value "1s""#,
            ),
            (
                "keepalives_count=99999999999",
                r#"invalid keepalives_count value "99999999999""#,
            ),
            (
                "tcp_user_timeout=soon",
                r#"invalid tcp_user_timeout value "soon""#,
            ),
            ("keepalives=yes", r#"invalid keepalives value "yes""#),
        ] {
            let err = reason(Dsn::parse(&format!("host=db1 {text}")).unwrap_err());
            assert_eq!(err, expected, "{text}");
        }
    }

    #[test]
    fn pinned_search_path_keeps_the_user_options() {
        let _env = TestEnv::new(&[]);
        let pinned = Dsn::parse("host=db1 password=hunter2")
            .unwrap()
            .with_pinned_search_path();
        assert_eq!(
            pinned.config().get_options(),
            Some("-c search_path=pg_catalog,pg_temp")
        );
        assert_eq!(password(&pinned), Some("hunter2"));
        let user = Dsn::parse("host=db1 options='-c work_mem=64MB -c search_path=app'").unwrap();
        let pinned = user.with_pinned_search_path();
        let expected = "-c work_mem=64MB -c search_path=app -c search_path=pg_catalog,pg_temp";
        assert_eq!(pinned.config().get_options(), Some(expected));
        assert_eq!(
            user.config().get_options(),
            Some("-c work_mem=64MB -c search_path=app"),
            "the original is unchanged"
        );
        assert!(pinned
            .to_string()
            .contains(&format!("options='{expected}'")));
        assert_eq!(
            pinned.with_dbname("other").config().get_options(),
            Some(expected),
            "kept for another database"
        );
    }

    #[test]
    fn libpq_quoting() {
        let pairs = parse_keyword_value(
            r"  a = 1 b='two words' c='it\'s' d=back\\slash e='' f=x\ y g='\\'",
        )
        .unwrap();
        let expected = [
            ("a", "1"),
            ("b", "two words"),
            ("c", "it's"),
            ("d", r"back\slash"),
            ("e", ""),
            ("f", "x y"),
            ("g", r"\"),
        ];
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expected);

        let err = reason(parse_keyword_value("host").map(|_| ()).unwrap_err());
        assert!(err.contains(r#"missing "=" after "host""#), "{err}");
        let err = reason(
            parse_keyword_value("password='abc")
                .map(|_| ())
                .unwrap_err(),
        );
        assert!(err.contains("unterminated quoted value"), "{err}");
        assert!(!err.contains("abc"), "{err}");
    }

    #[test]
    fn url_form() {
        let _env = TestEnv::new(&[]);
        let dsn = Dsn::parse(
            "postgresql://al%40ice:p%3As%2Fs@db1:6543,db2/my%20db\
             ?sslmode=verify-full&application_name=a%26b",
        )
        .unwrap();
        assert_eq!(dsn.user(), "al@ice");
        assert_eq!(password(&dsn), Some("p:s/s"));
        assert_eq!(tcp_hosts(&dsn), ["db1", "db2"]);
        assert_eq!(dsn.config().get_ports(), [6543, 5432]);
        assert_eq!(dsn.dbname(), "my db");
        assert_eq!(dsn.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(dsn.config().get_application_name(), Some("a&b"));

        let dsn = Dsn::parse("postgres://%2Fvar%2Frun%2Fpg:5433/db").unwrap();
        assert_eq!(tcp_hosts(&dsn), ["unix:/var/run/pg"]);
        assert_eq!(dsn.config().get_ports(), [5433]);
        assert_eq!(
            dsn.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable,
            "no TLS on Unix sockets"
        );

        let dsn = Dsn::parse("postgres://[::1]:5433/db?ssl=true&user=bob").unwrap();
        assert_eq!(tcp_hosts(&dsn), ["::1"]);
        assert_eq!(dsn.user(), "bob");
        assert_eq!(dsn.ssl_mode(), SslMode::Require);

        let dsn = Dsn::parse("postgres://").unwrap();
        assert_eq!(dsn.user(), "tester");
        assert_eq!(dsn.dbname(), "tester");
        let dsn = Dsn::parse("user='' dbname='' port=''").unwrap();
        assert_eq!((dsn.user(), dsn.dbname()), ("tester", "tester"));
        assert_eq!(dsn.config().get_ports(), [5432]);

        let err = reason(Dsn::parse("postgres://u:s%zzecret@h/db").unwrap_err());
        assert!(
            err.contains("invalid percent-encoding in URL password"),
            "{err}"
        );
        assert!(!err.contains("ecret"), "{err}");
        let err = reason(Dsn::parse("postgres://h/db?bogus=1").unwrap_err());
        assert!(
            err.contains(r#"unknown connection option "bogus""#),
            "{err}"
        );
        let err = reason(Dsn::parse("postgres://h/db?sslmode").unwrap_err());
        assert!(err.contains("missing key/value separator"), "{err}");
    }

    #[test]
    fn unknown_and_unsupported_keys() {
        let _env = TestEnv::new(&[]);
        let err = reason(Dsn::parse("host=h colour=blue").unwrap_err());
        assert_eq!(err, r#"unknown connection option "colour""#);
        let err = reason(Dsn::parse("host=h service=x").unwrap_err());
        assert_eq!(err, r#"connection option "service" is not supported"#);
        let err = reason(Dsn::parse("host=h sslmode=sometimes").unwrap_err());
        assert!(err.starts_with(r#"invalid sslmode "sometimes""#), "{err}");
        let err = reason(Dsn::parse("host=h port=70000").unwrap_err());
        assert_eq!(err, r#"invalid port number "70000""#);
        let err = reason(Dsn::parse("host=a,b port=1,2,3").unwrap_err());
        assert_eq!(err, "2 host names but 3 ports");
    }

    #[test]
    fn environment_fallbacks() {
        let _env = TestEnv::new(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "7777"),
            ("PGUSER", "bob"),
            ("PGDATABASE", "bobdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "disable"),
        ]);
        let dsn = Dsn::parse("").unwrap();
        assert_eq!(tcp_hosts(&dsn), ["envhost"]);
        assert_eq!(dsn.config().get_ports(), [7777]);
        assert_eq!(dsn.user(), "bob");
        assert_eq!(dsn.dbname(), "bobdb");
        assert_eq!(password(&dsn), Some("envpw"));
        assert_eq!(dsn.ssl_mode(), SslMode::Disable);

        let dsn = Dsn::parse("host=h user=carol port=1").unwrap();
        assert_eq!(tcp_hosts(&dsn), ["h"]);
        assert_eq!(dsn.config().get_ports(), [1]);
        assert_eq!(dsn.user(), "carol");
        assert_eq!(dsn.dbname(), "bobdb");
    }

    #[test]
    fn libpq_defaults() {
        let _env = TestEnv::new(&[]);
        let dsn = Dsn::parse("").unwrap();
        let expected_host = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
            format!("unix:{DEFAULT_SOCKET_DIR}")
        } else {
            "localhost".to_owned()
        };
        assert_eq!(tcp_hosts(&dsn), [expected_host]);
        assert_eq!(dsn.config().get_ports(), [5432]);
        assert_eq!(dsn.user(), "tester");
        assert_eq!(dsn.dbname(), "tester");
        assert_eq!(dsn.ssl_mode(), SslMode::Prefer);
        assert_eq!(password(&dsn), None);

        std::env::remove_var("USER");
        let err = reason(Dsn::parse("host=h").unwrap_err());
        assert!(err.contains("no user name given"), "{err}");

        let dsn = Dsn::parse("hostaddr=10.1.2.3 user=u").unwrap();
        assert_eq!(tcp_hosts(&dsn), ["10.1.2.3"]);
        assert!(dsn.config().get_hostaddrs().is_empty());
        let dsn = Dsn::parse("host=db.example hostaddr=10.1.2.3 user=u").unwrap();
        assert_eq!(tcp_hosts(&dsn), ["db.example"]);
        assert_eq!(
            dsn.config().get_hostaddrs(),
            ["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn from_env_precedence() {
        let env = TestEnv::new(&[]);
        assert!(Dsn::from_env().unwrap().is_none());
        std::env::set_var("PGDATABASE", "fromvars");
        assert_eq!(Dsn::from_env().unwrap().unwrap().dbname(), "fromvars");
        std::env::set_var("DATABASE_URL", "postgres://h/fromurl");
        assert_eq!(Dsn::from_env().unwrap().unwrap().dbname(), "fromurl");
        std::env::set_var("PGQ_DSN", "host=h dbname=frompgq");
        assert_eq!(Dsn::from_env().unwrap().unwrap().dbname(), "frompgq");
        std::env::set_var("PGQ_DSN", "host=h nope=1");
        let err = reason(Dsn::from_env().unwrap_err());
        assert_eq!(err, r#"PGQ_DSN: unknown connection option "nope""#);
        drop(env);
    }

    #[test]
    fn passfile_lines() {
        let text = "# comment\n\
                    \n\
                    db1:5432:app:alice:first\n\
                    db1:5432:app:alice:shadowed\n\
                    *:*:other:alice:wild\n\
                    h\\:x:5432:*:*:escaped\\:pw\\\\\n\
                    \\*:5432:*:*:literal-star\r\n\
                    short:line\n";
        let lookup = |host, port, db, user| passfile_lookup(text, host, port, db, user);
        assert_eq!(
            lookup("db1", "5432", "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup("anyhost", "1", "other", "alice").as_deref(),
            Some("wild")
        );
        assert_eq!(
            lookup("h:x", "5432", "x", "y").as_deref(),
            Some(r"escaped:pw\")
        );
        assert_eq!(
            lookup("*", "5432", "x", "y").as_deref(),
            Some("literal-star")
        );
        assert_eq!(lookup("zzz", "5432", "x", "y"), None);
        assert_eq!(lookup("db1", "5433", "app", "alice"), None);
    }

    #[cfg(unix)]
    #[test]
    fn passfile_is_used_like_libpq() {
        let env = TestEnv::new(&[]);
        let pgpass = env.home.join(".pgpass");
        write_private(
            &pgpass,
            "db1:5432:app:alice:apppw\ndb1:*:other:*:otherpw\nlocalhost:5432:*:*:sockpw\n",
            0o600,
        );
        let dsn = Dsn::parse("host=db1 user=alice dbname=app").unwrap();
        assert_eq!(password(&dsn), Some("apppw"));
        assert_eq!(password(&dsn.with_dbname("other")), Some("otherpw"));
        assert_eq!(password(&dsn.with_dbname("third")), None);
        assert_eq!(password(&dsn.with_user("bob")), None);
        assert_eq!(dsn.with_user("bob").config().get_user(), Some("bob"));
        assert_eq!(
            password(&dsn.with_user("bob").with_dbname("other")),
            Some("otherpw")
        );
        let explicit = Dsn::parse("host=db1 user=alice dbname=app password=given").unwrap();
        assert_eq!(password(&explicit.with_dbname("other")), Some("given"));
        let socket = Dsn::parse(&format!("host={DEFAULT_SOCKET_DIR} user=u")).unwrap();
        assert_eq!(password(&socket), Some("sockpw"));

        write_private(&pgpass, "*:*:*:*:loose\n", 0o644);
        assert_eq!(password(&Dsn::parse("host=db1").unwrap()), None);

        let other = env.home.join("elsewhere");
        write_private(&other, "*:*:*:*:viafile\n", 0o600);
        std::env::set_var("PGPASSFILE", &other);
        assert_eq!(password(&Dsn::parse("host=db1").unwrap()), Some("viafile"));
        let dsn = Dsn::parse(&format!("host=db1 passfile='{}'", pgpass.display())).unwrap();
        assert_eq!(password(&dsn), None);
    }

    #[cfg(unix)]
    #[test]
    fn settings_and_password_source() {
        let env = TestEnv::new(&[("PGSSLROOTCERT", "/env/root.crt")]);
        let file = env.home.join("pw");
        write_private(&file, "db1:*:*:alice:fromfile\n", 0o600);
        let dsn = Dsn::parse(&format!(
            "host=db1 user=alice sslmode=verify-full sslkey='/k ey' passfile='{}'",
            file.display()
        ))
        .unwrap();
        assert_eq!(dsn.setting("sslmode"), Some("verify-full"));
        assert_eq!(dsn.setting("sslkey"), Some("/k ey"));
        assert_eq!(dsn.setting("sslrootcert"), Some("/env/root.crt"));
        assert_eq!(dsn.setting("port"), Some("5432"));
        assert_eq!(dsn.setting("sslcert"), None);
        assert_eq!(dsn.setting("colour"), None);
        assert_eq!(dsn.setting("password"), None);
        assert_eq!(
            dsn.password_source(),
            Some(PasswordSource::File(file.clone()))
        );
        assert_eq!(dsn.with_user("nobody").password_source(), None);
        let given = Dsn::parse("host=db1 password=hunter2").unwrap();
        assert_eq!(given.password_source(), Some(PasswordSource::Given));
        assert_eq!(given.setting("password"), None);
        std::env::set_var("PGPASSWORD", "fromenv");
        assert_eq!(
            Dsn::parse("host=db1").unwrap().password_source(),
            Some(PasswordSource::Given)
        );
    }

    #[test]
    fn display_and_debug_redact_the_password() {
        let _env = TestEnv::new(&[]);
        let dsn = Dsn::parse(
            "host=db1 user=alice password=hunter2 dbname='my db' application_name='it\\'s'",
        )
        .unwrap();
        let shown = dsn.to_string();
        assert_eq!(
            shown,
            r"host=db1 port=5432 user=alice password=******** dbname='my db' sslmode=prefer application_name='it\'s'"
        );
        let debug = format!("{dsn:?}");
        assert_eq!(debug, format!("Dsn({shown})"));
        assert!(!shown.contains("hunter2") && !debug.contains("hunter2"));
        let url = Dsn::parse("postgres://u:hunter2@h/db").unwrap();
        assert!(!format!("{url} {url:?}").contains("hunter2"));

        let again = Dsn::parse(&shown).unwrap();
        assert_eq!(again.dbname(), "my db");
        assert_eq!(again.config().get_application_name(), Some("it's"));
        let without_password = Dsn::parse("host=db1 user=alice").unwrap();
        assert!(!without_password.to_string().contains("password"));
    }

    #[test]
    fn conninfo_for_child_processes() {
        let _env = TestEnv::new(&[]);
        let dsn = Dsn::parse("host=db1 user=alice password='hunter 2' dbname='my db'").unwrap();
        assert_eq!(
            dsn.conninfo(),
            "host=db1 port=5432 user=alice dbname='my db' sslmode=prefer"
        );
        assert_eq!(
            dsn.conninfo_with_password(),
            "host=db1 port=5432 user=alice password='hunter 2' dbname='my db' sslmode=prefer"
        );
        let again = Dsn::parse(&dsn.conninfo_with_password()).unwrap();
        assert_eq!(again.config().get_password(), Some(&b"hunter 2"[..]));
        assert_eq!(again.dbname(), "my db");
        assert_eq!(
            Dsn::parse(&dsn.conninfo()).unwrap().config().get_password(),
            None
        );
        let without_password = Dsn::parse("host=db1 user=alice").unwrap();
        assert_eq!(
            without_password.conninfo_with_password(),
            without_password.conninfo()
        );
    }

    #[test]
    fn ssl_settings() {
        let env = TestEnv::new(&[]);
        let dsn = Dsn::parse("host=h sslrootcert=system").unwrap();
        assert_eq!(dsn.ssl_mode(), SslMode::VerifyFull);
        let err = reason(Dsn::parse("host=h sslrootcert=system sslmode=require").unwrap_err());
        assert!(err.contains("use verify-full"), "{err}");

        let err = reason(
            Dsn::parse("host=h sslmode=verify-ca")
                .unwrap()
                .pool(1)
                .unwrap_err(),
        );
        assert!(
            err.contains("sslmode=verify-ca needs a root certificate"),
            "{err}"
        );
        let missing = env.home.join("missing.crt");
        let err = reason(
            Dsn::parse(&format!(
                "host=h sslmode=verify-full sslrootcert={}",
                missing.display()
            ))
            .unwrap()
            .pool(1)
            .unwrap_err(),
        );
        assert!(
            err.starts_with(&format!("cannot open sslrootcert {}", missing.display())),
            "{err}"
        );
        let empty = env.home.join("empty.crt");
        fs::write(&empty, "not a certificate\n").unwrap();
        let err = reason(
            Dsn::parse(&format!(
                "host=h sslmode=require sslrootcert={}",
                empty.display()
            ))
            .unwrap()
            .pool(1)
            .unwrap_err(),
        );
        assert!(
            err.starts_with("no PEM certificates found in sslrootcert"),
            "{err}"
        );

        for mode in ["disable", "allow", "prefer", "require"] {
            let dsn = Dsn::parse(&format!("host=h sslmode={mode}")).unwrap();
            assert_eq!(dsn.ssl_mode().to_string(), mode);
            dsn.pool(2).unwrap();
        }
        Dsn::parse("host=h sslrootcert=system")
            .unwrap()
            .pool(1)
            .unwrap();
    }
}
