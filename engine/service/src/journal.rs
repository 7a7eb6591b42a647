//! The decision log's journal: append-only segment files beside the SQLite database that hold every log
//! record with its decision features, written and synced once per group commit.
//!
//! A decision's features (512 doubles, 4 KiB, for d = 32 and K = 16) are most of its log record. In a row,
//! SQLite writes them twice (into the WAL, then the checkpoint's copy into the database file) on an overflow
//! page of their own: 25 us of CPU per decision record, against 7 us for the same rows without them
//! (benches/decision_log.rs). Here they are written once. And because each record is framed in full (the row
//! as MessagePack, then the features), a group is durable as soon as its one `write` + `fdatasync` here
//! returns: the rows that SQLite keeps for queries can commit without a sync of their own, and a crash
//! before they reach disk is repaired on the next open by replaying the frames after the position the
//! database last recorded ([`Journal::replay`]).
//!
//! Files are `features/NNNNNNNN.seg`, a new file once one passes [`MAX_FILE_BYTES`]. A frame is a 20-byte
//! header (magic, payload length, features length, CRC-32 of the features, CRC-32 of the header's first 16
//! bytes and the payload), the payload, then the features as little-endian doubles. A log row keeps (file,
//! offset, length, CRC-32) of its features, so numpy reads them with
//! `np.fromfile(path, "<f8", count=length // 8, offset=offset)` and a read checks what it got. Files written
//! before the journal (`NNNNNNNN.f64le`, features back to back) are still read. The frames of a group whose
//! sync failed are cut off before the next group is written; a file no row points at any more (its
//! experiments deleted or compacted) is removed.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

/// Size past which the next group commit starts a new file.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// The directory of the journal segments (and older feature files), inside the data directory.
pub const FEATURES_DIR: &str = "features";

/// Journal segments: framed log records with their features.
const SEGMENT_EXTENSION: &str = "seg";

/// Feature files from before the journal: features only, back to back. Read, never written.
const PLAIN_EXTENSION: &str = "f64le";

/// Marks the start of a frame ("SBJ1" in the file).
const FRAME_MAGIC: [u8; 4] = *b"SBJ1";

/// Bytes of a frame's header.
pub const FRAME_HEADER: usize = 20;

/// The largest payload a frame may declare: a record without its features takes a few hundred bytes, so
/// anything near this is damage, and replay must not allocate what a damaged length says.
const MAX_PAYLOAD: usize = 16 << 20;

/// Where a decision's features are: what a log row keeps instead of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureRef {
    /// The file's number.
    pub file: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Number of bytes.
    pub length: u32,
    /// CRC-32 (IEEE) of the bytes.
    pub crc32: u32,
}

/// What [`Journal::replay`] calls with each frame: its payload and where its features are.
pub type FrameVisitor<'a, E> = dyn FnMut(&[u8], FeatureRef) -> Result<(), E> + 'a;

/// A place in the journal: the byte `offset` of segment `file`.
pub type JournalPosition = (u32, u64);

/// The journal of one store. Not shared between threads: the store keeps it behind its lock.
#[derive(Debug)]
pub struct Journal {
    directory: PathBuf,
    /// The segment being appended to, opened at the first append.
    active: Option<ActiveFile>,
    /// Frames appended since the last [`Journal::sync`], in the active file's order.
    pending: Vec<u8>,
    /// Files opened for reading.
    readers: HashMap<u32, File>,
    /// The thread that writes and syncs a group's bytes while the caller inserts its rows, started at the
    /// first sync; with the channel its answers come back on.
    syncer: Option<(Sender<SyncJob>, Receiver<SyncDone>)>,
    /// Bytes handed to the syncer and not yet answered for.
    in_flight: Option<usize>,
    /// Where the last synced group started, so it can be revoked (a group whose log records
    /// were not answered early, mixed with snapshot or admin writes, and whose transaction failed).
    last_group: Option<JournalPosition>,
    /// Whether bytes past the active file's counted length may be on disk (a failed group whose removal
    /// failed too): they are cut off before anything is appended or replayed.
    dirty_tail: bool,
    /// Size past which the next group starts a new file ([`MAX_FILE_BYTES`]; smaller in tests).
    max_file_bytes: u64,
    /// Whether the active file holds bytes written by [`Journal::write_unsynced`] and not synced since.
    unsynced: bool,
}

/// Called on the syncer thread once a group's bytes are on disk, before the caller hears of it: callers
/// waiting only for durability are answered without waiting for the rest of the commit.
pub type OnSynced = Box<dyn FnOnce() + Send>;

/// Bytes to write at `offset` of `file` and sync.
struct SyncJob {
    file: Arc<File>,
    offset: u64,
    bytes: Vec<u8>,
    on_synced: Option<OnSynced>,
}

/// The outcome, with the buffer handed back for the next group (so steady state allocates nothing).
type SyncDone = (io::Result<()>, Vec<u8>);

#[derive(Debug)]
struct ActiveFile {
    number: u32,
    file: Arc<File>,
    /// Bytes durably written (the pending ones go after them).
    length: u64,
}

impl Journal {
    /// The journal in `data_dir`; creates its directory if needed. Opens no file yet.
    pub fn open(data_dir: &Path) -> io::Result<Journal> {
        let journal = Journal::for_reading(data_dir);
        std::fs::create_dir_all(&journal.directory)?;
        Ok(journal)
    }

    /// The journal in `data_dir`, only to read features from (creates nothing).
    pub fn for_reading(data_dir: &Path) -> Journal {
        Journal {
            directory: data_dir.join(FEATURES_DIR),
            active: None,
            pending: Vec::new(),
            readers: HashMap::new(),
            syncer: None,
            in_flight: None,
            last_group: None,
            dirty_tail: false,
            max_file_bytes: MAX_FILE_BYTES,
            unsynced: false,
        }
    }

    fn segment_path(&self, number: u32) -> PathBuf {
        self.directory.join(format!("{number:08}.{SEGMENT_EXTENSION}"))
    }

    /// The file numbered `number`, whichever kind it is.
    fn existing_path(&self, number: u32) -> PathBuf {
        let segment = self.segment_path(number);
        if segment.exists() { segment } else { self.directory.join(format!("{number:08}.{PLAIN_EXTENSION}")) }
    }

    /// The files present, ascending, each with whether it is a journal segment.
    fn files(&self) -> io::Result<Vec<(u32, bool)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.directory)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let Some((stem, extension)) = name.split_once('.') else { continue };
            let segment = match extension {
                SEGMENT_EXTENSION => true,
                PLAIN_EXTENSION => false,
                _ => continue,
            };
            if let Ok(number) = stem.parse() {
                files.push((number, segment));
            }
        }
        files.sort_unstable();
        Ok(files)
    }

    /// Queues a frame (the payload `encode` writes, then the features `features` appends) for the next
    /// [`Journal::sync`] and says where its features will be. Both write straight into the group's buffer (no
    /// copy in between). A group's frames all go to one file; a new file is started only at the first append
    /// of a group.
    pub fn append_frame(
        &mut self,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), String>,
        features: &mut dyn FnMut(&mut Vec<u8>),
    ) -> io::Result<FeatureRef> {
        debug_assert!(self.in_flight.is_none(), "append while a sync is in flight");
        if self.pending.is_empty() {
            self.roll_if_needed()?;
        }
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; FRAME_HEADER]);
        let encoded = encode(&mut self.pending);
        let payload = self.pending.len() - start - FRAME_HEADER;
        if let Err(reason) = encoded.and_then(|()| {
            if (1..=MAX_PAYLOAD).contains(&payload) { Ok(()) } else { Err(format!("a payload of {payload} bytes")) }
        }) {
            self.pending.truncate(start);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cannot frame a log record: {reason}")));
        }
        let features_at = self.pending.len();
        features(&mut self.pending);
        let Ok(length) = u32::try_from(self.pending.len() - features_at) else {
            self.pending.truncate(start);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "features of 4 GiB or more"));
        };
        let features_crc = crc32fast::hash(&self.pending[features_at..]);
        let header = &mut self.pending[start..start + FRAME_HEADER];
        header[0..4].copy_from_slice(&FRAME_MAGIC);
        header[4..8].copy_from_slice(&(payload as u32).to_le_bytes());
        header[8..12].copy_from_slice(&length.to_le_bytes());
        header[12..16].copy_from_slice(&features_crc.to_le_bytes());
        let header_crc = frame_crc(&self.pending[start..start + 16], &self.pending[start + FRAME_HEADER..features_at]);
        self.pending[start + 16..start + FRAME_HEADER].copy_from_slice(&header_crc.to_le_bytes());
        let active = self.active.as_ref().expect("roll_if_needed opened a file");
        let offset = active.length + features_at as u64;
        Ok(FeatureRef { file: active.number, offset, length, crc32: features_crc })
    }

    /// Where the journal will end once the frames appended so far are synced.
    pub fn end_after_sync(&self) -> Option<JournalPosition> {
        self.active.as_ref().map(|a| (a.number, a.length + self.pending.len() as u64))
    }

    /// Opens the newest segment for appending, or starts a new one when there is none or it is full.
    fn roll_if_needed(&mut self) -> io::Result<()> {
        self.cut_dirty_tail()?;
        if self.active.as_ref().is_some_and(|a| a.length < self.max_file_bytes) {
            return Ok(());
        }
        // What was written to the full file must be on disk before anything goes to the next one.
        self.sync_written()?;
        let newest = self.files()?.last().copied();
        if self.active.is_none()
            && let Some((number, true)) = newest
        {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(self.segment_path(number))?;
            let length = file.metadata()?.len();
            if length < self.max_file_bytes {
                self.active = Some(ActiveFile { number, file: Arc::new(file), length });
                return Ok(());
            }
        }
        let number = newest.map_or(1, |(n, _)| n + 1);
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(self.segment_path(number))?;
        // The new file's name must survive a power cut too, or rows committed into it would point nowhere.
        File::open(&self.directory)?.sync_all()?;
        self.active = Some(ActiveFile { number, file: Arc::new(file), length: 0 });
        Ok(())
    }

    /// Cuts the active file back to its counted length if a failed group may have left bytes after it.
    fn cut_dirty_tail(&mut self) -> io::Result<()> {
        if !self.dirty_tail {
            return Ok(());
        }
        if let Some(active) = &self.active {
            active.file.set_len(active.length)?;
            active.file.sync_data()?;
        }
        self.dirty_tail = false;
        Ok(())
    }

    /// Writes what was appended since the last sync and waits until it is on disk. On failure nothing
    /// appended since the last sync counts: it is cut off before the next group.
    #[cfg(test)]
    pub fn sync(&mut self) -> io::Result<()> {
        self.start_sync(None)?;
        self.finish_sync()
    }

    /// Starts writing and syncing what was appended, on the syncer thread, so the caller can insert the rows
    /// meanwhile; [`Journal::finish_sync`] waits for it. Appending must wait until then. An error
    /// here (only when the syncer thread is gone and the bytes were written inline) means they did not count.
    /// `on_synced` runs once the bytes are on disk (never if they are not, or if nothing was appended).
    pub fn start_sync(&mut self, on_synced: Option<OnSynced>) -> io::Result<()> {
        if self.pending.is_empty() || self.in_flight.is_some() {
            return Ok(());
        }
        let active = self.active.as_ref().expect("append opened a file");
        let (sender, _) = self.syncer.get_or_insert_with(start_syncer);
        let job = SyncJob {
            file: active.file.clone(),
            offset: active.length,
            bytes: std::mem::take(&mut self.pending),
            on_synced,
        };
        let length = job.bytes.len();
        match sender.send(job) {
            Ok(()) => {
                self.in_flight = Some(length);
                Ok(())
            }
            // The thread is gone (it cannot be, short of a panic): write here instead.
            Err(returned) => {
                let job = returned.0;
                self.pending = job.bytes;
                self.syncer = None;
                let written = write_and_sync(&job.file, job.offset, &self.pending);
                self.pending.clear();
                self.count_group(length, written.is_ok());
                if let (Ok(()), Some(on_synced)) = (&written, job.on_synced) {
                    on_synced();
                }
                written
            }
        }
    }

    /// Writes what was appended, without waiting for the disk: the frames then survive a crash of the
    /// process (the kernel holds them) but not of the machine until [`Journal::sync_written`]. On failure
    /// nothing appended since the last write counts: it is cut off before the next group.
    pub fn write_unsynced(&mut self) -> io::Result<()> {
        self.finish_sync()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let active = self.active.as_ref().expect("append opened a file");
        let written = active.file.write_all_at(&self.pending, active.length);
        let length = self.pending.len();
        self.pending.clear();
        self.count_group(length, written.is_ok());
        if written.is_ok() {
            self.unsynced = true;
        }
        written
    }

    /// Syncs what [`Journal::write_unsynced`] wrote, if anything.
    pub fn sync_written(&mut self) -> io::Result<()> {
        if let Some((file, end)) = self.written_unsynced() {
            file.sync_data()?;
            self.mark_synced(end);
        }
        Ok(())
    }

    /// The file holding what [`Journal::write_unsynced`] wrote and did not sync, and where that ends: to
    /// sync without holding the journal (appends may go on meanwhile), then [`Journal::mark_synced`].
    /// Earlier files were synced when the active one was started.
    pub fn written_unsynced(&self) -> Option<(Arc<File>, JournalPosition)> {
        let active = self.active.as_ref().filter(|_| self.unsynced)?;
        Some((active.file.clone(), (active.number, active.length)))
    }

    /// Records that everything written up to `end` is synced (nothing is, if more was written since).
    pub fn mark_synced(&mut self, end: JournalPosition) {
        if self.active.as_ref().is_some_and(|a| (a.number, a.length) == end) {
            self.unsynced = false;
        }
    }

    /// Waits for the sync [`Journal::start_sync`] started, if one is running.
    pub fn finish_sync(&mut self) -> io::Result<()> {
        let Some(length) = self.in_flight.take() else { return Ok(()) };
        let answer = self.syncer.as_ref().map(|(_, done)| done.recv());
        let (written, mut buffer) = match answer {
            Some(Ok(done)) => done,
            _ => {
                self.syncer = None;
                (Err(io::Error::other("the journal syncer stopped")), Vec::new())
            }
        };
        self.count_group(length, written.is_ok());
        buffer.clear();
        self.pending = buffer;
        written
    }

    /// After a group's sync (or unsynced write): counts its bytes, or marks them to be cut off (some may have
    /// reached the disk).
    fn count_group(&mut self, length: usize, synced: bool) {
        let Some(active) = self.active.as_mut() else { return };
        if synced {
            self.last_group = Some((active.number, active.length));
            active.length += length as u64;
            // A sync of the file covers whatever was written to it before, unsynced.
            self.unsynced = false;
        } else {
            self.last_group = None;
            self.dirty_tail = true;
            let _ = self.cut_dirty_tail();
        }
    }

    /// Takes back the group synced last (its transaction failed and its callers hear so): its frames are cut
    /// off, so a replay never applies what a caller was told failed.
    pub fn revoke_last_group(&mut self) -> io::Result<()> {
        let Some((number, length)) = self.last_group.take() else { return Ok(()) };
        if let Some(active) = self.active.as_mut().filter(|a| a.number == number) {
            active.length = length;
            self.dirty_tail = true;
        }
        self.cut_dirty_tail()
    }

    /// Starts new files past `bytes` instead of [`MAX_FILE_BYTES`] (tests of roll-over and removal).
    #[cfg(test)]
    pub fn set_max_file_bytes(&mut self, bytes: u64) {
        self.max_file_bytes = bytes;
    }

    /// Forgets what was appended since the last sync (its transaction did not commit).
    pub fn discard(&mut self) {
        let _ = self.finish_sync();
        self.pending.clear();
    }

    /// Calls `visit` with every intact frame from `from` on (the first segment's start when `None`), in
    /// order across later segments: its payload and where its features are. Stops at the first frame that
    /// is torn or damaged and cuts the newest segment back to the last intact frame, so appends continue
    /// right after it. Returns where the journal ends, `None` if there is no segment.
    pub fn replay<E: From<io::Error>>(
        &mut self,
        from: Option<JournalPosition>,
        visit: &mut FrameVisitor<'_, E>,
    ) -> Result<Option<JournalPosition>, E> {
        self.discard();
        self.cut_dirty_tail()?;
        let (segments, end) = self.visit_frames(from, visit, true)?;
        let newest = segments.last().copied();
        if let Some((number, offset, size)) = end
            && offset < size
            && Some(number) == newest
        {
            tracing::warn!(segment = number, offset, bytes = size - offset, "cutting off a torn journal tail");
            let file = std::fs::OpenOptions::new().write(true).open(self.segment_path(number))?;
            file.set_len(offset)?;
            file.sync_data()?;
            // Appends must continue from the cut, not from a length read before it.
            self.active = None;
        }
        Ok(end.map(|(number, offset, _)| (number, offset)))
    }

    /// Calls `visit` with every intact frame from `from` on, as [`Journal::replay`] does, but changes
    /// nothing (no cut, no sync): for a reader beside a running writer, whose newest frame may be half
    /// written. Returns where the intact frames end. A journal directory that does not exist holds nothing.
    pub fn scan<E: From<io::Error>>(
        &self,
        from: Option<JournalPosition>,
        visit: &mut FrameVisitor<'_, E>,
    ) -> Result<Option<JournalPosition>, E> {
        if !self.directory.exists() {
            return Ok(None);
        }
        let (_, end) = self.visit_frames(from, visit, false)?;
        Ok(end.map(|(number, offset, _)| (number, offset)))
    }

    /// Visits the intact frames from `from` on across the segments; with `sync_visited`, syncs each segment
    /// it visited frames of. Returns the segments and where the last one's intact frames end (with its size).
    #[allow(clippy::type_complexity)]
    fn visit_frames<E: From<io::Error>>(
        &self,
        from: Option<JournalPosition>,
        visit: &mut FrameVisitor<'_, E>,
        sync_visited: bool,
    ) -> Result<(Vec<u32>, Option<(u32, u64, u64)>), E> {
        let segments: Vec<u32> = self.files()?.into_iter().filter(|(_, s)| *s).map(|(n, _)| n).collect();
        let (first, mut offset) = from.unwrap_or((segments.first().copied().unwrap_or(1), 0));
        let mut end = None;
        let mut payload = Vec::new();
        for &number in segments.iter().filter(|&&n| n >= first) {
            if number != first {
                offset = 0;
            }
            let file = File::open(self.segment_path(number))?;
            let size = file.metadata()?.len();
            let mut visited = false;
            while let Some(frame) = read_frame(&file, offset, size, &mut payload)? {
                visit(&payload, FeatureRef { file: number, ..frame })?;
                offset = frame.offset + u64::from(frame.length);
                visited = true;
            }
            if visited && sync_visited {
                // Frames a killed process wrote without a sync may still be only in the page cache: the rows
                // about to point at them must not reach the disk before they do.
                file.sync_data()?;
            }
            if offset < size && segments.last() != Some(&number) {
                // Only the newest segment can end in a torn group: a failed group is cut off before another
                // is written, and a new segment starts only after that.
                tracing::error!(segment = number, offset, bytes = size - offset, "damaged journal frames skipped");
            }
            end = Some((number, offset, size));
        }
        Ok((segments, end))
    }

    /// Reads and checks the bytes `at` points to.
    pub fn read(&mut self, at: FeatureRef) -> Result<Vec<u8>, String> {
        if !self.readers.contains_key(&at.file) {
            let path = self.existing_path(at.file);
            let file = File::open(&path).map_err(|e| format!("feature file {}: {e}", path.display()))?;
            self.readers.insert(at.file, file);
        }
        let file = &self.readers[&at.file];
        // A damaged row must not make us allocate gigabytes: check the range against the file first.
        let size = file.metadata().map_err(|e| format!("feature file {}: {e}", at.file))?.len();
        if at.offset.saturating_add(u64::from(at.length)) > size {
            return Err(format!(
                "features at {} bytes {}..+{} lie beyond the file's end ({size} bytes)",
                at.file, at.offset, at.length
            ));
        }
        let mut bytes = vec![0; at.length as usize];
        file.read_exact_at(&mut bytes, at.offset)
            .map_err(|e| format!("features at {} bytes {}..+{}: {e}", at.file, at.offset, at.length))?;
        if crc32fast::hash(&bytes) != at.crc32 {
            return Err(format!("features at {} bytes {}..+{} fail their checksum", at.file, at.offset, at.length));
        }
        Ok(bytes)
    }

    /// Removes every file but the newest for which `referenced` says no row points into it any more. Only
    /// call it when the database holds every synced frame (after a commit or a replay): a segment's records
    /// without features (rewards, timeouts) are then in the database, and its features are what rows point at.
    pub fn remove_unreferenced(&mut self, referenced: &mut dyn FnMut(u32) -> io::Result<bool>) -> io::Result<()> {
        let files = self.files()?;
        let newest = files.last().map(|(n, _)| *n);
        for (number, _) in files {
            let in_use = Some(number) == newest || self.active.as_ref().is_some_and(|a| a.number == number);
            if !in_use && !referenced(number)? {
                self.readers.remove(&number);
                std::fs::remove_file(self.existing_path(number))?;
            }
        }
        Ok(())
    }

    /// Whether a file can be written and synced in the directory now (after a failure, before resuming).
    pub fn probe(&mut self) -> io::Result<()> {
        self.cut_dirty_tail()?;
        let path = self.directory.join("probe");
        let written = std::fs::write(&path, [0; 8]).and_then(|()| File::open(&path)?.sync_all());
        let _ = std::fs::remove_file(&path);
        written
    }
}

/// CRC-32 of a frame's first 16 header bytes and its payload.
fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Reads the frame at `offset` of `file` (`size` bytes long) into `payload`: where its features are (file
/// number 0, for the caller to set), or `None` if no intact frame starts there.
fn read_frame(file: &File, offset: u64, size: u64, payload: &mut Vec<u8>) -> io::Result<Option<FeatureRef>> {
    let mut header = [0u8; FRAME_HEADER];
    if offset + FRAME_HEADER as u64 > size {
        return Ok(None);
    }
    file.read_exact_at(&mut header, offset)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let (payload_length, features_length, features_crc) = (word(4) as usize, word(8), word(12));
    let features_at = offset + (FRAME_HEADER + payload_length) as u64;
    if header[0..4] != FRAME_MAGIC
        || !(1..=MAX_PAYLOAD).contains(&payload_length)
        || features_at + u64::from(features_length) > size
    {
        return Ok(None);
    }
    payload.resize(payload_length, 0);
    file.read_exact_at(payload, offset + FRAME_HEADER as u64)?;
    if frame_crc(&header[0..16], payload) != word(16) {
        return Ok(None);
    }
    let mut features = vec![0; features_length as usize];
    file.read_exact_at(&mut features, features_at)?;
    if crc32fast::hash(&features) != features_crc {
        return Ok(None);
    }
    Ok(Some(FeatureRef { file: 0, offset: features_at, length: features_length, crc32: features_crc }))
}

/// Total bytes of the journal segments and feature files in `data_dir`; needs no lock (for metrics and
/// benchmarks).
pub fn bytes_in(data_dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(data_dir.join(FEATURES_DIR))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(&format!(".{SEGMENT_EXTENSION}")) || name.ends_with(&format!(".{PLAIN_EXTENSION}")) {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn write_and_sync(file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, offset)?;
    file.sync_data()
}

/// The syncer thread: it ends when its [`Journal`] is dropped (the job channel closes).
fn start_syncer() -> (Sender<SyncJob>, Receiver<SyncDone>) {
    let (jobs, incoming) = channel::<SyncJob>();
    let (answers, done) = channel::<SyncDone>();
    let spawned = std::thread::Builder::new().name("safebet-journal".into()).spawn(move || {
        for job in incoming {
            let written = write_and_sync(&job.file, job.offset, &job.bytes);
            if let (Ok(()), Some(on_synced)) = (&written, job.on_synced) {
                on_synced();
            }
            if answers.send((written, job.bytes)).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        // Sends then fail, and start_sync writes on the caller's thread.
        tracing::warn!(error = %e, "cannot start the journal syncer; syncing inline");
    }
    (jobs, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `features` behind a payload naming them, as the store frames a record.
    fn append(files: &mut Journal, payload: &[u8], features: &[u8]) -> FeatureRef {
        files
            .append_frame(
                &mut |buffer| {
                    buffer.extend_from_slice(payload);
                    Ok(())
                },
                &mut |buffer| buffer.extend_from_slice(features),
            )
            .unwrap()
    }

    /// Every intact frame from `from`: (payload, features), and where the journal ends.
    /// Frames as (payload, features).
    type Frames = Vec<(Vec<u8>, Vec<u8>)>;

    fn replayed(files: &mut Journal, from: Option<JournalPosition>) -> (Frames, JournalPosition) {
        let mut frames = Vec::new();
        let mut reader = Journal::open(files.directory.parent().unwrap()).unwrap();
        let end = files
            .replay::<io::Error>(from, &mut |payload, at| {
                frames.push((payload.to_vec(), reader.read(at).map_err(io::Error::other)?));
                Ok(())
            })
            .unwrap()
            .unwrap();
        (frames, end)
    }

    #[test]
    fn appended_bytes_read_back_after_a_sync_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        let first = append(&mut files, b"a", &[1, 2, 3]);
        let second = append(&mut files, b"bb", &[4, 5]);
        files.sync().unwrap();
        assert_eq!((first.file, first.offset), (1, (FRAME_HEADER + 1) as u64));
        assert_eq!(second.offset, first.offset + 3 + (FRAME_HEADER + 2) as u64);
        let mut reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.read(first).unwrap(), vec![1, 2, 3]);
        assert_eq!(reopened.read(second).unwrap(), vec![4, 5]);
        // Appends continue after what is there.
        let third = append(&mut reopened, b"c", &[6]);
        reopened.sync().unwrap();
        assert_eq!((third.file, third.offset), (1, second.offset + 2 + (FRAME_HEADER + 1) as u64));
    }

    #[test]
    fn unsynced_writes_are_readable_at_once_and_tracked_until_a_sync_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        assert!(files.written_unsynced().is_none());
        let first = append(&mut files, b"a", &[1, 2]);
        files.write_unsynced().unwrap();
        let (_, end) = files.written_unsynced().expect("written, not synced");
        assert_eq!(end, (1, first.offset + 2));
        // Another process (a restart after a crash of this one) reads what the kernel holds.
        assert_eq!(Journal::open(dir.path()).unwrap().read(first).unwrap(), vec![1, 2]);
        // A sync of an end that more was written after leaves the rest to sync.
        let second = append(&mut files, b"b", &[3]);
        files.write_unsynced().unwrap();
        files.mark_synced(end);
        assert_eq!(files.written_unsynced().map(|(_, end)| end), Some((1, second.offset + 1)));
        files.sync_written().unwrap();
        assert!(files.written_unsynced().is_none());
        // A group synced the usual way covers earlier unsynced writes to its file.
        append(&mut files, b"c", &[4]);
        files.write_unsynced().unwrap();
        append(&mut files, b"d", &[5]);
        files.sync().unwrap();
        assert!(files.written_unsynced().is_none());
    }

    #[test]
    fn a_discarded_group_is_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        append(&mut files, b"gone", &[9; 8]);
        files.discard();
        let kept = append(&mut files, b"kept", &[7; 4]);
        files.sync().unwrap();
        assert_eq!(kept.offset, (FRAME_HEADER + 4) as u64);
        assert_eq!(files.read(kept).unwrap(), vec![7; 4]);
        assert_eq!(replayed(&mut files, None).0, vec![(b"kept".to_vec(), vec![7; 4])]);
    }

    #[test]
    fn damaged_or_missing_bytes_are_an_error_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        let at = append(&mut files, b"p", &[1; 16]);
        files.sync().unwrap();
        let path = dir.path().join(FEATURES_DIR).join("00000001.seg");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() = 2;
        std::fs::write(&path, &bytes).unwrap();
        let mut reread = Journal::open(dir.path()).unwrap();
        assert!(reread.read(at).unwrap_err().contains("checksum"));
        assert!(reread.read(FeatureRef { offset: at.offset + 8, ..at }).unwrap_err().contains("beyond"));
        assert!(reread.read(FeatureRef { length: u32::MAX, ..at }).unwrap_err().contains("beyond"));
        assert!(reread.read(FeatureRef { file: 2, ..at }).is_err());
    }

    #[test]
    fn feature_files_from_before_the_journal_are_read_and_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(FEATURES_DIR)).unwrap();
        std::fs::write(dir.path().join(FEATURES_DIR).join("00000003.f64le"), [5; 16]).unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        let old = FeatureRef { file: 3, offset: 8, length: 8, crc32: crc32fast::hash(&[5; 8]) };
        assert_eq!(files.read(old).unwrap(), vec![5; 8]);
        let new = append(&mut files, b"n", &[6; 8]);
        files.sync().unwrap();
        assert_eq!(new.file, 4);
        assert_eq!(files.read(new).unwrap(), vec![6; 8]);
        assert_eq!(bytes_in(dir.path()).unwrap(), 16 + (FRAME_HEADER + 1 + 8) as u64);
    }

    #[test]
    fn full_files_roll_over_and_unreferenced_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        let first = append(&mut files, b"1", &[1; 8]);
        files.sync().unwrap();
        files.set_max_file_bytes(8); // the first file is now full
        let second = append(&mut files, b"2", &[2; 8]);
        let same_group = append(&mut files, b"3", &[3; 8]);
        files.sync().unwrap();
        assert_eq!((first.file, second.file, same_group.file), (1, 2, 2));
        let numbers = |files: &Journal| files.files().unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        // File 1 still referenced: kept. The newest is kept whatever it holds.
        files.remove_unreferenced(&mut |n| Ok(n == 1)).unwrap();
        assert_eq!(numbers(&files), vec![1, 2]);
        files.remove_unreferenced(&mut |_| Ok(false)).unwrap();
        assert_eq!(numbers(&files), vec![2]);
        assert!(files.read(first).is_err());
        assert_eq!(files.read(same_group).unwrap(), vec![3; 8]);
    }

    #[test]
    fn replay_returns_the_frames_after_a_position_across_segments_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        append(&mut files, b"one", &[1; 8]);
        files.sync().unwrap();
        let after_one = files.end_after_sync().unwrap();
        append(&mut files, b"two", &[]);
        files.sync().unwrap();
        files.set_max_file_bytes(1);
        append(&mut files, b"three", &[3; 16]);
        files.sync().unwrap();
        let end = files.end_after_sync().unwrap();
        assert_eq!(end.0, 2);
        // Half a frame after the end, as a crash during a write leaves it.
        let path = dir.path().join(FEATURES_DIR).join("00000002.seg");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&bytes.clone()[..FRAME_HEADER + 2]);
        std::fs::write(&path, &bytes).unwrap();

        let mut reopened = Journal::open(dir.path()).unwrap();
        let (all, replay_end) = replayed(&mut reopened, None);
        let payloads: Vec<&[u8]> = all.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(payloads, [b"one".as_slice(), b"two", b"three"]);
        assert_eq!(all[2].1, vec![3; 16]);
        assert_eq!(replay_end, end);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end.1, "the torn tail is cut off");
        assert_eq!(replayed(&mut reopened, Some(after_one)).0.len(), 2);
        assert_eq!(replayed(&mut reopened, Some(end)).0.len(), 0);
        // A frame appended now follows the last intact one and is replayed.
        reopened.set_max_file_bytes(1 << 20);
        append(&mut reopened, b"four", &[4; 8]);
        reopened.sync().unwrap();
        assert_eq!(replayed(&mut reopened, Some(end)).0, vec![(b"four".to_vec(), vec![4; 8])]);
    }

    #[test]
    fn a_damaged_frame_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        append(&mut files, b"intact", &[1; 8]);
        let second = append(&mut files, b"damaged", &[2; 8]);
        files.sync().unwrap();
        let path = dir.path().join(FEATURES_DIR).join("00000001.seg");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second.offset as usize - 3] ^= 1; // a bit of the second payload
        std::fs::write(&path, &bytes).unwrap();
        let mut reopened = Journal::open(dir.path()).unwrap();
        let (frames, end) = replayed(&mut reopened, None);
        assert_eq!(frames, vec![(b"intact".to_vec(), vec![1; 8])]);
        assert_eq!(end, (1, (FRAME_HEADER + 6 + 8) as u64));
    }

    #[test]
    fn a_revoked_group_is_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Journal::open(dir.path()).unwrap();
        append(&mut files, b"kept", &[1; 8]);
        files.sync().unwrap();
        append(&mut files, b"revoked", &[2; 8]);
        files.sync().unwrap();
        files.revoke_last_group().unwrap();
        append(&mut files, b"next", &[]);
        files.sync().unwrap();
        let mut reopened = Journal::open(dir.path()).unwrap();
        let payloads: Vec<Vec<u8>> = replayed(&mut reopened, None).0.into_iter().map(|(p, _)| p).collect();
        assert_eq!(payloads, vec![b"kept".to_vec(), b"next".to_vec()]);
    }
}
