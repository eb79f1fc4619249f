//! `sluice`: move files and directory trees over QUIC or TCP, verified with BLAKE3.
//!
//! A thin shell over `sluice-engine`: it parses flags, runs the engine on a worker thread, and
//! renders progress (a bar on a terminal, JSON lines with `--json`) and errors.

#![forbid(unsafe_code)]

/// `println!` for what the command prints: a reader that has gone (`sluice hash … | head`)
/// ends the command quietly, as `SIGPIPE` ends other tools, where `println!` panics.
macro_rules! outln {
    ($($t:tt)*) => { $crate::render::out_line(format_args!($($t)*)) };
}

/// `eprintln!` for messages and progress: a closed standard error is not worth a panic.
macro_rules! errln {
    ($($t:tt)*) => { $crate::render::err_line(format_args!($($t)*)) };
}

#[macro_use]
mod args;
mod bench;
mod db;
mod render;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use sluice_engine::{ErrorKind, Receiver, Sender, Ticket};

use args::{Cli, Command, Tuning};

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let before = given_before(&matches);
    let log = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(|| render::CleanWriter(std::io::stderr()));
    // An empty `SLUICE_LOG=` is no log asked for (it was an empty filter, which silenced every
    // warning), as an unset one.
    let asked = std::env::var("SLUICE_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok());
    match asked {
        // Asked for a log: timestamps, levels and sources, for whoever reads it.
        Some(filter) => log.with_env_filter(filter).init(),
        // Otherwise a warning is a message to the user, worded as the others are.
        None => log
            // quinn-udp's warnings are its send errors in its own debug format (a route
            // missing, say): what they mean reaches the user as the connection's error.
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,quinn_udp=error"))
            .event_format(render::Plain { json: cli.json })
            .init(),
    }
    let json = cli.json;
    close_on_signals(json, matches!(cli.command, Command::Bench(_)));
    let result = run(cli, &before).and_then(|()| match render::stdout_error() {
        Some(source) => Err(sluice_engine::Error::Io {
            what: "writing to standard output",
            source,
        }
        .into()),
        None => Ok(()),
    });
    if let Err(e) = result {
        let sig = STOPPED_BY.load(std::sync::atomic::Ordering::SeqCst);
        if sig != 0 {
            // The signal's thread closed the connections, which ended the run with an error;
            // it exits once the closes are on the wire (exiting here could cut them off).
            std::thread::sleep(std::time::Duration::from_secs(2));
            errln!("\nsluice: {}", signal_name(sig));
            std::process::exit(128 + sig);
        }
        let kind = e
            .chain()
            .find_map(|c| c.downcast_ref::<sluice_engine::Error>())
            .map(sluice_engine::Error::kind);
        let message = describe(&e, kind);
        if json {
            render::json_line(&serde_json::json!({
                "event": "error", "message": message, "kind": kind.map(|k| format!("{k:?}")),
            }));
        }
        errln!("sluice: error: {}", render::clean(&message));
        let usage = e.chain().any(|c| c.is::<args::Usage>());
        std::process::exit(if usage {
            2
        } else {
            kind.map_or(1, ErrorKind::exit_code)
        });
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP: tells every peer over QUIC that this side stopped (a peer
/// over TCP hears it from the kernel), then exits with 128 + the signal's number, as a shell
/// does. Without the close a peer waited for its idle timeout (30 s by default) to notice. Nothing is
/// left under a final name: part files and their journals stay for a resume.
fn close_on_signals(json: bool, bench: bool) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                STOPPED_BY.store(sig, std::sync::atomic::Ordering::SeqCst);
                let name = signal_name(sig);
                let said = ON_SIGNAL
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(say) = said {
                    say();
                }
                // A benchmark has nothing to resume.
                let then = if bench {
                    "the benchmark ended there"
                } else {
                    "start the transfer again to resume (with a new receiver and its ticket if \
                     the receiver was the one stopped)"
                };
                sluice_engine::transport::quic::interrupt(&format!(
                    "the other side's sluice was stopped ({name}); {then}"
                ));
                if json {
                    render::json_line(&serde_json::json!({
                        "event": "error", "message": name, "kind": "Interrupted",
                    }));
                }
                errln!("\nsluice: {name}");
                std::process::exit(128 + sig);
            }
        });
}

/// What a command has to say when a signal stops it, before it exits (`sluice bench`: the
/// figures of the run so far, as iperf3 prints them).
pub static ON_SIGNAL: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>> =
    std::sync::Mutex::new(None);

/// The signal that stopped this run (0: none): the error the closed connections then cause
/// on the main thread is reported as the signal, not as a lost connection.
static STOPPED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "interrupted",
        signal_hook::consts::SIGTERM => "terminated",
        _ => "hung up",
    }
}

/// `sluice verify SRC... TICKET`: the receiver scans what it holds and the sender compares,
/// moving no data; regular files are compared (directories and links only locally).
fn verify_remote(
    sources: &[std::path::PathBuf],
    ticket: &Ticket,
    mut config: sluice_engine::Config,
    json: bool,
) -> Result<()> {
    config.dry_run = true;
    // Comparing must change nothing at the receiver.
    config.delete = false;
    let progress = std::sync::Arc::new(sluice_engine::Progress::default());
    let result = Sender::new(config).send(sources, ticket, progress.clone());
    match result {
        Ok(_) | Err(sluice_engine::Error::FilesFailed { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("verifying against {}", ticket.addr)),
    }
    let (mut files, mut differ) = (0u64, 0u64);
    let mut ranged = std::collections::HashSet::new();
    let events = progress.take_events();
    // A file missing there also "differs" in all its bytes: it is listed once, as missing.
    let missing: std::collections::HashSet<String> = events
        .iter()
        .filter_map(|e| match e {
            sluice_engine::Event::FileFailed { path, reason } if reason.starts_with("missing") => {
                Some(path.clone())
            }
            _ => None,
        })
        .collect();
    for e in events {
        match e {
            sluice_engine::Event::FileVerified { .. } => files += 1,
            sluice_engine::Event::Differs { path, .. } if missing.contains(&path) => {}
            sluice_engine::Event::Differs { path, ranges } => {
                let shown: Vec<String> = ranges
                    .iter()
                    .take(20)
                    .map(|r| format!("{}..{}", r.start, r.end))
                    .collect();
                if json {
                    render::content_difference_json(&path, &ranges);
                } else {
                    outln!(
                        "differs: {}: ranges {}",
                        render::clean(&path),
                        shown.join(", ")
                    );
                }
                ranged.insert(path);
            }
            sluice_engine::Event::FileFailed { path, reason } => {
                files += 1;
                differ += 1;
                if json {
                    render::json_line(
                        &serde_json::json!({"event": "difference", "kind": "file", "path": path, "reason": reason}),
                    );
                } else if reason.starts_with("missing") {
                    outln!("missing: {}", render::clean(&path));
                } else if !ranged.contains(&path) || reason.contains("bytes at the destination") {
                    outln!(
                        "differs: {}: {}",
                        render::clean(&path),
                        render::clean(&reason)
                    );
                }
            }
            sluice_engine::Event::Connected { .. }
            | sluice_engine::Event::Deleted { .. }
            | sluice_engine::Event::UnitCommitted { .. }
            | sluice_engine::Event::GroupPlanned { .. } => {}
        }
    }
    if json {
        render::json_line(
            &serde_json::json!({"event": "summary", "files": files, "differences": differ, "owners_compared": false}),
        );
    } else {
        // Said, so that "0 differ" is not read as "modes and owners too".
        outln!(
            "sluice verify: {files} files compared at {} (contents only; not modes or owners), \
             {differ} differ",
            ticket.addr
        );
    }
    if differ > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The error chain as one line, each cause once (library errors already name their cause),
/// with a hint where the user can act.
fn describe(e: &anyhow::Error, kind: Option<ErrorKind>) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    // `--inplace` has no part file: the destination file itself holds what arrived.
    let inplace = std::env::args().any(|a| a == "--inplace");
    if kind == Some(ErrorKind::NoSpace) && inplace {
        message.push_str(" (free space at the destination and start the transfer again, with a new `sluice recv` into the same directory after a `send`: with --inplace the destination file now holds new bytes where they arrived and older ones elsewhere, and the next complete run makes it whole)");
    } else if kind == Some(ErrorKind::NoSpace) {
        message.push_str(" (free space at the destination and start the transfer again, with a new `sluice recv` into the same directory after a `send`: the partial file is kept and the transfer resumes; a file that replaces an older one needs room for both until it is verified, and --inplace updates the older one where it lies instead)");
    }
    message
}

/// Splits `SRC... LAST` arguments, insisting on at least one source before `last`: a usage
/// error (exit code 2) as clap's own, since options may come between the paths.
fn split_sources<'a>(args: &'a [PathBuf], last: &str) -> (&'a [PathBuf], &'a PathBuf) {
    match args.split_last() {
        Some((last_arg, sources)) if !sources.is_empty() => (sources, last_arg),
        // A ticket alone: the sources are what is missing.
        Some((only, _))
            if last.contains("TICKET")
                && only
                    .to_str()
                    .is_some_and(|t| t.parse::<sluice_proto::ticket::Ticket>().is_ok()) =>
        {
            Cli::command()
                .error(
                    clap::error::ErrorKind::TooFewValues,
                    format!("give at least one source (SRC...) before {last}"),
                )
                .exit()
        }
        // One path: the destination (or ticket) is what is missing, as cp says it.
        Some((only, _)) => Cli::command()
            .error(
                clap::error::ErrorKind::TooFewValues,
                format!(
                    "missing {last} after {:?}: give SRC... {last}",
                    only.display().to_string()
                ),
            )
            .exit(),
        None => Cli::command()
            .error(
                clap::error::ErrorKind::TooFewValues,
                format!("give at least one source (SRC...) and {last}"),
            )
            .exit(),
    }
}

/// The tuning flags given before the command's name (`sluice --ring 4 copy …`): their ids and
/// how they are written.
fn given_before(matches: &clap::ArgMatches) -> Vec<(String, String)> {
    Cli::command()
        .get_arguments()
        .filter(|a| a.get_id() != "json")
        .filter(|a| {
            matches.value_source(a.get_id().as_str())
                == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|a| Some((a.get_id().to_string(), format!("--{}", a.get_long()?))))
        .collect()
}

/// The tuning of a database command: its link's flags, given after its name or before it. A
/// flag that does nothing for it (one of the file commands', or any for a command that moves
/// nothing over a link) is a usage error naming it; after the name clap refuses it itself.
fn db_tuning(
    command: &args::DbCommand,
    top: &Tuning,
    before: &[(String, String)],
) -> Result<Tuning> {
    use clap::Args;
    let link_ids: Vec<String> = args::Link::augment_args(clap::Command::new("link"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let name = command.name();
    for (id, flag) in before {
        match (link_ids.contains(id), command.link()) {
            (true, Some(_)) => {}
            (true, None) => usage!(
                "{flag} tunes the link a transfer's data crosses (sluice db copy, send, recv); \
                 {name} moves no data over one"
            ),
            // Every database command waits on its servers: how long one may stay silent.
            (false, _) if id == "stall_timeout" => {}
            (false, _) => usage!("{flag} applies to file transfers, not to {name}"),
        }
    }
    Ok(Tuning {
        link: command.link().cloned().unwrap_or_default().or(&top.link),
        stall_timeout: command.waits().stall_timeout.or(top.stall_timeout),
        ..Tuning::default()
    })
}

fn run(cli: Cli, before: &[(String, String)]) -> Result<()> {
    let top = &cli.tuning;
    let tuning = match &cli.command {
        Command::Copy { tuning, .. }
        | Command::Send { tuning, .. }
        | Command::Recv { tuning, .. }
        | Command::Verify { tuning, .. }
        | Command::Hash { tuning, .. } => tuning.or(top),
        Command::Bench(b) => b.tuning.or(top),
        Command::Db(command) => db_tuning(command, top, before)?,
    };
    // The sender's file options would be taken and do nothing elsewhere: said, not ignored.
    let command = match &cli.command {
        Command::Bench(_) => Some("sluice bench"),
        Command::Recv { .. } => Some("sluice recv"),
        Command::Hash { .. } => Some("sluice hash"),
        // It compares, moving and removing nothing (a new user's pass found it taking these).
        Command::Verify { .. } => Some("sluice verify"),
        _ => None,
    };
    if let Some(command) = command {
        let t = &tuning;
        let given = [
            ("--restart", t.restart),
            ("--rehash", t.rehash),
            ("--inplace", t.inplace),
            ("--delete", t.delete),
            ("--delete-excluded", t.delete_excluded),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, on)| *on) {
            let hint = match (command, *flag) {
                ("sluice recv", "--delete" | "--inplace") => {
                    format!(
                        ": the sender asks for it; a receiver allows it with --allow-{}",
                        &flag[2..]
                    )
                }
                ("sluice recv", _) => ": the sender asks for it".to_string(),
                _ => String::new(),
            };
            usage!("{flag} applies to sending files (send, copy), not to {command}{hint}");
        }
    }
    // A benchmark's blocks go out as they are: packing them is not measured (a new user's pass
    // found `bench --compress zstd` taking the flag and sending more bytes than the payload).
    if let (Command::Bench(_), Some(z)) = (&cli.command, tuning.link.compress.as_deref()) {
        if z != "off" {
            usage!(
                "--compress {z}: sluice bench sends its blocks unpacked; to measure packing, time `sluice send --compress {z}` of the file (or `sluice copy`)"
            );
        }
    }
    // A receiving end sends acknowledgements, not data: a ceiling there would do nothing.
    let receiving = match &cli.command {
        Command::Recv { .. } => Some("sluice recv"),
        Command::Db(args::DbCommand::Recv { .. }) => Some("sluice db recv"),
        _ => None,
    };
    if let (Some(command), Some(_)) = (receiving, tuning.link.max_rate) {
        usage!(
            "--max-rate caps what the sending end sends: give it to the sender, not to {command}"
        );
    }
    let over_a_link = !matches!(
        &cli.command,
        Command::Hash { .. }
            | Command::Db(args::DbCommand::Plan { .. } | args::DbCommand::Verify { .. })
    );
    let mut config = tuning.config(over_a_link)?;
    // A pattern that cannot be read is said before anything is listed or connects.
    if let Command::Copy { selection, .. }
    | Command::Send { selection, .. }
    | Command::Verify { selection, .. } = &cli.command
    {
        config.excludes = selection.excludes()?;
    }
    if let Command::Copy { owning, .. }
    | Command::Send { owning, .. }
    | Command::Recv { owning, .. } = &cli.command
    {
        config.ownership = owning.ownership();
    }
    let json = cli.json;
    match cli.command {
        Command::Copy {
            paths,
            dry_run: true,
            ..
        } => {
            let (sources, dest) = split_sources(&paths, "DEST_DIR");
            let report = sluice_engine::verify::compare_local(
                sources,
                dest,
                config.block_size,
                &config.excludes,
            )
            .context("dry run failed")?;
            render::verify_report(json, &report);
            if !json {
                errln!(
                    "sluice copy --dry-run: nothing was moved; a copy would send what is missing \
                     or differs{}",
                    if config.delete {
                        " and remove what is extra"
                    } else {
                        " (and, with --delete, remove what is extra)"
                    }
                );
            }
            Ok(())
        }
        Command::Copy { paths, .. } => {
            let (sources, dest) = split_sources(&paths, "DEST_DIR");
            let (sources, dest) = (sources.to_vec(), dest.clone());
            render::run(json, move |p| {
                sluice_engine::copy(&sources, &dest, &config, p).context("copy failed")
            })
        }
        Command::Send { args, .. } => {
            let (sources, ticket) = split_sources(&args, "TICKET");
            let ticket: Ticket = match ticket.to_string_lossy().parse() {
                Ok(t) => t,
                Err(e) => {
                    usage!("the last argument must be the ticket printed by `sluice recv`: {e:#}")
                }
            };
            let sources = sources.to_vec();
            render::run(json, move |p| {
                Sender::new(config)
                    .send(&sources, &ticket, p)
                    .with_context(|| format!("sending to {}", ticket.addr))
            })
        }
        Command::Recv {
            dest,
            listen,
            advertise,
            allow_delete,
            allow_inplace,
            max_entries,
            max_depth,
            max_control_queue,
            ..
        } => {
            let listen: SocketAddr = listen;
            let mut config = config;
            config.allow_delete = allow_delete;
            config.allow_inplace = allow_inplace;
            if let Some(n) = max_entries {
                if n == 0 {
                    usage!("--max-entries must be at least 1");
                }
                config.max_entries = n;
            }
            if let Some(n) = max_depth {
                if n == 0 {
                    usage!("--max-depth must be at least 1");
                }
                config.max_depth = n;
            }
            if let Some(n) = max_control_queue {
                if n < 64 << 10 {
                    usage!("--max-control-queue must be at least 64K (one answer is ~2K)");
                }
                config.control_queue = n as usize;
            }
            // The destination's errors name it, the sockets' their address.
            let rx = Receiver::bind(&dest, listen, advertise, config)
                .with_context(|| format!("receiving into {}", dest.display()))?;
            let ticket = rx.ticket().to_string();
            if json {
                render::json_line(&serde_json::json!({"event": "ticket", "ticket": ticket}));
            } else {
                outln!("{ticket}");
                errln!("sluice: waiting for one sender; run: sluice send SRC... {ticket}");
            }
            render::run(json, move |p| rx.run(p).context("receive failed"))
        }
        // A measurement starts cold every time, as iperf3's does.
        Command::Bench(options) => bench::run(
            sluice_engine::Config {
                path_memory: None,
                ..config
            },
            options,
            json,
        ),
        Command::Verify { paths, .. } => {
            let (sources, dest) = split_sources(&paths, "DEST_DIR or TICKET");
            if let Ok(ticket) = dest.to_string_lossy().parse::<Ticket>() {
                return verify_remote(sources, &ticket, config, json);
            }
            let report = sluice_engine::verify::compare_local(
                sources,
                dest,
                config.block_size,
                &config.excludes,
            )
            .context("verify failed")?;
            render::verify_report(json, &report);
            if !report.differences.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Db(command) => db::run(config, command, json),
        Command::Hash { files, .. } => {
            // As b3sum: every argument is tried, `-` is standard input, a name holding a
            // newline or backslash is printed escaped behind a leading backslash, and any
            // failure makes the exit code 1 once all are done.
            let mut failed = 0;
            for f in &files {
                let hashed = if f.as_os_str() == "-" {
                    blake3::Hasher::new()
                        .update_reader(std::io::stdin().lock())
                        .map(|h| h.finalize())
                } else {
                    std::fs::File::open(f).and_then(|file| {
                        blake3::Hasher::new()
                            .update_reader(file)
                            .map(|h| h.finalize())
                    })
                };
                match hashed {
                    Ok(hash) if json => render::json_line(&serde_json::json!({
                        "event": "hash", "path": sluice_engine::manifest::wire_name(f.as_os_str()), "blake3": hash.to_hex().as_str()
                    })),
                    Err(e) if json => {
                        render::json_line(&serde_json::json!({
                            "event": "error", "path": sluice_engine::manifest::wire_name(f.as_os_str()), "kind": "Local",
                            "message": format!("{}: {e}", f.display()),
                        }));
                        errln!("sluice: {}: {e}", f.display());
                        failed += 1;
                    }
                    Ok(hash) => {
                        let name = f.to_string_lossy();
                        if name.contains(['\n', '\\']) {
                            let escaped = name.replace('\\', "\\\\").replace('\n', "\\n");
                            outln!("\\{}  {escaped}", hash.to_hex());
                        } else {
                            outln!("{}  {name}", hash.to_hex());
                        }
                    }
                    Err(e) => {
                        errln!("sluice: {}: {e}", f.display());
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
