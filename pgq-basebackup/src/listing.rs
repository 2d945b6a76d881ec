//! The list of the source's files, in one recursive query.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::dest::check_name;
use crate::error::{DbContext as _, Result};

/// Directories whose contents a base backup leaves out (the directory itself is kept), as
/// PostgreSQL's own base backup does: they are rebuilt or meaningless after a restore.
pub(crate) const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files a base backup leaves out wherever they are.
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "standby.signal",
    "recovery.signal",
];

/// Every directory and file under the data directory (tablespaces included, through
/// `pg_tblspc`), with the missing_ok forms: files vanish while a backup runs. Names come back
/// as their bytes (`textsend`), so each is checked as sent. Functions, operators and types are
/// all `pg_catalog`'s whatever the session's `search_path`.
const LIST_SQL: &str = "
WITH RECURSIVE tree(path, isdir, size, mtime) AS (
    SELECT e.name, s.isdir, s.size, s.modification
      FROM pg_catalog.pg_ls_dir('.', true, false) AS e(name),
           LATERAL pg_catalog.pg_stat_file(e.name, true) AS s
  UNION ALL
    SELECT pg_catalog.concat(t.path, '/', e.name), s.isdir, s.size, s.modification
      FROM tree AS t,
           LATERAL pg_catalog.pg_ls_dir(t.path, true, false) AS e(name),
           LATERAL pg_catalog.pg_stat_file(pg_catalog.concat(t.path, '/', e.name), true) AS s
     WHERE t.isdir
       AND pg_catalog.array_position($1::pg_catalog.text[], t.path) IS NULL
       AND NOT pg_catalog.starts_with(e.name, 'pgsql_tmp')
)
SELECT pg_catalog.textsend(path), isdir, size, mtime FROM tree WHERE isdir IS NOT NULL";

/// One entry of the source's data directory.
#[derive(Debug, Clone)]
pub(crate) struct SourceEntry {
    /// Relative to the data directory, `/`-separated; checked by [`check_name`].
    pub(crate) path: String,
    /// A directory (symbolic links are followed).
    pub(crate) is_dir: bool,
    /// Size at listing time.
    pub(crate) size: u64,
    /// Last modification.
    pub(crate) mtime: SystemTime,
}

/// Lists what the backup copies, minus what a base backup leaves out.
///
/// # Errors
///
/// [`crate::Error::UnsafeName`] for the first name that could point outside the copy
/// (see [`check_name`]); [`crate::Error::Db`].
pub(crate) async fn list(client: &Client) -> Result<Vec<SourceEntry>> {
    let empty: Vec<&str> = EMPTY_DIRS.to_vec();
    let rows = client
        .query(LIST_SQL, &[&empty])
        .await
        .op("listing the data directory")?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let path = check_name(row.get(0))?;
        let size: i64 = row.get(2);
        let mtime: DateTime<Utc> = row.get(3);
        let entry = SourceEntry {
            path,
            is_dir: row.get(1),
            size: u64::try_from(size).unwrap_or(0),
            mtime: mtime.into(),
        };
        if included(&entry) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Whether PostgreSQL's own base backup would copy this entry.
fn included(entry: &SourceEntry) -> bool {
    let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
    if name.starts_with("pgsql_tmp") {
        return false;
    }
    if entry.is_dir {
        return true;
    }
    if EXCLUDED_FILES.contains(&name) || name.starts_with("pg_internal.init") {
        return false;
    }
    !is_temp_relation(&entry.path, name)
}

/// Files of temporary relations (`t<backend>_<relfilenode>[_fork][.segment]` in a database
/// directory) are dropped at restart anyway.
fn is_temp_relation(path: &str, name: &str) -> bool {
    let in_db_dir = path.starts_with("base/") || path.starts_with("pg_tblspc/");
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, relfile)) = rest.split_once('_') else {
        return false;
    };
    in_db_dir
        && !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && relfile.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> SourceEntry {
        SourceEntry {
            path: path.to_owned(),
            is_dir: false,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn leaves_out_what_postgres_leaves_out() {
        for path in [
            "postmaster.pid",
            "postmaster.opts",
            "backup_label.old",
            "base/5/pg_internal.init",
            "global/pg_internal.init.123",
            "base/5/t3_16384",
            "base/5/t3_16384_fsm",
            "base/pgsql_tmp/pgsql_tmp12.0",
        ] {
            assert!(!included(&file(path)), "{path} should be left out");
        }
        for path in [
            "base/5/16384",
            "base/5/16384.1",
            "global/pg_control",
            "PG_VERSION",
            "top",
        ] {
            assert!(included(&file(path)), "{path} should be copied");
        }
    }
}
