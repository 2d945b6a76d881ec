//! The original ticker daemon, Skytools' `pgqd`, runs against our schema: it accepts our
//! `pgq.version()`, ticks our queues and runs our maintenance (retry re-insertion).

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::Result;
use pgq_core::tokio_postgres::Client;
use pgq_core::Line;
use pgq_testkit::{Deadline, TestDb};

use crate::compat::skytools::{base_connstr, pgqd_binary, Scratch};

/// Waits until consumer `c` gets a batch, then returns its events as (data, retry count) and
/// finishes it — unless `retry_first` is set, in which case that event is handed back first.
async fn next_batch_events(
    client: &Client,
    retry_first: Option<&str>,
    deadline: Deadline,
) -> Result<Vec<(String, Option<i32>)>> {
    loop {
        let batch: Option<i64> = client
            .query_one("SELECT pgq.next_batch('q', 'c')", &[])
            .await?
            .get(0);
        if let Some(batch) = batch {
            let rows = client
                .query(
                    "SELECT ev_id, ev_data, ev_retry FROM pgq.get_batch_events($1)",
                    &[&batch],
                )
                .await?;
            for row in &rows {
                if retry_first == Some(row.get::<_, String>(1).as_str()) {
                    let ev_id: i64 = row.get(0);
                    client
                        .query_one("SELECT pgq.event_retry($1, $2, 0)", &[&batch, &ev_id])
                        .await?;
                }
            }
            client
                .query_one("SELECT pgq.finish_batch($1)", &[&batch])
                .await?;
            let events: Vec<_> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
            if !events.is_empty() {
                return Ok(events);
            }
        }
        deadline.pause("a batch made by pgqd").await?;
    }
}

#[tokio::test]
async fn pgqd_ticks_and_maintains_our_schema() -> Result<()> {
    let Some(pgqd) = pgqd_binary()? else {
        return Ok(());
    };
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    client
        .batch_execute(
            "SELECT pgq.create_queue('q');
             SELECT pgq.set_queue_config('q', 'ticker_max_count', '1');
             SELECT pgq.register_consumer('q', 'c');",
        )
        .await?;

    let scratch = Scratch::new()?;
    let config = scratch.pgqd_config(&base_connstr(&db.dsn()), &[db.name()])?;
    let daemon = scratch.start("pgqd", pgqd, &[OsStr::new("-v"), config.as_os_str()])?;

    client
        .batch_execute(
            "BEGIN;
             SELECT pgq.insert_event('q', 't', 'one');
             SELECT pgq.insert_event('q', 't', 'two');
             COMMIT;",
        )
        .await?;
    let deadline = Deadline::after(Duration::from_secs(20));
    let first = next_batch_events(&client, Some("two"), deadline).await?;
    assert_eq!(first, [("one".to_owned(), None), ("two".to_owned(), None)]);

    // pgqd's retry pass re-inserts the handed-back event, and its ticker makes a batch of it
    let again = next_batch_events(&client, None, deadline).await?;
    assert_eq!(again, [("two".to_owned(), Some(1))]);

    let log = std::fs::read_to_string(scratch.path("pgqd.log")).unwrap_or_default();
    drop(daemon);
    assert!(
        !log.contains("ERROR") && !log.contains("FATAL"),
        "pgqd logged errors:\n{log}"
    );
    scratch.remove()
}
