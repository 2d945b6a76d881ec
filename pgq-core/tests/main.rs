//! Integration tests of pgq-core.

mod connections;
mod conninfo;
mod tls;

mod attacks;
mod batches;
mod catchup;
mod from_extension;
mod info;
mod installer;
mod partition;
mod pgq_ext;
mod producing;
mod proxy;
mod queues;
mod quoting;
mod roles;
mod setup;
mod sql_api;
mod sql_scripts;
mod tickers;
