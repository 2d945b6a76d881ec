//! The replicator against real PostgreSQL: a provider and a subscriber database per test.

mod admin;
mod bad_input;
mod cap;
mod common;
mod execute;
mod live;
mod monitor;
mod names;
mod replicate;
mod search_path;
mod seed;
mod subscribers;
mod types;
