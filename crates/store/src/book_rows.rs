//! Book messages as rows of `krakenbook_book` (schema version 6, `migrations/0006_layout.sql`).
//!
//! One row per book message: the levels as dec64 values in one `bigint[]`, the frame itself only
//! when the compatibility view's rendering of the row would differ from it, and the further copies
//! of the same message that this collector received on its other connections packed into `dups`.
//!
//! What must always hold:
//! - [`dec64`] and [`undec64`] are exact inverses over every value they accept: the mantissa and
//!   the scale as sent (`1.50` and `1.5` stay apart); a value they refuse keeps its message's
//!   levels out of the array (`levels` null) and the frame in `raw`;
//! - `raw` is null only when the frame is byte for byte what [`canonical`] writes from the row's
//!   own columns (Kraken's layout), so the view's `jsonb` equals the frame's `jsonb`;
//! - a copy is merged into an earlier row of the same batch only when the two frames are equal
//!   (same content, both canonical), came on different connections of this collector, the row
//!   holds no copy of that connection yet, and the differences fit their bits
//!   ([`pack_dup`]); anything else is a row of its own. So each connection's stream is whole in
//!   `krakenbook_copies`, and a copy's seq is within [`DUP_SEQ_REACH`] of its row's.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

use crate::book::Decimal;
use crate::kraken::{BookData, BookKind, Level};
use crate::time::Timestamp;

/// `COPY` statement for the book rows (column order of the encoded rows).
pub const COPY_BOOK: &str = "COPY krakenbook_book (timestamp, received_at, seq, conn_id, dup, \
    checksum, collector_id, n_bids, kind, checksum_ok, symbol, levels, raw, dups) \
    FROM STDIN (FORMAT binary)";
const BOOK_FIELDS: i16 = 14;

/// How far (in seqs, either way) a copy in `dups` may be from its row's seq: readers that look for
/// a stream's records by seq widen their window by this much.
pub const DUP_SEQ_REACH: i64 = 1 << 16;

/// The largest mantissa dec64 holds (exclusive): 2^58, 17 significant digits.
const DEC64_MANTISSA_LIMIT: u128 = 1 << 58;

/// PostgreSQL's type oid of `int8`.
const INT8_OID: i32 = 20;

/// `value` as dec64 (`mantissa * 32 + scale`), or `None` when the mantissa is 2^58 or more or the
/// scale above 31.
pub fn dec64(value: Decimal) -> Option<i64> {
    let (m, s) = (value.mantissa(), value.scale());
    if m >= DEC64_MANTISSA_LIMIT || s > 31 {
        return None;
    }
    // m < 2^58, so m * 32 + s < 2^63.
    i64::try_from((m << 5) | u128::from(s)).ok()
}

/// The decimal a dec64 value stands for (`None` for a negative value or a scale above
/// [`Decimal::MAX_SCALE`]: not something [`dec64`] writes).
pub fn undec64(v: i64) -> Option<Decimal> {
    let v = u64::try_from(v).ok()?;
    Decimal::new(u128::from(v >> 5), (v & 31) as u8)
}

/// One further copy packed in 64 bits (see `krakenbook_book.dups`), or `None` when a difference
/// does not fit: connection (16 bits, signed), seq (22 bits, signed, and within
/// [`DUP_SEQ_REACH`]), verdict (2 bits), receive time in microseconds (24 bits, signed).
pub fn pack_dup(
    conn_delta: i64,
    seq_delta: i64,
    verdict: Option<bool>,
    recv_delta_us: i64,
) -> Option<i64> {
    let fits = |v: i64, bits: u32| {
        let half = 1i64 << (bits - 1);
        (-half..half).contains(&v)
    };
    if !fits(conn_delta, 16)
        || !fits(seq_delta, 22)
        || seq_delta.abs() >= DUP_SEQ_REACH
        || !fits(recv_delta_us, 24)
    {
        return None;
    }
    let verdict = match verdict {
        None => 0u64,
        Some(true) => 1,
        Some(false) => 2,
    };
    let bits = ((conn_delta as u64 & 0xffff) << 48)
        | ((seq_delta as u64 & 0x3f_ffff) << 26)
        | (verdict << 24)
        | (recv_delta_us as u64 & 0xff_ffff);
    Some(bits as i64)
}

/// A packed copy's differences: (connection, seq, verdict, receive time in µs), as [`pack_dup`]
/// took them.
pub fn unpack_dup(d: i64) -> (i64, i64, Option<bool>, i64) {
    let conn = d >> 48;
    let seq = (d << 16) >> 42;
    let verdict = match (d >> 24) & 3 {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    };
    let recv = (d << 40) >> 40;
    (conn, seq, verdict, recv)
}

/// Whether a number's wire text is plain: digits, at most one `.` with digits on both sides.
fn plain_number(text: &str) -> bool {
    let mut parts = text.split('.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    parts.next().is_none() && digits(whole) && frac.is_none_or(digits)
}

/// The frame Kraken would send for this message, written from its parts: `None` when one of
/// them cannot be written back exactly (no timestamp, a number that is not plain).
pub fn canonical(kind: BookKind, data: &BookData<'_>) -> Option<String> {
    let mut out = String::with_capacity(96 + 40 * (data.bids.len() + data.asks.len()));
    render(kind, data, &mut out)?;
    Some(out)
}

/// Whether `frame` is byte for byte what [`canonical`] writes (compared as it is written: no
/// allocation, and a difference stops it at once).
pub fn is_canonical(kind: BookKind, data: &BookData<'_>, frame: &[u8]) -> bool {
    Compare::new(frame, false).matches(kind, data)
}

/// Whether a book row rebuilds `frame` as the database keeps it, so that it needs no `raw`:
/// the frame is what [`canonical`] writes, byte for byte, or but for JSON whitespace
/// ([`is_canonical_but_spacing`]) or the order of its objects' members
/// ([`is_canonical_but_order`]); cheapest first. The one statement of the rule: the writer and
/// the tests that model it ask this.
pub fn row_rebuilds(kind: BookKind, data: &BookData<'_>, frame: &[u8]) -> bool {
    is_canonical(kind, data, frame)
        || is_canonical_but_spacing(kind, data, frame)
        || is_canonical_but_order(kind, data, frame)
}

/// Whether `frame` is what [`canonical`] writes but for JSON's insignificant whitespace:
/// spaces, tabs, line feeds and carriage returns between tokens, as an exchange whose serialiser
/// writes `", "` and `": "` (Python's default) or pretty-prints sends them. What the database
/// keeps of a frame is its `jsonb` (`raw_message`), in which such whitespace is not kept, so the
/// row rebuilds such a frame as exactly as it rebuilds one in Kraken's layout and needs no
/// `raw`; the journal keeps its bytes. `frame` must be JSON (it decoded): whitespace outside
/// its strings then lies between tokens, and the frame's value is the canonical text's.
pub fn is_canonical_but_spacing(kind: BookKind, data: &BookData<'_>, frame: &[u8]) -> bool {
    Compare::new(frame, true).matches(kind, data)
}

/// Whether `frame` is what [`canonical`] writes but for the order of its objects' members (and
/// JSON whitespace): an exchange that sends Kraken's keys in another order, as a Go map (sorted
/// keys) does. `jsonb` keeps no member order either, so the row rebuilds such a frame as exactly
/// as the database keeps it; the journal keeps its bytes. Both are written in one form
/// ([`sorted_form`]: members sorted by their keys' text, no whitespace, every string, number and
/// literal as written) and compared; a key twice in one object is never taken. Allocates: for
/// frames the exact and the spaced comparisons turned down.
pub fn is_canonical_but_order(kind: BookKind, data: &BookData<'_>, frame: &[u8]) -> bool {
    let Some(rendered) = canonical(kind, data) else {
        return false;
    };
    match (sorted_form(frame), sorted_form(rendered.as_bytes())) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `json` in one form: the members of every object sorted by their keys' text as written
/// (escapes and all), no whitespace between tokens, strings, numbers and literals as written.
/// `None`: a key twice in one object, nesting deeper than [`SORTED_FORM_DEPTH`], or anything
/// that is not JSON as this reads it (it reads JSON that decoded: it does not validate tokens).
pub fn sorted_form(json: &[u8]) -> Option<Vec<u8>> {
    let mut p = JsonScan { s: json, at: 0 };
    let mut out = Vec::with_capacity(json.len());
    p.value(&mut out, 0)?;
    p.space();
    (p.at == json.len()).then_some(out)
}

/// How deep [`sorted_form`] reads (a book frame is four deep).
const SORTED_FORM_DEPTH: usize = 8;

struct JsonScan<'a> {
    s: &'a [u8],
    at: usize,
}

impl JsonScan<'_> {
    fn space(&mut self) {
        while self.s.get(self.at).copied().is_some_and(is_json_space) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > SORTED_FORM_DEPTH {
            return None;
        }
        self.space();
        match self.peek()? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => self.string(out),
            _ => {
                // A number or a literal: its bytes up to the next delimiter.
                let start = self.at;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b':' | b'{' | b'[' | b'"')
                        || is_json_space(b)
                    {
                        break;
                    }
                    self.at += 1;
                }
                if self.at == start {
                    return None;
                }
                out.extend_from_slice(&self.s[start..self.at]);
                Some(())
            }
        }
    }

    /// After whitespace, `,` → `true` (another item follows) or `close` → `false`.
    fn next_item(&mut self, close: u8) -> Option<bool> {
        self.space();
        let more = match self.peek()? {
            b',' => true,
            b if b == close => false,
            _ => return None,
        };
        self.at += 1;
        Some(more)
    }

    /// An object (at its `{`), its members sorted by their keys' text; a key twice: `None`.
    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.at += 1;
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.space();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                self.space();
                let mut key = Vec::new();
                self.string(&mut key)?;
                self.space();
                if self.peek()? != b':' {
                    return None;
                }
                self.at += 1;
                let mut value = Vec::new();
                self.value(&mut value, depth + 1)?;
                members.push((key, value));
                if !self.next_item(b'}')? {
                    break;
                }
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        if members.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        out.push(b'{');
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        Some(())
    }

    /// An array (at its `[`), its items in order.
    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.at += 1;
        out.push(b'[');
        self.space();
        if self.peek()? == b']' {
            self.at += 1;
        } else {
            loop {
                self.value(out, depth + 1)?;
                if !self.next_item(b']')? {
                    break;
                }
                out.push(b',');
            }
        }
        out.push(b']');
        Some(())
    }

    /// A string as written, quotes and escapes included.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at;
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    break;
                }
                _ => self.at += 1,
            }
        }
        out.extend_from_slice(&self.s[start..self.at]);
        Some(())
    }
}

/// JSON's insignificant whitespace.
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A [`std::fmt::Write`] that compares what is written with the bytes left: byte for byte, or
/// (`spacing`) passing over JSON whitespace in them wherever what is written stands outside a
/// string.
struct Compare<'a> {
    rest: &'a [u8],
    same: bool,
    spacing: bool,
    /// Inside a string of what is written (so of the frame too, as far as they agree).
    in_string: bool,
    /// The last byte written inside a string was an escaping backslash.
    escaped: bool,
}

impl<'a> Compare<'a> {
    fn new(frame: &'a [u8], spacing: bool) -> Self {
        Compare {
            rest: frame,
            same: true,
            spacing,
            in_string: false,
            escaped: false,
        }
    }

    /// Whether the frame is what [`render`] writes for `kind` and `data`, and nothing more.
    fn matches(mut self, kind: BookKind, data: &BookData<'_>) -> bool {
        render(kind, data, &mut self).is_some() && self.same && {
            if self.spacing {
                self.skip_space();
            }
            self.rest.is_empty()
        }
    }

    fn skip_space(&mut self) {
        while let Some((&b, rest)) = self.rest.split_first()
            && is_json_space(b)
        {
            self.rest = rest;
        }
    }

    fn fail(&mut self) -> std::fmt::Result {
        self.same = false;
        Err(std::fmt::Error)
    }
}

impl std::fmt::Write for Compare<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if !self.same {
            return Err(std::fmt::Error);
        }
        if !self.spacing {
            // Kraken's layout: no allocation, and a difference stops it at once.
            return match self.rest.strip_prefix(s.as_bytes()) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => self.fail(),
            };
        }
        for &b in s.as_bytes() {
            if !self.in_string {
                self.skip_space();
            }
            match self.rest.split_first() {
                Some((&f, rest)) if f == b => self.rest = rest,
                _ => return self.fail(),
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else if b == b'"' {
                self.in_string = true;
            }
        }
        Ok(())
    }
}

fn render(kind: BookKind, data: &BookData<'_>, out: &mut impl std::fmt::Write) -> Option<()> {
    let timestamp = data.timestamp?;
    let micros = Timestamp::from_unix_nanos(timestamp.unix_micros().saturating_mul(1000));
    if micros != timestamp {
        return None;
    }
    let mut symbol = String::new();
    crate::kraken::encode::push_json_str(&mut symbol, &data.symbol);
    out.write_str(r#"{"channel":"book","type":""#).ok()?;
    out.write_str(kind.as_str()).ok()?;
    out.write_str(r#"","data":[{"symbol":"#).ok()?;
    out.write_str(&symbol).ok()?;
    for (name, side) in [(r#","bids":["#, &data.bids), (r#"],"asks":["#, &data.asks)] {
        out.write_str(name).ok()?;
        for (i, l) in side.iter().enumerate() {
            if !plain_number(l.price.text) || !plain_number(l.qty.text) {
                return None;
            }
            if i > 0 {
                out.write_str(",").ok()?;
            }
            out.write_str(r#"{"price":"#).ok()?;
            out.write_str(l.price.text).ok()?;
            out.write_str(r#","qty":"#).ok()?;
            out.write_str(l.qty.text).ok()?;
            out.write_str("}").ok()?;
        }
    }
    write!(
        out,
        r#"],"checksum":{},"timestamp":"{}"}}]}}"#,
        data.checksum, timestamp
    )
    .ok()
}

/// The levels of a message as dec64, prices and quantities interleaved in wire order (bids
/// first): `None` if one value does not fit.
pub fn levels_dec64(bids: &[Level<'_>], asks: &[Level<'_>]) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(2 * (bids.len() + asks.len()));
    for l in bids.iter().chain(asks) {
        out.push(dec64(l.price.value)?);
        out.push(dec64(l.qty.value)?);
    }
    Some(out)
}

/// A book message's row, held until the batch ends (a later copy may join it).
#[derive(Debug)]
pub struct BookRow {
    /// Kraken's timestamp (the receive time when the frame has none).
    pub timestamp: Timestamp,
    /// When the first copy was read.
    pub received_at: Timestamp,
    /// The first copy's journal seq.
    pub seq: i64,
    /// The first copy's connection.
    pub conn_id: i64,
    /// Kraken's CRC32.
    pub checksum: u32,
    /// How many of the levels are bids.
    pub n_bids: i16,
    /// Snapshot or update.
    pub kind: BookKind,
    /// The collector's verdict on the first copy.
    pub checksum_ok: Option<bool>,
    /// The pair.
    pub symbol: String,
    /// dec64 price, qty, ... in wire order; `None` when a value does not fit.
    pub levels: Option<Vec<i64>>,
    /// The frame, when the row alone does not rebuild it.
    pub raw: Option<String>,
    /// Further copies, packed ([`pack_dup`]): the first is stored in `dup`, the others in `dups`.
    pub dups: Vec<i64>,
}

impl BookRow {
    fn same_message(&self, other: &BookRow) -> bool {
        self.raw.is_none()
            && other.raw.is_none()
            && self.timestamp == other.timestamp
            && self.kind == other.kind
            && self.checksum == other.checksum
            && self.n_bids == other.n_bids
            && self.symbol == other.symbol
            && self.levels == other.levels
    }

    fn key(&self) -> u64 {
        KEY_HASH.hash_one((
            &self.symbol,
            self.timestamp.pg_micros(),
            self.checksum,
            &self.levels,
        ))
    }

    fn has_conn(&self, conn_id: i64) -> bool {
        conn_id == self.conn_id
            || self
                .dups
                .iter()
                .any(|d| self.conn_id + unpack_dup(*d).0 == conn_id)
    }
}

/// The hash a row's identity is looked up by (in one process only: a lookup, never stored).
/// aHash, not the standard library's SipHash: every book row of every batch is hashed over its
/// levels, and the rows come from the collector's own journal (no adversary picks the keys to
/// collide; a collision costs a full comparison, never a wrong merge).
static KEY_HASH: ahash::RandomState = ahash::RandomState::with_seeds(
    0x6b72_616b_656e_626f,
    0x6f6b_2062_6f6f_6b20,
    0x726f_7773_206b_6579,
    0x2068_6173_6820_2020,
);

/// Map hasher for keys that are already hashes (row keys, CRC-32s).
type Fast = std::hash::BuildHasherDefault<ahash::AHasher>;

/// How many rows stay held for later copies to join them: older rows are encoded as they age out
/// (so the COPY streams while the batch is encoded), and a copy arriving after its first copy
/// aged out is a row of its own. Copies on redundant connections arrive a few frames apart.
pub const MERGE_WINDOW: usize = 4096;

/// The longest frame whose bytes are held to recognise its later copies without decoding them
/// (Kraken's updates are a few hundred bytes; snapshots, rarely copied, stay on the slow path).
pub const COPY_BYTES_MAX: usize = 4096;

/// What [`BookRows::push_copy_bytes`] learned of a frame that is not a held row's copy: its
/// CRC-32 when computed, for [`BookRows::push_frame`] of the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashed(Option<u32>);

impl Hashed {
    /// Nothing computed yet (a frame `push_copy_bytes` was not asked about).
    pub const NONE: Hashed = Hashed(None);
}

/// Where a held row's frame is: its CRC-32 and its bytes' place in [`BookRows`]'s buffer.
#[derive(Clone, Debug)]
struct Source {
    crc: u32,
    bytes: std::ops::Range<usize>,
}

/// The buffer of held frames' bytes keeps at most this much room between batches.
const HELD_KEPT: usize = 8 << 20;

/// The book rows of one batch, merging copies.
#[derive(Debug, Default)]
pub struct BookRows {
    rows: std::collections::VecDeque<BookRow>,
    /// For each row of `rows` (same index), the CRC-32 of the frame it was decoded from and
    /// where its bytes are in `held`, when it was pushed by [`BookRows::push_frame`], has no
    /// `raw` and is at most [`COPY_BYTES_MAX`] long.
    sources: std::collections::VecDeque<Option<Source>>,
    /// The bytes of the frames `sources` point into, one after the other: one buffer, emptied
    /// when no row is held, instead of an allocation and a free for every frame (`perf` put
    /// about a tenth of the database thread's samples at N = 2 there; the CPU ratio of N = 2 did
    /// not move measurably). It holds at most a batch's frames: the batch's journal bytes cap it.
    held: Vec<u8>,
    /// The absolute index of `rows[0]` since the last clear.
    base: usize,
    latest: HashMap<u64, usize, Fast>,
    /// The latest row (absolute index) whose source has that CRC-32.
    by_crc: HashMap<u32, usize, Fast>,
    /// Whether [`BookRows::push_frame`] keeps frames' bytes: only after a batch that merged a
    /// copy (a collector with redundant connections), so a single connection's batches pay no
    /// hashing or copying for copies that never come.
    keep_bytes: bool,
    /// Copies merged into an earlier row since the last reset.
    pub merged: u64,
}

impl BookRows {
    /// Forgets every row.
    pub fn clear(&mut self) {
        self.keep_bytes = self.merged > 0;
        self.rows.clear();
        self.sources.clear();
        self.forget_held();
        self.by_crc.clear();
        self.latest.clear();
        self.base = 0;
        self.merged = 0;
    }

    /// Empties the buffer of held bytes (no source points into it any more), giving back
    /// room beyond [`HELD_KEPT`].
    fn forget_held(&mut self) {
        self.held.clear();
        if self.held.capacity() > HELD_KEPT {
            self.held.shrink_to(HELD_KEPT);
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// A frame whose bytes equal, byte for byte, those of a row held (pushed by
    /// [`BookRows::push_frame`]) is a copy of that row's message: identical bytes decode to an
    /// identical row, so it is merged into it as [`BookRows::push`] would merge the decoded row,
    /// without decoding. Returns the row's Kraken timestamp when merged; `None`: not such a copy
    /// (or one `push` would not merge: same connection, too far), decode it.
    pub fn push_copy_bytes(
        &mut self,
        bytes: &[u8],
        conn_id: i64,
        seq: i64,
        checksum_ok: Option<bool>,
        received_at: Timestamp,
    ) -> Result<Timestamp, Hashed> {
        if bytes.len() > COPY_BYTES_MAX || self.by_crc.is_empty() {
            return Err(Hashed(None));
        }
        let crc = crc32fast::hash(bytes);
        let miss = Err(Hashed(Some(crc)));
        let Some(i) = self
            .by_crc
            .get(&crc)
            .and_then(|abs| abs.checked_sub(self.base))
        else {
            return miss;
        };
        match self.sources.get(i) {
            Some(Some(source))
                if source.crc == crc && self.held.get(source.bytes.clone()) == Some(bytes) => {}
            _ => return miss,
        }
        let Some(first) = self.rows.get_mut(i) else {
            return miss;
        };
        if first.raw.is_some() || first.has_conn(conn_id) {
            return miss;
        }
        let Some(d) = pack_dup(
            conn_id - first.conn_id,
            seq - first.seq,
            checksum_ok,
            received_at.pg_micros() - first.received_at.pg_micros(),
        ) else {
            return miss;
        };
        first.dups.push(d);
        self.merged += 1;
        Ok(first.timestamp)
    }

    /// [`BookRows::push`], keeping the frame's bytes (when short) so that later byte-identical
    /// copies are recognised by [`BookRows::push_copy_bytes`]. `hashed` is what
    /// `push_copy_bytes` answered for these same bytes (their CRC-32 when it computed one, so
    /// it is not computed twice).
    pub fn push_frame(&mut self, row: BookRow, bytes: &[u8], hashed: Hashed) -> bool {
        let keep = self.keep_bytes && row.raw.is_none() && bytes.len() <= COPY_BYTES_MAX;
        if self.push(row) {
            return true;
        }
        if keep {
            let crc = hashed.0.unwrap_or_else(|| crc32fast::hash(bytes));
            debug_assert_eq!(crc, crc32fast::hash(bytes), "a hash of other bytes");
            let abs = self.base + self.rows.len() - 1;
            self.by_crc.insert(crc, abs);
            if let Some(last) = self.sources.back_mut() {
                let start = self.held.len();
                self.held.extend_from_slice(bytes);
                *last = Some(Source {
                    crc,
                    bytes: start..self.held.len(),
                });
            }
        }
        false
    }

    /// Adds a message: merged into an earlier row as a copy when it is one (true), else a row.
    pub fn push(&mut self, row: BookRow) -> bool {
        if row.raw.is_none() {
            let key = row.key();
            if let Some(&abs) = self.latest.get(&key)
                && let Some(first) = abs
                    .checked_sub(self.base)
                    .and_then(|i| self.rows.get_mut(i))
                && first.same_message(&row)
                && !first.has_conn(row.conn_id)
                && let Some(d) = pack_dup(
                    row.conn_id - first.conn_id,
                    row.seq - first.seq,
                    row.checksum_ok,
                    row.received_at.pg_micros() - first.received_at.pg_micros(),
                )
            {
                first.dups.push(d);
                self.merged += 1;
                return true;
            }
            self.latest.insert(key, self.base + self.rows.len());
        }
        self.rows.push_back(row);
        self.sources.push_back(None);
        false
    }

    /// Encodes the rows older than the merge window into `b` (a binary COPY stream after its
    /// header); returns how many.
    pub fn encode_aged(&mut self, collector_id: i16, b: &mut BytesMut) -> usize {
        let n = self.rows.len().saturating_sub(MERGE_WINDOW);
        self.encode_first(n, collector_id, b);
        if self.latest.len() > 4 * MERGE_WINDOW {
            let base = self.base;
            self.latest.retain(|_, abs| *abs >= base);
        }
        n
    }

    /// Writes every row into `b` and forgets them.
    pub fn encode(&mut self, collector_id: i16, b: &mut BytesMut) {
        self.encode_first(self.rows.len(), collector_id, b);
        self.latest.clear();
        self.by_crc.clear();
    }

    fn encode_first(&mut self, n: usize, collector_id: i16, b: &mut BytesMut) {
        for row in self.rows.drain(..n) {
            encode_row(&row, collector_id, b);
        }
        for (k, source) in self.sources.drain(..n).enumerate() {
            if let Some(Source { crc, .. }) = source
                && self.by_crc.get(&crc) == Some(&(self.base + k))
            {
                self.by_crc.remove(&crc);
            }
        }
        if self.sources.is_empty() {
            self.forget_held();
        }
        self.base += n;
    }
}

fn encode_row(row: &BookRow, collector_id: i16, b: &mut BytesMut) {
    b.put_i16(BOOK_FIELDS);
    put_i64(b, row.timestamp.pg_micros());
    put_i64(b, row.received_at.pg_micros());
    put_i64(b, row.seq);
    put_i64(b, row.conn_id);
    match row.dups.first() {
        Some(d) => put_i64(b, *d),
        None => b.put_i32(-1),
    }
    b.put_i32(4);
    b.put_i32(row.checksum as i32);
    b.put_i32(2);
    b.put_i16(collector_id);
    b.put_i32(2);
    b.put_i16(row.n_bids);
    b.put_i32(1);
    b.put_u8(match row.kind {
        BookKind::Snapshot => b's',
        BookKind::Update => b'u',
    });
    match row.checksum_ok {
        Some(ok) => {
            b.put_i32(1);
            b.put_u8(u8::from(ok));
        }
        None => b.put_i32(-1),
    }
    b.put_i32(row.symbol.len() as i32);
    b.put_slice(row.symbol.as_bytes());
    match &row.levels {
        Some(l) => put_i64_array(b, l),
        None => b.put_i32(-1),
    }
    match &row.raw {
        Some(text) => {
            b.put_i32(text.len() as i32 + 1);
            b.put_u8(1);
            b.put_slice(text.as_bytes());
        }
        None => b.put_i32(-1),
    }
    if row.dups.len() < 2 {
        b.put_i32(-1);
    } else {
        put_i64_array(b, &row.dups[1..]);
    }
}

fn put_i64(b: &mut BytesMut, v: i64) {
    b.put_i32(8);
    b.put_i64(v);
}

/// A one-dimensional `bigint[]` in binary form (an empty array has no dimension).
fn put_i64_array(b: &mut BytesMut, values: &[i64]) {
    if values.is_empty() {
        b.put_i32(12);
        b.put_i32(0);
        b.put_i32(0);
        b.put_i32(INT8_OID);
        return;
    }
    b.put_i32(20 + 12 * values.len() as i32);
    b.put_i32(1);
    b.put_i32(0);
    b.put_i32(INT8_OID);
    b.put_i32(values.len() as i32);
    b.put_i32(1);
    for v in values {
        b.put_i32(8);
        b.put_i64(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn dec64_keeps_every_digit_and_the_scale_as_sent() {
        for s in [
            "1.50",
            "1.5",
            "0",
            "0.00000000",
            "0.000051004",
            "62797.0",
            "123456789012345.67",
        ] {
            let v = dec64(d(s)).unwrap();
            assert_eq!(undec64(v).unwrap().to_string(), s);
        }
        assert_eq!(dec64(d("1.50")), Some(150 * 32 + 2));
        assert_ne!(dec64(d("1.50")), dec64(d("1.5")));
    }

    #[test]
    fn dec64_refuses_values_it_cannot_hold() {
        assert_eq!(dec64(d("288230376151711744")), None, "2^58");
        assert!(dec64(d("288230376151711743")).is_some());
        assert_eq!(dec64(d("99999999999999999999.5")), None);
    }

    #[test]
    fn a_packed_copy_unpacks_to_what_was_packed() {
        for (c, s, v, r) in [
            (1, 1, Some(true), 5),
            (-1, -3, Some(false), -250_000),
            (32_767, 65_535, None, 8_388_607),
            (-32_768, -65_535, Some(true), -8_388_608),
        ] {
            let p = pack_dup(c, s, v, r).unwrap();
            assert_eq!(unpack_dup(p), (c, s, v, r));
        }
        assert_eq!(pack_dup(32_768, 0, None, 0), None);
        assert_eq!(pack_dup(0, DUP_SEQ_REACH, None, 0), None);
        assert_eq!(pack_dup(0, 0, None, 8_388_608), None);
    }

    fn row(seq: i64, conn_id: i64, checksum: u32) -> BookRow {
        BookRow {
            timestamp: Timestamp::from_unix_nanos(1_000_000_000 * checksum as i64),
            received_at: Timestamp::from_unix_nanos(1_000 * seq),
            seq,
            conn_id,
            checksum,
            n_bids: 1,
            kind: BookKind::Update,
            checksum_ok: Some(true),
            symbol: "BTC/USD".to_owned(),
            levels: Some(vec![dec64(d("1.5")).unwrap(), dec64(d("2")).unwrap()]),
            raw: None,
            dups: Vec::new(),
        }
    }

    /// The held bytes of a batch live in one buffer that is emptied with the batch, and gives
    /// back what it grew past `HELD_KEPT` (a burst of large frames does not stay resident), while
    /// the copies of frames still held are recognised byte for byte.
    #[test]
    fn held_bytes_are_one_buffer_emptied_with_the_batch_and_bounded_between_batches() {
        let mut rows = BookRows {
            keep_bytes: true,
            ..BookRows::default()
        };
        let big = |k: u32| {
            let mut f = format!("{{\"frame\":{k},\"pad\":\"").into_bytes();
            f.resize(COPY_BYTES_MAX - 2, b'x');
            f.extend_from_slice(b"\"}");
            f
        };
        let n = (3 * HELD_KEPT / COPY_BYTES_MAX) as u32;
        let at = |seq: u32| Timestamp::from_unix_nanos(1_000 * i64::from(seq));
        for k in 0..n {
            assert!(!rows.push_frame(row(i64::from(k), 1, k), &big(k), Hashed::NONE));
        }
        assert_eq!(rows.held.len(), n as usize * COPY_BYTES_MAX);
        // The last frame is still held: its copy joins it without decoding.
        let last = rows.push_copy_bytes(&big(n - 1), 2, i64::from(n), Some(true), at(n));
        assert!(last.is_ok(), "{last:?}");
        // A frame of the same length that differs in its last byte is not its copy.
        let mut other = big(n - 2);
        *other.last_mut().unwrap() = b']';
        assert!(
            rows.push_copy_bytes(&other, 2, i64::from(n) + 1, Some(true), at(n))
                .is_err()
        );
        rows.clear();
        assert!(rows.held.is_empty());
        assert!(
            rows.held.capacity() <= HELD_KEPT,
            "{}",
            rows.held.capacity()
        );
    }

    #[test]
    fn a_copy_joins_its_first_copy_only_while_that_row_is_held() {
        let mut rows = BookRows::default();
        assert!(!rows.push(row(1, 1, 7)));
        assert!(rows.push(row(2, 2, 7)), "the copy on connection 2 joins");
        assert!(
            !rows.push(row(3, 1, 7)),
            "a repeat on connection 1 is a message of its own"
        );
        // Enough other messages to age the first row out of the window.
        for i in 0..MERGE_WINDOW as i64 {
            rows.push(row(10 + i, 1, 100 + i as u32));
        }
        let mut b = BytesMut::new();
        assert_eq!(
            rows.encode_aged(1, &mut b),
            2,
            "both rows of message 7 aged out"
        );
        assert!(!b.is_empty());
        // A copy arriving later is a row of its own: correct, a little larger.
        assert!(!rows.push(row(9_000, 3, 7)));
        assert_eq!(rows.merged, 1);
        // A copy of a row still held joins it.
        assert!(rows.push(row(9_001, 2, 100 + MERGE_WINDOW as u32 - 1)));
        assert_eq!(rows.merged, 2);
    }

    /// A byte-identical copy joins its first copy without being decoded, exactly where the
    /// decoded copy would have joined: not on the same connection, not a different frame, not a
    /// row that aged out, not a row kept with its frame (`raw`). Bytes are kept only once a batch
    /// has merged a copy.
    #[test]
    fn a_byte_identical_copy_joins_where_the_decoded_copy_would() {
        let frame = |k: u32| format!("{{\"frame\":{k}}}").into_bytes();
        let at = |seq: i64| Timestamp::from_unix_nanos(1_000 * seq);
        let mut rows = BookRows::default();
        // A batch without copies: no bytes kept, none in the next batch either.
        assert!(!rows.push_frame(row(1, 1, 6), &frame(6), Hashed::NONE));
        assert!(rows.by_crc.is_empty());
        rows.clear();
        assert!(!rows.push_frame(row(1, 1, 6), &frame(6), Hashed::NONE));
        assert_eq!(
            rows.push_copy_bytes(&frame(6), 2, 2, Some(true), at(2))
                .ok(),
            None
        );
        // A batch that merged a copy (decoded): the next one keeps bytes.
        assert!(rows.push(row(2, 2, 6)));
        rows.clear();
        assert_eq!(
            rows.push_copy_bytes(&frame(7), 2, 2, Some(true), at(2))
                .ok(),
            None
        );
        assert!(!rows.push_frame(row(1, 1, 7), &frame(7), Hashed::NONE));
        // Same bytes on another connection: merged, with its own verdict and receipt.
        assert_eq!(
            rows.push_copy_bytes(&frame(7), 2, 2, Some(false), at(2))
                .ok(),
            Some(row(1, 1, 7).timestamp)
        );
        assert_eq!(rows.merged, 1);
        let mut decoded = BookRows::default();
        decoded.push(row(1, 1, 7));
        let mut copy = row(2, 2, 7);
        copy.checksum_ok = Some(false);
        assert!(decoded.push(copy));
        assert_eq!(
            rows.rows[0].dups, decoded.rows[0].dups,
            "packed as push packs it"
        );
        // The same connection again, or other bytes: not recognised (decode it).
        assert_eq!(
            rows.push_copy_bytes(&frame(7), 1, 3, Some(true), at(3))
                .ok(),
            None
        );
        assert_eq!(
            rows.push_copy_bytes(&frame(7), 2, 3, Some(true), at(3))
                .ok(),
            None
        );
        // A miss carries the bytes' CRC-32 to push_frame (computed once).
        assert_eq!(
            rows.push_copy_bytes(&frame(8), 3, 3, Some(true), at(3)),
            Err(Hashed(Some(crc32fast::hash(&frame(8)))))
        );
        // A row kept with its frame is never merged, by bytes or decoded.
        let mut raw = row(4, 1, 9);
        raw.raw = Some("{}".to_owned());
        assert!(!rows.push_frame(raw, &frame(9), Hashed::NONE));
        assert_eq!(
            rows.push_copy_bytes(&frame(9), 2, 5, Some(true), at(5))
                .ok(),
            None
        );
        // Aged out: its bytes are forgotten with it.
        for i in 0..MERGE_WINDOW as i64 {
            rows.push_frame(
                row(10 + i, 1, 100 + i as u32),
                &frame(100 + i as u32),
                Hashed::NONE,
            );
        }
        let mut b = BytesMut::new();
        assert_eq!(rows.encode_aged(1, &mut b), 2);
        assert_eq!(
            rows.push_copy_bytes(&frame(7), 3, 9_000, Some(true), at(9_000))
                .ok(),
            None
        );
        assert!(rows.by_crc.len() <= MERGE_WINDOW, "{}", rows.by_crc.len());
        // Still held: recognised.
        let last = 100 + MERGE_WINDOW as u32 - 1;
        assert!(
            rows.push_copy_bytes(&frame(last), 2, 9_001, Some(true), at(9_001))
                .ok()
                .is_some()
        );
        rows.encode(1, &mut b);
        assert!(rows.by_crc.is_empty() && rows.sources.is_empty() && rows.held.is_empty());
    }

    #[test]
    fn only_plain_numbers_are_written_back() {
        for s in ["1", "1.5", "0.00005100", "62797.0"] {
            assert!(plain_number(s), "{s}");
        }
        for s in ["5e-05", "1E2", "-1", "1.", ".5", "", "1.2.3", "+1"] {
            assert!(!plain_number(s), "{s}");
        }
    }

    /// One form for JSON whose objects list their members in any order: members sorted by
    /// their keys' text, whitespace gone, everything else as written; arrays keep their order,
    /// a key twice in one object or text after the value is never taken.
    #[test]
    fn the_sorted_form_orders_members_and_nothing_else() {
        let form = |s: &str| sorted_form(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        let kraken = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":1.50,"qty":0.00005100}],"asks":[],"checksum":7,"timestamp":"2026-08-16T23:37:05.376419Z"}]}"#;
        let sorted = r#"{"channel":"book","data":[{"asks":[],"bids":[{"price":1.50,"qty":0.00005100}],"checksum":7,"symbol":"BTC/USD","timestamp":"2026-08-16T23:37:05.376419Z"}],"type":"update"}"#;
        assert_eq!(form(kraken).as_deref(), Some(sorted));
        let reordered = r#" { "type" : "update", "data" : [ { "checksum":7, "timestamp":"2026-08-16T23:37:05.376419Z", "asks":[ ], "bids":[{"qty":0.00005100,"price":1.50}], "symbol":"BTC/USD" } ] ,"channel":"book" } "#;
        assert_eq!(form(reordered).as_deref(), Some(sorted));
        // Numbers keep their text, strings their spaces and escapes, arrays their order.
        assert_ne!(form(&kraken.replace("1.50", "1.5")), form(kraken));
        assert_ne!(form(&kraken.replace("BTC/USD", "BTC/ USD")), form(kraken));
        assert_ne!(form(&kraken.replace("BTC/USD", r"BTC\/USD")), form(kraken));
        assert_eq!(
            form(r#"{"b":[2,1],"a":"x\"y"}"#).as_deref(),
            Some(r#"{"a":"x\"y","b":[2,1]}"#)
        );
        // A key twice, text after the value, a cut, and nesting past the bound: none.
        for bad in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1"#,
            r#"{"a":"x\"#,
            r#"[[[[[[[[[[1]]]]]]]]]]"#,
            "",
        ] {
            assert_eq!(form(bad), None, "{bad}");
        }
        assert_eq!(
            form("[[[[[[[[1]]]]]]]]").as_deref(),
            Some("[[[[[[[[1]]]]]]]]")
        );
    }

    #[test]
    fn real_frames_are_canonical() {
        let text = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[{"price":62806.6,"qty":0.00000000},{"price":62808.0,"qty":0.79607759}],"checksum":265834348,"timestamp":"2026-08-16T23:37:05.376419Z"}]}"#;
        let crate::kraken::Frame::Book(book) = crate::kraken::decode(text).unwrap() else {
            panic!("a book frame");
        };
        assert_eq!(canonical(book.kind, &book.data[0]).as_deref(), Some(text));
        assert!(is_canonical(book.kind, &book.data[0], text.as_bytes()));
        assert!(!is_canonical(
            book.kind,
            &book.data[0],
            &text.as_bytes()[..text.len() - 1]
        ));
        let longer = format!("{text} ");
        assert!(!is_canonical(book.kind, &book.data[0], longer.as_bytes()));
        // Spaced otherwise, between tokens only: the same frame to `jsonb`, rebuilt by the row.
        let spaced = text.replace(r#"":"#, r#"": "#).replace(r#"","#, "\",\n\t");
        assert!(is_canonical_but_spacing(
            book.kind,
            &book.data[0],
            spaced.as_bytes()
        ));
        assert!(!is_canonical(book.kind, &book.data[0], spaced.as_bytes()));
        for inside_a_string in [
            text.replacen("BTC/USD", "BTC/ USD", 1),
            text.replacen("T23:37", "T23: 37", 1),
            text.replacen(r#""checksum""#, r#"" checksum""#, 1),
        ] {
            assert!(
                !is_canonical_but_spacing(book.kind, &book.data[0], inside_a_string.as_bytes()),
                "{inside_a_string}"
            );
        }
        // A space after the frame is whitespace too (one missing byte is not).
        assert!(is_canonical_but_spacing(
            book.kind,
            &book.data[0],
            longer.as_bytes()
        ));
        assert!(!is_canonical_but_spacing(
            book.kind,
            &book.data[0],
            &text.as_bytes()[..text.len() - 1]
        ));
        let spaced = text.replace(r#""bids":[]"#, r#""bids": []"#);
        let crate::kraken::Frame::Book(book) = crate::kraken::decode(&spaced).unwrap() else {
            panic!("a book frame");
        };
        assert_ne!(
            canonical(book.kind, &book.data[0]).as_deref(),
            Some(&*spaced)
        );
    }

    /// What the row encoder counts on to skip the `jsonb` scan: a frame `canonical` writes from
    /// exact (dec64) levels and a symbol without NUL is text `jsonb` takes, whatever the symbol
    /// holds (every other control character, quotes, backslashes, characters beyond the BMP)
    /// and however long its numbers.
    #[test]
    fn a_canonical_frame_with_exact_levels_is_always_text_jsonb_takes() {
        let mut symbols: Vec<String> = (1u32..0x20)
            .map(|c| format!("A{}B/USD", char::from_u32(c).unwrap()))
            .collect();
        symbols.extend(["\"Q\\/USD".into(), "😀/€".into(), "\u{7f}\u{ffff}/x".into()]);
        let mut checked = 0;
        for symbol in symbols {
            for (price, qty) in [("1", "0.5"), ("28823037615171174.3", "0.00000000000000001")] {
                let mut symbol_json = String::new();
                crate::kraken::encode::push_json_str(&mut symbol_json, &symbol);
                let text = format!(
                    r#"{{"channel":"book","type":"update","data":[{{"symbol":{symbol_json},"bids":[{{"price":{price},"qty":{qty}}}],"asks":[],"checksum":4294967295,"timestamp":"2026-08-16T23:37:05.376419Z"}}]}}"#
                );
                let crate::kraken::Frame::Book(book) = crate::kraken::decode(&text).unwrap() else {
                    panic!("a book frame: {text}");
                };
                let data = &book.data[0];
                assert_eq!(data.symbol, symbol);
                assert!(
                    levels_dec64(&data.bids, &data.asks).is_some(),
                    "{price} {qty}"
                );
                assert!(is_canonical(book.kind, data, text.as_bytes()), "{text}");
                assert_eq!(crate::types::jsonb_refusal(&text), None, "{text}");
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * 34);
    }
}
