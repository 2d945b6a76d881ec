//! Differential tests: each scenario runs against our schema (`migrations/pgq`) and against the
//! reference `pgq` extension, each in a database of its own, and what a client observes (return
//! values, batches and their events, error or not) is recorded as a trace and compared.
//!
//! Values that legitimately differ are left out or reduced to "NULL or not": times, txids and
//! snapshots. Event ids, tick ids and batch ids come from sequences that both sides advance in
//! the same way, so they are compared. Event positions (`tick_event_seq`) are compared from 1
//! up: for a queue whose event sequence was never used, ours says 0 and PGQ its start value 1
//! (PGQ's reading made the first event invisible to the tick rule and the backlog). Of an error
//! its message is compared (PGQ's texts; ours put names in DETAIL); our schema's SQLSTATE is
//! asserted on top.
//!
//! `PGQ_COMPAT_TRACE=1` prints our schema's trace of each scenario (with `--nocapture`).
//!
//! Every scenario also asserts what it observes (the events of each batch, tick decisions, return
//! values, SQLSTATEs and PGQ's error texts), on both sides, so without the reference extension
//! on the server (or with `PGQ_HIDE_REFERENCE=1`) it still tests our schema: the comparison is
//! then reported as SKIPPED, or fails when `PGQ_REQUIRE_REFERENCE=1`.

mod batches;
mod concurrency;
mod errors;
mod info;
mod londiste3;
mod model;
mod python;
mod retry;
mod rotation;
pub(crate) mod skytools;
mod ticker;
mod triggers;

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pgq_testkit::TestDb;
use serde_json::{json, Map, Value};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Row};

/// The queue the scenarios work on unless they say otherwise.
pub(crate) const QUEUE: &str = "q";

/// How long [`Ctx::wait_xmin_past_switch`] waits for older transactions of the cluster to end.
const XMIN_PATIENCE: Duration = Duration::from_secs(30);

/// Which implementation of PGQ's SQL API a database runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Our migrations (plain SQL and PL/pgSQL).
    Ours,
    /// `CREATE EXTENSION pgq` (Skytools PGQ 3.5, with its C parts).
    Reference,
}

/// Bind parameters as tokio-postgres takes them.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One observation of a scenario.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    label: String,
    value: Value,
}

/// Installs `flavor`'s PGQ into the (empty) database of `client`.
async fn install(flavor: Flavor, client: &mut Client) -> Result<()> {
    // Roles are cluster-wide and the extension's script creates them without tolerating a
    // concurrent creator: one installation at a time in this process.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = ONE_AT_A_TIME.lock().await;
    match flavor {
        Flavor::Ours => {
            pgq_core::install(client, &[pgq_core::Line::Pgq])
                .await
                .context("installing the pgq line")?;
        }
        Flavor::Reference => pgq_testkit::create_reference_extension(client).await?,
    }
    Ok(())
}

/// A fresh database with our pgq line, then `lines` on top.
pub(crate) async fn queue_db(lines: &[pgq_core::Line]) -> Result<(TestDb, Client)> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    // Through the harness's installer, which keeps role creation away from a concurrent
    // `CREATE EXTENSION pgq` of another test; later lines find the roles made.
    install(Flavor::Ours, &mut client).await?;
    pgq_core::install(&mut client, lines)
        .await
        .with_context(|| format!("installing {lines:?}"))?;
    Ok((db, client))
}

/// A scenario's database, its connections and its trace.
///
/// Connection 0 works in autocommit mode (admin calls, ticker, consumers); connections 1.. are
/// producers that open transactions of their own.
pub(crate) struct Ctx {
    flavor: Flavor,
    conns: Vec<Client>,
    trace: Vec<Entry>,
    // Last, so that it is dropped after the connections.
    _db: TestDb,
}

impl Ctx {
    /// A fresh database with `flavor` installed, and `1 + producers` connections to it.
    pub(crate) async fn new(flavor: Flavor, producers: usize) -> Result<Ctx> {
        let db = TestDb::new().await?;
        let mut admin = db.client().await?;
        install(flavor, &mut admin).await?;
        let mut conns = vec![admin];
        for _ in 0..producers {
            conns.push(db.client().await?);
        }
        Ok(Ctx {
            flavor,
            conns,
            trace: Vec::new(),
            _db: db,
        })
    }

    /// The implementation under test.
    pub(crate) fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Connection `i` (0 is the autocommit one).
    pub(crate) fn conn(&self, i: usize) -> &Client {
        &self.conns[i]
    }

    /// Appends an observation to the trace.
    pub(crate) fn note(&mut self, label: impl Into<String>, value: Value) {
        self.trace.push(Entry {
            label: label.into(),
            value,
        });
    }

    /// Runs `sql` (one or more statements, no parameters) on connection `i`, untraced.
    pub(crate) async fn exec(&self, i: usize, sql: &str) -> Result<()> {
        self.conns[i]
            .batch_execute(sql)
            .await
            .with_context(|| format!("{sql} (connection {i})"))
    }

    /// Runs a query on connection 0 and returns its rows as JSON, untraced.
    pub(crate) async fn value(&self, sql: &str, params: Params<'_>) -> Result<Value> {
        self.value_on(0, sql, params).await
    }

    /// Runs a query on connection `i` and returns its rows as JSON, untraced.
    pub(crate) async fn value_on(&self, i: usize, sql: &str, params: Params<'_>) -> Result<Value> {
        let rows = self.conns[i]
            .query(sql, params)
            .await
            .with_context(|| format!("{sql} (connection {i})"))?;
        Ok(rows_json(&rows))
    }

    /// Runs a query on connection 0 and records its rows under `label`.
    pub(crate) async fn rec(
        &mut self,
        label: &str,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Value> {
        self.rec_on(0, label, sql, params).await
    }

    /// Runs a query on connection `i` and records its rows under `label`.
    pub(crate) async fn rec_on(
        &mut self,
        i: usize,
        label: &str,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Value> {
        let value = self
            .value_on(i, sql, params)
            .await
            .context(label.to_owned())?;
        self.note(label, value.clone());
        Ok(value)
    }

    /// Runs a query on connection 0 that must fail with PGQ's text `message`, and records the
    /// error. Our schema must fail with SQLSTATE `ours`; a success is recorded as such (and is
    /// an error for our schema).
    pub(crate) async fn fails(
        &mut self,
        label: &str,
        sql: &str,
        params: Params<'_>,
        ours: &str,
        message: &str,
    ) -> Result<()> {
        self.failure(0, label, sql, params, ours, Some(message))
            .await
    }

    /// Like [`fails`](Self::fails), on connection `i`; with `message` `None` only that it
    /// fails is compared, for the few errors whose text in PGQ is an accident of its code.
    pub(crate) async fn failure(
        &mut self,
        i: usize,
        label: &str,
        sql: &str,
        params: Params<'_>,
        ours: &str,
        message: Option<&str>,
    ) -> Result<()> {
        match self.conns[i].query(sql, params).await {
            Ok(rows) => {
                let got = rows_json(&rows);
                self.note(label, json!({ "ok": got }));
                if self.flavor == Flavor::Ours {
                    bail!("{label}: expected an error with SQLSTATE {ours}, got {got}");
                }
            }
            Err(e) => {
                let Some(db) = e.as_db_error() else {
                    return Err(e).context(label.to_owned());
                };
                if self.flavor == Flavor::Ours && db.code().code() != ours {
                    bail!(
                        "{label}: expected SQLSTATE {ours}, got {}: {}",
                        db.code().code(),
                        db.message()
                    );
                }
                let message = match message {
                    Some(expected) if db.message() != expected => bail!(
                        "{label}: expected the error {expected:?}, got {:?} ({:?})",
                        db.message(),
                        self.flavor
                    ),
                    Some(_) => db.message(),
                    None => "(any)",
                };
                self.note(label, json!({ "error": message }));
            }
        }
        Ok(())
    }

    /// The last observation.
    pub(crate) fn last(&self) -> Result<&Value> {
        Ok(&self.trace.last().context("empty trace")?.value)
    }

    /// Asserts that the last observation is `expected` (the scenario's own expectation, which
    /// holds for both flavors).
    pub(crate) fn expect_last(&self, expected: &Value) -> Result<()> {
        let last = self.trace.last().context("empty trace")?;
        if last.value != *expected {
            bail!(
                "{}: expected {expected}, got {} ({:?})",
                last.label,
                last.value,
                self.flavor
            );
        }
        Ok(())
    }

    /// Asserts that the last observation is a batch (of `next_batch` or `next_batch_custom`)
    /// whose events are `expected` (see [`event_names`]), or with `None` that there was none.
    pub(crate) fn expect_batch(&self, expected: Option<&[&str]>) -> Result<()> {
        let last = self.trace.last().context("empty trace")?;
        let got = match &last.value["events"] {
            Value::Null => None,
            events => Some(event_names(events)),
        };
        let want = expected.map(|names| names.iter().map(|n| (*n).to_owned()).collect());
        if got != want {
            bail!(
                "{}: expected the events {want:?}, got {got:?} ({:?})",
                last.label,
                self.flavor
            );
        }
        Ok(())
    }

    /// `BEGIN` on connection `i`.
    pub(crate) async fn begin(&mut self, i: usize) -> Result<()> {
        self.exec(i, "BEGIN").await?;
        self.note(format!("BEGIN@{i}"), Value::Null);
        Ok(())
    }

    /// `COMMIT` on connection `i`.
    pub(crate) async fn commit(&mut self, i: usize) -> Result<()> {
        self.exec(i, "COMMIT").await?;
        self.note(format!("COMMIT@{i}"), Value::Null);
        Ok(())
    }

    /// `ROLLBACK` on connection `i`.
    pub(crate) async fn rollback(&mut self, i: usize) -> Result<()> {
        self.exec(i, "ROLLBACK").await?;
        self.note(format!("ROLLBACK@{i}"), Value::Null);
        Ok(())
    }

    /// `pgq.create_queue(queue)`, recorded.
    pub(crate) async fn create_queue(&mut self, queue: &str) -> Result<Value> {
        self.rec(
            &format!("create_queue {queue}"),
            "SELECT pgq.create_queue($1)",
            &[&queue],
        )
        .await
    }

    /// `pgq.register_consumer(QUEUE, consumer)`, recorded.
    pub(crate) async fn register(&mut self, consumer: &str) -> Result<Value> {
        self.rec(
            &format!("register {consumer}"),
            "SELECT pgq.register_consumer($1, $2)",
            &[&QUEUE, &consumer],
        )
        .await
    }

    /// `pgq.unregister_consumer(QUEUE, consumer)`, recorded; it must return `expected` (1 when
    /// the consumer was registered).
    pub(crate) async fn unregister(&mut self, consumer: &str, expected: i64) -> Result<()> {
        self.rec(
            &format!("unregister {consumer}"),
            "SELECT pgq.unregister_consumer($1, $2)",
            &[&QUEUE, &consumer],
        )
        .await?;
        self.expect_last(&json!(expected))
    }

    /// `pgq.set_queue_config(QUEUE, param, value)`, recorded.
    pub(crate) async fn config(&mut self, param: &str, value: &str) -> Result<Value> {
        self.rec(
            &format!("set_queue_config {param}={value}"),
            "SELECT pgq.set_queue_config($1, $2, $3)",
            &[&QUEUE, &param, &value],
        )
        .await
    }

    /// Inserts an event into QUEUE on connection `i` (in its open transaction, if any) and
    /// records the event id.
    pub(crate) async fn insert(&mut self, i: usize, ev_type: &str, ev_data: &str) -> Result<i64> {
        self.insert_tagged(i, ev_type, ev_data, None).await
    }

    /// Like [`insert`](Self::insert), with `ev_extra1`.
    pub(crate) async fn insert_tagged(
        &mut self,
        i: usize,
        ev_type: &str,
        ev_data: &str,
        extra1: Option<&str>,
    ) -> Result<i64> {
        let label = format!("insert@{i} {ev_type}:{ev_data}");
        let id = self
            .rec_on(
                i,
                &label,
                "SELECT pgq.insert_event($1, $2, $3, $4, NULL, NULL, NULL)",
                &[&QUEUE, &ev_type, &ev_data, &extra1],
            )
            .await?;
        id.as_i64().with_context(|| format!("{label}: no event id"))
    }

    /// `pgq.force_tick` then `pgq.ticker` on QUEUE, which always makes a tick: records and
    /// returns the new tick id.
    pub(crate) async fn tick(&mut self) -> Result<i64> {
        self.value("SELECT pgq.force_tick($1)", &[&QUEUE]).await?;
        let tick = self.rec("tick", "SELECT pgq.ticker($1)", &[&QUEUE]).await?;
        tick.as_i64()
            .context("pgq.ticker made no tick after pgq.force_tick")
    }

    /// `pgq.ticker(QUEUE)` under its own rules: records and returns the tick id or None.
    pub(crate) async fn ticker(&mut self, label: &str) -> Result<Option<i64>> {
        Ok(self
            .rec(label, "SELECT pgq.ticker($1)", &[&QUEUE])
            .await?
            .as_i64())
    }

    /// Sets the time of QUEUE's tick `tick_id` to `secs` seconds before now.
    pub(crate) async fn age_tick(&self, tick_id: i64, secs: f64) -> Result<()> {
        let updated = self.conns[0]
            .execute(
                "UPDATE pgq.tick SET tick_time = now() - make_interval(secs => $3)
                  WHERE tick_queue = (SELECT queue_id FROM pgq.queue WHERE queue_name = $1)
                    AND tick_id = $2",
                &[&QUEUE, &tick_id, &secs],
            )
            .await?;
        if updated != 1 {
            bail!("tick {tick_id} not found");
        }
        Ok(())
    }

    /// `pgq.next_batch_info` for `consumer` on QUEUE; records the batch (ids, tick ids, event
    /// sequence positions and its events in `ev_id` order) or NULL, and returns the batch id.
    pub(crate) async fn next_batch(&mut self, consumer: &str) -> Result<Option<i64>> {
        Ok(self
            .next_batch_events(consumer)
            .await?
            .map(|(batch, _)| batch))
    }

    /// Like [`next_batch`](Self::next_batch), returning the events too (as
    /// [`batch_events`](Self::batch_events) gives them).
    pub(crate) async fn next_batch_events(
        &mut self,
        consumer: &str,
    ) -> Result<Option<(i64, Value)>> {
        let label = format!("next_batch {consumer}");
        let row = self.conns[0]
            .query_one(
                "SELECT batch_id, prev_tick_id, cur_tick_id, greatest(prev_tick_event_seq, 1),
                        greatest(cur_tick_event_seq, 1)
                   FROM pgq.next_batch_info($1, $2)",
                &[&QUEUE, &consumer],
            )
            .await
            .with_context(|| label.clone())?;
        let Some(batch) = row.get::<_, Option<i64>>(0) else {
            self.note(label, Value::Null);
            return Ok(None);
        };
        let events = self.batch_events(batch).await?;
        self.note(
            label,
            json!({
                "batch": batch,
                "ticks": [row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)],
                "seqs": [row.get::<_, Option<i64>>(3), row.get::<_, Option<i64>>(4)],
                "events": events,
            }),
        );
        Ok(Some((batch, events)))
    }

    /// The events of `batch` as `[ev_id, ev_type, ev_data, ev_extra1, ev_retry]`, in `ev_id`
    /// order.
    pub(crate) async fn batch_events(&self, batch: i64) -> Result<Value> {
        let rows = self.conns[0]
            .query(
                "SELECT ev_id, ev_type, ev_data, ev_extra1, ev_retry FROM pgq.get_batch_events($1)",
                &[&batch],
            )
            .await
            .with_context(|| format!("get_batch_events({batch})"))?;
        let mut events = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let id: i64 = row.get(0);
            if last.is_some_and(|prev| prev >= id) {
                bail!("get_batch_events({batch}): ev_id {id} after {last:?}, not in ev_id order");
            }
            last = Some(id);
            events.push(json!([
                id,
                row.get::<_, Option<String>>(1),
                row.get::<_, Option<String>>(2),
                row.get::<_, Option<String>>(3),
                row.get::<_, Option<i32>>(4),
            ]));
        }
        Ok(Value::Array(events))
    }

    /// `pgq.finish_batch(batch)`, recorded.
    pub(crate) async fn finish(&mut self, batch: i64) -> Result<Value> {
        self.rec(
            &format!("finish_batch {batch}"),
            "SELECT pgq.finish_batch($1)",
            &[&batch],
        )
        .await
    }

    /// Takes `consumer`'s next batch, asserts that its events are `expected` (see
    /// [`event_names`]) and finishes it; returns the batch id.
    pub(crate) async fn take(&mut self, consumer: &str, expected: &[&str]) -> Result<i64> {
        let batch = self.next_batch(consumer).await?;
        self.expect_batch(Some(expected))?;
        let batch = batch.context("a batch")?;
        self.finish(batch).await?;
        Ok(batch)
    }

    /// Takes `consumer`'s batches, asserting that they hold `expected` (one list of events
    /// each, see [`event_names`]), and that no batch follows.
    pub(crate) async fn drain_expecting(
        &mut self,
        consumer: &str,
        expected: &[&[&str]],
    ) -> Result<()> {
        for events in expected {
            self.take(consumer, events).await?;
        }
        self.next_batch(consumer).await?;
        self.expect_batch(None)
    }

    /// Waits (polling, with a deadline) until every transaction of the cluster that is not
    /// newer than QUEUE's `queue_switch_step2` has ended, so that the next tick's snapshot xmin
    /// lies past it. Rotation decisions compare the two, and transactions of other databases
    /// (other tests) count too.
    pub(crate) async fn wait_xmin_past_switch(&self) -> Result<()> {
        let deadline = Instant::now() + XMIN_PATIENCE;
        loop {
            let past: Option<bool> = self.conns[0]
                .query_one(
                    "SELECT txid_snapshot_xmin(txid_current_snapshot()) > queue_switch_step2
                       FROM pgq.queue WHERE queue_name = $1",
                    &[&QUEUE],
                )
                .await?
                .get(0);
            if past == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "a transaction older than the last table switch is still open after {} s \
                     (queue_switch_step2 NULL, or another session holds a transaction open)",
                    XMIN_PATIENCE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs `scenario` against our schema and, when the reference extension is available, against
/// it too, both at once in databases of their own. Returns the finished contexts.
pub(crate) async fn run_both<F, Fut>(producers: usize, scenario: F) -> Result<(Ctx, Option<Ctx>)>
where
    F: Fn(Ctx) -> Fut,
    Fut: Future<Output = Result<Ctx>>,
{
    let ours = Ctx::new(Flavor::Ours, producers).await?;
    if !pgq_testkit::reference_available(ours.conn(0)).await? {
        let ours = scenario(ours).await.context("our schema")?;
        return Ok((ours, None));
    }
    let reference = Ctx::new(Flavor::Reference, producers).await?;
    let (ours, reference) = futures_util::future::try_join(
        async { scenario(ours).await.context("our schema") },
        async { scenario(reference).await.context("reference extension") },
    )
    .await?;
    Ok((ours, Some(reference)))
}

/// Runs `scenario` on both flavors ([`run_both`]) and panics, showing both traces, when they
/// differ (the databases are then kept for a look).
pub(crate) async fn compare<F, Fut>(producers: usize, scenario: F) -> Result<()>
where
    F: Fn(Ctx) -> Fut,
    Fut: Future<Output = Result<Ctx>>,
{
    let (ours, reference) = run_both(producers, scenario).await?;
    if std::env::var_os("PGQ_COMPAT_TRACE").is_some() {
        for (i, entry) in ours.trace.iter().enumerate() {
            eprintln!("{i:3} {}: {}", entry.label, entry.value);
        }
    }
    if let Some(diff) = reference
        .as_ref()
        .and_then(|reference| trace_diff(&ours, reference))
    {
        panic!("{diff}");
    }
    Ok(())
}

/// Both traces, the differing entries marked, or None when they are equal.
pub(crate) fn trace_diff(ours: &Ctx, reference: &Ctx) -> Option<String> {
    let (ours, reference) = (&ours.trace, &reference.trace);
    if ours == reference {
        return None;
    }
    let show = |e: Option<&Entry>| {
        e.map_or("<missing>".to_owned(), |e| {
            format!("{}: {}", e.label, e.value)
        })
    };
    let mut report =
        "our schema and the reference extension differ (entries marked !!):\n".to_owned();
    for i in 0..ours.len().max(reference.len()) {
        let (o, r) = (ours.get(i), reference.get(i));
        if o == r {
            let _ = writeln!(report, "   {i:3} {}", show(o));
        } else {
            let _ = writeln!(report, "!! {i:3} ours:      {}", show(o));
            let _ = writeln!(report, "!!     reference: {}", show(r));
        }
    }
    Some(report)
}

/// The events of a recorded batch by their `ev_data`, a retried one followed by ` (retry N)`.
pub(crate) fn event_names(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|ev| {
                    let data = ev[2].as_str().unwrap_or("NULL");
                    match ev[4].as_i64() {
                        Some(retry) => format!("{data} (retry {retry})"),
                        None => data.to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Any column type, read only for whether it is NULL.
struct Present;

impl<'a> FromSql<'a> for Present {
    fn from_sql(_: &Type, _: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Present)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Rows as JSON: one row is its value, several are an array; a one-column row is its cell,
/// a wider one an object by column name.
pub(crate) fn rows_json(rows: &[Row]) -> Value {
    let mut values: Vec<Value> = rows.iter().map(row_json).collect();
    if values.len() == 1 {
        values.remove(0)
    } else {
        Value::Array(values)
    }
}

fn row_json(row: &Row) -> Value {
    if row.len() == 1 {
        return cell(row, 0);
    }
    let mut object = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        object.insert(column.name().to_owned(), cell(row, i));
    }
    Value::Object(object)
}

/// A cell as JSON: booleans, integers, text and text arrays as they are; any other type (times,
/// intervals, snapshots) only as `"<not null>"` or NULL.
fn cell(row: &Row, i: usize) -> Value {
    let ty = row.columns()[i].type_();
    if *ty == Type::BOOL {
        json!(row.get::<_, Option<bool>>(i))
    } else if *ty == Type::INT2 {
        json!(row.get::<_, Option<i16>>(i))
    } else if *ty == Type::INT4 {
        json!(row.get::<_, Option<i32>>(i))
    } else if *ty == Type::INT8 {
        json!(row.get::<_, Option<i64>>(i))
    } else if [Type::TEXT, Type::VARCHAR, Type::NAME].contains(ty) {
        json!(row.get::<_, Option<String>>(i))
    } else if *ty == Type::TEXT_ARRAY {
        json!(row.get::<_, Option<Vec<Option<String>>>>(i))
    } else if *ty == Type::INT8_ARRAY {
        json!(row.get::<_, Option<Vec<Option<i64>>>>(i))
    } else {
        match row.get::<_, Option<Present>>(i) {
            Some(Present) => json!("<not null>"),
            None => Value::Null,
        }
    }
}
