//! Where a replicated table is on its way from `add-table` to replicated.

use std::error::Error as StdError;
use std::fmt;

use serde::Serialize;
use tokio_postgres::types::{FromSql, Type};

/// The state of a replicated table, as `londiste_rs.subscriber_table.state` records it
/// (`in-copy` → `catching-up` → `ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableState {
    /// The initial copy runs; the worker holds back batches that touch the table.
    InCopy,
    /// The copy is done; the worker skips the events its snapshot already holds, until a
    /// batch ends past every transaction the snapshot saw.
    CatchingUp,
    /// Replicated: every event is applied.
    Ok,
}

impl TableState {
    /// Every state, in the order a table goes through them.
    pub const ALL: [TableState; 3] = [TableState::InCopy, TableState::CatchingUp, TableState::Ok];

    /// The name the subscriber's table stores.
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::InCopy => "in-copy",
            TableState::CatchingUp => "catching-up",
            TableState::Ok => "ok",
        }
    }
}

impl fmt::Display for TableState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl<'a> FromSql<'a> for TableState {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let name = <&str as FromSql>::from_sql(ty, raw)?;
        TableState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
            .ok_or_else(|| format!("unknown table state {name:?}").into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::TableState;

    /// The names are the stored ones, and `--json` and the tables listing print them so.
    #[test]
    fn states_keep_their_names() {
        for (state, name) in [
            (TableState::InCopy, "in-copy"),
            (TableState::CatchingUp, "catching-up"),
            (TableState::Ok, "ok"),
        ] {
            assert_eq!(state.as_str(), name);
            assert_eq!(format!("[{state:<12}]"), format!("[{name:<12}]"));
            assert_eq!(serde_json::to_value(state).unwrap(), name);
        }
    }
}
