//! Queue administration and consumer registration.

use std::time::Duration;

use pgq_core::{Error, QueueName, QueueSetting, TickId};
use pgq_testkit::TestDb;

use crate::setup::{consumer, queue, setup, tick};

#[tokio::test]
async fn create_duplicate_info_drop() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let q = queue("orders");
    pgq_core::create_queue(&client, &q).await?;
    assert!(matches!(
        pgq_core::create_queue(&client, &q).await,
        Err(Error::QueueExists { queue }) if queue == "orders"
    ));

    let info = pgq_core::queue_info(&client, Some(&q)).await?;
    assert_eq!(info.len(), 1);
    let info = &info[0];
    assert_eq!(info.name, "orders");
    assert_eq!(info.ntables, 3);
    assert_eq!(info.cur_table, 0);
    assert_eq!(info.rotation_period, Duration::from_secs(2 * 3600));
    assert!(!info.external_ticker);
    assert!(!info.ticker_paused);
    assert_eq!(info.ticker_max_count, 500);
    assert_eq!(info.ticker_max_lag, Duration::from_secs(3));
    assert_eq!(info.ticker_idle_period, Duration::from_secs(60));
    assert_eq!(info.last_tick_id, Some(TickId(1)));
    assert!(info.ticker_lag.is_some());
    assert_eq!(info.ev_new, Some(0));

    pgq_core::create_queue(&client, &queue("archive")).await?;
    let all: Vec<String> = pgq_core::queue_info(&client, None)
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(all, ["archive", "orders"]);
    assert!(pgq_core::queue_info(&client, Some(&queue("nope")))
        .await?
        .is_empty());

    pgq_core::drop_queue(&client, &q, false).await?;
    assert!(pgq_core::queue_info(&client, Some(&q)).await?.is_empty());
    assert!(matches!(
        pgq_core::drop_queue(&client, &q, false).await,
        Err(Error::QueueNotFound { queue }) if queue == "orders"
    ));
    Ok(())
}

#[tokio::test]
async fn drop_with_consumers_needs_force() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let q = queue("q");
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &consumer("c")).await?;
    assert!(matches!(
        pgq_core::drop_queue(&client, &q, false).await,
        Err(Error::Db { .. })
    ));
    pgq_core::drop_queue(&client, &q, true).await?;
    assert!(pgq_core::queue_info(&client, None).await?.is_empty());
    assert!(pgq_core::consumer_info(&client, None, None)
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn settings_are_applied() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let q = queue("settings");
    pgq_core::create_queue(&client, &q).await?;
    for setting in [
        QueueSetting::TickerMaxCount(42),
        QueueSetting::TickerMaxLag(Duration::from_micros(1_500_001)),
        QueueSetting::TickerIdlePeriod(Duration::from_secs(90)),
        QueueSetting::TickerPaused(true),
        QueueSetting::RotationPeriod(Duration::from_secs(600)),
        QueueSetting::ExternalTicker(true),
        QueueSetting::DisableInsert(true),
        QueueSetting::PerTxLimit(Some(10)),
    ] {
        pgq_core::set_queue_config(&client, &q, setting).await?;
    }
    let info = pgq_core::queue_info(&client, Some(&q)).await?.remove(0);
    assert_eq!(info.ticker_max_count, 42);
    assert_eq!(info.ticker_max_lag, Duration::from_micros(1_500_001));
    assert_eq!(info.ticker_idle_period, Duration::from_secs(90));
    assert!(info.ticker_paused);
    assert_eq!(info.rotation_period, Duration::from_secs(600));
    assert!(info.external_ticker);
    let row = client
        .query_one(
            "SELECT queue_disable_insert, queue_per_tx_limit FROM pgq.queue WHERE queue_name = $1",
            &[&q.as_str()],
        )
        .await?;
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Option<i32>>(1), Some(10));

    pgq_core::set_queue_config(&client, &q, QueueSetting::PerTxLimit(None)).await?;
    let limit: Option<i32> = client
        .query_one(
            "SELECT queue_per_tx_limit FROM pgq.queue WHERE queue_name = $1",
            &[&q.as_str()],
        )
        .await?
        .get(0);
    assert_eq!(limit, None);

    let nope = queue("nope");
    for setting in [
        QueueSetting::TickerMaxCount(1),
        QueueSetting::DisableInsert(false),
        QueueSetting::PerTxLimit(None),
    ] {
        assert!(matches!(
            pgq_core::set_queue_config(&client, &nope, setting).await,
            Err(Error::QueueNotFound { .. })
        ));
    }
    Ok(())
}

#[tokio::test]
async fn ticker_and_force_tick() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let q = queue("ticks");
    pgq_core::create_queue(&client, &q).await?;
    let hour = Duration::from_secs(3600);
    pgq_core::set_queue_config(&client, &q, QueueSetting::TickerMaxLag(hour)).await?;
    pgq_core::set_queue_config(&client, &q, QueueSetting::TickerIdlePeriod(hour)).await?;
    // PGQ ticks an idle queue once more after its first tick, then backs off.
    assert_eq!(pgq_core::ticker(&client, &q).await?, Some(TickId(2)));
    assert_eq!(pgq_core::ticker(&client, &q).await?, None);
    assert_eq!(pgq_core::force_tick(&client, &q).await?, Some(TickId(2)));
    assert_eq!(pgq_core::ticker(&client, &q).await?, Some(TickId(3)));
    assert_eq!(tick(&client, &q).await?, TickId(4));

    pgq_core::force_tick(&client, &q).await?;
    assert_eq!(pgq_core::ticker_all(&client).await?, 1);
    assert_eq!(
        pgq_core::queue_info(&client, Some(&q)).await?[0].last_tick_id,
        Some(TickId(5))
    );

    let nope = queue("nope");
    assert!(matches!(
        pgq_core::ticker(&client, &nope).await,
        Err(Error::QueueNotFound { .. })
    ));
    assert!(matches!(
        pgq_core::force_tick(&client, &nope).await,
        Err(Error::QueueNotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn register_and_unregister() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("reg"), consumer("worker"));
    pgq_core::create_queue(&client, &q).await?;
    assert!(pgq_core::register_consumer(&client, &q, &c).await?);
    assert!(!pgq_core::register_consumer(&client, &q, &c).await?);
    let t2 = tick(&client, &q).await?;
    let c2 = consumer("late");
    assert!(pgq_core::register_consumer_at(&client, &q, &c2, t2).await?);
    assert!(!pgq_core::register_consumer_at(&client, &q, &c2, TickId(1)).await?);
    let info = pgq_core::consumer_info(&client, Some(&q), Some(&c2)).await?;
    assert_eq!(info[0].last_tick, Some(TickId(1)));
    assert!(matches!(
        pgq_core::register_consumer_at(&client, &q, &c2, TickId(999)).await,
        Err(Error::Db { .. })
    ));

    let nope = queue("nope");
    assert!(matches!(
        pgq_core::register_consumer(&client, &nope, &c).await,
        Err(Error::QueueNotFound { queue }) if queue == "nope"
    ));
    assert!(matches!(
        pgq_core::register_consumer_at(&client, &nope, &c, t2).await,
        Err(Error::QueueNotFound { .. })
    ));

    pgq_core::unregister_consumer(&client, &q, &c).await?;
    assert!(matches!(
        pgq_core::unregister_consumer(&client, &q, &c).await,
        Err(Error::ConsumerNotRegistered { queue, consumer })
            if queue == "reg" && consumer == "worker"
    ));
    assert!(matches!(
        pgq_core::unregister_consumer(&client, &nope, &c).await,
        Err(Error::QueueNotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn odd_names_round_trip() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let names = [
        "it's \"quoted\"",
        "x'); DROP TABLE pgq.queue; --",
        "очередь ✓ 队列",
    ];
    for name in names {
        let (q, c) = (queue(name), consumer(name));
        pgq_core::create_queue(&client, &q).await?;
        pgq_core::register_consumer(&client, &q, &c).await?;
        pgq_core::insert_event(&client, &q, name, name).await?;
        tick(&client, &q).await?;
        let batch = pgq_core::next_batch(&client, &q, &c)
            .await?
            .expect("a batch");
        let events = pgq_core::batch_events(&client, batch.id).await?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].ev_data.as_deref(), Some(name));
        let info = pgq_core::batch_info(&client, batch.id).await?;
        assert_eq!(
            (info.queue_name.as_str(), info.consumer_name.as_str()),
            (name, name)
        );
        pgq_core::finish_batch(&client, batch.id).await?;
    }
    let mut listed: Vec<String> = pgq_core::queue_info(&client, None)
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    listed.sort();
    let mut expected: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    Ok(())
}

#[tokio::test]
async fn invalid_names_never_reach_sql() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    for bad in [
        String::new(),
        "a\0b".to_owned(),
        "x".repeat(256),
        "tab\there".to_owned(),
    ] {
        match QueueName::new(bad.clone()) {
            Err(Error::InvalidName {
                kind: "queue",
                name,
                ..
            }) => assert_eq!(name, bad),
            other => panic!("{bad:?} was accepted: {other:?}"),
        }
    }
    assert!(QueueName::new("x".repeat(255)).is_ok());
    let queues: i64 = client
        .query_one("SELECT count(*) FROM pgq.queue", &[])
        .await?
        .get(0);
    assert_eq!(queues, 0);
    Ok(())
}
