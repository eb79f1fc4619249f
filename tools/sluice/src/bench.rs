//! `sluice bench`: runs the engine's benchmark on a worker thread and prints its figures every
//! interval, as iperf3 does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_engine::bench::{self, Amount, BenchServer, BenchSummary};
use sluice_engine::{Config, Event, PathStats, Progress, Ticket};

use crate::args::BenchArgs;
use crate::render;

pub fn run(config: Config, o: BenchArgs, json: bool) -> Result<()> {
    if o.keep_serving && !o.serve {
        usage!(
            "--keep-serving goes with --serve: it keeps a serving end for one sender after another"
        );
    }
    if !(0.1..=3600.0).contains(&o.interval) {
        usage!(
            "--interval must be from 0.1 to 3600 seconds, not {}",
            o.interval
        );
    }
    // A source file is checked now, and sent once unless an amount is given.
    let from_len = match &o.from {
        Some(path) => Some(
            sluice_engine::unit::FileSource::open(path)
                .map_err(|source| file_error("--from", path, source))?
                .len(),
        ),
        None => None,
    };
    // So is the file to write: a typo is said before any waiting. Never the source itself,
    // which creating it would empty.
    if let Some(path) = &o.to {
        if o.from
            .as_deref()
            .is_some_and(|from| sluice_engine::same_file(from, path))
        {
            usage!(
                "--to {} is the --from file itself: writing it would empty it first",
                path.display()
            );
        }
        std::fs::File::create(path).map_err(|source| file_error("--to", path, source))?;
    }
    let amount = match (o.size, o.time) {
        (Some(0), _) => usage!("--size must be more than 0"),
        (Some(n), _) => Amount::Bytes(n),
        (None, Some(t)) if t >= Duration::from_millis(100) => Amount::Time(t),
        (None, Some(t)) => usage!("--time must be at least 0.1 s, not {t:?}"),
        (None, None) => match from_len {
            Some(n) => Amount::Bytes(n),
            None => Amount::Time(Duration::from_secs(10)),
        },
    };
    let ends = bench::Ends {
        from: o.from.clone(),
        to: o.to.clone(),
    };
    let kept = if ends.to.is_some() {
        "verified and written"
    } else {
        "verified and discarded"
    };
    let interval = Duration::from_secs_f64(o.interval);
    let progress = Arc::new(Progress::default());
    if o.serve {
        let server = BenchServer::bind(o.listen, o.advertise, config)
            .with_context(|| format!("listening on {}", o.listen))?
            .write_to(ends.to.clone());
        let ticket = server.ticket().to_string();
        if json {
            render::json_line(&serde_json::json!({"event": "ticket", "ticket": ticket}));
        } else {
            outln!("{ticket}");
            let whom = if o.keep_serving {
                "senders, one at a time, until stopped"
            } else {
                "one sender"
            };
            errln!("sluice: waiting for {whom}; run: sluice bench {ticket}");
        }
        if o.keep_serving {
            return keep_serving(server, interval, json, kept);
        }
        let p = progress.clone();
        let summary = watch(interval, json, &progress, Side::Receiving, move || {
            server.run(p).context("benchmark failed")
        })?;
        report(&summary, json, Side::Receiving, kept);
        return Ok(());
    }
    let p = progress.clone();
    let summary = match o.ticket {
        Some(t) => {
            let ticket: Ticket = match t.parse() {
                Ok(t) => t,
                Err(e) => usage!(
                    "{}: {e:#}",
                    "the argument must be the ticket printed by `sluice bench --serve`"
                ),
            };
            watch(interval, json, &progress, Side::Sending, move || {
                bench::send(&config, amount, ends.from.as_deref(), &ticket, p)
                    .with_context(|| format!("benchmarking against {}", ticket.addr))
            })?
        }
        None => watch(interval, json, &progress, Side::Sending, move || {
            bench::run_local(&config, amount, &ends, p).context("benchmark failed")
        })?,
    };
    report(
        &summary,
        json,
        Side::Sending,
        "sent, verified at the other end",
    );
    Ok(())
}

/// `bench --serve --keep-serving`: one run after another, each with its intervals and summary,
/// until a signal ends the process. A run that fails (its sender vanished, a block did not
/// match) is reported and the next sender is served all the same; three failures in a row
/// that each came within a second (the listener itself failing, not a sender) end it.
fn keep_serving(server: BenchServer, interval: Duration, json: bool, kept: &str) -> Result<()> {
    let server = Arc::new(std::sync::Mutex::new(server));
    let mut quick_failures = 0;
    loop {
        let progress = Arc::new(Progress::default());
        let (p, s) = (progress.clone(), server.clone());
        let began = Instant::now();
        let run = watch(interval, json, &progress, Side::Receiving, move || {
            s.lock()
                .map_err(|_| anyhow::anyhow!("the serving thread panicked"))?
                .run_next(p)
                .context("benchmark failed")
        });
        match run {
            Ok(summary) => {
                quick_failures = 0;
                report(&summary, json, Side::Receiving, kept);
            }
            Err(e) => {
                quick_failures = if began.elapsed() < Duration::from_secs(1) {
                    quick_failures + 1
                } else {
                    1
                };
                if quick_failures >= 3 {
                    return Err(e);
                }
                if json {
                    render::json_line(&serde_json::json!({
                        "event": "error", "message": format!("{e:#}"),
                    }));
                } else {
                    errln!("sluice: {e:#}; waiting for the next sender");
                }
            }
        }
    }
}

/// Which end of the benchmark this is. The receiving end's transport sends only
/// acknowledgements: its congestion window and losses say nothing of the data, and are left out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Sending,
    Receiving,
}

/// Runs `work` on a worker thread and prints one line per interval until it ends, then the
/// last, shorter interval up to the run's end (unless under a tenth of an interval, as iperf3
/// leaves it out). Each line counts what arrived at the receiving end in it (the sender hears of
/// it from that end): the bytes verified and those of the blocks being read, so the lines add
/// up to the summary, which counts the bytes verified. Counting the bytes handed to the
/// transport instead read above a 200 Mbit/s link's rate, and near zero while the window they
/// had filled drained; counting verified blocks, which come whole, read 8.3 Mbit/s or nothing
/// on a 5 Mbit/s link. The clock starts with the run (the engine's `Connected`), as the
/// summary's does: a serving end waits for its sender first.
fn watch(
    interval: Duration,
    json: bool,
    progress: &Arc<Progress>,
    side: Side,
    work: impl FnOnce() -> Result<BenchSummary> + Send + 'static,
) -> Result<BenchSummary> {
    let worker = std::thread::Builder::new()
        .name("sluice-main".into())
        .spawn(work)
        .context("starting the worker thread")?;
    let mut started: Option<Instant> = None;
    let mut next = interval;
    // The last line's end: time into the run, bytes arrived, the path's counters.
    let mut last = (Duration::ZERO, 0u64, PathStats::default());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20).min(interval));
        let Some(start) = started else {
            let events = progress.take_events();
            if events.iter().any(|e| matches!(e, Event::Connected { .. })) {
                let start = Instant::now();
                started = Some(start);
                let progress = progress.clone();
                *crate::ON_SIGNAL
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Box::new(move || interrupted(&progress, start, json, side)));
            }
            continue;
        };
        let at = start.elapsed();
        if at < next {
            continue;
        }
        // Read after the clock: while the run is on, `at` lies within it. Past its end (the
        // connection closing, the other end's teardown) no line is printed, or one could read
        // past the run's length in the summary.
        if progress.run_ended() {
            continue;
        }
        next += interval;
        let s = progress.snapshot();
        line(json, side, last, (at, s.bytes_arrived, s.path));
        last = (at, s.bytes_arrived, s.path);
    }
    let ended = worker.join();
    crate::ON_SIGNAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let summary = ended.map_err(|_| anyhow::anyhow!("the worker thread panicked"))??;
    if summary.bytes > last.1 && summary.elapsed.saturating_sub(last.0) >= interval / 10 {
        line(
            json,
            side,
            last,
            (summary.elapsed, summary.bytes, summary.path),
        );
    }
    Ok(summary)
}

/// Prints the interval from `from` to `to` (time into the run, bytes arrived, path counters).
fn line(json: bool, side: Side, from: (Duration, u64, PathStats), to: (Duration, u64, PathStats)) {
    let (t, bytes) = (to.0.as_secs_f64(), to.1.saturating_sub(from.1));
    let rate = bytes as f64 / (to.0 - from.0).as_secs_f64().max(1e-9);
    // Losses within this interval, as iperf3 counts its retransmits.
    let mut path = to.2;
    path.sent_packets = path.sent_packets.saturating_sub(from.2.sent_packets);
    path.lost_packets = path.lost_packets.saturating_sub(from.2.lost_packets);
    path.lost_bytes = path.lost_bytes.saturating_sub(from.2.lost_bytes);
    // Packets sent in one interval may be declared lost in the next: at a run's tail, with
    // little sent, that read as "lost 111 %".
    path.lost_packets = path.lost_packets.min(path.sent_packets);
    let rtt_ms = path.rtt.as_secs_f64() * 1e3;
    if json {
        let mut v = serde_json::json!({
            "event": "interval", "seconds": t, "bytes": bytes, "mb_per_s": rate / 1e6,
            "mbit_per_s": rate * 8.0 / 1e6, "rtt_ms": rtt_ms,
        });
        if side == Side::Sending {
            v["cwnd"] = path.cwnd.into();
            v["loss"] = path.loss().into();
            v["retransmitted_bytes"] = path.lost_bytes.into();
        }
        render::json_line(&v);
    } else if side == Side::Sending {
        outln!(
            "[{t:7.2} s] {:9.1} MB/s {:9.1} Mbit/s  RTT {rtt_ms:7.2} ms  cwnd {:>9}  lost {:5.2} %  sent again {:>9} bytes",
            rate / 1e6,
            rate * 8.0 / 1e6,
            path.cwnd,
            path.loss() * 100.0,
            path.lost_bytes
        );
    } else {
        outln!(
            "[{t:7.2} s] {:9.1} MB/s {:9.1} Mbit/s  RTT {rtt_ms:7.2} ms",
            rate / 1e6,
            rate * 8.0 / 1e6,
        );
    }
}

fn report(s: &BenchSummary, json: bool, side: Side, what: &str) {
    let secs = s.elapsed.as_secs_f64();
    let rtt_ms = s.path.rtt.as_secs_f64() * 1e3;
    if json {
        let mut v = serde_json::json!({
            "event": "summary", "bytes": s.bytes, "seconds": secs, "mb_per_s": s.rate() / 1e6,
            "mbit_per_s": s.rate() * 8.0 / 1e6,
            "transport": s.transport.to_string(), "rtt_ms": rtt_ms,
            "wire_bytes": s.path.udp_tx_bytes + s.path.udp_rx_bytes,
        });
        if side == Side::Sending {
            v["loss"] = s.path.loss().into();
            v["retransmitted_bytes"] = s.path.lost_bytes.into();
        }
        render::json_line(&v);
    } else {
        let losses = match side {
            Side::Sending => format!(
                ", {:.2} % of packets lost ({} bytes sent again)",
                s.path.loss() * 100.0,
                s.path.lost_bytes
            ),
            Side::Receiving => String::new(),
        };
        outln!(
            "sluice bench: {} bytes {what} in {secs:.2} s, {:.1} MB/s ({:.1} Mbit/s, as iperf3 counts) over {}; RTT {rtt_ms:.2} ms{losses}",
            s.bytes,
            s.rate() / 1e6,
            s.rate() * 8.0 / 1e6,
            s.transport,
        );
    }
}

/// The figures of a run a signal stopped: what the receiving end verified until then.
fn interrupted(progress: &Progress, start: Instant, json: bool, side: Side) {
    let s = progress.snapshot();
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let rate = s.bytes_verified as f64 / secs;
    let rtt_ms = s.path.rtt.as_secs_f64() * 1e3;
    if json {
        let mut v = serde_json::json!({
            "event": "summary", "interrupted": true, "bytes": s.bytes_verified, "seconds": secs,
            "mb_per_s": rate / 1e6, "mbit_per_s": rate * 8.0 / 1e6, "rtt_ms": rtt_ms,
        });
        if side == Side::Sending {
            v["loss"] = s.path.loss().into();
            v["retransmitted_bytes"] = s.path.lost_bytes.into();
        }
        render::json_line(&v);
    } else {
        outln!(
            "sluice bench: stopped after {secs:.2} s: {} bytes verified at the receiving end, {:.1} MB/s ({:.1} Mbit/s); RTT {rtt_ms:.2} ms",
            s.bytes_verified,
            rate / 1e6,
            rate * 8.0 / 1e6,
        );
    }
}

/// A local file error, so that its exit code and `--json` kind are a local file's (5, `Local`).
fn file_error(op: &'static str, path: &std::path::Path, source: std::io::Error) -> anyhow::Error {
    sluice_engine::Error::File {
        op,
        path: path.to_owned(),
        source,
    }
    .into()
}
