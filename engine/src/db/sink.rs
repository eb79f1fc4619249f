//! The target end of a database migration. Each range is one transaction: its `COPY` and a row
//! in the bookkeeping table `_sluice.units` commit together, so a range is either wholly there
//! and recorded or not there at all, and a rerun skips exactly the recorded ones.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use super::catalog::{self, Range, Table, BOOKKEEPING};
use super::conn::{full, judged, judged_owned, Database};
use super::digest::{KeyRoute, RowHasher, RowsDigest};
use super::meta::Meta;
use super::watch::Watch;
use crate::error::{Error, Result};
use crate::transport::Fut;
use crate::unit::{UnitSink, UnitWriter};

/// The bookkeeping row that says ranges were removed after failing verification in this run:
/// the run must not end well, and the next run (which clears it) copies them anew.
const VERIFY_FAILED: &str = "verify failed";

/// What the check at the end says of the ranges it removed for another run to copy
/// ([`super::copy`] runs once more by itself when it reads it).
pub(crate) const RECOPY: &str =
    "removed at the target: run the same command again to copy them anew";

/// The most SQL one schema unit may carry (the schema, not the data, travels this way).
const MAX_SQL: usize = 256 << 20;

/// Writes units into a database.
#[derive(Debug, Clone)]
pub struct PgSink {
    db: Database,
    idle: Arc<Mutex<Vec<Client>>>,
    /// The watch on the target's server, on the runtime the session runs on ([`PgSink::watch`]).
    watch: Arc<Mutex<Option<Arc<Watch>>>>,
}

impl PgSink {
    /// Into the database `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            idle: Default::default(),
            watch: Default::default(),
        }
    }

    /// The watch on the target's server, started on the current runtime unless one runs there
    /// already (a sink may be checked on one runtime and serve on another).
    fn watch(&self) -> Arc<Watch> {
        let mut slot = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(w) if w.is_running() => w.clone(),
            _ => slot.insert(Watch::start(&self.db, "target")).clone(),
        }
    }

    /// Connects to the target and checks that a copy can go there: the database is empty of
    /// tables, views, sequences, types, functions and schemas, or holds the bookkeeping of an
    /// interrupted copy (a resume).
    /// A target that holds tables of its own would fail on the schema's first `CREATE` (or,
    /// with matching tables, take rows twice): said now, as pgcopydb refuses a target that is
    /// not empty, and before `sluice db recv` prints its ticket.
    pub async fn check(&self) -> Result<()> {
        let client = self.client().await?;
        let resuming: bool = client
            .query_one(
                &format!("SELECT to_regnamespace('{BOOKKEEPING}') IS NOT NULL"),
                &[],
            )
            .await
            .map_err(db_err(format!("inspecting {}", self.db.shown)))?
            .get(0);
        if !resuming {
            let held = client
                .query(
                    &format!(
                        "SELECT * FROM ( \
                           SELECT format('%I.%I', n.nspname, c.relname) || CASE c.relkind \
                                  WHEN 'v' THEN ' (view)' WHEN 'm' THEN ' (materialized view)' \
                                  WHEN 'S' THEN ' (sequence)' WHEN 'f' THEN ' (foreign table)' \
                                  ELSE '' END FROM pg_class c \
                           JOIN pg_namespace n ON n.oid = c.relnamespace \
                           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {users} \
                           UNION ALL \
                           SELECT format('%I.%I', n.nspname, t.typname) || ' (type)' FROM pg_type t \
                           JOIN pg_namespace n ON n.oid = t.typnamespace \
                           WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND \
                                  (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')) \
                             AND {spaces} AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                               WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid \
                                 AND d.deptype = 'e') \
                           UNION ALL \
                           SELECT p.oid::regprocedure::text || ' (function)' FROM pg_proc p \
                           JOIN pg_namespace n ON n.oid = p.pronamespace \
                           WHERE {spaces} AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                               WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid \
                                 AND d.deptype = 'e') \
                           UNION ALL \
                           SELECT format('%I', n.nspname) || ' (schema)' FROM pg_namespace n \
                           WHERE {spaces} AND n.nspname <> 'public' AND NOT EXISTS ( \
                               SELECT 1 FROM pg_depend d WHERE d.classid = \
                                 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e') \
                         ) held(name) ORDER BY 1 LIMIT 4",
                        users = catalog::USERS,
                        spaces = catalog::USER_SCHEMAS,
                    ),
                    &[],
                )
                .await
                .map_err(db_err(format!("inspecting {}", self.db.shown)))?;
            if !held.is_empty() {
                let mut names: Vec<String> = held.iter().take(3).map(|r| r.get(0)).collect();
                if held.len() > 3 {
                    names.push("…".into());
                }
                return Err(Error::Database {
                    what: format!("copying into {}", self.db.shown),
                    detail: format!(
                        "it already holds tables, views, sequences, types, functions or \
                         schemas of its own ({}) and no interrupted copy to \
                         resume: sluice db fills an empty database, as pg_restore does a new \
                         one; create a new database (createdb), or drop what is there",
                        names.join(", ")
                    ),
                });
            }
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
        Ok(())
    }

    async fn client(&self) -> Result<Client> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.db.connect().await,
        }
    }
}

fn db_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| super::conn::pg_error(what, &e)
}

impl UnitSink for PgSink {
    fn held(&self) -> Fut<'_, Result<Vec<String>>> {
        Box::pin(async move { self.watch().guard(self.held_here()).await })
    }

    fn open<'a>(&'a self, meta: &'a str) -> Fut<'a, Result<Box<dyn UnitWriter>>> {
        Box::pin(async move {
            let watch = self.watch();
            watch
                .guard(judged(&self.db, self.open_here(meta, &watch)))
                .await
        })
    }
}

impl PgSink {
    /// [`UnitSink::held`], unwatched.
    async fn held_here(&self) -> Result<Vec<String>> {
        self.check().await?;
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "SET client_min_messages = warning; \
                 CREATE SCHEMA IF NOT EXISTS {BOOKKEEPING}; \
                 CREATE TABLE IF NOT EXISTS {BOOKKEEPING}.units (\
                    key text PRIMARY KEY, rows int8 NOT NULL, digest text NOT NULL, \
                    bytes int8 NOT NULL, meta text NOT NULL, \
                    committed_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .map_err(db_err(format!(
                "preparing bookkeeping in {}",
                self.db.shown
            )))?;
        client
            .execute(
                &format!("DELETE FROM {BOOKKEEPING}.units WHERE key = $1"),
                &[&VERIFY_FAILED],
            )
            .await
            .map_err(db_err("reading bookkeeping".into()))?;
        let rows = client
            .query(&format!("SELECT key FROM {BOOKKEEPING}.units"), &[])
            .await
            .map_err(db_err("reading bookkeeping".into()))?;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// [`UnitSink::open`], unwatched; the rows' writer keeps `watch`.
    async fn open_here(&self, meta: &str, watch: &Arc<Watch>) -> Result<Box<dyn UnitWriter>> {
        let parsed = Meta::parse(meta)?;
        let key = parsed.key();
        let writer: Box<dyn UnitWriter> = match parsed {
            Meta::Sql { step, .. } => Box::new(SqlWriter {
                sink: self.clone(),
                key,
                step,
                sql: Vec::new(),
            }),
            Meta::Finish { verify } => Box::new(FinishWriter {
                sink: self.clone(),
                verify,
                rechecked: Vec::new(),
            }),
            Meta::Rows { table, range } => {
                let what = format!("{} ({})", table.display(), range.display(&table));
                let client = self.client().await?;
                // Both answer at once, unless the backend (kept from an earlier range) has
                // stopped answering.
                let step = format!("writing {what}");
                let copy = watch
                    .guard_step(&step, async {
                        client
                            .batch_execute("BEGIN")
                            .await
                            .map_err(db_err(step.clone()))?;
                        client
                            .copy_in::<_, Bytes>(table.copy_in().as_str())
                            .await
                            .map_err(db_err(step.clone()))
                    })
                    .await?;
                Box::new(RowsWriter {
                    sink: self.clone(),
                    watch: watch.clone(),
                    table: table.clone(),
                    key,
                    meta: meta.to_string(),
                    what,
                    client,
                    copy: Box::pin(copy),
                })
            }
        };
        Ok(writer)
    }
}

/// One range's rows going into a `COPY FROM STDIN`, inside a transaction.
struct RowsWriter {
    sink: PgSink,
    /// The target server's watch: each wait on it ends if it stops answering.
    watch: Arc<Watch>,
    table: Table,
    key: String,
    meta: String,
    what: String,
    client: Client,
    copy: Pin<Box<CopyInSink<Bytes>>>,
}

impl UnitWriter for RowsWriter {
    fn put(&mut self, data: Bytes) -> Fut<'_, Result<()>> {
        Box::pin(async move {
            let (watch, copy) = (&self.watch, &mut self.copy);
            let step = format!("writing {}", self.what);
            let sent = watch
                .guard_step(&step, async { Ok(copy.send(data).await) })
                .await?;
            judged(
                &self.sink.db,
                std::future::ready(sent.map_err(db_err(format!("writing {}", self.what)))),
            )
            .await
        })
    }

    fn commit(self: Box<Self>, bytes: u64, trailer: Vec<u8>) -> Fut<'static, Result<()>> {
        let db = self.sink.db.clone();
        let watch = self.watch.clone();
        let step = format!("committing {}", self.what);
        Box::pin(watch.guard_step_owned(
            step,
            judged_owned(db, async move {
                let Self {
                    sink,
                    watch: _,
                    table,
                    key,
                    meta,
                    what,
                    client,
                    mut copy,
                } = *self;
                let copied = copy
                    .as_mut()
                    .finish()
                    .await
                    .map_err(db_err(format!("writing {what}")))?;
                // Every block was checked against the sender's hash, so these are the bytes the
                // source's digest was computed on; what is left to check is that the server took
                // every row of them. The stored rows are re-read and checked at the end.
                let theirs = RowsDigest::from_bytes(&trailer).ok_or_else(|| Error::Verify {
                    path: what.clone(),
                    detail: format!(
                        "the sender's account is {} bytes, not a digest",
                        trailer.len()
                    ),
                })?;
                if copied != theirs.rows {
                    return Err(Error::Verify {
                        path: what,
                        detail: format!(
                            "the source read {} rows, the target took {copied}",
                            theirs.rows
                        ),
                    });
                }
                client
                    .execute(
                        &format!(
                            "INSERT INTO {BOOKKEEPING}.units (key, rows, digest, bytes, meta) \
                         VALUES ($1, $2, $3, $4, $5)"
                        ),
                        &[
                            &key,
                            &(theirs.rows as i64),
                            &theirs.hex(),
                            &(bytes as i64),
                            &meta,
                        ],
                    )
                    .await
                    .map_err(db_err(format!("recording {what}")))?;
                if crate::fault::db_lose_row(&table.display()) {
                    let t = table.qualified();
                    client
                        .batch_execute(&format!(
                            "DELETE FROM ONLY {t} WHERE ctid = (SELECT ctid FROM ONLY {t} LIMIT 1)"
                        ))
                        .await
                        .map_err(db_err(format!("losing a row of {what}")))?;
                }
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(db_err(format!("committing {what}")))?;
                sink.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(client);
                Ok(())
            }),
        ))
    }
}

/// A schema step: the SQL is gathered, then run in one transaction with its bookkeeping row.
struct SqlWriter {
    sink: PgSink,
    key: String,
    step: String,
    sql: Vec<u8>,
}

impl UnitWriter for SqlWriter {
    fn put(&mut self, data: Bytes) -> Fut<'_, Result<()>> {
        Box::pin(async move {
            if self.sql.len() + data.len() > MAX_SQL {
                return Err(Error::Database {
                    what: format!("the schema's {}", self.step),
                    detail: format!("larger than {} MiB", MAX_SQL >> 20),
                });
            }
            self.sql.extend_from_slice(&data);
            Ok(())
        })
    }

    fn commit(self: Box<Self>, bytes: u64, _trailer: Vec<u8>) -> Fut<'static, Result<()>> {
        let db = self.sink.db.clone();
        let watch = self.sink.watch();
        Box::pin(watch.guard_owned(judged_owned(db, async move {
            let what = format!("applying the schema's {}", self.step);
            let sql = String::from_utf8(self.sql).map_err(|_| Error::Database {
                what: what.clone(),
                detail: "the SQL is not UTF-8".into(),
            })?;
            // A connection of its own: the SQL may change session settings (search_path).
            let client = self.sink.db.connect().await?;
            client
                .batch_execute("BEGIN")
                .await
                .map_err(db_err(what.clone()))?;
            client
                .batch_execute(&sql)
                .await
                .map_err(db_err(what.clone()))?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {BOOKKEEPING}.units (key, rows, digest, bytes, meta) \
                         VALUES ($1, 0, '', $2, '')"
                    ),
                    &[&self.key, &(bytes as i64)],
                )
                .await
                .map_err(db_err(what.clone()))?;
            client.batch_execute("COMMIT").await.map_err(db_err(what))?;
            if crate::fault::db_die_after(&self.step) {
                std::process::exit(137);
            }
            Ok(())
        })))
    }
}

/// The last unit: re-reads what was committed, checks it against the source's digests, and
/// drops the bookkeeping once everything matches.
struct FinishWriter {
    sink: PgSink,
    verify: bool,
    /// The source's digests, in this run's snapshot, of the ranges an interrupted run committed
    /// ([`super::source::Rechecked`], as JSON).
    rechecked: Vec<u8>,
}

impl UnitWriter for FinishWriter {
    fn put(&mut self, data: Bytes) -> Fut<'_, Result<()>> {
        Box::pin(async move {
            if self.rechecked.len() + data.len() > MAX_SQL {
                return Err(Error::Database {
                    what: "finishing".into(),
                    detail: "the last unit carries more than the source's digests".into(),
                });
            }
            self.rechecked.extend_from_slice(&data);
            Ok(())
        })
    }

    fn commit(self: Box<Self>, _bytes: u64, _trailer: Vec<u8>) -> Fut<'static, Result<()>> {
        let db = self.sink.db.clone();
        let watch = self.sink.watch();
        Box::pin(watch.guard_owned(judged_owned(db, async move {
            let client = self.sink.db.connect().await?;
            // Found by an earlier attempt of this unit: the same error again, naming them.
            let failed = client
                .query_opt(
                    &format!("SELECT digest FROM {BOOKKEEPING}.units WHERE key = $1"),
                    &[&VERIFY_FAILED],
                )
                .await
                .map_err(db_err("reading bookkeeping".into()))?;
            if let Some(row) = failed {
                let said: String = row.get(0);
                return Err(match said.split_once('\n') {
                    Some((path, detail)) => Error::Verify {
                        path: path.into(),
                        detail: detail.into(),
                    },
                    None => Error::Verify {
                        path: "the target".into(),
                        detail: "ranges failed verification in this run and were removed; run \
                                 the same command again to copy them anew"
                            .into(),
                    },
                });
            }
            match (self.verify, self.rechecked.is_empty()) {
                (_, true) => {}
                (true, false) => take_rechecked(&client, &self.rechecked).await?,
                // Without the re-read, the ranges committed before are still compared with the
                // source as it is now: their digests, read again there, against those recorded.
                (false, false) => compare_rechecked(&client, &self.rechecked).await?,
            }
            if self.verify {
                let jobs = self
                    .sink
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len();
                verify_committed(&client, &self.sink, jobs).await?;
            }
            client
                .batch_execute(&format!(
                    "SET client_min_messages = warning; DROP SCHEMA {BOOKKEEPING} CASCADE"
                ))
                .await
                .map_err(db_err("dropping the bookkeeping".into()))?;
            Ok(())
        })))
    }
}

/// Records the source's digests of the ranges an interrupted run committed, as it holds them
/// now, in place of those recorded then: the re-read compares the target with these.
async fn take_rechecked(client: &Client, json: &[u8]) -> Result<()> {
    let what = "taking the source's digests of the ranges committed before";
    let rechecked = parse_rechecked(json, what)?;
    let update = client
        .prepare(&format!(
            "UPDATE {BOOKKEEPING}.units SET rows = $2, digest = $3 WHERE key = $1"
        ))
        .await
        .map_err(db_err(what.into()))?;
    for r in rechecked {
        let n = client
            .execute(&update, &[&r.key, &(r.rows as i64), &r.digest])
            .await
            .map_err(db_err(what.into()))?;
        if n != 1 {
            return Err(Error::Database {
                what: what.into(),
                detail: format!("the target has no record of {}", r.key),
            });
        }
    }
    Ok(())
}

/// The source's digests of the ranges committed before, as the last unit carried them (from the
/// sender: each digest must be what [`RowsDigest::hex`] writes, 32 hex digits, before it is
/// recorded or compared).
fn parse_rechecked(json: &[u8], what: &str) -> Result<Vec<super::source::Rechecked>> {
    let bad = |detail: String| Error::Database {
        what: what.into(),
        detail,
    };
    let rechecked: Vec<super::source::Rechecked> =
        serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    if let Some(r) = rechecked
        .iter()
        .find(|r| r.digest.len() != 32 || u128::from_str_radix(&r.digest, 16).is_err())
    {
        return Err(bad(format!("{}: {:?} is not a digest", r.key, r.digest)));
    }
    Ok(rechecked)
}

/// Compares the source's digests of the ranges an interrupted run committed, as it holds them
/// now, with those recorded when they were copied (`--no-verify`: the target is not read again);
/// a range that changed at the source since is removed, for the next run to copy.
async fn compare_rechecked(client: &Client, json: &[u8]) -> Result<()> {
    let what = "comparing the ranges committed before with the source";
    let rechecked = parse_rechecked(json, what)?;
    let mut wrong = Vec::new();
    for r in rechecked {
        let row = client
            .query_opt(
                &format!("SELECT rows, digest, meta FROM {BOOKKEEPING}.units WHERE key = $1"),
                &[&r.key],
            )
            .await
            .map_err(db_err(what.into()))?;
        let Some(row) = row else { continue };
        let recorded = RowsDigest {
            rows: row.get::<_, i64>(0) as u64,
            sum: u128::from_str_radix(row.get(1), 16).unwrap_or(0),
        };
        if r.rows == recorded.rows && r.digest == recorded.hex() {
            continue;
        }
        let Meta::Rows { table, range } = Meta::parse(row.get(2))? else {
            continue;
        };
        let now = RowsDigest {
            rows: r.rows,
            sum: u128::from_str_radix(&r.digest, 16).expect("checked by parse_rechecked"),
        };
        // Pages differ between two copies of a table: a page range is removed with its table.
        let remove = match range.by_key {
            true => range,
            false => Range::whole(false),
        };
        wrong.push(Wrong {
            what: format!(
                "{} (changed at the source since it was copied)",
                difference(&table, &range, now, recorded)
            ),
            remove: Some((table, remove)),
        });
    }
    remove_wrong(client, wrong).await
}

/// One read of the re-read at the end.
enum Check {
    /// One range by its own bounds, or a page-ranged table whole (pages differ between two
    /// copies, so only the table's sum can be compared).
    Range {
        /// Of the tables read by range.
        at: usize,
        range: Range,
        expected: RowsDigest,
    },
    /// Heap pages `pages` of key-ranged table `at` of the scanned ones: a sequential read whose
    /// rows are sorted into the table's ranges by key.
    Pages { at: usize, pages: Range },
}

/// A key-ranged table re-read by page scans rather than by one index scan per range (which
/// costs the target's server about twice as much per row).
struct Scanned {
    table: Table,
    target: Table,
    ranges: Vec<(Range, RowsDigest)>,
    seen: Mutex<KeyRoute>,
}

/// Re-reads every committed range (or, for a table ranged by page, the whole table: pages
/// differ between two copies) and compares it with the digest the source computed. A range that
/// differs is removed with its bookkeeping row, so that the same command run again copies it
/// anew; the error names each.
async fn verify_committed(client: &Client, sink: &PgSink, jobs: usize) -> Result<()> {
    let watch = sink.watch();
    let rows = client
        .query(
            &format!("SELECT meta, rows, digest FROM {BOOKKEEPING}.units WHERE meta <> ''"),
            &[],
        )
        .await
        .map_err(db_err("reading bookkeeping".into()))?;
    // Per table: its ranges by key with their digests, or the sum over its page ranges.
    let mut tables: BTreeMap<String, (Table, Vec<(Range, RowsDigest)>)> = BTreeMap::new();
    for row in rows {
        let Meta::Rows { table, range } = Meta::parse(row.get(0))? else {
            continue;
        };
        let digest = RowsDigest {
            rows: row.get::<_, i64>(1) as u64,
            sum: u128::from_str_radix(row.get(2), 16).unwrap_or(0),
        };
        tables
            .entry(table.qualified())
            .or_insert_with(|| (table.clone(), Vec::new()))
            .1
            .push((range, digest));
    }
    // TID range scans (PostgreSQL 14) make a page range a sequential read; before them a
    // table is scanned whole.
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(db_err("reading the server's version".into()))?
        .get(0);
    let mut checks: std::collections::VecDeque<Check> = Default::default();
    let mut scanned: Vec<Scanned> = Vec::new();
    // Tables read by range: the source's description and the target's.
    let mut by_range: Vec<(Table, Table)> = Vec::new();
    for (table, ranges) in tables.into_values() {
        let target = target_table(client, &table).await?;
        let field = target
            .columns
            .iter()
            .position(|c| Some(c) == target.key.as_ref())
            .and_then(|f| u16::try_from(f).ok());
        match field {
            Some(field) if target.binary && ranges.iter().all(|(r, _)| r.by_key) => {
                let pages: i64 = client
                    .query_one(
                        "SELECT pg_relation_size($1::text::regclass) \
                         / current_setting('block_size')::bigint",
                        &[&target.qualified()],
                    )
                    .await
                    .map_err(db_err(format!("measuring {}", target.display())))?
                    .get(0);
                // A scan per two ranges' worth of pages, so that the readers share a large
                // table, each scan a sequential read.
                let scans = if version >= 140_000 && pages > 1 {
                    ((ranges.len() as i64 + 1) / 2).clamp(1, pages)
                } else {
                    1
                };
                let per = (pages + scans - 1) / scans;
                let at = scanned.len();
                for i in 0..scans {
                    let pages = Range {
                        by_key: false,
                        lo: (i > 0).then(|| i * per),
                        hi: (i + 1 < scans).then(|| (i + 1) * per),
                    };
                    checks.push_back(Check::Pages { at, pages });
                }
                let bounds: Vec<_> = ranges.iter().map(|(r, _)| (r.lo, r.hi)).collect();
                scanned.push(Scanned {
                    seen: Mutex::new(KeyRoute::new(field, &bounds)),
                    table,
                    target,
                    ranges,
                });
            }
            _ if ranges.iter().all(|(r, _)| r.by_key) => {
                for (range, expected) in ranges {
                    let at = by_range.len();
                    checks.push_back(Check::Range {
                        at,
                        range,
                        expected,
                    });
                }
                by_range.push((table, target));
            }
            _ => {
                let mut sum = RowsDigest::default();
                for (_, d) in &ranges {
                    sum.add(*d);
                }
                checks.push_back(Check::Range {
                    at: by_range.len(),
                    range: Range::whole(false),
                    expected: sum,
                });
                by_range.push((table, target));
            }
        }
    }
    // As many readers as the copy had writers: the target's server does the reading.
    let checks = Mutex::new(checks);
    let mut readers = vec![Reader::Borrowed(client)];
    for _ in 1..jobs.clamp(1, crate::unit::session::MAX_LANES) {
        readers.push(sink.client().await.map(Reader::Own)?);
    }
    let wrong: Mutex<Vec<Wrong>> = Mutex::new(Vec::new());
    let differs = |table: &Table, target: &Table, range: &Range, expected, got| {
        wrong.lock().unwrap_or_else(|p| p.into_inner()).push(Wrong {
            what: difference(table, range, expected, got),
            remove: Some((target.clone(), *range)),
        });
    };
    let work = readers.iter().map(|reader| async {
        loop {
            let next = checks.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            match next {
                None => return Ok::<(), Error>(()),
                Some(Check::Range {
                    at,
                    range,
                    expected,
                }) => {
                    let (table, target) = &by_range[at];
                    let got = digest_of(reader.get(), &watch, target, &range).await?;
                    if got != expected {
                        differs(table, target, &range, expected, got);
                    }
                }
                Some(Check::Pages { at, pages }) => {
                    let s = &scanned[at];
                    let empty = s
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone_empty();
                    let rows = RowHasher::routed(empty);
                    let what = format!(
                        "reading {} ({})",
                        s.target.display(),
                        pages.display(&s.target)
                    );
                    let got = read_rows(reader.get(), &watch, &s.target, &pages, rows, &what)
                        .await?
                        .finish_routed()
                        .map_err(|why| Error::Verify {
                            path: what,
                            detail: why,
                        })?;
                    s.seen.lock().unwrap_or_else(|p| p.into_inner()).merge(&got);
                }
            }
        }
    });
    for r in futures_util::future::join_all(work).await {
        r?;
    }
    for s in scanned {
        let seen = s.seen.into_inner().unwrap_or_else(|p| p.into_inner());
        for ((range, expected), got) in s.ranges.iter().zip(&seen.sums) {
            if got != expected {
                differs(&s.table, &s.target, range, *expected, *got);
            }
        }
        if seen.outside.rows > 0 {
            wrong.lock().unwrap_or_else(|p| p.into_inner()).push(Wrong {
                what: format!(
                    "{}: the target holds {} row(s) in no range that was copied",
                    s.table.display(),
                    seen.outside.rows
                ),
                remove: None,
            });
        }
    }
    remove_wrong(
        client,
        wrong.into_inner().unwrap_or_else(|p| p.into_inner()),
    )
    .await
}

/// Removes each range of `wrong` at the target (with its bookkeeping row, so that a rerun copies
/// it again) and fails naming them all; `Ok` when there are none.
async fn remove_wrong(client: &Client, wrong: Vec<Wrong>) -> Result<()> {
    let mut kept = 0;
    let mut said = Vec::new();
    for Wrong { what, remove } in wrong {
        match remove {
            Some((target, range)) if forget(client, &target, &range).await => said.push(what),
            _ => {
                kept += 1;
                said.push(format!(
                    "{what} (could not be removed: fix it by hand or empty the target)"
                ));
            }
        }
    }
    let wrong = said;
    if wrong.is_empty() {
        return Ok(());
    }
    let then = if kept == wrong.len() {
        "the same command run again will not repair them"
    } else {
        RECOPY
    };
    let path = format!("{} range(s)", wrong.len());
    // A few named, the rest counted: the message crosses the link in a frame of at most 4 KiB,
    // and cut there it lost what to do (and `copy` no longer knew to copy them again) once a
    // source written to all along had dozens of ranges differ.
    let listed: Vec<&str> = wrong.iter().take(LISTED).map(String::as_str).collect();
    let more = match wrong.len().saturating_sub(LISTED) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    let detail = format!("{then}: {}{more}", listed.join("; "));
    // Kept with the mark, so that a second attempt of the last unit says the same.
    let _ = client
        .execute(
            &format!("UPDATE {BOOKKEEPING}.units SET digest = $2 WHERE key = $1"),
            &[&VERIFY_FAILED, &format!("{path}\n{detail}")],
        )
        .await;
    Err(Error::Verify { path, detail })
}

/// The most ranges a failed check names; it counts the others.
const LISTED: usize = 8;

/// A difference the re-read found: what to say, and the range to remove so that a rerun copies
/// it again (if there is one).
struct Wrong {
    what: String,
    remove: Option<(Table, Range)>,
}

/// What a user reads of one range that differs.
fn difference(table: &Table, range: &Range, expected: RowsDigest, got: RowsDigest) -> String {
    format!(
        "{} ({}): source {} rows, digest {}; target {} rows, digest {}",
        table.display(),
        range.display(table),
        expected.rows,
        expected.hex(),
        got.rows,
        got.hex()
    )
}

/// A connection to read with: the caller's, or one of the sink's own.
enum Reader<'a> {
    Borrowed(&'a Client),
    Own(Client),
}

impl Reader<'_> {
    fn get(&self) -> &Client {
        match self {
            Reader::Borrowed(c) => c,
            Reader::Own(c) => c,
        }
    }
}

/// `table` as the target has it (its own column list), read in the source's format.
async fn target_table(client: &Client, table: &Table) -> Result<Table> {
    let found = catalog::tables(client, &[table.qualified()]).await?;
    let mut t = found
        .into_iter()
        .find(|t| t.schema == table.schema && t.name == table.name)
        .ok_or_else(|| Error::Verify {
            path: table.display(),
            detail: "the table is missing at the target".into(),
        })?;
    t.binary = table.binary;
    t.key = table.key.clone();
    if !table.columns.is_empty() {
        t.columns = table.columns.clone();
    }
    Ok(t)
}

/// The digest of `range` of `table` as `client`'s database holds it; `watch` watches its
/// server.
pub(crate) async fn digest_of(
    client: &Client,
    watch: &Watch,
    table: &Table,
    range: &Range,
) -> Result<RowsDigest> {
    let what = format!("reading {} ({})", table.display(), range.display(table));
    let rows = RowHasher::new(table.binary);
    read_rows(client, watch, table, range, rows, &what)
        .await?
        .finish()
        .map_err(|why| Error::Verify {
            path: what,
            detail: why,
        })
}

/// Feeds `range` of `table` as `client`'s database holds it to `rows`; each wait for rows is a
/// step of `watch` ([`Watch::guard_step`]), `what` naming it.
async fn read_rows(
    client: &Client,
    watch: &Watch,
    table: &Table,
    range: &Range,
    mut rows: RowHasher,
    what: &str,
) -> Result<RowHasher> {
    use futures_util::StreamExt;
    let stream = client
        .copy_out(table.copy_out(range).as_str())
        .await
        .map_err(db_err(what.to_string()))?;
    let mut stream = Box::pin(stream);
    // A page range's first row may rightly follow a long sequential read (no TID range scan
    // before PostgreSQL 14): that wait is the server's alone.
    let mut seek = !range.by_key;
    loop {
        let next = async { Ok(stream.next().await) };
        let next = if std::mem::take(&mut seek) {
            watch.guard(next).await?
        } else {
            watch.guard_step(what, next).await?
        };
        let Some(chunk) = next else { break };
        rows.feed(&chunk.map_err(db_err(what.to_string()))?);
    }
    Ok(rows)
}

/// Removes a range that failed verification, with its bookkeeping, so a rerun copies it again;
/// whether it could (a constraint may forbid it).
async fn forget(client: &Client, table: &Table, range: &Range) -> bool {
    let cond = table.condition(range).unwrap_or_else(|| "true".into());
    let key = Meta::Rows {
        table: table.clone(),
        range: *range,
    }
    .key();
    let prefix = super::meta::rows_prefix(table);
    let work = async {
        client.batch_execute("BEGIN").await?;
        client
            .batch_execute(&format!(
                "DELETE FROM ONLY {} WHERE {cond}",
                table.qualified()
            ))
            .await?;
        client
            .execute(
                &format!(
                    "DELETE FROM {BOOKKEEPING}.units WHERE key = $1 \
                     OR (NOT $3 AND starts_with(key, $2))"
                ),
                &[&key, &prefix, &range.by_key],
            )
            .await?;
        client
            .execute(
                &format!(
                    "INSERT INTO {BOOKKEEPING}.units (key, rows, digest, bytes, meta) \
                     VALUES ($1, 0, '', 0, '') ON CONFLICT DO NOTHING"
                ),
                &[&VERIFY_FAILED],
            )
            .await?;
        client.batch_execute("COMMIT").await
    };
    match work.await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "could not remove {} for a new copy: {}",
                table.display(),
                full(&e)
            );
            let _ = client.batch_execute("ROLLBACK").await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests the last unit carries come from the sender: one that is not 32 hex digits
    /// is refused by name before it is recorded or compared.
    #[test]
    fn rechecked_digests_are_checked_before_use() {
        let good = format!(
            r#"[{{"key":"rows a","rows":3,"digest":"{}"}}]"#,
            "0f".repeat(16)
        );
        assert_eq!(parse_rechecked(good.as_bytes(), "t").unwrap().len(), 1);
        for digest in ["zz", "", &"0".repeat(33), &"g".repeat(32)] {
            let bad = format!(r#"[{{"key":"rows a","rows":3,"digest":"{digest}"}}]"#);
            let e = parse_rechecked(bad.as_bytes(), "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("rows a") && e.contains("is not a digest"), "{e}");
        }
        assert!(parse_rechecked(b"{", "t").is_err());
    }
}
