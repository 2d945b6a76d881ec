//! Scenario `seed`: a londiste subscriber of a pgbench provider under pgbench load, made from a
//! base backup of the provider (`londiste::seed`) or by `add-table --parallel-copy 2`: the
//! time until it has every keyed table `ok`, alternating within each run.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use londiste::{AddTableOptions, Config, SeedOptions, SeedTables, TableState, Worker};
use pgq_consumer::CancellationToken;
use pgq_core::{quote_conninfo_value, ConsumerName, Dsn, QueueName};
use pgq_testkit::{client_program, Cluster, ClusterOptions, Process};

use crate::harness::{Bench, Server, WorkDir};
use crate::report::{mib, Limit, Measures, Report};

/// pgbench's tables with a primary key, which a seed of schema `public` replicates
/// (`pgbench_history` has none).
const KEYED: [&str; 3] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
];

/// Row counts of [`KEYED`].
// language=SQL
const COUNTS: &str = "SELECT (SELECT count(*) FROM public.pgbench_accounts), \
     (SELECT count(*) FROM public.pgbench_branches), \
     (SELECT count(*) FROM public.pgbench_tellers)";

/// The size of every database of a cluster, in MiB.
// language=SQL
const DATABASES_MIB: &str = "SELECT (sum(pg_catalog.pg_database_size(oid)) / 1048576)::float8 \
     FROM pg_catalog.pg_database";

/// pgbench clients of the load; it would run this long, but is stopped once a variant has been
/// measured.
const LOAD_CLIENTS: &str = "2";
const LOAD_SECONDS: &str = "3600";
/// Jobs of the seed's base backup and copy connections of add-table.
const PARALLEL: u32 = 2;
/// How long add-table may wait for a table to become ok.
const OK_WAIT: Duration = Duration::from_secs(3600);
/// The operating system user the seeded copy's server runs as when the bench runs as root.
const SERVER_USER: &str = "postgres";

const SEED_QUEUE: &str = "bench_seed";
const ADD_QUEUE: &str = "bench_add";

const SEED: &str = "seed from a base backup (-j 2)";
const ADD_TABLE: &str = "add-table --parallel-copy 2";
const TO_OK: &str = "until every keyed table is ok";
const BACKUP_PART: &str = "of which the base backup";
const BACKUP_SIZE: &str = "base backup";
const PROVIDER_SIZE: &str = "provider databases (sum of pg_database_size) at the run's start";
const SEED_VS_ADD: &str = "seed / add-table time in the same run";
/// The most a seed may take, as a share of add-table's time in the same run.
const MAX_SEED_VS_ADD: f64 = 0.5;

/// How the figures are made.
fn method(scale: u32) -> Vec<String> {
    vec![
        format!(
            "Provider: a private cluster (wal_level=replica, fsync=off) filled with `pgbench -i \
             -s {scale}`; its keyed tables are {}. `pgbench -n -c {LOAD_CLIENTS}` (TPC-B) runs \
             against it from just before each variant's clock starts until the variant has \
             been measured.",
            KEYED.join(", ")
        ),
        format!(
            "{SEED}: `londiste::seed` of schema public with {PARALLEL} backup jobs into a copy \
             on this machine, started on a port of its own; the clock runs from the call until \
             it returns with the copy running as the subscriber and every table ok. The copy \
             is then stopped (`-m immediate`) and removed."
        ),
        format!(
            "{ADD_TABLE}: `londiste::init` on a fresh scratch database of the bench's server \
             (the private throwaway cluster unless `--dsn`), a `Worker` in this process, then \
             the clock runs from `add_tables` of the three tables (create, {PARALLEL} copy \
             connections, one table after the other as `londiste add-table --create \
             --parallel-copy {PARALLEL}` adds them) until the last one is ok."
        ),
        format!(
            "After each variant every table is checked ok and its row count equal on both \
             sides (the load adds no rows to them), then the tables leave the replication and \
             the queue is dropped, so each variant starts from a provider without capture \
             triggers. `{SEED_VS_ADD}` divides the seed's time by add-table's; its median is \
             held to {MAX_SEED_VS_ADD}."
        ),
    ]
}

/// Runs the scenario on its own provider cluster (the bench's server holds add-table's
/// subscribers).
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let plan = bench.plan;
    let scale = plan.seed_scale;
    let provider = Cluster::start(ClusterOptions {
        settings: vec![("wal_level".to_owned(), "replica".to_owned())],
        ..Default::default()
    })
    .await
    .context("starting the provider cluster")?;
    let fill = Instant::now();
    let (code, out, err) = pgq_testkit::run(
        client_program("pgbench"),
        &[
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            &provider.dsn("postgres"),
        ],
    )
    .await?;
    ensure!(code == 0, "pgbench -i failed: {out}{err}");
    tracing::info!(scale, elapsed = ?fill.elapsed(), "provider filled");
    let work_dir = WorkDir::new("seed")?;
    // The copy's server runs as its own user, who must reach the copy.
    std::fs::set_permissions(work_dir.path(), std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", work_dir.path().display()))?;

    let mut measures = Measures::default();
    for run in 1..=plan.runs {
        let size: f64 = Dsn::parse(&provider.dsn("postgres"))?
            .connect()
            .await?
            .query_one(DATABASES_MIB, &[])
            .await?
            .get(0);
        let (seed_seconds, seeded) = seed_once(&provider, &work_dir, run)
            .await
            .with_context(|| format!("{SEED} (run {run})"))?;
        let add_seconds = add_table_once(&provider, bench.server, run)
            .await
            .with_context(|| format!("{ADD_TABLE} (run {run})"))?;
        tracing::info!(run, seed_seconds, add_seconds, "measured");
        measures.push(TO_OK, SEED, "seconds", seed_seconds);
        measures.push(TO_OK, ADD_TABLE, "seconds", add_seconds);
        measures.push(SEED_VS_ADD, SEED, "ratio", seed_seconds / add_seconds);
        measures.push(BACKUP_PART, SEED, "seconds", seeded.backup_seconds);
        measures.push(BACKUP_SIZE, SEED, "MiB", mib(seeded.backup_bytes));
        measures.push(PROVIDER_SIZE, "provider", "MiB", size);
    }
    let measures = measures.into_vec();
    let limits = vec![Limit::of(
        SEED_VS_ADD,
        measures.iter().find(|m| m.what == SEED_VS_ADD),
        MAX_SEED_VS_ADD,
    )];
    Ok(Report {
        scenario: "seed",
        notes: method(scale),
        series: Vec::new(),
        ratios: Vec::new(),
        measures,
        limits,
    })
}

/// Seeds a subscriber from a base backup of the provider under load: the seconds until every
/// table is ok, and what the seed reports. Checks it, takes the tables out of the replication
/// and removes the copy.
async fn seed_once(
    provider: &Cluster,
    work_dir: &WorkDir,
    run: u32,
) -> Result<(f64, londiste::Seeded)> {
    let port = pgq_testkit::free_port()?;
    // The copy keeps the provider's settings, its socket directory among them.
    let subscriber = Dsn::parse(&format!(
        "host={} port={port} dbname=postgres user=postgres",
        quote_conninfo_value(&provider.data_dir().display().to_string())
    ))?;
    let config = Config::new(
        Dsn::parse(&provider.dsn("postgres"))?,
        subscriber,
        QueueName::new(SEED_QUEUE)?,
        None,
    );
    let bin_dir = pgq_testkit::bin_dir()?;
    let copy = SeededCopy {
        pg_ctl: bin_dir.join("pg_ctl"),
        data: work_dir.join(format!("copy{run}")),
    };
    let options = SeedOptions {
        data_dir: copy.data.clone(),
        port,
        start: true,
        jobs: usize::try_from(PARALLEL)?,
        bin_dir: Some(bin_dir.to_path_buf()),
        run_as: pgq_testkit::is_root().then(|| SERVER_USER.to_owned()),
        max_rate: None,
    };
    let load = Load::start(provider)?;
    let started = Instant::now();
    let seeded =
        londiste::seed(&config, &SeedTables::Schema("public".to_owned()), &options).await?;
    let seconds = started.elapsed().as_secs_f64();
    load.stop()?;
    ensure!(seeded.finished, "the seed did not finish: {seeded:?}");
    check(&config).await?;
    teardown(&config).await?;
    Ok((seconds, seeded))
}

/// Adds the keyed tables to a fresh subscriber database with a worker running, under load;
/// the seconds until the last one is ok. Checks them and takes them out of the replication.
async fn add_table_once(provider: &Cluster, server: &Server, run: u32) -> Result<f64> {
    let config = Config::new(
        Dsn::parse(&provider.dsn("postgres"))?,
        server.scratch_db(&format!("seed_sub{run}")).await?,
        QueueName::new(ADD_QUEUE)?,
        Some(ConsumerName::new("bench_worker")?),
    );
    londiste::init(&config).await?;
    let load = Load::start(provider)?;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(Worker::connect(&config).await?.run(cancel.clone()));
    let options = AddTableOptions {
        create: true,
        parallel_copy: PARALLEL,
        wait: OK_WAIT,
        ..AddTableOptions::default()
    };
    let started = Instant::now();
    let added = londiste::add_tables(&config, &KEYED.map(str::to_owned), &options).await;
    let seconds = started.elapsed().as_secs_f64();
    cancel.cancel();
    worker.await??;
    load.stop()?;
    for table in added? {
        ensure!(
            table.state == TableState::Ok,
            "{} ended {}",
            table.table,
            table.state
        );
    }
    check(&config).await?;
    teardown(&config).await?;
    Ok(seconds)
}

/// Every keyed table is ok on the subscriber, with as many rows as on the provider.
async fn check(config: &Config) -> Result<()> {
    let tables = londiste::tables(config).await?;
    ensure!(
        tables.len() == KEYED.len() && tables.iter().all(|t| t.state == TableState::Ok),
        "not every table is ok: {}",
        tables
            .iter()
            .map(|t| format!("{} {}", t.table, t.state))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (provider, subscriber) =
        tokio::try_join!(counts(&config.provider), counts(&config.subscriber))?;
    ensure!(
        provider == subscriber,
        "row counts differ: provider {provider:?}, subscriber {subscriber:?}"
    );
    Ok(())
}

/// The row counts of [`KEYED`] on one side.
async fn counts(dsn: &Dsn) -> Result<[i64; 3]> {
    let row = dsn.connect().await?.query_one(COUNTS, &[]).await?;
    Ok([row.get(0), row.get(1), row.get(2)])
}

/// Takes the keyed tables out of the replication (their capture triggers go) and drops the
/// queue with its consumers.
async fn teardown(config: &Config) -> Result<()> {
    for table in KEYED {
        londiste::remove_table(config, table).await?;
    }
    let provider = config.provider.connect().await?;
    pgq_core::drop_queue(&provider, &config.queue, true).await?;
    Ok(())
}

/// pgbench's TPC-B load on the provider.
struct Load(Process);

impl Load {
    fn start(provider: &Cluster) -> Result<Load> {
        let mut command = Command::new(client_program("pgbench"));
        command
            .args(["-n", "-c", LOAD_CLIENTS, "-T", LOAD_SECONDS])
            .arg(provider.dsn("postgres"));
        Ok(Load(Process::spawn(&mut command)?))
    }

    /// Stops it; fails when a client stopped early, as the variant then ran without the load.
    fn stop(mut self) -> Result<()> {
        let status = self.0.kill()?;
        let log = self.0.log();
        ensure!(
            status.code().is_none() && !log.contains("aborted"),
            "pgbench stopped during the run ({status}): {log}"
        );
        Ok(())
    }
}

/// A seeded copy's data directory: its server is stopped (`pg_ctl stop -m immediate`, as the
/// server's user) and the directory removed when dropped, also after a failed run.
struct SeededCopy {
    pg_ctl: PathBuf,
    data: PathBuf,
}

impl Drop for SeededCopy {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let mut stop = if pgq_testkit::is_root() {
                let mut command = Command::new("runuser");
                command.args(["-u", SERVER_USER, "--"]).arg(&self.pg_ctl);
                command
            } else {
                Command::new(&self.pg_ctl)
            };
            stop.arg("stop")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-s"]);
            if !stop.status().is_ok_and(|s| s.success()) {
                tracing::warn!(data = %self.data.display(), "cannot stop the seeded copy");
            }
        }
        if self.data.exists() {
            if let Err(err) = std::fs::remove_dir_all(&self.data) {
                tracing::warn!(%err, data = %self.data.display(), "cannot remove the seeded copy");
            }
        }
    }
}
