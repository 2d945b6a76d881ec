//! Runs each scenario on tiny sizes against the test server, so the benchmarks cannot rot.

use clap::Parser as _;

#[tokio::test]
async fn produce_runs_on_tiny_sizes() -> anyhow::Result<()> {
    let dsn = pgq_testkit::server_dsn().await?;
    let maintenance = pgq_core::Dsn::parse(&dsn)?.connect().await?;
    let with_reference = pgq_testkit::reference_available(&maintenance).await?;
    let json = std::env::temp_dir().join(format!("pgq-bench-smoke-{}.json", std::process::id()));
    let json_arg = json.to_str().expect("temporary directory is UTF-8");

    let cli = pgq_bench::Cli::parse_from([
        "pgq-bench",
        "produce",
        "--runs",
        "1",
        "--reps",
        "2",
        "--dsn",
        &dsn,
        "--json",
        json_arg,
    ]);
    let reports = pgq_bench::run(cli).await?;

    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report.scenario, "produce");
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

    let prefix = format!("pgq_bench_{}_", std::process::id());
    let left: i64 = maintenance
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )
        .await?
        .get(0);
    assert_eq!(left, 0, "scratch databases were not dropped");
    Ok(())
}
