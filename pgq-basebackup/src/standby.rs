//! `standby`: `standby.signal`, and `primary_conninfo` and `primary_slot_name` in the copy's
//! `postgresql.auto.conf`, so it streams from the source through the slot.
//!
//! `primary_conninfo` keeps the backup's connection settings as the user gave them (every TLS
//! setting included, `sslmode` never changed) and never holds a password: a password from a
//! password file is referred to by `passfile=`, and a password given in the connection string
//! is left out (the caller is told, see [`crate::BackupSummary::password_left_out`]).

use std::path::Path;

use pgq_core::{Dsn, PasswordSource};

use crate::config::{append_auto_conf, conf_quote, write_private};
use crate::error::{IoContext as _, Result};

/// Settings of the backup's connection that `primary_conninfo` keeps as they are: where to
/// connect, as whom, TLS, and TCP behaviour. The database and the startup options are the
/// backup's own; a physical standby needs neither.
const KEPT: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "channel_binding",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
];

/// Writes `standby.signal`, `primary_conninfo` and `primary_slot_name`. Returns whether a
/// password given in the connection string was left out.
pub(crate) fn write(dest: &Path, dsn: &Dsn, slot: &str) -> Result<bool> {
    write_private(&dest.join("standby.signal"), "")?;
    let (conninfo, left_out) = conninfo(dsn)?;
    append_auto_conf(
        dest,
        &format!(
            "primary_conninfo = {}\nprimary_slot_name = {}\n",
            conf_quote(&conninfo),
            conf_quote(slot)
        ),
    )?;
    Ok(left_out)
}

/// The libpq connection string for the standby, and whether a given password was left out.
fn conninfo(dsn: &Dsn) -> Result<(String, bool)> {
    let mut parts: Vec<String> = KEPT
        .iter()
        .filter_map(|key| dsn.setting(key).map(|value| keyword(key, value)))
        .collect();
    let passfile = match dsn.password_source() {
        Some(PasswordSource::File(path)) => Some(
            std::path::absolute(&path)
                .io_context(|| format!("resolving the password file {}", path.display()))?
                .display()
                .to_string(),
        ),
        _ => dsn.setting("passfile").map(str::to_owned),
    };
    if let Some(passfile) = passfile {
        parts.push(keyword("passfile", &passfile));
    }
    parts.push(keyword("application_name", "pgq_basebackup_standby"));
    let left_out = dsn.password_source() == Some(PasswordSource::Given);
    Ok((parts.join(" "), left_out))
}

/// `key='value'` as libpq reads it: `\` and `'` escaped with `\`.
fn keyword(key: &str, value: &str) -> String {
    format!(
        "{key}='{}'",
        value.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tls_settings_and_no_password() {
        let dsn = Dsn::parse(
            "host=db1 port=5433 user='o\\'neil \\\\ rep' sslmode=verify-full \
             sslrootcert='/etc/ssl/my ca.crt' sslcert=/c.crt sslkey=/c.key \
             channel_binding=require keepalives_idle=30 password=hunter2 dbname=app \
             options='-c search_path=pg_catalog'",
        )
        .unwrap();
        let (text, left_out) = conninfo(&dsn).unwrap();
        assert!(left_out);
        assert!(
            !text.contains("hunter2") && !text.contains("password="),
            "{text}"
        );
        for part in [
            "host='db1'",
            "port='5433'",
            r"user='o\'neil \\ rep'",
            "sslmode='verify-full'",
            "sslrootcert='/etc/ssl/my ca.crt'",
            "sslcert='/c.crt'",
            "sslkey='/c.key'",
            "channel_binding='require'",
            "keepalives_idle='30'",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
        assert!(
            !text.contains("dbname") && !text.contains("options"),
            "{text}"
        );
        // libpq's own syntax reads it back to the same settings.
        let again = Dsn::parse(&text).unwrap();
        assert_eq!(again.user(), "o'neil \\ rep");
        assert_eq!(again.setting("sslrootcert"), Some("/etc/ssl/my ca.crt"));
        assert_eq!(again.setting("sslmode"), Some("verify-full"));
    }

    #[test]
    fn quotes_for_postgresql_conf() {
        assert_eq!(conf_quote(r"user='o\'x'"), r"'user=''o\\''x'''");
        assert_eq!(conf_quote("slot_1"), "'slot_1'");
    }
}
