//! Scenario `produce`: inserting events with our `insert_event` and `insert_event_bulk`, the
//! original extension's `insert_event`, and a plain INSERT into an event-like table.
//!
//! Two shapes. *Round trip*: 1,000 `insert_event` (or INSERT) statements sent one by one in one
//! transaction, as applications call it; our bulk insert sends its 1,000 events as client-built
//! arrays in one statement. *Server*: one statement inserting 1,000 rows; our bulk insert gets
//! arrays built server-side with `array_fill`. Every event has 100 bytes of `ev_data`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pgq_core::{quote_ident, QueueName};
use tokio_postgres::{Client, Statement};

use crate::cli::Plan;
use crate::harness::{reference, Bench, Part, Server, Side};
use crate::report::{Ratio, Report, Sample, Series};

/// The queue events go to, in our database and the reference's.
const QUEUE: &str = "bench";
/// Every event's `ev_type`.
const EV_TYPE: &str = "t";
/// Events per repetition.
const EVENTS: i32 = 1000;
/// Bytes of `ev_data` per event.
const DATA_BYTES: i32 = 100;

/// The queue's parent event table (its event tables inherit from it), schema and name.
// language=SQL
const QUEUE_TABLE: &str = "
    SELECT n.nspname, c.relname
      FROM pgq.queue q
      JOIN pg_catalog.pg_class c ON c.oid = q.queue_data_pfx::regclass
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE q.queue_name = $1";
/// A table with `pgq.event_template`'s columns and a queue event table's defaults and index.
// language=SQL
const CREATE_PLAIN: &str = "
    CREATE SEQUENCE bench_events_ev_id_seq;
    CREATE TABLE bench_events (
        ev_id     bigint      NOT NULL DEFAULT nextval('bench_events_ev_id_seq'),
        ev_time   timestamptz NOT NULL DEFAULT now(),
        ev_txid   bigint      NOT NULL DEFAULT txid_current(),
        ev_owner  integer,
        ev_retry  integer,
        ev_type   text,
        ev_data   text,
        ev_extra1 text,
        ev_extra2 text,
        ev_extra3 text,
        ev_extra4 text
    );
    CREATE INDEX bench_events_txid_idx ON bench_events (ev_txid);";
/// The plain table's name, as [`CREATE_PLAIN`] creates it.
const PLAIN_TABLE: &str = "bench_events";

// language=SQL
const INSERT_EVENT: &str = "SELECT pgq.insert_event($1, $2, $3)";
// language=SQL
const PLAIN_INSERT: &str = "INSERT INTO bench_events (ev_type, ev_data) VALUES ($1, $2)";
// language=SQL
const BULK_CLIENT_ARRAYS: &str =
    "SELECT count(*) FROM pgq.insert_event_bulk($1, $2::text[], $3::text[])";
// language=SQL
const INSERT_EVENT_SERVER: &str =
    "SELECT count(pgq.insert_event($1, $2, repeat('x', $3::int))) FROM generate_series(1, $4::int)";
// language=SQL
const PLAIN_INSERT_SERVER: &str = "INSERT INTO bench_events (ev_type, ev_data) \
     SELECT $1::text, repeat('x', $2::int) FROM generate_series(1, $3::int)";
// language=SQL
const BULK_SERVER_ARRAYS: &str = "SELECT count(*) FROM pgq.insert_event_bulk($1, \
     array_fill($2::text, ARRAY[$4::int]), array_fill(repeat('x', $3::int), ARRAY[$4::int]))";

const ROUND_TRIP: &str = "round trip";
const SERVER: &str = "server";
const OURS: &str = "ours insert_event";
const REFERENCE: &str = "reference insert_event";
const PLAIN: &str = "plain INSERT";
const BULK: &str = "ours insert_event_bulk";

/// How the figures are made.
fn method(runs: u32) -> Vec<String> {
    vec![
        format!(
            "Each repetition inserts {EVENTS} events with {DATA_BYTES}-byte ev_data into queue \
             `{QUEUE}` (or table `{PLAIN_TABLE}`); a timed block is one variant's repetitions, \
             and its events/s is one sample."
        ),
        format!(
            "{runs} run(s); within a run the variants alternate in the order listed; before \
             every block (untimed) the event tables are truncated; after it their rows are \
             counted."
        ),
        format!(
            "{ROUND_TRIP}: {EVENTS} prepared statements one by one in one transaction; \
             `{BULK}` sends {EVENTS}-element arrays built client-side in one statement."
        ),
        format!(
            "{SERVER}: one statement inserting {EVENTS} rows from generate_series; `{BULK}` \
             gets arrays built server-side with array_fill."
        ),
    ]
}

/// Runs the scenario on scratch databases of the bench's server.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let plan = bench.plan;
    let mut notes = method(plan.runs);
    let mut dbs = vec![Db::queue(bench.server, Side::Ours).await?];
    if reference(
        bench.server,
        &[Part::Extension],
        "its variants are skipped",
        &mut notes,
    )
    .await?
    {
        dbs.push(Db::queue(bench.server, Side::Reference).await?);
    }
    dbs.push(Db::plain(bench.server).await?);
    let mut variants = Vec::new();
    for shape in [Shape::RoundTrip, Shape::Server] {
        for (i, db) in dbs.iter().enumerate() {
            variants.push(Variant::prepare(shape, db.kind.insert_method(), i, db).await?);
        }
        variants.push(Variant::prepare(shape, Method::Bulk, 0, &dbs[0]).await?);
    }

    measure(&mut dbs, &mut variants, plan).await?;

    let series: Vec<Series> = variants
        .into_iter()
        .map(|v| Series {
            shape: v.shape.name(),
            variant: v.label,
            reps: v.reps,
            events_per_rep: EVENTS.unsigned_abs().into(),
            samples: v.samples,
        })
        .collect();
    Ok(Report {
        scenario: "produce",
        notes,
        ratios: ratios(&series),
        series,
        measures: Vec::new(),
        limits: Vec::new(),
    })
}

/// Warms every variant up, then runs a block of each per run, alternating.
async fn measure(dbs: &mut [Db], variants: &mut [Variant], plan: Plan) -> Result<()> {
    let work = Work::new();
    for v in variants.iter_mut() {
        v.warm_up(&mut dbs[v.db], &work, plan).await?;
    }
    for run in 1..=plan.runs {
        for v in variants.iter_mut() {
            let db = &mut dbs[v.db];
            let sample = v.block(db, &work, run).await?;
            tracing::info!(
                run,
                shape = v.shape.name(),
                variant = v.label,
                events_per_sec = sample.events_per_sec.round(),
                "block done"
            );
            v.samples.push(sample);
        }
    }
    Ok(())
}

/// The ratios of medians the scenario reports, three with a target.
fn ratios(series: &[Series]) -> Vec<Ratio> {
    let find = |shape: Shape, variant: &str| {
        series
            .iter()
            .find(|s| s.shape == shape.name() && s.variant == variant)
    };
    let (rt, sv) = (Shape::RoundTrip, Shape::Server);
    vec![
        Ratio::of(
            format!("{OURS} / {PLAIN} ({ROUND_TRIP})"),
            find(rt, OURS),
            find(rt, PLAIN),
            Some(0.8),
        ),
        Ratio::of(
            format!("{OURS} / {REFERENCE} ({SERVER})"),
            find(sv, OURS),
            find(sv, REFERENCE),
            Some(0.5),
        ),
        Ratio::of(
            format!("{BULK} ({SERVER}) / {REFERENCE} ({SERVER})"),
            find(sv, BULK),
            find(sv, REFERENCE),
            Some(2.0),
        ),
        Ratio::of(
            format!("{OURS} / {REFERENCE} ({ROUND_TRIP})"),
            find(rt, OURS),
            find(rt, REFERENCE),
            None,
        ),
        Ratio::of(
            format!("{OURS} / {PLAIN} ({SERVER})"),
            find(sv, OURS),
            find(sv, PLAIN),
            None,
        ),
        Ratio::of(
            format!("{BULK} ({ROUND_TRIP}, client arrays) / {REFERENCE} ({SERVER})"),
            find(rt, BULK),
            find(sv, REFERENCE),
            None,
        ),
    ]
}

/// Which database a [`Db`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Our schema, installed by `pgq_core::install`.
    Ours,
    /// The original `pgq` extension.
    Reference,
    /// No queue, just [`PLAIN_TABLE`].
    Plain,
}

impl Kind {
    /// How single events are inserted into this database.
    fn insert_method(self) -> Method {
        match self {
            Kind::Ours | Kind::Reference => Method::InsertEvent,
            Kind::Plain => Method::PlainInsert,
        }
    }
}

/// A scratch database with one connection, and the table its events land in.
struct Db {
    kind: Kind,
    client: Client,
    /// The (inheritance parent) table to truncate and count, quoted.
    table: String,
}

impl Db {
    /// A database of `side` with queue [`QUEUE`], and its parent event table.
    async fn queue(server: &Server, side: Side) -> Result<Db> {
        let (_, client) = side.database(server, "produce").await?;
        let kind = side.pick(Kind::Ours, Kind::Reference);
        pgq_core::create_queue(&client, &QueueName::new(QUEUE)?)
            .await
            .with_context(|| format!("creating queue {QUEUE} ({kind:?})"))?;
        let row = client.query_one(QUEUE_TABLE, &[&QUEUE]).await?;
        let table = format!(
            "{}.{}",
            quote_ident(row.get::<_, &str>(0)),
            quote_ident(row.get::<_, &str>(1))
        );
        Ok(Db {
            kind,
            client,
            table,
        })
    }

    async fn plain(server: &Server) -> Result<Db> {
        let dsn = server.scratch_db("produce_plain").await?;
        let client = dsn
            .connect()
            .await
            .with_context(|| format!("connecting to {}", dsn.dbname()))?;
        client
            .batch_execute(CREATE_PLAIN)
            .await
            .context("creating the plain event table")?;
        Ok(Db {
            kind: Kind::Plain,
            client,
            table: quote_ident(PLAIN_TABLE),
        })
    }

    /// Empties the event tables (the queue's children go with their parent).
    async fn truncate(&self) -> Result<()> {
        self.client
            .batch_execute(&format!("TRUNCATE {}", self.table))
            .await
            .with_context(|| format!("truncating {}", self.table))
    }

    /// Rows in the event tables.
    async fn count(&self) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM {}", self.table);
        Ok(self.client.query_one(&sql, &[]).await?.get(0))
    }
}

/// How the 1,000 events of a repetition travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    RoundTrip,
    Server,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::RoundTrip => ROUND_TRIP,
            Shape::Server => SERVER,
        }
    }
}

/// What inserts the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    InsertEvent,
    PlainInsert,
    Bulk,
}

/// Client-side values the statements bind.
struct Work {
    data: String,
    types: Vec<&'static str>,
    datas: Vec<String>,
}

impl Work {
    fn new() -> Work {
        let data = "x".repeat(DATA_BYTES.unsigned_abs() as usize);
        let n = EVENTS.unsigned_abs() as usize;
        Work {
            types: vec![EV_TYPE; n],
            datas: vec![data.clone(); n],
            data,
        }
    }
}

/// One measured thing: a method in a shape on a database.
struct Variant {
    shape: Shape,
    method: Method,
    label: &'static str,
    /// Index into the scenario's databases.
    db: usize,
    stmt: Statement,
    /// Repetitions per block, settled during warm-up.
    reps: u32,
    samples: Vec<Sample>,
}

impl Variant {
    async fn prepare(shape: Shape, method: Method, db_index: usize, db: &Db) -> Result<Variant> {
        let label = match (method, db.kind) {
            (Method::InsertEvent, Kind::Reference) => REFERENCE,
            (Method::InsertEvent, _) => OURS,
            (Method::PlainInsert, _) => PLAIN,
            (Method::Bulk, _) => BULK,
        };
        let sql = match (shape, method) {
            (Shape::RoundTrip, Method::InsertEvent) => INSERT_EVENT,
            (Shape::RoundTrip, Method::PlainInsert) => PLAIN_INSERT,
            (Shape::RoundTrip, Method::Bulk) => BULK_CLIENT_ARRAYS,
            (Shape::Server, Method::InsertEvent) => INSERT_EVENT_SERVER,
            (Shape::Server, Method::PlainInsert) => PLAIN_INSERT_SERVER,
            (Shape::Server, Method::Bulk) => BULK_SERVER_ARRAYS,
        };
        let stmt = db
            .client
            .prepare(sql)
            .await
            .with_context(|| format!("preparing {label} ({})", shape.name()))?;
        Ok(Variant {
            shape,
            method,
            label,
            db: db_index,
            stmt,
            reps: 1,
            samples: Vec::new(),
        })
    }

    /// Runs repetitions for `plan.warmup` (one with fixed `--reps`), then settles the block size.
    async fn warm_up(&mut self, db: &mut Db, work: &Work, plan: Plan) -> Result<()> {
        db.truncate().await?;
        let start = Instant::now();
        let mut done = 0u32;
        while done == 0 || (plan.reps.is_none() && start.elapsed() < plan.warmup) {
            self.repetition(db, work).await?;
            done += 1;
        }
        let per_rep = start.elapsed() / done;
        self.reps = plan.reps.unwrap_or_else(|| reps_for(plan.block, per_rep));
        tracing::info!(
            shape = self.shape.name(),
            variant = self.label,
            reps = self.reps,
            "warmed up"
        );
        db.truncate().await
    }

    /// One timed block of `self.reps` repetitions on freshly truncated tables, checked after.
    async fn block(&self, db: &mut Db, work: &Work, run: u32) -> Result<Sample> {
        db.truncate().await?;
        let start = Instant::now();
        for _ in 0..self.reps {
            self.repetition(db, work).await?;
        }
        let seconds = start.elapsed().as_secs_f64();
        let events = u64::from(self.reps) * u64::from(EVENTS.unsigned_abs());
        let rows = db.count().await?;
        ensure!(
            u64::try_from(rows).ok() == Some(events),
            "{} ({}): {rows} rows in {} after inserting {events} events",
            self.label,
            self.shape.name(),
            db.table
        );
        Ok(Sample::new(run, events, seconds))
    }

    /// Inserts [`EVENTS`] events once.
    async fn repetition(&self, db: &mut Db, work: &Work) -> Result<()> {
        let what = || format!("{} ({})", self.label, self.shape.name());
        let stmt = &self.stmt;
        let inserted: i64 = match (self.shape, self.method) {
            (Shape::RoundTrip, Method::Bulk) => db
                .client
                .query_one(stmt, &[&QUEUE, &work.types, &work.datas])
                .await
                .with_context(what)?
                .get(0),
            (Shape::RoundTrip, method) => {
                let tx = db.client.transaction().await?;
                for _ in 0..EVENTS {
                    let rows = if method == Method::PlainInsert {
                        tx.execute(stmt, &[&EV_TYPE, &work.data]).await
                    } else {
                        tx.execute(stmt, &[&QUEUE, &EV_TYPE, &work.data]).await
                    };
                    ensure!(rows.with_context(what)? == 1, "{}: no row", what());
                }
                tx.commit().await.with_context(what)?;
                i64::from(EVENTS)
            }
            (Shape::Server, Method::PlainInsert) => {
                let rows = db
                    .client
                    .execute(stmt, &[&EV_TYPE, &DATA_BYTES, &EVENTS])
                    .await
                    .with_context(what)?;
                i64::try_from(rows)?
            }
            (Shape::Server, _) => db
                .client
                .query_one(stmt, &[&QUEUE, &EV_TYPE, &DATA_BYTES, &EVENTS])
                .await
                .with_context(what)?
                .get(0),
        };
        if inserted != i64::from(EVENTS) {
            bail!("{}: inserted {inserted} events, not {EVENTS}", what());
        }
        Ok(())
    }
}

/// Repetitions that take about `block`, when one takes `per_rep`; at least one.
fn reps_for(block: Duration, per_rep: Duration) -> u32 {
    let reps = block.as_nanos() / per_rep.as_nanos().max(1);
    u32::try_from(reps).unwrap_or(u32::MAX).max(1)
}
