//! A runner's figures in the `metrics` facade, read back through a Prometheus recorder of the
//! test's own (installed for this test's thread only), parsed by a Prometheus text parser.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use pgq_consumer::{async_trait, BatchHandle, Consumer, HandlerError, Runner};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Event, QueueSetting};
use tokio_util::sync::CancellationToken;

use crate::common::{apply_chunk, config, produce, setup, wait_count};

/// Applies every event but those whose data is "7", which it hands back for a retry.
struct RetrySeven;

#[async_trait]
impl Consumer for RetrySeven {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            let (retry, apply): (Vec<_>, Vec<_>) = events
                .into_iter()
                .partition(|e| e.ev_data.as_deref() == Some("7"));
            for event in &retry {
                batch.retry_event(event, "seven waits").await?;
            }
            apply_chunk(batch.tx(), "w", &apply).await?;
        }
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        apply_chunk(tx, "w", std::slice::from_ref(event)).await
    }
}

#[tokio::test]
async fn a_runner_counts_batches_events_retries_and_what_is_pending() -> anyhow::Result<()> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    let s = setup().await?;
    pgq_core::register_consumer(&s.client, &s.queue, &ConsumerName::new("mailer")?).await?;
    // Three ticks of ten events, data "1" to "10" in each. Real ticks, not force_tick (which
    // moves the event sequence on, and PGQ's pending estimate with it).
    pgq_core::set_queue_config(&s.client, &s.queue, QueueSetting::TickerMaxCount(1)).await?;
    for _ in 0..3 {
        produce(&s.client, 1, 10).await?;
        assert!(pgq_core::ticker(&s.client, &s.queue).await?.is_some());
    }
    let mut cfg = config(&s.queue, "mailer");
    // One observation, right after the first batch: two batches of 10 are pending then.
    cfg.observe_period = Duration::from_secs(3600);
    let runner = Runner::connect(&s.dsn, cfg, Arc::new(RetrySeven)).await?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(runner.run(cancel.clone()));
    wait_count(
        &s.client,
        "SELECT count(*) FROM applied",
        27,
        Duration::from_secs(20),
    )
    .await?;
    cancel.cancel();
    running.await??;

    let text = handle.render();
    let value = |name: &str| {
        pgq_testkit::prometheus_value(&text, name, &[("queue", "q"), ("consumer", "mailer")])
    };
    assert_eq!(value("pgq_runner_batches_total")?, 3.0, "{text}");
    assert_eq!(value("pgq_runner_events_total")?, 30.0, "{text}");
    assert_eq!(value("pgq_runner_retried_events_total")?, 3.0, "{text}");
    assert_eq!(value("pgq_runner_failed_events_total")?, 0.0, "{text}");
    assert_eq!(value("pgq_runner_pending_events")?, 20.0, "{text}");
    assert!(
        value("pgq_runner_oldest_event_age_seconds")? > 0.0,
        "{text}"
    );
    assert!(value("pgq_runner_lag_seconds")? >= 0.0, "{text}");
    assert_eq!(value("pgq_runner_batch_seconds_count")?, 3.0, "{text}");
    Ok(())
}
