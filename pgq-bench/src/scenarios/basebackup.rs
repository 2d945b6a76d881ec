//! The `basebackup` scenario: MiB/s of a base backup of a pgbench-filled private cluster, ours
//! (`pgq_basebackup::backup` with 1, 2 and 4 jobs) against `pg_basebackup -Fp -X stream` and a
//! plain `cp -a` of the data directory, alternating within each run; then, from a smaller
//! cluster, the same over a delayed link ([`DelayedLink`]), ours with 1, 2, 4 and 8 jobs
//! against `pg_basebackup`, with the proxy's own CPU.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pgq_basebackup::BackupOptions;
use pgq_core::Dsn;
use pgq_testkit::{Cluster, ClusterOptions};
use tokio::process::Command;

use crate::cli::Plan;
use crate::harness::{Bench, DelayedLink, LinkShape, WorkDir};
use crate::report::{mib, Measure, Ratio, Report};

/// Job counts of our backup, on loopback and over the delayed link.
const LOCAL_JOBS: [usize; 3] = [1, 2, 4];
const LINK_JOBS: [usize; 4] = [1, 2, 4, 8];

/// The delayed link: 10 ms each way (20 ms round trip), 20 MB/s per connection and 100 MB/s
/// for the whole link, in each direction.
const LINK: LinkShape = LinkShape {
    delay: Duration::from_millis(10),
    connection_rate: 20e6,
    link_rate: 100e6,
};

const PG_BASEBACKUP: &str = "pg_basebackup -Fp -X stream";
const CP: &str = "cp -a + sync";
/// What each part's measures are called.
const LOCAL: &str = "base backup";
const OVER_LINK: &str = "base backup over the delayed link";
const PROXY_CPU: &str = "delayed-link proxy CPU";

/// Where the copies go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Straight to the server on 127.0.0.1.
    Loopback,
    /// Through the delayed link.
    Link,
}

impl Route {
    /// The variants in the order each run measures them.
    fn variants(self) -> Vec<Variant> {
        let mut variants = vec![Variant::PgBasebackup];
        match self {
            Route::Loopback => {
                variants.extend(LOCAL_JOBS.map(Variant::Ours));
                variants.push(Variant::Copy);
            }
            Route::Link => variants.extend(LINK_JOBS.map(Variant::Ours)),
        }
        variants
    }

    /// What its measures are called.
    fn what(self) -> &'static str {
        match self {
            Route::Loopback => LOCAL,
            Route::Link => OVER_LINK,
        }
    }
}

/// One way of copying the cluster.
#[derive(Debug, Clone, Copy)]
enum Variant {
    /// `pgq_basebackup::backup` with this many jobs (one of [`LOCAL_JOBS`], [`LINK_JOBS`]).
    Ours(usize),
    PgBasebackup,
    Copy,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ours(1) => "ours -j 1",
            Variant::Ours(2) => "ours -j 2",
            Variant::Ours(4) => "ours -j 4",
            Variant::Ours(_) => "ours -j 8",
            Variant::PgBasebackup => PG_BASEBACKUP,
            Variant::Copy => CP,
        }
    }
}

/// How the figures are made, for the clusters filled at `local` and `link` as
/// `(pgbench scale, data directory MiB)`.
fn method(local: (u32, f64), link: (u32, f64)) -> Vec<String> {
    let order = |route: Route| {
        route
            .variants()
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        format!(
            "A private cluster (wal_level=replica, fsync=off on the source) filled with \
             `pgbench -i -s {}`, then CHECKPOINT: data directory {:.0} MiB (scale: \
             `--basebackup-scale`).",
            local.0, local.1
        ),
        format!(
            "Each run copies it once per variant, in the order {}; the copy is removed \
             and `sync` run before the next one.",
            order(Route::Loopback)
        ),
        "MiB/s = bytes of the resulting copy / wall-clock time; every variant's time \
         includes making its copy durable (ours and pg_basebackup fsync, cp is followed by \
         `sync -f`). Ours and pg_basebackup use a fast checkpoint; ours connects over TCP \
         like pg_basebackup, and writes CRC-32C manifest checksums, pg_basebackup's default."
            .to_owned(),
        format!(
            "Delayed link: a second private cluster filled the same way at scale {} (data \
             directory {:.0} MiB; `--link-scale`), reached through a TCP proxy in pgq-bench \
             (tokio, one thread of its own) that delays every byte {} ms in each direction \
             ({} ms round trip) and caps each connection at {:.0} MB/s and the whole link at \
             {:.0} MB/s in each direction (token buckets); every connection of both tools goes \
             through it. Order per run: {}.",
            link.0,
            link.1,
            LINK.delay.as_millis(),
            2 * LINK.delay.as_millis(),
            LINK.connection_rate / 1e6,
            LINK.link_rate / 1e6,
            order(Route::Link)
        ),
        format!(
            "{PROXY_CPU}: the CPU time of the proxy's thread during a copy / the copy's \
             wall-clock time."
        ),
    ]
}

/// Runs the scenario on private clusters of its own (a `--dsn` server is not used: the
/// scenario needs the data directory and a server whose size it controls).
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let plan = bench.plan;
    let work_dir = WorkDir::new("basebackup")?;
    let mut measures = Vec::new();
    let mut sizes = Vec::new();
    for (route, scale) in [
        (Route::Loopback, plan.basebackup_scale),
        (Route::Link, plan.link_scale),
    ] {
        let source = Source::start(scale).await?;
        sizes.push((scale, mib(source.bytes)));
        let link = match route {
            Route::Loopback => None,
            Route::Link => Some(DelayedLink::start(
                SocketAddr::from((Ipv4Addr::LOCALHOST, source.cluster.port())),
                LINK,
            )?),
        };
        let port = link
            .as_ref()
            .map_or(source.cluster.port(), DelayedLink::port);
        let dsn = Dsn::parse(&format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres"
        ))?;
        let to = Target {
            dsn,
            port: port.to_string(),
            bindir: &source.bindir,
            data: source.cluster.data_dir(),
        };
        measures.extend(measure_all(&plan, route, &to, link.as_ref(), &work_dir).await?);
    }
    drop(work_dir);

    let median = |what: &str, name: &str| {
        measures
            .iter()
            .find(|m| m.what == what && m.variant == name)
            .map(Measure::median)
    };
    let best = |what: &str, jobs: &[usize]| {
        jobs.iter()
            .filter_map(|&j| median(what, Variant::Ours(j).name()).map(|v| (j, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let base = median(LOCAL, PG_BASEBACKUP);
    let local_best = best(LOCAL, &LOCAL_JOBS);
    let mut ratios = vec![
        Ratio::of_values(
            format!("ours -j 1 / {PG_BASEBACKUP}"),
            median(LOCAL, Variant::Ours(1).name()),
            base,
            Some(0.8),
        ),
        Ratio::of_values(
            format!(
                "best ours (-j {}) / {PG_BASEBACKUP}",
                local_best.map_or(0, |(j, _)| j)
            ),
            local_best.map(|(_, v)| v),
            base,
            Some(1.0),
        ),
    ];
    for &jobs in &LOCAL_JOBS[1..] {
        let name = Variant::Ours(jobs).name();
        ratios.push(Ratio::of_values(
            format!("{name} / {PG_BASEBACKUP}"),
            median(LOCAL, name),
            base,
            None,
        ));
    }
    ratios.push(Ratio::of_values(
        format!("{PG_BASEBACKUP} / {CP}"),
        base,
        median(LOCAL, CP),
        None,
    ));
    let link_best = best(OVER_LINK, &LINK_JOBS);
    ratios.push(Ratio::of_values(
        "delayed link: ours -j 4 / ours -j 1",
        median(OVER_LINK, Variant::Ours(4).name()),
        median(OVER_LINK, Variant::Ours(1).name()),
        Some(3.0),
    ));
    ratios.push(Ratio::of_values(
        format!(
            "delayed link: best ours (-j {}) / {PG_BASEBACKUP}",
            link_best.map_or(0, |(j, _)| j)
        ),
        link_best.map(|(_, v)| v),
        median(OVER_LINK, PG_BASEBACKUP),
        Some(2.5),
    ));
    for &jobs in &LINK_JOBS {
        let name = Variant::Ours(jobs).name();
        ratios.push(Ratio::of_values(
            format!("delayed link: {name} / {PG_BASEBACKUP}"),
            median(OVER_LINK, name),
            median(OVER_LINK, PG_BASEBACKUP),
            None,
        ));
    }

    Ok(Report {
        scenario: "basebackup",
        notes: method(sizes[0], sizes[1]),
        series: Vec::new(),
        ratios,
        measures,
        limits: Vec::new(),
    })
}

/// A private cluster filled with pgbench.
struct Source {
    cluster: Cluster,
    /// The server's programs (pgbench, pg_basebackup).
    bindir: PathBuf,
    /// Bytes of its data directory once filled.
    bytes: u64,
}

impl Source {
    /// Starts a private cluster ready for base backups and fills it at pgbench `scale`.
    async fn start(scale: u32) -> Result<Source> {
        let cluster = Cluster::start(ClusterOptions {
            listen_tcp: true,
            settings: vec![
                ("wal_level".to_owned(), "replica".to_owned()),
                ("max_wal_senders".to_owned(), "20".to_owned()),
                ("max_replication_slots".to_owned(), "20".to_owned()),
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
        let bytes = tree_bytes(cluster.data_dir())?;
        tracing::info!(scale, mib = mib(bytes), elapsed = ?fill.elapsed(), "cluster filled");
        Ok(Source {
            cluster,
            bindir,
            bytes,
        })
    }
}

/// Where and how the copies connect.
struct Target<'a> {
    /// Ours connects here.
    dsn: Dsn,
    /// pg_basebackup connects to 127.0.0.1 on this port.
    port: String,
    bindir: &'a Path,
    /// The source's data directory, for `cp -a`.
    data: &'a Path,
}

/// Every variant of `route` `plan.runs` times, alternating; one [`Measure`] (MiB/s) per
/// variant, and one of the proxy's CPU per variant when going through `link`.
async fn measure_all(
    plan: &Plan,
    route: Route,
    to: &Target<'_>,
    link: Option<&DelayedLink>,
    work_dir: &WorkDir,
) -> Result<Vec<Measure>> {
    let variants = route.variants();
    let measure = |what: &str, v: &Variant, metric| Measure {
        what: what.to_owned(),
        variant: v.name(),
        metric,
        samples: Vec::new(),
    };
    let mut rates: Vec<Measure> = variants
        .iter()
        .map(|v| measure(route.what(), v, "MiB/s"))
        .collect();
    let mut cpu: Vec<Measure> = variants
        .iter()
        .map(|v| measure(PROXY_CPU, v, "% of one core"))
        .collect();
    for run in 1..=plan.runs {
        for ((variant, rate), cpu) in variants.iter().zip(&mut rates).zip(&mut cpu) {
            let dest = work_dir.join("copy");
            if dest.exists() {
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("removing {}", dest.display()))?;
            }
            run_tool(&mut Command::new("sync"), "sync").await?;
            let cpu_before = match link {
                Some(link) => link.cpu_seconds().await?,
                None => 0.0,
            };
            let started = Instant::now();
            copy_once(*variant, to, &dest)
                .await
                .with_context(|| format!("{} (run {run})", variant.name()))?;
            let seconds = started.elapsed().as_secs_f64();
            if let Some(link) = link {
                cpu.samples
                    .push((link.cpu_seconds().await? - cpu_before) / seconds * 100.0);
            }
            let bytes = tree_bytes(&dest)?;
            tracing::info!(
                run,
                what = route.what(),
                variant = variant.name(),
                mib = mib(bytes),
                seconds,
                rate = mib(bytes) / seconds,
                "copied"
            );
            rate.samples.push(mib(bytes) / seconds);
        }
    }
    if link.is_some() {
        rates.extend(cpu);
    }
    Ok(rates)
}

/// Makes one copy of the cluster into `dest` (which does not exist yet).
async fn copy_once(variant: Variant, to: &Target<'_>, dest: &Path) -> Result<()> {
    match variant {
        Variant::Ours(jobs) => {
            let mut opts = BackupOptions::new(to.dsn.clone(), dest);
            opts.jobs = jobs;
            pgq_basebackup::backup(opts).await?;
        }
        Variant::PgBasebackup => {
            run_tool(
                Command::new(to.bindir.join("pg_basebackup"))
                    .args(["-h", "127.0.0.1", "-p", &to.port, "-U", "postgres", "-D"])
                    .arg(dest)
                    .args(["-Fp", "-X", "stream", "-c", "fast"]),
                "pg_basebackup",
            )
            .await?;
        }
        Variant::Copy => {
            run_tool(Command::new("cp").arg("-a").arg(to.data).arg(dest), "cp -a").await?;
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
