//! The engine's error type: what failed, where, and with which peer.

use std::io;
use std::path::PathBuf;

use sluice_proto::codec::DecodeError;
use sluice_proto::session::SessionError;
use sluice_proto::tls::TlsError;

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
    /// Some files failed at the receiver.
    #[error("{failed} of {total} files failed at the receiver; first: {first}")]
    FilesFailed {
        /// Files failed.
        failed: usize,
        /// Files sent.
        total: usize,
        /// The first failure.
        first: String,
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

/// Shorthand for the engine's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
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
