//! A parallel PostgreSQL base backup over ordinary SQL connections.
//!
//! [`backup`] copies a running cluster with nothing but SQL: a temporary physical
//! replication slot keeps the WAL, `pg_backup_start`/`pg_backup_stop` bracket the copy, one
//! recursive query lists the files, several connections fetch them in chunks with
//! `pg_read_binary_file`, and WAL segments are fetched while the backup runs. The copy gets a
//! `backup_manifest` that `pg_verifybackup` accepts; it is written last, so a copy without it
//! is incomplete. [`verify`] checks a copy against its manifest.
//!
//! Options ([`BackupOptions`]): parallel jobs and chunk size, fast or spread checkpoint,
//! `standby` (permanent slot, `standby.signal`, `primary_conninfo`, `primary_slot_name`),
//! `resume` (chunks logged by an interrupted run are kept once the source confirms their
//! SHA-256), the manifest's checksums ([`ManifestChecksum`]: CRC-32C by default, SHA-2 or
//! none, as `pg_basebackup --manifest-checksums`), `compress` (zstd; [`restore`] unpacks), `max_rate`, `tablespace_mapping`.
//! A source whose configuration lives outside its data directory (Debian) gets it fetched
//! with `pg_read_file`, its path settings commented out, or a minimal one written.
//!
//! A role other than a superuser needs EXECUTE on `pg_backup_start(text, boolean)`,
//! `pg_backup_stop(boolean)`, `pg_ls_dir(text, boolean, boolean)`,
//! `pg_stat_file(text, boolean)` and `pg_read_binary_file(text, bigint, bigint, boolean)`,
//! the REPLICATION attribute, and `pg_read_server_files` only when the configuration files
//! live outside the data directory.
//!
//! The source is not trusted with the client's files: a file name that could point outside
//! the copy is refused ([`Error::UnsafeName`]), nothing is written through a symbolic link
//! the backup did not make, compression and [`restore`] never follow links
//! ([`Error::UnsafeEntry`]), `force` and `resume` act only on a data directory or an earlier
//! copy ([`Error::NotACopy`]), and `primary_conninfo` never holds a password.

mod backup;
mod checksum;
mod compress;
mod config;
mod copy;
mod dest;
mod error;
mod independent;
mod listing;
mod lsn;
mod manifest;
mod options;
mod standby;
mod throttle;
mod wal;

pub use backup::{backup, BackupSummary};
pub use checksum::{ManifestChecksum, UnknownChecksum};
pub use compress::restore;
pub use error::{Error, Result};
pub use independent::{make_independent, settle, Server, PRIVATE_DIR};
pub use lsn::Lsn;
pub use manifest::{verify, Problem, VerifyReport, MANIFEST};
pub use options::{BackupOptions, Checkpoint, Progress, StopHook, DEFAULT_CHUNK_SIZE};
pub use throttle::parse_rate;

/// Runs `worker` on `threads` threads at once (at least one) until each returns; the first
/// error is returned, a panic is passed on.
fn on_threads(threads: usize, worker: impl Fn() -> Result<()> + Sync) -> Result<()> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(&worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}
