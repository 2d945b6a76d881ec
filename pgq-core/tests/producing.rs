//! Producing events.

use pgq_core::{EventId, Flavor, NewEvent, QueueSetting};
use pgq_testkit::TestDb;

use crate::setup::{consumer, queue, setup, tick};

#[tokio::test]
async fn single_and_bulk_inserts_keep_every_field() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("events"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;

    let first = pgq_core::insert_event(&client, &q, "plain", "data 1").await?;
    let full = NewEvent {
        ev_type: "full".to_owned(),
        ev_data: "data 2".to_owned(),
        extra1: Some("e1".to_owned()),
        extra2: None,
        extra3: Some("e3".to_owned()),
        extra4: Some(String::new()),
    };
    let second = pgq_core::insert_event_ext(&client, &q, &full).await?;
    assert!(second > first);

    let mut bulk: Vec<NewEvent> = (3..=6)
        .map(|i| NewEvent::new(format!("bulk {i}"), format!("data {i}")))
        .collect();
    bulk[1].extra2 = Some("only here".to_owned());
    bulk[3].extra4 = Some("last".to_owned());
    let ids = pgq_core::insert_events(&client, &q, &bulk).await?;
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(ids[0] > second);
    assert!(pgq_core::insert_events(&client, &q, &[]).await?.is_empty());

    tick(&client, &q).await?;
    let batch = pgq_core::next_batch(&client, &q, &c)
        .await?
        .expect("a batch");
    let events = pgq_core::batch_events(&client, batch.id).await?;
    let got: Vec<(EventId, NewEvent)> = events
        .into_iter()
        .map(|e| {
            (
                e.id,
                NewEvent {
                    ev_type: e.ev_type.unwrap_or_default(),
                    ev_data: e.ev_data.unwrap_or_default(),
                    extra1: e.extra1,
                    extra2: e.extra2,
                    extra3: e.extra3,
                    extra4: e.extra4,
                },
            )
        })
        .collect();
    let mut expected = vec![(first, NewEvent::new("plain", "data 1")), (second, full)];
    expected.extend(ids.into_iter().zip(bulk));
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
async fn rolled_back_events_never_existed() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("tx"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;
    let tx = client.transaction().await?;
    pgq_core::insert_event(&tx, &q, "gone", "1").await?;
    pgq_core::insert_events(&tx, &q, &[NewEvent::new("gone", "2")]).await?;
    tx.rollback().await?;
    let tx = client.transaction().await?;
    let kept = pgq_core::insert_event(&tx, &q, "kept", "3").await?;
    tx.commit().await?;
    tick(&client, &q).await?;
    let batch = pgq_core::next_batch(&client, &q, &c)
        .await?
        .expect("a batch");
    let ids: Vec<EventId> = pgq_core::batch_events(&client, batch.id)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, [kept]);
    Ok(())
}

#[tokio::test]
async fn unknown_queue_is_told_apart_inside_a_transaction() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let nope = queue("nope");
    let tx = client.transaction().await?;
    assert!(matches!(
        pgq_core::insert_event(&tx, &nope, "t", "d").await,
        Err(pgq_core::Error::QueueNotFound { queue }) if queue == "nope"
    ));
    assert!(matches!(
        pgq_core::insert_events(&tx, &nope, &[NewEvent::new("t", "d")]).await,
        Err(pgq_core::Error::QueueNotFound { .. })
    ));
    // Nothing failed on the server: the transaction goes on.
    pgq_core::create_queue(&tx, &nope).await?;
    pgq_core::insert_event(&tx, &nope, "t", "d").await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn disabled_queue_and_per_tx_limit() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    let ours = pgq_core::flavor(&client).await? == Flavor::Ours;
    let q = queue("guarded");
    pgq_core::create_queue(&client, &q).await?;

    pgq_core::set_queue_config(&client, &q, QueueSetting::DisableInsert(true)).await?;
    let err = pgq_core::insert_event(&client, &q, "t", "d")
        .await
        .expect_err("inserts are disabled");
    if ours {
        assert!(matches!(err, pgq_core::Error::InsertDisabled { ref queue } if queue == "guarded"));
    } else {
        // The original extension raises it with SQLSTATE XX000.
        assert!(matches!(err, pgq_core::Error::Db { .. }), "{err:?}");
    }
    pgq_core::set_queue_config(&client, &q, QueueSetting::DisableInsert(false)).await?;

    pgq_core::set_queue_config(&client, &q, QueueSetting::PerTxLimit(Some(2))).await?;
    let tx = client.transaction().await?;
    pgq_core::insert_event(&tx, &q, "t", "1").await?;
    pgq_core::insert_event(&tx, &q, "t", "2").await?;
    let err = pgq_core::insert_event(&tx, &q, "t", "3")
        .await
        .expect_err("over the limit");
    if ours {
        assert!(
            matches!(err, pgq_core::Error::PerTxLimitExceeded { .. }),
            "{err:?}"
        );
    } else {
        assert!(matches!(err, pgq_core::Error::Db { .. }), "{err:?}");
    }
    tx.rollback().await?;
    Ok(())
}
