//! Types, names and key changes survive the trip.

use londiste::{AddTableOptions, Worker};

use crate::common::Pair;

#[tokio::test]
async fn types_quoted_names_other_schemas_and_key_changes() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both(
        r#"CREATE SCHEMA "Other Schema";
           CREATE TABLE "Other Schema"."MiXed" (
               "Id" bigint PRIMARY KEY, "Text" text, b bytea, j json, jb jsonb, arr int[],
               tarr text[], n numeric(20,6), ts timestamptz, flag bool, "we""ird" text);"#,
    )
    .await?;
    pair.provider
        .batch_execute(
            r#"INSERT INTO "Other Schema"."MiXed" VALUES
                 (1, E'quote '' and "dq"\nnew line & = % +', '\x00ff10', '{"a": [1, "x"]}', '{"b": null}',
                  '{1,NULL,3}', '{"a,b","c\"d",NULL}', 12345.678901, '2026-01-02 03:04:05.123456+00', true, 'w'),
                 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
        )
        .await?;
    let options = AddTableOptions {
        follow_key_changes: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(
        &pair.config,
        &[r#""Other Schema"."MiXed""#.to_owned()],
        &options,
    )
    .await?;
    let table = r#""Other Schema"."MiXed""#;
    pair.assert_same(table, r#""Id""#).await?;
    pair.provider
        .batch_execute(
            r#"INSERT INTO "Other Schema"."MiXed" VALUES
                 (3, E'tab\there', '\xdeadbeef', '[]', '{"k": "v\u00e9"}', '{}', '{}', -0.5, 'infinity', false, '');
               UPDATE "Other Schema"."MiXed" SET "Text" = 'changed', n = NULL WHERE "Id" = 2;
               UPDATE "Other Schema"."MiXed" SET "Id" = 10 WHERE "Id" = 1;
               UPDATE "Other Schema"."MiXed" SET "Id" = 1 WHERE "Id" = 3;"#,
        )
        .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same(table, r#""Id""#).await?, 3);
    // A key change in a batch of its own, applied event by event as well.
    pair.provider
        .batch_execute(r#"UPDATE "Other Schema"."MiXed" SET "Id" = "Id" + 100"#)
        .await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same(table, r#""Id""#).await?, 3);
    Ok(())
}

/// Generated columns are computed by each side: the capture trigger leaves them out of the
/// events (the subscriber would refuse a value for one) and the worker never writes them.
#[tokio::test]
async fn generated_columns_are_computed_on_each_side() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both(
        "CREATE TABLE g (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED)",
    )
    .await?;
    pair.provider
        .batch_execute("INSERT INTO g (id, a) SELECT i, i FROM generate_series(1, 10) i")
        .await?;
    londiste::add_tables(&pair.config, &["g".to_owned()], &AddTableOptions::default()).await?;
    pair.provider
        .batch_execute(
            "INSERT INTO g (id, a) VALUES (11, 11); UPDATE g SET a = a + 100 WHERE id <= 5;
             DELETE FROM g WHERE id = 10;",
        )
        .await?;
    let captured: Vec<String> = pair
        .provider
        .query(
            "SELECT ev_data FROM pgq.event_template WHERE ev_extra1 = 'public.g' ORDER BY ev_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        captured,
        [
            "id=11&a=11",
            "id=1&a=101",
            "id=2&a=102",
            "id=3&a=103",
            "id=4&a=104",
            "id=5&a=105",
            "id=10&a=10"
        ]
    );
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("g", "id").await?, 10);
    Ok(())
}
