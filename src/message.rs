//! Message ids, published messages and the v3 text frame (docs/protocol.md#message-ids).
//!
//! Owns [`Mid`] (26 decimal digits as epoch and counter), [`MidGen`] (the embedded store's
//! minting point; with Redis the publish script mints, see docs/redis.md), the state file
//! holding the last epoch (the only I/O in this module, shared by both stores), and
//! [`Message`], the immutable value every receiver shares through an `Arc`. Invariants: ids
//! minted by this process and by any earlier run on the same state file are unique and
//! strictly increasing (docs/protocol.md#message-ids); a message's bytes are never re-encoded, only spliced, and each
//! wire encoding is built at most once.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;
use tungstenite::Bytes;

use crate::channel::ChannelId;

const EPOCH_LIMIT: u64 = 10_000_000_000; // 10 digits
const COUNTER_LIMIT: u64 = 10_000_000_000_000_000; // 16 digits

/// A message id: `EPOCH(10 digits) COUNTER(16 digits)`. Because both parts are fixed-width
/// decimal, numeric order equals the lexicographic order of the 26-digit form, and equals the
/// order of (epoch, counter), which the derived `Ord` compares. Two `u64`s rather than one
/// `u128`: 8-byte alignment keeps every structure holding a `Mid` (each subscriber's state)
/// free of 16-byte padding, and the parts need no 128-bit division.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mid {
    epoch: u64,
    counter: u64,
}

/// Appends `v` as exactly `width` zero-padded decimal digits (`v` must fit).
fn write_padded(mut v: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = [b'0'; 20];
    let start = buf.len() - width;
    for slot in buf[start..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[start..]);
}

/// Appends `v` in decimal without padding.
fn write_u64(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl Mid {
    pub fn new(epoch: u64, counter: u64) -> Mid {
        debug_assert!(epoch < EPOCH_LIMIT, "epoch {epoch} exceeds 10 digits");
        debug_assert!(
            counter < COUNTER_LIMIT,
            "counter {counter} exceeds 16 digits"
        );
        Mid { epoch, counter }
    }

    /// The 26-digit number; `v` below 10^26.
    fn from_u128(v: u128) -> Mid {
        let limit = u128::from(COUNTER_LIMIT);
        // Fits: below 10^26, so the quotient is below 10^10.
        Mid::new((v / limit) as u64, (v % limit) as u64)
    }

    fn value(self) -> u128 {
        u128::from(self.epoch) * u128::from(COUNTER_LIMIT) + u128::from(self.counter)
    }

    /// `None` when `epoch` has more than 10 digits or `counter` more than 16: values read
    /// from outside (Redis) are checked with this, since [`Mid::new`] only asserts.
    pub fn try_new(epoch: u64, counter: u64) -> Option<Mid> {
        (epoch < EPOCH_LIMIT && counter < COUNTER_LIMIT).then(|| Mid::new(epoch, counter))
    }

    pub fn epoch(self) -> u64 {
        self.epoch
    }

    pub fn counter(self) -> u64 {
        self.counter
    }

    /// Exactly `^[0-9]{26}$`; anything else means "no mid" to the caller (docs/protocol.md#subscribing).
    pub fn parse(s: &[u8]) -> Option<Mid> {
        if s.len() != 26 {
            return None;
        }
        s.iter()
            .try_fold(0u128, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u128::from(c - b'0'))
            })
            .map(Mid::from_u128)
    }

    /// Appends the 26 zero-padded digits.
    pub fn write_to(self, out: &mut Vec<u8>) {
        write_padded(self.epoch(), 10, out);
        write_padded(self.counter(), 16, out);
    }

    fn digits(self) -> [u8; 26] {
        let mut d = [b'0'; 26];
        let mut v = self.value();
        for slot in d.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        d
    }

    /// The v4 form: the 26 digits hex-decoded as if they were hex, two digits per byte.
    pub fn to_binary(self) -> [u8; 13] {
        let mut out = [0u8; 13];
        let mut v = self.value();
        // Fill from the last byte: each byte holds the two lowest remaining decimal digits.
        for b in out.iter_mut().rev() {
            let lo = (v % 10) as u8;
            v /= 10;
            let hi = (v % 10) as u8;
            v /= 10;
            *b = (hi << 4) | lo;
        }
        out
    }

    /// 13 bytes whose nibbles are all 0-9 (the inverse of [`Mid::to_binary`]).
    pub fn from_binary(b: &[u8]) -> Option<Mid> {
        if b.len() != 13 {
            return None;
        }
        b.iter()
            .try_fold(0u128, |acc, &byte| {
                let (hi, lo) = (byte >> 4, byte & 15);
                (hi <= 9 && lo <= 9).then(|| acc * 100 + u128::from(hi * 10 + lo))
            })
            .map(Mid::from_u128)
    }
}

impl fmt::Display for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.digits();
        f.write_str(std::str::from_utf8(&d).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mid({self})")
    }
}

/// Mints ids. The epoch is persisted at start so ids never repeat across restarts
/// (docs/protocol.md#message-ids, docs/protocol.md#message-ids): every start takes an epoch strictly above the last persisted one,
/// so the counter itself never needs to be persisted.
#[derive(Debug)]
pub struct MidGen {
    epoch: u64,
    /// The counter of the newest id handed out; 0 = none yet.
    counter: u64,
}

impl MidGen {
    /// Reads the last epoch from `state_path` (one decimal number; a missing file means none;
    /// garbage is warned about and treated as none), picks `max(now_unix, last + 1)`, and
    /// writes it back atomically before any id of the new epoch can be handed out.
    pub fn start(state_path: &Path, now_unix: u64) -> io::Result<MidGen> {
        MidGen::start_above(state_path, now_unix, 0)
    }

    /// [`MidGen::start`] with an epoch also above `floor` (the newest epoch of the ids the
    /// embedded store restored, docs/persistence.md), in case the state file is older.
    pub fn start_above(state_path: &Path, now_unix: u64, floor: u64) -> io::Result<MidGen> {
        let last = read_last_epoch(state_path)?.max((floor > 0).then_some(floor));
        let epoch = match last {
            Some(last) => now_unix.max(last.saturating_add(1)),
            None => now_unix,
        };
        if epoch >= EPOCH_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("mid epoch {epoch} does not fit in 10 digits"),
            ));
        }
        write_epoch_atomically(state_path, epoch)?;
        Ok(MidGen { epoch, counter: 0 })
    }

    /// A generator with no state file, for tests.
    pub fn in_memory(epoch: u64) -> MidGen {
        debug_assert!(epoch < EPOCH_LIMIT);
        MidGen { epoch, counter: 0 }
    }

    /// The next id: counter from 1 (the legacy client ignores `id` 0), strictly increasing.
    /// 10^16 ids per run would take centuries at any realistic rate, so the counter is not
    /// expected to wrap; `Mid::new` asserts it in debug builds.
    // Not an `Iterator`: minting never ends, and `Option` would force a pointless unwrap on
    // every publish.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Mid {
        self.counter += 1;
        Mid::new(self.epoch, self.counter)
    }

    /// The newest id handed out.
    pub fn last(&self) -> Option<Mid> {
        (self.counter > 0).then(|| Mid::new(self.epoch, self.counter))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Moves the state file from its location before STATE_DIR (`old`) to `new` when `new` does
/// not exist yet: read once, written to the new place (docs/persistence.md). The old file
/// is left as it is. `Ok(Some(epoch))` when it migrated one.
pub fn migrate_state_file(old: &Path, new: &Path) -> io::Result<Option<u64>> {
    if old == new || new.exists() {
        return Ok(None);
    }
    match read_last_epoch(old)? {
        Some(epoch) => {
            write_epoch_atomically(new, epoch)?;
            Ok(Some(epoch))
        }
        None => Ok(None),
    }
}

pub(crate) fn read_last_epoch(path: &Path) -> io::Result<Option<u64>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let parsed = std::str::from_utf8(&text)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if parsed.is_none() {
        warn!(
            "mid state file {} is not a decimal epoch; starting a new epoch from the clock",
            path.display()
        );
    }
    Ok(parsed)
}

/// Writes `epoch` to a temp file in the same directory, syncs it, and renames it over `path`,
/// so a crash leaves either the old or the new epoch, never a torn file.
pub(crate) fn write_epoch_atomically(path: &Path, epoch: u64) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mid state path {} has no file name", path.display()),
            )
        })?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable; some platforms cannot open directories, which is fine.
    if let Some(dir) = dir
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Who published a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Backend,
    /// A client publish, identified by the sender connection's public id.
    Client(ChannelId),
}

/// One published message; shared (`Arc`) by every receiver, encodings computed once, lazily.
pub struct Message {
    pub mid: Mid,
    /// Unix milliseconds at creation; `tag` and `time` derive from it.
    pub created_ms: u64,
    /// Seconds as published (0 = live only).
    pub expiry: u32,
    pub sender: Sender,
    /// Opaque and byte-exact.
    pub body: Bytes,
    /// The v4 `type` (stats only); None for text publishes.
    pub kind: Option<String>,
    /// The v3 frame, and the same bytes as one WebSocket text frame for all WS subscribers.
    v3: OnceLock<Framed>,
    /// The encoded v4 `OutgoingMessage` (no outer tag), spliced into every v4 batch, and a
    /// one-message v4 `ResponseBatch` of it in one WebSocket binary frame, for live fan-out.
    v4: OnceLock<Framed>,
    /// v5 `user_params` (a JSON object keyed by user id), merged into `body.params` for each
    /// recipient user (docs/v5.md, "Delivery"); `body` already has the `dictionary` merged.
    pub user_params: Option<Bytes>,
    /// The v5 form for a recipient without `user_params` of its own; `None` when the body is
    /// not a JSON object (such messages are skipped for v5 subscribers).
    v5: OnceLock<Option<Framed>>,
}

/// An encoding and its live WebSocket frame in one allocation: `ws` is
/// `[frame header][wrapping][payload]` and `payload` its tail, so the payload is held once
/// whichever of the two is used.
struct Framed {
    payload: Bytes,
    ws: Bytes,
}

/// Shows the body's length only: bodies may be logged at `trace!` alone, and a stray `{:?}`
/// at a higher level must not leak them.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("mid", &self.mid)
            .field("created_ms", &self.created_ms)
            .field("expiry", &self.expiry)
            .field("sender", &self.sender)
            .field("body_len", &self.body.len())
            .field("kind", &self.kind)
            .finish()
    }
}

const V3_START: &[u8] = b"#!NGINXNMS!#";
const V3_END: &[u8] = b"#!NGINXNME!#";

impl Message {
    pub fn new(
        mid: Mid,
        created_ms: u64,
        expiry: u32,
        sender: Sender,
        body: Bytes,
        kind: Option<String>,
    ) -> Message {
        Message {
            mid,
            created_ms,
            expiry,
            sender,
            body,
            kind,
            user_params: None,
            v3: OnceLock::new(),
            v4: OnceLock::new(),
            v5: OnceLock::new(),
        }
    }

    /// Sets the v5 `user_params` (docs/v5.md); `None` or an empty object is no `user_params`.
    pub fn with_user_params(mut self, user_params: Option<Bytes>) -> Message {
        self.user_params = user_params.filter(|u| !u.is_empty());
        self
    }

    /// The v5 `incoming.message` object for a recipient (`user`: the connection's user id),
    /// as JSON text; `None` when the body is not a JSON object (docs/v5.md, "Delivery").
    pub fn v5_json(&self, user: Option<u64>) -> Option<Bytes> {
        match self.user_specific(user) {
            Some(params) => crate::v5::incoming(self, Some(&params)).map(Bytes::from),
            None => self.v5_framed().map(|f| f.payload.clone()),
        }
    }

    /// [`Message::v5_json`] as one WebSocket text frame.
    pub fn v5_ws_frame(&self, user: Option<u64>) -> Option<Bytes> {
        match self.user_specific(user) {
            Some(params) => {
                let json = crate::v5::incoming(self, Some(&params))?;
                Some(crate::websocket::server_frame(
                    crate::websocket::OP_TEXT,
                    &json,
                ))
            }
            None => self.v5_framed().map(|f| f.ws.clone()),
        }
    }

    /// The `user_params` entry of `user`, when it has one.
    fn user_specific(
        &self,
        user: Option<u64>,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let (user, all) = (user?, self.user_params.as_ref()?);
        crate::v5::user_params_of(all, user)
    }

    fn v5_framed(&self) -> Option<&Framed> {
        self.v5
            .get_or_init(|| {
                let json = crate::v5::incoming(self, None)?;
                let ws = crate::websocket::server_frame(crate::websocket::OP_TEXT, &json);
                Some(Framed {
                    payload: Bytes::from(json),
                    ws,
                })
            })
            .as_ref()
    }

    /// Creation time in unix seconds (saturates in 2106).
    pub fn created_secs(&self) -> u32 {
        u32::try_from(self.created_ms / 1000).unwrap_or(u32::MAX)
    }

    /// The v3 frame
    /// `#!NGINXNMS!#{"id":<counter>,"mid":"<26>","channel":"-","tag":"<ms%1000>","time":"<IMF-fixdate>","text":<body>}#!NGINXNME!#`,
    /// built on first use and shared afterwards. The body is spliced, never quoted, so a
    /// non-JSON body (the site checker's bare hex) still appears verbatim.
    pub fn v3_frame(&self) -> &Bytes {
        &self.v3.get_or_init(|| self.build_v3()).payload
    }

    /// [`Message::v3_frame`] as one unmasked WebSocket text frame, shared by every subscriber
    /// (the same buffer as the v3 frame).
    pub fn v3_ws_frame(&self) -> &Bytes {
        &self.v3.get_or_init(|| self.build_v3()).ws
    }

    /// The encoded v4 `OutgoingMessage` (docs/protocol.md#v4-protobuf), built on first use and shared.
    pub fn v4_message(&self) -> &Bytes {
        &self.v4.get_or_init(|| self.build_v4()).payload
    }

    /// A `ResponseBatch` holding only this message, as one unmasked WebSocket binary frame
    /// shared by every v4 subscriber (the same buffer as [`Message::v4_message`]).
    pub fn v4_ws_frame(&self) -> &Bytes {
        &self.v4.get_or_init(|| self.build_v4()).ws
    }

    /// The live WebSocket frame for a subscriber in v4 (`binary`) or v3 mode.
    pub fn ws_frame(&self, binary: bool) -> &Bytes {
        if binary {
            self.v4_ws_frame()
        } else {
            self.v3_ws_frame()
        }
    }

    /// The most heap this message can ever hold for its wire encodings, computed from the
    /// body (one pass counting `E2` bytes) without building anything: the v3 buffer and the
    /// v4 buffer are allocated with exactly these capacities when built, so the bound is the
    /// real allocation (before the allocator's own rounding), not an estimate. The body itself
    /// is not included.
    pub fn encodings_bound(&self) -> usize {
        v3_capacity(&self.body) + v4_capacity(&self.body)
    }

    /// The heap the encodings built so far hold (at most [`Message::encodings_bound`]).
    pub fn encodings_built(&self) -> usize {
        let v3 = self.v3.get().map_or(0, |_| v3_capacity(&self.body));
        let v4 = self.v4.get().map_or(0, |_| v4_capacity(&self.body));
        v3 + v4
    }

    /// The v3 frame after room for its WebSocket header, which is then written right-aligned
    /// in front of it.
    fn build_v3(&self) -> Framed {
        let cap = v3_capacity(&self.body);
        let mut f = Vec::with_capacity(cap);
        f.resize(WS_HEAD_MAX, 0);
        f.extend_from_slice(V3_START);
        f.extend_from_slice(b"{\"id\":");
        write_u64(self.mid.counter(), &mut f);
        f.extend_from_slice(b",\"mid\":\"");
        self.mid.write_to(&mut f);
        f.extend_from_slice(b"\",\"channel\":\"-\",\"tag\":\"");
        write_padded(self.created_ms % 1000, 3, &mut f);
        f.extend_from_slice(b"\",\"time\":\"");
        write_http_date(self.created_ms / 1000, &mut f);
        f.extend_from_slice(b"\",\"text\":");
        splice_v3_body(&self.body, &mut f);
        f.push(b'}');
        f.extend_from_slice(V3_END);
        debug_assert!(f.len() <= cap, "v3 frame over its bound");
        let len = f.len() - WS_HEAD_MAX;
        let head = put_ws_head(&mut f[..WS_HEAD_MAX], crate::websocket::OP_TEXT, len);
        let all = Bytes::from(f);
        Framed {
            payload: all.slice(WS_HEAD_MAX..),
            ws: all.slice(WS_HEAD_MAX - head..),
        }
    }

    /// `[WS header][ResponseBatch{Response{OutgoingMessages{` prefixes`][OutgoingMessage]`,
    /// the prefixes written right-aligned in the room kept in front of the message.
    fn build_v4(&self) -> Framed {
        let cap = v4_capacity(&self.body);
        let mut f = Vec::with_capacity(cap);
        f.resize(V4_PREFIX_MAX, 0);
        crate::v4::encode_outgoing_into(self, &mut f);
        debug_assert!(f.len() <= cap, "v4 message over its bound");
        let msg_len = f.len() - V4_PREFIX_MAX;
        // Innermost first: OutgoingMessagesResponse.messages, Response.outgoingMessages,
        // ResponseBatch.responses, all field 1.
        let mut at = V4_PREFIX_MAX;
        let mut len = msg_len;
        for _ in 0..3 {
            let mut head = [0u8; 11];
            let n = field1_head(len, &mut head);
            at -= n;
            f[at..at + n].copy_from_slice(&head[..n]);
            len += n;
        }
        let ws = put_ws_head(&mut f[..at], crate::websocket::OP_BINARY, len);
        let start = at - ws;
        let all = Bytes::from(f);
        Framed {
            payload: all.slice(V4_PREFIX_MAX..),
            ws: all.slice(start..),
        }
    }
}

/// Room for the longest WebSocket frame header the server writes (no mask): 2, 4 or 10 bytes.
const WS_HEAD_MAX: usize = 10;
/// The v3 frame besides its spliced body: 110 bytes of fixed text, the counter (up to 16
/// digits) and the date (29 characters, up to 37 for years past 9999).
const V3_HEAD_MAX: usize = 170;
/// Room in front of the v4 `OutgoingMessage`: the WebSocket header and three field-1 heads
/// (the tag byte and a varint of up to 10 bytes each).
const V4_PREFIX_MAX: usize = WS_HEAD_MAX + 3 * 11;
/// The `OutgoingMessage` besides the body bytes: id 15, the body's tag and length up to 11,
/// expiry up to 6, created 5, sender up to 22.
const V4_HEAD_MAX: usize = 64;

/// The capacity the v3 buffer is allocated with: the splice turns each `E2 80 A8`/`A9` into a
/// 6-byte escape, so each `E2` byte adds at most 3.
fn v3_capacity(body: &[u8]) -> usize {
    let e2 = body.iter().filter(|&&b| b == 0xE2).count();
    WS_HEAD_MAX + V3_HEAD_MAX + body.len() + 3 * e2
}

/// The capacity the v4 buffer is allocated with.
fn v4_capacity(body: &[u8]) -> usize {
    V4_PREFIX_MAX + V4_HEAD_MAX + body.len()
}

/// Writes the unmasked final-frame header for a `len`-byte payload at the end of `room`
/// (as `websocket::write_frame` does) and returns its length.
fn put_ws_head(room: &mut [u8], opcode: u8, len: usize) -> usize {
    let mut head = [0u8; WS_HEAD_MAX];
    head[0] = 0x80 | opcode;
    let n = match len {
        n if n < 126 => {
            head[1] = n as u8;
            2
        }
        n if n <= 0xFFFF => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            4
        }
        n => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            10
        }
    };
    let end = room.len();
    room[end - n..].copy_from_slice(&head[..n]);
    n
}

/// The head of a length-delimited field 1 (`0a` and the varint length) into `out`; returns
/// its length.
fn field1_head(len: usize, out: &mut [u8; 11]) -> usize {
    out[0] = 0x0a;
    let mut v = len as u64;
    let mut i = 1;
    while v >= 0x80 {
        out[i] = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// IMF-fixdate in GMT, e.g. `Tue, 24 Nov 2026 00:24:41 GMT`.
pub fn http_date(unix_secs: u64) -> String {
    let mut out = Vec::with_capacity(29);
    write_http_date(unix_secs, &mut out);
    // Only ASCII is ever written.
    String::from_utf8_lossy(&out).into_owned()
}

const WEEKDAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Appends the IMF-fixdate of `unix_secs` (H. Hinnant's civil-from-days, unsigned since
/// `unix_secs` cannot precede 1970).
pub fn write_http_date(unix_secs: u64, out: &mut Vec<u8>) {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // 1970-01-01 was a Thursday, index 0 of WEEKDAYS.
    out.extend_from_slice(WEEKDAYS[(days % 7) as usize]);
    out.extend_from_slice(b", ");

    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // March-based month, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);

    write_padded(day, 2, out);
    out.push(b' ');
    out.extend_from_slice(MONTHS[(month - 1) as usize]);
    out.push(b' ');
    if year < 10_000 {
        write_padded(year, 4, out);
    } else {
        write_u64(year, out);
    }
    out.push(b' ');
    write_padded(secs / 3600, 2, out);
    out.push(b':');
    write_padded(secs / 60 % 60, 2, out);
    out.push(b':');
    write_padded(secs % 60, 2, out);
    out.extend_from_slice(b" GMT");
}

/// Appends `body` spliced for a v3 frame: raw `E2 80 A8` → `\u2028`, `E2 80 A9` → `\u2029`,
/// CR and LF → space; everything else verbatim. The legacy client's frame regex does not
/// match across those characters and would silently drop the frame (docs/protocol.md#v3-text-frames); for valid JSON the
/// substitution is equivalent.
pub fn splice_v3_body(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len());
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        let (replacement, len): (&[u8], usize) = match &body[i..] {
            [b'\r' | b'\n', ..] => (b" ", 1),
            [0xE2, 0x80, 0xA8, ..] => (b"\\u2028", 3),
            [0xE2, 0x80, 0xA9, ..] => (b"\\u2029", 3),
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&body[start..i]);
        out.extend_from_slice(replacement);
        i += len;
        start = i;
    }
    out.extend_from_slice(&body[start..]);
}

/// Wall-clock unix milliseconds; a clock before 1970 reads as 0.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE_MID: &str = "17954797730000000000000003";

    fn mid(s: &str) -> Mid {
        Mid::parse(s.as_bytes()).expect("test mid")
    }

    #[test]
    fn mid_parts_and_text() {
        let m = Mid::new(1_795_479_773, 3);
        assert_eq!(m, mid(EXAMPLE_MID));
        assert_eq!(m.epoch(), 1_795_479_773);
        assert_eq!(m.counter(), 3);
        assert_eq!(m.to_string(), EXAMPLE_MID);
        assert_eq!(format!("{m:?}"), format!("Mid({EXAMPLE_MID})"));
        let mut out = b"x".to_vec();
        m.write_to(&mut out);
        assert_eq!(out, format!("x{EXAMPLE_MID}").as_bytes());
        assert_eq!(Mid::new(0, 1).to_string(), "00000000000000000000000001");
        let max = Mid::new(EPOCH_LIMIT - 1, COUNTER_LIMIT - 1);
        assert_eq!(max.to_string(), "9".repeat(26));
        assert_eq!(Mid::parse(max.to_string().as_bytes()), Some(max));
    }

    #[test]
    fn mid_parse_rejects() {
        assert_eq!(Mid::parse(&EXAMPLE_MID.as_bytes()[..25]), None);
        assert_eq!(Mid::parse(format!("{EXAMPLE_MID}0").as_bytes()), None);
        assert_eq!(Mid::parse(b"1795479773000000000000000a"), None);
        assert_eq!(Mid::parse(b"-7954797730000000000000003"), None);
        assert_eq!(Mid::parse(b"+7954797730000000000000003"), None);
        assert_eq!(Mid::parse(b" 7954797730000000000000003"), None);
        assert_eq!(Mid::parse(b""), None);
    }

    #[test]
    fn mid_binary() {
        let m = mid(EXAMPLE_MID);
        let bin = [
            0x17, 0x95, 0x47, 0x97, 0x73, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
        ];
        assert_eq!(m.to_binary(), bin);
        assert_eq!(Mid::from_binary(&bin), Some(m));
        let other = Mid::new(1_234_567_890, 9_876_543_210_123_456);
        assert_eq!(Mid::from_binary(&other.to_binary()), Some(other));
        assert_eq!(Mid::from_binary(&bin[..12]), None);
        let mut bad = bin;
        bad[12] = 0x0a;
        assert_eq!(Mid::from_binary(&bad), None);
        bad[12] = 0xa0;
        assert_eq!(Mid::from_binary(&bad), None);
    }

    #[test]
    fn mid_order_matches_text_order() {
        let ids = [
            Mid::new(1, 999),
            Mid::new(2, 1),
            Mid::new(2, 10),
            Mid::new(1_795_479_773, 3),
            Mid::new(1_795_479_774, 1),
        ];
        for w in ids.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_string() < w[1].to_string());
        }
    }

    #[test]
    fn midgen_in_memory() {
        let mut g = MidGen::in_memory(1_795_479_773);
        assert_eq!(g.last(), None);
        assert_eq!(g.epoch(), 1_795_479_773);
        let a = g.next();
        assert_eq!(a.counter(), 1);
        let mut prev = a;
        for _ in 0..1000 {
            let m = g.next();
            assert!(m > prev);
            prev = m;
        }
        assert_eq!(g.last(), Some(prev));
        assert_eq!(prev.epoch(), 1_795_479_773);
    }

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "push-server-mid-{tag}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn midgen_restart_takes_new_epoch() {
        let dir = TempDir::new("restart");
        // The parent directory does not exist yet: start must create it.
        let path = dir.0.join("state").join("mid_epoch");
        let now = 1_795_479_773;
        let mut a = MidGen::start(&path, now).expect("first start");
        assert_eq!(a.epoch(), now);
        let last_a = (0..5).map(|_| a.next()).last().expect("ids");
        let mut b = MidGen::start(&path, now).expect("second start");
        assert_eq!(b.epoch(), now + 1);
        assert!(b.next() > last_a);
        let c = MidGen::start(&path, now + 100).expect("third start");
        assert_eq!(c.epoch(), now + 100);
        // A clock that went backwards still moves forward.
        let d = MidGen::start(&path, now).expect("fourth start");
        assert_eq!(d.epoch(), now + 101);
        let stored = fs::read_to_string(&path).expect("state file");
        assert_eq!(stored.trim(), (now + 101).to_string());
        assert!(!path.with_file_name("mid_epoch.tmp").exists());
    }

    #[test]
    fn midgen_garbage_state_is_ignored() {
        let dir = TempDir::new("garbage");
        fs::create_dir_all(&dir.0).expect("mkdir");
        let path = dir.0.join("mid_epoch");
        fs::write(&path, "not a number").expect("write");
        let g = MidGen::start(&path, 1_795_479_773).expect("start");
        assert_eq!(g.epoch(), 1_795_479_773);
        fs::write(&path, " 1795479900\n").expect("write");
        let g = MidGen::start(&path, 1_795_479_773).expect("start");
        assert_eq!(g.epoch(), 1_795_479_901);
    }

    #[test]
    fn midgen_epoch_overflow_is_an_error() {
        let dir = TempDir::new("overflow");
        fs::create_dir_all(&dir.0).expect("mkdir");
        let path = dir.0.join("mid_epoch");
        fs::write(&path, (EPOCH_LIMIT - 1).to_string()).expect("write");
        assert!(MidGen::start(&path, 1_795_479_773).is_err());
    }

    #[test]
    fn v3_example_is_byte_exact() {
        let body = br#"{"module_id":"im","command":"test","params":{"text":"hi"},"extra":{"revision_web":19}}"#;
        let msg = Message::new(
            mid(EXAMPLE_MID),
            1_795_479_881_123,
            0,
            Sender::Backend,
            Bytes::from_static(body),
            None,
        );
        let want = concat!(
            r##"#!NGINXNMS!#{"id":3,"mid":"17954797730000000000000003","channel":"-","tag":"123","##,
            r##""time":"Tue, 24 Nov 2026 00:24:41 GMT","text":{"module_id":"im","command":"test","##,
            r##""params":{"text":"hi"},"extra":{"revision_web":19}}}#!NGINXNME!#"##
        );
        assert_eq!(want.len(), 226);
        assert_eq!(&msg.v3_frame()[..], want.as_bytes());
        // Built once: the second call returns the same buffer.
        assert_eq!(msg.v3_frame().as_ptr(), msg.v3_frame().as_ptr());
        assert_eq!(msg.created_secs(), 1_795_479_881);
    }

    #[test]
    fn v3_tag_is_zero_padded_and_body_unquoted() {
        let msg = Message::new(
            Mid::new(1_795_479_773, 12),
            1_795_479_881_007,
            0,
            Sender::Client(ChannelId([7; 16])),
            Bytes::from_static(b"abc123"),
            Some("x".into()),
        );
        let frame = String::from_utf8(msg.v3_frame().to_vec()).expect("ascii");
        assert!(frame.starts_with("#!NGINXNMS!#{\"id\":12,"), "{frame}");
        assert!(frame.contains("\"tag\":\"007\""), "{frame}");
        assert!(frame.ends_with("\"text\":abc123}#!NGINXNME!#"), "{frame}");
    }

    #[test]
    fn ws_frames_share_the_payload_and_match_server_frame() {
        let line_seps = "\u{2028}".repeat(50_000);
        let bodies: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"{}".to_vec(),
            vec![b'a'; 200],
            vec![b'b'; 65_535 - 160],
            vec![b'c'; 70_000],
            line_seps.into_bytes(),
        ];
        for body in bodies {
            let msg = Message::new(
                Mid::new(1_795_479_773, 9_999_999_999_999_999),
                u64::MAX,
                7,
                Sender::Client(ChannelId([3; 16])),
                Bytes::from(body.clone()),
                None,
            );
            assert_eq!(msg.encodings_built(), 0);
            let v3 = msg.v3_frame().clone();
            assert_eq!(msg.encodings_built(), v3_capacity(&body));
            let want = crate::websocket::server_frame(crate::websocket::OP_TEXT, &v3);
            assert_eq!(msg.v3_ws_frame(), &want, "body {} bytes", body.len());
            // One buffer: the frame's tail is the v3 frame itself.
            let ws = msg.v3_ws_frame();
            assert_eq!(ws[ws.len() - v3.len()..].as_ptr(), v3.as_ptr());
            assert!(v3.len() + 10 <= v3_capacity(&body));
            let v4 = msg.v4_message();
            let ws4 = msg.v4_ws_frame();
            assert_eq!(ws4[ws4.len() - v4.len()..].as_ptr(), v4.as_ptr());
            assert!(ws4.len() <= v4_capacity(&body));
            assert_eq!(msg.encodings_built(), msg.encodings_bound());
        }
    }

    #[test]
    fn splice_escapes_line_breaks() {
        let mut out = Vec::new();
        splice_v3_body(
            "{\"a\":\"x\u{2028}y\u{2029}z\"}\r\n\n é€".as_bytes(),
            &mut out,
        );
        assert_eq!(out, "{\"a\":\"x\\u2028y\\u2029z\"}    é€".as_bytes());
        // Partial sequences and other E2 80 xx characters pass through.
        let mut out = vec![b'>'];
        splice_v3_body(b"\xe2\x80\xa7\xe2\x80", &mut out);
        assert_eq!(out, b">\xe2\x80\xa7\xe2\x80");
        let mut out = Vec::new();
        splice_v3_body(b"abc123", &mut out);
        assert_eq!(out, b"abc123");
    }

    #[test]
    fn http_dates() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (1_795_479_881, "Tue, 24 Nov 2026 00:24:41 GMT"),
            (1_795_479_773, "Tue, 24 Nov 2026 00:22:53 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (951_868_799, "Tue, 29 Feb 2000 23:59:59 GMT"),
            (951_868_800, "Wed, 01 Mar 2000 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (1_790_072_438, "Tue, 22 Sep 2026 10:20:38 GMT"),
            (4_107_542_399, "Sun, 28 Feb 2100 23:59:59 GMT"),
            (4_133_980_799, "Fri, 31 Dec 2100 23:59:59 GMT"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, want) in cases {
            assert_eq!(http_date(secs), want, "{secs}");
        }
        let mut out = b"Date: ".to_vec();
        write_http_date(0, &mut out);
        assert_eq!(out, b"Date: Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
