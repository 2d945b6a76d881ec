//! Moving a database from the original `pgq` extension (PGQ 3.x) onto the pgq-rs schema, in
//! place and in one transaction; the SQL that does it is `migrations/from_extension.sql`.

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{
    run_prelude, run_recorded_in, Line, LineReport, CURRENT, INSTALL_LOCK_KEY, MIGRATIONS,
};
use crate::error::{DbContext, Error, Result};

/// The session functions that unhook the extension's queues and hook them into pgq-rs's.
const FROM_EXTENSION: &str = include_str!("../../../migrations/from_extension.sql");

// language=SQL
const PIN: &str = "SET LOCAL search_path = pg_catalog, pg_temp";

// Waits for a running installer (session lock, same key) and keeps the next one out.
// language=SQL
const LOCK: &str = "SELECT pg_catalog.pg_advisory_xact_lock($1)";

// language=SQL
const LOCK_TIMEOUT: &str = "SELECT pg_catalog.set_config('lock_timeout', $1, true)";

// language=SQL
const CHECK: &str = "SELECT pg_temp.pgq_rs_check_extension()";

// language=SQL
const DETACH: &str = "\
SELECT queues, consumers, open_batches, retry_events, triggers, extension_version
  FROM pg_temp.pgq_rs_detach_extension()";

// language=SQL
const ATTACH: &str = "SELECT pg_temp.pgq_rs_attach_extension_state()";

/// The lines that take over what the extension provided, in installation order.
const TAKEN_OVER: [Line; 2] = [Line::Pgq, Line::PgqTriggers];

/// How [`migrate_from_extension`] runs. The default commits, and waits for the locks it needs
/// as long as it takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct MigrationOptions {
    dry_run: bool,
    lock_timeout: Option<Duration>,
}

impl MigrationOptions {
    /// The defaults: commit, no lock timeout.
    pub fn new() -> MigrationOptions {
        MigrationOptions::default()
    }

    /// Carry out every step, report, and roll back: the database is left as it was.
    pub fn dry_run(self, dry_run: bool) -> MigrationOptions {
        MigrationOptions { dry_run, ..self }
    }

    /// Give up (changing nothing) when a lock cannot be had within `limit`: while the migration
    /// waits for a transaction that holds a queue table, every producer and consumer that comes
    /// later waits behind it, so a long or idle transaction would stall the queue.
    pub fn lock_timeout(self, limit: Duration) -> MigrationOptions {
        MigrationOptions {
            lock_timeout: Some(limit),
            ..self
        }
    }
}

/// Why [`migrate_from_extension`] refused a database (it changed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// There is no `pgq` extension (SQLSTATE `PQM01`).
    NoExtension,
    /// The pgq-rs `pgq` line is recorded already (`PQM02`).
    AlreadyMigrated,
    /// The current role does not own the extension (`PQM03`).
    NotOwner,
    /// A cascaded setup: `pgq_node` (`PQM04`).
    Cascaded,
    /// londiste3's schema `londiste` (`PQM05`).
    Londiste3,
    /// A `pgq_coop` schema pgq-rs did not install (`PQM06`).
    ForeignCoop,
    /// A queue not laid out as `pgq.create_queue` makes it (`PQM07`).
    UnusualQueue,
    /// An extension version other than 3.x (`PQM08`).
    UnsupportedVersion,
    /// Other objects depend on the extension (`DROP EXTENSION` said so, SQLSTATE `2BP01`).
    DependentObjects,
}

impl Refusal {
    fn from_sql_state(code: &str) -> Option<Refusal> {
        Some(match code {
            "PQM01" => Refusal::NoExtension,
            "PQM02" => Refusal::AlreadyMigrated,
            "PQM03" => Refusal::NotOwner,
            "PQM04" => Refusal::Cascaded,
            "PQM05" => Refusal::Londiste3,
            "PQM06" => Refusal::ForeignCoop,
            "PQM07" => Refusal::UnusualQueue,
            "PQM08" => Refusal::UnsupportedVersion,
            "2BP01" => Refusal::DependentObjects,
            _ => return None,
        })
    }
}

/// What [`migrate_from_extension`] carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtensionMigration {
    /// The extension's version, e.g. `3.5`.
    pub extension_version: String,
    /// Queues, with their event tables, ticks and events.
    pub queues: i32,
    /// Subscriptions (consumers and cooperative sub-consumers), at their positions.
    pub consumers: i32,
    /// Batches open at the time, still open under the new schema.
    pub open_batches: i32,
    /// Events waiting in the retry queue.
    pub retry_events: i64,
    /// Capture triggers on the extension's C functions, remade on the PL/pgSQL ones.
    pub triggers: i32,
    /// The pgq-rs lines installed in their place ([`Line::Pgq`], [`Line::PgqTriggers`]).
    pub lines: Vec<LineReport>,
    /// Whether it was committed, or rolled back ([`MigrationOptions::dry_run`]).
    pub committed: bool,
}

impl fmt::Display for ExtensionMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} the pgq extension {} onto pgq-rs: {} queue(s), {} consumer(s) at their \
             positions ({} open batch(es)), {} retry event(s), {} capture trigger(s) remade",
            if self.committed {
                "moved"
            } else {
                "dry run, rolled back: would move"
            },
            self.extension_version,
            self.queues,
            self.consumers,
            self.open_batches,
            self.retry_events,
            self.triggers
        )?;
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Converts a database that has the original `pgq` extension (PGQ 3.x) to the pgq-rs schema in
/// place, in one transaction: queues with their event tables and events, ticks, consumers at
/// their positions, open batches (they stay open and are finished on the new schema), retry
/// events, cooperative sub-consumers (rows of `pgq.subscription`) and capture triggers (remade
/// on the PL/pgSQL `pgq.logutriga`/`sqltriga`/`jsontriga`). Schemas the extension does not own
/// (`pgq_ext`, a pgq-rs `pgq_coop` installed next to it) stay as they are.
///
/// It takes an exclusive lock on the queue tables, so it waits for the producers and consumers
/// in the middle of a transaction and holds the next ones off until it commits; they go on
/// against the new schema, whose SQL API is the same. A statement that had already called one
/// of the extension's functions when it came to wait on that lock fails once (the function is
/// gone by then) and its transaction rolls back whole, to be retried like after any error. A
/// deadlock with a client (which aborts the migration's transaction, changing nothing) is
/// retried twice.
///
/// There is no way back to the extension (`CREATE EXTENSION pgq` cannot adopt existing tables):
/// take a backup first, and try it with [`MigrationOptions::dry_run`].
///
/// Runs as the extension's owner (or a superuser), with `search_path` pinned to `pg_catalog`.
///
/// # Errors
///
/// [`Error::MigrationRefused`] when the database holds what cannot be carried over (see
/// [`Refusal`]); [`Error::UntrustedInstallation`] when the pgq-rs bookkeeping belongs to
/// somebody else (as for [`install`](crate::install)); [`Error::MigrationFailed`] when
/// installing a line fails; [`Error::Db`] for other statements, SQLSTATE `55P03` when the lock
/// timeout passed. In each case nothing was changed.
pub async fn migrate_from_extension(
    client: &mut Client,
    options: MigrationOptions,
) -> Result<ExtensionMigration> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        match migrate_once(client, options).await {
            Err(err)
                if attempt < ATTEMPTS
                    && err.sql_state() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                tracing::warn!(attempt, "deadlock with a client; moving again");
                attempt += 1;
            }
            done => return done,
        }
    }
}

async fn migrate_once(
    client: &mut Client,
    options: MigrationOptions,
) -> Result<ExtensionMigration> {
    const OP: &str = "moving from the pgq extension";
    let tx = client.transaction().await.op(OP)?;
    tx.batch_execute(PIN).await.op(OP)?;
    if let Some(limit) = options.lock_timeout {
        let limit = format!("{}ms", limit.as_millis().max(1));
        tx.query_typed_one(LOCK_TIMEOUT, &[(&limit, Type::TEXT)])
            .await
            .op("setting the lock timeout")?;
    }
    tx.query_typed_one(LOCK, &[(&INSTALL_LOCK_KEY, Type::INT8)])
        .await
        .op("taking the installer lock")?;
    tx.batch_execute(FROM_EXTENSION).await.op(OP)?;
    tx.query_typed_one(CHECK, &[]).await.map_err(refused)?;
    // A bookkeeping schema somebody else controls is refused before it is read.
    run_prelude(&tx).await?;
    let row = tx.query_typed_one(DETACH, &[]).await.map_err(refused)?;
    let mut report = ExtensionMigration {
        queues: row.try_get(0).op(OP)?,
        consumers: row.try_get(1).op(OP)?,
        open_batches: row.try_get(2).op(OP)?,
        retry_events: row.try_get(3).op(OP)?,
        triggers: row.try_get(4).op(OP)?,
        extension_version: row.try_get(5).op(OP)?,
        lines: Vec::new(),
        committed: false,
    };
    for line in TAKEN_OVER {
        let numbered: Vec<_> = MIGRATIONS.iter().filter(|m| m.line == line).collect();
        let current = CURRENT
            .iter()
            .find(|c| c.line == line && c.version == line.latest_version());
        let applied = match current {
            Some(c) => run_recorded_in(&tx, line, c.version, c.sql, &numbered).await?,
            None => {
                let mut applied = Vec::new();
                for m in &numbered {
                    applied.extend(run_recorded_in(&tx, line, m.version, m.sql, &[m]).await?);
                }
                applied
            }
        };
        report.lines.push(LineReport {
            line,
            found: None,
            applied,
            checksums_recorded: Vec::new(),
            provided_by_extension: false,
            current: current.is_some(),
        });
    }
    tx.query_typed_one(ATTACH, &[]).await.map_err(refused)?;
    if options.dry_run {
        tx.rollback().await.op(OP)?;
    } else {
        tx.commit().await.op(OP)?;
        report.committed = true;
        tracing::info!(
            queues = report.queues,
            consumers = report.consumers,
            "moved the pgq extension onto the pgq-rs schema"
        );
    }
    Ok(report)
}

/// A refusal of `from_extension.sql` as [`Error::MigrationRefused`], else [`Error::Db`].
fn refused(source: tokio_postgres::Error) -> Error {
    let refusal = source
        .as_db_error()
        .and_then(|db| Refusal::from_sql_state(db.code().code()).map(|r| (r, db)));
    match refusal {
        Some((refusal, db)) => {
            let problem = match db.detail() {
                Some(detail) => format!("{}: {detail}", db.message()),
                None => db.message().to_owned(),
            };
            let hint = match refusal {
                Refusal::DependentObjects => {
                    "drop or change those objects (they depend on the pgq extension), then \
                     migrate again"
                        .to_owned()
                }
                _ => db.hint().unwrap_or_default().to_owned(),
            };
            Error::MigrationRefused {
                refusal,
                problem,
                hint,
            }
        }
        None => Error::Db {
            op: "moving from the pgq extension",
            source,
        },
    }
}
