//! `londiste check`: what has drifted between the provider, the subscriber and the
//! replicator's records.

use pgq_core::quote_ident;
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::admin::list_tables;
use crate::config::Config;
use crate::error::{DbContext as _, Result, PROVIDER, SUBSCRIBER};
use crate::meta::{conversion, key_difference, table_info, TableInfo};
use crate::state::TableState;

// language=SQL
const PROVIDER_TABLES: &str = "\
SELECT table_name FROM londiste_rs.provider_table WHERE queue_name = $1 ORDER BY 1";

// language=SQL
const TRIGGERS: &str = "\
SELECT tgname::text, tgenabled::text, pg_catalog.pg_get_triggerdef(oid)
  FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname::text = ANY ($2)";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Replication of the table fails or silently loses changes.
    Error,
    /// Replication goes on, but something is not as it should be.
    Warning,
}

/// One thing `check` found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Drift {
    /// The provider table it is about.
    pub table: String,
    /// How bad it is.
    pub severity: Severity,
    /// What is wrong, naming the column or trigger.
    pub problem: String,
}

/// Lists drift: tables registered on one side only, missing, disabled or stale capture
/// triggers, missing primary keys, columns the subscriber lacks or has with another type,
/// subscriber-only columns that refuse the worker's inserts, and tables not `ok`.
///
/// # Errors
///
/// Connection failures.
pub async fn check(config: &Config) -> Result<Vec<Drift>> {
    let provider = config.provider.connect().await?;
    let subscriber = config.subscriber.connect().await?;
    let queue = config.queue.as_str();
    let subscribed = list_tables(&subscriber, config).await?;
    let captured: Vec<String> = provider
        .query_typed(PROVIDER_TABLES, &[(&queue, Type::TEXT)])
        .await
        .on(PROVIDER, "listing the queue's tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut found = Vec::new();
    let mut drift = |table: &str, severity, problem: String| {
        found.push(Drift {
            table: table.to_owned(),
            severity,
            problem,
        });
    };
    for table in captured
        .iter()
        .filter(|t| !subscribed.iter().any(|s| &s.table == *t))
    {
        drift(
            table,
            Severity::Warning,
            "captured on the provider but not subscribed: its events are skipped".to_owned(),
        );
    }
    for sub in &subscribed {
        let table = sub.table.as_str();
        if sub.state != TableState::Ok {
            drift(table, Severity::Warning, format!("state {}", sub.state));
        }
        if !captured.contains(&sub.table) {
            drift(
                table,
                Severity::Error,
                "subscribed but not captured on the provider: no changes arrive".to_owned(),
            );
        }
        let Some(source) = table_info(&provider, PROVIDER, table).await? else {
            drift(
                table,
                Severity::Error,
                "the provider table is gone".to_owned(),
            );
            continue;
        };
        if source.pkey.is_empty() {
            drift(
                table,
                Severity::Error,
                "the provider table has no primary key".to_owned(),
            );
        }
        for problem in trigger_problems(&provider, config, &source).await? {
            drift(table, Severity::Error, problem);
        }
        let Some(dest) = table_info(&subscriber, SUBSCRIBER, &sub.dest_table).await? else {
            drift(
                table,
                Severity::Error,
                format!("subscriber table {} is gone", sub.dest_table),
            );
            continue;
        };
        for (severity, problem) in column_problems(&subscriber, &source, &dest).await? {
            drift(table, severity, problem);
        }
    }
    Ok(found)
}

/// The capture triggers must be there, enabled, and write into this queue.
async fn trigger_problems(
    provider: &Client,
    config: &Config,
    source: &TableInfo,
) -> Result<Vec<String>> {
    let queue = config.queue.as_str();
    let names = [
        format!("_londiste_rs_{queue}"),
        format!("_londiste_rs_{queue}_truncate"),
    ];
    let rows = provider
        .query_typed(
            TRIGGERS,
            &[
                (&source.oid, Type::OID),
                (&names.to_vec(), Type::TEXT_ARRAY),
            ],
        )
        .await
        .on(PROVIDER, "reading capture triggers")?;
    let mut problems = Vec::new();
    for name in &names {
        let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == *name) else {
            problems.push(format!("capture trigger {} is missing", quote_ident(name)));
            continue;
        };
        let enabled: String = row.get(1);
        let definition: String = row.get(2);
        if enabled == "D" {
            problems.push(format!("capture trigger {} is disabled", quote_ident(name)));
        }
        if !definition.contains(&format!("logutriga('{}'", queue.replace('\'', "''"))) {
            problems.push(format!(
                "capture trigger {} does not write into queue {queue}: {definition}",
                quote_ident(name)
            ));
        }
    }
    Ok(problems)
}

/// Columns the subscriber lacks or has with a type that would convert the provider's values
/// (errors: the worker stops there), has with a wider type (a warning), or has alone and NOT
/// NULL without a default (inserts fail).
async fn column_problems(
    subscriber: &Client,
    source: &TableInfo,
    dest: &TableInfo,
) -> Result<Vec<(Severity, String)>> {
    let mut problems = Vec::new();
    for column in &source.columns {
        match dest.column(&column.name) {
            None => problems.push((
                Severity::Error,
                format!(
                    "column {} ({}) is missing on the subscriber",
                    quote_ident(&column.name),
                    column.sql_type
                ),
            )),
            Some(theirs) if theirs.sql_type != column.sql_type => {
                problems.push(match conversion(column, theirs) {
                    Some(problem) => (Severity::Error, problem),
                    None => (
                        Severity::Warning,
                        format!(
                            "column {} is {} on the provider, {} on the subscriber",
                            quote_ident(&column.name),
                            column.sql_type,
                            theirs.sql_type
                        ),
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(difference) = key_difference(source, dest) {
        problems.push((Severity::Error, difference));
    }
    let strict: Vec<String> = subscriber
        .query_typed(
            "SELECT attname::text FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attnotnull
                AND NOT atthasdef AND attgenerated = '' AND attidentity = ''",
            &[(&dest.oid, Type::OID)],
        )
        .await
        .on(SUBSCRIBER, "reading NOT NULL columns")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in strict.iter().filter(|n| source.column(n).is_none()) {
        problems.push((
            Severity::Error,
            format!(
                "column {} exists on the subscriber only, NOT NULL without a default: inserts fail",
                quote_ident(name)
            ),
        ));
    }
    Ok(problems)
}
