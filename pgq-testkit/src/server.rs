//! Finding the one server a test process puts its databases on.

use std::any::Any;
use std::ffi::OsString;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort as _, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{GenericImage, ImageExt as _};
use tokio::sync::OnceCell;
use tokio_postgres::Config;

use crate::cluster::{spawn_watchdog, Cluster, ClusterOptions};
use crate::dsn::{connect, render};
use crate::TestkitError;

/// The environment variable naming an existing server to use.
pub(crate) const TEST_DSN_VAR: &str = "PGQ_TEST_DSN";

/// How long a fresh container gets to accept connections.
const CONTAINER_READY: Duration = Duration::from_secs(60);

/// The shared server: its maintenance database's configuration, and whatever keeps it alive
/// (a [`Cluster`] or a container; never dropped, the watchdog cleans up at exit).
struct Server {
    maintenance: Config,
    _keep_alive: Option<Box<dyn Any + Send + Sync>>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// The maintenance database of the shared test server, found (or started) once per process.
pub(crate) async fn maintenance() -> Result<&'static Config, TestkitError> {
    let server = SERVER.get_or_try_init(find).await?;
    Ok(&server.maintenance)
}

/// The maintenance database's connection string (superuser) on the shared test server.
///
/// In order: `PGQ_TEST_DSN` when set (its database is the maintenance database; `postgres` when
/// it names none, and user `postgres` when it names none); else a private cluster for this test
/// process, started once and stopped when the process exits; else a testcontainers PostgreSQL when
/// a Docker engine answers; else [`TestkitError::NoServer`].
pub async fn server_dsn() -> Result<String, TestkitError> {
    let config = maintenance().await?;
    Ok(render(
        config,
        None,
        config.get_dbname().unwrap_or("postgres"),
    ))
}

async fn find() -> Result<Server, TestkitError> {
    if let Some(dsn) = std::env::var(TEST_DSN_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        let mut maintenance: Config = dsn
            .parse()
            .map_err(|source| TestkitError::BadDsn { source })?;
        if maintenance.get_dbname().is_none() {
            maintenance.dbname("postgres");
        }
        if maintenance.get_user().is_none() {
            maintenance.user("postgres");
        }
        return Ok(Server {
            maintenance,
            _keep_alive: None,
        });
    }
    let cluster_failure = match Cluster::start(ClusterOptions::default()).await {
        Ok(cluster) => {
            let maintenance = cluster
                .dsn("postgres")
                .parse()
                .map_err(|source| TestkitError::BadDsn { source })?;
            tracing::info!(data_dir = %cluster.data_dir().display(), "pgq-testkit started a private cluster");
            return Ok(Server {
                maintenance,
                _keep_alive: Some(Box::new(cluster)),
            });
        }
        Err(e) => e.to_string(),
    };
    match start_container().await {
        Ok(server) => Ok(server),
        Err(container_failure) => Err(TestkitError::NoServer {
            tried: format!(
                "private cluster: {cluster_failure}; testcontainers: {container_failure}"
            ),
        }),
    }
}

/// Starts a PostgreSQL container, removed by a watchdog (`docker rm -f`) when the process exits.
async fn start_container() -> Result<Server, String> {
    let container = GenericImage::new("postgres", "15-alpine")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_cmd([
            "postgres",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ])
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let cleanup: Vec<OsString> = ["docker", "rm", "-f", "-v", container.id()]
        .map(OsString::from)
        .to_vec();
    spawn_watchdog(None, &cleanup).map_err(|e| e.to_string())?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .map_err(|e| e.to_string())?;
    let mut maintenance = Config::new();
    maintenance
        .host(host.to_string())
        .port(port)
        .user("postgres")
        .dbname("postgres");
    // The image's init phase runs a socket-only server first; wait for the real one.
    let deadline = tokio::time::Instant::now() + CONTAINER_READY;
    loop {
        match connect(&maintenance, "the test container").await {
            Ok(client) => match client.simple_query("SELECT 1").await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => {}
            },
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Server {
        maintenance,
        _keep_alive: Some(Box::new(container)),
    })
}
