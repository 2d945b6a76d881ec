//! The original PGQ stack our figures are held against: which of its parts are installed, and
//! a scratch database with our schema or with its extension.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, Result};
use pgq_core::{Dsn, Line};
use tokio::process::Command;
use tokio_postgres::Client;

use super::python::PYTHON;
use super::server::Server;

/// The original ticker daemon.
pub(crate) const PGQD: &str = "/usr/bin/pgqd";

// language=SQL
const EXTENSION_AVAILABLE: &str =
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = 'pgq')";
// language=SQL
const CREATE_EXTENSION: &str = "CREATE EXTENSION pgq";

/// A part of the original stack a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The `pgq` extension, on the server.
    Extension,
    /// The `pgqd` daemon, on this machine.
    Pgqd,
    /// python3-pgq, importable by [`PYTHON`].
    PythonPgq,
    /// python3-londiste and python3-pgq, importable by [`PYTHON`].
    PythonLondiste,
}

impl Part {
    async fn installed(self, server: &Server) -> Result<bool> {
        Ok(match self {
            Part::Extension => {
                let client = server.maintenance().connect().await?;
                client.query_one(EXTENSION_AVAILABLE, &[]).await?.get(0)
            }
            Part::Pgqd => Path::new(PGQD).is_file(),
            Part::PythonPgq => python_can_import("pgq").await,
            Part::PythonLondiste => python_can_import("londiste, pgq").await,
        })
    }

    /// What is missing, and the Debian package that brings it.
    fn missing(self) -> &'static str {
        match self {
            Part::Extension => {
                "the original pgq extension is not available on this server (install \
                 postgresql-15-pgq3)"
            }
            Part::Pgqd => "/usr/bin/pgqd not found (install pgqd)",
            Part::PythonPgq => "/usr/bin/python3 cannot import pgq (install python3-pgq)",
            Part::PythonLondiste => {
                "/usr/bin/python3 cannot import londiste and pgq (install python3-londiste)"
            }
        }
    }
}

/// Whether every one of `parts` is installed. When one is not, says so loudly on stderr and
/// as a bold note in `notes`: `REFERENCE MISSING: <what is missing>; <skipped>.`
pub(crate) async fn reference(
    server: &Server,
    parts: &[Part],
    skipped: &str,
    notes: &mut Vec<String>,
) -> Result<bool> {
    let mut missing = Vec::new();
    for &part in parts {
        if !part.installed(server).await? {
            missing.push(part.missing());
        }
    }
    if missing.is_empty() {
        return Ok(true);
    }
    let note = format!("REFERENCE MISSING: {}; {skipped}.", missing.join("; "));
    eprintln!("\n*** {note} ***\n");
    notes.push(format!("**{note}**"));
    Ok(false)
}

/// Whether [`PYTHON`] can import `modules` (`"pgq"`, `"londiste, pgq"`).
async fn python_can_import(modules: &str) -> bool {
    Command::new(PYTHON)
        .args(["-c", &format!("import {modules}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Which implementation of PGQ a database has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Our schema, installed by `pgq_core::install`.
    Ours,
    /// The original `pgq` extension.
    Reference,
}

impl Side {
    /// `ours` for our side, `reference` for the other.
    pub(crate) fn pick<T>(self, ours: T, reference: T) -> T {
        match self {
            Side::Ours => ours,
            Side::Reference => reference,
        }
    }

    /// A scratch database `pgq_bench_<pid>_<role>_<ours|ref>` with PGQ installed, and a
    /// connection to it.
    pub(crate) async fn database(self, server: &Server, role: &str) -> Result<(Dsn, Client)> {
        let dsn = server
            .scratch_db(&format!("{role}_{}", self.pick("ours", "ref")))
            .await?;
        let mut client = dsn
            .connect()
            .await
            .with_context(|| format!("connecting to {}", dsn.dbname()))?;
        match self {
            Side::Ours => {
                pgq_core::install(&mut client, &[Line::Pgq])
                    .await
                    .context("installing our pgq schema")?;
            }
            Side::Reference => client
                .batch_execute(CREATE_EXTENSION)
                .await
                .context("creating the reference pgq extension")?,
        }
        Ok((dsn, client))
    }
}
