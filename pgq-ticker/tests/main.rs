//! Integration tests of pgq-ticker, on real PostgreSQL (see pgq-testkit).

mod cap;
mod cli;
mod daemon;
mod discovery;
mod isolation;
mod lock;
mod maintenance;
mod monitor;
mod outage;
mod resilience;
mod search_path;
mod setup;
mod ticking;
