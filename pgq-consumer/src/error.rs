//! The error type of `pgq-consumer`.

use std::time::Duration;

use pgq_core::BatchId;

/// What a [`Consumer`](crate::Consumer) handler returns when it fails: any error.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong while consuming (or producing typed events). Every variant names the
/// queue, consumer or batch it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Another runner holds the consumer's lock: a second process with the same consumer name
    /// would be handed the same batch, so it is refused at once.
    #[error("consumer {consumer:?} on queue {queue:?} is busy: another runner holds its lock")]
    ConsumerBusy {
        /// The queue name.
        queue: String,
        /// The consumer (or `group.subconsumer`) name.
        consumer: String,
    },
    /// The handler failed; the batch was rolled back and will be processed again.
    #[error("handler failed on batch {batch_id}")]
    Handler {
        /// The batch.
        batch_id: BatchId,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
    /// The handler returned [`Postpone`]: the batch was rolled back without counting as a
    /// failure and is taken again after the wait.
    #[error("batch {batch_id} postponed: {reason}")]
    Postponed {
        /// The batch.
        batch_id: BatchId,
        /// Why, from the handler.
        reason: String,
        /// How long to wait before taking the batch again.
        wait: Duration,
    },
    /// The handler returned twice in a row without reading the batch's remaining events; the
    /// batch was rolled back instead of being finished with events unread.
    #[error("batch {batch_id}: the handler returned with events unread; batch rolled back")]
    UnreadEvents {
        /// The batch.
        batch_id: BatchId,
    },
    /// `finish_batch` did not close the batch (it returned 0); the work was rolled back.
    #[error("batch {batch_id} could not be finished; its work was rolled back")]
    FinishFailed {
        /// The batch.
        batch_id: BatchId,
    },
    /// A cooperative batch was taken over by a sibling sub-consumer before this one finished
    /// it; its work was rolled back.
    #[error("batch {batch_id} was taken over by another sub-consumer; its work was rolled back")]
    BatchTakenOver {
        /// The batch.
        batch_id: BatchId,
    },
    /// The connection to a database was lost while the batch was in hand (the handler's error
    /// is the source): the batch was not finished and counts as no failure; the runner
    /// reconnects and takes it again.
    #[error("connection lost during batch {batch_id}; it is taken again after a reconnect")]
    ConnectionLost {
        /// The batch.
        batch_id: BatchId,
        /// What the handler (or the runner) saw.
        #[source]
        source: HandlerError,
    },
    /// A remote consumer's target refused to record the batch as done: another worker of the
    /// same consumer recorded it (or a later batch) first. The work was rolled back and the
    /// batch left open in the queue; the worker that applied it, or the next step here, which
    /// finds it done, finishes it.
    #[error(
        "batch {batch_id} was recorded as done on the target by another worker; this worker's \
         work was rolled back"
    )]
    BatchDoneElsewhere {
        /// The batch.
        batch_id: BatchId,
    },
    /// A [`TypedProducer`](crate::TypedProducer)'s payload did not serialize to JSON; nothing
    /// was inserted.
    #[error(
        "payload {index} of a {ev_type:?} event for queue {queue:?} does not serialize to JSON; \
         nothing was inserted"
    )]
    Encode {
        /// The queue.
        queue: String,
        /// The event type.
        ev_type: String,
        /// Which payload of those given (0 for a single one).
        index: usize,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// The hard-stop timeout expired during shutdown; the batch in hand was rolled back.
    #[error("shutdown timeout expired; the batch in hand was rolled back")]
    HardStopped,
    /// A cooperative group was to run with no sub-consumer, which would consume nothing.
    #[error("cooperative group {group:?} on queue {queue:?}: no sub-consumer to run")]
    NoSubconsumers {
        /// The queue name.
        queue: String,
        /// The group (consumer) name.
        group: String,
    },
    /// A `pgq-core` call failed (unknown queue or consumer, database errors, ...).
    #[error(transparent)]
    Core(#[from] pgq_core::Error),
    /// A database call of this crate failed.
    #[error("database error during {op}")]
    Db {
        /// The operation that failed.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A handler error that means "not yet": the batch cannot be processed now (a precondition
/// outside the batch is not met) but nothing is wrong with it. The runner rolls the batch back,
/// waits, and takes it again, without counting a failure, so a postponed batch never goes
/// event by event nor to the failed events.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Postpone {
    /// Why the batch waits, for the log.
    pub reason: String,
    /// How long to wait before taking the batch again.
    pub wait: Duration,
}

impl Postpone {
    /// A postponement for `wait`, with the reason logged.
    pub fn new(reason: impl Into<String>, wait: Duration) -> Postpone {
        Postpone {
            reason: reason.into(),
            wait,
        }
    }
}

/// Turns a handler's error into the runner's: [`Postpone`] becomes
/// [`ConsumerError::Postponed`], anything else [`ConsumerError::Handler`].
pub(crate) fn handler_failed(batch_id: BatchId, source: HandlerError) -> ConsumerError {
    match source.downcast::<Postpone>() {
        Ok(postpone) => ConsumerError::Postponed {
            batch_id,
            reason: postpone.reason,
            wait: postpone.wait,
        },
        Err(source) => ConsumerError::Handler { batch_id, source },
    }
}

/// `Result` with [`ConsumerError`] as the default error.
pub type Result<T, E = ConsumerError> = std::result::Result<T, E>;

impl ConsumerError {
    /// True when the connection to the server was lost (closed socket, server restart): the
    /// runner reconnects.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ConsumerError::ConnectionLost { .. } => true,
            ConsumerError::Core(err) => err.is_connection_lost(),
            ConsumerError::Db { source, .. } => pgq_core::connection_lost(source),
            _ => false,
        }
    }

    /// Errors no retry can fix: unknown queue or consumer, bad names, schema problems, a group
    /// without sub-consumers.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, ConsumerError::NoSubconsumers { .. })
            || matches!(self, ConsumerError::Core(core)
                if !matches!(core, pgq_core::Error::Db { .. }) && !core.is_connection_lost())
    }

    /// The runner's error for pgq-core's refusal to lock, record or finish a batch.
    pub(crate) fn refused(err: pgq_core::Error) -> ConsumerError {
        match err {
            pgq_core::Error::BatchNotFound { batch_id } => ConsumerError::FinishFailed { batch_id },
            pgq_core::Error::BatchTakenOver { batch_id } => {
                ConsumerError::BatchTakenOver { batch_id }
            }
            pgq_core::Error::BatchAlreadyDone { batch_id } => {
                ConsumerError::BatchDoneElsewhere { batch_id }
            }
            other => other.into(),
        }
    }

    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sql_state(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            ConsumerError::Core(err) => err.sql_state(),
            ConsumerError::Db { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Attaches the operation name to a driver error.
pub(crate) trait DbContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| ConsumerError::Db { op, source })
    }
}
