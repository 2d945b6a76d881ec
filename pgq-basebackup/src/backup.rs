//! Taking a base backup: slot, `pg_backup_start`, listing, parallel copy, WAL, stop,
//! manifest.

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::copy::{CopyPlan, CHUNK_LOG};
use crate::error::{DbContext as _, Error, IoContext as _, Result};
use crate::lsn::Lsn;
use crate::manifest::{self, WalRange};
use crate::options::{BackupOptions, Checkpoint};
use crate::throttle::Throttle;
use crate::wal::WalFetcher;
use crate::{compress, config, copy, listing};

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
    /// Wall-clock time of the whole backup.
    pub elapsed: Duration,
}

/// Functions a role must be able to execute, as `GRANT` names them.
const FUNCTIONS: &[&str] = &[
    "pg_catalog.pg_backup_start(text, boolean)",
    "pg_catalog.pg_backup_stop(boolean)",
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
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
/// [`Error::DestinationNotEmpty`] before connecting; [`Error::Connect`] when the source is
/// unreachable; [`Error::MissingPrivileges`] naming every missing grant; [`Error::Db`],
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
            "SELECT l::text, pg_catalog.pg_walfile_name(l) \
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

    map_tablespaces(
        &control,
        &dest,
        &opts.tablespace_mapping,
        opts.force,
        opts.resume,
    )
    .await?;
    let entries = listing::list(&control).await?;
    tracing::info!(entries = entries.len(), elapsed = ?started.elapsed(), "listed");
    let plan = CopyPlan {
        dsn: &opts.dsn,
        dest: &dest,
        jobs: opts.jobs,
        chunk_size: opts.chunk_size.max(1),
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
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)",
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

    write_private(&dest.join("backup_label"), &labelfile)?;
    if let Some(map) = spcmapfile.filter(|m| !m.is_empty()) {
        // As in pg_basebackup's plain format, the map is not kept: the copy already has its
        // `pg_tblspc` entries, and recovery would replace them with links to the source's
        // locations.
        tracing::info!(map = map.trim_end(), "tablespaces copied");
    }
    if opts.standby {
        write_standby(&dest, &opts.dsn, slot)?;
    }
    let in_place = in_place_tablespaces(&dest)?;
    if in_place > 0 {
        append_auto_conf(&dest, "allow_in_place_tablespaces = on\n")?;
    }
    let log = dest.join(CHUNK_LOG);
    fs::remove_file(&log).io_context(|| format!("removing {}", log.display()))?;
    let manifest_dir = dest.clone();
    let range = WalRange {
        timeline,
        start: start_lsn,
        end: stop_lsn,
    };
    let (level, threads) = (opts.compress, opts.jobs);
    tokio::task::spawn_blocking(move || -> Result<()> {
        let text = manifest::render(&manifest_dir, range, &sums)?;
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
        elapsed: started.elapsed(),
    })
}

/// Links `pg_tblspc/<oid>` to the new directory of each mapped tablespace (created, emptied
/// under `force`, kept under `resume`); fails on a mapping that names no tablespace of the source, or a
/// new directory that is not empty.
async fn map_tablespaces(
    control: &Client,
    dest: &Path,
    mapping: &[(PathBuf, PathBuf)],
    force: bool,
    resume: bool,
) -> Result<()> {
    if mapping.is_empty() {
        return Ok(());
    }
    let rows = control
        .query(
            "SELECT oid::text, pg_catalog.pg_tablespace_location(oid) FROM pg_catalog.pg_tablespace \
              WHERE spcname NOT IN ('pg_default', 'pg_global')",
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
        let Some(row) = rows
            .iter()
            .find(|row| Path::new(row.get::<_, &str>(1)) == old.as_path())
        else {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "--tablespace-mapping {}: no tablespace of the source is there",
                    old.display()
                ),
            });
        };
        let oid: String = row.get(0);
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
        let link = links.join(&oid);
        if fs::read_link(&link).is_ok_and(|target| target == *new) {
            continue;
        }
        if link.is_symlink() {
            fs::remove_file(&link).io_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(new, &link)
            .io_context(|| format!("linking {} to {}", link.display(), new.display()))?;
    }
    Ok(())
}

/// Drops a permanent slot of a failed backup, so it does not hold WAL forever.
async fn drop_slot(dsn: &pgq_core::Dsn, slot: &str) {
    let dropped = match dsn.with_pinned_search_path().connect().await {
        Ok(client) => client
            .execute(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                   FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
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

/// `standby.signal`, and `primary_conninfo` and `primary_slot_name` appended to
/// `postgresql.auto.conf`, so the copy streams from the source through the slot.
fn write_standby(dest: &Path, dsn: &pgq_core::Dsn, slot: &str) -> Result<()> {
    write_private(&dest.join("standby.signal"), "")?;
    let conninfo = conninfo(dsn.config());
    append_auto_conf(
        dest,
        &format!(
            "primary_conninfo = '{}'\nprimary_slot_name = '{}'\n",
            conf_quote(&conninfo),
            conf_quote(slot)
        ),
    )
}

/// Appends settings to the copy's `postgresql.auto.conf`.
fn append_auto_conf(dest: &Path, lines: &str) -> Result<()> {
    let path = dest.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(lines);
    write_private(&path, &text)
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

/// A libpq connection string for the settings (as `primary_conninfo` wants it).
fn conninfo(config: &tokio_postgres::Config) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    let sslmode = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    };
    parts.push(format!("sslmode={sslmode}"));
    parts.push("application_name=pgq_basebackup_standby".to_owned());
    parts.join(" ")
}

/// A value inside single quotes of `postgresql.conf`.
fn conf_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
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
            "SELECT pg_catalog.current_setting('server_version_num')::int, current_user::text",
            &[],
        )
        .await
        .op("reading the server version")?;
    let version: i32 = row.get(0);
    let role: String = row.get(1);
    if version < 150_000 {
        return Err(Error::UnsupportedServer { version });
    }
    let functions: Vec<&str> = FUNCTIONS.to_vec();
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT f FROM unnest($1::text[]) AS f \
                           WHERE NOT pg_catalog.has_function_privilege(f, 'EXECUTE')), \
                    (SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles \
                      WHERE rolname = current_user)",
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
            "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'",
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

fn write_private(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).io_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .io_context(|| format!("chmod {}", path.display()))
}
