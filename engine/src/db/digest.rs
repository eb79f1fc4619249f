//! An order-independent digest of a table's rows, computed on `COPY` bytes as they stream past
//! (never decoded): each row's 128-bit XXH3 hash, summed modulo 2¹²⁸, and the row count.
//! (Not BLAKE3, as blocks are: rows are short, and BLAKE3 per 100-byte row was most of the CPU
//! a migration cost; see `docs/decisions.md`. The bytes on the wire are BLAKE3-verified block
//! by block; this digest compares what two databases store.) Two copies of a range hold the same rows exactly when both agree, whatever order a
//! scan returns them in. Only the framing is read: in binary format a row is a field count and
//! length-prefixed fields; in text format a row is a line.

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// The account of one range: how many rows, and the sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowsDigest {
    /// Rows seen.
    pub rows: u64,
    /// Sum of the rows' 128-bit hashes.
    pub sum: u128,
}

impl RowsDigest {
    /// The trailer a unit's closing frame carries.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = self.rows.to_le_bytes().to_vec();
        out.extend_from_slice(&self.sum.to_le_bytes());
        out
    }

    /// Reads a trailer back; `None` if it is not one.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 24 {
            return None;
        }
        Some(Self {
            rows: u64::from_le_bytes(b[..8].try_into().ok()?),
            sum: u128::from_le_bytes(b[8..].try_into().ok()?),
        })
    }

    /// The digest as text, for the bookkeeping table and messages.
    pub fn hex(self) -> String {
        format!("{:032x}", self.sum)
    }

    /// Adds another range's account (a table's digest is the sum of its ranges').
    pub fn add(&mut self, other: RowsDigest) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

/// The binary `COPY` signature, flags and header-extension length.
const BINARY_HEADER: usize = 11 + 4 + 4;

#[derive(Debug)]
enum State {
    /// Binary: reading the fixed header.
    Header { got: usize, ext: [u8; 4] },
    /// Binary: skipping this many header-extension bytes.
    Extension(u32),
    /// Binary: reading a row's field count.
    Count { buf: [u8; 2], got: usize },
    /// Binary: reading a field's length; `left` fields remain after it.
    Length { buf: [u8; 4], got: usize, left: u16 },
    /// Binary: inside a field's bytes.
    Field { bytes: u32, left: u16 },
    /// Binary: past the trailer; nothing more may come.
    End,
    /// Text: inside a line.
    Line,
}

/// Feeds on a `COPY` stream in pieces of any size and keeps the running [`RowsDigest`]. Holds
/// at most a few bytes of framing whatever the row sizes.
pub struct RowHasher {
    state: State,
    row: Xxh3,
    in_row: bool,
    digest: RowsDigest,
    bad: Option<String>,
    /// Accounts per key range as well ([`RowHasher::routed`]).
    route: Option<KeyRoute>,
    /// The field the state machine is in (counted from 0 within its row).
    field_at: u16,
    /// The current row's key field: its length (-1 for NULL) and up to 8 of its bytes.
    key: (i32, [u8; 8]),
}

/// Rows sorted into key ranges by an integer key field (binary format: 2, 4 or 8 bytes, big
/// endian), each range with its own [`RowsDigest`]: how one scan of a table checks all its
/// ranges at once.
#[derive(Debug, Clone)]
pub struct KeyRoute {
    field: u16,
    /// `lo..hi` of each range, sorted by `lo` (`None`: unbounded), not overlapping.
    bounds: Vec<(Option<i64>, Option<i64>)>,
    /// Per range (in the order given to [`KeyRoute::new`]), what was seen.
    pub sums: Vec<RowsDigest>,
    /// Rows whose key is in no range (or is not an integer).
    pub outside: RowsDigest,
    /// The given order of each sorted range.
    order: Vec<usize>,
}

impl KeyRoute {
    /// Ranges `lo..hi` of the key in field `field` (counted from 0).
    pub fn new(field: u16, ranges: &[(Option<i64>, Option<i64>)]) -> Self {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].0.map_or(i128::MIN, i128::from));
        Self {
            field,
            bounds: order.iter().map(|&i| ranges[i]).collect(),
            sums: vec![RowsDigest::default(); ranges.len()],
            outside: RowsDigest::default(),
            order,
        }
    }

    fn add(&mut self, key: Option<i64>, h: u128) {
        let one = RowsDigest { rows: 1, sum: h };
        let Some(k) = key else {
            return self.outside.add(one);
        };
        let after = self
            .bounds
            .partition_point(|(lo, _)| lo.is_none_or(|lo| lo <= k));
        match after.checked_sub(1).map(|i| (i, self.bounds[i].1)) {
            Some((i, hi)) if hi.is_none_or(|hi| k < hi) => self.sums[self.order[i]].add(one),
            _ => self.outside.add(one),
        }
    }

    /// The same ranges with nothing seen yet.
    pub fn clone_empty(&self) -> Self {
        Self {
            sums: vec![RowsDigest::default(); self.sums.len()],
            outside: RowsDigest::default(),
            ..self.clone()
        }
    }

    /// Adds what another scan of the same ranges saw.
    pub fn merge(&mut self, other: &KeyRoute) {
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            a.add(*b);
        }
        self.outside.add(other.outside);
    }
}

/// Whether field `field_at` of a row is the key of a routed stream (`route`).
fn in_key(route: &Option<KeyRoute>, field_at: u16) -> bool {
    route.as_ref().is_some_and(|r| r.field == field_at)
}

/// A binary integer field's value, `None` if it is NULL or not 2, 4 or 8 bytes.
fn int_key(len: i32, bytes: &[u8; 8]) -> Option<i64> {
    match len {
        2 => Some(i64::from(i16::from_be_bytes([bytes[0], bytes[1]]))),
        4 => Some(i64::from(i32::from_be_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3],
        ]))),
        8 => Some(i64::from_be_bytes(*bytes)),
        _ => None,
    }
}

impl std::fmt::Debug for RowHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowHasher")
            .field("state", &self.state)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RowHasher {
    /// For a stream in `COPY ... (FORMAT binary)` (`binary`) or text format.
    pub fn new(binary: bool) -> Self {
        Self {
            state: if binary {
                State::Header {
                    got: 0,
                    ext: [0; 4],
                }
            } else {
                State::Line
            },
            row: Xxh3::new(),
            in_row: false,
            digest: RowsDigest::default(),
            bad: None,
            route: None,
            field_at: 0,
            key: (-1, [0; 8]),
        }
    }

    /// For a binary stream whose rows are also accounted per key range ([`KeyRoute`]), read
    /// back with [`RowHasher::finish_routed`].
    pub fn routed(route: KeyRoute) -> Self {
        Self {
            route: Some(route),
            ..Self::new(true)
        }
    }

    fn end_row(&mut self) {
        let h = self.row.digest128();
        self.add_row(h);
        self.row.reset();
        self.in_row = false;
    }

    fn add_row(&mut self, h: u128) {
        self.digest.rows += 1;
        self.digest.sum = self.digest.sum.wrapping_add(h);
        if let Some(route) = &mut self.route {
            route.add(int_key(self.key.0, &self.key.1), h);
        }
    }

    /// Notes the key field of a whole binary row (`row`, framing checked).
    fn key_of(&mut self, row: &[u8]) {
        let Some(field) = self.route.as_ref().map(|r| r.field) else {
            return;
        };
        self.key = (-1, [0; 8]);
        let mut at = 2;
        for i in 0..=field {
            let Some(len) = row.get(at..at + 4) else {
                return;
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if i == field {
                self.key.0 = len;
                if (0..=8).contains(&len) {
                    self.key.1[..len as usize].copy_from_slice(&row[at..at + len as usize]);
                }
                return;
            }
            at += len.max(0) as usize;
        }
    }

    /// Takes the next bytes of the stream. Whole rows in `data` are hashed in one call each
    /// (a row is usually one `COPY` message, and a block holds thousands); only a row cut by
    /// the end of `data` goes through the byte-wise state machine.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.bad.is_none() {
            match self.state {
                State::Count { got: 0, .. } => match whole_binary_row(data) {
                    Some(Ok(n)) => {
                        self.key_of(&data[..n]);
                        self.add_row(xxh3_128(&data[..n]));
                        data = &data[n..];
                        continue;
                    }
                    Some(Err(())) => {
                        // The trailer, or a bad count: the state machine says which.
                    }
                    None => {}
                },
                State::Line if !self.in_row => {
                    if let Some(i) = data.iter().position(|&b| b == b'\n') {
                        self.add_row(xxh3_128(&data[..i]));
                        data = &data[i + 1..];
                        continue;
                    }
                }
                _ => {}
            }
            let used = self.step(data);
            data = &data[used..];
        }
    }

    /// Runs the state machine on `data` until a row ends (or `data` does); returns the bytes
    /// it took.
    fn step(&mut self, all: &[u8]) -> usize {
        let mut data = all;
        let rows = self.digest.rows;
        while !data.is_empty() && self.bad.is_none() && self.digest.rows == rows {
            if matches!(self.state, State::Count { got: 0, .. }) && data.len() < all.len() {
                break;
            }
            match &mut self.state {
                State::Line => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.row.update(&data[..i]);
                        data = &data[i + 1..];
                        self.end_row();
                    }
                    None => {
                        self.row.update(data);
                        self.in_row = true;
                        data = &[];
                    }
                },
                State::Header { got, ext } => {
                    let n = (BINARY_HEADER - *got).min(data.len());
                    for (k, &b) in data[..n].iter().enumerate() {
                        let at = *got + k;
                        if at >= 15 {
                            ext[at - 15] = b;
                        }
                    }
                    *got += n;
                    data = &data[n..];
                    if *got == BINARY_HEADER {
                        let len = u32::from_be_bytes(*ext);
                        self.state = if len == 0 {
                            State::Count {
                                buf: [0; 2],
                                got: 0,
                            }
                        } else {
                            State::Extension(len)
                        };
                    }
                }
                State::Extension(left) => {
                    let n = (*left as usize).min(data.len());
                    *left -= n as u32;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Count {
                            buf: [0; 2],
                            got: 0,
                        };
                    }
                }
                State::Count { buf, got } => {
                    buf[*got] = data[0];
                    *got += 1;
                    data = &data[1..];
                    if *got == 2 {
                        let count = i16::from_be_bytes(*buf);
                        if count == -1 {
                            self.state = State::End;
                        } else if count < 0 {
                            self.bad = Some(format!("row with {count} fields"));
                        } else {
                            self.row.update(&buf[..]);
                            self.in_row = true;
                            self.field_at = 0;
                            self.key = (-1, [0; 8]);
                            if count == 0 {
                                self.end_row();
                                self.state = State::Count {
                                    buf: [0; 2],
                                    got: 0,
                                };
                            } else {
                                self.state = State::Length {
                                    buf: [0; 4],
                                    got: 0,
                                    left: count as u16 - 1,
                                };
                            }
                        }
                    }
                }
                State::Length { buf, got, left } => {
                    buf[*got] = data[0];
                    *got += 1;
                    data = &data[1..];
                    if *got == 4 {
                        let left = *left;
                        let len = i32::from_be_bytes(*buf);
                        self.row.update(&buf[..]);
                        if in_key(&self.route, self.field_at) {
                            self.key.0 = len;
                        }
                        if len < -1 {
                            self.bad = Some(format!("field of length {len}"));
                        } else if len <= 0 {
                            self.after_field(left);
                        } else {
                            self.state = State::Field {
                                bytes: len as u32,
                                left,
                            };
                        }
                    }
                }
                State::Field { bytes, left } => {
                    let n = (*bytes as usize).min(data.len());
                    self.row.update(&data[..n]);
                    if in_key(&self.route, self.field_at) && (0..=8).contains(&self.key.0) {
                        // Where this piece starts in the field, and its part of the key's bytes.
                        let from = self.key.0 as usize - *bytes as usize;
                        self.key.1[from..from + n].copy_from_slice(&data[..n]);
                    }
                    *bytes -= n as u32;
                    data = &data[n..];
                    if *bytes == 0 {
                        let left = *left;
                        self.after_field(left);
                    }
                }
                State::End => {
                    self.bad = Some(format!("{} bytes after the end of the rows", data.len()));
                }
            }
        }
        all.len() - data.len()
    }

    fn after_field(&mut self, left: u16) {
        self.field_at = self.field_at.wrapping_add(1);
        if left == 0 {
            self.end_row();
            self.state = State::Count {
                buf: [0; 2],
                got: 0,
            };
        } else {
            self.state = State::Length {
                buf: [0; 4],
                got: 0,
                left: left - 1,
            };
        }
    }

    /// The account of the whole stream, or what was wrong with its framing (a row cut short, a
    /// binary stream without its trailer).
    pub fn finish(self) -> Result<RowsDigest, String> {
        if let Some(bad) = self.bad {
            return Err(bad);
        }
        match self.state {
            State::Line if !self.in_row => Ok(self.digest),
            State::Line => Err("the last row has no end of line".into()),
            State::End => Ok(self.digest),
            // An empty binary stream (no header at all) holds no rows.
            State::Header { got: 0, .. } => Ok(self.digest),
            _ => Err("the rows end in the middle of a row".into()),
        }
    }

    /// Like [`RowHasher::finish`], for a stream made with [`RowHasher::routed`]: what each
    /// range (and no range) holds.
    pub fn finish_routed(mut self) -> Result<KeyRoute, String> {
        let route = self.route.take();
        self.finish()?;
        route.ok_or_else(|| "the rows were not routed by key".into())
    }
}

/// The length of the binary row at the start of `data` if all of it is there; `Err` for a
/// field count that is not a row's (the trailer's -1, or a bad one).
fn whole_binary_row(data: &[u8]) -> Option<Result<usize, ()>> {
    let count = i16::from_be_bytes([*data.first()?, *data.get(1)?]);
    if count < 0 {
        return Some(Err(()));
    }
    let mut at = 2usize;
    for _ in 0..count {
        let len = data.get(at..at + 4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if len < -1 {
            return Some(Err(()));
        }
        at += 4 + len.max(0) as usize;
        if at > data.len() {
            return None;
        }
    }
    Some(Ok(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in *row {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn digest_in_pieces(bytes: &[u8], binary: bool, piece: usize) -> Result<RowsDigest, String> {
        let mut h = RowHasher::new(binary);
        for chunk in bytes.chunks(piece.max(1)) {
            h.feed(chunk);
        }
        h.finish()
    }

    #[test]
    fn binary_rows_digest_alike_in_any_order_and_any_pieces() {
        let a: &[Option<&[u8]>] = &[Some(b"1"), None, Some(b"")];
        let b: &[Option<&[u8]>] = &[Some(b"22"), Some(&[7; 300]), None];
        let one = binary(&[a, b]);
        let other = binary(&[b, a]);
        let whole = digest_in_pieces(&one, true, one.len()).unwrap();
        assert_eq!(whole.rows, 2);
        for piece in [1, 2, 3, 5, 64] {
            assert_eq!(digest_in_pieces(&one, true, piece).unwrap(), whole);
            assert_eq!(digest_in_pieces(&other, true, piece).unwrap(), whole);
        }
        // One changed byte, one row fewer: different.
        let changed = binary(&[a, &[Some(b"23"), Some(&[7; 300]), None]]);
        assert_ne!(digest_in_pieces(&changed, true, 7).unwrap(), whole);
        assert_eq!(digest_in_pieces(&binary(&[a]), true, 7).unwrap().rows, 1);
        // A NULL is not an empty string.
        let null = binary(&[&[None]]);
        let empty = binary(&[&[Some(b"")]]);
        assert_ne!(
            digest_in_pieces(&null, true, 1).unwrap(),
            digest_in_pieces(&empty, true, 1).unwrap()
        );
    }

    #[test]
    fn a_cut_stream_is_refused() {
        let a: &[Option<&[u8]>] = &[Some(b"hello")];
        let full = binary(&[a, a]);
        assert!(digest_in_pieces(&full[..full.len() - 4], true, 3).is_err());
        assert!(digest_in_pieces(&full[..full.len() - 2], true, 3).is_err());
        assert!(digest_in_pieces(b"1\tx\n2\ty", false, 3).is_err());
        let mut extra = full.clone();
        extra.push(0);
        assert!(digest_in_pieces(&extra, true, 3).is_err());
        assert_eq!(
            digest_in_pieces(&[], true, 3).unwrap(),
            RowsDigest::default()
        );
    }

    #[test]
    fn text_rows_are_lines() {
        let d = digest_in_pieces(b"1\tx\n2\t\\N\n", false, 2).unwrap();
        let e = digest_in_pieces(b"2\t\\N\n1\tx\n", false, 5).unwrap();
        assert_eq!(d, e);
        assert_eq!(d.rows, 2);
        assert_eq!(RowsDigest::from_bytes(&d.to_bytes()), Some(d));
    }

    #[test]
    fn one_scan_accounts_each_key_range_as_its_own_read_would() {
        // Rows keyed by an int8 in field 1 (field 0 an int4, field 2 text), out of key order.
        let keys: [i64; 9] = [5, -3, 100, 0, 41, 7, i64::MIN, 99, 40];
        let fields: Vec<[Vec<u8>; 3]> = keys
            .iter()
            .map(|&k| {
                [
                    (k as i32).to_be_bytes().to_vec(),
                    k.to_be_bytes().to_vec(),
                    format!("row {k}").into_bytes(),
                ]
            })
            .collect();
        let rows: Vec<Vec<Option<&[u8]>>> = fields
            .iter()
            .map(|f| f.iter().map(|b| Some(b.as_slice())).collect())
            .collect();
        let all: Vec<&[Option<&[u8]>]> = rows.iter().map(|r| r.as_slice()).collect();
        // Given out of order, with a gap (100 is in no range).
        let ranges = [
            (Some(7), Some(41)),
            (None, Some(0)),
            (Some(41), Some(100)),
            (Some(0), Some(7)),
        ];
        let within = |(lo, hi): (Option<i64>, Option<i64>), k: i64| {
            lo.is_none_or(|lo| lo <= k) && hi.is_none_or(|hi| k < hi)
        };
        for piece in [1, 2, 3, 7, 50, 10_000] {
            for field in [0u16, 1] {
                let bytes = binary(&all);
                let mut h = RowHasher::routed(KeyRoute::new(field, &ranges));
                for chunk in bytes.chunks(piece) {
                    h.feed(chunk);
                }
                let route = h.finish_routed().unwrap();
                for (i, &r) in ranges.iter().enumerate() {
                    let key = |k: i64| if field == 0 { i64::from(k as i32) } else { k };
                    let mine: Vec<&[Option<&[u8]>]> = keys
                        .iter()
                        .zip(&all)
                        .filter(|(&k, _)| within(r, key(k)))
                        .map(|(_, row)| *row)
                        .collect();
                    let alone = digest_in_pieces(&binary(&mine), true, 4).unwrap();
                    assert_eq!(
                        route.sums[i], alone,
                        "range {r:?}, field {field}, pieces of {piece}"
                    );
                }
                // 100 in both readings; i64::MIN only as an int8 (as an int4 it is 0).
                assert_eq!(route.outside.rows, 1);
                let mut merged = KeyRoute::new(field, &ranges);
                merged.merge(&route);
                merged.merge(&route);
                assert_eq!(merged.outside.rows, 2);
            }
        }
        // A NULL or a key of another width is in no range.
        let odd = binary(&[&[None], &[Some(b"abc")]]);
        let mut h = RowHasher::routed(KeyRoute::new(0, &[(None, None)]));
        h.feed(&odd);
        let route = h.finish_routed().unwrap();
        assert_eq!((route.sums[0].rows, route.outside.rows), (0, 2));
    }
}
