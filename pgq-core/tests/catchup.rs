//! The batch cap (`pgq.catchup_ticker`, which `pgq.ticker` applies first): a backlog after any
//! gap is cut into batches of at most ticker_max_batch events (plus the transactions straddling
//! a cut) instead of one giant batch, every transaction whole and in exactly one batch, and
//! conflicting transactions kept in order. No tick is backdated: the cap holds however short
//! the gap was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use pgq_core::tokio_postgres::Client;
use pgq_core::{Dsn, Line};
use pgq_testkit::TestDb;

const QUEUE: &str = "outage";
const CAP: i64 = 500;

async fn connect(db: &TestDb) -> anyhow::Result<Client> {
    Ok(Dsn::parse(&db.dsn())?.connect().await?)
}

/// Every batch of consumer `c`, in order: each batch's events as (ev_id, ev_extra1 = the
/// producer transaction's tag), after the ticker came back at once and ticked the way the
/// daemon does on our schema.
async fn drain(client: &Client) -> anyhow::Result<Vec<Vec<(i64, String)>>> {
    client
        .batch_execute(
            "SELECT pgq.catchup_ticker(); SELECT pgq.force_tick('outage'); SELECT pgq.ticker();",
        )
        .await?;
    let mut batches = Vec::new();
    loop {
        let batch: Option<i64> = client
            .query_one("SELECT pgq.next_batch('outage', 'c')", &[])
            .await?
            .get(0);
        let Some(batch) = batch else { break };
        let rows = client
            .query(
                "SELECT ev_id, ev_extra1 FROM pgq.get_batch_events($1)",
                &[&batch],
            )
            .await?;
        batches.push(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
        client
            .query_one("SELECT pgq.finish_batch($1)", &[&batch])
            .await?;
    }
    Ok(batches)
}

/// The batch index of every transaction tag; fails when a transaction is split over batches.
fn batch_of_each_transaction(
    batches: &[Vec<(i64, String)>],
) -> anyhow::Result<HashMap<String, usize>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, batch) in batches.iter().enumerate() {
        for (_, tag) in batch {
            let first = *seen.entry(tag.clone()).or_insert(i);
            anyhow::ensure!(
                first == i,
                "transaction {tag} split over batches {first} and {i}"
            );
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn a_backlog_is_cut_into_batches_of_at_most_the_cap() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut admin = db.client().await?;
    pgq_core::install(&mut admin, &[Line::Pgq]).await?;
    admin
        .batch_execute(&format!(
            "SELECT pgq.create_queue('{QUEUE}');
             SELECT pgq.set_queue_config('{QUEUE}', 'ticker_max_batch', '{CAP}');
             SELECT pgq.register_consumer('{QUEUE}', 'c');"
        ))
        .await?;

    // the ticker is down: a transaction held open across the outage, and 4 concurrent producers
    let held = connect(&db).await?;
    held.batch_execute(
        "BEGIN; SELECT pgq.insert_event('outage', 'held', 'h', 'held', NULL, NULL, NULL)
                FROM generate_series(1, 10);",
    )
    .await?;
    // 1 to 19 events per transaction; every 7th transaction rolls back
    let committed = pgq_testkit::produce_concurrently(
        &db.dsn(),
        "outage",
        4,
        1250,
        |p, t| (p * 31 + t * 7) % 19 + 1,
        |_, t| t % 7 == 3,
    )
    .await?;

    // the ticker comes back while `held` is still open
    let batches = drain(&admin).await?;
    let total: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(total, committed, "every committed event, once");
    let by_tx = batch_of_each_transaction(&batches)?;
    assert!(
        !by_tx.contains_key("held"),
        "the open transaction is not in any batch yet"
    );
    // A cut takes the transactions whose last event is below it, whole: a batch may also hold
    // the earlier events of transactions that straddled the previous cut, at most one
    // transaction (19 events) per concurrent producer. The ordinary tick after the cuts takes
    // the rest, under the cap too.
    let target = usize::try_from(CAP)?;
    let straddling = 4 * 19;
    for batch in &batches {
        assert!(
            batch.len() <= target + straddling,
            "a batch of {}",
            batch.len()
        );
    }
    assert!(
        batches.len() >= committed / target,
        "the backlog was cut: {} batches",
        batches.len()
    );

    // the held transaction commits and lands, whole, in a later batch
    held.batch_execute("COMMIT").await?;
    let later = drain(&admin).await?;
    let held_events: Vec<_> = later
        .iter()
        .flatten()
        .filter(|(_, tag)| tag == "held")
        .collect();
    assert_eq!(held_events.len(), 10);
    batch_of_each_transaction(&later)?;
    Ok(())
}

#[tokio::test]
async fn a_transaction_that_waited_for_a_row_lock_is_never_in_an_earlier_batch(
) -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut admin = db.client().await?;
    pgq_core::install(&mut admin, &[Line::Pgq]).await?;
    admin
        .batch_execute(
            "SELECT pgq.create_queue('outage');
             SELECT pgq.set_queue_config('outage', 'ticker_max_batch', '2');
             SELECT pgq.register_consumer('outage', 'c');
             CREATE TABLE account (id int PRIMARY KEY, balance int);
             INSERT INTO account VALUES (1, 0);
             CREATE FUNCTION capture() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pgq.insert_event('outage', 'U', NEW.balance::text,
                                          current_setting('app.tag'), NULL, NULL, NULL);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER capture AFTER UPDATE ON account
                 FOR EACH ROW EXECUTE FUNCTION capture();",
        )
        .await?;

    // `waiter` takes the lower txid, then waits for `holder`'s row lock
    let waiter = connect(&db).await?;
    let holder = connect(&db).await?;
    waiter
        .batch_execute("BEGIN; SET LOCAL app.tag = 'waiter'; SELECT txid_current();")
        .await?;
    holder
        .batch_execute(
            "BEGIN; SET LOCAL app.tag = 'holder'; SELECT txid_current();
             UPDATE account SET balance = balance + 10 WHERE id = 1;",
        )
        .await?;
    let waiter_pid: i32 = waiter
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let blocked = tokio::spawn(async move {
        waiter
            .batch_execute("UPDATE account SET balance = balance + 1 WHERE id = 1; COMMIT;")
            .await
    });
    pgq_testkit::wait_for(
        "the waiter to wait for the holder",
        Duration::from_secs(10),
        || async {
            let blockers: Vec<i32> = admin
                .query_one("SELECT pg_blocking_pids($1)", &[&waiter_pid])
                .await?
                .get(0);
            Ok(blockers.contains(&holder_pid))
        },
    )
    .await?;
    // other traffic around them, so the backlog is well over the cap
    for t in 0..6 {
        admin
            .batch_execute(&format!(
                "SELECT pgq.insert_event('outage', 'f', 'x', 'filler{t}', NULL, NULL, NULL);"
            ))
            .await?;
    }
    holder.batch_execute("COMMIT").await?;
    blocked.await??;

    let batches = drain(&admin).await?;
    let by_tx = batch_of_each_transaction(&batches)?;
    assert!(
        batches.len() > 1,
        "catch-up made several batches: {batches:?}"
    );
    let (holder_batch, waiter_batch) = (by_tx["holder"], by_tx["waiter"]);
    assert!(
        waiter_batch >= holder_batch,
        "the waiter (batch {waiter_batch}) came before the holder (batch {holder_batch})"
    );
    let ids: BTreeMap<&str, i64> = batches
        .iter()
        .flatten()
        .map(|(id, tag)| (tag.as_str(), *id))
        .collect();
    assert!(
        ids["waiter"] > ids["holder"],
        "the waiter's event was captured after the holder's"
    );
    let distinct: HashSet<&String> = batches.iter().flatten().map(|(_, t)| t).collect();
    assert_eq!(distinct.len(), 8, "holder, waiter and six fillers");
    Ok(())
}
