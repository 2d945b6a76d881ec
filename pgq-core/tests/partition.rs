//! Inserts by key, and the key-to-partition mapping of a partitioned queue.

use std::time::Duration;

use pgq_core::partition::{database_of, hashtext, insert_event_by_key, partition_of, Router};
use pgq_core::{Dsn, Error, Line, NewEvent};
use pgq_testkit::TestDb;

use crate::setup::{queue, setup};

/// Keys of every tail length, past the 12-byte blocks, with multi-byte characters.
fn sample_keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..40).map(|n| "k".repeat(n)).collect();
    keys.extend((0..500).map(|n| format!("customer-{n}")));
    keys.extend(
        [
            "ä",
            "日本語のキー",
            "emoji 🦀 key",
            "a\tb",
            "Ω≈ç√∫˜µ≤≥÷ over twelve bytes",
        ]
        .map(String::from),
    );
    keys
}

#[tokio::test]
async fn rust_hashtext_is_postgres_hashtext() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    let keys = sample_keys();
    let server: Vec<i32> = client
        .query(
            "SELECT hashtext(k) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n",
            &[&keys],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ours: Vec<i32> = keys.iter().map(|k| hashtext(k)).collect();
    assert_eq!(ours, server);
    let buckets: Vec<i64> = client
        .query(
            "SELECT (hashtext(k) & 7)::int8 FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n",
            &[&keys],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ours: Vec<i64> = keys.iter().map(|k| i64::from(partition_of(k, 8))).collect();
    assert_eq!(ours, buckets);
    Ok(())
}

#[test]
#[should_panic(expected = "power of two")]
fn partition_count_must_be_a_power_of_two() {
    partition_of("k", 3);
}

/// Two transactions writing one key: the second waits until the first has committed, so its
/// event gets the larger id; a writer of another key does not wait.
#[tokio::test]
async fn second_writer_of_a_key_waits_so_id_order_is_commit_order() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut first) = setup(&db).await? else {
        return Ok(());
    };
    if std::env::var("PGQ_TEST_SCHEMA").is_ok_and(|v| v == "extension") {
        return Ok(());
    }
    let q = queue("keyed");
    pgq_core::create_queue(&first, &q).await?;
    let tx = first.transaction().await?;
    let first_id = insert_event_by_key(&tx, &q, "order-1", &NewEvent::new("t", "1")).await?;

    let mut second = db.client().await?;
    let (q2, other) = (q.clone(), db.client().await?);
    let waiting = tokio::spawn(async move {
        let tx = second.transaction().await?;
        let id = insert_event_by_key(&tx, &q2, "order-1", &NewEvent::new("t", "2")).await?;
        tx.commit().await?;
        anyhow::Ok(id)
    });
    // Another key is not held up.
    let free = insert_event_by_key(&other, &q, "order-2", &NewEvent::new("t", "3")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second writer of order-1 did not wait"
    );
    tx.commit().await?;
    let second_id = waiting.await??;
    assert!(first_id < second_id && free < second_id);

    // The bulk form waits the same way, and refuses events without keys.
    let tx = first.transaction().await?;
    insert_event_by_key(&tx, &q, "order-3", &NewEvent::new("t", "4")).await?;
    let bulk = "SELECT count(*) FROM pgq.insert_event_bulk_by_key($1, $2, $3, $4)";
    let (q3, third) = (q.clone(), db.client().await?);
    let waiting = tokio::spawn(async move {
        let keys = ["order-4", "order-3"];
        let row = third
            .query_one(
                bulk,
                &[&q3.as_str(), &&keys[..], &&["t", "t"][..], &&["5", "6"][..]],
            )
            .await?;
        anyhow::Ok(row.get::<_, i64>(0))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the bulk insert with order-3 did not wait"
    );
    tx.commit().await?;
    assert_eq!(waiting.await??, 2);
    let refused = first
        .query_one(
            bulk,
            &[&q.as_str(), &&["k"][..], &&["t", "t"][..], &&["1", "2"][..]],
        )
        .await
        .expect_err("two events and one key");
    assert_eq!(
        refused.code(),
        Some(&pgq_core::tokio_postgres::error::SqlState::NULL_VALUE_NOT_ALLOWED)
    );
    let refused = first
        .query_one(
            "SELECT pgq.insert_event_by_key($1, NULL, 't', 'd')",
            &[&q.as_str()],
        )
        .await
        .expect_err("a NULL key");
    assert_eq!(
        refused.code(),
        Some(&pgq_core::tokio_postgres::error::SqlState::NULL_VALUE_NOT_ALLOWED)
    );
    Ok(())
}

/// Two databases as partitions of queue `keyed`, each with pgq and the queue.
async fn two_partitions() -> anyhow::Result<(Vec<TestDb>, Vec<Dsn>)> {
    let mut dbs = Vec::new();
    let mut dsns = Vec::new();
    for _ in 0..2 {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        pgq_core::install(&mut client, &[Line::Pgq]).await?;
        pgq_core::create_queue(&client, &queue("keyed")).await?;
        dsns.push(Dsn::parse(&db.dsn())?);
        dbs.push(db);
    }
    Ok((dbs, dsns))
}

/// The `ev_data` of the queue's events on one partition, in id order.
async fn events_on(db: &TestDb) -> anyhow::Result<Vec<String>> {
    Ok(db
        .client()
        .await?
        .query("SELECT ev_data FROM pgq.event_template ORDER BY ev_id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The router puts each key on the database the proxy's mapping names, and its event is part
/// of the producer's transaction there: rolled back with it, committed with it.
#[tokio::test]
async fn router_inserts_inside_the_producers_transaction() -> anyhow::Result<()> {
    if std::env::var("PGQ_TEST_SCHEMA").is_ok_and(|v| v == "extension") {
        return Ok(());
    }
    let (dbs, dsns) = two_partitions().await?;
    let router = Router::new(&dsns, 4, 2)?;
    let q = queue("keyed");
    let mut expected = vec![Vec::new(), Vec::new()];
    for n in 0..20 {
        let key = format!("order-{n}");
        let mut client = router.client(&key).await?;
        assert_eq!(client.partition(), database_of(&key, 4, 2));
        assert_eq!(client.partition(), router.database_of(&key));
        let tx = client.transaction().await?;
        insert_event_by_key(&tx, &q, &key, &NewEvent::new("t", format!("{key}/undone"))).await?;
        tx.rollback().await?;
        let tx = client.transaction().await?;
        insert_event_by_key(&tx, &q, &key, &NewEvent::new("t", format!("{key}/kept"))).await?;
        tx.commit().await?;
        router
            .insert_event(&q, &key, &NewEvent::new("t", format!("{key}/own")))
            .await?;
        expected[client.partition()].extend([format!("{key}/kept"), format!("{key}/own")]);
    }
    assert!(expected.iter().all(|e| !e.is_empty()));
    for (db, want) in dbs.iter().zip(&expected) {
        assert_eq!(&events_on(db).await?, want);
    }
    Ok(())
}

/// A layout the proxy would refuse is refused by the router too.
#[test]
fn router_refuses_layouts_the_proxy_refuses() -> anyhow::Result<()> {
    let one = Dsn::parse("host=127.0.0.1 user=app dbname=p")?;
    for (databases, logical) in [(0, 4), (1, 3), (3, 2), (2, 6)] {
        let dsns = vec![one.clone(); databases];
        let err = Router::new(&dsns, logical, 1).err().expect("refused");
        assert!(
            matches!(err, Error::InvalidPartitions { .. }),
            "{databases} over {logical}: {err:?}"
        );
    }
    Ok(())
}

/// A database that cannot be reached fails the keys routed to it, naming it (and never the
/// password); the other keys go on.
#[tokio::test]
async fn unreachable_partition_fails_its_keys_naming_it() -> anyhow::Result<()> {
    if std::env::var("PGQ_TEST_SCHEMA").is_ok_and(|v| v == "extension") {
        return Ok(());
    }
    let (dbs, mut dsns) = two_partitions().await?;
    // Nothing listens on port 1.
    dsns[1] = Dsn::parse("host=127.0.0.1 port=1 dbname=gone user=app password=s3cret")?;
    let router = Router::new(&dsns, 2, 1)?;
    let q = queue("keyed");
    let (mut failed, mut went_on) = (0, 0);
    for n in 0..20 {
        let key = format!("order-{n}");
        match router
            .insert_event(&q, &key, &NewEvent::new("t", &key))
            .await
        {
            Ok(_) => {
                assert_eq!(router.database_of(&key), 0);
                went_on += 1;
            }
            Err(err) => {
                assert_eq!(router.database_of(&key), 1);
                assert!(err.is_connection_lost(), "{err:?}");
                let text = format!("{:#}", anyhow::Error::from(err));
                assert!(
                    text.starts_with("partition 1 (host=127.0.0.1 port=1 dbname=gone) failed: "),
                    "{text}"
                );
                assert!(!text.contains("s3cret"), "{text}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0 && went_on > 0);
    assert_eq!(events_on(&dbs[0]).await?.len(), went_on);
    Ok(())
}
