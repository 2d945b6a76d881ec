//! The replicator against real PostgreSQL: a provider and a subscriber database per test.

mod common;
mod live;
mod replicate;
