//! The replicator's configuration: a TOML file read with [`Config::load`], or built in code.
//!
//! ```toml
//! [londiste]
//! provider = "host=db1 dbname=shop user=londiste"
//! subscriber = "host=db2 dbname=shop user=londiste"
//! queue = "shop_replica"
//! consumer = "db2_worker"        # default: londiste_<subscriber id>_<queue>
//!
//! [worker]
//! apply = "batch"                # or "per-event": one statement per event, for comparison
//! memory_limit_mb = 64           # merged rows held before an early flush
//! chunk_size = 5000              # events fetched per round trip
//! catch_up_events = 20000        # when behind, one batch spans ticks up to about this many; 0: off
//! listen = "127.0.0.1:9188"      # /metrics, /health and a status page; off unless set
//! observe_period = "10s"         # how often the lag, backlog and tables are read for them
//! max_lag = "5m"                 # /health fails when the worker's lag is over this
//! ```

use std::path::Path;
use std::time::Duration;

use pgq_core::{ConsumerName, Dsn, InstallationId, Period, QueueName};
use serde::Deserialize;
use tokio_postgres::GenericClient;

use crate::error::{LondisteError, Result};

/// How the worker applies a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// Merge each key's events into their net effect and apply each table's rows with a few
    /// set-based statements.
    #[default]
    Batch,
    /// One statement per event, as londiste3's default handler does.
    PerEvent,
}

/// Everything the replicator needs. As a TOML file:
///
/// ```toml
/// [londiste]
/// provider = "host=db1 dbname=shop user=londiste"
/// subscriber = "host=db2 dbname=shop user=londiste"
/// queue = "shop_replica"
/// consumer = "db2_worker"        # default: londiste_<subscriber id>_<queue>
///
/// [worker]
/// apply = "batch"                # or "per-event": one statement per event, for comparison
/// memory_limit_mb = 64           # merged rows held before an early flush
/// chunk_size = 5000              # events fetched per round trip
/// catch_up_events = 20000        # when behind, one batch spans ticks up to about this many; 0: off
/// listen = "127.0.0.1:9188"      # /metrics, /health and a status page; off unless set
/// observe_period = "10s"         # how often the lag, backlog and tables are read for them
/// max_lag = "5m"                 # /health fails when the worker's lag is over this
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the tables come from (the queue's database).
    pub provider: Dsn,
    /// Where they are replicated to.
    pub subscriber: Dsn,
    /// The queue carrying the changes.
    pub queue: QueueName,
    /// The replay worker's consumer name; `None` (the default) for one made from the
    /// subscriber and the queue (see [`Config::consumer_name`]).
    pub consumer: Option<ConsumerName>,
    /// How batches are applied.
    pub apply: ApplyMode,
    /// Merged row data held in memory before a batch is flushed early, in bytes.
    pub memory_limit: usize,
    /// Events fetched per round trip.
    pub chunk_size: u32,
    /// When at least this many events wait, one batch spans several ticks to hold about this
    /// many (see [`pgq_consumer::ConsumerConfig::catch_up_events`]); 0 for one tick per batch.
    /// A worker that keeps up still applies every tick as it comes.
    pub catch_up_events: u32,
    /// Where the worker serves `/metrics`, `/health` and its status page (`host:port`); `None`
    /// (the default) for nowhere.
    pub listen: Option<String>,
    /// How often the worker reads its lag, backlog and tables for the gauges, `/health` and
    /// the status page (default 10 s): no request runs a query.
    pub observe_period: Duration,
    /// The lag over which `/health` fails (default 5 minutes: well above an idle queue's
    /// `ticker_idle_period`, a minute by default, by which an idle worker's lag grows).
    pub max_lag: Duration,
}

/// Default [`Config::observe_period`]: 10 seconds.
pub const DEFAULT_OBSERVE_PERIOD: Duration = Duration::from_secs(10);

/// Default [`Config::catch_up_events`].
pub const DEFAULT_CATCH_UP_EVENTS: u32 = 20_000;

/// Default [`Config::max_lag`]: 5 minutes.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    londiste: Section,
    #[serde(default)]
    worker: WorkerSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    provider: String,
    subscriber: String,
    queue: String,
    consumer: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    apply: Option<ApplyMode>,
    memory_limit_mb: Option<u32>,
    chunk_size: Option<u32>,
    catch_up_events: Option<u32>,
    listen: Option<String>,
    observe_period: Option<Period>,
    max_lag: Option<Period>,
}

/// How default consumer names start.
pub const DEFAULT_CONSUMER_PREFIX: &str = "londiste";

/// The default consumer name of a worker replicating `queue` into the subscriber whose
/// installation id is `subscriber`: `londiste_<the id's first 12 hex digits>_<queue>`. It is
/// one name per subscriber and queue, whichever connection string reaches the subscriber: two
/// subscribers of one queue under one name would share its position, each getting only some
/// of the batches.
///
/// # Errors
///
/// [`LondisteError::DefaultConsumer`] when the name would be too long (a queue name over 233
/// bytes): set `consumer` in the config.
pub fn default_consumer(subscriber: &InstallationId, queue: &QueueName) -> Result<ConsumerName> {
    let id: String = subscriber
        .as_str()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    ConsumerName::new(format!("{DEFAULT_CONSUMER_PREFIX}_{id}_{queue}")).map_err(|source| {
        LondisteError::DefaultConsumer {
            queue: queue.to_string(),
            source,
        }
    })
}

impl Config {
    /// A configuration with the default worker settings; `consumer` `None` for the default
    /// name ([`Config::consumer_name`]).
    pub fn new(
        provider: Dsn,
        subscriber: Dsn,
        queue: QueueName,
        consumer: Option<ConsumerName>,
    ) -> Config {
        Config {
            provider,
            subscriber,
            queue,
            consumer,
            apply: ApplyMode::Batch,
            memory_limit: 64 << 20,
            chunk_size: 5000,
            catch_up_events: DEFAULT_CATCH_UP_EVENTS,
            listen: None,
            observe_period: DEFAULT_OBSERVE_PERIOD,
            max_lag: DEFAULT_MAX_LAG,
        }
    }

    /// Reads a TOML file (its shape is shown on [`Config`]).
    ///
    /// # Errors
    ///
    /// [`LondisteError::ConfigRead`], or [`LondisteError::Config`] naming the line, column and
    /// key of malformed TOML, unknown keys and bad values (connection strings, names).
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| LondisteError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Reads TOML text; `path` is only used in error messages.
    ///
    /// # Errors
    ///
    /// As [`Config::load`], without [`LondisteError::ConfigRead`].
    pub fn from_toml(text: &str, path: &Path) -> Result<Config> {
        let file: File = toml::from_str(text).map_err(|err| {
            let (line, column, key) = pgq_core::toml_error_position(text, &err);
            LondisteError::Config {
                path: path.to_owned(),
                line,
                column,
                key: key.unwrap_or_else(|| "londiste".to_owned()),
                message: err.message().trim().to_owned(),
            }
        })?;
        let invalid = |key: &str, message: String| {
            let (line, column) = pgq_core::toml_key_position(text, key);
            LondisteError::Config {
                path: path.to_owned(),
                line,
                column,
                key: key.to_owned(),
                message,
            }
        };
        let s = &file.londiste;
        let provider =
            Dsn::parse(&s.provider).map_err(|e| invalid("londiste.provider", e.to_string()))?;
        let subscriber =
            Dsn::parse(&s.subscriber).map_err(|e| invalid("londiste.subscriber", e.to_string()))?;
        let queue = QueueName::new(s.queue.clone())
            .map_err(|e| invalid("londiste.queue", e.to_string()))?;
        let consumer = s
            .consumer
            .clone()
            .map(ConsumerName::new)
            .transpose()
            .map_err(|e| invalid("londiste.consumer", e.to_string()))?;
        let mut config = Config::new(provider, subscriber, queue, consumer);
        let w = &file.worker;
        if let Some(apply) = w.apply {
            config.apply = apply;
        }
        if let Some(mb) = w.memory_limit_mb {
            if mb == 0 {
                return Err(invalid(
                    "worker.memory_limit_mb",
                    "must be at least 1".to_owned(),
                ));
            }
            config.memory_limit = usize::try_from(mb).unwrap_or(usize::MAX) << 20;
        }
        if let Some(chunk) = w.chunk_size {
            if chunk == 0 {
                return Err(invalid(
                    "worker.chunk_size",
                    "must be at least 1".to_owned(),
                ));
            }
            config.chunk_size = chunk;
        }
        if let Some(events) = w.catch_up_events {
            config.catch_up_events = events;
        }
        if let Some(listen) = &w.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "worker.listen",
                    format!("must be an address and port such as 127.0.0.1:9187, not {listen:?}"),
                ));
            }
            config.listen = Some(listen.clone());
        }
        if let Some(period) = &w.observe_period {
            if period.0.is_zero() {
                return Err(invalid(
                    "worker.observe_period",
                    "must be more than zero".to_owned(),
                ));
            }
            config.observe_period = period.0;
        }
        if let Some(lag) = &w.max_lag {
            config.max_lag = lag.0;
        }
        Ok(config)
    }

    /// The replay worker's consumer name: [`Config::consumer`] when set, else
    /// [`default_consumer`] for the installation id of `subscriber` (a connection to
    /// [`Config::subscriber`]), which `init` makes when it installs the subscriber's lines.
    /// Every command resolves the name this way, so they agree on it.
    ///
    /// # Errors
    ///
    /// [`LondisteError::SubscriberNotInitialized`] when the subscriber has no installation id;
    /// [`LondisteError::DefaultConsumer`]; database errors.
    pub async fn consumer_name(&self, subscriber: &impl GenericClient) -> Result<ConsumerName> {
        if let Some(consumer) = &self.consumer {
            return Ok(consumer.clone());
        }
        let id = pgq_core::installation_id(subscriber)
            .await
            .map_err(|err| match err {
                pgq_core::Error::NoInstallationId { db } => {
                    LondisteError::SubscriberNotInitialized { db }
                }
                other => other.into(),
            })?;
        default_consumer(&id, &self.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config> {
        Config::from_toml(text, Path::new("londiste.toml"))
    }

    #[test]
    fn a_full_file_loads() -> Result<()> {
        let config = load(
            "[londiste]\nprovider = \"host=a dbname=p user=u\"\nsubscriber = \"host=b dbname=s user=u\"\n\
             queue = \"q\"\n\n[worker]\napply = \"per-event\"\nmemory_limit_mb = 2\nchunk_size = 10\n\
             catch_up_events = 0\nlisten = \"127.0.0.1:9187\"\nobserve_period = \"500ms\"\nmax_lag = \"1m\"\n",
        )?;
        assert_eq!(config.listen.as_deref(), Some("127.0.0.1:9187"));
        assert_eq!(
            (config.observe_period, config.max_lag),
            (Duration::from_millis(500), Duration::from_secs(60))
        );
        assert_eq!(config.queue.as_str(), "q");
        assert_eq!(config.consumer, None);
        assert_eq!(config.apply, ApplyMode::PerEvent);
        assert_eq!((config.memory_limit, config.chunk_size), (2 << 20, 10));
        assert_eq!(config.catch_up_events, 0);
        assert_eq!(config.subscriber.dbname(), "s");
        Ok(())
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = load("[londiste]\nprovider = \"host=a user=u\"\nsubscriber = \"host=b user=u\"\nqueue = \"q\"\n[worker]\napply = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("londiste.toml:6:9: worker.apply:"), "{err}");
        let err = load("[londiste]\nprovider = \"host=a user=u\"\nsubscriber = \"host=b user=u\"\nqueue = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("londiste.toml:4:1: londiste.queue:"),
            "{err}"
        );
        let err = load("[londiste]\nprovider = \"host=a user=u\"\nqueue = \"q\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `subscriber`"), "{err}");
        let err = load("[londiste]\nprovider = \"host=a user=u\"\nsubscriber = \"host=b user=u\"\nqueue = \"q\"\n[worker]\nlisten = \"9187\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("londiste.toml:6:1: worker.listen: must be an address and port"),
            "{err}"
        );
        let err = load("[londiste]\nprovider = \"host=a user=u\"\nsubscriber = \"host=b user=u\"\nqueue = \"q\"\nspeed = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("londiste.toml:5:1: londiste.speed:"),
            "{err}"
        );
    }

    #[test]
    fn an_explicit_consumer_is_kept() -> Result<()> {
        let config = load(
            "[londiste]\nprovider = \"host=a user=u\"\nsubscriber = \"host=b user=u\"\n\
             queue = \"q\"\nconsumer = \"mine\"\n",
        )?;
        assert_eq!(
            config.consumer.as_ref().map(ConsumerName::as_str),
            Some("mine")
        );
        Ok(())
    }
}
