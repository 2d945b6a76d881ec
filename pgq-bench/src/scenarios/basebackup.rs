//! The `basebackup` scenario: MiB/s of a base backup of a pgbench-filled private cluster, ours
//! (`pgq_basebackup::backup` with 1, 2 and 4 jobs) against `pg_basebackup -Fp -X stream` and a
//! plain `cp -a` of the data directory, alternating within each run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use pgq_basebackup::BackupOptions;
use pgq_core::Dsn;
use pgq_testkit::{Cluster, ClusterOptions};
use tokio::process::Command;

use crate::cli::Plan;
use crate::harness::{Bench, WorkDir};
use crate::report::{mib, Measure, Ratio, Report};

/// pgbench scale factor of the full run (about 1.5 GB) and of a quick one.
const SCALE: u32 = 100;
const SMALL_SCALE: u32 = 5;

/// Job counts of our backup.
const JOBS: [usize; 3] = [1, 2, 4];

const PG_BASEBACKUP: &str = "pg_basebackup -Fp -X stream";
const CP: &str = "cp -a + sync";

/// The variants in the order each run measures them.
fn variants() -> Vec<Variant> {
    let mut variants = vec![Variant::PgBasebackup];
    variants.extend(JOBS.map(Variant::Ours));
    variants.push(Variant::Copy);
    variants
}

/// One way of copying the cluster.
#[derive(Debug, Clone, Copy)]
enum Variant {
    /// `pgq_basebackup::backup` with this many jobs.
    Ours(usize),
    PgBasebackup,
    Copy,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ours(1) => "ours -j 1",
            Variant::Ours(2) => "ours -j 2",
            Variant::Ours(_) => "ours -j 4",
            Variant::PgBasebackup => PG_BASEBACKUP,
            Variant::Copy => CP,
        }
    }
}

/// How the figures are made, for a cluster filled at `scale` to `source_mib` MiB.
fn method(scale: u32, source_mib: f64) -> Vec<String> {
    vec![
        format!(
            "A private cluster (wal_level=replica, fsync=off on the source) filled with \
             `pgbench -i -s {scale}`, then CHECKPOINT: data directory {source_mib:.0} MiB."
        ),
        format!(
            "Each run copies it once per variant, in the order {}; the copy is removed \
             and `sync` run before the next one.",
            variants()
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "MiB/s = bytes of the resulting copy / wall-clock time; every variant's time \
         includes making its copy durable (ours and pg_basebackup fsync, cp is followed by \
         `sync -f`). Ours and pg_basebackup use a fast checkpoint; ours connects over TCP \
         like pg_basebackup."
            .to_owned(),
    ]
}

/// Runs the scenario on its own private cluster (a `--dsn` server is not used: the scenario
/// needs the data directory and a server whose size it controls).
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let plan = bench.plan;
    let scale = if plan.small { SMALL_SCALE } else { SCALE };
    let cluster = Cluster::start(ClusterOptions {
        listen_tcp: true,
        settings: vec![
            ("wal_level".to_owned(), "replica".to_owned()),
            ("max_wal_senders".to_owned(), "10".to_owned()),
            ("max_replication_slots".to_owned(), "10".to_owned()),
        ],
        ..Default::default()
    })
    .await
    .context("starting a private cluster")?;
    let dsn = Dsn::parse(
        &cluster
            .tcp_dsn("postgres")
            .context("the private cluster does not listen on TCP")?,
    )?;
    let client = dsn.connect().await?;
    let bindir: String = client
        .query_one(
            "SELECT setting FROM pg_catalog.pg_config WHERE name = 'BINDIR'",
            &[],
        )
        .await
        .context("reading the server's BINDIR")?
        .get(0);
    let bindir = PathBuf::from(bindir);
    let port = cluster.port().to_string();
    let fill = Instant::now();
    run_tool(
        Command::new(bindir.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .args([port.as_str(), "-U", "postgres", "postgres"]),
        "pgbench -i",
    )
    .await?;
    client.batch_execute("CHECKPOINT").await?;
    let source_bytes = tree_bytes(cluster.data_dir())?;
    tracing::info!(scale, mib = mib(source_bytes), elapsed = ?fill.elapsed(), "cluster filled");

    let work_dir = WorkDir::new("basebackup")?;
    let measures = measure_all(&plan, &dsn, &bindir, &port, cluster.data_dir(), &work_dir).await?;
    drop(work_dir);

    let median = |name: &str| {
        measures
            .iter()
            .find(|m| m.variant == name)
            .map(Measure::median)
    };
    let base = median(PG_BASEBACKUP);
    let best = JOBS
        .iter()
        .filter_map(|&j| median(Variant::Ours(j).name()).map(|v| (j, v)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let mut ratios = vec![Ratio::of_values(
        format!("ours -j 1 / {PG_BASEBACKUP}"),
        median(Variant::Ours(1).name()),
        base,
        Some(0.8),
    )];
    ratios.push(Ratio::of_values(
        format!(
            "best ours (-j {}) / {PG_BASEBACKUP}",
            best.map_or(0, |(j, _)| j)
        ),
        best.map(|(_, v)| v),
        base,
        Some(1.2),
    ));
    for &jobs in &JOBS[1..] {
        let name = Variant::Ours(jobs).name();
        ratios.push(Ratio::of_values(
            format!("{name} / {PG_BASEBACKUP}"),
            median(name),
            base,
            None,
        ));
    }
    ratios.push(Ratio::of_values(
        format!("{PG_BASEBACKUP} / {CP}"),
        base,
        median(CP),
        None,
    ));

    Ok(Report {
        scenario: "basebackup",
        notes: method(scale, mib(source_bytes)),
        series: Vec::new(),
        ratios,
        measures,
        limits: Vec::new(),
    })
}

/// Every variant `plan.runs` times, alternating; one [`Measure`] (MiB/s) per variant.
async fn measure_all(
    plan: &Plan,
    dsn: &Dsn,
    bindir: &Path,
    port: &str,
    data: &Path,
    work_dir: &WorkDir,
) -> Result<Vec<Measure>> {
    let variants = variants();
    let mut measures: Vec<Measure> = variants
        .iter()
        .map(|v| Measure {
            what: "base backup".to_owned(),
            variant: v.name(),
            metric: "MiB/s",
            samples: Vec::new(),
        })
        .collect();
    for run in 1..=plan.runs {
        for (variant, measure) in variants.iter().zip(&mut measures) {
            let dest = work_dir.join("copy");
            if dest.exists() {
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("removing {}", dest.display()))?;
            }
            run_tool(&mut Command::new("sync"), "sync").await?;
            let started = Instant::now();
            copy_once(*variant, dsn, bindir, port, data, &dest)
                .await
                .with_context(|| format!("{} (run {run})", variant.name()))?;
            let seconds = started.elapsed().as_secs_f64();
            let bytes = tree_bytes(&dest)?;
            let rate = mib(bytes) / seconds;
            tracing::info!(
                run,
                variant = variant.name(),
                mib = mib(bytes),
                seconds,
                rate,
                "copied"
            );
            measure.samples.push(rate);
        }
    }
    Ok(measures)
}

/// Makes one copy of the cluster into `dest` (which does not exist yet).
async fn copy_once(
    variant: Variant,
    dsn: &Dsn,
    bindir: &Path,
    port: &str,
    data: &Path,
    dest: &Path,
) -> Result<()> {
    match variant {
        Variant::Ours(jobs) => {
            let mut opts = BackupOptions::new(dsn.clone(), dest);
            opts.jobs = jobs;
            pgq_basebackup::backup(opts).await?;
        }
        Variant::PgBasebackup => {
            run_tool(
                Command::new(bindir.join("pg_basebackup"))
                    .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-D"])
                    .arg(dest)
                    .args(["-Fp", "-X", "stream", "-c", "fast"]),
                "pg_basebackup",
            )
            .await?;
        }
        Variant::Copy => {
            run_tool(Command::new("cp").arg("-a").arg(data).arg(dest), "cp -a").await?;
            run_tool(Command::new("sync").arg("-f").arg(dest), "sync -f").await?;
        }
    }
    Ok(())
}

/// Runs a program to its end; fails with its stderr when it fails.
async fn run_tool(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Bytes of the regular files under `dir` (symbolic links not followed).
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}
