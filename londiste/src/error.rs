//! The error type of `londiste`.

use std::path::PathBuf;

/// What went wrong. Every variant names the table, column, key or setting it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LondisteError {
    /// The config file could not be read.
    #[error("cannot read config file {}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or a setting in it is wrong.
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The column, from 1.
        column: usize,
        /// The setting, as `table.key`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A table or sequence does not exist on one side.
    #[error("{side}: {kind} {name} does not exist")]
    NotFound {
        /// `provider` or `subscriber`.
        side: &'static str,
        /// `table` or `sequence`.
        kind: &'static str,
        /// The name as given.
        name: String,
    },
    /// The provider table has no primary key.
    #[error("table {table} has no primary key: londiste needs one to apply updates and deletes")]
    NoPrimaryKey {
        /// The table.
        table: String,
    },
    /// The subscriber table does not match the provider table.
    #[error("subscriber table {dest} does not match provider table {table}: {problem}")]
    TableMismatch {
        /// The provider table.
        table: String,
        /// The subscriber table.
        dest: String,
        /// The first difference, naming the column.
        problem: String,
    },
    /// The table is not registered (or registered already) on this queue.
    #[error("table {table}: {problem}")]
    TableState {
        /// The table.
        table: String,
        /// What is wrong with its registration.
        problem: String,
    },
    /// `session_replication_role` cannot be set on the subscriber.
    #[error(
        "cannot set session_replication_role = replica on the subscriber (needed to keep its \
         triggers and foreign keys out of the replay): connect as a superuser, or on \
         PostgreSQL 15+ run `GRANT SET ON PARAMETER session_replication_role TO <role>`"
    )]
    ReplicaRole(#[source] tokio_postgres::Error),
    /// An event could not be decoded or applied.
    #[error("event {event_id} ({ev_type}) for {table}: {problem}")]
    BadEvent {
        /// The event id.
        event_id: i64,
        /// Its ev_type.
        ev_type: String,
        /// Its table.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// Applying a batch changed a different number of rows than its events say.
    #[error("{table}: {what} expected {expected} rows, changed {changed}; keys: {keys}")]
    RowCount {
        /// The subscriber table.
        table: String,
        /// `delete`, `update` or `insert`.
        what: &'static str,
        /// Rows the merged events say.
        expected: usize,
        /// Rows the statement changed.
        changed: usize,
        /// The keys that did not match (the first few).
        keys: String,
    },
    /// The subscriber has no pgq-rs installation id, from which the default consumer name is
    /// made: `londiste init` has not run there.
    #[error(
        "subscriber database {db:?} has no pgq-rs installation id, from which the worker's \
         default consumer name is made: run `londiste init` first, or set `consumer` in the config"
    )]
    SubscriberNotInitialized {
        /// The subscriber database's name.
        db: String,
    },
    /// Another subscriber's worker uses this consumer name on the queue: two workers of one
    /// consumer would each take half of the batches.
    #[error(
        "consumer {consumer} is registered on queue {queue} by another subscriber: give this \
         subscriber its own `consumer` in the config (or leave it out for the default)"
    )]
    ConsumerTaken {
        /// The queue.
        queue: String,
        /// The consumer name.
        consumer: String,
    },
    /// The default consumer name for this queue would not be a valid name.
    #[error("queue {queue:?} has no default consumer name: set `consumer` in the config")]
    DefaultConsumer {
        /// The queue.
        queue: String,
        /// Why the name was refused.
        #[source]
        source: pgq_core::Error,
    },
    /// `londiste execute` refused a script; nothing was changed.
    #[error("execute {file}: {problem}")]
    Execute {
        /// The script's file name.
        file: String,
        /// Why.
        problem: String,
    },
    /// `londiste seed` cannot go on; the message says why and what to do.
    #[error("seed: {problem}")]
    Seed {
        /// What is wrong.
        problem: String,
    },
    /// The base backup of a seed failed.
    #[error("seed: the base backup failed")]
    Backup(#[from] pgq_basebackup::Error),
    /// A `pgq-core` call failed.
    #[error(transparent)]
    Core(#[from] pgq_core::Error),
    /// The replay worker failed.
    #[error(transparent)]
    Consumer(#[from] pgq_consumer::ConsumerError),
    /// A database call failed.
    #[error("{side}: {op}")]
    Db {
        /// `provider` or `subscriber`.
        side: &'static str,
        /// The operation.
        op: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// `Result` with [`LondisteError`].
pub type Result<T, E = LondisteError> = std::result::Result<T, E>;

/// Attaches side and operation to a driver error.
pub(crate) trait DbContext<T> {
    fn on(self, side: &'static str, op: impl Into<String>) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn on(self, side: &'static str, op: impl Into<String>) -> Result<T> {
        self.map_err(|source| LondisteError::Db {
            side,
            op: op.into(),
            source,
        })
    }
}

/// The provider side, for [`DbContext::on`].
pub(crate) const PROVIDER: &str = "provider";
/// The subscriber side, for [`DbContext::on`].
pub(crate) const SUBSCRIBER: &str = "subscriber";
