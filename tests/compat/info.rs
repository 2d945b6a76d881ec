//! Scenario 8: what `get_consumer_info`, `get_queue_info` and `get_batch_info` report as
//! consumers fall behind, hold batches and catch up (intervals as "NULL or not").

use anyhow::Result;
use serde_json::{json, Value};

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

/// A consumer's position: `(queue, consumer, last_tick, current_batch, next_tick,
/// pending_events)`.
type Position<'a> = (&'a str, &'a str, i64, Option<i64>, Option<i64>, i64);

/// A consumer's `get_consumer_info` row as [`CONSUMER_INFO`] reads it, seen and lagging as
/// every consumer here is.
fn position(
    (queue, consumer, last_tick, current_batch, next_tick, pending): Position<'_>,
) -> Value {
    json!({"queue_name": queue, "consumer_name": consumer, "no_lag": false, "not_seen": false,
           "last_tick": last_tick, "current_batch": current_batch, "next_tick": next_tick,
           "pending_events": pending})
}

/// A queue's `get_queue_info` row as [`queue_info`] reads it, with PGQ's default settings:
/// `(queue, ev_new, last_tick_id, whether it has no event rate yet)`.
fn queue_row((queue, ev_new, last_tick, no_rate): (&str, i64, i64, bool)) -> Value {
    json!({"queue_name": queue, "queue_ntables": 3, "queue_cur_table": 0, "period": "02:00:00",
           "queue_external_ticker": false, "queue_ticker_paused": false,
           "queue_ticker_max_count": 500, "max_lag": "00:00:03", "idle": "00:01:00",
           "no_ticker_lag": false, "no_rate": no_rate, "ev_new": ev_new,
           "last_tick_id": last_tick})
}

/// Records every consumer's position and asserts it is `expected` (see [`position`]).
async fn consumer_info(ctx: &mut Ctx, label: &str, expected: &[Position<'_>]) -> Result<()> {
    ctx.rec(
        &format!("consumer info {label}"),
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info() i {LAST_TICK} ORDER BY 1, 2"),
        &[],
    )
    .await?;
    ctx.expect_last(&Value::Array(
        expected.iter().copied().map(position).collect(),
    ))
}

/// Records both queues' info and asserts it is `expected` (see [`queue_row`]).
async fn queue_info(
    ctx: &mut Ctx,
    label: &str,
    expected: [(&str, i64, i64, bool); 2],
) -> Result<()> {
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
    ctx.expect_last(&Value::Array(expected.into_iter().map(queue_row).collect()))
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
    let fresh = [("q", "c1", 1, None, None, 0), ("q", "c2", 1, None, None, 0)];
    let on_q2 = ("q2", "c1", 1, None, None, 0);
    consumer_info(&mut ctx, "after registering", &[fresh[0], fresh[1], on_q2]).await?;
    queue_info(
        &mut ctx,
        "after creating",
        [("q", 0, 1, true), ("q2", 0, 1, true)],
    )
    .await?;

    for i in 0..3 {
        ctx.insert(0, "t", &format!("e{i}")).await?;
    }
    ctx.tick().await?;
    ctx.insert(0, "t", "late1").await?;
    ctx.insert(0, "t", "late2").await?;
    // Pending events are the difference of the ticks' event positions (PGQ's reading).
    let behind = |c, pending| ("q", c, 1, None, None, pending);
    consumer_info(
        &mut ctx,
        "after a tick",
        &[behind("c1", 2003), behind("c2", 2003), on_q2],
    )
    .await?;
    queue_info(
        &mut ctx,
        "with events after the last tick",
        [("q", 2, 2, false), ("q2", 0, 1, true)],
    )
    .await?;

    let batch = ctx.next_batch("c1").await?.expect("a batch");
    ctx.expect_batch(Some(&["e0", "e1", "e2"]))?;
    consumer_info(
        &mut ctx,
        "with c1 holding a batch",
        &[
            ("q", "c1", 1, Some(batch), Some(2), 2003),
            behind("c2", 2003),
            on_q2,
        ],
    )
    .await?;
    ctx.rec(
        "batch info",
        "SELECT queue_name, consumer_name, batch_start IS NULL AS no_start,
                batch_end IS NULL AS no_end, prev_tick_id, tick_id, lag IS NULL AS no_lag,
                greatest(seq_start, 1) AS seq_start, seq_end
           FROM pgq.get_batch_info($1)",
        &[&batch],
    )
    .await?;
    ctx.expect_last(
        &json!({"queue_name": "q", "consumer_name": "c1", "no_start": false,
                            "no_end": false, "prev_tick_id": 1, "tick_id": 2, "no_lag": false,
                            "seq_start": 1, "seq_end": 2004}),
    )?;
    ctx.tick().await?;
    consumer_info(
        &mut ctx,
        "after another tick",
        &[
            ("q", "c1", 1, Some(batch), Some(2), 4006),
            behind("c2", 4006),
            on_q2,
        ],
    )
    .await?;
    ctx.finish(batch).await?;
    ctx.take("c1", &["late1", "late2"]).await?;
    let c1_caught_up = ("q", "c1", 3, None, None, 0);
    consumer_info(
        &mut ctx,
        "with c1 caught up",
        &[c1_caught_up, behind("c2", 4006), on_q2],
    )
    .await?;
    ctx.rec(
        "consumer info of q",
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info($1) i {LAST_TICK} ORDER BY 1, 2"),
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!([
        position(c1_caught_up),
        position(behind("c2", 4006))
    ]))?;
    ctx.rec(
        "consumer info of q/c2",
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info($1, 'c2') i {LAST_TICK}"),
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&position(behind("c2", 4006)))?;
    ctx.rec(
        "consumer info of an unknown queue",
        &format!("{CONSUMER_INFO} FROM pgq.get_consumer_info('nope') i {LAST_TICK}"),
        &[],
    )
    .await?;
    ctx.expect_last(&json!([]))?;
    ctx.rec(
        "queue info of q2",
        "SELECT queue_name, ev_new, last_tick_id FROM pgq.get_queue_info('q2')",
        &[],
    )
    .await?;
    ctx.expect_last(&json!({"queue_name": "q2", "ev_new": 0, "last_tick_id": 1}))?;
    ctx.rec(
        "queue info of an unknown queue",
        "SELECT count(*) FROM pgq.get_queue_info('nope')",
        &[],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.unregister("c2", 1).await?;
    consumer_info(&mut ctx, "after c2 left", &[c1_caught_up, on_q2]).await?;
    queue_info(
        &mut ctx,
        "at the end",
        [("q", 0, 3, false), ("q2", 0, 1, true)],
    )
    .await?;
    Ok(ctx)
}

#[tokio::test]
async fn consumer_and_queue_info() -> Result<()> {
    compare(0, info).await
}
