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
use super::conn::{full, Database};
use super::digest::{RowHasher, RowsDigest};
use super::meta::Meta;
use crate::error::{Error, Result};
use crate::transport::Fut;
use crate::unit::{UnitSink, UnitWriter};

/// The bookkeeping row that says ranges were removed after failing verification in this run:
/// the run must not end well, and the next run (which clears it) copies them anew.
const VERIFY_FAILED: &str = "verify failed";

/// The most SQL one schema unit may carry (the schema, not the data, travels this way).
const MAX_SQL: usize = 256 << 20;

/// Writes units into a database.
#[derive(Debug, Clone)]
pub struct PgSink {
    db: Database,
    idle: Arc<Mutex<Vec<Client>>>,
}

impl PgSink {
    /// Into the database `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            idle: Default::default(),
        }
    }

    /// Connects to the target and checks that a copy can go there: the database is empty of
    /// tables, views and sequences, or holds the bookkeeping of an interrupted copy (a resume).
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
                        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {} \
                         ORDER BY 1 LIMIT 4",
                        catalog::USERS
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
                        "it already holds tables of its own ({}) and no interrupted copy to \
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
        Box::pin(async move {
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
        })
    }

    fn open<'a>(&'a self, meta: &'a str) -> Fut<'a, Result<Box<dyn UnitWriter>>> {
        Box::pin(async move {
            let parsed = Meta::parse(meta)?;
            let key = parsed.key();
            let writer: Box<dyn UnitWriter> = match parsed {
                Meta::Sql { step } => Box::new(SqlWriter {
                    sink: self.clone(),
                    key,
                    step,
                    sql: Vec::new(),
                }),
                Meta::Finish { verify } => Box::new(FinishWriter {
                    sink: self.clone(),
                    verify,
                }),
                Meta::Rows { table, range } => {
                    let what = format!("{} ({})", table.display(), range.display(&table));
                    let client = self.client().await?;
                    client
                        .batch_execute("BEGIN")
                        .await
                        .map_err(db_err(format!("writing {what}")))?;
                    let copy = client
                        .copy_in::<_, Bytes>(table.copy_in().as_str())
                        .await
                        .map_err(db_err(format!("writing {what}")))?;
                    Box::new(RowsWriter {
                        sink: self.clone(),
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
        })
    }
}

/// One range's rows going into a `COPY FROM STDIN`, inside a transaction.
struct RowsWriter {
    sink: PgSink,
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
            self.copy
                .send(data)
                .await
                .map_err(db_err(format!("writing {}", self.what)))
        })
    }

    fn commit(self: Box<Self>, bytes: u64, trailer: Vec<u8>) -> Fut<'static, Result<()>> {
        Box::pin(async move {
            let Self {
                sink,
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
        })
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
        Box::pin(async move {
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
            Ok(())
        })
    }
}

/// The last unit: re-reads what was committed, checks it against the source's digests, and
/// drops the bookkeeping once everything matches.
struct FinishWriter {
    sink: PgSink,
    verify: bool,
}

impl UnitWriter for FinishWriter {
    fn put(&mut self, _data: Bytes) -> Fut<'_, Result<()>> {
        Box::pin(async move {
            Err(Error::Database {
                what: "finishing".into(),
                detail: "the last unit carries no bytes".into(),
            })
        })
    }

    fn commit(self: Box<Self>, _bytes: u64, _trailer: Vec<u8>) -> Fut<'static, Result<()>> {
        Box::pin(async move {
            let client = self.sink.db.connect().await?;
            let failed = client
                .query_opt(
                    &format!("SELECT 1 FROM {BOOKKEEPING}.units WHERE key = $1"),
                    &[&VERIFY_FAILED],
                )
                .await
                .map_err(db_err("reading bookkeeping".into()))?;
            if failed.is_some() {
                return Err(Error::Verify {
                    path: "the target".into(),
                    detail: "ranges failed verification in this run and were removed; run the \
                             same command again to copy them anew"
                        .into(),
                });
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
        })
    }
}

/// Re-reads every committed range (or, for a table ranged by page, the whole table: pages
/// differ between two copies) and compares it with the digest the source computed. A range that
/// differs is removed with its bookkeeping row, so that the same command run again copies it
/// anew; the error names each.
async fn verify_committed(client: &Client, sink: &PgSink, jobs: usize) -> Result<()> {
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
    let mut checks: std::collections::VecDeque<(Table, Table, Range, RowsDigest)> =
        Default::default();
    for (table, ranges) in tables.values() {
        let target = target_table(client, table).await?;
        if ranges.iter().all(|(r, _)| r.by_key) {
            for (range, expected) in ranges {
                checks.push_back((table.clone(), target.clone(), *range, *expected));
            }
        } else {
            let mut sum = RowsDigest::default();
            for (_, d) in ranges {
                sum.add(*d);
            }
            checks.push_back((table.clone(), target, Range::whole(false), sum));
        }
    }
    // As many readers as the copy had writers: the target's server does the reading.
    let checks = Mutex::new(checks);
    let mut readers = vec![Reader::Borrowed(client)];
    for _ in 1..jobs.clamp(1, crate::unit::session::MAX_LANES) {
        readers.push(sink.client().await.map(Reader::Own)?);
    }
    let wrong = Mutex::new(Vec::new());
    let work = readers.iter().map(|reader| async {
        loop {
            let next = checks.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some((table, target, range, expected)) = next else {
                return Ok::<(), Error>(());
            };
            let got = digest_of(reader.get(), &target, &range).await?;
            if got != expected {
                wrong.lock().unwrap_or_else(|p| p.into_inner()).push((
                    format!(
                        "{} ({}): source {} rows, digest {}; target {} rows, digest {}",
                        table.display(),
                        range.display(&table),
                        expected.rows,
                        expected.hex(),
                        got.rows,
                        got.hex()
                    ),
                    target,
                    range,
                ));
            }
        }
    });
    for r in futures_util::future::join_all(work).await {
        r?;
    }
    let wrong = wrong.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut kept = 0;
    let mut said = Vec::new();
    for (what, target, range) in wrong {
        if forget(client, &target, &range).await {
            said.push(what);
        } else {
            kept += 1;
            said.push(format!(
                "{what} (could not be removed: fix it by hand or empty the target)"
            ));
        }
    }
    let wrong = said;
    if wrong.is_empty() {
        return Ok(());
    }
    let then = if kept == wrong.len() {
        "the same command run again will not repair them"
    } else {
        "removed at the target: run the same command again to copy them anew"
    };
    Err(Error::Verify {
        path: format!("{} range(s)", wrong.len()),
        detail: format!("{}; {then}", wrong.join("; ")),
    })
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
    let found = catalog::tables(client, &[format!("{}.{}", table.schema, table.name)]).await?;
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

/// The digest of `range` of `table` as `client`'s database holds it.
pub(crate) async fn digest_of(client: &Client, table: &Table, range: &Range) -> Result<RowsDigest> {
    use futures_util::StreamExt;
    let what = format!("reading {} ({})", table.display(), range.display(table));
    let stream = client
        .copy_out(table.copy_out(range).as_str())
        .await
        .map_err(db_err(what.clone()))?;
    let mut stream = Box::pin(stream);
    let mut rows = RowHasher::new(table.binary);
    while let Some(chunk) = stream.next().await {
        rows.feed(&chunk.map_err(db_err(what.clone()))?);
    }
    rows.finish().map_err(|why| Error::Verify {
        path: what,
        detail: why,
    })
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
