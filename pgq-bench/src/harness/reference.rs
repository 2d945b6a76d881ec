//! What the scenarios share about the original PGQ stack: whether it is installed, and how its
//! Python programs are started.

use std::process::Stdio;

use anyhow::Result;
use pgq_core::Dsn;
use tokio::process::Command;

use crate::server::Server;

/// The interpreter Debian's python3-pgq and python3-londiste are installed for.
pub(crate) const PYTHON: &str = "/usr/bin/python3";

// language=SQL
const EXTENSION_AVAILABLE: &str =
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = 'pgq')";

/// Whether the server offers the original `pgq` extension.
pub(crate) async fn extension_available(server: &Server) -> Result<bool> {
    let client = server.maintenance().connect().await?;
    Ok(client.query_one(EXTENSION_AVAILABLE, &[]).await?.get(0))
}

/// Whether [`PYTHON`] can import `modules` (`"pgq"`, `"londiste, pgq"`).
pub(crate) async fn python_can_import(modules: &str) -> bool {
    Command::new(PYTHON)
        .args(["-c", &format!("import {modules}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// `dsn` as a libpq keyword/value string without its password (given to the child in
/// `PGPASSWORD` instead).
pub(crate) fn connstr(dsn: &Dsn) -> String {
    dsn.to_string()
        .split(' ')
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}
