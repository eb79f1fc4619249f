//! `sluice db` end to end against real PostgreSQL servers: throwaway clusters (`initdb`,
//! `pg_ctl`, run as `nobody` when the tests run as root) on private Unix sockets, stopped when
//! the test ends. The `sluice` binary runs as a user would, unprivileged where the test is root.
//!
//! Without PostgreSQL's server binaries these tests say so and pass, unless
//! `SLUICE_REQUIRE_POSTGRES` is set (`.ci/run` installs PostgreSQL and sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// PostgreSQL's server binaries, or `None` (and the reason printed) where they are missing.
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    let bin = found.pop().map(|(_, b)| b);
    if bin.is_none() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_POSTGRES").is_none(),
            "SLUICE_REQUIRE_POSTGRES is set but no PostgreSQL server is installed"
        );
        eprintln!(
            "skipped: no PostgreSQL server under /usr/lib/postgresql (apt install postgresql-15)"
        );
    }
    bin
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program` as `nobody` when this process is root (PostgreSQL refuses to run as root, and root
/// hides permission bugs), else as this user.
fn unprivileged(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A throwaway PostgreSQL cluster on a private socket directory.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Cluster {
    /// A cluster with two empty databases, `src` and `dst`.
    fn with_src_and_dst(bin: &Path) -> Cluster {
        let pg = Cluster::start(bin);
        pg.sql("postgres", "CREATE DATABASE src");
        pg.sql("postgres", "CREATE DATABASE dst");
        pg
    }

    fn start(bin: &Path) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = unprivileged(&bin.join(args[0]))
                .args(&args[1..])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        };
        if is_root() {
            let ok = Command::new("chown")
                .arg("65534:65534")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let sock = dir.path().display().to_string();
        run(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-l",
            dir.path().join("log").to_str().unwrap(),
            "-w",
            "-o",
            &format!("-F -k {sock} -p 5432 -c listen_addresses='' -c max_connections=50"),
            "start",
        ]);
        Cluster {
            dir,
            bin: bin.to_path_buf(),
        }
    }

    /// A libpq connection string for database `db`.
    fn url(&self, db: &str) -> String {
        format!(
            "host={} port=5432 user=postgres dbname={db}",
            self.dir.path().display()
        )
    }

    /// Runs SQL in `db` with psql, failing the test on any error; returns what it printed.
    fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(db),
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn file(&self, db: &str, path: &Path) {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(db),
                "-f",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
    }

    /// `pg_dump` of `db` with the lines that differ between any two dumps (comments, the
    /// per-dump `\restrict` key) left out; rows sorted (a copy need not keep their order).
    fn dump(&self, db: &str, what: &str) -> Vec<String> {
        // pg_dump fixes its date and float styles but not the time zone.
        let out = Command::new(self.bin.join("pg_dump"))
            .args([what, "-d", &self.url(db)])
            .env("PGTZ", "UTC")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump: {}", stderr(&out));
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .map(str::to_string)
            .collect();
        if what == "--data-only" {
            lines.sort();
        }
        lines
    }
}

impl Cluster {
    /// Stops the server at once (as a crash would), without a shutdown checkpoint.
    fn stop_now(&self) {
        let _ = unprivileged(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.path().join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A database server stopping in the middle of a copy ends it within seconds with the exit code
/// of a lost connection (3: the same command resumes) and one error naming that server, not as
/// a local failure. Every range used to be tried three times against the stopped server,
/// hundreds of warnings before the error (a new user's report).
#[test]
fn a_target_server_that_stops_mid_copy_is_a_lost_connection() {
    stopped_mid_copy(End::Target);
}

/// The source's server stopping: the same, naming the source.
#[test]
fn a_source_server_that_stops_mid_copy_is_a_lost_connection() {
    stopped_mid_copy(End::Source);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Source,
    Target,
}

fn stopped_mid_copy(which: End) {
    let Some(bin) = pg_bin() else { return };
    let src_pg = Cluster::with_src_and_dst(&bin);
    let dst_pg = Cluster::start(&bin);
    dst_pg.sql("postgres", "CREATE DATABASE dst");
    src_pg.sql(
        "src",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload bytea); \
         INSERT INTO big SELECT i, decode(repeat(md5(i::text), 8), 'hex') \
         FROM generate_series(1, 400000) i;",
    );
    // Its warnings go to a file: a pipe nobody reads while it runs would fill and stall it.
    let log = dst_pg.dir.path().join("copy.err");
    let mut copy = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")));
    // 5 MB/s: the 56 MB of rows take about 11 s, so the stop lands in the middle.
    copy.args(["db", "copy", &src_pg.url("src"), &dst_pg.url("dst")])
        .args(["--range-size", "1M", "--jobs", "2", "--max-rate", "40M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let copy = copy.spawn().unwrap();
    wait_for_units(&dst_pg, "dst", 2, Duration::from_secs(60));
    let stopped = Instant::now();
    let (gone, other) = match which {
        End::Target => (&dst_pg, &src_pg),
        End::Source => (&src_pg, &dst_pg),
    };
    gone.stop_now();
    let status = wait_or_kill(
        copy,
        Duration::from_secs(30),
        "still running 30 s after a server stopped",
    )
    .status;
    let took = stopped.elapsed();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "{took:?} after the stop: {err}"
    );
    assert!(err.contains("database server cannot be reached"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // One error, and no attempts at the units left: beside the progress lines, a handful of
    // lines at most.
    let error: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(error.len(), 1, "{err}");
    // After the copy's own context (which names both): what failed, naming the server that
    // stopped and not the other (each cluster has a socket directory of its own).
    let context = format!("to {}: ", dst_pg.url("dst"));
    let said = error[0].split_once(&context).map_or("", |(_, after)| after);
    let dir = |pg: &Cluster| pg.dir.path().display().to_string();
    assert!(said.contains(&dir(gone)), "{which:?}: {err}");
    assert!(!said.contains(&dir(other)), "{which:?}: {err}");
    let rest: Vec<&str> = err
        .lines()
        .filter(|l| !(l.contains(" units  ETA ") || l.contains("ranges committed")))
        .collect();
    assert!(rest.len() <= 3, "{} lines: {err}", rest.len());
    assert!(!err.contains("attempt"), "{err}");
}

/// A server that stops answering in the middle of a copy, its postmaster and every backend
/// stopped with SIGSTOP (connections open, nothing coming back, over a Unix socket), was waited
/// on for ever under a stale ETA (a new user's report). Within seconds a warning names it, as
/// the target or the source and by its socket, and the progress line's ETA goes blank; after
/// `--stall-timeout` the copy ends with exit 3 naming it; once the server runs again, the same
/// command resumes from the ranges committed and the databases are identical.
#[test]
fn a_target_server_that_stops_answering_is_named_and_ends_the_copy() {
    stops_answering_mid_copy(End::Target, Silent::Server);
}

/// The source's server stopping to answer: the same, naming the source.
#[test]
fn a_source_server_that_stops_answering_is_named_and_ends_the_copy() {
    stops_answering_mid_copy(End::Source, Silent::Server);
}

/// One backend of the target stopped in the middle of its `COPY`, the rest of the server
/// answering (as a process stuck on a disk that stopped answering would be): the copy waited
/// for it for ever, since the server's probe kept answering. Now the connection is named, with
/// what it was doing, and the copy ends after `--stall-timeout`; the rerun resumes.
#[test]
fn a_target_backend_that_stops_answering_is_named_and_ends_the_copy() {
    stops_answering_mid_copy(End::Target, Silent::Backend);
}

/// One backend of the source stopped while it sends a range's rows: the same.
#[test]
fn a_source_backend_that_stops_answering_is_named_and_ends_the_copy() {
    stops_answering_mid_copy(End::Source, Silent::Backend);
}

/// What stops answering.
#[derive(Clone, Copy, PartialEq)]
enum Silent {
    /// The whole server.
    Server,
    /// One backend, in the middle of a `COPY`.
    Backend,
}

fn stops_answering_mid_copy(which: End, what: Silent) {
    let Some(bin) = pg_bin() else { return };
    let src_pg = Cluster::with_src_and_dst(&bin);
    let dst_pg = Cluster::start(&bin);
    dst_pg.sql("postgres", "CREATE DATABASE dst");
    src_pg.sql(
        "src",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload bytea); \
         INSERT INTO big SELECT i, decode(repeat(md5(i::text), 8), 'hex') \
         FROM generate_series(1, 400000) i;",
    );
    let (src, dst) = (src_pg.url("src"), dst_pg.url("dst"));
    let log = dst_pg.dir.path().join("copy.err");
    // 5 MB/s: the 56 MB of rows take about 11 s, so the stop lands in the middle.
    let copy = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["db", "copy", &src, &dst, "--stall-timeout", "8"])
        .args(["--range-size", "1M", "--jobs", "2", "--max-rate", "40M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_units(&dst_pg, "dst", 2, Duration::from_secs(60));
    let silent = match which {
        End::Target => &dst_pg,
        End::Source => &src_pg,
    };
    // Declared after the clusters, so dropped (continued) before they are stopped.
    let frozen = match what {
        Silent::Server => Frozen::stop(silent),
        Silent::Backend => Frozen::stop_copy(silent),
    };
    let stopped = Instant::now();
    let status = wait_or_kill(
        copy,
        Duration::from_secs(40),
        "still running 40 s after a server stopped answering",
    )
    .status;
    let took = stopped.elapsed();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(16),
        "{took:?} after the stop: {err}"
    );
    let role = match which {
        End::Target => "target",
        End::Source => "source",
    };
    let server = format!(
        "the {role} server ({}/.s.PGSQL.5432)",
        silent.dir.path().display()
    );
    // Warned of at half the limit, before the error; then the error, naming it (and for one
    // backend, what its connection was doing).
    let (warned, ended) = match what {
        Silent::Server => (
            format!("sluice: warning: {server} has not answered for 4 s"),
            format!("{server} has not answered for 8 s (--stall-timeout)"),
        ),
        Silent::Backend => {
            // Its rows may all be in the connection's buffer when it stops: then the
            // range's commit waits.
            let doing = match which {
                End::Target if !err.contains("on the connection writing") => {
                    "committing public.big ("
                }
                End::Target => "writing public.big (",
                End::Source => "reading public.big (",
            };
            (
                format!(
                    "sluice: warning: {server} has not answered for 4 s on the connection {doing}"
                ),
                format!("{server} on the connection {doing}"),
            )
        }
    };
    let (w, e) = (err.find(&warned), err.find(&ended));
    assert!(w.is_some() && e.is_some() && w < e, "{err}");
    // Seconds into the silence, the ETA is no longer the one of the moment it began.
    // (With one backend stopped the others go on, and so may the ETA.)
    let progress: Vec<&str> = err.lines().filter(|l| l.contains(" units  ETA")).collect();
    assert!(
        what == Silent::Backend
            || progress
                .last()
                .is_some_and(|l| l.contains(" units  ETA -  ")),
        "{err}"
    );
    let error: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(error.len(), 1, "{err}");
    assert!(error[0].contains(&ended), "{err}");
    assert!(
        error[0].contains("has not answered for 8 s (--stall-timeout)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Running again: the same command resumes from what was committed, and ends well.
    drop(frozen);
    let committed = settled_units(&dst_pg, "dst");
    let out = sluice_db(&["db", "copy", &src, &dst]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("({committed} already there")),
        "{committed} units were committed: {err}"
    );
    let out = sluice_db(&["db", "verify", &src, &dst]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    assert_eq!(
        src_pg.dump("src", "--data-only"),
        dst_pg.dump("dst", "--data-only")
    );
}

/// A cluster's server stopped with SIGSTOP, the postmaster first (so it starts no other), then
/// every process it started: its connections stay open and nothing answers. Continued with
/// SIGCONT when dropped, whatever the test found.
struct Frozen(Vec<String>);

impl Frozen {
    fn stop(pg: &Cluster) -> Frozen {
        let pid_file = pg.dir.path().join("data/postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).unwrap();
        let postmaster = text.lines().next().unwrap().trim().to_string();
        let mut frozen = Frozen(Vec::new());
        assert!(frozen.signal(&postmaster), "kill -STOP {postmaster}");
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: the name may hold spaces and parentheses.
            let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
            if after.split_whitespace().nth(1) == Some(postmaster.as_str()) {
                // One that ended meanwhile is none the less stopped.
                frozen.signal(&entry.file_name().to_string_lossy());
            }
        }
        assert!(frozen.0.len() > 3, "the server's processes: {:?}", frozen.0);
        frozen
    }

    /// Stops the backend of `pg` that is running a `COPY`, once there is one, and nothing else.
    fn stop_copy(pg: &Cluster) -> Frozen {
        let start = Instant::now();
        let pid = loop {
            let pid = pg.sql(
                "postgres",
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' \
                 AND query ILIKE 'COPY %' ORDER BY pid LIMIT 1",
            );
            if !pid.is_empty() {
                break pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no backend ran a COPY"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut frozen = Frozen(Vec::new());
        assert!(frozen.signal(&pid), "kill -STOP {pid}");
        frozen
    }

    /// Stops `pid`; whether it was there to stop.
    fn signal(&mut self, pid: &str) -> bool {
        let stopped = kill("-STOP", pid);
        if stopped {
            self.0.push(pid.to_string());
        }
        stopped
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            // A backend may end on its own once continued, before its turn here.
            kill("-CONT", pid);
        }
    }
}

/// `kill SIGNAL PID`; whether the process was there.
fn kill(signal: &str, pid: &str) -> bool {
    Command::new("kill")
        .args([signal, pid])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A connection cut while its server still takes new ones (here the target's backends
/// terminated in the middle of their ranges) is a failure that passes: those ranges are sent
/// again and the copy ends well, where a stopped server ends it at once.
#[test]
fn a_connection_cut_while_the_server_still_answers_is_tried_again() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload bytea); \
         INSERT INTO big SELECT i, decode(repeat(md5(i::text), 8), 'hex') \
         FROM generate_series(1, 200000) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let copy = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["db", "copy", &src, &dst])
        .args(["--range-size", "1M", "--jobs", "2", "--max-rate", "40M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_units(&pg, "dst", 2, Duration::from_secs(60));
    let started = Instant::now();
    loop {
        let cut = pg.sql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = 'dst' AND application_name = 'sluice' AND query LIKE 'COPY%' \
               AND state = 'active'",
        );
        if cut != "0" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no range in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = wait_or_kill(copy, Duration::from_secs(120), "the copy did not end");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the server still takes connections"), "{err}");
    assert!(err.contains("(attempt 1 of 3)"), "{err}");
    assert!(!err.contains("(0 already there, 0 sent again)"), "{err}");
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM big"), "200000");
    let out = sluice_db(&["db", "verify", &src, &dst]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
}

/// A table another session holds in `ACCESS EXCLUSIVE` mode (an `ALTER TABLE` left open in a
/// transaction) stalled a copy at its start, without a word, for as long as that session lived.
/// The copy now gives up after `--lock-wait-timeout`, naming the table and the session; once
/// that session's transaction ends, the same command copies.
#[test]
fn a_table_locked_by_another_session_is_named_within_the_lock_wait_timeout() {
    use std::io::{BufRead, BufReader, Write};
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE held (id int PRIMARY KEY, v text); \
         INSERT INTO held SELECT i, md5(i::text) FROM generate_series(1, 1000) i; \
         CREATE TABLE free (id int PRIMARY KEY); INSERT INTO free VALUES (1);",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let mut holder = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", &src])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to_holder = holder.stdin.take().unwrap();
    writeln!(
        to_holder,
        "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_backend_pid();"
    )
    .unwrap();
    let mut pid = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut pid)
        .unwrap();
    let pid = pid.trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "the holder said {pid:?}");

    let started = Instant::now();
    let out = sluice_db(&["db", "copy", &src, &dst, "--lock-wait-timeout", "2s"]);
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}: {err}");
    for needed in [
        "public.held",
        &format!("session {pid}"),
        "--lock-wait-timeout",
    ] {
        assert!(err.contains(needed), "{needed:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");

    // A table left out by --tables is none of the run's business, as with `pg_dump -t`: its
    // size was read with the others', which waited for the lock, then failed.
    pg.sql("postgres", "CREATE DATABASE dst2");
    let dst2 = pg.url("dst2");
    for args in [
        vec!["db", "plan", &src, "--tables", "free"],
        vec!["db", "copy", &src, &dst2, "--tables", "free"],
        vec!["db", "verify", &src, &dst2, "--tables", "free"],
    ] {
        let started = Instant::now();
        let out = sluice_db(&[&args[..], &["--lock-wait-timeout", "10s"]].concat());
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{args:?} waited"
        );
    }

    // The holder's transaction ends: the same command copies.
    writeln!(to_holder, "ROLLBACK;").unwrap();
    drop(to_holder);
    holder.wait().unwrap();
    let out = sluice_db(&["db", "copy", &src, &dst, "--lock-wait-timeout", "2s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM held"), "1000");
}

/// A row crosses whole (one `COPY` row is one protocol message, read into the connection's
/// buffer entire), and the connection keeps the room it took: every idle connection that had
/// read a wide row held it to the end of the run, on top of the check's re-reading at the
/// target (two rows of 48 MiB: 248 MB peak; 120 and 112 MB rows: 503 MB, a new user's report).
/// A connection that read a row over 8 MiB is now closed after its range: the peak follows the
/// rows being read at once (about 150 MB here).
#[test]
fn a_wide_row_is_not_held_after_its_range() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    const ROW: u64 = 48 << 20;
    pg.sql(
        "src",
        &format!(
            "CREATE TABLE wa (id int PRIMARY KEY, b bytea); \
             INSERT INTO wa SELECT 1, decode(repeat(md5('x'), {}), 'hex'); \
             CREATE TABLE wb (id int PRIMARY KEY, t text); \
             INSERT INTO wb SELECT 1, repeat('z', {ROW});",
            ROW / 16
        ),
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let copy = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["db", "copy", &src, &dst])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The high-water mark of its resident memory, read until it exits.
    let status = format!("/proc/{}/status", copy.id());
    let mut peak_kib = 0u64;
    let reader = std::thread::spawn(move || {
        while let Ok(text) = std::fs::read_to_string(&status) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            match hwm {
                Some(kib) => peak_kib = peak_kib.max(kib),
                // A zombie: exited.
                None => break,
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        peak_kib
    });
    let out = wait_or_kill(copy, Duration::from_secs(120), "the copy did not end");
    let peak = reader.join().unwrap() << 10;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(peak > ROW, "{peak} bytes: not measured");
    assert!(
        peak < 4 * ROW,
        "peak RSS {} MiB for two rows of {} MiB",
        peak >> 20,
        ROW >> 20
    );
    for (table, column) in [("wa", "b"), ("wb", "t")] {
        let sum = format!("SELECT md5({column}::text) FROM {table}");
        assert_eq!(pg.sql("src", &sum), pg.sql("dst", &sum), "{table}");
    }
}

/// `sluice ARGS`, unprivileged when the test is root.
fn sluice_db(args: &[&str]) -> Output {
    let mut c = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")));
    c.args(args).stdin(Stdio::null());
    c.output().unwrap()
}

/// `sluice db send SRC TICKET OPTIONS` started as the unprivileged user, its output piped.
fn db_send(src: &str, ticket: &str, options: &[&str]) -> std::process::Child {
    unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["db", "send", src, ticket])
        .args(options)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pg_types.sql")
}

/// Every column type of the fixture (numeric NaN, Unicode text, jsonb, arrays of an enum,
/// bytea, timestamps with zones and infinities, domains, NULLs, TOASTed values, a partitioned
/// table, a table without a key, quoted names, one row, no rows) arrives exactly: `sluice db
/// verify` and an independent `pg_dump` agree, the schema matches, sequences continue where
/// the source's were, and no bookkeeping is left. Then one changed row and one deleted row at
/// the target are each named with their table and range, and `verify` exits 1.
#[test]
fn every_column_type_arrives_exactly_and_a_changed_row_is_named() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.file("src", &fixture());
    // Settings that change text output must not change what arrives: fewer float digits and
    // day-first dates at the source, another time zone at the target.
    pg.sql(
        "postgres",
        "ALTER DATABASE src SET extra_float_digits = 0; \
         ALTER DATABASE src SET DateStyle = 'SQL, DMY'; \
         ALTER DATABASE dst SET TimeZone = 'Asia/Kolkata'",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));

    // The plan: every table, its ranges, the server's row estimates and the indexes to build.
    pg.sql("src", "ANALYZE");
    let out = sluice_db(&["db", "plan", &src, "--range-size", "1M"]);
    assert!(out.status.success(), "plan: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("public.kinds ") && said.contains("rows"),
        "{said}"
    );
    let total = said.lines().last().unwrap_or_default();
    assert!(
        total.contains("rows to copy") && total.contains("of indexes to build"),
        "{said}"
    );
    let out = sluice_db(&["--json", "db", "plan", &src, "--range-size", "1M"]);
    assert!(out.status.success(), "plan: {}", stderr(&out));
    let last: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(last["event"], "estimate", "{last}");
    // kinds alone holds 20,000 rows (fixture); ANALYZE's estimate of so small a table is exact.
    assert!(last["rows_estimate"].as_u64().unwrap() >= 20_000, "{last}");
    assert!(last["index_bytes"].as_u64().unwrap() > 0, "{last}");

    // Blocks packed with zstd (as `auto` packs them on a slow link), three ranges at a time.
    let out = sluice_db(&[
        "--json",
        "db",
        "copy",
        &src,
        &dst,
        "--range-size",
        "1M",
        "--jobs",
        "3",
        "--compress",
        "zstd",
    ]);
    assert!(out.status.success(), "copy: {}", stderr(&out));
    // Progress per table: ranges, rows and bytes as they commit, the server's row estimate,
    // and an estimate of the table's end that reaches 0 with its last range.
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let kinds: Vec<&serde_json::Value> = events
        .iter()
        .filter(|v| v["event"] == "table" && v["table"] == "public.kinds")
        .collect();
    assert!(kinds.len() >= 2, "kinds takes several ranges: {events:?}");
    let rows: Vec<u64> = kinds.iter().map(|v| v["rows"].as_u64().unwrap()).collect();
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
    let last = kinds.last().unwrap();
    assert_eq!(last["ranges_done"], last["ranges_total"], "{last}");
    assert_eq!(last["rows"], 20_000, "{last}");
    assert!(last["rows_estimate"].as_u64().unwrap() >= 20_000, "{last}");
    assert!(last["bytes"].as_u64().unwrap() > 20_000 * 8, "{last}");
    assert_eq!(last["eta_seconds"], 0.0, "{last}");
    // Null while there is no rate to go by (the first second's).
    assert!(
        kinds[0]["eta_seconds"]
            .as_f64()
            .is_none_or(|eta| eta >= 0.0),
        "{}",
        kinds[0]
    );

    let out = sluice_db(&["db", "verify", &src, &dst, "--range-size", "1M"]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    assert!(stderr(&out).contains("0 differ"), "{}", stderr(&out));
    assert_eq!(pg.dump("src", "--data-only"), pg.dump("dst", "--data-only"));
    assert_eq!(
        pg.dump("src", "--schema-only"),
        pg.dump("dst", "--schema-only")
    );
    assert_eq!(
        pg.sql(
            "dst",
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_sluice'"
        ),
        "0"
    );
    assert_eq!(pg.sql("dst", "SELECT nextval('orders_id_seq')"), "5001");
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM events"), "10000");
    assert_eq!(pg.sql("dst", "SELECT sum(n) FROM mood_counts"), "20000");
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM no_columns"), "2");
    assert_eq!(
        pg.sql("dst", "SELECT r::text || ' ' || t::text FROM refs"),
        "kinds mood"
    );
    assert_eq!(
        pg.sql("dst", "SELECT n FROM happy_count"),
        pg.sql("src", "SELECT n FROM happy_count")
    );

    pg.sql("dst", "UPDATE kinds SET t = 'changed' WHERE id = 19999");
    pg.sql(
        "dst",
        "DELETE FROM \"Odd Schema\".\"Mixed Case \"\"Table\"\"\" WHERE \"x y\" = 7",
    );
    let out = sluice_db(&["db", "verify", &src, &dst, "--range-size", "1M"]);
    assert_eq!(out.status.code(), Some(1), "verify: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = said.lines().collect();
    // Two ranges, and the sequence this test moved on at the target with `nextval`.
    assert_eq!(lines.len(), 3, "{said}");
    assert!(
        lines.contains(&"public.orders_id_seq: sequence: last value 5000 against last value 5001"),
        "{said}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("public.kinds: \"id\" >= ") && !l.contains("< 19999")),
        "{said}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("\"Odd Schema\".\"Mixed Case \"\"Table\"\"\": all rows: 30002 rows")),
        "{said}"
    );
}

/// A `sluice db recv` process and its ticket.
struct DbRecv {
    child: std::process::Child,
    ticket: String,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl DbRecv {
    /// Started with `args`; with `--json` among them the ticket is read from its event.
    fn start(args: &[&str]) -> DbRecv {
        use std::io::BufRead;
        let mut child = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
            .args(["db", "recv", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let ticket = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v["ticket"].as_str().unwrap_or_default().to_string(),
            Err(_) => line.trim().to_string(),
        };
        assert!(ticket.starts_with("sluice1-"), "db recv printed {line:?}");
        DbRecv { child, ticket, out }
    }

    /// Waits up to `limit` for it to exit (killing it past that) and returns its status.
    fn wait_limit(mut self, limit: Duration) -> std::process::ExitStatus {
        self.wait_until(Instant::now() + limit)
    }

    fn wait_until(&mut self, deadline: Instant) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("db recv still running past its deadline");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`DbRecv::wait_limit`], and the JSON events it printed after its ticket (started with
    /// `--json`).
    fn wait_events(
        mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
        use std::io::Read;
        let status = self.wait_until(Instant::now() + limit);
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        let events = rest
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (status, events)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DbRecv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A row lost at the target after its range was checked on arrival (injected) is caught by the
/// re-read at the end, which names the table and range and removes that range; `db copy`, with
/// both ends at hand, then copies it again by itself, to identical databases. (`db send`, whose
/// receiver is elsewhere, exits 8 and asks for the rerun: see
/// `rows_changed_between_runs_are_found_and_the_next_run_repairs_them`.)
#[test]
fn a_row_lost_at_the_target_is_caught_at_the_end_and_copied_again() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE keyed (id int PRIMARY KEY, v text); \
         INSERT INTO keyed SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 40000) i; \
         CREATE TABLE loose AS SELECT i, md5(i::text) AS h FROM generate_series(1, 60000) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    for (table, says) in [
        ("public.keyed", "public.keyed (\"id\" "),
        ("public.loose", "public.loose (all rows)"),
    ] {
        let mut c = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")));
        let out = c
            .args(["db", "copy", &src, &dst, "--range-size", "1M"])
            .env("SLUICE_FAULT_DB_LOSE_ROW", table)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{table}: {err}");
        assert!(err.contains("copying them again now"), "{err}");
        assert_identical(&pg, &src, &dst);
        pg.sql("postgres", "DROP DATABASE dst");
        pg.sql("postgres", "CREATE DATABASE dst");
    }
}

/// One table of 200,000 keyed rows (about 27 MB), for copies to interrupt.
const BIG: &str = "CREATE TABLE big (id bigint PRIMARY KEY, payload bytea); \
     INSERT INTO big SELECT i, decode(repeat(md5(i::text), 6), 'hex') \
     FROM generate_series(1, 200000) i;";

/// The options of the resume tests: ranges small enough that an interrupted [`BIG`] leaves
/// several committed and several to go, two jobs, TCP.
const RESUME_OPTS: [&str; 6] = ["--range-size", "2M", "--jobs", "2", "--transport", "tcp"];

/// A cluster whose `src` holds `BIG`, and a `db send` of it into `dst` (with [`RESUME_OPTS`])
/// killed once it committed four units, as the resume tests start: the cluster, both URLs and
/// the units held. `None` without PostgreSQL.
fn big_copy_interrupted() -> Option<(Cluster, String, String, u64)> {
    let bin = pg_bin()?;
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql("src", BIG);
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    // At 5 MB/s the kill lands a few ranges after the fourth, never after the last: on a
    // loaded CI run at full speed every range had committed before it, and the resume tests
    // found nothing left to resume.
    let slow = [&RESUME_OPTS[..], &["--max-rate", "40M"]].concat();
    let held = send_interrupted(&pg, &src, &dst, &slow);
    Some((pg, src, dst, held))
}

/// `sluice db verify SRC DST` exits 0, and an independent `pg_dump --data-only` of both agrees.
fn assert_identical(pg: &Cluster, src: &str, dst: &str) {
    let out = sluice_db(&["db", "verify", src, dst]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    assert_eq!(pg.dump("src", "--data-only"), pg.dump("dst", "--data-only"));
}

/// `db send SRC` with `options` to a `db recv` into `dst` over TCP, killed once database `dst`
/// has committed four units; the receiver must notice. Returns the units it kept.
fn send_interrupted(pg: &Cluster, src: &str, dst: &str, options: &[&str]) -> u64 {
    let recv = DbRecv::start(&[dst, "--transport", "tcp"]);
    let mut send = db_send(src, &recv.ticket, options);
    wait_for_units(pg, "dst", 4, Duration::from_secs(60));
    send.kill().unwrap();
    send.wait().unwrap();
    assert!(
        !recv.wait_limit(Duration::from_secs(20)).success(),
        "the receiver must notice its sender died"
    );
    settled_units(pg, "dst")
}

/// Waits until the target has committed at least `n` units of an interrupted copy.
fn wait_for_units(pg: &Cluster, db: &str, n: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let exists = pg.sql(db, "SELECT to_regclass('_sluice.units') IS NOT NULL") == "t";
        let have = if exists {
            pg.sql(db, "SELECT count(*) FROM _sluice.units")
                .parse()
                .unwrap()
        } else {
            0
        };
        if have >= n {
            return have;
        }
        assert!(
            start.elapsed() < limit,
            "only {have} units committed after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number of committed units once it has stayed the same for half a second: a receiver
/// that exits (killed, or failing because its sender died) may leave a COMMIT already sent to
/// the server, which lands a moment after the process is gone.
fn settled_units(pg: &Cluster, db: &str) -> u64 {
    let mut last = wait_for_units(pg, db, 0, Duration::from_secs(1));
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = wait_for_units(pg, db, 0, Duration::from_secs(1));
        if now == last || start.elapsed() > Duration::from_secs(10) {
            return now;
        }
        last = now;
    }
}

/// A send and receive over TCP, killed with SIGKILL in the middle of a large table twice (the
/// sender first, the receiver the second time), then run to the end: the databases are
/// identical, nothing committed by an interrupted run is sent again, and what an interruption
/// loses is at most the ranges in flight (one per job).
#[test]
fn killed_sender_then_killed_receiver_resume_to_identical_databases() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload bytea, doc jsonb); \
         INSERT INTO big SELECT i, decode(repeat(md5(i::text), 6), 'hex'), \
                jsonb_build_object('i', i, 'pad', repeat('p', 100)) \
         FROM generate_series(1, 250000) i; \
         CREATE TABLE heap_only AS SELECT i, md5(i::text) AS h FROM generate_series(1, 100000) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let opts = RESUME_OPTS;
    let start_pair = || {
        let recv = DbRecv::start(&[&dst, "--transport", "tcp"]);
        let send = db_send(&src, &recv.ticket, &[&opts[..], &["--json"]].concat());
        (recv, send)
    };

    // First run: the sender dies.
    let (recv, mut send) = start_pair();
    let first = wait_for_units(&pg, "dst", 4, Duration::from_secs(60));
    send.kill().unwrap();
    send.wait().unwrap();
    let status = recv.wait_limit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "the receiver must notice its sender died"
    );
    wait_for_units(&pg, "dst", first, Duration::from_secs(1));
    let after_first = settled_units(&pg, "dst");

    // With --consistent an interrupted copy is not resumed: its snapshot is gone.
    let recv = DbRecv::start(&[&dst, "--transport", "tcp"]);
    let out = sluice_db(&[
        "db",
        "send",
        &src,
        &recv.ticket,
        "--consistent",
        "--transport",
        "tcp",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("--consistent"), "{}", stderr(&out));
    assert!(!recv.wait_limit(Duration::from_secs(20)).success());
    assert_eq!(
        wait_for_units(&pg, "dst", 0, Duration::from_secs(1)),
        after_first
    );

    // Second run: the receiver dies.
    let (recv, send) = start_pair();
    wait_for_units(&pg, "dst", after_first + 4, Duration::from_secs(60));
    recv.kill();
    let start = Instant::now();
    let out = send.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the sender must notice its receiver died"
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    let after_second = settled_units(&pg, "dst");
    assert!(after_second >= after_first + 4);

    // Third run: to the end, the receiver's events read too.
    let recv = DbRecv::start(&[&dst, "--transport", "tcp", "--json"]);
    let send = db_send(&src, &recv.ticket, &[&opts[..], &["--json"]].concat());
    let out = send.wait_with_output().unwrap();
    assert!(out.status.success(), "final run: {}", stderr(&out));
    let (status, received) = recv.wait_events(Duration::from_secs(20));
    assert!(status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = events
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("a summary line")
        .clone();
    // Progress per table: the last event of each counts every one of its ranges.
    let last = events
        .iter()
        .rev()
        .find(|v| v["event"] == "table" && v["table"] == "public.big")
        .expect("progress for public.big");
    assert_eq!(last["ranges_done"], last["ranges_total"], "{last}");
    // Everything the interrupted runs committed was taken as it was, and both ends say so.
    assert_eq!(summary["held"].as_u64().unwrap(), after_second, "{summary}");
    let theirs = received
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("the receiver's summary");
    assert_eq!(theirs["held"], summary["held"], "{theirs}");
    assert_eq!(theirs["units"], summary["units"], "{theirs}");
    // The receiver showed its progress each second as it went.
    let shown = received
        .iter()
        .filter(|v| v["event"] == "progress")
        .filter_map(|v| v["bytes_received"].as_u64())
        .max();
    if theirs["seconds"].as_f64().unwrap() > 2.5 {
        assert!(shown.is_some_and(|n| n > 0), "{received:?}");
    }
    let ranges = summary["ranges"].as_u64().unwrap();
    assert!(ranges >= 20, "{summary}");
    // Every unit (schema, ranges, big's indexes, the rest of the post-data section, sequences,
    // views, the check) committed exactly once.
    assert_eq!(
        summary["held"].as_u64().unwrap() + summary["units"].as_u64().unwrap(),
        ranges + 6,
        "{summary}"
    );
    assert_identical(&pg, &src, &dst);
}

/// The source is written to between an interrupted run and the next (rows past the old end, so
/// the table is cut into other ranges): the next run keeps every range committed before and
/// copies the rest, cut to fit around them, and the databases end identical. (Before, such a
/// resume was refused: "the table changed since the interrupted run".)
#[test]
fn rows_added_between_runs_are_copied_around_the_committed_ranges() {
    let Some((pg, src, dst, held)) = big_copy_interrupted() else {
        return;
    };
    assert!(held >= 4);

    pg.sql(
        "src",
        "INSERT INTO big SELECT i, decode(md5(i::text), 'hex') \
         FROM generate_series(200001, 260000) i; \
         DELETE FROM big WHERE id = 199999",
    );
    let mut args = vec!["db", "copy", &src, &dst, "--json"];
    args.extend(&RESUME_OPTS[..4]);
    let out = sluice_db(&args);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    let summary: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a summary line");
    assert_eq!(summary["held"].as_u64().unwrap(), held, "{summary}");
    // The summary counts the ranges as cut again: each unit (schema, ranges, big's indexes, the
    // rest of the post-data section, sequences, views, the check) committed once.
    assert_eq!(
        summary["held"].as_u64().unwrap() + summary["units"].as_u64().unwrap(),
        summary["ranges"].as_u64().unwrap() + 6,
        "{summary}"
    );
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM big"), "259999");
    assert_identical(&pg, &src, &dst);
}

/// `--max-rate` holds for rows as it does for files (it was ignored by `db copy` and `db send`,
/// which moved 77–85 MiB/s under a 25 MB/s ceiling): 6.3 MiB of `COPY` bytes at 16 Mbit/s take
/// about 3.3 s, where the copy takes half a second without it.
#[test]
fn max_rate_is_a_ceiling_for_rows_too() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload bytea); \
         INSERT INTO big SELECT i, \
         decode(md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text), 'hex') \
         FROM generate_series(1, 100000) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let started = Instant::now();
    let out = sluice_db(&[
        "db",
        "copy",
        &src,
        &dst,
        "--max-rate",
        "16M",
        "--compress",
        "off",
        "--json",
    ]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a summary line");
    let bytes = summary["bytes"].as_u64().unwrap();
    assert!(bytes > 6 << 20, "{summary}");
    // The first block goes at once; the rest wait their turn at 2 MB/s.
    let least = Duration::from_secs_f64((bytes - (1 << 20)) as f64 / 2e6);
    assert!(took >= least, "{bytes} bytes at 16 Mbit/s in {took:?}");
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM big"), "100000");
}

/// Rows changed at the source between an interrupted run and the next, inside ranges the first
/// run committed: the next run reads those ranges again at the source and its check at the end
/// finds them, names them and removes them; `db send` exits 8 and the run after it copies them,
/// `db copy` copies them at once, to identical databases. (They were kept as they were, and the
/// run ended well.) Keys moved past the end make the table's ranges cut again around an open
/// last range, kept now that it is checked.
#[test]
fn rows_changed_between_runs_are_found_and_the_next_run_repairs_them() {
    let Some((pg, src, dst, held)) = big_copy_interrupted() else {
        return;
    };
    assert!(held >= 4);

    // A row in every range changes; ten keys move past the end. The receiving end is
    // elsewhere: `db send` exits 8 naming the ranges it removed.
    pg.sql(
        "src",
        "UPDATE big SET payload = '\\x00' WHERE id % 5000 = 0; \
         UPDATE big SET id = id + 1000000 WHERE id <= 10;",
    );
    let recv = DbRecv::start(&[&dst, "--transport", "tcp"]);
    let out = db_send(&src, &recv.ticket, &RESUME_OPTS)
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("public.big (\"id\" "), "{err}");
    assert!(err.contains("run the same command again"), "{err}");
    assert!(!recv.wait_limit(Duration::from_secs(20)).success());
    // Changed again; `db copy` has both ends, and runs again by itself.
    pg.sql(
        "src",
        "UPDATE big SET payload = '\\x01' WHERE id % 7000 = 0",
    );
    let mut args = vec!["db", "copy", &src, &dst];
    args.extend(&RESUME_OPTS[..4]);
    let out = sluice_db(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("copying them again now"),
        "{}",
        stderr(&out)
    );
    assert_identical(&pg, &src, &dst);
}

/// A source written to all along: a resumed `db copy` finds rows changed in the ranges the
/// interrupted run committed, copies them anew, and finds others changed by then. It names the
/// cause (the source is being written to, a resumed copy cannot hold one moment of it) and what
/// to do, instead of asking for yet another rerun that would end the same way.
#[test]
fn a_source_written_to_all_along_is_named_after_the_second_try() {
    let Some((pg, src, dst, held)) = big_copy_interrupted() else {
        return;
    };
    assert!(held >= 4);

    // Changed before the rerun starts (its snapshot sees this), and all along while it runs
    // (the second try's snapshot sees more).
    pg.sql(
        "src",
        "UPDATE big SET payload = '\\x00' WHERE id % 4000 = 0",
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            // A row of every range changes every few tens of milliseconds; at most a minute.
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(60)
            {
                n += 1;
                pg.sql(
                    "src",
                    &format!("UPDATE big SET payload = '\\x{n:08x}' WHERE id % 4000 = 0"),
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        });
        let mut args = vec!["db", "copy", &src, &dst];
        args.extend(&RESUME_OPTS[..4]);
        let out = sluice_db(&args);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 1, "the writer never ran");
        out
    });
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("copying them again now"), "{err}");
    assert!(err.contains("public.big (\"id\" "), "{err}");
    assert!(err.contains("it is being written to"), "{err}");
    assert!(err.contains("into an empty target in one run"), "{err}");
}

/// A table without a key (cut by pages) resumes around the ranges an interrupted run
/// committed, also when the rerun cuts it otherwise (another `--range-size`) and rows were
/// updated in between (an update moves a row to another page, maybe into a committed range):
/// the check at the end finds what moved. It was refused ("the table changed") even when
/// nothing had.
#[test]
fn a_table_without_a_key_resumes_under_another_cut() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE heap AS SELECT i, repeat(md5(i::text), 3) AS t \
         FROM generate_series(1, 200000) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    send_interrupted(
        &pg,
        &src,
        &dst,
        &["--range-size", "2M", "--jobs", "2", "--transport", "tcp"],
    );
    pg.sql("src", "UPDATE heap SET t = 'moved' WHERE i % 20000 = 1");
    let out = sluice_db(&[
        "db",
        "copy",
        &src,
        &dst,
        "--range-size",
        "3M",
        "--jobs",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_identical(&pg, &src, &dst);
}

/// A rerun of an interrupted copy for other tables (another `--tables`) or after the source's
/// columns changed is refused by name before anything moves: it met raw SQL errors three times
/// ("relation does not exist"), or finished leaving the other set's tables empty. The same
/// tables and columns again resume.
#[test]
fn a_resume_of_other_tables_or_columns_is_refused_by_name() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql("src", BIG);
    pg.sql(
        "src",
        "CREATE TABLE other AS SELECT i FROM generate_series(1, 1000) i",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let opts = RESUME_OPTS;
    let held = send_interrupted(&pg, &src, &dst, &[&opts[..], &["--tables", "big"]].concat());

    let refused = |args: &[&str]| {
        let out = sluice_db(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("another schema than this run's"), "{err}");
        assert_eq!(settled_units(&pg, "dst"), held);
    };
    refused(&["db", "copy", &src, &dst]);
    pg.sql("src", "ALTER TABLE big ADD COLUMN extra int");
    refused(&["db", "copy", &src, &dst, "--tables", "big"]);
    pg.sql("src", "ALTER TABLE big DROP COLUMN extra");
    let out = sluice_db(&["db", "copy", &src, &dst, "--tables", "big"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sluice_db(&["db", "verify", &src, &dst, "--tables", "big"]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
}

/// `--no-verify` skips the re-read of the target, not the comparison of what an interrupted run
/// committed with the source as it is now: a row changed since in a committed range is found
/// (its range's digest read again at the source against the one recorded), the range is
/// removed and copied again, and the databases end identical. It was kept as it was, exit 0.
#[test]
fn a_no_verify_resume_still_finds_rows_changed_since() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql("src", BIG);
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let opts = [
        "--range-size",
        "2M",
        "--jobs",
        "2",
        "--transport",
        "tcp",
        "--no-verify",
    ];
    send_interrupted(&pg, &src, &dst, &opts);
    pg.sql(
        "src",
        "UPDATE big SET payload = '\\x00' WHERE id % 5000 = 0",
    );
    let mut args = vec!["db", "copy", &src, &dst];
    args.extend(&opts[..4]);
    args.push("--no-verify");
    let out = sluice_db(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("changed at the source since it was copied"),
        "{err}"
    );
    assert_eq!(pg.dump("src", "--data-only"), pg.dump("dst", "--data-only"));
}

/// A key with a few values far above the rest is cut where its rows are, not evenly by value
/// (which put every row but ten into one range of eleven): no range holds more than twice its
/// share, and the copy is exact.
#[test]
fn a_skewed_key_is_cut_where_the_rows_are() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE sk (id bigint PRIMARY KEY, p bytea); \
         INSERT INTO sk SELECT i, decode(repeat(md5(i::text), 6), 'hex') \
         FROM generate_series(1, 150000) i; \
         INSERT INTO sk SELECT 1000000000 + i, 'x' FROM generate_series(1, 10) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let out = sluice_db(&["--json", "db", "plan", &src, "--range-size", "2M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table: serde_json::Value = stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "table")
        .expect("the table's plan");
    let conditions: Vec<&str> = table["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(conditions.len() >= 5, "{table}");
    let share = 150_010 / conditions.len() as u64;
    for c in &conditions {
        let n: u64 = pg
            .sql("src", &format!("SELECT count(*) FROM sk WHERE {c}"))
            .parse()
            .unwrap();
        assert!(n <= 2 * share, "{c}: {n} rows, a share is {share}: {table}");
    }
    let out = sluice_db(&["db", "copy", &src, &dst, "--range-size", "2M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.dump("src", "--data-only"), pg.dump("dst", "--data-only"));
}

/// Large objects are not copied yet: a source that holds any is refused, naming them and the
/// way around, unless the user says to leave them behind.
#[test]
fn large_objects_are_refused_by_name_unless_left_behind() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE docs (id int PRIMARY KEY, body oid); \
         INSERT INTO docs VALUES (1, lo_from_bytea(0, 'a large object'));",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    // The plan refuses what the copy would, and plans once they are to be left behind.
    let plan = sluice_db(&["db", "plan", &src]);
    assert_eq!(plan.status.code(), Some(5), "{}", stderr(&plan));
    assert!(
        stderr(&plan).contains("1 large object"),
        "{}",
        stderr(&plan)
    );
    let plan = sluice_db(&["db", "plan", &src, "--skip-large-objects"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let out = sluice_db(&["db", "copy", &src, &dst]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 large object"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--skip-large-objects"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg.sql(
            "dst",
            "SELECT count(*) FROM pg_class WHERE relname = 'docs'"
        ),
        "0"
    );
    let out = sluice_db(&["db", "copy", &src, &dst, "--skip-large-objects", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM docs"), "1");
    // Left behind, said as a warning in the command's words and, under --json, as an event
    // (it was a log line with a timestamp and a module path, and no event).
    let left = format!("1 large object of {src} left behind");
    assert!(
        stderr(&out).contains(&format!("sluice: warning: {left}")),
        "{}",
        stderr(&out)
    );
    let warnings: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{}", stdout(&out));
    assert_eq!(warnings[0]["message"], left.as_str(), "{}", stdout(&out));
    // What was left behind is a difference `verify` names (it said "0 differ"), and so are
    // large objects of other bytes under the same OIDs; the same ones are none.
    let verify = |want: i32, says: &str| {
        let out = sluice_db(&["db", "verify", &src, &dst]);
        assert_eq!(out.status.code(), Some(want), "{}", stderr(&out));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(all.contains(says), "{all}");
    };
    verify(1, "large objects");
    let oid = pg.sql("src", "SELECT body FROM docs");
    pg.sql(
        "dst",
        &format!("SELECT lo_from_bytea({oid}, 'other bytes')"),
    );
    verify(1, "their bytes differ");
    pg.sql("dst", &format!("SELECT lo_put({oid}, 0, 'a large object')"));
    verify(0, "0 differ");
}

/// `--tables` cuts the schema as `pg_dump -t` cuts it, without its trap: the chosen tables
/// arrive with their indexes, sequences and the views over them, and with what they need (their
/// schema, types, domains, the partitioned table above a chosen partition); other tables, the
/// views that read them and the sequences they own do not. A chosen table's foreign key to a
/// table left out is refused by name before anything reaches the target.
#[test]
fn tables_take_their_schema_and_leave_the_rest() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE SCHEMA \"Sales Dept\"; \
         CREATE TYPE mood AS ENUM ('ok', 'sad'); \
         CREATE DOMAIN posint AS int CHECK (VALUE > 0); \
         CREATE TABLE customers (id serial PRIMARY KEY, name text); \
         CREATE TABLE \"Sales Dept\".\"Orders\" (id bigserial PRIMARY KEY, m mood, q posint, \
             note text); \
         CREATE INDEX ON \"Sales Dept\".\"Orders\" (note); \
         CREATE TABLE other (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, x text); \
         CREATE TABLE linked (id int PRIMARY KEY, c int REFERENCES customers (id)); \
         CREATE VIEW v_other AS SELECT * FROM other; \
         CREATE VIEW v_orders AS SELECT * FROM \"Sales Dept\".\"Orders\"; \
         CREATE MATERIALIZED VIEW mv_other AS SELECT count(*) FROM other; \
         CREATE TABLE events (id int, at date) PARTITION BY RANGE (at); \
         CREATE TABLE events_2024 PARTITION OF events \
             FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE TABLE events_2025 PARTITION OF events \
             FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 100) g; \
         INSERT INTO \"Sales Dept\".\"Orders\" (m, q, note) \
             SELECT 'ok', g, 'n' || g FROM generate_series(1, 1000) g; \
         INSERT INTO other (x) SELECT 'x' FROM generate_series(1, 10); \
         INSERT INTO events VALUES (1, '2024-05-01'), (2, '2025-05-01'); \
         CREATE TABLE parent_t (id int, note text); \
         CREATE TABLE child_t (extra int) INHERITS (parent_t); \
         INSERT INTO child_t VALUES (1, 'c', 7); \
         CREATE TABLE seq_owner (id serial PRIMARY KEY); \
         CREATE TABLE seq_sharer (id int DEFAULT nextval('seq_owner_id_seq'), v text); \
         INSERT INTO seq_sharer (v) VALUES ('a'), ('b'); \
         CREATE TABLE ruled (id int); \
         CREATE RULE log_to_other AS ON INSERT TO ruled DO ALSO INSERT INTO other (x) VALUES ('r')",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let relations = "SELECT string_agg(n.nspname || '.' || c.relname, ' ' \
         ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\") \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('public', 'Sales Dept')";

    let out = sluice_db(&["db", "copy", "--tables", "linked", &src, &dst]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("linked has a foreign key (linked_c_fkey) to customers"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pg.sql("dst", relations), "");

    let chosen = "\"Sales Dept\".\"Orders\",events_2024";
    let out = sluice_db(&["db", "copy", "--tables", chosen, &src, &dst]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each table's end is reported with its rows.
    assert!(
        stderr(&out).lines().any(
            |l| l.contains("Orders") && l.contains("its range committed (this run: 1,000 rows")
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg.sql("dst", relations),
        "Sales Dept.Orders Sales Dept.Orders_id_seq Sales Dept.Orders_note_idx \
         Sales Dept.Orders_pkey public.events public.events_2024 public.v_orders"
    );
    assert_eq!(
        pg.sql(
            "dst",
            "SELECT count(*) || ' ' || max(q) || ' ' || \
             (SELECT last_value FROM \"Sales Dept\".\"Orders_id_seq\") FROM v_orders"
        ),
        "1000 1000 1000"
    );
    assert_eq!(pg.sql("dst", "SELECT id FROM events"), "1");

    // A plain inheritance child takes its parent along (empty); a sequence a chosen table's
    // default uses stays though another table owns it; a rule that writes to a table left out
    // is refused by name.
    pg.sql("postgres", "CREATE DATABASE dst2");
    let dst2 = pg.url("dst2");
    let out = sluice_db(&["db", "copy", "--tables", "child_t,seq_sharer", &src, &dst2]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        pg.sql("dst2", "SELECT count(*) || ' ' || max(extra) FROM child_t"),
        "1 7"
    );
    assert_eq!(pg.sql("dst2", "SELECT count(*) FROM ONLY parent_t"), "0");
    assert_eq!(pg.sql("dst2", "SELECT nextval('seq_owner_id_seq')"), "3");
    assert_eq!(
        pg.sql(
            "dst2",
            "SELECT count(*) FROM pg_class WHERE relname = 'seq_owner'"
        ),
        "0"
    );
    pg.sql("postgres", "CREATE DATABASE dst3");
    let out = sluice_db(&["db", "copy", "--tables", "ruled", &src, &pg.url("dst3")]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ruled has a rule (log_to_other) that uses other"),
        "{}",
        stderr(&out)
    );
    let out = sluice_db(&["db", "verify", "--tables", chosen, &src, &dst]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `db plan --tables` refuses what `db copy --tables` refuses, in the same words and with the
/// same exit code: a chosen table's foreign key to a table left out (the plan listed the table
/// as if the copy would go, a new user's report). Nothing reaches the target either way.
#[test]
fn plan_refuses_a_foreign_key_to_a_table_left_out_as_copy_does() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE customers (id int PRIMARY KEY); \
         CREATE TABLE linked (id int PRIMARY KEY, c int REFERENCES customers (id)); \
         INSERT INTO customers VALUES (1); INSERT INTO linked VALUES (1, 1);",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let said = |out: &Output| {
        let err = stderr(out);
        let at = err.find("linked has a foreign key").expect(&err);
        err[at..].trim_end().to_string()
    };
    let copy = sluice_db(&["db", "copy", "--tables", "linked", &src, &dst]);
    assert_eq!(copy.status.code(), Some(5), "{}", stderr(&copy));
    let plan = sluice_db(&["db", "plan", "--tables", "linked", &src]);
    assert_eq!(plan.status.code(), Some(5), "{}", stderr(&plan));
    assert_eq!(said(&plan), said(&copy));
    assert!(
        said(&plan).contains("linked has a foreign key (linked_c_fkey) to customers"),
        "{}",
        said(&plan)
    );
    assert!(stdout(&plan).is_empty(), "{}", stdout(&plan));
    assert_eq!(
        pg.sql(
            "dst",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
    // With the table it needs, both go.
    let plan = sluice_db(&["db", "plan", "--tables", "linked,customers", &src]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(stdout(&plan).contains("public.linked"), "{}", stdout(&plan));
}

/// `--tables` reads its patterns as `pg_dump -t` does: an unquoted name folds to lower case, a
/// double-quoted part keeps its capitals, spaces and dots, `schema.table` qualifies, `*` and `?`
/// match outside quotes, and a name without a schema is looked for on the search path. Patterns
/// were matched as written, on the name or `schema.name` in any schema: `'Order Items'` chose
/// `"Order Items"` and `'"Order Items"'` nothing, where pg_dump does the opposite.
#[test]
fn tables_patterns_are_read_as_pg_dump_reads_them() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE \"Order Items\" (id int PRIMARY KEY, v text); \
         CREATE TABLE orders (id int PRIMARY KEY); \
         CREATE TABLE \"Orders\" (id int PRIMARY KEY); \
         CREATE SCHEMA \"Sales Dept\"; \
         CREATE TABLE \"Sales Dept\".\"Orders\" (id int PRIMARY KEY); \
         CREATE TABLE \"Sales Dept\".\"a.b\" (id int PRIMARY KEY); \
         INSERT INTO \"Order Items\" SELECT g, 'v' || g FROM generate_series(1, 100) g; \
         CREATE VIEW v_orders AS SELECT * FROM orders; \
         CREATE MATERIALIZED VIEW mv_orders AS SELECT * FROM orders; \
         CREATE SEQUENCE free_seq;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let planned = |tables: &str| -> Result<Vec<String>, String> {
        let out = sluice_db(&["--json", "db", "plan", "--tables", tables, &src]);
        if !out.status.success() {
            return Err(format!("{:?}: {}", out.status.code(), stderr(&out)));
        }
        let mut names: Vec<String> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "table")
            .map(|v| v["table"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        Ok(names)
    };
    for (pattern, want) in [
        ("\"Order Items\"", vec!["public.\"Order Items\""]),
        ("public.\"Order Items\"", vec!["public.\"Order Items\""]),
        ("\"Order\"?\"Items\"", vec!["public.\"Order Items\""]),
        ("\"Order \"*", vec!["public.\"Order Items\""]),
        // Mixed case, unquoted: folded, as pg_dump folds it.
        ("ORDERS", vec!["public.orders"]),
        ("Public.Orders", vec!["public.orders"]),
        ("\"Orders\"", vec!["public.\"Orders\""]),
        // Not on the search path: only by its schema.
        (
            "\"Sales Dept\".\"Orders\"",
            vec!["\"Sales Dept\".\"Orders\""],
        ),
        (
            "\"Sales Dept\".*",
            vec!["\"Sales Dept\".\"Orders\"", "\"Sales Dept\".\"a.b\""],
        ),
        ("\"Sales Dept\".\"a.b\"", vec!["\"Sales Dept\".\"a.b\""]),
        (
            "*.\"Orders\"",
            vec!["\"Sales Dept\".\"Orders\"", "public.\"Orders\""],
        ),
        // A comma inside quotes is part of the name; outside, it separates patterns.
        (
            "\"Order Items\",orders",
            vec!["public.\"Order Items\"", "public.orders"],
        ),
    ] {
        let mut want: Vec<String> = want.into_iter().map(String::from).collect();
        want.sort();
        assert_eq!(planned(pattern), Ok(want), "--tables {pattern}");
    }
    // Each table as it is shown, given back to --tables, is that table alone.
    let every = planned("*.*").unwrap();
    assert!(every.len() >= 5, "{every:?}");
    for name in &every {
        assert_eq!(planned(name), Ok(vec![name.clone()]), "--tables {name}");
    }
    // Unquoted, a name with capitals and a space is folded and matches nothing (as pg_dump's
    // "no matching tables"), and nothing moves.
    for pattern in ["Order Items", "Orders_none", "\"orders\".orders"] {
        let e = planned(pattern).unwrap_err();
        assert!(
            e.starts_with("Some(5)") && e.contains("no table matches --tables"),
            "{pattern}: {e}"
        );
    }
    let e = planned("db.public.orders").unwrap_err();
    assert!(
        e.starts_with("Some(2)") && e.contains("too many dotted names"),
        "{e}"
    );
    // A quote left open is a syntax error, said at once (it was "no table matches").
    for pattern in ["\"My Schema", "\"Sales Dept\".\"Orders", "\"a,b"] {
        let e = planned(pattern).unwrap_err();
        assert!(
            e.starts_with("Some(2)") && e.contains("syntax error: a double quote is left open"),
            "{pattern}: {e}"
        );
    }
    // What is not a table is named for what it is (it was "no table matches", as a typo);
    // beside a real miss, each is said.
    for (pattern, what) in [
        (
            "v_orders",
            "public.v_orders is a view: --tables chooses tables",
        ),
        ("mv_orders", "public.mv_orders is a materialized view"),
        ("free_seq", "public.free_seq is a sequence"),
        ("public.orders_pkey", "public.orders_pkey is an index"),
    ] {
        let e = planned(pattern).unwrap_err();
        assert!(
            e.starts_with("Some(5)") && e.contains(what),
            "{pattern}: {e}"
        );
        assert!(!e.contains("no table matches"), "{pattern}: {e}");
    }
    let e = planned("v_orders,nothing_here").unwrap_err();
    assert!(
        e.contains("public.v_orders is a view")
            && e.contains("no table matches --tables nothing_here"),
        "{e}"
    );
    // And the copy takes what the plan shows.
    let out = sluice_db(&["db", "copy", "--tables", "\"Order Items\"", &src, &dst]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM \"Order Items\""), "100");
    assert_eq!(
        pg.sql("dst", "SELECT count(*) FROM pg_tables WHERE schemaname <> 'pg_catalog' AND schemaname <> 'information_schema'"),
        "1"
    );
    let out = sluice_db(&["db", "verify", "--tables", "\"Order Items\"", &src, &dst]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
}

/// The database commands show and take only the flags that do something for them: the file
/// commands' own (`--inplace`, `--no-direct`, …) are neither listed by `--help` nor accepted,
/// and a command that moves nothing over a link (`plan`, `verify`) takes no link tuning. A flag
/// given where it does nothing is a usage error (2) naming it, before or after the command's
/// name; the file commands keep every flag. `--stall-timeout` is every database command's
/// too: how long a server may leave it unanswered.
#[test]
fn db_commands_show_and_take_only_their_own_flags() {
    let help = |args: &[&str]| {
        let out = sluice_db(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let file_only = [
        "--inplace",
        "--delete",
        "--restart",
        "--rehash",
        "--no-direct",
        "--no-uring",
        "--max-ring",
    ];
    let link = ["--max-rate", "--transport", "--block-size", "--compress"];
    let db = help(&["db", "--help"]);
    for flag in file_only.iter().chain(&link) {
        assert!(!db.contains(flag), "db --help lists {flag}: {db}");
    }
    for command in ["copy", "send", "recv"] {
        let said = help(&["db", command, "--help"]);
        for flag in file_only {
            assert!(
                !said.contains(flag),
                "db {command} --help lists {flag}: {said}"
            );
        }
        for flag in link {
            assert!(
                said.contains(flag),
                "db {command} --help lacks {flag}: {said}"
            );
        }
    }
    // What only a copy does (a new user found plan and verify taking them, doing nothing).
    let copy_only = [
        "--no-verify",
        "--consistent",
        "--no-owner",
        "--no-privileges",
    ];
    for command in ["copy", "send"] {
        let said = help(&["db", command, "--help"]);
        for flag in copy_only.iter().chain(&["--skip-large-objects"]) {
            assert!(
                said.contains(flag),
                "db {command} --help lacks {flag}: {said}"
            );
        }
    }
    assert!(help(&["db", "plan", "--help"]).contains("--skip-large-objects"));
    assert!(!help(&["db", "verify", "--help"]).contains("--skip-large-objects"));
    for command in ["plan", "verify"] {
        let said = help(&["db", command, "--help"]);
        assert!(said.contains("--tables"), "{said}");
        for flag in file_only.iter().chain(&link).chain(&copy_only) {
            assert!(
                !said.contains(flag),
                "db {command} --help lists {flag}: {said}"
            );
        }
    }
    let files = help(&["copy", "--help"]);
    for flag in file_only.iter().chain(&link) {
        assert!(files.contains(flag), "copy --help lacks {flag}: {files}");
    }
    // Refused by name, before any connection (these strings name no server).
    for args in [
        vec!["db", "copy", "a", "b", "--inplace"],
        vec!["db", "send", "a", "ticket", "--no-direct"],
        vec!["db", "recv", "b", "--rehash"],
        vec!["db", "plan", "a", "--max-rate", "1G"],
        vec!["db", "verify", "a", "b", "--transport", "tcp"],
        vec!["--inplace", "db", "copy", "a", "b"],
        vec!["--max-ring", "8", "db", "send", "a", "ticket"],
        vec!["--max-rate", "1G", "db", "plan", "a"],
        vec!["db", "verify", "a", "b", "--no-verify"],
        vec!["db", "plan", "a", "--consistent"],
        vec!["db", "verify", "a", "b", "--skip-large-objects"],
    ] {
        let out = sluice_db(&args);
        let flag = args.iter().find(|a| a.starts_with("--")).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
    }
    let out = sluice_db(&["--inplace", "db", "copy", "a", "b"]);
    assert!(
        stderr(&out).contains("--inplace applies to file transfers, not to sluice db copy"),
        "{}",
        stderr(&out)
    );
    // Listed by every database command, and taken (and checked) after its name or before.
    for command in ["copy", "send", "recv", "plan", "verify"] {
        let said = help(&["db", command, "--help"]);
        assert!(said.contains("--stall-timeout"), "db {command}: {said}");
    }
    for args in [
        vec!["db", "plan", "a", "--stall-timeout", "0"],
        vec!["db", "recv", "b", "--stall-timeout", "0"],
        vec!["--stall-timeout", "0", "db", "verify", "a", "b"],
    ] {
        let out = sluice_db(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--stall-timeout must be 1 to 604800 seconds"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// What a pg_restore user gets wrong about the target is said before any row moves, with the
/// exit code of its kind: a target that already holds tables (a second copy into the same
/// database) exits 5 and leaves no bookkeeping behind; `db recv` into a database that does not
/// exist fails before printing a ticket; a ticket with a wrong secret is refused (4), as for files.
#[test]
fn target_mistakes_are_named_before_any_data_moves() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    // A --tables pattern that matches nothing is said, as pg_dump -t says it, not a copy of
    // nothing (with the whole schema) and exit 0.
    let out = sluice_db(&["db", "copy", "--tables", "nomatch*", &src, &dst]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no table matches --tables nomatch*"),
        "{}",
        stderr(&out)
    );
    // So is one among others (a misspelt name would leave its table behind unsaid), and an
    // empty one (which chose every table).
    for (tables, said) in [
        ("t,nomatch*", "no table matches --tables nomatch*"),
        ("", "an empty --tables pattern"),
    ] {
        let out = sluice_db(&["db", "copy", "--tables", tables, &src, &dst]);
        // 5: refused by the database's content; 2: bad usage.
        let code = if tables.is_empty() { 2 } else { 5 };
        assert_eq!(out.status.code(), Some(code), "{tables}: {}", stderr(&out));
        assert!(stderr(&out).contains(said), "{tables}: {}", stderr(&out));
    }
    assert_eq!(
        pg.sql(
            "dst",
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "0"
    );
    let out = sluice_db(&["db", "copy", &src, &dst]);
    assert!(out.status.success(), "copy: {}", stderr(&out));

    let bookkeeping = "SELECT count(*) FROM pg_namespace WHERE nspname = '_sluice'";
    let started = Instant::now();
    let out = sluice_db(&["db", "copy", &src, &dst]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&out).contains(
            "already holds tables, views, sequences, types, functions or schemas of its own \
             (public.t)"
        ),
        "{}",
        stderr(&out)
    );
    // Nor a target holding no table but a schema and a type of the source's names: the
    // schema's CREATE would fail on them, three times over (a new user's report).
    pg.sql("postgres", "CREATE DATABASE typed");
    pg.sql(
        "typed",
        "CREATE SCHEMA app; CREATE TYPE app.mood AS ENUM ('x'); \
         CREATE FUNCTION app.one() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    );
    let out = sluice_db(&["db", "copy", &src, &pg.url("typed")]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(app (schema), app.mood (type), app.one() (function))"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pg.sql("typed", bookkeeping), "0");
    assert_eq!(pg.sql("dst", bookkeeping), "0");
    assert_eq!(pg.sql("dst", "SELECT count(*) FROM t"), "1000");

    let missing = pg.url("no_such_db");
    let out = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .args(["db", "recv", "--listen", "127.0.0.1:0", &missing])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "printed a ticket");
    assert!(stderr(&out).contains("no_such_db"), "{}", stderr(&out));

    pg.sql("postgres", "CREATE DATABASE dst2");
    let recv = DbRecv::start(&[&pg.url("dst2")]);
    // The secret is the ticket's third dash-separated field: one character changed.
    let mut fields: Vec<String> = recv.ticket.split('-').map(str::to_owned).collect();
    let first = if fields[2].starts_with('0') { "1" } else { "0" };
    fields[2] = format!("{first}{}", &fields[2][1..]);
    let wrong = fields.join("-");
    let out = sluice_db(&["db", "send", &src, &wrong]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong secret"), "{}", stderr(&out));
    recv.kill();

    // The ticket of a file receiver: refused at once (it used to stall for 120 s).
    let d = tempfile::tempdir().unwrap();
    let files = Recv::start(&d.path().join("files"));
    let started = Instant::now();
    let out = sluice_db(&["db", "send", &src, &files.ticket]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the ticket that `sluice db recv` prints"),
        "{}",
        stderr(&out)
    );
}

/// No server where the connection string points: a clear error naming it, in seconds.
#[test]
fn a_database_that_is_not_there_is_named_at_once() {
    let d = tempfile::tempdir().unwrap();
    let conn = format!("host={} dbname=nothing", d.path().display());
    for args in [
        vec!["db", "plan", conn.as_str()],
        vec!["db", "copy", conn.as_str(), "nothing_either"],
        vec!["db", "verify", conn.as_str(), conn.as_str()],
    ] {
        let start = Instant::now();
        let out = sluice().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(start.elapsed() < Duration::from_secs(10), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("connecting to host="), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let same = sluice()
        .args(["db", "copy", &conn, &conn])
        .output()
        .unwrap();
    assert!(
        stderr(&same).contains("the same database"),
        "{}",
        stderr(&same)
    );
    assert_eq!(
        same.status.code(),
        Some(2),
        "a usage error: {}",
        stderr(&same)
    );
    let out = sluice()
        .args(["db", "plan", "postgres://[::1"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("connection string"),
        "{}",
        stderr(&out)
    );
}

/// A server that takes the connection and never answers (a stopped process, a proxy with
/// nothing behind it) is named within the connection's limit: libpq's default would wait for
/// ever. Here the string sets 2 s; without one the limit is 15 s.
#[test]
fn a_server_that_never_answers_is_named_within_the_limit() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Takes connections and holds them, saying nothing, until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(8) {
            held.push(c);
        }
    });
    let conn = format!("host=127.0.0.1 port={port} user=u dbname=d connect_timeout=2");
    let start = Instant::now();
    let out = sluice().args(["db", "plan", &conn]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "no answer from the server at 127.0.0.1:{port} within 2 s"
        )),
        "{err}"
    );
}

/// A connection that reaches no server says what it tried, as libpq does: the socket file or
/// the host and port (a wrong port on a socket directory said only "No such file or
/// directory"). An empty connection string, most often a shell variable left unset, is a
/// usage error naming which one (it said "connecting to : …"). And while a target takes the
/// connection but never answers, the progress line shows no ETA (it read "ETA 1032192 s").
#[test]
fn a_connection_that_reaches_no_server_says_what_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("host={} port=55439 dbname=d", dir.path().display());
    let out = sluice().args(["db", "plan", &socket]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let tried = format!(
        "connection to server on socket {}/.s.PGSQL.55439 failed: No such file or directory",
        dir.path().display()
    );
    assert!(err.contains(&tried), "{err}");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let tcp = format!("host=127.0.0.1 port={port} dbname=d");
    let out = sluice().args(["db", "plan", &tcp]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let tried = format!("connection to server at 127.0.0.1:{port} failed: Connection refused");
    assert!(err.contains(&tried), "{err}");
    // Empty strings, at once and by name.
    for (args, which) in [
        (vec!["db", "plan", ""], "source"),
        (vec!["db", "copy", &tcp, " "], "target"),
        (vec!["db", "verify", "", &tcp], "first"),
    ] {
        let out = sluice().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("the {which} connection string is empty")),
            "{args:?}: {err}"
        );
    }

    // A target that takes the connection and never answers: no ETA while nothing moves.
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(8) {
            held.push(c);
        }
    });
    let silent = format!("host=127.0.0.1 port={port} user=u dbname=d connect_timeout=3");
    let out = sluice_db(&["db", "copy", &pg.url("src"), &silent]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" units  ETA")).collect();
    assert!(!lines.is_empty(), "{err}");
    assert!(lines.iter().all(|l| l.contains(" units  ETA -  ")), "{err}");
}

/// Sequences arrive where the source's stand, also one whose next value is its last (an
/// identity restarted, `setval(…, false)`): such a sequence was left at its start, and the
/// target's next insert failed on a key already there. `verify` compares sequences and names
/// one that moved. An inherited table whose columns are in another order than its parent's
/// (a dump lists them in the parent's) verifies as equal.
#[test]
fn sequences_arrive_where_they_stand_and_verify_compares_them() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text); \
         INSERT INTO t (v) VALUES ('a'), ('b'); \
         ALTER TABLE t ALTER COLUMN id RESTART WITH 500; \
         CREATE SEQUENCE later; SELECT setval('later', 50, false); \
         CREATE SEQUENCE down INCREMENT -1; SELECT nextval('down'), nextval('down'); \
         CREATE SEQUENCE \"Odd 'name'\"; SELECT nextval('\"Odd ''name''\"'); \
         CREATE TABLE parent (x int, y int, z int); \
         CREATE TABLE child (y int, z int, x int); ALTER TABLE child INHERIT parent; \
         INSERT INTO child VALUES (1, 2, 3);",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let out = sluice_db(&["db", "copy", &src, &dst]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sluice_db(&["db", "verify", &src, &dst]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // Sequences are counted as sequences, not as ranges (t, parent and child: three ranges).
    assert!(
        stderr(&out).contains("sluice: 3 ranges, 4 sequences compared, 0 differ"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg.sql("dst", "INSERT INTO t (v) VALUES ('c') RETURNING id"),
        "500"
    );
    assert_eq!(pg.sql("dst", "SELECT nextval('later')"), "50");
    assert_eq!(pg.sql("dst", "SELECT nextval('down')"), "-3");
    assert_eq!(pg.sql("dst", "SELECT nextval('\"Odd ''name''\"')"), "2");
    // The target's sequences moved on (and t gained a row): each is named.
    let out = sluice_db(&["db", "verify", &src, &dst]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stdout(&out);
    for name in [
        "public.t_id_seq",
        "public.later",
        "public.down",
        "public.\"Odd 'name'\"",
    ] {
        assert!(
            said.contains(&format!("{name}: sequence: ")),
            "{name}: {said}"
        );
    }
    assert!(
        said.contains("next value 500 (none handed out) against last value 500"),
        "{said}"
    );
    assert!(
        stderr(&out)
            .contains("sluice: 3 ranges, 4 sequences compared, 5 differ (1 range, 4 sequences)"),
        "{}",
        stderr(&out)
    );
    let out = sluice_db(&["--json", "db", "verify", &src, &dst]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "summary")
        .unwrap();
    assert_eq!(
        (
            &summary["ranges"],
            &summary["sequences"],
            &summary["differences"],
            &summary["ranges_differing"],
            &summary["sequences_differing"]
        ),
        (&3.into(), &4.into(), &5.into(), &1.into(), &4.into()),
        "{summary}"
    );
    // Tables one side lacks are compared whole, one range each: never more differ than were
    // compared (it said "2 ranges … compared, 30 differ" of a target lacking most tables).
    pg.sql("dst", "DROP TABLE child; CREATE TABLE extra (i int)");
    let out = sluice_db(&["db", "verify", &src, &dst]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "sluice: 4 ranges (including 1 table missing in the second database and 1 table \
             only in the second, one range each), 4 sequences compared, 7 differ (3 ranges, 4 \
             sequences)"
        ),
        "{}",
        stderr(&out)
    );
    let out = sluice_db(&["--json", "db", "verify", &src, &dst]);
    let summary = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "summary")
        .unwrap();
    assert_eq!(
        (
            &summary["ranges"],
            &summary["tables_missing"],
            &summary["tables_only_in_second"],
            &summary["ranges_differing"]
        ),
        (&4.into(), &1.into(), &1.into(), &3.into()),
        "{summary}"
    );
}

/// A copy interrupted after its sequences were set, and resumed after the source's sequences
/// moved on: the resumed run sets them again from its own snapshot (it used to keep the first
/// run's values and report success), and refreshes the materialized views again too.
#[test]
fn a_resumed_copy_sets_the_sequences_of_its_own_snapshot() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE t (id serial PRIMARY KEY, v text); \
         INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, 1000) i; \
         CREATE SEQUENCE counter; SELECT setval('counter', 5); \
         CREATE MATERIALIZED VIEW n AS SELECT count(*) AS rows FROM t;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let out = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .env("SLUICE_FAULT_DB_DIE_AFTER", "sequences")
        .args(["db", "copy", &src, &dst])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the copy was to die: {}",
        stderr(&out)
    );
    assert_eq!(pg.sql("dst", "SELECT last_value FROM counter"), "5");
    pg.sql(
        "src",
        "SELECT setval('counter', 1000); SELECT nextval('t_id_seq'); \
         INSERT INTO t (v) VALUES ('later'); REFRESH MATERIALIZED VIEW n;",
    );
    let out = sluice_db(&["db", "copy", &src, &dst]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_eq!(pg.sql("dst", "SELECT last_value FROM counter"), "1000");
    assert_eq!(
        pg.sql("dst", "SELECT last_value FROM t_id_seq"),
        pg.sql("src", "SELECT last_value FROM t_id_seq")
    );
    assert_eq!(pg.sql("dst", "SELECT rows FROM n"), "1001");
    assert_identical(&pg, &src, &dst);
}

/// An index, a column's type, NOT NULL, a default, a comment or a grant changed at the source
/// between an interrupted copy and its rerun: the rerun refuses, naming the change, instead of
/// finishing without it (the interrupted run's schema steps are not applied again); with the
/// schema as it was (a grant revoked again included), it resumes.
#[test]
fn a_schema_changed_since_the_interrupted_copy_is_refused() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 1000) i;",
    );
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let out = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .env("SLUICE_FAULT_DB_DIE_AFTER", "pre-data")
        .args(["db", "copy", &src, &dst])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the copy was to die: {}",
        stderr(&out)
    );
    pg.sql("postgres", "CREATE ROLE late_reader");
    // Each change, then its undoing: a column's type, NOT NULL, default, a comment and a
    // grant went unnoticed before (exit 0 with the older schema at the target).
    for (change, undo) in [
        ("CREATE INDEX t_v ON t (v)", "DROP INDEX t_v"),
        (
            "ALTER TABLE t ALTER id TYPE bigint",
            "ALTER TABLE t ALTER id TYPE int",
        ),
        (
            "ALTER TABLE t ALTER v SET NOT NULL",
            "ALTER TABLE t ALTER v DROP NOT NULL",
        ),
        (
            "ALTER TABLE t ALTER v SET DEFAULT 'x'",
            "ALTER TABLE t ALTER v DROP DEFAULT",
        ),
        (
            "COMMENT ON TABLE t IS 'later'",
            "COMMENT ON TABLE t IS NULL",
        ),
        (
            "GRANT SELECT ON t TO late_reader",
            "REVOKE SELECT ON t FROM late_reader",
        ),
    ] {
        pg.sql("src", change);
        let out = sluice_db(&["db", "copy", &src, &dst]);
        assert_eq!(out.status.code(), Some(5), "{change}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("another schema than this run's"),
            "{change}: {}",
            stderr(&out)
        );
        pg.sql("src", undo);
    }
    let out = sluice_db(&["db", "copy", &src, &dst]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_identical(&pg, &src, &dst);
}

/// Into a database its owner, a role without superuser rights, can write to: the source's
/// owners (`ALTER … OWNER TO postgres`) fail there, as with pg_restore; `--no-owner` and
/// `--no-privileges` leave them out, as pg_restore's `-O -x`, and the objects belong to the
/// target's user.
#[test]
fn no_owner_restores_as_a_user_who_is_no_superuser() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql(
        "src",
        "CREATE ROLE reader; \
         CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 1000) i; \
         GRANT SELECT ON t TO reader; \
         CREATE VIEW tv AS SELECT id FROM t;",
    );
    pg.sql("postgres", "CREATE ROLE owner1 LOGIN");
    pg.sql("postgres", "CREATE DATABASE mine OWNER owner1");
    let src = pg.url("src");
    let mine = pg.url("mine").replace("user=postgres", "user=owner1");
    let out = sluice_db(&["db", "copy", &src, &mine]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("must be"), "{}", stderr(&out));
    // A permission the target lacks is no failure that passes: tried once, said once.
    assert!(!stderr(&out).contains("attempt"), "{}", stderr(&out));
    pg.sql("postgres", "DROP DATABASE mine");
    pg.sql("postgres", "CREATE DATABASE mine OWNER owner1");
    let out = sluice_db(&["db", "copy", "--no-owner", "--no-privileges", &src, &mine]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        pg.sql(
            "mine",
            "SELECT tableowner FROM pg_tables WHERE tablename = 't'"
        ),
        "owner1"
    );
    assert_eq!(pg.sql("mine", "SELECT count(*) FROM t"), "1000");
    assert_eq!(pg.sql("mine", "SELECT count(*) FROM tv"), "1000");
    let out = sluice_db(&["db", "verify", &src, &mine]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
}

/// Every range of an interrupted copy changed at the source before the rerun: its check at the
/// end removes them all and `db copy` copies them again by itself. With dozens of ranges the
/// message naming them was cut at the link's 4 KiB frame, with it what to do, and the rerun
/// ended in exit 8 instead (a new user's report).
#[test]
fn dozens_of_ranges_changed_since_an_interrupted_copy_are_copied_again() {
    let Some(bin) = pg_bin() else { return };
    let pg = Cluster::with_src_and_dst(&bin);
    pg.sql("src", BIG);
    let (src, dst) = (pg.url("src"), pg.url("dst"));
    let out = unprivileged(Path::new(env!("CARGO_BIN_EXE_sluice")))
        .env("SLUICE_FAULT_DB_DIE_AFTER", "post-data")
        .args(["db", "copy", "--range-size", "1M", &src, &dst])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the copy was to die: {}",
        stderr(&out)
    );
    let ranges: u64 = pg
        .sql(
            "dst",
            "SELECT count(*) FROM _sluice.units WHERE key LIKE 'rows %'",
        )
        .parse()
        .unwrap();
    assert!(ranges >= 25, "{ranges} ranges");
    pg.sql("src", "UPDATE big SET payload = payload || '\\x00'::bytea");
    let out = sluice_db(&["db", "copy", "--range-size", "1M", &src, &dst]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("copying them again now"),
        "{}",
        stderr(&out)
    );
    assert_identical(&pg, &src, &dst);
}
