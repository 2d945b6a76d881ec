//! Typed events both ways: what a `TypedProducer` inserts, a `TypedConsumer` of the same payload
//! type reads back; a payload that does not serialize inserts nothing.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::Arc;

use pgq_consumer::{async_trait, ConsumerError, HandlerError, Runner, Typed, TypedConsumer};
use pgq_consumer::{ConsumerConfig, TypedProducer};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Event};
use serde::{Deserialize, Serialize};

use crate::common::{count, setup, tick};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: i64,
    item: String,
    tags: Vec<String>,
    note: Option<String>,
}

fn order(id: i64, item: &str, tags: &[&str]) -> Order {
    Order {
        id,
        item: item.to_owned(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        note: (id % 2 == 0).then(|| format!("note \"{id}\" ünïcode")),
    }
}

/// Stores each decoded order, with its event's id and type, as JSON in `applied`.
struct Orders;

#[async_trait]
impl TypedConsumer for Orders {
    type Payload = Order;

    async fn process(
        &self,
        tx: &Transaction<'_>,
        event: &Event,
        order: Order,
    ) -> Result<(), HandlerError> {
        let decoded = serde_json::to_string(&order)?;
        tx.execute(
            "INSERT INTO applied (ev_id, data, worker) VALUES ($1, $2, $3)",
            &[&event.id.0, &decoded, &event.ev_type],
        )
        .await?;
        Ok(())
    }
}

#[tokio::test]
async fn typed_events_come_back_as_they_were_produced() -> anyhow::Result<()> {
    let mut s = setup().await?;
    let config = ConsumerConfig::builder(s.queue.clone(), ConsumerName::new("orders")?).build();
    let mut runner = Runner::connect(&s.dsn, config, Arc::new(Typed(Orders))).await?;
    let producer = TypedProducer::<Order>::new(s.queue.clone(), "order.created");
    let one = order(1, "tea", &["hot"]);
    let many = vec![
        order(2, "cake", &[]),
        order(3, "jam", &["a", "b"]),
        order(4, "", &["x"]),
    ];
    let tx = s.client.transaction().await?;
    let first = producer.insert_event(&tx, &one).await?;
    let rest = producer.insert_events(&tx, &many).await?;
    tx.commit().await?;
    tick(&s.client).await?;

    let report = runner.process_next_batch().await?.expect("a batch");
    assert_eq!((report.events, report.failed, report.retried), (4, 0, 0));
    let rows = s
        .client
        .query(
            "SELECT ev_id, data, worker FROM applied ORDER BY ev_id",
            &[],
        )
        .await?;
    let got: Vec<(i64, Order, String)> = rows
        .iter()
        .map(|r| Ok((r.get(0), serde_json::from_str(r.get(1))?, r.get(2))))
        .collect::<anyhow::Result<_>>()?;
    let ids: Vec<i64> = std::iter::once(first).chain(rest).map(|id| id.0).collect();
    let want: Vec<(i64, Order, String)> = ids
        .into_iter()
        .zip(std::iter::once(one).chain(many))
        .map(|(id, order)| (id, order, "order.created".to_owned()))
        .collect();
    assert_eq!(got, want);
    // ev_data is the payload's JSON, as python or psql would read it.
    let data: String = s
        .client
        .query_one(
            "SELECT ev_data FROM pgq.event_template WHERE ev_id = $1",
            &[&want[2].0],
        )
        .await?
        .get(0);
    assert_eq!(
        data,
        r#"{"id":3,"item":"jam","tags":["a","b"],"note":null}"#
    );
    Ok(())
}

#[tokio::test]
async fn a_payload_that_does_not_serialize_inserts_nothing() -> anyhow::Result<()> {
    let mut s = setup().await?;
    // JSON object keys must be strings: a map keyed by numbers pairs does not serialize.
    let producer = TypedProducer::<BTreeMap<(i32, i32), i32>>::new(s.queue.clone(), "pairs");
    let good = BTreeMap::new();
    let bad = BTreeMap::from([((1, 2), 3)]);
    let tx = s.client.transaction().await?;

    let err = producer
        .insert_events(&tx, &[good.clone(), bad.clone(), good.clone()])
        .await;
    let Err(err @ ConsumerError::Encode { index: 1, .. }) = err else {
        panic!("expected the encoding error of payload 1, got {err:?}");
    };
    assert_eq!(
        err.to_string(),
        r#"payload 1 of a "pairs" event for queue "q" does not serialize to JSON; nothing was inserted"#
    );
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("key must be a string")
    );
    let err = producer
        .insert_event(&tx, &bad)
        .await
        .expect_err("does not serialize");
    assert!(
        matches!(err, ConsumerError::Encode { index: 0, .. }),
        "{err:?}"
    );

    // Nothing reached the server: the transaction goes on, and only the good event commits.
    producer.insert_event(&tx, &good).await?;
    tx.commit().await?;
    assert_eq!(
        count(&s.client, "SELECT count(*) FROM pgq.event_template").await?,
        1
    );
    assert_eq!(
        count(
            &s.client,
            "SELECT count(*) FROM pgq.event_template WHERE ev_data = '{}'"
        )
        .await?,
        1
    );
    Ok(())
}
