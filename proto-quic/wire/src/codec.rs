//! Byte encoding of [`Message`]s and [`BlockHeader`]s.
//!
//! Control frames are `len: u32 LE | type: u8 | body`, where `len` counts the type byte and the
//! body and is at most [`MAX_FRAME_LEN`]. Integers are little-endian; strings are `u16 LE` length
//! plus UTF-8 bytes, at most [`MAX_STRING_LEN`]. A block header is a fixed [`BLOCK_HEADER_LEN`]
//! bytes starting with a tag byte: [`BLOCK_TAG`], [`PATCH_TAG`], [`PACKED_TAG`] or [`ZERO_TAG`].
//!
//! Bytes from a peer are hostile: every length is bounded before anything is allocated, nothing
//! is indexed without a check, and every failure is a [`DecodeError`] saying what was wrong.
//! [`FrameDecoder`] reassembles frames from arbitrary pieces of a stream.

use crate::message::{
    BlockHeader, Entry, EntryKind, ErrorCode, FailCause, Message, Owner, PieceHash, MAX_OWNER_NAME,
};

/// The largest control frame accepted, type byte and body included. Control messages are small
/// (a manifest entry is at most two strings of [`MAX_STRING_LEN`]); the bound keeps a hostile
/// length prefix from making us buffer megabytes.
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// The longest string (path, link target, reason) accepted: Linux's `PATH_MAX`.
pub const MAX_STRING_LEN: usize = 4096;
/// Most hashes in one [`Message::Have`] or [`Message::HaveGroups`]: 256 × 32 bytes keeps the
/// frame under [`MAX_FRAME_LEN`].
pub const MAX_HAVE: usize = 256;
/// Size of an encoded [`BlockHeader`].
pub const BLOCK_HEADER_LEN: usize = 1 + 4 + 8 + 4 + 4 + 32;
/// First byte of every block header, to catch a data stream that lost its framing.
pub const BLOCK_TAG: u8 = 0xB1;
/// First byte of a patch header ([`BlockHeader::patch`]); otherwise laid out as a block header.
pub const PATCH_TAG: u8 = 0xB2;
/// First byte of a packed block's header ([`BlockHeader::packed`]): its payload is a zstd frame.
pub const PACKED_TAG: u8 = 0xB3;
/// First byte of a zero block's header ([`BlockHeader::zero`]): `len` zero bytes, none on the
/// wire.
pub const ZERO_TAG: u8 = 0xB4;
/// First byte of a moved block's header ([`BlockHeader::moved`]): an 8-byte offset and the
/// block's literal prefix follow, not the block.
pub const MOVED_TAG: u8 = 0xB5;
/// Payload of a moved block: the offset of its bytes in the receiver's older version.
pub const MOVED_LEN: usize = 8;
/// First byte of an early block's header ([`BlockHeader::early`]; since version 11): a block
/// as [`BLOCK_TAG`]'s, sent before the receiver said what it holds of the file.
pub const EARLY_TAG: u8 = 0xB6;
/// First byte of a moved patch's header ([`BlockHeader::moved`] and [`BlockHeader::patch`];
/// since version 12): a moved block whose bytes at `offset..offset + len` (inside the block, past
/// its prefix) differ from the older version's. The 8-byte offset, the prefix (`packed` bytes)
/// and those `len` bytes follow.
pub const MOVED_PATCH_TAG: u8 = 0xB7;
/// First byte of a spliced block's header ([`BlockHeader::spliced`]; since version 15): runs of
/// the older version and literal bytes, `packed` bytes of them ([`crate::splice`]), follow.
pub const SPLICE_TAG: u8 = 0xB8;
/// Most hashes in one [`Message::Pieces`]: a block has at most 256 pieces.
pub const MAX_PIECES: usize = 256;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_ENTRY: u8 = 3;
const T_MANIFEST_END: u8 = 4;
const T_FILE_DONE: u8 = 5;
const T_FILE_VERIFIED: u8 = 6;
const T_FILE_FAILED: u8 = 7;
const T_FINISH: u8 = 8;
const T_SUMMARY: u8 = 9;
const T_ERROR: u8 = 10;
const T_HAVE: u8 = 11;
const T_HAVE_DONE: u8 = 12;
const T_RESEND: u8 = 13;
const T_HAVE_GROUPS: u8 = 14;
const T_WANT_DETAIL: u8 = 15;
const T_HOLDING: u8 = 16;
const T_WANT_PIECES: u8 = 17;
const T_PIECES: u8 = 18;
const T_VOUCHED: u8 = 19;
const T_HELD: u8 = 20;
const T_ABANDON: u8 = 21;
const T_ANCHORS: u8 = 22;
const T_WORKING: u8 = 23;
const T_MOVED_PIECES: u8 = 24;
const T_EXCLUDE: u8 = 25;
const T_VERIFIED_SO_FAR: u8 = 26;

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix was 0 or above [`MAX_FRAME_LEN`].
    #[error("control frame length {0} is outside 1..={MAX_FRAME_LEN}")]
    FrameLength(usize),
    /// The type byte names no message.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body ended before a field of the message.
    #[error("message type {msg_type} truncated: needed {needed} more bytes for {field}")]
    Truncated {
        /// The message type byte.
        msg_type: u8,
        /// The field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes were left over after the last field.
    #[error("message type {msg_type} has {extra} trailing bytes")]
    Trailing {
        /// The message type byte.
        msg_type: u8,
        /// Bytes left over.
        extra: usize,
    },
    /// A string was longer than [`MAX_STRING_LEN`] or not UTF-8.
    #[error("field {field} is not a valid string of at most {MAX_STRING_LEN} bytes")]
    BadString {
        /// The field being read.
        field: &'static str,
    },
    /// An enumerated field held an unknown value.
    #[error("field {field} has invalid value {value}")]
    BadValue {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A block header did not start with a block tag.
    #[error("block header tag {0:#04x} is none of {BLOCK_TAG:#04x}, {PATCH_TAG:#04x}, {PACKED_TAG:#04x}, {ZERO_TAG:#04x}, {MOVED_TAG:#04x}, {EARLY_TAG:#04x}, {MOVED_PATCH_TAG:#04x}, {SPLICE_TAG:#04x}: data stream out of frame")]
    BadBlockTag(u8),
    /// A spliced block's payload was malformed.
    #[error("{0}")]
    BadSplice(#[from] crate::splice::SpliceError),
}

/// Appends the encoded frame of `msg` to `out`.
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match msg {
        Message::Hello {
            version,
            secret,
            block_size,
            flags,
        } => {
            out.push(T_HELLO);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(secret);
            out.extend_from_slice(&block_size.to_le_bytes());
            out.push(*flags);
        }
        Message::Welcome { version } => {
            out.push(T_WELCOME);
            out.extend_from_slice(&version.to_le_bytes());
        }
        Message::Entry(e) => {
            out.push(T_ENTRY);
            out.extend_from_slice(&e.id.to_le_bytes());
            out.push(e.kind as u8);
            put_str(out, &e.path);
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(&e.mtime_sec.to_le_bytes());
            out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            put_str(out, &e.link_target);
            out.extend_from_slice(&e.version);
            put_owner(out, &e.owner);
        }
        Message::Exclude { pattern } => {
            out.push(T_EXCLUDE);
            put_str(out, pattern);
        }
        Message::ManifestEnd { count } => {
            out.push(T_MANIFEST_END);
            out.extend_from_slice(&count.to_le_bytes());
        }
        Message::FileDone { id, root, sent } => {
            out.push(T_FILE_DONE);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(root);
            out.extend_from_slice(&sent.to_le_bytes());
        }
        Message::Have { id, first, cvs } => {
            out.push(T_HAVE);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            put_digests(out, cvs);
        }
        Message::HaveGroups { id, first, digests } => {
            out.push(T_HAVE_GROUPS);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            put_digests(out, digests);
        }
        Message::Holding { id, len, vouching } => {
            out.push(T_HOLDING);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(*vouching));
        }
        Message::Vouched { id, first, cvs } => {
            out.push(T_VOUCHED);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            put_digests(out, cvs);
        }
        Message::Anchors { id, first, anchors } => {
            out.push(T_ANCHORS);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            let words: Vec<[u8; 8]> = anchors.iter().map(|a| a.to_le_bytes()).collect();
            put_hashes(out, &words, MAX_HAVE);
        }
        Message::Working { id, done } => {
            out.push(T_WORKING);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&done.to_le_bytes());
        }
        Message::VerifiedSoFar { id, done } => {
            out.push(T_VERIFIED_SO_FAR);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&done.to_le_bytes());
        }
        Message::WantDetail { id, group } => {
            out.push(T_WANT_DETAIL);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&group.to_le_bytes());
        }
        Message::WantPieces { id, index } => {
            out.push(T_WANT_PIECES);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&index.to_le_bytes());
        }
        Message::Pieces { id, index, hashes } => {
            out.push(T_PIECES);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&index.to_le_bytes());
            put_hashes(out, hashes, MAX_PIECES);
        }
        Message::HaveDone { id } => {
            out.push(T_HAVE_DONE);
            out.extend_from_slice(&id.to_le_bytes());
        }
        Message::MovedPieces {
            id,
            index,
            from,
            prefix,
            hashes,
        } => {
            out.push(T_MOVED_PIECES);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&from.to_le_bytes());
            out.extend_from_slice(&prefix.to_le_bytes());
            put_hashes(out, hashes, MAX_PIECES);
        }
        Message::Resend { id, offset } => {
            out.push(T_RESEND);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        Message::FileVerified { id } => {
            out.push(T_FILE_VERIFIED);
            out.extend_from_slice(&id.to_le_bytes());
        }
        Message::FileFailed { id, reason, cause } => {
            out.push(T_FILE_FAILED);
            out.extend_from_slice(&id.to_le_bytes());
            put_str(out, reason);
            out.push(*cause as u8);
        }
        Message::Abandon { id, reason } => {
            out.push(T_ABANDON);
            out.extend_from_slice(&id.to_le_bytes());
            put_str(out, reason);
        }
        Message::Finish => out.push(T_FINISH),
        Message::Summary {
            entries,
            bytes,
            deleted,
        } => {
            out.push(T_SUMMARY);
            out.extend_from_slice(&entries.to_le_bytes());
            out.extend_from_slice(&bytes.to_le_bytes());
            out.extend_from_slice(&deleted.to_le_bytes());
        }
        Message::Held { key } => {
            out.push(T_HELD);
            put_str(out, key);
        }
        Message::Error { code, message } => {
            out.push(T_ERROR);
            out.extend_from_slice(&(*code as u16).to_le_bytes());
            put_str(out, message);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Writes a string as `u16 LE` length plus bytes, cutting it at [`MAX_STRING_LEN`] on a char
/// boundary. The sender validates paths with [`crate::path::validate`] when it builds the
/// manifest, so only free-text reasons are ever cut.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STRING_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// [`Owner::uid`] is present.
const OWNER_UID: u8 = 1;
/// [`Owner::gid`] is present.
const OWNER_GID: u8 = 2;

/// Writes an [`Owner`]: `present: u8` ([`OWNER_UID`] | [`OWNER_GID`]), `uid: u32`, `gid: u32`
/// (0 when absent), and the user and group names, each a `u8` length and its bytes. A name
/// past [`MAX_OWNER_NAME`] bytes, or holding a NUL, or of an id not sent, is written empty (the
/// sender's names come from the system's user database, where neither occurs).
fn put_owner(out: &mut Vec<u8>, o: &Owner) {
    // `u32::MAX` is chown's "leave alone", which no file has: written as absent.
    let uid = o.uid.filter(|&id| id != u32::MAX);
    let gid = o.gid.filter(|&id| id != u32::MAX);
    let present =
        if uid.is_some() { OWNER_UID } else { 0 } | if gid.is_some() { OWNER_GID } else { 0 };
    out.push(present);
    out.extend_from_slice(&uid.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&gid.unwrap_or(0).to_le_bytes());
    for (name, sent) in [(&o.user, uid.is_some()), (&o.group, gid.is_some())] {
        let name = if sent && name.len() <= MAX_OWNER_NAME && !name.contains('\0') {
            name.as_bytes()
        } else {
            &[]
        };
        out.push(name.len() as u8);
        out.extend_from_slice(name);
    }
}

/// Writes a `u16 LE` count and the hashes, at most [`MAX_HAVE`] (senders never queue more).
fn put_digests(out: &mut Vec<u8>, digests: &[[u8; 32]]) {
    put_hashes(out, digests, MAX_HAVE);
}

/// Writes a `u16 LE` count and the hashes, at most `max` of them.
fn put_hashes<const N: usize>(out: &mut Vec<u8>, hashes: &[[u8; N]], max: usize) {
    let n = hashes.len().min(max);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for h in &hashes[..n] {
        out.extend_from_slice(h);
    }
}

/// Decodes one frame body (the type byte and what follows, without the length prefix).
pub fn decode_message(frame: &[u8]) -> Result<Message, DecodeError> {
    let (&msg_type, body) = frame.split_first().ok_or(DecodeError::FrameLength(0))?;
    let mut r = Reader {
        buf: body,
        msg_type,
    };
    let msg = match msg_type {
        T_HELLO => Message::Hello {
            version: r.u16("version")?,
            secret: r.array("secret")?,
            block_size: r.u32("block_size")?,
            flags: r.u8("flags")?,
        },
        T_WELCOME => Message::Welcome {
            version: r.u16("version")?,
        },
        T_ENTRY => {
            let id = r.u32("id")?;
            let kind_byte = r.u8("kind")?;
            let kind = EntryKind::from_u8(kind_byte).ok_or(DecodeError::BadValue {
                field: "kind",
                value: kind_byte.into(),
            })?;
            let path = r.string("path")?;
            let mode = r.u32("mode")?;
            let mtime_sec = r.u64("mtime_sec")? as i64;
            let mtime_nsec = r.u32("mtime_nsec")?;
            if mtime_nsec >= 1_000_000_000 {
                return Err(DecodeError::BadValue {
                    field: "mtime_nsec",
                    value: mtime_nsec.into(),
                });
            }
            let size = r.u64("size")?;
            let link_target = r.string("link_target")?;
            let version = r.array("version")?;
            let owner = r.owner()?;
            Message::Entry(Entry {
                id,
                kind,
                path,
                mode,
                mtime_sec,
                mtime_nsec,
                size,
                link_target,
                version,
                owner,
            })
        }
        T_EXCLUDE => Message::Exclude {
            pattern: r.string("pattern")?,
        },
        T_MANIFEST_END => Message::ManifestEnd {
            count: r.u32("count")?,
        },
        T_FILE_DONE => Message::FileDone {
            id: r.u32("id")?,
            root: r.array("root")?,
            sent: r.u64("sent")?,
        },
        T_HAVE => Message::Have {
            id: r.u32("id")?,
            first: r.u64("first")?,
            cvs: r.digests("cvs")?,
        },
        T_HAVE_GROUPS => Message::HaveGroups {
            id: r.u32("id")?,
            first: r.u64("first")?,
            digests: r.digests("digests")?,
        },
        T_HOLDING => Message::Holding {
            id: r.u32("id")?,
            len: r.u64("len")?,
            vouching: match r.u8("vouching")? {
                0 => false,
                1 => true,
                v => {
                    return Err(DecodeError::BadValue {
                        field: "vouching",
                        value: v.into(),
                    })
                }
            },
        },
        T_VOUCHED => Message::Vouched {
            id: r.u32("id")?,
            first: r.u64("first")?,
            cvs: r.digests("cvs")?,
        },
        T_WORKING => Message::Working {
            id: r.u32("id")?,
            done: r.u64("done")?,
        },
        T_VERIFIED_SO_FAR => Message::VerifiedSoFar {
            id: r.u32("id")?,
            done: r.u64("done")?,
        },
        T_ANCHORS => Message::Anchors {
            id: r.u32("id")?,
            first: r.u64("first")?,
            anchors: r
                .hashes::<8>("anchors", MAX_HAVE)?
                .into_iter()
                .map(u64::from_le_bytes)
                .collect(),
        },
        T_WANT_DETAIL => Message::WantDetail {
            id: r.u32("id")?,
            group: r.u64("group")?,
        },
        T_WANT_PIECES => Message::WantPieces {
            id: r.u32("id")?,
            index: r.u64("index")?,
        },
        T_PIECES => Message::Pieces {
            id: r.u32("id")?,
            index: r.u64("index")?,
            hashes: r.pieces("hashes")?,
        },
        T_HAVE_DONE => Message::HaveDone { id: r.u32("id")? },
        T_MOVED_PIECES => Message::MovedPieces {
            id: r.u32("id")?,
            index: r.u64("index")?,
            from: r.u64("from")?,
            prefix: r.u32("prefix")?,
            hashes: r.pieces("hashes")?,
        },
        T_RESEND => Message::Resend {
            id: r.u32("id")?,
            offset: r.u64("offset")?,
        },
        T_FILE_VERIFIED => Message::FileVerified { id: r.u32("id")? },
        T_FILE_FAILED => Message::FileFailed {
            id: r.u32("id")?,
            reason: r.string("reason")?,
            cause: FailCause::from_u8(r.u8("cause")?),
        },
        T_ABANDON => Message::Abandon {
            id: r.u32("id")?,
            reason: r.string("reason")?,
        },
        T_FINISH => Message::Finish,
        T_SUMMARY => Message::Summary {
            entries: r.u32("entries")?,
            bytes: r.u64("bytes")?,
            deleted: r.u64("deleted")?,
        },
        T_HELD => Message::Held {
            key: r.string("key")?,
        },
        T_ERROR => Message::Error {
            code: ErrorCode::from_u16(r.u16("code")?),
            message: r.string("message")?,
        },
        other => return Err(DecodeError::UnknownType(other)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing {
            msg_type,
            extra: r.buf.len(),
        });
    }
    Ok(msg)
}

/// Encodes a block header into its fixed-size form.
pub fn encode_block_header(h: &BlockHeader) -> [u8; BLOCK_HEADER_LEN] {
    let mut out = [0u8; BLOCK_HEADER_LEN];
    out[0] = match (h.patch, h.zero, h.packed) {
        _ if h.spliced => SPLICE_TAG,
        _ if h.moved && h.patch => MOVED_PATCH_TAG,
        _ if h.moved => MOVED_TAG,
        (false, false, 0) if h.early => EARLY_TAG,
        (true, _, _) => PATCH_TAG,
        (false, true, _) => ZERO_TAG,
        (false, false, 0) => BLOCK_TAG,
        (false, false, _) => PACKED_TAG,
    };
    out[1..5].copy_from_slice(&h.file.to_le_bytes());
    out[5..13].copy_from_slice(&h.offset.to_le_bytes());
    out[13..17].copy_from_slice(&h.len.to_le_bytes());
    out[17..21].copy_from_slice(&h.packed.to_le_bytes());
    out[21..53].copy_from_slice(&h.hash);
    out
}

/// Decodes a block header. Whether its file, offset and lengths make sense for the manifest is
/// the session's business ([`crate::session::ReceiverSession::check_block`]); this checks that
/// the tag and the packed length agree (only a packed block has one).
pub fn decode_block_header(b: &[u8; BLOCK_HEADER_LEN]) -> Result<BlockHeader, DecodeError> {
    let mut r = Reader {
        buf: b,
        msg_type: BLOCK_TAG,
    };
    let tag = r.u8("tag")?;
    if !matches!(
        tag,
        BLOCK_TAG
            | PATCH_TAG
            | PACKED_TAG
            | ZERO_TAG
            | MOVED_TAG
            | EARLY_TAG
            | MOVED_PATCH_TAG
            | SPLICE_TAG
    ) {
        return Err(DecodeError::BadBlockTag(tag));
    }
    let h = BlockHeader {
        file: r.u32("file")?,
        offset: r.u64("offset")?,
        len: r.u32("len")?,
        packed: r.u32("packed")?,
        hash: r.array("hash")?,
        patch: tag == PATCH_TAG || tag == MOVED_PATCH_TAG,
        zero: tag == ZERO_TAG,
        moved: tag == MOVED_TAG || tag == MOVED_PATCH_TAG,
        early: tag == EARLY_TAG,
        spliced: tag == SPLICE_TAG,
    };
    // A moved block's `packed` is the length of its literal prefix, which may be 0; a spliced
    // block's is its payload's, never 0.
    if (h.spliced && h.packed == 0)
        || (!h.moved && !h.spliced && (tag == PACKED_TAG) != (h.packed != 0))
    {
        return Err(DecodeError::BadValue {
            field: "packed",
            value: u64::from(h.packed),
        });
    }
    Ok(h)
}

struct Reader<'a> {
    buf: &'a [u8],
    msg_type: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                msg_type: self.msg_type,
                field,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A `u16 LE` count (at most [`MAX_HAVE`]) and that many 32-byte hashes.
    fn digests(&mut self, field: &'static str) -> Result<Vec<[u8; 32]>, DecodeError> {
        self.hashes(field, MAX_HAVE)
    }

    /// A `u16 LE` count (at most [`MAX_PIECES`]) and that many piece hashes.
    fn pieces(&mut self, field: &'static str) -> Result<Vec<PieceHash>, DecodeError> {
        self.hashes(field, MAX_PIECES)
    }

    /// A `u16 LE` count, at most `max`, and that many `N`-byte hashes.
    fn hashes<const N: usize>(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<[u8; N]>, DecodeError> {
        let n = usize::from(self.u16("count")?);
        if n > max {
            return Err(DecodeError::BadValue {
                field: "count",
                value: n as u64,
            });
        }
        (0..n).map(|_| self.array(field)).collect()
    }

    /// An [`Owner`], as [`put_owner`] writes it. Refused: unknown bits in `present`, an id of
    /// `u32::MAX`, an id or name where `present` says there is none, a name that is not UTF-8
    /// or holds a NUL.
    fn owner(&mut self) -> Result<Owner, DecodeError> {
        let present = self.u8("owner_present")?;
        if present & !(OWNER_UID | OWNER_GID) != 0 {
            return Err(DecodeError::BadValue {
                field: "owner_present",
                value: present.into(),
            });
        }
        let mut id = |field, bit| -> Result<Option<u32>, DecodeError> {
            let v = self.u32(field)?;
            match (present & bit != 0, v) {
                (true, u32::MAX) | (false, 1..) => Err(DecodeError::BadValue {
                    field,
                    value: v.into(),
                }),
                (true, v) => Ok(Some(v)),
                (false, _) => Ok(None),
            }
        };
        let uid = id("uid", OWNER_UID)?;
        let gid = id("gid", OWNER_GID)?;
        let user = self.owner_name("user", uid.is_some())?;
        let group = self.owner_name("group", gid.is_some())?;
        Ok(Owner {
            uid,
            gid,
            user,
            group,
        })
    }

    /// A `u8` length and that many bytes of UTF-8 without NUL; empty unless `sent`.
    fn owner_name(&mut self, field: &'static str, sent: bool) -> Result<String, DecodeError> {
        let len = usize::from(self.u8(field)?);
        let bytes = self.take(len, field)?;
        if len > 0 && !sent {
            return Err(DecodeError::BadString { field });
        }
        match std::str::from_utf8(bytes) {
            Ok(name) if !name.contains('\0') => Ok(name.to_owned()),
            _ => Err(DecodeError::BadString { field }),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > MAX_STRING_LEN {
            return Err(DecodeError::BadString { field });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadString { field })
    }
}

/// Reassembles control frames from the pieces a stream delivers.
///
/// Feed it bytes with [`FrameDecoder::push`] and take complete messages with
/// [`FrameDecoder::next_message`]. It buffers at most one frame ([`MAX_FRAME_LEN`] plus the
/// prefix) beyond what the caller has consumed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed; dropped in bulk so a burst of small frames costs no
    /// quadratic shifting.
    start: usize,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are needed, or the error that
    /// makes the rest of the stream undecodable.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        let rest = &self.buf[self.start..];
        let Some(prefix) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameLength(len));
        }
        let Some(frame) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = decode_message(frame)?;
        self.start += 4 + len;
        Ok(Some(msg))
    }

    /// Whether [`FrameDecoder::next_message`] would return at once with a message or an error,
    /// without more bytes.
    pub fn has_frame(&self) -> bool {
        let rest = &self.buf[self.start..];
        let Some(prefix) = rest.first_chunk::<4>() else {
            return false;
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        len == 0 || len > MAX_FRAME_LEN || rest.len() >= 4 + len
    }

    /// Bytes received but not yet consumed as messages.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-zA-Z0-9/._ é-]{0,40}").unwrap()
    }

    /// Owners as an honest sender sends them: a name only with its id, ids below `u32::MAX`,
    /// names up to the longest allowed.
    fn arb_owner() -> impl Strategy<Value = Owner> {
        let name = || proptest::string::string_regex("[a-z0-9_.é-]{0,8}|x{255}").unwrap();
        (
            proptest::option::of(0..u32::MAX),
            proptest::option::of(0..u32::MAX),
            name(),
            name(),
        )
            .prop_map(|(uid, gid, user, group)| Owner {
                user: if uid.is_some() { user } else { String::new() },
                group: if gid.is_some() { group } else { String::new() },
                uid,
                gid,
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u16>(), any::<[u8; 32]>(), any::<u32>(), any::<u8>()).prop_map(
                |(version, secret, block_size, flags)| Message::Hello {
                    version,
                    secret,
                    block_size,
                    flags,
                }
            ),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<[u8; 32]>(), 0..MAX_HAVE)
            )
                .prop_map(|(id, first, cvs)| Message::Have { id, first, cvs }),
            any::<u32>().prop_map(|id| Message::HaveDone { id }),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<[u8; 32]>(), 0..8)
            )
                .prop_map(|(id, first, digests)| Message::HaveGroups {
                    id,
                    first,
                    digests
                }),
            (any::<u32>(), any::<u64>()).prop_map(|(id, group)| Message::WantDetail { id, group }),
            (any::<u32>(), any::<u64>()).prop_map(|(id, index)| Message::WantPieces { id, index }),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<[u8; 16]>(), 0..=MAX_PIECES)
            )
                .prop_map(|(id, index, hashes)| Message::Pieces { id, index, hashes }),
            (any::<u32>(), any::<u64>(), any::<bool>())
                .prop_map(|(id, len, vouching)| { Message::Holding { id, len, vouching } }),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<[u8; 32]>(), 0..8)
            )
                .prop_map(|(id, first, cvs)| Message::Vouched { id, first, cvs }),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u64>(), 0..MAX_HAVE)
            )
                .prop_map(|(id, first, anchors)| Message::Anchors {
                    id,
                    first,
                    anchors
                }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(any::<[u8; 16]>(), 0..=MAX_PIECES)
            )
                .prop_map(|(id, index, from, prefix, hashes)| Message::MovedPieces {
                    id,
                    index,
                    from,
                    prefix,
                    hashes
                }),
            (any::<u32>(), any::<u64>()).prop_map(|(id, offset)| Message::Resend { id, offset }),
            (any::<u32>(), any::<u64>()).prop_map(|(id, done)| Message::Working { id, done }),
            (any::<u32>(), any::<u64>()).prop_map(|(id, done)| Message::VerifiedSoFar { id, done }),
            any::<u16>().prop_map(|version| Message::Welcome { version }),
            (
                any::<u32>(),
                0u8..3,
                arb_string(),
                any::<u32>(),
                any::<i64>(),
                0u32..1_000_000_000,
                any::<u64>(),
                arb_string(),
                any::<[u8; 16]>(),
                arb_owner(),
            )
                .prop_map(
                    |(
                        id,
                        k,
                        path,
                        mode,
                        mtime_sec,
                        mtime_nsec,
                        size,
                        link_target,
                        version,
                        owner,
                    )| {
                        Message::Entry(Entry {
                            id,
                            kind: EntryKind::from_u8(k).unwrap(),
                            path,
                            mode,
                            mtime_sec,
                            mtime_nsec,
                            size,
                            link_target,
                            version,
                            owner,
                        })
                    }
                ),
            any::<u32>().prop_map(|count| Message::ManifestEnd { count }),
            arb_string().prop_map(|pattern| Message::Exclude { pattern }),
            (any::<u32>(), any::<[u8; 32]>(), any::<u64>())
                .prop_map(|(id, root, sent)| Message::FileDone { id, root, sent }),
            any::<u32>().prop_map(|id| Message::FileVerified { id }),
            (any::<u32>(), arb_string()).prop_map(|(id, reason)| Message::FileFailed {
                id,
                reason,
                cause: FailCause::Local
            }),
            (any::<u32>(), arb_string()).prop_map(|(id, reason)| Message::Abandon { id, reason }),
            Just(Message::Finish),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(entries, bytes, deleted)| {
                Message::Summary {
                    entries,
                    bytes,
                    deleted,
                }
            }),
            arb_string().prop_map(|key| Message::Held { key }),
            (1u16..6, arb_string()).prop_map(|(c, message)| Message::Error {
                code: ErrorCode::from_u16(c),
                message
            }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_any_split(msgs in proptest::collection::vec(arb_message(), 1..8), cut in 1usize..64) {
            let mut wire = Vec::new();
            for m in &msgs {
                encode_message(m, &mut wire);
            }
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                dec.push(piece);
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(dec.pending(), 0);
        }

        #[test]
        fn block_headers_round_trip(file in any::<u32>(), offset in any::<u64>(), len in any::<u32>(), hash in any::<[u8; 32]>(), kind in 0u8..8, packed in 1..=u32::MAX) {
            // One of: a block, a patch, a packed block, a zero block, a moved block, an early
            // block, a moved patch, a spliced block.
            let (patch, zero, packed, moved, early, spliced) = match kind {
                0 => (false, false, 0, false, false, false),
                1 => (true, false, 0, false, false, false),
                2 => (false, false, packed, false, false, false),
                3 => (false, true, 0, false, false, false),
                4 => (false, false, packed % 4096, true, false, false),
                5 => (false, false, 0, false, true, false),
                6 => (true, false, packed % 4096, true, false, false),
                _ => (false, false, packed, false, false, true),
            };
            let h = BlockHeader { file, offset, len, hash, patch, packed, zero, moved, early, spliced };
            prop_assert_eq!(decode_block_header(&encode_block_header(&h)).unwrap(), h);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_message(&bytes);
            let mut dec = FrameDecoder::new();
            dec.push(&bytes);
            while let Ok(Some(_)) = dec.next_message() {}
        }
    }

    #[test]
    fn hostile_length_prefix_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_le_bytes());
        assert_eq!(
            dec.next_message(),
            Err(DecodeError::FrameLength(u32::MAX as usize))
        );
    }

    #[test]
    fn truncated_and_trailing_bodies_are_named() {
        assert_eq!(
            decode_message(&[T_FILE_VERIFIED, 1, 2]),
            Err(DecodeError::Truncated {
                msg_type: T_FILE_VERIFIED,
                field: "id",
                needed: 2
            })
        );
        assert_eq!(
            decode_message(&[T_FINISH, 0]),
            Err(DecodeError::Trailing {
                msg_type: T_FINISH,
                extra: 1
            })
        );
        assert_eq!(decode_message(&[200]), Err(DecodeError::UnknownType(200)));
    }

    /// An entry's owner: both ids and names round trip; a name too long or holding a NUL is
    /// sent as none; a decoder refuses `u32::MAX` (chown's "leave alone"), unknown bits, and an
    /// id or a name where the `present` byte says there is none.
    #[test]
    fn entry_owners_are_bounded_and_checked() {
        let entry = |owner: Owner| {
            Message::Entry(Entry {
                id: 0,
                kind: EntryKind::File,
                path: "f".into(),
                mode: 0o4755,
                mtime_sec: 0,
                mtime_nsec: 0,
                size: 0,
                link_target: String::new(),
                version: [0; 16],
                owner,
            })
        };
        let round_trip = |m: &Message| {
            let mut wire = Vec::new();
            encode_message(m, &mut wire);
            decode_message(&wire[4..])
        };
        let qa = Owner {
            uid: Some(1234),
            gid: Some(5678),
            user: "qauser".into(),
            group: "x".repeat(MAX_OWNER_NAME),
        };
        assert_eq!(round_trip(&entry(qa.clone())), Ok(entry(qa.clone())));
        for bad in ["x".repeat(MAX_OWNER_NAME + 1), "a\0b".into()] {
            let sent = Owner {
                group: bad,
                ..qa.clone()
            };
            let got = Owner {
                group: String::new(),
                ..qa.clone()
            };
            assert_eq!(round_trip(&entry(sent)), Ok(entry(got)));
        }
        let none = Owner {
            uid: Some(u32::MAX),
            ..Owner::default()
        };
        assert_eq!(round_trip(&entry(none)), Ok(entry(Owner::default())));

        let mut wire = Vec::new();
        encode_message(&entry(qa), &mut wire);
        let frame = &wire[4..];
        // The owner is the entry's last 1 + 4 + 4 + 1 + 6 + 1 + 255 bytes.
        let at = frame.len() - (1 + 4 + 4 + 1 + 6 + 1 + MAX_OWNER_NAME);
        let changed = |i: usize, bytes: &[u8]| {
            let mut f = frame.to_vec();
            f[at + i..at + i + bytes.len()].copy_from_slice(bytes);
            decode_message(&f)
        };
        let bad_value = |field| move |r: Result<Message, DecodeError>| matches!(r, Err(DecodeError::BadValue { field: f, .. }) if f == field);
        assert!(bad_value("owner_present")(changed(0, &[4])));
        assert!(bad_value("uid")(changed(1, &u32::MAX.to_le_bytes())));
        assert!(bad_value("gid")(changed(5, &u32::MAX.to_le_bytes())));
        // Without the uid bit, a uid or a user name is refused.
        assert_eq!(
            changed(0, &[OWNER_GID]).err(),
            Some(DecodeError::BadValue {
                field: "uid",
                value: 1234
            })
        );
        let mut f = frame.to_vec();
        f[at] = OWNER_GID;
        f[at + 1..at + 5].copy_from_slice(&[0; 4]);
        assert_eq!(
            decode_message(&f),
            Err(DecodeError::BadString { field: "user" })
        );
        assert_eq!(
            changed(10, b"qa\0ser"),
            Err(DecodeError::BadString { field: "user" })
        );
        assert_eq!(
            changed(10, &[0xff]),
            Err(DecodeError::BadString { field: "user" })
        );
    }

    #[test]
    fn out_of_frame_block_header_is_detected() {
        let mut b = encode_block_header(&BlockHeader {
            patch: false,
            file: 1,
            offset: 2,
            len: 3,
            hash: [4; 32],
            packed: 0,
            zero: false,
            moved: false,
            early: false,
            spliced: false,
        });
        b[0] = 0;
        assert_eq!(decode_block_header(&b), Err(DecodeError::BadBlockTag(0)));
    }

    #[test]
    fn packed_length_and_tag_must_agree() {
        let h = BlockHeader {
            patch: false,
            file: 1,
            offset: 0,
            len: 1 << 20,
            hash: [4; 32],
            packed: 5000,
            zero: false,
            moved: false,
            early: false,
            spliced: false,
        };
        let mut b = encode_block_header(&h);
        assert_eq!(b[0], PACKED_TAG);
        assert_eq!(decode_block_header(&b), Ok(h));
        b[0] = BLOCK_TAG;
        assert!(matches!(
            decode_block_header(&b),
            Err(DecodeError::BadValue {
                field: "packed",
                ..
            })
        ));
        let mut raw = encode_block_header(&BlockHeader { packed: 0, ..h });
        raw[0] = PACKED_TAG;
        assert!(
            decode_block_header(&raw).is_err(),
            "a packed block needs a length"
        );
        // A zero block carries no packed length either.
        raw[0] = ZERO_TAG;
        raw[17..21].copy_from_slice(&5000u32.to_le_bytes());
        assert!(decode_block_header(&raw).is_err(), "{raw:?}");
    }
}
