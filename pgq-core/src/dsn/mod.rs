//! Connection settings read the way libpq reads them, with TLS through rustls; see [`Dsn`].
//!
//! The files: `syntax` reads libpq's keyword/value strings and URLs (and quotes values back),
//! `settings` fills in the environment and libpq's defaults and builds the driver's settings,
//! `passfile` reads the password file, `tls` checks certificates the way `sslmode` says.

mod passfile;
mod settings;
mod syntax;
mod tls;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::Config;

use self::passfile::passfile_password;
use self::settings::{build, default_host, env, home_file, index, invalid, Params, KEYWORDS};
pub use self::syntax::quote_conninfo_value;
use self::syntax::{parse_keyword_value, parse_uri, uri_rest};
pub use self::tls::SslMode;
use self::tls::TlsPolicy;
use crate::error::{DbContext, Error, Result};

/// Shown instead of a password.
const REDACTED: &str = "********";

/// What daemon sessions append to the startup `options`: a `search_path` that a database's or
/// role's default cannot replace and `RESET ALL` keeps (a startup option is the session's reset
/// value).
const PINNED_SEARCH_PATH: &str = "-c search_path=pg_catalog,pg_temp";

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

    /// Whether the connection string `s` itself holds a password (`password=`, or one in a
    /// URL's user info); the environment and password files are not consulted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDsn`] when `s` does not parse, as for [`Dsn::parse`].
    pub(crate) fn holds_password(s: &str) -> Result<bool> {
        let pairs = match uri_rest(s.trim_start()) {
            Some(rest) => parse_uri(rest)?,
            None => parse_keyword_value(s)?,
        };
        Ok(pairs.iter().any(|(key, _)| key == "password"))
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

    /// The settings as a libpq keyword/value string for a child process (`psql`, `pgqd`, a
    /// Python consumer), without the password: give that to the child in `PGPASSWORD` (see
    /// [`Dsn::config`]) or let it read the password file named by `passfile`. Every effective
    /// setting is written (the environment's and libpq's defaults resolved, as `Display`
    /// shows them), each value quoted so that libpq reads it back; the keepalive defaults this
    /// crate adds (see "Dead peers" on [`Dsn`]) are not, so the child keeps libpq's.
    pub fn conninfo(&self) -> String {
        self.keyword_value(Password::Omitted)
    }

    /// Like [`Dsn::conninfo`], with the password (given, or read from the password file) as
    /// `password=`. The string is a secret: do not log it, and prefer [`Dsn::conninfo`] with
    /// `PGPASSWORD` where the string ends up in a file or on a command line.
    pub fn conninfo_with_password(&self) -> String {
        self.keyword_value(Password::Included)
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
    /// The effective settings as a libpq keyword/value string with `password` as asked for.
    fn keyword_value(&self, password: Password) -> String {
        let secret = self.config.get_password().map(String::from_utf8_lossy);
        let mut parts = Vec::new();
        for (i, (key, _)) in KEYWORDS.iter().enumerate() {
            let value = if *key == "password" {
                match password {
                    Password::Redacted => secret.as_ref().map(|_| REDACTED),
                    Password::Omitted => None,
                    Password::Included => secret.as_deref(),
                }
            } else {
                self.params.values[i].as_deref()
            };
            if let Some(value) = value {
                parts.push(format!("{key}={}", quote_conninfo_value(value)));
            }
        }
        parts.join(" ")
    }

    /// The password file: `passfile`, else `~/.pgpass`.
    fn passfile(&self) -> Option<PathBuf> {
        self.params
            .get("passfile")
            .map(PathBuf::from)
            .or_else(|| home_file(".pgpass"))
    }
}

/// What [`Dsn::keyword_value`] writes for the password.
#[derive(Debug, Clone, Copy)]
enum Password {
    /// `password=********` when there is one (`Display`).
    Redacted,
    /// Nothing ([`Dsn::conninfo`]).
    Omitted,
    /// The password itself ([`Dsn::conninfo_with_password`]).
    Included,
}

/// Where a [`Dsn`]'s password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// Given in the connection string or in `PGPASSWORD`.
    Given,
    /// Read from this password file (`passfile`, `PGPASSFILE` or `~/.pgpass`).
    File(PathBuf),
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.keyword_value(Password::Redacted))
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
