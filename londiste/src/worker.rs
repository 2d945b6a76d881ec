//! The replay worker: a remote consumer (`pgq-consumer`) that applies each batch on the
//! subscriber in one transaction together with its batch tracking (`pgq_ext`), so every batch
//! is applied exactly once across the two databases.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgq_consumer::{
    BatchHandle, BatchReport, CancellationToken, Consumer, ConsumerConfig, HandlerError, Postpone,
    RemoteRunner,
};
use pgq_core::{BatchId, ConsumerName, Event};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::apply::{apply_one, truncate, Key, TableBatch};
use crate::config::{ApplyMode, Config};
use crate::copy::replica_error;
use crate::decode::{parse_ev_type, parse_urlencoded, Op, Snapshot};
use crate::error::{DbContext as _, LondisteError, Result, PROVIDER, SUBSCRIBER};
use crate::execute::{record_script, EXECUTE_EVENT};
use crate::meta::{converting_column, registered_table_info, require_table, TableInfo};
use crate::monitor::{observe, Board};
use crate::state::TableState;

// The replica role keeps the subscriber's own triggers quiet. Batches know their array sizes,
// so the planner would hash-join a batch against a full scan of the table (a 10,000,000-row
// table for 2,000 events); index lookups per merged row keep a batch's cost proportional to the
// batch. One round trip for both.
// language=SQL
const BATCH_SETTINGS: &str = "SET LOCAL session_replication_role = replica; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

// language=SQL
const POSITION: &str = "\
SELECT pause_requested, pause_at_tick FROM londiste_rs.worker_position
 WHERE queue_name = $1 AND consumer_name = $2 FOR UPDATE";

// language=SQL
const ADD_POSITION: &str = "\
INSERT INTO londiste_rs.worker_position (queue_name, consumer_name) VALUES ($1, $2)
ON CONFLICT DO NOTHING";

// language=SQL
const SET_POSITION: &str = "\
UPDATE londiste_rs.worker_position SET last_tick = $3, last_batch_at = now()
 WHERE queue_name = $1 AND consumer_name = $2";

// language=SQL
const STATES: &str = "\
SELECT table_name, dest_table, state, copy_snapshot::text, copy_condition
  FROM londiste_rs.subscriber_table WHERE queue_name = $1";

// language=SQL
const TICK_SNAPSHOT: &str = "\
SELECT t.tick_snapshot::text
  FROM pgq.tick t JOIN pgq.queue q ON q.queue_id = t.tick_queue
 WHERE q.queue_name = $1 AND t.tick_id = $2";

// language=SQL
const SET_OK: &str = "\
UPDATE londiste_rs.subscriber_table SET state = 'ok', state_changed = now()
 WHERE queue_name = $1 AND table_name = $2 AND state = 'catching-up'";

// language=SQL
const SEED_TXIDS: &str = "SELECT txid FROM londiste_rs.seed_txid WHERE queue_name = $1";

// language=SQL
const SEED_DONE: &str = "DELETE FROM londiste_rs.seed_txid WHERE queue_name = $1";

// language=SQL
const SEQS: &str =
    "SELECT seq_name, dest_seq FROM londiste_rs.subscriber_seq WHERE queue_name = $1";

// language=SQL
const PROVIDER_SEQ: &str = "SELECT pg_catalog.pg_sequence_last_value($1::text::regclass)";

// language=SQL
const SYNC_SEQ: &str = "\
SELECT pg_catalog.setval($1::text::regclass, $2)
 WHERE coalesce(pg_catalog.pg_sequence_last_value($1::text::regclass), 0) < $2";

// language=SQL
const SEQ_SEEN: &str = "\
UPDATE londiste_rs.subscriber_seq SET last_value = $3 WHERE queue_name = $1 AND seq_name = $2";

// language=SQL
const SCRIPTS: &str = "SELECT count(*) FROM londiste_rs.executed WHERE queue_name = $1";

/// How long a batch waits while a table it touches is being copied, or while `compare` holds
/// the worker.
const HOLD: Duration = Duration::from_millis(100);

/// Events applied in one batch, per provider table, by operation (indexed by `Op as usize`).
type Applied = HashMap<String, [u64; 4]>;

/// A subscribed table, as the subscriber records it.
struct Subscribed {
    dest: String,
    state: TableState,
    copy_snapshot: Option<Snapshot>,
    /// Only rows matching this condition are replicated.
    condition: Option<String>,
}

/// The consumer that applies batches.
struct Replayer {
    config: Config,
    /// The resolved consumer name ([`Config::consumer_name`]).
    consumer: ConsumerName,
    tables: Mutex<HashMap<String, Arc<TableInfo>>>,
    /// A batch that hit a unique violation on non-key columns: applied event by event.
    per_event_batch: Mutex<Option<BatchId>>,
    /// The provider transactions a seeded subscriber holds already, read once.
    seeded: OnceLock<Arc<HashSet<i64>>>,
    /// Whether this worker has deleted them from `londiste_rs.seed_txid` (a batch rolled back
    /// after that leaves them to the next worker, which deletes them in its first batch).
    seed_forgotten: AtomicBool,
}

impl Replayer {
    /// The subscriber table `name`, which replicates the provider's `table`: read from the
    /// catalogs and checked once, then cached until a script runs or a batch fails.
    async fn dest(
        &self,
        provider: &Transaction<'_>,
        tx: &Transaction<'_>,
        table: &str,
        name: &str,
    ) -> Result<Arc<TableInfo>> {
        let cached = self
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(info) = cached {
            return Ok(info);
        }
        let info = Arc::new(require_table(tx, SUBSCRIBER, name).await?);
        info.require_pkey()?;
        self.check_types(provider, tx, table, &info).await?;
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    /// Stops at a subscriber column whose type would convert the provider's values (a column
    /// the subscriber lacks stops the merge of the first event that carries it). The provider's
    /// catalog tells how things are now and the batch may be older: while a script of
    /// `londiste execute` is still to come, it changes both sides at its position, so nothing
    /// is checked until it ran (running it forgets the cached tables).
    async fn check_types(
        &self,
        provider: &Transaction<'_>,
        tx: &Transaction<'_>,
        table: &str,
        dest: &TableInfo,
    ) -> Result<()> {
        let queue = self.config.queue.as_str();
        let scripts = [(
            &queue as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::TEXT,
        )];
        let provider_scripts: i64 = provider
            .query_typed_one(SCRIPTS, &scripts)
            .await
            .on(PROVIDER, "counting executed scripts")?
            .get(0);
        let subscriber_scripts: i64 = tx
            .query_typed_one(SCRIPTS, &scripts)
            .await
            .on(SUBSCRIBER, "counting executed scripts")?
            .get(0);
        if provider_scripts != subscriber_scripts {
            return Ok(());
        }
        let Some(source) = registered_table_info(provider, queue, table).await? else {
            return Ok(());
        };
        converting_column(&source, dest).map_or(Ok(()), |problem| {
            Err(LondisteError::TableMismatch {
                table: table.to_owned(),
                dest: dest.event_name.clone(),
                problem,
            })
        })
    }

    fn forget_tables(&self) {
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    async fn replay(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        let started = Instant::now();
        let tx = batch.tx();
        let provider = batch.queue_tx();
        let queue = self.config.queue.as_str();
        let consumer = self.consumer.as_str();
        tx.batch_execute(BATCH_SETTINGS)
            .await
            .map_err(replica_error)?;
        let position = lock_position(tx, queue, consumer)
            .await
            .on(SUBSCRIBER, "reading the worker position")?;
        let pause_requested: bool = position.get(0);
        let pause_at: Option<i64> = position.get(1);
        if pause_requested && pause_at.map_or(true, |at| batch.batch().prev_tick.0 >= at) {
            return Err(Box::new(Postpone::new("held by londiste compare", HOLD)));
        }
        let subscribed = self.subscribed(tx).await?;
        let seeded = self.seeded(tx).await?;
        let per_event = self.config.apply == ApplyMode::PerEvent
            || *self
                .per_event_batch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                == Some(batch.id());
        let mut pending: HashMap<String, TableBatch> = HashMap::new();
        let mut applied = Applied::new();
        let mut held = 0usize;
        let mut chunk = batch.next_chunk().await?;
        while let Some(events) = chunk {
            for event in &events {
                if seeded.contains(&event.txid) {
                    continue;
                }
                if event.ev_type.as_deref() == Some(EXECUTE_EVENT) {
                    // A barrier: what came before is applied with the old definitions.
                    let done = match flush_all(tx, &mut pending).await {
                        Ok(()) => self.execute(tx, event).await,
                        Err(err) => Err(err),
                    };
                    pending.clear();
                    held = 0;
                    done.map_err(|err| self.failed(err, batch.id()))?;
                    continue;
                }
                let Some(table) = event.extra1.as_deref() else {
                    continue;
                };
                let Some(sub) = subscribed.get(table) else {
                    continue;
                };
                match sub.state {
                    TableState::InCopy => {
                        return Err(Box::new(Postpone::new(
                            format!("table {table} is being copied"),
                            HOLD,
                        )))
                    }
                    TableState::CatchingUp
                        if sub
                            .copy_snapshot
                            .as_ref()
                            .is_some_and(|s| s.sees(event.txid)) =>
                    {
                        continue
                    }
                    _ => {}
                }
                let outcome = self
                    .event(provider, tx, &mut pending, sub, event, per_event)
                    .await;
                match outcome {
                    Ok((op, bytes)) => {
                        held += bytes;
                        match applied.get_mut(table) {
                            Some(counts) => counts[op as usize] += 1,
                            None => {
                                let mut counts = [0; 4];
                                counts[op as usize] = 1;
                                applied.insert(table.to_owned(), counts);
                            }
                        }
                    }
                    Err(err) => return Err(self.failed(err, batch.id())),
                }
                if held > self.config.memory_limit {
                    if let Err(err) = flush_all(tx, &mut pending).await {
                        return Err(self.failed(err, batch.id()));
                    }
                    held = 0;
                }
            }
            // This chunk's merged rows go to the subscriber while the provider reads the next
            // chunk: the two servers work at once. Flushes stay in event order, and a key's
            // events merge within a chunk (5,000 events by default) instead of a whole batch.
            let (next, flushed) = tokio::join!(batch.next_chunk(), flush_all(tx, &mut pending));
            if let Err(err) = flushed {
                return Err(self.failed(err, batch.id()));
            }
            held = 0;
            chunk = next?;
        }
        self.sync_sequences(batch).await?;
        self.finish_catch_up(batch, &subscribed, &seeded).await?;
        let cur_tick = batch.batch().cur_tick.0;
        tx.query_typed(
            SET_POSITION,
            &[
                (&queue, Type::TEXT),
                (&consumer, Type::TEXT),
                (&cur_tick, Type::INT8),
            ],
        )
        .await
        .on(SUBSCRIBER, "recording the worker position")?;
        self.record(&applied, started.elapsed());
        Ok(())
    }

    /// The batch's figures, to the `metrics` facade. They are recorded when the apply is done,
    /// just before the runner commits: a batch whose commit then fails is counted again when
    /// it comes back. (The runner's `batch` span, around this, carries the batch id, events and
    /// elapsed time.)
    fn record(&self, applied: &Applied, elapsed: Duration) {
        let (queue, consumer) = (self.config.queue.as_str(), self.consumer.as_str());
        for (table, counts) in applied {
            for op in Op::ALL {
                let count = counts[op as usize];
                if count > 0 {
                    metrics::counter!(
                        "pgq_londiste_applied_rows_total",
                        "queue" => queue.to_owned(),
                        "consumer" => consumer.to_owned(),
                        "table" => table.clone(),
                        "op" => op.letter()
                    )
                    .increment(count);
                }
            }
        }
        let labels = [
            ("queue", queue.to_owned()),
            ("consumer", consumer.to_owned()),
        ];
        metrics::counter!("pgq_londiste_batches_total", &labels).increment(1);
        metrics::histogram!("pgq_londiste_apply_seconds", &labels).record(elapsed.as_secs_f64());
        tracing::debug!(tables = applied.len(), "batch applied");
    }

    /// Turns an apply error into the handler's: a unique violation (never on the key, which
    /// the statements guard) makes the batch come again, applied event by event.
    fn failed(&self, err: LondisteError, batch_id: BatchId) -> HandlerError {
        self.forget_tables();
        if let LondisteError::Db { source, .. } = &err {
            if source.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                let mut slot = self
                    .per_event_batch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if *slot != Some(batch_id) {
                    *slot = Some(batch_id);
                    tracing::warn!(%batch_id, error = %source, "unique violation in a set-based apply: applying this batch event by event");
                    return Box::new(Postpone::new(
                        "unique violation: again event by event",
                        Duration::ZERO,
                    ));
                }
            }
        }
        Box::new(err)
    }

    /// Runs a script `londiste execute` queued, once per file name, and forgets the table
    /// definitions it may have changed.
    async fn execute(&self, tx: &Transaction<'_>, event: &Event) -> Result<()> {
        let file = event.extra1.as_deref().unwrap_or_default();
        let script = event.ev_data.as_deref().unwrap_or_default();
        let queue = self.config.queue.as_str();
        if !record_script(tx, SUBSCRIBER, queue, file, script).await? {
            tracing::info!(file, "executed here already: skipped");
            return Ok(());
        }
        self.forget_tables();
        // The script names objects as it did on the provider; the worker's own statements
        // name everything in full, under the pinned path restored after it.
        let path = event.extra2.as_deref().unwrap_or("public");
        tx.query_typed(
            "SELECT pg_catalog.set_config('search_path', $1, true)",
            &[(&path, Type::TEXT)],
        )
        .await
        .on(SUBSCRIBER, "setting the script's search_path")?;
        let ran = tx.batch_execute(script).await;
        tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
            .await
            .on(SUBSCRIBER, "pinning the search_path again")?;
        ran.map_err(|err| LondisteError::Execute {
            file: file.to_owned(),
            problem: format!(
                "it failed on the subscriber: {}",
                err.as_db_error()
                    .map_or_else(|| err.to_string(), |db| db.message().to_owned())
            ),
        })?;
        tracing::info!(file, "executed");
        Ok(())
    }

    /// The seed's transactions (`londiste_rs.seed_txid`), read by the first batch: a seed
    /// writes them before any worker of its subscriber runs. Kept after they are forgotten,
    /// as no later batch has events of theirs.
    async fn seeded(&self, tx: &Transaction<'_>) -> Result<Arc<HashSet<i64>>> {
        if let Some(txids) = self.seeded.get() {
            return Ok(Arc::clone(txids));
        }
        let txids: HashSet<i64> = tx
            .query_typed(SEED_TXIDS, &[(&self.config.queue.as_str(), Type::TEXT)])
            .await
            .on(SUBSCRIBER, "reading the seed position")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Arc::clone(self.seeded.get_or_init(|| Arc::new(txids))))
    }

    async fn subscribed(&self, tx: &Transaction<'_>) -> Result<HashMap<String, Subscribed>> {
        let queue = self.config.queue.as_str();
        let rows = tx
            .query_typed(STATES, &[(&queue, Type::TEXT)])
            .await
            .on(SUBSCRIBER, "reading table states")?;
        let mut tables = HashMap::with_capacity(rows.len());
        for row in rows {
            let table: String = row.get(0);
            let copy_snapshot = row
                .get::<_, Option<String>>(3)
                .map(|s| Snapshot::parse(&s))
                .transpose()
                .map_err(|problem| LondisteError::TableState {
                    table: table.clone(),
                    problem,
                })?;
            tables.insert(
                table,
                Subscribed {
                    dest: row.get(1),
                    state: row.try_get(2).on(SUBSCRIBER, "reading table states")?,
                    copy_snapshot,
                    condition: row.get(4),
                },
            );
        }
        Ok(tables)
    }

    /// Applies or merges one event of a subscribed table; returns its operation and the bytes
    /// it added to the merge.
    async fn event(
        &self,
        provider: &Transaction<'_>,
        tx: &Transaction<'_>,
        pending: &mut HashMap<String, TableBatch>,
        sub: &Subscribed,
        event: &Event,
        per_event: bool,
    ) -> Result<(Op, usize)> {
        let table = event.extra1.as_deref().unwrap_or_default();
        let dest = &self.dest(provider, tx, table, &sub.dest).await?;
        let ev_type = event.ev_type.as_deref().unwrap_or("");
        let bad = |problem: String| LondisteError::BadEvent {
            event_id: event.id.0,
            ev_type: ev_type.to_owned(),
            table: table.to_owned(),
            problem,
        };
        let (op, _) = parse_ev_type(ev_type).map_err(bad)?;
        if op == Op::Truncate {
            if let Some(mut merged) = pending.remove(table) {
                merged.flush(tx).await?;
            }
            truncate(tx, dest).await?;
            return Ok((op, 0));
        }
        let row = parse_urlencoded(event.ev_data.as_deref().unwrap_or(""))
            .map_err(bad)?
            .without(&dest.generated);
        let stale = pending
            .get(table)
            .is_some_and(|m| m.columns() != row.columns.as_slice());
        if stale {
            if let Some(mut merged) = pending.remove(table) {
                merged.flush(tx).await?;
            }
        }
        if !pending.contains_key(table) {
            let merged = TableBatch::new(Arc::clone(dest), &row.columns, sub.condition.clone())
                .map_err(bad)?;
            pending.insert(table.to_owned(), merged);
        }
        let Some(merged) = pending.get_mut(table) else {
            return Ok((op, 0));
        };
        let old_key = match (op, event.extra3.as_deref()) {
            (Op::Update, Some(old)) => Some(old_key(dest, old).map_err(bad)?),
            _ => None,
        };
        // A filtered table's statements check no row counts: applied merged, always.
        if per_event && sub.condition.is_none() {
            apply_one(tx, merged, op, &row.values, old_key.as_ref()).await?;
            return Ok((op, 0));
        }
        let before = merged.bytes();
        merged.merge(op, row.values, old_key).map_err(bad)?;
        Ok((op, merged.bytes().saturating_sub(before)))
    }

    /// Copies the provider's sequence values forward (never backward).
    async fn sync_sequences(&self, batch: &BatchHandle<'_, '_>) -> Result<()> {
        let queue = self.config.queue.as_str();
        let seqs = batch
            .tx()
            .query_typed(SEQS, &[(&queue, Type::TEXT)])
            .await
            .on(SUBSCRIBER, "reading sequences")?;
        for seq in seqs {
            let name: String = seq.get(0);
            let dest: String = seq.get(1);
            let value: Option<i64> = batch
                .queue_tx()
                .query_typed_one(PROVIDER_SEQ, &[(&name, Type::TEXT)])
                .await
                .on(PROVIDER, format!("reading sequence {name}"))?
                .get(0);
            let Some(value) = value else { continue };
            batch
                .tx()
                .query_typed(SYNC_SEQ, &[(&dest, Type::TEXT), (&value, Type::INT8)])
                .await
                .on(SUBSCRIBER, format!("setting sequence {dest}"))?;
            batch
                .tx()
                .query_typed(
                    SEQ_SEEN,
                    &[
                        (&queue, Type::TEXT),
                        (&name, Type::TEXT),
                        (&value, Type::INT8),
                    ],
                )
                .await
                .on(SUBSCRIBER, "recording a sequence value")?;
        }
        Ok(())
    }

    /// A catching-up table is `ok` once the batch's end tick sees every transaction its copy
    /// saw: later batches hold no event the copy already has. (Transactions running through
    /// both snapshots, on any database of the server, do not hold it back.) Likewise a seed's
    /// transactions are forgotten once the end tick sees them all.
    async fn finish_catch_up(
        &self,
        batch: &BatchHandle<'_, '_>,
        subscribed: &HashMap<String, Subscribed>,
        seeded: &HashSet<i64>,
    ) -> Result<()> {
        let catching_up: Vec<(&String, &Snapshot)> = subscribed
            .iter()
            .filter(|(_, s)| s.state == TableState::CatchingUp)
            .filter_map(|(t, s)| s.copy_snapshot.as_ref().map(|snap| (t, snap)))
            .collect();
        let forget_seed = !seeded.is_empty() && !self.seed_forgotten.load(Ordering::Relaxed);
        if catching_up.is_empty() && !forget_seed {
            return Ok(());
        }
        let queue = self.config.queue.as_str();
        let cur_tick = batch.batch().cur_tick.0;
        let tick: Option<String> = batch
            .queue_tx()
            .query_typed_opt(
                TICK_SNAPSHOT,
                &[(&queue, Type::TEXT), (&cur_tick, Type::INT8)],
            )
            .await
            .on(PROVIDER, "reading the batch's end tick")?
            .and_then(|r| r.get(0));
        let Some(tick) = tick else { return Ok(()) };
        let tick = Snapshot::parse(&tick).map_err(|problem| LondisteError::TableState {
            table: format!("(tick {cur_tick})"),
            problem,
        })?;
        if forget_seed && seeded.iter().all(|&t| tick.sees(t)) {
            batch
                .tx()
                .query_typed(SEED_DONE, &[(&queue, Type::TEXT)])
                .await
                .on(SUBSCRIBER, "forgetting the seed's transactions")?;
            self.seed_forgotten.store(true, Ordering::Relaxed);
            tracing::info!("past every transaction the seed holds");
        }
        for (table, snapshot) in catching_up {
            if tick.covers(snapshot) {
                batch
                    .tx()
                    .query_typed(SET_OK, &[(&queue, Type::TEXT), (table, Type::TEXT)])
                    .await
                    .on(SUBSCRIBER, "marking a table ok")?;
                tracing::info!(table = %table, "caught up: ok");
            }
        }
        Ok(())
    }
}

/// The primary key before an update that changed it, from `ev_extra3` (the trigger's
/// `keychange` argument), in the subscriber's key order.
fn old_key(dest: &TableInfo, data: &str) -> Result<Key, String> {
    let row = parse_urlencoded(data)?;
    dest.pkey
        .iter()
        .map(|k| {
            row.get(k)
                .cloned()
                .ok_or_else(|| format!("ev_extra3 {data:?} has no key column {k}"))
        })
        .collect()
}

/// The worker's position row, locked until the transaction ends; made first when missing.
async fn lock_position(
    tx: &Transaction<'_>,
    queue: &str,
    consumer: &str,
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&queue, Type::TEXT), (&consumer, Type::TEXT)];
    if let Some(position) = tx.query_typed_opt(POSITION, &names).await? {
        return Ok(position);
    }
    tx.query_typed(ADD_POSITION, &names).await?;
    tx.query_typed_one(POSITION, &names).await
}

async fn flush_all(tx: &Transaction<'_>, pending: &mut HashMap<String, TableBatch>) -> Result<()> {
    for merged in pending.values_mut() {
        if !merged.is_empty() {
            merged.flush(tx).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Consumer for Replayer {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        self.replay(batch).await
    }

    /// Not while `compare` holds the worker: it must stop exactly at its tick, which a batch
    /// spanning ticks could pass. The position row stays locked until the batch commits, so
    /// `compare` cannot ask for a hold (and make its tick) while this batch is taken.
    async fn may_span_ticks(&self, work: &Transaction<'_>) -> Result<bool, tokio_postgres::Error> {
        let (queue, consumer) = (self.config.queue.as_str(), self.consumer.as_str());
        let position = lock_position(work, queue, consumer).await?;
        Ok(!position.get::<_, bool>(0))
    }

    async fn process_event(&self, _: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        Err(format!(
            "event {}: londiste applies whole batches, never single events",
            event.id.0
        )
        .into())
    }
}

/// The replay worker for one [`Config`].
#[derive(Debug)]
pub struct Worker {
    runner: RemoteRunner,
    config: Config,
    consumer: ConsumerName,
    board: Arc<Board>,
}

impl Worker {
    /// Connects to the provider (the consumer's dedicated connection and lock) and to the
    /// subscriber; the consumer name is [`Config::consumer_name`]. Both sessions pin
    /// `search_path = pg_catalog, pg_temp` ([`pgq_core::Dsn::with_pinned_search_path`]): what
    /// either database's owner sets as the default path never reaches the worker, which names
    /// every table it writes in full.
    ///
    /// # Errors
    ///
    /// [`LondisteError::Consumer`]: unknown queue, a second worker with the same consumer
    /// name (`ConsumerBusy`), connection failures; [`LondisteError::SubscriberNotInitialized`].
    pub async fn connect(config: &Config) -> Result<Worker> {
        let consumer = config
            .consumer_name(&config.subscriber.connect().await?)
            .await?;
        let consumer_config = ConsumerConfig::builder(config.queue.clone(), consumer.clone())
            .chunk_size(config.chunk_size)
            .catch_up_events(config.catch_up_events)
            .batch_failures_before_per_event(u32::MAX)
            .poll_interval(Duration::from_secs(1))
            .build();
        let replayer = Replayer {
            config: config.clone(),
            consumer: consumer.clone(),
            tables: Mutex::new(HashMap::new()),
            per_event_batch: Mutex::new(None),
            seeded: OnceLock::new(),
            seed_forgotten: AtomicBool::new(false),
        };
        let runner = RemoteRunner::connect(
            &config.provider.with_pinned_search_path(),
            &config.subscriber.with_pinned_search_path(),
            consumer_config,
            Arc::new(replayer),
        )
        .await?;
        Ok(Worker {
            runner,
            board: Arc::new(Board::new(config, &consumer)),
            config: config.clone(),
            consumer,
        })
    }

    /// Serves `/metrics`, `/health` and the status page on `monitor` from what this worker
    /// observes while it [`run`](Self::run)s, until `cancel` fires. Bind the monitor before
    /// connecting the worker ([`Monitor::bind`]): a bad or taken address is an error before
    /// anything starts.
    ///
    /// [`Monitor::bind`]: pgq_core::monitor::Monitor::bind
    pub fn serve_monitor(
        &self,
        monitor: pgq_core::monitor::Monitor,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        monitor.serve(Arc::clone(&self.board), cancel)
    }

    /// Applies the next batch; `Ok(None)` when there is none.
    ///
    /// # Errors
    ///
    /// [`LondisteError::Consumer`] when the batch failed (rolled back, nothing applied), was
    /// postponed (a table it touches is being copied, `compare` holds the worker), or a
    /// connection failed.
    pub async fn process_next_batch(&mut self) -> Result<Option<BatchReport>> {
        Ok(self.runner.process_next_batch().await?)
    }

    /// Runs until `cancel` fires: waits for ticks, applies batches, retries failures with
    /// backoff, reconnects after lost connections; stops between batches. Meanwhile, every
    /// [`Config::observe_period`], it reads its lag, pending events and tables over two
    /// connections of its own, for the gauges, `/health` and the status page.
    ///
    /// # Errors
    ///
    /// Only errors no retry can fix (unknown queue or consumer).
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let observing = cancel.child_token();
        let observer = tokio::spawn(observe(
            self.board,
            self.config,
            self.consumer,
            observing.clone(),
        ));
        let done = self.runner.run(cancel).await;
        observing.cancel();
        let _ = observer.await;
        Ok(done?)
    }
}
