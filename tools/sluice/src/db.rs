//! `sluice db`: a PostgreSQL database through the unit engine, with a line of progress a second
//! (or JSON events) and a summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_engine::db::{self, Database, Options, Plan};
use sluice_engine::unit::session::UnitServer;
use sluice_engine::unit::UnitsSummary;
use sluice_engine::{Config, Event, Progress, Ticket};

use crate::args::{CopyOptions, DbCommand, DbOptions, Waits};
use crate::render;

fn options(o: &DbOptions, c: &CopyOptions) -> Result<Options> {
    let most = sluice_engine::unit::session::MAX_LANES;
    if o.jobs == 0 || o.jobs > most {
        usage!("--jobs must be from 1 to {most}, not {}", o.jobs);
    }
    if o.range_size.is_some_and(|n| n < 1 << 20) {
        usage!("--range-size must be at least 1M");
    }
    // An empty entry of a list (`a,`) is nothing; `--tables ''` alone chose every table.
    let tables: Vec<String> = o
        .tables
        .iter()
        .flat_map(|t| split_patterns(t))
        .filter(|t| !t.is_empty())
        .collect();
    if tables.is_empty() && !o.tables.is_empty() {
        usage!("an empty --tables pattern: leave --tables out to copy every table");
    }
    for t in &tables {
        if let Err(e) = db::catalog::TablePattern::parse(t) {
            usage!("{e}");
        }
    }
    Ok(Options {
        tables,
        jobs: o.jobs,
        range_bytes: o.range_size.unwrap_or(0),
        verify: !c.no_verify,
        consistent: c.consistent,
        skip_large_objects: c.skip_large_objects,
        no_owner: c.no_owner,
        no_privileges: c.no_privileges,
    })
}

/// `--tables`' list split at its commas, but not at one inside double quotes (part of a name,
/// as `"a,b"`).
fn split_patterns(list: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in list.chars() {
        match c {
            ',' if !quoted => out.push(String::new()),
            c => {
                if c == '"' {
                    quoted = !quoted;
                }
                out.last_mut().expect("one at least").push(c);
            }
        }
    }
    out
}

/// The database `conn` names, the command's `role` one (source, target, first, second);
/// `stall`: `--stall-timeout`, given after the command's name or before it.
fn database(conn: &str, role: &str, waits: &Waits, stall: Duration) -> Result<Database> {
    if conn.trim().is_empty() {
        // Said as "connecting to : … No such file or directory", it named nothing.
        usage!(
            "the {role} connection string is empty (an unset shell variable?): name the \
             database as a URI (postgresql://user@host/db), key=value words \
             (host=/run/postgresql dbname=db) or a bare database name"
        );
    }
    let limit = Some(waits.lock_wait_timeout).filter(|t| !t.is_zero());
    Ok(Database::parse(conn)?
        .lock_wait_timeout(limit)
        .stall_timeout(stall))
}

pub fn run(config: Config, command: DbCommand, json: bool) -> Result<()> {
    let stall = config.stall_timeout;
    match command {
        DbCommand::Plan {
            src,
            options: o,
            skip_large_objects,
        } => {
            let copying = CopyOptions {
                skip_large_objects,
                ..CopyOptions::default()
            };
            let (src, o) = (
                database(&src, "source", &o.waits, stall)?,
                options(&o, &copying)?,
            );
            let plan = db::plan(&src, &o).with_context(|| format!("planning {}", src.shown))?;
            print_plan(&plan, json);
            Ok(())
        }
        DbCommand::Copy {
            src,
            dst,
            options: o,
            copying,
            ..
        } => {
            let (src, dst) = (
                database(&src, "source", &o.waits, stall)?,
                database(&dst, "target", &o.waits, stall)?,
            );
            let o = options(&o, &copying)?;
            if src.same_as(&dst) {
                usage!(
                    "the source and the target are the same database ({}): name another target",
                    src.shown
                );
            }
            let what = format!("copying {} to {}", src.shown, dst.shown);
            watch(json, move |p| {
                db::copy(&config, &src, &dst, &o, p).context(what)
            })
        }
        DbCommand::Send {
            src,
            ticket,
            options: o,
            copying,
            ..
        } => {
            let (src, o) = (
                database(&src, "source", &o.waits, stall)?,
                options(&o, &copying)?,
            );
            let ticket: Ticket = match ticket.parse() {
                Ok(t) => t,
                Err(e) => usage!(
                    "{}: {e:#}",
                    "the last argument must be the ticket printed by `sluice db recv`"
                ),
            };
            watch(json, move |p| {
                db::send(&config, &src, &ticket, &o, p)
                    .with_context(|| format!("sending {} to {}", src.shown, ticket.addr))
            })
        }
        DbCommand::Recv {
            dst,
            listen,
            advertise,
            waits,
            ..
        } => {
            let dst = database(&dst, "target", &waits, stall)?;
            // The target is reached and judged before a ticket sends anyone here.
            let sink = Arc::new(db::PgSink::new(dst.clone()));
            sluice_engine::transport::runtime()?
                .block_on(sink.check())
                .with_context(|| format!("receiving into {}", dst.shown))?;
            let server = UnitServer::bind(listen, advertise, config)
                .with_context(|| format!("listening on {listen}"))?;
            let ticket = server.ticket().to_string();
            if json {
                render::json_line(&serde_json::json!({"event": "ticket", "ticket": ticket}));
            } else {
                outln!("{ticket}");
                errln!("sluice: waiting for one sender; run: sluice db send SRC {ticket}");
            }
            let what = format!("receiving into {}", dst.shown);
            let summary = watch_receiving(json, move |p| server.run(sink, p).context(what))?;
            report(&summary, None, json);
            Ok(())
        }
        DbCommand::Verify { a, b, options: o } => {
            let (a, b) = (
                database(&a, "first", &o.waits, stall)?,
                database(&b, "second", &o.waits, stall)?,
            );
            let o = options(&o, &CopyOptions::default())?;
            let verified = db::verify(&a, &b, &o)
                .with_context(|| format!("comparing {} with {}", a.shown, b.shown))?;
            let differences = &verified.differences;
            for d in differences {
                if json {
                    render::json_line(&serde_json::json!({
                        "event": "difference", "table": d.table, "range": d.range, "detail": d.detail,
                    }));
                } else {
                    outln!("{}: {}: {}", d.table, d.range, d.detail);
                }
            }
            // Sequences are counted apart from ranges: a sequence is no range of rows, and the
            // summary counted a moved one as a range that differed.
            let sequences_differing = differences.iter().filter(|d| d.is_sequence()).count();
            let ranges_differing = differences.len() - sequences_differing;
            if json {
                render::json_line(&serde_json::json!({
                    "event": "summary", "ranges": verified.ranges,
                    "tables_missing": verified.tables_missing,
                    "tables_only_in_second": verified.tables_only_in_second,
                    "sequences": verified.sequences, "differences": differences.len(),
                    "ranges_differing": ranges_differing,
                    "sequences_differing": sequences_differing,
                }));
            } else {
                // A table one side lacks is compared, and differs, whole: one range. It was
                // counted as differing and not as compared ("2 ranges … compared, 30 differ").
                let mut whole = Vec::new();
                if verified.tables_missing > 0 {
                    whole.push(format!(
                        "{} missing in the second database",
                        plural(verified.tables_missing, "table")
                    ));
                }
                if verified.tables_only_in_second > 0 {
                    whole.push(format!(
                        "{} only in the second",
                        plural(verified.tables_only_in_second, "table")
                    ));
                }
                let whole = match whole.is_empty() {
                    true => String::new(),
                    false => format!(" (including {}, one range each)", whole.join(" and ")),
                };
                let split = match differences.len() {
                    0 => String::new(),
                    _ => format!(
                        " ({}, {})",
                        plural(ranges_differing, "range"),
                        plural(sequences_differing, "sequence")
                    ),
                };
                errln!(
                    "sluice: {}{whole}, {} compared, {} differ{split}",
                    plural(verified.ranges, "range"),
                    plural(verified.sequences, "sequence"),
                    differences.len()
                );
            }
            if !differences.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Starts `work` on a thread of its own with a fresh [`Progress`]; the channel closes when
/// it ends.
#[allow(clippy::type_complexity)]
fn on_worker<T, F>(
    work: F,
) -> Result<(
    Arc<Progress>,
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<Result<T>>,
)>
where
    T: Send + 'static,
    F: FnOnce(Arc<Progress>) -> Result<T> + Send + 'static,
{
    let progress = Arc::new(Progress::default());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let p = progress.clone();
    let worker = std::thread::Builder::new()
        .name("sluice-db".into())
        .spawn(move || {
            let _done = done_tx;
            work(p)
        })?;
    Ok((progress, done_rx, worker))
}

/// Runs `work` on a thread of its own, printing progress every second, then the summary.
fn watch<F>(json: bool, work: F) -> Result<()>
where
    F: FnOnce(Arc<Progress>) -> Result<(Plan, UnitsSummary)> + Send + 'static,
{
    let (progress, done_rx, worker) = on_worker(work)?;
    let started = Instant::now();
    let mut tables = Tables::default();
    let mut pace = Pace::default();
    let mut finished = false;
    while !finished {
        finished = !matches!(
            done_rx.recv_timeout(Duration::from_secs(1)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        let s = progress.snapshot();
        let secs = started.elapsed().as_secs_f64();
        let rate = s.bytes_sent as f64 / secs.max(1e-9);
        for e in progress.take_events() {
            match e {
                Event::GroupPlanned {
                    group,
                    units,
                    units_done,
                    bytes_hint,
                    items_hint,
                } => tables.plan(group, units, units_done, bytes_hint, items_hint),
                Event::UnitCommitted {
                    group,
                    group_done,
                    group_total,
                    bytes,
                    items,
                    bytes_hint,
                    ..
                } if !group.is_empty() => {
                    let i =
                        tables.commit(&group, group_done, group_total, bytes, items, bytes_hint);
                    let t = &tables.list[i];
                    if json {
                        let mut line = tables.json(i, pace.rate(true));
                        line["event"] = "table".into();
                        render::json_line(&line);
                    } else if group_done >= group_total {
                        let ranges = match group_total {
                            1 => "its range".to_string(),
                            n => format!("all {n} ranges"),
                        };
                        errln!(
                            "sluice: {group}: {ranges} committed (this run: {} rows, {})",
                            count(t.items),
                            human(t.bytes)
                        );
                    }
                }
                _ => {}
            }
        }
        if finished {
            break;
        }
        let busy = tables.busy();
        pace.sample(secs, s.bytes_sent);
        let recent = pace.rate(tables.rows_moved());
        let known = recent.is_some();
        let recent = recent.unwrap_or(1.0);
        // Until the first range is in, the tables' size on disk stands for their COPY bytes.
        let eta = match tables.list.is_empty() {
            true => (s.bytes_total.saturating_sub(s.bytes_sent) as f64 / recent).round(),
            false => tables.eta_through(tables.list.len() - 1, recent),
        };
        let eta_text = |e: f64| match known {
            true => format!("ETA {e:.0} s"),
            false => "ETA -".to_string(),
        };
        if json {
            let busy: Vec<serde_json::Value> = busy
                .iter()
                .map(|&i| tables.json(i, known.then_some(recent)))
                .collect();
            render::json_line(&serde_json::json!({
                "event": "progress", "seconds": secs, "bytes_sent": s.bytes_sent,
                "units_done": s.files_verified, "units_total": s.files_total,
                "table_bytes": s.bytes_total, "eta_seconds": known.then_some(eta), "tables": busy,
            }));
        } else {
            let busy: Vec<String> = busy
                .iter()
                .take(3)
                .map(|&i| {
                    let t = &tables.list[i];
                    let rows = match (t.items_hint, t.units_before) {
                        (0, _) => format!("{} rows", count(t.items)),
                        (n, 0) => format!("{}/~{} rows", count(t.items), count(n)),
                        // Rows are this run's; the ranges before it held the rest.
                        (_, b) => format!("({b} before this run) {} rows this run", count(t.items)),
                    };
                    format!(
                        "{} {}/{} ranges {rows} {}",
                        t.name,
                        t.units_done,
                        t.units,
                        eta_text(tables.eta(i, recent))
                    )
                })
                .collect();
            errln!(
                "sluice: {:7.1} s  {:>10} sent  {:>9}/s  {}/{} units  {}  {}",
                secs,
                human(s.bytes_sent),
                human(rate as u64),
                s.files_verified,
                s.files_total,
                eta_text(eta),
                busy.join(", ")
            );
        }
    }
    let (plan, summary) = worker
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker thread panicked")))?;
    report(&summary, Some(&plan), json);
    Ok(())
}

/// Runs the receiving end on a thread of its own, printing each second, once a sender has
/// come, what has been committed (the sender alone knows the plan and its tables).
fn watch_receiving<F>(json: bool, work: F) -> Result<UnitsSummary>
where
    F: FnOnce(Arc<Progress>) -> Result<UnitsSummary> + Send + 'static,
{
    let (progress, done_rx, worker) = on_worker(work)?;
    // Counted from the first byte, not from the ticket: the wait for a sender is the user's.
    let mut started: Option<Instant> = None;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        done_rx.recv_timeout(Duration::from_secs(1))
    {
        let s = progress.snapshot();
        if s.bytes_verified == 0 && s.files_verified == 0 {
            continue;
        }
        // What the first line shows arrived within the last second.
        let first = || Instant::now().checked_sub(Duration::from_secs(1));
        let secs = started
            .get_or_insert_with(|| first().unwrap_or_else(Instant::now))
            .elapsed()
            .as_secs_f64();
        let rate = s.bytes_verified as f64 / secs.max(1.0);
        if json {
            render::json_line(&serde_json::json!({
                "event": "progress", "seconds": secs, "bytes_received": s.bytes_verified,
                "units_done": s.files_verified,
            }));
        } else {
            errln!(
                "sluice: {secs:7.1} s  {:>10} received  {:>9}/s  {} units committed",
                human(s.bytes_verified),
                human(rate as u64),
                s.files_verified,
            );
        }
    }
    worker
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker thread panicked")))
}

/// Progress by table, in the order the tables' ranges are due: what each holds and an
/// estimate of when its last range is in.
#[derive(Default)]
struct Tables {
    list: Vec<TableProgress>,
    /// Each table's place in `list`.
    place: std::collections::HashMap<String, usize>,
    /// All tables' `bytes` and `hint_done`.
    bytes: u64,
    hint_done: u64,
}

#[derive(Default)]
struct TableProgress {
    name: String,
    /// Ranges in all, and committed (this run and interrupted ones before it).
    units: u64,
    units_done: u64,
    /// Of those, ranges an interrupted run committed: in `units_done`, not in the rows and
    /// bytes below.
    units_before: u64,
    /// What the source expects the table to hold: bytes on disk, rows (0: unknown).
    bytes_hint: u64,
    items_hint: u64,
    /// Committed by this run: ranges, their `COPY` bytes and rows, and their share of
    /// `bytes_hint`.
    run_units: u64,
    bytes: u64,
    items: u64,
    hint_done: u64,
}

impl Tables {
    fn plan(
        &mut self,
        name: String,
        units: u64,
        units_done: u64,
        bytes_hint: u64,
        items_hint: u64,
    ) {
        self.place.insert(name.clone(), self.list.len());
        self.list.push(TableProgress {
            name,
            units,
            units_done,
            units_before: units_done,
            bytes_hint,
            items_hint,
            ..TableProgress::default()
        });
    }

    /// Counts one committed range of `name`; returns the table's place.
    fn commit(
        &mut self,
        name: &str,
        done: u64,
        total: u64,
        bytes: u64,
        items: u64,
        hint: u64,
    ) -> usize {
        let i = match self.place.get(name) {
            Some(&i) => i,
            None => {
                self.plan(name.to_string(), total, 0, 0, 0);
                self.list.len() - 1
            }
        };
        let t = &mut self.list[i];
        t.units_done = done;
        t.units = total;
        t.run_units += 1;
        t.bytes += bytes;
        t.items += items;
        t.hint_done += hint;
        self.bytes += bytes;
        self.hint_done += hint;
        i
    }

    /// `COPY` bytes still to come for table `i`: its remaining ranges at the size of those
    /// it committed, or its size on disk scaled as the committed ranges of all tables scaled.
    fn remaining(&self, i: usize) -> f64 {
        let t = &self.list[i];
        let left = t.units.saturating_sub(t.units_done) as f64;
        if t.run_units > 0 {
            return left * t.bytes as f64 / t.run_units as f64;
        }
        let scale = if self.hint_done > 0 {
            self.bytes as f64 / self.hint_done as f64
        } else {
            1.0
        };
        left / t.units.max(1) as f64 * t.bytes_hint as f64 * scale
    }

    /// Seconds until table `i`'s last range is in, at `rate` bytes a second: ranges are taken
    /// from one queue in table order, so it ends once it and the tables before it are sent.
    fn eta(&self, i: usize, rate: f64) -> f64 {
        let t = &self.list[i];
        if t.units_done >= t.units {
            return 0.0;
        }
        self.eta_through(i, rate)
    }

    /// Seconds until every table up to `last` is in, at `rate` bytes a second; 0 once they
    /// are. The run's ETA is that of its last table: a small table last in the queue may be
    /// in before a large one ahead of it.
    fn eta_through(&self, last: usize, rate: f64) -> f64 {
        let tables = &self.list[..=last];
        if tables.iter().all(|t| t.units_done >= t.units) {
            return 0.0;
        }
        let left: f64 = (0..=last).map(|j| self.remaining(j)).sum();
        // Up, and a second at least: a table still under way is not due "in 0 s".
        (left / rate.max(1.0)).ceil().max(1.0)
    }

    /// Table `i` as the JSON `table` events and the `progress` events' `tables` show it; its
    /// `eta_seconds` 0 once it is in, else null without a `rate` to go by ([`Pace::rate`]).
    fn json(&self, i: usize, rate: Option<f64>) -> serde_json::Value {
        let t = &self.list[i];
        let eta = match t.units_done >= t.units {
            true => Some(0.0),
            false => rate.map(|r| self.eta(i, r)),
        };
        serde_json::json!({
            "table": t.name, "ranges_done": t.units_done, "ranges_total": t.units,
            "ranges_before": t.units_before, "rows": t.items, "bytes": t.bytes,
            "rows_estimate": t.items_hint, "eta_seconds": eta,
        })
    }

    /// Whether this run has committed a range of rows: until then, what was sent is schema.
    fn rows_moved(&self) -> bool {
        self.list.iter().any(|t| t.run_units > 0)
    }

    /// Tables begun and not yet all in, in order.
    fn busy(&self) -> Vec<usize> {
        (0..self.list.len())
            .filter(|&i| {
                let t = &self.list[i];
                t.units_done > 0 && t.units_done < t.units
            })
            .collect()
    }
}

/// The rate an ETA is worked out at: the bytes sent over the last [`Pace::WINDOW`], not since
/// the start. None until this run has committed a range of rows, nor while nothing has been
/// sent for [`Pace::STILL`]. The line said "ETA 57335808 s" while the schema was read (a few
/// kilobytes sent over seconds, against gigabytes of rows), and kept its last ETA while a
/// server stopped answering (a new user's report).
#[derive(Default)]
struct Pace {
    /// (seconds into the run, bytes sent then), oldest first, over the last window.
    samples: std::collections::VecDeque<(f64, u64)>,
}

impl Pace {
    /// How far back the rate looks: long enough to even out ranges committed in bursts.
    const WINDOW: f64 = 10.0;
    /// Nothing sent for this long: no rate. A healthy run sends every second while rows are
    /// due; a silent server is warned of from 5 s on.
    const STILL: f64 = 3.0;

    /// Records `bytes` sent by `secs` into the run.
    fn sample(&mut self, secs: f64, bytes: u64) {
        if self.samples.is_empty() {
            // The run's start: in its first seconds the window reaches back to it.
            self.samples.push_back((0.0, 0));
        }
        self.samples.push_back((secs, bytes));
        // Kept: the newest sample at least WINDOW old, as the window's start.
        while self.samples.len() > 2 && secs - self.samples[1].0 >= Self::WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bytes a second over the window, if there is one to go by (`rows_moved`: this run has
    /// committed a range of rows).
    fn rate(&self, rows_moved: bool) -> Option<f64> {
        let (&(first_secs, first), &(last_secs, last)) =
            (self.samples.front()?, self.samples.back()?);
        // The latest sample that counted less than now: the count moved after it.
        let moved_after = self
            .samples
            .iter()
            .rev()
            .find(|(_, b)| *b < last)
            .map(|(t, _)| *t);
        let moving = moved_after.is_some_and(|t| last_secs - t <= Self::STILL);
        let span = last_secs - first_secs;
        let rate = (last - first) as f64 / span.max(1e-9);
        (rows_moved && moving && span > 0.0 && rate >= 1.0).then_some(rate)
    }
}

fn report(s: &UnitsSummary, plan: Option<&Plan>, json: bool) {
    let secs = s.elapsed.as_secs_f64();
    if json {
        let mut line = serde_json::json!({
            "event": "summary", "units": s.units, "held": s.held, "retried": s.retried,
            "bytes": s.bytes, "seconds": secs,
        });
        // The receiving end has no plan: it leaves the fields out rather than giving nulls.
        if let Some(p) = plan {
            line["tables"] = p.tables.len().into();
            line["ranges"] = p.ranges().into();
        }
        render::json_line(&line);
        return;
    }
    let tables = plan.map_or(String::new(), |p| {
        format!("{} tables in {} ranges; ", p.tables.len(), p.ranges())
    });
    errln!(
        "sluice: {tables}{} units committed ({} already there, {} sent again), {} of rows in \
         {secs:.1} s ({}/s)",
        s.units,
        s.held,
        s.retried,
        human(s.bytes),
        human((s.bytes as f64 / secs.max(1e-9)) as u64)
    );
}

fn print_plan(plan: &Plan, json: bool) {
    for (table, ranges) in &plan.tables {
        let by = match (&table.key, ranges.len()) {
            (_, 1) => "whole".to_string(),
            (Some(k), _) => format!("by key {k}"),
            (None, _) => "by page".to_string(),
        };
        if json {
            render::json_line(&serde_json::json!({
                "event": "table", "table": table.display(), "bytes": table.bytes,
                "rows_estimate": table.rows, "index_bytes": table.index_bytes,
                "ranges": ranges.len(), "key": table.key, "binary": table.binary,
                "conditions": ranges.iter().map(|r| r.display(table)).collect::<Vec<_>>(),
            }));
        } else {
            outln!(
                "{:<40} {:>10} {:>12} {:>10} {:>5} ranges ({by}, {} format)",
                table.display(),
                human(table.bytes.max(0) as u64),
                table
                    .rows
                    .map_or("? rows".into(), |n| format!("~{} rows", count(n as u64))),
                format!("{} idx", human(table.index_bytes.max(0) as u64)),
                ranges.len(),
                if table.binary { "binary" } else { "text" }
            );
        }
    }
    let rows: u64 = plan
        .tables
        .iter()
        .filter_map(|(t, _)| t.rows)
        .map(|n| n.max(0) as u64)
        .sum();
    let unknown = plan.tables.iter().filter(|(t, _)| t.rows.is_none()).count();
    let index_bytes: u64 = plan
        .tables
        .iter()
        .map(|(t, _)| t.index_bytes.max(0) as u64)
        .sum();
    if json {
        render::json_line(&serde_json::json!({
            "event": "estimate", "tables": plan.tables.len(), "ranges": plan.ranges(),
            "bytes": plan.bytes(), "rows_estimate": rows,
            "tables_without_estimate": unknown, "index_bytes": index_bytes,
        }));
    } else {
        let unknown = if unknown > 0 {
            format!(" ({unknown} tables never analyzed: not counted)")
        } else {
            String::new()
        };
        outln!(
            "{} tables, {} ranges, {} on disk: about {} rows{unknown} to copy, then {} of \
             indexes to build",
            plan.tables.len(),
            plan.ranges(),
            human(plan.bytes()),
            count(rows),
            human(index_bytes)
        );
    }
}

/// `n thing`, or `n things`.
fn plural(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// `n` with thousands separated by commas.
fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::{Pace, Tables};

    /// No ETA from the schema's few bytes before any rows are in, nor from a run whose bytes
    /// stopped (a server that stopped answering left its last ETA standing); once rows move,
    /// the rate of the last seconds, not the run's average.
    #[test]
    fn the_eta_goes_by_the_rows_of_the_last_seconds() {
        let mut p = Pace::default();
        // The schema: 50 kB sent by its third second, no range committed.
        for t in 1..=8 {
            p.sample(t as f64, if t >= 3 { 50_000 } else { 0 });
            assert_eq!(p.rate(false), None, "{t} s");
        }
        // Rows at 10 MB/s from then on; the first range committed.
        let at = |t: u64| 50_000 + (t - 8) * 10_000_000;
        for t in 9..=30 {
            p.sample(t as f64, at(t));
        }
        assert_eq!(p.rate(true), Some(1e7));
        // The server stops answering: nothing more is sent after 30 s.
        p.sample(31.0, at(30));
        p.sample(32.0, at(30));
        assert!(p.rate(true).is_some(), "three seconds still");
        p.sample(33.0, at(30));
        assert_eq!(p.rate(true), None);
        // In the first seconds the window reaches back to the start.
        let mut p = Pace::default();
        p.sample(1.0, 5_000_000);
        assert_eq!(p.rate(true), Some(5e6));
    }

    /// A table's end is estimated from the ranges it committed, and one not begun from its size
    /// on disk scaled as the committed ranges scaled; a table ends after the ones before it.
    #[test]
    fn a_tables_eta_counts_the_tables_before_it() {
        let mut t = Tables::default();
        t.plan("big".into(), 10, 0, 1000, 100);
        t.plan("small".into(), 2, 0, 100, 10);
        // Before anything is in: sizes on disk, as they are.
        assert_eq!(t.eta(0, 10.0), 100.0);
        assert_eq!(t.eta(1, 10.0), 110.0);
        // Two ranges of big in, of 200 `COPY` bytes each where 100 were expected on disk.
        t.commit("big", 1, 10, 200, 10, 100);
        t.commit("big", 2, 10, 200, 10, 100);
        assert_eq!(t.eta(0, 10.0), 160.0, "8 ranges left at 200 bytes");
        assert_eq!(
            t.eta(1, 10.0),
            180.0,
            "small: 100 on disk, twice that in COPY bytes"
        );
        assert_eq!(t.busy(), vec![0]);
        // An interrupted run's ranges count as done, not as rows or bytes.
        t.plan("resumed".into(), 3, 2, 30, 3);
        t.commit("resumed", 3, 3, 5, 1, 10);
        assert_eq!(t.eta(2, 10.0), 0.0);
        assert_eq!((t.list[2].items, t.list[2].bytes), (1, 5));
        assert_eq!(t.list[2].units_before, 2);
        // The run is not due before its first tables, though its last is in.
        assert_eq!(t.eta_through(2, 10.0), 180.0);
        // A table still under way is never due in 0 s, however fast the run.
        assert_eq!(t.eta(0, 1e12), 1.0);
    }
}
