//! Scenario 10: return values and errors of bad calls (unknown queues and consumers, NULLs,
//! duplicates, finished batches, dropping a queue in use, disabled inserts).

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use super::{compare, Ctx, Flavor, QUEUE};

async fn bad_calls(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.create_queue(QUEUE).await?;
    ctx.expect_last(&json!(0))?;

    // An unknown queue.
    for (label, sql, state, message) in [
        (
            "insert_event",
            "SELECT pgq.insert_event('nope', 't', 'd')",
            "PQQ01",
            "No such queue",
        ),
        (
            "ticker",
            "SELECT pgq.ticker('nope')",
            "PQQ01",
            "no such queue",
        ),
        (
            "register_consumer",
            "SELECT pgq.register_consumer('nope', 'c')",
            "PQQ01",
            "Event queue not created yet",
        ),
        (
            "register_consumer_at",
            "SELECT pgq.register_consumer_at('nope', 'c', 1)",
            "PQQ01",
            "Event queue not created yet",
        ),
        (
            "next_batch",
            "SELECT pgq.next_batch('nope', 'c')",
            "PQC01",
            "Not subscriber to queue: nope/c",
        ),
        (
            "next_batch_info",
            "SELECT * FROM pgq.next_batch_info('nope', 'c')",
            "PQC01",
            "Not subscriber to queue: nope/c",
        ),
        (
            "drop_queue",
            "SELECT pgq.drop_queue('nope')",
            "PQQ01",
            "No such event queue",
        ),
        (
            "drop_queue forced",
            "SELECT pgq.drop_queue('nope', true)",
            "PQQ01",
            "No such event queue",
        ),
        (
            "set_queue_config",
            "SELECT pgq.set_queue_config('nope', 'ticker_max_lag', '1')",
            "PQQ01",
            "No such event queue",
        ),
        (
            "current_event_table",
            "SELECT pgq.current_event_table('nope')",
            "PQQ01",
            "Event queue not found",
        ),
    ] {
        ctx.fails(&format!("unknown queue: {label}"), sql, &[], state, message)
            .await?;
    }
    ctx.rec(
        "unknown queue: unregister_consumer",
        "SELECT pgq.unregister_consumer('nope', 'c')",
        &[],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.rec(
        "unknown queue: force_tick",
        "SELECT pgq.force_tick('nope')",
        &[],
    )
    .await?;
    ctx.expect_last(&Value::Null)?;
    ctx.rec(
        "unknown queue: get_queue_info",
        "SELECT count(*) FROM pgq.get_queue_info('nope')",
        &[],
    )
    .await?;
    ctx.expect_last(&json!(0))?;

    // An unknown consumer.
    ctx.fails(
        "unknown consumer: next_batch",
        "SELECT pgq.next_batch($1, 'ghost')",
        &[&QUEUE],
        "PQC01",
        "Not subscriber to queue: q/ghost",
    )
    .await?;
    ctx.fails(
        "unknown consumer: next_batch_custom",
        "SELECT * FROM pgq.next_batch_custom($1, 'ghost', NULL, 10, NULL)",
        &[&QUEUE],
        "PQC01",
        "Not subscriber to queue: q/ghost",
    )
    .await?;
    ctx.unregister("ghost", 0).await?;

    // NULLs.
    for (label, sql, state, message) in [
        (
            "create_queue(NULL)",
            "SELECT pgq.create_queue(NULL)",
            "PQA01",
            "Invalid NULL value",
        ),
        (
            "next_batch(NULL, c)",
            "SELECT pgq.next_batch(NULL, 'c')",
            "PQC01",
            "Not subscriber to queue: NULL/c",
        ),
        (
            "next_batch(q, NULL)",
            "SELECT pgq.next_batch('q', NULL)",
            "PQC01",
            "Not subscriber to queue: q/NULL",
        ),
        (
            "insert_event(NULL, ..)",
            "SELECT pgq.insert_event(NULL, 't', 'd')",
            "PQA01",
            "Queue name must not be NULL",
        ),
        (
            "ticker(NULL)",
            "SELECT pgq.ticker(NULL::text)",
            "PQQ01",
            "no such queue",
        ),
        (
            "register_consumer(q, NULL)",
            "SELECT pgq.register_consumer('q', NULL)",
            "23502",
            "null value in column \"co_name\" of relation \"consumer\" violates not-null constraint",
        ),
        (
            "register_consumer(NULL, c)",
            "SELECT pgq.register_consumer(NULL, 'c')",
            "PQQ01",
            "Event queue not created yet",
        ),
        (
            "set_queue_config(NULL, ..)",
            "SELECT pgq.set_queue_config(NULL, 'ticker_max_lag', '1')",
            "PQA01",
            "Invalid NULL value",
        ),
        (
            "set_queue_config(q, NULL, ..)",
            "SELECT pgq.set_queue_config('q', NULL, '1')",
            "PQA01",
            "Invalid NULL value",
        ),
    ] {
        ctx.fails(label, sql, &[], state, message).await?;
    }
    // PGQ's text here is an accident of its code ("query string argument of EXECUTE is null").
    ctx.failure(
        0,
        "set_queue_config(q, max_lag, NULL)",
        "SELECT pgq.set_queue_config('q', 'ticker_max_lag', NULL)",
        &[],
        "23502",
        None,
    )
    .await?;
    for (label, sql, result) in [
        (
            "unregister_consumer(NULL, c)",
            "SELECT pgq.unregister_consumer(NULL, 'c')",
            json!(0),
        ),
        (
            "drop_queue(NULL)",
            "SELECT pgq.drop_queue(NULL::text)",
            Value::Null,
        ),
        (
            "finish_batch(NULL)",
            "SELECT pgq.finish_batch(NULL)",
            json!(0),
        ),
        (
            "force_tick(NULL)",
            "SELECT pgq.force_tick(NULL)",
            Value::Null,
        ),
    ] {
        ctx.rec(label, sql, &[]).await?;
        ctx.expect_last(&result)?;
    }

    // Bad settings.
    ctx.fails(
        "set_queue_config: unknown parameter",
        "SELECT pgq.set_queue_config('q', 'bogus', '1')",
        &[],
        "PQA01",
        "cannot change parameter \"boguss\"",
    )
    .await?;
    ctx.fails(
        "set_queue_config: a column that is not a setting",
        "SELECT pgq.set_queue_config('q', 'data_pfx', 'x')",
        &[],
        "PQA01",
        "cannot change parameter \"data_pfxs\"",
    )
    .await?;
    ctx.fails(
        "set_queue_config: not a number",
        "SELECT pgq.set_queue_config('q', 'ticker_max_count', 'many')",
        &[],
        "22P02",
        "invalid input syntax for type integer: \"many\"",
    )
    .await?;

    // Unknown batches and ticks.
    ctx.rec(
        "get_batch_info of an unknown batch",
        "SELECT queue_name, consumer_name, prev_tick_id, tick_id, seq_start, seq_end
           FROM pgq.get_batch_info(12345)",
        &[],
    )
    .await?;
    ctx.expect_last(
        &json!({"queue_name": null, "consumer_name": null, "prev_tick_id": null,
                            "tick_id": null, "seq_start": null, "seq_end": null}),
    )?;
    ctx.fails(
        "get_batch_events of an unknown batch",
        "SELECT * FROM pgq.get_batch_events(12345)",
        &[],
        "PQB01",
        "batch not found",
    )
    .await?;
    ctx.rec(
        "finish_batch of an unknown batch",
        "SELECT pgq.finish_batch(12345)",
        &[],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    ctx.fails(
        "register_consumer_at an unknown tick",
        "SELECT pgq.register_consumer_at('q', 'c', 12345)",
        &[],
        "PQT02",
        "cannot reposition, tick not found: 12345",
    )
    .await?;

    // A batch finished twice, then used.
    ctx.register("c").await?;
    ctx.expect_last(&json!(1))?;
    let e1 = ctx.insert(0, "t", "e1").await?;
    ctx.tick().await?;
    let batch = ctx.next_batch("c").await?.expect("a batch");
    ctx.expect_batch(Some(&["e1"]))?;
    ctx.finish(batch).await?;
    ctx.expect_last(&json!(1))?;
    ctx.finish(batch).await?;
    ctx.expect_last(&json!(0))?;
    ctx.fails(
        "event_retry in a finished batch",
        "SELECT pgq.event_retry($1, $2, 0)",
        &[&batch, &e1],
        "PQB01",
        "event not found",
    )
    .await?;

    // Dropping a queue that consumers use.
    ctx.fails(
        "drop_queue with a consumer",
        "SELECT pgq.drop_queue('q')",
        &[],
        "PQQ02",
        "cannot drop queue, consumers still attached",
    )
    .await?;
    ctx.fails(
        "drop_queue(q, false) with a consumer",
        "SELECT pgq.drop_queue('q', false)",
        &[],
        "PQQ02",
        "cannot drop queue, consumers still attached",
    )
    .await?;
    ctx.rec("drop_queue forced", "SELECT pgq.drop_queue('q', true)", &[])
        .await?;
    ctx.expect_last(&json!(1))?;
    ctx.rec(
        "after the drop",
        "SELECT (SELECT count(*) FROM pgq.queue) AS queues,
                (SELECT count(*) FROM pgq.consumer) AS consumers,
                (SELECT count(*) FROM pgq.subscription) AS subscriptions,
                (SELECT count(*) FROM pgq.tick) AS ticks,
                to_regclass('pgq.event_1') IS NULL AS tables_gone",
        &[],
    )
    .await?;
    ctx.expect_last(
        &json!({"queues": 0, "consumers": 0, "subscriptions": 0, "ticks": 0,
                            "tables_gone": true}),
    )?;
    ctx.create_queue(QUEUE).await?;
    ctx.expect_last(&json!(1))?;
    ctx.rec(
        "the queue made again",
        "SELECT queue_cur_table, ev_new, last_tick_id FROM pgq.get_queue_info('q')",
        &[],
    )
    .await?;
    ctx.expect_last(&json!({"queue_cur_table": 0, "ev_new": 0, "last_tick_id": 1}))?;
    // Its event ids start again.
    let again = ctx.insert(0, "t", "again").await?;
    ensure!(again == 1, "the new queue's first event id is {again}");
    Ok(ctx)
}

#[tokio::test]
async fn bad_calls_fail_alike() -> Result<()> {
    compare(0, bad_calls).await
}

/// Inserts refused by `queue_disable_insert` and `queue_per_tx_limit` (set in the table:
/// PGQ's `set_queue_config` does not know these two), and the event ids that follow them.
async fn refused_inserts(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.register("c").await?;
    insert_as(&mut ctx, 0, "first", 1).await?;

    // Deliberate extension: our set_queue_config also sets these two; PGQ's refuses them.
    let extended = ctx
        .conn(0)
        .query(
            "SELECT pgq.set_queue_config('q', 'disable_insert', 'true')",
            &[],
        )
        .await;
    match ctx.flavor() {
        Flavor::Ours => ensure!(
            extended.is_ok(),
            "set_queue_config disable_insert: {extended:?}"
        ),
        Flavor::Reference => ensure!(extended.is_err(), "PGQ learned disable_insert"),
    }
    ctx.exec(0, "UPDATE pgq.queue SET queue_disable_insert = true")
        .await?;
    ctx.fails(
        "insert into a disabled queue",
        "SELECT pgq.insert_event('q', 't', 'refused')",
        &[],
        "PQI01",
        "Insert into queue disallowed",
    )
    .await?;
    ctx.exec(0, "SET session_replication_role = replica")
        .await?;
    insert_as(&mut ctx, 0, "as a replica", 3).await?;
    ctx.exec(0, "RESET session_replication_role").await?;
    ctx.exec(
        0,
        "UPDATE pgq.queue SET queue_disable_insert = false, queue_per_tx_limit = 2",
    )
    .await?;
    ctx.begin(1).await?;
    insert_as(&mut ctx, 1, "l1", 4).await?;
    insert_as(&mut ctx, 1, "l2", 5).await?;
    ctx.failure(
        1,
        "a third insert in one transaction",
        "SELECT pgq.insert_event('q', 't', 'l3')",
        &[],
        "PQI02",
        Some("Queue 'q' allows max 2 events from one TX"),
    )
    .await?;
    ctx.rollback(1).await?;
    // A rolled-back savepoint: PGQ counts every insert the transaction made; ours counts the
    // inserts that survive (the counter lives in a transaction-local setting, which a rolled-back
    // savepoint restores). A documented, deliberate difference, checked per side.
    ctx.begin(1).await?;
    insert_as(&mut ctx, 1, "s1", 7).await?;
    ctx.exec(1, "SAVEPOINT s").await?;
    insert_as(&mut ctx, 1, "s2", 8).await?;
    ctx.exec(1, "ROLLBACK TO SAVEPOINT s").await?;
    let third = ctx
        .conn(1)
        .query("SELECT pgq.insert_event('q', 't', 's3')", &[])
        .await;
    match ctx.flavor() {
        Flavor::Ours => ensure!(third.is_ok(), "ours refused s3: {third:?}"),
        Flavor::Reference => ensure!(third.is_err(), "PGQ accepted s3"),
    }
    ctx.rollback(1).await?;
    ctx.begin(1).await?;
    insert_as(&mut ctx, 1, "m1", 10).await?;
    insert_as(&mut ctx, 1, "m2", 11).await?;
    ctx.commit(1).await?;
    insert_as(&mut ctx, 0, "after the refusals", 12).await?;
    ctx.tick().await?;
    ctx.take(
        "c",
        &["first", "as a replica", "m1", "m2", "after the refusals"],
    )
    .await?;
    Ok(ctx)
}

/// Inserts an event on connection `i`, which must get event id `id`.
async fn insert_as(ctx: &mut Ctx, i: usize, data: &str, id: i64) -> Result<()> {
    let got = ctx.insert(i, "t", data).await?;
    ensure!(
        got == id,
        "{data}: event id {got}, expected {id} ({:?})",
        ctx.flavor()
    );
    Ok(())
}

/// Refused inserts use up an event id on both sides (the id is taken before the checks), so
/// later ids stay equal.
#[tokio::test]
async fn refused_inserts_and_event_ids() -> Result<()> {
    compare(1, refused_inserts).await
}
