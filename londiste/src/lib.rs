//! Table replication through a PGQ queue, in the londiste tradition.
//!
//! Changes to the provider's tables are captured by `pgq.logutriga` (the pgq-rs capture
//! triggers, or the original extension's) into a queue; the replay [`Worker`] applies each
//! batch to the subscriber in one transaction together with its batch tracking (`pgq_ext`), so
//! every batch is applied exactly once, across restarts and crashes.
//!
//! - [`init`] installs the schema on both sides, creates the queue and registers the worker.
//! - [`add_tables`] puts the capture trigger on tables and copies them consistently: the copy
//!   reads one exported snapshot (from one or several connections), records it, and the worker
//!   skips the events the copy already holds; a table goes `in-copy` → `catching-up` → `ok`
//!   ([`TableState`]). The copy keeps [`CopyProgress`] counters a caller may show.
//! - [`seed`] makes the subscriber from a base backup of the provider instead: every table is
//!   `ok` at once, and the worker skips exactly the provider transactions the copy holds
//!   (`docs/seeding.md`); [`seed_finish`] and [`seed_cancel`] for a copy the user starts.
//! - The [`Worker`] merges each key's events in a batch into their net effect and applies each
//!   table's rows with a few set-based statements ([`ApplyMode::Batch`]), strictly: the changed
//!   row counts must match, else the batch fails naming the keys.
//! - [`compare`] reads both sides at one tick while the provider is being written to.
//! - The [`Worker`] records its figures through the `metrics` facade (`pgq_londiste_*`: rows
//!   applied per table and operation, batches, apply duration; lag, pending events, tables and
//!   connections from an observation every [`Config::observe_period`]), and serves them with
//!   `/health` and a status page on [`Config::listen`] ([`Worker::serve_monitor`]); see
//!   `docs/operations.md`.
//!
//! ```no_run
//! use std::path::Path;
//!
//! # async fn f() -> Result<(), londiste::LondisteError> {
//! let config = londiste::Config::load(Path::new("londiste.toml"))?;
//! londiste::init(&config).await?;
//! let options = londiste::AddTableOptions { parallel_copy: 2, ..Default::default() };
//! londiste::add_tables(&config, &["public.accounts".to_owned()], &options).await?;
//! let worker = londiste::Worker::connect(&config).await?;
//! worker.run(pgq_consumer::CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `cli` | yes | the `londiste` binary (setup, worker, compare, status) and its progress bar |
//!
//! Main items: [`Config`], [`init`], [`add_tables`], [`seed`], [`Worker`], [`compare`],
//! [`status`].

mod admin;
mod apply;
mod check;
mod compare;
mod config;
mod copy;
mod decode;
mod error;
mod execute;
mod meta;
mod monitor;
mod seed;
mod state;
mod worker;

pub use admin::{
    add_sequences, add_tables, init, remove_table, resync, status, tables, AddTableOptions,
    AddedTable, ResyncOptions, Status, TableStatus,
};
pub use check::{check, Drift, Severity};
pub use compare::{compare, compare_rows, repair, Comparison, RowDiff};
pub use config::{
    default_consumer, ApplyMode, Config, DEFAULT_CATCH_UP_EVENTS, DEFAULT_CONSUMER_PREFIX,
    DEFAULT_MAX_LAG, DEFAULT_OBSERVE_PERIOD,
};
pub use copy::CopyProgress;
pub use error::{LondisteError, Result};
pub use execute::{execute, Executed};
pub use seed::{seed, seed_cancel, seed_finish, SeedOptions, SeedTables, Seeded};
pub use state::TableState;
pub use worker::Worker;
