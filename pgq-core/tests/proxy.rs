//! A queue partitioned over three private clusters behind a PL/Proxy proxy database.

use std::collections::BTreeMap;

use pgq_core::partition::{partition_of, setup_proxy, teardown_proxy};
use pgq_core::tokio_postgres::{Client, NoTls};
use pgq_core::Line;
use pgq_testkit::{Cluster, ClusterOptions, TestDb};

use crate::setup::{consumer, queue, tick};

const LOGICAL: u32 = 8;

struct Partition {
    cluster: Cluster,
    dsn: String,
}

async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = pgq_core::tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Three clusters, each with database `part`, the queue and a consumer.
async fn partitions() -> anyhow::Result<Vec<Partition>> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let cluster = Cluster::start(ClusterOptions {
            listen_tcp: true,
            ..ClusterOptions::default()
        })
        .await?;
        let admin = connect(&cluster.dsn("postgres")).await?;
        admin.batch_execute("CREATE DATABASE part").await?;
        let dsn = cluster.tcp_dsn("part").expect("listens on TCP");
        let mut client = connect(&dsn).await?;
        pgq_core::install(&mut client, &[Line::Pgq]).await?;
        pgq_core::create_queue(&client, &queue("orders")).await?;
        pgq_core::register_consumer(&client, &queue("orders"), &consumer("reader")).await?;
        out.push(Partition { cluster, dsn });
    }
    Ok(out)
}

/// The `ev_data` of every event in the partition's next batches, in order.
async fn drain(dsn: &str) -> anyhow::Result<Vec<String>> {
    let client = connect(dsn).await?;
    let (q, c) = (queue("orders"), consumer("reader"));
    tick(&client, &q).await?;
    let mut out = Vec::new();
    while let Some(batch) = pgq_core::next_batch(&client, &q, &c).await? {
        out.extend(
            pgq_core::batch_events(&client, batch.id)
                .await?
                .into_iter()
                .filter_map(|e| e.ev_data),
        );
        pgq_core::finish_batch(&client, batch.id).await?;
    }
    Ok(out)
}

fn database_of(key: &str, databases: usize) -> usize {
    partition_of(key, LOGICAL) as usize % databases
}

#[tokio::test]
async fn proxy_routes_keys_like_the_rust_router_and_survives_a_partition_outage(
) -> anyhow::Result<()> {
    let proxy_db = TestDb::new().await?;
    let mut proxy = proxy_db.client().await?;
    if !pgq_testkit::plproxy_available(&proxy).await? {
        return Ok(());
    }
    let parts = partitions().await?;
    let dsns: Vec<String> = parts.iter().map(|p| p.dsn.clone()).collect();
    // A password in a connection string would be readable to every role of the proxy
    // database: refused, without echoing it, and nothing is made.
    let mut with_password = dsns.clone();
    with_password[2] = format!("{} password=s3cret", dsns[2]);
    let refused = setup_proxy(&mut proxy, &with_password, LOGICAL)
        .await
        .expect_err("a password in the string");
    let text = refused.to_string();
    assert!(
        text.contains("partition 2") && text.contains("user mapping") && !text.contains("s3cret"),
        "{text}"
    );
    let made: i64 = proxy
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgq_proxy'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(made, 0);
    setup_proxy(&mut proxy, &dsns, LOGICAL).await?;

    let single = "SELECT pgq_proxy.insert_event_by_key('orders', $1, 'order', $2)";
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); parts.len()];
    for n in 0..60 {
        let key = format!("customer-{}", n % 20);
        let data = format!("{key}/{n}");
        proxy.execute(single, &[&key, &data]).await?;
        expected[database_of(&key, parts.len())].push(data);
    }
    // The bulk form: one call, split by key.
    let keys: Vec<String> = (0..30).map(|n| format!("bulk-{}", n % 7)).collect();
    let datas: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(n, k)| format!("{k}/{n}"))
        .collect();
    let types = vec!["order"; keys.len()];
    let ids = proxy
        .query(
            "SELECT pgq_proxy.insert_event_bulk_by_key('orders', $1, $2, $3)",
            &[&keys, &types, &datas],
        )
        .await?;
    assert_eq!(ids.len(), keys.len());
    for (key, data) in keys.iter().zip(&datas) {
        expected[database_of(key, parts.len())].push(data.clone());
    }
    // Events of one key in one call, no split: on the key's partition, in order.
    let datas: Vec<String> = (0..5).map(|n| format!("one-key/{n}")).collect();
    let ids: Vec<i64> = proxy
        .query_one(
            "SELECT pgq_proxy.insert_event_bulk_for_key('orders', 'one-key', $1, $2)",
            &[&vec!["order"; datas.len()], &datas],
        )
        .await?
        .get(0);
    assert_eq!(ids.len(), datas.len());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    expected[database_of("one-key", parts.len())].extend(datas);
    for (part, want) in parts.iter().zip(&expected) {
        assert_eq!(&drain(&part.dsn).await?, want);
    }

    // One partition down: its keys fail, naming where; the others go on; nothing is lost.
    let down = 1;
    parts[down].cluster.stop().await?;
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); parts.len()];
    let mut refused = BTreeMap::new();
    for n in 0..40 {
        let key = format!("customer-{}", n % 20);
        let data = format!("{key}/late-{n}");
        let target = database_of(&key, parts.len());
        match proxy.execute(single, &[&key, &data]).await {
            Ok(_) => expected[target].push(data),
            Err(e) => {
                assert_eq!(target, down, "{key}: {e:?}");
                refused.insert(key, format!("{:?}", e.as_db_error()));
            }
        }
    }
    assert!(!refused.is_empty());
    let port = format!("port {}", parts[down].cluster.port());
    for (key, message) in &refused {
        assert!(message.contains(&port), "{key}: {message}");
    }
    parts[down].cluster.start_again().await?;
    for key in refused.keys() {
        let data = format!("{key}/after");
        proxy.execute(single, &[key, &data]).await?;
        expected[down].push(data);
    }
    for (part, want) in parts.iter().zip(&expected) {
        assert_eq!(&drain(&part.dsn).await?, want);
    }

    teardown_proxy(&mut proxy).await?;
    let left: i64 = proxy
        .query_one(
            "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'pgq_partitions'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(left, 0);
    Ok(())
}

/// The proxy's functions are closed to roles not granted them, and a hostile `search_path`
/// (a look-alike `hashtext` ahead of `pg_catalog`) cannot move a key to another partition.
#[tokio::test]
async fn proxy_needs_a_grant_and_ignores_a_hostile_search_path() -> anyhow::Result<()> {
    let proxy_db = TestDb::new().await?;
    let mut proxy = proxy_db.client().await?;
    if !pgq_testkit::plproxy_available(&proxy).await? {
        return Ok(());
    }
    let mut parts = Vec::new();
    for _ in 0..2 {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        pgq_core::install(&mut client, &[Line::Pgq]).await?;
        pgq_core::create_queue(&client, &queue("orders")).await?;
        parts.push(db);
    }
    let dsns: Vec<String> = parts.iter().map(TestDb::dsn).collect();
    setup_proxy(&mut proxy, &dsns, 2).await?;
    pgq_testkit::create_role(&proxy, "pgq_proxy_producer", "LOGIN").await?;
    let producer = connect(&proxy_db.dsn_as("pgq_proxy_producer")).await?;
    let single = "SELECT pgq_proxy.insert_event_by_key('orders', $1, 'order', $2)";
    let key = (0..)
        .map(|n| format!("customer-{n}"))
        .find(|k| partition_of(k, 2) == 1)
        .expect("endless");

    let refused = producer
        .execute(single, &[&key, &"refused"])
        .await
        .expect_err("not granted");
    assert_eq!(
        refused.code(),
        Some(&pgq_core::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );

    proxy
        .batch_execute(
            "GRANT USAGE ON SCHEMA pgq_proxy TO pgq_proxy_producer;
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgq_proxy TO pgq_proxy_producer;
             GRANT USAGE ON FOREIGN SERVER pgq_partitions TO pgq_proxy_producer;
             CREATE SCHEMA evil AUTHORIZATION pgq_proxy_producer;",
        )
        .await?;
    producer
        .batch_execute(
            "CREATE FUNCTION evil.hashtext(text) RETURNS integer LANGUAGE sql AS 'SELECT 0';
             SET search_path = evil, pg_catalog;",
        )
        .await?;
    let hostile: i32 = producer
        .query_one("SELECT hashtext($1)", &[&key])
        .await?
        .get(0);
    assert_eq!(hostile, 0, "the look-alike is what the session resolves");
    producer.execute(single, &[&key, &"routed"]).await?;
    let mut landed = Vec::new();
    for db in &parts {
        landed.push(
            db.client()
                .await?
                .query("SELECT ev_data FROM pgq.event_template", &[])
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(landed, [vec![], vec!["routed".to_owned()]]);
    Ok(())
}
