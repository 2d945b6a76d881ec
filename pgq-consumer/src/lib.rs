//! PGQ consumers: the [`Consumer`] trait users implement and the runners that feed it batches,
//! each processed exactly once.
//!
//! A [`Runner`] holds a dedicated connection to the queue's database with the consumer's
//! advisory lock (a second runner with the same name gets [`ConsumerError::ConsumerBusy`]),
//! LISTENs for the ticker's wake-ups and loops: take the next batch, hand it to the consumer
//! inside a transaction, finish the batch in that transaction, commit. Events stream through a
//! cursor in chunks, so memory stays bounded. A failed batch rolls back and comes again with
//! backoff; a batch that keeps failing is processed event by event, and an event that keeps
//! failing goes to the failed events ([`failed_events`]) for an operator. [`CoopRunner`] runs
//! one sub-consumer of a cooperative group (`pgq_coop`), [`RemoteRunner`] does the work in
//! another database and records the batch there (`pgq_ext`): all three are the one
//! [`ConsumerRunner`], in a different [`Mode`]. [`TypedProducer`] writes the JSON events a
//! [`TypedConsumer`] reads.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use pgq_consumer::{async_trait, ConsumerConfig, HandlerError, Runner, Typed, TypedConsumer};
//! use pgq_core::tokio_postgres::Transaction;
//! use pgq_core::{ConsumerName, Dsn, Event, QueueName};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(serde::Deserialize)]
//! struct Order {
//!     amount: i64,
//! }
//!
//! struct Totals;
//!
//! #[async_trait]
//! impl TypedConsumer for Totals {
//!     type Payload = Order;
//!
//!     async fn process(&self, tx: &Transaction<'_>, _: &Event, order: Order)
//!         -> Result<(), HandlerError> {
//!         tx.execute("UPDATE totals SET amount = amount + $1", &[&order.amount]).await?;
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let dsn = Dsn::parse("host=localhost user=postgres dbname=app")?;
//!     let config = ConsumerConfig::builder(QueueName::new("orders")?, ConsumerName::new("totals")?)
//!         .build();
//!     let runner = Runner::connect(&dsn, config, Arc::new(Typed(Totals))).await?;
//!     let cancel = CancellationToken::new();
//!     runner.run(cancel).await?;
//!     Ok(())
//! }
//! ```
//!
//! Main items: [`Consumer`], [`TypedConsumer`], [`TypedProducer`], [`BatchHandle`], [`Runner`],
//! [`CoopRunner`], [`RemoteRunner`], [`ConsumerConfig`], [`failed_events`], [`ConsumerError`].

mod batch;
mod config;
mod consumer;
mod coop;
mod error;
mod metrics;
mod partitioned;
mod remote;
mod runner;
mod session;
mod typed;

pub use async_trait::async_trait;
pub use batch::{BatchHandle, EventDisposal};
pub use config::{ConsumerConfig, ConsumerConfigBuilder};
pub use consumer::Consumer;
pub use coop::{run_coop_group, Coop, CoopRunner};
pub use error::{ConsumerError, HandlerError, Postpone, Result};
pub use metrics::{BatchReport, ConsumerMetrics, MetricsSnapshot};
pub use partitioned::{run_partitioned, run_partitioned_coop};
pub use pgq_core::failed::{
    delete_failed_event, failed_event_count, failed_events, requeue_failed_event, FailedEvent,
};
pub use pgq_core::maintenance::TICK_CHANNEL;
pub use remote::{Remote, RemoteRunner};
pub use runner::{ConsumerRunner, Local, Mode, Runner};
pub use tokio_util::sync::CancellationToken;
pub use typed::{Typed, TypedConsumer, TypedProducer};
