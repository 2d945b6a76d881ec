//! Configuration files of a cluster that keeps them outside its data directory (Debian's
//! layout), so the copy starts on its own.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tokio_postgres::Client;

use crate::error::{IoContext as _, Result};
use crate::listing::SourceEntry;

/// Settings of a fetched `postgresql.conf` that point at the source's paths; commented out
/// in the copy, which must use its own data directory and files.
const PATH_SETTINGS: &[&str] = &[
    "data_directory",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "include_dir",
    "include",
    "include_if_exists",
];

/// Written when `postgresql.conf` cannot be fetched: the server defaults apply.
const MINIMAL_CONF: &str =
    "# Written by pgq-basebackup: the source's configuration lives outside its data\n\
# directory and could not be read (it needs superuser or pg_read_server_files).\n";

/// Written when `pg_hba.conf` cannot be fetched: local connections only.
const MINIMAL_HBA: &str = "# Written by pgq-basebackup: local connections only.\n\
local   all             all                                     peer\n\
local   replication     all                                     peer\n";

/// The three files, their server setting, and what to write when they cannot be fetched.
const FILES: &[(&str, &str, &str)] = &[
    ("postgresql.conf", "config_file", MINIMAL_CONF),
    ("pg_hba.conf", "hba_file", MINIMAL_HBA),
    ("pg_ident.conf", "ident_file", ""),
];

/// For each configuration file missing from the listing, fetches it from where the server
/// reads it (`pg_read_file`, which needs `pg_read_server_files`), or writes a minimal one.
/// Returns the names written.
pub(crate) async fn complete(
    client: &Client,
    dest: &Path,
    entries: &[SourceEntry],
) -> Result<Vec<&'static str>> {
    let mut written = Vec::new();
    for &(name, setting, fallback) in FILES {
        if entries.iter().any(|e| e.path == name) {
            continue;
        }
        let text = match fetch(client, setting).await {
            Some(text) if name == "postgresql.conf" => neutralize(&text),
            Some(text) => text,
            None => fallback.to_owned(),
        };
        write_private(&dest.join(name), &text)?;
        written.push(name);
    }
    Ok(written)
}

/// Appends settings to the copy's `postgresql.auto.conf`.
pub(crate) fn append_auto_conf(dest: &Path, lines: &str) -> Result<()> {
    let path = dest.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(lines);
    write_private(&path, &text)
}

/// A string value of `postgresql.conf`: in single quotes, `'` doubled and `\` escaped.
pub(crate) fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Writes a file of the copy, readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).io_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .io_context(|| format!("chmod {}", path.display()))
}

/// The file a setting names, when the role may read both.
async fn fetch(client: &Client, setting: &str) -> Option<String> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_read_file(pg_catalog.current_setting($1))",
            &[&setting],
        )
        .await;
    match row {
        Ok(row) => row.get::<_, Option<String>>(0),
        Err(err) => {
            let reason = err
                .as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_owned());
            tracing::warn!(
                reason,
                setting,
                "cannot fetch a configuration file; writing a minimal one"
            );
            None
        }
    }
}

/// Comments out the settings that point at the source's files.
fn neutralize(conf: &str) -> String {
    let mut out = String::from(
        "# Fetched by pgq-basebackup; settings naming the source's paths are commented out.\n",
    );
    for line in conf.lines() {
        let key = line
            .trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if PATH_SETTINGS.contains(&key) {
            out.push_str("#pgq-basebackup# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_out_source_paths() {
        let conf = "data_directory = '/var/lib/postgresql/15/main'\n\
                    hba_file='/etc/postgresql/15/main/pg_hba.conf'\n\
                    include_dir 'conf.d'\nport = 5432\n#data_directory = 'x'\n";
        let out = neutralize(conf);
        assert!(out.contains("#pgq-basebackup# data_directory = '/var"));
        assert!(out.contains("#pgq-basebackup# hba_file="));
        assert!(out.contains("#pgq-basebackup# include_dir 'conf.d'"));
        assert!(out.contains("\nport = 5432\n"));
        assert!(out.contains("\n#data_directory = 'x'\n"));
    }
}
