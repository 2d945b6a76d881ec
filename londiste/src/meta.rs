//! What the catalogs say about a table: its columns with their SQL types, and its primary key.

use pgq_core::quote_ident;
use tokio_postgres::types::{Oid, Type};
use tokio_postgres::GenericClient;

use crate::error::{DbContext as _, LondisteError, Result};

// language=SQL
const RESOLVE: &str = "\
SELECT c.oid, n.nspname, c.relname, c.relkind::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass($1)";

// language=SQL
const COLUMNS: &str = "\
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attnum";

// language=SQL
const GENERATED: &str = "\
SELECT a.attname::text FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''";

// language=SQL
const PRIMARY_KEY: &str = "\
SELECT a.attname::text
  FROM pg_catalog.pg_index i
 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = $1 AND i.indisprimary
 ORDER BY k.ord";

/// A column: its name and its type as SQL (`integer`, `character(84)`, `numeric(10,2)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) sql_type: String,
}

/// A table as the catalogs describe it.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    pub(crate) oid: Oid,
    /// `schema.table`, unquoted: how the capture trigger names it in `ev_extra1`.
    pub(crate) event_name: String,
    /// `"schema"."table"`.
    pub(crate) quoted: String,
    pub(crate) columns: Vec<Column>,
    /// Primary key columns, in key order; empty when there is none.
    pub(crate) pkey: Vec<String>,
    /// Generated columns: computed by each side itself, never written.
    pub(crate) generated: Vec<String>,
    /// Partitioned (its rows live in partitions): read without `ONLY`.
    pub(crate) partitioned: bool,
}

impl TableInfo {
    /// The column named `name`.
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Refuses a table without a primary key.
    pub(crate) fn require_pkey(&self) -> Result<()> {
        if self.pkey.is_empty() {
            return Err(LondisteError::NoPrimaryKey {
                table: self.event_name.clone(),
            });
        }
        Ok(())
    }
}

/// Looks a table up by name (quoted or not, as SQL reads it); `None` when it does not exist.
pub(crate) async fn table_info(
    client: &impl GenericClient,
    side: &'static str,
    name: &str,
) -> Result<Option<TableInfo>> {
    let Some(row) = client
        .query_typed_opt(RESOLVE, &[(&name, Type::TEXT)])
        .await
        .on(side, format!("looking up table {name}"))?
    else {
        return Ok(None);
    };
    let oid: Oid = row.get(0);
    let schema: String = row.get(1);
    let relname: String = row.get(2);
    let kind: String = row.get(3);
    if kind != "r" && kind != "p" {
        return Err(LondisteError::TableState {
            table: name.to_owned(),
            problem: format!("is not a table (relkind {kind})"),
        });
    }
    let columns = client
        .query_typed(COLUMNS, &[(&oid, Type::OID)])
        .await
        .on(side, format!("reading the columns of {name}"))?
        .into_iter()
        .map(|r| Column {
            name: r.get(0),
            sql_type: r.get(1),
        })
        .collect();
    let generated = client
        .query_typed(GENERATED, &[(&oid, Type::OID)])
        .await
        .on(side, format!("reading the generated columns of {name}"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let pkey = client
        .query_typed(PRIMARY_KEY, &[(&oid, Type::OID)])
        .await
        .on(side, format!("reading the primary key of {name}"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(TableInfo {
        oid,
        event_name: format!("{schema}.{relname}"),
        quoted: format!("{}.{}", quote_ident(&schema), quote_ident(&relname)),
        columns,
        pkey,
        generated,
        partitioned: kind == "p",
    }))
}

/// Like [`table_info`], with an error naming the side when the table is missing.
pub(crate) async fn require_table(
    client: &impl GenericClient,
    side: &'static str,
    name: &str,
) -> Result<TableInfo> {
    table_info(client, side, name)
        .await?
        .ok_or_else(|| LondisteError::NotFound {
            side,
            kind: "table",
            name: name.to_owned(),
        })
}

/// Checks that the subscriber table can take the provider table's rows: every provider column
/// exists there, and the primary keys are the same columns.
pub(crate) fn check_compatible(provider: &TableInfo, dest: &TableInfo) -> Result<()> {
    let mismatch = |problem: String| LondisteError::TableMismatch {
        table: provider.event_name.clone(),
        dest: dest.event_name.clone(),
        problem,
    };
    for column in &provider.columns {
        if dest.column(&column.name).is_none() {
            return Err(mismatch(format!(
                "column {} ({}) is missing on the subscriber",
                quote_ident(&column.name),
                column.sql_type
            )));
        }
    }
    if dest.pkey != provider.pkey {
        return Err(mismatch(format!(
            "primary key ({}) on the subscriber, ({}) on the provider",
            dest.pkey.join(", "),
            provider.pkey.join(", ")
        )));
    }
    Ok(())
}

/// The `CREATE TABLE` for a subscriber copy of `provider` named `dest` (quoted): the same
/// columns, types, NOT NULLs and primary key.
pub(crate) fn create_table_sql(
    provider: &TableInfo,
    not_null: &[String],
    dest_quoted: &str,
) -> String {
    let mut parts: Vec<String> = provider
        .columns
        .iter()
        .map(|c| {
            let null = if not_null.contains(&c.name) {
                " NOT NULL"
            } else {
                ""
            };
            format!("{} {}{null}", quote_ident(&c.name), c.sql_type)
        })
        .collect();
    parts.push(format!(
        "PRIMARY KEY ({})",
        provider
            .pkey
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    format!("CREATE TABLE {dest_quoted} ({})", parts.join(", "))
}
