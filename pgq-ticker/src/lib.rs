//! The PGQ ticker: it cuts each queue's event stream into batches by writing ticks, runs the
//! queue maintenance (table rotation, retry events, vacuum), and tells an operator how big a
//! backlog is.
//!
//! A [`Ticker`] serves many databases, listed or discovered, with one task each. Each task
//! holds a dedicated connection with the database's ticker lock, so two daemons never tick
//! one database at once; it reconnects with capped exponential backoff after a lost
//! connection. [`DatabaseTicker`] is one database's ticker, with the one-step functions the
//! daemon repeats ([`DatabaseTicker::tick_once`], [`DatabaseTicker::maintain_once`]). On the
//! pgq-rs schema a pass also writes catch-up ticks, so that a backlog left by any gap (an
//! outage, a restart) comes back in batches of at most the queue's `ticker_max_batch` events
//! instead of one giant batch; the original PGQ extension is ticked too, with plain ticks.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use pgq_ticker::{DatabaseTicker, Databases, Ticker, TickerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let dsn = pgq_core::Dsn::parse("host=/var/run/postgresql dbname=app")?;
//!
//!     // One step by hand:
//!     let mut ticker = DatabaseTicker::connect(&dsn).await?;
//!     let report = ticker.tick_once().await?;
//!     println!("{} ticks on {} queues", report.ticks, report.queues);
//!     drop(ticker); // frees the ticker lock
//!
//!     // The daemon, for ten seconds:
//!     let config = TickerConfig::builder(Databases::List(vec![dsn]))
//!         .ticker_period(Duration::from_millis(500))
//!         .build()?;
//!     let cancel = CancellationToken::new();
//!     let stop = cancel.clone();
//!     tokio::spawn(async move {
//!         tokio::time::sleep(Duration::from_secs(10)).await;
//!         stop.cancel();
//!     });
//!     Ticker::new(config).run(cancel).await;
//!     Ok(())
//! }
//! ```
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `cli` | yes | the `pgq-ticker` binary (daemon and admin commands) |
//!
//! The operator's guide (running the daemon, `ticker.toml`, the backlog runbook) is
//! `docs/ticker.md` in the repository.
//!
//! The SQL the daemon runs is wrapped in `pgq-core` (`pgq_core::maintenance` for ticks and
//! maintenance); the reports the admin commands print (`backlog`, `ticks`, `skip`) are
//! `pgq_core::backlog_report`, `pgq_core::recent_ticks` and `pgq_core::skip_consumer`.
//!
//! Main items: [`Ticker`], [`TickerConfig`], [`DatabaseTicker`], [`database_status`],
//! [`TickerError`].

mod board;
pub mod config;
mod database;
mod error;
mod status;
mod ticker;

pub use config::{Databases, TickerConfig, TickerConfigBuilder};
pub use database::{DatabaseTicker, MaintReport, TickReport};
pub use error::{ConfigError, Result, TickerError};
pub use status::{database_status, ConsumerStatus, DatabaseStatus, QueueStatus};
pub use ticker::Ticker;
