//! Applying changes to a subscriber table.
//!
//! Batch mode merges all events of one primary key into their net effect (insert then
//! updates: one insert; updates: one update; insert then delete: nothing; delete then insert:
//! an update; a key change: a delete and an insert), then applies each table's merged rows with
//! three set-based statements: `DELETE … USING unnest(…)`, `UPDATE … FROM unnest(…)` and
//! `INSERT … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING`. Values travel as text arrays and
//! are cast to the column types on the server. Each statement must change exactly the rows the
//! merged events say, else the batch fails naming the keys. Per-event mode runs one statement
//! per event, with the same strictness.

use std::collections::HashMap;
use std::sync::Arc;

use pgq_core::quote_ident;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use crate::decode::Op;
use crate::error::{DbContext as _, LondisteError, Result, SUBSCRIBER};
use crate::meta::TableInfo;

/// Column values in the order of [`TableBatch::columns`].
pub(crate) type Row = Vec<Option<String>>;
/// Primary key values in key order.
pub(crate) type Key = Vec<Option<String>>;

/// How many keys an error names at most.
const KEYS_NAMED: usize = 5;

#[derive(Debug)]
enum Net {
    Insert(Row),
    Update(Row),
    Delete,
}

/// One subscriber table's merged changes within a batch (up to a flush).
#[derive(Debug)]
pub(crate) struct TableBatch {
    dest: Arc<TableInfo>,
    columns: Vec<String>,
    types: Vec<String>,
    key_idx: Vec<usize>,
    nets: HashMap<Key, Net>,
    bytes: usize,
    /// A filtered table's copy condition (see [`TableBatch::flush`]).
    condition: Option<String>,
}

impl TableBatch {
    /// An empty merge for rows carrying `columns` (the event's column list), of a table
    /// replicated whole or, with `condition`, only where it holds.
    pub(crate) fn new(
        dest: Arc<TableInfo>,
        columns: &[String],
        condition: Option<String>,
    ) -> Result<TableBatch, String> {
        let types = columns
            .iter()
            .map(|c| {
                dest.column(c)
                    .map(|col| col.sql_type.clone())
                    .ok_or_else(|| {
                        format!(
                            "subscriber table {} has no column {}",
                            dest.event_name,
                            quote_ident(c)
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key_idx = dest
            .pkey
            .iter()
            .map(|k| {
                columns.iter().position(|c| c == k).ok_or_else(|| {
                    format!("the event has no value for key column {}", quote_ident(k))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TableBatch {
            dest,
            columns: columns.to_vec(),
            types,
            key_idx,
            nets: HashMap::new(),
            bytes: 0,
            condition,
        })
    }

    /// The event column list this merge takes.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Bytes of row data held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The key of a row.
    pub(crate) fn key_of(&self, row: &Row) -> Key {
        self.key_idx.iter().map(|&i| row[i].clone()).collect()
    }

    /// Merges one event. `old_key` is set for an update that changed the primary key.
    pub(crate) fn merge(&mut self, op: Op, row: Row, old_key: Option<Key>) -> Result<(), String> {
        let key = self.key_of(&row);
        if let Some(old) = old_key.filter(|old| *old != key) {
            self.merge_one(Op::Delete, old, None)?;
            return self.merge_one(Op::Insert, key, Some(row));
        }
        self.merge_one(op, key, Some(row))
    }

    fn merge_one(&mut self, op: Op, key: Key, row: Option<Row>) -> Result<(), String> {
        let size = row.as_ref().map_or(0, row_bytes);
        let previous = self.nets.remove(&key);
        if let Some(Net::Insert(r) | Net::Update(r)) = &previous {
            self.bytes = self.bytes.saturating_sub(row_bytes(r));
        }
        let net = match (op, previous, row) {
            (Op::Insert, None, Some(r)) => Some(Net::Insert(r)),
            (Op::Insert, Some(Net::Delete), Some(r)) => Some(Net::Update(r)),
            (Op::Update, None | Some(Net::Update(_)), Some(r)) => Some(Net::Update(r)),
            (Op::Update, Some(Net::Insert(_)), Some(r)) => Some(Net::Insert(r)),
            (Op::Delete, None | Some(Net::Update(_)), _) => Some(Net::Delete),
            (Op::Delete, Some(Net::Insert(_)), _) => None,
            (op, previous, _) => {
                return Err(format!(
                    "{op:?} of key ({}) after {} in the same batch",
                    show_key(&key),
                    match previous {
                        Some(Net::Insert(_)) => "an insert",
                        Some(Net::Update(_)) => "an update",
                        Some(Net::Delete) => "a delete",
                        None => "nothing",
                    }
                ))
            }
        };
        if let Some(net) = net {
            if !matches!(net, Net::Delete) {
                self.bytes += size;
            }
            self.nets.insert(key, net);
        }
        Ok(())
    }

    /// Applies the merged changes and empties the merge. A filtered table's subscriber holds
    /// only the rows matching its condition, so its rows are put as they now are instead, with
    /// no row counts to check: a row that matches is inserted or updated, one that does not (or
    /// is deleted) is deleted if there.
    pub(crate) async fn flush(&mut self, tx: &Transaction<'_>) -> Result<()> {
        if let Some(condition) = self.condition.clone() {
            return self.flush_filtered(tx, &condition).await;
        }
        let mut deletes = Vec::new();
        let mut updates = Vec::new();
        let mut inserts = Vec::new();
        for (key, net) in self.nets.drain() {
            match net {
                Net::Delete => deletes.push(key),
                Net::Update(row) => updates.push(row),
                Net::Insert(row) => inserts.push(row),
            }
        }
        self.bytes = 0;
        if !deletes.is_empty() {
            self.delete(tx, &deletes).await?;
        }
        if !updates.is_empty() {
            self.update(tx, &updates).await?;
        }
        if !inserts.is_empty() {
            self.insert(tx, &inserts).await?;
        }
        Ok(())
    }

    async fn flush_filtered(&mut self, tx: &Transaction<'_>, condition: &str) -> Result<()> {
        let mut deletes = Vec::new();
        let mut rows = Vec::new();
        for (key, net) in self.nets.drain() {
            match net {
                Net::Delete => deletes.push(key),
                Net::Update(row) | Net::Insert(row) => rows.push(row),
            }
        }
        self.bytes = 0;
        if !deletes.is_empty() {
            self.delete_keys(tx, &deletes).await?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        // The rows with their own column names, so the condition reads them as it reads the
        // table; `matches` is the condition's verdict (NULL counts as no).
        let named = format!(
            "(SELECT v.*, coalesce(({condition}), false) AS pgq_rs_matches FROM (SELECT {} FROM {} AS r({})) AS v) AS m",
            (0..self.columns.len())
                .map(|i| format!("r.c{i}::{} AS {}", self.types[i], quote_ident(&self.columns[i])))
                .collect::<Vec<_>>()
                .join(", "),
            unnest_call(self.columns.len()),
            self.aliases()
        );
        let on_key = self
            .dest
            .pkey
            .iter()
            .map(|k| format!("d.{k} = m.{k}", k = quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let arrays = transpose(&rows, self.columns.len());
        let gone = format!(
            "DELETE FROM {} AS d USING {named} WHERE NOT m.pgq_rs_matches AND {on_key}",
            self.dest.quoted
        );
        run(tx, &gone, &arrays, "delete").await?;
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let non_key: Vec<&String> = columns
            .iter()
            .zip(&self.columns)
            .filter(|(_, c)| !self.dest.pkey.contains(c))
            .map(|(q, _)| q)
            .collect();
        let on_conflict = if non_key.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!(
                "DO UPDATE SET {}",
                non_key
                    .iter()
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let put = format!(
            "INSERT INTO {} ({cols}) SELECT {m_cols} FROM {named} WHERE m.pgq_rs_matches \
             ON CONFLICT ({pkey}) {on_conflict}",
            self.dest.quoted,
            cols = columns.join(", "),
            m_cols = columns
                .iter()
                .map(|c| format!("m.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            pkey = self
                .dest
                .pkey
                .iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", "),
        );
        run(tx, &put, &arrays, "insert").await.map(drop)
    }

    fn key_types(&self) -> Vec<&str> {
        self.key_idx
            .iter()
            .map(|&i| self.types[i].as_str())
            .collect()
    }

    async fn delete(&self, tx: &Transaction<'_>, keys: &[Key]) -> Result<()> {
        let changed = self.delete_keys(tx, keys).await?;
        self.check("delete", keys, &changed)
    }

    /// Deletes the rows of these keys that are there; returns the ordinals of those deleted.
    async fn delete_keys(&self, tx: &Transaction<'_>, keys: &[Key]) -> Result<Vec<i64>> {
        let key_types = self.key_types();
        let aliases: Vec<String> = (0..key_types.len()).map(|i| format!("k{i}")).collect();
        let condition = self
            .dest
            .pkey
            .iter()
            .zip(&key_types)
            .enumerate()
            .map(|(i, (k, t))| format!("d.{} = k.k{i}::{t}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "DELETE FROM {} AS d USING {} WITH ORDINALITY AS k({}, ord) WHERE {condition} RETURNING k.ord",
            self.dest.quoted,
            unnest_call(key_types.len()),
            aliases.join(", ")
        );
        run_ordinal(tx, &sql, &transpose(keys, key_types.len()), "delete").await
    }

    async fn update(&self, tx: &Transaction<'_>, rows: &[Row]) -> Result<()> {
        let non_key: Vec<usize> = (0..self.columns.len())
            .filter(|i| !self.key_idx.contains(i))
            .collect();
        let set_cols = if non_key.is_empty() {
            self.key_idx.clone()
        } else {
            non_key
        };
        let set = set_cols
            .iter()
            .map(|&i| {
                format!(
                    "{} = r.c{i}::{}",
                    quote_ident(&self.columns[i]),
                    self.types[i]
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let condition = self
            .key_idx
            .iter()
            .map(|&i| {
                format!(
                    "d.{} = r.c{i}::{}",
                    quote_ident(&self.columns[i]),
                    self.types[i]
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "UPDATE {} AS d SET {set} FROM {} WITH ORDINALITY AS r({}, ord) WHERE {condition} RETURNING r.ord",
            self.dest.quoted,
            unnest_call(self.columns.len()),
            self.aliases()
        );
        let arrays = transpose(rows, self.columns.len());
        let changed = run_ordinal(tx, &sql, &arrays, "update").await?;
        let keys: Vec<Key> = rows.iter().map(|r| self.key_of(r)).collect();
        self.check("update", &keys, &changed)
    }

    async fn insert(&self, tx: &Transaction<'_>, rows: &[Row]) -> Result<()> {
        let values = (0..self.columns.len())
            .map(|i| format!("r.c{i}::{}", self.types[i]))
            .collect::<Vec<_>>()
            .join(", ");
        let pkey = self
            .dest
            .pkey
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH ins AS (INSERT INTO {} ({}) SELECT {values} FROM {} WITH ORDINALITY AS r({}, ord) \
             ON CONFLICT ({pkey}) DO NOTHING RETURNING {pkey}) \
             SELECT r.ord FROM {} WITH ORDINALITY AS r({}, ord) \
             WHERE NOT EXISTS (SELECT FROM ins WHERE {})",
            self.dest.quoted,
            self.columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            unnest_call(self.columns.len()),
            self.aliases(),
            unnest_call(self.columns.len()),
            self.aliases(),
            self.key_idx
                .iter()
                .map(|&i| format!(
                    "ins.{} = r.c{i}::{}",
                    quote_ident(&self.columns[i]),
                    self.types[i]
                ))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let arrays = transpose(rows, self.columns.len());
        let conflicting = run_ordinal(tx, &sql, &arrays, "insert").await?;
        if conflicting.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = conflicting
            .iter()
            .take(KEYS_NAMED)
            .filter_map(|&ord| ordinal_index(ord).and_then(|i| rows.get(i)))
            .map(|r| format!("({})", show_key(&self.key_of(r))))
            .collect();
        Err(LondisteError::RowCount {
            table: self.dest.event_name.clone(),
            what: "insert",
            expected: rows.len(),
            changed: rows.len() - conflicting.len(),
            keys: format!("{} (already present)", keys.join(", ")),
        })
    }

    fn aliases(&self) -> String {
        (0..self.columns.len())
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every input ordinal must be among the changed ones.
    fn check(&self, what: &'static str, keys: &[Key], changed: &[i64]) -> Result<()> {
        if changed.len() == keys.len() {
            return Ok(());
        }
        let mut hit = vec![false; keys.len()];
        for &ord in changed {
            if let Some(slot) = ordinal_index(ord).and_then(|i| hit.get_mut(i)) {
                *slot = true;
            }
        }
        let missing: Vec<String> = keys
            .iter()
            .zip(&hit)
            .filter(|(_, &h)| !h)
            .take(KEYS_NAMED)
            .map(|(k, _)| format!("({})", show_key(k)))
            .collect();
        Err(LondisteError::RowCount {
            table: self.dest.event_name.clone(),
            what,
            expected: keys.len(),
            changed: changed.len(),
            keys: format!("{} (not found)", missing.join(", ")),
        })
    }
}

/// Applies one event with one statement (per-event mode and the fallback after a unique
/// violation). `old_key` is the key before an update that changed it.
pub(crate) async fn apply_one(
    tx: &Transaction<'_>,
    batch: &TableBatch,
    op: Op,
    row: &Row,
    old_key: Option<&Key>,
) -> Result<()> {
    let types = &batch.types;
    let columns = &batch.columns;
    let key = batch.key_of(row);
    let where_key = |offset: usize| {
        batch
            .key_idx
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "{} = ${}::{}",
                    quote_ident(&columns[i]),
                    offset + n + 1,
                    types[i]
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let (sql, params): (String, Vec<&Option<String>>) = match op {
        Op::Insert => (
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                batch.dest.quoted,
                columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                (0..columns.len())
                    .map(|i| format!("${}::{}", i + 1, types[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            row.iter().collect(),
        ),
        Op::Update => {
            let set = (0..columns.len())
                .map(|i| format!("{} = ${}::{}", quote_ident(&columns[i]), i + 1, types[i]))
                .collect::<Vec<_>>()
                .join(", ");
            let mut params: Vec<&Option<String>> = row.iter().collect();
            params.extend(old_key.unwrap_or(&key));
            (
                format!(
                    "UPDATE {} SET {set} WHERE {}",
                    batch.dest.quoted,
                    where_key(columns.len())
                ),
                params,
            )
        }
        Op::Delete => (
            format!("DELETE FROM {} WHERE {}", batch.dest.quoted, where_key(0)),
            key.iter().collect(),
        ),
        Op::Truncate => return truncate(tx, &batch.dest).await,
    };
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
        .iter()
        .map(|p| (*p as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    let changed = tx
        .query_typed(&format!("{sql} RETURNING 1"), &typed)
        .await
        .on(SUBSCRIBER, format!("{op:?} on {}", batch.dest.event_name))?
        .len();
    if changed != 1 {
        return Err(LondisteError::RowCount {
            table: batch.dest.event_name.clone(),
            what: match op {
                Op::Insert => "insert",
                Op::Update => "update",
                _ => "delete",
            },
            expected: 1,
            changed,
            keys: format!("({})", show_key(old_key.unwrap_or(&key))),
        });
    }
    Ok(())
}

/// Empties a subscriber table (a replicated TRUNCATE).
pub(crate) async fn truncate(tx: &Transaction<'_>, dest: &TableInfo) -> Result<()> {
    tx.batch_execute(&format!("TRUNCATE {}", dest.quoted))
        .await
        .on(SUBSCRIBER, format!("truncate {}", dest.event_name))
}

/// `unnest($1::text[], …, $n::text[])`.
fn unnest_call(n: usize) -> String {
    format!(
        "unnest({})",
        (1..=n)
            .map(|i| format!("${i}::text[]"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Rows to one array per column.
fn transpose(rows: &[Vec<Option<String>>], width: usize) -> Vec<Vec<Option<String>>> {
    let mut arrays = vec![Vec::with_capacity(rows.len()); width];
    for row in rows {
        for (array, value) in arrays.iter_mut().zip(row) {
            array.push(value.clone());
        }
    }
    arrays
}

/// Runs a statement whose parameters are one text array per column.
async fn run(
    tx: &Transaction<'_>,
    sql: &str,
    arrays: &[Vec<Option<String>>],
    what: &str,
) -> Result<Vec<tokio_postgres::Row>> {
    let params: Vec<(&(dyn ToSql + Sync), Type)> = arrays
        .iter()
        .map(|a| (a as &(dyn ToSql + Sync), Type::TEXT_ARRAY))
        .collect();
    tx.query_typed(sql, &params)
        .await
        .on(SUBSCRIBER, format!("batch {what}"))
}

/// [`run`] for a statement that returns the ordinals of the array elements it acted on.
async fn run_ordinal(
    tx: &Transaction<'_>,
    sql: &str,
    arrays: &[Vec<Option<String>>],
    what: &str,
) -> Result<Vec<i64>> {
    Ok(run(tx, sql, arrays, what)
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect())
}

fn ordinal_index(ord: i64) -> Option<usize> {
    usize::try_from(ord).ok()?.checked_sub(1)
}

fn row_bytes(row: &Row) -> usize {
    row.iter()
        .map(|v| v.as_ref().map_or(0, String::len) + std::mem::size_of::<Option<String>>())
        .sum()
}

/// A key for messages: `1, 'a'`.
fn show_key(key: &Key) -> String {
    key.iter()
        .map(|v| v.as_deref().unwrap_or("NULL"))
        .collect::<Vec<_>>()
        .join(", ")
}
