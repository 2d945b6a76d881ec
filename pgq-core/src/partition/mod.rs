//! A queue partitioned by key over several databases (issue 16, DESIGN.md §7).
//!
//! Each partition database holds the same queue. A key always goes to the same partition, so one
//! key's events sit in one event stream, and there `pgq.insert_event_by_key` makes their `ev_id`
//! order the order in which their writers committed.
//!
//! The mapping is the one a PL/Proxy function with `RUN ON hashtext(key)` uses over a cluster
//! of `logical` partitions, a power of two: logical partition `hashtext(key) & (logical - 1)`,
//! which lives on database `p % databases` ([`database_of`]). [`hashtext`] computes
//! PostgreSQL's `hashtext` here, so a producer without PL/Proxy (a managed service, or one that
//! wants the event inside its own transaction) routes keys itself with a [`Router`] and inserts
//! with [`insert_event_by_key`] inside its transaction on the key's partition. The mapping is
//! fixed: changing it remaps keys, which breaks per-key order unless the queue is drained first.

mod hash;
mod proxy;
mod router;

pub use hash::hashtext;
pub use proxy::{grant_proxy, setup_proxy, teardown_proxy, PROXY_CLUSTER};
pub use router::{PartitionClient, Router};

use tokio_postgres::GenericClient;

use crate::error::{Error, Result};
use crate::ident::QueueName;
use crate::ids::EventId;
use crate::producer::{insert_one, NewEvent};

// language=SQL
const INSERT_EVENT_BY_KEY: &str = "\
SELECT pgq.insert_event_by_key(q.queue_name, $2, $3, $4, $5, $6, $7, $8)
  FROM pgq.queue q
 WHERE q.queue_name = $1";

/// The logical partition of `key` among `partitions` (a power of two): the same one a PL/Proxy
/// function with `RUN ON hashtext(key)` picks over a cluster of that many partitions.
///
/// # Panics
///
/// When `partitions` is not a power of two.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    assert!(
        partitions.is_power_of_two(),
        "the partition count must be a power of two, not {partitions}"
    );
    hash::hash_bytes(key.as_bytes()) & (partitions - 1)
}

/// The database (an index into the list of partition databases) that holds `key` when
/// `logical` partitions are spread over `databases` databases, as [`setup_proxy`] lays them
/// out: logical partition `p` on database `p % databases`.
///
/// # Panics
///
/// When `logical` is not a power of two, or `databases` is zero.
pub fn database_of(key: &str, logical: u32, databases: usize) -> usize {
    partition_of(key, logical) as usize % databases
}

/// Refuses a layout [`setup_proxy`] and [`Router`] cannot route: no database, a logical count
/// that is not a power of two, or fewer logical partitions than databases (some would get no
/// key).
fn check_layout(databases: usize, logical: u32) -> Result<()> {
    if databases == 0 || !logical.is_power_of_two() || (logical as usize) < databases {
        return Err(Error::InvalidPartitions {
            reason: format!(
                "{logical} logical partitions over {databases} databases: needs a power of two, \
                 at least one per database"
            ),
        });
    }
    Ok(())
}

/// Inserts one event for `key` (`pgq.insert_event_by_key`) and returns its id: after any other
/// open transaction that inserted an event for the same key (or a key of the same hash) into
/// this queue has ended, so per key the id order is commit order. Pass the client of the key's
/// partition ([`partition_of`]); with a transaction the event is part of it.
///
/// # Errors
///
/// As for [`crate::insert_event`].
pub async fn insert_event_by_key(
    client: &impl GenericClient,
    queue: &QueueName,
    key: &str,
    event: &NewEvent,
) -> Result<EventId> {
    insert_one(
        client,
        INSERT_EVENT_BY_KEY,
        "insert_event_by_key",
        queue,
        Some(key),
        event,
    )
    .await
}
