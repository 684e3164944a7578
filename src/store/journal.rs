//! The embedded store's journal on disk (docs/persistence.md): an append-only file of
//! checksummed records, one per stored message, rewritten (compacted) at start and whenever it
//! grows past its bound.
//!
//! All file I/O of a running server happens on the journal's own thread, never on the loop
//! thread: the store hands it the encoded records of a publish batch and answers the publisher
//! only once the thread reports them written (and, with `STORE_FSYNC=always`, synced). With
//! `everysec` a second small thread syncs at most once a second. Compaction writes the
//! snapshot on a helper thread while appends go on to the old file; the records appended
//! meanwhile are copied to the new file before it replaces the old one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver as ChanReceiver, RecvTimeoutError, Sender as ChanSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{info, warn};
use mio::Waker;
use tungstenite::Bytes;

use super::Receiver;
use crate::channel::ChannelId;
use crate::config::Fsync;
use crate::message::{Message, Mid, Sender};
use crate::registry::Kind;

/// The first 8 bytes of every journal.
pub const MAGIC: &[u8; 8] = b"PSJRNL\r\n";
/// The format this build writes, and the newest it reads.
pub const VERSION: u32 = 1;
/// Magic, version (u32 LE), reserved (u32, zero).
pub const HEADER_LEN: usize = 16;
/// Length (u32 LE) and CRC-32 of the payload (u32 LE) before each payload.
pub const FRAME_LEN: usize = 8;
/// A length above this is taken for corruption, not a record.
const MAX_RECORD: u32 = 1 << 30;
/// Record type of a stored message.
const REC_MESSAGE: u8 = 1;
/// [`REC_MESSAGE`] followed by the v5 `user_params` (u32 length, bytes; docs/v5.md). A
/// version that does not know it skips the record, as it skips every unknown type.
const REC_MESSAGE_V5: u8 = 2;
/// The journal's file name in STATE_DIR.
pub const FILE_NAME: &str = "journal";
/// How long the journal thread waits between checks on a running compaction.
const COMPACT_POLL: Duration = Duration::from_millis(20);
/// At most this many bytes are gathered into one write.
const MAX_BATCH: usize = 8 << 20;

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, the one of zlib and gzip), table-driven.

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------------
// Records

/// A stored message with its receivers, as the journal keeps it.
#[derive(Clone)]
pub struct Entry {
    pub msg: Arc<Message>,
    pub receivers: Arc<[Receiver]>,
}

pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends the framed record of `msg` for `receivers` to `out`.
pub fn encode(msg: &Message, receivers: &[Receiver], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    out.push(if msg.user_params.is_some() {
        REC_MESSAGE_V5
    } else {
        REC_MESSAGE
    });
    out.extend_from_slice(&msg.mid.to_binary());
    out.extend_from_slice(&msg.created_ms.to_le_bytes());
    out.extend_from_slice(&msg.expiry.to_le_bytes());
    match msg.sender {
        Sender::Backend => out.push(0),
        Sender::Client(id) => {
            out.push(1);
            out.extend_from_slice(&id.0);
        }
    }
    match &msg.kind {
        None => out.push(0),
        Some(k) => {
            // A kind is `<module>_<command>`, short; a longer one is cut at a char boundary.
            let mut n = k.len().min(u16::MAX.into());
            while !k.is_char_boundary(n) {
                n -= 1;
            }
            out.push(1);
            out.extend_from_slice(&(n as u16).to_le_bytes());
            out.extend_from_slice(&k.as_bytes()[..n]);
        }
    }
    out.extend_from_slice(&(receivers.len() as u32).to_le_bytes());
    for (id, kind) in receivers {
        out.extend_from_slice(&id.0);
        out.push(match kind {
            Kind::Private => 0,
            Kind::Public => 1,
        });
    }
    out.extend_from_slice(&(msg.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&msg.body);
    if let Some(u) = &msg.user_params {
        out.extend_from_slice(&(u.len() as u32).to_le_bytes());
        out.extend_from_slice(u);
    }
    let payload = &out[start + FRAME_LEN..];
    let len = payload.len() as u32;
    let crc = crc32(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The size [`encode`] gives a record, without encoding it.
pub fn encoded_len(msg: &Message, receivers: usize) -> usize {
    FRAME_LEN
        + 1
        + 13
        + 8
        + 4
        + match msg.sender {
            Sender::Backend => 1,
            Sender::Client(_) => 17,
        }
        + msg
            .kind
            .as_ref()
            .map_or(1, |k| 3 + k.len().min(u16::MAX.into()))
        + 4
        + 17 * receivers
        + 4
        + msg.body.len()
        + msg.user_params.as_ref().map_or(0, |u| 4 + u.len())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("record shorter than its fields".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| "u16")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "u32")?,
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "u64")?,
        ))
    }
    fn id(&mut self) -> Result<ChannelId, String> {
        Ok(ChannelId(self.take(16)?.try_into().map_err(|_| "id")?))
    }
}

/// Decodes a record's payload (checksum already checked). `Ok(None)`: a record type this
/// version does not know, skipped.
pub fn decode(payload: &[u8]) -> Result<Option<Entry>, String> {
    let mut c = Cursor(payload);
    let v5 = match c.u8()? {
        REC_MESSAGE => false,
        REC_MESSAGE_V5 => true,
        _ => return Ok(None),
    };
    let mid = Mid::from_binary(c.take(13)?).ok_or("bad message id")?;
    let created_ms = c.u64()?;
    let expiry = c.u32()?;
    let sender = match c.u8()? {
        0 => Sender::Backend,
        1 => Sender::Client(c.id()?),
        t => return Err(format!("bad sender tag {t}")),
    };
    let kind = match c.u8()? {
        0 => None,
        1 => {
            let n = c.u16()?;
            let k = std::str::from_utf8(c.take(n.into())?).map_err(|_| "kind not UTF-8")?;
            Some(k.to_owned())
        }
        t => return Err(format!("bad kind tag {t}")),
    };
    let n = c.u32()? as usize;
    if n > c.0.len() / 17 {
        return Err("receiver count beyond the record".into());
    }
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let id = c.id()?;
        let kind = match c.u8()? {
            0 => Kind::Private,
            1 => Kind::Public,
            t => return Err(format!("bad receiver kind {t}")),
        };
        receivers.push((id, kind));
    }
    let len = c.u32()? as usize;
    let body = Bytes::copy_from_slice(c.take(len)?);
    let user_params = if v5 {
        let n = c.u32()? as usize;
        Some(Bytes::copy_from_slice(c.take(n)?))
    } else {
        None
    };
    if !c.0.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok(Some(Entry {
        msg: Arc::new(
            Message::new(mid, created_ms, expiry, sender, body, kind).with_user_params(user_params),
        ),
        receivers: receivers.into(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Reading at start

/// What [`scan`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Records read (every good one, whatever its type).
    pub records: u64,
    /// End of the last good record.
    pub good_len: u64,
    /// A bad or truncated tail: its offset, its length, and why it was cut.
    pub cut: Option<(u64, u64, String)>,
}

/// Why a journal cannot be used at all: the start is refused.
#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    NotAJournal,
    /// Written by a newer build (a downgrade).
    Newer(u32),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "{e}"),
            OpenError::NotAJournal => f.write_str("not a push-server journal (bad magic)"),
            OpenError::Newer(v) => write!(
                f,
                "written by journal format version {v}, this build reads up to version {VERSION} (a downgrade?); run the newer push-server, or move the file away to start empty"
            ),
        }
    }
}

/// Reads the records of a journal from `r` (`len` bytes), calling `each` with every good
/// message record in file order, up to the first bad or short one.
pub fn scan(
    r: &mut impl Read,
    len: u64,
    mut each: impl FnMut(Entry),
) -> Result<Scanned, OpenError> {
    let mut out = Scanned::default();
    if len == 0 {
        return Ok(out);
    }
    let mut head = [0u8; HEADER_LEN];
    if len < HEADER_LEN as u64 {
        out.cut = Some((0, len, "header truncated".into()));
        return Ok(out);
    }
    r.read_exact(&mut head).map_err(OpenError::Io)?;
    if &head[..8] != MAGIC {
        return Err(OpenError::NotAJournal);
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version > VERSION {
        return Err(OpenError::Newer(version));
    }
    let mut at = HEADER_LEN as u64;
    out.good_len = at;
    let mut payload = Vec::new();
    let why = loop {
        let left = len - at;
        if left == 0 {
            break None;
        }
        if left < FRAME_LEN as u64 {
            break Some("truncated record header".to_string());
        }
        let mut frame = [0u8; FRAME_LEN];
        r.read_exact(&mut frame).map_err(OpenError::Io)?;
        let n = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if n > MAX_RECORD {
            break Some(format!("record length {n} is not plausible"));
        }
        if u64::from(n) > left - FRAME_LEN as u64 {
            break Some(format!("truncated record ({n} bytes announced)"));
        }
        payload.resize(n as usize, 0);
        r.read_exact(&mut payload).map_err(OpenError::Io)?;
        if crc32(&payload) != crc {
            break Some("checksum mismatch".to_string());
        }
        match decode(&payload) {
            Ok(Some(e)) => each(e),
            Ok(None) => {}
            Err(e) => break Some(format!("undecodable record: {e}")),
        }
        at += (FRAME_LEN + n as usize) as u64;
        out.records += 1;
        out.good_len = at;
    };
    if let Some(why) = why {
        out.cut = Some((at, len - at, why));
    }
    Ok(out)
}

/// Buffer size for reading and snapshotting the journal. Kept below glibc's initial mmap
/// threshold (128 KiB): freeing a larger, mmapped buffer raises that threshold for the rest of
/// the process, and the connection slab, timer heap and registry tables then grow inside the
/// heap by copying, each growth leaving its old copy behind as touched free memory (+150 B
/// or more per idle connection, docs/loop.md "Idle memory").
const IO_BUF: usize = 64 << 10;

/// Opens `path` and [`scan`]s it; a missing file is an empty journal.
pub fn read_file(path: &Path, each: impl FnMut(Entry)) -> Result<Scanned, OpenError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scanned::default()),
        Err(e) => return Err(OpenError::Io(e)),
    };
    let len = f.metadata().map_err(OpenError::Io)?.len();
    scan(&mut BufReader::with_capacity(IO_BUF, f), len, each)
}

/// Writes a journal of `entries` to `tmp` (header and records, then synced), ready to be
/// renamed over the journal. Returns the file, open for appending, and its length.
fn write_snapshot(
    tmp: &Path,
    entries: impl Iterator<Item = (Arc<Message>, Arc<[Receiver]>)>,
) -> io::Result<(File, u64)> {
    let _ = fs::remove_file(tmp);
    let f = OpenOptions::new().append(true).create_new(true).open(tmp)?;
    let mut w = BufWriter::with_capacity(IO_BUF, &f);
    w.write_all(&header())?;
    let mut len = HEADER_LEN as u64;
    let mut buf = Vec::new();
    for (msg, receivers) in entries {
        buf.clear();
        encode(&msg, &receivers, &mut buf);
        w.write_all(&buf)?;
        len += buf.len() as u64;
    }
    w.flush()?;
    drop(w);
    f.sync_data()?;
    Ok((f, len))
}

/// A snapshot entry on its way to the compaction thread: the message held weakly (and
/// strongly too while its publish is not answered), its receivers.
type HeldEntry = (Weak<Message>, Option<Arc<Message>>, Arc<[Receiver]>);

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the journal at `path` by a compacted one of `entries` (temp file, fsync, rename,
/// fsync of the directory), at start, before the loop runs.
pub fn rewrite(path: &Path, entries: &[Entry]) -> io::Result<(File, u64)> {
    let tmp = tmp_path(path);
    let all = entries
        .iter()
        .map(|e| (Arc::clone(&e.msg), Arc::clone(&e.receivers)));
    let (f, len) = write_snapshot(&tmp, all)?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok((f, len))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

// ---------------------------------------------------------------------------------------------
// The running journal

enum Cmd {
    /// Encoded records of one publish job.
    Append { seq: u64, bytes: Vec<u8> },
    /// Rewrite the journal from this snapshot of the store: every message it holds, and those
    /// of the appends sent before it and not yet answered, tagged with their append's `seq`
    /// (0 for the held ones). Every append sent after it follows it.
    Compact(Vec<(u64, Entry)>),
}

/// What the journal thread reports to the store.
#[derive(Default)]
pub struct Acks {
    /// Per append, in order: written (and synced with `always`), or why not.
    pub results: Vec<(u64, Result<(), String>)>,
    /// The journal's length after the last write.
    pub len: u64,
    /// The length right after the last compaction (or the start).
    pub compacted_len: u64,
    /// A compaction is under way.
    pub compacting: bool,
}

struct Shared {
    acks: Mutex<Acks>,
    max_bytes: AtomicUsize,
    waker: Option<Arc<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `everysec` syncer: syncs `file` at most once a second when something was written.
struct Syncer {
    state: Mutex<SyncState>,
    cv: Condvar,
}

struct SyncState {
    file: Arc<File>,
    dirty: bool,
    stop: bool,
}

impl Syncer {
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            if !st.stop {
                st = self
                    .cv
                    .wait_timeout(st, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if st.dirty {
                st.dirty = false;
                let f = Arc::clone(&st.file);
                drop(st);
                if let Err(e) = f.sync_data() {
                    warn!("journal fsync failed: {e}");
                }
                st = lock(&self.state);
            }
            if st.stop {
                return;
            }
        }
    }
}

/// The journal of a running embedded store; dropped, it syncs and closes the file.
pub struct Journal {
    tx: Option<ChanSender<Cmd>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Journal {
    /// Takes over `file` (the journal at `path`, `len` bytes, just compacted) and starts the
    /// journal thread; `waker` wakes the loop when writes are done.
    pub fn start(
        path: PathBuf,
        file: File,
        len: u64,
        fsync: Fsync,
        max_bytes: usize,
        waker: Option<Arc<Waker>>,
    ) -> io::Result<Journal> {
        let shared = Arc::new(Shared {
            acks: Mutex::new(Acks {
                len,
                compacted_len: len,
                ..Acks::default()
            }),
            max_bytes: AtomicUsize::new(max_bytes),
            waker,
        });
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            path,
            file: Arc::new(file),
            len,
            fsync,
            shared: Arc::clone(&shared),
            compaction: None,
            syncer: None,
            failed: Vec::new(),
        };
        let thread = thread::Builder::new()
            .name("journal".into())
            .spawn(move || worker.run(rx))?;
        Ok(Journal {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues the records of one publish job.
    pub fn append(&self, seq: u64, bytes: Vec<u8>) -> bool {
        self.send(Cmd::Append { seq, bytes })
    }

    /// Queues a compaction from `snapshot` (a `Cmd::Compact` for the journal thread).
    pub fn compact(&self, snapshot: Vec<(u64, Entry)>) -> bool {
        lock(&self.shared.acks).compacting = true;
        self.send(Cmd::Compact(snapshot))
    }

    fn send(&self, cmd: Cmd) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Moves the reports into `into` (its `results` are appended; the rest replaced).
    pub fn take(&self, into: &mut Acks) {
        let mut a = lock(&self.shared.acks);
        into.results.append(&mut a.results);
        into.len = a.len;
        into.compacted_len = a.compacted_len;
        into.compacting = a.compacting;
    }

    pub fn set_max_bytes(&self, n: usize) {
        self.shared.max_bytes.store(n, Ordering::Relaxed);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("journal thread panicked");
        }
    }
}

struct Compaction {
    thread: JoinHandle<io::Result<(File, u64)>>,
    /// Everything appended to the old file since the snapshot.
    tail: Vec<u8>,
}

struct Worker {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    fsync: Fsync,
    shared: Arc<Shared>,
    compaction: Option<Compaction>,
    syncer: Option<(Arc<Syncer>, JoinHandle<()>)>,
    /// Appends that failed since the last compaction began: a snapshot may hold their
    /// messages (sent before their failure was known), which must not be kept.
    failed: Vec<u64>,
}

impl Worker {
    fn run(mut self, rx: ChanReceiver<Cmd>) {
        if self.fsync == Fsync::EverySec {
            let s = Arc::new(Syncer {
                state: Mutex::new(SyncState {
                    file: Arc::clone(&self.file),
                    dirty: false,
                    stop: false,
                }),
                cv: Condvar::new(),
            });
            let s2 = Arc::clone(&s);
            match thread::Builder::new()
                .name("journal-fsync".into())
                .spawn(move || s2.run())
            {
                Ok(h) => self.syncer = Some((s, h)),
                Err(e) => warn!("cannot start the journal fsync thread ({e}); syncing on write"),
            }
        }
        let mut batch = Vec::new();
        let mut seqs = Vec::new();
        loop {
            let first = if self.compaction.is_some() {
                match rx.recv_timeout(COMPACT_POLL) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            };
            self.poll_compaction(false);
            let mut next = first;
            while let Some(cmd) = next {
                match cmd {
                    Cmd::Append { seq, bytes } => {
                        if batch.is_empty() {
                            batch = bytes;
                        } else {
                            batch.extend_from_slice(&bytes);
                        }
                        seqs.push(seq);
                    }
                    Cmd::Compact(snapshot) => {
                        // The snapshot holds every append sent before it: write those first.
                        self.write_batch(&mut batch, &mut seqs);
                        self.start_compaction(snapshot);
                    }
                }
                next = if batch.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.write_batch(&mut batch, &mut seqs);
        }
        // The store is gone (shutdown): finish a compaction under way, then sync.
        self.poll_compaction(true);
        if self.fsync != Fsync::No
            && let Err(e) = self.file.sync_data()
        {
            warn!("journal fsync at shutdown failed: {e}");
        }
        if let Some((s, h)) = self.syncer.take() {
            lock(&s.state).stop = true;
            s.cv.notify_all();
            let _ = h.join();
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<u8>, seqs: &mut Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let max = self.shared.max_bytes.load(Ordering::Relaxed) as u64;
        if self.compaction.is_some() && self.len + batch.len() as u64 > 2 * max {
            // docs/persistence.md: the file stays under 2 × STORE_MAX_BYTES; this write
            // waits for the compaction instead of growing the old file past it.
            self.poll_compaction(true);
        }
        let result = self.write_durably(batch);
        if result.is_ok()
            && let Some(c) = &mut self.compaction
        {
            c.tail.extend_from_slice(batch);
        }
        batch.clear();
        if result.is_err() {
            self.failed.extend_from_slice(seqs);
        }
        let mut a = lock(&self.shared.acks);
        a.len = self.len;
        for seq in seqs.drain(..) {
            a.results.push((seq, result.clone()));
        }
        drop(a);
        self.wake();
    }

    /// Writes `bytes` at the end of the journal, synced with `always`. A failed write is cut
    /// off again, so the file ends with whole records.
    fn write_durably(&mut self, bytes: &[u8]) -> Result<(), String> {
        let written = (&*self.file).write_all(bytes).and_then(|()| {
            if self.fsync == Fsync::Always {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                if let Some((s, _)) = &self.syncer {
                    lock(&s.state).dirty = true;
                }
                Ok(())
            }
            Err(e) => {
                warn!(
                    "journal write of {} bytes to {} failed: {e}; the publish is refused",
                    bytes.len(),
                    self.path.display()
                );
                if let Err(e2) = self.file.set_len(self.len) {
                    warn!("cannot cut the failed write off the journal: {e2}");
                }
                Err(format!("cannot write the journal: {e}"))
            }
        }
    }

    fn start_compaction(&mut self, snapshot: Vec<(u64, Entry)>) {
        let failed = std::mem::take(&mut self.failed);
        if self.compaction.is_some() {
            // One at a time; the store asks again if still needed.
            return;
        }
        // Stored messages (seq 0) are held weakly: one the store evicts while the snapshot is
        // written is freed at once and left out, instead of kept alive by the compaction
        // (with large messages that doubled the store's memory for the time of a write).
        // Publishes not answered yet are held strongly; they are not in the store yet.
        let snapshot: Vec<HeldEntry> = snapshot
            .into_iter()
            .filter(|(seq, _)| *seq == 0 || !failed.contains(seq))
            .map(|(seq, e)| {
                let strong = (seq != 0).then(|| Arc::clone(&e.msg));
                (Arc::downgrade(&e.msg), strong, e.receivers)
            })
            .collect();
        let tmp = tmp_path(&self.path);
        let spawned = thread::Builder::new()
            .name("journal-compact".into())
            .spawn(move || {
                let live = snapshot
                    .into_iter()
                    .filter_map(|(weak, _strong, receivers)| Some((weak.upgrade()?, receivers)));
                write_snapshot(&tmp, live)
            });
        match spawned {
            Ok(thread) => {
                self.compaction = Some(Compaction {
                    thread,
                    tail: Vec::new(),
                })
            }
            Err(e) => {
                warn!("cannot start a journal compaction: {e}");
                lock(&self.shared.acks).compacting = false;
            }
        }
    }

    /// Finishes a compaction whose snapshot is written (`wait`: waits for it): appends the
    /// tail, renames the new file over the old one and switches to it.
    fn poll_compaction(&mut self, wait: bool) {
        let Some(c) = &self.compaction else {
            return;
        };
        if !wait && !c.thread.is_finished() {
            return;
        }
        let Some(c) = self.compaction.take() else {
            return;
        };
        let before = self.len;
        let outcome = match c.thread.join() {
            Ok(r) => r.and_then(|(f, len)| {
                (&f).write_all(&c.tail)?;
                if self.fsync == Fsync::Always {
                    f.sync_data()?;
                }
                fs::rename(tmp_path(&self.path), &self.path)?;
                if let Some(dir) = self.path.parent() {
                    sync_dir(dir)?;
                }
                Ok((f, len + c.tail.len() as u64))
            }),
            Err(_) => Err(io::Error::other("compaction thread panicked")),
        };
        match outcome {
            Ok((f, len)) => {
                self.file = Arc::new(f);
                self.len = len;
                if let Some((s, _)) = &self.syncer {
                    let mut st = lock(&s.state);
                    st.file = Arc::clone(&self.file);
                    st.dirty = true;
                }
                info!("journal compacted: {before} → {len} bytes");
            }
            Err(e) => {
                warn!(
                    "journal compaction failed: {e}; keeping {}",
                    self.path.display()
                );
                let _ = fs::remove_file(tmp_path(&self.path));
            }
        }
        let mut a = lock(&self.shared.acks);
        a.len = self.len;
        a.compacted_len = self.len;
        a.compacting = false;
        drop(a);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = &self.shared.waker
            && let Err(e) = w.wake()
        {
            warn!("cannot wake the loop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(counter: u64, body: &[u8], kind: Option<&str>, sender: Sender) -> Entry {
        Entry {
            msg: Arc::new(Message::new(
                Mid::new(1_795_479_773, counter),
                1_795_479_773_123,
                if counter.is_multiple_of(2) { 0 } else { 3600 },
                sender,
                Bytes::copy_from_slice(body),
                kind.map(str::to_owned),
            )),
            receivers: vec![
                (ChannelId([1; 16]), Kind::Private),
                (ChannelId([2; 16]), Kind::Public),
            ]
            .into(),
        }
    }

    fn same(a: &Entry, b: &Entry) -> bool {
        let (x, y) = (&a.msg, &b.msg);
        x.mid == y.mid
            && x.created_ms == y.created_ms
            && x.expiry == y.expiry
            && x.sender == y.sender
            && x.body == y.body
            && x.kind == y.kind
            && x.user_params == y.user_params
            && a.receivers == b.receivers
    }

    #[test]
    fn v5_user_params_round_trip_in_their_own_record_type() {
        let plain = entry(1, b"{}", None, Sender::Backend);
        let mut v5 = entry(2, b"{}", Some("im_x"), Sender::Backend);
        v5.msg = Arc::new(
            Message::new(
                v5.msg.mid,
                1,
                60,
                Sender::Backend,
                Bytes::from_static(b"{}"),
                None,
            )
            .with_user_params(Some(Bytes::from_static(br#"{"5":{"a":1}}"#))),
        );
        let mut rec = Vec::new();
        encode(&v5.msg, &v5.receivers, &mut rec);
        assert_eq!(rec.len(), encoded_len(&v5.msg, v5.receivers.len()));
        assert_eq!(rec[FRAME_LEN], REC_MESSAGE_V5);
        let bytes = journal(&[plain.clone(), v5.clone()]);
        let (got, _) = read(&bytes);
        assert_eq!(got.len(), 2);
        assert!(same(&got[0], &plain) && same(&got[1], &v5));
        assert!(got[0].msg.user_params.is_none());
    }

    fn journal(entries: &[Entry]) -> Vec<u8> {
        let mut out = header().to_vec();
        for e in entries {
            encode(&e.msg, &e.receivers, &mut out);
        }
        out
    }

    fn read(bytes: &[u8]) -> (Vec<Entry>, Scanned) {
        let mut got = Vec::new();
        let s = scan(&mut &bytes[..], bytes.len() as u64, |e| got.push(e)).expect("scan");
        (got, s)
    }

    fn sample() -> Vec<Entry> {
        vec![
            entry(1, b"{\"a\":1}", Some("im_message"), Sender::Backend),
            entry(2, b"", None, Sender::Client(ChannelId([9; 16]))),
            entry(
                3,
                "\u{2028}ünïcode".as_bytes(),
                Some("x_y"),
                Sender::Backend,
            ),
        ]
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_round_trip() {
        let entries = sample();
        for e in &entries {
            let mut buf = Vec::new();
            encode(&e.msg, &e.receivers, &mut buf);
            assert_eq!(buf.len(), encoded_len(&e.msg, e.receivers.len()));
            let back = decode(&buf[FRAME_LEN..])
                .expect("decodes")
                .expect("a message");
            assert!(same(e, &back));
        }
        let bytes = journal(&entries);
        let (got, s) = read(&bytes);
        assert_eq!(s.cut, None);
        assert_eq!((s.records, s.good_len), (3, bytes.len() as u64));
        assert!(got.iter().zip(&entries).all(|(a, b)| same(a, b)));
    }

    #[test]
    fn a_truncated_tail_is_cut_at_the_last_good_record() {
        let bytes = journal(&sample());
        let full = read(&bytes).1.good_len;
        let two = journal(&sample()[..2]).len();
        for cut in two + 1..bytes.len() {
            let (got, s) = read(&bytes[..cut]);
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(s.good_len, two as u64);
            let (at, dropped, _) = s.cut.expect("a cut");
            assert_eq!((at, dropped), (two as u64, (cut - two) as u64));
        }
        assert_eq!(full, bytes.len() as u64);
        // Cut inside the header: an empty journal, not an error.
        let (got, s) = read(&bytes[..5]);
        assert!(got.is_empty() && s.cut.is_some());
    }

    #[test]
    fn a_flipped_bit_or_garbage_is_cut() {
        let bytes = journal(&sample());
        let two = journal(&sample()[..2]).len();
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        let (got, s) = read(&bad);
        assert_eq!(got.len(), 2);
        let (at, _, why) = s.cut.expect("a cut");
        assert_eq!(at, two as u64);
        assert!(why.contains("checksum"), "{why}");
        // Garbage appended after good records.
        let mut junk = bytes.clone();
        junk.extend_from_slice(&[0xff; 100]);
        let (got, s) = read(&junk);
        assert_eq!(got.len(), 3);
        assert_eq!(s.cut.map(|c| (c.0, c.1)), Some((bytes.len() as u64, 100)));
    }

    #[test]
    fn a_newer_version_or_foreign_file_is_refused() {
        let mut bytes = journal(&sample());
        bytes[8] = 2;
        let r = scan(&mut &bytes[..], bytes.len() as u64, |_| {});
        assert!(matches!(r, Err(OpenError::Newer(2))));
        let text = OpenError::Newer(2).to_string();
        assert!(
            text.contains("version 2") && text.contains("downgrade"),
            "{text}"
        );
        let r = scan(&mut &b"hello world, not ours"[..], 21, |_| {});
        assert!(matches!(r, Err(OpenError::NotAJournal)));
    }
}
