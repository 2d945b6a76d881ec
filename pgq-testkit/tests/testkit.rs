//! The harness itself, against a real server: `PGQ_TEST_DSN`, or a private cluster.

use std::os::unix::fs::PermissionsExt as _;

use anyhow::Context as _;
use pgq_testkit::{Cluster, ClusterOptions, SslFiles, TestDb};
use tokio_postgres::{Client, NoTls};

async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .with_context(|| format!("connecting to {dsn}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn show(client: &Client, setting: &str) -> anyhow::Result<String> {
    let row = client
        .query_one("SELECT pg_catalog.current_setting($1)", &[&setting])
        .await?;
    Ok(row.get(0))
}

/// Tables, views, sequences… outside the system schemas.
async fn user_relations(client: &Client) -> anyhow::Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

async fn database_exists(name: &str) -> anyhow::Result<bool> {
    let maintenance = connect(&pgq_testkit::server_dsn().await?).await?;
    let row = maintenance
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = $1)",
            &[&name],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn databases_are_fresh_and_distinct() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestDb::new(), TestDb::new())?;
    assert_ne!(a.name(), b.name());
    for db in [&a, &b] {
        assert!(
            db.name()
                .starts_with("pgqt_databases_are_fresh_and_distinct_"),
            "{}",
            db.name()
        );
        assert!(db.dsn().contains(&format!("dbname={}", db.name())));
    }
    let (ca, cb) = (a.client().await?, b.client().await?);
    for (db, client) in [(&a, &ca), (&b, &cb)] {
        let row = client.query_one("SELECT current_database()", &[]).await?;
        assert_eq!(row.get::<_, String>(0), db.name());
        assert_eq!(user_relations(client).await?, 0);
    }
    ca.batch_execute("CREATE TABLE only_in_a (id int)").await?;
    assert_eq!(user_relations(&ca).await?, 1);
    assert_eq!(user_relations(&cb).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_is_dropped_with_its_guard() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let name = db.name().to_owned();
    let client = db.client().await?;
    let pool = db.pool(2);
    let pooled = pool.get().await?;
    let row = pooled.query_one("SELECT current_database()", &[]).await?;
    assert_eq!(row.get::<_, String>(0), name);
    drop(pooled);
    assert!(database_exists(&name).await?);

    // Open connections (one pooled, one plain) do not stop the drop.
    drop(db);
    assert!(!database_exists(&name).await?);
    assert!(client.simple_query("SELECT 1").await.is_err());
    Ok(())
}

#[tokio::test]
async fn dsn_as_connects_as_another_role() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let admin = db.client().await?;
    // Roles are cluster-wide: tolerate another test process having made it.
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE pgqt_testkit_login LOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .await?;
    let other = connect(&db.dsn_as("pgqt_testkit_login")).await?;
    let row = other
        .query_one("SELECT current_user::text, current_database()", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "pgqt_testkit_login");
    assert_eq!(row.get::<_, String>(1), db.name());
    Ok(())
}

#[tokio::test]
async fn server_dsn_is_stable() -> anyhow::Result<()> {
    let first = pgq_testkit::server_dsn().await?;
    assert_eq!(first, pgq_testkit::server_dsn().await?);
    let client = connect(&first).await?;
    let row = client
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    assert!(
        row.get::<_, bool>(0),
        "the server DSN must be a superuser's"
    );
    Ok(())
}

/// The major version `postgres --version` in the testkit's bin directory prints.
fn bin_dir_major() -> anyhow::Result<u32> {
    let postgres = pgq_testkit::bin_dir()?.join("postgres");
    let output = std::process::Command::new(&postgres)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", postgres.display()))?;
    let text = String::from_utf8(output.stdout)?;
    // "postgres (PostgreSQL) 17.6" or "postgres (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"
    let version = text
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("unexpected `postgres --version`: {text}"))?;
    let major = version.split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("unexpected `postgres --version`: {text}"))
}

async fn server_major(client: &Client) -> anyhow::Result<u32> {
    let num: u32 = show(client, "server_version_num").await?.parse()?;
    Ok(num / 10_000)
}

/// Clusters run the binaries of `PGQ_TEST_PG_BIN` when it is set (CI sets it to 16, 17, 18),
/// the machine's otherwise; so does the shared server, unless `PGQ_TEST_DSN` names another.
#[tokio::test]
async fn clusters_run_the_binaries_of_the_bin_dir() -> anyhow::Result<()> {
    let expected = bin_dir_major()?;
    if let Some(dir) = std::env::var_os("PGQ_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        assert_eq!(
            pgq_testkit::bin_dir()?,
            std::fs::canonicalize(dir)?,
            "PGQ_TEST_PG_BIN is the bin directory"
        );
    }
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let client = connect(&cluster.dsn("postgres")).await?;
    assert_eq!(server_major(&client).await?, expected);
    if std::env::var("PGQ_TEST_DSN").is_ok_and(|v| !v.trim().is_empty()) {
        return Ok(());
    }
    let shared = connect(&pgq_testkit::server_dsn().await?).await?;
    assert_eq!(server_major(&shared).await?, expected);
    Ok(())
}

#[tokio::test]
async fn cluster_listens_on_tcp_with_settings() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        listen_tcp: true,
        settings: vec![("work_mem".to_owned(), "8MB".to_owned())],
        ..ClusterOptions::default()
    })
    .await?;
    let tcp_dsn = cluster
        .tcp_dsn("postgres")
        .context("listen_tcp gives a TCP DSN")?;
    assert!(
        tcp_dsn.contains(&format!("port={}", cluster.port())),
        "{tcp_dsn}"
    );
    let over_tcp = connect(&tcp_dsn).await?;
    let row = over_tcp
        .query_one("SELECT host(inet_server_addr())", &[])
        .await?;
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(show(&over_tcp, "work_mem").await?, "8MB");
    assert_eq!(show(&over_tcp, "fsync").await?, "off");
    assert_eq!(show(&over_tcp, "TimeZone").await?, "UTC");
    let row = over_tcp
        .query_one(
            "SELECT datcollate::text FROM pg_catalog.pg_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "C");

    let over_socket = connect(&cluster.dsn("postgres")).await?;
    let row = over_socket
        .query_one("SELECT inet_server_addr() IS NULL", &[])
        .await?;
    assert!(row.get::<_, bool>(0), "the plain DSN uses the unix socket");
    let summary = cluster.settings_summary();
    assert!(
        summary.contains("work_mem=8MB") && summary.contains("fsync=off"),
        "{summary}"
    );

    let base = cluster
        .data_dir()
        .parent()
        .context("data dir has a parent")?
        .to_owned();
    assert!(cluster.data_dir().join("PG_VERSION").is_file());
    drop(cluster);
    assert!(!base.exists(), "{} should be gone", base.display());
    assert!(over_tcp.simple_query("SELECT 1").await.is_err());
    Ok(())
}

#[tokio::test]
async fn cluster_serves_tls_with_given_files() -> anyhow::Result<()> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cluster = Cluster::start(ClusterOptions {
        ssl: Some(SslFiles {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        }),
        ..ClusterOptions::default()
    })
    .await?;
    assert_eq!(cluster.tcp_dsn("postgres"), None);
    let key = std::fs::metadata(cluster.data_dir().join("server.key"))?;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let client = connect(&cluster.dsn("postgres")).await?;
    assert_eq!(show(&client, "ssl").await?, "on");
    Ok(())
}

#[tokio::test]
async fn reference_extension_can_be_created_when_available() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        return Ok(());
    }
    pgq_testkit::create_reference_extension(&client).await?;
    let row = client.query_one("SELECT pgq.version()", &[]).await?;
    assert!(!row.get::<_, String>(0).is_empty());
    Ok(())
}

#[tokio::test]
async fn serial_survives_a_panicking_holder() {
    let holder = tokio::spawn(async {
        let _guard = pgq_testkit::serial().await;
        panic!("a test failing while holding serial()");
    });
    assert!(holder.await.is_err());
    drop(pgq_testkit::serial().await);
}
