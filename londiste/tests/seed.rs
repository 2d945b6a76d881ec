//! `londiste seed`: a subscriber made from a base backup of the provider, at an exact position,
//! with pgbench writing on the provider the whole time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use londiste::{Config, LondisteError, SeedOptions, SeedTables, TableState, Worker};
use pgq_core::{ConsumerName, Dsn, QueueName};
use pgq_testkit::{Cluster, ClusterOptions, Deadline, TempDir};
use tokio_postgres::Client;

use crate::common::{pgbench_init, pgbench_load, Pair};

/// pgbench's keyed tables and their keys (`pgbench_history` has no primary key).
const KEYED: &[(&str, &str)] = &[
    ("pgbench_accounts", "aid"),
    ("pgbench_branches", "bid"),
    ("pgbench_tellers", "tid"),
];

/// A provider cluster with pgbench's tables, and where a seeded copy of it goes.
struct Provider {
    cluster: Cluster,
    client: Client,
    dir: TempDir,
}

impl Provider {
    async fn new() -> anyhow::Result<Provider> {
        let cluster = Cluster::start(ClusterOptions {
            settings: vec![("max_prepared_transactions".to_owned(), "4".to_owned())],
            ..Default::default()
        })
        .await?;
        pgbench_init(&cluster.dsn("postgres"), 2).await?;
        let mut client = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
        pgq_core::install(
            &mut client,
            &[
                pgq_core::Line::Pgq,
                pgq_core::Line::PgqTriggers,
                pgq_core::Line::Londiste,
            ],
        )
        .await?;
        let dir = TempDir::new("pgqseed")?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        Ok(Provider {
            cluster,
            client,
            dir,
        })
    }

    /// A config whose subscriber is the copy at `port` (it keeps the provider's socket
    /// directory).
    fn config(&self, port: u16) -> anyhow::Result<Config> {
        let provider = Dsn::parse(&self.cluster.dsn("postgres"))?;
        let subscriber = Dsn::parse(&format!(
            "host={} port={port} dbname=postgres user=postgres",
            self.cluster.data_dir().display()
        ))?;
        Ok(Config::new(
            provider,
            subscriber,
            QueueName::new("seeded")?,
            None,
        ))
    }

    fn options(&self, name: &str, port: u16, start: bool) -> SeedOptions {
        SeedOptions {
            data_dir: self.dir.join(name),
            port,
            start,
            jobs: 2,
            bin_dir: pgq_testkit::bin_dir().ok().map(Path::to_path_buf),
            run_as: pgq_testkit::is_root().then(|| "postgres".to_owned()),
            // About 3 s for the cluster: writes and the open transactions overlap the backup.
            max_rate: Some(12 << 20),
        }
    }

    /// Consumers, seed plans, slots and capture triggers on the provider.
    async fn footprint(&self) -> anyhow::Result<(i64, i64, i64, i64)> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM pgq.subscription),
                        (SELECT count(*) FROM londiste_rs.seed_plan),
                        (SELECT count(*) FROM pg_replication_slots),
                        (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\\_londiste\\_rs\\_%')",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
    }
}

/// Inserts into `churn`, and deletes what it inserted two transactions before, until stopped.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<i64>>,
}

impl Churn {
    async fn start(cluster: &Cluster) -> anyhow::Result<Churn> {
        use std::sync::atomic::Ordering;
        let client = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut n = 0_i64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                client
                    .execute("INSERT INTO churn VALUES ($1, 'x')", &[&n])
                    .await?;
                if n % 3 == 0 {
                    client
                        .execute("DELETE FROM churn WHERE id = $1", &[&(n - 2)])
                        .await?;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(n)
        });
        Ok(Churn { stop, task })
    }

    /// Stops; returns how many rows it inserted.
    async fn stop(self) -> anyhow::Result<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await?
    }
}

/// A copy's server, stopped at once when the test ends.
struct Running(PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.join("postmaster.pid").exists() {
            let pg_ctl = pgq_testkit::bin_dir()
                .map(|d| d.join("pg_ctl"))
                .unwrap_or_default();
            let mut stop = if pgq_testkit::is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(pg_ctl);
                c
            } else {
                std::process::Command::new(pg_ctl)
            };
            let _ = stop
                .arg("stop")
                .arg("-D")
                .arg(&self.0)
                .args(["-m", "immediate", "-w", "-s"])
                .status();
        }
    }
}

/// Waits until the seed has registered its consumer (after its capture triggers are in place).
async fn registered(client: &Client) -> anyhow::Result<()> {
    let deadline = Deadline::after(Duration::from_secs(60));
    loop {
        let plans = client
            .query_opt(
                "SELECT 1 FROM londiste_rs.seed_plan p
                   JOIN pgq.consumer c ON c.co_name = p.consumer_name
                   JOIN pgq.subscription s ON s.sub_consumer = c.co_id",
                &[],
            )
            .await
            .ok()
            .flatten();
        if plans.is_some() {
            return Ok(());
        }
        deadline.pause("the seed to register its consumer").await?;
    }
}

/// Applies batches until the worker has caught up with the provider's last event.
async fn catch_up(config: &Config, provider: &Client, worker: &mut Worker) -> anyhow::Result<()> {
    let deadline = Deadline::after(Duration::from_secs(120));
    loop {
        pgq_core::force_tick(provider, &config.queue).await?;
        pgq_core::ticker(provider, &config.queue).await?;
        while worker.process_next_batch().await?.is_some() {}
        let status = londiste::status(config).await?;
        if status.pending_events == Some(0) {
            return Ok(());
        }
        deadline.pause("the worker to catch up").await?;
    }
}

async fn assert_equal(provider: &Client, subscriber: &Client) -> anyhow::Result<()> {
    for (table, key) in KEYED {
        let ours = Pair::md5(provider, table, key).await?;
        let theirs = Pair::md5(subscriber, table, key).await?;
        assert_eq!(ours, theirs, "{table} differs");
        assert!(ours.0 > 0, "{table} is empty");
    }
    Ok(())
}

/// The whole seed under load: an open transaction and a prepared one across the backup land
/// exactly once, the subscriber is like one made by add-table, and seeding it again is refused.
#[tokio::test]
async fn a_seed_under_load_lands_every_transaction_once() -> anyhow::Result<()> {
    let provider = Provider::new().await?;
    let port = pgq_testkit::free_port()?;
    let config = provider.config(port)?;
    let options = provider.options("copy", port, true);
    let _running = Running(options.data_dir.clone());
    // A logical subscription must not wake up in the copy and take the provider's slot.
    provider
        .client
        .batch_execute(
            "CREATE SUBSCRIPTION elsewhere CONNECTION 'host=/nonexistent dbname=x' \
             PUBLICATION p WITH (connect = false, slot_name = 'elsewhere')",
        )
        .await?;
    // Inserts and deletes as well as pgbench's updates: applied twice, they fail the batch.
    provider
        .client
        .batch_execute("CREATE TABLE churn (id bigint PRIMARY KEY, v text)")
        .await?;
    let churn = Churn::start(&provider.cluster).await?;
    // A transaction prepared in another database must be rolled back there in the copy.
    provider
        .client
        .batch_execute("CREATE DATABASE other")
        .await?;
    let other = Dsn::parse(&provider.cluster.dsn("other"))?
        .connect()
        .await?;
    other
        .batch_execute("BEGIN; CREATE TABLE pending (i int); PREPARE TRANSACTION 'elsewhere'")
        .await?;
    let mut load = pgbench_load(&provider.cluster.dsn("postgres"))?;
    let open = Dsn::parse(&provider.cluster.dsn("postgres"))?
        .connect()
        .await?;
    let prepared = Dsn::parse(&provider.cluster.dsn("postgres"))?
        .connect()
        .await?;
    let public = SeedTables::Schema("public".to_owned());
    let seeding = londiste::seed(&config, &public, &options);
    let across = async {
        registered(&provider.client).await?;
        open.batch_execute(
            "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1000000 WHERE aid = 1",
        )
        .await?;
        prepared
            .batch_execute(
                "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid = 2;
                 PREPARE TRANSACTION 'across_the_seed'",
            )
            .await?;
        anyhow::Ok(())
    };
    let (seeded, across) = tokio::join!(seeding, across);
    across?;
    let seeded = seeded?;
    assert!(seeded.finished);
    assert_eq!(seeded.tables.len(), 4, "{seeded:?}");
    open.batch_execute("COMMIT").await?;
    other.batch_execute("ROLLBACK PREPARED 'elsewhere'").await?;
    prepared
        .batch_execute("COMMIT PREPARED 'across_the_seed'")
        .await?;

    let subscriber = config.subscriber.connect().await?;
    let tables = londiste::tables(&config).await?;
    let expected: Vec<(String, TableState)> = std::iter::once("churn")
        .chain(KEYED.iter().map(|(t, _)| *t))
        .map(|t| (format!("public.{t}"), TableState::Ok))
        .collect();
    let listed: Vec<(String, TableState)> =
        tables.into_iter().map(|t| (t.table, t.state)).collect();
    assert_eq!(listed, expected);
    let identity = "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
                    (SELECT id::text FROM pgq_rs.installation)";
    let (p, s) = (
        provider.client.query_one(identity, &[]).await?,
        subscriber.query_one(identity, &[]).await?,
    );
    assert_ne!(
        p.get::<_, String>(0),
        s.get::<_, String>(0),
        "system identifier"
    );
    assert_ne!(
        p.get::<_, String>(1),
        s.get::<_, String>(1),
        "installation id"
    );
    let copy_state: (i64, i64, i64) = {
        let row = subscriber
            .query_one(
                "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\\_londiste\\_rs\\_%'),
                        (SELECT count(*) FROM pgq.queue),
                        (SELECT count(*) FROM pg_prepared_xacts)",
                &[],
            )
            .await?;
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        copy_state,
        (0, 0, 0),
        "provider-only state left in the copy"
    );
    let skipped: i64 = subscriber
        .query_one("SELECT count(*) FROM londiste_rs.seed_txid", &[])
        .await?
        .get(0);
    assert_eq!(Some(skipped), seeded.skipped_transactions);
    assert!(skipped > 0, "pgbench wrote during the backup: {seeded:?}");

    let balance = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    let in_copy: i32 = subscriber.query_one(balance, &[]).await?.get(0);
    assert!(
        in_copy < 500_000,
        "the open transaction is not in the copy: {in_copy}"
    );

    let mut worker = Worker::connect(&config).await?;
    catch_up(&config, &provider.client, &mut worker).await?;
    load.kill()?;
    let churned = churn.stop().await?;
    assert!(churned > 10, "{churned} churn transactions");
    catch_up(&config, &provider.client, &mut worker).await?;
    assert_equal(&provider.client, &subscriber).await?;
    assert_eq!(
        Pair::md5(&provider.client, "churn", "id").await?,
        Pair::md5(&subscriber, "churn", "id").await?
    );
    let seed_left: i64 = subscriber
        .query_one("SELECT count(*) FROM londiste_rs.seed_txid", &[])
        .await?
        .get(0);
    assert_eq!(seed_left, 0, "the worker forgets the seed once past it");
    assert_eq!(
        provider.footprint().await?,
        (1, 0, 0, 8),
        "(consumers, plans, slots, triggers)"
    );

    // Like a subscriber made by add-table: tables come and go.
    provider
        .client
        .batch_execute(
            "CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later VALUES (1, 'a')",
        )
        .await?;
    subscriber
        .batch_execute("CREATE TABLE later (id int PRIMARY KEY, v text)")
        .await?;
    londiste::add_tables(
        &config,
        &["public.later".to_owned()],
        &londiste::AddTableOptions::default(),
    )
    .await?;
    londiste::remove_table(&config, "public.pgbench_tellers").await?;
    provider
        .client
        .batch_execute(
            "INSERT INTO later VALUES (2, 'b'); UPDATE pgbench_tellers SET tbalance = tbalance + 1",
        )
        .await?;
    catch_up(&config, &provider.client, &mut worker).await?;
    assert_eq!(
        Pair::md5(&provider.client, "later", "id").await?,
        Pair::md5(&subscriber, "later", "id").await?
    );
    assert_ne!(
        Pair::md5(&provider.client, "pgbench_tellers", "tid").await?,
        Pair::md5(&subscriber, "pgbench_tellers", "tid").await?,
        "a removed table is no longer replicated"
    );

    let cancel = pgq_consumer::CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));
    let compared = londiste::compare(&config, None).await?;
    assert_eq!(compared.len(), 4, "{compared:?}");
    assert!(
        compared.iter().all(londiste::Comparison::equal),
        "{compared:?}"
    );
    cancel.cancel();
    running.await??;

    // Seeding it again is refused, and changes nothing.
    let again = provider.options("again", port, true);
    let before = provider.footprint().await?;
    let err = londiste::seed(
        &config,
        &SeedTables::Named(vec!["public.pgbench_branches".to_owned()]),
        &again,
    )
    .await
    .expect_err("the subscriber has the tables");
    assert!(
        err.to_string()
            .contains("already replicates public.churn, public.later, public.pgbench_accounts"),
        "{err}"
    );
    assert_eq!(provider.footprint().await?, before);
    Ok(())
}

/// Bad input is refused before anything changes; a seed that fails during the backup leaves
/// the provider clean and runs again; a copy left for the user to start is finished only once
/// it has promoted, and only against its own provider.
#[tokio::test]
async fn refused_and_interrupted_seeds_leave_the_provider_clean() -> anyhow::Result<()> {
    let provider = Provider::new().await?;
    let port = pgq_testkit::free_port()?;
    let config = provider.config(port)?;
    let clean = provider.footprint().await?;
    assert_eq!(clean, (0, 0, 0, 0));

    let named = |t: &[&str]| SeedTables::Named(t.iter().map(|t| (*t).to_owned()).collect());
    let err = londiste::seed(
        &config,
        &named(&["public.pgbench_accounts", "public.pgbench_history"]),
        &provider.options("a", port, true),
    )
    .await
    .expect_err("no primary key");
    assert!(matches!(err, LondisteError::NoPrimaryKey { .. }), "{err}");
    let file = provider.dir.write(
        "londiste.toml",
        &format!(
            "[londiste]\nprovider = {:?}\nsubscriber = {:?}\nqueue = \"seeded\"\n",
            config.provider.conninfo(),
            config.subscriber.conninfo()
        ),
    )?;
    let file = file.display().to_string();
    let data_dir = provider.dir.join("cli").display().to_string();
    let port_text = port.to_string();
    let (code, _, stderr) = pgq_testkit::run(
        env!("CARGO_BIN_EXE_londiste"),
        &[
            "--config",
            &file,
            "seed",
            "public.pgbench_history",
            "--data-dir",
            &data_dir,
            "--port",
            &port_text,
        ],
    )
    .await?;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("table public.pgbench_history has no primary key"),
        "{stderr}"
    );
    let (code, stdout, stderr) = pgq_testkit::run(
        env!("CARGO_BIN_EXE_londiste"),
        &["--config", &file, "--json", "seed-cancel"],
    )
    .await?;
    assert_eq!((code, stdout.trim()), (0, "[]"), "{stderr}");
    let used = provider.options("used", port, true);
    std::fs::create_dir_all(&used.data_dir)?;
    std::fs::write(used.data_dir.join("keep.txt"), "mine")?;
    let err = londiste::seed(&config, &named(&["public.pgbench_accounts"]), &used)
        .await
        .expect_err("data directory in use");
    assert!(err.to_string().contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(used.data_dir.join("keep.txt"))?,
        "mine"
    );
    assert_eq!(provider.footprint().await?, clean);
    // A server at the subscriber's address that refuses the login is still a server there.
    let mut taken = config.clone();
    taken.subscriber = config.provider.with_user("pgqt_no_such_role");
    let err = londiste::seed(
        &taken,
        &named(&["public.pgbench_accounts"]),
        &provider.options("taken", port, true),
    )
    .await
    .expect_err("a server answers");
    assert!(
        err.to_string()
            .contains("a server answers at the subscriber's address already"),
        "{err}"
    );
    assert_eq!(provider.footprint().await?, clean);

    // The backup fails midway: a file fetch is cut off.
    let interrupted = provider.options("interrupted", port, true);
    let killer = async {
        registered(&provider.client).await?;
        let deadline = Deadline::after(Duration::from_secs(60));
        loop {
            let killed: i64 = provider
                .client
                .query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE query LIKE '%pg_read_binary_file%' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await?
                .get(0);
            if killed > 0 {
                return anyhow::Ok(());
            }
            deadline.pause("a file fetch to cut off").await?;
        }
    };
    let accounts = named(&["public.pgbench_accounts"]);
    let (seeded, killed) = tokio::join!(londiste::seed(&config, &accounts, &interrupted), killer);
    killed?;
    let err = seeded.expect_err("the backup was cut off");
    assert!(matches!(err, LondisteError::Backup(_)), "{err:?}");
    let deadline = Deadline::after(Duration::from_secs(30));
    while provider.footprint().await? != clean {
        deadline.pause("the temporary slot to go").await?;
    }

    // Killed midway (the process dies): consumer and plan stay until the next seed.
    let killed = provider.options("killed", port, true);
    tokio::select! {
        seeded = londiste::seed(&config, &accounts, &killed) => {
            anyhow::bail!("the seed was to be killed midway: {seeded:?}");
        }
        waited = async {
            registered(&provider.client).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            anyhow::Ok(())
        } => waited?,
    }
    let deadline = Deadline::after(Duration::from_secs(30));
    while provider.footprint().await? != (1, 1, 0, 2) {
        deadline.pause("the killed seed's slot to go").await?;
    }

    // Left for the user to start; it pauses at the end of recovery instead of promoting. It
    // replaces the killed seed's consumer.
    let manual = provider.options("manual", port, false);
    let _running = Running(manual.data_dir.clone());
    let seeded = londiste::seed(&config, &named(&["public.pgbench_accounts"]), &manual).await?;
    assert!(!seeded.finished);
    assert_eq!(provider.footprint().await?, (1, 1, 0, 2));
    let conf = manual.data_dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&conf)?;
    for setting in [
        "recovery_target = 'immediate'",
        "synchronous_standby_names = ''",
        "archive_mode = 'off'",
        "autovacuum = 'off'",
        "listen_addresses = ''",
        "default_transaction_read_only = 'on'",
    ] {
        assert!(text.contains(setting), "{setting} missing:\n{text}");
    }
    std::fs::write(&conf, format!("{text}recovery_target_action = 'pause'\n"))?;
    start_as_user(&manual.data_dir).await?;
    let private = Dsn::parse(&format!(
        "host={} port={port} dbname=postgres user=postgres",
        manual.data_dir.join(pgq_basebackup::PRIVATE_DIR).display()
    ))?;
    let copy = {
        let deadline = Deadline::after(Duration::from_secs(60));
        loop {
            if let Ok(client) = private.connect().await {
                let paused: bool = client
                    .query_one("SELECT pg_get_wal_replay_pause_state() = 'paused'", &[])
                    .await?
                    .get(0);
                if paused {
                    break client;
                }
            }
            deadline
                .pause("the copy to pause at the end of the backup")
                .await?;
        }
    };
    let err = londiste::seed_finish(&config, &manual)
        .await
        .expect_err("not promoted");
    assert!(err.to_string().contains("still recovering"), "{err}");

    copy.batch_execute("SELECT pg_wal_replay_resume()").await?;
    let other = TestDbProvider::config(&config).await?;
    let deadline = Deadline::after(Duration::from_secs(60));
    loop {
        match londiste::seed_finish(&other.0, &manual).await {
            Err(err) if err.to_string().contains("still recovering") => {
                deadline.pause("the copy to promote").await?;
            }
            Err(err) => {
                assert!(
                    err.to_string().contains("is not a copy of this provider"),
                    "{err}"
                );
                break;
            }
            Ok(done) => anyhow::bail!("finished against another provider: {done:?}"),
        }
    }
    // The copy is read-only for everyone but the seed; a trigger planted on its bookkeeping
    // (it would run as the superuser finishing the seed) is refused.
    let err = copy
        .batch_execute("CREATE TABLE written_by_someone (i int)")
        .await
        .expect_err("read-only");
    assert!(
        format!("{err:?}").contains("read-only transaction"),
        "{err:?}"
    );
    let writer = Dsn::parse(&format!(
        "{} options='-c default_transaction_read_only=off'",
        private.conninfo()
    ))?
    .connect()
    .await?;
    writer
        .batch_execute(
            "CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER planted AFTER INSERT ON londiste_rs.seed_txid
               FOR EACH ROW EXECUTE FUNCTION public.planted();",
        )
        .await?;
    let err = londiste::seed_finish(&config, &manual)
        .await
        .expect_err("planted trigger");
    assert!(
        err.to_string()
            .contains("there is a trigger planted on table londiste_rs.seed_txid"),
        "{err}"
    );
    writer
        .batch_execute("DROP TRIGGER planted ON londiste_rs.seed_txid")
        .await?;
    // A bookkeeping table handed to a non-superuser role is refused the same way.
    writer
        .batch_execute("CREATE ROLE mallory; ALTER TABLE londiste_rs.seed_plan OWNER TO mallory")
        .await?;
    let err = londiste::seed_finish(&config, &manual)
        .await
        .expect_err("a table of another role");
    assert!(
        err.to_string()
            .contains("table londiste_rs.seed_plan belongs to role mallory"),
        "{err}"
    );
    writer
        .batch_execute("ALTER TABLE londiste_rs.seed_plan OWNER TO postgres; DROP ROLE mallory")
        .await?;
    drop((writer, copy));
    let done = londiste::seed_finish(&config, &manual).await?;
    assert!(done.finished && done.skipped_transactions.is_some());
    assert_eq!(provider.footprint().await?, (1, 0, 0, 2));
    start_as_user(&manual.data_dir).await?;
    let tables = londiste::tables(&config).await?;
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].state, TableState::Ok);

    // Another seed of the queue, abandoned before seed-finish.
    let elsewhere = pgq_testkit::free_port()?;
    let abandoned = provider.options("abandoned", elsewhere, false);
    let seeded = londiste::seed(&provider.config(elsewhere)?, &accounts, &abandoned).await?;
    assert_eq!(provider.footprint().await?, (2, 1, 0, 2));
    let cancelled = londiste::seed_cancel(&config).await?;
    assert_eq!(cancelled, vec![seeded.consumer]);
    assert_eq!(provider.footprint().await?, (1, 0, 0, 2));
    Ok(())
}

/// A config like `config` whose provider is another database (of the shared test server).
struct TestDbProvider(
    Config,
    #[allow(dead_code, reason = "dropping it drops the database")] pgq_testkit::TestDb,
);

impl TestDbProvider {
    async fn config(config: &Config) -> anyhow::Result<TestDbProvider> {
        let db = pgq_testkit::TestDb::new().await?;
        pgq_core::install(
            &mut db.client().await?,
            &[pgq_core::Line::Pgq, pgq_core::Line::Londiste],
        )
        .await?;
        let mut other = config.clone();
        other.provider = Dsn::parse(&db.dsn())?;
        other.consumer = Some(ConsumerName::new("unused")?);
        Ok(TestDbProvider(other, db))
    }
}

/// Starts a copy with `pg_ctl` as a user would.
async fn start_as_user(data: &Path) -> anyhow::Result<()> {
    let pg_ctl = pgq_testkit::bin_dir()?.join("pg_ctl");
    let log_path = data.join("user-start.log");
    let log = log_path.display().to_string();
    let data = data.display().to_string();
    let args = ["start", "-D", &data, "-l", &log, "-s"];
    let (code, out, err) = if pgq_testkit::is_root() {
        let pg_ctl = pg_ctl.display().to_string();
        let mut argv = vec!["-u", "postgres", "--", pg_ctl.as_str()];
        argv.extend(args);
        pgq_testkit::run("runuser", &argv).await?
    } else {
        pgq_testkit::run(pg_ctl, &args).await?
    };
    anyhow::ensure!(
        code == 0,
        "pg_ctl start: {out}{err}\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    Ok(())
}

/// A cluster in Debian's layout (configuration under /etc, made by `pg_createcluster`): the
/// copy gets the configuration fetched into its data directory and starts as the subscriber.
#[tokio::test]
async fn a_cluster_configured_under_etc_seeds() -> anyhow::Result<()> {
    if !pgq_testkit::is_root() || !Path::new("/usr/bin/pg_createcluster").exists() {
        pgq_testkit::reference_missing("pg_createcluster as root (package postgresql-common)")?;
        return Ok(());
    }
    let major = match std::env::var("PGQ_TEST_PG_BIN") {
        Ok(_) => return Ok(()),
        Err(_) => pgq_testkit::bin_dir()?
            .parent()
            .and_then(|p| p.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let name = format!("pgqseed{}", std::process::id());
    let port = pgq_testkit::free_port()?.to_string();
    let made = pgq_testkit::run(
        "pg_createcluster",
        &[&major, &name, "-p", &port, "--start", "--", "-A", "trust"],
    )
    .await?;
    let _dropped = DebianCluster(major.clone(), name.clone());
    anyhow::ensure!(made.0 == 0, "pg_createcluster: {}{}", made.1, made.2);
    let provider_dsn = Dsn::parse(&format!(
        "host=/var/run/postgresql port={port} dbname=postgres user=postgres"
    ))?;
    pgbench_init(&provider_dsn.conninfo(), 1).await?;
    let dir = TempDir::new("pgqseed")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let copy_port = pgq_testkit::free_port()?;
    let config = Config::new(
        provider_dsn.clone(),
        Dsn::parse(&format!(
            "host=/var/run/postgresql port={copy_port} dbname=postgres user=postgres"
        ))?,
        QueueName::new("debian")?,
        None,
    );
    let options = SeedOptions {
        data_dir: dir.join("copy"),
        port: copy_port,
        start: true,
        jobs: 2,
        bin_dir: None,
        run_as: Some("postgres".to_owned()),
        max_rate: None,
    };
    let _running = Running(options.data_dir.clone());
    let tables = SeedTables::Named(vec![
        "public.pgbench_accounts".to_owned(),
        "public.pgbench_branches".to_owned(),
    ]);
    let seeded = londiste::seed(&config, &tables, &options).await?;
    assert!(seeded.finished);
    let conf = std::fs::read_to_string(options.data_dir.join("postgresql.conf"))?;
    assert!(conf.contains("#pgq-basebackup# data_directory"), "{conf}");
    let provider = provider_dsn.connect().await?;
    provider
        .batch_execute("UPDATE pgbench_accounts SET abalance = 42 WHERE aid < 100")
        .await?;
    let mut worker = Worker::connect(&config).await?;
    catch_up(&config, &provider, &mut worker).await?;
    let subscriber = config.subscriber.connect().await?;
    for (table, key) in &KEYED[..2] {
        assert_eq!(
            Pair::md5(&provider, table, key).await?,
            Pair::md5(&subscriber, table, key).await?,
            "{table}"
        );
    }
    Ok(())
}

/// A `pg_createcluster` cluster, dropped (and stopped) when the test ends.
struct DebianCluster(String, String);

impl Drop for DebianCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pg_dropcluster")
            .args(["--stop", &self.0, &self.1])
            .status();
    }
}
