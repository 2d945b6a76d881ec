//! Integration tests of pgq-ticker, on real PostgreSQL (see pgq-testkit).

mod cli;
mod daemon;
mod discovery;
mod lock;
mod maintenance;
mod outage;
mod resilience;
mod setup;
mod ticking;
