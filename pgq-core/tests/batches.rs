//! Taking, reading, retrying and finishing batches.

use std::time::Duration;

use pgq_core::{BatchId, Error, EventCursor, EventId, NewEvent};
use pgq_testkit::TestDb;

use crate::setup::{consumer, queue, setup, tick};

/// Reads every chunk of the batch and returns the chunk sizes and the event ids.
async fn read_all(
    tx: &pgq_core::tokio_postgres::Transaction<'_>,
    batch: BatchId,
    chunk: u32,
) -> anyhow::Result<(Vec<usize>, Vec<EventId>)> {
    let mut cursor = EventCursor::open(tx, batch, chunk).await?;
    assert_eq!(cursor.batch_id(), batch);
    let (mut sizes, mut ids) = (Vec::new(), Vec::new());
    while let Some(events) = cursor.next_chunk(tx).await? {
        sizes.push(events.len());
        ids.extend(events.iter().map(|e| e.id));
    }
    // Exhausted stays exhausted, and the cursor is closed.
    assert!(cursor.next_chunk(tx).await?.is_none());
    let open: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_cursors WHERE name LIKE 'pgq_rs_batch_%'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(open, 0);
    Ok((sizes, ids))
}

#[tokio::test]
async fn batch_cycle_with_cursor_in_chunks() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("cycle"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;
    let mut inserted = Vec::new();
    for i in 0..5 {
        inserted.push(pgq_core::insert_event(&client, &q, "t", &format!("{i}")).await?);
    }
    let end = tick(&client, &q).await?;

    let tx = client.transaction().await?;
    let batch = pgq_core::next_batch(&tx, &q, &c).await?.expect("a batch");
    assert_eq!(batch.cur_tick, end);
    assert!(batch.prev_tick < batch.cur_tick);
    assert!(batch.prev_tick_time <= batch.cur_tick_time);
    assert!(batch.prev_tick_event_seq <= batch.cur_tick_event_seq);
    // Asking again hands out the same batch until it is finished.
    assert_eq!(
        pgq_core::next_batch(&tx, &q, &c).await?,
        Some(batch.clone())
    );

    let info = pgq_core::batch_info(&tx, batch.id).await?;
    assert_eq!(info.queue_name, "cycle");
    assert_eq!(info.consumer_name, "reader");
    assert_eq!(
        (info.prev_tick_id, info.tick_id),
        (batch.prev_tick, batch.cur_tick)
    );
    assert_eq!(
        (info.batch_start, info.batch_end),
        (batch.prev_tick_time, batch.cur_tick_time)
    );
    assert_eq!(
        (info.seq_start, info.seq_end),
        (batch.prev_tick_event_seq, batch.cur_tick_event_seq)
    );

    let (sizes, ids) = read_all(&tx, batch.id, 2).await?;
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(ids, inserted);
    // A second cursor over the same batch in the same transaction.
    let (sizes, ids) = read_all(&tx, batch.id, 10).await?;
    assert_eq!((sizes, ids), (vec![5], inserted.clone()));

    pgq_core::finish_batch(&tx, batch.id).await?;
    assert!(matches!(
        pgq_core::finish_batch(&tx, batch.id).await,
        Err(Error::BatchNotFound { batch_id }) if batch_id == batch.id
    ));
    tx.commit().await?;
    assert_eq!(pgq_core::next_batch(&client, &q, &c).await?, None);
    assert!(matches!(
        pgq_core::batch_info(&client, batch.id).await,
        Err(Error::BatchNotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn cursor_edges() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("edges"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;

    // An empty batch.
    tick(&client, &q).await?;
    let tx = client.transaction().await?;
    let empty = pgq_core::next_batch(&tx, &q, &c).await?.expect("a batch");
    assert_eq!(read_all(&tx, empty.id, 3).await?, (vec![], vec![]));
    assert!(pgq_core::batch_events(&tx, empty.id).await?.is_empty());
    pgq_core::finish_batch(&tx, empty.id).await?;
    tx.commit().await?;

    // A multiple of the chunk size; chunk size 0 counts as 1.
    let events: Vec<NewEvent> = (0..4).map(|i| NewEvent::new("t", i.to_string())).collect();
    let ids = pgq_core::insert_events(&client, &q, &events).await?;
    tick(&client, &q).await?;
    let tx = client.transaction().await?;
    let batch = pgq_core::next_batch(&tx, &q, &c).await?.expect("a batch");
    assert_eq!(read_all(&tx, batch.id, 2).await?, (vec![2, 2], ids.clone()));
    assert_eq!(read_all(&tx, batch.id, 0).await?, (vec![1; 4], ids));

    // An unknown batch, and the transaction goes on.
    assert!(matches!(
        EventCursor::open(&tx, BatchId(987_654), 10).await,
        Err(Error::BatchNotFound {
            batch_id: BatchId(987_654)
        })
    ));
    assert!(matches!(
        pgq_core::batch_events(&tx, BatchId(987_654)).await,
        Err(Error::BatchNotFound { .. })
    ));
    pgq_core::finish_batch(&tx, batch.id).await?;
    tx.commit().await?;
    Ok(())
}

/// Two producers interleave: the later transaction commits first and holds the middle event, so
/// the event table's txid order (the index the batch is read by) is not `ev_id` order. Every
/// chunk, the first (which comes with the cursor) too, is in `ev_id` order.
#[tokio::test]
async fn chunks_are_in_ev_id_order_when_transactions_interleave() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("interleaved"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;
    let mut early = db.client().await?;
    let mut late = db.client().await?;
    let early_tx = early.transaction().await?;
    let late_tx = late.transaction().await?;
    let mut ids = Vec::new();
    for (tx, data) in [
        (&early_tx, "a"),
        (&late_tx, "b"),
        (&early_tx, "c"),
        (&late_tx, "d"),
    ] {
        ids.push(pgq_core::insert_event(tx, &q, "t", data).await?);
    }
    late_tx.commit().await?;
    early_tx.commit().await?;
    tick(&client, &q).await?;

    let tx = client.transaction().await?;
    let batch = pgq_core::next_batch(&tx, &q, &c).await?.expect("a batch");
    let by_txid: Vec<i64> = tx
        .query(
            "SELECT ev_id FROM pgq.get_batch_events($1) ORDER BY ev_txid, ev_id",
            &[&batch.id.0],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(by_txid, [ids[0].0, ids[2].0, ids[1].0, ids[3].0]);
    for chunk in [1, 3, 4, 10] {
        assert_eq!(
            read_all(&tx, batch.id, chunk).await?.1,
            ids,
            "chunks of {chunk}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unknown_queue_or_consumer() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("known"), consumer("stranger"));
    pgq_core::create_queue(&client, &q).await?;
    let tx = client.transaction().await?;
    assert!(matches!(
        pgq_core::next_batch(&tx, &queue("nope"), &c).await,
        Err(Error::QueueNotFound { queue }) if queue == "nope"
    ));
    assert!(matches!(
        pgq_core::next_batch(&tx, &q, &c).await,
        Err(Error::ConsumerNotRegistered { queue, consumer })
            if queue == "known" && consumer == "stranger"
    ));
    assert!(matches!(
        pgq_core::next_batch_custom(&tx, &q, &c, None, Some(1), None).await,
        Err(Error::ConsumerNotRegistered { .. })
    ));
    // A consumer registered on another queue only.
    let other = queue("other");
    pgq_core::create_queue(&tx, &other).await?;
    pgq_core::register_consumer(&tx, &other, &c).await?;
    assert!(matches!(
        pgq_core::next_batch(&tx, &q, &c).await,
        Err(Error::ConsumerNotRegistered { .. })
    ));
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn next_batch_custom_rules() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("custom"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;
    pgq_core::insert_event(&client, &q, "t", "d").await?;
    let end = tick(&client, &q).await?;
    let hour = Some(Duration::from_secs(3600));
    // Events younger than an hour are left for later.
    assert_eq!(
        pgq_core::next_batch_custom(&client, &q, &c, hour, None, None).await?,
        None
    );
    let batch = pgq_core::next_batch_custom(&client, &q, &c, None, None, None)
        .await?
        .expect("a batch");
    assert_eq!(batch.cur_tick, end);
    Ok(())
}

#[tokio::test]
async fn retries() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("retry"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;
    let ids = pgq_core::insert_events(
        &client,
        &q,
        &[
            NewEvent::new("t", "a"),
            NewEvent::new("t", "b"),
            NewEvent::new("t", "c"),
        ],
    )
    .await?;
    tick(&client, &q).await?;
    let batch = pgq_core::next_batch(&client, &q, &c)
        .await?
        .expect("a batch");

    assert!(pgq_core::event_retry(&client, batch.id, ids[0], Duration::from_millis(1500)).await?);
    assert!(!pgq_core::event_retry(&client, batch.id, ids[0], Duration::from_secs(1)).await?);
    let at = chrono::Utc::now() + chrono::TimeDelta::hours(2);
    assert!(pgq_core::event_retry_at(&client, batch.id, ids[1], at).await?);
    let rows = client
        .query(
            "SELECT ev_id, ev_retry, ev_retry_after - now() > interval '1 second',
                    ev_retry_after - now() < interval '2 seconds', ev_retry_after
               FROM pgq.retry_queue ORDER BY ev_id",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, i64>(0), ids[0].0);
    assert_eq!(rows[0].get::<_, i32>(1), 1);
    assert!(rows[0].get::<_, bool>(2) && rows[0].get::<_, bool>(3));
    let stored: chrono::DateTime<chrono::Utc> = rows[1].get(4);
    assert!((stored - at).num_milliseconds().abs() < 1);

    // The whole batch: only the event not handed back yet is added.
    assert_eq!(
        pgq_core::batch_retry(&client, batch.id, Duration::from_millis(10)).await?,
        1
    );

    let unknown = BatchId(123_456);
    assert!(matches!(
        pgq_core::event_retry(&client, unknown, ids[0], Duration::ZERO).await,
        Err(Error::BatchNotFound { batch_id }) if batch_id == unknown
    ));
    assert!(matches!(
        pgq_core::event_retry_at(&client, unknown, ids[0], at).await,
        Err(Error::BatchNotFound { .. })
    ));
    assert!(matches!(
        pgq_core::batch_retry(&client, unknown, Duration::ZERO).await,
        Err(Error::BatchNotFound { .. })
    ));
    pgq_core::finish_batch(&client, batch.id).await?;
    Ok(())
}
