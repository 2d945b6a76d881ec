//! Nothing depends on `standard_conforming_strings`: PostgreSQL 19 forces it on, older servers
//! let a session or a database turn it off, and a value quoted for one setting reads back as
//! something else (or breaks out of its literal) under the other.

use pgq_core::tokio_postgres::Client;
use pgq_core::{quote_ident, quote_literal, EventCursor, Line};
use pgq_testkit::TestDb;

use crate::setup::{consumer, queue, setup, tick};

/// Values that read back differently under the two settings when quoted naively.
const TRICKY: [&str; 10] = [
    "plain",
    "it's",
    r"back\slash",
    r"trailing\",
    r"\'",
    r"\\two",
    r"\x41\n\t\101",
    r"x\'; SELECT 'injected",
    "\"dq\" ünï ✓",
    "",
];

/// The settings this server lets a session choose (19 and later: `on` only).
async fn string_settings(client: &Client) -> anyhow::Result<Vec<&'static str>> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await?;
    Ok(if row.get::<_, i32>(0) >= 190_000 {
        vec!["on"]
    } else {
        vec!["on", "off"]
    })
}

async fn set_strings(client: &Client, setting: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SET standard_conforming_strings = {setting}; SET escape_string_warning = off"
        ))
        .await?;
    Ok(())
}

#[tokio::test]
async fn quoted_literals_and_identifiers_read_back_under_both_string_settings() -> anyhow::Result<()>
{
    let db = TestDb::new().await?;
    let client = db.client().await?;
    for setting in string_settings(&client).await? {
        set_strings(&client, setting).await?;
        for value in TRICKY {
            let sql = format!("SELECT {}::text", quote_literal(value));
            let rows = client.simple_query(&sql).await?;
            let read = rows.iter().find_map(|m| match m {
                pgq_core::tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).map(str::to_owned))
                }
                _ => None,
            });
            assert_eq!(
                read,
                Some(Some(value.to_owned())),
                "{sql} with standard_conforming_strings = {setting}"
            );
            if value.is_empty() {
                continue;
            }
            let sql = format!("SELECT 1 AS {}", quote_ident(value));
            let stmt = client.prepare(&sql).await?;
            assert_eq!(
                stmt.columns()[0].name(),
                value,
                "{sql} with standard_conforming_strings = {setting}"
            );
        }
    }
    Ok(())
}

/// The queue's own SQL (its dynamic SQL included: batch event queries, cursors) carries names
/// and data with backslashes and quotes intact in a session with either setting.
#[tokio::test]
async fn events_round_trip_under_both_string_settings() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = setup(&db).await? else {
        return Ok(());
    };
    for setting in string_settings(&client).await? {
        set_strings(&client, setting).await?;
        let (q, c) = (
            queue(&format!(r"q\'{setting}")),
            consumer(&format!(r"c\'{setting}")),
        );
        pgq_core::create_queue(&client, &q).await?;
        pgq_core::register_consumer(&client, &q, &c).await?;
        for value in TRICKY {
            pgq_core::insert_event(&client, &q, value, value).await?;
        }
        tick(&client, &q).await?;
        let batch = pgq_core::next_batch(&client, &q, &c)
            .await?
            .expect("a batch");
        let expected: Vec<(Option<&str>, Option<&str>)> =
            TRICKY.iter().map(|&v| (Some(v), Some(v))).collect();
        let events = pgq_core::batch_events(&client, batch.id).await?;
        let read: Vec<(Option<&str>, Option<&str>)> = events
            .iter()
            .map(|e| (e.ev_type.as_deref(), e.ev_data.as_deref()))
            .collect();
        assert_eq!(read, expected, "standard_conforming_strings = {setting}");

        let tx = client.transaction().await?;
        let mut cursor = EventCursor::open(&tx, batch.id, 3).await?;
        let mut through_cursor = Vec::new();
        while let Some(chunk) = cursor.next_chunk(&tx).await? {
            through_cursor.extend(chunk);
        }
        tx.commit().await?;
        let read: Vec<(Option<&str>, Option<&str>)> = through_cursor
            .iter()
            .map(|e| (e.ev_type.as_deref(), e.ev_data.as_deref()))
            .collect();
        assert_eq!(
            read, expected,
            "cursor, standard_conforming_strings = {setting}"
        );

        let info = pgq_core::batch_info(&client, batch.id).await?;
        assert_eq!(
            (info.queue_name.as_str(), info.consumer_name.as_str()),
            (q.as_str(), c.as_str())
        );
        pgq_core::finish_batch(&client, batch.id).await?;
    }
    Ok(())
}

/// A database whose sessions default to `standard_conforming_strings = off` still gets every
/// line: the installer pins the setting inside each migration's transaction only.
#[tokio::test]
async fn installs_where_sessions_default_to_nonstandard_strings() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let admin = db.client().await?;
    if string_settings(&admin).await?.len() < 2 {
        return Ok(());
    }
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET standard_conforming_strings = off",
            quote_ident(db.name())
        ))
        .await?;
    let mut client = db.client().await?;
    let report = pgq_core::install(&mut client, &Line::ALL).await?;
    let installed: Vec<(String, i32)> = client
        .query(
            "SELECT line, max(version) FROM pgq_rs.migrations GROUP BY line ORDER BY line",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut expected: Vec<(String, i32)> = Line::ALL
        .iter()
        .map(|line| (line.name().to_owned(), line.latest_version()))
        .collect();
    expected.sort();
    assert_eq!(installed, expected, "{report:?}");
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('standard_conforming_strings')",
            &[],
        )
        .await?;
    assert_eq!(
        row.get::<_, String>(0),
        "off",
        "the session keeps its own setting"
    );
    Ok(())
}
