//! Scenarios 1-3: which events land in which batch when transactions overlap, span ticks or
//! roll back.

use anyhow::{ensure, Result};
use serde_json::json;

use super::{compare, Ctx, QUEUE};

/// Three producers interleave their inserts and commit in another order than they began; ticks
/// come between the commits. Each batch holds exactly the transactions that committed between
/// its two ticks, whole, in `ev_id` order.
async fn interleaved(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.register("c1").await?;
    ctx.register("c2").await?;

    ctx.begin(1).await?;
    ctx.begin(2).await?;
    ctx.begin(3).await?;
    ctx.insert(1, "a", "a1").await?;
    ctx.insert(2, "b", "b1").await?;
    ctx.insert(3, "c", "c1").await?;
    ctx.insert(1, "a", "a2").await?;
    ctx.tick().await?;
    ctx.take("c1", &[]).await?; // nothing committed yet

    ctx.commit(3).await?;
    ctx.insert(2, "b", "b2").await?;
    ctx.insert(0, "x", "x1").await?; // autocommit
    ctx.tick().await?;
    ctx.take("c1", &["c1", "x1"]).await?;

    ctx.commit(1).await?;
    ctx.begin(3).await?;
    ctx.insert(3, "c", "c3").await?;
    ctx.begin(1).await?;
    ctx.insert(1, "a", "a3").await?;
    ctx.commit(2).await?;
    ctx.tick().await?;
    ctx.take("c1", &["a1", "b1", "a2", "b2"]).await?;

    ctx.commit(1).await?;
    ctx.insert(3, "c", "c4").await?;
    ctx.tick().await?;
    ctx.commit(3).await?;
    ctx.tick().await?;
    ctx.drain_expecting("c1", &[&["a3"], &["c3", "c4"]]).await?;
    // The same batches, as seen by a consumer that fell behind.
    ctx.drain_expecting(
        "c2",
        &[
            &[],
            &["c1", "x1"],
            &["a1", "b1", "a2", "b2"],
            &["a3"],
            &["c3", "c4"],
        ],
    )
    .await?;
    Ok(ctx)
}

#[tokio::test]
async fn interleaved_transactions() -> Result<()> {
    compare(3, interleaved).await
}

/// One transaction stays open over several ticks while others commit around it: its events
/// arrive, all together, in the batch of the first tick after its commit.
async fn long_transaction(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.register("c").await?;

    ctx.begin(1).await?;
    ctx.insert(1, "long", "l1").await?;
    ctx.insert(0, "short", "s1").await?;
    ctx.tick().await?;
    ctx.take("c", &["s1"]).await?;

    ctx.insert(1, "long", "l2").await?;
    ctx.begin(2).await?;
    ctx.insert(2, "mid", "m1").await?;
    ctx.insert(0, "short", "s2").await?;
    ctx.tick().await?;
    ctx.take("c", &["s2"]).await?;

    ctx.insert(2, "mid", "m2").await?;
    ctx.commit(2).await?;
    ctx.tick().await?;
    ctx.take("c", &["m1", "m2"]).await?;

    ctx.insert(0, "short", "s3").await?;
    ctx.tick().await?;
    ctx.insert(1, "long", "l3").await?;
    ctx.commit(1).await?;
    ctx.rec(
        "pending before the tick",
        "SELECT pending_events FROM pgq.get_consumer_info($1, 'c')",
        &[&QUEUE],
    )
    .await?;
    // Event positions: two ticks' worth of the sequence's steps (PGQ's reading, as the
    // reference reports it).
    ctx.expect_last(&json!(2002))?;
    ctx.tick().await?;
    ctx.take("c", &["s3"]).await?;
    ctx.take("c", &["l1", "l2", "l3"]).await?;
    let none = ctx.next_batch("c").await?;
    ctx.note("no more batches", json!(none.is_none()));
    ctx.expect_last(&json!(true))?;
    Ok(ctx)
}

#[tokio::test]
async fn transaction_spanning_ticks() -> Result<()> {
    compare(2, long_transaction).await
}

/// Rolled-back transactions, rolled-back savepoints and a rollback after a tick: none of their
/// events is ever delivered, and the transactions around them are delivered whole.
async fn rollbacks(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.register("c").await?;

    ctx.begin(1).await?;
    ctx.insert(1, "gone", "r1").await?;
    ctx.insert(1, "gone", "r2").await?;
    ctx.rollback(1).await?;

    ctx.begin(2).await?;
    ctx.insert(2, "kept", "k1").await?;
    ctx.exec(2, "SAVEPOINT s").await?;
    ctx.insert(2, "gone", "sp1").await?;
    ctx.exec(2, "ROLLBACK TO SAVEPOINT s").await?;
    ctx.insert(2, "kept", "k2").await?;
    ctx.exec(2, "SAVEPOINT s2").await?;
    ctx.insert(2, "kept", "k3").await?;
    ctx.exec(2, "RELEASE SAVEPOINT s2").await?;
    ctx.commit(2).await?;

    ctx.begin(3).await?;
    ctx.insert(3, "gone", "late1").await?;
    ctx.tick().await?;
    ctx.insert(3, "gone", "late2").await?;
    ctx.take("c", &["k1", "k2", "k3"]).await?;
    ctx.rollback(3).await?;
    ctx.tick().await?;
    ctx.take("c", &[]).await?;

    ctx.begin(1).await?;
    ctx.insert(1, "gone", "r3").await?;
    ensure!(
        ctx.exec(1, "SELECT 1/0").await.is_err(),
        "division by zero succeeded"
    );
    ctx.rollback(1).await?;
    ctx.insert(0, "kept", "k4").await?;
    ctx.tick().await?;
    ctx.take("c", &["k4"]).await?;
    ctx.rec(
        "consumer info",
        "SELECT last_tick, current_batch, pending_events FROM pgq.get_consumer_info($1, 'c')",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!({"last_tick": 4, "current_batch": null, "pending_events": 0}))?;
    Ok(ctx)
}

#[tokio::test]
async fn rolled_back_transactions() -> Result<()> {
    compare(3, rollbacks).await
}
