//! The error types of `pgq-ticker`.

use std::fmt;
use std::path::PathBuf;

use tokio_postgres::error::SqlState;

/// What went wrong in a `pgq-ticker` call. Variants name the database (its name, never the
/// connection string), queue or tick they are about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TickerError {
    /// Another ticker holds this database's ticker lock; this one stays off until it is free.
    #[error("database {db:?} is already ticked by another ticker (it holds the ticker lock)")]
    AlreadyTicked {
        /// The database name.
        db: String,
    },
    /// The database has no PGQ (neither the pgq-rs schema nor the extension).
    #[error("database {db:?} has no pgq schema")]
    SchemaMissing {
        /// The database name.
        db: String,
    },
    /// A `pgq-core` call failed.
    #[error(transparent)]
    Core(#[from] pgq_core::Error),
    /// A statement of the ticker failed.
    #[error("database {db:?}: {op} failed")]
    Db {
        /// The database name.
        db: String,
        /// The operation that failed.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// `Result` with [`TickerError`] as the default error.
pub type Result<T, E = TickerError> = std::result::Result<T, E>;

impl TickerError {
    /// True when the connection to the server was lost (closed socket, server restart, the
    /// backend terminated): reconnecting is the cure.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            TickerError::Core(err) => err.is_connection_lost(),
            TickerError::Db { source, .. } => pgq_core::connection_lost(source),
            _ => false,
        }
    }

    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            TickerError::Core(err) => err.sql_state(),
            TickerError::Db { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Attaches the database and operation to a driver error.
pub(crate) trait DbContext<T> {
    fn op(self, db: &str, op: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn op(self, db: &str, op: &'static str) -> Result<T> {
        self.map_err(|source| TickerError::Db {
            db: db.to_owned(),
            op,
            source,
        })
    }
}

/// Names the database in a pgq-core error about a statement, as the ticker's own statements
/// do ([`TickerError::Db`]); other pgq-core errors stay [`TickerError::Core`].
pub(crate) trait InDb<T> {
    fn in_db(self, db: &str) -> Result<T>;
}

impl<T> InDb<T> for pgq_core::Result<T> {
    fn in_db(self, db: &str) -> Result<T> {
        self.map_err(|err| match err {
            pgq_core::Error::Db { op, source } => TickerError::Db {
                db: db.to_owned(),
                op,
                source,
            },
            other => TickerError::Core(other),
        })
    }
}

/// A configuration that cannot be used. Errors from a file name the file, the line and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a setting in it is wrong.
    #[error("{}:{line}:{column}: {}{message}", path.display(), KeyPrefix(key.as_deref()))]
    File {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// The column, counting from 1.
        column: usize,
        /// The setting, as `table.key` (e.g. `ticker.ticker_period`), when one is at fault.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A setting given in code (or found missing) is wrong.
    #[error("{key}: {message}")]
    Invalid {
        /// The setting, as `table.key`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Renders `key `x`: ` before a message, or nothing.
struct KeyPrefix<'a>(Option<&'a str>);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "key `{key}`: "),
            None => Ok(()),
        }
    }
}

/// Displays an error with its chain of causes, `outer: inner: innermost`, for log lines.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
