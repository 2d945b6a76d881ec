//! Integration tests of pgq-consumer against a real PostgreSQL.

mod common;
mod compat;
mod coop;
mod kill;
mod local;
mod lost;
mod memory;
mod metrics;
mod partitioned;
mod remote;
mod search_path;
mod tls;
mod typed;
