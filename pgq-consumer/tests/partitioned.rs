//! A queue partitioned by key over three private clusters, ticked by one `pgq-ticker` daemon
//! from one config. Four producers: two through a PL/Proxy proxy database, two through the
//! Rust router inside their own transactions. One consumer over every partition whose task is
//! aborted and restarted over and over, and one partition's cluster stopped and started again
//! in the middle: its keys fail naming it, the other keys keep flowing, every event is applied
//! once, each key's events in the order they were produced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgq_consumer::run_partitioned;
use pgq_core::partition::{database_of, insert_event_by_key, setup_proxy, Router};
use pgq_core::tokio_postgres::{Client, NoTls};
use pgq_core::{ConsumerName, Dsn, Line, NewEvent, QueueName, QueueSetting};
use pgq_testkit::{Cluster, ClusterOptions, TestDb};
use pgq_ticker::{Databases, Ticker, TickerConfig};
use tokio_util::sync::CancellationToken;

use crate::common::{config, create_applied, Apply, QUEUE};

const PARTITIONS: usize = 3;
const LOGICAL: u32 = 8;
const PRODUCERS: usize = 4;
const EVENTS_PER_KEY: usize = 150;
/// The partition whose cluster is stopped in the middle.
const DOWN: usize = 1;

async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = pgq_core::tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A cluster with database `part<n>`: the queue (ticked at every event), consumer `reader`
/// registered before any event, and the consumer's `applied` table.
async fn partition(n: usize) -> anyhow::Result<(Cluster, String)> {
    let cluster = Cluster::start(ClusterOptions {
        listen_tcp: true,
        ..ClusterOptions::default()
    })
    .await?;
    connect(&cluster.dsn("postgres"))
        .await?
        .batch_execute(&format!("CREATE DATABASE part{n}"))
        .await?;
    let dsn = cluster
        .tcp_dsn(&format!("part{n}"))
        .expect("listens on TCP");
    let mut client = connect(&dsn).await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    pgq_core::set_queue_config(&client, &queue, QueueSetting::TickerMaxCount(1)).await?;
    pgq_core::register_consumer(&client, &queue, &ConsumerName::new("reader")?).await?;
    create_applied(&client).await?;
    Ok((cluster, dsn))
}

/// How a producer reaches the partitions.
#[derive(Clone)]
enum Route {
    /// `pgq_proxy.insert_event_by_key` in the proxy database.
    Proxy(String),
    /// The Rust router, the event inserted inside a transaction on the key's partition.
    Router(Arc<Router>),
}

/// What the producers saw: committed inserts per partition, and the errors of failed ones.
#[derive(Default)]
struct Produced {
    committed: Mutex<[usize; PARTITIONS]>,
    errors: Mutex<Vec<(usize, String)>>,
}

impl Produced {
    fn committed(&self) -> [usize; PARTITIONS] {
        *self.committed.lock().unwrap()
    }
}

/// One insert of `key`'s event through `route`, the error as text with its sources.
async fn insert(
    route: &Route,
    proxy: &mut Option<Client>,
    key: &str,
    data: &str,
) -> Result<(), String> {
    match route {
        Route::Proxy(dsn) => {
            if proxy.as_ref().map_or(true, Client::is_closed) {
                *proxy = Some(connect(dsn).await.map_err(|e| format!("{e:#}"))?);
            }
            let client = proxy.as_ref().expect("connected");
            client
                .execute(
                    "SELECT pgq_proxy.insert_event_by_key($1, $2, 'e', $3)",
                    &[&QUEUE, &key, &data],
                )
                .await
                .map(drop)
                .map_err(|e| format!("{:?}", e.as_db_error()))
        }
        Route::Router(router) => {
            let queue = QueueName::new(QUEUE).expect("valid");
            let event = NewEvent::new("e", data);
            let mut client = router.client(key).await.map_err(error_text)?;
            let partition = client.partition();
            let fail = |e: pgq_core::Error| error_text(router.error(partition, e));
            let tx = client.transaction().await.map_err(|e| {
                fail(pgq_core::Error::Db {
                    op: "begin",
                    source: e,
                })
            })?;
            insert_event_by_key(&tx, &queue, key, &event)
                .await
                .map_err(fail)?;
            tx.commit().await.map_err(|e| {
                fail(pgq_core::Error::Db {
                    op: "commit",
                    source: e,
                })
            })
        }
    }
}

fn error_text(err: pgq_core::Error) -> String {
    format!("{:#}", anyhow::Error::from(err))
}

/// Produces each of `keys`' events in order, the keys side by side, one transaction per event;
/// a failed insert (its partition is down) is tried again until it commits.
async fn produce(route: Route, keys: Vec<String>, produced: Arc<Produced>) {
    let one_key = |key: String| {
        let (route, produced) = (route.clone(), Arc::clone(&produced));
        async move {
            let partition = database_of(&key, LOGICAL, PARTITIONS);
            let mut proxy = None;
            for seq in 0..EVENTS_PER_KEY {
                let data = format!("{key}:{seq}");
                while let Err(e) = insert(&route, &mut proxy, &key, &data).await {
                    produced.errors.lock().unwrap().push((partition, e));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                produced.committed.lock().unwrap()[partition] += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    futures_util::future::join_all(keys.into_iter().map(one_key)).await;
}

async fn applied(dsn: &str) -> anyhow::Result<Vec<String>> {
    let client = connect(dsn).await?;
    Ok(client
        .query("SELECT data FROM applied ORDER BY ev_id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The proxy database on the test server, or `None` (reported) where PL/Proxy is not
/// packaged for it; the producers then all use the router.
async fn proxy(dsns: &[String]) -> anyhow::Result<Option<TestDb>> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    if !pgq_testkit::plproxy_available(&client).await? {
        return Ok(None);
    }
    setup_proxy(&mut client, dsns, LOGICAL).await?;
    Ok(Some(db))
}

/// Three keys per producer, one on each partition, so every producer meets the outage and
/// every producer has keys that must keep flowing through it.
fn keys() -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); PRODUCERS];
    let mut candidates = (0..).map(|n| format!("key-{n}"));
    for keys in &mut out {
        for partition in 0..PARTITIONS {
            let key = candidates
                .by_ref()
                .find(|k| database_of(k, LOGICAL, PARTITIONS) == partition)
                .expect("endless");
            keys.push(key);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_once_per_key_in_order_under_kills_and_an_outage() -> anyhow::Result<()> {
    let mut clusters = Vec::new();
    let mut dsns = Vec::new();
    for n in 0..PARTITIONS {
        let (cluster, dsn) = partition(n).await?;
        clusters.push(cluster);
        dsns.push(dsn);
    }
    let parsed: Vec<Dsn> = dsns
        .iter()
        .map(|d| Dsn::parse(d))
        .collect::<Result<_, _>>()?;
    let proxy_db = proxy(&dsns).await?;
    let router = Arc::new(Router::new(&parsed, LOGICAL, 4)?);

    let stop = CancellationToken::new();
    let ticker_config = TickerConfig::builder(Databases::List(parsed.clone()))
        .ticker_period(Duration::from_millis(50))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()?;
    let ticker = tokio::spawn(Ticker::new(ticker_config).run(stop.clone()));

    let keys = keys();
    let produced = Arc::new(Produced::default());
    let mut producers = tokio::task::JoinSet::new();
    for (n, keys) in keys.iter().enumerate() {
        let route = match &proxy_db {
            Some(db) if n < 2 => Route::Proxy(db.dsn()),
            _ => Route::Router(Arc::clone(&router)),
        };
        producers.spawn(produce(route, keys.clone(), Arc::clone(&produced)));
    }

    let queue = QueueName::new(QUEUE)?;
    let consumer = Arc::new(Apply::default());
    let start = || {
        let (parsed, config, consumer) =
            (parsed.clone(), config(&queue, "reader"), consumer.clone());
        tokio::spawn(async move {
            run_partitioned(&parsed, config, consumer, CancellationToken::new()).await
        })
    };
    let mut running = start();
    let total = keys.len() * PARTITIONS * EVENTS_PER_KEY;
    let mut round: u64 = 0;
    let mut outage: Option<([usize; PARTITIONS], [usize; 2])> = None;
    loop {
        // Kills at varying points: inside a batch, between batches, while connecting.
        tokio::time::sleep(Duration::from_millis(200 + 150 * (round % 4))).await;
        round += 1;
        running.abort();
        let _ = running.await;
        if round == 2 {
            assert!(!producers.is_empty(), "the producers were done too soon");
            clusters[DOWN].stop().await?;
            let applied_then = [
                applied(&dsns[0]).await?.len(),
                applied(&dsns[2]).await?.len(),
            ];
            outage = Some((produced.committed(), applied_then));
        } else if let Some((committed_then, applied_then)) = outage {
            let errors = produced.errors.lock().unwrap().len();
            if round >= 5 && errors >= PRODUCERS {
                let committed = produced.committed();
                let applied_now = [
                    applied(&dsns[0]).await?.len(),
                    applied(&dsns[2]).await?.len(),
                ];
                assert_eq!(
                    committed[DOWN], committed_then[DOWN],
                    "committed while down"
                );
                assert!(
                    committed[0] > committed_then[0] && committed[2] > committed_then[2],
                    "the other keys stood still: {committed_then:?} then {committed:?}"
                );
                assert!(
                    applied_now[0] > applied_then[0] && applied_now[1] > applied_then[1],
                    "the other partitions' consumers stood still: {applied_then:?} then \
                     {applied_now:?}"
                );
                clusters[DOWN].start_again().await?;
                outage = None;
            }
        }
        running = start();
        if producers.is_empty() && outage.is_none() && round > 5 {
            let mut counts = 0;
            for dsn in &dsns {
                counts += applied(dsn).await?.len();
            }
            if counts >= total {
                break;
            }
        }
        while let Some(done) = producers.try_join_next() {
            done?;
        }
        assert!(round < 150, "not every event applied in time");
    }
    running.abort();
    stop.cancel();
    ticker.await?;

    // Only the stopped partition's keys failed, and each failure names it: PL/Proxy's error
    // gives its port (no connection) or its database's name (a cached connection cut), the
    // router's its index, host and port.
    let errors = produced.errors.lock().unwrap().clone();
    let (port, name) = (
        format!("port {}", clusters[DOWN].port()),
        format!("[part{DOWN}]"),
    );
    let router_names = format!(
        "partition {DOWN} (host=127.0.0.1 port={} ",
        clusters[DOWN].port()
    );
    let (mut via_proxy, mut via_router) = (0, 0);
    for (partition, text) in &errors {
        assert_eq!(*partition, DOWN, "{text}");
        if text.starts_with(&router_names) {
            via_router += 1;
        } else {
            assert!(text.contains(&port) || text.contains(&name), "{text}");
            via_proxy += 1;
        }
    }
    assert!(via_router > 0, "{errors:?}");
    assert!(via_proxy > 0 || proxy_db.is_none(), "{errors:?}");

    let mut all = Vec::new();
    for (partition, dsn) in dsns.iter().enumerate() {
        let data = applied(dsn).await?;
        for key in keys.iter().flatten() {
            let seqs: Vec<usize> = data
                .iter()
                .filter_map(|d| d.strip_prefix(&format!("{key}:")))
                .map(|s| s.parse().unwrap())
                .collect();
            if database_of(key, LOGICAL, PARTITIONS) == partition {
                assert_eq!(seqs, (0..EVENTS_PER_KEY).collect::<Vec<_>>(), "{key}");
            } else {
                assert!(seqs.is_empty(), "{key} on partition {partition}");
            }
        }
        all.extend(data);
    }
    all.sort();
    let mut want: Vec<String> = keys
        .iter()
        .flatten()
        .flat_map(|k| (0..EVENTS_PER_KEY).map(move |s| format!("{k}:{s}")))
        .collect();
    want.sort();
    assert_eq!(all, want);
    Ok(())
}

/// A cooperative group of two sub-consumers on each of two partitions: both take batches, every
/// event is applied once, each key's events on its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coop_groups_on_every_partition_apply_each_event_once() -> anyhow::Result<()> {
    let parts = [crate::common::setup().await?, crate::common::setup().await?];
    let queue = QueueName::new(QUEUE)?;
    let (group, subs) = (
        ConsumerName::new("group")?,
        [ConsumerName::new("a")?, ConsumerName::new("b")?],
    );
    for part in &parts {
        for sub in &subs {
            pgq_core::coop::register_subconsumer(&part.client, &queue, &group, sub).await?;
        }
    }
    let dsns: Vec<Dsn> = parts.iter().map(|p| p.dsn.clone()).collect();
    let router = Router::new(&dsns, 2, 2)?;
    let keys: Vec<String> = (0..8).map(|n| format!("key-{n}")).collect();
    let mut want = Vec::new();
    for round in 0..20 {
        for key in &keys {
            let data = format!("{key}:{round}");
            router
                .insert_event(&queue, key, &NewEvent::new("e", data.as_str()))
                .await?;
            want.push(data);
        }
        for part in &parts {
            pgq_core::force_tick(&part.client, &queue).await?;
            pgq_core::ticker(&part.client, &queue).await?;
        }
    }

    let cancel = CancellationToken::new();
    let (partitions, config, subs, stop) = (
        dsns.clone(),
        config(&queue, "group"),
        subs.to_vec(),
        cancel.clone(),
    );
    let running = tokio::spawn(async move {
        let consumer = Arc::new(Apply::default());
        pgq_consumer::run_partitioned_coop(&partitions, config, subs, None, consumer, stop).await
    });
    let mut all = Vec::new();
    for _ in 0..200 {
        all.clear();
        for part in &parts {
            all.extend(applied(&part.db.dsn()).await?);
        }
        if all.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    running.await??;
    all.sort();
    want.sort();
    assert_eq!(all, want);
    for (n, part) in parts.iter().enumerate() {
        for data in applied(&part.db.dsn()).await? {
            let key = data.split(':').next().expect("key:seq");
            assert_eq!(router.database_of(key), n, "{data}");
        }
        // Both sub-consumers took batches: each works on its own connection.
        let sessions: i64 = part
            .client
            .query_one("SELECT count(DISTINCT backend) FROM applied", &[])
            .await?
            .get(0);
        assert!(
            sessions >= 2,
            "partition {n}: {sessions} session(s) applied"
        );
    }
    Ok(())
}

/// A cooperative group with no sub-consumer would consume nothing: refused at once.
#[tokio::test]
async fn an_empty_cooperative_group_is_refused() -> anyhow::Result<()> {
    let part = crate::common::setup().await?;
    let queue = QueueName::new(QUEUE)?;
    let running = pgq_consumer::run_partitioned_coop(
        std::slice::from_ref(&part.dsn),
        config(&queue, "group"),
        Vec::new(),
        None,
        Arc::new(Apply::default()),
        CancellationToken::new(),
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), running).await?;
    assert!(
        matches!(
            refused,
            Err(pgq_consumer::ConsumerError::NoSubconsumers { .. })
        ),
        "{refused:?}"
    );
    Ok(())
}

/// A handler that panics on every batch.
struct Panics;

#[pgq_consumer::async_trait]
impl pgq_consumer::Consumer for Panics {
    async fn process_event(
        &self,
        _tx: &pgq_core::tokio_postgres::Transaction<'_>,
        _event: &pgq_core::Event,
    ) -> Result<(), pgq_consumer::HandlerError> {
        panic!("the handler's own bug");
    }
}

/// A handler's panic on one partition stops the others and reaches the caller, instead of
/// leaving that partition silently unconsumed.
#[tokio::test]
async fn a_handler_panic_stops_every_partition_and_reaches_the_caller() -> anyhow::Result<()> {
    let parts = [crate::common::setup().await?, crate::common::setup().await?];
    let queue = QueueName::new(QUEUE)?;
    let reader = ConsumerName::new("reader")?;
    pgq_core::register_consumer(&parts[0].client, &queue, &reader).await?;
    pgq_core::register_consumer(&parts[1].client, &queue, &reader).await?;
    pgq_core::insert_event(&parts[0].client, &queue, "e", "boom").await?;
    pgq_core::force_tick(&parts[0].client, &queue).await?;
    pgq_core::ticker(&parts[0].client, &queue).await?;
    let dsns: Vec<Dsn> = parts.iter().map(|p| p.dsn.clone()).collect();
    let running = tokio::spawn({
        let config = config(&queue, "reader");
        async move { run_partitioned(&dsns, config, Arc::new(Panics), CancellationToken::new()).await }
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), running).await?;
    let panicked = ended.expect_err("the panic reached the caller");
    assert!(panicked.is_panic(), "{panicked:?}");
    Ok(())
}
