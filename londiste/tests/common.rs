//! A provider and a subscriber database per test, with the replicator initialized.

use std::time::Duration;

use londiste::{Config, LondisteError, TableState, Worker};
use pgq_core::{ConsumerName, Dsn, QueueName};
use pgq_testkit::{Deadline, TestDb};
use tokio_postgres::Client;

pub(crate) struct Pair {
    pub(crate) config: Config,
    pub(crate) provider: Client,
    pub(crate) subscriber: Client,
    pub(crate) dbs: (TestDb, TestDb),
}

impl Pair {
    pub(crate) async fn new() -> anyhow::Result<Pair> {
        let provider_db = TestDb::new().await?;
        let subscriber_db = TestDb::new().await?;
        let config = Config::new(
            Dsn::parse(&provider_db.dsn())?,
            Dsn::parse(&subscriber_db.dsn())?,
            QueueName::new("replica")?,
            Some(ConsumerName::new("worker")?),
        );
        londiste::init(&config).await?;
        let provider = provider_db.client().await?;
        let subscriber = subscriber_db.client().await?;
        Ok(Pair {
            config,
            provider,
            subscriber,
            dbs: (provider_db, subscriber_db),
        })
    }

    /// Another subscriber of the pair's queue, initialized, with its own consumer.
    pub(crate) async fn second_subscriber(
        &self,
        consumer: &str,
    ) -> anyhow::Result<(Config, TestDb, Client)> {
        let db = TestDb::new().await?;
        let mut config = self.config.clone();
        config.subscriber = Dsn::parse(&db.dsn())?;
        config.consumer = Some(ConsumerName::new(consumer)?);
        londiste::init(&config).await?;
        let client = db.client().await?;
        Ok((config, db, client))
    }

    /// Writes this pair's config file into `dir`, with `extra` TOML after the `[londiste]`
    /// section.
    pub(crate) fn write_config(
        &self,
        dir: &pgq_testkit::TempDir,
        extra: &str,
    ) -> anyhow::Result<std::path::PathBuf> {
        Ok(dir.write(
            "londiste.toml",
            &format!(
                "[londiste]\nprovider = \"{}\"\nsubscriber = \"{}\"\nqueue = \"{}\"\nconsumer = \"{}\"\n\n{extra}",
                self.config.provider,
                self.config.subscriber,
                self.config.queue,
                self.config.consumer.as_ref().expect("Pair names its consumer")
            ),
        )?)
    }

    /// Runs the same SQL on both sides (table definitions).
    pub(crate) async fn both(&self, sql: &str) -> anyhow::Result<()> {
        self.provider.batch_execute(sql).await?;
        self.subscriber.batch_execute(sql).await?;
        Ok(())
    }

    /// Makes a tick now.
    pub(crate) async fn tick(&self) -> anyhow::Result<()> {
        pgq_core::force_tick(&self.provider, &self.config.queue).await?;
        pgq_core::ticker(&self.provider, &self.config.queue).await?;
        Ok(())
    }

    /// Ticks, then applies batches until none is left.
    pub(crate) async fn drain(&self, worker: &mut Worker) -> anyhow::Result<usize> {
        self.tick().await?;
        let mut batches = 0;
        let deadline = Deadline::after(Duration::from_secs(60));
        loop {
            anyhow::ensure!(!deadline.passed(), "drain did not finish");
            match worker.process_next_batch().await {
                Ok(Some(_)) => batches += 1,
                Ok(None) => return Ok(batches),
                Err(LondisteError::Consumer(pgq_consumer::ConsumerError::Postponed { .. })) => {
                    deadline.pause("a postponed batch to go through").await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A new worker for `config`, once a dropped one's session has let go of the consumer.
    pub(crate) async fn worker(config: &Config) -> anyhow::Result<Worker> {
        let deadline = Deadline::after(Duration::from_secs(30));
        loop {
            match Worker::connect(config).await {
                Err(LondisteError::Consumer(pgq_consumer::ConsumerError::ConsumerBusy {
                    ..
                })) => deadline.pause("a dropped worker to let go").await?,
                other => return Ok(other?),
            }
        }
    }

    /// Ordered md5 of a table's rows on one side.
    pub(crate) async fn md5(
        client: &Client,
        table: &str,
        key: &str,
    ) -> anyhow::Result<(i64, String)> {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {key})), '') FROM {table} t"
                ),
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Asserts both sides hold the same rows.
    pub(crate) async fn assert_same(&self, table: &str, key: &str) -> anyhow::Result<i64> {
        let provider = Pair::md5(&self.provider, table, key).await?;
        let subscriber = Pair::md5(&self.subscriber, table, key).await?;
        assert_eq!(provider, subscriber, "{table} differs");
        Ok(provider.0)
    }

    /// The state of a replicated table; `None` for a table not replicated.
    pub(crate) async fn state(&self, table: &str) -> anyhow::Result<Option<TableState>> {
        let tables = londiste::tables(&self.config).await?;
        Ok(tables
            .into_iter()
            .find(|t| t.table == table)
            .map(|t| t.state))
    }
}

/// pgbench's tables at `scale` in the database `dsn` names.
pub(crate) async fn pgbench_init(dsn: &str, scale: u32) -> anyhow::Result<()> {
    let (code, out, err) = pgq_testkit::run(
        pgq_testkit::client_program("pgbench"),
        &["-i", "-s", &scale.to_string(), "-q", dsn],
    )
    .await?;
    anyhow::ensure!(code == 0, "pgbench -i: {out}{err}");
    Ok(())
}

/// pgbench's TPC-B load (two clients) on the database `dsn` names, until killed.
pub(crate) fn pgbench_load(dsn: &str) -> anyhow::Result<pgq_testkit::Process> {
    Ok(pgq_testkit::Process::spawn(
        std::process::Command::new(pgq_testkit::client_program("pgbench"))
            .args(["-n", "-c", "2", "-T", "600"])
            .arg(dsn),
    )?)
}
