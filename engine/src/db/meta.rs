//! What each unit of a database migration is, as it travels in the unit's opening frame.

use serde::{Deserialize, Serialize};

use super::catalog::{Range, Table};

/// One unit of a database migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Meta {
    /// SQL the target runs in one transaction: the schema before the rows (`pre-data`), after
    /// them (`post-data`: indexes, constraints, triggers), or sequence values (`sequences`).
    Sql {
        /// Which.
        step: String,
        /// For the schema before the rows: a digest of the tables this run copies and their
        /// columns, so that a target holding an interrupted copy of other tables (another
        /// `--tables`, or a source whose tables changed since) is told apart by its key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        of: Option<String>,
    },
    /// The rows of one range of one table, as `COPY` bytes.
    Rows {
        /// The table (its columns and format as the source reads them).
        table: Table,
        /// Which rows.
        range: Range,
    },
    /// The last unit: the target re-reads what it committed and checks it against the source's
    /// digests (`verify`), then drops its bookkeeping.
    Finish {
        /// Whether to re-read and check.
        verify: bool,
    },
}

/// The start of the key of every unit of `table`'s rows ([`Meta::key`]).
pub(crate) fn rows_prefix(table: &Table) -> String {
    format!("rows {} ", table.qualified())
}

impl Meta {
    /// The key the target remembers a committed unit by.
    pub fn key(&self) -> String {
        match self {
            Meta::Sql { step, of: None } => format!("sql {step}"),
            Meta::Sql { step, of: Some(of) } => format!("sql {step} of {of}"),
            Meta::Rows { table, range } => format!(
                "{}{}",
                rows_prefix(table),
                table.condition(range).unwrap_or_else(|| "all".into())
            ),
            Meta::Finish { .. } => "finish".into(),
        }
    }

    /// As a unit.
    pub fn unit(&self) -> crate::unit::Unit {
        crate::unit::Unit {
            group: match self {
                Meta::Rows { table, .. } => table.display(),
                _ => String::new(),
            },
            key: self.key(),
            meta: serde_json::to_string(self).expect("a plain structure serialises"),
            after: None,
            hint: Default::default(),
        }
    }

    /// Reads a unit's metadata back.
    pub fn parse(meta: &str) -> crate::error::Result<Self> {
        serde_json::from_str(meta).map_err(|e| crate::error::Error::Database {
            what: "a unit's description from the sender".into(),
            detail: e.to_string(),
        })
    }
}
