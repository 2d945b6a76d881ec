//! The ticker's configuration: built in code with [`TickerConfig::builder`], or read from a TOML
//! file with [`TickerConfig::load`].
//!
//! ```toml
//! [ticker]
//! databases = ["host=/var/run/postgresql dbname=app"]   # or:
//! # discover = "host=/var/run/postgresql user=postgres"  # every connectable database with pgq
//! ticker_period = "1s"
//! maint_period = "2m"
//! max_connections = 50
//! listen = "127.0.0.1:9187"    # /metrics, /health and a status page; off unless set
//! ```
//!
//! Periods are strings of a number and a unit (`500ms`, `1s`, `1.5 seconds`, `2m`, `1h`, `1d`)
//! or integers meaning seconds.

use std::path::Path;
use std::time::Duration;

pub use pgq_core::parse_duration;
use pgq_core::{Dsn, Period};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::error::ConfigError;

/// Default [`TickerConfig::ticker_period`]: 1 second.
pub const DEFAULT_TICKER_PERIOD: Duration = Duration::from_secs(1);
/// Default [`TickerConfig::maint_period`]: 2 minutes, as pgqd.
pub const DEFAULT_MAINT_PERIOD: Duration = Duration::from_secs(120);
/// Default [`TickerConfig::retry_period`]: 30 seconds, as pgqd.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(30);
/// Default [`TickerConfig::discovery_period`]: 1 minute, as pgqd's `check_period`.
pub const DEFAULT_DISCOVERY_PERIOD: Duration = Duration::from_secs(60);
/// Default [`TickerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 50;
/// Default [`TickerConfig::reconnect_min`]: 1 second.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
/// Default [`TickerConfig::reconnect_max`]: 30 seconds.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default [`TickerConfig::stop_timeout`]: half a second.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_millis(500);
/// Default [`TickerConfig::observe_period`]: 10 seconds.
pub const DEFAULT_OBSERVE_PERIOD: Duration = Duration::from_secs(10);

/// Which databases the ticker serves.
// One value per configuration: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Databases {
    /// Exactly these.
    List(Vec<Dsn>),
    /// Every database that accepts connections on the server of this connection string (which
    /// names the database to list them from), re-listed every
    /// [`discovery_period`](TickerConfig::discovery_period). Those without PGQ are skipped.
    Discover(Dsn),
}

/// A validated ticker configuration. Build one with [`TickerConfig::builder`] or
/// [`TickerConfig::load`]; read it with the getters.
#[derive(Debug, Clone)]
pub struct TickerConfig {
    databases: Databases,
    ticker_period: Duration,
    maint_period: Duration,
    retry_period: Duration,
    discovery_period: Duration,
    max_connections: usize,
    reconnect_min: Duration,
    reconnect_max: Duration,
    stop_timeout: Duration,
    observe_period: Duration,
    listen: Option<String>,
}

impl TickerConfig {
    /// A builder with every setting at its default.
    pub fn builder(databases: Databases) -> TickerConfigBuilder {
        TickerConfigBuilder {
            config: TickerConfig {
                databases,
                ticker_period: DEFAULT_TICKER_PERIOD,
                maint_period: DEFAULT_MAINT_PERIOD,
                retry_period: DEFAULT_RETRY_PERIOD,
                discovery_period: DEFAULT_DISCOVERY_PERIOD,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                reconnect_min: DEFAULT_RECONNECT_MIN,
                reconnect_max: DEFAULT_RECONNECT_MAX,
                stop_timeout: DEFAULT_STOP_TIMEOUT,
                observe_period: DEFAULT_OBSERVE_PERIOD,
                listen: None,
            },
        }
    }

    /// A builder that starts from this configuration, to change some of it.
    pub fn to_builder(&self) -> TickerConfigBuilder {
        TickerConfigBuilder {
            config: self.clone(),
        }
    }

    /// Reads a TOML file (see the [module docs](self) for its shape).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] when the file cannot be read; [`ConfigError::File`] naming the
    /// line and the key for malformed TOML, unknown keys, bad values and inconsistent settings.
    pub fn load(path: &Path) -> Result<TickerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        TickerConfig::from_toml(&text, path)
    }

    /// Reads TOML text; `path` is only used in error messages.
    ///
    /// # Errors
    ///
    /// As [`TickerConfig::load`], without [`ConfigError::Read`].
    pub fn from_toml(text: &str, path: &Path) -> Result<TickerConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|err| {
            let (line, column, key) = pgq_core::toml_error_position(text, &err);
            ConfigError::File {
                path: path.to_owned(),
                line,
                column,
                key,
                message: err.message().trim().to_owned(),
            }
        })?;
        file.ticker.into_config().map_err(|err| match err {
            ConfigError::Invalid { key, message } => {
                let (line, column) = pgq_core::toml_key_position(text, &key);
                ConfigError::File {
                    path: path.to_owned(),
                    line,
                    column,
                    key: Some(key),
                    message,
                }
            }
            other => other,
        })
    }

    /// The databases served.
    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    /// How often each database gets a ticker pass (`pgq.ticker()`); each queue's own settings
    /// decide whether a pass makes a tick for it.
    pub fn ticker_period(&self) -> Duration {
        self.ticker_period
    }

    /// How often the maintenance operations (`pgq.maint_operations()`: table rotation, vacuum,
    /// the hooks of other PGQ tools) run.
    pub fn maint_period(&self) -> Duration {
        self.maint_period
    }

    /// How often due retry events are put back into their queues (`pgq.maint_retry_events()`).
    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    /// How often databases are re-listed (discovery) and a database without PGQ is checked
    /// again.
    pub fn discovery_period(&self) -> Duration {
        self.discovery_period
    }

    /// The most connections the ticker holds at once, over all databases (each served
    /// database holds one; discovery takes one for a moment). Databases beyond the budget wait.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The first wait before reconnecting to a database; it doubles per failure (with jitter)
    /// up to [`reconnect_max`](Self::reconnect_max).
    pub fn reconnect_min(&self) -> Duration {
        self.reconnect_min
    }

    /// The longest wait between reconnection attempts; also how often a ticker that found the
    /// database taken by another ticker tries again.
    pub fn reconnect_max(&self) -> Duration {
        self.reconnect_max
    }

    /// After a stop request, how long a pass still running may continue before it is cancelled
    /// on the server (and rolled back).
    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// How often each database's queues and consumers are read for the metrics, `/health` and
    /// the status page (cheap queries: tick positions, no event table scan).
    pub fn observe_period(&self) -> Duration {
        self.observe_period
    }

    /// Where to serve `/metrics`, `/health` and the status page (`host:port`); `None`: not
    /// served.
    pub fn listen(&self) -> Option<&str> {
        self.listen.as_deref()
    }
}

/// Builds a [`TickerConfig`]; every setting starts at its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct TickerConfigBuilder {
    config: TickerConfig,
}

impl TickerConfigBuilder {
    /// Sets [`TickerConfig::ticker_period`].
    pub fn ticker_period(mut self, period: Duration) -> Self {
        self.config.ticker_period = period;
        self
    }

    /// Sets [`TickerConfig::maint_period`].
    pub fn maint_period(mut self, period: Duration) -> Self {
        self.config.maint_period = period;
        self
    }

    /// Sets [`TickerConfig::retry_period`].
    pub fn retry_period(mut self, period: Duration) -> Self {
        self.config.retry_period = period;
        self
    }

    /// Sets [`TickerConfig::discovery_period`].
    pub fn discovery_period(mut self, period: Duration) -> Self {
        self.config.discovery_period = period;
        self
    }

    /// Sets [`TickerConfig::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Sets [`TickerConfig::reconnect_min`] and [`TickerConfig::reconnect_max`].
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_min = min;
        self.config.reconnect_max = max;
        self
    }

    /// Sets [`TickerConfig::stop_timeout`].
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.config.stop_timeout = timeout;
        self
    }

    /// Sets [`TickerConfig::observe_period`].
    pub fn observe_period(mut self, period: Duration) -> Self {
        self.config.observe_period = period;
        self
    }

    /// Sets [`TickerConfig::listen`].
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.config.listen = Some(address.into());
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the setting: an empty database list, a zero period, no
    /// connection budget, or `reconnect_min` above `reconnect_max`.
    pub fn build(self) -> Result<TickerConfig, ConfigError> {
        let c = self.config;
        if let Databases::List(list) = &c.databases {
            if list.is_empty() {
                return Err(invalid("databases", "lists no database"));
            }
        }
        for (key, period) in [
            ("ticker_period", c.ticker_period),
            ("maint_period", c.maint_period),
            ("retry_period", c.retry_period),
            ("discovery_period", c.discovery_period),
            ("reconnect_min", c.reconnect_min),
            ("observe_period", c.observe_period),
        ] {
            if period.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        if let Some(listen) = &c.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "listen",
                    "must be an address and port such as \"127.0.0.1:9187\"",
                ));
            }
        }
        if c.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if c.reconnect_min > c.reconnect_max {
            return Err(invalid(
                "reconnect_max",
                "must not be shorter than reconnect_min",
            ));
        }
        Ok(c)
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: format!("ticker.{key}"),
        message: message.to_owned(),
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    ticker: TickerTable,
}

/// The `[ticker]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TickerTable {
    databases: Option<Vec<DsnValue>>,
    discover: Option<DsnValue>,
    ticker_period: Option<Period>,
    maint_period: Option<Period>,
    retry_period: Option<Period>,
    discovery_period: Option<Period>,
    max_connections: Option<usize>,
    reconnect_min: Option<Period>,
    reconnect_max: Option<Period>,
    stop_timeout: Option<Period>,
    observe_period: Option<Period>,
    listen: Option<String>,
}

impl TickerTable {
    fn into_config(self) -> Result<TickerConfig, ConfigError> {
        let databases = match (self.databases, self.discover) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "discover",
                    "give either `databases` or `discover`, not both",
                ))
            }
            (Some(list), None) => Databases::List(list.into_iter().map(|d| d.0).collect()),
            (None, Some(base)) => Databases::Discover(base.0),
            (None, None) => {
                return Err(invalid(
                    "databases",
                    "missing: give `databases` (a list of connection strings) or `discover`",
                ))
            }
        };
        let mut b = TickerConfig::builder(databases);
        if let Some(p) = self.ticker_period {
            b = b.ticker_period(p.0);
        }
        if let Some(p) = self.maint_period {
            b = b.maint_period(p.0);
        }
        if let Some(p) = self.retry_period {
            b = b.retry_period(p.0);
        }
        if let Some(p) = self.discovery_period {
            b = b.discovery_period(p.0);
        }
        if let Some(n) = self.max_connections {
            b = b.max_connections(n);
        }
        let min = self.reconnect_min.map_or(DEFAULT_RECONNECT_MIN, |p| p.0);
        let max = self.reconnect_max.map_or(DEFAULT_RECONNECT_MAX, |p| p.0);
        b = b.reconnect_backoff(min, max);
        if let Some(p) = self.stop_timeout {
            b = b.stop_timeout(p.0);
        }
        if let Some(p) = self.observe_period {
            b = b.observe_period(p.0);
        }
        if let Some(listen) = self.listen {
            b = b.listen(listen);
        }
        b.build()
    }
}

/// A connection string, parsed while the file is read (so errors point at it).
struct DsnValue(Dsn);

impl<'de> Deserialize<'de> for DsnValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Dsn::parse(&text).map(DsnValue).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<TickerConfig, ConfigError> {
        TickerConfig::from_toml(text, Path::new("ticker.toml"))
    }

    fn file_error(text: &str) -> (usize, Option<String>, String) {
        match load(text) {
            Err(ConfigError::File {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn periods_parse_with_units() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("1.5 seconds"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1 day"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("1 fortnight")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_full_file_loads() -> Result<(), ConfigError> {
        let config = load(
            r#"
[ticker]
databases = ["host=/tmp dbname=app user=u", "host=/tmp dbname=other user=u"]
ticker_period = "250ms"
maint_period = 90
max_connections = 7
reconnect_min = "100ms"
reconnect_max = "5s"
"#,
        )?;
        let Databases::List(list) = config.databases() else {
            panic!("expected a list");
        };
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].dbname(), "other");
        assert_eq!(config.ticker_period(), Duration::from_millis(250));
        assert_eq!(config.maint_period(), Duration::from_secs(90));
        assert_eq!(config.retry_period(), DEFAULT_RETRY_PERIOD);
        assert_eq!(config.max_connections(), 7);
        assert_eq!(config.reconnect_min(), Duration::from_millis(100));
        assert_eq!(config.reconnect_max(), Duration::from_secs(5));
        Ok(())
    }

    #[test]
    fn errors_name_line_and_key() {
        let (line, key, message) = file_error(
            "[ticker]\ndatabases = [\"host=/tmp user=u\"]\nticker_period = \"1 fortnight\"\n",
        );
        assert_eq!((line, key.as_deref()), (3, Some("ticker.ticker_period")));
        assert!(message.contains("unknown unit"), "{message}");

        let (line, key, message) =
            file_error("[ticker]\ndatabases = [\"host=/tmp user=u\"]\n\ntick_period = \"1s\"\n");
        assert_eq!((line, key.as_deref()), (4, Some("ticker.tick_period")));
        assert!(message.contains("unknown field `tick_period`"), "{message}");

        let (line, key, message) = file_error(
            "[ticker]\ndatabases = [\n  \"host=/tmp user=u\",\n  \"host=/tmp bogus=1\",\n]\n",
        );
        assert_eq!((line, key.as_deref()), (2, Some("ticker.databases")));
        assert!(message.contains("bogus"), "{message}");

        let (line, key, _) =
            file_error("[ticker]\ndatabases = [\"host=/tmp user=u\"]\nmax_connections = 0\n");
        assert_eq!((line, key.as_deref()), (3, Some("ticker.max_connections")));

        let (line, key, message) = file_error("[ticker]\nticker_period = \"1s\"\n");
        assert_eq!((line, key.as_deref()), (1, Some("ticker.databases")));
        assert!(message.contains("missing"), "{message}");

        let (line, _, message) = file_error("[ticker\ndatabases = []\n");
        assert_eq!(line, 1);
        assert!(!message.is_empty());
    }

    #[test]
    fn error_display_names_file_line_and_key() {
        let err = load("[ticker]\ndatabases = [\"host=/tmp user=u\"]\nmaint_period = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ticker.toml:3:16: key `ticker.maint_period`: "),
            "{err}"
        );
    }

    #[test]
    fn builder_checks_settings() {
        let dsn = Dsn::parse("host=/tmp user=u").expect("a valid dsn");
        let err = TickerConfig::builder(Databases::List(vec![dsn.clone()]))
            .reconnect_backoff(Duration::from_secs(5), Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ticker.reconnect_max: must not be shorter than reconnect_min"
        );
        assert!(TickerConfig::builder(Databases::List(Vec::new()))
            .build()
            .is_err());
        assert!(TickerConfig::builder(Databases::Discover(dsn))
            .ticker_period(Duration::ZERO)
            .build()
            .is_err());
    }
}
