//! The consumer the drain scenarios run: it counts what it is handed.

use std::sync::atomic::{AtomicU64, Ordering};

use pgq_consumer::{async_trait, BatchHandle, Consumer, HandlerError};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::Event;

/// Counts the events it is handed and the bytes of their `ev_data`, which it reads as a real
/// handler would.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl Counter {
    /// Events counted so far.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// `ev_data` bytes counted so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts `events` events of `bytes` bytes, read elsewhere.
    pub(crate) fn add(&self, events: usize, bytes: usize) {
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count(&self, events: &[Event]) {
        let bytes = events
            .iter()
            .map(|e| e.ev_data.as_ref().map_or(0, String::len))
            .sum();
        self.add(events.len(), bytes);
    }
}

#[async_trait]
impl Consumer for Counter {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            self.count(&events);
        }
        Ok(())
    }

    async fn process_event(&self, _: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        self.count(std::slice::from_ref(event));
        Ok(())
    }
}
