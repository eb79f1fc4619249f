//! Database migration on the unit engine: a PostgreSQL database crosses as units, each
//! verified block by block on the way and row by row at both ends (see [`crate::unit`]).
//!
//! - The schema travels as `pg_dump --schema-only`: its pre-data section first, its post-data
//!   section (indexes, constraints, triggers) and the sequence values after the rows.
//! - Rows travel as raw `COPY` bytes, never decoded, one range of a table per unit: ranges of
//!   about `range_bytes` by primary key where a table has a single integer one, by heap pages
//!   otherwise, all from one queue so one huge table keeps every job busy.
//! - Every reader works in one exported snapshot: the copy is of one moment.
//! - The target commits each range and its row in `_sluice.units` in one transaction, so a
//!   rerun after any interruption skips the committed ranges and redoes at most the ones in
//!   flight.
//! - Each range's row count and order-independent digest ([`digest`]) are computed as the
//!   source streams it, checked as the target takes it, and checked again by re-reading the
//!   target at the end; `_sluice` is dropped once everything matches.

pub mod catalog;
mod conn;
pub mod digest;
pub mod meta;
pub mod postdata;
mod sink;
mod source;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::Client;

pub use catalog::{Range, Table};
pub use conn::Database;
pub use meta::Meta;
pub use sink::PgSink;
pub use source::PgSource;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::unit::{self, Unit, UnitsSummary};

/// How a migration is cut and run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Patterns on `schema.table` or `table`, as `pg_dump -t` reads them
    /// ([`catalog::TablePattern`]); empty: every table.
    pub tables: Vec<String>,
    /// Ranges in flight at once (each holds a connection at both ends).
    pub jobs: usize,
    /// About how many bytes of table one range holds; 0: [`auto_range_bytes`].
    pub range_bytes: u64,
    /// Re-read the target at the end and check it against the source's digests.
    pub verify: bool,
    /// Refuse to go on from an interrupted run: its snapshot is gone, so resuming would mix
    /// two moments of the source (the default resumes, then verifies).
    pub consistent: bool,
    /// Copy a source that holds large objects, leaving them behind (they are not copied yet;
    /// without this such a source is refused).
    pub skip_large_objects: bool,
    /// Leave the owners out of the schema (`pg_dump --no-owner`).
    pub no_owner: bool,
    /// Leave the access privileges out of the schema (`pg_dump --no-privileges`).
    pub no_privileges: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tables: Vec::new(),
            jobs: 4,
            range_bytes: 0,
            verify: true,
            consistent: false,
            skip_large_objects: false,
            no_owner: false,
            no_privileges: false,
        }
    }
}

/// The ranges a migration will move.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Each table with its ranges, largest table first.
    pub tables: Vec<(Table, Vec<Range>)>,
    /// A digest of the schema around them ([`catalog::schema_digest`]).
    pub schema: String,
}

/// A name for this run, different from any earlier run's: the time and the process.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("run-{nanos:x}-{:x}", std::process::id())
}

impl Plan {
    /// Bytes on disk of the planned tables.
    pub fn bytes(&self) -> u64 {
        self.tables.iter().map(|(t, _)| t.bytes.max(0) as u64).sum()
    }

    /// Ranges in all.
    pub fn ranges(&self) -> usize {
        self.tables.iter().map(|(_, r)| r.len()).sum()
    }

    /// The units to send, phase by phase: the schema before the rows; the rows, each table's
    /// indexes and key constraints as soon as its rows are in, for the tables in `cut` (see
    /// [`postdata`]); the rest of the post-data section and the sequences; the materialized
    /// views' refresh; the check.
    pub fn phases(&self, verify: bool, cut: &std::collections::BTreeSet<String>) -> Vec<Vec<Unit>> {
        let sql = |step: &str| {
            Meta::Sql {
                step: step.to_string(),
                of: None,
            }
            .unit()
        };
        let pre_data = Meta::Sql {
            step: "pre-data".into(),
            of: Some(self.signature()),
        }
        .unit();
        let mut rows: Vec<Unit> = Vec::new();
        for (table, ranges) in &self.tables {
            for (i, range) in ranges.iter().enumerate() {
                rows.push(rows_unit(table, *range, (i, ranges.len())));
            }
            if cut.contains(&table.qualified()) {
                // Right after the table's last range: the first unit ready once its rows are.
                let mut unit = sql(&postdata::step(table));
                unit.after = Some(table.display());
                rows.push(unit);
            }
        }
        // Sequence values and materialized views' contents are of this run's snapshot: a
        // resumed run sets and refreshes them again, whatever an interrupted one committed (the
        // source's sequences move on between runs; kept, they left the target's behind while
        // the copy reported success). Their keys name the run, so none is found held.
        let this_run = |step: &str| {
            Meta::Sql {
                step: step.to_string(),
                of: Some(run_id()),
            }
            .unit()
        };
        vec![
            vec![pre_data],
            rows,
            vec![sql("post-data"), this_run("sequences")],
            vec![this_run("views")],
            vec![Meta::Finish { verify }.unit()],
        ]
    }

    /// The tables this plan copies, their columns and the schema around them, as a short digest
    /// (see `Meta::Sql`'s `of`).
    pub(crate) fn signature(&self) -> String {
        let mut names: Vec<String> = self
            .tables
            .iter()
            .map(|(t, _)| format!("{}({})", t.qualified(), t.columns.join(",")))
            .collect();
        names.sort();
        names.push(format!("schema {}", self.schema));
        let digest = blake3::hash(names.join("\n").as_bytes());
        digest.to_hex()[..16].to_string()
    }
}

/// The unit of `range`'s rows of `table`, range `i` of the `n` it is cut into (for its part of
/// the table's estimates).
pub(crate) fn rows_unit(table: &Table, range: Range, (i, n): (usize, usize)) -> Unit {
    let part = |total: i64| {
        let (total, i, n) = (total.max(0) as u128, i as u128, n.max(1) as u128);
        (total * (i + 1) / n - total * i / n) as u64
    };
    let hint = crate::unit::Hint {
        bytes: part(table.bytes),
        items: part(table.rows.unwrap_or(0)),
    };
    let mut meta = Meta::Rows {
        table: table.clone(),
        range,
    };
    let mut unit = meta.unit();
    if unit.meta.len() > sluice_proto::codec::MAX_STRING_LEN {
        // A table too wide to list: the source reads its columns itself and the target takes
        // them in the table's order.
        if let Meta::Rows { table, .. } = &mut meta {
            table.columns.clear();
        }
        unit = meta.unit();
    }
    unit.hint = hint;
    unit
}

/// The range size when the user sets none: small enough that the ranges in flight (two per
/// job at most, one being written and one waiting for its commit; an interruption loses them)
/// are at most a twentieth of the largest table, from 8 to 64 MiB (smaller ranges cost a
/// transaction and a scan start each; larger ones hold more in flight).
pub fn auto_range_bytes(largest_table: u64, jobs: usize) -> u64 {
    (largest_table / (40 * jobs.max(1) as u64)).clamp(8 << 20, 64 << 20)
}

/// Plans the migration of the database `client` looks at (inside the source's snapshot).
async fn plan_in(client: &Client, options: &Options) -> Result<Plan> {
    let mut plan = Plan::default();
    if options.tables.iter().any(|p| p.trim().is_empty()) {
        return Err(Error::Database {
            what: "choosing tables".into(),
            detail: "an empty --tables pattern (leave --tables out to copy every table)".into(),
        });
    }
    let (tables, matched) = catalog::tables_matching(client, &options.tables).await?;
    // Each pattern must choose a table (pg_dump's --strict-names): a misspelt name among
    // others would otherwise leave its table behind without a word, and patterns that choose
    // nothing at all would copy nothing (pg_dump -t says "no matching tables were found").
    let unmatched: Vec<&str> = options
        .tables
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(p, _)| p.as_str())
        .collect();
    if !unmatched.is_empty() {
        // A pattern that names a view, a sequence…: said what it is, not taken for a typo.
        let others = catalog::not_tables(client, &unmatched).await?;
        let mut said: Vec<String> = unmatched
            .iter()
            .zip(&others)
            .filter(|(_, o)| !o.is_empty())
            .map(|(p, o)| {
                let more = match o.len() {
                    n if n > 3 => format!("; and {} more", n - 3),
                    _ => String::new(),
                };
                format!("--tables {p}: {}{more}", o[..o.len().min(3)].join("; "))
            })
            .collect();
        let missed: Vec<&str> = unmatched
            .iter()
            .zip(&others)
            .filter(|(_, o)| o.is_empty())
            .map(|(p, _)| *p)
            .collect();
        if !missed.is_empty() {
            said.push(format!(
                "no table matches --tables {}: patterns are read as pg_dump -t reads them \
                 (public.orders, 'orders_*'; a name without a schema is looked for on the \
                 search path; unquoted names fold to lower case, so write '\"Order Items\"' \
                 for a name with capitals or spaces); a partitioned table's name takes its \
                 partitions",
                missed.join(",")
            ));
        }
        return Err(Error::Database {
            what: "choosing tables".into(),
            detail: said.join(". "),
        });
    }
    let largest = tables
        .iter()
        .map(|t| t.bytes.max(0) as u64)
        .max()
        .unwrap_or(0);
    let range_bytes = match options.range_bytes {
        0 => auto_range_bytes(largest, options.jobs),
        n => n,
    };
    for table in tables {
        let extent = catalog::key_extent(client, &table).await?;
        let n = table.range_count(range_bytes);
        // Cut where the rows are; evenly by value where a sample finds none.
        let cuts = match extent {
            Some(_) => catalog::key_cuts(client, &table, n).await?,
            None => Vec::new(),
        };
        let ranges = match cuts.is_empty() {
            true => table.ranges(range_bytes, extent),
            false => table.ranges_at(&cuts),
        };
        plan.tables.push((table, ranges));
    }
    let planned: Vec<Table> = plan.tables.iter().map(|(t, _)| t.clone()).collect();
    plan.schema = catalog::schema_digest(client, options.tables.is_empty(), &planned).await?;
    Ok(plan)
}

/// Large objects are not copied (pg_dump's schema sections leave them out): a source that holds
/// any is refused unless the user chose to leave them behind.
async fn refuse_large_objects(client: &Client, src: &Database, options: &Options) -> Result<()> {
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(|e| conn::pg_error(format!("reading {}", src.shown), &e))?
        .get(0);
    if n == 0 || options.skip_large_objects {
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            tracing::warn!("{n} large object{s} of {} left behind", src.shown);
        }
        return Ok(());
    }
    Err(Error::Database {
        what: format!("copying {}", src.shown),
        detail: format!(
            "it holds {n} large object{}, which sluice db does not copy yet: move them with \
             `pg_dump --data-only --blobs` (--large-objects from PostgreSQL 16 on) and pass \
             --skip-large-objects",
            if n == 1 { "" } else { "s" }
        ),
    })
}

/// Lists what a migration of `src` would move, without moving anything.
pub fn plan(src: &Database, options: &Options) -> Result<Plan> {
    let rt = crate::transport::runtime()?;
    rt.block_on(async {
        let watch = watch::Watch::start(src, "source");
        let client = watch.guard(src.connect()).await?;
        let planned = watch.guard(async {
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| conn::pg_error(format!("reading {}", src.shown), &e))?;
            // A source a copy would refuse, the plan refuses in the same words.
            refuse_large_objects(&client, src, options).await?;
            let plan = plan_in(&client, options).await?;
            // What a copy of these tables would refuse (a foreign key to a table left out), the
            // plan refuses too, in the same words: a plan that looked fine was no promise.
            if !options.tables.is_empty() {
                let planned: Vec<Table> = plan.tables.iter().map(|(t, _)| t.clone()).collect();
                catalog::left_out(&client, &planned).await?;
            }
            Ok(plan)
        });
        match planned.await {
            Err(e) => Err(src.name_lock_holders(e).await),
            ok => ok,
        }
    })
}

/// Sends `src` to the receiver named by `ticket` (`sluice db recv`).
pub fn send(
    config: &Config,
    src: &Database,
    ticket: &crate::Ticket,
    options: &Options,
    progress: Arc<Progress>,
) -> Result<(Plan, UnitsSummary)> {
    let rt = crate::transport::runtime()?;
    rt.block_on(async {
        // Until the rows flow, a statement that waited too long for a lock (an `ALTER TABLE`
        // left open in another session) is named with the session that holds it.
        let watch = watch::Watch::start(src, "source");
        let prepared = watch.guard(async {
            let (source, planner) = PgSource::open(src, watch.clone()).await?;
            refuse_large_objects(&planner, src, options).await?;
            let plan = plan_in(&planner, options).await?;
            source.dump_options(options.no_owner, options.no_privileges);
            let planned: Vec<Table> = plan.tables.iter().map(|(t, _)| t.clone()).collect();
            if !options.tables.is_empty() {
                source.leave_out(catalog::left_out(&planner, &planned).await?);
            }
            source.give_back(planner).await;
            source.lock(&planned).await?;
            let cut = source.cut_post_data(&planned).await?;
            Ok::<_, Error>((source, plan, cut))
        });
        let (source, plan, cut) = match prepared.await {
            Ok(prepared) => prepared,
            Err(e) => return Err(src.name_lock_holders(e).await),
        };
        progress.set_totals(plan.ranges() as u64, plan.bytes());
        let phases = plan.phases(options.verify, &cut);
        source.set_resume(source::Resume {
            consistent: options.consistent,
            keys: phases.iter().flatten().map(|u| u.key.clone()).collect(),
            tables: plan.tables.iter().map(|(t, _)| t.clone()).collect(),
        });
        let source = Arc::new(source);
        let summary = unit::session::send_on(
            config,
            ticket,
            phases,
            source.clone(),
            options.jobs,
            progress,
        )
        .await?;
        let mut plan = plan;
        for (name, ranges) in source.recut() {
            if let Some(t) = plan.tables.iter_mut().find(|(t, _)| t.qualified() == name) {
                t.1 = ranges;
            }
        }
        Ok((plan, summary))
    })
}

/// Copies `src` into `dst` through a sender and a receiver in this process.
pub fn copy(
    config: &Config,
    src: &Database,
    dst: &Database,
    options: &Options,
    progress: Arc<Progress>,
) -> Result<(Plan, UnitsSummary)> {
    if src.libpq() == dst.libpq() {
        return Err(Error::Database {
            what: "checking the target".into(),
            detail: "the source and the target are the same database".into(),
        });
    }
    let run = || {
        let sink = Arc::new(PgSink::new(dst.clone()));
        unit::session::copy(config, sink, |ticket| {
            send(config, src, ticket, options, progress.clone())
        })
    };
    match run() {
        // The check at the end removed ranges that differ from the source (rows changed at
        // the source since an interrupted run committed them, or lost at the target): both
        // ends are here, so the rerun it asks for is made at once, once. It copies what was
        // removed, in a new snapshot, and checks everything again.
        Err(e) if removed_ranges(&e) => {
            // Said as what happens now: "run the same command again" was followed at once by
            // this run doing it (a new user's report).
            let said = e.to_string().replace(
                sink::RECOPY,
                "removed at the target; copying them again now, in a new snapshot",
            );
            tracing::warn!("{said}");
            match run() {
                // Ranges changed at the source again while the first ones were copied anew: it
                // is being written to, and every rerun would find others.
                Err(again) if removed_ranges(&again) => Err(Error::Verify {
                    path: "the source".into(),
                    detail: format!(
                        "{again}. Rows changed at the source again while the removed ranges \
                         were copied anew: it is being written to, and a copy resumed after an \
                         interruption cannot hold one moment of it. Copy in a quiet moment, or \
                         into an empty target in one run (one snapshot, one moment of the \
                         source)"
                    ),
                }),
                other => other,
            }
        }
        other => other,
    }
}

/// Whether `e` is the check at the end having removed ranges for a rerun to copy again.
fn removed_ranges(e: &Error) -> bool {
    e.kind() == ErrorKind::Verification && e.to_string().contains(sink::RECOPY)
}

/// One difference `verify` found.
#[derive(Debug, Clone)]
pub struct Difference {
    /// `schema.table`.
    pub table: String,
    /// Which rows (`all rows`, or the range's condition).
    pub range: String,
    /// What differs.
    pub detail: String,
}

impl Difference {
    /// Whether this is a sequence's difference (not a table's or a range's).
    pub fn is_sequence(&self) -> bool {
        self.range == SEQUENCE
    }
}

/// What [`Difference::range`] says of a sequence.
const SEQUENCE: &str = "sequence";

/// What `verify` compared, and what it found.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Ranges of rows compared (a table without a key is compared whole, as one; so is a table
    /// only one side holds, or whose columns differ, and the large objects where there are
    /// any): never fewer than the ranges that differ. Tables missing in the second database
    /// were counted as differing and not as compared ("2 ranges compared, 30 differ").
    pub ranges: usize,
    /// Of [`Verified::ranges`], the first database's tables the second lacks.
    pub tables_missing: usize,
    /// Of [`Verified::ranges`], the tables only the second database holds.
    pub tables_only_in_second: usize,
    /// Sequences compared: the first database's, and any only the second holds.
    pub sequences: usize,
    /// What differs, tables and ranges first, then sequences.
    pub differences: Vec<Difference>,
}

/// Compares every table of `a` with `b`, range by range (by key where the table has one),
/// by row count and digest, then every sequence's state.
pub fn verify(a: &Database, b: &Database, options: &Options) -> Result<Verified> {
    let rt = crate::transport::runtime()?;
    rt.block_on(async {
        // Each server watched: one that stops answering ends the comparison, named.
        let (wa, wb) = (
            watch::Watch::start(a, "first database's"),
            watch::Watch::start(b, "second database's"),
        );
        wa.guard(wb.guard(compare(a, b, [&wa, &wb], options))).await
    })
}

/// [`verify`]'s comparison; `watches` watch `a`'s server and `b`'s.
async fn compare(
    a: &Database,
    b: &Database,
    watches: [&watch::Watch; 2],
    options: &Options,
) -> Result<Verified> {
    let (ca, cb) = (a.connect().await?, b.connect().await?);
    for (c, db) in [(&ca, a), (&cb, b)] {
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| conn::pg_error(format!("reading {}", db.shown), &e))?;
    }
    let plan = plan_in(&ca, options).await?;
    let theirs = catalog::tables(&cb, &options.tables).await?;
    let mut differences = Vec::new();
    let mut checked = 0;
    let (mut missing, mut only_theirs) = (0, 0);
    for t in &theirs {
        if !plan
            .tables
            .iter()
            .any(|(a, _)| a.schema == t.schema && a.name == t.name)
        {
            (checked, only_theirs) = (checked + 1, only_theirs + 1);
            differences.push(Difference {
                table: t.display(),
                range: "all rows".into(),
                detail: format!("only in {}", b.shown),
            });
        }
    }
    for (table, ranges) in &plan.tables {
        let Some(other) = theirs
            .iter()
            .find(|t| t.schema == table.schema && t.name == table.name)
        else {
            (checked, missing) = (checked + 1, missing + 1);
            differences.push(Difference {
                table: table.display(),
                range: "all rows".into(),
                detail: format!("missing in {}", b.shown),
            });
            continue;
        };
        // Each side is read by the source's column names, so only the names must agree,
        // not their order (an inherited child's columns follow its parent's in a dump).
        let sorted = |t: &Table| {
            let mut c = t.columns.clone();
            c.sort();
            c
        };
        if sorted(other) != sorted(table) {
            checked += 1;
            differences.push(Difference {
                table: table.display(),
                range: "all rows".into(),
                detail: format!(
                    "columns differ: ({}) against ({})",
                    table.columns.join(", "),
                    other.columns.join(", ")
                ),
            });
            continue;
        }
        // Pages differ between two copies of a table: without a key, compare it whole.
        let whole = [Range::whole(false)];
        let ranges = if table.key.is_some() {
            &ranges[..]
        } else {
            &whole[..]
        };
        for range in ranges {
            checked += 1;
            let (da, db) = tokio::join!(
                sink::digest_of(&ca, watches[0], table, range),
                sink::digest_of(&cb, watches[1], table, range)
            );
            let (da, db) = (da?, db?);
            if da != db {
                differences.push(Difference {
                    table: table.display(),
                    range: range.display(table),
                    detail: format!(
                        "{} rows, digest {} against {} rows, digest {}",
                        da.rows,
                        da.hex(),
                        db.rows,
                        db.hex()
                    ),
                });
            }
        }
    }
    // Sequences: where each will hand out its next value. A copy that left one behind
    // would hand out keys already in its table.
    let left = if options.tables.is_empty() {
        Vec::new()
    } else {
        let planned: Vec<Table> = plan.tables.iter().map(|(t, _)| t.clone()).collect();
        catalog::left_out(&ca, &planned).await?.oids
    };
    let ours = catalog::sequences(&ca, &left).await?;
    let theirs: BTreeMap<String, catalog::SequenceState> = catalog::sequences(&cb, &[])
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let state = |s: &catalog::SequenceState| match s.is_called {
        true => format!("last value {}", s.last_value),
        false => format!("next value {} (none handed out)", s.last_value),
    };
    for s in &ours {
        let detail = match theirs.get(&s.name) {
            None => format!("missing in {}", b.shown),
            Some(t) if t == s => continue,
            Some(t) => format!("{} against {}", state(s), state(t)),
        };
        differences.push(Difference {
            table: s.name.clone(),
            range: SEQUENCE.into(),
            detail,
        });
    }
    let mut sequences = ours.len();
    if options.tables.is_empty() {
        let known: std::collections::HashSet<&str> = ours.iter().map(|s| s.name.as_str()).collect();
        for name in theirs.keys().filter(|n| !known.contains(n.as_str())) {
            sequences += 1;
            differences.push(Difference {
                table: name.clone(),
                range: SEQUENCE.into(),
                detail: format!("only in {}", b.shown),
            });
        }
    }
    if options.tables.is_empty() {
        let (compared, differ) = compare_large_objects((&ca, a), (&cb, b)).await?;
        checked += usize::from(compared);
        differences.extend(differ);
    }
    Ok(Verified {
        ranges: checked,
        tables_missing: missing,
        tables_only_in_second: only_theirs,
        sequences,
        differences,
    })
}

/// The number of large objects in `db`.
async fn lo_count(c: &Client, db: &Database) -> Result<i64> {
    let row = c
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(|e| conn::pg_error(format!("reading {}", db.shown), &e))?;
    Ok(row.get(0))
}

/// A digest of every large object's bytes by OID; `None`, with a warning, where this user may
/// not read them (inside a savepoint, so that the refusal leaves the comparison's transaction
/// usable).
async fn lo_digest(
    c: &Client,
    n: i64,
) -> std::result::Result<Option<String>, tokio_postgres::Error> {
    const DIGEST: &str = "SELECT coalesce(md5(string_agg(m.oid::text || ':' \
                          || md5(lo_get(m.oid)), ',' ORDER BY m.oid)), '') \
                          FROM pg_largeobject_metadata m";
    c.batch_execute("SAVEPOINT large_objects").await?;
    match c.query_one(DIGEST, &[]).await {
        Ok(row) => Ok(Some(row.get(0))),
        Err(e) => {
            c.batch_execute("ROLLBACK TO SAVEPOINT large_objects")
                .await?;
            tracing::warn!(
                "{n} large objects at each end, compared by number only: {}",
                conn::pg_error("reading them".to_string(), &e)
            );
            Ok(None)
        }
    }
}

/// Large objects, which `sluice db copy` leaves behind: their number at each end and, where
/// there are as many, a digest of each one's bytes by its OID (`pg_dump --blobs` keeps OIDs).
/// `verify` said "0 differ" of two databases whose large objects differed (a new user's
/// report). Reading one takes its owner's or a superuser's rights; without them the numbers
/// alone are compared, with a warning. Whether there were any to compare, and the difference.
async fn compare_large_objects(
    (ca, a): (&Client, &Database),
    (cb, b): (&Client, &Database),
) -> Result<(bool, Option<Difference>)> {
    let (na, nb) = (lo_count(ca, a).await?, lo_count(cb, b).await?);
    let difference = |detail: String| Difference {
        table: "large objects".into(),
        range: "all".into(),
        detail,
    };
    if na != nb {
        return Ok((
            true,
            Some(difference(format!(
                "{na} in {} against {nb} in {} (sluice db copy leaves them behind: move them \
                 with pg_dump --data-only --blobs)",
                a.shown, b.shown
            ))),
        ));
    }
    if na == 0 {
        return Ok((false, None));
    }
    let (da, db) = match (lo_digest(ca, na).await, lo_digest(cb, na).await) {
        (Ok(Some(da)), Ok(Some(db))) => (da, db),
        (Err(e), _) | (_, Err(e)) => {
            return Err(conn::pg_error("comparing large objects".to_string(), &e))
        }
        // Compared by number only (a warning says so): as many at each end.
        _ => return Ok((true, None)),
    };
    Ok((
        true,
        (da != db).then(|| {
            difference(format!(
                "{na} at each end, their bytes differ (digest {da} against {db})"
            ))
        }),
    ))
}
