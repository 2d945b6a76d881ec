//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong while taking, finishing or verifying a base backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Options that do not go together.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// Why.
        reason: String,
    },
    /// The source could not be reached, or the DSN is invalid.
    #[error("cannot connect to the source")]
    Connect {
        /// Why.
        #[source]
        source: pgq_core::Error,
    },
    /// A statement failed on the source.
    #[error("{op} failed on the source")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The source runs a PostgreSQL older than 15 (`pg_backup_start` appeared in 15).
    #[error("the source runs PostgreSQL {version}; 15 or later is needed")]
    UnsupportedServer {
        /// `server_version_num`.
        version: i32,
    },
    /// The role lacks what a base backup needs; the message names every missing grant.
    #[error(
        "role {role:?} lacks privileges for a base backup; as a superuser run:\n  {}",
        missing.join("\n  ")
    )]
    MissingPrivileges {
        /// The connected role.
        role: String,
        /// One statement per missing privilege (`GRANT …` / `ALTER ROLE …`).
        missing: Vec<String>,
    },
    /// The destination exists and is not empty, and neither `--force` nor `--resume` was given.
    #[error("destination {} exists and is not empty (use --force to overwrite)", path.display())]
    DestinationNotEmpty {
        /// The destination directory.
        path: PathBuf,
    },
    /// `--force` or `--resume` on a directory that is neither a data directory nor a copy made
    /// by this crate (or a mapped tablespace's directory that holds other things).
    #[error("refusing to {action} {}: {reason}; nothing was deleted", path.display())]
    NotACopy {
        /// The directory.
        path: PathBuf,
        /// What was asked: `empty (--force)` or `resume in (--resume)`.
        action: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A file name from the source that could put a file outside the copy; the backup stops
    /// before anything is written for the files it lists.
    #[error("refused file name \"{path}\" from the source: {reason}")]
    UnsafeName {
        /// The name as sent, with bytes other than printable ASCII escaped (`\xe9`).
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A local entry the backup, its compression or `restore` will not follow or write
    /// through (a symbolic link, a device, ...).
    #[error("refused {}: {reason}", path.display())]
    UnsafeEntry {
        /// The entry.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The source returned something this crate does not understand.
    #[error("unexpected answer from the source: {what}")]
    Protocol {
        /// What was unexpected.
        what: String,
    },
    /// A WAL segment needed by the backup was gone from the source.
    #[error("WAL segment {segment} is gone from the source's pg_wal")]
    WalMissing {
        /// The segment's file name.
        segment: String,
    },
    /// A file system operation on the copy failed.
    #[error("{context}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `backup_manifest` is missing or malformed.
    #[error("manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Starting, stopping or resetting the copy's server failed.
    #[error("{action} failed: {detail}")]
    Server {
        /// What was being done.
        action: String,
        /// The program's output (and the end of the server log, for a start).
        detail: String,
    },
    /// A background task of the backup panicked or was cancelled.
    #[error("a backup task ended abnormally")]
    Task(#[from] tokio::task::JoinError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches an operation name to a driver error.
pub(crate) trait DbContext<T> {
    /// Wraps the error as [`Error::Db`] with `op`.
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for Result<T, tokio_postgres::Error> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Db { op, source })
    }
}

/// Attaches a context (usually with a path) to an I/O error.
pub(crate) trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] with the context `f` builds.
    fn io_context<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn io_context<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: f(),
            source,
        })
    }
}
