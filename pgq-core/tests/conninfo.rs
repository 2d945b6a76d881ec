//! `Dsn::conninfo` and `Dsn::conninfo_with_password`: the connection string a child process
//! gets reads back to the same settings, through `Dsn::parse` and through libpq (`psql`), on a
//! server that checks the password.

use std::path::Path;

use anyhow::{Context as _, Result};
use pgq_core::{quote_ident, quote_literal, Dsn, PasswordSource};
use pgq_testkit::{Cluster, ClusterOptions};

/// A role, a password and a database whose names need every kind of quoting.
const ROLE: &str = r"o'neil \ app";
const PASSWORD: &str = r"se cr\et's";
const DB: &str = "my db 'x'";
const APP: &str = r"it's a \ test";

/// A cluster that asks for the password over TCP, with [`ROLE`] and [`DB`].
async fn password_cluster() -> Result<Cluster> {
    let cluster = Cluster::start(ClusterOptions {
        listen_tcp: true,
        ..ClusterOptions::default()
    })
    .await?;
    let admin = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(ROLE),
            quote_literal(PASSWORD)
        ))
        .await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(DB),
            quote_ident(ROLE)
        ))
        .await?;
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!("host all all 127.0.0.1/32 scram-sha-256\n{rules}"),
    )?;
    // A restart, not a reload: a reload takes effect at some later moment.
    cluster.restart().await?;
    Ok(cluster)
}

/// `current_user`, `current_database()` and `application_name` as `psql` sees them when run with
/// `conninfo` (and `PGPASSWORD` when given).
async fn psql(conninfo: &str, password: Option<&str>) -> Result<String> {
    let mut command = tokio::process::Command::new(pgq_testkit::client_program("psql"));
    command
        .args(["-X", "-A", "-t", "-w", "-c"])
        .arg("SELECT current_user || '|' || current_database() || '|' || current_setting('application_name')")
        .arg(conninfo)
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .env_remove("PGSERVICE");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let out = command.output().await.context("running psql")?;
    anyhow::ensure!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// What a session made with `dsn` says about itself, in [`psql`]'s form.
async fn whoami(dsn: &Dsn) -> Result<String> {
    let row = dsn
        .connect()
        .await?
        .query_one(
            "SELECT current_user || '|' || current_database() || '|' || current_setting('application_name')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn password(dsn: &Dsn) -> Option<&[u8]> {
    dsn.config().get_password()
}

#[tokio::test]
async fn child_conninfo_round_trips_through_parse_and_libpq() -> Result<()> {
    let cluster = password_cluster().await?;
    let given = format!(
        "host=127.0.0.1 port={} user='o\\'neil \\\\ app' password='se cr\\\\et\\'s' \
         dbname='my db \\'x\\'' application_name='it\\'s a \\\\ test' connect_timeout=10",
        cluster.port()
    );
    let dsn = Dsn::parse(&given)?;
    let expected = format!("{ROLE}|{DB}|{APP}");
    assert_eq!(whoami(&dsn).await?, expected);

    let with_password = dsn.conninfo_with_password();
    let without = dsn.conninfo();
    assert!(!without.contains("password"), "{without}");
    assert!(!without.contains("se cr"), "{without}");
    assert_eq!(
        with_password.replace(r" password='se cr\\et\'s'", ""),
        without,
        "the two differ by the password alone"
    );
    assert_eq!(
        dsn.to_string().replace(" password=********", ""),
        without,
        "the settings are the ones Display shows"
    );

    // Through Dsn::parse: the same settings, and sessions as the same role.
    let again = Dsn::parse(&with_password)?;
    assert_eq!(
        (again.user(), again.dbname(), password(&again)),
        (ROLE, DB, Some(PASSWORD.as_bytes()))
    );
    assert_eq!(again.config().get_application_name(), Some(APP));
    assert_eq!(
        again.conninfo_with_password(),
        with_password,
        "a fixed point"
    );
    assert_eq!(whoami(&again).await?, expected);
    let bare = Dsn::parse(&without)?;
    assert_eq!((bare.user(), bare.dbname()), (ROLE, DB));
    assert_eq!(password(&bare), None);
    let refused = whoami(&bare).await.expect_err("no password, no session");
    assert!(
        format!("{refused:#}").contains("password"),
        "the server asked for the password: {refused:#}"
    );

    // Through libpq, as a child process sees it.
    assert_eq!(psql(&with_password, None).await?, expected);
    assert_eq!(psql(&without, Some(PASSWORD)).await?, expected);
    assert!(
        psql(&without, None).await.is_err(),
        "without PGPASSWORD the child has no password"
    );
    Ok(())
}

/// A password read from the password file is the one `conninfo_with_password` writes; `conninfo`
/// names the file, so a child finds it there.
#[tokio::test]
async fn password_file_passwords_reach_the_child() -> Result<()> {
    let cluster = password_cluster().await?;
    let dir = tempdir()?;
    let passfile = dir.join("pg pass");
    write_private(
        &passfile,
        &format!("*:*:*:o'neil \\\\ app:{}\n", PASSWORD.replace('\\', "\\\\")),
    )?;
    let dsn = Dsn::parse(&format!(
        "host=127.0.0.1 port={} user='o\\'neil \\\\ app' dbname='my db \\'x\\'' \
         application_name=child passfile={}",
        cluster.port(),
        pgq_core::quote_conninfo_value(&passfile.display().to_string())
    ))?;
    assert_eq!(
        dsn.password_source(),
        Some(PasswordSource::File(passfile.clone()))
    );
    let with_password = dsn.conninfo_with_password();
    let again = Dsn::parse(&with_password)?;
    assert_eq!(password(&again), Some(PASSWORD.as_bytes()));
    assert_eq!(again.password_source(), Some(PasswordSource::Given));
    let expected = format!("{ROLE}|{DB}|child");
    assert_eq!(psql(&with_password, None).await?, expected);
    let without = dsn.conninfo();
    assert!(!without.contains("se cr"), "{without}");
    assert_eq!(
        psql(&without, None).await?,
        expected,
        "psql reads the passfile"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pgq-conninfo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
