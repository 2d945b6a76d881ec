//! The hard stop's cancel request goes over TLS like the connection it cancels.

use std::sync::Arc;
use std::time::Duration;

use pgq_consumer::{ConsumerError, Runner};
use pgq_core::{Dsn, Line, QueueName};
use pgq_testkit::{Cluster, ClusterOptions, SslFiles};
use tokio_util::sync::CancellationToken;

use crate::common::{config, count, create_applied, produce, tick, wait_count};
use crate::local::Stuck;

/// A cluster that takes TCP connections with TLS only (`hostssl`; the superuser's unix socket
/// stays open for the test's own checks).
async fn tls_only_cluster() -> anyhow::Result<Cluster> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cluster = Cluster::start(ClusterOptions {
        ssl: Some(SslFiles {
            cert_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
        }),
        listen_tcp: true,
        ..Default::default()
    })
    .await?;
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )?;
    let admin = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
    admin
        .execute("SELECT pg_catalog.pg_reload_conf()", &[])
        .await?;
    Ok(cluster)
}

/// A handler stuck in `pg_sleep(600)` on a TLS connection (`sslmode=require`): at the hard
/// stop the runner's cancel request must use TLS too. Sent in clear (tokio-postgres with
/// `NoTls`, as before), `sslmode=require` makes the driver refuse to send it at all, and the
/// statement would run on for ten minutes, holding the batch's locks.
#[tokio::test]
async fn hard_stop_cancels_a_stuck_statement_over_tls() -> anyhow::Result<()> {
    let _serial = pgq_testkit::serial().await;
    let cluster = tls_only_cluster().await?;
    let tcp = cluster.tcp_dsn("postgres").expect("listens on TCP");
    let refused = Dsn::parse(&format!("{tcp} sslmode=disable"))?
        .connect()
        .await;
    let refused = format!("{:#}", anyhow::Error::from(refused.expect_err("TLS only")));
    assert!(refused.contains("no encryption"), "{refused}");

    let dsn = Dsn::parse(&format!("{tcp} sslmode=require"))?;
    let mut client = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    let queue = QueueName::new("q")?;
    pgq_core::create_queue(&client, &queue).await?;
    create_applied(&client).await?;
    let mut cfg = config(&queue, "c");
    cfg.shutdown_timeout = Duration::from_millis(200);
    let runner = Runner::connect(&dsn, cfg, Arc::new(Stuck)).await?;
    produce(&client, 1, 3).await?;
    tick(&client).await?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(runner.run(cancel.clone()));
    let stuck = "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl USING (pid)
                  WHERE a.query = 'SELECT pg_sleep(600)' AND a.state = 'active' AND ssl";
    wait_count(&client, stuck, 1, Duration::from_secs(10)).await?;
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await??;
    assert!(
        matches!(result, Err(ConsumerError::HardStopped)),
        "{result:?}"
    );
    let gone = "SELECT 1 - count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'";
    wait_count(&client, gone, 1, Duration::from_secs(10)).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM applied").await?, 0);
    Ok(())
}
