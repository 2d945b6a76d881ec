//! One fresh database per test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pgq_core::quote_ident;
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

use crate::dsn::{connect, pg_error, render};
use crate::{server, TestkitError};

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_NAME: usize = 63;

/// How long `CREATE DATABASE` keeps retrying while its template is busy.
const CREATE_PATIENCE: Duration = Duration::from_secs(30);

/// A fresh, empty database on the shared test server (see [`server_dsn`](crate::server_dsn)),
/// owned by one test.
///
/// Dropping it after the test passed drops the database `WITH (FORCE)`; when the test is
/// panicking the database is kept and its name printed, for a look afterwards. Databases of a
/// private cluster go with the cluster when the process exits; on a `PGQ_TEST_DSN` server, kept
/// databases stay until removed by hand (`DROP DATABASE "pgqt_…"`).
#[derive(Debug)]
pub struct TestDb {
    name: String,
    maintenance: Config,
}

impl TestDb {
    /// Creates a fresh empty database (from `template0`) named `pgqt_<test>_<pid>_<n>`, where
    /// `<test>` is the current thread's name (the test's path under the test harness), sanitized
    /// and cut so the name fits in 63 bytes.
    pub async fn new() -> Result<TestDb, TestkitError> {
        let maintenance = server::maintenance().await?.clone();
        let name = next_name(std::thread::current().name().unwrap_or("anon"));
        create_database(&maintenance, &name).await?;
        Ok(TestDb { name, maintenance })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keyword/value connection string for this database as the superuser, e.g.
    /// `host=/tmp/pgqt-1-0/data port=40213 user=postgres dbname=pgqt_it_works_1234_0`.
    pub fn dsn(&self) -> String {
        render(&self.maintenance, None, &self.name)
    }

    /// Like [`dsn`](Self::dsn), connecting as `user` instead (for tests about roles).
    pub fn dsn_as(&self, user: &str) -> String {
        render(&self.maintenance, Some(user), &self.name)
    }

    /// A fresh, un-pooled connection as the superuser; its connection task runs on the current
    /// runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client, TestkitError> {
        connect(&self.config(), &self.name).await
    }

    /// A pool of at most `size` connections to this database, as the superuser.
    pub fn pool(&self, size: usize) -> Pool {
        let manager = Manager::from_config(
            self.config(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime always builds")
    }

    /// Takes the database away (`ALLOW_CONNECTIONS false`, then every session of it cut off,
    /// the test's own included) or gives it back: an outage for tests of reconnection and
    /// health.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Postgres`] from the maintenance database.
    pub async fn allow_connections(&self, allowed: bool) -> Result<(), TestkitError> {
        let admin = connect(&self.maintenance, "the maintenance database").await?;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allowed}",
                quote_ident(&self.name)
            ))
            .await
            .map_err(|e| pg_error(format!("setting ALLOW_CONNECTIONS on {}", self.name), e))?;
        if !allowed {
            admin
                .execute(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                     WHERE datname = $1",
                    &[&self.name],
                )
                .await
                .map_err(|e| pg_error(format!("cutting off the sessions of {}", self.name), e))?;
        }
        Ok(())
    }

    fn config(&self) -> Config {
        let mut config = self.maintenance.clone();
        config.dbname(&self.name);
        config
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "pgq-testkit: test failed, keeping database {} ({})",
                self.name,
                self.dsn()
            );
            return;
        }
        let maintenance = self.maintenance.clone();
        let name = self.name.clone();
        // A runtime of its own on a thread of its own: works under any #[tokio::test] flavor.
        let dropped = std::thread::Builder::new()
            .name("pgq-testkit-drop".to_owned())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(drop_database(&maintenance, &name))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())
            .and_then(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err("the drop thread panicked".to_owned()))
            });
        if let Err(e) = dropped {
            eprintln!("pgq-testkit: could not drop database {}: {e}", self.name);
        }
    }
}

/// `pgqt_<sanitized thread name>_<pid>_<n>`, at most 63 bytes; the end of the test name is kept.
fn next_name(thread: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let suffix = format!(
        "_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut test = String::new();
    for c in thread.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        };
        if !(c == '_' && (test.is_empty() || test.ends_with('_'))) {
            test.push(c);
        }
    }
    let room = MAX_NAME - "pgqt_".len() - suffix.len();
    // Only ASCII is left, so any byte offset is a character boundary.
    let test = test[test.len().saturating_sub(room)..].trim_matches('_');
    let test = if test.is_empty() { "anon" } else { test };
    format!("pgqt_{test}{suffix}")
}

/// Serializes `CREATE DATABASE` within the process.
static CREATE_LOCK: Mutex<()> = Mutex::const_new(());

async fn create_database(maintenance: &Config, name: &str) -> Result<(), TestkitError> {
    let client = connect(maintenance, "the maintenance database").await?;
    let sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    let deadline = tokio::time::Instant::now() + CREATE_PATIENCE;
    let mut backoff = Duration::from_millis(10);
    let _serialized = CREATE_LOCK.lock().await;
    loop {
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.code() == Some(&SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(pg_error(format!("creating database {name}"), e)),
        }
    }
}

async fn drop_database(maintenance: &Config, name: &str) -> Result<(), TestkitError> {
    let client = connect(maintenance, "the maintenance database").await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(|e| pg_error(format!("dropping database {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::next_name;

    #[test]
    fn names_are_sanitized_and_fit() {
        let name = next_name("tests::Queue::create works");
        assert!(name.starts_with("pgqt_tests_queue_create_works_"), "{name}");
        let long = next_name(&"very_long_module::".repeat(10));
        assert!(long.len() <= 63, "{long}");
        assert!(long.starts_with("pgqt_"), "{long}");
        assert!(!long.contains("__"), "{long}");
        assert!(next_name("::").starts_with("pgqt_anon_"));
        assert_ne!(next_name("a"), next_name("a"));
    }
}
