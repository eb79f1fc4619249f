//! The source end of a database migration: every reader works in the one snapshot the plan was
//! made in, so the rows of all ranges, the schema and the sequences agree with each other.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::process::Command;
use tokio_postgres::{Client, CopyOutStream};

use super::catalog::{self, LeftOut, Range, Table};
use super::conn::{judged, pg_error, Database};
use super::digest::RowHasher;
use super::meta::{rows_prefix, Meta};
use super::postdata::{self, PostData};
use super::watch::Watch;
use crate::error::{Error, Result};
use crate::transport::Fut;
use crate::unit::{Unit, UnitReader, UnitSource};

/// Reads units from a database in one exported snapshot.
#[derive(Debug)]
pub struct PgSource {
    db: Database,
    /// Ends what waits on a server that stopped answering ([`Watch::guard`]).
    watch: Arc<Watch>,
    snapshot: String,
    idle: Idle,
    /// Holds the transaction the snapshot was exported from: the snapshot lives as long as it.
    holder: Client,
    /// What a destination holding an interrupted run may hold, once planned.
    resume: std::sync::OnceLock<Resume>,
    /// The post-data section cut by table, once [`PgSource::cut_post_data`] has run.
    post_data: std::sync::OnceLock<PostData>,
    /// What the schema leaves out when only some tables are copied (`--tables`).
    left_out: std::sync::OnceLock<LeftOut>,
    /// `pg_dump`'s options for what the schema leaves out besides (`--no-owner`,
    /// `--no-privileges`).
    dump_options: std::sync::OnceLock<Vec<&'static str>>,
    /// Tables whose ranges a resume cut again, with their new ranges.
    ranges: Mutex<Vec<(String, Vec<Range>)>>,
    /// The ranges an interrupted run committed that this run keeps: read again at the end
    /// (see [`PgSource::recheck`]).
    held_rows: std::sync::OnceLock<Vec<(Table, Range)>>,
}

/// The rules for going on from an interrupted run.
#[derive(Debug)]
pub(crate) struct Resume {
    /// Refuse any: the copy must be of one moment (`--consistent`).
    pub(crate) consistent: bool,
    /// The keys of this run's units, and the tables they cover.
    pub(crate) keys: HashSet<String>,
    pub(crate) tables: Vec<Table>,
}

impl PgSource {
    /// Opens the snapshot every reader will share; returns the source and a client inside that
    /// snapshot for planning. `watch` watches `db`'s server: every read waits on it.
    pub(crate) async fn open(db: &Database, watch: Arc<Watch>) -> Result<(Self, Client)> {
        let holder = db.connect().await?;
        let snapshot: String = holder
            .simple_query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_export_snapshot()",
            )
            .await
            .map_err(|e| pg_error(format!("exporting a snapshot of {}", db.shown), &e))?
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| Error::Database {
                what: "exporting a snapshot".into(),
                detail: "no snapshot name returned".into(),
            })?;
        let source = Self {
            db: db.clone(),
            watch,
            snapshot,
            idle: Idle::default(),
            holder,
            resume: std::sync::OnceLock::new(),
            post_data: std::sync::OnceLock::new(),
            left_out: std::sync::OnceLock::new(),
            dump_options: std::sync::OnceLock::new(),
            ranges: Mutex::default(),
            held_rows: std::sync::OnceLock::new(),
        };
        let planner = source.client().await?;
        Ok((source, planner))
    }

    /// Locks `tables` against changes that ignore snapshots (`TRUNCATE`, rewriting `ALTER
    /// TABLE`, `VACUUM FULL`, `CLUSTER`) until the copy ends, as pg_dump does.
    pub(crate) async fn lock(&self, tables: &[Table]) -> Result<()> {
        for chunk in tables.chunks(500) {
            let names: Vec<String> = chunk.iter().map(Table::qualified).collect();
            self.holder
                .batch_execute(&format!(
                    "LOCK TABLE {} IN ACCESS SHARE MODE",
                    names.join(", ")
                ))
                .await
                .map_err(|e| pg_error("locking the tables to copy".into(), &e))?;
        }
        Ok(())
    }

    /// The tables whose ranges a resume cut again ([`UnitSource::resume`]), with their new
    /// ranges, by [`Table::qualified`].
    pub(crate) fn recut(&self) -> Vec<(String, Vec<Range>)> {
        self.ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Leaves `left_out` out of the schema and the later steps; before the schema is read.
    pub(crate) fn leave_out(&self, left_out: LeftOut) {
        let _ = self.left_out.set(left_out);
    }

    /// Leaves owners (`no_owner`) or access privileges (`no_privileges`) out of the schema.
    pub(crate) fn dump_options(&self, no_owner: bool, no_privileges: bool) {
        let options = [(no_owner, "--no-owner"), (no_privileges, "--no-privileges")];
        let _ = self.dump_options.set(
            options
                .iter()
                .filter(|(on, _)| *on)
                .map(|&(_, o)| o)
                .collect(),
        );
    }

    /// The relations left out, by number (none unless `--tables` chose some).
    fn left_out_oids(&self) -> Vec<u32> {
        self.left_out
            .get()
            .map(|l| l.oids.clone())
            .unwrap_or_default()
    }

    /// Sets the rules for a destination that holds an interrupted run.
    pub(crate) fn set_resume(&self, resume: Resume) {
        let _ = self.resume.set(resume);
    }

    /// A client in a fresh transaction on the shared snapshot.
    pub(crate) async fn client(&self) -> Result<Client> {
        let idle = self.idle.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => self.db.connect().await?,
        };
        // At once, unless a backend kept from an earlier range has stopped answering.
        let step = format!("joining the source snapshot {}", self.snapshot);
        self.watch
            .guard_step(&step, async {
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION \
                         SNAPSHOT '{}'",
                        self.snapshot
                    ))
                    .await
                    .map_err(|e| pg_error(step.clone(), &e))
            })
            .await?;
        Ok(client)
    }

    /// Ends `client`'s transaction and keeps it for the next reader.
    pub(crate) async fn give_back(&self, client: Client) {
        self.idle.give_back(client).await;
    }

    /// `pg_dump`'s schema section `step` (`pre-data`, `post-data`) in the shared snapshot.
    async fn schema(&self, step: &str) -> Result<Vec<u8>> {
        let exclude = self.left_out.get().map_or(&[][..], |l| &l.patterns[..]);
        let options = self.dump_options.get().map_or(&[][..], Vec::as_slice);
        pg_dump(&self.db, &self.snapshot, step, exclude, options).await
    }

    /// Dumps the post-data section and cuts it by table (see [`postdata`]): the indexes and key
    /// constraints of each of `tables` become a unit of their own. Returns the tables that got
    /// one, by [`Table::qualified`].
    pub(crate) async fn cut_post_data(
        &self,
        tables: &[Table],
    ) -> Result<std::collections::BTreeSet<String>> {
        let dump = self.schema("post-data").await?;
        let dump = String::from_utf8(dump).map_err(|_| Error::Database {
            what: format!("pg_dump --section=post-data of {}", self.db.shown),
            detail: "the SQL is not UTF-8".into(),
        })?;
        let client = self.client().await?;
        // What each header could name: an index by its name, a key constraint by its table's
        // name and its own; a tag two tables could claim is left to the rest.
        let rows = client
            .query(
                "SELECT 'INDEX', n.nspname, i.relname, t.relname \
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                 JOIN pg_class t ON t.oid = x.indrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE t.relkind = 'r' \
                 UNION ALL \
                 SELECT 'CONSTRAINT', n.nspname, t.relname || ' ' || c.conname, t.relname \
                 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE c.contype IN ('p', 'u', 'x') AND t.relkind = 'r'",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading which table each index belongs to".into(), &e))?;
        self.give_back(client).await;
        let mut owners: std::collections::HashMap<(String, String, String), Option<String>> =
            Default::default();
        for r in rows {
            // An index lives in its table's schema, and a constraint's header names that too.
            let (schema, name): (String, String) = (r.get(1), r.get(3));
            let table = tables
                .iter()
                .find(|t| t.schema == schema && t.name == name)
                .map(Table::qualified);
            let key = (r.get::<_, String>(0), schema, r.get(2));
            owners
                .entry(key)
                .and_modify(|o| {
                    if *o != table {
                        *o = None;
                    }
                })
                .or_insert(table);
        }
        let cut = postdata::split(&dump, |e| {
            owners
                .get(&(e.kind.to_string(), e.schema.to_string(), e.tag.to_string()))
                .cloned()
                .flatten()
        });
        let names = cut.tables.keys().cloned().collect();
        let _ = self.post_data.set(cut);
        Ok(names)
    }

    /// `setval` for every sequence, as pg_dump gives it: its last value and whether that was
    /// handed out (see [`catalog::sequences`]).
    async fn sequences(&self) -> Result<Vec<u8>> {
        let client = self.client().await?;
        let states = catalog::sequences(&client, &self.left_out_oids()).await?;
        self.give_back(client).await;
        let mut sql = String::new();
        for s in states {
            sql.push_str(&format!(
                "SELECT pg_catalog.setval({}, {}, {});\n",
                s.literal, s.last_value, s.is_called
            ));
        }
        Ok(sql.into_bytes())
    }
}

impl PgSource {
    /// `REFRESH MATERIALIZED VIEW` for every view populated at the source, each after the views
    /// it reads from (pg_dump leaves these to its data section, which Sluice does not run).
    async fn views(&self) -> Result<Vec<u8>> {
        let client = self.client().await?;
        let err = |e: tokio_postgres::Error| pg_error("reading materialized views".into(), &e);
        let views = client
            .query(
                "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname <> '_sluice' \
                   AND c.oid <> ALL ($1) \
                 ORDER BY c.oid",
                &[&self.left_out_oids()],
            )
            .await
            .map_err(err)?;
        // Which view reads which (through its rewrite rule).
        let reads = client
            .query(
                "SELECT DISTINCT r.ev_class, d.refobjid FROM pg_rewrite r \
                 JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                 JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'm' \
                 WHERE d.refobjid <> r.ev_class",
                &[],
            )
            .await
            .map_err(err)?;
        self.give_back(client).await;
        let views: Vec<(u32, String)> = views.iter().map(|r| (r.get(0), r.get(1))).collect();
        let reads: Vec<(u32, u32)> = reads.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut done: HashSet<u32> = HashSet::new();
        let mut sql = String::new();
        // Each pass refreshes the views whose sources are done; a cycle cannot exist.
        while done.len() < views.len() {
            let before = done.len();
            for (oid, name) in &views {
                let ready = reads
                    .iter()
                    .filter(|(v, _)| v == oid)
                    .all(|(_, src)| done.contains(src) || !views.iter().any(|(o, _)| o == src));
                if !done.contains(oid) && ready {
                    sql.push_str(&format!("REFRESH MATERIALIZED VIEW {name};\n"));
                    done.insert(*oid);
                }
            }
            if done.len() == before {
                // Dependencies this walk does not see (through plain views): the rest in the
                // order they were made; a wrong order fails the refresh, loudly.
                for (oid, name) in &views {
                    if done.insert(*oid) {
                        sql.push_str(&format!("REFRESH MATERIALIZED VIEW {name};\n"));
                    }
                }
            }
        }
        Ok(sql.into_bytes())
    }
}

/// Finds `pg_dump`: on the `PATH`, else the newest under `/usr/lib/postgresql`.
pub(crate) fn pg_tool(name: &str) -> Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| Error::Database {
            what: format!("finding {name}"),
            detail: format!(
                "{name} is not on the PATH nor under /usr/lib/postgresql: install PostgreSQL's \
             client tools (Debian: postgresql-client)"
            ),
        })
}

/// `pg_dump`'s schema section `step` of `db` in `snapshot`. The process is killed if the wait
/// for it is dropped (its server stopped answering, [`Watch`]): left running, it held the
/// command on a blocking thread until the server came back.
async fn pg_dump(
    db: &Database,
    snapshot: &str,
    step: &str,
    exclude: &[String],
    options: &[&str],
) -> Result<Vec<u8>> {
    let mut cmd = Command::new(pg_tool("pg_dump")?);
    cmd.kill_on_drop(true);
    for pattern in exclude {
        cmd.arg(format!("--exclude-table={pattern}"));
    }
    cmd.args(options);
    cmd.arg("--schema-only")
        .arg(format!("--section={step}"))
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--exclude-schema={}", catalog::BOOKKEEPING))
        .arg("--no-sync");
    if let Some(limit) = db.lock_wait {
        cmd.arg(format!(
            "--lock-wait-timeout={}ms",
            limit.as_millis().max(1)
        ));
    }
    cmd.arg("--dbname").arg(db.libpq());
    if let Some(pw) = db.password() {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().await.map_err(|e| Error::Database {
        what: "running pg_dump".into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Database {
            what: format!("pg_dump --section={step} of {}", db.shown),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(plain_sql(&out.stdout))
}

/// `pg_dump`'s plain output without the psql meta-commands recent versions add around it
/// (`\restrict`, `\unrestrict`), so that a server runs it as it is.
fn plain_sql(dump: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dump.len());
    for line in dump.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"\\restrict") || line.starts_with(b"\\unrestrict") {
            continue;
        }
        out.extend_from_slice(line);
    }
    out
}

impl UnitSource for PgSource {
    fn resume(&self, held: &HashSet<String>, phases: Vec<Vec<Unit>>) -> Result<Vec<Vec<Unit>>> {
        let Some(resume) = self.resume.get() else {
            return Ok(phases);
        };
        if resume.consistent && !held.is_empty() {
            return Err(Error::Database {
                what: "resuming".into(),
                detail: format!(
                    "the target holds {} units of an interrupted copy, whose snapshot ended with \
                     it; --consistent copies one moment: empty the target and run again, or run \
                     without --consistent to resume and verify",
                    held.len()
                ),
            });
        }
        // The schema an interrupted run laid down is of its tables, columns, indexes,
        // constraints, views, functions and types: another set (another --tables, or a schema
        // that changed at the source since) would meet it in raw SQL errors, leave tables of
        // the other set empty, or leave what was added at the source missing at the target.
        if held
            .iter()
            .any(|k| k.starts_with("sql pre-data") && !resume.keys.contains(k))
        {
            return Err(Error::Database {
                what: "resuming".into(),
                detail: "the target holds an interrupted copy of another schema than this \
                         run's (the source's tables, columns, indexes, constraints, triggers, \
                         views, functions or types changed since, or --tables differs): run it \
                         with the same --tables as before, or empty the target and run again"
                    .into(),
            });
        }
        let stale = |k: &&String| k.starts_with("rows ") && !resume.keys.contains(*k);
        let mut recut: Vec<Recut> = Vec::new();
        for table in &resume.tables {
            let prefix = rows_prefix(table);
            if !held.iter().filter(stale).any(|k| k.starts_with(&prefix)) {
                continue;
            }
            // The source changed since the interrupted run (rows added past the end, or the
            // table grew or shrank): its ranges are cut again around the ones committed.
            let planned: Vec<Range> = phases
                .iter()
                .flatten()
                .filter(|u| u.key.starts_with(&prefix))
                .filter_map(|u| match Meta::parse(&u.meta) {
                    Ok(Meta::Rows { range, .. }) => Some(range),
                    _ => None,
                })
                .collect();
            match Recut::new(table, &prefix, held, planned) {
                Some(r) => recut.push(r),
                None => {
                    return Err(Error::Database {
                        what: format!("resuming {}", table.display()),
                        detail: "the ranges the interrupted run committed of it overlap, or \
                                 are cut on another key than this run's; empty the target and \
                                 run again"
                            .into(),
                    })
                }
            }
        }
        if let Some(other) = held
            .iter()
            .filter(stale)
            .find(|k| !recut.iter().any(|r| k.starts_with(&r.prefix)))
        {
            return Err(Error::Database {
                what: "resuming".into(),
                detail: format!(
                    "the target holds a range this run would not copy ({other}): the tables \
                     chosen or the source changed since the interrupted run; run it with the same \
                     --tables, or empty the target and run again"
                ),
            });
        }
        // The ranges the run moves now, for its summary.
        self.ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(recut.iter().map(|r| (r.table.qualified(), r.ranges())));
        let phases: Vec<Vec<Unit>> = phases
            .into_iter()
            .map(|phase| recut_phase(phase, &recut))
            .collect();
        let kept = phases
            .iter()
            .flatten()
            .filter(|u| held.contains(&u.key))
            .filter_map(|u| match Meta::parse(&u.meta) {
                Ok(Meta::Rows { table, range }) => Some((table, range)),
                _ => None,
            })
            .collect();
        let _ = self.held_rows.set(kept);
        Ok(phases)
    }

    fn open<'a>(&'a self, unit: &'a Unit) -> Fut<'a, Result<Box<dyn UnitReader>>> {
        // Named at the source: a copy's error could be either end's.
        Box::pin(self.watch.guard(judged(&self.db, async move {
            let reader: Box<dyn UnitReader> = match Meta::parse(&unit.meta)? {
                Meta::Sql { step, .. } => {
                    let sql = match step.as_str() {
                        "sequences" => self.sequences().await?,
                        "views" => self.views().await?,
                        "post-data" if self.post_data.get().is_some() => self
                            .post_data
                            .get()
                            .map_or_else(Vec::new, |p| p.rest.clone().into_bytes()),
                        s => match s.strip_prefix("post-data ") {
                            Some(table) => self
                                .post_data
                                .get()
                                .and_then(|p| p.tables.get(table))
                                .ok_or_else(|| Error::Database {
                                    what: "the schema's post-data section".into(),
                                    detail: format!("no part was cut for {table}"),
                                })?
                                .clone()
                                .into_bytes(),
                            None => self.schema(s).await?,
                        },
                    };
                    Box::new(Fixed(Bytes::from(sql)))
                }
                // With or without the re-read at the end: the ranges committed before are
                // compared with the source as it is now either way.
                Meta::Finish { .. } => Box::new(Fixed(Bytes::from(self.recheck().await?))),
                Meta::Rows { table, range } => {
                    let client = self.client().await?;
                    let table = if table.columns.is_empty() {
                        self.columns_of(&client, table).await?
                    } else {
                        table
                    };
                    let step = format!("reading {} ({})", table.display(), range.display(&table));
                    // The `COPY` starts at once (its rows may take long, see `RowsReader::seek`);
                    // a backend, kept from an earlier range, that does not answer has stopped.
                    let stream = self
                        .watch
                        .guard_step(&step, async {
                            client
                                .copy_out(table.copy_out(&range).as_str())
                                .await
                                .map_err(|e| pg_error(step.clone(), &e))
                        })
                        .await?;
                    Box::new(RowsReader {
                        what: format!(
                            "{} ({}) at {}",
                            table.display(),
                            range.display(&table),
                            self.db.shown
                        ),
                        step,
                        seek: !range.by_key,
                        stream: Box::pin(stream),
                        watch: self.watch.clone(),
                        chunk: Bytes::new(),
                        rows: Some(RowHasher::new(table.binary)),
                        client: Some(client),
                        idle: self.idle.clone(),
                        done: false,
                        items: 0,
                        widest: 0,
                    })
                }
            };
            Ok(reader)
        })))
    }
}

impl PgSource {
    /// The source's digest, in this run's snapshot, of each range an interrupted run committed
    /// and this run keeps (JSON: [`Rechecked`] for each). The target's check at the end
    /// compares its rows with these rather than with the digests recorded back then, so rows
    /// changed at the source between the runs are found, named and removed (run again to copy
    /// them), where before they were kept as they were and the run ended well. A few ranges are
    /// read at once, each on a connection of its own.
    async fn recheck(&self) -> Result<Vec<u8>> {
        use futures_util::StreamExt;
        let held = self.held_rows.get().map_or(&[][..], Vec::as_slice);
        let read = |(table, range): (Table, Range)| async move {
            let client = self.client().await?;
            let digest = super::sink::digest_of(&client, &self.watch, &table, &range).await;
            self.give_back(client).await;
            let digest = digest?;
            Ok::<_, Error>(Rechecked {
                key: Meta::Rows { table, range }.key(),
                rows: digest.rows,
                digest: digest.hex(),
            })
        };
        let mut all = Vec::with_capacity(held.len());
        let mut reads = futures_util::stream::iter(held.iter().cloned())
            .map(read)
            .buffer_unordered(RECHECKS);
        while let Some(r) = reads.next().await {
            all.push(r?);
        }
        Ok(serde_json::to_vec(&all).expect("plain records serialise"))
    }

    async fn columns_of(&self, client: &Client, table: Table) -> Result<Table> {
        let all = catalog::tables(client, &[table.qualified()]).await?;
        all.into_iter()
            .find(|t| t.schema == table.schema && t.name == table.name)
            .ok_or_else(|| Error::Database {
                what: format!("reading {}", table.display()),
                detail: "the table is gone from the source".into(),
            })
    }
}

/// Connections between readers.
#[derive(Debug, Default, Clone)]
struct Idle(Arc<Mutex<Vec<Client>>>);

impl Idle {
    /// Ends `client`'s transaction and keeps it for the next reader.
    async fn give_back(&self, client: Client) {
        if client.batch_execute("COMMIT").await.is_ok() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(client);
        }
    }
}

/// Ranges read at once by [`PgSource::recheck`].
const RECHECKS: usize = 4;

/// A committed range as the source holds it now (see [`PgSource::recheck`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Rechecked {
    /// Its unit's key at the target.
    pub(crate) key: String,
    pub(crate) rows: u64,
    /// [`RowsDigest::hex`](super::digest::RowsDigest::hex).
    pub(crate) digest: String,
}

/// Bytes known in advance.
struct Fixed(Bytes);

impl UnitReader for Fixed {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Fut<'a, Result<usize>> {
        Box::pin(async move {
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.advance(n);
            Ok(n)
        })
    }

    fn trailer(&mut self) -> Fut<'_, Result<Vec<u8>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A range's `COPY` stream, hashed row by row as it goes.
struct RowsReader {
    what: String,
    /// What reading it is, as a stalled connection names it: `reading public.big (…)`.
    step: String,
    /// No row has come yet of a page range (see [`super::watch::Watch::guard_step`]).
    seek: bool,
    stream: std::pin::Pin<Box<CopyOutStream>>,
    /// The source server's watch: each wait for the next rows ends if it stops answering.
    watch: Arc<Watch>,
    chunk: Bytes,
    rows: Option<RowHasher>,
    client: Option<Client>,
    /// Where the client goes back to.
    idle: Idle,
    done: bool,
    /// Rows the range held, once its trailer is made.
    items: u64,
    /// The largest row message read (one `COPY` row arrives whole, and the connection's read
    /// buffer keeps the room it grew to).
    widest: usize,
}

/// A connection that read a row message larger than this is closed after its range, not kept
/// for the next reader: its read buffer keeps the room the row took for as long as it lives,
/// and every idle connection that had read a wide row held that much to the end of the run
/// (`docs/database.md`, "Memory and wide rows"). Closing one costs a connection's start-up,
/// nothing beside a range of 8 MiB.
const WIDE_ROW: usize = 8 << 20;

impl UnitReader for RowsReader {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Fut<'a, Result<usize>> {
        Box::pin(async move {
            let mut n = 0;
            while n < buf.len() {
                if self.chunk.is_empty() {
                    if self.done {
                        break;
                    }
                    let (watch, stream) = (&self.watch, &mut self.stream);
                    let next = async { Ok(stream.next().await) };
                    // A page range's first row may rightly follow a long sequential read (no
                    // TID range scan before PostgreSQL 14): that wait is the server's alone.
                    let next = if self.seek {
                        watch.guard(next).await?
                    } else {
                        watch.guard_step(&self.step, next).await?
                    };
                    self.seek = false;
                    match next {
                        Some(Ok(chunk)) => {
                            if let Some(h) = self.rows.as_mut() {
                                h.feed(&chunk);
                            }
                            self.widest = self.widest.max(chunk.len());
                            self.chunk = chunk;
                        }
                        Some(Err(e)) => return Err(pg_error(format!("reading {}", self.what), &e)),
                        None => {
                            self.done = true;
                            break;
                        }
                    }
                }
                let k = (buf.len() - n).min(self.chunk.len());
                buf[n..n + k].copy_from_slice(&self.chunk[..k]);
                self.chunk.advance(k);
                n += k;
            }
            Ok(n)
        })
    }

    fn trailer(&mut self) -> Fut<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let digest = self
                .rows
                .take()
                .expect("the trailer is asked for once")
                .finish()
                .map_err(|why| Error::Database {
                    what: format!("reading {}", self.what),
                    detail: why,
                })?;
            if self.widest > WIDE_ROW {
                // Closed: its transaction ends with it.
                self.client = None;
            }
            if let Some(client) = self.client.take() {
                let idle = &self.idle;
                // Its backend ends the read's transaction at once, or has stopped answering.
                self.watch
                    .guard_step(&self.step, async move {
                        idle.give_back(client).await;
                        Ok(())
                    })
                    .await?;
            }
            self.items = digest.rows;
            Ok(digest.to_bytes())
        })
    }

    fn items(&self) -> u64 {
        self.items
    }
}

/// A table whose ranges a resume cuts again: what an interrupted run committed of it, the
/// gaps that leaves of the key space, and this run's planned ranges.
struct Recut {
    table: Table,
    /// [`rows_prefix`] of the table.
    prefix: String,
    held: Vec<Range>,
    gaps: Vec<Range>,
    planned: Vec<Range>,
}

impl Recut {
    /// The ranges of `table` an interrupted run committed (held keys starting with `prefix`),
    /// and the gaps they leave. `None` when a held range is not one this code would cut (on
    /// another key), or two of them overlap.
    ///
    /// A range open at an end (rows added there since fall into it) and a page range (an update
    /// moves a row to another page, maybe into or out of it) are kept too: the ranges kept are
    /// read again at the source at the end of the run and compared with what the target holds
    /// ([`PgSource::recheck`]), and one that differs is removed for the next run to copy.
    fn new(
        table: &Table,
        prefix: &str,
        held: &HashSet<String>,
        planned: Vec<Range>,
    ) -> Option<Recut> {
        let mut kept = Vec::new();
        for key in held.iter().filter(|k| k.starts_with(prefix)) {
            kept.push(Range::parse(table, &key[prefix.len()..])?);
        }
        let gaps = Range::gaps(&kept)?;
        Some(Recut {
            table: table.clone(),
            prefix: prefix.to_string(),
            held: kept,
            gaps,
            planned,
        })
    }

    /// The table's ranges in this run: the held ones (sent as held), then the planned ones cut
    /// to the gaps between them.
    fn ranges(&self) -> Vec<Range> {
        let cut = self
            .gaps
            .iter()
            .flat_map(|gap| self.planned.iter().filter_map(|p| p.intersect(gap)));
        self.held.iter().copied().chain(cut).collect()
    }
}

/// `phase` with the row units of each re-cut table replaced, where its first one stood, by its
/// ranges in this run ([`Recut::ranges`]).
fn recut_phase(phase: Vec<Unit>, recut: &[Recut]) -> Vec<Unit> {
    let mut out = Vec::with_capacity(phase.len());
    // Where each re-cut table's units go.
    let mut at: Vec<Option<usize>> = vec![None; recut.len()];
    for unit in phase {
        match recut.iter().position(|r| unit.key.starts_with(&r.prefix)) {
            Some(t) => {
                at[t].get_or_insert(out.len());
            }
            None => out.push(unit),
        }
    }
    // From the last place back, so that earlier places stay where they were.
    let mut order: Vec<(usize, usize)> = at
        .iter()
        .enumerate()
        .filter_map(|(t, at)| Some((t, (*at)?)))
        .collect();
    order.sort_by_key(|&(_, at)| std::cmp::Reverse(at));
    for (t, at) in order {
        let r = &recut[t];
        let ranges = r.ranges();
        let n = ranges.len() + r.held.len();
        let units = ranges
            .into_iter()
            .enumerate()
            .map(|(i, range)| super::rows_unit(&r.table, range, (i, n)));
        out.splice(at..at, units);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            schema: "public".into(),
            name: "big".into(),
            columns: vec!["id".into()],
            binary: true,
            key: Some("id".into()),
            bytes: 10 << 20,
            pages: 1280,
            rows: None,
            index_bytes: 0,
        }
    }

    fn held_of(t: &Table, ranges: &[Range]) -> HashSet<String> {
        ranges
            .iter()
            .map(|r| super::super::rows_unit(t, *r, (0, 1)).key)
            .collect()
    }

    /// A resume keeps what an interrupted run committed and cuts this run's ranges to the gaps,
    /// open ends included (the check at the end finds rows that fell into them); overlapping
    /// ranges, or bounds a hostile receiver names, are refused, not a panic.
    #[test]
    fn held_ranges_are_kept_and_the_rest_cut_to_the_gaps() {
        let t = table();
        let prefix = rows_prefix(&t);
        let old = t.ranges(4 << 20, Some((100, 1000)));
        assert_eq!(old.len(), 3);
        // The table grew past its end: the middle range is kept, the rest are gaps.
        let grown = t.ranges(4 << 20, Some((100, 5000)));
        let recut = Recut::new(&t, &prefix, &held_of(&t, &old[1..2]), grown.clone()).unwrap();
        assert_eq!((recut.held.len(), recut.gaps.len()), (1, 2));
        assert_eq!((recut.gaps[1].lo, recut.gaps[1].hi), (old[1].hi, None));
        let recut = Recut::new(&t, &prefix, &held_of(&t, &old), grown.clone()).unwrap();
        assert_eq!((recut.held.len(), recut.gaps.len()), (3, 0));
        let lower = t.ranges(4 << 20, Some((-50, 1000)));
        let recut = Recut::new(&t, &prefix, &held_of(&t, &old[..2]), lower).unwrap();
        assert_eq!((recut.held.len(), recut.gaps.len()), (2, 1));
        let wide = [
            Range {
                by_key: true,
                lo: None,
                hi: Some(i64::MIN + 1),
            },
            Range {
                by_key: true,
                lo: Some(i64::MIN + 1),
                hi: Some(i64::MAX),
            },
        ];
        assert!(Recut::new(&t, &prefix, &held_of(&t, &wide), grown.clone()).is_some());
        let overlapping = [
            old[0],
            Range {
                lo: Some(150),
                ..old[1]
            },
        ];
        assert!(Recut::new(&t, &prefix, &held_of(&t, &overlapping), grown).is_none());
    }

    /// A table cut by pages resumes around the committed page ranges (rows move between pages
    /// when updated; the check at the end finds it).
    #[test]
    fn page_ranges_resume_around_the_committed_ones() {
        let t = Table {
            key: None,
            ..table()
        };
        let prefix = rows_prefix(&t);
        // Cut at 4 MiB, then planned again at 2 MiB (another --range-size).
        let old = t.ranges(4 << 20, None);
        assert_eq!(old.len(), 3);
        let now = t.ranges(2 << 20, None);
        let recut = Recut::new(&t, &prefix, &held_of(&t, &old[..2]), now).unwrap();
        let mut held = recut.held.clone();
        held.sort_by_key(|r| r.lo);
        assert_eq!(held, old[..2].to_vec());
        let ranges = recut.ranges();
        // The held two, then the planned ones cut to what is left above them.
        assert!(ranges[2..].iter().all(|r| !r.by_key && r.lo >= old[1].hi));
        assert_eq!(ranges.last().unwrap().hi, None);
        let parsed = Range::parse(&t, &t.condition(&old[1]).unwrap());
        assert_eq!(parsed, Some(old[1]));
    }
}
