//! A batch job: order events aggregated into a summary table by a cooperative consumer with 4
//! sub-consumers, while a producer writes orders and the ticker cuts batches.
//!
//! Each batch is summed up in memory and applied with one upsert per customer (in customer
//! order, so concurrent sub-consumers never deadlock), in the transaction that finishes the
//! batch: the summary counts every order exactly once. Finds PostgreSQL through `PGQ_DSN`,
//! `DATABASE_URL` or the `PG*` variables; with none set it starts a private throwaway cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgq::consumer::{
    async_trait, run_coop_group, BatchHandle, CancellationToken, Consumer, ConsumerConfig,
    HandlerError,
};
use pgq::ticker::DatabaseTicker;
use pgq::tokio_postgres::Transaction;
use pgq::{ConsumerName, Dsn, Event, Line, QueueName};
use pgq_testkit::{Cluster, ClusterOptions};

const ORDERS: i64 = 5_000;
const PER_TX: i64 = 25;
const CUSTOMERS: i64 = 7;

/// Per customer: (orders, amount).
type Totals = BTreeMap<String, (i64, i64)>;

/// Reads `{"customer": "...", "amount": n}`.
fn order(event: &Event) -> Result<(String, i64), HandlerError> {
    let value: serde_json::Value = serde_json::from_str(event.ev_data.as_deref().unwrap_or(""))?;
    let customer = value["customer"].as_str().ok_or("order without customer")?;
    let amount = value["amount"].as_i64().ok_or("order without amount")?;
    Ok((customer.to_owned(), amount))
}

async fn apply(tx: &Transaction<'_>, totals: &Totals) -> Result<(), HandlerError> {
    for (customer, (orders, amount)) in totals {
        tx.execute(
            "INSERT INTO order_summary (customer, orders, amount) VALUES ($1, $2, $3)
             ON CONFLICT (customer) DO UPDATE
                SET orders = order_summary.orders + excluded.orders,
                    amount = order_summary.amount + excluded.amount",
            &[customer, orders, amount],
        )
        .await?;
    }
    Ok(())
}

struct Summary;

#[async_trait]
impl Consumer for Summary {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        let mut totals = Totals::new();
        while let Some(events) = batch.next_chunk().await? {
            for event in &events {
                match order(event) {
                    Ok((customer, amount)) => {
                        let entry = totals.entry(customer).or_default();
                        entry.0 += 1;
                        entry.1 += amount;
                    }
                    Err(err) => {
                        batch.fail_event(event, &err.to_string()).await?;
                    }
                }
            }
        }
        apply(batch.tx(), &totals).await
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        let (customer, amount) = order(event)?;
        apply(tx, &Totals::from([(customer, (1, amount))])).await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (dsn, _cluster) = match Dsn::from_env()? {
        Some(dsn) => (dsn, None),
        None => {
            println!("no PGQ_DSN, DATABASE_URL or PG* set: starting a private throwaway cluster");
            let cluster = Cluster::start(ClusterOptions::default()).await?;
            (Dsn::parse(&cluster.dsn("postgres"))?, Some(cluster))
        }
    };
    let mut client = dsn.connect().await?;
    pgq::install(&mut client, &[Line::Pgq, Line::PgqCoop]).await?;
    let queue = QueueName::new("batch_job_orders")?;
    if !pgq::queue_info(&client, Some(&queue)).await?.is_empty() {
        pgq::drop_queue(&client, &queue, true).await?;
    }
    pgq::create_queue(&client, &queue).await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS order_summary;
             CREATE TABLE order_summary (customer text PRIMARY KEY, orders bigint NOT NULL,
                                         amount bigint NOT NULL);
             SELECT pgq_coop.register_subconsumer('batch_job_orders', 'summary', 'worker' || i)
               FROM generate_series(1, 4) i;",
        )
        .await?;

    let cancel = CancellationToken::new();
    let ticker = tokio::spawn({
        let (dsn, cancel) = (dsn.clone(), cancel.clone());
        async move {
            let mut ticker = DatabaseTicker::connect(&dsn).await?;
            while !cancel.is_cancelled() {
                ticker.tick_once().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        }
    });
    let producer = tokio::spawn({
        let dsn = dsn.clone();
        async move {
            let client = dsn.connect().await?;
            for first in (0..ORDERS).step_by(usize::try_from(PER_TX)?) {
                client
                    .execute(
                        "SELECT count(pgq.insert_event('batch_job_orders', 'order.created',
                                    json_build_object('customer', 'customer-' || (n % $3),
                                                      'amount', n)::text))
                           FROM generate_series($1::int8, $1 + $2 - 1) n",
                        &[&first, &PER_TX, &CUSTOMERS],
                    )
                    .await?;
            }
            anyhow::Ok(())
        }
    });
    let config = ConsumerConfig::builder(queue, ConsumerName::new("summary")?)
        .poll_interval(Duration::from_millis(200))
        .build();
    let subs = (1..=4)
        .map(|i| ConsumerName::new(format!("worker{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let group = tokio::spawn({
        let (dsn, cancel) = (dsn.clone(), cancel.clone());
        async move {
            run_coop_group(
                &dsn,
                config,
                subs,
                Some(Duration::from_secs(30)),
                Arc::new(Summary),
                cancel,
            )
            .await
        }
    });

    let start = Instant::now();
    let mut done = 0;
    while done < ORDERS && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        done = client
            .query_one(
                "SELECT coalesce(sum(orders), 0)::int8 FROM order_summary",
                &[],
            )
            .await?
            .get(0);
        println!(
            "{:>6} ms: {done} of {ORDERS} orders summed up",
            start.elapsed().as_millis()
        );
    }
    producer.await??;
    cancel.cancel();
    group.await??;
    ticker.await??;

    for row in client
        .query(
            "SELECT customer, orders, amount FROM order_summary ORDER BY customer",
            &[],
        )
        .await?
    {
        let (customer, orders, amount): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        println!("{customer}: {orders} orders, amount {amount}");
    }
    let expected = ORDERS * (ORDERS - 1) / 2;
    let total: i64 = client
        .query_one(
            "SELECT coalesce(sum(amount), 0)::int8 FROM order_summary",
            &[],
        )
        .await?
        .get(0);
    println!("total amount {total} (expected {expected}): every order counted exactly once");
    anyhow::ensure!(done == ORDERS && total == expected, "summary is off");
    Ok(())
}
