//! Scenario 9: PGQ's tick rule, driven by `pgq.ticker` calls with tick times moved back to
//! simulate time: max_lag and max_count with new events, the idle back-off without them
//! (max_lag/2, twice the previous gap, idle_period), paused and externally ticked queues.

use anyhow::Result;
use serde_json::{json, Value};

use super::{compare, Ctx, QUEUE};

/// `pgq.ticker(QUEUE)`, which must tick (`true`) or not.
async fn ticker(ctx: &mut Ctx, label: &str, ticks: bool) -> Result<Option<i64>> {
    let tick = ctx.ticker(label).await?;
    if tick.is_some() != ticks {
        anyhow::bail!(
            "{label}: expected {}, got {tick:?} ({:?})",
            if ticks { "a tick" } else { "no tick" },
            ctx.flavor()
        );
    }
    Ok(tick)
}

async fn tick_rule(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?; // tick 1
    let t2 = ticker(&mut ctx, "no events, no previous gap", true)
        .await?
        .expect("tick");
    ticker(&mut ctx, "no events, lag < max_lag/2", false).await?;

    // A fresh sequence's last_value is 1 before and after the first nextval: the first event
    // does not count as new.
    ctx.insert(0, "t", "e1").await?;
    ctx.insert(0, "t", "e2").await?;
    ctx.age_tick(t2, 2.0).await?;
    ticker(&mut ctx, "new events, lag 2s < max_lag 3s", false).await?;
    ctx.age_tick(t2, 4.0).await?;
    let t3 = ticker(&mut ctx, "new events, lag 4s", true)
        .await?
        .expect("tick");

    ctx.age_tick(t3, 1.0).await?;
    ticker(&mut ctx, "idle, lag 1s < max_lag/2", false).await?;
    ctx.age_tick(t2, 100.0).await?;
    ctx.age_tick(t3, 2.0).await?;
    ticker(&mut ctx, "idle, lag 2s < twice the gap 98s", false).await?;
    ctx.age_tick(t2, 10.0).await?;
    ctx.age_tick(t3, 4.0).await?;
    ticker(&mut ctx, "idle, lag 4s < twice the gap 6s", false).await?;
    ctx.age_tick(t2, 19.0).await?;
    ctx.age_tick(t3, 13.0).await?;
    let t4 = ticker(&mut ctx, "idle, lag 13s > twice the gap 6s", true)
        .await?
        .expect("tick");
    ctx.age_tick(t3, 1000.0).await?;
    ctx.age_tick(t4, 50.0).await?;
    ticker(&mut ctx, "idle, lag 50s < idle_period", false).await?;
    ctx.age_tick(t4, 70.0).await?;
    ticker(&mut ctx, "idle, lag 70s > idle_period", true).await?;

    ctx.config("ticker_max_count", "3").await?;
    ctx.insert(0, "t", "e3").await?;
    ctx.insert(0, "t", "e4").await?;
    ticker(&mut ctx, "2 new events < max_count 3", false).await?;
    ctx.insert(0, "t", "e5").await?;
    let t6 = ticker(&mut ctx, "3 new events = max_count 3", true)
        .await?
        .expect("tick");

    // Rolled-back and in-flight inserts advance the sequence: they count as new events.
    ctx.begin(1).await?;
    ctx.insert(1, "t", "r1").await?;
    ctx.rollback(1).await?;
    ctx.age_tick(t6, 4.0).await?;
    let t7 = ticker(&mut ctx, "a rolled-back event, lag 4s", true)
        .await?
        .expect("tick");
    ctx.begin(1).await?;
    ctx.insert(1, "t", "open1").await?;
    ctx.age_tick(t7, 4.0).await?;
    ticker(&mut ctx, "an uncommitted event, lag 4s", true).await?;
    ctx.commit(1).await?;

    ctx.rec("force_tick", "SELECT pgq.force_tick($1)", &[&QUEUE])
        .await?;
    ctx.expect_last(&json!(8))?; // the last tick so far
    let t9 = ticker(&mut ctx, "after force_tick", true)
        .await?
        .expect("tick");

    ctx.config("ticker_max_lag", "10 seconds").await?;
    ctx.config("ticker_idle_period", "20 seconds").await?;
    ctx.insert(0, "t", "e6").await?;
    ctx.age_tick(t9, 5.0).await?;
    ticker(&mut ctx, "new events, lag 5s < max_lag 10s", false).await?;
    ctx.age_tick(t9, 11.0).await?;
    let t10 = ticker(&mut ctx, "new events, lag 11s", true)
        .await?
        .expect("tick");
    ctx.age_tick(t9, 100.0).await?;
    ctx.age_tick(t10, 19.0).await?;
    ticker(&mut ctx, "idle, lag 19s < idle_period 20s", false).await?;
    ctx.age_tick(t10, 21.0).await?;
    ticker(&mut ctx, "idle, lag 21s > idle_period 20s", true).await?;

    // ticker() over all queues, paused and external queues.
    ctx.create_queue("q2").await?;
    ctx.rec("ticker() with q2 fresh", "SELECT pgq.ticker()", &[])
        .await?;
    ctx.expect_last(&json!(1))?;
    ctx.rec("ticker() again", "SELECT pgq.ticker()", &[])
        .await?;
    ctx.expect_last(&json!(0))?;
    ctx.config("ticker_paused", "true").await?;
    ctx.fails(
        "ticker of a paused queue",
        "SELECT pgq.ticker($1)",
        &[&QUEUE],
        "PQT01",
        "Ticker has been paused for this queue",
    )
    .await?;
    ctx.rec(
        "force_tick of a paused queue",
        "SELECT pgq.force_tick($1)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!(11))?;
    ctx.rec(
        "ev_new after force_tick of a paused queue",
        "SELECT ev_new FROM pgq.get_queue_info($1)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.config("ticker_paused", "false").await?;
    ctx.config("external_ticker", "true").await?;
    ctx.fails(
        "ticker of an external queue",
        "SELECT pgq.ticker($1)",
        &[&QUEUE],
        "PQT01",
        "This queue has external tick source.",
    )
    .await?;
    ctx.rec(
        "external tick",
        "SELECT pgq.ticker($1, 100, now(), 5000)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!(100))?;
    ctx.rec(
        "queue info after the external tick",
        "SELECT ev_new, last_tick_id FROM pgq.get_queue_info($1)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!({"ev_new": 0, "last_tick_id": 100}))?;
    ctx.insert(0, "t", "after external tick").await?;
    ctx.fails(
        "external tick on a queue ticked here",
        "SELECT pgq.ticker('q2', 100, now(), 5000)",
        &[],
        "PQT01",
        "queue not found or ticker disabled: q2",
    )
    .await?;
    ctx.rec(
        "ticker() skips the external queue",
        "SELECT pgq.ticker()",
        &[],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.rec(
        "ticks",
        "SELECT tick_queue, tick_id, greatest(tick_event_seq, 1) AS tick_event_seq
           FROM pgq.tick ORDER BY 1, 2",
        &[],
    )
    .await?;
    // Each tick's event position: the two first events count as one (a fresh sequence's
    // last_value), the force_tick moves the sequence on, the external tick sets it.
    let ticks = |queue: i32, ticks: &[(i64, i64)]| {
        ticks
            .iter()
            .map(|(id, seq)| json!({"tick_queue": queue, "tick_id": id, "tick_event_seq": seq}))
            .collect::<Vec<_>>()
    };
    let mut expected = ticks(
        1,
        &[
            (1, 1),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 2),
            (6, 5),
            (7, 6),
            (8, 7),
            (9, 1014),
            (10, 1015),
            (11, 1015),
            (100, 5000),
        ],
    );
    expected.extend(ticks(2, &[(1, 1), (2, 1)]));
    ctx.expect_last(&Value::Array(expected))?;
    Ok(ctx)
}

#[tokio::test]
async fn tick_rule_and_idle_backoff() -> Result<()> {
    compare(1, tick_rule).await
}
