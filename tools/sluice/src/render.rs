//! Rendering a running transfer: a progress bar on a terminal, JSON lines with `--json`, and
//! always a one-line summary.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_engine::{Event, PathStats, Progress, Summary};

/// `s` made safe for a terminal: control characters (escape sequences that could retitle the
/// window, move the cursor or fake a line, the class of CVE-2019-6109) are shown escaped, as
/// `\u{1b}`. Paths, reasons and messages may come from the peer.
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Warnings and errors as the user reads them without `SLUICE_LOG`: `sluice: warning: MESSAGE`,
/// without the timestamp, level and module path of a log line. Fields beside the message (a log
/// reader's `file=3`) follow it in words, `(file 3)`, a text one quoted (a path may hold spaces).
/// Under `--json` (`json`) a warning is also a `warning` event on standard output, as the
/// command's own error is an `error` event: a program reading the events learnt of a large
/// object left behind, or of a server that stopped answering, only from standard error.
pub struct Plain {
    pub json: bool,
}

/// One event's message and its other fields, as [`Plain`] writes them.
#[derive(Default)]
struct Sentence {
    message: String,
    fields: Vec<String>,
}

impl tracing::field::Visit for Sentence {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            // A number stays bare; a text given by `%` (a path) is quoted where it could be
            // misread: empty, or holding a space or a quote.
            let text = format!("{value:?}");
            let text = if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"')
            {
                format!("{text:?}")
            } else {
                text
            };
            self.fields.push(format!("{} {text}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push(format!("{} {value:?}", field.name()));
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let what = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            _ => "note",
        };
        let mut sentence = Sentence::default();
        event.record(&mut sentence);
        let mut message = sentence.message;
        if !sentence.fields.is_empty() {
            message = format!("{message} ({})", sentence.fields.join(", "));
        }
        if self.json && what == "warning" {
            json_line(&serde_json::json!({"event": what, "message": message}));
        }
        writeln!(writer, "sluice: {what}: {message}")
    }
}

/// Log output with control characters escaped, byte by byte: what a log line quotes from the
/// peer cannot reach the terminal raw. tracing writes each event as one line in one write, so
/// only the write's last newline passes (and tabs).
pub struct CleanWriter<W>(pub W);

impl<W: Write> Write for CleanWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            // C1 controls, U+0080..U+009F, are 0xC2 0x80..0x9F in UTF-8.
            let c1 = b == 0xC2 && buf.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n));
            // A line ends the write; a newline inside it came from what the line quotes.
            let last = i + 1 == buf.len();
            if (b < 0x20 && b != b'\t' && !(b == b'\n' && last)) || b == 0x7F {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            } else if c1 {
                out.extend_from_slice(format!("\\u{{{:x}}}", buf[i + 1]).as_bytes());
                i += 1;
            } else {
                out.push(b);
            }
            i += 1;
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Prints one JSON object as a line on stdout.
pub fn json_line(v: &serde_json::Value) {
    out_line(format_args!("{v}"));
}

/// The first error writing standard output other than a reader gone (a full disk): the
/// command still finishes its work, then fails for it (`main`), so `sluice hash f > sums` on a
/// full disk does not exit 0 with the sums lost.
static STDOUT_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why writing standard output failed, if it did: a local error (exit 5), whatever its cause
/// (a full disk here is not the destination's).
pub fn stdout_error() -> Option<std::io::Error> {
    STDOUT_ERROR
        .get()
        .map(|text| std::io::Error::other(text.clone()))
}

/// One line on standard output, flushed (see `outln!`). If the reader has gone, the command
/// ends here with 141, the status a shell gives a command `SIGPIPE` ended.
pub fn out_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => {
            let _ = STDOUT_ERROR.set(e.to_string());
        }
        Ok(()) => {}
    }
}

/// One line on standard error (see `errln!`); an error writing it is ignored.
pub fn err_line(line: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(line).and_then(|()| err.write_all(b"\n"));
}

/// Runs `work` on a worker thread while rendering its progress on this one.
pub fn run<F>(json: bool, work: F) -> Result<()>
where
    F: FnOnce(Arc<Progress>) -> Result<Summary> + Send + 'static,
{
    let progress = Arc::new(Progress::default());
    // The worker holds `_done` until it returns (or panics): the channel's disconnection wakes
    // the render loop at once instead of at its next 100 ms tick.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let p = progress.clone();
        std::thread::Builder::new()
            .name("sluice-main".into())
            .spawn(move || {
                let _done = done_tx;
                work(p)
            })?
    };
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40.cyan/blue} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta} {msg}",
            )
            .map(|s| s.with_key("eta", eta))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let start = Instant::now();
    let mut last_json = Instant::now();
    let mut roots = Vec::new();
    let mut failures = Failures::default();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        done_rx.recv_timeout(Duration::from_millis(100))
    {
        drain(&progress, json, &mut roots, &mut failures);
        let s = progress.snapshot();
        if let Some(b) = &bar {
            // What must cross: bytes the receiver already holds (a resume, a delta) are not
            // counted as if sent, or the bar would end short of its total and its time left
            // would count them as still to come.
            let to_cross = s.bytes_total.saturating_sub(s.bytes_kept);
            b.set_length(to_cross);
            b.set_position(s.bytes_delivered.max(s.bytes_verified).min(to_cross));
            let mut msg = format!("{}/{} files", s.files_verified, s.files_total);
            if s.bytes_kept > 0 {
                msg += &format!(", {} already there", indicatif::DecimalBytes(s.bytes_kept));
            }
            if s.path.sent_packets > 0 {
                msg += &format!(
                    ", RTT {} ms, loss {:.2} %",
                    s.path.rtt.as_millis(),
                    100.0 * s.path.loss()
                );
            }
            b.set_message(msg);
        }
        if json && last_json.elapsed() >= Duration::from_secs(1) {
            last_json = Instant::now();
            json_line(&serde_json::json!({
                "event": "progress", "bytes_sent": s.bytes_sent, "bytes_delivered": s.bytes_delivered, "bytes_verified": s.bytes_verified,
                "bytes_total": s.bytes_total, "bytes_kept": s.bytes_kept, "bytes_packed": s.bytes_packed, "packed_wire": s.packed_wire,
                "files_verified": s.files_verified,
                "files_total": s.files_total, "seconds": start.elapsed().as_secs_f64(),
                "path": path_json(&s.path),
            }));
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let result = worker
        .join()
        .map_err(|_| anyhow::anyhow!("transfer thread panicked"))?;
    drain(&progress, json, &mut roots, &mut failures);
    failures.print_rest();
    let summary = result?;
    let secs = summary.elapsed.as_secs_f64().max(1e-9);
    let mbps = summary.bytes as f64 / secs / 1e6;
    if json {
        json_line(&serde_json::json!({
            "event": "summary", "entries": summary.entries, "files": summary.files,
            "bytes": summary.bytes, "payload_bytes": summary.payload_bytes,
            "kept_bytes": summary.kept_bytes, "vouched_bytes": summary.vouched_bytes,
            "resent_blocks": summary.resent_blocks, "deleted": summary.deleted,
            "packed_bytes": summary.packed_bytes, "packed_wire_bytes": summary.packed_wire_bytes,
            "zero_bytes": summary.zero_bytes,
            "wire_bytes": summary.wire_bytes,
            "path": path_json(&summary.path),
            "seconds": secs, "mb_per_s": mbps, "compared_only": summary.compared_only,
            "transport": summary.transport,
        }));
    } else if summary.compared_only {
        // `sluice verify SRC TICKET` took this receiver, which serves one sender: said, lest
        // "0 files … verified" read as a transfer that moved nothing.
        outln!(
            "sluice: compared {} entries for a `sluice verify` (nothing was written); this \
             receiver is done: start a new `sluice recv` to send",
            summary.entries
        );
    } else {
        let root = match roots.as_slice() {
            [(_, r)] => format!(", BLAKE3 {r}"),
            _ => String::new(),
        };
        let mut extra = String::new();
        if summary.kept_bytes > 0 {
            extra += &format!(
                "; {} bytes were already there, {} sent",
                summary.kept_bytes, summary.payload_bytes
            );
        }
        if summary.packed_bytes > 0 {
            extra += &format!(
                "; {} bytes packed with zstd into {} ({:.1} %)",
                summary.packed_bytes,
                summary.packed_wire_bytes,
                100.0 * summary.packed_wire_bytes as f64 / summary.packed_bytes as f64
            );
        }
        if summary.zero_bytes > 0 {
            extra += &format!("; {} bytes of zeros sent as holes", summary.zero_bytes);
        }
        if summary.path.lost_packets > 0 {
            extra += &format!(
                "; RTT {} ms, {:.2} % of packets lost ({} bytes sent again)",
                summary.path.rtt.as_millis(),
                100.0 * summary.path.loss(),
                summary.path.lost_bytes
            );
        }
        if summary.resent_blocks > 0 {
            extra += &format!("; {} damaged blocks re-sent", summary.resent_blocks);
        }
        if summary.deleted > 0 {
            let entries = if summary.deleted == 1 {
                "entry"
            } else {
                "entries"
            };
            // Not "that the source no longer has": with --delete-excluded the source may still
            // have them, and a directory replaced by a file of its name is also counted.
            extra += &format!("; deleted {} {entries} at the destination", summary.deleted);
        }
        let over = match summary.transport {
            "" => String::new(),
            t => format!(" over {t}"),
        };
        outln!(
            "sluice: {} files ({} entries), {} bytes verified in {secs:.2} s, {mbps:.1} MB/s{over}{root}{extra}",
            summary.files,
            summary.entries,
            summary.bytes
        );
    }
    Ok(())
}

/// The network path as JSON: RTT in milliseconds, the congestion window, packets sent and
/// lost, the bytes of lost packets (sent again), and the bytes on the wire each way
/// (`wire_tx_bytes`, `wire_rx_bytes`: UDP payload over QUIC, TCP payload over TCP). The same
/// two figures also go by their first names, `udp_tx_bytes` and `udp_rx_bytes`, for scripts
/// that read them: over TCP those names were wrong.
fn path_json(p: &PathStats) -> serde_json::Value {
    serde_json::json!({
        "rtt_ms": p.rtt.as_secs_f64() * 1e3, "cwnd": p.cwnd,
        "sent_packets": p.sent_packets, "lost_packets": p.lost_packets,
        "loss": p.loss(), "retransmitted_bytes": p.lost_bytes,
        "wire_tx_bytes": p.udp_tx_bytes, "wire_rx_bytes": p.udp_rx_bytes,
        "udp_tx_bytes": p.udp_tx_bytes, "udp_rx_bytes": p.udp_rx_bytes,
    })
}

/// The bar's time left: "--" until there is a rate to judge it by (two seconds and some bytes
/// in), instead of the years an estimate from the first near-zero rate says while a transfer
/// is still being set up (a database's schema, a long round trip's start-up).
fn eta(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    if state.pos() == 0 || state.elapsed() < Duration::from_secs(2) {
        let _ = w.write_str("--");
    } else {
        let _ = write!(w, "{:#}", indicatif::HumanDuration(state.eta()));
    }
}

/// Failures printed with the same reason, word for word, before the rest are only counted: a
/// directory that cannot be made fails every entry below it with its reason (rsync says it once
/// and skips what the directory would hold).
const SAME_REASON_SHOWN: u64 = 3;
/// Reasons counted at most; failures past so many different reasons are all printed.
const REASONS_COUNTED: usize = 1024;

/// Failures seen so far, by reason, for [`SAME_REASON_SHOWN`].
#[derive(Default)]
struct Failures {
    by_reason: std::collections::HashMap<String, u64>,
    /// Reasons in the order first seen.
    order: Vec<String>,
}

impl Failures {
    /// Counts a failure for `reason`: `true` if it is to be printed.
    fn shown(&mut self, reason: &str) -> bool {
        if let Some(n) = self.by_reason.get_mut(reason) {
            *n += 1;
            return *n <= SAME_REASON_SHOWN;
        }
        if self.order.len() < REASONS_COUNTED {
            self.by_reason.insert(reason.to_owned(), 1);
            self.order.push(reason.to_owned());
        }
        true
    }

    /// One line per reason for the failures not printed.
    fn print_rest(&self) {
        for reason in &self.order {
            let n = self.by_reason[reason];
            if n > SAME_REASON_SHOWN {
                let more = n - SAME_REASON_SHOWN;
                let entries = if more == 1 { "entry" } else { "entries" };
                errln!(
                    "sluice: {more} more {entries} failed the same way: {}",
                    clean(reason)
                );
            }
        }
    }
}

fn drain(
    progress: &Progress,
    json: bool,
    roots: &mut Vec<(String, String)>,
    failures: &mut Failures,
) {
    for e in progress.take_events() {
        match e {
            Event::Connected { peer } => {
                if json {
                    json_line(&serde_json::json!({"event": "connected", "peer": peer}));
                }
            }
            Event::FileVerified { path, size, root } => {
                let hex = blake3::Hash::from_bytes(root).to_hex().to_string();
                if json {
                    json_line(&serde_json::json!({
                        "event": "file_verified", "path": path, "size": size, "blake3": hex,
                    }));
                }
                if roots.len() < 2 {
                    roots.push((path, hex));
                }
            }
            Event::Differs { path, ranges } => {
                if json {
                    content_difference_json(&path, &ranges);
                }
            }
            Event::UnitCommitted { .. } | Event::GroupPlanned { .. } => {}
            // Few, and not to be missed: listed without --json too, as rsync -v lists them.
            Event::Deleted { path, dir } => {
                if json {
                    json_line(&serde_json::json!({"event": "deleted", "path": path, "dir": dir}));
                } else {
                    let slash = if dir { "/" } else { "" };
                    outln!("deleted: {}{slash}", clean(&path));
                }
            }
            Event::FileFailed { path, reason } => {
                if json {
                    json_line(
                        &serde_json::json!({"event": "file_failed", "path": path, "reason": reason}),
                    );
                } else if failures.shown(&reason) {
                    errln!("sluice: {}: {}", clean(&path), clean(&reason));
                }
            }
        }
    }
}

/// Prints what `sluice verify` found.
pub fn verify_report(json: bool, report: &sluice_engine::verify::Report) {
    use sluice_engine::verify::Difference;
    for d in &report.differences {
        let (kind, path, detail) = match d {
            Difference::Missing(p) => ("missing", p, serde_json::Value::Null),
            Difference::Kind(p) => ("kind", p, serde_json::Value::Null),
            Difference::Extra(p) => ("extra", p, serde_json::Value::Null),
            Difference::LinkTarget(p) => ("link_target", p, serde_json::Value::Null),
            Difference::Unreadable { path, reason } => {
                ("unreadable", path, serde_json::json!({ "reason": reason }))
            }
            Difference::Mode { path, source, dest } => (
                "mode",
                path,
                serde_json::json!({ "source": format!("{source:o}"), "dest": format!("{dest:o}") }),
            ),
            Difference::Owner { path, source, dest } => (
                "owner",
                path,
                serde_json::json!({ "source": [source.0, source.1], "dest": [dest.0, dest.1] }),
            ),
            Difference::Content {
                path,
                source_size,
                dest_size,
                ranges,
            } => (
                "content",
                path,
                serde_json::json!({
                    "source_size": source_size, "dest_size": dest_size,
                    "ranges": ranges.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
                }),
            ),
        };
        if json {
            json_line(
                &serde_json::json!({"event": "difference", "kind": kind, "path": path, "detail": detail}),
            );
        } else if let Difference::Content {
            ranges,
            source_size,
            dest_size,
            ..
        } = d
        {
            let shown: Vec<String> = ranges
                .iter()
                .take(20)
                .map(|r| format!("{}..{}", r.start, r.end))
                .collect();
            let more = if ranges.len() > 20 {
                format!(" (+{} more)", ranges.len() - 20)
            } else {
                String::new()
            };
            // Lengths alone differ where the shorter is the start of the longer.
            let ranges = if shown.is_empty() {
                String::new()
            } else {
                format!("; ranges {}{more}", shown.join(", "))
            };
            outln!(
                "differs: {}: {source_size} vs {dest_size} bytes{ranges}",
                clean(path)
            );
        } else if let Difference::Unreadable { reason, .. } = d {
            outln!("unreadable: {}", clean(reason));
        } else if let Difference::Mode { source, dest, .. } = d {
            outln!(
                "mode: {}: {source:04o} at the source, {dest:04o} here",
                clean(path)
            );
        } else if let Difference::Owner { source, dest, .. } = d {
            outln!(
                "owner: {}: {}:{} at the source, {}:{} here",
                clean(path),
                source.0,
                source.1,
                dest.0,
                dest.1
            );
        } else {
            outln!("{kind}: {}", clean(path));
        }
    }
    if json {
        json_line(
            &serde_json::json!({"event": "summary", "entries": report.entries, "differences": report.differences.len(), "owners_compared": report.owners_compared}),
        );
    } else {
        // Said, so that "0 differ" is not read as "owners too" where they were not compared.
        let what = if report.owners_compared {
            "contents, modes, owners"
        } else {
            "contents, modes; not owners, setuid or setgid, which only root keeps"
        };
        outln!(
            "sluice verify: {} entries compared ({what}), {} differ",
            report.entries,
            report.differences.len()
        );
    }
}

/// Prints a `difference` event for differing byte ranges of a file.
pub fn content_difference_json(path: &str, ranges: &[std::ops::Range<u64>]) {
    json_line(&serde_json::json!({
        "event": "difference", "kind": "content", "path": path,
        "ranges": ranges.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warning with fields beside its message: the message, then the fields in words, a text
    /// that could be misread quoted.
    #[test]
    fn plain_writes_fields_after_the_message_in_words() {
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = written.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(Plain { json: false })
            .with_writer(move || SharedBuf(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(file = 3, path = %"a b", "cannot unpack a packed block");
            tracing::warn!("skipping x: a FIFO");
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "sluice: warning: cannot unpack a packed block (file 3, path \"a b\")\n\
             sluice: warning: skipping x: a FIFO\n"
        );
    }

    struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
