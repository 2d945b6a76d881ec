//! The one error type of `pgq-core`.

use crate::ids::{BatchId, TickId};

/// What went wrong in a `pgq-core` call. Every variant names the queue, consumer, batch or
/// value it is about; database failures carry the operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue or consumer name failed validation before any SQL ran.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `"queue"`, `"consumer"`, ...
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A partitioned queue's layout that cannot work (see [`crate::partition`]).
    #[error("invalid partitioning: {reason}")]
    InvalidPartitions {
        /// What is wrong with it.
        reason: String,
    },
    /// A call on one database of a partitioned queue failed (see
    /// [`crate::partition::Router`]).
    #[error("partition {partition} ({database}) failed")]
    Partition {
        /// The database's index in the router's list.
        partition: usize,
        /// Where it is: host, port and database name, never the password.
        database: String,
        /// What failed there.
        #[source]
        source: Box<Error>,
    },
    /// The queue does not exist.
    #[error("queue {queue:?} not found")]
    QueueNotFound {
        /// The queue name.
        queue: String,
    },
    /// `create_queue` on a name that is taken.
    #[error("queue {queue:?} already exists")]
    QueueExists {
        /// The queue name.
        queue: String,
    },
    /// The consumer is not registered on the queue.
    #[error("consumer {consumer:?} is not registered on queue {queue:?}")]
    ConsumerNotRegistered {
        /// The queue name.
        queue: String,
        /// The consumer name.
        consumer: String,
    },
    /// The batch does not exist, or was already finished.
    #[error("batch {batch_id} not found (unknown or already finished)")]
    BatchNotFound {
        /// The batch id.
        batch_id: BatchId,
    },
    /// The tick does not exist on the queue.
    #[error("queue {queue:?} has no tick {tick}")]
    TickNotFound {
        /// The queue name.
        queue: String,
        /// The tick asked for.
        tick: TickId,
    },
    /// A skip would move the consumer backwards (or nowhere).
    #[error(
        "consumer {consumer:?} on queue {queue:?} is at tick {position}; tick {target} is not \
         after it"
    )]
    SkipNotForward {
        /// The queue name.
        queue: String,
        /// The consumer name.
        consumer: String,
        /// The consumer's position.
        position: TickId,
        /// The tick asked for.
        target: TickId,
    },
    /// A cooperative sub-consumer's batch was taken over by a sibling (after it looked dead):
    /// the work done for it must roll back.
    #[error("batch {batch_id} was taken over by another sub-consumer")]
    BatchTakenOver {
        /// The batch id.
        batch_id: BatchId,
    },
    /// The target database has this batch, or a later one, recorded as done for the
    /// consumer (`pgq_ext`): another worker applied it, and the work done for it must roll
    /// back.
    #[error("batch {batch_id} is recorded as done already on the target")]
    BatchAlreadyDone {
        /// The batch id.
        batch_id: BatchId,
    },
    /// A cooperative sub-consumer holds a batch, so it was not unregistered.
    #[error("sub-consumer {subconsumer:?} on queue {queue:?} holds a batch; kept registered")]
    SubconsumerHasBatch {
        /// The queue name.
        queue: String,
        /// The sub-consumer's full name, `group.subconsumer`.
        subconsumer: String,
    },
    /// The queue refuses inserts (`queue_disable_insert`).
    #[error("queue {queue:?} is disabled for inserts")]
    InsertDisabled {
        /// The queue name.
        queue: String,
    },
    /// A transaction tried to insert more events than `queue_per_tx_limit` allows.
    #[error("queue {queue:?}: transaction exceeded the per-transaction event limit")]
    PerTxLimitExceeded {
        /// The queue name.
        queue: String,
    },
    /// The database holds a newer schema than this build knows.
    #[error("schema line {line} is at version {found}, newer than this build's {expected}")]
    SchemaTooNew {
        /// The migration line (`pgq`, `pgq_coop`, `pgq_ext`).
        line: &'static str,
        /// Version found in the database.
        found: i32,
        /// Newest version this build ships.
        expected: i32,
    },
    /// An installed migration differs from the one this build ships.
    #[error("migration {line}/{version} was modified after it was installed (checksum differs)")]
    MigrationModified {
        /// The migration line.
        line: &'static str,
        /// The migration version.
        version: i32,
    },
    /// A migration's SQL failed; it was rolled back (earlier migrations of the run stay).
    #[error("migration {line}/{version} failed")]
    MigrationFailed {
        /// The migration line.
        line: &'static str,
        /// The migration version.
        version: i32,
        /// The driver's error (the server's message, position and SQLSTATE).
        #[source]
        source: tokio_postgres::Error,
    },
    /// The installer refused the database and changed nothing: a pgq-rs schema or bookkeeping
    /// table belongs to a role that is neither the installing role nor a superuser (a superuser
    /// upgrading a non-superuser's installation is one case), or there is a trigger or rule on
    /// the bookkeeping; either would run another role's code with the installer's rights.
    #[error("{problem} (hint: {hint})")]
    UntrustedInstallation {
        /// What was found, as the server said it.
        problem: String,
        /// What to do about it.
        hint: String,
    },
    /// [`migrate_from_extension`](crate::migrate_from_extension) refused the database and
    /// changed nothing.
    #[error("{problem} (hint: {hint})")]
    MigrationRefused {
        /// Why.
        refusal: crate::Refusal,
        /// What was found, as the server said it.
        problem: String,
        /// What to do about it.
        hint: String,
    },
    /// The schema is missing or older than this build needs.
    #[error("schema line {line} is at version {found:?}, this build needs {expected}")]
    SchemaOutdated {
        /// The migration line.
        line: &'static str,
        /// Version found, `None` when not installed.
        found: Option<i32>,
        /// Version this build needs.
        expected: i32,
    },
    /// The database has no pgq-rs installation id (table `pgq_rs.installation`): none of the
    /// pgq-rs lines was installed there, e.g. it has only the original `pgq` extension.
    #[error(
        "database {db:?} has no pgq-rs installation id (table pgq_rs.installation): installing \
         any pgq-rs line there creates it, e.g. `pgq-ticker install pgq-ext` (next to the \
         original pgq extension too)"
    )]
    NoInstallationId {
        /// The database's name.
        db: String,
    },
    /// A connection string or setting could not be understood.
    #[error("invalid connection settings: {reason}")]
    InvalidDsn {
        /// What is wrong (never contains a password).
        reason: String,
    },
    /// TLS could not be set up (certificate files, unsupported mode).
    #[error("TLS setup failed: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// A database call failed.
    #[error("database error during {op}")]
    Db {
        /// The operation that failed.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sql_state(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Db { source, .. } | Error::MigrationFailed { source, .. } => source.code(),
            Error::Partition { source, .. } => source.sql_state(),
            _ => None,
        }
    }

    /// True when the connection to the server was lost (closed socket, server restart).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Error::Db { source, .. } => connection_lost(source),
            Error::Partition { source, .. } => source.is_connection_lost(),
            _ => false,
        }
    }
}

/// Whether a driver error means the connection is gone (closed socket, a connection-class
/// SQLSTATE, the server shutting down, or an I/O error without a server message), so that
/// reconnecting is the cure. The daemons' and runners' error types ask this of their own
/// driver errors.
pub fn connection_lost(source: &tokio_postgres::Error) -> bool {
    source.is_closed()
        || source.code().is_some_and(|c| {
            c.code().starts_with("08") || *c == tokio_postgres::error::SqlState::ADMIN_SHUTDOWN
        })
        || (source.code().is_none() && source.as_db_error().is_none())
}

/// Attaches the operation name to a driver error.
pub(crate) trait DbContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Db { op, source })
    }
}
