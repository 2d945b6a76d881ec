#![doc = include_str!("../README.md")]
//!
//! # Features
//!
//! | part | crate | status |
//! |---|---|---|
//! | queue schema, producer, batches, info, backlog | `pgq-core` | always on |
//! | ticker daemon and maintenance (`pgq::ticker`) | `pgq-ticker` | feature `ticker` (default) |
//! | consumer framework: runner, cooperative and remote consumers (`pgq::consumer`) | `pgq-consumer` | feature `consumer` (default) |
//! | parallel base backup over ordinary connections, manifest, verify (`pgq::basebackup`) | `pgq-basebackup` | feature `basebackup` (default) |
//! | table replication: capture triggers, consistent initial copy, replay worker, compare (`pgq::londiste`) | `londiste` | feature `londiste` (default) |
//!
//! The daemons' command-line programs are the `cli` features of their crates, not of this one.

pub use pgq_core::*;

#[cfg(feature = "ticker")]
pub use pgq_ticker as ticker;

#[cfg(feature = "consumer")]
pub use pgq_consumer as consumer;

#[cfg(feature = "basebackup")]
pub use pgq_basebackup as basebackup;

#[cfg(feature = "londiste")]
pub use londiste;
