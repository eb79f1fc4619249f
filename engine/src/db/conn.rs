//! Connection strings as libpq takes them: a URI or `key=value` words, with the same defaults
//! from the environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`) and the
//! password file (`PGPASSFILE`, else `~/.pgpass`). No TLS yet: connections are meant for a
//! server on the same host or a private network, next to the sender or receiver.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

/// How long a connection may take to be ready when the connection string sets no
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A database as the user named it, ready to connect.
#[derive(Debug, Clone)]
pub struct Database {
    /// What the user typed, without any password, for messages.
    pub shown: String,
    pub(crate) config: Config,
    /// How long a statement waits for a lock before it gives up (`lock_timeout`); `None`:
    /// for ever. See [`Database::lock_wait_timeout`].
    pub(crate) lock_wait: Option<Duration>,
    /// How long the server may leave every statement unanswered before the command ends. See
    /// [`Database::stall_timeout`].
    pub(crate) stall: Duration,
}

impl Database {
    /// Parses `conn` (URI or `key=value`, or a bare database name as `psql NAME` takes it),
    /// filling what it leaves out as libpq would.
    pub fn parse(conn: &str) -> Result<Self> {
        if conn.trim().is_empty() {
            // libpq would take every setting from the environment; said as "connecting to :"
            // and a socket error, it told nothing (a new user's report). An empty argument is
            // most often a shell variable left unset.
            return Err(Error::Database {
                what: "an empty connection string".into(),
                detail: "name the database: a URI (postgresql://user@host/db), key=value words \
                         (host=/run/postgresql dbname=db) or a database name"
                    .into(),
            });
        }
        let bare = !conn.contains('=') && !conn.contains("://") && !conn.trim().is_empty();
        let words = if bare {
            format!(
                "dbname='{}'",
                conn.replace('\\', "\\\\").replace('\'', "\\'")
            )
        } else {
            conn.to_string()
        };
        let bad = |detail: String| Error::Database {
            what: format!("connection string {:?}", hide_password(conn)),
            detail,
        };
        let (words, passfile) = libpq_only(&words).map_err(bad)?;
        // The parser's own error says only "invalid connection string"; its cause names the
        // option or the value.
        let mut config = Config::from_str(&words).map_err(|e| bad(full(&e)))?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if config.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(h) if h.starts_with('/') => config.host_path(h),
                Some(h) => config.host(h),
                None => config.host_path("/var/run/postgresql"),
            };
        }
        if config.get_ports().is_empty() {
            if let Some(p) = env("PGPORT").and_then(|p| p.parse().ok()) {
                config.port(p);
            }
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            config.user(user);
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("").into());
            config.dbname(db);
        }
        if config.get_password().is_none() {
            if let Some(p) = env("PGPASSWORD").or_else(|| from_passfile(&config, passfile)) {
                config.password(p);
            }
        }
        config.application_name("sluice");
        // Text COPY (tables with user-defined types) and digests must not depend on either
        // end's settings, and row security must fail a read rather than filter it.
        let fixed = "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC \
                     -c extra_float_digits=3 -c bytea_output=hex -c row_security=off";
        let options = match config.get_options() {
            Some(theirs) if !theirs.is_empty() => format!("{theirs} {fixed}"),
            _ => fixed.to_string(),
        };
        config.options(options);
        Ok(Self {
            shown: hide_password(conn),
            config,
            lock_wait: None,
            stall: crate::config::STALL_TIMEOUT,
        })
    }

    /// A command on this database ends with [`Error::DatabaseStalled`] once its server has
    /// left every statement unanswered for `limit` (`--stall-timeout`), with a warning naming
    /// it well before (see [`super::watch`]). Without it a server whose processes were stopped
    /// held the command for ever, its ETA standing still.
    pub fn stall_timeout(mut self, limit: Duration) -> Self {
        self.stall = limit;
        self
    }

    /// Where the server is looked for, as libpq names what it tried: each host's socket file
    /// (`/run/postgresql/.s.PGSQL.5432`) or `host:port`.
    pub fn server(&self) -> String {
        let ports = self.config.get_ports();
        // One port for every host, or one each.
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
            })
            .collect();
        hosts.join(", ")
    }

    /// Every statement on this database gives up waiting for a lock after `limit`
    /// (PostgreSQL's `lock_timeout`; `pg_dump --lock-wait-timeout`), with an error naming what
    /// holds it; `None`: waits for ever, as pg_dump does by default. A table another session
    /// holds in `ACCESS EXCLUSIVE` mode (an `ALTER TABLE` left open in a transaction) stalled
    /// a copy at its start without a word.
    pub fn lock_wait_timeout(mut self, limit: Option<Duration>) -> Self {
        self.lock_wait = limit;
        if let Some(limit) = limit {
            let ms = limit.as_millis().max(1);
            let options = match self.config.get_options() {
                Some(theirs) => format!("{theirs} -c lock_timeout={ms}"),
                None => format!("-c lock_timeout={ms}"),
            };
            self.config.options(options);
        }
        self
    }

    /// The database name.
    pub fn name(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    /// The password found for this connection, if any (handed to `pg_dump`).
    pub(crate) fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Whether `other` names the same database the same way (same server, port, user and
    /// name).
    pub fn same_as(&self, other: &Database) -> bool {
        self.libpq() == other.libpq()
    }

    /// A connection string for libpq tools (`pg_dump`), without the password.
    pub(crate) fn libpq(&self) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut words = Vec::new();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            words.push(format!("host={}", quote(&hosts.join(","))));
        }
        if let Some(p) = self.config.get_ports().first() {
            words.push(format!("port={p}"));
        }
        if let Some(u) = self.config.get_user() {
            words.push(format!("user={}", quote(u)));
        }
        words.push(format!("dbname={}", quote(self.name())));
        words.join(" ")
    }

    /// `e`, met at this database, naming it (a copy has two, and "the database server cannot be
    /// reached" said neither), and judged: a lost connection is a failure that passes
    /// ([`Error::DatabaseTransient`], worth sending the unit again) when the server still takes
    /// a new one; otherwise the server is gone or refuses, and the run ends with `e`.
    pub(crate) async fn judge(&self, e: Error) -> Error {
        match e {
            Error::DatabaseLost { what, detail } => {
                let probe = tokio::time::timeout(PROBE_TIMEOUT, self.config.connect(NoTls));
                match probe.await {
                    // Dropped at once: only the answer mattered.
                    Ok(Ok(_)) => Error::DatabaseTransient {
                        what: self.named(what),
                        detail: format!("{detail} (the server still takes connections)"),
                    },
                    _ => Error::DatabaseLost {
                        what: self.named(what),
                        detail,
                    },
                }
            }
            Error::Database { what, detail } => Error::Database {
                what: self.named(what),
                detail,
            },
            Error::DatabaseTransient { what, detail } => Error::DatabaseTransient {
                what: self.named(what),
                detail,
            },
            locked @ Error::DatabaseLocked { .. } => self.name_lock_holders(locked).await,
            other => other,
        }
    }

    /// `what` was done at this database: said so, unless it already names it.
    fn named(&self, what: String) -> String {
        match what.contains(&self.shown) {
            true => what,
            false => format!("{what} at {}", self.shown),
        }
    }

    /// `e`, if a statement here gave up waiting for a lock ([`Error::DatabaseLocked`]), as an
    /// error that names who has the lock: the sessions that hold, or wait for, a relation of
    /// this database in `ACCESS EXCLUSIVE` mode (`pg_locks`), read over a new connection;
    /// otherwise `e` as it is.
    pub(crate) async fn name_lock_holders(&self, e: Error) -> Error {
        let Error::DatabaseLocked { what, detail } = e else {
            return e;
        };
        let waited = match self.lock_wait {
            Some(t) if t >= Duration::from_secs(1) => format!(" {} s", t.as_secs_f64()),
            Some(t) => format!(" {} ms", t.as_millis()),
            None => String::new(),
        };
        let holders = async {
            let client = self.connect().await?;
            let rows = client
                .query(
                    "SELECT n.nspname || '.' || c.relname, a.pid, coalesce(a.usename, ''), \
                            l.granted, left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', \
                            'g'), 80) \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                       JOIN pg_class c ON c.oid = l.relation \
                       JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' \
                       AND l.database = (SELECT oid FROM pg_database \
                                         WHERE datname = current_database()) \
                       AND a.pid <> pg_backend_pid() \
                     ORDER BY l.granted DESC, a.pid",
                    &[],
                )
                .await
                .map_err(|e| pg_error("reading pg_locks".into(), &e))?;
            Ok::<_, Error>(
                rows.iter()
                    .map(|r| {
                        let (table, pid, user, granted, query): (
                            String,
                            i32,
                            String,
                            bool,
                            String,
                        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                        let how = if granted { "holds" } else { "waits for" };
                        format!("{table}: session {pid} (user {user}) {how} it: {query}")
                    })
                    .collect::<Vec<_>>(),
            )
        }
        .await;
        let who = match holders {
            Ok(h) if !h.is_empty() => format!(
                "; another session has a table in ACCESS EXCLUSIVE mode: {}. End that \
                 session's transaction (or pg_terminate_backend(pid)) and run the same \
                 command again",
                h.join("; ")
            ),
            _ => "; another session holds a lock it needs".into(),
        };
        Error::Database {
            what: self.named(what),
            detail: format!("{detail} (waited{waited}, --lock-wait-timeout){who}"),
        }
    }

    /// Opens a connection; its driver runs on the current runtime until the client is dropped.
    pub(crate) async fn connect(&self) -> Result<Client> {
        // libpq waits for ever by default; a server that takes the connection and never answers
        // (a stopped process, a proxy with nothing behind it) would hang the command. The
        // limit covers the whole start-up (TLS-less handshake and authentication), not only
        // the socket's connect as `connect_timeout` does.
        let limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let what = || format!("connecting to {}", self.shown);
        let (client, connection) = tokio::time::timeout(limit, self.config.connect(NoTls))
            .await
            .map_err(|_| Error::DatabaseLost {
                what: what(),
                detail: format!(
                    "no answer from the server at {} within {} s (connect_timeout= in the \
                     connection string sets the limit)",
                    self.server(),
                    limit.as_secs()
                ),
            })?
            .map_err(|e| match e.as_db_error() {
                // The server said why: its words name the problem.
                Some(_) => pg_error(what(), &e),
                // Nothing reached: say what was tried, as libpq does ("No such file or
                // directory" alone did not say which socket).
                None => match pg_error(what(), &e) {
                    Error::DatabaseLost { what, detail } => Error::DatabaseLost {
                        what,
                        detail: self.not_reached(&detail),
                    },
                    Error::Database { what, detail } => Error::Database {
                        what,
                        detail: self.not_reached(&detail),
                    },
                    other => other,
                },
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("database connection ended: {e}");
            }
        });
        Ok(client)
    }
}

impl Database {
    /// `detail` of a connection that reached no server, naming where it was looked for and
    /// what to check, as libpq does.
    fn not_reached(&self, detail: &str) -> String {
        // The driver's own prefix says less than what follows it.
        let cause = detail
            .strip_prefix("error connecting to server: ")
            .unwrap_or(detail);
        let unix = self
            .config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        match unix {
            true => format!(
                "connection to server on socket {} failed: {cause}; is the server running \
                 there, with its socket in that directory and on that port (host=, port=)?",
                self.server()
            ),
            false => format!(
                "connection to server at {} failed: {cause}; is the server running on that \
                 host and port, accepting TCP/IP connections?",
                self.server()
            ),
        }
    }
}

/// The error for `e`, met while doing `what`: [`Error::DatabaseTransient`] for a failure that
/// passes (a serialization failure, a deadlock: SQLSTATE 40001, 40P01), worth another attempt;
/// [`Error::DatabaseLost`] when the connection to the server failed or was lost, so the
/// command's exit says that running it again resumes (whether the server is gone or only
/// this connection, [`Database::judge`] finds out); otherwise [`Error::Database`]. Lost: the connection closed; a socket error that means the
/// server is not there or went away (refused, reset, aborted, a broken pipe, no such socket
/// file, timed out, unreachable); or the server saying it is shutting down or cannot accept
/// connections now (SQLSTATE 08000, 08001, 08003, 08004, 08006, 57P01-57P03). Not an I/O error
/// of another kind: tokio-postgres also reports encoding, parsing and authentication failures
/// with an `io::Error` inside, and running those again does not help.
pub(crate) fn pg_error(what: String, e: &tokio_postgres::Error) -> Error {
    use std::io::ErrorKind::*;
    let detail = full(e);
    let lost = match e.as_db_error() {
        Some(db) => matches!(
            db.code().code(),
            "08000" | "08001" | "08003" | "08004" | "08006" | "57P01" | "57P02" | "57P03"
        ),
        None => {
            e.is_closed()
                || std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| {
                        matches!(
                            io.kind(),
                            ConnectionRefused
                                | ConnectionReset
                                | ConnectionAborted
                                | BrokenPipe
                                | NotFound
                                | TimedOut
                                | NotConnected
                                | AddrNotAvailable
                                | HostUnreachable
                                | NetworkUnreachable
                        )
                    })
        }
    };
    // Out of connection slots (too_many_connections): each job holds a connection at each end.
    let detail = match e.as_db_error().map(|db| db.code().code()) {
        Some("53300") => format!(
            "{detail}; each of --jobs holds a connection to each server, and a few more are \
             used for the schema and the checks: lower --jobs or raise max_connections"
        ),
        _ => detail,
    };
    let passing = e
        .as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "40001" | "40P01"));
    // lock_not_available: --lock-wait-timeout ran out.
    let locked = e
        .as_db_error()
        .is_some_and(|db| db.code().code() == "55P03");
    if locked {
        Error::DatabaseLocked { what, detail }
    } else if passing {
        Error::DatabaseTransient { what, detail }
    } else if lost {
        Error::DatabaseLost { what, detail }
    } else {
        Error::Database { what, detail }
    }
}

/// `work`, its error judged at `db` ([`Database::judge`]): named, and taken for a failure that
/// passes if the server still takes connections.
pub(crate) async fn judged<T>(
    db: &Database,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match work.await {
        Err(e) => Err(db.judge(e).await),
        done => done,
    }
}

/// [`judged`] for a future that must own what it uses (a commit).
pub(crate) async fn judged_owned<T>(
    db: Database,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    judged(&db, work).await
}

/// How long [`Database::judge`] waits for a new connection before it takes the server for gone.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A PostgreSQL error with the server's own message and detail when it sent one.
pub(crate) fn full(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {} ({d})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// `conn` (key/value words or a URI) without the options libpq takes and the driver does not,
/// and the password file it names (`passfile`). `client_encoding` goes (the driver speaks UTF8;
/// rows travel as `COPY` bytes either way), as do `gssencmode` short of `require` and the TLS
/// options that only tune it; one that asks for what Sluice cannot do (`service`, a GSS or TLS
/// requirement, certificates) is an error naming it. Any other unknown option is left for the
/// driver, whose error names it.
fn libpq_only(conn: &str) -> std::result::Result<(String, Option<std::path::PathBuf>), String> {
    let mut passfile = None;
    let mut judge = |key: &str, value: &str| -> std::result::Result<bool, String> {
        Ok(match key {
            "passfile" => {
                passfile = Some(std::path::PathBuf::from(value));
                false
            }
            "client_encoding"
            | "sslcompression"
            | "sslsni"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version" => false,
            "gssencmode" if value != "require" => false,
            "gssencmode" => {
                return Err("gssencmode=require: GSS encryption is not supported".into())
            }
            "service" => {
                return Err(format!(
                    "service={value}: connection services (pg_service.conf) are not supported; \
                     name host, port, dbname and user instead"
                ))
            }
            // Without TLS, `allow` is what the driver's default (`prefer`) does.
            "sslmode" if matches!(value, "disable" | "prefer") => true,
            "sslmode" if value == "allow" => false,
            "sslmode" if matches!(value, "require" | "verify-ca" | "verify-full") => {
                return Err(format!(
                    "sslmode={value}: TLS to the database server is not supported yet; reach \
                     the server over a Unix socket or a private network, with sslmode=disable \
                     or prefer"
                ))
            }
            "sslmode" => {
                return Err(format!(
                    "sslmode={value}: not a mode libpq knows (disable, allow, prefer, require, \
                     verify-ca, verify-full)"
                ))
            }
            "sslrootcert" | "sslcert" | "sslkey" | "sslcrl" | "sslcrldir" | "sslpassword"
            | "requiressl" => {
                return Err(format!(
                    "{key}=: TLS to the database server is not supported yet; reach the server \
                     over a Unix socket or a private network"
                ))
            }
            _ => true,
        })
    };
    if let Some(q) = conn
        .starts_with("postgres://")
        .then_some(conn)
        .or_else(|| conn.starts_with("postgresql://").then_some(conn))
        .and_then(|c| c.find('?'))
    {
        let mut kept = Vec::new();
        for param in conn[q + 1..].split('&') {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            if judge(k, &percent_decode(v))? {
                kept.push(param);
            }
        }
        let base = &conn[..q];
        return Ok(match kept.is_empty() {
            true => (base.to_string(), passfile),
            false => (format!("{base}?{}", kept.join("&")), passfile),
        });
    }
    if let Some((scheme, _)) = conn.split_once("://") {
        // The driver's own word for any other scheme was "unexpected EOF".
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(format!(
                "{scheme}://: a connection URI starts with postgresql:// or postgres://"
            ));
        }
        return Ok((conn.to_string(), passfile));
    }
    let mut kept = Vec::new();
    for (key, value, raw) in words(conn).ok_or("unbalanced quotes")? {
        if judge(&key, &value)? {
            kept.push(raw);
        }
    }
    Ok((kept.join(" "), passfile))
}

/// The `key=value` words of a libpq connection string, each with its text as written: spaces
/// may stand around `=`, and a value may be single-quoted, with `\'` and `\\` escaped.
/// `None` when a quote is left open.
fn words(conn: &str) -> Option<Vec<(String, String, &str)>> {
    let b = conn.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let space = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !space(b[i]) {
            i += 1;
        }
        let key = conn[start..i].to_string();
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            // Not a key=value word: left to the driver to name.
            out.push((key, String::new(), &conn[start..i]));
            continue;
        }
        i += 1;
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i)? {
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        value.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    &c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !space(b[i]) {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        out.push((
            key,
            String::from_utf8_lossy(&value).into_owned(),
            &conn[start..i],
        ));
    }
}

/// `%XX` escapes of a URI's query value decoded (`+` stays: libpq does not take it as a space).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `conn` with any password replaced by `***`: the URI's user information and its `password`
/// parameter, or a `password=` word of the key/value form (quoted values included).
fn hide_password(conn: &str) -> String {
    if let Some(rest) = conn
        .strip_prefix("postgres://")
        .or_else(|| conn.strip_prefix("postgresql://"))
    {
        let scheme = &conn[..conn.len() - rest.len()];
        let (before_query, query) = match rest.find('?') {
            Some(q) => rest.split_at(q),
            None => (rest, ""),
        };
        let authority_end = before_query.find('/').unwrap_or(before_query.len());
        let mut out = String::from(scheme);
        match before_query[..authority_end].rfind('@') {
            Some(at) => {
                let auth = &before_query[..at];
                match auth.find(':') {
                    Some(colon) => {
                        out.push_str(&auth[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(auth),
                }
                out.push_str(&before_query[at..]);
            }
            None => out.push_str(before_query),
        }
        if let Some(params) = query.strip_prefix('?') {
            let params: Vec<&str> = params
                .split('&')
                .map(|p| {
                    if p.starts_with("password=") {
                        "password=***"
                    } else {
                        p
                    }
                })
                .collect();
            out.push('?');
            out.push_str(&params.join("&"));
        }
        return out;
    }
    // Key/value form: `password=` up to the next unquoted space (a quoted value may hold
    // spaces, and `\'` inside it).
    let mut out = String::new();
    let mut rest = conn;
    while let Some(at) = rest.find("password") {
        let word_start = at == 0 || rest[..at].ends_with(char::is_whitespace);
        let after = rest[at + "password".len()..].trim_start();
        let Some(value) = after.strip_prefix('=').filter(|_| word_start) else {
            out.push_str(&rest[..at + "password".len()]);
            rest = &rest[at + "password".len()..];
            continue;
        };
        let value = value.trim_start();
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let mut end = quoted.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str(&rest[..at]);
        out.push_str("password=***");
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

/// The password for `config` from the password file, as libpq reads it: lines
/// `host:port:database:user:password`, `*` matching anything, `\` escaping `:` and `\`.
fn from_passfile(config: &Config, named: Option<std::path::PathBuf>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = named
        .or_else(|| std::env::var_os("PGPASSFILE").map(std::path::PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    // As libpq: a password file others may read is not used.
    let mode = std::fs::metadata(&path).ok()?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; permissions should be u=rw (0600) or \
             less: not used",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let want = [
        host.as_str(),
        port.as_str(),
        config.get_dbname().unwrap_or(""),
        config.get_user().unwrap_or(""),
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| passfile_match(line, &want))
}

fn passfile_match(line: &str, want: &[&str; 4]) -> Option<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next()?),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    if fields.len() != 5 {
        return None;
    }
    let matches = fields[..4]
        .iter()
        .zip(want)
        .all(|(f, w)| f == "*" || f == w);
    matches.then(|| fields[4].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libpq's options the driver does not know: a password file is taken, what only tunes a
    /// connection Sluice does not make goes, and what Sluice cannot honour is named.
    #[test]
    fn libpq_options_the_driver_lacks_are_taken_or_named() {
        let (words, passfile) =
            libpq_only("host=/tmp passfile = '/x y/.pgpass' client_encoding=LATIN1 dbname=d")
                .unwrap();
        assert_eq!(words, "host=/tmp dbname=d");
        assert_eq!(passfile, Some("/x y/.pgpass".into()));
        let (uri, passfile) =
            libpq_only("postgres://h/db?passfile=%2Ftmp%2Fp&sslmode=disable").unwrap();
        assert_eq!(uri, "postgres://h/db?sslmode=disable");
        assert_eq!(passfile, Some("/tmp/p".into()));
        assert_eq!(
            libpq_only("postgresql://h/db?gssencmode=prefer").unwrap().0,
            "postgresql://h/db"
        );
        for (conn, named) in [
            ("service=prod", "service=prod"),
            ("host=h sslrootcert=/ca.pem", "sslrootcert="),
            ("postgres://h/db?gssencmode=require", "gssencmode=require"),
        ] {
            let e = libpq_only(conn).unwrap_err();
            assert!(e.contains(named), "{conn}: {e}");
        }
        // A scheme the driver does not know, and a TLS mode Sluice cannot meet, are named
        // (the driver said "unexpected EOF" and "invalid value for option `sslmode`").
        for (conn, named) in [
            ("postgress://h/db", "postgress://"),
            ("host=h sslmode=verify-full", "TLS to the database server"),
            ("postgresql://h/db?sslmode=require", "sslmode=require"),
            ("host=h sslmode=requre", "not a mode libpq knows"),
        ] {
            let e = Database::parse(conn).unwrap_err().to_string();
            assert!(e.contains(named), "{conn}: {e}");
        }
        assert_eq!(libpq_only("host=h sslmode=allow").unwrap().0, "host=h");
        assert_eq!(
            libpq_only("host=h sslmode=disable").unwrap().0,
            "host=h sslmode=disable"
        );
        assert!(libpq_only("host='open").is_err());
        // What neither knows is the driver's to name, with the option.
        let e = Database::parse("hots=db dbname=d").unwrap_err().to_string();
        assert!(e.contains("hots"), "{e}");
    }

    /// As libpq, a password file that others may read is not used.
    #[test]
    fn a_password_file_others_may_read_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pgpass");
        std::fs::write(&file, "db:5432:app:ann:s3cret\n").unwrap();
        let config = Config::from_str("host=db port=5432 user=ann dbname=app").unwrap();
        for (mode, found) in [(0o600, Some("s3cret".to_string())), (0o644, None)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                from_passfile(&config, Some(file.clone())),
                found,
                "{mode:o}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            hide_password("postgres://ann:s3cret@db:5432/app"),
            "postgres://ann:***@db:5432/app"
        );
        assert_eq!(
            hide_password("host=db password=s3cret dbname=app"),
            "host=db password=*** dbname=app"
        );
        assert_eq!(
            hide_password("postgres://u:hunter2@localhost/x?password=hunter3&sslmode=off"),
            "postgres://u:***@localhost/x?password=***&sslmode=off"
        );
        assert_eq!(
            hide_password("postgresql://localhost/x?user=u&password=hunter3"),
            "postgresql://localhost/x?user=u&password=***"
        );
        assert_eq!(
            hide_password("host=db password = 'a b\\'c' dbname=app"),
            "host=db password=*** dbname=app"
        );
        assert_eq!(
            hide_password("host=db mypassword=x"),
            "host=db mypassword=x"
        );
    }

    #[test]
    fn password_file_lines_match_as_libpq_reads_them() {
        let want = ["db", "5432", "app", "ann"];
        assert_eq!(
            passfile_match("db:5432:app:ann:pw", &want),
            Some("pw".into())
        );
        assert_eq!(passfile_match("*:*:*:ann:p\\:w", &want), Some("p:w".into()));
        assert_eq!(passfile_match("db:5433:app:ann:pw", &want), None);
        assert_eq!(passfile_match("broken", &want), None);
    }

    #[test]
    fn both_forms_parse() {
        let uri = Database::parse("postgresql://ann@127.0.0.1:6543/app").unwrap();
        assert_eq!(uri.name(), "app");
        let kv = Database::parse("host=/tmp port=6543 user=ann dbname=app").unwrap();
        assert_eq!(Database::parse("it's").unwrap().name(), "it's");
        assert_eq!(kv.name(), "app");
        assert!(kv.libpq().contains("host='/tmp'"));
        assert!(Database::parse("postgres://[::1").is_err());
        // Not libpq's "every setting from the environment": named as the mistake it mostly is.
        let e = Database::parse(" ").unwrap_err().to_string();
        assert!(e.contains("an empty connection string"), "{e}");
    }

    /// What a connection tries is named as libpq names it: each host's socket file, or
    /// `host:port`, with the port given for all hosts or for each.
    #[test]
    fn the_server_is_named_by_its_socket_or_host_and_port() {
        let server = |conn: &str| Database::parse(conn).unwrap().server();
        assert_eq!(server("host=/run/pg port=5433"), "/run/pg/.s.PGSQL.5433");
        assert_eq!(server("host=/run/pg"), "/run/pg/.s.PGSQL.5432");
        assert_eq!(server("host=db1,db2 port=6000"), "db1:6000, db2:6000");
        assert_eq!(
            server("host=db1,::1 port=6000,6001"),
            "db1:6000, [::1]:6001"
        );
    }
}
