//! The worker's default consumer name: one per subscriber and queue, the same whatever
//! connection string reaches the subscriber, and the one every command uses.

use std::time::Duration;

use londiste::{AddTableOptions, Config, TableState, Worker};
use pgq_consumer::CancellationToken;
use pgq_core::{ConsumerName, Dsn, QueueName};
use pgq_testkit::TestDb;

#[tokio::test]
async fn default_names_are_one_per_subscriber_and_queue_and_every_command_agrees(
) -> anyhow::Result<()> {
    let provider_db = TestDb::new().await?;
    let subscriber_db = TestDb::new().await?;
    let provider_dsn = Dsn::parse(&provider_db.dsn())?;
    let subscriber_dsn = Dsn::parse(&subscriber_db.dsn())?;
    // The same subscriber database through another connection string.
    let second_dsn = Dsn::parse(&format!(
        "{} application_name=second_dsn",
        subscriber_db.dsn()
    ))?;
    let config = |subscriber: &Dsn, queue: &str| -> anyhow::Result<Config> {
        Ok(Config::new(
            provider_dsn.clone(),
            subscriber.clone(),
            QueueName::new(queue)?,
            None,
        ))
    };
    let q1 = config(&subscriber_dsn, "q1")?;
    let q2 = config(&subscriber_dsn, "q2")?;
    let q1_second = config(&second_dsn, "q1")?;

    let n1 = londiste::init(&q1).await?;
    let n2 = londiste::init(&q2).await?;
    let subscriber = subscriber_db.client().await?;
    let id = pgq_core::installation_id(&subscriber).await?;
    let hex = id.as_str().replace('-', "");
    assert_eq!(n1.as_str(), format!("londiste_{}_q1", &hex[..12]));
    assert_eq!(n2.as_str(), format!("londiste_{}_q2", &hex[..12]));
    assert_eq!(londiste::init(&q1_second).await?, n1);
    let provider = provider_db.client().await?;
    let registered: Vec<(String, String)> = provider
        .query(
            "SELECT queue_name, consumer_name FROM pgq.get_consumer_info() ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        registered,
        [
            ("q1".to_owned(), n1.to_string()),
            ("q2".to_owned(), n2.to_string())
        ]
    );

    // A worker of q1 started through the second string: add-table (through the first) sees it
    // run and waits for it to make the table ok; status through either string names it and
    // sees it run; compare holds it and reads its position under the same name.
    for client in [&provider, &subscriber] {
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            .await?;
    }
    provider
        .batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
        .await?;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(Worker::connect(&q1_second).await?.run(cancel.clone()));
    let options = AddTableOptions {
        wait: Duration::from_secs(60),
        ..AddTableOptions::default()
    };
    let added = londiste::add_tables(&q1, &["t".to_owned()], &options).await?;
    assert_eq!(added[0].state, TableState::Ok);
    for config in [&q1, &q1_second] {
        let status = londiste::status(config).await?;
        assert_eq!(status.consumer, n1.as_str());
        assert!(status.worker_running);
    }
    let status = londiste::status(&q2).await?;
    assert_eq!(status.consumer, n2.as_str());
    assert!(!status.worker_running);
    provider
        .batch_execute("UPDATE t SET v = 'changed' WHERE id <= 10")
        .await?;
    let compared = londiste::compare(&q1, Some("t")).await?;
    assert!(compared[0].equal(), "{compared:?}");
    cancel.cancel();
    worker.await??;

    // An explicit name wins.
    let explicit = Config::new(
        provider_dsn.clone(),
        subscriber_dsn.clone(),
        QueueName::new("q1")?,
        Some(ConsumerName::new("mine")?),
    );
    assert_eq!(explicit.consumer_name(&subscriber).await?.as_str(), "mine");
    Ok(())
}

#[tokio::test]
async fn a_default_name_needs_an_initialized_subscriber_and_a_short_enough_queue(
) -> anyhow::Result<()> {
    let provider_db = TestDb::new().await?;
    let subscriber_db = TestDb::new().await?;
    let config = |queue: &str| -> anyhow::Result<Config> {
        Ok(Config::new(
            Dsn::parse(&provider_db.dsn())?,
            Dsn::parse(&subscriber_db.dsn())?,
            QueueName::new(queue)?,
            None,
        ))
    };
    let not_initialized = format!(
        "subscriber database \"{}\" has no pgq-rs installation id, from which the worker's \
         default consumer name is made: run `londiste init` first, or set `consumer` in the \
         config",
        subscriber_db.name()
    );
    let q = config("q")?;
    assert_eq!(
        londiste::status(&q).await.unwrap_err().to_string(),
        not_initialized
    );
    assert_eq!(
        Worker::connect(&q).await.unwrap_err().to_string(),
        not_initialized
    );

    let long = "q".repeat(240);
    let err = londiste::init(&config(&long)?).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("queue {long:?} has no default consumer name: set `consumer` in the config")
    );
    let queues: i64 = provider_db
        .client()
        .await?
        .query_one("SELECT count(*) FROM pgq.queue", &[])
        .await?
        .get(0);
    assert_eq!(queues, 0, "no queue made for a worker that has no name");
    Ok(())
}
