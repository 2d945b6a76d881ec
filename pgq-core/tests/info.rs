//! Consumer info and backlog diagnostics.

use pgq_core::{BatchId, Line, TickId};
use pgq_testkit::TestDb;

use crate::setup::{consumer, queue, setup, tick};

#[tokio::test]
async fn consumer_info_follows_the_batch() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let (a, b) = (queue("a"), queue("b"));
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    for q in [&a, &b] {
        pgq_core::create_queue(&client, q).await?;
    }
    pgq_core::register_consumer(&client, &b, &c2).await?;
    pgq_core::register_consumer(&client, &a, &c2).await?;
    pgq_core::register_consumer(&client, &a, &c1).await?;

    let all: Vec<(String, String)> = pgq_core::consumer_info(&client, None, None)
        .await?
        .into_iter()
        .map(|i| (i.queue_name, i.consumer_name))
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(q, c)| ((*q).to_owned(), (*c).to_owned()))
            .collect()
    };
    assert_eq!(all, pairs(&[("a", "c1"), ("a", "c2"), ("b", "c2")]));
    let of_c2: Vec<String> = pgq_core::consumer_info(&client, None, Some(&c2))
        .await?
        .into_iter()
        .map(|i| i.queue_name)
        .collect();
    assert_eq!(of_c2, ["a", "b"]);

    let before = pgq_core::consumer_info(&client, Some(&a), Some(&c1))
        .await?
        .remove(0);
    assert_eq!(before.last_tick, Some(TickId(1)));
    assert_eq!(before.current_batch, None);
    assert_eq!(before.next_tick, None);
    assert!(before.lag.is_some() && before.last_seen.is_some());

    for i in 0..3 {
        pgq_core::insert_event(&client, &a, "t", &i.to_string()).await?;
    }
    let end = tick(&client, &a).await?;
    let batch = pgq_core::next_batch(&client, &a, &c1)
        .await?
        .expect("a batch");
    let during = pgq_core::consumer_info(&client, Some(&a), Some(&c1))
        .await?
        .remove(0);
    assert_eq!(during.current_batch, Some(batch.id));
    assert_eq!(during.next_tick, Some(end));
    assert_eq!(
        during.pending_events,
        Some(batch.cur_tick_event_seq - batch.prev_tick_event_seq)
    );
    pgq_core::finish_batch(&client, batch.id).await?;
    let after = pgq_core::consumer_info(&client, Some(&a), Some(&c1))
        .await?
        .remove(0);
    assert_eq!(
        (after.last_tick, after.current_batch),
        (Some(end), None::<BatchId>)
    );
    assert_eq!(after.pending_events, Some(0));
    assert!(pgq_core::consumer_info(&client, Some(&queue("nope")), None)
        .await?
        .is_empty());
    Ok(())
}

/// The backlog functions exist only in the pgq-rs schema, so this installs it whatever
/// `setup` would do.
#[tokio::test]
async fn backlog_of_queue_and_consumer() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    let (q, c) = (queue("backlog"), consumer("slow"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;
    for i in 0..3 {
        pgq_core::insert_event(&client, &q, "t", &i.to_string()).await?;
    }
    let queues = pgq_core::queue_backlog(&client, Some(&q)).await?;
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].queue_name, "backlog");
    assert_eq!(queues[0].newest_tick_id, Some(TickId(1)));
    // Counted from the event sequence, like PGQ's ev_new (which, on a queue's first tick, is
    // one short: the sequence had not been called yet).
    let ev_new = pgq_core::queue_info(&client, Some(&q)).await?[0].ev_new;
    assert_eq!(queues[0].events_since_tick, ev_new);
    assert!(queues[0].events_since_tick.is_some_and(|n| n >= 2));
    assert!(queues[0].newest_tick_time.is_some() && queues[0].tick_age.is_some());

    let t2 = tick(&client, &q).await?;
    pgq_core::insert_event(&client, &q, "t", "late").await?;
    let queues = pgq_core::queue_backlog(&client, None).await?;
    assert_eq!(queues[0].newest_tick_id, Some(t2));
    assert_eq!(queues[0].events_since_tick, Some(1));

    let consumers = pgq_core::consumer_backlog(&client, Some(&q), None).await?;
    assert_eq!(consumers.len(), 1);
    let slow = &consumers[0];
    assert_eq!(
        (slow.queue_name.as_str(), slow.consumer_name.as_str()),
        ("backlog", "slow")
    );
    assert_eq!(slow.last_tick_id, Some(TickId(1)));
    assert_eq!(slow.pending_ticks, Some(1));
    assert!(slow.pending_events.is_some_and(|n| n >= 3));
    assert!(slow.lag.is_some() && slow.last_tick_time.is_some());
    assert!(
        pgq_core::consumer_backlog(&client, None, Some(&consumer("nobody")))
            .await?
            .is_empty()
    );
    Ok(())
}
