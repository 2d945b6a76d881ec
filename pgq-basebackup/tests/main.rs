//! Integration tests of pgq-basebackup, each on a private cluster of its own (see pgq-testkit).

mod backup;
mod checksums;
mod cli;
mod errors;
mod hostile;
mod metrics;
mod standby;
mod support;
mod tablespace;
