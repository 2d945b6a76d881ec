//! The schema installer: the SQL migrations of `migrations/` embedded at build time, applied in
//! order and recorded in `pgq_rs.migrations`.
//!
//! Each migration runs in a transaction of its own, together with the update of its
//! bookkeeping row (checksum, execution time), so a failed migration leaves nothing behind.
//! A migration a DBA ran with `psql` (see [`migrations_sql`]) is recorded without a checksum;
//! the installer fills it in on its next run.

use std::fmt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::error::{DbContext, Error, Result};

mod from_extension;

pub use from_extension::{migrate_from_extension, ExtensionMigration, MigrationOptions, Refusal};

/// The session advisory lock key that serializes installers (ASCII `pgqrs_in`).
const INSTALL_LOCK_KEY: i64 = 0x7067_7172_735f_696e;

// language=SQL
const LOCK: &str = "SELECT pg_catalog.pg_advisory_lock($1)";

// language=SQL
const UNLOCK: &str = "SELECT pg_catalog.pg_advisory_unlock($1)";

// Function calls instead of operators: this runs on the caller's connection, whose search_path
// a database owner may have pointed at their own `=` ahead of pg_catalog's.
// language=SQL
const PROBE: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension
                WHERE pg_catalog.nameeq(extname, 'pgq')),
       pg_catalog.to_regclass('pgq_rs.migrations') IS NOT NULL";

// Every statement the installer runs in a transaction of its own starts with this.
// language=SQL
const PIN_SEARCH_PATH: &str = "SET LOCAL search_path = pg_catalog, pg_temp";

/// The prelude every migration file starts with (a test checks they do): it refuses a
/// bookkeeping schema somebody else controls (SQLSTATE `PQR03`), then makes the bookkeeping and
/// the installation id. The installer runs it before it reads anything.
const PRELUDE: &str = include_str!("../../migrations/prelude.sql");

// language=SQL
const INSTALLATION_PROBE: &str = "\
SELECT pg_catalog.current_database()::pg_catalog.text,
       pg_catalog.to_regclass('pgq_rs.installation') IS NOT NULL";

// language=SQL
const INSTALLATION_ID: &str = "SELECT id::pg_catalog.text FROM pgq_rs.installation";

// language=SQL
const RECORDED: &str = "SELECT line, version, checksum FROM pgq_rs.migrations";

// language=SQL
const FILL_CHECKSUM: &str = "\
UPDATE pgq_rs.migrations SET checksum = $3
 WHERE line = $1 AND version = $2 AND checksum IS NULL";

// language=SQL
const RECORD: &str = "\
INSERT INTO pgq_rs.migrations (line, version, description, checksum, execution_time_ms)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (line, version)
DO UPDATE SET checksum = excluded.checksum, execution_time_ms = excluded.execution_time_ms";

/// A line of migrations: one SQL schema, versioned on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Line {
    /// The queue itself: schema `pgq`.
    Pgq,
    /// PGQ's change-capture triggers `pgq.logutriga()`, `pgq.sqltriga()` and `pgq.jsontriga()`
    /// in PL/pgSQL, in schema `pgq` (needs [`Line::Pgq`]).
    ///
    /// For the pgq-rs schema only: where the original `pgq` extension is installed, which has
    /// its own triggers in C, [`install`] skips this line like [`Line::Pgq`] (the report says
    /// so), and its SQL run with `psql` fails with SQLSTATE `PQR02`.
    PgqTriggers,
    /// Cooperative consumers: schema `pgq_coop` (needs [`Line::Pgq`] or the `pgq` extension).
    PgqCoop,
    /// Batch tracking in the target database of remote consumers: schema `pgq_ext`.
    PgqExt,
    /// The table replicator's bookkeeping (the `londiste` crate), on provider and subscriber:
    /// schema `londiste_rs` (not `londiste`, which PGQ's maintenance probes for londiste3).
    Londiste,
}

impl Line {
    /// Every line, in installation order.
    pub const ALL: [Line; 5] = [
        Line::Pgq,
        Line::PgqTriggers,
        Line::PgqCoop,
        Line::PgqExt,
        Line::Londiste,
    ];

    /// The line's name: its folder under `migrations/` and its `line` in `pgq_rs.migrations`.
    pub fn name(self) -> &'static str {
        match self {
            Line::Pgq => "pgq",
            Line::PgqTriggers => "pgq_triggers",
            Line::PgqCoop => "pgq_coop",
            Line::PgqExt => "pgq_ext",
            Line::Londiste => "londiste_rs",
        }
    }

    /// The newest version of the line this build ships.
    pub fn latest_version(self) -> i32 {
        latest(MIGRATIONS, self)
    }

    /// Whether the original `pgq` extension, when installed, provides what the line would
    /// install (so the line is skipped).
    fn provided_by_extension(self) -> bool {
        matches!(self, Line::Pgq | Line::PgqTriggers)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which PGQ a database has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The pgq-rs schema, installed by migrations (recorded in `pgq_rs.migrations`).
    Ours,
    /// The original PGQ extension (`CREATE EXTENSION pgq`).
    Extension,
    /// Neither.
    None,
}

/// What [`install`] did, line by line, in installation order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstallReport {
    /// One entry per requested line.
    pub lines: Vec<LineReport>,
}

impl InstallReport {
    /// Whether the run changed nothing (no migration applied, no checksum recorded).
    pub fn is_noop(&self) -> bool {
        self.lines
            .iter()
            .all(|l| l.applied.is_empty() && l.checksums_recorded.is_empty())
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

/// What [`install`] did to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LineReport {
    /// The line.
    pub line: Line,
    /// The version recorded before the run; `None` when the line was not installed.
    pub found: Option<i32>,
    /// The migrations applied, in order.
    pub applied: Vec<AppliedMigration>,
    /// Versions installed by `psql` whose checksum this run recorded.
    pub checksums_recorded: Vec<i32>,
    /// The line was skipped because the original `pgq` extension provides it
    /// ([`Line::Pgq`] and [`Line::PgqTriggers`]).
    pub provided_by_extension: bool,
    /// The line was installed fresh from its current file (`migrations/current/`), which made
    /// every version in `applied` at once.
    pub current: bool,
}

impl fmt::Display for LineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.line;
        if self.provided_by_extension {
            return write!(f, "{line}: provided by the pgq extension, skipped");
        }
        for version in &self.checksums_recorded {
            writeln!(f, "{line}: recorded the checksum of version {version}")?;
        }
        if self.applied.is_empty() {
            return match self.found {
                Some(v) => write!(f, "{line}: up to date at version {v}"),
                None => write!(f, "{line}: not installed, nothing to apply"),
            };
        }
        if let (true, Some(first), Some(last)) =
            (self.current, self.applied.first(), self.applied.last())
        {
            return write!(
                f,
                "{line}: applied versions {} to {} (the current schema) in {} ms",
                first.version,
                last.version,
                last.elapsed.as_millis()
            );
        }
        for (i, m) in self.applied.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{line}: applied {:04}_{} in {} ms",
                m.version,
                m.description,
                m.elapsed.as_millis()
            )?;
        }
        Ok(())
    }
}

/// One migration [`install`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedMigration {
    /// Its version.
    pub version: i32,
    /// Its description (the file name without the number).
    pub description: &'static str,
    /// How long it ran.
    pub elapsed: Duration,
}

/// One embedded migration file.
#[derive(Debug)]
struct Migration {
    line: Line,
    version: i32,
    description: &'static str,
    /// Path under `migrations/`.
    file: &'static str,
    sql: &'static str,
    /// SHA-256 (hex) of earlier texts of this file that installations may have recorded: files
    /// get a new prelude in place when the bookkeeping must be checked before it is touched,
    /// and nothing else of them changes.
    earlier: &'static [&'static str],
}

impl Migration {
    fn checksum(&self) -> Vec<u8> {
        Sha256::digest(self.sql.as_bytes()).to_vec()
    }

    /// Whether `recorded` is this file's checksum, or one of its earlier texts'.
    fn accepts(&self, recorded: &[u8]) -> bool {
        self.checksum() == recorded || self.earlier.iter().any(|hex| hex_eq(hex, recorded))
    }
}

/// Whether `hex` (lower-case) spells `bytes`.
fn hex_eq(hex: &str, bytes: &[u8]) -> bool {
    hex.len() == bytes.len() * 2
        && bytes
            .iter()
            .zip(hex.as_bytes().chunks(2))
            .all(|(b, pair)| format!("{b:02x}").as_bytes() == pair)
}

macro_rules! migration {
    ($line:ident, $file:literal, $version:literal, $description:literal) => {
        migration!($line, $file, $version, $description, [])
    };
    ($line:ident, $file:literal, $version:literal, $description:literal, [$($earlier:literal),*]) => {
        Migration {
            line: Line::$line,
            version: $version,
            description: $description,
            file: $file,
            sql: include_str!(concat!("../../migrations/", $file)),
            earlier: &[$($earlier),*],
        }
    };
}

/// Every migration this build ships, per line in version order.
static MIGRATIONS: &[Migration] = &[
    migration!(
        Pgq,
        "pgq/0001_initial.sql",
        1,
        "initial",
        ["200e0e37a2a941ecb3b847962917d35c15845527deb33cb6eb4e3ba438587a4a"]
    ),
    migration!(
        Pgq,
        "pgq/0002_tick_wakeups_and_catchup.sql",
        2,
        "tick_wakeups_and_catchup",
        ["315e74753368a79c0eb5fdfa87363a2f16f2f41108b7344f1caddcdb6367ac87"]
    ),
    migration!(
        Pgq,
        "pgq/0003_failed_events.sql",
        3,
        "failed_events",
        ["6eb4ec3fd1605665a95f67ab48adb187064b8ba428419c0c3d3cfd0088fe2b73"]
    ),
    migration!(
        Pgq,
        "pgq/0004_catchup_bounded_scan.sql",
        4,
        "catchup_bounded_scan",
        ["bae7723692c5c3acd60ad51765ce4e3140b7b8c404ef972d14b91d8184d699d6"]
    ),
    migration!(Pgq, "pgq/0005_trust.sql", 5, "trust"),
    migration!(Pgq, "pgq/0006_bounded_batches.sql", 6, "bounded_batches"),
    migration!(Pgq, "pgq/0007_keyed_insert.sql", 7, "keyed_insert"),
    migration!(Pgq, "pgq/0008_serial_ticks.sql", 8, "serial_ticks"),
    migration!(
        PgqTriggers,
        "pgq_triggers/0001_initial.sql",
        1,
        "initial",
        ["122283c16d1242fc3cb88417f1d8a15dabefc74ff544e66f315bd7a05d2f1d30"]
    ),
    migration!(PgqTriggers, "pgq_triggers/0002_trust.sql", 2, "trust"),
    migration!(
        PgqTriggers,
        "pgq_triggers/0003_generated_columns.sql",
        3,
        "generated_columns"
    ),
    migration!(
        PgqTriggers,
        "pgq_triggers/0004_column_query.sql",
        4,
        "column_query"
    ),
    migration!(
        PgqCoop,
        "pgq_coop/0001_initial.sql",
        1,
        "initial",
        ["736905a69d08d3aaef366abdb35bccfb9299a6ca8378416221093965707b50bf"]
    ),
    migration!(PgqCoop, "pgq_coop/0002_trust.sql", 2, "trust"),
    migration!(
        PgqExt,
        "pgq_ext/0001_initial.sql",
        1,
        "initial",
        ["4b053f24f092c97f89df75c8b2aebe74096cf7460ff9900746123c30e66ba4ab"]
    ),
    migration!(PgqExt, "pgq_ext/0002_trust.sql", 2, "trust"),
    migration!(
        Londiste,
        "londiste_rs/0001_initial.sql",
        1,
        "initial",
        ["79ccb2371be8ef090d6fa2867e3aae6d250909517d37d7d3f66a3d1e13c36169"]
    ),
    migration!(Londiste, "londiste_rs/0002_seed.sql", 2, "seed"),
];

/// A line's current file: what its numbered files up to `version` make, in one piece. A fresh
/// installation runs it instead of the numbered files; it records every version it contains.
#[derive(Debug)]
struct CurrentFile {
    line: Line,
    version: i32,
    /// Path under `migrations/`.
    file: &'static str,
    sql: &'static str,
}

macro_rules! current {
    ($line:ident, $file:literal, $version:literal) => {
        CurrentFile {
            line: Line::$line,
            version: $version,
            file: $file,
            sql: include_str!(concat!("../../migrations/", $file)),
        }
    };
}

/// The current file of each line that has more than one version (a line of one version is its
/// own current file). A test installs every line both ways and compares the databases.
static CURRENT: &[CurrentFile] = &[
    current!(Pgq, "current/pgq.sql", 8),
    current!(PgqTriggers, "current/pgq_triggers.sql", 4),
    current!(PgqCoop, "current/pgq_coop.sql", 2),
    current!(PgqExt, "current/pgq_ext.sql", 2),
    current!(Londiste, "current/londiste_rs.sql", 2),
];

fn latest(migrations: &[Migration], line: Line) -> i32 {
    migrations
        .iter()
        .filter(|m| m.line == line)
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// The requested lines, deduplicated, in installation order.
fn canonical(lines: &[Line]) -> Vec<Line> {
    Line::ALL
        .into_iter()
        .filter(|l| lines.contains(l))
        .collect()
}

/// What the database holds.
struct State {
    extension: bool,
    /// `(line, version, checksum)` rows of `pgq_rs.migrations`.
    recorded: Vec<(String, i32, Option<Vec<u8>>)>,
}

impl State {
    async fn read(client: &impl GenericClient) -> Result<State> {
        const OP: &str = "reading the installed schema versions";
        let probe = client.query_typed_one(PROBE, &[]).await.op(OP)?;
        let extension: bool = probe.try_get(0).op(OP)?;
        let mut recorded = Vec::new();
        if probe.try_get::<_, bool>(1).op(OP)? {
            for row in client.query_typed(RECORDED, &[]).await.op(OP)? {
                recorded.push((
                    row.try_get(0).op(OP)?,
                    row.try_get(1).op(OP)?,
                    row.try_get(2).op(OP)?,
                ));
            }
        }
        Ok(State {
            extension,
            recorded,
        })
    }

    fn versions(&self, line: Line) -> impl Iterator<Item = (i32, Option<&[u8]>)> + '_ {
        self.recorded
            .iter()
            .filter(move |(l, _, _)| l == line.name())
            .map(|(_, v, c)| (*v, c.as_deref()))
    }

    fn found(&self, line: Line) -> Option<i32> {
        self.versions(line).map(|(v, _)| v).max()
    }

    /// Checks what is recorded for `line` against the embedded migrations.
    fn verify(&self, migrations: &[Migration], line: Line) -> Result<()> {
        let expected = latest(migrations, line);
        if let Some(found) = self.found(line).filter(|&v| v > expected) {
            return Err(Error::SchemaTooNew {
                line: line.name(),
                found,
                expected,
            });
        }
        for (version, checksum) in self.versions(line) {
            let embedded = migrations
                .iter()
                .find(|m| m.line == line && m.version == version);
            if let (Some(m), Some(checksum)) = (embedded, checksum) {
                if !m.accepts(checksum) {
                    return Err(Error::MigrationModified {
                        line: line.name(),
                        version,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Installs or upgrades the given lines: applies every embedded migration newer than what the
/// database records, in installation order ([`Line::ALL`]) whatever the order of `lines`, and
/// records checksums of migrations installed with `psql`. Running it again changes nothing.
///
/// A session advisory lock on `client` serializes concurrent installers; it is released before
/// returning, also on error. [`Line::Pgq`] and [`Line::PgqTriggers`] are skipped when the
/// original `pgq` extension is installed (the report says so), so the other lines can be
/// installed next to it.
///
/// # Errors
///
/// Nothing is applied when one of these is found first:
/// [`Error::SchemaTooNew`] when the database records a newer version than this build ships;
/// [`Error::MigrationModified`] when an installed migration's checksum differs from the
/// embedded file; [`Error::SchemaOutdated`] (for `pgq`) when [`Line::PgqCoop`] or
/// [`Line::PgqTriggers`] is requested without [`Line::Pgq`] being requested, installed, or
/// provided by the extension.
/// [`Error::MigrationFailed`] when a migration's SQL fails (that migration is rolled back,
/// earlier ones stay); [`Error::Db`] for other statements.
pub async fn install(client: &mut Client, lines: &[Line]) -> Result<InstallReport> {
    install_with(client, lines, MIGRATIONS, CURRENT).await
}

async fn install_with(
    client: &mut Client,
    lines: &[Line],
    migrations: &[Migration],
    currents: &[CurrentFile],
) -> Result<InstallReport> {
    client
        .query_typed_one(LOCK, &[(&INSTALL_LOCK_KEY, Type::INT8)])
        .await
        .op("taking the installer lock")?;
    let report = install_locked(client, lines, migrations, currents).await;
    let unlocked = client
        .query_typed_one(UNLOCK, &[(&INSTALL_LOCK_KEY, Type::INT8)])
        .await
        .op("releasing the installer lock");
    let report = report?;
    unlocked?;
    Ok(report)
}

async fn install_locked(
    client: &mut Client,
    lines: &[Line],
    migrations: &[Migration],
    currents: &[CurrentFile],
) -> Result<InstallReport> {
    let lines = canonical(lines);
    // The prelude's bookkeeping commits only when the request can be carried out.
    let tx = client
        .transaction()
        .await
        .op("checking and making the bookkeeping")?;
    run_prelude(&tx).await?;
    let state = State::read(&tx).await?;
    for &line in &lines {
        if line.provided_by_extension() && state.extension {
            continue;
        }
        state.verify(migrations, line)?;
    }
    if (lines.contains(&Line::PgqCoop) || lines.contains(&Line::PgqTriggers))
        && !lines.contains(&Line::Pgq)
        && !state.extension
        && state.found(Line::Pgq).is_none()
    {
        return Err(Error::SchemaOutdated {
            line: Line::Pgq.name(),
            found: None,
            expected: latest(migrations, Line::Pgq),
        });
    }
    tx.commit()
        .await
        .op("checking and making the bookkeeping")?;

    let mut report = InstallReport { lines: Vec::new() };
    for line in lines {
        let found = state.found(line);
        let mut line_report = LineReport {
            line,
            found,
            applied: Vec::new(),
            checksums_recorded: Vec::new(),
            provided_by_extension: line.provided_by_extension() && state.extension,
            current: false,
        };
        if !line_report.provided_by_extension {
            for (version, checksum) in state.versions(line) {
                let embedded = migrations
                    .iter()
                    .find(|m| m.line == line && m.version == version);
                if let (Some(m), None) = (embedded, checksum) {
                    fill_checksum(client, m).await?;
                    tracing::info!(
                        line = line.name(),
                        version,
                        "recorded the checksum of a migration installed without it"
                    );
                    line_report.checksums_recorded.push(version);
                }
            }
            line_report.checksums_recorded.sort_unstable();
            let pending: Vec<&Migration> = migrations
                .iter()
                .filter(|m| m.line == line && Some(m.version) > found)
                .collect();
            let current = currents
                .iter()
                .find(|c| c.line == line && c.version == latest(migrations, line));
            match current {
                Some(current) if found.is_none() => {
                    line_report.applied = apply_current(client, current, &pending).await?;
                    line_report.current = true;
                }
                _ => {
                    for m in pending {
                        line_report.applied.push(apply(client, m).await?);
                    }
                }
            }
        }
        report.lines.push(line_report);
    }
    Ok(report)
}

/// Runs [`PRELUDE`] in `tx`: checks that nobody else controls the bookkeeping, then makes it
/// (and the installation id) when missing.
async fn run_prelude(tx: &Transaction<'_>) -> Result<()> {
    tx.batch_execute(PRELUDE)
        .await
        .map_err(|source| match source.as_db_error() {
            Some(db) if db.code().code() == "PQR03" => Error::UntrustedInstallation {
                problem: db.message().to_owned(),
                hint: db.hint().unwrap_or_default().to_owned(),
            },
            _ => Error::Db {
                op: "checking and making the bookkeeping",
                source,
            },
        })
}

async fn fill_checksum(client: &mut Client, m: &Migration) -> Result<()> {
    const OP: &str = "recording a migration checksum";
    let tx = client.transaction().await.op(OP)?;
    tx.batch_execute(PIN_SEARCH_PATH).await.op(OP)?;
    tx.execute_typed(
        FILL_CHECKSUM,
        &[
            (&m.line.name(), Type::TEXT),
            (&m.version, Type::INT4),
            (&m.checksum(), Type::BYTEA),
        ],
    )
    .await
    .op(OP)?;
    tx.commit().await.op(OP)
}

/// Runs one migration and records it, in one transaction.
async fn apply(client: &mut Client, m: &Migration) -> Result<AppliedMigration> {
    let mut applied = run_recorded(client, m.line, m.version, m.sql, &[m]).await?;
    tracing::info!(
        line = m.line.name(),
        version = m.version,
        file = m.file,
        "applied migration"
    );
    Ok(applied.remove(0))
}

/// Runs a line's current file, which makes what `numbered` (its versions, in order) make, and
/// records each of them, in one transaction.
async fn apply_current(
    client: &mut Client,
    current: &CurrentFile,
    numbered: &[&Migration],
) -> Result<Vec<AppliedMigration>> {
    let applied =
        run_recorded(client, current.line, current.version, current.sql, numbered).await?;
    tracing::info!(
        line = current.line.name(),
        version = current.version,
        file = current.file,
        "installed the line's current schema"
    );
    Ok(applied)
}

/// Runs `sql` in a transaction of its own with search_path and standard_conforming_strings
/// pinned, then records `recorded` (each with its file's checksum and the time `sql` took) and
/// commits. A failing `sql` is [`Error::MigrationFailed`] for `line`/`version`.
async fn run_recorded(
    client: &mut Client,
    line: Line,
    version: i32,
    sql: &str,
    recorded: &[&Migration],
) -> Result<Vec<AppliedMigration>> {
    let tx = client
        .transaction()
        .await
        .op("starting a migration transaction")?;
    let applied = run_recorded_in(&tx, line, version, sql, recorded).await?;
    tx.commit().await.op("committing a migration")?;
    Ok(applied)
}

/// [`run_recorded`] inside the caller's transaction `tx`, which commits it.
async fn run_recorded_in(
    tx: &Transaction<'_>,
    line: Line,
    version: i32,
    sql: &str,
    recorded: &[&Migration],
) -> Result<Vec<AppliedMigration>> {
    // The files are written for standard strings (PostgreSQL 19 knows no other), and a database
    // may default its sessions to `off`; SET LOCAL ends with the transaction.
    tx.batch_execute("SET LOCAL standard_conforming_strings = on")
        .await
        .op("pinning standard_conforming_strings for a migration")?;
    let started = Instant::now();
    tx.batch_execute(PIN_SEARCH_PATH)
        .await
        .op("pinning search_path for a migration")?;
    tx.batch_execute(sql)
        .await
        .map_err(|source| Error::MigrationFailed {
            line: line.name(),
            version,
            source,
        })?;
    let elapsed = started.elapsed();
    let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    let mut applied = Vec::with_capacity(recorded.len());
    for m in recorded {
        tx.execute_typed(
            RECORD,
            &[
                (&m.line.name(), Type::TEXT),
                (&m.version, Type::INT4),
                (&m.description, Type::TEXT),
                (&m.checksum(), Type::BYTEA),
                (&elapsed_ms, Type::INT8),
            ],
        )
        .await
        .op("recording a migration")?;
        applied.push(AppliedMigration {
            version: m.version,
            description: m.description,
            elapsed,
        });
    }
    Ok(applied)
}

/// Checks that the database has every given line at this build's newest version, untouched
/// ([`Line::Pgq`] and [`Line::PgqTriggers`] are satisfied by the original `pgq` extension).
/// Read-only.
///
/// # Errors
///
/// [`Error::SchemaOutdated`] when a line is missing or older; [`Error::SchemaTooNew`];
/// [`Error::MigrationModified`]; [`Error::Db`].
pub async fn check(client: &impl GenericClient, lines: &[Line]) -> Result<()> {
    check_with(client, lines, MIGRATIONS).await
}

async fn check_with(
    client: &impl GenericClient,
    lines: &[Line],
    migrations: &[Migration],
) -> Result<()> {
    let state = State::read(client).await?;
    for line in canonical(lines) {
        if line.provided_by_extension() && state.extension {
            continue;
        }
        state.verify(migrations, line)?;
        let expected = latest(migrations, line);
        let found = state.found(line);
        if !matches!(found, Some(v) if v >= expected) {
            return Err(Error::SchemaOutdated {
                line: line.name(),
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// The SQL of the line's migrations newer than `from_version` (the version the database is
/// at; 0 for all), for a DBA to review and run with
/// `psql -v ON_ERROR_STOP=1 -f FILE`. Each migration is wrapped in its own `BEGIN`/`COMMIT`.
/// Migrations run this way are recorded without a checksum, which [`install`] fills in later.
pub fn migrations_sql(line: Line, from_version: i32) -> String {
    match CURRENT
        .iter()
        .find(|c| c.line == line && c.version == line.latest_version())
    {
        Some(current) if from_version == 0 => wrapped(current.file, current.sql),
        _ => migrations_sql_with(MIGRATIONS, line, from_version),
    }
}

fn migrations_sql_with(migrations: &[Migration], line: Line, from_version: i32) -> String {
    migrations
        .iter()
        .filter(|m| m.line == line && m.version > from_version)
        .map(|m| wrapped(m.file, m.sql))
        .collect()
}

/// A file as `psql` runs it: in a transaction of its own, with its name on top.
fn wrapped(file: &str, sql: &str) -> String {
    let newline = if sql.ends_with('\n') { "" } else { "\n" };
    format!("-- pgq-rs migration {file}\nBEGIN;\n{sql}{newline}COMMIT;\n\n")
}

/// The id a database's pgq-rs installation made for itself (a UUID in `pgq_rs.installation`,
/// kept in its text form). Remote consumers key their batch tracking in a target database with
/// their provider's id (never `system_identifier`, which physical standbys and seeded copies
/// share); a copy seeded from a database, or one restored from an older backup, must make
/// itself a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstallationId(String);

impl InstallationId {
    /// An id from a UUID's text form (as `gen_random_uuid()::text` gives it): the one a
    /// database is to take, e.g. a copy being seeded. `None` for anything else.
    pub fn parse(text: &str) -> Option<InstallationId> {
        let groups: Vec<&str> = text.split('-').collect();
        let shape = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
        let hex = groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        (shape && hex).then(|| InstallationId(text.to_owned()))
    }

    /// The UUID's text form, e.g. `0f3c2a9e-5b1d-4c7e-9a8b-2d6e4f1a7c30`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the database's installation id, made when the first pgq-rs line was installed there.
///
/// # Errors
///
/// [`Error::NoInstallationId`] when the database has none (no pgq-rs line installed, e.g. only
/// the original `pgq` extension); [`Error::Db`].
pub async fn installation_id(client: &impl GenericClient) -> Result<InstallationId> {
    const OP: &str = "reading the installation id";
    let probe = client
        .query_typed_one(INSTALLATION_PROBE, &[])
        .await
        .op(OP)?;
    let db: String = probe.try_get(0).op(OP)?;
    let id = if probe.try_get::<_, bool>(1).op(OP)? {
        client
            .query_typed_opt(INSTALLATION_ID, &[])
            .await
            .op(OP)?
            .map(|row| row.try_get::<_, String>(0))
            .transpose()
            .op(OP)?
    } else {
        None
    };
    id.map(InstallationId).ok_or(Error::NoInstallationId { db })
}

/// Tells which PGQ the database has: the original extension (checked first), the pgq-rs
/// schema (a `pgq` line recorded in `pgq_rs.migrations`), or none.
///
/// # Errors
///
/// [`Error::Db`].
pub async fn flavor(client: &impl GenericClient) -> Result<Flavor> {
    let state = State::read(client).await?;
    Ok(if state.extension {
        Flavor::Extension
    } else if state.found(Line::Pgq).is_some() {
        Flavor::Ours
    } else {
        Flavor::None
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use pgq_testkit::TestDb;

    use super::*;

    /// A migration following the conventions (prelude, guard, self-record) around `body`.
    fn fake(line: Line, version: i32, body: &str) -> Migration {
        let name = line.name();
        let sql = format!(
            "{PRELUDE}
DO $guard$ BEGIN
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = '{name}' AND version >= {version}) THEN
        RAISE EXCEPTION 'already installed' USING ERRCODE = 'PQR01';
    END IF;
END $guard$;
{body}
INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('{name}', {version}, 'fake');
"
        );
        Migration {
            line,
            version,
            description: "fake",
            file: "fake.sql",
            sql: Box::leak(sql.into_boxed_str()),
            earlier: &[],
        }
    }

    fn table(line: Line, version: i32) -> Migration {
        fake(
            line,
            version,
            &format!("CREATE TABLE public.t_{}_{version} ();", line.name()),
        )
    }

    async fn recorded(client: &Client) -> anyhow::Result<Vec<(String, i32, bool, bool)>> {
        Ok(client
            .query(
                "SELECT line, version, checksum IS NOT NULL, execution_time_ms IS NOT NULL
                   FROM pgq_rs.migrations ORDER BY installed_on, line, version",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    async fn lock_is_free(db: &TestDb) -> anyhow::Result<bool> {
        let other = db.client().await?;
        let row = other
            .query_one(
                "SELECT pg_try_advisory_lock($1), pg_advisory_unlock_all()",
                &[&INSTALL_LOCK_KEY],
            )
            .await?;
        Ok(row.get(0))
    }

    #[test]
    fn embedded_list_matches_directory() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        for line in Line::ALL {
            let mut on_disk: Vec<String> = std::fs::read_dir(root.join(line.name()))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .map(|f| format!("{}/{f}", line.name()))
                .collect();
            on_disk.sort();
            let embedded: Vec<String> = MIGRATIONS
                .iter()
                .filter(|m| m.line == line)
                .map(|m| m.file.to_owned())
                .collect();
            assert_eq!(embedded, on_disk, "line {line}");
            let versions: Vec<i32> = MIGRATIONS
                .iter()
                .filter(|m| m.line == line)
                .map(|m| m.version)
                .collect();
            assert_eq!(
                versions,
                (1..=line.latest_version()).collect::<Vec<_>>(),
                "line {line}"
            );
        }
        for m in MIGRATIONS {
            assert_eq!(
                m.file,
                format!("{}/{:04}_{}.sql", m.line.name(), m.version, m.description)
            );
        }
        let mut current_on_disk: Vec<String> = std::fs::read_dir(root.join("current"))
            .unwrap()
            .map(|e| format!("current/{}", e.unwrap().file_name().into_string().unwrap()))
            .collect();
        current_on_disk.sort();
        let mut embedded: Vec<String> = CURRENT.iter().map(|c| c.file.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, current_on_disk);
        for c in CURRENT {
            assert_eq!(c.file, format!("current/{}.sql", c.line.name()));
            assert_eq!(c.version, c.line.latest_version(), "{} is behind", c.file);
            assert!(c.sql.contains(PRELUDE), "{} must have the prelude", c.file);
        }
    }

    #[test]
    fn every_migration_starts_with_the_prelude() {
        for m in MIGRATIONS {
            let before = m.sql.find(PRELUDE).map(|at| &m.sql[..at]);
            assert!(
                before
                    .is_some_and(|head| head.lines().all(|l| l.is_empty() || l.starts_with("--"))),
                "{} must have the prelude (migrations/prelude.sql) after its header comment",
                m.file
            );
            for hex in m.earlier {
                assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
                assert!(!hex_eq(hex, &m.checksum()), "{}: its own checksum", m.file);
            }
        }
        assert!(hex_eq("00ff10", &[0, 255, 16]) && !hex_eq("00ff", &[0, 255, 16]));
    }

    #[test]
    fn migrations_sql_wraps_each_file() {
        let list = [
            table(Line::Pgq, 1),
            table(Line::Pgq, 2),
            table(Line::PgqExt, 1),
        ];
        let all = migrations_sql_with(&list, Line::Pgq, 0);
        assert_eq!(all.matches("BEGIN;\n").count(), 2);
        assert_eq!(all.matches("COMMIT;\n").count(), 2);
        assert!(all.contains("t_pgq_1") && all.contains("t_pgq_2"));
        assert!(!all.contains("t_pgq_ext_1"));
        let newer = migrations_sql_with(&list, Line::Pgq, 1);
        assert!(!newer.contains("t_pgq_1 ") && newer.contains("t_pgq_2"));
        assert_eq!(migrations_sql_with(&list, Line::Pgq, 2), "");
    }

    #[test]
    fn lines_install_in_canonical_order() {
        assert_eq!(
            canonical(&[Line::PgqExt, Line::Pgq, Line::PgqExt]),
            vec![Line::Pgq, Line::PgqExt]
        );
    }

    #[tokio::test]
    async fn installs_in_order_once_then_upgrades() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        let v1 = [
            table(Line::Pgq, 1),
            table(Line::Pgq, 2),
            table(Line::PgqCoop, 1),
            table(Line::PgqExt, 1),
        ];
        assert_eq!(flavor(&client).await?, Flavor::None);
        assert!(matches!(
            check_with(&client, &[Line::Pgq], &v1).await,
            Err(Error::SchemaOutdated {
                line: "pgq",
                found: None,
                expected: 2
            })
        ));

        let report = install_with(&mut client, &[Line::PgqExt, Line::Pgq], &v1, &[]).await?;
        let applied: Vec<(Line, Vec<i32>)> = report
            .lines
            .iter()
            .map(|l| (l.line, l.applied.iter().map(|a| a.version).collect()))
            .collect();
        assert_eq!(
            applied,
            vec![(Line::Pgq, vec![1, 2]), (Line::PgqExt, vec![1])]
        );
        assert!(!report.is_noop());
        assert!(report.to_string().contains("pgq: applied 0002_fake in"));
        assert_eq!(
            recorded(&client).await?,
            vec![
                ("pgq".to_owned(), 1, true, true),
                ("pgq".to_owned(), 2, true, true),
                ("pgq_ext".to_owned(), 1, true, true),
            ]
        );
        assert_eq!(flavor(&client).await?, Flavor::Ours);
        check_with(&client, &[Line::Pgq, Line::PgqExt], &v1).await?;
        assert!(lock_is_free(&db).await?);

        let again = install_with(&mut client, &[Line::Pgq, Line::PgqExt], &v1, &[]).await?;
        assert!(again.is_noop(), "{again}");
        assert_eq!(again.lines[0].found, Some(2));
        assert_eq!(
            again.to_string(),
            "pgq: up to date at version 2\npgq_ext: up to date at version 1"
        );

        let v2 = [
            table(Line::Pgq, 1),
            table(Line::Pgq, 2),
            table(Line::Pgq, 3),
            table(Line::PgqExt, 1),
        ];
        let upgrade = install_with(&mut client, &[Line::Pgq], &v2, &[]).await?;
        assert_eq!(upgrade.lines.len(), 1);
        assert_eq!(upgrade.lines[0].found, Some(2));
        assert_eq!(upgrade.lines[0].applied.len(), 1);
        assert_eq!(upgrade.lines[0].applied[0].version, 3);

        // The older build refuses the newer database.
        assert!(matches!(
            install_with(&mut client, &[Line::Pgq], &v1, &[]).await,
            Err(Error::SchemaTooNew {
                line: "pgq",
                found: 3,
                expected: 2
            })
        ));
        assert!(matches!(
            check_with(&client, &[Line::Pgq], &v1).await,
            Err(Error::SchemaTooNew { .. })
        ));
        assert!(lock_is_free(&db).await?);
        Ok(())
    }

    #[tokio::test]
    async fn modified_migration_is_refused() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        let list = [table(Line::Pgq, 1), table(Line::Pgq, 2)];
        install_with(&mut client, &[Line::Pgq], &list[..1], &[]).await?;
        client
            .execute(
                "UPDATE pgq_rs.migrations SET checksum = pg_catalog.decode('00', 'hex') WHERE version = 1",
                &[],
            )
            .await?;
        assert!(matches!(
            install_with(&mut client, &[Line::Pgq], &list, &[]).await,
            Err(Error::MigrationModified {
                line: "pgq",
                version: 1
            })
        ));
        assert!(matches!(
            check_with(&client, &[Line::Pgq], &list[..1]).await,
            Err(Error::MigrationModified {
                line: "pgq",
                version: 1
            })
        ));
        // Nothing was applied: version 2 is still missing.
        assert_eq!(recorded(&client).await?.len(), 1);
        assert!(lock_is_free(&db).await?);
        Ok(())
    }

    #[tokio::test]
    async fn psql_installed_migration_gets_its_checksum() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        let list = [table(Line::PgqExt, 1), table(Line::PgqExt, 2)];
        // What `psql -1 -f` of the printed SQL does.
        client
            .batch_execute(&migrations_sql_with(&list[..1], Line::PgqExt, 0))
            .await?;
        assert_eq!(
            recorded(&client).await?,
            vec![("pgq_ext".to_owned(), 1, false, false)]
        );
        let report = install_with(&mut client, &[Line::PgqExt], &list, &[]).await?;
        assert_eq!(report.lines[0].checksums_recorded, vec![1]);
        assert_eq!(report.lines[0].applied.len(), 1);
        let checksum: Vec<u8> = client
            .query_one(
                "SELECT checksum FROM pgq_rs.migrations WHERE version = 1",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(checksum, list[0].checksum());
        assert!(install_with(&mut client, &[Line::PgqExt], &list, &[])
            .await?
            .is_noop());
        Ok(())
    }

    #[tokio::test]
    async fn failed_migration_rolls_back_and_unlocks() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        let list = [
            table(Line::Pgq, 1),
            fake(Line::Pgq, 2, "CREATE TABLE public.half (); SELECT 1/0;"),
        ];
        match install_with(&mut client, &[Line::Pgq], &list, &[]).await {
            Err(Error::MigrationFailed {
                line: "pgq",
                version: 2,
                source,
            }) => assert_eq!(
                source.code(),
                Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
            ),
            other => panic!("expected MigrationFailed, got {other:?}"),
        }
        assert_eq!(
            recorded(&client).await?,
            vec![("pgq".to_owned(), 1, true, true)]
        );
        let half: bool = client
            .query_one("SELECT to_regclass('public.half') IS NOT NULL", &[])
            .await?
            .get(0);
        assert!(!half);
        assert!(lock_is_free(&db).await?);
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_installers_apply_once() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let list = [table(Line::Pgq, 1), table(Line::PgqExt, 1)];
        let (mut a, mut b) = (db.client().await?, db.client().await?);
        let (ra, rb) = tokio::join!(
            install_with(&mut a, &Line::ALL, &list, &[]),
            install_with(&mut b, &Line::ALL, &list, &[])
        );
        let (ra, rb) = (ra?, rb?);
        assert!(ra.is_noop() != rb.is_noop(), "{ra}\n--\n{rb}");
        assert_eq!(recorded(&a).await?.len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn extension_provides_pgq_and_coop_needs_pgq() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        let list = [table(Line::Pgq, 1), table(Line::PgqCoop, 1)];
        assert!(matches!(
            install_with(&mut client, &[Line::PgqCoop], &list, &[]).await,
            Err(Error::SchemaOutdated {
                line: "pgq",
                found: None,
                expected: 1
            })
        ));
        let nothing: bool = client
            .query_one("SELECT to_regnamespace('pgq_rs') IS NULL", &[])
            .await?
            .get(0);
        assert!(nothing);
        assert!(lock_is_free(&db).await?);

        if !pgq_testkit::reference_available(&client).await? {
            return Ok(());
        }
        pgq_testkit::create_reference_extension(&client).await?;
        assert_eq!(flavor(&client).await?, Flavor::Extension);
        let report = install_with(&mut client, &[Line::PgqCoop, Line::Pgq], &list, &[]).await?;
        assert!(report.lines[0].provided_by_extension);
        assert!(report.lines[0].applied.is_empty());
        assert_eq!(report.lines[1].line, Line::PgqCoop);
        assert_eq!(report.lines[1].applied.len(), 1);
        assert!(report
            .to_string()
            .starts_with("pgq: provided by the pgq extension, skipped\n"));
        check_with(&client, &[Line::Pgq, Line::PgqCoop], &list).await?;
        assert_eq!(flavor(&client).await?, Flavor::Extension);
        Ok(())
    }
}
