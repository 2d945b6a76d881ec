//! Finding the one server a test process puts its databases on.

use std::any::Any;
use std::ffi::{OsStr, OsString};
use std::time::Duration;

use testcontainers::core::{IntoContainerPort as _, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{GenericImage, ImageExt as _};
use tokio::sync::OnceCell;
use tokio_postgres::Config;

use crate::cluster::{pg_bin_var, spawn_watchdog, Cluster, ClusterOptions};
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
///
/// With `PGQ_TEST_PG_BIN` set, it is a private cluster of those binaries or an error: never a
/// container, and [`TestkitError::ServerConflict`] when `PGQ_TEST_DSN` is set too.
pub async fn server_dsn() -> Result<String, TestkitError> {
    let config = maintenance().await?;
    Ok(render(
        config,
        None,
        config.get_dbname().unwrap_or("postgres"),
    ))
}

/// `PGQ_TEST_DSN` when it is set and `PGQ_TEST_PG_BIN` is not; an error when both are, since
/// tests would otherwise run on the DSN's server while the caller asked for those binaries.
fn test_dsn(dsn: Option<String>, pg_bin: Option<&OsStr>) -> Result<Option<String>, TestkitError> {
    let dsn = dsn.filter(|v| !v.trim().is_empty());
    match (dsn, pg_bin) {
        (Some(_), Some(bin_dir)) => Err(TestkitError::ServerConflict {
            bin_dir: bin_dir.to_string_lossy().into_owned(),
        }),
        (dsn, _) => Ok(dsn),
    }
}

async fn find() -> Result<Server, TestkitError> {
    let pg_bin = pg_bin_var();
    if let Some(dsn) = test_dsn(std::env::var(TEST_DSN_VAR).ok(), pg_bin.as_deref())? {
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
        // Another server would test another version than the one asked for.
        Err(e) if pg_bin.is_some() => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dsn_is_used_unless_a_bin_dir_is_asked_for() {
        let dsn = "host=/tmp port=5432".to_owned();
        assert_eq!(
            test_dsn(Some(dsn.clone()), None).unwrap(),
            Some(dsn.clone())
        );
        assert_eq!(test_dsn(Some("  ".to_owned()), None).unwrap(), None);
        assert_eq!(
            test_dsn(None, Some(OsStr::new("/pg/17/bin"))).unwrap(),
            None
        );
        assert_eq!(
            test_dsn(Some(" ".to_owned()), Some(OsStr::new("/pg/17/bin"))).unwrap(),
            None
        );
        let refused = test_dsn(Some(dsn), Some(OsStr::new("/pg/17/bin"))).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "PGQ_TEST_DSN and PGQ_TEST_PG_BIN are both set: tests would run on the PGQ_TEST_DSN \
             server, not on a cluster of the binaries in /pg/17/bin; unset one of them"
        );
    }
}
