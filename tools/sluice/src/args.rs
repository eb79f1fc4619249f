//! Command-line flags.

/// A mistake in the command line found after clap parsed it (a value out of range, a malformed
/// ticket): exit code 2, as clap's own errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns a [`Usage`] error: `usage!("--ring must be at least 2")`.
macro_rules! usage {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new($crate::args::Usage(format!($($t)*))))
    };
}

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use sluice_engine::Config;

/// An address for the ticket (`--advertise`): one a sender can connect to, so neither a
/// wildcard nor port 0 (a ticket naming 0.0.0.0:0 was printed, and no sender could use it).
fn advertised(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|e| format!("{e}: give ADDR:PORT, e.g. 192.0.2.10:7000"))?;
    if a.ip().is_unspecified() || a.port() == 0 {
        return Err(format!(
            "{a} cannot be connected to: give this host's address as senders reach it, and the port it listens on"
        ));
    }
    Ok(a)
}

/// Move files and directory trees over QUIC (or TLS over TCP), every byte verified with BLAKE3.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print machine-readable events, one JSON object per line, instead of a progress bar.
    #[arg(long, global = true)]
    pub json: bool,
    /// Tuning given before the command's name (`sluice --ring 4 copy …`); each file command
    /// takes the same flags after its name, and the database commands the few that do
    /// something for them ([`Link`]).
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy SRC... into DEST_DIR through a sender and a receiver in this process (over loopback).
    /// DEST_DIR is created if missing. One file (not a directory) is copied as cp does: onto an
    /// existing file, which is replaced once verified after only the blocks that differ cross,
    /// and to a name that does not exist as a file of that name (end it with / for a directory).
    Copy {
        /// One or more sources, then the destination directory (or, for one file, the file to write or update).
        #[arg(required = true, num_args = 1.., value_name = "SRC... DEST_DIR")]
        paths: Vec<PathBuf>,
        /// Move nothing: list what a copy would send (missing and differing entries, with byte
        /// ranges) and what --delete would remove (extra entries), as `sluice verify` does, and
        /// exit 0 (rsync's -n)
        #[arg(short = 'n', long)]
        dry_run: bool,
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        owning: Owning,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Send SRC... to the receiver named by TICKET (printed by `sluice recv`).
    Send {
        /// One or more sources, then the ticket.
        #[arg(required = true, num_args = 1.., value_name = "SRC... TICKET")]
        args: Vec<PathBuf>,
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        owning: Owning,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Print a ticket, wait for one sender, and receive its files into DEST_DIR.
    Recv {
        /// Where received files go (created if missing).
        dest: PathBuf,
        /// Address to listen on (UDP and TCP, see --transport).
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Address to put in the ticket when --listen is a wildcard (default: the address of this host's route out, or 127.0.0.1 without one).
        #[arg(long, value_parser = advertised)]
        advertise: Option<SocketAddr>,
        /// Let the sender remove what its directories no longer hold (its --delete). Without
        /// it a sender asking for --delete is refused: a ticket lets it add and replace files,
        /// never remove them.
        #[arg(long)]
        allow_delete: bool,
        /// Let the sender update existing files in place (its --inplace). Without it a sender
        /// asking for --inplace is refused: an interrupted in-place update leaves mixed
        /// content under the final name.
        #[arg(long)]
        allow_inplace: bool,
        /// The most entries (files, directories, links) a sender may announce; the receiver
        /// keeps a record of each for the whole transfer. Default 2000000.
        #[arg(long)]
        max_entries: Option<u32>,
        /// The most directory levels of a path a sender may name. Default 256.
        #[arg(long)]
        max_depth: Option<u32>,
        /// Bytes of answers waiting for the sender to read them past which the receiver stops
        /// reading its requests (bounds what a sender that never reads can make it hold), e.g.
        /// 8M. Default 8M.
        #[arg(long, value_parser = parse_size)]
        max_control_queue: Option<u64>,
        #[command(flatten)]
        owning: Owning,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Measure the data path as iperf3 measures a link: generated data, cut into blocks and
    /// hashed, sent on the transport's lanes, verified and discarded at the other end (no disk).
    /// Prints a line per interval (rate, RTT, congestion window, loss, bytes sent again) and a
    /// summary. Both ends run in this process over loopback unless TICKET names a
    /// `sluice bench --serve` on another host.
    Bench(BenchArgs),
    /// Compare SRC... with DEST_DIR, or with what a `sluice recv` holds (TICKET), without moving
    /// data; list differing files and byte ranges. Exits 0 when identical, 1 when something
    /// differs. Against a ticket, regular files are compared. What --exclude matches is left
    /// out on both sides.
    Verify {
        /// One or more sources, then the destination directory or a ticket.
        #[arg(required = true, num_args = 1.., value_name = "SRC... DEST_DIR|TICKET")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Move a PostgreSQL database: schema, rows in verified ranges, indexes and sequences;
    /// resumable, checked row by row at both ends.
    #[command(subcommand)]
    Db(DbCommand),
    /// Print the BLAKE3 hash of each file, as b3sum does.
    Hash {
        /// Files to hash.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        tuning: Tuning,
    },
}

/// `sluice db` commands. Databases are named as libpq names them: a URI
/// (`postgres://user@host:5432/db`) or `key=value` words (`host=/run/postgresql dbname=db`),
/// with `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` and `~/.pgpass` as defaults.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy SRC into DST (an empty database) through a sender and a receiver in this process.
    Copy {
        /// The source database.
        src: String,
        /// The target database (empty, or holding an interrupted copy to resume).
        dst: String,
        #[command(flatten)]
        options: DbOptions,
        #[command(flatten)]
        copying: CopyOptions,
        #[command(flatten)]
        link: Link,
    },
    /// Send SRC to the receiver named by TICKET (printed by `sluice db recv`).
    Send {
        /// The source database.
        src: String,
        /// The ticket printed by `sluice db recv`.
        ticket: String,
        #[command(flatten)]
        options: DbOptions,
        #[command(flatten)]
        copying: CopyOptions,
        #[command(flatten)]
        link: Link,
    },
    /// Print a ticket, wait for one `sluice db send`, and write what it sends into DST.
    Recv {
        /// The target database (empty, or holding an interrupted copy to resume).
        dst: String,
        /// Address to listen on (UDP and TCP, see --transport).
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Address to put in the ticket when --listen is a wildcard (default: the address of this host's route out, or 127.0.0.1 without one).
        #[arg(long, value_parser = advertised)]
        advertise: Option<SocketAddr>,
        #[command(flatten)]
        waits: Waits,
        #[command(flatten)]
        link: Link,
    },
    /// Compare two databases table by table and range by range (row counts and digests);
    /// exits 0 when identical, 1 naming each differing table and range.
    Verify {
        /// One database.
        a: String,
        /// The other.
        b: String,
        #[command(flatten)]
        options: DbOptions,
    },
    /// List the tables and ranges a copy of SRC would move, with sizes, without moving data.
    Plan {
        /// The source database.
        src: String,
        #[command(flatten)]
        options: DbOptions,
        /// Plan a source that holds large objects, as a copy with this flag would move it
        /// (without them); without it such a source is refused, as by the copy.
        #[arg(long)]
        skip_large_objects: bool,
    },
}

impl DbCommand {
    /// The command as the user wrote it, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            DbCommand::Copy { .. } => "sluice db copy",
            DbCommand::Send { .. } => "sluice db send",
            DbCommand::Recv { .. } => "sluice db recv",
            DbCommand::Verify { .. } => "sluice db verify",
            DbCommand::Plan { .. } => "sluice db plan",
        }
    }

    /// How long the command waits for locks and for silent servers.
    pub fn waits(&self) -> &Waits {
        match self {
            DbCommand::Copy { options, .. }
            | DbCommand::Send { options, .. }
            | DbCommand::Verify { options, .. }
            | DbCommand::Plan { options, .. } => &options.waits,
            DbCommand::Recv { waits, .. } => waits,
        }
    }

    /// The link's tuning, for the commands that move data over one.
    pub fn link(&self) -> Option<&Link> {
        match self {
            DbCommand::Copy { link, .. }
            | DbCommand::Send { link, .. }
            | DbCommand::Recv { link, .. } => Some(link),
            DbCommand::Verify { .. } | DbCommand::Plan { .. } => None,
        }
    }
}

/// How a database is cut and moved.
#[derive(Debug, Args)]
pub struct DbOptions {
    /// Only tables matching these patterns, read as `pg_dump -t` reads them: `schema.table` or
    /// `table` (on the search path), unquoted names in lower case, "Mixed Case" or "a.b" in
    /// double quotes, `*` and `?` as in a shell; repeat or separate with commas (outside
    /// double quotes). Default: every table.
    #[arg(long = "tables")]
    pub tables: Vec<String>,
    /// Ranges in flight at once, 1 to 16; each holds a connection at both ends. Default 4.
    /// Memory follows the widest row: a row crosses whole, so each range being read holds
    /// about 1.5 to 2.5 times its widest row (a 120 MB value: about 250 MB; PostgreSQL's
    /// largest, 1 GB: over 2 GB), on top of some 50 MiB.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// About how much table one range holds, e.g. 64M. Default: a fortieth of the largest
    /// table per job, from 8M to 64M (an interruption loses at most two ranges per job).
    #[arg(long, value_parser = parse_size)]
    pub range_size: Option<u64>,
    #[command(flatten)]
    pub waits: Waits,
}

/// What only the commands that copy (`db copy`, `db send`) take: `db plan` and `db verify`
/// listed and took them, doing nothing (a new user's report).
#[derive(Debug, Args, Default)]
pub struct CopyOptions {
    /// Skip re-reading the target at the end (every range is still checked as it arrives).
    #[arg(long)]
    pub no_verify: bool,
    /// Refuse to resume an interrupted copy (its snapshot ended with it, so a resumed copy
    /// mixes two moments of the source); by default it resumes, then verifies.
    #[arg(long)]
    pub consistent: bool,
    /// Copy a source that holds large objects, leaving them behind (they are not copied yet;
    /// without this flag such a source is refused).
    #[arg(long)]
    pub skip_large_objects: bool,
    /// Leave out the source's owners (`ALTER … OWNER TO`), as `pg_restore --no-owner`: what is
    /// made belongs to the target's user, who need not be a superuser or a member of the
    /// source's roles (managed PostgreSQL gives none).
    #[arg(long)]
    pub no_owner: bool,
    /// Leave out the source's access privileges (`GRANT`, `REVOKE`), as `pg_restore
    /// --no-privileges`: for a target whose roles differ.
    #[arg(long, alias = "no-acl")]
    pub no_privileges: bool,
}

/// How long a database command waits: for a lock another session holds, for a server that
/// does not answer.
#[derive(Debug, Args)]
pub struct Waits {
    /// Give up waiting for a lock another session holds after this long, naming the table and
    /// the session (as `pg_dump --lock-wait-timeout`), e.g. 30s, 2min, 500ms; 0 waits for ever.
    #[arg(long, value_parser = parse_wait, default_value = "30s")]
    pub lock_wait_timeout: std::time::Duration,
    /// Whole seconds a database server may leave every statement unanswered (its processes
    /// stopped, its host frozen) before the command ends with an error naming it (exit 3;
    /// what was committed is kept, and the same command resumes); a warning names it after 5 s
    /// of silence. A statement that runs long on a server that answers is no stall (default
    /// 120).
    #[arg(long)]
    pub stall_timeout: Option<u64>,
}

/// Whose files arrive (copy, send, recv). As with `rsync -a`, a receiver run as root gives each
/// entry the source's owner and group (by name, a name unknown there by number) and keeps its
/// setuid and setgid bits; any other receiver leaves everything to its own user, setuid and
/// setgid dropped, without a word (as rsync).
#[derive(Debug, Args, Clone, Default)]
pub struct Owning {
    /// Keep user and group ids as numbers instead of mapping them by name (as rsync
    /// --numeric-ids): the sender sends no names, the receiver looks none up.
    #[arg(long)]
    pub numeric_ids: bool,
    /// Leave each entry's owner to the receiving user (its setuid bit is then dropped), as
    /// rsync --no-owner. On recv: whatever the sender sends.
    #[arg(long)]
    pub no_owner: bool,
    /// Leave each entry's group to the receiving user (its setgid bit is then dropped), as
    /// rsync --no-group. On recv: whatever the sender sends.
    #[arg(long)]
    pub no_group: bool,
}

impl Owning {
    /// The engine's form of these flags.
    pub fn ownership(&self) -> sluice_engine::owners::Ownership {
        sluice_engine::owners::Ownership {
            owner: !self.no_owner,
            group: !self.no_group,
            numeric_ids: self.numeric_ids,
        }
    }
}

/// What below the sources a file command (copy, send, verify) leaves out.
#[derive(Debug, Args, Clone, Default)]
pub struct Selection {
    /// Leave out what PATTERN matches below the sources (repeatable), as rsync's --exclude:
    /// without a / it matches a name at any depth (*.o, .git); with one, the path below the
    /// source directory, a leading / anchoring it at the top (/build, docs/*.tmp); a trailing
    /// / matches directories only (cache/). * and ? stay within a name, ** crosses / (a/**/b),
    /// [...] is a class. An excluded directory is not entered; with --delete, what is excluded
    /// is not deleted at the destination either. Sources named on the command line are always
    /// sent. A pattern may start with - (--exclude -draft.txt), as with rsync.
    // A value starting with `-` is the pattern's (clap read `-draft.txt` as flags, and its
    // hint, `-- -d`, did not work either).
    #[arg(long, value_name = "PATTERN", allow_hyphen_values = true)]
    pub exclude: Vec<String>,
    /// Read exclude patterns from FILE (- for standard input), one per line; blank lines and
    /// lines starting with # are ignored. As in rsync's exclude files, "- PATTERN" excludes
    /// PATTERN; include rules ("+ PATTERN") and "!" are refused.
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
}

impl Selection {
    /// The patterns compiled; one that cannot be read, or a file that cannot, is a usage error
    /// naming it.
    pub fn excludes(&self) -> Result<sluice_engine::Excludes> {
        let mut patterns = self.exclude.clone();
        for file in &self.exclude_from {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            };
            let text = match text {
                Ok(t) => t,
                Err(e) => usage!("--exclude-from {}: {e}", file.display()),
            };
            for (n, line) in text.lines().enumerate() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // rsync's exclude files may prefix a rule with its kind: "- " excludes, as a
                // line without one does. Read as names, "- *.o" excluded nothing, and "+ keep"
                // did not include what the user meant it to.
                if let Some(pattern) = line.strip_prefix("- ") {
                    patterns.push(pattern.to_owned());
                    continue;
                }
                let refused = if line.starts_with("+ ") {
                    "an include rule, which Sluice does not support (it only excludes): \
                     remove the line, and narrow the patterns that would exclude what it \
                     includes"
                } else if line == "!" {
                    "rsync's clearing of the pattern list, which Sluice does not support: \
                     remove it and the patterns before it that are not wanted"
                } else {
                    patterns.push(line.to_owned());
                    continue;
                };
                usage!(
                    "--exclude-from {} line {}: {line:?} is {refused}",
                    file.display(),
                    n + 1
                );
            }
        }
        match sluice_engine::Excludes::new(&patterns) {
            Ok(excludes) => Ok(excludes),
            Err(e) => usage!("{e}"),
        }
    }
}

/// `sluice bench`'s flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The ticket printed by `sluice bench --serve`.
    pub ticket: Option<String>,
    /// Print a ticket and serve one `sluice bench TICKET`: verify and discard its blocks.
    #[arg(long, conflicts_with = "ticket")]
    pub serve: bool,
    /// With --serve: serve senders one after another with the same ticket until stopped
    /// (Ctrl-C), as `iperf3 -s` does, printing each run's figures; a sender that comes while
    /// another is served is turned away as busy.
    #[arg(long, requires = "serve")]
    pub keep_serving: bool,
    /// Address to listen on with --serve (UDP and TCP, see --transport).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Address to put in the ticket when --listen is a wildcard (default: the address of this host's route out, or 127.0.0.1 without one).
    #[arg(long, value_parser = advertised)]
    pub advertise: Option<SocketAddr>,
    /// Bytes to send, e.g. 4G (default: send for --time).
    #[arg(long, value_parser = parse_size, conflicts_with_all = ["time", "serve"])]
    pub size: Option<u64>,
    /// How long to send for: 10, 10s, 500ms, 2min (a bare number is seconds; default 10 s,
    /// at most 24 h).
    #[arg(long, value_parser = parse_wait, conflicts_with = "serve")]
    pub time: Option<std::time::Duration>,
    /// Seconds between interval lines.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Read the blocks from this file instead of generating them (through the page cache; from
    /// its start again at its end). Without --size or --time, the file is sent once.
    #[arg(long, conflicts_with = "serve")]
    pub from: Option<std::path::PathBuf>,
    /// Write the verified blocks into this file (created or truncated, synced at the end) instead
    /// of discarding them: at the receiving end (--serve, or both ends in this process).
    #[arg(long, conflicts_with = "ticket")]
    pub to: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Data-path tuning; defaults are `sluice_engine::Config::default()`. The file commands take
/// all of it; the database commands only [`Link`], since the rest tunes reading and writing
/// files (a flag that does nothing is refused, not ignored).
#[derive(Debug, Args, Clone, Default)]
pub struct Tuning {
    #[command(flatten)]
    pub link: Link,
    /// The most buffers a sender's ring grows to on a long fat QUIC path (192).
    #[arg(long)]
    pub max_ring: Option<usize>,
    /// send/copy: have the receiver throw away partial files of interrupted runs instead of
    /// resuming them (the sender's choice, carried in its Hello).
    #[arg(long)]
    pub restart: bool,
    /// send/copy: when resuming, read and hash at the source the blocks the receiver already
    /// holds too. By default the sender takes the receiver's resume journal's word for them if
    /// the source file is unchanged since the interrupted run (same inode, size, modification
    /// and change times) and the receiver's new reading of its partial file agrees with the
    /// journal (the receiver always reads its partial files whole).
    #[arg(long)]
    pub rehash: bool,
    /// send/copy: update existing destination files in place: only changed blocks are written, no second
    /// copy on disk. If interrupted, a file holds old and new blocks mixed until the transfer
    /// is run again.
    #[arg(long)]
    pub inplace: bool,
    /// send/copy: remove files and directories of the transferred directories that the source no
    /// longer has (as rsync --delete); without it they are left alone.
    #[arg(long)]
    pub delete: bool,
    /// send/copy: --delete, and remove what --exclude matches at the destination too (as
    /// rsync --delete-excluded); without it --delete leaves excluded entries alone.
    #[arg(long)]
    pub delete_excluded: bool,
    /// Whole seconds without progress (no block verified, sent or kept, no message) before a
    /// transfer ends with an error, even while the peer still answers keep-alives (default
    /// 120).
    #[arg(long)]
    pub stall_timeout: Option<u64>,
    /// Write through the page cache instead of O_DIRECT at the receiver.
    #[arg(long)]
    pub no_direct: bool,
    /// Use pread/pwrite instead of io_uring.
    #[arg(long)]
    pub no_uring: bool,
}

/// The tuning of the link itself: blocks, lanes, windows, pacing, packing and the transport,
/// which a database transfer's units go through as files do.
#[derive(Debug, Args, Clone, Default)]
pub struct Link {
    /// Block size (power of two, 1K..16M): the unit of hashing, verifying and repair.
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// Buffers in each side's ring (memory = ring × block size); a sender's ring starts here.
    #[arg(long)]
    pub ring: Option<usize>,
    /// Parallel QUIC data streams.
    #[arg(long)]
    pub streams: Option<usize>,
    /// QUIC flow-control window (cover the bandwidth-delay product), e.g. 64M.
    #[arg(long, value_parser = parse_size)]
    pub window: Option<u64>,
    /// Ask the peer to acknowledge every N packets (QUIC ACK-frequency extension).
    #[arg(long)]
    pub ack_every: Option<u32>,
    /// Whole seconds without a packet from the peer before it is declared gone (default 30).
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Congestion controller: sluice (Sluice's own: paces at the measured bottleneck rate,
    /// ignores random loss, backs off when the queue grows or losses cluster), cubic
    /// (loss-based, like TCP), bbr (quinn's experimental BBR) or bbr-capped (BBR with its window
    /// held near the bandwidth-delay product). Default: sluice, except cubic towards a loopback
    /// address.
    #[arg(long, value_parser = ["sluice", "cubic", "bbr", "bbr-capped"])]
    pub congestion: Option<String>,
    /// Never send faster than this, in bits per second: 500M, 1G, 2.5G (decimal units, as link
    /// rates are written); with an upper-case B, bytes per second (60MB/s is 480M).
    #[arg(long, value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    /// Path hint: the expected round-trip time (100ms, 0.3s; a bare number is milliseconds);
    /// with --rate it sizes the first window before anything is measured.
    #[arg(long, value_parser = parse_duration)]
    pub rtt: Option<std::time::Duration>,
    /// Path hint: the expected bottleneck rate in bits per second (200M, 1G).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// The most parallel data streams the sender opens as the measured bandwidth-delay product
    /// grows (and a receiver allows), 1..=256; default 64.
    #[arg(long)]
    pub max_streams: Option<usize>,
    /// Pack blocks with zstd: auto (where the link, not the CPU, limits the rate and the data
    /// shrinks; never towards a loopback address), zstd (every block that shrinks) or off.
    /// Blocks are verified on their unpacked bytes. Default: auto.
    #[arg(long, value_parser = ["auto", "zstd", "off"])]
    pub compress: Option<String>,
    /// quic, tcp (TLS 1.3 over TCP, for sites where UDP is blocked or throttled) or auto: a
    /// sender tries QUIC and, with no answer in 3 s, TCP as well; a receiver listens on both
    /// (UDP and TCP, same port). Default: $SLUICE_TRANSPORT, else auto.
    #[arg(long, value_parser = ["auto", "quic", "tcp"])]
    pub transport: Option<String>,
    /// UDP payload bytes per QUIC packet, fixed (1200..=16000), for a path known to carry them;
    /// 0: path-MTU discovery (at most 1452). Default: 16000 towards a loopback address, else
    /// discovery.
    #[arg(long)]
    pub datagram_size: Option<u32>,
    /// send, db send: start up from a few packets, not from half the rate the last transfer to
    /// this host measured (kept a day in ~/.cache/sluice/paths, or under $XDG_CACHE_HOME), and
    /// keep nothing of this one
    #[arg(long)]
    pub fresh_start: bool,
}

impl Link {
    /// These flags, with `before`'s where these leave one out (see [`Tuning::or`]).
    pub fn or(&self, before: &Link) -> Link {
        let before = before.clone();
        Link {
            block_size: self.block_size.or(before.block_size),
            ring: self.ring.or(before.ring),
            streams: self.streams.or(before.streams),
            window: self.window.or(before.window),
            ack_every: self.ack_every.or(before.ack_every),
            idle_timeout: self.idle_timeout.or(before.idle_timeout),
            congestion: self.congestion.clone().or(before.congestion),
            max_rate: self.max_rate.or(before.max_rate),
            rtt: self.rtt.or(before.rtt),
            rate: self.rate.or(before.rate),
            max_streams: self.max_streams.or(before.max_streams),
            compress: self.compress.clone().or(before.compress),
            transport: self.transport.clone().or(before.transport),
            datagram_size: self.datagram_size.or(before.datagram_size),
            fresh_start: self.fresh_start || before.fresh_start,
        }
    }
}

/// The most buffers `--max-ring` may name (the ring's free list is allocated at this size).
const MAX_RING: usize = 1 << 16;

impl Tuning {
    /// These flags (given after the command's name), with `before`'s (given before it) where
    /// these leave one out.
    pub fn or(&self, before: &Tuning) -> Tuning {
        Tuning {
            link: self.link.or(&before.link),
            max_ring: self.max_ring.or(before.max_ring),
            restart: self.restart || before.restart,
            rehash: self.rehash || before.rehash,
            inplace: self.inplace || before.inplace,
            delete: self.delete || before.delete,
            delete_excluded: self.delete_excluded || before.delete_excluded,
            stall_timeout: self.stall_timeout.or(before.stall_timeout),
            no_direct: self.no_direct || before.no_direct,
            no_uring: self.no_uring || before.no_uring,
        }
    }

    /// The engine's configuration. `over_a_link`: the command moves data between two ends
    /// (only then is `SLUICE_TRANSPORT` read: a stale or mistyped value failed `sluice hash`
    /// and `sluice db plan`, which open no link).
    pub fn config(&self, over_a_link: bool) -> Result<Config> {
        let mut c = Config::default();
        if let Some(bs) = self.link.block_size {
            if !bs.is_power_of_two() || !(1024..=16 << 20).contains(&bs) {
                usage!("--block-size must be a power of two from 1K to 16M, not {bs}");
            }
            c.block_size = bs as u32;
        }
        if let Some(r) = self.link.ring {
            if !(2..=MAX_RING).contains(&r) {
                usage!("--ring must be from 2 to {MAX_RING}, not {r}");
            }
            c.ring_buffers = r;
            c.ring_max = c.ring_max.max(r);
        }
        if let Some(r) = self.max_ring {
            match self.link.ring {
                Some(ring) if r < ring => {
                    usage!("--max-ring ({r}) must be at least --ring ({ring})")
                }
                // A sender whose ceiling is below the default first size starts at the
                // ceiling ([`Config::sending_ring`]); a receiver's ring is `--ring`'s.
                _ if !(2..=MAX_RING).contains(&r) => {
                    usage!("--max-ring must be from 2 to {MAX_RING}, not {r}")
                }
                _ => {}
            }
            c.ring_max = r;
        }
        if let Some(s) = self.link.streams {
            if !(1..=256).contains(&s) {
                usage!("--streams must be 1..=256");
            }
            c.streams = s;
        }
        if let Some(w) = self.link.window {
            // Below 64K nothing was tried: `--window 1` stalled for good, 0 failed at the Hello.
            let least = 64 << 10;
            if !(least..=1 << 32).contains(&w) {
                usage!("--window must be from {}K to 4G, not {w}", least >> 10);
            }
            c.window = w;
        }
        if let Some(a) = self.link.ack_every {
            // The window's floor is two ACKs' worth of packets: a large N is a burst that size.
            if a > 1024 {
                usage!("--ack-every must be 0 (QUIC's own rule) to 1024, not {a}");
            }
            c.ack_every = a;
        }
        c.io_uring = !self.no_uring;
        if let Some(s) = self.link.max_streams {
            if !(1..=256).contains(&s) {
                usage!("--max-streams must be 1..=256");
            }
            c.max_streams = s;
        }
        c.max_rate = self.link.max_rate.map(|bits| bits / 8);
        c.rate_hint = self.link.rate.map(|bits| bits / 8);
        c.rtt_hint = self.link.rtt;
        if !self.link.fresh_start {
            c.path_memory = sluice_engine::transport::memory::default_file();
        }
        match self.link.congestion.as_deref() {
            Some("sluice") => c.congestion = Some(sluice_engine::config::Congestion::Sluice),
            Some("bbr") => c.congestion = Some(sluice_engine::config::Congestion::Bbr),
            Some("bbr-capped") => c.congestion = Some(sluice_engine::config::Congestion::BbrCapped),
            Some("cubic") => c.congestion = Some(sluice_engine::config::Congestion::Cubic),
            _ => {}
        }
        if let Some(z) = self.link.compress.as_deref() {
            c.compress = z.parse().map_err(anyhow::Error::msg)?;
        }
        // The environment's choice is read here, not by clap: with the flag before the command's
        // name and after it both possible, an `env` on each would let the environment's value
        // after it override the flag given before it.
        let from_env = std::env::var("SLUICE_TRANSPORT")
            .ok()
            .filter(|t| over_a_link && !t.is_empty());
        if let Some(t) = self.link.transport.clone().or(from_env) {
            match t.parse() {
                Ok(t) => c.transport = t,
                Err(e) => usage!("--transport (or SLUICE_TRANSPORT): {e}"),
            }
        }
        if let Some(d) = self.link.datagram_size {
            if d != 0 && !(1200..=16_000).contains(&d) {
                usage!("--datagram-size must be 0 (discovery) or 1200..=16000, not {d}");
            }
            c.datagram_size = Some(d as u16);
        }
        c.direct_io = !self.no_direct;
        c.restart = self.restart;
        c.rehash = self.rehash;
        c.inplace = self.inplace;
        c.delete = self.delete || self.delete_excluded;
        c.delete_excluded = self.delete_excluded;
        if let Some(t) = self.link.idle_timeout {
            if !(1..=86_400).contains(&t) {
                usage!("--idle-timeout must be 1 to 86400 seconds, not {t}");
            }
            c.idle_timeout = std::time::Duration::from_secs(t);
        }
        if let Some(t) = self.stall_timeout {
            if !(1..=604_800).contains(&t) {
                usage!("--stall-timeout must be 1 to 604800 seconds (a week), not {t}");
            }
            c.stall_timeout = std::time::Duration::from_secs(t);
        }
        Ok(c)
    }
}

/// Splits `2.5G` into 2.5 and `G`; `None` if it does not start with a decimal number.
fn decimal_and_unit(s: &str) -> Option<(f64, &str)> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    num.parse().ok().map(|n| (n, unit))
}

/// Parses a rate in bits per second: `800000`, `500K`, `200M`, `2.5G` (decimal multiples, as
/// link rates are written; `Mbit`, `Mbps` and `M` are the same), or with an upper-case `B` in
/// bytes per second (`50MB/s`, `1GiB/s`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (n, unit) = decimal_and_unit(s)
        .ok_or_else(|| format!("{s:?} is not a rate like 500M or 1G (bits per second)"))?;
    // "/s" and "ps" say "per second" either way; an upper-case B means bytes (50MB/s is
    // 400 Mbit/s), a lower-case b or "bit" means bits, and no letter means bits.
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("/s")
        .or_else(|| unit.strip_suffix("ps"))
        .or_else(|| unit.strip_suffix("PS"))
        .unwrap_or(unit);
    let (prefix, bits_per_unit) = if let Some(p) = unit.strip_suffix('B') {
        (p, 8.0)
    } else {
        let p = unit
            .strip_suffix("bit")
            .or_else(|| unit.strip_suffix("Bit"));
        (p.or_else(|| unit.strip_suffix('b')).unwrap_or(unit), 1.0)
    };
    let mult = match prefix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "m" | "M" => 1e6,
        "g" | "G" => 1e9,
        "t" | "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use 500M or 1G for bits per second, 50MB for \
                 bytes per second)"
            ))
        }
    };
    let bits = n * mult * bits_per_unit;
    if !(8.0..=1e13).contains(&bits) {
        return Err(format!("{s:?} is outside 8 bit/s to 10 Tbit/s"));
    }
    Ok(bits as u64)
}

/// Parses a duration: `100ms`, `0.3s`, `250us`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) =
        decimal_and_unit(s).ok_or_else(|| format!("{s:?} is not a duration like 100ms or 0.3s"))?;
    let secs = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => n / 1e3,
        "s" => n,
        "us" | "µs" => n / 1e6,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms or s)")),
    };
    if !(1e-6..=60.0).contains(&secs) {
        return Err(format!("{s:?} is outside 1 µs to 60 s"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses how long to wait: `30s`, `2min`, `1h`, `500ms`, `0` (for ever); a bare number is
/// seconds.
pub fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) =
        decimal_and_unit(s).ok_or_else(|| format!("{s:?} is not a duration like 30s or 2min"))?;
    let secs = match unit.to_ascii_lowercase().as_str() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, min or h)"
            ))
        }
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is outside 0 to 24 h"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses `123`, `4K`, `512M`, `2G`, `1T` (binary multiples; `KiB`/`KB`/`k` spellings too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let not_a_size = || format!("{s:?} is not a size like 512M, 1.5G or 2G");
    let mult: u64 = match unit
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    if num.contains('.') {
        // A fraction of a unit (1.5G, as a rate takes 2.5G), to the nearest byte.
        let n: f64 = num.parse().map_err(|_| not_a_size())?;
        let bytes = (n * mult as f64).round();
        return if bytes < u64::MAX as f64 {
            Ok(bytes as u64)
        } else {
            Err(format!("{s:?} is too large"))
        };
    }
    let n: u64 = num.parse().map_err(|_| not_a_size())?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_rate, parse_size};
    use std::time::Duration;

    #[test]
    fn rates_and_durations() {
        assert_eq!(parse_rate("500M"), Ok(500_000_000));
        assert_eq!(parse_rate("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_rate("200Mbit"), Ok(200_000_000));
        assert_eq!(parse_rate("100mbps"), Ok(100_000_000));
        // An upper-case B is bytes.
        assert_eq!(parse_rate("50MB/s"), Ok(400_000_000));
        assert_eq!(parse_rate("50MB"), Ok(400_000_000));
        assert_eq!(parse_rate("50MBps"), Ok(400_000_000));
        assert_eq!(parse_rate("1GiB/s"), Ok(8 * (1 << 30)));
        assert_eq!(parse_rate("400Mbps"), Ok(400_000_000));
        assert_eq!(parse_rate("400Mbit/s"), Ok(400_000_000));
        assert!(parse_rate("5 furlongs").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.3s"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("17"), Ok(17));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("x").is_err());
        assert!(parse_size("3Q").is_err());
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size(".").is_err());
        assert!(parse_size("1e30T").is_err());
    }
}
