//! Quickstart: install the queue schema, create a queue, produce events in several transactions
//! (one rolled back), tick, and consume as a registered consumer, printing each batch.
//!
//! Finds PostgreSQL through `PGQ_DSN`, `DATABASE_URL` or the `PG*` variables; with none set it
//! starts a private throwaway cluster, so `cargo run --example quickstart` works on a fresh machine.

use pgq::{ConsumerName, Dsn, EventCursor, Line, NewEvent, QueueName};
use pgq_testkit::{Cluster, ClusterOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // keep the throwaway cluster alive until the end of main
    let (dsn, _cluster) = match Dsn::from_env()? {
        Some(dsn) => {
            println!("using {dsn}");
            (dsn, None)
        }
        None => {
            println!("no PGQ_DSN, DATABASE_URL or PG* set: starting a private throwaway cluster");
            let cluster = Cluster::start(ClusterOptions::default()).await?;
            (Dsn::parse(&cluster.dsn("postgres"))?, Some(cluster))
        }
    };
    let mut client = dsn.connect().await?;

    let report = pgq::install(&mut client, &[Line::Pgq]).await?;
    println!("schema: {report}");

    let queue = QueueName::new("quickstart")?;
    let consumer = ConsumerName::new("printer")?;
    // start from scratch on every run
    if pgq::queue_info(&client, Some(&queue)).await?.is_empty() {
        pgq::create_queue(&client, &queue).await?;
    } else {
        pgq::drop_queue(&client, &queue, true).await?;
        pgq::create_queue(&client, &queue).await?;
    }
    pgq::register_consumer(&client, &queue, &consumer).await?;

    // three producer transactions; the second rolls back, so its events never exist
    for (n, commit) in [(1, true), (2, false), (3, true)] {
        let tx = client.transaction().await?;
        pgq::insert_event(
            &tx,
            &queue,
            "order.created",
            &format!(r#"{{"order": {n}}}"#),
        )
        .await?;
        let more = [
            NewEvent::new("order.line", format!(r#"{{"order": {n}, "line": 1}}"#)),
            NewEvent::new("order.line", format!(r#"{{"order": {n}, "line": 2}}"#)),
        ];
        pgq::insert_events(&tx, &queue, &more).await?;
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        println!(
            "transaction {n}: {}",
            if commit { "committed" } else { "rolled back" }
        );
    }

    // the pgq-ticker daemon normally does this; force_tick makes the next tick due at once
    pgq::force_tick(&client, &queue).await?;
    let tick = pgq::ticker(&client, &queue).await?;
    println!("ticked: {tick:?}");

    let mut seen = 0;
    loop {
        let tx = client.transaction().await?;
        let Some(batch) = pgq::next_batch(&tx, &queue, &consumer).await? else {
            tx.commit().await?;
            break;
        };
        println!(
            "batch {} (ticks {} → {}):",
            batch.id, batch.prev_tick, batch.cur_tick
        );
        let mut cursor = EventCursor::open(&tx, batch.id, 100).await?;
        while let Some(events) = cursor.next_chunk(&tx).await? {
            for event in events {
                seen += 1;
                println!(
                    "  event {} {} {}",
                    event.id,
                    event.ev_type.as_deref().unwrap_or(""),
                    event.ev_data.as_deref().unwrap_or("")
                );
            }
        }
        pgq::finish_batch(&tx, batch.id).await?;
        tx.commit().await?;
    }
    println!("consumed {seen} events (6 committed, 3 rolled back)");
    anyhow::ensure!(seen == 6, "expected the 6 committed events, got {seen}");
    Ok(())
}
