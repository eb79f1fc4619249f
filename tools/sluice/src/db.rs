//! `sluice db`: a PostgreSQL database through the unit engine, with a line of progress a second
//! (or JSON events) and a summary.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_engine::db::{self, Database, Options, Plan};
use sluice_engine::unit::session::UnitServer;
use sluice_engine::unit::UnitsSummary;
use sluice_engine::{Config, Event, Progress, Ticket};

use crate::args::{DbCommand, DbOptions};
use crate::render;

fn options(o: &DbOptions) -> Result<Options> {
    let most = sluice_engine::unit::session::MAX_LANES;
    if o.jobs == 0 || o.jobs > most {
        usage!("--jobs must be from 1 to {most}, not {}", o.jobs);
    }
    if o.range_size.is_some_and(|n| n < 1 << 20) {
        usage!("--range-size must be at least 1M");
    }
    Ok(Options {
        tables: o.tables.iter().filter(|t| !t.is_empty()).cloned().collect(),
        jobs: o.jobs,
        range_bytes: o.range_size.unwrap_or(0),
        verify: !o.no_verify,
        consistent: o.consistent,
        skip_large_objects: o.skip_large_objects,
    })
}

fn database(conn: &str) -> Result<Database> {
    Ok(Database::parse(conn)?)
}

pub fn run(config: Config, command: DbCommand, json: bool) -> Result<()> {
    match command {
        DbCommand::Plan { src, options: o } => {
            let (src, o) = (database(&src)?, options(&o)?);
            let plan = db::plan(&src, &o).with_context(|| format!("planning {}", src.shown))?;
            print_plan(&plan, json);
            Ok(())
        }
        DbCommand::Copy {
            src,
            dst,
            options: o,
        } => {
            let (src, dst, o) = (database(&src)?, database(&dst)?, options(&o)?);
            let what = format!("copying {} to {}", src.shown, dst.shown);
            watch(json, move |p| {
                db::copy(&config, &src, &dst, &o, p).context(what)
            })
        }
        DbCommand::Send {
            src,
            ticket,
            options: o,
        } => {
            let (src, o) = (database(&src)?, options(&o)?);
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
        } => {
            let dst = database(&dst)?;
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
                println!("{ticket}");
                let _ = std::io::stdout().flush();
                eprintln!("sluice: waiting for one sender; run: sluice db send SRC {ticket}");
            }
            let summary = server
                .run(sink, Arc::new(Progress::default()))
                .with_context(|| format!("receiving into {}", dst.shown))?;
            report(&summary, None, json);
            Ok(())
        }
        DbCommand::Verify { a, b, options: o } => {
            let (a, b, o) = (database(&a)?, database(&b)?, options(&o)?);
            let (checked, differences) = db::verify(&a, &b, &o)
                .with_context(|| format!("comparing {} with {}", a.shown, b.shown))?;
            for d in &differences {
                if json {
                    render::json_line(&serde_json::json!({
                        "event": "difference", "table": d.table, "range": d.range, "detail": d.detail,
                    }));
                } else {
                    println!("{}: {}: {}", d.table, d.range, d.detail);
                }
            }
            if json {
                render::json_line(&serde_json::json!({
                    "event": "summary", "ranges": checked, "differences": differences.len(),
                }));
            } else {
                eprintln!(
                    "sluice: {checked} ranges compared, {} differ",
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

/// Runs `work` on a thread of its own, printing progress every second, then the summary.
fn watch<F>(json: bool, work: F) -> Result<()>
where
    F: FnOnce(Arc<Progress>) -> Result<(Plan, UnitsSummary)> + Send + 'static,
{
    let progress = Arc::new(Progress::default());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let p = progress.clone();
        std::thread::Builder::new()
            .name("sluice-db".into())
            .spawn(move || {
                let _done = done_tx;
                work(p)
            })?
    };
    let started = Instant::now();
    // Tables with ranges still to commit: (done, total).
    let mut tables: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut finished = false;
    while !finished {
        finished = !matches!(
            done_rx.recv_timeout(Duration::from_secs(1)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        for e in progress.take_events() {
            let Event::UnitCommitted {
                group,
                group_done,
                group_total,
                ..
            } = e
            else {
                continue;
            };
            if group.is_empty() {
                continue;
            }
            if json {
                render::json_line(&serde_json::json!({
                    "event": "table", "table": group, "ranges_done": group_done,
                    "ranges_total": group_total,
                }));
            }
            if group_done >= group_total {
                tables.remove(&group);
                if !json {
                    eprintln!("sluice: {group}: all {group_total} ranges committed");
                }
            } else {
                tables.insert(group, (group_done, group_total));
            }
        }
        if finished {
            break;
        }
        let s = progress.snapshot();
        let secs = started.elapsed().as_secs_f64();
        let rate = s.bytes_sent as f64 / secs.max(1e-9);
        // Table bytes on disk approximate the COPY bytes still to come.
        let eta = (s.bytes_total.saturating_sub(s.bytes_sent) as f64 / rate.max(1.0)).round();
        if json {
            render::json_line(&serde_json::json!({
                "event": "progress", "seconds": secs, "bytes_sent": s.bytes_sent,
                "units_done": s.files_verified, "units_total": s.files_total,
                "table_bytes": s.bytes_total, "eta_seconds": eta,
            }));
        } else {
            let busy: Vec<String> = tables
                .iter()
                .take(3)
                .map(|(t, (d, n))| format!("{t} {d}/{n}"))
                .collect();
            eprintln!(
                "sluice: {:7.1} s  {:>10} sent  {:>9}/s  {}/{} units  ETA {eta:.0} s  {}",
                secs,
                human(s.bytes_sent),
                human(rate as u64),
                s.files_verified,
                s.files_total,
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
    eprintln!(
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
            println!(
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
        println!(
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
