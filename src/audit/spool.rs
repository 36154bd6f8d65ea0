//! The disk spool: append-only, segment-rotated files holding audit records that are not (yet)
//! in Kafka.
//!
//! A segment is `spool_dir/NNNNNNNNNNNNNNNNNNNN.seg` (ids increase; replay order is id order).
//! Each record is framed as
//!
//! ```text
//! u32 LE  len      bytes after the 8-byte header (2 + key length + payload length)
//! u32 LE  crc32    of those bytes
//! u16 LE  key length, then the key (the tenant), then the payload (the JSON record)
//! ```
//!
//! Writers append to the *active* segment; it is *sealed* when it reaches the segment size or
//! when the replayer asks for it, and only sealed segments are read. A process never appends to
//! a segment left by an earlier process, so a record torn by a crash can only be the last one
//! of a sealed segment: the reader detects it (short frame or checksum mismatch), reports it and
//! goes on. A segment is deleted by the replayer only once every record in it was acknowledged
//! by Kafka or written again to a newer segment.
//!
//! Appends are buffered in memory and written to the file on [`Spool::flush`] or when
//! [`Flush::Now`] is asked for; `fsync` follows the configured [`Fsync`] policy.
//!
//! A write that fails (a full disk, a file-size limit) keeps the segment whole: the file is cut
//! back to its last complete frame (or, if even that fails, the segment is sealed so that no
//! frame lands after the torn one), and the records that were buffered and are now lost are
//! counted ([`Spool::take_lost`]) so the audit pipeline reports them as dropped.
//!
//! The directory is created (or tightened to) mode 0700 and every file in it 0600: the records
//! name tenants, users, client addresses and paths.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::config::Fsync;

/// Largest frame the reader accepts; anything larger is a damaged length field.
pub const MAX_FRAME: usize = 8 << 20;

const HEADER: usize = 8;
const BUFFER_LIMIT: usize = 256 << 10;

/// When an append reaches the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Before `append` returns (the request path, delivery failures).
    Now,
    /// At the next [`Spool::flush`] (batches of the shipper).
    Later,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `spool_max_bytes` is reached.
    #[error("spool is full ({limit} bytes, audit.spool_max_bytes)")]
    Full {
        /// The limit.
        limit: u64,
    },
    /// Writing failed.
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
}

/// The spool of one process.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    fsync: Fsync,
    bytes: AtomicU64,
    state: Mutex<State>,
    _lock: File,
}

#[derive(Debug)]
struct State {
    active: Option<Active>,
    buf: Vec<u8>,
    /// Records whose frames are in `buf`.
    buf_records: u64,
    /// Records accepted by `append` whose write later failed, not yet taken by `take_lost`.
    lost: u64,
    next_id: u64,
    sealed: VecDeque<u64>,
}

#[derive(Debug)]
struct Active {
    id: u64,
    file: File,
    /// Bytes appended, buffered ones included.
    len: u64,
    /// Bytes in the file: always a frame boundary.
    written: u64,
    records: u64,
}

/// Mode of the spool directory.
const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
const FILE_MODE: u32 = 0o600;
/// How long [`Spool::open`] waits for a directory lock that another process holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens a spool file with mode 0600.
fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

impl Spool {
    /// Opens (creating) the spool directory, takes its lock, and lists the segments left by
    /// earlier processes; they are the first to be replayed.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64, fsync: Fsync) -> io::Result<Spool> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        // An existing directory (an earlier version, or created by hand) is tightened too.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        let lock = private_file()
            .create(true)
            .write(true)
            .truncate(false)
            .open(dir.join(".lock"))?;
        // The lock is held for a moment longer than its owner wants it when the owner is still
        // exiting, or when any process forked while the descriptor was open (the child holds a
        // copy until its `exec` closes it), so a busy lock is retried for up to LOCK_WAIT.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "another process uses this spool directory; give each instance its own \
                         audit.spool_dir",
                    ))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        let mut ids = Vec::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(segment_id) else {
                continue;
            };
            bytes += entry.metadata()?.len();
            ids.push(id);
        }
        ids.sort_unstable();
        let next_id = ids.last().map_or(1, |id| id + 1);
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            fsync,
            bytes: AtomicU64::new(bytes),
            state: Mutex::new(State {
                active: None,
                buf: Vec::with_capacity(64 << 10),
                buf_records: 0,
                lost: 0,
                next_id,
                sealed: ids.into(),
            }),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the spool, buffered appends included.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Appends one record. `over_limit` lets a record that is already counted in the spool (a
    /// replayed record being written again) pass `spool_max_bytes`.
    pub fn append(
        &self,
        key: &[u8],
        payload: &[u8],
        flush: Flush,
        over_limit: bool,
    ) -> Result<(), AppendError> {
        let key = &key[..key.len().min(u16::MAX as usize)];
        let len = 2 + key.len() + payload.len();
        let frame_len = (HEADER + len) as u64;
        if len > MAX_FRAME {
            return Err(AppendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record of {len} bytes exceeds the spool frame limit"),
            )));
        }
        let mut st = self.state.lock();
        if !over_limit && self.bytes() + frame_len > self.max_bytes {
            return Err(AppendError::Full {
                limit: self.max_bytes,
            });
        }
        if st
            .active
            .as_ref()
            .is_some_and(|a| a.len > 0 && a.len + frame_len > self.segment_bytes)
        {
            self.seal(&mut st)?;
        }
        if st.active.is_none() {
            self.start_segment(&mut st)?;
        }
        let mut crc = crc32fast::Hasher::new();
        let klen = (key.len() as u16).to_le_bytes();
        crc.update(&klen);
        crc.update(key);
        crc.update(payload);
        let buf = &mut st.buf;
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        buf.extend_from_slice(&crc.finalize().to_le_bytes());
        buf.extend_from_slice(&klen);
        buf.extend_from_slice(key);
        buf.extend_from_slice(payload);
        st.buf_records += 1;
        if let Some(a) = st.active.as_mut() {
            a.len += frame_len;
            a.records += 1;
        }
        self.bytes.fetch_add(frame_len, Ordering::Relaxed);
        if flush == Flush::Now || st.buf.len() >= BUFFER_LIMIT {
            if let Err(e) = self.write_out(&mut st) {
                // This record is among the lost ones; the caller counts it through the error.
                st.lost = st.lost.saturating_sub(1);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Records that `append` accepted and whose write failed since the last call (each one
    /// is lost; the audit pipeline counts them as dropped).
    pub fn take_lost(&self) -> u64 {
        std::mem::take(&mut self.state.lock().lost)
    }

    /// Writes buffered appends to the active segment (and fsyncs with `fsync = "always"`).
    pub fn flush(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        self.write_out(&mut st)
    }

    /// Writes buffered appends and fsyncs the active segment (the `"interval"` policy's tick,
    /// and shutdown).
    pub fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        self.write_out(&mut st)?;
        if let Some(a) = &st.active {
            a.file.sync_data()?;
        }
        Ok(())
    }

    /// Whether the spool holds records the replayer has not taken yet.
    pub fn has_unread(&self) -> bool {
        let st = self.state.lock();
        !st.sealed.is_empty() || st.active.as_ref().is_some_and(|a| a.records > 0)
    }

    /// The oldest segment not yet handed out, sealing the active one when it is the only one
    /// left, with the offset replay starts at (saved by [`Spool::checkpoint`], else 0); `None`
    /// when everything was handed out.
    pub fn next_segment(&self) -> io::Result<Option<(u64, PathBuf, u64)>> {
        let mut st = self.state.lock();
        if st.sealed.is_empty() && st.active.as_ref().is_some_and(|a| a.records > 0) {
            self.seal(&mut st)?;
        }
        let Some(id) = st.sealed.pop_front() else {
            return Ok(None);
        };
        let offset = std::fs::read_to_string(self.checkpoint_path(id))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Some((id, self.path(id), offset)))
    }

    /// Saves that the records of segment `id` before `offset` are all handled, so that the
    /// next process resumes there instead of sending them again.
    pub fn checkpoint(&self, id: u64, offset: u64) -> io::Result<()> {
        let tmp = self.dir.join(format!("{id:020}.pos.tmp"));
        let mut f = private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(offset.to_string().as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.checkpoint_path(id))
    }

    fn checkpoint_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.pos"))
    }

    /// Deletes a segment whose records are all acknowledged or spooled again.
    pub fn remove(&self, id: u64) -> io::Result<()> {
        let path = self.path(id);
        let len = std::fs::metadata(&path)?.len();
        std::fs::remove_file(&path)?;
        let _ = std::fs::remove_file(self.checkpoint_path(id));
        self.bytes
            .fetch_sub(len.min(self.bytes()), Ordering::Relaxed);
        Ok(())
    }

    /// Path of segment `id`.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    fn start_segment(&self, st: &mut State) -> io::Result<()> {
        let id = st.next_id;
        let file = private_file()
            .create_new(true)
            .append(true)
            .open(self.path(id))?;
        if self.fsync == Fsync::Always {
            // Make the new directory entry durable too.
            File::open(&self.dir)?.sync_all()?;
        }
        st.next_id += 1;
        st.active = Some(Active {
            id,
            file,
            len: 0,
            written: 0,
            records: 0,
        });
        Ok(())
    }

    fn seal(&self, st: &mut State) -> io::Result<()> {
        self.write_out(st)?;
        if let Some(a) = st.active.take() {
            if self.fsync != Fsync::Never {
                a.file.sync_data()?;
            }
            st.sealed.push_back(a.id);
        }
        Ok(())
    }

    /// Writes the buffer to the active segment. On failure the segment is cut back to its last
    /// whole frame and the buffered records are added to `lost`.
    fn write_out(&self, st: &mut State) -> io::Result<()> {
        if st.buf.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut st.buf_records);
        let State { active, buf, .. } = st;
        let Some(a) = active else {
            return Ok(());
        };
        let n = buf.len() as u64;
        let r = a.file.write_all(buf);
        buf.clear();
        let e = match r {
            Ok(()) => {
                a.written += n;
                if self.fsync == Fsync::Always {
                    a.file.sync_data()?;
                }
                return Ok(());
            }
            Err(e) => e,
        };
        self.bytes.fetch_sub(n.min(self.bytes()), Ordering::Relaxed);
        a.len = a.written;
        a.records = a.records.saturating_sub(records);
        st.lost += records;
        if a.file.set_len(a.written).is_err() {
            // The torn frame stays at the end: seal the segment so nothing is appended after
            // it (the reader reports a torn tail and stops there).
            if let Some(a) = st.active.take() {
                st.sealed.push_back(a.id);
            }
        }
        Err(e)
    }
}

fn segment_id(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

// === Reading ===

/// One record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The Kafka key (tenant).
    pub key: Vec<u8>,
    /// The JSON record.
    pub payload: Vec<u8>,
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A record.
    Record(Frame),
    /// A damaged record at `offset`; `resumable` when the records after it can still be read
    /// (only its checksum was wrong), otherwise the rest of the segment (`skipped` bytes) is
    /// unreadable.
    Torn {
        /// Byte offset of the damaged record.
        offset: u64,
        /// Bytes skipped.
        skipped: u64,
        /// Whether reading continues after it.
        resumable: bool,
    },
    /// The end of the segment.
    End,
}

/// Reads a sealed segment front to back.
#[derive(Debug)]
pub struct SegmentReader {
    file: BufReader<File>,
    offset: u64,
    done: bool,
}

impl SegmentReader {
    /// Opens a segment, starting at byte `offset` (a frame boundary saved by
    /// [`Spool::checkpoint`]).
    pub fn open(path: &Path, offset: u64) -> io::Result<SegmentReader> {
        let mut file = File::open(path)?;
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset))?;
        }
        Ok(SegmentReader {
            file: BufReader::with_capacity(256 << 10, file),
            offset,
            done: false,
        })
    }

    /// Offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record, a damaged one, or the end.
    pub fn next_frame(&mut self) -> io::Result<Next> {
        if self.done {
            return Ok(Next::End);
        }
        let start = self.offset;
        let mut header = [0u8; HEADER];
        let n = read_full(&mut self.file, &mut header)?;
        if n == 0 {
            self.done = true;
            return Ok(Next::End);
        }
        if n < HEADER {
            return Ok(self.torn_tail(start, n as u64));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(2..=MAX_FRAME).contains(&len) {
            let rest = io::copy(&mut self.file, &mut io::sink())?;
            return Ok(self.torn_tail(start, HEADER as u64 + rest));
        }
        let mut body = vec![0u8; len];
        let n = read_full(&mut self.file, &mut body)?;
        if n < len {
            return Ok(self.torn_tail(start, (HEADER + n) as u64));
        }
        self.offset += (HEADER + len) as u64;
        let klen = u16::from_le_bytes([body[0], body[1]]) as usize;
        if crc32fast::hash(&body) != crc || 2 + klen > len {
            return Ok(Next::Torn {
                offset: start,
                skipped: (HEADER + len) as u64,
                resumable: true,
            });
        }
        let payload = body.split_off(2 + klen);
        let key = body[2..].to_vec();
        Ok(Next::Record(Frame { key, payload }))
    }

    fn torn_tail(&mut self, offset: u64, skipped: u64) -> Next {
        self.done = true;
        self.offset += skipped;
        Next::Torn {
            offset,
            skipped,
            resumable: false,
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "omsgate-spool-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn read_all(path: &Path) -> (Vec<Frame>, Vec<Next>) {
        let mut r = SegmentReader::open(path, 0).unwrap();
        let (mut ok, mut bad) = (vec![], vec![]);
        loop {
            match r.next_frame().unwrap() {
                Next::Record(f) => ok.push(f),
                Next::End => break,
                t => bad.push(t),
            }
        }
        (ok, bad)
    }

    #[test]
    fn round_trip_rotation_and_reopen() {
        let dir = tmp("rt");
        let s = Spool::open(&dir, 1 << 20, 4096, Fsync::Never).unwrap();
        for i in 0..100 {
            s.append(
                b"t1",
                format!("{{\"n\":{i},\"pad\":\"{:50}\"}}", "").as_bytes(),
                Flush::Later,
                false,
            )
            .unwrap();
        }
        s.flush().unwrap();
        assert!(s.has_unread());
        let mut n = 0;
        let mut segments = 0;
        while let Some((_, path, _)) = s.next_segment().unwrap() {
            let (frames, bad) = read_all(&path);
            assert!(bad.is_empty());
            for f in frames {
                assert_eq!(f.key, b"t1");
                assert!(f.payload.starts_with(format!("{{\"n\":{n},").as_bytes()));
                n += 1;
            }
            segments += 1;
        }
        assert_eq!(n, 100);
        assert!(segments > 1, "4KiB segments rotate");
        assert!(!s.has_unread());
        let bytes = s.bytes();
        drop(s);
        // A new process sees the same segments, in order, and never appends to them.
        let s = Spool::open(&dir, 1 << 20, 4096, Fsync::Always).unwrap();
        assert_eq!(s.bytes(), bytes);
        let (first, _, _) = s.next_segment().unwrap().unwrap();
        s.append(b"", b"{}", Flush::Now, false).unwrap();
        let mut last = first;
        while let Some((id, _, _)) = s.next_segment().unwrap() {
            assert!(id > last);
            last = id;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limit_and_lock() {
        let dir = tmp("limit");
        let s = Spool::open(
            &dir,
            4096,
            4096,
            Fsync::Interval(std::time::Duration::from_secs(1)),
        )
        .unwrap();
        let payload = vec![b'x'; 1000];
        let mut stored = 0;
        let full = loop {
            match s.append(b"k", &payload, Flush::Now, false) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(full, AppendError::Full { limit: 4096 }));
        assert_eq!(stored, 4);
        s.append(b"k", &payload, Flush::Now, true).unwrap();
        let e = Spool::open(&dir, 4096, 4096, Fsync::Never).unwrap_err();
        assert!(e.to_string().contains("another process"), "{e}");
        let (id, _, _) = s.next_segment().unwrap().unwrap();
        s.remove(id).unwrap();
        assert!(s.bytes() < 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_and_corrupt_records_are_detected() {
        let dir = tmp("torn");
        let s = Spool::open(&dir, 1 << 20, 1 << 20, Fsync::Never).unwrap();
        for i in 0..5 {
            s.append(b"t", format!("record-{i}").as_bytes(), Flush::Now, false)
                .unwrap();
        }
        let (_, path, _) = s.next_segment().unwrap().unwrap();
        let mut data = std::fs::read(&path).unwrap();
        let frame = data.len() / 5;
        // Flip a payload byte of record 1: only that one is lost.
        data[frame + HEADER + 4] ^= 0xff;
        // Cut record 4 in half: a torn tail.
        data.truncate(data.len() - frame / 2);
        std::fs::write(&path, &data).unwrap();
        let (ok, bad) = read_all(&path);
        let names: Vec<_> = ok
            .iter()
            .map(|f| String::from_utf8_lossy(&f.payload).to_string())
            .collect();
        assert_eq!(names, ["record-0", "record-2", "record-3"]);
        assert_eq!(bad.len(), 2);
        assert!(matches!(
            bad[0],
            Next::Torn {
                resumable: true,
                ..
            }
        ));
        assert!(matches!(
            bad[1],
            Next::Torn {
                resumable: false,
                ..
            }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_private() {
        let dir = tmp("mode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Spool::open(&dir, 1 << 20, 4096, Fsync::Never).unwrap();
        s.append(b"t", b"{}", Flush::Now, false).unwrap();
        s.checkpoint(1, 0).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A full file system (a 64 KiB tmpfs; the tests run as root): the frames in the segment
    /// stay whole and every accepted record is either readable or counted as lost.
    #[test]
    fn a_full_disk_keeps_frames_whole_and_counts_what_it_lost() {
        let dir = tmp("enospc");
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root");
        let outcome = std::panic::catch_unwind(|| {
            let s = Spool::open(&dir, 1 << 30, 1 << 30, Fsync::Never).unwrap();
            let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
            let (mut accepted, mut refused) = (0u64, 0u64);
            for i in 0..200 {
                // Mostly buffered appends, some written at once, as the shipper and the
                // request path do.
                let flush = if i % 7 == 0 { Flush::Now } else { Flush::Later };
                match s.append(b"t", payload.as_bytes(), flush, false) {
                    Ok(()) => accepted += 1,
                    Err(_) => refused += 1,
                }
                if i % 10 == 9 {
                    let _ = s.flush();
                }
            }
            let _ = s.flush();
            let lost = s.take_lost();
            assert!(refused + lost > 0, "64 KiB cannot hold 200 KiB of records");
            let mut readable = 0;
            for id in 1..s.state.lock().next_id {
                let (ok, bad) = read_all(&s.path(id));
                assert!(bad.is_empty(), "segment {id}: {bad:?}");
                readable += ok.len() as u64;
            }
            assert_eq!(readable + lost, accepted, "accepted = readable + lost");
        });
        let _ = std::process::Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(p) = outcome {
            std::panic::resume_unwind(p);
        }
    }
}
