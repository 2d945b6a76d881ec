//! A queue partitioned by key over three private clusters: four producers routing keys with the
//! Rust router, one consumer over every partition whose task is aborted and restarted over and
//! over, and one partition's cluster stopped and started again in the middle. Every event is
//! applied once, each key's events in the order they were produced.

use std::sync::Arc;
use std::time::Duration;

use pgq_consumer::run_partitioned;
use pgq_core::partition::{insert_event_by_key, partition_of};
use pgq_core::tokio_postgres::{Client, NoTls};
use pgq_core::{ConsumerName, Dsn, Line, NewEvent, QueueName};
use pgq_testkit::{Cluster, ClusterOptions};
use tokio_util::sync::CancellationToken;

use crate::common::{config, create_applied, Apply, QUEUE};

const PRODUCERS: usize = 4;
const KEYS_PER_PRODUCER: usize = 3;
const EVENTS_PER_KEY: usize = 150;

async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = pgq_core::tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn partition() -> anyhow::Result<(Cluster, String)> {
    let cluster = Cluster::start(ClusterOptions {
        listen_tcp: true,
        ..ClusterOptions::default()
    })
    .await?;
    let dsn = cluster.dsn("postgres");
    let mut client = connect(&dsn).await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    // Before any event: a consumer registered later would start after them.
    pgq_core::register_consumer(&client, &queue, &ConsumerName::new("reader")?).await?;
    create_applied(&client).await?;
    Ok((cluster, dsn))
}

/// Produces `key`'s events in order, one transaction each, on the key's partition; an insert
/// that fails (its partition is down) is tried again until it commits.
async fn produce(dsns: Arc<Vec<String>>, key: String) -> anyhow::Result<()> {
    let dsn = &dsns[partition_of(&key, 4) as usize % dsns.len()];
    let queue = QueueName::new(QUEUE)?;
    let mut client: Option<Client> = None;
    for seq in 0..EVENTS_PER_KEY {
        let event = NewEvent::new("e", format!("{key}:{seq}"));
        loop {
            if client.as_ref().map_or(true, Client::is_closed) {
                client = connect(dsn).await.ok();
            }
            if let Some(c) = &client {
                if insert_event_by_key(c, &queue, &key, &event).await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Ticks every partition that is up, as the ticker daemon would.
async fn tick_all(dsns: Arc<Vec<String>>, cancel: CancellationToken) {
    let queue = QueueName::new(QUEUE).expect("valid");
    while !cancel.is_cancelled() {
        for dsn in dsns.iter() {
            if let Ok(client) = connect(dsn).await {
                let _ = pgq_core::force_tick(&client, &queue).await;
                let _ = pgq_core::ticker(&client, &queue).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_once_per_key_in_order_under_kills_and_an_outage() -> anyhow::Result<()> {
    let mut clusters = Vec::new();
    let mut dsns = Vec::new();
    for _ in 0..3 {
        let (cluster, dsn) = partition().await?;
        clusters.push(cluster);
        dsns.push(dsn);
    }
    let dsns = Arc::new(dsns);
    let parsed: Vec<Dsn> = dsns
        .iter()
        .map(|d| Dsn::parse(d))
        .collect::<Result<_, _>>()?;
    let stop = CancellationToken::new();
    let ticker = tokio::spawn(tick_all(Arc::clone(&dsns), stop.clone()));
    let keys: Vec<String> = (0..PRODUCERS * KEYS_PER_PRODUCER)
        .map(|n| format!("key-{n}"))
        .collect();
    let mut producers = tokio::task::JoinSet::new();
    for chunk in keys.chunks(KEYS_PER_PRODUCER) {
        let (dsns, chunk) = (Arc::clone(&dsns), chunk.to_vec());
        producers.spawn(async move {
            for key in chunk {
                produce(Arc::clone(&dsns), key).await?;
            }
            anyhow::Ok(())
        });
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
    let total = keys.len() * EVENTS_PER_KEY;
    let mut round: u64 = 0;
    let mut before_outage = [0, 0];
    loop {
        // Kills at varying points: inside a batch, between batches, while connecting.
        tokio::time::sleep(Duration::from_millis(200 + 150 * (round % 4))).await;
        round += 1;
        running.abort();
        let _ = running.await;
        if round == 4 {
            clusters[1].stop().await?;
            before_outage = [
                applied(&dsns[0]).await?.len(),
                applied(&dsns[2]).await?.len(),
            ];
        }
        if round == 8 {
            assert!(
                !producers.is_empty(),
                "the outage came after the producers were done"
            );
            let during = [
                applied(&dsns[0]).await?.len(),
                applied(&dsns[2]).await?.len(),
            ];
            assert!(
                during[0] > before_outage[0] && during[1] > before_outage[1],
                "the other partitions stood still: {before_outage:?} then {during:?}"
            );
            clusters[1].start_again().await?;
        }
        running = start();
        if producers.is_empty() && round > 8 {
            let mut counts = 0;
            for dsn in dsns.iter() {
                counts += applied(dsn).await?.len();
            }
            if counts >= total {
                break;
            }
        }
        while let Some(done) = producers.try_join_next() {
            done??;
        }
        assert!(round < 150, "not every event applied in time");
    }
    running.abort();
    stop.cancel();
    ticker.await?;

    for dsn in dsns.iter() {
        let data = applied(dsn).await?;
        assert!(!data.is_empty(), "no key on {dsn}");
        for key in &keys {
            let seqs: Vec<usize> = data
                .iter()
                .filter_map(|d| d.strip_prefix(&format!("{key}:")))
                .map(|s| s.parse().unwrap())
                .collect();
            if !seqs.is_empty() {
                assert_eq!(seqs, (0..EVENTS_PER_KEY).collect::<Vec<_>>(), "{key}");
            }
        }
    }
    let mut all = Vec::new();
    for dsn in dsns.iter() {
        all.extend(applied(dsn).await?);
    }
    all.sort();
    let mut want: Vec<String> = keys
        .iter()
        .flat_map(|k| (0..EVENTS_PER_KEY).map(move |s| format!("{k}:{s}")))
        .collect();
    want.sort();
    assert_eq!(all, want);
    Ok(())
}
