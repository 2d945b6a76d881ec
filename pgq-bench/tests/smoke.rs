//! Runs each scenario on tiny sizes against the test server, so the benchmarks cannot rot.
//! The scenarios run one at a time: each checks that the process left no scratch database.
//!
//! The daemon scenarios start the `pgq-ticker` binary the build put in the target directory:
//! `cargo test --workspace` builds it; alone, run `cargo build -p pgq-ticker` first.

use clap::Parser as _;
use pgq_bench::{Measure, Report};
use tokio_postgres::Client;

/// The test server, held by one test at a time.
struct Smoke {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    dsn: String,
    maintenance: Client,
}

impl Smoke {
    async fn new() -> anyhow::Result<Smoke> {
        let serial = pgq_testkit::serial().await;
        let dsn = pgq_testkit::server_dsn().await?;
        let maintenance = pgq_core::Dsn::parse(&dsn)?.connect().await?;
        Ok(Smoke {
            _serial: serial,
            dsn,
            maintenance,
        })
    }

    /// Whether the server has the original extension.
    async fn extension(&self) -> anyhow::Result<bool> {
        Ok(pgq_testkit::reference_available(&self.maintenance).await?)
    }

    /// Whether the server has the original extension and this machine `pgqd`.
    async fn extension_and_pgqd(&self) -> anyhow::Result<bool> {
        Ok(self.extension().await? && std::path::Path::new("/usr/bin/pgqd").is_file())
    }

    /// Runs `pgq-bench <args> --dsn <the server>`: one report, of scenario `args[0]`, and no
    /// scratch database left behind.
    async fn run(&self, args: &[&str]) -> anyhow::Result<Report> {
        let dsn = ["--dsn", self.dsn.as_str()];
        let words = ["pgq-bench"].iter().chain(args).chain(&dsn);
        let mut reports = pgq_bench::run(pgq_bench::Cli::parse_from(words)).await?;

        assert_eq!(reports.len(), 1);
        let report = reports.remove(0);
        assert_eq!(report.scenario, args[0]);
        let prefix = format!("pgq_bench_{}_", std::process::id());
        let left: i64 = self
            .maintenance
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_database WHERE starts_with(datname, $1)",
                &[&prefix],
            )
            .await?
            .get(0);
        assert_eq!(left, 0, "scratch databases were not dropped");
        Ok(report)
    }
}

/// The measure of `report` whose `what` starts with `what`, of `variant` and `metric`.
fn measure<'a>(report: &'a Report, what: &str, variant: &str, metric: &str) -> Option<&'a Measure> {
    report
        .measures
        .iter()
        .find(|m| m.what.starts_with(what) && m.variant == variant && m.metric == metric)
}

/// `report` has `count` limits, each measured.
fn all_limits_measured(report: &Report, count: usize) {
    assert_eq!(report.limits.len(), count, "{:?}", report.limits);
    assert!(
        report.limits.iter().all(|l| l.met.is_some()),
        "{:?}",
        report.limits
    );
}

#[tokio::test]
async fn produce_runs_on_tiny_sizes() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let with_reference = smoke.extension().await?;
    let json = std::env::temp_dir().join(format!("pgq-bench-smoke-{}.json", std::process::id()));
    let json_arg = json.to_str().expect("temporary directory is UTF-8");
    let args = ["produce", "--runs", "1", "--reps", "2", "--json", json_arg];
    let report = smoke.run(&args).await?;

    let mut measured: Vec<(&str, &str)> =
        report.series.iter().map(|s| (s.shape, s.variant)).collect();
    measured.sort_unstable();
    let mut expected = Vec::new();
    for shape in ["round trip", "server"] {
        expected.extend([
            (shape, "ours insert_event"),
            (shape, "ours insert_event_bulk"),
            (shape, "plain INSERT"),
        ]);
        if with_reference {
            expected.push((shape, "reference insert_event"));
        }
    }
    expected.sort_unstable();
    assert_eq!(measured, expected);
    for s in &report.series {
        assert_eq!((s.reps, s.events_per_rep, s.samples.len()), (2, 1000, 1));
        let sample = s.samples[0];
        assert_eq!((sample.run, sample.events), (1, 2000));
        assert!(sample.seconds > 0.0 && sample.events_per_sec > 0.0, "{s:?}");
    }
    let targeted: Vec<_> = report
        .ratios
        .iter()
        .filter(|r| r.target.is_some())
        .collect();
    assert_eq!(targeted.len(), 3);
    for r in &targeted {
        assert_eq!(
            r.value.is_some(),
            with_reference || !r.label.contains("reference")
        );
        assert_eq!(r.met.is_some(), r.value.is_some(), "{r:?}");
    }
    let text = report.to_string();
    assert!(
        text.contains("| round trip | ours insert_event | 2 × 1,000 |"),
        "{text}"
    );

    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    std::fs::remove_file(&json)?;
    assert_eq!(written["runs"], 1);
    assert_eq!(
        written["reports"][0]["series"].as_array().map(Vec::len),
        Some(report.series.len())
    );
    Ok(())
}

#[tokio::test]
async fn ticker_runs_on_tiny_sizes() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let with_reference = smoke.extension().await?;
    let with_pgqd = smoke.extension_and_pgqd().await?;
    let report = smoke.run(&["ticker", "--runs", "1", "--reps", "1"]).await?;

    assert!(report.series.is_empty());
    let mut pass_variants = vec!["ours"];
    if with_reference {
        pass_variants.push("reference");
    }
    for case in ["all tick", "none ticks"] {
        let what = format!("ticker pass, 20 queues, {case}");
        for variant in &pass_variants {
            for metric in ["server total ms", "server self ms", "wall ms"] {
                let m = measure(&report, &what, variant, metric)
                    .unwrap_or_else(|| panic!("no {what} / {variant} / {metric}"));
                assert_eq!(m.samples.len(), 1);
                assert!(m.samples[0] > 0.0, "{m:?}");
            }
            let total = measure(&report, &what, variant, "server total ms").map(|m| m.samples[0]);
            let wall = measure(&report, &what, variant, "wall ms").map(|m| m.samples[0]);
            assert!(
                total <= wall,
                "server time above wall time: {total:?} > {wall:?}"
            );
        }
    }
    let mut daemons = vec![("idle daemon, 10 queues, period 1 s", "ours (pgq-ticker)")];
    if with_pgqd {
        daemons.push(("idle daemon, 10 queues, period 1 s", "reference (pgqd)"));
    }
    daemons.push(("idle daemon, 10 queues, period 10 ms", "ours (pgq-ticker)"));
    if with_pgqd {
        daemons.push(("idle daemon, 10 queues, period 10 ms", "reference (pgqd)"));
    }
    for (what, variant) in daemons {
        let total = measure(&report, what, variant, "process + backends % of a core")
            .unwrap_or_else(|| panic!("no CPU for {what} / {variant}"));
        assert!(
            total.samples[0] >= 0.0 && total.samples[0] < 100.0,
            "{total:?}"
        );
    }
    let p50 = measure(&report, "commit → tick", "ours (pgq-ticker)", "p50 ms").expect("no latency");
    let p99 = measure(&report, "commit → tick", "ours (pgq-ticker)", "p99 ms").expect("no p99");
    assert!(
        p50.samples[0] > 0.0 && p50.samples[0] <= p99.samples[0],
        "{p50:?} {p99:?}"
    );
    all_limits_measured(&report, 2);
    let text = report.to_string();
    assert!(
        text.contains("| ticker pass, 20 queues, all tick | ours | server total ms |"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn basebackup_runs_on_a_small_cluster() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let report = smoke.run(&["basebackup", "--quick"]).await?;

    let measured: Vec<(&str, &str, &str)> = report
        .measures
        .iter()
        .map(|m| (m.what.as_str(), m.variant, m.metric))
        .collect();
    let local = "base backup";
    let link = "base backup over the delayed link";
    let cpu = "delayed-link proxy CPU";
    let pg = "pg_basebackup -Fp -X stream";
    assert_eq!(
        measured,
        [
            (local, pg, "MiB/s"),
            (local, "ours -j 1", "MiB/s"),
            (local, "ours -j 2", "MiB/s"),
            (local, "ours -j 4", "MiB/s"),
            (local, "cp -a + sync", "MiB/s"),
            (link, pg, "MiB/s"),
            (link, "ours -j 1", "MiB/s"),
            (link, "ours -j 2", "MiB/s"),
            (link, "ours -j 4", "MiB/s"),
            (link, "ours -j 8", "MiB/s"),
            (cpu, pg, "% of one core"),
            (cpu, "ours -j 1", "% of one core"),
            (cpu, "ours -j 2", "% of one core"),
            (cpu, "ours -j 4", "% of one core"),
            (cpu, "ours -j 8", "% of one core"),
        ]
    );
    for m in &report.measures {
        assert_eq!(m.samples.len(), 1, "{m:?}");
        assert!(m.samples[0] > 0.0 && m.samples[0].is_finite(), "{m:?}");
    }
    // The link caps the whole at 100 MB/s (about 95 MiB/s).
    for m in report.measures.iter().filter(|m| m.what == link) {
        assert!(m.samples[0] < 100.0, "{m:?}");
    }
    let targeted: Vec<_> = report
        .ratios
        .iter()
        .filter(|r| r.target.is_some())
        .collect();
    assert_eq!(targeted.len(), 4);
    assert!(targeted.iter().all(|r| r.met.is_some()), "{targeted:?}");
    let text = report.to_string();
    assert!(
        text.contains("| base backup | ours -j 1 | MiB/s |"),
        "{text}"
    );
    let leftovers = std::fs::read_dir(std::env::temp_dir())?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_string_lossy()
                == format!("pgq-bench-basebackup-{}", std::process::id())
        })
        .count();
    assert_eq!(leftovers, 0, "the copies were not removed");
    Ok(())
}

#[tokio::test]
async fn e2e_runs_on_a_small_backlog() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let report = smoke.run(&["e2e", "--quick", "--runs", "1"]).await?;

    let ours: Vec<&str> = report
        .series
        .iter()
        .map(|s| s.variant)
        .filter(|v| v.starts_with("ours") || *v == "raw SELECT")
        .collect();
    assert_eq!(
        ours,
        [
            "ours Runner",
            "ours CoopRunner ×2",
            "ours CoopRunner ×4",
            "raw SELECT",
            "ours Runner + pgq-ticker, exporter off",
            "ours Runner + pgq-ticker, exporter on"
        ]
    );
    for s in &report.series {
        let sample = s.samples[0];
        assert_eq!(sample.events, 50_000, "{s:?}");
        assert!(sample.events_per_sec > 0.0, "{s:?}");
    }
    let exporter = report
        .ratios
        .iter()
        .find(|r| r.label.contains("exporter on"))
        .expect("the exporter's ratio");
    assert_eq!(exporter.target, Some(0.95));
    assert!(exporter.value.is_some_and(f64::is_finite), "{exporter:?}");
    Ok(())
}

#[tokio::test]
async fn latency_runs_for_a_few_seconds() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let report = smoke.run(&["latency", "--quick", "--runs", "1"]).await?;

    let measured: Vec<&str> = report.measures.iter().map(|m| m.what.as_str()).collect();
    assert_eq!(
        measured,
        ["commit-to-processed p50", "commit-to-processed p99"]
    );
    for m in &report.measures {
        assert_eq!((m.metric, m.samples.len()), ("ms", 1), "{m:?}");
        assert!(m.samples[0] >= 0.0 && m.samples[0].is_finite(), "{m:?}");
    }
    assert!(report.measures[0].samples[0] <= report.measures[1].samples[0]);
    all_limits_measured(&report, 2);
    Ok(())
}

#[tokio::test]
async fn backlog_drains_a_small_outage() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let with_reference = smoke.extension_and_pgqd().await?;
    let report = smoke.run(&["backlog", "--quick", "--runs", "1"]).await?;

    let ours = "ours (pgq-ticker + Runner)";
    let variants: Vec<&str> = report.series.iter().map(|s| s.variant).collect();
    assert_eq!(variants[0], ours);
    assert_eq!(variants[1], "ours, one batch (cap 2,147,483,647)");
    assert_eq!(
        variants.len(),
        if with_reference { 3 } else { 2 },
        "{variants:?}"
    );
    for s in &report.series {
        let sample = s.samples[0];
        assert_eq!(sample.events, 20_000, "{s:?}");
        assert!(sample.events_per_sec > 0.0, "{s:?}");
    }
    let batches = measure(&report, "batches", ours, "batches").expect("our batch count");
    assert!(batches.samples[0] >= 1.0, "{batches:?}");
    let max = measure(&report, "max batch size", ours, "events").expect("our largest batch");
    assert!(
        max.samples[0] >= 1.0 && max.samples[0] <= 10_000.0,
        "{max:?}"
    );
    let one = "ours, one batch (cap 2,147,483,647)";
    let whole = measure(&report, "max batch size", one, "events").expect("the one batch");
    assert_eq!(whole.samples, [20_000.0]);
    let rss = measure(&report, "ticker daemon peak RSS", ours, "MB").expect("the daemon's RSS");
    assert!(rss.samples[0] > 0.0, "{rss:?}");
    all_limits_measured(&report, 2);
    Ok(())
}

#[tokio::test]
async fn exact_backlog_counts_a_small_backlog() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let report = smoke
        .run(&["exact-backlog", "--quick", "--runs", "1"])
        .await?;

    let warm = measure(&report, "exact backlog, warm", "ours", "s").expect("warm timings");
    assert_eq!(warm.samples.len(), 5, "{warm:?}");
    assert!(warm.samples.iter().all(|s| *s > 0.0), "{warm:?}");
    // The test server is not the bench's own cluster: no restart, so no cold figure.
    assert!(measure(&report, "exact backlog, cold", "ours", "s").is_none());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("not a private cluster")),
        "{:?}",
        report.notes
    );
    all_limits_measured(&report, 1);
    Ok(())
}

#[tokio::test]
async fn held_xmin_runs_for_a_few_seconds() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let with_reference = smoke.extension_and_pgqd().await?;
    let report = smoke.run(&["held-xmin", "--quick", "--hold", "3"]).await?;

    let ours = "ours (pgq-ticker + Runner)";
    let reference = "reference (pgqd + Rust batch loop)";
    let mut variants = vec![ours];
    if with_reference {
        variants.push(reference);
    }
    let measured: Vec<(&str, &str)> = report.series.iter().map(|s| (s.variant, s.shape)).collect();
    let expected: Vec<(&str, &str)> = variants
        .iter()
        .flat_map(|&v| [(v, "drain, early window"), (v, "drain, late window")])
        .collect();
    assert_eq!(measured, expected);
    for s in &report.series {
        assert_eq!((s.events_per_rep, s.samples.len()), (20_000, 1), "{s:?}");
        let sample = s.samples[0];
        assert_eq!(sample.seconds, 0.5, "{s:?}");
        assert!(sample.events > 0 && sample.events_per_sec > 0.0, "{s:?}");
    }
    let value = |what: &str, variant: &str| {
        report
            .measures
            .iter()
            .find(|m| m.what == what && m.variant == variant)
            .unwrap_or_else(|| panic!("no {what} for {variant}"))
            .samples[0]
    };
    for &variant in &variants {
        let batches = value("batches taken", variant);
        assert!(batches >= 1.0, "{variant}: {batches} batches");
        // Every batch updates the consumer's subscription row, and the held snapshot keeps
        // each old version.
        let subscription = value("dead tuples at end, pgq.subscription", variant);
        assert!(
            subscription >= batches,
            "{variant}: {subscription} dead subscription tuples after {batches} batches"
        );
        let (start, end) = (
            value("dead tuples, meta tables, start", variant),
            value("dead tuples, meta tables, end", variant),
        );
        assert!(end >= start && end >= subscription, "{start} {end}");
        assert!(value("ticks at the end", variant) >= 1.0);
        let left = value("backlog at the late window's end", variant);
        assert!(
            (0.0..=20_000.0).contains(&left),
            "{variant}: backlog {left}"
        );
    }
    assert_eq!(value("dead tuples, event tables, end", ours), 0.0);
    assert_eq!(report.ratios.len(), 3);
    assert_eq!(report.ratios[0].target, Some(0.9));
    assert!(report.ratios[0].met.is_some(), "{:?}", report.ratios[0]);
    assert_eq!(report.ratios[2].value.is_some(), with_reference);
    all_limits_measured(&report, 2);
    assert_eq!(report.limits[1].met, Some(true), "{:?}", report.limits[1]);
    Ok(())
}

#[tokio::test]
async fn londiste_runs_on_small_sizes() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let with_reference = smoke.extension_and_pgqd().await?
        && std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import londiste"])
            .status()
            .is_ok_and(|s| s.success());
    let with_builtin: bool = smoke
        .maintenance
        .query_one("SELECT current_setting('wal_level') = 'logical'", &[])
        .await?
        .get(0);
    let report = smoke.run(&["londiste", "--quick"]).await?;

    let variants: Vec<&str> = report.series.iter().map(|s| s.variant).collect();
    let (batch, per_tick) = (
        "ours batch-update apply",
        "ours batch-update apply, a batch per tick (catch_up_events = 0)",
    );
    let mut expected = vec![batch, per_tick, "ours per-event apply", batch, per_tick];
    if with_builtin {
        let builtin = "built-in logical replication (binary)";
        expected.extend([builtin, builtin]);
    }
    if with_reference {
        let default = "londiste3 default handler";
        expected.extend([default, "londiste3 bulk handler", default]);
    }
    assert_eq!(variants, expected);
    for s in &report.series {
        let events = if s.shape.contains("TPC-B") {
            1_500
        } else {
            5_000
        };
        assert_eq!((s.events_per_rep, s.samples.len()), (events, 1), "{s:?}");
        assert!(s.samples[0].events_per_sec > 0.0, "{s:?}");
    }
    assert_eq!(report.ratios[3].target, Some(3.0));
    assert!(report.ratios[3].met.is_some(), "{:?}", report.ratios);
    assert_eq!(report.ratios[0].value.is_some(), with_reference);
    assert_eq!(report.ratios[5].value.is_some(), with_builtin);
    let add_table = &report.measures[0];
    assert_eq!(add_table.variant, "ours");
    assert!(add_table.samples[0] > 0.0 && add_table.samples[0] < 60.0);
    assert!(report.limits[0].met.is_some());
    Ok(())
}

#[tokio::test]
async fn seed_runs_on_a_small_provider() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    let report = smoke.run(&["seed", "--quick", "--seed-scale", "1"]).await?;

    let measured: Vec<(&str, &str, &str)> = report
        .measures
        .iter()
        .map(|m| (m.what.as_str(), m.variant, m.metric))
        .collect();
    let seed = "seed from a base backup (-j 2)";
    assert_eq!(
        measured,
        [
            ("until every keyed table is ok", seed, "seconds"),
            (
                "until every keyed table is ok",
                "add-table --parallel-copy 2",
                "seconds"
            ),
            ("seed / add-table time in the same run", seed, "ratio"),
            ("of which the base backup", seed, "seconds"),
            ("base backup", seed, "MiB"),
            (
                "provider databases (sum of pg_database_size) at the run's start",
                "provider",
                "MiB"
            ),
        ]
    );
    for m in &report.measures {
        assert_eq!(m.samples.len(), 1, "{m:?}");
        assert!(m.samples[0] > 0.0 && m.samples[0].is_finite(), "{m:?}");
    }
    all_limits_measured(&report, 1);
    let leftovers = std::fs::read_dir(std::env::temp_dir())?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_string_lossy() == format!("pgq-bench-seed-{}", std::process::id())
        })
        .count();
    assert_eq!(leftovers, 0, "the copies were not removed");
    Ok(())
}

#[tokio::test]
async fn partitioned_runs_on_small_sizes() -> anyhow::Result<()> {
    let smoke = Smoke::new().await?;
    if !pgq_testkit::plproxy_available(&smoke.maintenance).await? {
        return Ok(());
    }
    let report = smoke.run(&["partitioned", "--quick"]).await?;

    let routes = ["direct", "proxy ×1", "proxy ×2", "proxy ×4"];
    let mut expected = Vec::new();
    for shape in ["produce", "produce + consume"] {
        for (call, reps, events) in [
            ("bulk of 100", 20, 100),
            ("bulk of 100, one key", 20, 100),
            ("single event", 200, 1),
        ] {
            for route in routes {
                expected.push((shape, format!("{route}, {call}"), reps, events));
            }
        }
    }
    let measured: Vec<_> = report
        .series
        .iter()
        .map(|s| (s.shape, s.variant.to_owned(), s.reps, s.events_per_rep))
        .collect();
    assert_eq!(measured, expected);
    for s in &report.series {
        assert_eq!(s.samples.len(), 1, "{s:?}");
        assert!(s.samples[0].events_per_sec > 0.0, "{s:?}");
    }
    for call in ["bulk of 100", "bulk of 100, one key", "single event"] {
        let what = format!("CPU per event, {call}");
        for route in routes {
            let at_partition = measure(&report, &what, route, "partition backends µs/event")
                .unwrap_or_else(|| panic!("no partition CPU for {route}, {call}"));
            assert!(at_partition.samples[0] > 0.0, "{at_partition:?}");
            let at_proxy = measure(&report, &what, route, "proxy backends µs/event");
            assert_eq!(at_proxy.is_some(), route != "direct", "{route}, {call}");
            if let Some(m) = at_proxy {
                assert!(m.samples[0] > 0.0, "{m:?}");
            }
        }
    }
    for servers in [1, 2, 4, 8, 16] {
        let what = format!("model, {servers} partition servers, bulk of 100");
        let m = measure(
            &report,
            &what,
            "model from proxy ×1",
            "proxy servers to keep up",
        )
        .unwrap_or_else(|| panic!("no model for {servers} servers"));
        assert!(m.samples[0] >= 1.0, "{m:?}");
    }
    assert_eq!(report.ratios.len(), 18);
    assert!(report.ratios.iter().all(|r| r.value.is_some()));
    all_limits_measured(&report, 6);
    let work_dir =
        std::env::temp_dir().join(format!("pgq-bench-partitioned-{}", std::process::id()));
    assert!(!work_dir.exists(), "the work directory was not removed");
    Ok(())
}
