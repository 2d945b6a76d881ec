//! Scenario 4: events handed back with `pgq.event_retry` / `pgq.batch_retry` come back, to
//! their consumer only, after `pgq.maint_retry_events` moves them when due.

use anyhow::Result;
use serde_json::json;

use super::{compare, Ctx, QUEUE};

/// Hands events back (due now, due later, twice, unknown), moves due ones and reads them again.
async fn retries(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.register("c1").await?;
    ctx.register("c2").await?;

    ctx.begin(1).await?;
    ctx.insert(1, "t", "e1").await?;
    let e2 = ctx.insert(1, "t", "e2").await?;
    let e3 = ctx.insert(1, "t", "e3").await?;
    ctx.commit(1).await?;
    ctx.tick().await?;

    let batch = ctx.next_batch("c1").await?.expect("a batch");
    ctx.expect_batch(Some(&["e1", "e2", "e3"]))?;
    ctx.rec(
        "event_retry e2, 0 s",
        "SELECT pgq.event_retry($1, $2, 0)",
        &[&batch, &e2],
    )
    .await?;
    ctx.expect_last(&json!(1))?;
    ctx.rec(
        "event_retry e2 again",
        "SELECT pgq.event_retry($1, $2, 0)",
        &[&batch, &e2],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.rec(
        "event_retry e3, in an hour",
        "SELECT pgq.event_retry($1, $2, now() + interval '1 hour')",
        &[&batch, &e3],
    )
    .await?;
    ctx.fails(
        "event_retry of an event not in the batch",
        "SELECT pgq.event_retry($1, $2, 0)",
        &[&batch, &(e3 + 1000)],
        "PQE01",
        "event not found",
    )
    .await?;
    ctx.rec(
        "retry queue",
        "SELECT ev_id, ev_retry, ev_type, ev_data, ev_txid IS NULL AS no_txid,
                ev_retry_after > now() + interval '30 minutes' AS later
           FROM pgq.retry_queue ORDER BY ev_id",
        &[],
    )
    .await?;
    ctx.expect_last(&json!([
        {"ev_id": e2, "ev_retry": 1, "ev_type": "t", "ev_data": "e2", "no_txid": true,
         "later": false},
        {"ev_id": e3, "ev_retry": 1, "ev_type": "t", "ev_data": "e3", "no_txid": true,
         "later": true},
    ]))?;
    ctx.finish(batch).await?;
    ctx.take("c2", &["e1", "e2", "e3"]).await?; // untouched by c1's retries

    ctx.rec("maint_retry_events", "SELECT pgq.maint_retry_events()", &[])
        .await?;
    ctx.expect_last(&json!(1))?;
    ctx.rec("maint_retry_events", "SELECT pgq.maint_retry_events()", &[])
        .await?;
    ctx.expect_last(&json!(0))?;
    // PGQ's insert_event_raw advances the event sequence for a re-inserted event too, so
    // that the ticker sees a new event.
    ctx.rec(
        "new events after moving a retry event",
        "SELECT ev_new FROM pgq.get_queue_info($1)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!(1))?;
    ctx.tick().await?;
    ctx.take("c1", &["e2 (retry 1)"]).await?;
    ctx.take("c2", &[]).await?;

    ctx.exec(
        0,
        "UPDATE pgq.retry_queue SET ev_retry_after = now() - interval '1 second'",
    )
    .await?;
    ctx.rec("maint_retry_events", "SELECT pgq.maint_retry_events()", &[])
        .await?;
    ctx.expect_last(&json!(1))?;
    ctx.tick().await?;
    ctx.take("c1", &["e3 (retry 1)"]).await?;
    ctx.take("c2", &[]).await?;

    // The whole batch back, then one of its events again once it returned.
    ctx.insert(0, "t", "e4").await?;
    let e5 = ctx.insert(0, "t", "e5").await?;
    ctx.tick().await?;
    let batch = ctx.next_batch("c1").await?.expect("a batch");
    ctx.expect_batch(Some(&["e4", "e5"]))?;
    ctx.rec("batch_retry", "SELECT pgq.batch_retry($1, 0)", &[&batch])
        .await?;
    ctx.expect_last(&json!(2))?;
    ctx.rec(
        "batch_retry again",
        "SELECT pgq.batch_retry($1, 0)",
        &[&batch],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.finish(batch).await?;
    ctx.rec("maint_retry_events", "SELECT pgq.maint_retry_events()", &[])
        .await?;
    ctx.expect_last(&json!(2))?;
    ctx.tick().await?;
    let batch = ctx.next_batch("c1").await?.expect("a batch");
    ctx.expect_batch(Some(&["e4 (retry 1)", "e5 (retry 1)"]))?;
    ctx.rec(
        "event_retry e5 once more",
        "SELECT pgq.event_retry($1, $2, 0)",
        &[&batch, &e5],
    )
    .await?;
    ctx.expect_last(&json!(1))?;
    ctx.finish(batch).await?;
    ctx.rec("maint_retry_events", "SELECT pgq.maint_retry_events()", &[])
        .await?;
    ctx.expect_last(&json!(1))?;
    ctx.tick().await?;
    ctx.take("c1", &["e5 (retry 2)"]).await?;
    // e4 e5 once, never the retried copies.
    ctx.drain_expecting("c2", &[&["e4", "e5"], &[], &[]])
        .await?;

    // A retried event waiting in the retry queue goes away with its consumer.
    ctx.insert(0, "t", "e6").await?;
    ctx.tick().await?;
    let batch = ctx.next_batch("c2").await?.expect("a batch");
    ctx.expect_batch(Some(&["e6"]))?;
    ctx.rec(
        "batch_retry in an hour",
        "SELECT pgq.batch_retry($1, 3600)",
        &[&batch],
    )
    .await?;
    ctx.expect_last(&json!(1))?;
    ctx.unregister("c2", 1).await?;
    ctx.rec(
        "retry queue after unregister",
        "SELECT count(*) FROM pgq.retry_queue",
        &[],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.fails(
        "batch_retry of an unknown batch",
        "SELECT pgq.batch_retry($1, 0)",
        &[&(batch + 1000)],
        "PQB01",
        &format!("batch_retry: batch {} not found", batch + 1000),
    )
    .await?;
    Ok(ctx)
}

/// Re-inserting a retry event keeps its `ev_id` and still advances the queue's event sequence
/// (so the ticker sees a new event): `ev_new`, tick positions and later ids match PGQ.
#[tokio::test]
async fn retried_events_come_back() -> Result<()> {
    compare(1, retries).await
}
