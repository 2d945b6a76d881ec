#![doc = include_str!("../README.md")]
//!
//! # Features
//!
//! | part | crate | status |
//! |---|---|---|
//! | queue schema, producer, batches, info, backlog | `pgq-core` | always on |
//!
//! Later parts (ticker, consumer, londiste, basebackup) arrive as features of this crate.

pub use pgq_core::*;
