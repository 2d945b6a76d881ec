//! Taking a base backup: slot, `pg_backup_start`, listing, parallel copy, WAL, stop,
//! manifest.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::copy::{CopyPlan, CHUNK_LOG};
use crate::dest::{self, Dest};
use crate::error::{DbContext as _, Error, IoContext as _, Result};
use crate::lsn::Lsn;
use crate::manifest::{self, WalRange};
use crate::options::{BackupOptions, Checkpoint};
use crate::throttle::Throttle;
use crate::wal::WalFetcher;
use crate::{compress, config, copy, listing, standby};

/// What a finished backup did.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    /// Where the copy is.
    pub dest: PathBuf,
    /// Where recovery of the copy starts.
    pub start_lsn: Lsn,
    /// Where the copy becomes consistent.
    pub stop_lsn: Lsn,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// Data files and directories listed on the source.
    pub entries: usize,
    /// Bytes written into the copy (files and WAL), or kept by a resumed backup.
    pub bytes: u64,
    /// Bytes a resumed backup kept after the source confirmed them.
    pub reused_bytes: u64,
    /// WAL segments fetched.
    pub wal_segments: u64,
    /// Configuration files fetched or written because they live outside the data directory.
    pub config_written: Vec<&'static str>,
    /// The permanent slot a standby copy streams through.
    pub slot: Option<String>,
    /// A standby copy whose connection string gave a password: `primary_conninfo` leaves it
    /// out (no secret is written into the copy), so the standby needs it from a password file
    /// of the user its server runs as.
    pub password_left_out: bool,
    /// Wall-clock time of the whole backup.
    pub elapsed: Duration,
}

/// Functions a role must be able to execute, as `GRANT` names them (`text` qualified too: it
/// is looked up through the `search_path`, `boolean` and `bigint` are keywords).
const FUNCTIONS: &[&str] = &[
    "pg_catalog.pg_backup_start(pg_catalog.text, boolean)",
    "pg_catalog.pg_backup_stop(boolean)",
    "pg_catalog.pg_ls_dir(pg_catalog.text, boolean, boolean)",
    "pg_catalog.pg_stat_file(pg_catalog.text, boolean)",
    "pg_catalog.pg_read_binary_file(pg_catalog.text, bigint, bigint, boolean)",
];

/// Takes a base backup of `opts.dsn` into `opts.dest`.
///
/// A physical replication slot is created first (temporary, unless `opts.standby`), on the
/// session that then runs `pg_backup_start` and stays open until `pg_backup_stop` and the
/// last WAL segment are fetched. `opts.jobs` more connections copy the files; one more fetches WAL. The copy is
/// complete once `backup_manifest` is in place: it is written last, atomically.
///
/// # Errors
///
/// Before connecting: [`Error::InvalidOptions`]; [`Error::DestinationNotEmpty`];
/// [`Error::NotACopy`] when `force` or `resume` is asked for a directory that is neither a
/// data directory nor an earlier copy (nothing is deleted). Then [`Error::Connect`] when the
/// source is unreachable; [`Error::MissingPrivileges`] naming every missing grant;
/// [`Error::UnsafeName`] or [`Error::UnsafeEntry`] when the source lists a name that could put
/// a file outside the copy (nothing is written for the listed files); [`Error::Db`],
/// [`Error::Io`] or [`Error::WalMissing`] while copying. The source aborts the backup
/// by itself when its session ends; the copy is then left without a manifest, and a
/// permanent slot is dropped again.
pub async fn backup(opts: BackupOptions) -> Result<BackupSummary> {
    let started = Instant::now();
    if opts.resume && opts.compress.is_some() {
        return Err(Error::InvalidOptions {
            reason: "resume works on uncompressed copies only".to_owned(),
        });
    }
    if opts.compress.is_some() && !opts.tablespace_mapping.is_empty() {
        return Err(Error::InvalidOptions {
            reason: "a compressed copy keeps its tablespaces inside it; drop \
                     --tablespace-mapping or --compress"
                .to_owned(),
        });
    }
    if opts.force || opts.resume {
        // Everything either may delete is checked before anything is.
        let action = if opts.force {
            "empty (--force)"
        } else {
            "resume in (--resume)"
        };
        dest::check_reusable(&opts.dest, action)?;
        for (_, new) in &opts.tablespace_mapping {
            dest::check_tablespace_reusable(new, action)?;
        }
    }
    prepare_dest(&opts.dest, opts.force, opts.resume)?;
    let control = opts
        .dsn
        .with_pinned_search_path()
        .connect()
        .await
        .map_err(|source| Error::Connect { source })?;
    check_server(&control).await?;
    let slot = opts
        .slot
        .clone()
        .unwrap_or_else(|| format!("pgq_basebackup_{}", std::process::id()));
    control
        .execute(
            "SELECT pg_catalog.pg_create_physical_replication_slot($1, true, $2)",
            &[&slot, &!opts.standby],
        )
        .await
        .op("creating the replication slot")?;
    let standby = opts.standby;
    let dsn = opts.dsn.clone();
    let result = run(opts, control, &slot, started).await;
    if result.is_err() && standby {
        drop_slot(&dsn, &slot).await;
    }
    result
}

/// Everything after the slot exists; `control` holds it (temporary) and the backup.
async fn run(
    mut opts: BackupOptions,
    control: Client,
    slot: &str,
    started: Instant,
) -> Result<BackupSummary> {
    let dest = opts.dest.clone();
    let seg_size = wal_segment_size(&control).await?;
    let fast = opts.checkpoint == Checkpoint::Fast;
    let row = control
        .query_one(
            "SELECT l::pg_catalog.text, pg_catalog.pg_walfile_name(l) \
               FROM pg_catalog.pg_backup_start($1, $2) AS l",
            &[&opts.label, &fast],
        )
        .await
        .op("pg_backup_start")?;
    let start_lsn: Lsn = row.get::<_, String>(0).parse()?;
    let timeline = timeline_of(&row.get::<_, String>(1))?;
    tracing::info!(%start_lsn, timeline, "backup started");

    let wal_bytes = Arc::new(AtomicU64::new(0));
    let wal_dir = dest.join("pg_wal");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(wal_dir.join("archive_status"))
        .io_context(|| format!("creating {}", wal_dir.display()))?;
    // The chunk log marks the copy as this crate's from its first write on, so a later
    // --force or --resume knows it even when this run stops early.
    let log = dest.join(CHUNK_LOG);
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .io_context(|| format!("creating {}", log.display()))?;
    let (stop_tx, stop_rx) = watch::channel(None);
    let fetcher = WalFetcher {
        client: opts
            .dsn
            .with_pinned_search_path()
            .connect()
            .await
            .map_err(|source| Error::Connect { source })?,
        dir: wal_dir,
        seg_size,
        timeline,
        start: start_lsn,
        copied: Arc::clone(&wal_bytes),
    };
    // Dropping the set (on an error) stops the WAL fetcher too.
    let mut wal_task = tokio::task::JoinSet::new();
    wal_task.spawn(fetcher.run(stop_rx));

    let links = map_tablespaces(
        &control,
        &dest,
        &opts.tablespace_mapping,
        opts.force,
        opts.resume,
    )
    .await?;
    let entries = listing::list(&control).await?;
    tracing::info!(entries = entries.len(), elapsed = ?started.elapsed(), "listed");
    let target = Dest::new(dest.clone(), links);
    let plan = CopyPlan {
        dsn: &opts.dsn,
        dest: &target,
        jobs: opts.jobs,
        chunk_size: opts.chunk_size.max(1),
        checksum: opts.manifest_checksum,
        resume: opts.resume,
        throttle: opts.max_rate.map(Throttle::new),
        progress: Arc::clone(&opts.progress),
    };
    let sums = copy::copy_files(plan, &entries).await?;
    tracing::info!(elapsed = ?started.elapsed(), "files copied");
    let config_written = config::complete(&control, &dest, &entries).await?;

    if let Some(hook) = opts.before_stop.take() {
        hook().await;
    }
    let row = control
        .query_one(
            "SELECT lsn::pg_catalog.text, labelfile, spcmapfile \
               FROM pg_catalog.pg_backup_stop(false)",
            &[],
        )
        .await
        .op("pg_backup_stop")?;
    let stop_lsn: Lsn = row.get::<_, String>(0).parse()?;
    let labelfile: String = row.get(1);
    let spcmapfile: Option<String> = row.get(2);
    tracing::info!(%stop_lsn, "backup stopped");
    let _ = stop_tx.send(Some(stop_lsn));
    let wal_segments = wal_task
        .join_next()
        .await
        .ok_or_else(|| Error::Protocol {
            what: "the WAL fetcher vanished".to_owned(),
        })???;
    drop(control);
    tracing::info!(wal_segments, elapsed = ?started.elapsed(), "WAL fetched");

    config::write_private(&dest.join("backup_label"), &labelfile)?;
    if let Some(map) = spcmapfile.filter(|m| !m.is_empty()) {
        // As in pg_basebackup's plain format, the map is not kept: the copy already has its
        // `pg_tblspc` entries, and recovery would replace them with links to the source's
        // locations.
        tracing::info!(map = map.trim_end(), "tablespaces copied");
    }
    let password_left_out = if opts.standby {
        standby::write(&dest, &opts.dsn, slot)?
    } else {
        false
    };
    let in_place = in_place_tablespaces(&dest)?;
    if in_place > 0 {
        config::append_auto_conf(&dest, "allow_in_place_tablespaces = on\n")?;
    }
    let log = dest.join(CHUNK_LOG);
    fs::remove_file(&log).io_context(|| format!("removing {}", log.display()))?;
    let manifest_dir = dest.clone();
    let range = WalRange {
        timeline,
        start: start_lsn,
        end: stop_lsn,
    };
    let (level, threads, algorithm) = (opts.compress, opts.jobs, opts.manifest_checksum);
    tokio::task::spawn_blocking(move || -> Result<()> {
        let text = manifest::render(&manifest_dir, range, algorithm, &sums)?;
        if let Some(level) = level {
            compress::pack(&manifest_dir, level, threads)?;
        }
        manifest::install(&manifest_dir, &text)
    })
    .await??;
    Ok(BackupSummary {
        dest,
        start_lsn,
        stop_lsn,
        timeline,
        entries: entries.len(),
        bytes: opts.progress.done() + wal_bytes.load(Ordering::Relaxed),
        reused_bytes: opts.progress.reused(),
        wal_segments,
        config_written,
        slot: opts.standby.then(|| slot.to_owned()),
        password_left_out,
        elapsed: started.elapsed(),
    })
}

/// Links `pg_tblspc/<oid>` to the new directory of each mapped tablespace (created, emptied
/// under `force`, kept under `resume`), and returns the links' relative paths; fails on a
/// mapping that names no tablespace of the source, or a new directory that is not empty.
async fn map_tablespaces(
    control: &Client,
    dest: &Path,
    mapping: &[(PathBuf, PathBuf)],
    force: bool,
    resume: bool,
) -> Result<HashSet<String>> {
    let mut made = HashSet::new();
    if mapping.is_empty() {
        return Ok(made);
    }
    // The OID is read as a number, so the link's name is made here, not taken from the source.
    let rows = control
        .query(
            "SELECT oid, pg_catalog.pg_tablespace_location(oid) FROM pg_catalog.pg_tablespace",
            &[],
        )
        .await
        .op("listing tablespaces")?;
    let links = dest.join("pg_tblspc");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&links)
        .io_context(|| format!("creating {}", links.display()))?;
    for (old, new) in mapping {
        let Some(row) = rows.iter().find(|row| {
            let location: &str = row.get(1);
            !location.is_empty() && Path::new(location) == old.as_path()
        }) else {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "--tablespace-mapping {}: no tablespace of the source is there",
                    old.display()
                ),
            });
        };
        let oid: u32 = row.get(0);
        let rel = format!("pg_tblspc/{oid}");
        if !resume && fs::read_dir(new).is_ok_and(|mut listing| listing.next().is_some()) {
            if !force {
                return Err(Error::DestinationNotEmpty { path: new.clone() });
            }
            fs::remove_dir_all(new).io_context(|| format!("emptying {}", new.display()))?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(new)
            .io_context(|| format!("creating {}", new.display()))?;
        let link = dest.join(&rel);
        made.insert(rel);
        if fs::read_link(&link).is_ok_and(|target| target == *new) {
            continue;
        }
        if link.is_symlink() {
            fs::remove_file(&link).io_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(new, &link)
            .io_context(|| format!("linking {} to {}", link.display(), new.display()))?;
    }
    Ok(made)
}

/// Drops a permanent slot of a failed backup, so it does not hold WAL forever.
async fn drop_slot(dsn: &pgq_core::Dsn, slot: &str) {
    let dropped = match dsn.with_pinned_search_path().connect().await {
        Ok(client) => client
            .execute(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                   FROM pg_catalog.pg_replication_slots \
                  WHERE slot_name OPERATOR(pg_catalog.=) $1",
                &[&slot],
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(err) = dropped {
        tracing::warn!(slot, %err, "could not drop the replication slot of the failed backup; drop it by hand");
    }
}

/// How many tablespaces the copy holds as directories inside `pg_tblspc` (those not mapped
/// elsewhere); the server needs `allow_in_place_tablespaces` for them.
fn in_place_tablespaces(dest: &Path) -> Result<usize> {
    let dir = dest.join("pg_tblspc");
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).io_context(|| format!("listing {}", dir.display())),
    };
    let mut count = 0;
    for entry in listing {
        let entry = entry.io_context(|| format!("listing {}", dir.display()))?;
        if entry
            .file_type()
            .io_context(|| format!("stat {}", entry.path().display()))?
            .is_dir()
        {
            count += 1;
        }
    }
    Ok(count)
}

/// Creates `dest` (mode 0700), or empties it under `force`, or keeps it under `resume`;
/// refuses a non-empty one otherwise.
fn prepare_dest(dest: &Path, force: bool, resume: bool) -> Result<()> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() && !resume {
                if !force {
                    return Err(Error::DestinationNotEmpty {
                        path: dest.to_path_buf(),
                    });
                }
                for entry in
                    fs::read_dir(dest).io_context(|| format!("listing {}", dest.display()))?
                {
                    let path = entry
                        .io_context(|| format!("listing {}", dest.display()))?
                        .path();
                    let removed = if path.is_dir() && !path.is_symlink() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                    removed.io_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dest)
                .io_context(|| format!("creating {}", dest.display()))?;
        }
        Err(e) => return Err(e).io_context(|| format!("opening {}", dest.display())),
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(0o700))
        .io_context(|| format!("chmod {}", dest.display()))
}

/// Refuses servers before 15, and roles that lack a privilege, naming all of them.
async fn check_server(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num'), current_user",
            &[],
        )
        .await
        .op("reading the server version")?;
    let version: &str = row.get(0);
    let version: i32 = version.parse().map_err(|_| Error::Protocol {
        what: format!("server_version_num {version:?}"),
    })?;
    let role: String = row.get(1);
    if version < 150_000 {
        return Err(Error::UnsupportedServer { version });
    }
    let functions: Vec<&str> = FUNCTIONS.to_vec();
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT f FROM pg_catalog.unnest($1::pg_catalog.text[]) AS f \
                           WHERE NOT pg_catalog.has_function_privilege(f, 'EXECUTE')), \
                    (SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles \
                      WHERE rolname OPERATOR(pg_catalog.=) current_user)",
            &[&functions],
        )
        .await
        .op("checking privileges")?;
    let no_execute: Vec<String> = row.get(0);
    let replication: Option<bool> = row.get(1);
    let ident = pgq_core::quote_ident(&role);
    let mut missing: Vec<String> = no_execute
        .iter()
        .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {ident};"))
        .collect();
    if replication != Some(true) {
        missing.push(format!(
            "ALTER ROLE {ident} REPLICATION;  -- for the replication slot"
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.push(format!(
        "GRANT pg_read_server_files TO {ident};  -- only when the configuration files live \
         outside the data directory"
    ));
    Err(Error::MissingPrivileges { role, missing })
}

async fn wal_segment_size(client: &Client) -> Result<u64> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))",
            &[],
        )
        .await
        .op("reading wal_segment_size")?;
    let size: i64 = row.get(0);
    u64::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| Error::Protocol {
            what: format!("wal_segment_size {size}"),
        })
}

/// The timeline in a WAL file name.
fn timeline_of(walfile: &str) -> Result<u32> {
    walfile
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| Error::Protocol {
            what: format!("WAL file name {walfile:?}"),
        })
}
