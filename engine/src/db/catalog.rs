//! What a database holds and how it is cut into ranges: tables (leaf partitions, not their
//! parents), their columns, a key to range on, and ranges of about the configured size. Only
//! the source's catalog is read to plan; the target gets the same schema from `pg_dump` first.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::conn::pg_error;
use crate::error::{Error, Result};

/// Schemas never copied: the system's, and the target's bookkeeping.
pub(crate) const BOOKKEEPING: &str = "_sluice";

/// The SQL condition, on `pg_namespace n`, that a schema is the user's: not the system's nor
/// the bookkeeping ([`BOOKKEEPING`]).
macro_rules! user_schemas {
    () => {
        "n.nspname NOT IN ('pg_catalog', 'information_schema', '_sluice') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
    };
}

/// `user_schemas!` as a constant, for objects other than relations.
pub(crate) const USER_SCHEMAS: &str = user_schemas!();

/// The SQL condition, on `pg_class c` joined to `pg_namespace n`, that a relation is the user's:
/// in a schema of the user's ([`USER_SCHEMAS`]), not an extension's.
pub(crate) const USERS: &str = concat!(
    user_schemas!(),
    " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                     AND d.objid = c.oid AND d.deptype = 'e')"
);

/// The `reg*` types: their binary form is an object's number, which names another object (or
/// none) in another database; their text form is the object's name.
const NAMED_BY_OID: [u32; 11] = [
    24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191,
];

/// A table to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Columns that hold data (not generated, not dropped), in order.
    pub columns: Vec<String>,
    /// Rows travel in `COPY`'s binary format; text when a column's type is one the target
    /// may number differently (user-defined types, arrays of them), which binary arrays carry
    /// by number.
    pub binary: bool,
    /// A single-column integer primary key to cut ranges on, if there is one.
    pub key: Option<String>,
    /// Bytes on disk (heap and TOAST), for planning and estimates.
    pub bytes: i64,
    /// Heap pages, for page ranges.
    pub pages: i64,
    /// The server's estimate of its rows (`pg_class.reltuples`), `None` if it has none (never
    /// analyzed or vacuumed).
    pub rows: Option<i64>,
    /// Bytes of its indexes at the source: what the post-data step builds again after the rows.
    pub index_bytes: i64,
}

/// A part of a table: key values `lo..hi` or heap pages `lo..hi` (`None`: unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Whether the bounds are key values (else heap pages, by `ctid`).
    pub by_key: bool,
    /// Inclusive lower bound.
    pub lo: Option<i64>,
    /// Exclusive upper bound.
    pub hi: Option<i64>,
}

/// `ident` quoted for SQL.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `ident` bare where PostgreSQL reads it back as itself unquoted (lower-case letters, digits,
/// `_` and `$`, not starting with a digit or `$`), else [`quote`]d.
fn shown(ident: &str) -> std::borrow::Cow<'_, str> {
    let plain = ident
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        ident.into()
    } else {
        quote(ident).into()
    }
}

impl Table {
    /// `"schema"."name"`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }

    /// `schema.name` as a user reads it and can give it back to `--tables`: a name that is not
    /// plain lower case is double-quoted, as PostgreSQL's `quote_ident` does (`public."a.b"`,
    /// `"My Schema"."Order Items"`; shown bare, they read as other tables and were not found).
    pub fn display(&self) -> String {
        format!("{}.{}", shown(&self.schema), shown(&self.name))
    }

    fn format(&self) -> &'static str {
        if self.binary {
            "binary"
        } else {
            "text"
        }
    }

    /// The `WHERE` condition selecting `range`, or `None` for the whole table.
    pub fn condition(&self, range: &Range) -> Option<String> {
        let (col, lit): (String, fn(i64) -> String) = if range.by_key {
            (quote(self.key.as_deref().unwrap_or("?")), |v| v.to_string())
        } else {
            ("ctid".into(), |p| format!("'({p},0)'::tid"))
        };
        match (range.lo, range.hi) {
            (None, None) => None,
            (Some(lo), None) => Some(format!("{col} >= {}", lit(lo))),
            (None, Some(hi)) => Some(format!("{col} < {}", lit(hi))),
            (Some(lo), Some(hi)) => Some(format!("{col} >= {} AND {col} < {}", lit(lo), lit(hi))),
        }
    }

    /// ` (col, ...)`, or nothing when the list is empty (a table without columns, or one too
    /// wide to describe in a unit's metadata: then the table's own order).
    fn column_list(&self) -> String {
        if self.columns.is_empty() {
            return String::new();
        }
        let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        format!(" ({})", cols.join(", "))
    }

    /// `COPY ... TO STDOUT` of `range`'s rows.
    pub fn copy_out(&self, range: &Range) -> String {
        match self.condition(range) {
            None => format!(
                "COPY {}{} TO STDOUT (FORMAT {})",
                self.qualified(),
                self.column_list(),
                self.format()
            ),
            Some(cond) => {
                let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
                format!(
                    "COPY (SELECT {} FROM ONLY {} WHERE {cond}) TO STDOUT (FORMAT {})",
                    cols.join(", "),
                    self.qualified(),
                    self.format()
                )
            }
        }
    }

    /// `COPY ... FROM STDIN` into this table.
    pub fn copy_in(&self) -> String {
        format!(
            "COPY {}{} FROM STDIN (FORMAT {})",
            self.qualified(),
            self.column_list(),
            self.format()
        )
    }

    /// Cuts the table into ranges of about `range_bytes`, by key when it has one (`min`,
    /// `max`: its key's extent) and by heap pages otherwise. The first and last ranges are open
    /// so that no row falls outside every range.
    pub fn ranges(&self, range_bytes: u64, extent: Option<(i64, i64)>) -> Vec<Range> {
        let n = self.range_count(range_bytes);
        let (by_key, lo, hi) = match (&self.key, extent) {
            (Some(_), Some((min, max))) => (true, min, max.saturating_add(1)),
            (Some(_), None) => return vec![Range::whole(true)],
            (None, _) => (false, 0, self.pages.max(1)),
        };
        let span = (hi as i128 - lo as i128).max(1);
        let n = (n as i128).min(span);
        if n <= 1 {
            return vec![Range::whole(by_key)];
        }
        let step = (span + n - 1) / n;
        let mut out = Vec::new();
        let mut at = lo as i128;
        while at < hi as i128 {
            let next = (at + step).min(hi as i128);
            out.push(Range {
                by_key,
                lo: (at != lo as i128).then_some(at as i64),
                hi: (next != hi as i128).then_some(next as i64),
            });
            at = next;
        }
        out
    }

    /// How many ranges of about `range_bytes` the table makes.
    pub fn range_count(&self, range_bytes: u64) -> u64 {
        (self.bytes.max(0) as u64)
            .div_ceil(range_bytes.max(1))
            .max(1)
    }

    /// Key ranges between `cuts` (key values, each the start of a range): the first range open
    /// below, the last open above.
    pub fn ranges_at(&self, cuts: &[i64]) -> Vec<Range> {
        let mut cuts = cuts.to_vec();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::with_capacity(cuts.len() + 1);
        let mut lo = None;
        for c in cuts {
            out.push(Range {
                by_key: true,
                lo,
                hi: Some(c),
            });
            lo = Some(c);
        }
        out.push(Range {
            by_key: true,
            lo,
            hi: None,
        });
        out
    }
}

impl Range {
    /// The whole table as one range.
    pub fn whole(by_key: bool) -> Self {
        Self {
            by_key,
            lo: None,
            hi: None,
        }
    }

    /// The range as a user reads it.
    pub fn display(&self, table: &Table) -> String {
        table.condition(self).unwrap_or_else(|| "all rows".into())
    }

    /// The key range of `table` whose condition is `condition` ([`Table::condition`], or
    /// `all`), if it is one.
    pub(crate) fn parse(table: &Table, condition: &str) -> Option<Range> {
        if condition == "all" {
            return Some(Range::whole(table.key.is_some()));
        }
        let mut range = Range::whole(table.key.is_some());
        for part in condition.split(" AND ") {
            let (_, value) = part.rsplit_once(' ')?;
            // A key's value, or a page as `'(p,0)'::tid`.
            let value = match value.strip_prefix("'(") {
                Some(tid) => tid.strip_suffix(",0)'::tid")?.parse().ok()?,
                None => value.parse().ok()?,
            };
            if part.contains(" >= ") {
                range.lo = Some(value);
            } else {
                range.hi = Some(value);
            }
        }
        // Only what this run would have written itself.
        (table.condition(&range).as_deref() == Some(condition)).then_some(range)
    }

    /// The rows both ranges cover, if any.
    pub(crate) fn intersect(&self, other: &Range) -> Option<Range> {
        let lo = match (self.lo, other.lo) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let hi = match (self.hi, other.hi) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let empty = matches!((lo, hi), (Some(l), Some(h)) if l >= h);
        (!empty).then_some(Range {
            by_key: self.by_key,
            lo,
            hi,
        })
    }

    /// What `held` (ranges already copied) leaves of the whole key space, in order; `None` if
    /// two of them overlap.
    pub(crate) fn gaps(held: &[Range]) -> Option<Vec<Range>> {
        let mut held = held.to_vec();
        // Unbounded below first.
        held.sort_by_key(|r| r.lo.map_or(i128::MIN, i128::from));
        let mut gaps = Vec::new();
        let mut at: Option<Option<i64>> = Some(None); // Some(None): from −∞; None: past +∞.
        for r in &held {
            let from = at?;
            match (from, r.lo) {
                (Some(f), Some(l)) if f > l => return None,
                (Some(_), None) => return None,
                (None, Some(_)) | (Some(_), Some(_)) => {
                    if from != r.lo {
                        gaps.push(Range {
                            by_key: r.by_key,
                            lo: from,
                            hi: r.lo,
                        });
                    }
                }
                (None, None) => {}
            }
            at = r.hi.map(Some);
        }
        if let Some(from) = at {
            gaps.push(Range {
                by_key: held.first().is_none_or(|r| r.by_key),
                lo: from,
                hi: None,
            });
        }
        Some(gaps)
    }
}

fn db_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| pg_error(what.to_string(), &e)
}

/// The tables of the database `client` is connected to, largest first, with `include`
/// (patterns as `pg_dump -t` takes them, see [`TablePattern`]; empty: all) applied.
pub(crate) async fn tables(client: &Client, include: &[String]) -> Result<Vec<Table>> {
    Ok(tables_matching(client, include).await?.0)
}

/// [`tables`], and for each pattern of `include` whether it chose any table.
pub(crate) async fn tables_matching(
    client: &Client,
    include: &[String],
) -> Result<(Vec<Table>, Vec<bool>)> {
    let patterns = include
        .iter()
        .map(|p| {
            TablePattern::parse(p).map_err(|detail| Error::Database {
                what: "choosing tables".into(),
                detail,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut matched = vec![false; include.len()];
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, \
                        pg_table_is_visible(c.oid), rn.nspname::text, rc.relname::text, \
                        pg_table_is_visible(rc.oid) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_class rc ON rc.oid = pg_partition_root(c.oid) AND rc.oid <> c.oid \
                 LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
                 WHERE c.relkind = 'r' AND {USERS} \
                 ORDER BY 2, 3"
            ),
            &[],
        )
        .await
        .map_err(db_err("listing tables"))?;
    let mut out = Vec::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let (schema, name): (String, String) = (row.get(1), row.get(2));
        // A partition is chosen by its own name or by its partitioned table's.
        let visible: bool = row.get(3);
        let root: Option<(String, String, bool)> = match (row.get(4), row.get(5), row.get(6)) {
            (Some(s), Some(n), Some(v)) => Some((s, n, v)),
            _ => None,
        };
        let chosen = |p: &TablePattern| {
            p.matches(&schema, &name, visible)
                || root.as_ref().is_some_and(|(s, n, v)| p.matches(s, n, *v))
        };
        let mut any = false;
        for (p, m) in patterns.iter().zip(&mut matched) {
            if chosen(p) {
                (*m, any) = (true, true);
            }
        }
        if !include.is_empty() && !any {
            continue;
        }
        // Sizes only of the tables chosen: reading one takes a lock on its table, and a lock
        // held on a table left out made `--tables` wait for it, then fail (`pg_dump -t` does
        // not; a new user's report).
        let size = client
            .query_one(
                "SELECT pg_table_size(c.oid)::int8, \
                        (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8, \
                        c.reltuples::int8, pg_indexes_size(c.oid)::int8 \
                 FROM pg_class c WHERE c.oid = $1",
                &[&oid],
            )
            .await
            .map_err(db_err("reading a table's size"))?;
        let cols = client
            .query(
                "SELECT a.attname::text, \
                        coalesce(t.oid::int8 >= 16384 \
                         OR (t.typelem <> 0 AND t.typelem::int8 >= 16384) \
                         OR t.typsend = 0 OR e.typsend = 0 \
                         OR t.oid = ANY ($2) OR t.typelem = ANY ($2), false) \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 LEFT JOIN pg_type e ON e.oid = t.typelem \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attgenerated = '' ORDER BY a.attnum",
                &[&oid, &&NAMED_BY_OID[..]],
            )
            .await
            .map_err(db_err("reading columns"))?;
        let key = client
            .query_opt(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = $1 AND i.indisprimary AND i.indnatts = 1 \
                   AND a.atttypid IN (20, 21, 23)",
                &[&oid],
            )
            .await
            .map_err(db_err("reading the primary key"))?
            .map(|r| r.get::<_, String>(0));
        out.push(Table {
            schema,
            name,
            binary: !cols.iter().any(|c| c.get::<_, bool>(1)),
            columns: cols.iter().map(|c| c.get(0)).collect(),
            key,
            bytes: size.get(0),
            pages: size.get(1),
            rows: Some(size.get::<_, i64>(2)).filter(|&n| n >= 0),
            index_bytes: size.get(3),
        });
    }
    // Largest first (then by name: `rows` came in that order, and the sort is stable).
    out.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    Ok((out, matched))
}

/// The extent of `table`'s key, `None` when it is empty or has no key.
pub(crate) async fn key_extent(client: &Client, table: &Table) -> Result<Option<(i64, i64)>> {
    let Some(key) = &table.key else {
        return Ok(None);
    };
    let row = client
        .query_one(
            &format!(
                "SELECT min({k})::int8, max({k})::int8 FROM ONLY {}",
                table.qualified(),
                k = quote(key)
            ),
            &[],
        )
        .await
        .map_err(db_err("reading a key's extent"))?;
    Ok(match (row.get(0), row.get(1)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    })
}

/// Where to cut `table`'s key into `n` ranges of about as many rows each: the key's quantiles
/// in a sample of its pages (`TABLESAMPLE SYSTEM … REPEATABLE`, so the same table gives the same
/// cuts in the next run), or none for a table without a key or a sample without rows. Cut evenly
/// by value instead, a key with a few values far above the rest made a few ranges hold nearly
/// every row and the others nearly none (`--range-size 4M` gave 8 ranges of about 27 MB and 45
/// nearly empty), so an interruption lost far more than a range per job.
pub(crate) async fn key_cuts(client: &Client, table: &Table, n: u64) -> Result<Vec<i64>> {
    let Some(key) = &table.key else {
        return Ok(Vec::new());
    };
    if n <= 1 {
        return Ok(Vec::new());
    }
    // Eight pages a range, and 256 at least: a few thousand rows to place each cut among.
    let pages = table.pages.max(1) as f64;
    let want = (n as f64 * 8.0).max(256.0);
    let percent = (100.0 * want / pages).min(100.0);
    let fractions: Vec<f64> = (1..n).map(|i| i as f64 / n as f64).collect();
    let row = client
        .query_one(
            &format!(
                "SELECT (percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY {k}))::int8[] \
                 FROM ONLY {t} TABLESAMPLE SYSTEM ({percent:.6}) REPEATABLE (0)",
                k = quote(key),
                t = table.qualified(),
            ),
            &[&fractions],
        )
        .await
        .map_err(db_err("sampling a key's distribution"))?;
    let cuts: Option<Vec<Option<i64>>> = row.get(0);
    Ok(cuts.into_iter().flatten().flatten().collect())
}

/// What a copy of some tables (`--tables`) leaves out of the schema, as `pg_dump -t` would,
/// while keeping what the chosen tables need (schemas, types, functions, the partitioned tables
/// above a chosen partition).
#[derive(Debug, Clone, Default)]
pub(crate) struct LeftOut {
    /// The relations left out: the other tables, views and materialized views that read
    /// them, and sequences they own; as `pg_dump --exclude-table` patterns (exact names).
    pub(crate) patterns: Vec<String>,
    /// The same relations by number, for the catalog queries of later steps.
    pub(crate) oids: Vec<u32>,
}

/// For each of `patterns` (each chose no table), what of another kind it names, as
/// `public.v_items is a view: …`: a view, a materialized view or a sequence given to `--tables`
/// was met with "no table matches", as if misspelt (a new user's report).
pub(crate) async fn not_tables(client: &Client, patterns: &[&str]) -> Result<Vec<Vec<String>>> {
    let parsed = patterns
        .iter()
        .map(|p| {
            TablePattern::parse(p).map_err(|detail| Error::Database {
                what: "choosing tables".into(),
                detail,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, pg_table_is_visible(c.oid), \
                        c.relkind::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('v', 'm', 'S', 'f', 'p', 'i', 'I', 'c') AND {USERS} \
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(db_err("listing what --tables names"))?;
    let mut found = vec![Vec::new(); patterns.len()];
    for row in rows {
        let (schema, name, visible, kind): (String, String, bool, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let what = match kind.as_str() {
            "v" => "a view: --tables chooses tables, and a view comes with the tables it reads",
            "m" => {
                "a materialized view: --tables chooses tables, and a materialized view comes, \
                 refreshed, with the tables it reads"
            }
            "S" => {
                "a sequence: --tables chooses tables, and a table's own sequences come with it, \
                 set where they stand"
            }
            "f" => "a foreign table: its rows live on another server, and are not copied",
            "p" => "a partitioned table without partitions: it holds no rows to copy",
            "i" | "I" => "an index: it comes with its table",
            _ => "a composite type, not a table",
        };
        for (p, f) in parsed.iter().zip(&mut found) {
            if p.matches(&schema, &name, visible) {
                f.push(format!("{}.{} is {what}", shown(&schema), shown(&name)));
            }
        }
    }
    Ok(found)
}

/// The relations a copy of `chosen` leaves out. A chosen table that keeps a foreign key to one
/// left out, or a rule that uses one, is refused: the target could not make it.
pub(crate) async fn left_out(client: &Client, chosen: &[Table]) -> Result<LeftOut> {
    let names: Vec<String> = chosen.iter().map(Table::qualified).collect();
    let gone = format!(
        "WITH RECURSIVE chosen AS (SELECT unnest($1::text[])::regclass::oid AS oid), \
           kept(oid) AS (SELECT oid FROM chosen UNION \
             SELECT i.inhparent FROM pg_inherits i JOIN kept k ON i.inhrelid = k.oid), \
           gone(oid) AS ( \
             SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'f') AND {USERS} \
               AND c.oid NOT IN (SELECT oid FROM kept) \
             UNION \
             SELECT r.ev_class FROM gone g \
             JOIN pg_depend d ON d.refobjid = g.oid AND d.classid = 'pg_rewrite'::regclass \
             JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> g.oid \
             JOIN pg_class v ON v.oid = r.ev_class AND v.relkind IN ('v', 'm')), \
           owned AS (SELECT d.objid AS oid FROM pg_depend d JOIN gone g ON g.oid = d.refobjid \
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
               AND NOT EXISTS (SELECT 1 FROM pg_depend u \
                 JOIN pg_attrdef ad ON u.classid = 'pg_attrdef'::regclass AND u.objid = ad.oid \
                 WHERE u.refobjid = d.objid AND ad.adrelid IN (SELECT oid FROM kept))), \
           omitted AS (SELECT oid FROM gone UNION SELECT oid FROM owned) "
    );
    // What the target could not make: a chosen table's foreign key to a table left out, or a
    // rule on it that reads or writes one.
    let blocked = client
        .query(
            &format!(
                "{gone} SELECT con.conrelid::regclass::text, 'a foreign key', con.conname::text, \
                        'to', con.confrelid::regclass::text, 'constraint' \
                 FROM pg_constraint con \
                 WHERE con.contype = 'f' AND con.confrelid IN (SELECT oid FROM gone) \
                   AND con.conrelid NOT IN (SELECT oid FROM gone) \
                   AND con.conrelid IN (SELECT oid FROM kept) \
                 UNION ALL \
                 SELECT r.ev_class::regclass::text, 'a rule', r.rulename::text, 'that uses', \
                        d.refobjid::regclass::text, 'rule' \
                 FROM pg_rewrite r JOIN pg_depend d \
                   ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                 WHERE r.ev_class IN (SELECT oid FROM kept) \
                   AND d.refobjid IN (SELECT oid FROM gone) AND d.refobjid <> r.ev_class \
                 LIMIT 1"
            ),
            &[&names],
        )
        .await
        .map_err(db_err("finding what --tables leaves out"))?;
    if let Some(r) = blocked.first() {
        let [on, what, name, how, to, object]: [String; 6] = std::array::from_fn(|i| r.get(i));
        return Err(Error::Database {
            what: "choosing tables".into(),
            detail: format!(
                "{on} has {what} ({name}) {how} {to}, which --tables leaves out: add {to} to \
                 --tables, or drop the {object} at the source"
            ),
        });
    }
    let rows = client
        .query(
            &format!(
                "{gone} SELECT c.oid, n.nspname::text, c.relname::text FROM omitted e \
                 JOIN pg_class c ON c.oid = e.oid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 2, 3"
            ),
            &[&names],
        )
        .await
        .map_err(db_err("finding what --tables leaves out"))?;
    Ok(LeftOut {
        patterns: rows
            .iter()
            .map(|r| format!("{}.{}", quote(r.get(1)), quote(r.get(2))))
            .collect(),
        oids: rows.iter().map(|r| r.get(0)).collect(),
    })
}

/// A `--tables` pattern, read as `pg_dump -t` (psql's `\d`) reads one: `schema.table` or
/// `table`; outside double quotes a name folds to lower case, `*` matches any run of
/// characters and `?` one, and `.` separates the schema from the table; inside them every
/// character stands for itself (`.`, spaces, capitals, `*`) and `""` is a quote. A pattern
/// without a schema chooses only tables the search path shows, as it does for pg_dump. Unlike
/// psql's, other characters are never regular-expression syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    schema: Option<Vec<Piece>>,
    name: Vec<Piece>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// `*`: any run of characters.
    Any,
    /// `?`: any one character.
    One,
    Char(char),
}

impl TablePattern {
    /// Reads `pattern`; an error says what is wrong with it.
    pub fn parse(pattern: &str) -> std::result::Result<Self, String> {
        let mut parts: Vec<Vec<Piece>> = vec![Vec::new()];
        let mut quoted = false;
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let part = parts.last_mut().expect("one part at least");
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    part.push(Piece::Char('"'));
                }
                '"' => quoted = !quoted,
                _ if quoted => part.push(Piece::Char(c)),
                '.' => parts.push(Vec::new()),
                '*' => part.push(Piece::Any),
                '?' => part.push(Piece::One),
                // As psql folds: ASCII letters only.
                c => part.push(Piece::Char(c.to_ascii_lowercase())),
            }
        }
        if quoted {
            return Err(format!(
                "--tables {pattern}: syntax error: a double quote is left open (close it: \
                 '\"My Schema\".orders'; write \"\" for a double quote inside a name)"
            ));
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, _) => Ok(Self { schema: None, name }),
            (Some(schema), Some(name), None) => Ok(Self {
                schema: Some(schema),
                name,
            }),
            _ => Err(format!(
                "--tables {pattern}: too many dotted names (schema.table at most; write a dot \
                 that is part of a name inside double quotes: '\"my.schema\".orders')"
            )),
        }
    }

    /// Whether the table `schema.name` is chosen; `visible`: whether the search path shows it.
    pub fn matches(&self, schema: &str, name: &str, visible: bool) -> bool {
        match &self.schema {
            Some(s) => matches_pieces(s, schema) && matches_pieces(&self.name, name),
            None => visible && matches_pieces(&self.name, name),
        }
    }
}

/// Whether `text` is matched by `pieces` whole.
fn matches_pieces(pattern: &[Piece], text: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match pattern.get(pi) {
            Some(Piece::One) => (pi, ti) = (pi + 1, ti + 1),
            Some(Piece::Char(c)) if *c == t[ti] => (pi, ti) = (pi + 1, ti + 1),
            Some(Piece::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(|&p| p == Piece::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key: bool, bytes: i64, pages: i64) -> Table {
        Table {
            schema: "public".into(),
            name: "My \"T\"".into(),
            columns: vec!["id".into(), "Data".into()],
            binary: true,
            key: key.then(|| "id".into()),
            bytes,
            pages,
            rows: None,
            index_bytes: 0,
        }
    }

    /// Names are shown as `--tables` reads them back: plain lower case bare, anything else
    /// double-quoted.
    #[test]
    fn names_are_shown_as_they_are_given_back() {
        let mut t = table(true, 0, 0);
        assert_eq!(t.display(), "public.\"My \"\"T\"\"\"");
        for (schema, name, shown) in [
            ("public", "items_2", "public.items_2"),
            ("public", "a.b", "public.\"a.b\""),
            ("My Schema", "Order Items", "\"My Schema\".\"Order Items\""),
            ("s1", "1st", "s1.\"1st\""),
        ] {
            (t.schema, t.name) = (schema.into(), name.into());
            assert_eq!(t.display(), shown);
        }
    }

    /// A table that grew past its old end between two runs: the old run's ranges are read back
    /// from their conditions, the gaps they leave are what the new run's ranges are cut to, and
    /// together they cover every key once.
    #[test]
    fn held_ranges_are_read_back_and_leave_gaps() {
        let t = table(true, 10 << 20, 1280);
        let old = t.ranges(4 << 20, Some((1, 1000)));
        let held: Vec<Range> = old[..2]
            .iter()
            .map(|r| {
                let c = t.condition(r).unwrap_or_else(|| "all".into());
                Range::parse(&t, &c).unwrap()
            })
            .collect();
        assert_eq!(held, old[..2]);
        assert_eq!(Range::parse(&t, "all"), Some(Range::whole(true)));
        assert_eq!(Range::parse(&t, "\"id\" >= 3 AND \"other\" < 9"), None);
        assert_eq!(Range::parse(&t, "\"id\" >= x"), None);
        let gaps = Range::gaps(&held).unwrap();
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].lo, gaps[0].hi), (old[1].hi, None));
        // The new run, cut after the table grew to 5,000: its ranges within the gap.
        let new = t.ranges(4 << 20, Some((1, 5000)));
        let pieces: Vec<Range> = new.iter().filter_map(|r| r.intersect(&gaps[0])).collect();
        let mut all: Vec<Range> = held.iter().chain(&pieces).copied().collect();
        all.sort_by_key(|r| r.lo.map_or(i128::MIN, i128::from));
        for k in [-10, 0, 1, 333, 334, 667, 668, 999, 1000, 4999, 5000, 9999] {
            let inside = |r: &Range| r.lo.is_none_or(|l| k >= l) && r.hi.is_none_or(|h| k < h);
            assert_eq!(all.iter().filter(|r| inside(r)).count(), 1, "key {k}");
        }
        // Overlapping held ranges cannot be fitted.
        let overlapping = [
            Range {
                by_key: true,
                lo: None,
                hi: Some(10),
            },
            Range {
                by_key: true,
                lo: Some(5),
                hi: None,
            },
        ];
        assert_eq!(Range::gaps(&overlapping), None);
        assert_eq!(Range::gaps(&[]).unwrap(), vec![Range::whole(true)]);
    }

    #[test]
    fn ranges_cover_everything_once() {
        let t = table(true, 10 << 20, 1280);
        let r = t.ranges(4 << 20, Some((-5, 1000)));
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].lo, None);
        assert_eq!(r[2].hi, None);
        for w in r.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
        let p = table(false, 10 << 20, 1280).ranges(4 << 20, None);
        assert_eq!(p.len(), 3);
        assert!(!p[0].by_key);
        assert_eq!(
            table(false, 1, 1).ranges(4 << 20, None),
            vec![Range::whole(false)]
        );
        // More ranges wanted than keys: one key each at most.
        assert_eq!(t.ranges(1, Some((1, 3))).len(), 3);
    }

    #[test]
    fn sql_quotes_every_name() {
        let t = table(true, 0, 0);
        assert_eq!(t.qualified(), "\"public\".\"My \"\"T\"\"\"");
        let r = Range {
            by_key: true,
            lo: Some(3),
            hi: None,
        };
        assert_eq!(
            t.copy_out(&r),
            "COPY (SELECT \"id\", \"Data\" FROM ONLY \"public\".\"My \"\"T\"\"\" WHERE \"id\" >= 3) \
             TO STDOUT (FORMAT binary)"
        );
        let p = Range {
            by_key: false,
            lo: Some(8),
            hi: Some(16),
        };
        assert_eq!(
            t.condition(&p).unwrap(),
            "ctid >= '(8,0)'::tid AND ctid < '(16,0)'::tid"
        );
    }

    /// As `pg_dump -t` reads a pattern: folded to lower case outside double quotes, kept as
    /// written inside them (dots and spaces too), `schema.table`, `*` and `?`.
    #[test]
    fn patterns_match_as_pg_dump_reads_them() {
        let m = |p: &str, schema: &str, name: &str, visible: bool| {
            TablePattern::parse(p)
                .unwrap()
                .matches(schema, name, visible)
        };
        assert!(m("public.*", "public", "orders", false));
        assert!(m("ord?rs", "public", "orders", true));
        assert!(
            !m("ord?rs", "sales", "orders", false),
            "not on the search path"
        );
        assert!(!m("public.*", "sales", "orders", true));
        assert!(m("*o*s", "public", "orders", true));
        assert!(m("Public.ORDERS", "public", "orders", true));
        assert!(!m("Orders", "public", "Orders", true), "folded to orders");
        assert!(m("\"Orders\"", "public", "Orders", true));
        assert!(m(
            "\"Sales Dept\".\"Order Items\"",
            "Sales Dept",
            "Order Items",
            false
        ));
        assert!(m(
            "\"Sales Dept\".\"Order *\"",
            "Sales Dept",
            "Order *",
            false
        ));
        assert!(!m(
            "\"Sales Dept\".\"Order *\"",
            "Sales Dept",
            "Order Items",
            false
        ));
        assert!(m(
            "\"Sales Dept\".\"Order \"*",
            "Sales Dept",
            "Order Items",
            false
        ));
        assert!(m("\"a.b\".\"say \"\"hi\"\"\"", "a.b", "say \"hi\"", false));
        assert!(m("sales*.*items", "sales dept", "order items", false));
        assert!(
            !m("public.", "public", "orders", true),
            "an empty name matches none"
        );
        assert!(TablePattern::parse("db.public.orders").is_err());
        // A quote left open is a syntax error, not a name that matches nothing.
        for open in ["\"My Schema", "s.\"t", "\"a\"\"b"] {
            let e = TablePattern::parse(open).unwrap_err();
            assert!(e.contains("syntax error"), "{open}: {e}");
        }
        assert!(TablePattern::parse("\"a\"\"b\"").is_ok());
    }
}

/// One sequence's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SequenceState {
    /// Its name, schema-qualified and quoted as an identifier.
    pub(crate) name: String,
    /// The same as an SQL string literal (quoted by the server).
    pub(crate) literal: String,
    pub(crate) last_value: i64,
    /// Whether `last_value` was handed out: if not, it is the next value.
    pub(crate) is_called: bool,
}

/// Every user sequence but those of `left_out` (oids), by name. Each is read itself:
/// `pg_sequences.last_value` is null for a sequence whose next value is its last (restarted,
/// or `setval(…, false)`), and a copy that left such a sequence at its start would hand out
/// keys already in the table.
pub(crate) async fn sequences(client: &Client, left_out: &[u32]) -> Result<Vec<SequenceState>> {
    let names = client
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), \
                    quote_literal(format('%I.%I', schemaname, sequencename)) \
             FROM pg_sequences WHERE schemaname <> '_sluice' \
               AND format('%I.%I', schemaname, sequencename)::regclass::oid <> ALL ($1) \
             ORDER BY 1",
            &[&left_out],
        )
        .await
        .map_err(db_err("listing sequences"))?;
    let names: Vec<(String, String)> = names.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut states = Vec::with_capacity(names.len());
    // A few hundred to a statement.
    for chunk in names.chunks(256) {
        let query = chunk
            .iter()
            .enumerate()
            .map(|(i, (name, _))| format!("SELECT {i}, last_value, is_called FROM {name}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = client
            .query(query.as_str(), &[])
            .await
            .map_err(db_err("reading sequence values"))?;
        let mut read: Vec<(i32, i64, bool)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        read.sort();
        for (i, last_value, is_called) in read {
            let (name, literal) = chunk[i as usize].clone();
            states.push(SequenceState {
                name,
                literal,
                last_value,
                is_called,
            });
        }
    }
    Ok(states)
}

/// A digest of the schema around the tables a copy moves: their columns (types, `NOT NULL`,
/// defaults, identity, collation, statistics targets, privileges, comments), indexes,
/// constraints, triggers, policies, owned sequences' options, and the tables' owners,
/// privileges, options and comments; and, when every table is copied (`all`), the views,
/// functions, types and schemas too — what `pg_dump`'s sections carry. A resumed copy compares
/// it with the interrupted run's: the schema steps that run committed are not applied again, so
/// an index, a constraint or a view added at the source since would otherwise be missing at the
/// target while the copy reported success. Column types, `NOT NULL`, defaults, comments and
/// grants changed between the runs went unnoticed that way (a new user's report): the copy
/// exited 0 with the older schema, or failed on every rerun with "incorrect binary data
/// format" where a column's type had changed. Privileges are compared as they act: a table
/// granted and revoked again holds its owner's default privileges written out, which are the
/// same as none written.
pub(crate) async fn schema_digest(client: &Client, all: bool, tables: &[Table]) -> Result<String> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let query = format!(
        "WITH chosen AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE {USERS} AND ($1 OR (n.nspname, c.relname) IN \
                               (SELECT * FROM unnest($2::text[], $3::text[])))), \
              users AS (SELECT n.oid FROM pg_namespace n WHERE {USER_SCHEMAS}) \
         SELECT coalesce(md5(string_agg(d, E'\\n' ORDER BY d)), '') FROM ( \
           SELECT 'index ' || i.indrelid::regclass::text || ' ' || pg_get_indexdef(i.indexrelid) \
             FROM pg_index i WHERE i.indrelid IN (SELECT oid FROM chosen) \
           UNION ALL \
           SELECT 'column ' || a.attrelid::regclass::text || ' ' || quote_ident(a.attname) || ' ' \
                  || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text || ' ' \
                  || a.attidentity::text || '/' || a.attgenerated::text || ' ' \
                  || coalesce(a.attstattarget::text, '') || ' ' || coalesce(co.collname, '') || ' ' \
                  || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '') || ' ' \
                  || coalesce(nullif(a.attacl::text, '{{}}'), '') || ' ' \
                  || coalesce(col_description(a.attrelid, a.attnum), '') \
             FROM pg_attribute a \
             LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             WHERE a.attrelid IN (SELECT oid FROM chosen) AND a.attnum > 0 AND NOT a.attisdropped \
           UNION ALL \
           SELECT 'relation ' || c.oid::regclass::text || ' ' || c.relkind::text \
                  || c.relpersistence::text || ' ' || pg_get_userbyid(c.relowner) || ' ' \
                  || coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", \
                                                   c.relowner))::text || ' ' \
                  || coalesce(c.reloptions::text, '') || ' ' || c.relrowsecurity::text \
                  || c.relforcerowsecurity::text || ' ' \
                  || coalesce(obj_description(c.oid, 'pg_class'), '') \
             FROM pg_class c WHERE c.oid IN (SELECT oid FROM chosen) \
           UNION ALL \
           SELECT 'sequence ' || s.seqrelid::regclass::text || ' ' || format_type(s.seqtypid, NULL) \
                  || ' ' || s.seqstart || ' ' || s.seqincrement || ' ' || s.seqmax || ' ' \
                  || s.seqmin || ' ' || s.seqcache || ' ' || s.seqcycle::text \
             FROM pg_sequence s WHERE s.seqrelid IN (SELECT oid FROM chosen) \
               OR s.seqrelid IN (SELECT d.objid FROM pg_depend d \
                                 WHERE d.classid = 'pg_class'::regclass \
                                   AND d.refclassid = 'pg_class'::regclass \
                                   AND d.refobjid IN (SELECT oid FROM chosen) \
                                   AND d.deptype IN ('a', 'i')) \
           UNION ALL \
           SELECT 'policy ' || p.polrelid::regclass::text || ' ' || quote_ident(p.polname) || ' ' \
                  || p.polcmd::text || p.polpermissive::text || ' ' || p.polroles::text || ' ' \
                  || coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' ' \
                  || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') \
             FROM pg_policy p WHERE p.polrelid IN (SELECT oid FROM chosen) \
           UNION ALL \
           SELECT 'constraint ' || co.conrelid::regclass::text || ' ' || co.conname || ' ' \
                  || pg_get_constraintdef(co.oid) \
             FROM pg_constraint co WHERE co.conrelid IN (SELECT oid FROM chosen) \
           UNION ALL \
           SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || pg_get_triggerdef(t.oid) \
             FROM pg_trigger t WHERE NOT t.tgisinternal AND t.tgrelid IN (SELECT oid FROM chosen) \
           UNION ALL \
           SELECT 'view ' || c.oid::regclass::text || ' ' || pg_get_viewdef(c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE $1 AND c.relkind IN ('v', 'm') AND {USERS} \
           UNION ALL \
           SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(coalesce(p.prosrc, '')) \
                  || ' ' || format_type(p.prorettype, NULL) || ' ' || p.provolatile::text \
                  || p.prosecdef::text || ' ' || pg_get_userbyid(p.proowner) || ' ' \
                  || coalesce(p.proacl, acldefault('f', p.proowner))::text || ' ' \
                  || coalesce(obj_description(p.oid, 'pg_proc'), '') \
             FROM pg_proc p WHERE $1 AND p.pronamespace IN (SELECT oid FROM users) \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
                               AND d.objid = p.oid AND d.deptype = 'e') \
           UNION ALL \
           SELECT 'type ' || t.oid::regtype::text || ' ' || t.typtype::text \
                  || coalesce(' ' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) \
                                      FROM pg_enum e WHERE e.enumtypid = t.oid), '') \
                  || coalesce(' ' || (SELECT string_agg(quote_ident(a.attname) || ' ' \
                                                        || format_type(a.atttypid, a.atttypmod), \
                                                        ',' ORDER BY a.attnum) \
                                      FROM pg_attribute a WHERE t.typtype = 'c' \
                                        AND a.attrelid = t.typrelid AND a.attnum > 0 \
                                        AND NOT a.attisdropped), '') \
                  || CASE WHEN t.typtype = 'd' THEN ' ' || format_type(t.typbasetype, t.typtypmod) \
                          || ' ' || t.typnotnull::text || ' ' || coalesce(t.typdefault, '') \
                          ELSE '' END \
                  || ' ' || pg_get_userbyid(t.typowner) || ' ' \
                  || coalesce(t.typacl, acldefault('T', t.typowner))::text || ' ' \
                  || coalesce(obj_description(t.oid, 'pg_type'), '') \
             FROM pg_type t WHERE $1 AND t.typnamespace IN (SELECT oid FROM users) \
               AND (t.typtype IN ('e', 'd', 'r') \
                    OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c \
                                                    WHERE c.oid = t.typrelid AND c.relkind = 'c'))) \
           UNION ALL \
           SELECT 'domain constraint ' || co.contypid::regtype::text || ' ' || co.conname || ' ' \
                  || pg_get_constraintdef(co.oid) \
             FROM pg_constraint co JOIN pg_type t ON t.oid = co.contypid \
             WHERE $1 AND t.typnamespace IN (SELECT oid FROM users) \
           UNION ALL \
           SELECT 'schema ' || n.nspname || ' ' || pg_get_userbyid(n.nspowner) || ' ' \
                  || coalesce(n.nspacl, acldefault('n', n.nspowner))::text || ' ' \
                  || coalesce(obj_description(n.oid, 'pg_namespace'), '') \
             FROM pg_namespace n \
             WHERE $1 AND n.oid IN (SELECT oid FROM users) AND n.nspname <> 'public' \
         ) s(d)"
    );
    let row = client
        .query_one(query.as_str(), &[&all, &schemas, &names])
        .await
        .map_err(db_err("reading the schema"))?;
    Ok(row.get(0))
}
