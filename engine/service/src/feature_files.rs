//! The decision log's feature bytes, kept beside the SQLite database in append-only files instead of inside
//! its rows.
//!
//! A decision's features (512 doubles, 4 KiB, for d = 32 and K = 16) are most of its log record. In a row,
//! SQLite writes them twice (into the WAL, then the checkpoint's copy into the database file) on an overflow
//! page of their own: 25 us of CPU per decision record, against 7 us for the same rows without them
//! (benches/decision_log.rs). Here they are written once: one `write` and one `fdatasync` per group commit,
//! before the transaction whose rows point at them commits, so a committed row never points at bytes that
//! are not on disk.
//!
//! Files are `features/NNNNNNNN.f64le` in the data directory, little-endian doubles back to back, a new file
//! once one passes [`MAX_FILE_BYTES`]. A row keeps (file, offset, length, CRC-32), so a read checks what it
//! got. The bytes of a commit that failed stay in the file, unreferenced and overwritten by the next commit;
//! a file no row points at any more (its experiments deleted) is removed.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

/// Size past which the next group commit starts a new file.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// The directory of the feature files, inside the data directory.
pub const FEATURES_DIR: &str = "features";

const EXTENSION: &str = "f64le";

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

/// The feature files of one store. Not shared between threads: the store keeps it behind its lock.
#[derive(Debug)]
pub struct FeatureFiles {
    directory: PathBuf,
    /// The file being appended to, opened at the first append.
    active: Option<ActiveFile>,
    /// Bytes appended since the last [`FeatureFiles::sync`], in the active file's order.
    pending: Vec<u8>,
    /// Files opened for reading.
    readers: HashMap<u32, File>,
    /// The thread that writes and syncs a group's bytes while the caller inserts its rows, started at the
    /// first sync; with the channel its answers come back on.
    syncer: Option<(Sender<SyncJob>, Receiver<SyncDone>)>,
    /// Bytes handed to the syncer and not yet answered for.
    in_flight: Option<usize>,
    /// Size past which the next group starts a new file ([`MAX_FILE_BYTES`]; smaller in tests).
    max_file_bytes: u64,
}

/// Bytes to write at `offset` of `file` and sync.
struct SyncJob {
    file: Arc<File>,
    offset: u64,
    bytes: Vec<u8>,
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

impl FeatureFiles {
    /// The feature files in `data_dir`; creates their directory if needed. Opens no file yet.
    pub fn open(data_dir: &Path) -> io::Result<FeatureFiles> {
        let directory = data_dir.join(FEATURES_DIR);
        std::fs::create_dir_all(&directory)?;
        Ok(FeatureFiles {
            directory,
            active: None,
            pending: Vec::new(),
            readers: HashMap::new(),
            syncer: None,
            in_flight: None,
            max_file_bytes: MAX_FILE_BYTES,
        })
    }

    fn path(&self, number: u32) -> PathBuf {
        self.directory.join(format!("{number:08}.{EXTENSION}"))
    }

    /// The numbers of the files present, ascending.
    fn numbers(&self) -> io::Result<Vec<u32>> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.directory)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name.strip_suffix(&format!(".{EXTENSION}")).and_then(|n| n.parse().ok()) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Queues `bytes` for the next [`FeatureFiles::sync`] and says where they will be. A group's bytes all
    /// go to one file; a new file is started only at the first append of a group.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<FeatureRef> {
        debug_assert!(self.in_flight.is_none(), "append while a sync is in flight");
        let length = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "features of 4 GiB or more"))?;
        if self.pending.is_empty() {
            self.roll_if_needed()?;
        }
        let active = self.active.as_ref().expect("roll_if_needed opened a file");
        let offset = active.length + self.pending.len() as u64;
        self.pending.extend_from_slice(bytes);
        Ok(FeatureRef { file: active.number, offset, length, crc32: crc32fast::hash(bytes) })
    }

    /// Opens the newest file for appending, or starts a new one when there is none or it is full.
    fn roll_if_needed(&mut self) -> io::Result<()> {
        if self.active.as_ref().is_some_and(|a| a.length < self.max_file_bytes) {
            return Ok(());
        }
        let newest = self.numbers()?.last().copied();
        if self.active.is_none()
            && let Some(number) = newest
        {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(self.path(number))?;
            let length = file.metadata()?.len();
            if length < self.max_file_bytes {
                self.active = Some(ActiveFile { number, file: Arc::new(file), length });
                return Ok(());
            }
        }
        let number = newest.map_or(1, |n| n + 1);
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(self.path(number))?;
        // The new file's name must survive a power cut too, or rows committed into it would point nowhere.
        File::open(&self.directory)?.sync_all()?;
        self.active = Some(ActiveFile { number, file: Arc::new(file), length: 0 });
        Ok(())
    }

    /// Writes what was appended since the last sync and waits until it is on disk. On failure nothing
    /// appended since the last sync counts: the next group writes over it.
    #[cfg(test)]
    pub fn sync(&mut self) -> io::Result<()> {
        self.start_sync()?;
        self.finish_sync()
    }

    /// Starts writing and syncing what was appended, on the syncer thread, so the caller can insert the rows
    /// meanwhile; [`FeatureFiles::finish_sync`] waits for it. Appending must wait until then. An error
    /// here (only when the syncer thread is gone and the bytes were written inline) means they did not count.
    pub fn start_sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() || self.in_flight.is_some() {
            return Ok(());
        }
        let active = self.active.as_ref().expect("append opened a file");
        let (sender, _) = self.syncer.get_or_insert_with(start_syncer);
        let job =
            SyncJob { file: active.file.clone(), offset: active.length, bytes: std::mem::take(&mut self.pending) };
        let length = job.bytes.len();
        match sender.send(job) {
            Ok(()) => {
                self.in_flight = Some(length);
                Ok(())
            }
            // The thread is gone (it cannot be, short of a panic): write here instead.
            Err(returned) => {
                self.pending = returned.0.bytes;
                self.syncer = None;
                let written = write_and_sync(&returned.0.file, returned.0.offset, &self.pending);
                self.pending.clear();
                if written.is_ok()
                    && let Some(active) = self.active.as_mut()
                {
                    active.length += length as u64;
                }
                written
            }
        }
    }

    /// Waits for the sync [`FeatureFiles::start_sync`] started, if one is running.
    pub fn finish_sync(&mut self) -> io::Result<()> {
        let Some(length) = self.in_flight.take() else { return Ok(()) };
        let answer = self.syncer.as_ref().map(|(_, done)| done.recv());
        let (written, mut buffer) = match answer {
            Some(Ok(done)) => done,
            _ => {
                self.syncer = None;
                (Err(io::Error::other("the feature-file syncer stopped")), Vec::new())
            }
        };
        if written.is_ok()
            && let Some(active) = self.active.as_mut()
        {
            active.length += length as u64;
        }
        buffer.clear();
        self.pending = buffer;
        written
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

    /// Reads and checks the bytes `at` points to.
    pub fn read(&mut self, at: FeatureRef) -> Result<Vec<u8>, String> {
        let file = match self.readers.entry(at.file) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let path = self.directory.join(format!("{:08}.{EXTENSION}", at.file));
                entry.insert(File::open(&path).map_err(|e| format!("feature file {}: {e}", path.display()))?)
            }
        };
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

    /// Removes every file but the newest for which `referenced` says no row points into it any more.
    pub fn remove_unreferenced(&mut self, referenced: &mut dyn FnMut(u32) -> io::Result<bool>) -> io::Result<()> {
        let numbers = self.numbers()?;
        let newest = numbers.last().copied();
        for number in numbers {
            let in_use = Some(number) == newest || self.active.as_ref().is_some_and(|a| a.number == number);
            if !in_use && !referenced(number)? {
                self.readers.remove(&number);
                std::fs::remove_file(self.path(number))?;
            }
        }
        Ok(())
    }

    /// Whether a file can be written and synced in the directory now (after a failure, before resuming).
    pub fn probe(&self) -> io::Result<()> {
        let path = self.directory.join("probe");
        let written = std::fs::write(&path, [0; 8]).and_then(|()| File::open(&path)?.sync_all());
        let _ = std::fs::remove_file(&path);
        written
    }
}

/// Total bytes of the feature files in `data_dir`; needs no lock (for metrics and benchmarks).
pub fn bytes_in(data_dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(data_dir.join(FEATURES_DIR))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(&format!(".{EXTENSION}")) {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn write_and_sync(file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, offset)?;
    file.sync_data()
}

/// The syncer thread: it ends when its [`FeatureFiles`] is dropped (the job channel closes).
fn start_syncer() -> (Sender<SyncJob>, Receiver<SyncDone>) {
    let (jobs, incoming) = channel::<SyncJob>();
    let (answers, done) = channel::<SyncDone>();
    let spawned = std::thread::Builder::new().name("safebet-features".into()).spawn(move || {
        for job in incoming {
            let written = write_and_sync(&job.file, job.offset, &job.bytes);
            if answers.send((written, job.bytes)).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        // Sends then fail, and start_sync writes on the caller's thread.
        tracing::warn!(error = %e, "cannot start the feature-file syncer; syncing inline");
    }
    (jobs, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_bytes_read_back_after_a_sync_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = FeatureFiles::open(dir.path()).unwrap();
        let first = files.append(&[1, 2, 3]).unwrap();
        let second = files.append(&[4, 5]).unwrap();
        files.sync().unwrap();
        assert_eq!((first.file, first.offset, second.offset), (1, 0, 3));
        let mut reopened = FeatureFiles::open(dir.path()).unwrap();
        assert_eq!(reopened.read(first).unwrap(), vec![1, 2, 3]);
        assert_eq!(reopened.read(second).unwrap(), vec![4, 5]);
        // Appends continue after what is there.
        let third = reopened.append(&[6]).unwrap();
        reopened.sync().unwrap();
        assert_eq!((third.file, third.offset), (1, 5));
    }

    #[test]
    fn a_discarded_group_is_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = FeatureFiles::open(dir.path()).unwrap();
        files.append(&[9; 8]).unwrap();
        files.discard();
        let kept = files.append(&[7; 4]).unwrap();
        files.sync().unwrap();
        assert_eq!(kept.offset, 0);
        assert_eq!(files.read(kept).unwrap(), vec![7; 4]);
    }

    #[test]
    fn damaged_or_missing_bytes_are_an_error_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = FeatureFiles::open(dir.path()).unwrap();
        let at = files.append(&[1; 16]).unwrap();
        files.sync().unwrap();
        let path = dir.path().join(FEATURES_DIR).join("00000001.f64le");
        std::fs::write(&path, [1; 15].iter().chain(&[2]).copied().collect::<Vec<u8>>()).unwrap();
        let mut reread = FeatureFiles::open(dir.path()).unwrap();
        assert!(reread.read(at).unwrap_err().contains("checksum"));
        assert!(reread.read(FeatureRef { offset: 8, length: 16, ..at }).unwrap_err().contains("beyond"));
        assert!(reread.read(FeatureRef { length: u32::MAX, ..at }).unwrap_err().contains("beyond"));
        assert!(reread.read(FeatureRef { file: 2, ..at }).is_err());
    }

    #[test]
    fn full_files_roll_over_and_unreferenced_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = FeatureFiles::open(dir.path()).unwrap();
        let first = files.append(&[1; 8]).unwrap();
        files.sync().unwrap();
        files.set_max_file_bytes(8); // the first file is now full
        let second = files.append(&[2; 8]).unwrap();
        let same_group = files.append(&[3; 8]).unwrap();
        files.sync().unwrap();
        assert_eq!((first.file, second.file, same_group.file), (1, 2, 2));
        // File 1 still referenced: kept. The newest is kept whatever it holds.
        files.remove_unreferenced(&mut |n| Ok(n == 1)).unwrap();
        assert_eq!(files.numbers().unwrap(), vec![1, 2]);
        files.remove_unreferenced(&mut |_| Ok(false)).unwrap();
        assert_eq!(files.numbers().unwrap(), vec![2]);
        assert!(files.read(first).is_err());
        assert_eq!(files.read(same_group).unwrap(), vec![3; 8]);
    }
}
