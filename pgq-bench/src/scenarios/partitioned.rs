//! Scenario `partitioned`: a queue partitioned by key over 1, 2 and 4 databases, each in its own
//! private cluster, behind a PL/Proxy proxy database, against calling the keyed inserts of one
//! database directly.
//!
//! Producers send bulk calls of 100 events of distinct keys (`insert_event_bulk_by_key`, split
//! by key), bulk calls of 100 events of one key (`insert_event_bulk_for_key`, not split) or
//! single events (`insert_event_by_key`). Each block measures the throughput and the CPU the backends spent:
//! those of the proxy database (the producers' sessions) and those of the partition databases
//! (PL/Proxy's sessions, or the producers' own when calling directly). From the CPU per event
//! come the proxy's overhead and a throughput model for N servers: on one 2-core machine a second
//! partition adds no CPU, so raw scaling here says little, and the model is the figure. Then the
//! same producers run while the `pgq-ticker` daemon ticks every partition and
//! `pgq_consumer::run_partitioned` consumes them all, until every event is handled.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pgq_consumer::{run_partitioned, CancellationToken, ConsumerConfig};
use pgq_core::partition::setup_proxy;
use pgq_core::{quote_ident, ConsumerName, Dsn, Line, QueueName, QueueSetting};
use pgq_testkit::{Cluster, ClusterOptions};
use tokio::task::JoinSet;
use tokio_postgres::{Client, Statement};

use crate::harness::{backend_pids, Bench, Counter, CpuClock, Daemon, WorkDir};
use crate::report::{Limit, Measures, Ratio, Report, Sample, Series};

/// The queue, on every partition.
const QUEUE: &str = "bench";
/// The partition database's name, in every partition cluster.
const PART_DB: &str = "pgq_bench_part";
/// Partition counts measured through the proxy; partition clusters started.
const COUNTS: [usize; 3] = [1, 2, 4];
/// Concurrent producer sessions per variant.
const PRODUCERS: usize = 2;
/// Distinct keys per producer; a bulk call carries each once.
const KEYS: usize = 100;
/// Events per bulk call.
const BULK_EVENTS: usize = 100;
/// Every event's `ev_type`.
const EV_TYPE: &str = "t";
/// Bytes of `ev_data` per event.
const DATA_BYTES: usize = 100;
/// The ticker daemon's period, and the queues' `ticker_max_lag`, while consuming.
const TICKER_PERIOD: Duration = Duration::from_millis(50);
/// How long a produce + consume block may take to be fully consumed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The target: proxy + partition CPU per event through the proxy, over the partition's
/// CPU per event called directly, at most 30 % above.
const OVERHEAD_MAX_PCT: f64 = 30.0;
/// Partition server counts the model is printed for.
const MODEL_SERVERS: [u32; 5] = [1, 2, 4, 8, 16];

// language=SQL
const DIRECT_BULK: &str = "SELECT pgq.insert_event_bulk_by_key($1, $2, $3, $4)";
/// What the partition runs for `pgq_proxy.insert_event_bulk_for_key`.
// language=SQL
const DIRECT_KEY_BULK: &str = "SELECT pg_catalog.array_agg(id ORDER BY id) \
     FROM pgq.insert_event_bulk_by_key($1, pg_catalog.array_fill($2::text, \
     ARRAY[pg_catalog.cardinality($3::text[])]), $3, $4) AS id";
// language=SQL
const DIRECT_SINGLE: &str = "SELECT pgq.insert_event_by_key($1, $2, $3, $4)";
// language=SQL
const PROXY_BULK: &str = "SELECT pgq_proxy.insert_event_bulk_by_key($1, $2, $3, $4)";
// language=SQL
const PROXY_KEY_BULK: &str = "SELECT pgq_proxy.insert_event_bulk_for_key($1, $2, $3, $4)";
// language=SQL
const PROXY_SINGLE: &str = "SELECT pgq_proxy.insert_event_by_key($1, $2, $3, $4)";
/// Events ever inserted into the queue: its event sequence's last value.
// language=SQL
const EVENTS_SO_FAR: &str = "SELECT coalesce(pg_catalog.pg_sequence_last_value(\
     q.queue_event_seq::regclass), 0) FROM pgq.queue q WHERE q.queue_name = $1";
// language=SQL
const PLPROXY_AVAILABLE: &str =
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = 'plproxy')";
/// Whether the queue's newest tick covers every event inserted so far.
// language=SQL
const TICKED: &str = "SELECT t.tick_event_seq >= coalesce(pg_catalog.pg_sequence_last_value(\
     q.queue_event_seq::regclass), 0) FROM pgq.queue q JOIN pgq.tick t ON t.tick_queue = q.queue_id \
     WHERE q.queue_name = $1 ORDER BY t.tick_id DESC LIMIT 1";

const PRODUCE: &str = "produce";
const PRODUCE_CONSUME: &str = "produce + consume";
const PROXY_METRIC: &str = "proxy backends µs/event";
const PARTITION_METRIC: &str = "partition backends µs/event";
/// The variant of the model's figures, made from the `proxy ×1` CPU per event.
const MODEL: &str = "model from proxy ×1";

/// How the events of a call travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// [`BULK_EVENTS`] events of distinct keys in one call.
    Bulk,
    /// [`BULK_EVENTS`] events of one key in one call.
    KeyBulk,
    /// One event per call.
    Single,
}

impl Call {
    const ALL: [Call; 3] = [Call::Bulk, Call::KeyBulk, Call::Single];
    /// The calls the overhead target applies to.
    const BULKS: [Call; 2] = [Call::Bulk, Call::KeyBulk];

    fn name(self) -> &'static str {
        match self {
            Call::Bulk => "bulk of 100",
            Call::KeyBulk => "bulk of 100, one key",
            Call::Single => "single event",
        }
    }

    fn events_per_call(self) -> usize {
        match self {
            Call::Bulk | Call::KeyBulk => BULK_EVENTS,
            Call::Single => 1,
        }
    }
}

/// Where the producers send their calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The keyed insert of partition 0's database, no proxy.
    Direct,
    /// The proxy database over this many partitions.
    Proxy(usize),
}

impl Route {
    fn all() -> impl Iterator<Item = Route> {
        std::iter::once(Route::Direct).chain(COUNTS.into_iter().map(Route::Proxy))
    }

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Proxy(1) => "proxy ×1",
            Route::Proxy(2) => "proxy ×2",
            Route::Proxy(_) => "proxy ×4",
        }
    }

    /// The partition databases the events land on.
    fn partitions(self) -> usize {
        match self {
            Route::Direct => 1,
            Route::Proxy(n) => n,
        }
    }

    fn sql(self, call: Call) -> &'static str {
        match (self, call) {
            (Route::Direct, Call::Bulk) => DIRECT_BULK,
            (Route::Direct, Call::KeyBulk) => DIRECT_KEY_BULK,
            (Route::Direct, Call::Single) => DIRECT_SINGLE,
            (Route::Proxy(_), Call::Bulk) => PROXY_BULK,
            (Route::Proxy(_), Call::KeyBulk) => PROXY_KEY_BULK,
            (Route::Proxy(_), Call::Single) => PROXY_SINGLE,
        }
    }
}

/// The series label of a route and a call.
fn label(route: Route, call: Call) -> &'static str {
    match (route, call) {
        (Route::Direct, Call::Bulk) => "direct, bulk of 100",
        (Route::Direct, Call::KeyBulk) => "direct, bulk of 100, one key",
        (Route::Direct, Call::Single) => "direct, single event",
        (Route::Proxy(1), Call::Bulk) => "proxy ×1, bulk of 100",
        (Route::Proxy(1), Call::KeyBulk) => "proxy ×1, bulk of 100, one key",
        (Route::Proxy(1), Call::Single) => "proxy ×1, single event",
        (Route::Proxy(2), Call::Bulk) => "proxy ×2, bulk of 100",
        (Route::Proxy(2), Call::KeyBulk) => "proxy ×2, bulk of 100, one key",
        (Route::Proxy(2), Call::Single) => "proxy ×2, single event",
        (Route::Proxy(_), Call::Bulk) => "proxy ×4, bulk of 100",
        (Route::Proxy(_), Call::KeyBulk) => "proxy ×4, bulk of 100, one key",
        (Route::Proxy(_), Call::Single) => "proxy ×4, single event",
    }
}

/// Events per block.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    bulk: usize,
    single: usize,
}

impl Sizes {
    fn new(small: bool) -> Sizes {
        if small {
            Sizes {
                bulk: 2_000,
                single: 200,
            }
        } else {
            Sizes {
                bulk: 40_000,
                single: 4_000,
            }
        }
    }

    fn events(self, call: Call) -> usize {
        match call {
            Call::Bulk | Call::KeyBulk => self.bulk,
            Call::Single => self.single,
        }
    }
}

/// How the figures are made.
fn method(sizes: Sizes, runs: u32, settings: &str) -> Vec<String> {
    let largest = COUNTS[COUNTS.len() - 1];
    vec![
        format!(
            "Partitions: {largest} private clusters on this machine (settings: {settings}), each \
             with database `{PART_DB}` holding our schema and queue `{QUEUE}`. The proxy: a \
             private cluster of its own with one database per partition count (1, 2, 4), each \
             made by `pgq_core::partition::setup_proxy` with as many logical partitions as \
             databases, connecting to the partitions over TCP. `direct` calls partition 0's \
             database with no proxy."
        ),
        format!(
            "Producers: {PRODUCERS} sessions per variant, each with {KEYS} keys of its own; a \
             `bulk of 100` call sends every key once (`insert_event_bulk_by_key(queue, keys[], \
             types[], datas[])`, which PL/Proxy splits by key: about 100/N events per partition \
             call), a `bulk of 100, one key` call 100 events of one of its keys \
             (`insert_event_bulk_for_key(queue, key, types[], datas[])`, one partition call, \
             not split; direct: the same query the partition runs for it), a `single event` \
             call one event (`insert_event_by_key`), each call its own \
             transaction returning its event ids to the producer, as the partition returns them \
             to PL/Proxy; {DATA_BYTES}-byte ev_data. A block is {} events in bulk calls or {} \
             in single calls, shared by the producers.",
            sizes.bulk, sizes.single
        ),
        format!(
            "{runs} run(s); in each, first every `{PRODUCE}` block (variants in the order \
             listed, no ticker, no consumer), then every `{PRODUCE_CONSUME}` block; figures are \
             medians over the runs. Every block checks the events that landed (the queues' \
             event sequences)."
        ),
        format!(
            "CPU per event (`{PRODUCE}` blocks): the on-CPU time (/proc schedstat) of the client \
             backends of the proxy database (`{PROXY_METRIC}`) and of the partition databases \
             (`{PARTITION_METRIC}`) over the block, divided by its events (client backends only: \
             WAL writer, checkpointer and autovacuum are not counted). Proxy overhead = \
             (proxy + partition µs/event through the proxy) / (partition µs/event direct) − 1, \
             per run, target ≤ {OVERHEAD_MAX_PCT:.0} % for both bulk calls at every partition count \
             (×1 compares the same work at the partition, one call of {BULK_EVENTS} events; \
             ×2 and ×4 add what splitting a call into smaller partition calls costs); single \
             events have no target."
        ),
        format!(
            "`{PRODUCE_CONSUME}`: the same producers while one `pgq-ticker run` (period {} ms, \
             queues' ticker_max_lag the same) serves all {largest} partitions and \
             `run_partitioned` over the variant's partitions (a consumer registered for the \
             block) counts the events; the clock runs from the first call until the last event \
             is handled.",
            TICKER_PERIOD.as_millis()
        ),
        format!(
            "Model (`{MODEL}`, events/s per core of each server): a partition server does \
             10⁶ / (partition µs/event) events per second per core, a proxy server 10⁶ / \
             (proxy µs/event), and with N partition servers and P proxy servers events/s = \
             min(N × partition, P × proxy); the direct figure is one server without a proxy. \
             It takes the `proxy ×1` CPU per event (every partition call carries {BULK_EVENTS} \
             events, or one), which holds at any N when producers' bulk calls grow with N \
             ({BULK_EVENTS} × N events); a bulk call of {BULK_EVENTS} split N ways costs more \
             per event at the partitions (the `split {largest} ways` row). It assumes CPU is \
             the limit (fsync is off here: with it each partition call's commit adds a WAL \
             flush, which larger calls amortize), keys spread evenly, linear scaling with cores, \
             and producers, ticker and consumers elsewhere (consuming's CPU at the partitions \
             is not in it)."
        ),
    ]
}

/// Runs the scenario on private clusters of its own (the bench's server is not used); they
/// are stopped and removed when dropped, also after a failure.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let plan = bench.plan;
    let sizes = Sizes::new(plan.small);
    let ticker_bin = bench.ticker_binary()?;
    let work_dir = WorkDir::new("partitioned")?;
    let layout = Layout::start().await?;
    let notes = method(sizes, plan.runs, &layout.proxy.cluster.settings_summary());
    let clock = CpuClock::new().await;

    let mut variants = Vec::new();
    for call in Call::ALL {
        for route in Route::all() {
            variants.push(Variant::connect(&layout, route, call).await?);
        }
    }
    for v in &variants {
        v.warm_up(&layout).await?;
    }

    let mut produce = vec![Vec::new(); variants.len()];
    let mut consumed = vec![Vec::new(); variants.len()];
    let mut cpu = Measures::default();
    let mut overheads = Measures::default();
    let mut model = Measures::default();
    for run in 1..=plan.runs {
        let mut per_event = Vec::new();
        for (i, v) in variants.iter().enumerate() {
            let (sample, used) = v.produce_block(&layout, &clock, sizes, run).await?;
            tracing::info!(
                run,
                variant = label(v.route, v.call),
                events_per_sec = sample.events_per_sec.round(),
                proxy_us = used.proxy_us,
                partition_us = used.partition_us,
                "produce block done"
            );
            let what = format!("CPU per event, {}", v.call.name());
            if let Route::Proxy(_) = v.route {
                cpu.push(&what, v.route.name(), PROXY_METRIC, used.proxy_us);
            }
            cpu.push(&what, v.route.name(), PARTITION_METRIC, used.partition_us);
            produce[i].push(sample);
            per_event.push((v.route, v.call, used));
        }
        derive(&per_event, &mut overheads, &mut model)?;

        let dsns: Vec<Dsn> = layout.partitions.iter().map(|p| p.dsn.clone()).collect();
        let ours = backend_pids(&layout.partitions[0].node.watch, PART_DB).await?;
        let mut daemon =
            Daemon::ours_over(&ticker_bin, &dsns, TICKER_PERIOD, work_dir.path()).await?;
        daemon
            .wait_connected(&layout.partitions[0].node.watch, &ours)
            .await?;
        for (i, v) in variants.iter().enumerate() {
            let sample = v.consume_block(&layout, sizes, run, i).await?;
            tracing::info!(
                run,
                variant = label(v.route, v.call),
                events_per_sec = sample.events_per_sec.round(),
                "produce + consume block done"
            );
            consumed[i].push(sample);
        }
        daemon
            .stop_beside(&layout.partitions[0].node.watch, &ours)
            .await?;
    }

    let mut series = Vec::new();
    for (shape, samples) in [(PRODUCE, produce), (PRODUCE_CONSUME, consumed)] {
        for (v, samples) in variants.iter().zip(samples) {
            series.push(Series {
                shape,
                variant: label(v.route, v.call),
                reps: u32::try_from(sizes.events(v.call) / v.call.events_per_call())?,
                events_per_rep: u64::try_from(v.call.events_per_call())?,
                samples,
            });
        }
    }
    let overheads = overheads.into_vec();
    let limits = Call::BULKS
        .into_iter()
        .flat_map(|call| COUNTS.map(|n| overhead_label(Route::Proxy(n), call)))
        .map(|what| {
            Limit::of(
                format!("{what} (%)"),
                overheads.iter().find(|m| m.what == what),
                OVERHEAD_MAX_PCT,
            )
        })
        .collect();
    let mut measures = cpu.into_vec();
    measures.extend(overheads);
    measures.extend(model.into_vec());
    let ratios = ratios(&series);
    Ok(Report {
        scenario: "partitioned",
        notes,
        series,
        ratios,
        measures,
        limits,
    })
}

/// The CPU per event of one `produce` block.
#[derive(Debug, Clone, Copy)]
struct Used {
    proxy_us: f64,
    partition_us: f64,
}

fn overhead_label(route: Route, call: Call) -> String {
    format!(
        "proxy overhead per event, {}, {}",
        route.name(),
        call.name()
    )
}

/// One run's overheads and model, from its CPU per event.
fn derive(
    per_event: &[(Route, Call, Used)],
    overheads: &mut Measures,
    model: &mut Measures,
) -> Result<()> {
    let find = |route: Route, call: Call| {
        per_event
            .iter()
            .find(|(r, c, _)| *r == route && *c == call)
            .map(|(_, _, used)| *used)
            .with_context(|| format!("no CPU figure for {}", label(route, call)))
    };
    let largest = Route::Proxy(COUNTS[COUNTS.len() - 1]);
    for call in Call::ALL {
        let direct = find(Route::Direct, call)?;
        for n in COUNTS {
            let used = find(Route::Proxy(n), call)?;
            let pct = ((used.proxy_us + used.partition_us) / direct.partition_us - 1.0) * 100.0;
            overheads.push(
                &overhead_label(Route::Proxy(n), call),
                Route::Proxy(n).name(),
                "%",
                pct,
            );
        }
        // Producers whose proxy calls grow with N (100 × N events) keep every partition call
        // at the size of the ×1 calls, so the ×1 figures hold at every N.
        let base = find(Route::Proxy(1), call)?;
        let (partition, proxy) = (1e6 / base.partition_us, 1e6 / base.proxy_us);
        let per_core = "events/s per core";
        model.push(
            &format!("model, 1 server without proxy, {}", call.name()),
            Route::Direct.name(),
            per_core,
            1e6 / direct.partition_us,
        );
        model.push(
            &format!("model, partition server, {}", call.name()),
            MODEL,
            per_core,
            partition,
        );
        model.push(
            &format!("model, proxy server, {}", call.name()),
            MODEL,
            per_core,
            proxy,
        );
        if call == Call::Bulk {
            let split = find(largest, call)?;
            model.push(
                &format!(
                    "model, partition server, bulk of 100 split {} ways",
                    largest.partitions()
                ),
                largest.name(),
                per_core,
                1e6 / split.partition_us,
            );
        }
        for servers in MODEL_SERVERS {
            let what = format!("model, {servers} partition servers, {}", call.name());
            let servers = f64::from(servers);
            model.push(
                &what,
                MODEL,
                "events/s per core, 1 proxy server",
                (servers * partition).min(proxy),
            );
            model.push(
                &what,
                MODEL,
                "proxy servers to keep up",
                (servers * partition / proxy).ceil(),
            );
        }
    }
    Ok(())
}

/// Throughput through the proxy over throughput direct, per call and partition count.
fn ratios(series: &[Series]) -> Vec<Ratio> {
    let find = |shape: &str, route: Route, call: Call| {
        series
            .iter()
            .find(|s| s.shape == shape && s.variant == label(route, call))
    };
    let mut ratios = Vec::new();
    for shape in [PRODUCE, PRODUCE_CONSUME] {
        for call in Call::ALL {
            for n in COUNTS {
                ratios.push(Ratio::of(
                    format!(
                        "{} / {} ({shape}, events/s)",
                        label(Route::Proxy(n), call),
                        label(Route::Direct, call)
                    ),
                    find(shape, Route::Proxy(n), call),
                    find(shape, Route::Direct, call),
                    None,
                ));
            }
        }
    }
    ratios
}

/// A private cluster with a session on its `postgres` database for listing backends.
struct Node {
    cluster: Cluster,
    watch: Client,
}

impl Node {
    async fn start() -> Result<Node> {
        let cluster = Cluster::start(ClusterOptions {
            listen_tcp: true,
            ..ClusterOptions::default()
        })
        .await
        .context("starting a private cluster")?;
        let watch = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
        Ok(Node { cluster, watch })
    }

    /// Creates database `name` and returns its TCP connection settings.
    async fn create_db(&self, name: &str) -> Result<Dsn> {
        self.watch
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let tcp = self
            .cluster
            .tcp_dsn(name)
            .context("the private cluster does not listen on TCP")?;
        Ok(Dsn::parse(&tcp)?)
    }
}

/// A partition: its cluster and its database with the queue.
struct Partition {
    node: Node,
    dsn: Dsn,
    /// A session on the partition database, for counting and registering.
    client: Client,
}

/// The partition clusters and the proxy's cluster with one proxy database per partition count.
struct Layout {
    partitions: Vec<Partition>,
    proxy: Node,
    /// The proxy database over `COUNTS[i]` partitions.
    proxy_dbs: Vec<Dsn>,
}

impl Layout {
    async fn start() -> Result<Layout> {
        let count = COUNTS[COUNTS.len() - 1];
        let mut starting = JoinSet::new();
        for i in 0..=count {
            starting.spawn(async move { Ok::<_, anyhow::Error>((i, Node::start().await?)) });
        }
        let mut nodes = Vec::new();
        while let Some(started) = starting.join_next().await {
            nodes.push(started??);
        }
        nodes.sort_by_key(|(i, _)| *i);
        let mut nodes = nodes.into_iter().map(|(_, node)| node);
        let proxy = nodes.next().context("no proxy cluster")?;
        let available: bool = proxy.watch.query_one(PLPROXY_AVAILABLE, &[]).await?.get(0);
        if !available {
            bail!("PL/Proxy is not installed for this PostgreSQL (Debian: postgresql-15-plproxy)");
        }
        let queue = QueueName::new(QUEUE)?;
        let mut partitions = Vec::new();
        for node in nodes {
            let dsn = node.create_db(PART_DB).await?;
            let mut client = dsn.connect().await?;
            pgq_core::install(&mut client, &[Line::Pgq])
                .await
                .context("installing our pgq schema on a partition")?;
            pgq_core::create_queue(&client, &queue).await?;
            pgq_core::set_queue_config(&client, &queue, QueueSetting::TickerMaxLag(TICKER_PERIOD))
                .await?;
            partitions.push(Partition { node, dsn, client });
        }
        let mut proxy_dbs = Vec::new();
        for n in COUNTS {
            let dsn = proxy.create_db(&format!("pgq_bench_proxy_{n}")).await?;
            let mut client = dsn.connect().await?;
            let targets: Vec<String> = partitions[..n].iter().map(|p| p.dsn.conninfo()).collect();
            setup_proxy(&mut client, &targets, u32::try_from(n)?)
                .await
                .with_context(|| format!("making the proxy over {n} partitions"))?;
            proxy_dbs.push(dsn);
        }
        Ok(Layout {
            partitions,
            proxy,
            proxy_dbs,
        })
    }

    /// The database a route's producers connect to.
    fn entry(&self, route: Route) -> Result<&Dsn> {
        match route {
            Route::Direct => Ok(&self.partitions[0].dsn),
            Route::Proxy(n) => COUNTS
                .iter()
                .position(|&c| c == n)
                .map(|i| &self.proxy_dbs[i])
                .with_context(|| format!("no proxy over {n} partitions")),
        }
    }

    /// Events ever inserted into the queue on the first `partitions` partitions.
    async fn events(&self, partitions: usize) -> Result<i64> {
        let mut sum = 0;
        for p in &self.partitions[..partitions] {
            let n: i64 = p.client.query_one(EVENTS_SO_FAR, &[&QUEUE]).await?.get(0);
            sum += n;
        }
        Ok(sum)
    }

    /// The client backends of a route: at the proxy and at its partitions.
    async fn backends(&self, route: Route) -> Result<(BTreeSet<i32>, BTreeSet<i32>)> {
        let proxy = match route {
            Route::Direct => BTreeSet::new(),
            Route::Proxy(_) => backend_pids(&self.proxy.watch, self.entry(route)?.dbname()).await?,
        };
        let mut partition = BTreeSet::new();
        for p in &self.partitions[..route.partitions()] {
            partition.extend(backend_pids(&p.node.watch, PART_DB).await?);
        }
        Ok((proxy, partition))
    }
}

/// A producer's session, statement and payload.
struct Producer {
    client: Client,
    stmt: Statement,
    keys: Vec<String>,
    types: Vec<&'static str>,
    datas: Vec<String>,
}

impl Producer {
    async fn connect(dsn: &Dsn, route: Route, call: Call, index: usize) -> Result<Producer> {
        let client = dsn.connect().await?;
        let stmt = client
            .prepare(route.sql(call))
            .await
            .with_context(|| format!("preparing {}", label(route, call)))?;
        Ok(Producer {
            client,
            stmt,
            keys: (0..KEYS).map(|k| format!("p{index}-k{k}")).collect(),
            types: vec![EV_TYPE; KEYS],
            datas: vec!["x".repeat(DATA_BYTES); KEYS],
        })
    }

    /// Makes `calls` calls of `call`, one transaction each, and checks what each inserted.
    async fn produce(&self, call: Call, calls: usize) -> Result<()> {
        for i in 0..calls {
            match call {
                Call::Bulk => {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                        [&QUEUE, &self.keys, &self.types, &self.datas];
                    let ids = self.client.query(&self.stmt, &params).await?.len();
                    ensure!(ids == BULK_EVENTS, "a bulk call returned {ids} event ids");
                }
                Call::KeyBulk => {
                    let key = &self.keys[i % KEYS];
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                        [&QUEUE, key, &self.types, &self.datas];
                    let ids: Vec<i64> = self.client.query_one(&self.stmt, &params).await?.get(0);
                    ensure!(
                        ids.len() == BULK_EVENTS,
                        "a one-key bulk call returned {} event ids",
                        ids.len()
                    );
                }
                Call::Single => {
                    let key = &self.keys[i % KEYS];
                    self.client
                        .query_one(&self.stmt, &[&QUEUE, key, &EV_TYPE, &self.datas[0]])
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// A route and a call, with its producers connected.
struct Variant {
    route: Route,
    call: Call,
    producers: Vec<Arc<Producer>>,
}

impl Variant {
    async fn connect(layout: &Layout, route: Route, call: Call) -> Result<Variant> {
        let dsn = layout.entry(route)?;
        let mut producers = Vec::new();
        for index in 0..PRODUCERS {
            producers.push(Arc::new(Producer::connect(dsn, route, call, index).await?));
        }
        Ok(Variant {
            route,
            call,
            producers,
        })
    }

    /// A few calls per producer, so PL/Proxy's sessions to the partitions exist before any
    /// block lists the backends, and caches are warm.
    async fn warm_up(&self, layout: &Layout) -> Result<()> {
        self.produce(layout, 10 * self.call.events_per_call() * PRODUCERS)
            .await
            .map(|_| ())
    }

    /// Has the producers insert `events` events together; returns the wall-clock seconds,
    /// having checked that the events landed.
    async fn produce(&self, layout: &Layout, events: usize) -> Result<f64> {
        let per_producer = events / PRODUCERS / self.call.events_per_call();
        let before = layout.events(self.route.partitions()).await?;
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for producer in &self.producers {
            let (producer, call) = (Arc::clone(producer), self.call);
            tasks.spawn(async move { producer.produce(call, per_producer).await });
        }
        while let Some(done) = tasks.join_next().await {
            done?.with_context(|| format!("producing ({})", label(self.route, self.call)))?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let landed = layout.events(self.route.partitions()).await? - before;
        let expected = per_producer * PRODUCERS * self.call.events_per_call();
        ensure!(
            usize::try_from(landed).ok() == Some(expected),
            "{}: {landed} events landed, {expected} sent",
            label(self.route, self.call)
        );
        Ok(seconds)
    }

    /// One `produce` block, with the CPU its backends used per event.
    async fn produce_block(
        &self,
        layout: &Layout,
        clock: &CpuClock,
        sizes: Sizes,
        run: u32,
    ) -> Result<(Sample, Used)> {
        let events = sizes.events(self.call);
        let me = std::process::id();
        let (proxy, partition) = layout.backends(self.route).await?;
        let proxy_start = clock.snapshot(me, &proxy)?;
        let partition_start = clock.snapshot(me, &partition)?;
        let seconds = self.produce(layout, events).await?;
        let proxy_end = clock.snapshot(me, &proxy)?;
        let partition_end = clock.snapshot(me, &partition)?;
        let (proxy_now, partition_now) = layout.backends(self.route).await?;
        let proxy_newer = proxy_now.difference(&proxy).copied().collect();
        let partition_newer = partition_now.difference(&partition).copied().collect();
        let per_event = |seconds: f64| seconds * 1e6 / events as f64;
        let used = Used {
            proxy_us: per_event(clock.backends_seconds(&proxy_start, &proxy_end, &proxy_newer)),
            partition_us: per_event(clock.backends_seconds(
                &partition_start,
                &partition_end,
                &partition_newer,
            )),
        };
        Ok((Sample::new(run, u64::try_from(events)?, seconds), used))
    }

    /// One `produce + consume` block: a consumer registered on the route's partitions once the
    /// daemon has ticked everything before, the producers, and `run_partitioned` until it has
    /// handled every event they sent.
    async fn consume_block(
        &self,
        layout: &Layout,
        sizes: Sizes,
        run: u32,
        index: usize,
    ) -> Result<Sample> {
        let queue = QueueName::new(QUEUE)?;
        let consumer = ConsumerName::new(format!("c{run}_{index}"))?;
        let partitions = &layout.partitions[..self.route.partitions()];
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for p in partitions {
            // A consumer registered before the daemon has ticked the earlier events would get
            // them.
            while !p
                .client
                .query_one(TICKED, &[&QUEUE])
                .await?
                .get::<_, bool>(0)
            {
                ensure!(
                    Instant::now() < deadline,
                    "the daemon did not tick the earlier events"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            pgq_core::register_consumer(&p.client, &queue, &consumer).await?;
        }
        let dsns: Vec<Dsn> = partitions.iter().map(|p| p.dsn.clone()).collect();
        let counter = Arc::new(Counter::default());
        let cancel = CancellationToken::new();
        let config = ConsumerConfig::builder(queue.clone(), consumer.clone()).build();
        let consuming = {
            let (counter, cancel) = (counter.clone(), cancel.clone());
            tokio::spawn(async move { run_partitioned(&dsns, config, counter, cancel).await })
        };
        let events = sizes.events(self.call);
        let result = async {
            let started = Instant::now();
            self.produce(layout, events).await?;
            let deadline = started + DRAIN_TIMEOUT;
            let total = u64::try_from(events)?;
            while counter.events() < total {
                ensure!(
                    Instant::now() < deadline && !consuming.is_finished(),
                    "{}: {} of {total} events consumed",
                    label(self.route, self.call),
                    counter.events()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            ensure!(
                counter.events() == total,
                "{} events consumed, {total} produced",
                counter.events()
            );
            Ok(Sample::new(run, total, seconds))
        }
        .await;
        cancel.cancel();
        consuming.await??;
        for p in partitions {
            pgq_core::unregister_consumer(&p.client, &queue, &consumer).await?;
        }
        result
    }
}
