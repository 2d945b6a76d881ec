//! What the catalogs say about a table: its columns with their SQL types, and its primary key.

use pgq_core::quote_ident;
use tokio_postgres::types::{Oid, Type};
use tokio_postgres::{GenericClient, Row};

use crate::error::{DbContext as _, LondisteError, Result, PROVIDER};

// language=SQL
const RESOLVE: &str = "\
SELECT c.oid, n.nspname, c.relname, c.relkind::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass($1)";

// language=SQL
const RESOLVE_REGISTERED: &str = "\
SELECT c.oid, n.nspname, c.relname, c.relkind::text
  FROM londiste_rs.provider_table p
  JOIN pg_catalog.pg_class c ON c.oid = p.table_oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE p.queue_name = $1 AND p.table_name = $2";

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

/// How the subscriber table's primary key differs from the provider table's, if it does.
pub(crate) fn key_difference(source: &TableInfo, dest: &TableInfo) -> Option<String> {
    (dest.pkey != source.pkey).then(|| {
        format!(
            "primary key ({}) on the subscriber, ({}) on the provider",
            dest.pkey.join(", "),
            source.pkey.join(", ")
        )
    })
}

/// Looks a table up by name (quoted or not, as SQL reads it); `None` when it does not exist.
pub(crate) async fn table_info(
    client: &impl GenericClient,
    side: &'static str,
    name: &str,
) -> Result<Option<TableInfo>> {
    let row = client
        .query_typed_opt(RESOLVE, &[(&name, Type::TEXT)])
        .await
        .on(side, format!("looking up table {name}"))?;
    describe(client, side, name, row).await
}

/// The provider table registered on `queue` as `event_name` (by the oid recorded when it was
/// added); `None` when it is not registered or no longer exists.
pub(crate) async fn registered_table_info(
    provider: &impl GenericClient,
    queue: &str,
    event_name: &str,
) -> Result<Option<TableInfo>> {
    let row = provider
        .query_typed_opt(
            RESOLVE_REGISTERED,
            &[(&queue, Type::TEXT), (&event_name, Type::TEXT)],
        )
        .await
        .on(PROVIDER, format!("looking up table {event_name}"))?;
    describe(provider, PROVIDER, event_name, row).await
}

/// A table's columns, key and kind, from its row of [`RESOLVE`].
async fn describe(
    client: &impl GenericClient,
    side: &'static str,
    name: &str,
    resolved: Option<Row>,
) -> Result<Option<TableInfo>> {
    let Some(row) = resolved else {
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
    if let Some(problem) = converting_column(provider, dest) {
        return Err(mismatch(problem));
    }
    key_difference(provider, dest).map_or(Ok(()), |problem| Err(mismatch(problem)))
}

/// The first column both tables have whose provider values the subscriber's type would
/// convert (round, cut, reinterpret or refuse): replicated, the sides would silently differ.
pub(crate) fn converting_column(provider: &TableInfo, dest: &TableInfo) -> Option<String> {
    provider
        .columns
        .iter()
        .find_map(|column| conversion(column, dest.column(&column.name)?))
}

/// Why the subscriber's `theirs` cannot take the provider's `column` unchanged, if it cannot.
pub(crate) fn conversion(column: &Column, theirs: &Column) -> Option<String> {
    (!holds(&column.sql_type, &theirs.sql_type)).then(|| {
        format!(
            "column {} is {} on the provider, {} on the subscriber: values would be converted \
             (change both sides with `londiste execute`)",
            quote_ident(&column.name),
            column.sql_type,
            theirs.sql_type
        )
    })
}

/// Whether a column of type `wide` (as `format_type` writes it) holds every value of type
/// `narrow` unchanged: the same type, or a wider one of the same family.
fn holds(narrow: &str, wide: &str) -> bool {
    fn split(sql_type: &str) -> (String, Vec<u32>) {
        match sql_type.split_once('(') {
            None => (sql_type.to_owned(), Vec::new()),
            Some((head, rest)) => {
                let (args, tail) = rest.split_once(')').unwrap_or((rest, ""));
                (
                    format!("{head}{tail}"),
                    args.split(',')
                        .filter_map(|a| a.trim().parse().ok())
                        .collect(),
                )
            }
        }
    }
    const INTEGERS: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];
    if narrow == wide {
        return true;
    }
    let (narrow_base, narrow_mods) = split(narrow);
    let (wide_base, wide_mods) = split(wide);
    if narrow_base != wide_base {
        let rank = |t: &str| INTEGERS.iter().position(|i| *i == t);
        let text = |t: &str| t == "text" || t == "character varying";
        return match (rank(&narrow_base), rank(&wide_base)) {
            (Some(n), Some(w)) => n < w && wide_mods.is_empty(),
            _ => {
                narrow == "real" && wide == "double precision"
                    || text(&narrow_base) && text(&wide_base) && wide_mods.is_empty()
            }
        };
    }
    // Fixed-length types pad: another length is another value.
    if narrow_base == "character" || narrow_base == "bit" {
        return false;
    }
    // numeric(p, s) into numeric(p2, s) with p2 >= p; a precision (time, timestamp,
    // interval) or a length (character varying, bit varying) into a larger one; anything into
    // no limit.
    match (narrow_mods.as_slice(), wide_mods.as_slice()) {
        (_, []) => true,
        ([p, s], [p2, s2]) => s == s2 && p2 >= p,
        ([n], [w]) => w >= n,
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::holds;

    #[test]
    fn a_wider_type_holds_a_narrower_ones_values() {
        for (narrow, wide) in [
            ("integer", "integer"),
            ("smallint", "bigint"),
            ("integer", "numeric"),
            ("real", "double precision"),
            ("character varying(5)", "character varying(9)"),
            ("character varying(5)", "text"),
            ("text", "character varying"),
            ("numeric(10,2)", "numeric(12,2)"),
            ("numeric(10,2)", "numeric"),
            (
                "timestamp(3) without time zone",
                "timestamp without time zone",
            ),
            ("time(2) with time zone", "time(4) with time zone"),
        ] {
            assert!(holds(narrow, wide), "{narrow} into {wide}");
        }
    }

    #[test]
    fn a_type_that_would_convert_values_does_not() {
        for (narrow, wide) in [
            ("bigint", "integer"),
            ("numeric", "integer"),
            ("integer", "numeric(5,0)"),
            ("double precision", "real"),
            ("numeric(10,2)", "numeric(12,3)"),
            ("numeric", "numeric(10,2)"),
            ("text", "character varying(5)"),
            ("character varying(9)", "character varying(5)"),
            ("character(5)", "character(9)"),
            ("timestamp with time zone", "timestamp without time zone"),
            (
                "timestamp without time zone",
                "timestamp(3) without time zone",
            ),
            ("json", "jsonb"),
            ("integer", "text"),
        ] {
            assert!(!holds(narrow, wide), "{narrow} into {wide}");
        }
    }
}
