//! Inserts by key, and the key-to-partition mapping of a partitioned queue.

use std::time::Duration;

use pgq_core::partition::{hashtext, insert_event_by_key, partition_of};
use pgq_core::NewEvent;
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
