//! Producing events (`pgq.insert_event`, and `pgq.insert_event_bulk` of the pgq-rs schema).
//!
//! An event belongs to the producer's transaction: pass an open transaction as the client and
//! the event exists only if that transaction commits.
//!
//! Errors are told apart by SQLSTATE. The pgq-rs schema raises `PQQ01` for an unknown queue,
//! `PQI01` when the queue refuses inserts and `PQI02` when a transaction exceeds the queue's
//! per-transaction limit. The original extension raises the last two with SQLSTATE `XX000`,
//! which then come back as [`Error::Db`]; an unknown queue is recognised with either schema,
//! because each statement calls PGQ only for a queue row that exists.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Error, Result};
use crate::ident::QueueName;
use crate::ids::EventId;
use crate::queue::queue_not_found;

// language=SQL
const INSERT_EVENT: &str = "\
SELECT pgq.insert_event(q.queue_name, $2, $3, $4, $5, $6, $7)
  FROM pgq.queue q
 WHERE q.queue_name = $1";

// language=SQL
const HAS_INSERT_EVENT_BULK: &str = "\
SELECT pg_catalog.to_regprocedure(
           'pgq.insert_event_bulk(text,text[],text[],text[],text[],text[],text[])') IS NOT NULL";

// language=SQL
const INSERT_EVENT_BULK: &str = "\
SELECT b.ev_id
  FROM pgq.queue q
 CROSS JOIN LATERAL pgq.insert_event_bulk(q.queue_name, $2, $3, $4, $5, $6, $7)
       WITH ORDINALITY AS b(ev_id, n)
 WHERE q.queue_name = $1
 ORDER BY b.n";

// language=SQL
const INSERT_EVENT_EACH: &str = "\
SELECT pgq.insert_event(q.queue_name, u.t, u.d, u.e1, u.e2, u.e3, u.e4)
  FROM pgq.queue q
 CROSS JOIN LATERAL unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
       WITH ORDINALITY AS u(t, d, e1, e2, e3, e4, n)
 WHERE q.queue_name = $1
 ORDER BY u.n";

/// An event to insert with all of PGQ's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEvent {
    /// `ev_type`: what kind of event this is (consumers dispatch on it).
    pub ev_type: String,
    /// `ev_data`: the payload.
    pub ev_data: String,
    /// `ev_extra1` (by convention the table name in londiste events).
    pub extra1: Option<String>,
    /// `ev_extra2`.
    pub extra2: Option<String>,
    /// `ev_extra3`.
    pub extra3: Option<String>,
    /// `ev_extra4`.
    pub extra4: Option<String>,
}

impl NewEvent {
    /// An event with a type and a payload and no extra fields.
    pub fn new(ev_type: impl Into<String>, ev_data: impl Into<String>) -> NewEvent {
        NewEvent {
            ev_type: ev_type.into(),
            ev_data: ev_data.into(),
            ..NewEvent::default()
        }
    }
}

/// Inserts one event into the queue (`pgq.insert_event`) and returns its id.
///
/// # Errors
///
/// [`Error::QueueNotFound`], [`Error::InsertDisabled`], [`Error::PerTxLimitExceeded`] (see the
/// module docs), or [`Error::Db`].
pub async fn insert_event(
    client: &impl GenericClient,
    queue: &QueueName,
    ev_type: &str,
    ev_data: &str,
) -> Result<EventId> {
    insert_event_ext(client, queue, &NewEvent::new(ev_type, ev_data)).await
}

/// Inserts one event with its extra fields (`pgq.insert_event` with 7 arguments) and returns
/// its id.
///
/// # Errors
///
/// As for [`insert_event`].
pub async fn insert_event_ext(
    client: &impl GenericClient,
    queue: &QueueName,
    event: &NewEvent,
) -> Result<EventId> {
    insert_one(client, INSERT_EVENT, "insert_event", queue, None, event).await
}

/// Runs `sql`, a call of one of the schema's single-event inserts that takes the queue name,
/// `key` when given, and the event's six fields, all as text and in that order, and returns the
/// new event's id.
pub(crate) async fn insert_one(
    client: &impl GenericClient,
    sql: &str,
    op: &'static str,
    queue: &QueueName,
    key: Option<&str>,
    event: &NewEvent,
) -> Result<EventId> {
    let name = queue.as_str();
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&name, Type::TEXT)];
    if let Some(key) = &key {
        params.push((key, Type::TEXT));
    }
    params.extend([
        (&event.ev_type as &(dyn ToSql + Sync), Type::TEXT),
        (&event.ev_data, Type::TEXT),
        (&event.extra1, Type::TEXT),
        (&event.extra2, Type::TEXT),
        (&event.extra3, Type::TEXT),
        (&event.extra4, Type::TEXT),
    ]);
    let row = client
        .query_typed_opt(sql, &params)
        .await
        .map_err(|e| insert_error(queue, e))?
        .ok_or_else(|| queue_not_found(queue))?;
    Ok(EventId(row.try_get(0).op(op)?))
}

/// Inserts many events and returns their ids in the order given. The events go to the server
/// in one statement: `pgq.insert_event_bulk` where the schema has it (pgq-rs), else one
/// `pgq.insert_event` call per event inside that statement (the original extension); a short
/// look-up before it finds out which. An empty slice does nothing.
///
/// # Errors
///
/// As for [`insert_event`]; no event is inserted when the statement fails.
pub async fn insert_events(
    client: &impl GenericClient,
    queue: &QueueName,
    events: &[NewEvent],
) -> Result<Vec<EventId>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let has_bulk: bool = client
        .query_typed_one(HAS_INSERT_EVENT_BULK, &[])
        .await
        .op("looking up pgq.insert_event_bulk")?
        .get(0);
    let sql = if has_bulk {
        INSERT_EVENT_BULK
    } else {
        INSERT_EVENT_EACH
    };
    let types: Vec<&str> = events.iter().map(|e| e.ev_type.as_str()).collect();
    let datas: Vec<&str> = events.iter().map(|e| e.ev_data.as_str()).collect();
    let extra = |f: fn(&NewEvent) -> &Option<String>| -> Vec<Option<&str>> {
        events.iter().map(|e| f(e).as_deref()).collect()
    };
    let (extra1, extra2, extra3, extra4) = (
        extra(|e| &e.extra1),
        extra(|e| &e.extra2),
        extra(|e| &e.extra3),
        extra(|e| &e.extra4),
    );
    let rows = client
        .query_typed(
            sql,
            &[
                (&queue.as_str(), Type::TEXT),
                (&types, Type::TEXT_ARRAY),
                (&datas, Type::TEXT_ARRAY),
                (&extra1, Type::TEXT_ARRAY),
                (&extra2, Type::TEXT_ARRAY),
                (&extra3, Type::TEXT_ARRAY),
                (&extra4, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| insert_error(queue, e))?;
    if rows.is_empty() {
        // Events were given, so no row means no queue row.
        return Err(queue_not_found(queue));
    }
    rows.iter()
        .map(|row| row.try_get(0).map(EventId).op("insert_event"))
        .collect()
}

/// Classifies a failed insert by SQLSTATE.
fn insert_error(queue: &QueueName, source: tokio_postgres::Error) -> Error {
    let queue = queue.to_string();
    match source.code().map(|c| c.code()) {
        Some("PQQ01") => Error::QueueNotFound { queue },
        Some("PQI01") => Error::InsertDisabled { queue },
        Some("PQI02") => Error::PerTxLimitExceeded { queue },
        _ => Error::Db {
            op: "insert_event",
            source,
        },
    }
}
