//! Helpers for end-to-end tests: run the real `sluice` binary on real files.

#![allow(dead_code)]

pub mod crafted;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

thread_local! {
    /// The transport this thread's `sluice` commands use; empty: whatever `SLUICE_TRANSPORT`
    /// in the environment says (or the default).
    static TRANSPORT: std::cell::Cell<&'static str> = const { std::cell::Cell::new("") };
}

/// Runs `test` with every `sluice` command of this thread on `transport` (quic, tcp or auto).
pub fn over(transport: &'static str, test: impl FnOnce()) {
    TRANSPORT.set(transport);
    test();
    TRANSPORT.set("");
}

/// The transport this thread's commands use, as `Config::transport` takes it.
pub fn transport() -> sluice_engine::transport::Choice {
    match TRANSPORT.get() {
        "" => std::env::var("SLUICE_TRANSPORT")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_default(),
        t => t.parse().unwrap(),
    }
}

/// A test that runs twice, as `NAME::quic` (the default transport, QUIC on loopback) and as
/// `NAME::tcp` (TLS over TCP): the end-to-end suite covers both transports.
#[allow(unused_macros)]
macro_rules! over_both {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body() $body

            #[test]
            fn quic() {
                common::over("", body)
            }

            #[test]
            fn tcp() {
                common::over("tcp", body)
            }
        }
    };
}

pub fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.stdin(Stdio::null());
    if !TRANSPORT.get().is_empty() {
        c.env("SLUICE_TRANSPORT", TRANSPORT.get());
    }
    c
}

/// Writes `len` pseudo-random bytes (BLAKE3 XOF of `seed`) to `path`, 1 MiB at a time.
pub fn random_file(path: &Path, len: u64, seed: u8) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut xof = blake3::Hasher::new().update(&[seed]).finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// `len` bytes of a web-server log: text that zstd packs to about a third, different in every
/// line (a counter and pseudo-random fields), so no block repeats another.
pub fn log_file(path: &Path, len: u64, seed: u8) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut xof = blake3::Hasher::new().update(&[seed]).finalize_xof();
    let paths = [
        "/api/v1/users/",
        "/api/v1/orders/",
        "/static/app.js?v=",
        "/search?q=",
    ];
    let mut written = 0u64;
    let mut line = String::new();
    for i in 0u64.. {
        let mut r = [0u8; 16];
        xof.fill(&mut r);
        line.clear();
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "10.{}.{}.{} - - [{}] \"GET {}{} HTTP/1.1\" {} {} req={:08x}",
            r[0],
            r[1],
            r[2],
            1_700_000_000 + i / 4,
            paths[usize::from(r[3]) % paths.len()],
            u32::from_le_bytes([r[4], r[5], r[6], 0]),
            [200, 200, 200, 304, 404][usize::from(r[7]) % 5],
            u16::from_le_bytes([r[8], r[9]]),
            u32::from_le_bytes([r[10], r[11], r[12], r[13]]),
        );
        let take = (len - written).min(line.len() as u64) as usize;
        out.write_all(&line.as_bytes()[..take]).unwrap();
        written += take as u64;
        if written == len {
            break;
        }
    }
    out.flush().unwrap();
}

/// BLAKE3 of a file, as `b3sum` computes it.
pub fn b3(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize()
}

/// Asserts that two trees hold the same names, kinds, bytes, link targets and permissions.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut v = Vec::new();
        walk(root, root, &mut v);
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "trees differ in names or kinds");
    for (rel, kind) in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let rel = rel.display();
        match kind {
            'f' => {
                assert_eq!(b3(&pa), b3(&pb), "{rel}: content differs");
                assert_eq!(
                    std::fs::read(&pa).unwrap(),
                    std::fs::read(&pb).unwrap(),
                    "{rel}"
                );
                let (ma, mb) = (pa.metadata().unwrap(), pb.metadata().unwrap());
                assert_eq!(ma.permissions(), mb.permissions(), "{rel}: mode differs");
                assert_eq!(
                    ma.modified().unwrap(),
                    mb.modified().unwrap(),
                    "{rel}: mtime differs"
                );
            }
            'l' => assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            ),
            _ => {}
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, char)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let kind = if ft.is_symlink() {
            'l'
        } else if ft.is_dir() {
            'd'
        } else {
            'f'
        };
        out.push((rel, kind));
        if kind == 'd' {
            walk(root, &e.path(), out);
        }
    }
}

/// Every file whose name marks it as in-progress state (a part file or its resume journal),
/// anywhere below `root`.
pub fn part_files(root: &Path) -> Vec<PathBuf> {
    files_below(root)
        .into_iter()
        .filter(|rel| {
            let name = rel.to_string_lossy();
            name.ends_with(".sluice-part") || name.ends_with(".sluice-journal")
        })
        .map(|rel| root.join(rel))
        .collect()
}

/// Every regular file below `root`, as a path relative to it.
pub fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(root, root, &mut all);
    all.into_iter()
        .filter(|(_, kind)| *kind == 'f')
        .map(|(rel, _)| rel)
        .collect()
}

/// Waits for `child` to end and returns what it printed; past `limit` kills it and fails the
/// test with `what`. Output not sent to a pipe (a file, null) comes back empty.
pub fn wait_or_kill(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            // What it printed says where it stood (piped streams only; the rest is empty).
            let said = child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("{what} (after {limit:?}); its stderr: {said}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A `sluice recv` process and the ticket it printed.
pub struct Recv {
    child: Option<Child>,
    pub ticket: String,
    /// What it printed after the ticket.
    printed: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Recv {
    pub fn start(dest: &Path) -> Recv {
        Self::start_with(dest, &[])
    }

    /// [`Recv::start`] with global options before `recv` (e.g. `--json`).
    pub fn start_with(dest: &Path, options: &[&str]) -> Recv {
        Self::start_full(dest, options, &[])
    }

    /// [`Recv::start`] with options of `recv` itself (`--allow-delete`).
    pub fn start_recv(dest: &Path, recv_options: &[&str]) -> Recv {
        Self::start_full(dest, &[], recv_options)
    }

    /// [`Recv::start_recv`] with the receiver's umask set to `umask` (octal).
    pub fn start_under_umask(dest: &Path, umask: &str, recv_options: &[&str]) -> Recv {
        let base = sluice();
        let mut c = Command::new("sh");
        c.stdin(Stdio::null())
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(base.get_program());
        for (k, v) in base.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        Self::spawn(c, dest, &[], recv_options)
    }

    /// [`Recv::start_full`] as the unprivileged user [`sluice_as_user`] runs as; `None` where
    /// root cannot switch users here (no `setpriv`).
    pub fn start_as_user(dest: &Path, options: &[&str], recv_options: &[&str]) -> Option<Recv> {
        if !is_root() {
            return Some(Self::start_full(dest, options, recv_options));
        }
        Command::new("setpriv").arg("--version").output().ok()?;
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_sluice"))
            .stdin(Stdio::null());
        if !TRANSPORT.get().is_empty() {
            c.env("SLUICE_TRANSPORT", TRANSPORT.get());
        }
        Some(Self::spawn(c, dest, options, recv_options))
    }

    /// [`Recv::start`] with global options (`--json`) and options of `recv` itself.
    pub fn start_full(dest: &Path, options: &[&str], recv_options: &[&str]) -> Recv {
        Self::spawn(sluice(), dest, options, recv_options)
    }

    fn spawn(mut command: Command, dest: &Path, options: &[&str], recv_options: &[&str]) -> Recv {
        let mut child = command
            .args(options)
            .args(["recv", "--listen", "127.0.0.1:0"])
            .args(recv_options)
            .arg(dest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading so the receiver never writes into a closed pipe.
        let printed = std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = std::io::copy(&mut out, &mut rest);
            rest
        });
        let ticket = if options.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v["ticket"].as_str().unwrap_or_default().to_owned()
        } else {
            line.trim().to_owned()
        };
        assert!(ticket.starts_with("sluice1-"), "recv printed {line:?}");
        Recv {
            child: Some(child),
            ticket,
            printed: Some(printed),
        }
    }

    /// Stops the receiver (SIGSTOP) without ending it: its kernel still answers TCP, but the
    /// process sends and reads nothing, as a wedged or suspended peer.
    pub fn pause(&self) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "could not stop the receiver");
    }

    /// The receiver's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Ends a receiver that would wait on (SIGKILL) and returns what it printed.
    pub fn kill(mut self) -> Output {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait()
    }

    /// Waits (bounded) for the receiver to exit; kills it past the limit.
    pub fn wait(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut output = child.wait_with_output().unwrap();
        if let Some(t) = self.printed.take() {
            output.stdout = t.join().unwrap_or_default();
        }
        output
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `sluice ARGS` as `nobody` if this process is root, else as this user. `None` where root
/// cannot switch users here (no `setpriv`).
pub fn sluice_as_user(args: &[&Path]) -> Option<Output> {
    let root = is_root();
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_sluice"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
    };
    c.args(args).stdin(std::process::Stdio::null());
    match c.output() {
        Ok(o) if root && o.status.code() == Some(127) => None,
        Ok(o) => Some(o),
        Err(_) => None,
    }
}

/// The `summary` event among the lines a `--json` run printed.
pub fn summary_event(o: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {}", stdout(o)))
}

/// The `event` lines of a `--json` run's standard output, every line of which must be JSON.
pub fn json_events(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .collect()
}

/// The [`json_events`] of kind `event`.
pub fn events_of(o: &Output, event: &str) -> Vec<serde_json::Value> {
    json_events(o)
        .into_iter()
        .filter(|v| v["event"] == event)
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[allow(dead_code)]
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
