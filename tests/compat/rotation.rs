//! Scenario 5: event table rotation (`maint_rotate_tables_step1` / `step2` in separate
//! transactions, as pgqd runs them) with consumers at different positions.

use anyhow::Result;
use serde_json::{json, Value};

use super::{compare, Ctx, QUEUE};

/// Records the current event table and whether step 2 is pending.
async fn table_state(ctx: &mut Ctx, label: &str) -> Result<serde_json::Value> {
    ctx.rec(
        &format!("queue state {label}"),
        "SELECT i.queue_cur_table, q.queue_switch_step2 IS NULL AS step2_pending
           FROM pgq.get_queue_info($1) i JOIN pgq.queue q USING (queue_name)",
        &[&QUEUE],
    )
    .await
}

/// Step 1, in a transaction of its own, with the switch time moved back so that the rotation
/// period (0) has certainly passed; records the table state after it, and checks that it is
/// `expected_table`, with step 2 still to run (`step2_pending`) or not.
async fn step1(ctx: &mut Ctx, label: &str, expected_table: i32, step2_pending: bool) -> Result<()> {
    ctx.exec(
        0,
        "UPDATE pgq.queue SET queue_switch_time = queue_switch_time - interval '1 day'",
    )
    .await?;
    ctx.rec(
        &format!("step1 {label}"),
        "SELECT pgq.maint_rotate_tables_step1($1)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!(0))?;
    let state = table_state(ctx, label).await?;
    let expected = json!({"queue_cur_table": expected_table, "step2_pending": step2_pending});
    if state != expected {
        anyhow::bail!(
            "step1 {label}: expected {expected}, got {state} ({:?})",
            ctx.flavor()
        );
    }
    Ok(())
}

async fn step2(ctx: &mut Ctx) -> Result<()> {
    ctx.rec("step2", "SELECT pgq.maint_rotate_tables_step2()", &[])
        .await?;
    ctx.expect_last(&json!(0))
}

/// Records how many events each event table holds and asserts `expected`: `(table number,
/// rows)` of the non-empty ones.
async fn table_counts(ctx: &mut Ctx, label: &str, expected: &[(i32, i64)]) -> Result<()> {
    ctx.rec(
        &format!("rows per event table {label}"),
        "SELECT tableoid::regclass::text AS tbl, count(*) AS n FROM pgq.event_1 GROUP BY 1 ORDER BY 1",
        &[],
    )
    .await?;
    let rows: Vec<_> = expected
        .iter()
        .map(|(table, n)| json!({"tbl": format!("pgq.event_1_{table}"), "n": n}))
        .collect();
    ctx.expect_last(&Value::Array(rows))
}

/// Three rotations: blocked while consumers sit on the creation tick, a switch under an open
/// producer transaction, blocked by a lagging consumer, skipped while a reader holds the next
/// table, and a wrap-around that empties the first table.
async fn rotation(mut ctx: Ctx) -> Result<Ctx> {
    ctx.create_queue(QUEUE).await?;
    ctx.config("rotation_period", "0").await?;
    ctx.register("c1").await?;
    ctx.register("c2").await?;
    table_state(&mut ctx, "initial").await?;
    ctx.expect_last(&json!({"queue_cur_table": 0, "step2_pending": false}))?;
    step1(&mut ctx, "with consumers on the creation tick", 0, false).await?;

    ctx.insert(0, "a", "a1").await?;
    ctx.insert(0, "a", "a2").await?;
    ctx.wait_xmin_past_switch().await?;
    ctx.tick().await?;
    ctx.take("c1", &["a1", "a2"]).await?;
    ctx.take("c2", &["a1", "a2"]).await?;

    // A producer transaction writes before and after the switch: its events land in two tables
    // and still arrive in one batch.
    ctx.begin(1).await?;
    ctx.insert(1, "x", "x1").await?;
    step1(&mut ctx, "under an open producer", 1, true).await?;
    ctx.insert(1, "x", "x2").await?;
    ctx.commit(1).await?;
    ctx.insert(0, "b", "b1").await?;
    table_counts(&mut ctx, "after the first switch", &[(0, 3), (1, 2)]).await?;
    step1(&mut ctx, "before step2", 1, true).await?;
    ctx.tick().await?;
    ctx.take("c1", &["x1", "x2", "b1"]).await?; // from tables 0 and 1
    step2(&mut ctx).await?;
    table_state(&mut ctx, "after step2").await?;
    ctx.expect_last(&json!({"queue_cur_table": 1, "step2_pending": false}))?;

    ctx.insert(0, "c", "c1").await?;
    ctx.wait_xmin_past_switch().await?;
    ctx.tick().await?;
    ctx.take("c1", &["c1"]).await?;
    step1(&mut ctx, "with c2 lagging", 1, false).await?;
    ctx.drain_expecting("c2", &[&["x1", "x2", "b1"], &["c1"]])
        .await?;

    // A reader holding the next table makes step 1 skip instead of wait.
    ctx.begin(2).await?;
    ctx.exec(2, "SELECT count(*) FROM pgq.event_1_2").await?;
    step1(&mut ctx, "while the next table is read", 1, false).await?;
    ctx.commit(2).await?;
    step1(&mut ctx, "with everyone past the switch", 2, true).await?;
    step2(&mut ctx).await?;

    ctx.insert(0, "d", "d1").await?;
    ctx.wait_xmin_past_switch().await?;
    ctx.tick().await?;
    ctx.drain_expecting("c1", &[&["d1"]]).await?;
    ctx.drain_expecting("c2", &[&["d1"]]).await?;
    step1(&mut ctx, "wrapping around", 0, true).await?;
    step2(&mut ctx).await?;
    // Table 0 was emptied before the queue went back to it.
    table_counts(&mut ctx, "after wrapping around", &[(1, 3), (2, 1)]).await?;

    ctx.insert(0, "e", "e1").await?;
    ctx.wait_xmin_past_switch().await?;
    ctx.tick().await?;
    ctx.drain_expecting("c1", &[&["e1"]]).await?;
    ctx.drain_expecting("c2", &[&["e1"]]).await?;
    table_counts(&mut ctx, "at the end", &[(0, 1), (1, 3), (2, 1)]).await?;
    ctx.rec(
        "consumers still see their ticks",
        "SELECT consumer_name, lag IS NOT NULL AS has_tick, pending_events
           FROM pgq.get_consumer_info($1)",
        &[&QUEUE],
    )
    .await?;
    ctx.expect_last(&json!([
        {"consumer_name": "c1", "has_tick": true, "pending_events": 0},
        {"consumer_name": "c2", "has_tick": true, "pending_events": 0},
    ]))?;
    Ok(ctx)
}

#[tokio::test]
async fn table_rotation() -> Result<()> {
    compare(2, rotation).await
}
