//! `londiste execute`: DDL run on the provider and queued, so the worker runs it on the
//! subscriber at the same point of the event stream.
//!
//! In one provider transaction: the script is recorded under its file name (so a file runs
//! once), run with `session_replication_role = local` (capture triggers are silent there, so a
//! backfill is not captured: the subscriber runs the script itself), checked, and then the
//! `EXECUTE` event is inserted. Inserting it last matters: by then the script holds its locks,
//! so every change it could conflict with committed before it (and comes earlier in the
//! stream) or waits for it (and comes later).

use pgq_core::NewEvent;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::config::Config;
use crate::error::{DbContext as _, LondisteError, Result, PROVIDER};

/// The event type of a queued script; `ev_extra1` holds the file name, `ev_extra2` the
/// `search_path` it ran with on the provider, `ev_data` the script.
pub(crate) const EXECUTE_EVENT: &str = "EXECUTE";

// language=SQL
const RECORD_SCRIPT: &str = "\
INSERT INTO londiste_rs.executed (queue_name, file_name, script) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING RETURNING 1";

// language=SQL
const DEFAULTS: &str = "SELECT oid FROM pg_catalog.pg_attrdef";

// A column the script added (its default is new) whose default calls a function that is not
// immutable, or reads the clock or the session (CURRENT_TIMESTAMP, CURRENT_USER): each side
// would fill the existing rows with its own values. Read from the stored expression tree: no
// dependency is recorded on built-in functions.
// language=SQL
const UNSTABLE_DEFAULT: &str = "\
SELECT pg_catalog.format('%s.%I = %s', d.adrelid::pg_catalog.regclass, a.attname,
                         pg_catalog.pg_get_expr(d.adbin, d.adrelid))
  FROM pg_catalog.pg_attrdef d
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
 WHERE NOT d.oid = ANY ($1)
   AND a.attgenerated = ''
   AND NOT (a.attrelid::pg_catalog.text || ':' || a.attnum::pg_catalog.text) = ANY ($2)
   AND (d.adbin::pg_catalog.text OPERATOR(pg_catalog.~) '\\{SQLVALUEFUNCTION'
        OR EXISTS (SELECT FROM pg_catalog.regexp_matches(d.adbin::pg_catalog.text,
                                                          ':(?:func|opfunc)id (\\d+)', 'g') m
                     JOIN pg_catalog.pg_proc p ON p.oid = m[1]::pg_catalog.oid
                    WHERE p.provolatile <> 'i'))
 LIMIT 1";

// The columns there are before the script, as `table oid:column number`.
// language=SQL
const COLUMNS_BEFORE: &str = "\
SELECT attrelid::pg_catalog.text || ':' || attnum::pg_catalog.text
  FROM pg_catalog.pg_attribute WHERE attnum > 0";

/// What `execute` did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Executed {
    /// The file name the script is recorded under.
    pub file: String,
    /// The queued event's id.
    pub event_id: i64,
}

/// Runs a DDL script on the provider and queues it for the subscriber (see the module
/// documentation).
///
/// # Errors
///
/// [`LondisteError::Execute`], with nothing changed, for a script that controls transactions
/// or cannot run in one, a file name executed already, a column added with a default that is
/// not immutable, or a failing statement.
pub async fn execute(config: &Config, file: &str, script: &str) -> Result<Executed> {
    let refuse = |problem: String| LondisteError::Execute {
        file: file.to_owned(),
        problem,
    };
    if let Some(statement) = transaction_control(script) {
        return Err(refuse(format!(
            "it controls transactions ({statement}): the script runs in one transaction of its own"
        )));
    }
    let mut provider = config.provider.connect().await?;
    let tx = provider
        .transaction()
        .await
        .on(PROVIDER, "starting the script's transaction")?;
    tx.batch_execute("SET LOCAL session_replication_role = local")
        .await
        .map_err(|err| {
            refuse(format!(
                "cannot set session_replication_role = local, which keeps the script's own \
                 changes out of the capture ({}): connect as a superuser, or on PostgreSQL 15+ \
                 run `GRANT SET ON PARAMETER session_replication_role TO <role>`",
                err.as_db_error()
                    .map_or_else(|| err.to_string(), |db| db.message().to_owned())
            ))
        })?;
    let queue = config.queue.as_str();
    if !record_script(&tx, PROVIDER, queue, file, script).await? {
        return Err(refuse(format!("was executed on queue {queue} already")));
    }
    let search_path: String = tx
        .query_typed_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .on(PROVIDER, "reading the search_path")?
        .get(0);
    let defaults: Vec<u32> = tx
        .query_typed(DEFAULTS, &[])
        .await
        .on(PROVIDER, "reading column defaults")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let columns: Vec<String> = tx
        .query_typed(COLUMNS_BEFORE, &[])
        .await
        .on(PROVIDER, "reading columns")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Err(err) = tx.batch_execute(script).await {
        let why = err
            .as_db_error()
            .map_or_else(|| err.to_string(), |db| db.message().to_owned());
        return Err(refuse(
            if err.code() == Some(&SqlState::ACTIVE_SQL_TRANSACTION) {
                format!("a statement cannot run inside a transaction ({why})")
            } else {
                format!("it failed on the provider: {why}")
            },
        ));
    }
    let unstable: Option<String> = tx
        .query_typed_opt(
            UNSTABLE_DEFAULT,
            &[(&defaults, Type::OID_ARRAY), (&columns, Type::TEXT_ARRAY)],
        )
        .await
        .on(PROVIDER, "checking new column defaults")?
        .map(|r| r.get(0));
    if let Some(column) = unstable {
        return Err(refuse(format!(
            "it adds column {column}, a default that is not immutable: provider and subscriber \
             would fill the existing rows differently; add the column without it, then set it"
        )));
    }
    let mut event = NewEvent::new(EXECUTE_EVENT, script);
    event.extra1 = Some(file.to_owned());
    event.extra2 = Some(search_path);
    let id = pgq_core::insert_event_ext(&tx, &config.queue, &event).await?;
    tx.commit().await.on(PROVIDER, "committing the script")?;
    Ok(Executed {
        file: file.to_owned(),
        event_id: id.0,
    })
}

/// Records a script under its file name and queue, on either side; `false` for one recorded
/// already.
pub(crate) async fn record_script(
    tx: &Transaction<'_>,
    side: &'static str,
    queue: &str,
    file: &str,
    script: &str,
) -> Result<bool> {
    let rows = tx
        .query_typed(
            RECORD_SCRIPT,
            &[
                (&queue, Type::TEXT),
                (&file, Type::TEXT),
                (&script, Type::TEXT),
            ],
        )
        .await
        .on(side, "recording the script")?;
    Ok(!rows.is_empty())
}

/// The first statement of `script` that starts, ends or splits a transaction (`BEGIN`,
/// `COMMIT`, `SAVEPOINT`, …), read past comments, quoted strings and dollar-quoted bodies.
pub(crate) fn transaction_control(script: &str) -> Option<String> {
    const CONTROL: &[&str] = &[
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "prepare",
    ];
    statements(script).into_iter().find_map(|first_word| {
        CONTROL
            .contains(&first_word.to_ascii_lowercase().as_str())
            .then(|| first_word.to_ascii_uppercase())
    })
}

/// The first word of each statement of `script`.
fn statements(script: &str) -> Vec<String> {
    let bytes = script.as_bytes();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut at_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &script[i..];
        let c = bytes[i];
        let skip = if rest.starts_with("--") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |end| end + 2)
        } else if c == b'\'' || c == b'"' {
            closing(rest, c as char)
        } else if c == b'$' {
            dollar_quoted(rest).unwrap_or(1)
        } else {
            0
        };
        if skip > 0 {
            if at_start && !word.is_empty() {
                words.push(std::mem::take(&mut word));
                at_start = false;
            }
            i += skip;
            continue;
        }
        if c == b';' {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            at_start = true;
        } else if at_start && c.is_ascii_alphabetic() {
            word.push(c as char);
        } else if at_start && !word.is_empty() {
            words.push(std::mem::take(&mut word));
            at_start = false;
        }
        i += 1;
    }
    if at_start && !word.is_empty() {
        words.push(word);
    }
    words
}

/// Length of a quoted string or identifier that starts `text` (quotes doubled inside).
fn closing(text: &str, quote: char) -> usize {
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((at, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|&(_, next)| next == quote) {
                chars.next();
            } else {
                return at + 1;
            }
        }
    }
    text.len()
}

/// Length of a dollar-quoted string (`$tag$ … $tag$`) that starts `text`, if one does.
fn dollar_quoted(text: &str) -> Option<usize> {
    let tag_end = text[1..].find('$')? + 2;
    let tag = &text[..tag_end];
    if !tag[1..tag.len() - 1]
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_')
    {
        return None;
    }
    Some(
        text[tag_end..]
            .find(tag)
            .map_or(text.len(), |end| tag_end + end + tag.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_transaction_control_outside_bodies_and_strings() {
        assert_eq!(transaction_control("ALTER TABLE t ADD c int"), None);
        assert_eq!(
            transaction_control("alter table t add c int; commit; select 1"),
            Some("COMMIT".to_owned())
        );
        assert_eq!(
            transaction_control(
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;
                 -- COMMIT in a comment
                 /* ROLLBACK; */ SELECT 'a; commit';"
            ),
            None
        );
        assert_eq!(transaction_control("  Begin;"), Some("BEGIN".to_owned()));
        assert_eq!(
            transaction_control("select 1;\nSAVEPOINT x"),
            Some("SAVEPOINT".to_owned())
        );
    }
}
