//! Scenario 8: what `get_consumer_info`, `get_queue_info` and `get_batch_info` report as
//! consumers fall behind, hold batches and catch up (intervals as "NULL or not").

use anyhow::Result;

use super::{compare, Ctx, QUEUE};

// Positions from 1 up (see the harness's notes): pending_events is the newest tick's position
// minus the last tick's, and from a queue's first tick (0 in ours, 1 in PGQ) ours counts one
// event more, the right count.
const CONSUMER_INFO: &str = "SELECT i.queue_name, i.consumer_name, i.lag IS NULL AS no_lag,
        i.last_seen IS NULL AS not_seen, i.last_tick, i.current_batch, i.next_tick,
        greatest(t.tick_event_seq + i.pending_events, 1) - greatest(t.tick_event_seq, 1)
            AS pending_events";

/// Joins `i`, a `get_consumer_info` row, to its last tick `t`.
const LAST_TICK: &str = "LEFT JOIN pgq.queue q ON q.queue_name = i.queue_name
        LEFT JOIN pgq.tick t ON t.tick_queue = q.queue_id AND t.tick_id = i.last_tick";

async fn consumer_info(ctx: &mut Ctx, label: &str) -> Result<()> {
    ctx.rec(
        &format!("consumer info {label}"),
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info() i {LAST_TICK} ORDER BY 1, 2"),
        &[],
    )
    .await?;
    Ok(())
}

async fn queue_info(ctx: &mut Ctx, label: &str) -> Result<()> {
    ctx.rec(
        &format!("queue info {label}"),
        "SELECT queue_name, queue_ntables, queue_cur_table, queue_rotation_period::text AS period,
                queue_external_ticker, queue_ticker_paused, queue_ticker_max_count,
                queue_ticker_max_lag::text AS max_lag, queue_ticker_idle_period::text AS idle,
                ticker_lag IS NULL AS no_ticker_lag, ev_per_sec IS NULL AS no_rate, ev_new,
                last_tick_id
           FROM pgq.get_queue_info()",
        &[],
    )
    .await?;
    Ok(())
}

/// Two queues, three consumers (one of them on both queues) at different positions.
async fn info(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.create_queue("q2").await?;
    ctx.register("c1").await?;
    ctx.register("c2").await?;
    ctx.rec(
        "register c1 on q2",
        "SELECT pgq.register_consumer('q2', 'c1')",
        &[],
    )
    .await?;
    consumer_info(&mut ctx, "after registering").await?;
    queue_info(&mut ctx, "after creating").await?;

    for i in 0..3 {
        ctx.insert(0, "t", &format!("e{i}")).await?;
    }
    ctx.tick().await?;
    ctx.insert(0, "t", "late1").await?;
    ctx.insert(0, "t", "late2").await?;
    consumer_info(&mut ctx, "after a tick").await?;
    queue_info(&mut ctx, "with events after the last tick").await?;

    let batch = ctx.next_batch("c1").await?.expect("a batch");
    consumer_info(&mut ctx, "with c1 holding a batch").await?;
    ctx.rec(
        "batch info",
        "SELECT queue_name, consumer_name, batch_start IS NULL AS no_start,
                batch_end IS NULL AS no_end, prev_tick_id, tick_id, lag IS NULL AS no_lag,
                greatest(seq_start, 1) AS seq_start, seq_end
           FROM pgq.get_batch_info($1)",
        &[&batch],
    )
    .await?;
    ctx.tick().await?;
    consumer_info(&mut ctx, "after another tick").await?;
    ctx.finish(batch).await?;
    ctx.consume("c1").await?;
    consumer_info(&mut ctx, "with c1 caught up").await?;
    ctx.rec(
        "consumer info of q",
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info($1) i {LAST_TICK} ORDER BY 1, 2"),
        &[&QUEUE],
    )
    .await?;
    ctx.rec(
        "consumer info of q/c2",
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info($1, 'c2') i {LAST_TICK}"),
        &[&QUEUE],
    )
    .await?;
    ctx.rec(
        "consumer info of an unknown queue",
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info('nope') i {LAST_TICK}"),
        &[],
    )
    .await?;
    ctx.rec(
        "queue info of q2",
        "SELECT queue_name, ev_new, last_tick_id FROM pgq.get_queue_info('q2')",
        &[],
    )
    .await?;
    ctx.rec(
        "queue info of an unknown queue",
        "SELECT count(*) FROM pgq.get_queue_info('nope')",
        &[],
    )
    .await?;
    ctx.rec(
        "unregister c2",
        "SELECT pgq.unregister_consumer($1, 'c2')",
        &[&QUEUE],
    )
    .await?;
    consumer_info(&mut ctx, "after c2 left").await?;
    queue_info(&mut ctx, "at the end").await?;
    Ok(ctx)
}

#[tokio::test]
async fn consumer_and_queue_info() -> Result<()> {
    compare(0, info).await
}
