//! The engine's error type: what failed, where, and with which peer.

use std::io;
use std::path::PathBuf;

use sluice_proto::codec::DecodeError;
use sluice_proto::message::{ErrorCode, FailCause};
use sluice_proto::session::SessionError;
use sluice_quic::tls::TlsError;

/// Everything that can end a transfer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    File {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A source file changed while it was being sent.
    #[error("{path} changed while being sent: {detail}; send it again when it is quiet")]
    SourceChanged {
        /// The source file.
        path: PathBuf,
        /// What was seen.
        detail: String,
    },
    /// A source can't be sent as it is.
    #[error("cannot send {path}: {why}")]
    Source {
        /// The source path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The destination refused a path or would be escaped.
    #[error("refusing {path:?}: {why}")]
    Destination {
        /// The path from the manifest.
        path: String,
        /// Why.
        why: String,
    },
    /// A block or file failed verification.
    #[error("{path}: verification failed: {detail}")]
    Verify {
        /// The file.
        path: String,
        /// What did not match.
        detail: String,
    },
    /// The peer broke the protocol or refused us.
    #[error("protocol: {0}")]
    Session(#[from] SessionError),
    /// The peer ended the transfer for a failure of its own (a local error there: a file it
    /// could not write or delete, its disk full), told in its words: the same kind of failure
    /// as at this end ([`ErrorKind::Local`] or [`ErrorKind::NoSpace`]), not a refusal.
    #[error("the {who} failed: {message}")]
    PeerFailed {
        /// Which end: "receiver" or "sender".
        who: String,
        /// What the peer said.
        message: String,
        /// [`ErrorKind::Local`] or [`ErrorKind::NoSpace`].
        kind: ErrorKind,
    },
    /// The receiver is serving another sender, and takes one at a time.
    #[error(
        "{peer} refused the connection: the receiver there is serving another sender (a \
         `sluice recv` takes one sender: start another receiver, with its own ticket, for this \
         one; a `sluice bench --serve --keep-serving` takes the next once this one is done)"
    )]
    Busy {
        /// The receiver's address.
        peer: String,
    },
    /// Bytes from the peer did not decode.
    #[error("malformed data from peer: {0}")]
    Decode(#[from] DecodeError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC connection failed or the peer went away.
    #[error("connection to {peer}: {detail}")]
    Connection {
        /// The peer's address.
        peer: String,
        /// What happened.
        detail: String,
    },
    /// Some files (or units) failed: at the receiver, or given up by the sender (`Abandon`).
    #[error("{failed} of {total} {items} failed; first: {first}")]
    FilesFailed {
        /// What failed: "files", or "units" (table ranges, schema parts).
        items: &'static str,
        /// Files failed.
        failed: usize,
        /// Files sent.
        total: usize,
        /// The first failure.
        first: String,
        /// What kind of failure the first was (at the sender, which learns only the receiver's
        /// words: [`ErrorKind::Verification`]).
        kind: ErrorKind,
    },
    /// A database refused a statement or a connection, or a database tool failed.
    #[error("{what}: {detail}")]
    Database {
        /// What was being done.
        what: String,
        /// What the server or tool said.
        detail: String,
    },
    /// A statement gave up waiting for a lock another session holds (`lock_timeout`, set by
    /// `--lock-wait-timeout`). [`crate::db::Database`] turns it into [`Error::Database`] naming
    /// the session that holds the lock.
    #[error("{what}: {detail}")]
    DatabaseLocked {
        /// What was being done.
        what: String,
        /// What the server said.
        detail: String,
    },
    /// The connection to a database server failed or was lost (the server stopped, restarted or
    /// is unreachable): the same command, run again, resumes.
    #[error("{what}: the database server cannot be reached: {detail}")]
    DatabaseLost {
        /// What was being done.
        what: String,
        /// What the client library said.
        detail: String,
    },
    /// A database server left every statement unanswered for the stall limit
    /// (`--stall-timeout`) while its connections stayed open: its processes stopped, its host
    /// frozen, or a network path that drops everything (see `db::watch`). What was committed
    /// stays; the same command, run again once it answers, resumes.
    #[error(
        "{server} has not answered for {seconds} s (--stall-timeout): is it stopped, \
         or its host frozen? What was committed is kept: once it answers, run the same command \
         again and a copy resumes"
    )]
    DatabaseStalled {
        /// Which server, and where: `the target server (/run/postgresql/.s.PGSQL.5432)`.
        server: String,
        /// How long it was silent.
        seconds: u64,
    },
    /// A database server failed a statement for a reason that passes (a deadlock, a
    /// serialization failure, a connection cut while the server still takes new ones): the
    /// unit is worth sending again, where every other database error is not.
    #[error("{what}: {detail}")]
    DatabaseTransient {
        /// What was being done.
        what: String,
        /// What the server or the client library said.
        detail: String,
    },
    /// Another local I/O failure (sockets, io_uring setup, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// What kind of failure an [`Error`] is: what a user can do about it, and the exit code the
/// command line gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The peer could not be reached, went silent or went away: running the same command again
    /// resumes.
    Connection,
    /// The peer refused us or broke the protocol (wrong ticket, wrong secret, malformed data).
    Refused,
    /// A local file or system call failed.
    Local,
    /// The destination filesystem is full.
    NoSpace,
    /// The destination refused a path (it would escape the destination, or is not allowed).
    Destination,
    /// Data failed verification, or files failed at the receiver.
    Verification,
}

impl ErrorKind {
    /// How a receiver tells its sender that a file or unit failed for this reason.
    pub fn cause(self) -> FailCause {
        match self {
            ErrorKind::Verification | ErrorKind::Refused => FailCause::Verification,
            ErrorKind::Local => FailCause::Local,
            ErrorKind::NoSpace => FailCause::NoSpace,
            ErrorKind::Destination => FailCause::Destination,
            ErrorKind::Connection => FailCause::Lost,
        }
    }

    /// The kind of failure the receiver reported as `cause`.
    pub fn of_cause(cause: FailCause) -> Self {
        match cause {
            FailCause::Verification => ErrorKind::Verification,
            FailCause::Local => ErrorKind::Local,
            FailCause::NoSpace => ErrorKind::NoSpace,
            FailCause::Destination => ErrorKind::Destination,
            FailCause::Lost => ErrorKind::Connection,
        }
    }

    /// The command line's exit code: 3 connection, 4 refused, 5 local, 6 no space,
    /// 7 destination, 8 verification (1 stays "differences found", 2 "bad usage").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Connection => 3,
            ErrorKind::Refused => 4,
            ErrorKind::Local => 5,
            ErrorKind::NoSpace => 6,
            ErrorKind::Destination => 7,
            ErrorKind::Verification => 8,
        }
    }
}

/// Shorthand for the engine's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The file a [`Error::File`] names, as text; empty for other errors.
    pub fn file_path(&self) -> String {
        match self {
            Error::File { path, .. } => path.display().to_string(),
            _ => String::new(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        let full = |e: &io::Error| e.kind() == io::ErrorKind::StorageFull;
        match self {
            Error::File { source, .. } | Error::Io { source, .. } if full(source) => {
                ErrorKind::NoSpace
            }
            Error::File { .. } | Error::Io { .. } | Error::Source { .. } => ErrorKind::Local,
            Error::SourceChanged { .. } | Error::Database { .. } | Error::DatabaseLocked { .. } => {
                ErrorKind::Local
            }
            Error::Destination { .. } => ErrorKind::Destination,
            Error::Verify { .. } => ErrorKind::Verification,
            Error::FilesFailed { kind, .. } | Error::PeerFailed { kind, .. } => *kind,
            // The receiver's destination filled up: the sender's run failed for that.
            Error::Session(SessionError::Peer {
                code: ErrorCode::NoSpace,
                ..
            }) => ErrorKind::NoSpace,
            Error::Session(_) | Error::Decode(_) | Error::Tls(_) | Error::Busy { .. } => {
                ErrorKind::Refused
            }
            // Still there after every attempt: running the same command again resumes.
            Error::Connection { .. }
            | Error::DatabaseLost { .. }
            | Error::DatabaseStalled { .. }
            | Error::DatabaseTransient { .. } => ErrorKind::Connection,
        }
    }

    /// Whether the failure passes, so that doing the same again may succeed (see
    /// [`Error::DatabaseTransient`]); a unit that failed otherwise is not sent again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::DatabaseTransient { .. })
    }

    pub(crate) fn file(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::File { op, path, source }
    }

    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}
