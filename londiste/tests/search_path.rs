//! The replay worker's sessions pin their `search_path`: look-alikes of built-ins that the
//! databases' owners put first in the path reach nothing the worker runs, on either side.

use londiste::{AddTableOptions, Worker};
use pgq_testkit::{shadow_builtins, shadow_calls};

use crate::common::Pair;

#[tokio::test]
async fn the_owners_search_path_does_not_reach_the_worker() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.provider
        .batch_execute(
            "CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL);
             INSERT INTO acc SELECT g, g FROM generate_series(1, 100) g;
             CREATE SEQUENCE acc_seq; SELECT setval('acc_seq', 42);",
        )
        .await?;
    pair.subscriber
        .batch_execute("CREATE SEQUENCE acc_seq")
        .await?;
    let options = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&pair.config, &["acc".to_owned()], &options).await?;
    londiste::add_sequences(&pair.config, &["acc_seq".to_owned()]).await?;
    shadow_builtins(&pair.dbs.0).await?;
    shadow_builtins(&pair.dbs.1).await?;

    pair.provider
        .batch_execute(
            "UPDATE acc SET bal = bal + 1 WHERE id <= 10; DELETE FROM acc WHERE id > 90;
             INSERT INTO acc VALUES (101, 0); SELECT nextval('acc_seq');",
        )
        .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    assert!(pair.drain(&mut worker).await? >= 1);
    assert_eq!(shadow_calls(&pair.provider).await?, Vec::<String>::new());
    assert_eq!(shadow_calls(&pair.subscriber).await?, Vec::<String>::new());
    assert_eq!(pair.assert_same("acc", "id").await?, 91);
    let seq: i64 = pair
        .subscriber
        .query_one("SELECT last_value FROM acc_seq", &[])
        .await?
        .get(0);
    assert_eq!(seq, 43, "the sequence followed");
    Ok(())
}
