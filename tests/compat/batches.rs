//! Scenarios 6 and 7: `next_batch_custom` merging ticks, and a consumer unregistered (and
//! registered again) while it holds a batch.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{compare, Ctx, QUEUE};

/// `pgq.next_batch_custom` for consumer `c`, recorded with its ids, event positions and events.
async fn custom(
    ctx: &mut Ctx,
    min_lag: Option<&str>,
    min_count: Option<i32>,
    min_interval: Option<&str>,
) -> Result<Option<i64>> {
    let label =
        format!("next_batch_custom lag={min_lag:?} count={min_count:?} interval={min_interval:?}");
    let row = ctx
        .conn(0)
        .query_one(
            "SELECT batch_id, prev_tick_id, cur_tick_id, greatest(prev_tick_event_seq, 1),
                    greatest(cur_tick_event_seq, 1),
                    prev_tick_time IS NULL AS no_prev_time, cur_tick_time IS NULL AS no_cur_time
               FROM pgq.next_batch_custom($1, 'c', $2::text::interval, $3, $4::text::interval)",
            &[&QUEUE, &min_lag, &min_count, &min_interval],
        )
        .await?;
    let batch: Option<i64> = row.get(0);
    let events = match batch {
        Some(b) => ctx.batch_events(b).await?,
        None => Value::Null,
    };
    ctx.note(
        label,
        json!({
            "batch": batch,
            "ticks": [row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)],
            "seqs": [row.get::<_, Option<i64>>(3), row.get::<_, Option<i64>>(4)],
            "null_times": [row.get::<_, bool>(5), row.get::<_, bool>(6)],
            "events": events,
        }),
    );
    Ok(batch)
}

/// Asserts that the batch `custom` recorded last spans ticks `ticks` and holds `events`.
fn expect_span(ctx: &Ctx, ticks: [i64; 2], events: &[&str]) -> Result<()> {
    ctx.expect_batch(Some(events))?;
    let span = ctx.last()?;
    if span["ticks"] != json!(ticks) || span["null_times"] != json!([false, false]) {
        bail!(
            "expected a batch over ticks {ticks:?}, got {span} ({:?})",
            ctx.flavor()
        );
    }
    Ok(())
}

/// Finishes the batch `custom` returned, which must be there.
async fn finish_some(ctx: &mut Ctx, batch: Option<i64>) -> Result<()> {
    let Some(batch) = batch else {
        bail!("expected a batch ({:?})", ctx.flavor());
    };
    ctx.finish(batch).await?;
    ctx.expect_last(&json!(1))
}

/// Inserts `n` events in one transaction, then `pgq.ticker` (which ticks: ticker_max_count is 1).
async fn produce(ctx: &mut Ctx, tag: &str, n: usize) -> Result<()> {
    ctx.begin(1).await?;
    for i in 0..n {
        ctx.insert(1, tag, &format!("{tag}{i}")).await?;
    }
    ctx.commit(1).await?;
    ctx.ticker(&format!("ticker after {tag}")).await?;
    Ok(())
}

/// Ticks 10 s apart with 1, 1, 1, 4, 1, 10, 1, 1 events; batches merged by count, by interval,
/// by both, not at all (nothing far enough yet), and held back by min_lag.
async fn merging(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.config("ticker_max_count", "1").await?;
    ctx.register("c").await?;
    // A fresh sequence's last_value is 1 before and after the first nextval: move past it.
    ctx.insert(0, "warmup", "w").await?;
    ctx.tick().await?;
    ctx.drain_expecting("c", &[&["w"]]).await?;
    for (tag, n) in [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("d", 4),
        ("e", 1),
        ("f", 10),
        ("g", 1),
        ("h", 1),
    ] {
        produce(&mut ctx, tag, n).await?;
    }
    ctx.exec(
        0,
        "UPDATE pgq.tick SET tick_time = timestamptz '2020-01-01 00:00:00+00' + tick_id * interval '10 seconds'",
    )
    .await?;
    ctx.rec(
        "ticks",
        "SELECT tick_id, greatest(tick_event_seq, 1), (tick_time - timestamptz '2020-01-01 00:00:00+00')::text AS at
           FROM pgq.tick ORDER BY tick_id",
        &[],
    )
    .await?;

    // c is at the warm-up tick 2; then ticks 3.. 10 s apart with seqs +1 +1 +1 +4 +1 +10 +1 +1
    let b = custom(&mut ctx, None, Some(2), None).await?; // overshot: the first tick 2 events on
    expect_span(&ctx, [2, 4], &["a0", "b0"])?;
    finish_some(&mut ctx, b).await?;
    let b = custom(&mut ctx, None, Some(3), None).await?;
    expect_span(&ctx, [4, 6], &["c0", "d0", "d1", "d2", "d3"])?;
    custom(&mut ctx, None, Some(1000), Some("1 hour")).await?; // the open batch again
    expect_span(&ctx, [4, 6], &["c0", "d0", "d1", "d2", "d3"])?;
    finish_some(&mut ctx, b).await?;
    let b = custom(&mut ctx, Some("1 hour"), None, Some("15 seconds")).await?; // old ticks pass
    let f: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let e_f: Vec<&str> = std::iter::once("e0")
        .chain(f.iter().map(String::as_str))
        .collect();
    expect_span(&ctx, [6, 8], &e_f)?;
    finish_some(&mut ctx, b).await?;
    custom(&mut ctx, None, Some(1000), None).await?; // not enough events yet: no batch
    ctx.expect_batch(None)?;
    custom(&mut ctx, None, None, Some("1 hour")).await?; // not far enough yet: no batch
    ctx.expect_batch(None)?;
    let b = custom(&mut ctx, None, Some(2), Some("25 seconds")).await?; // not overshot: newest
    expect_span(&ctx, [8, 10], &["g0", "h0"])?;
    finish_some(&mut ctx, b).await?;
    custom(&mut ctx, None, Some(1), None).await?; // no newer tick at all
    ctx.expect_batch(None)?;

    produce(&mut ctx, "i", 2).await?; // a fresh tick
    custom(&mut ctx, Some("1 hour"), None, None).await?; // too fresh for min_lag
    ctx.expect_batch(None)?;
    let b = custom(&mut ctx, Some("0 seconds"), Some(2), None).await?;
    expect_span(&ctx, [10, 11], &["i0", "i1"])?;
    finish_some(&mut ctx, b).await?;
    custom(&mut ctx, None, None, None).await?; // nothing left
    ctx.expect_batch(None)?;
    Ok(ctx)
}

#[tokio::test]
async fn next_batch_custom_merges_ticks() -> Result<()> {
    compare(1, merging).await
}

/// A consumer with an open batch is unregistered: the batch is gone (finishing it is a no-op,
/// reading it an error) and so are its retry events; registered again, it starts at the newest
/// tick. Repositioning with `register_consumer_at` drops an open batch too.
async fn unregister(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.register("c1").await?;
    ctx.register("c2").await?;
    ctx.register("c1").await?; // already: 0
    ctx.expect_last(&json!(0))?;
    ctx.insert(0, "t", "e1").await?;
    let e2 = ctx.insert(0, "t", "e2").await?;
    let t2 = ctx.tick().await?;

    let batch = ctx.next_batch("c1").await?.expect("a batch");
    ctx.expect_batch(Some(&["e1", "e2"]))?;
    ctx.rec(
        "event_retry",
        "SELECT pgq.event_retry($1, $2, 3600)",
        &[&batch, &e2],
    )
    .await?;
    ctx.expect_last(&json!(1))?;
    ctx.unregister("c1", 1).await?;
    ctx.unregister("c1", 0).await?; // again
    ctx.finish(batch).await?;
    ctx.expect_last(&json!(0))?;
    ctx.fails(
        "get_batch_events of the dropped batch",
        "SELECT * FROM pgq.get_batch_events($1)",
        &[&batch],
        "PQB01",
        "batch not found",
    )
    .await?;
    ctx.rec("retry queue", "SELECT count(*) FROM pgq.retry_queue", &[])
        .await?;
    ctx.expect_last(&json!(0))?;
    ctx.rec(
        "consumers",
        "SELECT co_name FROM pgq.consumer ORDER BY co_name",
        &[],
    )
    .await?;
    ctx.expect_last(&json!("c2"))?;
    ctx.fails(
        "next_batch of the unregistered consumer",
        "SELECT pgq.next_batch($1, 'c1')",
        &[&QUEUE],
        "PQC01",
        "Not subscriber to queue: q/c1",
    )
    .await?;

    ctx.insert(0, "t", "e3").await?;
    ctx.register("c1").await?; // at tick t2: e3 is in its first batch, e1 e2 are not
    ctx.expect_last(&json!(1))?;
    ctx.tick().await?;
    ctx.drain_expecting("c1", &[&["e3"]]).await?;

    // Repositioning drops c2's open batch and moves it back.
    let batch = ctx.next_batch("c2").await?.expect("a batch");
    ctx.expect_batch(Some(&["e1", "e2"]))?;
    ctx.rec(
        "register_consumer_at c2 t2",
        "SELECT pgq.register_consumer_at($1, 'c2', $2)",
        &[&QUEUE, &t2],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.finish(batch).await?;
    ctx.expect_last(&json!(0))?;
    ctx.drain_expecting("c2", &[&["e3"]]).await?;
    ctx.rec(
        "register_consumer_at c3 t2",
        "SELECT pgq.register_consumer_at($1, 'c3', $2)",
        &[&QUEUE, &t2],
    )
    .await?;
    ctx.expect_last(&json!(1))?;
    ctx.drain_expecting("c3", &[&["e3"]]).await?;
    ctx.rec(
        "consumer info",
        "SELECT consumer_name, last_tick, current_batch, next_tick, pending_events
           FROM pgq.get_consumer_info($1)",
        &[&QUEUE],
    )
    .await?;
    let caught_up = |name: &str| {
        json!({"consumer_name": name, "last_tick": 3, "current_batch": null, "next_tick": null,
               "pending_events": 0})
    };
    ctx.expect_last(&json!([caught_up("c1"), caught_up("c2"), caught_up("c3")]))?;
    Ok(ctx)
}

#[tokio::test]
async fn unregister_with_open_batch() -> Result<()> {
    compare(0, unregister).await
}
