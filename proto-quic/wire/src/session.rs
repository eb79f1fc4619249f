//! The session state machines: which message may come when, and what it means.
//!
//! [`ReceiverSession`] and [`SenderSession`] are fed decoded control messages (and, for the
//! receiver, block headers) and answer with [`ReceiverEvent`]s / [`SenderEvent`]s or a
//! [`SessionError`]. They hold the manifest and the block geometry, so every check that depends on
//! what was agreed earlier — the secret, the version, the block size, whether a block's file,
//! offset and length fit the manifest — is made here, once, without I/O.
//!
//! The order on the control stream is:
//!
//! ```text
//! sender                                receiver
//!   Hello{version, secret, block_size, flags} ->
//!                                      <- Welcome{version}        (or Error{Auth|Version})
//!   Exclude{pattern} × k               ->   (only with HELLO_DELETE; k ≥ 0)
//!   Entry × n, ManifestEnd{n}          ->
//!                                      <- per file, in manifest order: Holding{id, len,
//!                                         vouching} if the destination holds some of it, then,
//!                                         as its scan proceeds, Vouched{id, first, cvs}* (from a
//!                                         resume journal of this source version),
//!                                         HaveGroups{id, first, digests}* (Anchors? Have){tail}?
//!                                         HaveDone{id}
//!   WantDetail{id, group}              -> (a group's digest differs)
//!                                      <- Anchors{id, first, anchors}? (an older version)
//!                                         Have{id, first, cvs}   (that group's block hashes)
//!   FileDone{id, root, sent} × files   ->   (data streams carry the missing blocks meanwhile)
//!                                      <- Resend{id, offset}  (a block failed verification)
//!                                      <- MovedPieces{id, index, from, prefix, hashes}
//!                                         (a moved block failed verification)
//!                                      <- FileVerified{id} | FileFailed{id, reason}
//!   Finish                             ->
//!                                      <- Summary{entries, bytes, deleted}
//! ```

use crate::exclude::{ExcludeError, Excludes};
use crate::geometry::Geometry;
use crate::message::{
    BlockHeader, Digest, Entry, EntryKind, ErrorCode, Message, PieceHash, GROUP_BLOCKS,
    HELLO_DELETE, HELLO_DRY_RUN, HELLO_INPLACE, HELLO_REHASH, HELLO_RESTART,
};
use crate::path::{self, PathError};
use crate::PROTOCOL_VERSION;

/// Smallest block size a sender may choose: one BLAKE3 chunk.
pub const MIN_BLOCK_SIZE: u32 = 1024;
/// Largest block size a sender may choose; bounds the receiver's per-block buffer.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;
/// Most blocks one file may have. The receiver keeps a 33-byte record per block of each file
/// in progress, so this bounds what a manifest entry can make it allocate (at 1 MiB blocks:
/// files up to 16 TiB, tables up to ~550 MB).
pub const MAX_FILE_BLOCKS: u64 = 1 << 24;

/// A protocol violation or refusal, naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A message arrived that the current state does not allow.
    #[error("unexpected {got} while {state}")]
    Unexpected {
        /// What the session was waiting for.
        state: &'static str,
        /// The message's name.
        got: &'static str,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this build speaks {ours}")]
    Version {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The secret in Hello did not match the ticket.
    #[error("wrong secret: the sender does not hold this receiver's ticket")]
    Auth,
    /// The block size was not a power of two in range.
    #[error("block size {0} is not a power of two in {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")]
    BlockSize(u32),
    /// A manifest entry came with an unexpected id.
    #[error("manifest entry has id {got}, expected {expected}")]
    EntryOrder {
        /// The id expected next.
        expected: u32,
        /// The id received.
        got: u32,
    },
    /// A manifest path was refused.
    #[error("manifest entry {id}: {source}")]
    Path {
        /// The entry id.
        id: u32,
        /// What was wrong with the path.
        source: PathError,
    },
    /// ManifestEnd's count disagreed with the entries received.
    #[error("manifest ended with count {claimed}, but {received} entries arrived")]
    ManifestCount {
        /// The count claimed.
        claimed: u32,
        /// The entries received.
        received: u32,
    },
    /// An id named no file of the manifest.
    #[error("entry id {0} names no file in the manifest")]
    UnknownFile(u32),
    /// A file was announced or answered twice.
    #[error("file {0} completed twice")]
    Duplicate(u32),
    /// A block header did not fit the manifest.
    #[error("block of file {file} at offset {offset} with length {len}: {why}")]
    BadBlock {
        /// The file id.
        file: u32,
        /// The offset claimed.
        offset: u64,
        /// The length claimed.
        len: u32,
        /// What was wrong.
        why: &'static str,
    },
    /// The receiver claimed completion while files were still unanswered.
    #[error("receiver sent its summary with {0} files neither verified nor failed")]
    Incomplete(usize),
    /// The sender finished while a file of its manifest had no FileDone: the receiver would
    /// wait for its root forever.
    #[error("sender finished without announcing file {0} as done")]
    FinishedEarly(u32),
    /// A file has more blocks than a receiver tracks.
    #[error("entry {id}: {size} bytes is more than {MAX_FILE_BLOCKS} blocks of this block size")]
    TooLarge {
        /// The entry id.
        id: u32,
        /// The size claimed.
        size: u64,
    },
    /// The sender asked for something the receiver's owner did not allow.
    #[error("the receiver does not allow {what}: its owner must start it with {flag}")]
    NotAllowed {
        /// What was asked (`--delete`, `--inplace`).
        what: &'static str,
        /// The receiver's flag that allows it.
        flag: &'static str,
    },
    /// A manifest path was deeper than the receiver accepts.
    #[error("manifest entry {id}: {depth} levels deep, past the receiver's limit of {max} (its --max-depth)")]
    TooDeep {
        /// The entry id.
        id: u32,
        /// Its components.
        depth: usize,
        /// The limit.
        max: u32,
    },
    /// The manifest announced more entries than the receiver accepts.
    #[error("the manifest has more than {0} entries, the receiver's limit (its --max-entries)")]
    TooManyEntries(u32),
    /// Two manifest entries named the same path.
    #[error("manifest entries {first} and {id} both name {path:?}")]
    DuplicatePath {
        /// The earlier entry.
        first: u32,
        /// The later entry.
        id: u32,
        /// The path both name.
        path: String,
    },
    /// A hard-link entry did not name an earlier file of the manifest.
    #[error("manifest entry {id} is a hard link to {target:?}, which is no earlier file of the manifest")]
    HardLink {
        /// The link's entry.
        id: u32,
        /// The path it named.
        target: String,
    },
    /// Hello carried flags this build does not know.
    #[error("unknown Hello flags {0:#04x}")]
    Flags(u8),
    /// The sender sends another kind of session than this receiver takes (a database to a
    /// file receiver, say): the wrong ticket.
    #[error(
        "this receiver (`{}`) takes {}, but the sender sends {}: give the sender the ticket that `{}` prints",
        crate::message::session_kind(*ours).1,
        crate::message::session_kind(*ours).0,
        crate::message::session_kind(*theirs).0,
        crate::message::session_kind(*theirs).1
    )]
    WrongKind {
        /// This receiver's kind ([`crate::message::HELLO_KIND`] bits).
        ours: u8,
        /// The sender's Hello flags.
        theirs: u8,
    },
    /// A block index or count was outside the file.
    #[error("file {id}: block {index} is outside the file")]
    BlockRange {
        /// The file id.
        id: u32,
        /// The block index or count.
        index: u64,
    },
    /// The sender's exclude patterns were refused: one cannot be read, or there are too many.
    #[error("the sender's {0}")]
    Exclude(#[from] ExcludeError),
    /// The peer aborted the transfer.
    #[error("peer aborted ({code:?}): {message}")]
    Peer {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
}

impl SessionError {
    /// The error code to send the peer when this error ends a session.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Version { .. } => ErrorCode::Version,
            Self::Auth => ErrorCode::Auth,
            Self::Peer { code, .. } => *code,
            _ => ErrorCode::Protocol,
        }
    }
}

fn name(msg: &Message) -> &'static str {
    match msg {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::Exclude { .. } => "Exclude",
        Message::Entry(_) => "Entry",
        Message::ManifestEnd { .. } => "ManifestEnd",
        Message::FileDone { .. } => "FileDone",
        Message::Have { .. } => "Have",
        Message::HaveDone { .. } => "HaveDone",
        Message::HaveGroups { .. } => "HaveGroups",
        Message::WantDetail { .. } => "WantDetail",
        Message::WantPieces { .. } => "WantPieces",
        Message::Pieces { .. } => "Pieces",
        Message::Holding { .. } => "Holding",
        Message::Vouched { .. } => "Vouched",
        Message::Anchors { .. } => "Anchors",
        Message::Working { .. } => "Working",
        Message::VerifiedSoFar { .. } => "VerifiedSoFar",
        Message::MovedPieces { .. } => "MovedPieces",
        Message::Resend { .. } => "Resend",
        Message::FileVerified { .. } => "FileVerified",
        Message::FileFailed { .. } => "FileFailed",
        Message::Abandon { .. } => "Abandon",
        Message::Finish => "Finish",
        Message::Summary { .. } => "Summary",
        Message::Held { .. } => "Held",
        Message::Error { .. } => "Error",
    }
}

/// The key a manifest path is remembered by (the first 128 bits of its BLAKE3 hash).
fn path_key(path: &str) -> u128 {
    let hash = blake3::hash(path.as_bytes());
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

fn peer_error(msg: Message) -> SessionError {
    match msg {
        Message::Error { code, message } => SessionError::Peer { code, message },
        _ => unreachable!("peer_error is only called with Message::Error"),
    }
}

/// Number of blocks a file of `size` bytes is cut into (0 for an empty file).
pub fn block_count(size: u64, block_size: u32) -> u64 {
    Geometry::new(size, block_size).blocks()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    AwaitHello,
    AwaitManifest,
    Transfer,
    Finished,
}

impl RecvState {
    fn describe(self) -> &'static str {
        match self {
            Self::AwaitHello => "waiting for Hello",
            Self::AwaitManifest => "receiving the manifest",
            Self::Transfer => "transferring",
            Self::Finished => "finished",
        }
    }
}

/// What the receiver's engine must do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Send this message back to the sender.
    Reply(Message),
    /// An exclude pattern was accepted (it can be read, and is within the bounds); the session
    /// keeps it for [`ReceiverSession::excludes`].
    Exclude {
        /// The pattern.
        pattern: String,
    },
    /// A manifest entry was accepted; its path is valid.
    Entry(Entry),
    /// The manifest is complete; blocks may now be checked with
    /// [`ReceiverSession::check_block`].
    ManifestComplete,
    /// The sender has sent every block of this file the receiver lacks; its root hash is
    /// `root`.
    FileDone {
        /// The file id.
        id: u32,
        /// The expected BLAKE3 root.
        root: Digest,
        /// How many blocks were sent.
        sent: u64,
    },
    /// The sender asks for the block hashes of a group of a file (they differ from its own).
    WantDetail {
        /// The file id.
        id: u32,
        /// The group index.
        group: u64,
    },
    /// The sender asks for the piece hashes of the receiver's copy of a block.
    WantPieces {
        /// The file id.
        id: u32,
        /// The block index.
        index: u64,
    },
    /// The sender will not send this file (its source changed or vanished); what the receiver
    /// holds of it goes, and it counts as failed.
    Abandoned {
        /// The file id.
        id: u32,
        /// What the sender saw.
        reason: String,
    },
    /// The sender is busy reading file `id` (blocks the receiver holds, so nothing crosses).
    Working {
        /// The file id.
        id: u32,
        /// Bytes done.
        done: u64,
    },
    /// The sender has announced every file.
    Finish,
}

/// What a receiver lets its sender do, and how much it lets a manifest make it hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The sender may ask to delete entries its directories no longer have (`HELLO_DELETE`).
    pub allow_delete: bool,
    /// The sender may ask to write into existing files in place (`HELLO_INPLACE`).
    pub allow_inplace: bool,
    /// The most manifest entries.
    pub max_entries: u32,
    /// The most directory levels in a manifest path (components, the name included).
    pub max_depth: u32,
}

impl Default for Policy {
    /// Neither deletion nor in-place writes; two million entries.
    fn default() -> Self {
        Self {
            allow_delete: false,
            allow_inplace: false,
            max_entries: 2_000_000,
            max_depth: 256,
        }
    }
}

/// The receiver's side of a session.
#[derive(Debug)]
pub struct ReceiverSession {
    secret: [u8; 32],
    policy: Policy,
    /// A 128-bit hash of each manifest path, to refuse a path named twice without holding the
    /// paths twice.
    paths: std::collections::HashMap<u128, u32>,
    state: RecvState,
    block_size: u32,
    restart: bool,
    inplace: bool,
    delete: bool,
    dry_run: bool,
    rehash: bool,
    /// The sender's exclude patterns as they arrive, and their bytes in all.
    patterns: Vec<String>,
    pattern_bytes: usize,
    /// `patterns` compiled, once the manifest is complete.
    excludes: Excludes,
    entries: Vec<Entry>,
    done: Vec<bool>,
}

impl ReceiverSession {
    /// A session that will accept a sender proving `secret`, under the default [`Policy`].
    pub fn new(secret: [u8; 32]) -> Self {
        Self::with_policy(secret, Policy::default())
    }

    /// A session that will accept a sender proving `secret` and let it do what `policy` allows.
    pub fn with_policy(secret: [u8; 32], policy: Policy) -> Self {
        Self {
            secret,
            policy,
            paths: Default::default(),
            state: RecvState::AwaitHello,
            block_size: 0,
            restart: false,
            inplace: false,
            delete: false,
            dry_run: false,
            rehash: false,
            patterns: Vec::new(),
            pattern_bytes: 0,
            excludes: Excludes::default(),
            entries: Vec::new(),
            done: Vec::new(),
        }
    }

    /// The block size the sender chose (0 before Hello).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Whether the sender asked to discard partial files instead of resuming them.
    pub fn restart(&self) -> bool {
        self.restart
    }

    /// Whether the sender asked to update existing files in place.
    pub fn inplace(&self) -> bool {
        self.inplace
    }

    /// Whether the sender asked to delete what its directories no longer hold.
    pub fn delete(&self) -> bool {
        self.delete
    }

    /// Whether the sender only compares (writes nothing at the receiver).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether the sender asked for part files to be hashed whole, not taken on their
    /// journal's word.
    pub fn rehash(&self) -> bool {
        self.rehash
    }

    /// The sender's exclude patterns, compiled with the manifest's first entry (none before):
    /// what its `--delete` must leave alone.
    pub fn excludes(&self) -> &Excludes {
        &self.excludes
    }

    /// The manifest received so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Handles one control message from the sender.
    pub fn on_message(&mut self, msg: Message) -> Result<ReceiverEvent, SessionError> {
        if matches!(msg, Message::Error { .. }) {
            return Err(peer_error(msg));
        }
        let unexpected = |state: RecvState, msg: &Message| SessionError::Unexpected {
            state: state.describe(),
            got: name(msg),
        };
        match (self.state, msg) {
            (
                RecvState::AwaitHello,
                Message::Hello {
                    version,
                    secret,
                    block_size,
                    flags,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    return Err(SessionError::Version {
                        ours: PROTOCOL_VERSION,
                        theirs: version,
                    });
                }
                if !constant_time_eq(&secret, &self.secret) {
                    return Err(SessionError::Auth);
                }
                if !block_size.is_power_of_two()
                    || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
                {
                    return Err(SessionError::BlockSize(block_size));
                }
                if flags & crate::message::HELLO_KIND != 0 {
                    return Err(SessionError::WrongKind {
                        ours: 0,
                        theirs: flags,
                    });
                }
                let known =
                    HELLO_RESTART | HELLO_INPLACE | HELLO_DELETE | HELLO_DRY_RUN | HELLO_REHASH;
                if flags & !known != 0 {
                    return Err(SessionError::Flags(flags));
                }
                let dry_run = flags & HELLO_DRY_RUN != 0;
                if flags & HELLO_DELETE != 0 && !dry_run && !self.policy.allow_delete {
                    return Err(SessionError::NotAllowed {
                        what: "--delete",
                        flag: "--allow-delete",
                    });
                }
                if flags & HELLO_INPLACE != 0 && !dry_run && !self.policy.allow_inplace {
                    return Err(SessionError::NotAllowed {
                        what: "--inplace",
                        flag: "--allow-inplace",
                    });
                }
                self.restart = flags & HELLO_RESTART != 0;
                self.inplace = flags & HELLO_INPLACE != 0;
                self.delete = flags & HELLO_DELETE != 0;
                self.dry_run = flags & HELLO_DRY_RUN != 0;
                self.rehash = flags & HELLO_REHASH != 0;
                self.block_size = block_size;
                self.state = RecvState::AwaitManifest;
                Ok(ReceiverEvent::Reply(Message::Welcome {
                    version: PROTOCOL_VERSION,
                }))
            }
            (RecvState::AwaitManifest, Message::Exclude { pattern })
                if self.delete && self.entries.is_empty() =>
            {
                Excludes::check_next(self.patterns.len(), self.pattern_bytes, &pattern)?;
                self.pattern_bytes += pattern.len();
                self.patterns.push(pattern.clone());
                Ok(ReceiverEvent::Exclude { pattern })
            }
            (RecvState::AwaitManifest, Message::Entry(entry)) => {
                let expected = self.entries.len() as u32;
                if expected >= self.policy.max_entries {
                    return Err(SessionError::TooManyEntries(self.policy.max_entries));
                }
                if entry.id != expected {
                    return Err(SessionError::EntryOrder {
                        expected,
                        got: entry.id,
                    });
                }
                let depth = path::validate(&entry.path)
                    .map_err(|source| SessionError::Path {
                        id: entry.id,
                        source,
                    })?
                    .len();
                if depth > self.policy.max_depth as usize {
                    return Err(SessionError::TooDeep {
                        id: entry.id,
                        depth,
                        max: self.policy.max_depth,
                    });
                }
                let key = path_key(&entry.path);
                if let Some(&first) = self.paths.get(&key) {
                    return Err(SessionError::DuplicatePath {
                        first,
                        id: entry.id,
                        path: entry.path,
                    });
                }
                if entry.kind == EntryKind::HardLink {
                    // The name of an earlier file of this manifest, nothing else: a link can
                    // only reach what the transfer itself puts in place.
                    let names_a_file = self
                        .paths
                        .get(&path_key(&entry.link_target))
                        .and_then(|&t| self.entries.get(t as usize))
                        .is_some_and(|e| e.kind == EntryKind::File && e.path == entry.link_target);
                    if !names_a_file {
                        return Err(SessionError::HardLink {
                            id: entry.id,
                            target: entry.link_target,
                        });
                    }
                }
                // Patterns come before the first entry, so they are complete here: compiled now,
                // not at the manifest's end, because the destination may replace an entry whose
                // type changed (`--delete`) while the manifest still arrives, and must leave what
                // they match alone then too.
                if self.entries.is_empty() {
                    self.excludes = Excludes::new(std::mem::take(&mut self.patterns))?;
                }
                self.paths.insert(key, entry.id);
                let mut entry = entry;
                if entry.kind != EntryKind::File {
                    entry.size = 0;
                }
                if block_count(entry.size, self.block_size) > MAX_FILE_BLOCKS {
                    return Err(SessionError::TooLarge {
                        id: entry.id,
                        size: entry.size,
                    });
                }
                self.entries.push(entry.clone());
                self.done.push(false);
                Ok(ReceiverEvent::Entry(entry))
            }
            (RecvState::AwaitManifest, Message::ManifestEnd { count }) => {
                let received = self.entries.len() as u32;
                if count != received {
                    return Err(SessionError::ManifestCount {
                        claimed: count,
                        received,
                    });
                }
                // A manifest without entries: patterns that keep nothing, compiled for their
                // errors' sake.
                if received == 0 {
                    self.excludes = Excludes::new(std::mem::take(&mut self.patterns))?;
                }
                self.state = RecvState::Transfer;
                Ok(ReceiverEvent::ManifestComplete)
            }
            (RecvState::Transfer, Message::FileDone { id, root, sent }) => {
                let size = self.file(id)?.size;
                if sent > block_count(size, self.block_size) {
                    return Err(SessionError::BlockRange { id, index: sent });
                }
                let done = &mut self.done[id as usize];
                if *done {
                    return Err(SessionError::Duplicate(id));
                }
                *done = true;
                Ok(ReceiverEvent::FileDone { id, root, sent })
            }
            (RecvState::Transfer, Message::Abandon { id, reason }) => {
                self.file(id)?;
                let done = &mut self.done[id as usize];
                if *done {
                    return Err(SessionError::Duplicate(id));
                }
                *done = true;
                Ok(ReceiverEvent::Abandoned { id, reason })
            }
            (RecvState::Transfer | RecvState::Finished, Message::WantDetail { id, group }) => {
                let size = self.file(id)?.size;
                if group >= block_count(size, self.block_size).div_ceil(GROUP_BLOCKS) {
                    return Err(SessionError::BlockRange { id, index: group });
                }
                Ok(ReceiverEvent::WantDetail { id, group })
            }
            (RecvState::Transfer | RecvState::Finished, Message::Working { id, done }) => {
                self.file(id)?;
                Ok(ReceiverEvent::Working { id, done })
            }
            (RecvState::Transfer | RecvState::Finished, Message::WantPieces { id, index }) => {
                let size = self.file(id)?.size;
                if index >= block_count(size, self.block_size) {
                    return Err(SessionError::BlockRange { id, index });
                }
                Ok(ReceiverEvent::WantPieces { id, index })
            }
            (RecvState::Transfer, Message::Finish) => {
                let undone = self
                    .entries
                    .iter()
                    .zip(&self.done)
                    .find(|(e, done)| e.kind == EntryKind::File && !**done);
                if let Some((e, _)) = undone {
                    return Err(SessionError::FinishedEarly(e.id));
                }
                self.state = RecvState::Finished;
                Ok(ReceiverEvent::Finish)
            }
            (state, msg) => Err(unexpected(state, &msg)),
        }
    }

    fn file(&self, id: u32) -> Result<&Entry, SessionError> {
        self.entries
            .get(id as usize)
            .filter(|e| e.kind == EntryKind::File)
            .ok_or(SessionError::UnknownFile(id))
    }

    /// Checks that a block header names a file of the manifest, at a block boundary inside it,
    /// with exactly the length that block must have. Returns the block's index in its file.
    pub fn check_block(&self, h: &BlockHeader) -> Result<u64, SessionError> {
        let bad = |why| SessionError::BadBlock {
            file: h.file,
            offset: h.offset,
            len: h.len,
            why,
        };
        if !matches!(self.state, RecvState::Transfer | RecvState::Finished) {
            return Err(bad("block before the manifest was complete"));
        }
        let entry = self.file(h.file)?;
        let bs = u64::from(self.block_size);
        if h.early
            && self
                .entries
                .iter()
                .find(|e| e.kind == EntryKind::File)
                .is_none_or(|e| e.id != h.file)
        {
            return Err(bad(
                "an early block of a file other than the manifest's first",
            ));
        }
        if h.moved && h.patch {
            // A moved patch: its bytes lie inside one block, past the literal prefix.
            let end = h.offset.checked_add(u64::from(h.len));
            let start = h.offset % bs;
            return match end {
                _ if h.len == 0 => Err(bad("empty patch")),
                _ if u64::from(h.packed) > start => Err(bad("moved patch inside its prefix")),
                Some(end) if end <= entry.size && (end - 1) / bs == h.offset / bs => {
                    Ok(h.offset / bs)
                }
                _ => Err(bad("patch is not inside one block of the file")),
            };
        }
        if h.packed != 0 && h.packed >= h.len {
            return Err(bad("packed payload is not smaller than the block"));
        }
        if h.patch {
            let end = h.offset.checked_add(u64::from(h.len));
            return match end {
                _ if h.len == 0 => Err(bad("empty patch")),
                Some(end) if end <= entry.size && (end - 1) / bs == h.offset / bs => {
                    Ok(h.offset / bs)
                }
                _ => Err(bad("patch is not inside one block of the file")),
            };
        }
        if h.offset % bs != 0 {
            return Err(bad("offset is not on a block boundary"));
        }
        if h.offset >= entry.size {
            return Err(bad("offset is past the end of the file"));
        }
        let want = (entry.size - h.offset).min(bs);
        if u64::from(h.len) != want {
            return Err(bad("length is not the block's length"));
        }
        Ok(h.offset / bs)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the sender's engine learns from a receiver message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver accepted the Hello; send the manifest.
    Welcomed,
    /// The receiver holds these blocks of a file already.
    Have {
        /// The file id.
        id: u32,
        /// Index of the first block described.
        first: u64,
        /// The receiver's block hashes.
        cvs: Vec<Digest>,
    },
    /// The receiver holds these whole groups of blocks.
    HaveGroups {
        /// The file id.
        id: u32,
        /// Index of the first group described.
        first: u64,
        /// The receiver's group digests.
        digests: Vec<Digest>,
    },
    /// The receiver holds `len` bytes of this file; its scan follows.
    Holding {
        /// The file id.
        id: u32,
        /// Bytes held.
        len: u64,
        /// [`SenderEvent::Vouched`] will precede the scan's report of each block it covers.
        vouching: bool,
    },
    /// The receiver's resume journal, written while this same source version was sent,
    /// records these blocks with these hashes.
    Vouched {
        /// The file id.
        id: u32,
        /// Index of the first block described.
        first: u64,
        /// The recorded block hashes.
        cvs: Vec<Digest>,
    },
    /// Anchors of blocks of an older version the receiver holds ([`crate::anchor`]).
    Anchors {
        /// The file id.
        id: u32,
        /// Index of the first block described.
        first: u64,
        /// The anchors.
        anchors: Vec<u64>,
    },
    /// The receiver is busy with file `id`'s own work, `done` bytes of it so far.
    Working {
        /// The file id.
        id: u32,
        /// Bytes done.
        done: u64,
    },
    /// Of file `id`, blocks of `done` bytes have been verified at the receiver so far.
    VerifiedSoFar {
        /// The file id.
        id: u32,
        /// Bytes verified.
        done: u64,
    },
    /// The receiver has described everything it holds of this file.
    HaveDone(u32),
    /// Piece hashes of the receiver's copy of a block.
    Pieces {
        /// The file id.
        id: u32,
        /// The block index.
        index: u64,
        /// One per piece; empty if the receiver could not read its copy.
        hashes: Vec<PieceHash>,
    },
    /// A moved block failed verification at the receiver: these are the piece hashes of what it
    /// put together ([`Message::MovedPieces`]).
    MovedPieces {
        /// The file id.
        id: u32,
        /// The block index.
        index: u64,
        /// The moved block's offset in the older version.
        from: u64,
        /// Its literal prefix's length.
        prefix: u32,
        /// One per piece.
        hashes: Vec<PieceHash>,
    },
    /// The receiver asks for a block again.
    Resend {
        /// The file id.
        id: u32,
        /// The block's offset.
        offset: u64,
    },
    /// The file was verified and is in place.
    Verified(u32),
    /// The file failed at the receiver.
    Failed {
        /// The file id.
        id: u32,
        /// The receiver's reason.
        reason: String,
        /// What kind of failure.
        cause: crate::message::FailCause,
    },
    /// The transfer is complete.
    Summary {
        /// Entries in place.
        entries: u32,
        /// Bytes verified.
        bytes: u64,
        /// Entries the receiver removed (`--delete`).
        deleted: u64,
    },
}

/// The sender's side of a session.
#[derive(Debug)]
pub struct SenderSession {
    welcomed: bool,
    answered: Vec<bool>,
    files: Vec<bool>,
    /// Per entry: `Some(size)` for files.
    sizes: Vec<Option<u64>>,
    block_size: u32,
    /// Next file entry expected in a HaveDone (they come in manifest order).
    next_have_done: usize,
    finished: bool,
}

impl SenderSession {
    /// A session for a manifest where `sizes[id]` is `Some(size)` for files and `None` for
    /// directories and symlinks, cut into blocks of `block_size`.
    pub fn new(sizes: Vec<Option<u64>>, block_size: u32) -> Self {
        Self {
            welcomed: false,
            answered: vec![false; sizes.len()],
            files: sizes.iter().map(Option::is_some).collect(),
            sizes,
            block_size,
            next_have_done: 0,
            finished: false,
        }
    }

    /// The Hello that opens the session.
    pub fn hello(secret: [u8; 32], block_size: u32, flags: u8) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            secret,
            block_size,
            flags,
        }
    }

    fn blocks(&self, id: u32) -> Result<u64, SessionError> {
        match self.sizes.get(id as usize) {
            Some(Some(size)) => Ok(block_count(*size, self.block_size)),
            _ => Err(SessionError::UnknownFile(id)),
        }
    }

    /// Whether the receiver's `Welcome` has arrived.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Handles one control message from the receiver.
    pub fn on_message(&mut self, msg: Message) -> Result<SenderEvent, SessionError> {
        let state = if !self.welcomed {
            "waiting for Welcome"
        } else if self.finished {
            "finished"
        } else {
            "transferring"
        };
        match msg {
            Message::Error { .. } => Err(peer_error(msg)),
            Message::Welcome { version } if !self.welcomed => {
                if version != PROTOCOL_VERSION {
                    return Err(SessionError::Version {
                        ours: PROTOCOL_VERSION,
                        theirs: version,
                    });
                }
                self.welcomed = true;
                Ok(SenderEvent::Welcomed)
            }
            Message::Holding { id, len, vouching } if self.welcomed && !self.finished => {
                self.scan_going_on(id, "Holding")?;
                Ok(SenderEvent::Holding { id, len, vouching })
            }
            Message::Vouched { id, first, cvs } if self.welcomed && !self.finished => {
                let blocks = self.scan_going_on(id, "Vouched")?;
                let end = first.saturating_add(cvs.len() as u64);
                if end > blocks {
                    return Err(SessionError::BlockRange { id, index: end });
                }
                Ok(SenderEvent::Vouched { id, first, cvs })
            }
            Message::HaveGroups { id, first, digests } if self.welcomed && !self.finished => {
                let groups = self.scan_going_on(id, "HaveGroups")?.div_ceil(GROUP_BLOCKS);
                let end = first.saturating_add(digests.len() as u64);
                if end > groups {
                    return Err(SessionError::BlockRange { id, index: end });
                }
                Ok(SenderEvent::HaveGroups { id, first, digests })
            }
            Message::Anchors { id, first, anchors } if self.welcomed && !self.finished => {
                // As a Have, which it precedes.
                let blocks = self.blocks(id)?;
                let end = first.saturating_add(anchors.len() as u64);
                if end > blocks {
                    return Err(SessionError::BlockRange { id, index: end });
                }
                Ok(SenderEvent::Anchors { id, first, anchors })
            }
            Message::Working { id, done } if self.welcomed && !self.finished => {
                self.blocks(id)?;
                Ok(SenderEvent::Working { id, done })
            }
            Message::VerifiedSoFar { id, done } if self.welcomed && !self.finished => {
                self.blocks(id)?;
                Ok(SenderEvent::VerifiedSoFar { id, done })
            }
            Message::Have { id, first, cvs } if self.welcomed && !self.finished => {
                // A Have may also answer a WantDetail after HaveDone.
                let blocks = self.blocks(id)?;
                let end = first.saturating_add(cvs.len() as u64);
                if end > blocks {
                    return Err(SessionError::BlockRange { id, index: end });
                }
                Ok(SenderEvent::Have { id, first, cvs })
            }
            Message::HaveDone { id } if self.welcomed && !self.finished => {
                self.blocks(id)?;
                let expected = self.files[self.next_have_done..]
                    .iter()
                    .position(|f| *f)
                    .map(|i| i + self.next_have_done);
                if expected != Some(id as usize) {
                    return Err(SessionError::Unexpected {
                        state: "waiting for HaveDone in manifest order",
                        got: "HaveDone",
                    });
                }
                self.next_have_done = id as usize + 1;
                Ok(SenderEvent::HaveDone(id))
            }
            Message::Pieces { id, index, hashes } if self.welcomed && !self.finished => {
                if index >= self.blocks(id)? {
                    return Err(SessionError::BlockRange { id, index });
                }
                Ok(SenderEvent::Pieces { id, index, hashes })
            }
            Message::MovedPieces {
                id,
                index,
                from,
                prefix,
                hashes,
            } if self.welcomed && !self.finished => {
                if index >= self.blocks(id)? {
                    return Err(SessionError::BlockRange { id, index });
                }
                Ok(SenderEvent::MovedPieces {
                    id,
                    index,
                    from,
                    prefix,
                    hashes,
                })
            }
            Message::Resend { id, offset } if self.welcomed && !self.finished => {
                let blocks = self.blocks(id)?;
                let bs = u64::from(self.block_size);
                if offset % bs != 0 || offset / bs >= blocks {
                    return Err(SessionError::BlockRange {
                        id,
                        index: offset / bs,
                    });
                }
                Ok(SenderEvent::Resend { id, offset })
            }
            Message::FileVerified { id } if self.welcomed && !self.finished => {
                self.answer(id)?;
                Ok(SenderEvent::Verified(id))
            }
            Message::FileFailed { id, reason, cause } if self.welcomed && !self.finished => {
                self.answer(id)?;
                Ok(SenderEvent::Failed { id, reason, cause })
            }
            Message::Summary {
                entries,
                bytes,
                deleted,
            } if self.welcomed && !self.finished => {
                let unanswered = self
                    .files
                    .iter()
                    .zip(&self.answered)
                    .filter(|(f, a)| **f && !**a)
                    .count();
                if unanswered > 0 {
                    return Err(SessionError::Incomplete(unanswered));
                }
                self.finished = true;
                Ok(SenderEvent::Summary {
                    entries,
                    bytes,
                    deleted,
                })
            }
            other => Err(SessionError::Unexpected {
                state,
                got: name(&other),
            }),
        }
    }

    /// The block count of file `id`, for a report of the receiver's scan of it (`got`), which
    /// must come before the file's `HaveDone`.
    fn scan_going_on(&self, id: u32, got: &'static str) -> Result<u64, SessionError> {
        let blocks = self.blocks(id)?;
        if (id as usize) < self.next_have_done {
            return Err(SessionError::Unexpected {
                state: "HaveDone already received for this file",
                got,
            });
        }
        Ok(blocks)
    }

    fn answer(&mut self, id: u32) -> Result<(), SessionError> {
        let i = id as usize;
        if !self.files.get(i).copied().unwrap_or(false) {
            return Err(SessionError::UnknownFile(id));
        }
        if std::mem::replace(&mut self.answered[i], true) {
            return Err(SessionError::Duplicate(id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// `Working` names a file of the manifest, before the receiver's `Summary` one way and once
    /// the manifest is complete the other; an id outside the manifest is a protocol error.
    #[test]
    fn working_names_a_file_of_the_manifest() {
        let file = Message::Entry(Entry {
            id: 0,
            kind: EntryKind::File,
            path: "f".into(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 5 << 20,
            link_target: String::new(),
            version: [0; 16],
            owner: crate::message::Owner::default(),
        });
        let mut r = ReceiverSession::new([7; 32]);
        r.on_message(SenderSession::hello([7; 32], 1 << 20, 0))
            .unwrap();
        r.on_message(file).unwrap();
        let working = |id| Message::Working { id, done: 3 };
        assert!(
            r.on_message(working(0)).is_err(),
            "before the manifest's end"
        );
        r.on_message(Message::ManifestEnd { count: 1 }).unwrap();
        assert_eq!(
            r.on_message(working(0)),
            Ok(ReceiverEvent::Working { id: 0, done: 3 })
        );
        assert_eq!(r.on_message(working(1)), Err(SessionError::UnknownFile(1)));

        let mut s = SenderSession::new(vec![Some(5 << 20)], 1 << 20);
        s.on_message(Message::Welcome {
            version: crate::PROTOCOL_VERSION,
        })
        .unwrap();
        assert_eq!(
            s.on_message(working(0)),
            Ok(SenderEvent::Working { id: 0, done: 3 })
        );
        assert_eq!(s.on_message(working(9)), Err(SessionError::UnknownFile(9)));
    }

    /// `VerifiedSoFar` goes from receiver to sender only, naming a file of the manifest,
    /// after the `Welcome`.
    #[test]
    fn verified_so_far_goes_to_the_sender_and_names_a_file() {
        let so_far = |id| Message::VerifiedSoFar { id, done: 7 };
        let mut s = SenderSession::new(vec![Some(5 << 20), None], 1 << 20);
        assert!(s.on_message(so_far(0)).is_err(), "before the Welcome");
        s.on_message(Message::Welcome {
            version: crate::PROTOCOL_VERSION,
        })
        .unwrap();
        assert_eq!(
            s.on_message(so_far(0)),
            Ok(SenderEvent::VerifiedSoFar { id: 0, done: 7 })
        );
        assert_eq!(s.on_message(so_far(1)), Err(SessionError::UnknownFile(1)));
        assert_eq!(s.on_message(so_far(2)), Err(SessionError::UnknownFile(2)));
        let mut r = ReceiverSession::new([7; 32]);
        r.on_message(SenderSession::hello([7; 32], 1 << 20, 0))
            .unwrap();
        assert!(r.on_message(so_far(0)).is_err(), "the receiver's to send");
    }

    /// What a receiver does not allow is refused at Hello, naming the flag that allows it;
    /// a compare-only run asks for nothing and may carry the flags.
    #[test]
    fn delete_and_inplace_are_the_receivers_to_allow() {
        let entry = |id: u32, path: &str| {
            Message::Entry(Entry {
                id,
                kind: EntryKind::File,
                path: path.into(),
                mode: 0o644,
                mtime_sec: 0,
                mtime_nsec: 0,
                size: 1,
                link_target: String::new(),
                version: [0; 16],
                owner: crate::message::Owner::default(),
            })
        };
        for (flag, name) in [
            (HELLO_DELETE, "--allow-delete"),
            (HELLO_INPLACE, "--allow-inplace"),
        ] {
            let mut s = ReceiverSession::new([7; 32]);
            let err = s
                .on_message(SenderSession::hello([7; 32], 1 << 20, flag))
                .unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            let mut s = ReceiverSession::new([7; 32]);
            s.on_message(SenderSession::hello([7; 32], 1 << 20, flag | HELLO_DRY_RUN))
                .unwrap();
            let mut s = ReceiverSession::with_policy(
                [7; 32],
                Policy {
                    allow_delete: true,
                    allow_inplace: true,
                    ..Policy::default()
                },
            );
            s.on_message(SenderSession::hello([7; 32], 1 << 20, flag))
                .unwrap();
        }
        // A path named twice, and a manifest past the entry limit.
        let mut s = ReceiverSession::with_policy(
            [7; 32],
            Policy {
                max_entries: 3,
                ..Policy::default()
            },
        );
        s.on_message(SenderSession::hello([7; 32], 1 << 20, 0))
            .unwrap();
        s.on_message(entry(0, "a")).unwrap();
        let err = s.on_message(entry(1, "a")).unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::DuplicatePath {
                    first: 0,
                    id: 1,
                    ..
                }
            ),
            "{err}"
        );
        let mut s = ReceiverSession::with_policy(
            [7; 32],
            Policy {
                max_entries: 3,
                ..Policy::default()
            },
        );
        s.on_message(SenderSession::hello([7; 32], 1 << 20, 0))
            .unwrap();
        for i in 0..3 {
            s.on_message(entry(i, &format!("f{i}"))).unwrap();
        }
        assert_eq!(
            s.on_message(entry(3, "f3")),
            Err(SessionError::TooManyEntries(3))
        );
        // A path deeper than the limit.
        let mut s = ReceiverSession::with_policy(
            [7; 32],
            Policy {
                max_depth: 3,
                ..Policy::default()
            },
        );
        s.on_message(SenderSession::hello([7; 32], 1 << 20, 0))
            .unwrap();
        s.on_message(entry(0, "a/b/c")).unwrap();
        let err = s.on_message(entry(1, "a/b/c/d")).unwrap_err();
        assert!(err.to_string().contains("--max-depth"), "{err}");
    }

    /// Exclude patterns come with `--delete`, before the first entry, within their bounds and
    /// readable; they are compiled with the first entry (the destination may replace an entry
    /// whose type changed before the manifest ends).
    #[test]
    fn exclude_patterns_are_bounded_and_come_before_the_manifest() {
        use crate::exclude::{MAX_PATTERNS, MAX_PATTERN_BYTES};
        let deleting = || {
            let mut s = ReceiverSession::with_policy(
                [7; 32],
                Policy {
                    allow_delete: true,
                    ..Policy::default()
                },
            );
            s.on_message(SenderSession::hello([7; 32], 1 << 20, HELLO_DELETE))
                .unwrap();
            s
        };
        let exclude = |p: &str| Message::Exclude { pattern: p.into() };
        let dir = |id: u32, path: &str| {
            Message::Entry(Entry {
                id,
                kind: EntryKind::Dir,
                path: path.into(),
                mode: 0o755,
                mtime_sec: 0,
                mtime_nsec: 0,
                size: 0,
                link_target: String::new(),
                version: [0; 16],
                owner: crate::message::Owner::default(),
            })
        };
        let mut s = deleting();
        assert_eq!(
            s.on_message(exclude("*.o")),
            Ok(ReceiverEvent::Exclude {
                pattern: "*.o".into()
            })
        );
        s.on_message(exclude("/cache/")).unwrap();
        assert!(s.excludes().is_empty(), "compiled with the first entry");
        s.on_message(dir(0, "top")).unwrap();
        assert_eq!(s.excludes().patterns(), ["*.o", "/cache/"]);
        assert!(
            matches!(
                s.on_message(exclude("late")),
                Err(SessionError::Unexpected { got: "Exclude", .. })
            ),
            "after the first entry"
        );
        let mut s = deleting();
        s.on_message(exclude("*.o")).unwrap();
        s.on_message(exclude("/cache/")).unwrap();
        s.on_message(dir(0, "top")).unwrap();
        s.on_message(Message::ManifestEnd { count: 1 }).unwrap();
        assert_eq!(s.excludes().patterns(), ["*.o", "/cache/"]);
        assert!(s.excludes().excludes_entry("top/a/x.o", false));
        assert!(s.excludes().excludes_entry("top/cache", true));
        assert!(!s.excludes().excludes_entry("top/a/cache", true));

        // Without --delete they mean nothing: refused.
        let mut s = ReceiverSession::new([7; 32]);
        s.on_message(SenderSession::hello([7; 32], 1 << 20, 0))
            .unwrap();
        assert!(matches!(
            s.on_message(exclude("*.o")),
            Err(SessionError::Unexpected { got: "Exclude", .. })
        ));
        // One that cannot be read, one too many, too many bytes.
        let mut s = deleting();
        let err = s.on_message(exclude("a[b")).unwrap_err();
        assert!(
            err.to_string().contains("\"a[b\"") && err.code() == ErrorCode::Protocol,
            "{err}"
        );
        let mut s = deleting();
        for i in 0..MAX_PATTERNS {
            s.on_message(exclude(&format!("p{i}"))).unwrap();
        }
        assert_eq!(
            s.on_message(exclude("one-more")),
            Err(SessionError::Exclude(ExcludeError::TooMany))
        );
        let mut s = deleting();
        let long = "x".repeat(4000);
        for _ in 0..MAX_PATTERN_BYTES / 4000 {
            s.on_message(exclude(&long)).unwrap();
        }
        assert_eq!(
            s.on_message(exclude(&long)),
            Err(SessionError::Exclude(ExcludeError::TooLong))
        );
    }

    use super::*;

    fn file(id: u32, path: &str, size: u64) -> Message {
        Message::Entry(Entry {
            id,
            kind: EntryKind::File,
            path: path.into(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size,
            link_target: String::new(),
            version: [0; 16],
            owner: crate::message::Owner::default(),
        })
    }

    fn ready(size: u64) -> ReceiverSession {
        let mut s = ReceiverSession::new([7; 32]);
        s.on_message(SenderSession::hello([7; 32], 1024, 0))
            .unwrap();
        s.on_message(file(0, "a", size)).unwrap();
        s.on_message(Message::ManifestEnd { count: 1 }).unwrap();
        s
    }

    #[test]
    fn wrong_secret_and_version_are_refused() {
        let mut s = ReceiverSession::new([7; 32]);
        assert_eq!(
            s.on_message(SenderSession::hello([8; 32], 1024, 0)),
            Err(SessionError::Auth)
        );
        let mut s = ReceiverSession::new([7; 32]);
        let err = s
            .on_message(Message::Hello {
                version: 99,
                secret: [7; 32],
                block_size: 1024,
                flags: 0,
            })
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Version);
    }

    #[test]
    fn a_hard_link_names_an_earlier_file_only() {
        let link = |id: u32, path: &str, target: &str| {
            Message::Entry(Entry {
                kind: EntryKind::HardLink,
                link_target: target.into(),
                ..match file(id, path, 0) {
                    Message::Entry(e) => e,
                    _ => unreachable!(),
                }
            })
        };
        let fresh = || {
            let mut s = ReceiverSession::new([7; 32]);
            s.on_message(SenderSession::hello([7; 32], 1024, 0))
                .unwrap();
            s.on_message(file(0, "a", 10)).unwrap();
            s.on_message(Message::Entry(Entry {
                kind: EntryKind::Dir,
                ..match file(1, "d", 0) {
                    Message::Entry(e) => e,
                    _ => unreachable!(),
                }
            }))
            .unwrap();
            assert!(matches!(
                s.on_message(link(2, "b", "a")),
                Ok(ReceiverEvent::Entry(_))
            ));
            s
        };
        for (target, why) in [
            ("d", "a directory"),
            ("nothing", "no entry"),
            ("b", "a link"),
            ("c", "itself or later"),
        ] {
            let mut t = fresh();
            assert_eq!(
                t.on_message(link(3, "c", target)),
                Err(SessionError::HardLink {
                    id: 3,
                    target: target.into()
                }),
                "{why}"
            );
        }
    }

    #[test]
    fn an_abandoned_file_is_done_once() {
        let mut s = ready(3000);
        let abandon = Message::Abandon {
            id: 0,
            reason: "vanished".into(),
        };
        assert_eq!(
            s.on_message(abandon.clone()),
            Ok(ReceiverEvent::Abandoned {
                id: 0,
                reason: "vanished".into()
            })
        );
        assert_eq!(s.on_message(abandon), Err(SessionError::Duplicate(0)));
        let done = Message::FileDone {
            id: 0,
            root: [1; 32],
            sent: 3,
        };
        assert_eq!(s.on_message(done), Err(SessionError::Duplicate(0)));
        assert_eq!(s.on_message(Message::Finish), Ok(ReceiverEvent::Finish));
        let mut s = ready(3000);
        let unknown = Message::Abandon {
            id: 5,
            reason: String::new(),
        };
        assert_eq!(s.on_message(unknown), Err(SessionError::UnknownFile(5)));
    }

    #[test]
    fn finish_needs_every_file_done() {
        let mut s = ready(3000);
        assert_eq!(
            s.on_message(Message::Finish),
            Err(SessionError::FinishedEarly(0))
        );
        let mut s = ready(3000);
        s.on_message(Message::FileDone {
            id: 0,
            root: [1; 32],
            sent: 3,
        })
        .unwrap();
        assert_eq!(s.on_message(Message::Finish), Ok(ReceiverEvent::Finish));
    }

    #[test]
    fn nothing_before_hello() {
        let mut s = ReceiverSession::new([7; 32]);
        assert!(matches!(
            s.on_message(file(0, "a", 1)),
            Err(SessionError::Unexpected { .. })
        ));
    }

    #[test]
    fn hostile_paths_and_bad_block_sizes_are_refused() {
        let mut s = ReceiverSession::new([7; 32]);
        assert_eq!(
            s.on_message(SenderSession::hello([7; 32], 3000, 0)),
            Err(SessionError::BlockSize(3000))
        );
        let mut s = ReceiverSession::new([7; 32]);
        s.on_message(SenderSession::hello([7; 32], 1024, 0))
            .unwrap();
        assert!(matches!(
            s.on_message(file(0, "../x", 1)),
            Err(SessionError::Path { id: 0, .. })
        ));
        assert!(matches!(
            s.on_message(file(0, "/etc/x", 1)),
            Err(SessionError::Path { id: 0, .. })
        ));
    }

    #[test]
    fn block_headers_must_fit_the_manifest() {
        let s = ready(2500);
        let h = |offset, len| BlockHeader {
            file: 0,
            offset,
            len,
            hash: [0; 32],
            patch: false,
            packed: 0,
            zero: false,
            moved: false,
            early: false,
            spliced: false,
        };
        assert_eq!(s.check_block(&h(0, 1024)), Ok(0));
        assert_eq!(
            s.check_block(&BlockHeader {
                packed: 300,
                ..h(0, 1024)
            }),
            Ok(0)
        );
        assert!(
            s.check_block(&BlockHeader {
                packed: 1024,
                ..h(0, 1024)
            })
            .is_err(),
            "a packed block must be smaller than the block"
        );
        assert_eq!(s.check_block(&h(2048, 452)), Ok(2));
        assert!(s.check_block(&h(2048, 1024)).is_err());
        assert!(s.check_block(&h(100, 1024)).is_err());
        assert!(s.check_block(&h(3072, 1024)).is_err());
        assert!(s
            .check_block(&BlockHeader {
                file: 9,
                ..h(0, 1024)
            })
            .is_err());
    }

    #[test]
    fn patches_stay_inside_one_block() {
        let s = ready(2500);
        let p = |offset, len| BlockHeader {
            file: 0,
            offset,
            len,
            hash: [0; 32],
            patch: true,
            packed: 0,
            zero: false,
            moved: false,
            early: false,
            spliced: false,
        };
        assert_eq!(s.check_block(&p(100, 50)), Ok(0));
        assert_eq!(s.check_block(&p(1024, 1024)), Ok(1));
        assert_eq!(s.check_block(&p(2400, 100)), Ok(2));
        assert!(s.check_block(&p(1000, 48)).is_err(), "spans two blocks");
        assert!(s.check_block(&p(2400, 101)).is_err(), "past the end");
        assert!(s.check_block(&p(10, 0)).is_err(), "empty");
        assert!(s.check_block(&p(u64::MAX, 10)).is_err(), "overflow");
    }

    #[test]
    fn moved_patches_stay_inside_one_block_past_their_prefix() {
        let s = ready(2500);
        let p = |offset, len, prefix| BlockHeader {
            file: 0,
            offset,
            len,
            hash: [0; 32],
            patch: true,
            packed: prefix,
            zero: false,
            moved: true,
            early: false,
            spliced: false,
        };
        assert_eq!(s.check_block(&p(100, 50, 0)), Ok(0));
        assert_eq!(s.check_block(&p(1124, 900, 100)), Ok(1));
        assert!(s.check_block(&p(1124, 900, 101)).is_err(), "in the prefix");
        assert!(s.check_block(&p(1000, 48, 0)).is_err(), "spans two blocks");
        assert!(s.check_block(&p(2400, 101, 0)).is_err(), "past the end");
        assert!(s.check_block(&p(10, 0, 0)).is_err(), "empty");
        assert!(s.check_block(&p(u64::MAX, 10, 0)).is_err(), "overflow");
    }

    #[test]
    fn file_done_once_per_file() {
        let mut s = ready(10);
        let done = Message::FileDone {
            id: 0,
            root: [1; 32],
            sent: 1,
        };
        assert!(s.on_message(done.clone()).is_ok());
        assert_eq!(s.on_message(done), Err(SessionError::Duplicate(0)));
    }

    #[test]
    fn sender_tracks_answers() {
        let mut s = SenderSession::new(vec![Some(10), None], 1024);
        assert!(s.on_message(Message::FileVerified { id: 0 }).is_err());
        s.on_message(Message::Welcome {
            version: PROTOCOL_VERSION,
        })
        .unwrap();
        assert_eq!(
            s.on_message(Message::FileVerified { id: 0 }),
            Ok(SenderEvent::Verified(0))
        );
        assert_eq!(
            s.on_message(Message::FileVerified { id: 0 }),
            Err(SessionError::Duplicate(0))
        );
        assert_eq!(
            s.on_message(Message::FileVerified { id: 1 }),
            Err(SessionError::UnknownFile(1))
        );
    }

    #[test]
    fn sender_refuses_a_summary_before_every_file_is_answered() {
        let mut s = SenderSession::new(vec![Some(10), Some(10)], 1024);
        s.on_message(Message::Welcome {
            version: PROTOCOL_VERSION,
        })
        .unwrap();
        s.on_message(Message::FileVerified { id: 0 }).unwrap();
        assert_eq!(
            s.on_message(Message::Summary {
                entries: 2,
                bytes: 0,
                deleted: 0,
            }),
            Err(SessionError::Incomplete(1))
        );
    }

    #[test]
    fn huge_entries_are_refused_before_allocating() {
        let mut s = ReceiverSession::new([7; 32]);
        s.on_message(SenderSession::hello([7; 32], 1024, 0))
            .unwrap();
        assert_eq!(
            s.on_message(file(0, "a", u64::MAX)),
            Err(SessionError::TooLarge {
                id: 0,
                size: u64::MAX
            })
        );
    }
}

#[cfg(test)]
mod v2_tests {
    use super::*;

    #[test]
    fn have_and_resend_are_bounded_by_the_file() {
        let mut s = SenderSession::new(vec![None, Some(3000), Some(10)], 1024);
        s.on_message(Message::Welcome {
            version: PROTOCOL_VERSION,
        })
        .unwrap();
        assert!(s
            .on_message(Message::Have {
                id: 1,
                first: 1,
                cvs: vec![[0; 32]; 2]
            })
            .is_ok());
        assert!(s
            .on_message(Message::Have {
                id: 1,
                first: 2,
                cvs: vec![[0; 32]; 2]
            })
            .is_err());
        assert!(s
            .on_message(Message::Resend {
                id: 1,
                offset: 2048
            })
            .is_ok());
        assert!(s
            .on_message(Message::Resend {
                id: 1,
                offset: 3072
            })
            .is_err());
        assert!(s
            .on_message(Message::Resend { id: 1, offset: 100 })
            .is_err());
        assert!(s.on_message(Message::Resend { id: 0, offset: 0 }).is_err());
        // HaveDone comes once per file, in manifest order.
        assert!(s.on_message(Message::HaveDone { id: 2 }).is_err());
        assert_eq!(
            s.on_message(Message::HaveDone { id: 1 }),
            Ok(SenderEvent::HaveDone(1))
        );
        assert_eq!(
            s.on_message(Message::HaveDone { id: 2 }),
            Ok(SenderEvent::HaveDone(2))
        );
        assert!(s.on_message(Message::HaveDone { id: 2 }).is_err());
    }

    #[test]
    fn unknown_hello_flags_and_oversized_sent_counts_are_refused() {
        let mut r = ReceiverSession::new([1; 32]);
        assert_eq!(
            r.on_message(SenderSession::hello([1; 32], 1024, 0x80)),
            Err(SessionError::Flags(0x80))
        );
        let mut r = ReceiverSession::new([1; 32]);
        let err = r
            .on_message(SenderSession::hello(
                [1; 32],
                1024,
                crate::message::HELLO_UNITS,
            ))
            .unwrap_err();
        assert!(matches!(err, SessionError::WrongKind { ours: 0, .. }));
        assert!(err.to_string().contains("`sluice db recv` prints"), "{err}");
        let mut r = ReceiverSession::new([1; 32]);
        r.on_message(SenderSession::hello([1; 32], 1024, HELLO_RESTART))
            .unwrap();
        assert!(r.restart());
        r.on_message(Message::Entry(Entry {
            id: 0,
            kind: EntryKind::File,
            path: "f".into(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 2048,
            link_target: String::new(),
            version: [0; 16],
            owner: crate::message::Owner::default(),
        }))
        .unwrap();
        r.on_message(Message::ManifestEnd { count: 1 }).unwrap();
        assert!(r
            .on_message(Message::FileDone {
                id: 0,
                root: [0; 32],
                sent: 3
            })
            .is_err());
    }
}
