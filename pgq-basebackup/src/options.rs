//! What a backup is asked to do.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pgq_core::Dsn;

use crate::checksum::ManifestChecksum;

/// Default chunk size of one `pg_read_binary_file` call: 8 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * 1024 * 1024;

/// How the checkpoint that starts the backup is taken (`pg_backup_start(label, fast)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// An immediate checkpoint: the backup starts at once, with an I/O burst.
    #[default]
    Fast,
    /// The next checkpoint, spread as `checkpoint_completion_target` says.
    Spread,
}

/// Called once the files are copied, just before `pg_backup_stop`; the backup waits for it.
pub type StopHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Everything [`crate::backup`] needs.
pub struct BackupOptions {
    /// The source cluster; any database of it.
    pub dsn: Dsn,
    /// Where the copy goes (created when missing).
    pub dest: PathBuf,
    /// Connections that fetch files in parallel (at least 1).
    pub jobs: usize,
    /// How the starting checkpoint is taken.
    pub checkpoint: Checkpoint,
    /// Empty a non-empty destination first instead of refusing it; only a data directory no
    /// server runs on, or an earlier copy made by this crate, is emptied (and a mapped
    /// tablespace's new directory only when it holds nothing but `PG_*` directories).
    pub force: bool,
    /// Bytes per `pg_read_binary_file` call.
    pub chunk_size: u64,
    /// The per-file checksums of `backup_manifest` (CRC-32C unless asked otherwise, as
    /// `pg_basebackup`). A resumed backup checks kept chunks with SHA-256 whatever this is.
    pub manifest_checksum: ManifestChecksum,
    /// The label in `backup_label`.
    pub label: String,
    /// Runs just before `pg_backup_stop` (tests stop their write load here).
    pub before_stop: Option<StopHook>,
    /// Make the copy a streaming standby of the source: a permanent slot, `standby.signal`,
    /// `primary_conninfo` and `primary_slot_name`. `primary_conninfo` keeps the DSN's
    /// connection and TLS settings as given and holds no password: one from a password file
    /// becomes `passfile=`, one given in the DSN is left out
    /// ([`crate::BackupSummary::password_left_out`]).
    pub standby: bool,
    /// The replication slot's name (default `pgq_basebackup_<pid>`).
    pub slot: Option<String>,
    /// Upper bound for file data fetched, in bytes per second (WAL is not limited).
    pub max_rate: Option<u64>,
    /// Continue an interrupted backup in `dest`: chunks already there are kept when the
    /// source confirms their SHA-256, the rest is fetched again under a new backup start.
    /// `dest` must be an earlier copy made by this crate (or a data directory).
    pub resume: bool,
    /// Store every file zstd-compressed at this level (`restore` unpacks the copy); not with
    /// `tablespace_mapping`.
    pub compress: Option<i32>,
    /// Tablespaces to put elsewhere: `(old location on the source, new directory)`; the copy
    /// gets a `pg_tblspc/<oid>` symbolic link to the new directory. Tablespaces not mapped
    /// are stored inside the copy, as in-place directories under `pg_tblspc` (with
    /// `allow_in_place_tablespaces = on` in its `postgresql.auto.conf`), so a copy on the
    /// source's host never writes into the source's tablespaces.
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
    /// Byte counters a caller can watch (e.g. to draw a progress bar).
    pub progress: Arc<Progress>,
}

/// Byte counters of a running backup; all loads are relaxed snapshots.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    reused: AtomicU64,
}

impl Progress {
    /// Bytes of file data to copy, once the files are listed (0 before).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes of file data copied or confirmed so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes a resumed backup kept from the interrupted one after the source confirmed them.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    pub(crate) fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_reused(&self, bytes: u64) {
        self.reused.fetch_add(bytes, Ordering::Relaxed);
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl BackupOptions {
    /// Options with the defaults: 1 job, fast checkpoint, 8 MiB chunks, CRC-32C manifest
    /// checksums, a temporary slot, no rate limit, no force, no resume.
    pub fn new(dsn: Dsn, dest: impl Into<PathBuf>) -> BackupOptions {
        BackupOptions {
            dsn,
            dest: dest.into(),
            jobs: 1,
            checkpoint: Checkpoint::Fast,
            force: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            manifest_checksum: ManifestChecksum::default(),
            label: "pgq-basebackup".to_owned(),
            before_stop: None,
            standby: false,
            slot: None,
            max_rate: None,
            resume: false,
            compress: None,
            tablespace_mapping: Vec::new(),
            progress: Arc::default(),
        }
    }
}

impl fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupOptions")
            .field("dsn", &self.dsn)
            .field("dest", &self.dest)
            .field("jobs", &self.jobs)
            .field("checkpoint", &self.checkpoint)
            .field("force", &self.force)
            .field("chunk_size", &self.chunk_size)
            .field("manifest_checksum", &self.manifest_checksum)
            .field("label", &self.label)
            .field("before_stop", &self.before_stop.is_some())
            .field("standby", &self.standby)
            .field("slot", &self.slot)
            .field("max_rate", &self.max_rate)
            .field("resume", &self.resume)
            .field("compress", &self.compress)
            .field("tablespace_mapping", &self.tablespace_mapping)
            .finish()
    }
}
