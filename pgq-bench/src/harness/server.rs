//! The server a benchmark runs on, and its scratch databases.

use std::sync::Mutex;

use anyhow::{Context as _, Result};
use pgq_core::{quote_ident, Dsn};
use pgq_testkit::{Cluster, ClusterOptions};

/// The settings the benchmark's figures depend on most, as `name = value, ...`.
// language=SQL
const SETTINGS: &str =
    "SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY name) \
     FROM pg_catalog.pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', \
     'wal_level', 'max_wal_size', 'checkpoint_timeout', 'autovacuum', 'work_mem', \
     'max_connections', 'jit')";

/// A server to benchmark on: the one named by a DSN, or a private throwaway cluster.
pub(crate) struct Server {
    /// Connection settings for the maintenance database, where scratch databases are created.
    maintenance: Dsn,
    /// The private cluster, when there was no DSN; dropping it stops and removes it.
    cluster: Option<Cluster>,
    /// Scratch databases created so far, dropped by [`Server::drop_scratch`].
    created: Mutex<Vec<String>>,
}

impl Server {
    /// The server `dsn` names, or a fresh private cluster listening on 127.0.0.1 when `None`.
    pub(crate) async fn open(dsn: Option<Dsn>) -> Result<Server> {
        let (maintenance, cluster) = match dsn {
            Some(dsn) => (dsn, None),
            None => {
                // `londiste` measures built-in logical replication between two of its
                // databases.
                let cluster = Cluster::start(ClusterOptions {
                    listen_tcp: true,
                    settings: vec![("wal_level".to_owned(), "logical".to_owned())],
                    ..Default::default()
                })
                .await
                .context("starting a private throwaway cluster (or give --dsn / PGQ_DSN)")?;
                let tcp = cluster
                    .tcp_dsn("postgres")
                    .context("the private cluster does not listen on TCP")?;
                (Dsn::parse(&tcp)?, Some(cluster))
            }
        };
        Ok(Server {
            maintenance,
            cluster,
            created: Mutex::new(Vec::new()),
        })
    }

    /// Connection settings for the maintenance database (not a scratch database).
    pub(crate) fn maintenance(&self) -> &Dsn {
        &self.maintenance
    }

    /// A few markdown lines saying which server this is and how it is set up.
    pub(crate) async fn describe(&self) -> Result<String> {
        let client = self
            .maintenance
            .connect()
            .await
            .context("connecting to the server")?;
        let version: String = client
            .query_one("SELECT current_setting('server_version')", &[])
            .await?
            .get(0);
        let settings: String = client
            .query_one(SETTINGS, &[])
            .await
            .context("reading the server's settings")?
            .get(0);
        let place = match &self.cluster {
            Some(cluster) => format!(
                "PostgreSQL {version} in a private throwaway cluster (removed when pgq-bench \
                 exits), over TCP on 127.0.0.1:{}.\nCluster settings: {}.",
                cluster.port(),
                cluster.settings_summary()
            ),
            None => format!(
                "PostgreSQL {version} at `{}`; scratch databases `pgq_bench_*` are dropped at \
                 the end.",
                self.maintenance
            ),
        };
        Ok(format!("{place}\nSettings that matter here: {settings}."))
    }

    /// Restarts the private cluster (every session ends; the data stays); `false` when the
    /// server is not the bench's own, which is left alone.
    pub(crate) async fn restart(&self) -> Result<bool> {
        match &self.cluster {
            Some(cluster) => {
                cluster
                    .restart()
                    .await
                    .context("restarting the private cluster")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Creates an empty database `pgq_bench_<pid>_<role>` (dropping a leftover of that name
    /// first) and returns its connection settings.
    pub(crate) async fn scratch_db(&self, role: &str) -> Result<Dsn> {
        let name = format!("pgq_bench_{}_{role}", std::process::id());
        let client = self.maintenance.connect().await?;
        let quoted = quote_ident(&name);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping leftover database {name}"))?;
        client
            .batch_execute(&format!("CREATE DATABASE {quoted} TEMPLATE template0"))
            .await
            .with_context(|| format!("creating scratch database {name}"))?;
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.clone());
        Ok(self.maintenance.with_dbname(&name))
    }

    /// Drops every scratch database created so far, even those still in use.
    pub(crate) async fn drop_scratch(&self) -> Result<()> {
        let names = std::mem::take(
            &mut *self
                .created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if names.is_empty() {
            return Ok(());
        }
        let client = self.maintenance.connect().await?;
        for name in names {
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                ))
                .await
                .with_context(|| format!("dropping scratch database {name}"))?;
        }
        Ok(())
    }
}
