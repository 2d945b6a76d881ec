#![doc = include_str!("../README.md")]
//!
//! # Features
//!
//! | part | crate | status |
//! |---|---|---|
//! | queue schema, producer, batches, info, backlog | `pgq-core` | always on |
//! | ticker daemon, maintenance, backlog reports (`pgq::ticker`) | `pgq-ticker` | feature `ticker` (default) |
//!
//! Later parts (consumer, londiste, basebackup) arrive as features of this crate.

pub use pgq_core::*;

#[cfg(feature = "ticker")]
pub use pgq_ticker as ticker;
