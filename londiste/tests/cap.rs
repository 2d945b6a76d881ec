//! `compare` and `add-table` tick the queue themselves (force_tick, then pgq.ticker): during an
//! outage of the ticker they go through the batch cap too, so the worker never gets a giant batch.

use londiste::{AddTableOptions, Worker};
use pgq_core::QueueSetting;

use crate::common::Pair;

const CAP: i32 = 300;

/// The events of each batch the queue's ticks cut, oldest first: the transactions visible in a
/// tick's snapshot and not in the one before it.
async fn batch_sizes(pair: &Pair) -> anyhow::Result<Vec<i64>> {
    let pfx: String = pair
        .provider
        .query_one(
            "SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = $1",
            &[&pair.config.queue.as_str()],
        )
        .await?
        .get(0);
    let rows = pair
        .provider
        .query(
            &format!(
                "SELECT (SELECT count(*) FROM {pfx} e
                          WHERE txid_visible_in_snapshot(e.ev_txid, cur.tick_snapshot)
                            AND NOT txid_visible_in_snapshot(e.ev_txid, prev.tick_snapshot))
                   FROM pgq.tick cur
                   JOIN pgq.tick prev ON prev.tick_queue = cur.tick_queue
                    AND prev.tick_id = (SELECT max(p.tick_id) FROM pgq.tick p
                                         WHERE p.tick_queue = cur.tick_queue
                                           AND p.tick_id < cur.tick_id)
                  ORDER BY cur.tick_id"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test]
async fn compare_and_add_table_during_an_outage_take_bounded_batches() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pgq_core::set_queue_config(
        &pair.provider,
        &pair.config.queue,
        QueueSetting::TickerMaxBatch(CAP),
    )
    .await?;
    pair.provider
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY, v int)")
        .await?;
    let create = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&pair.config, &["a".to_owned()], &create).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;

    // no ticker: 200 transactions of 10 changes
    for t in 0..200 {
        pair.provider
            .batch_execute(&format!(
                "INSERT INTO a SELECT {t} * 10 + g, g FROM generate_series(0, 9) g"
            ))
            .await?;
    }
    // add-table of a second table while the backlog waits, then compare applies up to its tick
    pair.provider
        .batch_execute(
            "CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 500) g;",
        )
        .await?;
    londiste::add_tables(&pair.config, &["b".to_owned()], &create).await?;
    pair.provider
        .batch_execute("UPDATE b SET v = v || '!' WHERE id <= 100")
        .await?;
    drop(worker);
    let compared = londiste::compare(&pair.config, None).await?;
    assert!(compared.iter().all(|c| c.equal()), "{compared:?}");
    assert_eq!(pair.assert_same("a", "id").await?, 2000);
    assert_eq!(pair.assert_same("b", "id").await?, 500);

    let sizes = batch_sizes(&pair).await?;
    let cap = i64::from(CAP);
    assert!(sizes.iter().all(|&n| n <= cap), "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&n| n > 0).count() >= 2100 / usize::try_from(CAP)?,
        "the backlog was cut: {sizes:?}"
    );
    Ok(())
}
