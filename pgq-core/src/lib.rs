//! PGQ-compatible transactional event queues in PostgreSQL: the schema installer and the client API.
//!
//! A producer inserts events inside its own transaction; the ticker cuts the stream into
//! batches of whole committed transactions; a consumer takes a batch, reads its events through a
//! cursor and finishes the batch in the transaction that did its work, so each batch is
//! processed exactly once. Every database function takes `&impl GenericClient`, so the caller
//! decides the transaction boundary (a `Client`, a `Transaction`, or `&**pooled_object`). The
//! SQL API is PGQ 3.x's: this crate works against the pgq-rs schema ([`install`]) and against a
//! database that has the original `pgq` extension alike.
//!
//! ```no_run
//! use pgq_core::{ConsumerName, Dsn, EventCursor, Line, QueueName};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut client = Dsn::parse("host=localhost user=postgres dbname=app")?.connect().await?;
//!     pgq_core::install(&mut client, &[Line::Pgq]).await?;
//!
//!     let queue = QueueName::new("orders")?;
//!     let consumer = ConsumerName::new("mailer")?;
//!     match pgq_core::create_queue(&client, &queue).await {
//!         Ok(()) | Err(pgq_core::Error::QueueExists { .. }) => {}
//!         Err(e) => return Err(e.into()),
//!     }
//!     pgq_core::register_consumer(&client, &queue, &consumer).await?;
//!     pgq_core::insert_event(&client, &queue, "order.created", r#"{"id": 1}"#).await?;
//!
//!     // Normally the ticker daemon does this.
//!     pgq_core::force_tick(&client, &queue).await?;
//!     pgq_core::ticker(&client, &queue).await?;
//!
//!     let tx = client.transaction().await?;
//!     if let Some(batch) = pgq_core::next_batch(&tx, &queue, &consumer).await? {
//!         let mut events = EventCursor::open(&tx, batch.id, 500).await?;
//!         while let Some(chunk) = events.next_chunk(&tx).await? {
//!             for event in chunk {
//!                 println!("{} {:?} {:?}", event.id, event.ev_type, event.ev_data);
//!             }
//!         }
//!         pgq_core::finish_batch(&tx, batch.id).await?;
//!     }
//!     tx.commit().await?;
//!     Ok(())
//! }
//! ```
//!
//! Main items: [`install`] and [`Line`] (schema), [`migrate_from_extension`] (moving a database
//! off the original `pgq` extension), [`QueueName`] and [`ConsumerName`],
//! [`create_queue`], [`insert_event`] / [`insert_events`], [`next_batch`], [`EventCursor`],
//! [`finish_batch`], [`queue_info`], [`consumer_info`], [`queue_backlog`], [`Error`]; the
//! ticker's side of the SQL API (ticks, the ticker lock, maintenance) is in [`maintenance`]; the
//! modules [`coop`] (cooperative consumers), [`ext`] (batch tracking in a target database) and
//! [`failed`] (failed events) hold the rest of PGQ's consumer API. Every SQL function of the
//! schema and its wrapper are listed in `docs/sql-api.md`.

mod backlog;
mod backoff;
mod batch;
mod config_file;
mod consumer_info;
pub mod coop;
mod dsn;
mod error;
pub mod ext;
pub mod failed;
mod ident;
mod ids;
pub mod maintenance;
#[cfg(feature = "monitor")]
pub mod monitor;
pub mod partition;
mod producer;
mod queue;
mod schema;
mod skip;

pub use backlog::{
    backlog_report, consumer_backlog, consumer_backlog_exact, queue_backlog, BacklogReport,
    ConsumerBacklog, ExactBacklog, QueueBacklog,
};
pub use backoff::Backoff;
pub use batch::{
    batch_events, batch_info, batch_retry, event_retry, event_retry_at, finish_batch, next_batch,
    next_batch_custom, Batch, BatchInfo, Event, EventCursor,
};
pub use config_file::{parse_duration, toml_error_position, toml_key_position, Period};
pub use consumer_info::{consumer_info, ConsumerInfo};
pub use dsn::{quote_conninfo_value, Dsn, PasswordSource, SslMode};
pub use error::{connection_lost, Error, Result};
pub use ident::{quote_ident, quote_literal, ConsumerName, QueueName};
pub use ids::{BatchId, EventId, TickId};
pub use producer::{insert_event, insert_event_ext, insert_events, NewEvent};
pub use queue::{
    create_queue, drop_queue, force_tick, is_registered, queue_info, recent_ticks,
    register_consumer, register_consumer_at, set_queue_config, ticker, ticker_all,
    unregister_consumer, QueueInfo, QueueSetting, TickInfo,
};
pub use schema::{
    check, flavor, install, installation_id, migrate_from_extension, migrations_sql,
    AppliedMigration, ExtensionMigration, Flavor, InstallReport, InstallationId, Line, LineReport,
    MigrationOptions, Refusal,
};
pub use skip::{skip_consumer, SkipReport, SkipTarget};
pub use tokio_postgres;
