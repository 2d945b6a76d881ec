//! Source clusters, a write load, and table checksums.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pgq_core::tokio_postgres::Client;
use pgq_core::Dsn;
use pgq_testkit::{Cluster, ClusterOptions, TempDir};

/// Tables of the test data set.
pub(crate) const TABLES: &[&str] = &["accounts", "history", "wide"];

/// A source cluster with WAL for backups and replication.
pub(crate) async fn source() -> anyhow::Result<Cluster> {
    let settings = [
        ("wal_level", "replica"),
        ("max_wal_senders", "4"),
        ("max_replication_slots", "4"),
    ];
    Ok(Cluster::start(ClusterOptions {
        listen_tcp: true,
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    })
    .await?)
}

/// The connection string of a cluster's `postgres` database over TCP.
pub(crate) fn tcp_dsn(cluster: &Cluster) -> anyhow::Result<String> {
    cluster
        .tcp_dsn("postgres")
        .ok_or_else(|| anyhow::anyhow!("no TCP"))
}

/// The DSN of a cluster's `postgres` database over TCP.
pub(crate) fn dsn(cluster: &Cluster) -> anyhow::Result<Dsn> {
    Ok(Dsn::parse(&tcp_dsn(cluster)?)?)
}

/// A [`source`] cluster, its DSN and a connection to it.
pub(crate) async fn connected_source() -> anyhow::Result<(Cluster, Dsn, Client)> {
    let source = source().await?;
    let dsn = dsn(&source)?;
    let client = dsn.connect().await?;
    Ok((source, dsn, client))
}

/// Creates the tables: `accounts` (a few MiB, split over chunks), `history`, and `wide`
/// (TOASTed values).
pub(crate) async fn fill(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, filler text);
             INSERT INTO accounts SELECT i, 0, repeat('x', 80) FROM generate_series(1, 60000) i;
             CREATE TABLE history (id bigserial PRIMARY KEY, account int, delta int);
             CREATE TABLE wide (id int PRIMARY KEY, body text);
             INSERT INTO wide SELECT i, string_agg(md5(i::text || j::text), '')
               FROM generate_series(1, 200) i, generate_series(1, 100) j GROUP BY i;",
        )
        .await?;
    Ok(())
}

/// A pgbench-like write load until `stop`: updates, inserts, and a table created and dropped
/// now and then (its files vanish under the backup).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<usize>>,
    /// Transactions committed so far.
    pub(crate) done: Arc<AtomicUsize>,
}

impl Load {
    pub(crate) async fn start(dsn: &Dsn) -> anyhow::Result<Load> {
        let client = dsn.connect().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&done));
        let task = tokio::spawn(async move {
            let mut n = 0_usize;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let id = i32::try_from(n * 7919 % 60000 + 1)?;
                client
                    .execute(
                        "WITH u AS (UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING id)
                         INSERT INTO history (account, delta) SELECT id, 1 FROM u",
                        &[&id],
                    )
                    .await?;
                if n % 200 == 0 {
                    client
                        .batch_execute(
                            "CREATE TABLE scratch AS SELECT generate_series(1, 20000) AS i;
                             DROP TABLE scratch;",
                        )
                        .await?;
                }
                count.store(n, Ordering::Relaxed);
            }
            Ok(n)
        });
        Ok(Load { stop, task, done })
    }

    /// Stops the load and waits for its last transaction; returns how many it committed.
    pub(crate) async fn stop(self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// `md5` of every row of each table of the data set, in key order.
pub(crate) async fn checksums(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    checksums_of(client, TABLES).await
}

/// `md5` of every row of each table, in `id` order.
pub(crate) async fn checksums_of(
    client: &Client,
    tables: &[&str],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut sums = Vec::new();
    for table in tables {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM {table} t"
                ),
                &[],
            )
            .await?;
        sums.push(((*table).to_owned(), row.get(0)));
    }
    Ok(sums)
}

/// A path (not created) in a fresh directory of its own, which goes when this is dropped.
pub(crate) struct Scratch {
    path: PathBuf,
    _dir: TempDir,
}

impl Scratch {
    pub(crate) fn new(name: &str) -> anyhow::Result<Scratch> {
        let dir = TempDir::new("pgqbb")?;
        Ok(Scratch {
            path: dir.join(name),
            _dir: dir,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Asserts that `pg_verifybackup` accepts the backup in `dir`.
pub(crate) async fn assert_pg_verifybackup_accepts(dir: &Path) -> anyhow::Result<()> {
    let (code, out, err) = pgq_testkit::run(
        pgq_testkit::client_program("pg_verifybackup"),
        &[&dir.display().to_string()],
    )
    .await?;
    assert_eq!(code, 0, "pg_verifybackup: {out}{err}");
    Ok(())
}

/// Files under `dir` (links not followed) whose bytes contain `needle`.
pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file()
                && std::fs::read(entry.path())?
                    .windows(needle.len())
                    .any(|w| w == needle)
            {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

/// Hands `path` (and what it holds) to the server's user, as the tests run as root.
pub(crate) async fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    let (code, out, err) =
        pgq_testkit::run("chown", &["-R", "postgres", &path.display().to_string()]).await?;
    anyhow::ensure!(code == 0, "chown: {out}{err}");
    Ok(())
}
