//! Fresh PostgreSQL databases and throwaway clusters for pgq-rs tests, examples and benchmarks.
//!
//! Every test gets a database of its own with [`TestDb::new`], on one server shared by the test
//! process (see [`server_dsn`] for how it is found: `PGQ_TEST_DSN`, else a private cluster, else
//! a testcontainers PostgreSQL). Tests that need a server of their own (restarts, TLS, settings)
//! start a [`Cluster`]; tests that change cluster-wide state (roles, `ALTER SYSTEM`) hold
//! [`serial`] while they do.
//!
//! ```no_run
//! use pgq_testkit::TestDb;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let db = TestDb::new().await?;
//!     let client = db.client().await?;
//!     client.batch_execute("CREATE TABLE t (id int)").await?;
//!     let row = client.query_one("SELECT count(*) FROM t", &[]).await?;
//!     assert_eq!(row.get::<_, i64>(0), 0);
//!     Ok(())
//!     // Dropping `db` drops the database, unless the thread is panicking.
//! }
//! ```
//!
//! # Environment
//!
//! | Variable | Effect |
//! |----------|--------|
//! | `PGQ_TEST_DSN` | Use this server (superuser; its database is the maintenance database) |
//! | `PGQ_TEST_PG_BIN` | Start every private cluster from this bin directory (`initdb`, `pg_ctl`, `postgres`) instead of the machine's, e.g. another major version; an error together with `PGQ_TEST_DSN`, and never replaced by a container |
//! | `PGQ_REQUIRE_REFERENCE=1` | [`reference_available`] and [`reference_missing`] fail instead of skipping |
//! | `PGQ_REQUIRE_BROWSER=1` | [`browser`] fails instead of skipping when no headless Chromium is installed |
//! | `PGQ_TEST_ARTIFACTS` | Where [`Browser::screenshot`] keeps its pictures (default: `pgq-test-artifacts` in the temporary directory) |
//! | `PGQ_HIDE_REFERENCE=1` | [`reference_available`] answers no whatever is installed: a run as on a machine without the reference, to see that every comparison test still asserts our side |
//!
//! # Cleanup
//!
//! A passing test's database is dropped; a failing test's database is kept and its name printed.
//! The private cluster and any container are removed by a watchdog process when the test process
//! exits. Nothing sweeps databases kept on a `PGQ_TEST_DSN` server: drop them by hand.
//!
//! # Helpers
//!
//! Waiting with a deadline ([`wait_for`], [`Deadline`]), scratch directories
//! ([`TempDir`]), programs run to completion ([`run`], [`output`]) or in the background
//! ([`Process`]), a headless browser for status pages ([`browser`]), names from literals
//! ([`queue`], [`consumer`]), producers writing at once ([`produce_concurrently`]), and what
//! remote consumers recorded ([`batch_tracking`]).
//!
//! Main types: [`TestDb`], [`Cluster`], [`ClusterOptions`], [`TestkitError`].

mod browser;
mod cluster;
mod db;
mod dsn;
mod http;
mod names;
mod process;
mod produce;
mod prometheus;
mod server;
mod shadow;
mod temp;
mod tracking;
mod wait;

pub use browser::{browser, Browser};
pub use cluster::{bin_dir, client_program, free_port, is_root, Cluster, ClusterOptions, SslFiles};
pub use db::TestDb;
pub use http::{http_get, wait_for_health};
pub use names::{consumer, queue};
pub use process::{output, run, Process};
pub use produce::produce_concurrently;
pub use prometheus::prometheus_value;
pub use server::server_dsn;
pub use shadow::{shadow_builtins, shadow_calls, SHADOW_OWNER};
pub use temp::TempDir;
pub use tracking::{batch_tracking, Tracked};
pub use wait::{wait_for, Deadline, POLL};

/// What can go wrong getting a database or a cluster.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// None of the ways to get a test server worked.
    #[error(
        "no PostgreSQL server for tests. Provide one of: \
         PGQ_TEST_DSN (e.g. PGQ_TEST_DSN=\"host=127.0.0.1 port=5432 user=postgres dbname=postgres\", \
         a superuser); the PostgreSQL server binaries (initdb, pg_ctl, found via PGQ_TEST_PG_BIN, \
         pg_config or /usr/lib/postgresql/*/bin) for a private throwaway cluster; or a running \
         Docker engine for a testcontainers PostgreSQL. Tried: {tried}"
    )]
    NoServer {
        /// Why each way failed.
        tried: String,
    },
    /// `PGQ_TEST_DSN` and `PGQ_TEST_PG_BIN` both name a server to test on.
    #[error(
        "PGQ_TEST_DSN and PGQ_TEST_PG_BIN are both set: tests would run on the PGQ_TEST_DSN \
         server, not on a cluster of the binaries in {bin_dir}; unset one of them"
    )]
    ServerConflict {
        /// The value of `PGQ_TEST_PG_BIN`.
        bin_dir: String,
    },
    /// The server binaries were not found.
    #[error("PostgreSQL server binaries: {0}")]
    NoBinaries(String),
    /// A connection string could not be parsed.
    #[error("invalid connection string (PGQ_TEST_DSN?): {source}")]
    BadDsn {
        /// The parser's complaint.
        source: tokio_postgres::Error,
    },
    /// A statement or a connection failed.
    #[error("{context}: {message}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The server's message, or the chain of causes.
        message: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (`initdb`, `pg_ctl`, `chown`) failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The program.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A piece of the reference (the `pgq` extension, a Skytools program) is missing and
    /// `PGQ_REQUIRE_REFERENCE=1` demands it.
    #[error("REFERENCE MISSING: {what}, and PGQ_REQUIRE_REFERENCE=1 requires it")]
    ReferenceMissing {
        /// What is missing, and which package to install.
        what: String,
    },
    /// A condition a test waited for did not come in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
}

/// Holds off other tests of this process that touch cluster-wide state (roles, `ALTER SYSTEM`)
/// for as long as the guard lives. An async mutex, so the guard may be held across `.await`; a
/// panic while holding it does not poison it for the others.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Creates role `name` with `options` (`"LOGIN"`, `"LOGIN IN ROLE pgq_admin"`, ...). Roles are
/// cluster-wide and tests of other databases may have made it: one that exists is left as it
/// is.
///
/// # Errors
///
/// [`TestkitError::Postgres`] when `CREATE ROLE` fails for another reason.
pub async fn create_role(
    client: &tokio_postgres::Client,
    name: &str,
    options: &str,
) -> Result<(), TestkitError> {
    let sql = format!("CREATE ROLE {} {options}", pgq_core::quote_ident(name));
    // Two tests creating the same role at once: the later one fails on the catalog's unique
    // index instead of with DUPLICATE_OBJECT.
    let exists = [
        tokio_postgres::error::SqlState::DUPLICATE_OBJECT,
        tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
    ];
    match client.batch_execute(&sql).await {
        Err(err) if !err.code().is_some_and(|c| exists.contains(c)) => {
            Err(dsn::pg_error(format!("creating role {name}"), err))
        }
        _ => Ok(()),
    }
}

/// `CREATE EXTENSION pgq` (the reference). Its script creates PGQ's roles without tolerating a
/// concurrent creator, and tests install in parallel: the roles are made first, as the script
/// would make them, so that it finds them.
///
/// # Errors
///
/// [`TestkitError::Postgres`] when a statement fails.
pub async fn create_reference_extension(
    client: &tokio_postgres::Client,
) -> Result<(), TestkitError> {
    create_role(client, "pgq_reader", "").await?;
    create_role(client, "pgq_writer", "").await?;
    create_role(client, "pgq_admin", "IN ROLE pgq_reader, pgq_writer").await?;
    client
        .batch_execute("CREATE EXTENSION pgq")
        .await
        .map_err(|e| dsn::pg_error("CREATE EXTENSION pgq", e))
}

/// Whether the reference `pgq` extension (Skytools PGQ) can be created on `client`'s server;
/// never with `PGQ_HIDE_REFERENCE=1`.
///
/// When it cannot: see [`reference_missing`]; comparison tests then test our side alone.
///
/// # Errors
///
/// [`TestkitError::ReferenceMissing`] with `PGQ_REQUIRE_REFERENCE=1`, and
/// [`TestkitError::Postgres`] when the server cannot be asked.
pub async fn reference_available(client: &tokio_postgres::Client) -> Result<bool, TestkitError> {
    if env_flag("PGQ_HIDE_REFERENCE") {
        reference_missing("the reference is hidden (PGQ_HIDE_REFERENCE=1)")?;
        return Ok(false);
    }
    extension_available(
        client,
        "pgq",
        "the reference pgq extension is not available on the test server; install \
         postgresql-15-pgq3 (the Skytools PGQ extension for the server's major version)",
    )
    .await
}

/// Whether the test server offers PL/Proxy, which the partitioned queue's proxy needs; when
/// not, see [`reference_missing`].
///
/// # Errors
///
/// As for [`reference_available`].
pub async fn plproxy_available(client: &tokio_postgres::Client) -> Result<bool, TestkitError> {
    extension_available(
        client,
        "plproxy",
        "PL/Proxy for the server's major version (Debian: postgresql-15-plproxy)",
    )
    .await
}

/// Whether extension `name` is available on the server; when not, reports `missing`.
async fn extension_available(
    client: &tokio_postgres::Client,
    name: &str,
    missing: &str,
) -> Result<bool, TestkitError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = $1)",
            &[&name],
        )
        .await
        .map_err(|e| dsn::pg_error(format!("looking for extension {name}"), e))?;
    if row.get::<_, bool>(0) {
        return Ok(true);
    }
    reference_missing(missing)?;
    Ok(false)
}

/// Reports a missing piece of the reference (`what`: what is missing and which package to
/// install): a loud `SKIPPED` line, after which the caller skips what needs it.
///
/// # Errors
///
/// [`TestkitError::ReferenceMissing`] with `PGQ_REQUIRE_REFERENCE=1`.
pub fn reference_missing(what: &str) -> Result<(), TestkitError> {
    if env_flag("PGQ_REQUIRE_REFERENCE") {
        return Err(TestkitError::ReferenceMissing {
            what: what.to_owned(),
        });
    }
    eprintln!("SKIPPED: {what} (set PGQ_REQUIRE_REFERENCE=1 to fail instead)");
    Ok(())
}

pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}
