//! The messages of the Sluice protocol and their in-memory form.
//!
//! Two kinds of unit cross the wire. [`Message`]s travel on the control stream, each framed by
//! [`crate::codec`] as a length prefix, a type byte and a body. [`BlockHeader`]s travel on data
//! streams, each immediately followed by `len` bytes of payload. Nothing here does I/O; see
//! [`crate::codec`] for the byte layout and its bounds.

/// A BLAKE3 hash or chaining value: 32 bytes.
pub type Digest = [u8; 32];

/// Blocks per group in [`Message::HaveGroups`].
pub const GROUP_BLOCKS: u64 = 64;

/// The digest of a group of block hashes: BLAKE3 of their concatenation.
pub fn group_digest(cvs: &[Digest]) -> Digest {
    let mut h = blake3::Hasher::new();
    for cv in cvs {
        h.update(cv);
    }
    *h.finalize().as_bytes()
}

/// Bytes per piece of a block in [`Message::Pieces`]: 4 KiB, or more for blocks above 1 MiB so
/// that a block has at most 256 pieces.
pub fn piece_size(block_size: u32) -> u32 {
    (block_size / 256).max(4096).min(block_size)
}

/// A piece hash: the first 16 bytes of the piece's BLAKE3 hash. Only a hint of which bytes
/// differ: a patched block is verified whole against its chaining value, so a collision costs a
/// re-send, never a wrong byte.
pub type PieceHash = [u8; 16];

/// The [`PieceHash`] of `data`.
pub fn piece_hash(data: &[u8]) -> PieceHash {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(data).as_bytes()[..16]);
    out
}

/// [`Message::Hello`] flag: discard partial files of earlier runs instead of resuming them.
pub const HELLO_RESTART: u8 = 1;
/// [`Message::Hello`] flag: update an existing destination file in place instead of building a
/// new file and renaming it (no second copy on disk; a crash leaves a mix of old and new blocks
/// under the final name until the transfer is run again).
pub const HELLO_INPLACE: u8 = 2;
/// [`Message::Hello`] flag: when every file is in place, remove what the transferred
/// directories hold that the manifest does not name (as `rsync --delete`).
pub const HELLO_DELETE: u8 = 4;
/// [`Message::Hello`] flag: compare only. The receiver scans what it holds and answers each
/// FileDone with FileVerified (identical) or FileFailed (what differs), and writes nothing; the
/// sender sends no blocks (`sluice verify SRC TICKET`).
pub const HELLO_DRY_RUN: u8 = 8;
/// [`Message::Hello`] flag: when resuming, the receiver reads and hashes the whole part file
/// instead of trusting its resume journal (`--rehash`: a part file changed by another program
/// between two runs is then repaired, not installed).
pub const HELLO_REHASH: u8 = 16;
/// [`Message::Hello`] flag: the session carries database units (`sluice db send`), not files.
pub const HELLO_UNITS: u8 = 32;
/// [`Message::Hello`] flag: the session is a benchmark (`sluice bench`), not files.
pub const HELLO_BENCH: u8 = 64;
/// The [`Message::Hello`] flags that say what a session carries; none of them: files. A
/// receiver of another kind refuses the Hello at once, naming both kinds.
pub const HELLO_KIND: u8 = HELLO_UNITS | HELLO_BENCH;

/// What a session whose Hello has `flags` carries, and the command that receives it.
pub fn session_kind(flags: u8) -> (&'static str, &'static str) {
    match flags & HELLO_KIND {
        0 => ("files", "sluice recv"),
        HELLO_UNITS => ("a database", "sluice db recv"),
        HELLO_BENCH => ("a benchmark", "sluice bench --serve"),
        _ => ("an unknown kind of session", "another version of sluice"),
    }
}

/// What kind of filesystem object a manifest entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its bytes follow as blocks on data streams.
    File = 0,
    /// A directory; created at the receiver, no payload.
    Dir = 1,
    /// A symbolic link; recreated as a link with the same target, never followed.
    Symlink = 2,
    /// A second name of a file listed earlier in the manifest (a hard link; since version 8):
    /// `link_target` is that file's path. No payload; the receiver links the name to the file
    /// once it is in place, as `cp -a`, tar and `rsync -H` keep hard links.
    HardLink = 3,
}

impl EntryKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::File),
            1 => Some(Self::Dir),
            2 => Some(Self::Symlink),
            3 => Some(Self::HardLink),
            _ => None,
        }
    }
}

/// One entry of the manifest: a file, directory or symlink, named relative to the transfer root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Identifier used by block headers and completion messages; entries are numbered 0, 1, 2…
    /// in the order they are sent.
    pub id: u32,
    /// What the entry is.
    pub kind: EntryKind,
    /// The path relative to the destination, `/`-separated. Validated by [`crate::path`] at the
    /// receiver before anything is created.
    pub path: String,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds within the second (< 1e9).
    pub mtime_nsec: u32,
    /// Size in bytes for files; 0 for directories and symlinks.
    pub size: u64,
    /// Link target for symlinks, empty otherwise. Copied verbatim, as rsync does.
    pub link_target: String,
    /// For files: the source version, a tag the sender derives from the file's identity and
    /// change times ([`Entry::version`] is equal for two listings only if the file was not
    /// touched in between). A receiver that kept a resume journal written while this very
    /// version was sent may vouch for its blocks ([`Message::Vouched`]). All zero: unknown,
    /// never vouched for (directories, symlinks, `--rehash`).
    pub version: SourceVersion,
    /// Who owns the entry at the source (since version 14). A receiver that may give files
    /// away (root) gives the entry this owner and group, and only then its setuid and setgid
    /// bits; any other receiver leaves it to its own user.
    pub owner: Owner,
}

/// The longest user or group name an [`Owner`] carries: 255 bytes, as its one-byte length
/// allows (Linux's `LOGIN_NAME_MAX` is 256 with the terminating NUL). A longer name is sent as
/// none, and the id alone decides.
pub const MAX_OWNER_NAME: usize = 255;

/// The owner and group of a manifest entry at the source, as `rsync -a` sends them: the
/// numeric ids, and the names they have there, by which the receiver finds its own ids (as
/// rsync maps them unless `--numeric-ids`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The owner's user id at the source; `None`: not sent (`--no-owner`). Never `u32::MAX`
    /// (`-1`, which `chown(2)` reads as "leave alone").
    pub uid: Option<u32>,
    /// The group id at the source; `None`: not sent (`--no-group`). Never `u32::MAX`.
    pub gid: Option<u32>,
    /// The owner's user name at the source, as names are written ([`crate::path`], section 6
    /// of `docs/protocol.md`); empty when it has none, it is not sent (`--numeric-ids`) or
    /// `uid` is `None`. At most [`MAX_OWNER_NAME`] bytes, no NUL.
    pub user: String,
    /// The group's name at the source, as `user` is written; empty likewise.
    pub group: String,
}

/// See [`Entry::version`].
pub type SourceVersion = [u8; 16];

/// Protocol error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    Version = 1,
    /// The secret from the ticket did not match.
    Auth = 2,
    /// A manifest entry or block was malformed or violated the protocol.
    Protocol = 3,
    /// A local I/O error (disk full, permission denied…) at the peer.
    Io = 4,
    /// The transfer was cancelled by the user.
    Cancelled = 5,
    /// The peer's destination is full (its own exit code 6, and the sender's).
    NoSpace = 6,
}

impl ErrorCode {
    pub(crate) fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::Version,
            2 => Self::Auth,
            3 => Self::Protocol,
            4 => Self::Io,
            6 => Self::NoSpace,
            _ => Self::Cancelled,
        }
    }
}

/// Why a file or unit failed at the receiver ([`Message::FileFailed`]): what the sender's user
/// can do about it, and so the sender's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCause {
    /// Its data failed verification (or, in a dry run, differs), or no other cause fits.
    Verification = 0,
    /// A local failure at the receiver: a file or system call, a database statement.
    Local = 1,
    /// The receiver's destination is full.
    NoSpace = 2,
    /// The receiver's destination refused the path.
    Destination = 3,
    /// The receiver lost what it writes into (a database server went away): the same command
    /// resumes.
    Lost = 4,
}

impl FailCause {
    /// The cause of wire value `v`; an unknown value is [`FailCause::Verification`].
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Local,
            2 => Self::NoSpace,
            3 => Self::Destination,
            4 => Self::Lost,
            _ => Self::Verification,
        }
    }
}

/// A control-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sender → receiver, first message: protocol version, the ticket's secret, and the block
    /// size every file of this transfer is cut into.
    Hello {
        /// Protocol version, [`crate::PROTOCOL_VERSION`].
        version: u16,
        /// The one-time secret from the ticket.
        secret: [u8; 32],
        /// Block size in bytes: a power of two from 1 KiB to 16 MiB.
        block_size: u32,
        /// Bit set of [`HELLO_RESTART`], [`HELLO_INPLACE`], [`HELLO_DELETE`], [`HELLO_DRY_RUN`]
        /// and [`HELLO_REHASH`];
        /// other bits must be 0.
        flags: u8,
    },
    /// Receiver → sender: the secret was right; send the manifest.
    Welcome {
        /// The receiver's protocol version.
        version: u16,
    },
    /// Sender → receiver, between Hello and the first Entry, only with [`HELLO_DELETE`]: one
    /// exclude pattern (`--exclude`); the receiver's deletion leaves what it matches alone
    /// ([`crate::exclude`]). At most [`crate::exclude::MAX_PATTERNS`] of them.
    Exclude {
        /// The pattern, as the sender's user gave it.
        pattern: String,
    },
    /// Sender → receiver: one manifest entry.
    Entry(Entry),
    /// Sender → receiver: the manifest is complete and held `count` entries.
    ManifestEnd {
        /// Number of entries sent, a check against loss of framing.
        count: u32,
    },
    /// Receiver → sender: the receiver already holds these blocks of file `id` (from a partial
    /// file of an interrupted run, or an older version under the final name): `cvs[i]` is the
    /// hash of block `first + i` as [`BlockHeader::hash`] defines it, or 32 zero bytes for a
    /// block the receiver does not hold. Always starts at a group boundary and covers at most
    /// one group: the trailing partial group at the end of the scan, or the answer to a
    /// [`Message::WantDetail`]. Blocks never named are missing.
    Have {
        /// The file's entry id.
        id: u32,
        /// Index of the block `cvs[0]` describes.
        first: u64,
        /// Block hashes, at most [`crate::codec::MAX_HAVE`].
        cvs: Vec<Digest>,
    },
    /// Receiver → sender: digests of whole groups of [`GROUP_BLOCKS`] blocks the receiver
    /// holds: `digests[i]` is [`group_digest`] of the block hashes of group `first + i` (the
    /// last group of a file may be shorter). The sender compares a group with its own and asks
    /// for the group's block hashes ([`Message::WantDetail`]) only when they differ, so an
    /// unchanged region costs 32 bytes per group instead of 32 per block.
    HaveGroups {
        /// The file's entry id.
        id: u32,
        /// Index of the group `digests[0]` describes.
        first: u64,
        /// Group digests, at most [`crate::codec::MAX_HAVE`].
        digests: Vec<Digest>,
    },
    /// Receiver → sender, before the scan's results: the destination holds `len` bytes of file
    /// `id` (a partial file or an older version). Blocks past `len` are certainly missing, so
    /// the sender sends them first while the receiver's scan of the rest goes on.
    Holding {
        /// The file's entry id.
        id: u32,
        /// Bytes held.
        len: u64,
        /// The destination's resume journal for this file was written while this same
        /// [`Entry::version`] was sent: [`Message::Vouched`] follows for the blocks it records,
        /// each before the `Have`/`HaveGroups` that covers it.
        vouching: bool,
    },
    /// Receiver → sender: blocks `first..` of file `id` are recorded, with these hashes, in the
    /// resume journal written while the same [`Entry::version`] of the file was sent (each
    /// block was verified against that sender's hash, written and made durable). The sender may
    /// take `cvs` as its own hashes of those blocks instead of reading them. The blocks are
    /// reported again in the usual `Have`/`HaveGroups`, which this message precedes.
    Vouched {
        /// The file's entry id.
        id: u32,
        /// Index of the block `cvs[0]` describes.
        first: u64,
        /// Block hashes, at most [`crate::codec::MAX_HAVE`].
        cvs: Vec<Digest>,
    },
    /// Receiver → sender, just before the `Have` that reports the same blocks of an older
    /// version (not a part file, and not for an in-place run): the [`crate::anchor::anchor`] of
    /// each of those blocks, [`crate::anchor::NO_ANCHOR`] where there is none. The sender looks
    /// for them at other offsets of its file and may send a block as moved
    /// ([`BlockHeader::moved`]). Since version 9.
    Anchors {
        /// The file's entry id.
        id: u32,
        /// Index of the block `anchors[0]` describes.
        first: u64,
        /// Anchors, at most [`crate::codec::MAX_HAVE`].
        anchors: Vec<u64>,
    },
    /// Either way: this side is busy with work of its own for file `id` that the other cannot
    /// see, `done` bytes of it so far: the receiver copying the older version into the part file
    /// of a delta, the sender reading blocks the receiver already holds (a large unchanged
    /// file). Sent about once a second while the work lasts, which can be minutes for a large
    /// file: the other side counts it as progress, as it counts a verified block, so its stall
    /// timeout does not end the transfer meanwhile. Since version 10.
    Working {
        /// The file's entry id.
        id: u32,
        /// Bytes of the work done so far.
        done: u64,
    },
    /// Receiver → sender: of file `id`, blocks of `done` bytes in all have arrived and matched
    /// their hashes so far (their full lengths, whatever part of them crossed). Sent about once
    /// a second while the file is under way and the figure grows, so that the sender can show
    /// what is verified before the file's `FileVerified` (of one large file, nothing was for
    /// the whole transfer). Since version 16.
    VerifiedSoFar {
        /// The file's entry id.
        id: u32,
        /// Bytes of the file's blocks verified so far.
        done: u64,
    },
    /// Sender → receiver: send the block hashes of this group (as a `Have`); it differs.
    WantDetail {
        /// The file's entry id.
        id: u32,
        /// The group index.
        group: u64,
    },
    /// Sender → receiver: block `index` of file `id` differs from the receiver's copy; send the
    /// hashes of that copy's pieces ([`Message::Pieces`]), so only the differing bytes travel.
    WantPieces {
        /// The file's entry id.
        id: u32,
        /// The block index.
        index: u64,
    },
    /// Receiver → sender: the [`PieceHash`]es of the receiver's copy of block `index` of file
    /// `id`, one per [`piece_size`] bytes (the last piece may be shorter). Empty if the receiver
    /// cannot read its copy; the sender then sends the whole block.
    Pieces {
        /// The file's entry id.
        id: u32,
        /// The block index.
        index: u64,
        /// Piece hashes, at most [`crate::codec::MAX_PIECES`].
        hashes: Vec<PieceHash>,
    },
    /// Receiver → sender: no more `Have`/`HaveGroups` for file `id` from the scan (a `Have`
    /// answering a `WantDetail` may still follow). Sent for every file entry, in manifest order.
    HaveDone {
        /// The file's entry id.
        id: u32,
    },
    /// Sender → receiver: every block of file `id` the receiver lacks has been written to a data
    /// stream; `sent` blocks were sent (the others match what the receiver said it has); the
    /// file's BLAKE3 root hash (equal to `b3sum`'s output) is `root`.
    FileDone {
        /// The file's entry id.
        id: u32,
        /// The BLAKE3 hash of the whole file.
        root: Digest,
        /// Blocks sent on data streams (not counting re-sends).
        sent: u64,
    },
    /// Receiver → sender: the moved block `index` of file `id` ([`BlockHeader::moved`], its
    /// first `prefix` bytes literal and the rest from offset `from` of the older version) failed
    /// verification: the older version's bytes there are not all the block's (an edit the
    /// anchors could not show). `hashes` are the [`PieceHash`]es of the block as the receiver put
    /// it together; the sender sends it again as a moved patch, carrying only the pieces that
    /// differ. Since version 12.
    MovedPieces {
        /// The file's entry id.
        id: u32,
        /// The block index.
        index: u64,
        /// The moved block's offset in the older version.
        from: u64,
        /// Its literal prefix's length.
        prefix: u32,
        /// Piece hashes, at most [`crate::codec::MAX_PIECES`].
        hashes: Vec<PieceHash>,
    },
    /// Receiver → sender: the block of file `id` at `offset` failed verification; send it again.
    Resend {
        /// The file's entry id.
        id: u32,
        /// The block's offset.
        offset: u64,
    },
    /// Receiver → sender: file `id` was verified and renamed into place.
    FileVerified {
        /// The file's entry id.
        id: u32,
    },
    /// Receiver → sender: file `id` failed; nothing was put in its place.
    FileFailed {
        /// The file's entry id.
        id: u32,
        /// What went wrong, for the user.
        reason: String,
        /// What kind of failure it was.
        cause: FailCause,
    },
    /// Sender → receiver, instead of `FileDone`: file `id` will not be sent, because its source
    /// changed, vanished or could not be read while the transfer ran (as rsync's "file has
    /// vanished" and tar's "file changed as we read it"). The receiver drops what it holds of
    /// it and answers `FileFailed`; the other files go on.
    Abandon {
        /// The file's entry id.
        id: u32,
        /// What the sender saw, for the user.
        reason: String,
    },
    /// Sender → receiver: no more files will be announced as done.
    Finish,
    /// Receiver → sender: the transfer is complete and every entry is in place.
    Summary {
        /// Entries put in place.
        entries: u32,
        /// Payload bytes verified and written.
        bytes: u64,
        /// Entries removed under `HELLO_DELETE` (a directory with what it held counts once).
        /// Since version 13.
        deleted: u64,
    },
    /// Receiver → sender, in a unit session (see [`crate::unit`]): the destination already holds
    /// the unit named `key` (committed by an earlier, interrupted run), so the sender need not
    /// send it. The list ends with an empty `key`.
    Held {
        /// The unit's key, as its source names it.
        key: String,
    },
    /// Either way: the transfer is aborted.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// The fixed-size header that precedes every block of payload on a data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// The file's entry id.
    pub file: u32,
    /// Byte offset of the block in the file; a multiple of the block size.
    pub offset: u64,
    /// Payload length in bytes: the block size, or less for a file's last block.
    pub len: u32,
    /// The block's BLAKE3 chaining value (its subtree hash), or the file's root hash when the file
    /// is a single block. The receiver checks the payload against it before writing.
    pub hash: Digest,
    /// A patch (tag [`crate::codec::PATCH_TAG`]): the payload is bytes `offset..offset + len`
    /// of one block, which the receiver completes from its own copy of that block (the one it
    /// sent [`Message::Pieces`] for) before checking the whole block against `hash`. `offset`
    /// need not be on a block boundary.
    pub patch: bool,
    /// 0 for a block sent as it is; otherwise the block is packed (tag
    /// [`crate::codec::PACKED_TAG`]): its payload is this many bytes, a zstd frame that must
    /// unpack to exactly `len` bytes, and `hash` is checked on what it unpacks to. Only a
    /// whole block is packed, and only when that makes it smaller.
    pub packed: u32,
    /// A whole block of zeros (tag [`crate::codec::ZERO_TAG`]): no payload follows. The receiver
    /// checks `hash` against `len` zero bytes and leaves a hole in the file where its
    /// filesystem can (a sparse source's holes stay holes, and cross as 53 bytes a block).
    pub zero: bool,
    /// A moved block (tag [`crate::codec::MOVED_TAG`]; since version 9): its payload is an
    /// 8-byte offset `from` (`u64 LE`) into the older version the receiver holds, then the
    /// block's first `packed` bytes as they are (its literal prefix, `packed < len`); the rest of
    /// the block, `len − packed` bytes, is the older version's from `from` on. `hash` is checked
    /// on the whole block as for one that crossed. Only a whole block moves.
    pub moved: bool,
    /// An early block (tag [`crate::codec::EARLY_TAG`]; since version 11): a plain block of
    /// the manifest's first file, sent before the receiver's `Holding` or `HaveDone` for it so
    /// that the first round trip carries data. The receiver drops it if it sent a `Holding` for
    /// the file (it holds something of it, and the sender then sends the block again if
    /// needed); otherwise it is a block like any other. Never patched, packed, zero or moved.
    pub early: bool,
    /// A spliced block (tag [`crate::codec::SPLICE_TAG`]; since version 15): its payload,
    /// `packed` bytes (fewer than `len`), lists runs of the older version the receiver holds and
    /// of literal bytes that make up the whole block ([`crate::splice`]); `offset` and `len` are
    /// the block's. `hash` is checked on the block put together. Never patched, zero or moved.
    pub spliced: bool,
}
