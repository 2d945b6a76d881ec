//! A backup's figures in the `metrics` facade, read back through a Prometheus recorder of the
//! test's own (installed for this test's thread only), against what the copy holds.

use std::path::Path;

use metrics_exporter_prometheus::PrometheusBuilder;
use pgq_basebackup::BackupOptions;

use crate::support::{self, Scratch};

/// Regular files under `dir` (symbolic links not followed), by whether they are in `pg_wal`.
fn count_files(dir: &Path, in_wal: bool, counts: &mut (u64, u64)) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let wal = in_wal || entry.file_name() == "pg_wal";
            count_files(&entry.path(), wal, counts)?;
        } else if kind.is_file() {
            if in_wal {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_backup_counts_the_bytes_and_files_it_writes() -> anyhow::Result<()> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    let (_source, dsn, client) = support::connected_source().await?;
    support::fill(&client).await?;
    let scratch = Scratch::new("metrics")?;
    let mut opts = BackupOptions::new(dsn, scratch.path());
    opts.jobs = 2;
    opts.chunk_size = 256 * 1024;
    let summary = pgq_basebackup::backup(opts).await?;

    let text = handle.render();
    let value = |name: &str| pgq_testkit::prometheus_value(&text, name, &[]);
    #[allow(clippy::cast_precision_loss)] // a few MiB
    let bytes = summary.bytes as f64;
    assert_eq!(value("pgq_basebackup_bytes_total")?, bytes, "{summary:?}");

    // Every file of the copy was written by the copy or the WAL fetcher, but the label and
    // manifest written at the end and the configuration files that live elsewhere.
    let mut counts = (0, 0);
    count_files(scratch.path(), false, &mut counts)?;
    let (data, wal) = counts;
    assert_eq!(wal, summary.wal_segments, "{summary:?}");
    let written_after = 2 + summary.config_written.len() as u64;
    #[allow(clippy::cast_precision_loss)] // a few thousand files
    let files = (data - written_after + wal) as f64;
    assert_eq!(value("pgq_basebackup_files_total")?, files, "{summary:?}");
    assert!(files > 100.0, "{files}");
    Ok(())
}
