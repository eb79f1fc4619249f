//! The data lane of a unit session (`sluice db`, and any source of units that are not files):
//! each lane carries one unit from its opening frame to its closing frame.
//!
//! ```text
//! open:   UNIT_OPEN_TAG  | id: u32 | meta_len: u16 | meta (UTF-8, at most MAX_STRING_LEN)
//! blocks: block headers (BLOCK_TAG) and payloads, offsets 0, len, 2·len… in order
//! close:  UNIT_CLOSE_TAG | bytes: u64 | trailer_len: u16 | trailer (at most MAX_TRAILER)
//! ```
//!
//! A unit's length is known only at its end (a table range is as long as its rows turn out to
//! be), so each block is hashed as a non-root subtree of a stream of unknown length, and the
//! closing frame carries the byte count and the source's own account of the unit (a row count
//! and digest for a table range), which the sink checks before it commits.

use crate::codec::{DecodeError, MAX_STRING_LEN};

/// First byte of a unit lane: the unit's opening frame.
pub const UNIT_OPEN_TAG: u8 = 0xB5;
/// First byte of a unit's closing frame, after its last block.
pub const UNIT_CLOSE_TAG: u8 = 0xB6;
/// Bytes of an opening frame before its metadata.
pub const OPEN_PREFIX: usize = 1 + 4 + 2;
/// Bytes of a closing frame before its trailer.
pub const CLOSE_PREFIX: usize = 1 + 8 + 2;
/// The longest trailer accepted.
pub const MAX_TRAILER: usize = 256;

/// The opening frame of unit `id` described by `meta` (cut at [`MAX_STRING_LEN`] bytes, on a
/// character boundary: callers keep their metadata shorter).
pub fn encode_open(id: u32, meta: &str) -> Vec<u8> {
    let mut end = meta.len().min(MAX_STRING_LEN);
    while !meta.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(OPEN_PREFIX + end);
    out.push(UNIT_OPEN_TAG);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&meta.as_bytes()[..end]);
    out
}

/// The unit id and metadata length of an opening frame's prefix.
pub fn decode_open_prefix(b: &[u8; OPEN_PREFIX]) -> Result<(u32, usize), DecodeError> {
    if b[0] != UNIT_OPEN_TAG {
        return Err(DecodeError::BadValue {
            field: "unit open tag",
            value: u64::from(b[0]),
        });
    }
    let id = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    let len = usize::from(u16::from_le_bytes([b[5], b[6]]));
    if len > MAX_STRING_LEN {
        return Err(DecodeError::BadString { field: "unit meta" });
    }
    Ok((id, len))
}

/// The metadata of an opening frame, checked as UTF-8.
pub fn decode_meta(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadString { field: "unit meta" })
}

/// The closing frame of a unit of `bytes` bytes with the source's `trailer` (at most
/// [`MAX_TRAILER`] bytes; longer is a caller's bug and is cut).
pub fn encode_close(bytes: u64, trailer: &[u8]) -> Vec<u8> {
    let n = trailer.len().min(MAX_TRAILER);
    let mut out = Vec::with_capacity(CLOSE_PREFIX + n);
    out.push(UNIT_CLOSE_TAG);
    out.extend_from_slice(&bytes.to_le_bytes());
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&trailer[..n]);
    out
}

/// The byte count and trailer length of a closing frame's prefix.
pub fn decode_close_prefix(b: &[u8; CLOSE_PREFIX]) -> Result<(u64, usize), DecodeError> {
    if b[0] != UNIT_CLOSE_TAG {
        return Err(DecodeError::BadValue {
            field: "unit close tag",
            value: u64::from(b[0]),
        });
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[1..9]);
    let len = usize::from(u16::from_le_bytes([b[9], b[10]]));
    if len > MAX_TRAILER {
        return Err(DecodeError::BadValue {
            field: "unit trailer length",
            value: len as u64,
        });
    }
    Ok((u64::from_le_bytes(n), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let open = encode_open(7, "public.t 3/9");
        let (id, len) = decode_open_prefix(open[..OPEN_PREFIX].try_into().unwrap()).unwrap();
        assert_eq!((id, len), (7, 12));
        assert_eq!(decode_meta(&open[OPEN_PREFIX..]).unwrap(), "public.t 3/9");

        let close = encode_close(1 << 40, &[9; 24]);
        let (bytes, len) = decode_close_prefix(close[..CLOSE_PREFIX].try_into().unwrap()).unwrap();
        assert_eq!((bytes, len), (1 << 40, 24));
        assert_eq!(&close[CLOSE_PREFIX..], &[9; 24]);
    }

    #[test]
    fn hostile_prefixes_are_refused() {
        let mut open = [0u8; OPEN_PREFIX];
        open[0] = UNIT_OPEN_TAG;
        open[5..7].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(decode_open_prefix(&open).is_err());
        open[0] = crate::codec::BLOCK_TAG;
        assert!(decode_open_prefix(&open).is_err());

        let mut close = [0u8; CLOSE_PREFIX];
        close[0] = UNIT_CLOSE_TAG;
        close[9..11].copy_from_slice(&((MAX_TRAILER + 1) as u16).to_le_bytes());
        assert!(decode_close_prefix(&close).is_err());
        assert!(decode_meta(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn long_metadata_is_cut_on_a_character_boundary() {
        let meta = "é".repeat(MAX_STRING_LEN);
        let open = encode_open(1, &meta);
        let (_, len) = decode_open_prefix(open[..OPEN_PREFIX].try_into().unwrap()).unwrap();
        assert!(len <= MAX_STRING_LEN);
        assert!(decode_meta(&open[OPEN_PREFIX..]).is_ok());
    }
}
