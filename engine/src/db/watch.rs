//! Whether a database server still answers.
//!
//! A server that stops answering without closing its connections (its processes stopped, its
//! host frozen, a network path that drops every packet) leaves every statement waiting for
//! ever: no error comes, no TCP keep-alive either over a Unix socket, and a statement may
//! rightly run for minutes (an index build, the check at the end), so one slow statement says
//! nothing. A [`Watch`] asks its server `SELECT 1` every [`PROBE_EVERY`] on a connection of its
//! own, and counts every statement of the run that ends ([`Watch::guard`]) as an answer too.
//! Silent for [`WARN_AFTER`] (or half the limit, if that is shorter), it warns, naming the
//! server, and again every [`WARN_EVERY`]; silent for the limit (`--stall-timeout`,
//! [`super::Database::stall_timeout`]), it trips: every operation run through
//! [`Watch::guard`], the ones waiting on that server and any started later, ends with
//! [`Error::DatabaseStalled`]. The run's connections close with it, so the transactions in
//! flight roll back once the server runs again, and what was committed stays for the same
//! command to resume from.
//!
//! Time is counted only while this process runs: a pause of its own (stopped, or starved of
//! CPU) is not taken for the server's silence.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Database;
use crate::error::{Error, Result};

/// How often the probe asks: a healthy server answers each time, so silence is measured to
/// about this.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Silence before the first warning: five missed probes, far beyond a busy server's answer to
/// `SELECT 1`, and soon enough that the user is not left reading a stale progress line (the
/// same pause after which a file transfer reports a stall).
const WARN_AFTER: Duration = Duration::from_secs(5);

/// Silence between two warnings about the same server.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How often the silence is measured.
const TICK: Duration = Duration::from_millis(250);

/// Watches one server for as long as it is held; dropping it stops the probe.
#[derive(Debug)]
pub(crate) struct Watch {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    /// The server as messages name it: `the target server (/run/postgresql/.s.PGSQL.5432)`.
    server: String,
    /// Silence after which the watch trips (`--stall-timeout`).
    limit: Duration,
    /// Answers heard so far (the probe's and every guarded operation's that ended).
    answers: AtomicU64,
    /// The probe's answers alone: an operation may end without the server (rows handed to a
    /// `COPY` wait in the connection's buffer), the probe's `SELECT 1` may not.
    probed: AtomicU64,
    /// Set, with the seconds of silence, once the server has been silent for the limit.
    tripped: tokio::sync::watch::Sender<Option<u64>>,
}

impl Watch {
    /// Starts watching `db`'s server, named in messages as `role` (`source`, `target`); on the
    /// current runtime, until the watch is dropped.
    pub(crate) fn start(db: &Database, role: &str) -> Arc<Watch> {
        let shared = Arc::new(Shared {
            server: format!("the {role} server ({})", db.server()),
            limit: db.stall,
            answers: AtomicU64::new(0),
            probed: AtomicU64::new(0),
            tripped: tokio::sync::watch::channel(None).0,
        });
        let task = tokio::spawn(watch(db.clone(), shared.clone()));
        Arc::new(Watch { shared, task })
    }

    /// Whether this watch still runs: its runtime may have ended since it started.
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// `work`, which waits on this watch's server, ended with [`Error::DatabaseStalled`] if the
    /// server trips the watch first (or has tripped it already). Ending is an answer.
    pub(crate) async fn guard<T>(
        &self,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut tripped = self.shared.tripped.subscribe();
        let result = tokio::select! {
            biased;
            done = work => done,
            silent = tripped.wait_for(Option::is_some) => {
                let seconds = silent.ok().and_then(|s| *s).unwrap_or(0);
                return Err(Error::DatabaseStalled {
                    server: self.shared.server.clone(),
                    seconds,
                });
            }
        };
        // A server that answered, even with an error, is there; a lost connection says nothing.
        if !matches!(result, Err(Error::DatabaseLost { .. })) {
            self.shared.answers.fetch_add(1, Relaxed);
        }
        result
    }
}

impl Watch {
    /// [`Watch::guard`] for one connection's part in moving rows (the next row of a `COPY`,
    /// rows handed to one, a range's commit), which is also given the limit on its own. The
    /// server's silence is measured across all its connections, so a server whose probe
    /// answers while one backend says nothing (that process stopped, stuck on a disk that no
    /// longer answers, a commit waiting for a synchronous standby that is gone) held the run
    /// for ever. Such a step never rightly waits that long: rows flow as they are read and
    /// written, and a range commits in seconds. Silent for half the limit, it warns, naming
    /// what it does (`what`: `writing public.big (id 1 to 5000)`); for the limit, it ends with
    /// [`Error::DatabaseStalled`] naming it too. Statements that may rightly run for minutes
    /// (an index build, the schema) are not steps: they have [`Watch::guard`] alone.
    pub(crate) async fn guard_step<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.shared.limit;
        let clock = async {
            let mut silence = Silence::new(limit, limit / 2);
            let mut last = Instant::now();
            let probed = self.shared.probed.load(Relaxed);
            loop {
                tokio::time::sleep(TICK).await;
                let now = Instant::now();
                let step = now - std::mem::replace(&mut last, now);
                let said = silence.tick(0, step);
                // A server whose probe has not answered since the step began is the watch's to
                // name (the whole server, not this connection): the step waits for that.
                if self.shared.probed.load(Relaxed) == probed {
                    continue;
                }
                match said {
                    // The server answered meanwhile, so the silence is this connection's.
                    Said::Trip(silent) => return silent,
                    Said::Warn(silent) => tracing::warn!(
                        "{} has not answered for {} s on the connection {what}; the run ends \
                         if it stays silent for {} s (--stall-timeout)",
                        self.shared.server,
                        silent.as_secs(),
                        limit.as_secs()
                    ),
                    Said::Nothing | Said::Back(_) => {}
                }
            }
        };
        tokio::select! {
            biased;
            done = self.guard(work) => done,
            silent = clock => Err(Error::DatabaseStalled {
                server: format!("{} on the connection {what}", self.shared.server),
                seconds: silent.as_secs(),
            }),
        }
    }

    /// [`Watch::guard_step`] for a future that must own what it uses (a range's commit).
    pub(crate) async fn guard_step_owned<T>(
        self: Arc<Self>,
        what: String,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.guard_step(&what, work).await
    }

    /// [`Watch::guard`] for a future that must own what it uses (a commit).
    pub(crate) async fn guard_owned<T>(
        self: Arc<Self>,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.guard(work).await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watch's task: the probe, and the clock that judges the silence.
async fn watch(db: Database, shared: Arc<Shared>) {
    tokio::join!(probe(&db, &shared), judge(db.stall, &shared));
}

/// Asks the server `SELECT 1` every [`PROBE_EVERY`] on a connection of its own (made again
/// when lost), counting each answer. An error the server sends is an answer (out of connection
/// slots, say); a connection refused or timed out is not.
async fn probe(db: &Database, shared: &Shared) {
    let mut client = None;
    loop {
        let answered = match &client {
            Some(c) => match tokio_postgres::Client::simple_query(c, "SELECT 1").await {
                Ok(_) => true,
                Err(e) => {
                    let said = e.as_db_error().is_some();
                    if !said || c.is_closed() {
                        client = None;
                    }
                    said
                }
            },
            None => match db.connect().await {
                Ok(c) => {
                    client = Some(c);
                    true
                }
                Err(e) => !matches!(e, Error::DatabaseLost { .. }),
            },
        };
        if answered {
            shared.answers.fetch_add(1, Relaxed);
            shared.probed.fetch_add(1, Relaxed);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Measures the silence every [`TICK`]: warns, says when the server answers again, and trips
/// the watch once the silence reaches `limit`.
async fn judge(limit: Duration, shared: &Shared) {
    let first_warning = WARN_AFTER.min(limit / 2);
    let mut silence = Silence::new(limit, first_warning);
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let step = now - std::mem::replace(&mut last, now);
        match silence.tick(shared.answers.load(Relaxed), step) {
            Said::Nothing => {}
            Said::Warn(silent) => tracing::warn!(
                "{} has not answered for {} s; the run ends if it stays silent for {} s \
                 (--stall-timeout)",
                shared.server,
                silent.as_secs(),
                limit.as_secs()
            ),
            Said::Back(silent) => tracing::warn!(
                "{} answers again, after {} s",
                shared.server,
                silent.as_secs()
            ),
            Said::Trip(silent) => {
                shared.tripped.send_replace(Some(silent.as_secs()));
                return;
            }
        }
    }
}

/// What a tick of [`Silence`] has to say.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Nothing,
    /// Silent this long: a warning.
    Warn(Duration),
    /// Answering again after a warned silence this long.
    Back(Duration),
    /// Silent for the limit.
    Trip(Duration),
}

/// The silence of one server, measured in the steps of this process's own clock (sans I/O, so
/// that its rules are tested without a server).
#[derive(Debug)]
struct Silence {
    limit: Duration,
    first_warning: Duration,
    /// The answer count last seen, and the silence since it moved.
    seen: u64,
    silent: Duration,
    /// The silence at which the next warning is due.
    warn_at: Duration,
    warned: bool,
}

impl Silence {
    fn new(limit: Duration, first_warning: Duration) -> Self {
        Self {
            limit,
            first_warning,
            seen: 0,
            silent: Duration::ZERO,
            warn_at: first_warning,
            warned: false,
        }
    }

    /// `answers` heard so far, `step` since the last tick. A step much longer than a tick is
    /// this process's own pause (stopped, starved of CPU), counted as one tick: the probe had
    /// no chance to hear anything.
    fn tick(&mut self, answers: u64, step: Duration) -> Said {
        if answers != self.seen {
            self.seen = answers;
            let was = std::mem::take(&mut self.silent);
            self.warn_at = self.first_warning;
            if std::mem::take(&mut self.warned) {
                return Said::Back(was);
            }
            return Said::Nothing;
        }
        self.silent += step.min(4 * TICK);
        if self.silent >= self.limit {
            return Said::Trip(self.silent);
        }
        if self.silent >= self.warn_at {
            self.warned = true;
            self.warn_at = self.silent + WARN_EVERY;
            return Said::Warn(self.silent);
        }
        Said::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Silence is warned of at the first mark and every [`WARN_EVERY`] after, trips at the
    /// limit, and starts again from nothing at an answer; a pause of this process's own counts
    /// for one tick, not for its length.
    #[test]
    fn silence_warns_then_trips_and_an_answer_resets_it() {
        let limit = Duration::from_secs(60);
        let mut s = Silence::new(limit, WARN_AFTER);
        let mut said = Vec::new();
        for _ in 0..(4 * 40) {
            match s.tick(0, TICK) {
                Said::Nothing => {}
                other => said.push(other),
            }
        }
        assert_eq!(
            said,
            vec![
                Said::Warn(Duration::from_secs(5)),
                Said::Warn(Duration::from_secs(35))
            ]
        );
        assert_eq!(s.tick(1, TICK), Said::Back(Duration::from_secs(40)));
        // Counted again from nothing, the first warning again at five seconds.
        for _ in 0..19 {
            assert_eq!(s.tick(1, TICK), Said::Nothing);
        }
        assert_eq!(s.tick(1, TICK), Said::Warn(Duration::from_secs(5)));
        // This process stopped for an hour: one tick's worth, not a trip.
        assert_eq!(s.tick(1, Duration::from_secs(3600)), Said::Nothing);
        let mut last = Said::Nothing;
        for _ in 0..(4 * 60) {
            last = s.tick(1, TICK);
            if matches!(last, Said::Trip(_)) {
                break;
            }
        }
        assert_eq!(last, Said::Trip(limit));
        // Answers that keep coming never warn.
        let mut s = Silence::new(limit, WARN_AFTER);
        for n in 0..1000 {
            assert_eq!(s.tick(n / 4, TICK), Said::Nothing);
        }
    }

    /// A limit shorter than the first warning's mark is warned of at half of it.
    #[test]
    fn a_short_limit_is_warned_of_before_it_trips() {
        let limit = Duration::from_secs(2);
        let mut s = Silence::new(limit, WARN_AFTER.min(limit / 2));
        let said: Vec<Said> = (0..8).map(|_| s.tick(0, TICK)).collect();
        assert_eq!(said[3], Said::Warn(Duration::from_secs(1)));
        assert_eq!(said[7], Said::Trip(limit));
    }
}
