//! A queue partitioned by key over several databases (issue 16, DESIGN.md §7).
//!
//! Each partition database holds the same queue. A key always goes to the same partition, so one
//! key's events sit in one event stream, and there `pgq.insert_event_by_key` makes their `ev_id`
//! order the order in which their writers committed.
//!
//! The mapping is the one a PL/Proxy function with `RUN ON hashtext(key)` uses over a cluster
//! of `partitions` logical partitions: `hashtext(key) & (partitions - 1)`. [`hashtext`]
//! computes PostgreSQL's `hashtext` here, so a producer without PL/Proxy (a managed service, or
//! one that wants the event inside its own transaction) picks the partition itself, connects
//! there and inserts with [`insert_event_by_key`] inside its transaction. The count is fixed:
//! changing it remaps keys, which breaks per-key order unless the queue is drained first.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Error, Result};
use crate::ident::{quote_ident, quote_literal, QueueName};
use crate::ids::EventId;
use crate::producer::{insert_error, NewEvent};
use crate::queue::queue_not_found;

// language=SQL
const INSERT_EVENT_BY_KEY: &str = "\
SELECT pgq.insert_event_by_key(q.queue_name, $2, $3, $4, $5, $6, $7, $8)
  FROM pgq.queue q
 WHERE q.queue_name = $1";

/// PostgreSQL's `hashtext(text)` of a key under a deterministic collation: Bob Jenkins'
/// lookup3 hash of the UTF-8 bytes as `hash_bytes` computes it on a little-endian server (the
/// kind PostgreSQL runs on almost everywhere; a big-endian server hashes differently).
pub fn hashtext(key: &str) -> i32 {
    // The server's int4 is the hash's 32 bits as they are.
    i32::from_ne_bytes(hash_bytes(key.as_bytes()).to_ne_bytes())
}

/// The hash itself, unsigned, as PostgreSQL's `hash_bytes` returns it.
fn hash_bytes(bytes: &[u8]) -> u32 {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    // The length is part of the seed; PostgreSQL takes it as a 32-bit int.
    let len = u32::try_from(bytes.len()).expect("a PostgreSQL text value is under 1 GB");
    let seed = 0x9e37_79b9_u32.wrapping_add(len).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (seed, seed, seed);
    let mut rest = bytes;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The tail, little-endian into a, b and c; the lowest byte of c is left for the length,
    // so c's bytes start one byte up.
    let mut tail = [0u8; 12];
    tail[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(word(&tail[0..4]));
    b = b.wrapping_add(word(&tail[4..8]));
    c = c.wrapping_add(word(&tail[8..12]) << 8);
    finish(&mut a, &mut b, &mut c);
    c
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

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
    hash_bytes(key.as_bytes()) & (partitions - 1)
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
    let row = client
        .query_typed_opt(
            INSERT_EVENT_BY_KEY,
            &[
                (&queue.as_str(), Type::TEXT),
                (&key, Type::TEXT),
                (&event.ev_type, Type::TEXT),
                (&event.ev_data, Type::TEXT),
                (&event.extra1, Type::TEXT),
                (&event.extra2, Type::TEXT),
                (&event.extra3, Type::TEXT),
                (&event.extra4, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| insert_error(queue, e))?
        .ok_or_else(|| queue_not_found(queue))?;
    Ok(EventId(row.try_get(0).op("insert_event_by_key")?))
}

/// The PL/Proxy cluster (an SQL/MED server) that [`setup_proxy`] makes in the proxy database.
pub const PROXY_CLUSTER: &str = "pgq_partitions";

/// The proxy's functions, in schema `pgq_proxy`: the keyed inserts of the partitions, routed by
/// `hashtext(key)`. The bulk forms split their arrays by key (PL/Proxy's `SPLIT`): each
/// partition gets one call with its keys' events, in the given order, and the ids come back
/// grouped by partition, not in the order given. `SPLIT` needs arrays of one length, so the form
/// with extra fields takes all four, each as long as the keys (NULL elements are fine).
// language=SQL
const PROXY_FUNCTIONS: &str = "\
CREATE FUNCTION pgq_proxy.insert_event_by_key(
    queue_name text, ev_key text, ev_type text, ev_data text,
    ev_extra1 text DEFAULT NULL, ev_extra2 text DEFAULT NULL,
    ev_extra3 text DEFAULT NULL, ev_extra4 text DEFAULT NULL)
RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    RUN ON hashtext(ev_key);
    TARGET pgq.insert_event_by_key;
$$;
CREATE FUNCTION pgq_proxy.insert_event_bulk_by_key(
    queue_name text, ev_keys text[], ev_types text[], ev_datas text[])
RETURNS SETOF bigint LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    SPLIT ev_keys, ev_types, ev_datas;
    RUN ON hashtext(ev_keys);
    TARGET pgq.insert_event_bulk_by_key;
$$;
CREATE FUNCTION pgq_proxy.insert_event_bulk_by_key(
    queue_name text, ev_keys text[], ev_types text[], ev_datas text[],
    ev_extra1 text[], ev_extra2 text[], ev_extra3 text[], ev_extra4 text[])
RETURNS SETOF bigint LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    SPLIT ev_keys, ev_types, ev_datas, ev_extra1, ev_extra2, ev_extra3, ev_extra4;
    RUN ON hashtext(ev_keys);
    TARGET pgq.insert_event_bulk_by_key;
$$;
REVOKE ALL ON FUNCTION
    pgq_proxy.insert_event_by_key(text, text, text, text, text, text, text, text),
    pgq_proxy.insert_event_bulk_by_key(text, text[], text[], text[]),
    pgq_proxy.insert_event_bulk_by_key(text, text[], text[], text[], text[], text[], text[],
                                       text[])
  FROM public;";

/// Makes `client`'s database a proxy over `databases` (libpq connection strings of the
/// partition databases, each with the queue installed): PL/Proxy, the cluster
/// [`PROXY_CLUSTER`] of `logical` partitions (a power of two, at least the number of
/// databases), logical partition `p` on database `p % databases.len()`, and the functions of
/// schema `pgq_proxy`. In one transaction; the proxy's owner runs the functions, grant
/// `EXECUTE` on them to the producers.
///
/// Keys stay on their partition while this mapping stays; another number of databases remaps
/// keys, so drain the queue on every partition before a new setup. PL/Proxy commits each remote
/// call on its own on the partition: a caller that rolls back does not take the event back.
///
/// # Errors
///
/// [`Error::InvalidPartitions`] for a bad partition count, [`Error::Db`] when a statement fails
/// (PL/Proxy not installed on the server, the cluster already there).
pub async fn setup_proxy(
    client: &mut tokio_postgres::Client,
    databases: &[String],
    logical: u32,
) -> Result<()> {
    if databases.is_empty() || !logical.is_power_of_two() || (logical as usize) < databases.len() {
        return Err(Error::InvalidPartitions {
            reason: format!(
                "{logical} logical partitions over {} databases: needs a power of two, at least \
                 one per database",
                databases.len()
            ),
        });
    }
    let options: Vec<String> = (0..logical as usize)
        .map(|p| format!("p{p} {}", quote_literal(&databases[p % databases.len()])))
        .collect();
    let tx = client.transaction().await.op("setup_proxy")?;
    tx.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS plproxy;
         CREATE SERVER {cluster} FOREIGN DATA WRAPPER plproxy OPTIONS ({options});
         CREATE USER MAPPING FOR PUBLIC SERVER {cluster};
         CREATE SCHEMA pgq_proxy;
         {PROXY_FUNCTIONS}",
        cluster = quote_ident(PROXY_CLUSTER),
        options = options.join(", "),
    ))
    .await
    .op("setup_proxy")?;
    tx.commit().await.op("setup_proxy")
}

/// Removes what [`setup_proxy`] made (PL/Proxy itself stays); nothing on the partitions.
///
/// # Errors
///
/// [`Error::Db`] when a statement fails.
pub async fn teardown_proxy(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await.op("teardown_proxy")?;
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS pgq_proxy CASCADE;
         DROP SERVER IF EXISTS {} CASCADE;",
        quote_ident(PROXY_CLUSTER)
    ))
    .await
    .op("teardown_proxy")?;
    tx.commit().await.op("teardown_proxy")
}
