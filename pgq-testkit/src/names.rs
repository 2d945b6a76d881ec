//! Queue and consumer names for tests, which name them with literals.

use pgq_core::{ConsumerName, QueueName};

/// `name` as a queue name.
///
/// # Panics
///
/// When `name` is not a valid queue name: a test's literal is wrong.
pub fn queue(name: &str) -> QueueName {
    QueueName::new(name).unwrap_or_else(|e| panic!("test queue name {name:?}: {e}"))
}

/// `name` as a consumer name.
///
/// # Panics
///
/// When `name` is not a valid consumer name: a test's literal is wrong.
pub fn consumer(name: &str) -> ConsumerName {
    ConsumerName::new(name).unwrap_or_else(|e| panic!("test consumer name {name:?}: {e}"))
}
