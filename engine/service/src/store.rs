//! Where experiments outlive the process: definitions (written on every admin change), the decision log
//! (every decision, reward, timeout and budget change, committed before the call is acknowledged) and learner
//! snapshots (committed in the same transaction stream as the log, so a snapshot at `sequence` S is never
//! stored before the log records up to S). On start each experiment is its latest snapshot plus a replay of
//! the log after it.
//!
//! The service talks to storage only through the [`Store`] trait. [`SqliteStore`] is the default: one file,
//! WAL mode, readable by analysts with `sqlite3` or pandas while the service runs, plus a journal of
//! append-only segment files beside it (see `journal`) that holds every log record with its decision
//! features. A group of log records is durable once its frames are synced there; their rows then commit
//! without a sync of their own, and the journal puts back on open whatever rows a crash took.
//! Definitions, snapshots and audit entries commit with `synchronous = FULL`; large snapshot states are staged
//! in files of their own first ([`Store::stage_snapshot`], `snapshot_files`) and their rows reference them. With
//! [`SqliteStore::with_sync_interval`] log records are acknowledged once their frames are written, before the
//! sync; a thread syncs the journal every interval and then commits their rows (a row never points at frames
//! that are not on disk).
//! [`MemoryStore`] keeps nothing, for measuring what durability costs and for throwaway runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::definition::ExperimentDef;
use crate::journal::{FeatureRef, Journal, JournalPosition};
use crate::log::{
    DecisionRecord, EpisodeStartRecord, LogEntry, LogRecord, StepRecord, decode_logged_features, encode_features_f32,
    feature_bytes,
};
use crate::snapshot_files;

/// A storage failure. The change that failed was not made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed (disk full, I/O error, corrupt file).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded.
    #[error("stored record for experiment '{id}' is unreadable: {reason}")]
    Corrupt {
        /// The experiment the record belongs to.
        id: String,
        /// What was wrong.
        reason: String,
    },
    /// The store call was abandoned because the runtime is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The journal could not be written or read.
    #[error("journal: {0}")]
    Features(#[from] std::io::Error),
    /// Rows of log records acknowledged before their sync could not be committed; the journal holds the
    /// records, and [`Store::probe`] replays them.
    #[error(
        "the rows of acknowledged log records could not be committed ({0}); they are replayed from the journal once the store accepts writes"
    )]
    Unsynced(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process (a second `safebet serve`) has the data directory open for writing.
    #[error(
        "{0} is in use by another process (it holds the lock on {0}/{LOCK_FILE}); two servers writing one store would corrupt its journal"
    )]
    InUse(PathBuf),
}

/// The file in the data directory a writing store holds an exclusive lock on, for as long as it is open.
pub const LOCK_FILE: &str = "lock";

/// Takes the exclusive lock of `data_dir` for this process, or says that another process has it. The kernel
/// releases it when the file is closed, also when the process dies.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::DataDir { path: path.clone(), source })?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(StoreError::InUse(data_dir.to_owned()));
            }
            return Err(StoreError::DataDir { path, source: error });
        }
    }
    Ok(file)
}

/// A learner snapshot: the serialised experiment state up to `sequence`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The experiment.
    pub experiment_id: String,
    /// Position in the experiment's history that the state includes.
    pub sequence: u64,
    /// The serialised state (opaque to the store).
    pub state: Vec<u8>,
}

/// Marks a snapshot state encoded as MessagePack. Snapshots written before it are JSON (they start with `{`)
/// and are still read.
const MSGPACK_STATE: &[u8; 4] = b"SBm1";

/// Encodes an experiment's state for a [`Snapshot`]: MessagePack with field names (so fields can be added
/// with defaults, as with JSON). It pays where snapshots are large: 40,000 pending decisions of d = 32 take
/// 12.5 MB, 4 ms to encode and 8 ms to decode, against JSON's 27 MB, 44 ms and 58 ms (`cargo bench --bench
/// snapshots`). A fresh model is mostly zeros, which JSON writes in 3 bytes and MessagePack in 9, so there
/// it is larger (22 KB against 11 KB for d = 32) and still faster (3 and 10 us against 17 and 28 us).
pub fn encode_state<T: Serialize>(state: &T) -> Vec<u8> {
    let mut bytes = MSGPACK_STATE.to_vec();
    rmp_serde::encode::write_named(&mut bytes, state).expect("an experiment's state always serialises");
    bytes
}

/// Decodes [`encode_state`], or a JSON state from before it.
pub fn decode_state<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.strip_prefix(MSGPACK_STATE) {
        Some(packed) => rmp_serde::from_slice(packed).map_err(|e| format!("snapshot state (MessagePack): {e}")),
        None => serde_json::from_slice(bytes).map_err(|e| format!("snapshot state (JSON): {e}")),
    }
}

/// One experiment as stored: its definition, its latest snapshot, and the log after the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExperiment {
    /// The definition as of the latest admin change.
    pub definition: ExperimentDef,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// The log records after the snapshot's sequence (all of them without a snapshot), in order.
    pub log: Vec<LogRecord>,
}

/// An episodic experiment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEpisodic {
    /// Its id.
    pub id: String,
    /// Its configuration, JSON.
    pub config: String,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// The log after the snapshot.
    pub log: Vec<LogRecord>,
}

/// One entry of the audit trail: who changed what, with the state before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, milliseconds since the Unix epoch.
    pub unix_ms: i64,
    /// Who: the API key's id, "anonymous" without keys, or "drift-guard" for automatic fallbacks.
    pub actor: String,
    /// What: "create", "update_risk_budget", "pause", "resume", "delete", "import", "drift_alarm", ...
    pub action: String,
    /// The experiment concerned.
    pub experiment_id: String,
    /// JSON of the relevant state before the change (null for a creation).
    pub before: Option<String>,
    /// JSON of the relevant state after the change (null for a deletion).
    pub after: Option<String>,
}

/// One write of the decision-log stream; a batch of them is committed in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Append a log record.
    Log(LogRecord),
    /// Append an audit entry.
    Audit(AuditEntry),
    /// Store a snapshot (replacing the previous one); with `compact`, also delete the log up to its sequence.
    Snapshot {
        /// The snapshot.
        snapshot: Snapshot,
        /// Whether to drop the log records the snapshot includes.
        compact: bool,
    },
}

/// Says that a commit's writes are durable (answers their callers); see [`Store::commit_answering`].
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Persistent storage of experiments. Calls block (they may sync to disk): call them off the async runtime's
/// worker threads, e.g. with `tokio::task::spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces an experiment's definition, durably.
    fn save_definition(&self, definition: &ExperimentDef) -> Result<(), StoreError>;
    /// Deletes an experiment's definition and snapshot, durably. Deleting an unknown id is not an error.
    fn delete_experiment(&self, id: &str) -> Result<(), StoreError>;
    /// Saves snapshots in one transaction; a snapshot of an experiment without a definition (deleted in the
    /// meantime) is skipped, so a late snapshot can never resurrect a deleted experiment.
    fn save_snapshots(&self, snapshots: &[Snapshot]) -> Result<(), StoreError>;
    /// Everything stored, ordered by experiment id.
    fn load(&self) -> Result<Vec<StoredExperiment>, StoreError>;
    /// One experiment as stored, if it is.
    fn load_experiment(&self, id: &str) -> Result<Option<StoredExperiment>, StoreError>;
    /// Commits `writes` in one transaction, in order: all of them or none. A snapshot of an experiment
    /// without a definition is skipped (as in [`Store::save_snapshots`]).
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.commit_answering(writes, Box::new(|| {}))
    }
    /// [`Store::commit`], calling `durable` as soon as `writes` would survive a crash, which may be before
    /// the commit is done and on another thread (a store with a journal makes log records durable before its
    /// tables have them), but always before this returns. Never called if the writes did not become durable;
    /// a store may also leave it uncalled and only return.
    fn commit_answering(&self, writes: &[Write], durable: OnDurable) -> Result<(), StoreError>;
    /// Prepares a snapshot for [`Store::commit`], on the caller's thread: a store may write a large state
    /// elsewhere now and commit only a reference to it, so the commit (and every write queued behind it)
    /// stays short. Returns the snapshot to commit.
    fn stage_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot, StoreError> {
        Ok(snapshot)
    }
    /// Says that `experiment_id`'s snapshot at `sequence` is committed: older staged states may go.
    fn snapshot_committed(&self, _experiment_id: &str, _sequence: u64) {}
    /// Calls `visit` with every log record of `experiment` (of all experiments with `None`), ordered by
    /// experiment then sequence. A store with a journal includes the records its journal holds past its
    /// table (acknowledged, their rows not yet committed, or kept out by a crash): every record the next
    /// open would load. A record being written as this runs may show before its caller hears back.
    fn read_log(
        &self,
        experiment: Option<&str>,
        visit: &mut dyn FnMut(LogRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Appends an entry to the audit trail, durably.
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.commit(&[Write::Audit(entry.clone())])
    }
    /// The audit trail, oldest first, of one experiment or of all.
    fn audit_entries(&self, _experiment: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(Vec::new())
    }
    /// Creates an episodic experiment's record (its configuration as JSON), durably.
    fn save_episodic(&self, _id: &str, _config_json: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Deletes an episodic experiment with its snapshot and log.
    fn delete_episodic(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Every episodic experiment: (id, configuration JSON, latest snapshot, log after it).
    fn load_episodic(&self) -> Result<Vec<StoredEpisodic>, StoreError> {
        Ok(Vec::new())
    }
    /// The most recent `limit` log records of `experiment`, oldest first.
    fn recent_log(&self, experiment: &str, limit: usize) -> Result<Vec<LogRecord>, StoreError>;
    /// Whether the store accepts writes now (used to resume after an IO error).
    fn probe(&self) -> Result<(), StoreError>;
    /// Whether the store keeps anything across restarts.
    fn is_durable(&self) -> bool {
        true
    }
    /// Bytes the store takes on disk, by part (for the `safebet_store_bytes` gauge); empty if it takes none.
    fn disk_usage(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Log records acknowledged and not yet synced (what a power cut could take now), if the store
    /// acknowledges before syncing; `None` if it never does.
    fn unsynced_records(&self) -> Option<usize> {
        None
    }
}

/// [`Store`] on an embedded SQLite database (`safebet.sqlite3` in the data directory, WAL mode) and the
/// journal beside it: a committed change survives a power cut. No external server is needed.
#[derive(Debug)]
pub struct SqliteStore {
    /// One connection: writes are rare (admin changes, periodic snapshots), so serialising them costs nothing
    /// and keeps SQLite's locking out of the picture.
    connection: Arc<Mutex<Connection>>,
    /// The log's journal, where the decision features the log rows point to are. Locked after `connection`
    /// when both are.
    journal: Arc<Mutex<Journal>>,
    path: PathBuf,
    /// Stops the checkpoint thread when the store is dropped.
    stop_checkpoints: Arc<AtomicBool>,
    /// Set by the checkpoint thread when the WAL should start over; the writer does it between commits.
    restart_wal: Arc<AtomicBool>,
    /// With [`SqliteStore::with_sync_interval`]: the rows of log records acknowledged before their sync.
    unsynced: Option<Arc<UnsyncedRows>>,
    /// The thread that syncs them and commits their rows every interval.
    rows_thread: Option<std::thread::JoinHandle<()>>,
    /// The data directory's lock, held while the store is open for writing (`None` read-only).
    _lock: Option<std::fs::File>,
}

/// Queued rows past which the sync thread is woken before its interval is up: committing them costs about
/// 5 us each, so a queue much longer than this would make one long transaction of them.
const WAKE_SYNC_AT_RECORDS: usize = 2_048;

/// Most acknowledged records whose rows may wait for the sync thread before the writer commits them itself
/// (the sync thread is not keeping up: the writer, and so the callers, wait).
const MAX_UNSYNCED_RECORDS: usize = 32_768;

/// Log records acknowledged once their frames were written to the journal, whose rows wait for the sync
/// after which they may commit: a committed row must never point at frames a power cut could take.
#[derive(Debug)]
struct UnsyncedRows {
    queue: Mutex<UnsyncedQueue>,
    interval: Duration,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct UnsyncedQueue {
    /// In journal order.
    groups: Vec<UnsyncedGroup>,
    /// Records in `groups`.
    records: usize,
    /// Why rows could not be committed: until a replay from the journal ([`Store::probe`]) has put in
    /// those whose commit failed, no later row may commit past them, nor any record be acknowledged.
    failed: Option<String>,
}

#[derive(Debug)]
struct UnsyncedGroup {
    /// The log records, decisions without their features (the journal has them).
    writes: Vec<Write>,
    /// Where each decision's features are in the journal.
    features: Vec<Option<FeatureRef>>,
    /// Where the journal ends after the group.
    end: Option<JournalPosition>,
}

impl UnsyncedRows {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, UnsyncedQueue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Syncs the journal and commits the rows of every queued group, with `connection` held by the caller.
/// On failure the rows are dropped from the queue and the store refuses records until a replay.
fn commit_unsynced_rows(
    connection: &Connection,
    journal: &Mutex<Journal>,
    rows: &UnsyncedRows,
) -> Result<(), StoreError> {
    let groups = {
        let mut queue = rows.lock_queue();
        if let Some(reason) = &queue.failed {
            return Err(StoreError::Unsynced(reason.clone()));
        }
        queue.records = 0;
        std::mem::take(&mut queue.groups)
    };
    if groups.is_empty() {
        return Ok(());
    }
    let lock_journal = || journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let committed = (|| {
        // Every group taken was written before it was queued, so this sync covers them all. The journal is
        // not held meanwhile: the writer goes on appending.
        let written = lock_journal().written_unsynced();
        if let Some((file, end)) = written {
            file.sync_data()?;
            lock_journal().mark_synced(end);
        }
        connection.execute_batch("PRAGMA synchronous = NORMAL")?;
        let tx = connection.unchecked_transaction()?;
        let mut live = LiveExperiments::default();
        for group in &groups {
            insert_writes(&tx, &group.writes, &group.features, &mut live, &mut false)?;
        }
        if let Some(end) = groups.iter().rev().find_map(|group| group.end) {
            set_journal_position(&tx, end)?;
        }
        tx.commit()?;
        Ok::<(), StoreError>(())
    })();
    restore_full_sync(connection);
    if let Err(e) = &committed {
        tracing::error!(error = %e, "committing the rows of acknowledged log records failed; refusing records until \
                                     the journal is replayed");
        let mut queue = rows.lock_queue();
        queue.failed = Some(e.to_string());
        queue.groups.clear();
        queue.records = 0;
    }
    committed
}

/// Sets `synchronous = FULL` back after log rows committed without a sync. On failure the commit stands; only
/// admin writes would be less durable until the next log commit retries.
fn restore_full_sync(connection: &Connection) {
    if let Err(e) = connection.execute_batch("PRAGMA synchronous = FULL") {
        tracing::error!(error = %e, "cannot set synchronous = FULL back after a log commit");
    }
}

/// Starts the WAL over if the checkpoint thread asked; only between transactions.
fn restart_wal_if_asked(connection: &Connection, restart: &AtomicBool) {
    if restart.swap(false, Ordering::Relaxed) {
        // Between commits nothing else writes, so this copies what the last PASSIVE pass left and makes
        // the next commit write from the start of the WAL. A failure only leaves the WAL long.
        if let Err(e) = connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL restart failed; will retry");
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop_checkpoints.store(true, Ordering::Relaxed);
        if let (Some(rows), Some(thread)) = (&self.unsynced, self.rows_thread.take()) {
            rows.stop.store(true, Ordering::Relaxed);
            thread.thread().unpark();
            let _ = thread.join();
        }
        let connection = self.lock_connection();
        if let Some(rows) = &self.unsynced
            && let Err(e) = commit_unsynced_rows(&connection, &self.journal, rows)
        {
            tracing::error!(error = %e, "cannot commit the last acknowledged log records; the journal replays them on open");
        }
    }
}

/// WAL frames (pages of 4 KiB plus a 24-byte header) beyond which the WAL is started over: about 1 GiB.
pub const DEFAULT_WAL_RESTART_FRAMES: i64 = 262_144;

/// How often the checkpoint thread copies the WAL into the database file and syncs what it copied.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Copies the WAL back into the database every [`CHECKPOINT_INTERVAL`] without blocking the writer (PASSIVE),
/// then syncs the database file, until `stop`.
///
/// SQLite starts the WAL over only when a checkpoint has copied all of it before the next commit; a PASSIVE
/// pass never catches up with a writer that is never idle, and under sustained saturating load the WAL grew
/// with the log itself (905 MB in 16 s here). So past `restart_frames` this thread asks the writer to run a
/// RESTART checkpoint between two commits.
///
/// The sync is ours because SQLite syncs the database file only after a pass that copied the whole WAL, which
/// a saturated writer never allows: everything the passes copied stayed dirty in the page cache, and the
/// RESTART's own sync wrote it all at once, holding commits back for 2 s at the 1 GiB bound (0.6 s at
/// 128 MiB). Synced every 50 ms, the RESTART holds commits for 15-20 ms and no commit waits more than about
/// 35 ms (benches/decision_log.rs).
fn checkpoint_until(
    connection: &Connection,
    database: &std::fs::File,
    stop: &AtomicBool,
    restart: &AtomicBool,
    restart_frames: i64,
) {
    let mut last_copied = -1;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CHECKPOINT_INTERVAL);
        let pass = connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)));
        match pass {
            Ok((frames, copied)) => {
                if frames > restart_frames {
                    restart.store(true, Ordering::Relaxed);
                }
                // Only spreads the disk writes: durability never depended on it (the WAL holds every commit
                // until a checkpoint that syncs the database lets it start over). An idle store syncs nothing.
                if copied == last_copied {
                    continue;
                }
                last_copied = copied;
                if let Err(e) = database.sync_data() {
                    tracing::warn!(error = %e, "syncing the database file after a checkpoint failed; will retry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
}

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "safebet.sqlite3";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS experiments (
        id TEXT PRIMARY KEY NOT NULL,
        definition TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS snapshots (
        experiment_id TEXT PRIMARY KEY NOT NULL,
        sequence INTEGER NOT NULL,
        state BLOB NOT NULL
    );
    -- The decision log. One row per decision, reward, timeout or risk-budget change, in the experiment's
    -- order (sequence). Decisions carry the rest of the decision in `detail` (JSON) and their context in the
    -- journal: `features_length` bytes (little-endian doubles) at `features_offset` of
    -- features/<features_file, 8 digits>.seg (.f64le for files written before the journal), with their
    -- CRC-32; rows older still carry the bytes in `features`. Rewards carry `reward`.
    CREATE TABLE IF NOT EXISTS log (
        experiment_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        unix_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        decision_id INTEGER,
        event_id TEXT,
        action INTEGER,
        baseline INTEGER,
        num_actions INTEGER,
        propensity REAL,
        played_baseline INTEGER,
        reward REAL,
        alpha REAL,
        features BLOB,
        detail TEXT,
        features_file INTEGER,
        features_offset INTEGER,
        features_length INTEGER,
        features_crc32 INTEGER,
        PRIMARY KEY (experiment_id, sequence)
    );
    CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY);
    -- Where the journal (features/*.seg) stops being in the log table: every frame before it is, those
    -- after it are replayed on open. Updated in the same transaction as the rows it covers.
    CREATE TABLE IF NOT EXISTS journal (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        file INTEGER NOT NULL,
        offset INTEGER NOT NULL
    );
    -- The audit trail: every admin change, who made it, and the state before and after.
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        unix_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        experiment_id TEXT NOT NULL,
        before TEXT,
        after TEXT
    );
    -- Episodic (RL) experiments: their configuration. Their snapshots and logs share the tables above.
    CREATE TABLE IF NOT EXISTS episodic_experiments (
        id TEXT PRIMARY KEY NOT NULL,
        config TEXT NOT NULL
    );
";

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_wal_bound(data_dir, DEFAULT_WAL_RESTART_FRAMES)
    }

    /// Opens the store in `data_dir` to read it, changing nothing: no replay of the journal (its tail may be a
    /// running server's group being written, or rows it has yet to commit), no checkpoints, no schema
    /// upgrade. What `safebet log` uses, so it can run beside `safebet serve`. Its [`Store::read_log`] merges
    /// the journal's tail into the database's rows in memory, so the records of the last moments before a
    /// crash show before the next `safebet serve` has replayed them.
    pub fn open_read_only(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        let connection = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let columns: i64 = connection.query_row(
            "SELECT count(*) FROM pragma_table_info('log') WHERE name = 'features_file'",
            [],
            |row| row.get(0),
        )?;
        if columns == 0 {
            return Err(StoreError::Corrupt {
                id: path.display().to_string(),
                reason: "the store predates the journal; open it once with `safebet serve` to upgrade it".into(),
            });
        }
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            journal: Arc::new(Mutex::new(Journal::for_reading(data_dir))),
            path,
            stop_checkpoints: Arc::new(AtomicBool::new(true)),
            restart_wal: Arc::new(AtomicBool::new(false)),
            unsynced: None,
            rows_thread: None,
            _lock: None,
        })
    }

    /// [`SqliteStore::open`], starting the WAL over once it holds more than `restart_frames` frames.
    pub fn open_with_wal_bound(data_dir: &Path, restart_frames: i64) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let mut connection = Connection::open(&path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        add_feature_file_columns(&connection)?;
        let mut journal = Journal::open(data_dir)?;
        replay_journal(&mut connection, &mut journal)?;
        remove_unreferenced_snapshot_files(&connection, &data_dir.join(snapshot_files::SNAPSHOTS_DIR))?;
        // Checkpoints (copying the WAL back into the database file) run on their own connection and thread,
        // so the decision log's commits never wait for one: SQLite's automatic checkpoint would run inside
        // the committing call every 4 MiB of log, a latency spike every few tens of milliseconds under load.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After a restart, a WAL file larger than the bound is cut back to it; up to it, blocks are reused.
        connection.pragma_update(None, "journal_size_limit", restart_frames.saturating_mul(4096 + 24))?;
        let checkpointer = Connection::open(&path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let database =
            std::fs::File::open(&path).map_err(|source| StoreError::DataDir { path: path.clone(), source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let restart_wal = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let restart = restart_wal.clone();
            std::thread::Builder::new()
                .name("safebet-checkpoint".into())
                .spawn(move || checkpoint_until(&checkpointer, &database, &stop, &restart, restart_frames))
                .map_err(|source| StoreError::DataDir { path: path.clone(), source })?;
        }
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            journal: Arc::new(Mutex::new(journal)),
            path,
            stop_checkpoints: stop,
            restart_wal,
            unsynced: None,
            rows_thread: None,
            _lock: Some(lock),
        })
    }

    /// Acknowledges log records once their frames are written to the journal, before they are synced, and
    /// syncs them every `interval` on a thread of their own (and before any other change): a crash of the
    /// process loses nothing acknowledged, a power cut or a crash of the machine may lose about the last
    /// interval of them. Their rows commit after each sync, in one transaction. The default syncs every
    /// group before acknowledging it.
    pub fn with_sync_interval(mut self, interval: Duration) -> SqliteStore {
        if self.unsynced.is_some() {
            tracing::warn!("the store already has a sync interval; keeping it");
            return self;
        }
        // A zero interval would make the sync thread spin.
        let interval = interval.max(Duration::from_millis(1));
        let rows = Arc::new(UnsyncedRows { queue: Mutex::default(), interval, stop: AtomicBool::new(false) });
        let (connection, journal, restart) = (self.connection.clone(), self.journal.clone(), self.restart_wal.clone());
        let thread_rows = rows.clone();
        let spawned = std::thread::Builder::new().name("safebet-rows".into()).spawn(move || {
            while !thread_rows.stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(thread_rows.interval);
                let connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A failure was logged where it happened; until the replay clears it there is nothing to do.
                if commit_unsynced_rows(&connection, &journal, &thread_rows).is_ok() {
                    restart_wal_if_asked(&connection, &restart);
                }
            }
        });
        match spawned {
            Ok(thread) => {
                self.unsynced = Some(rows);
                self.rows_thread = Some(thread);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the sync thread; syncing before acknowledging"),
        }
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where large snapshot states are kept ([`snapshot_files`]).
    fn snapshots_dir(&self) -> PathBuf {
        self.path.with_file_name(snapshot_files::SNAPSHOTS_DIR)
    }

    /// The connection, with the rows of acknowledged, unsynced log records synced and committed first, so
    /// whatever runs on it next sees them and never commits ahead of them.
    fn connection(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        let connection = self.lock_connection();
        if let Some(rows) = &self.unsynced {
            commit_unsynced_rows(&connection, &self.journal, rows)?;
        }
        Ok(connection)
    }

    /// The connection as it is (rows of acknowledged log records may still wait for their sync).
    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll back), so the
        // connection stays usable.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The journal; lock only while holding [`SqliteStore::connection`], or alone.
    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        // Appended bytes are only counted by a sync or write, so a panic leaves nothing half-counted.
        self.journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`Store::commit_answering`] of log records alone, with a sync interval: their frames are written to
    /// the journal, they are declared durable, and their rows wait for the next sync.
    fn commit_unsynced(&self, rows: &UnsyncedRows, writes: &[Write], durable: OnDurable) -> Result<(), StoreError> {
        let mut queue = rows.lock_queue();
        if let Some(reason) = &queue.failed {
            return Err(StoreError::Unsynced(reason.clone()));
        }
        let (features, end) = {
            let mut journal = self.journal();
            journal.discard();
            let features = frame_records(&mut journal, writes)?;
            let end = journal.end_after_sync();
            journal.write_unsynced()?;
            (features, end)
        };
        // The rows need no features: the journal has them.
        let writes: Vec<Write> = writes
            .iter()
            .map(|write| match write {
                Write::Log(record @ LogRecord { entry: LogEntry::Decision(decision), .. }) => Write::Log(LogRecord {
                    experiment_id: record.experiment_id.clone(),
                    sequence: record.sequence,
                    unix_ms: record.unix_ms,
                    entry: LogEntry::Decision(Box::new(decision.without_features())),
                }),
                other => other.clone(),
            })
            .collect();
        let wake = queue.records < WAKE_SYNC_AT_RECORDS;
        queue.records += writes.len();
        let wake = wake && queue.records >= WAKE_SYNC_AT_RECORDS;
        let backlog = queue.records > MAX_UNSYNCED_RECORDS;
        queue.groups.push(UnsyncedGroup { writes, features, end });
        drop(queue);
        durable();
        if let (true, Some(thread)) = (wake, &self.rows_thread) {
            thread.thread().unpark();
        }
        if backlog {
            // The sync thread is falling behind: commit here, holding the writer back.
            drop(self.connection()?);
        }
        Ok(())
    }

    /// Removes the journal segments (and older feature files) no log row points into any more (after
    /// deletions and compactions); every frame in them is already in the tables. Runs after the change
    /// committed, so a failure only leaves disk space in use: it is logged, not returned.
    fn remove_unreferenced_segments(&self, connection: &Connection) {
        // With a sync interval, records written since the caller committed the queue may be waiting in it,
        // their frames in a file no committed row points into yet: remove nothing until they are in. Held
        // through the removal, so nothing is written meanwhile.
        let queue = self.unsynced.as_ref().map(|rows| rows.lock_queue());
        if queue.as_ref().is_some_and(|queue| !queue.groups.is_empty() || queue.failed.is_some()) {
            return;
        }
        let removed = connection
            .prepare_cached("SELECT 1 FROM log WHERE features_file = ?1 LIMIT 1")
            .map_err(|e| std::io::Error::other(e.to_string()));
        let removed = removed.and_then(|mut select| {
            self.journal().remove_unreferenced(&mut |file| {
                select.exists(params![file]).map_err(|e| std::io::Error::other(e.to_string()))
            })
        });
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing unused journal segments failed; they stay until the next deletion");
        }
    }

    /// Total bytes of the journal (and older feature files).
    pub fn journal_bytes_on_disk(&self) -> Result<u64, StoreError> {
        Ok(crate::journal::bytes_in(self.data_dir())?)
    }

    /// The data directory the store lives in.
    fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

impl Store for SqliteStore {
    fn save_definition(&self, definition: &ExperimentDef) -> Result<(), StoreError> {
        let json = serde_json::to_string(definition)
            .map_err(|e| StoreError::Corrupt { id: definition.id.clone(), reason: e.to_string() })?;
        self.connection()?.execute(
            "INSERT INTO experiments (id, definition) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET definition = excluded.definition",
            params![definition.id, json],
        )?;
        Ok(())
    }

    fn delete_experiment(&self, id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let tx = connection.transaction()?;
        tx.execute("DELETE FROM snapshots WHERE experiment_id = ?1", params![id])?;
        tx.execute("DELETE FROM log WHERE experiment_id = ?1", params![id])?;
        tx.execute("DELETE FROM experiments WHERE id = ?1", params![id])?;
        tx.commit()?;
        self.remove_unreferenced_segments(&connection);
        snapshot_files::remove_older(&self.snapshots_dir(), id, None);
        Ok(())
    }

    fn save_snapshots(&self, snapshots: &[Snapshot]) -> Result<(), StoreError> {
        if snapshots.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection()?;
        let tx = connection.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO snapshots (experiment_id, sequence, state)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM experiments WHERE id = ?1)
                 ON CONFLICT(experiment_id) DO UPDATE SET sequence = excluded.sequence, state = excluded.state",
            )?;
            for snapshot in snapshots {
                // SQLite integers are i64; a sequence beyond i64::MAX would take millennia to reach.
                let sequence = i64::try_from(snapshot.sequence).unwrap_or(i64::MAX);
                insert.execute(params![snapshot.experiment_id, sequence, snapshot.state])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load(&self) -> Result<Vec<StoredExperiment>, StoreError> {
        let connection = self.connection()?;
        let ids = {
            let mut select = connection.prepare("SELECT id FROM experiments ORDER BY id")?;
            select.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(stored) = load_one(&connection, &mut self.journal(), &self.snapshots_dir(), &id)? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    fn load_experiment(&self, id: &str) -> Result<Option<StoredExperiment>, StoreError> {
        let connection = self.connection()?;
        load_one(&connection, &mut self.journal(), &self.snapshots_dir(), id)
    }

    fn disk_usage(&self) -> Vec<(&'static str, u64)> {
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let wal = self.path.with_file_name(format!("{DATABASE_FILE}-wal"));
        let features = crate::journal::bytes_in(self.data_dir()).unwrap_or(0);
        let snapshots = std::fs::read_dir(self.snapshots_dir())
            .map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum());
        vec![("database", size(&self.path)), ("wal", size(&wal)), ("features", features), ("snapshots", snapshots)]
    }

    fn unsynced_records(&self) -> Option<usize> {
        self.unsynced.as_ref().map(|rows| rows.lock_queue().records)
    }

    fn commit_answering(&self, writes: &[Write], durable: OnDurable) -> Result<(), StoreError> {
        if writes.is_empty() {
            durable();
            return Ok(());
        }
        let journaled = writes.iter().all(|w| matches!(w, Write::Log(_)));
        if journaled && let Some(rows) = &self.unsynced {
            return self.commit_unsynced(rows, writes, durable);
        }
        let mut connection = self.connection()?;
        let mut journal = self.journal();
        journal.discard();
        let feature_refs = frame_records(&mut journal, writes)?;
        let journal_end = journal.end_after_sync();
        // Log records alone are durable once their frames are synced, so their rows commit without a sync
        // (synchronous = NORMAL). Admin and snapshot writes keep SQLite's own sync.
        if journaled {
            connection.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
        let committed = (|| {
            let mut compacted = false;
            let tx = connection.transaction()?;
            // The frames go to disk (write + fdatasync) on the journal's own thread while this one inserts the
            // rows; that thread also says the log records are durable as soon as they are. The rows commit only
            // after the frames are on disk, so a committed row never points at bytes that are not.
            journal.start_sync(if journaled { Some(durable) } else { None })?;
            let inserted = insert_writes(&tx, writes, &feature_refs, &mut LiveExperiments::default(), &mut compacted)
                .and_then(|()| journal_end.map_or(Ok(()), |end| set_journal_position(&tx, end)));
            let synced = journal.finish_sync();
            // Frames of a group whose callers hear that it failed must never be replayed. Log records whose
            // frames were synced have been answered already: they stay, and a replay puts their rows in.
            let revoke = |journal: &mut Journal| {
                if journaled {
                    return;
                }
                if let Err(e) = journal.revoke_last_group() {
                    tracing::error!(error = %e, "cannot take back a failed group's journal frames");
                }
            };
            if let Err(e) = inserted {
                if synced.is_ok() {
                    revoke(&mut journal);
                }
                return Err(e);
            }
            synced?;
            if let Err(e) = tx.commit() {
                revoke(&mut journal);
                return Err(e.into());
            }
            Ok::<bool, StoreError>(compacted)
        })();
        drop(journal);
        if journaled {
            restore_full_sync(&connection);
        }
        if committed? {
            self.remove_unreferenced_segments(&connection);
        }
        restart_wal_if_asked(&connection, &self.restart_wal);
        Ok(())
    }

    fn read_log(
        &self,
        experiment: Option<&str>,
        visit: &mut dyn FnMut(LogRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let connection = self.connection()?;
        let mut journal = self.journal();
        // One read transaction, so the rows and the journal position they reach are of one moment.
        let tx = connection.unchecked_transaction()?;
        let mut tail = journal_tail(&tx, &mut journal, experiment)?.into_iter().peekable();
        let mut select = tx.prepare(&format!(
            "SELECT {LOG_COLUMNS} FROM log WHERE (?1 IS NULL OR experiment_id = ?1) ORDER BY experiment_id, sequence"
        ))?;
        let mut rows = select.query(params![experiment])?;
        while let Some(row) = rows.next()? {
            let record = record_from_row(row, &mut journal)?;
            let key = (record.experiment_id.as_str(), record.sequence);
            while let Some(((id, sequence), _)) = tail.peek() {
                match (id.as_str(), *sequence).cmp(&key) {
                    std::cmp::Ordering::Less => visit(tail.next().expect("peeked").1)?,
                    // The same record (its row and its frame both kept): the row is it.
                    std::cmp::Ordering::Equal => drop(tail.next()),
                    std::cmp::Ordering::Greater => break,
                }
            }
            visit(record)?;
        }
        for (_, record) in tail {
            visit(record)?;
        }
        Ok(())
    }

    fn audit_entries(&self, experiment: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let connection = self.connection()?;
        let mut select = connection.prepare(
            "SELECT unix_ms, actor, action, experiment_id, before, after FROM audit
             WHERE (?1 IS NULL OR experiment_id = ?1) ORDER BY id",
        )?;
        let entries = select
            .query_map(params![experiment], |row| {
                Ok(AuditEntry {
                    unix_ms: row.get(0)?,
                    actor: row.get(1)?,
                    action: row.get(2)?,
                    experiment_id: row.get(3)?,
                    before: row.get(4)?,
                    after: row.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(entries)
    }

    fn save_episodic(&self, id: &str, config_json: &str) -> Result<(), StoreError> {
        self.connection()?.execute(
            "INSERT INTO episodic_experiments (id, config) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET config = excluded.config",
            params![id, config_json],
        )?;
        Ok(())
    }

    fn delete_episodic(&self, id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let tx = connection.transaction()?;
        tx.execute("DELETE FROM snapshots WHERE experiment_id = ?1", params![id])?;
        tx.execute("DELETE FROM log WHERE experiment_id = ?1", params![id])?;
        tx.execute("DELETE FROM episodic_experiments WHERE id = ?1", params![id])?;
        tx.commit()?;
        self.remove_unreferenced_segments(&connection);
        snapshot_files::remove_older(&self.snapshots_dir(), id, None);
        Ok(())
    }

    fn load_episodic(&self) -> Result<Vec<StoredEpisodic>, StoreError> {
        let connection = self.connection()?;
        let rows = {
            let mut select = connection.prepare("SELECT id, config FROM episodic_experiments ORDER BY id")?;
            select
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, config) in rows {
            let (snapshot, log) = snapshot_and_log(&connection, &mut self.journal(), &self.snapshots_dir(), &id)?;
            out.push(StoredEpisodic { id, config, snapshot, log });
        }
        Ok(out)
    }

    fn recent_log(&self, experiment: &str, limit: usize) -> Result<Vec<LogRecord>, StoreError> {
        let connection = self.connection()?;
        let mut journal = self.journal();
        let mut select = connection.prepare_cached(&format!(
            "SELECT {LOG_COLUMNS} FROM log WHERE experiment_id = ?1 ORDER BY sequence DESC LIMIT ?2"
        ))?;
        let mut rows = select.query(params![experiment, i64::try_from(limit).unwrap_or(i64::MAX)])?;
        let mut records = Vec::new();
        while let Some(row) = rows.next()? {
            records.push(record_from_row(row, &mut journal)?);
        }
        records.reverse();
        Ok(records)
    }

    fn stage_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot, StoreError> {
        if snapshot.state.len() < snapshot_files::FILE_THRESHOLD {
            return Ok(snapshot);
        }
        let state =
            snapshot_files::stage(&self.snapshots_dir(), &snapshot.experiment_id, snapshot.sequence, &snapshot.state)
                .map_err(|source| StoreError::DataDir { path: self.snapshots_dir(), source })?;
        Ok(Snapshot { state, ..snapshot })
    }

    fn snapshot_committed(&self, experiment_id: &str, sequence: u64) {
        let dir = self.snapshots_dir();
        snapshot_files::remove_older(&dir, experiment_id, Some(sequence));
        // Deleted while the file was being written (after the deletion removed the experiment's files): the
        // row was not inserted, so the file is nobody's.
        if snapshot_files::is_staged(&dir, experiment_id, sequence) {
            let exists = self.connection().and_then(|c| LiveExperiments::default().contains(&c, experiment_id));
            if matches!(exists, Ok(false)) {
                snapshot_files::remove_older(&dir, experiment_id, None);
            }
        }
    }

    fn probe(&self) -> Result<(), StoreError> {
        // As it is: clearing a failure to commit acknowledged rows is what this is for.
        let mut connection = self.lock_connection();
        let tx = connection.transaction()?;
        tx.execute("INSERT OR REPLACE INTO probe (id) VALUES (1)", [])?;
        tx.commit()?;
        // Held through the replay, so no record is acknowledged (and queued) between the replay and the reset.
        let mut queue = self.unsynced.as_ref().map(|rows| rows.lock_queue());
        let mut journal = self.journal();
        journal.probe()?;
        journal.sync_written()?;
        // A commit that failed after its frames were written (and its callers answered) left them out of the
        // tables: put them in before anything is rebuilt from the tables. That covers every queued row too.
        replay_journal(&mut connection, &mut journal)?;
        if let Some(queue) = &mut queue {
            **queue = UnsyncedQueue::default();
        }
        Ok(())
    }
}

const LOG_COLUMNS: &str = "experiment_id, sequence, unix_ms, kind, decision_id, event_id, action, baseline, \
                           num_actions, propensity, played_baseline, reward, alpha, features, detail, \
                           features_file, features_offset, features_length, features_crc32";

/// Adds the feature-file columns to a log table created before them (SQLite has no ADD COLUMN IF NOT
/// EXISTS), and the index that finds whether a feature file is still in use.
fn add_feature_file_columns(connection: &Connection) -> Result<(), StoreError> {
    let present: Vec<String> = connection
        .prepare("SELECT name FROM pragma_table_info('log')")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for column in ["features_file", "features_offset", "features_length", "features_crc32"] {
        if !present.iter().any(|p| p == column) {
            connection.execute_batch(&format!("ALTER TABLE log ADD COLUMN {column} INTEGER"))?;
        }
    }
    connection.execute_batch(
        "CREATE INDEX IF NOT EXISTS log_features_file ON log (features_file) WHERE features_file IS NOT NULL",
    )?;
    Ok(())
}

/// SQLite integers are i64; a sequence beyond i64::MAX would take millennia to reach.
fn to_sql_sequence(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

/// The columns of a log row after (experiment, sequence, time, kind); those left `None` are NULL.
#[derive(Default)]
struct LogColumns<'a> {
    decision_id: Option<i64>,
    event_id: Option<&'a str>,
    action: Option<i64>,
    baseline: Option<i64>,
    num_actions: Option<i64>,
    propensity: Option<f64>,
    played_baseline: Option<bool>,
    reward: Option<f64>,
    alpha: Option<f64>,
    features: Option<FeatureRef>,
    detail: Option<String>,
}

/// Inserts a log row; [`LiveExperiments`] says first whether its experiment still exists. A plain single-row
/// INSERT: SQLite needs no statement journal for it (an `INSERT ... SELECT ... WHERE EXISTS` did, and looked
/// the experiment up twice per row).
const INSERT_LOG: &str =
    "INSERT INTO log (experiment_id, sequence, unix_ms, kind, decision_id, event_id, action, baseline,
                      num_actions, propensity, played_baseline, reward, alpha, features_file,
                      features_offset, features_length, features_crc32, detail)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// Which experiments a transaction's log rows may go to: a record queued while its experiment was deleted
/// is dropped. Nothing creates or deletes an experiment inside a transaction that inserts log rows (those
/// changes take the connection), so each experiment is looked up once per transaction, not once per row.
#[derive(Default)]
struct LiveExperiments {
    known: HashMap<String, bool>,
}

impl LiveExperiments {
    fn contains(&mut self, tx: &Connection, id: &str) -> Result<bool, StoreError> {
        if let Some(&live) = self.known.get(id) {
            return Ok(live);
        }
        let live = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM experiments WHERE id = ?1)
                     OR EXISTS (SELECT 1 FROM episodic_experiments WHERE id = ?1)",
            )?
            .query_row([id], |row| row.get(0))?;
        self.known.insert(id.to_owned(), live);
        Ok(live)
    }
}

/// Frames every log record of `writes` into the journal with its features, and says where each decision's
/// features will be (what its row points at; `None` for other writes).
fn frame_records(journal: &mut Journal, writes: &[Write]) -> Result<Vec<Option<FeatureRef>>, StoreError> {
    let mut feature_refs = Vec::with_capacity(writes.len());
    for write in writes {
        feature_refs.push(match write {
            Write::Log(record) => {
                let encode = &mut |buffer: &mut Vec<u8>| encode_journal_record(buffer, record);
                match &record.entry {
                    LogEntry::Decision(d) if d.features_f32 => {
                        Some(journal.append_frame(encode, &mut |buffer| encode_features_f32(&d.features, buffer))?)
                    }
                    LogEntry::Decision(d) => {
                        Some(journal.append_frame(encode, &mut |buffer| {
                            buffer.extend_from_slice(&feature_bytes(&d.features))
                        })?)
                    }
                    _ => {
                        journal.append_frame(encode, &mut |_| {})?;
                        None
                    }
                }
            }
            _ => None,
        });
    }
    Ok(feature_refs)
}

/// A log record's journal payload: MessagePack with field names (the features follow it in the frame).
fn encode_journal_record(buffer: &mut Vec<u8>, record: &LogRecord) -> Result<(), String> {
    rmp_serde::encode::write_named(buffer, record).map_err(|e| e.to_string())
}

fn set_journal_position(tx: &Connection, (file, offset): JournalPosition) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT OR REPLACE INTO journal (id, file, offset) VALUES (1, ?1, ?2)")?
        .execute(params![file, offset as i64])?;
    Ok(())
}

/// Where the journal stops being in the log table (`None`: no record was ever committed).
fn recorded_journal_position(connection: &Connection) -> Result<Option<JournalPosition>, StoreError> {
    Ok(connection
        .query_row("SELECT file, offset FROM journal WHERE id = 1", [], |row| {
            Ok((row.get::<_, u32>(0)?, row.get::<_, i64>(1)? as u64))
        })
        .optional()?)
}

/// The log records of `experiment` (every experiment's when `None`) that the journal holds past the
/// position the database records: records a crash kept out of the log table until the next writable open
/// replays them, or whose rows wait for a sync interval. Keyed as the table orders its rows, so a reader
/// can merge them in. Changes nothing: a server may be writing meanwhile.
fn journal_tail(
    tx: &Connection,
    journal: &mut Journal,
    experiment: Option<&str>,
) -> Result<BTreeMap<(String, u64), LogRecord>, StoreError> {
    let from = recorded_journal_position(tx)?;
    let mut live = LiveExperiments::default();
    let mut framed = Vec::new();
    journal.scan::<StoreError>(from, &mut |payload, at| {
        let record: LogRecord = rmp_serde::from_slice(payload).map_err(|e| StoreError::Corrupt {
            id: format!("journal segment {}", at.file),
            reason: format!("a frame's record does not decode: {e}"),
        })?;
        let wanted = experiment.is_none_or(|id| id == record.experiment_id);
        if wanted && live.contains(tx, &record.experiment_id)? {
            framed.push((record, at));
        }
        Ok(())
    })?;
    let mut tail = BTreeMap::new();
    for (mut record, at) in framed {
        if let LogEntry::Decision(decision) = &mut record.entry {
            let corrupt = |reason: String| StoreError::Corrupt { id: record.experiment_id.clone(), reason };
            let bytes = journal.read(at).map_err(|e| corrupt(format!("log record {}: {e}", record.sequence)))?;
            decision.features = decode_logged_features(&bytes, decision.features_f32)
                .ok_or_else(|| corrupt(format!("log record {}: bad features", record.sequence)))?;
        }
        tail.insert((record.experiment_id.clone(), record.sequence), record);
    }
    Ok(tail)
}

/// Inserts the journal's frames after the recorded position into the log table (records whose rows did not
/// reach the database before a crash or a failed commit), records the new position, and commits durably.
fn replay_journal(connection: &mut Connection, journal: &mut Journal) -> Result<(), StoreError> {
    let from = recorded_journal_position(connection)?;
    let tx = connection.transaction()?;
    let (mut replayed, mut skipped) = (0_u64, 0_u64);
    let end = {
        // A row already there is the same record (its frame and its row were both kept): leave it.
        let mut insert = tx.prepare(&format!("{INSERT_LOG} ON CONFLICT DO NOTHING"))?;
        let mut live = LiveExperiments::default();
        journal.replay::<StoreError>(from, &mut |payload, at| {
            let record: LogRecord = rmp_serde::from_slice(payload).map_err(|e| StoreError::Corrupt {
                id: format!("journal segment {}", at.file),
                reason: format!("a frame's record does not decode: {e}"),
            })?;
            let at = matches!(record.entry, LogEntry::Decision(_)).then_some(at);
            if live.contains(&tx, &record.experiment_id)? {
                insert_record(&mut insert, &record, at)?;
                replayed += 1;
            } else {
                skipped += 1;
            }
            Ok(())
        })?
    };
    if let Some(end) = end
        && Some(end) != from
    {
        set_journal_position(&tx, end)?;
    }
    tx.commit()?;
    if replayed > 0 || skipped > 0 {
        tracing::warn!(
            records = replayed,
            of_deleted_experiments = skipped,
            "replayed log records from the journal into the database (those of deleted experiments left out)"
        );
    }
    Ok(())
}

/// Inserts a commit's rows into `tx` (not committed): log records, audit entries, snapshots.
fn insert_writes(
    tx: &Connection,
    writes: &[Write],
    feature_refs: &[Option<FeatureRef>],
    live: &mut LiveExperiments,
    compacted: &mut bool,
) -> Result<(), StoreError> {
    let mut insert_log = tx.prepare_cached(INSERT_LOG)?;
    let mut insert_snapshot = tx.prepare_cached(
        "INSERT INTO snapshots (experiment_id, sequence, state)
         SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM experiments WHERE id = ?1)
                              OR EXISTS (SELECT 1 FROM episodic_experiments WHERE id = ?1)
         ON CONFLICT(experiment_id) DO UPDATE SET sequence = excluded.sequence, state = excluded.state",
    )?;
    let mut compact = tx.prepare_cached("DELETE FROM log WHERE experiment_id = ?1 AND sequence <= ?2")?;
    let mut audit = tx.prepare_cached(
        "INSERT INTO audit (unix_ms, actor, action, experiment_id, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (write, at) in writes.iter().zip(feature_refs) {
        match write {
            Write::Audit(e) => {
                audit.execute(params![e.unix_ms, e.actor, e.action, e.experiment_id, e.before, e.after])?;
            }
            Write::Log(record) => {
                if live.contains(tx, &record.experiment_id)? {
                    insert_record(&mut insert_log, record, *at)?;
                }
            }
            Write::Snapshot { snapshot, compact: drop_log } => {
                let sequence = to_sql_sequence(snapshot.sequence);
                insert_snapshot.execute(params![snapshot.experiment_id, sequence, snapshot.state])?;
                if *drop_log {
                    compact.execute(params![snapshot.experiment_id, sequence])?;
                    *compacted = true;
                }
            }
        }
    }
    Ok(())
}

fn insert_record(
    insert: &mut rusqlite::Statement<'_>,
    record: &LogRecord,
    features: Option<FeatureRef>,
) -> Result<(), StoreError> {
    let id = record.experiment_id.as_str();
    let corrupt = |e: serde_json::Error| StoreError::Corrupt { id: id.to_owned(), reason: e.to_string() };
    let corrupt_record = |reason: &str| StoreError::Corrupt { id: id.to_owned(), reason: reason.to_owned() };
    let detail = |json: Result<String, serde_json::Error>| json.map(Some).map_err(corrupt);
    let columns = match &record.entry {
        LogEntry::Decision(d) => LogColumns {
            decision_id: Some(d.decision_id as i64),
            event_id: Some(&d.event_id),
            action: Some(d.action as i64),
            baseline: Some(d.baseline as i64),
            num_actions: Some(d.num_actions as i64),
            propensity: Some(d.propensity),
            played_baseline: Some(d.played_baseline),
            features: Some(features.ok_or_else(|| corrupt_record("a decision without its features' place"))?),
            detail: detail(serde_json::to_string(d))?,
            ..LogColumns::default()
        },
        LogEntry::Reward { decision_id, event_id, value } => LogColumns {
            decision_id: Some(*decision_id as i64),
            event_id: Some(event_id),
            reward: Some(*value),
            ..LogColumns::default()
        },
        LogEntry::Timeout { decision_id } => {
            LogColumns { decision_id: Some(*decision_id as i64), ..LogColumns::default() }
        }
        LogEntry::EpisodeStart(start) => {
            LogColumns { detail: detail(serde_json::to_string(start))?, ..LogColumns::default() }
        }
        LogEntry::Step(step) => LogColumns { detail: detail(serde_json::to_string(step))?, ..LogColumns::default() },
        LogEntry::EpisodeEnd { episode } => {
            LogColumns { detail: detail(serde_json::to_string(episode))?, ..LogColumns::default() }
        }
        LogEntry::ClearDrift => LogColumns::default(),
        LogEntry::Paused { paused } => LogColumns { played_baseline: Some(*paused), ..LogColumns::default() },
        LogEntry::Alpha { alpha } => LogColumns { alpha: Some(*alpha), ..LogColumns::default() },
    };
    insert.execute(params![
        id,
        to_sql_sequence(record.sequence),
        record.unix_ms,
        record.entry.kind(),
        columns.decision_id,
        columns.event_id,
        columns.action,
        columns.baseline,
        columns.num_actions,
        columns.propensity,
        columns.played_baseline,
        columns.reward,
        columns.alpha,
        columns.features.map(|f| f.file),
        columns.features.map(|f| f.offset as i64),
        columns.features.map(|f| f.length),
        columns.features.map(|f| f.crc32),
        columns.detail
    ])?;
    Ok(())
}

fn record_from_row(row: &rusqlite::Row<'_>, journal: &mut Journal) -> Result<LogRecord, StoreError> {
    let experiment_id: String = row.get(0)?;
    let sequence: i64 = row.get(1)?;
    let unix_ms: i64 = row.get(2)?;
    let kind: String = row.get(3)?;
    let corrupt = |reason: String| StoreError::Corrupt { id: experiment_id.clone(), reason };
    let decision_id = || -> Result<u64, StoreError> {
        let id: Option<i64> = row.get(4)?;
        id.map(|v| v as u64).ok_or_else(|| corrupt(format!("log record {sequence} ({kind}) has no decision id")))
    };
    let entry = match kind.as_str() {
        "decision" => {
            let detail: String = row.get(14)?;
            let mut record: DecisionRecord =
                serde_json::from_str(&detail).map_err(|e| corrupt(format!("log record {sequence}: {e}")))?;
            let blob = match row.get::<_, Option<Vec<u8>>>(13)? {
                Some(inline) => inline,
                None => {
                    let at = FeatureRef {
                        file: row.get(15)?,
                        offset: row.get::<_, i64>(16)?.max(0) as u64,
                        length: row.get(17)?,
                        crc32: row.get(18)?,
                    };
                    journal.read(at).map_err(|e| corrupt(format!("log record {sequence}: {e}")))?
                }
            };
            record.features = decode_logged_features(&blob, record.features_f32)
                .ok_or_else(|| corrupt(format!("log record {sequence}: bad features")))?;
            LogEntry::Decision(Box::new(record))
        }
        "reward" => LogEntry::Reward {
            decision_id: decision_id()?,
            event_id: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            value: row.get::<_, Option<f64>>(11)?.ok_or_else(|| corrupt(format!("reward {sequence} has no value")))?,
        },
        "timeout" => LogEntry::Timeout { decision_id: decision_id()? },
        "clear_drift" => LogEntry::ClearDrift,
        "paused" => LogEntry::Paused {
            paused: row
                .get::<_, Option<bool>>(10)?
                .ok_or_else(|| corrupt(format!("pause record {sequence} has no value")))?,
        },
        "episode_start" | "step" | "episode_end" => {
            let detail: String = row.get(14)?;
            let bad = |e: serde_json::Error| corrupt(format!("log record {sequence} ({kind}): {e}"));
            match kind.as_str() {
                "episode_start" => {
                    LogEntry::EpisodeStart(serde_json::from_str::<EpisodeStartRecord>(&detail).map_err(bad)?)
                }
                "step" => LogEntry::Step(serde_json::from_str::<StepRecord>(&detail).map_err(bad)?),
                _ => LogEntry::EpisodeEnd { episode: serde_json::from_str(&detail).map_err(bad)? },
            }
        }
        "alpha" => LogEntry::Alpha {
            alpha: row.get::<_, Option<f64>>(12)?.ok_or_else(|| corrupt(format!("alpha {sequence} has no value")))?,
        },
        other => return Err(corrupt(format!("log record {sequence} has unknown kind '{other}'"))),
    };
    Ok(LogRecord { experiment_id: experiment_id.clone(), sequence: sequence.max(0) as u64, unix_ms, entry })
}

/// One experiment's definition, snapshot and log after the snapshot.
fn load_one(
    connection: &Connection,
    journal: &mut Journal,
    snapshots: &Path,
    id: &str,
) -> Result<Option<StoredExperiment>, StoreError> {
    let json: Option<String> = connection
        .query_row("SELECT definition FROM experiments WHERE id = ?1", params![id], |row| row.get(0))
        .optional()?;
    let Some(json) = json else { return Ok(None) };
    let definition: ExperimentDef =
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt { id: id.to_owned(), reason: e.to_string() })?;
    let (snapshot, log) = snapshot_and_log(connection, journal, snapshots, id)?;
    Ok(Some(StoredExperiment { definition, snapshot, log }))
}

/// Removes the snapshot files no snapshot row references (staged for a commit that never happened, or
/// replaced before they could be removed). Only the first bytes of each state are read: a reference is short.
fn remove_unreferenced_snapshot_files(connection: &Connection, dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut select = connection.prepare("SELECT substr(state, 1, 1024) FROM snapshots")?;
    let heads = select.query_map([], |row| row.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
    snapshot_files::remove_unreferenced(dir, heads.iter().map(Vec::as_slice));
    Ok(())
}

/// An experiment's latest snapshot and its log after the snapshot.
fn snapshot_and_log(
    connection: &Connection,
    journal: &mut Journal,
    snapshots: &Path,
    id: &str,
) -> Result<(Option<Snapshot>, Vec<LogRecord>), StoreError> {
    let stored = connection
        .query_row("SELECT sequence, state FROM snapshots WHERE experiment_id = ?1", params![id], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    let snapshot = match stored {
        Some((sequence, state)) => Some(Snapshot {
            experiment_id: id.to_owned(),
            sequence: sequence.max(0) as u64,
            state: snapshot_files::resolve(snapshots, state)
                .map_err(|reason| StoreError::Corrupt { id: id.to_owned(), reason })?,
        }),
        None => None,
    };
    let after = snapshot.as_ref().map_or(0, |s| to_sql_sequence(s.sequence));
    let mut select = connection.prepare_cached(&format!(
        "SELECT {LOG_COLUMNS} FROM log WHERE experiment_id = ?1 AND sequence > ?2 ORDER BY sequence"
    ))?;
    let mut rows = select.query(params![id, after])?;
    let mut log = Vec::new();
    while let Some(row) = rows.next()? {
        log.push(record_from_row(row, journal)?);
    }
    Ok((snapshot, log))
}

/// A [`Store`] that keeps nothing: every write succeeds and is forgotten, every load is empty. For measuring
/// what durability costs, and for runs whose state may die with the process.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn save_definition(&self, _definition: &ExperimentDef) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_experiment(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn save_snapshots(&self, _snapshots: &[Snapshot]) -> Result<(), StoreError> {
        Ok(())
    }
    fn load(&self) -> Result<Vec<StoredExperiment>, StoreError> {
        Ok(Vec::new())
    }
    fn load_experiment(&self, _id: &str) -> Result<Option<StoredExperiment>, StoreError> {
        Ok(None)
    }
    fn commit_answering(&self, _writes: &[Write], durable: OnDurable) -> Result<(), StoreError> {
        durable();
        Ok(())
    }
    fn read_log(
        &self,
        _experiment: Option<&str>,
        _visit: &mut dyn FnMut(LogRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn recent_log(&self, _experiment: &str, _limit: usize) -> Result<Vec<LogRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn is_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use safebet_engine::{Algorithm, Layout, PolicyConfig};

    use super::*;

    fn def(id: &str) -> ExperimentDef {
        ExperimentDef {
            id: id.into(),
            policy: PolicyConfig::new(Algorithm::Clucb, Layout::Shared { dim: 3 }),
            reward_timeout_ms: 0,
            action_ids: vec![],
            paused: false,
            created_unix_ms: 7,
            feature_precision: crate::FeaturePrecision::F64,
        }
    }

    #[test]
    fn definitions_and_snapshots_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("b")).unwrap();
            store.save_definition(&def("a")).unwrap();
            let mut paused = def("a");
            paused.paused = true;
            store.save_definition(&paused).unwrap();
            store
                .save_snapshots(&[Snapshot { experiment_id: "a".into(), sequence: 3, state: b"abc".to_vec() }])
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].definition.id, "a");
        assert!(loaded[0].definition.paused);
        assert_eq!(loaded[0].snapshot.as_ref().unwrap().state, b"abc");
        assert_eq!(loaded[0].snapshot.as_ref().unwrap().sequence, 3);
        assert!(loaded[1].snapshot.is_none());
    }

    #[test]
    fn the_wal_starts_over_under_a_writer_that_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        // A bound of 256 frames (about 1 MiB): each commit below writes about 10 pages.
        let store = SqliteStore::open_with_wal_bound(dir.path(), 256).unwrap();
        store.save_definition(&def("a")).unwrap();
        let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
        let started = std::time::Instant::now();
        let (mut sequence, mut largest) = (0u64, 0u64);
        // Commit back to back for 1.5 s (several checkpoint passes), as a saturated writer does.
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            let writes: Vec<Write> = (0..8)
                .map(|_| {
                    sequence += 1;
                    Write::Log(LogRecord {
                        experiment_id: "a".into(),
                        sequence,
                        unix_ms: 0,
                        entry: LogEntry::Reward { decision_id: sequence, event_id: "e".repeat(4000), value: 0.5 },
                    })
                })
                .collect();
            store.commit(&writes).unwrap();
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        let written = sequence * 4000;
        assert!(written > 20 << 20, "only {written} bytes written: the test did not load the WAL");
        // Without restarts the WAL would hold everything written; with them it stays near the bound plus what
        // one 200 ms pass lets through.
        assert!(largest < written / 3, "WAL reached {largest} bytes for {written} bytes of log");
        let mut count = 0;
        store
            .read_log(Some("a"), &mut |_| {
                count += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(count, sequence, "every record is still in the log");
    }

    #[test]
    fn large_snapshots_live_in_files_that_follow_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join(snapshot_files::SNAPSHOTS_DIR);
        let count = || std::fs::read_dir(&files).map_or(0, |entries| entries.count());
        let state = |seed: u8| -> Vec<u8> { (0..3_000_000u32).map(|i| (i as u8).wrapping_mul(seed)).collect() };
        let snapshot = |sequence, seed| Snapshot { experiment_id: "a".into(), sequence, state: state(seed) };
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            let staged = store.stage_snapshot(snapshot(5, 3)).unwrap();
            assert!(staged.state.len() < 200, "the row holds a reference");
            store.commit(&[Write::Snapshot { snapshot: staged, compact: false }]).unwrap();
            store.snapshot_committed("a", 5);
            assert_eq!(store.load_experiment("a").unwrap().unwrap().snapshot, Some(snapshot(5, 3)));
            // A newer one replaces it; the older file goes once the newer row is committed.
            let newer = store.stage_snapshot(snapshot(9, 7)).unwrap();
            assert_eq!(count(), 2);
            store.commit(&[Write::Snapshot { snapshot: newer, compact: false }]).unwrap();
            store.snapshot_committed("a", 9);
            assert_eq!(count(), 1);
            // Staged, never committed (a crash before the writer got to it): removed at the next open.
            store.stage_snapshot(snapshot(12, 11)).unwrap();
            // Small states stay in their row.
            let small = Snapshot { experiment_id: "a".into(), sequence: 13, state: vec![1, 2, 3] };
            assert_eq!(store.stage_snapshot(small.clone()).unwrap(), small);
            assert_eq!(count(), 2);
        }
        let reader = SqliteStore::open_read_only(dir.path()).unwrap();
        assert_eq!(reader.load_experiment("a").unwrap().unwrap().snapshot, Some(snapshot(9, 7)));
        assert_eq!(count(), 2, "a reader removes nothing");
        drop(reader);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(count(), 1, "the uncommitted file is gone");
        assert_eq!(store.load_experiment("a").unwrap().unwrap().snapshot, Some(snapshot(9, 7)));
        // A damaged file is reported, not loaded.
        let name = std::fs::read_dir(&files).unwrap().next().unwrap().unwrap().path();
        let mut bytes = std::fs::read(&name).unwrap();
        bytes[1000] ^= 0xff;
        std::fs::write(&name, &bytes).unwrap();
        assert!(matches!(store.load_experiment("a"), Err(StoreError::Corrupt { .. })));
        store.delete_experiment("a").unwrap();
        assert_eq!(count(), 0, "deleting the experiment deletes its files");
        // Deleted while its snapshot was being staged (the file written after the deletion removed the
        // experiment's files): the row is dropped, and the file with it.
        store.save_definition(&def("a")).unwrap();
        store.delete_experiment("a").unwrap();
        let staged = store.stage_snapshot(snapshot(20, 5)).unwrap();
        store.commit(&[Write::Snapshot { snapshot: staged, compact: false }]).unwrap();
        assert_eq!(count(), 1);
        store.snapshot_committed("a", 20);
        assert_eq!(count(), 0, "a late snapshot's file goes with its row");
        assert!(store.load_experiment("a").unwrap().is_none());
    }

    #[test]
    fn a_late_snapshot_never_resurrects_a_deleted_experiment() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.save_definition(&def("a")).unwrap();
        store.delete_experiment("a").unwrap();
        store.save_snapshots(&[Snapshot { experiment_id: "a".into(), sequence: 1, state: vec![1] }]).unwrap();
        assert!(store.load().unwrap().is_empty());
        let connection = store.connection().unwrap();
        let count: i64 = connection.query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 0);
    }

    #[test]
    fn late_log_records_of_a_deleted_experiment_are_dropped() {
        // With the default sync and with records acknowledged before the sync (their rows commit later).
        for interval in [None, Some(Duration::from_secs(3600))] {
            let dir = tempfile::tempdir().unwrap();
            let opened = SqliteStore::open(dir.path()).unwrap();
            let store = match interval {
                Some(interval) => opened.with_sync_interval(interval),
                None => opened,
            };
            store.save_definition(&def("a")).unwrap();
            store.save_definition(&def("b")).unwrap();
            let record = |id: &str, sequence| LogRecord {
                experiment_id: id.into(),
                sequence,
                unix_ms: 0,
                entry: LogEntry::Timeout { decision_id: sequence },
            };
            store.commit(&[Write::Log(record("a", 1))]).unwrap();
            store.delete_experiment("a").unwrap();
            // Calls that were deciding as "a" was deleted: their records must not haunt a new "a", and must
            // not take the records of "b" committed with them down.
            let group = [record("b", 1), record("a", 2), record("b", 2), record("a", 3)].map(Write::Log);
            store.commit(&group).unwrap();
            store.save_definition(&def("a")).unwrap();
            assert_eq!(store.load_experiment("a").unwrap().unwrap().log, vec![], "{interval:?}");
            let b_log = store.load_experiment("b").unwrap().unwrap().log;
            assert_eq!(b_log, vec![record("b", 1), record("b", 2)], "{interval:?}");
        }
    }
    /// A decision of an f32 experiment: its features rounded to f32, logged as floats.
    fn decision_f32(sequence: u64, mut features: Vec<f64>) -> LogRecord {
        crate::log::round_to_f32(&mut features).unwrap();
        let mut record = decision(sequence, features);
        if let LogEntry::Decision(d) = &mut record.entry {
            d.features_f32 = true;
        }
        record
    }

    fn decision(sequence: u64, features: Vec<f64>) -> LogRecord {
        LogRecord {
            experiment_id: "a".into(),
            sequence,
            unix_ms: 5,
            entry: LogEntry::Decision(Box::new(DecisionRecord {
                decision_id: sequence,
                event_id: format!("#{sequence}"),
                client_event_id: false,
                num_actions: 2,
                features,
                features_f32: false,
                layout: Some(safebet_engine::FeatureLayout::Shared),
                round_action_ids: Vec::new(),
                baseline: 0,
                baseline_expected_reward: None,
                paused: false,
                action: 1,
                action_id: String::new(),
                proposed_action: 1,
                propensity: 1.0,
                propensity_estimated: false,
                fallback: safebet_engine::Fallback::None,
                played_baseline: false,
                model_version: sequence,
            })),
        }
    }

    #[test]
    fn decision_features_live_in_the_journal_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // Doubles, and every third record floats (an f32 experiment's: 4 bytes a value in the journal).
        let records: Vec<LogRecord> = (1..=20)
            .map(|i| match i % 3 {
                0 => decision_f32(i, vec![i as f64, -0.0, 1e-40, 3e38, 0.1, -(i as f64)]),
                _ => decision(i, vec![i as f64, -0.0, f64::MIN_POSITIVE / 2.0, 1e300, 0.1, -(i as f64)]),
            })
            .collect();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            // Two groups, as two commits of the writer.
            store.commit(&records[..7].iter().cloned().map(Write::Log).collect::<Vec<_>>()).unwrap();
            store.commit(&records[7..].iter().cloned().map(Write::Log).collect::<Vec<_>>()).unwrap();
            let inline: i64 = store
                .connection()
                .unwrap()
                .query_row("SELECT COUNT(*) FROM log WHERE features IS NOT NULL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(inline, 0, "no feature bytes in the rows");
            // Each record framed once in the journal: its features plus a header and the row's fields.
            let bytes = store.journal_bytes_on_disk().unwrap();
            let feature_bytes = 14 * 6 * 8 + 6 * 6 * 4;
            assert!((feature_bytes..feature_bytes + 20 * 1024).contains(&bytes), "{bytes} bytes");
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let loaded = store.load_experiment("a").unwrap().unwrap().log;
        let bits = |records: &[LogRecord]| -> Vec<Vec<u64>> {
            records
                .iter()
                .map(|r| match &r.entry {
                    LogEntry::Decision(d) => d.features.iter().map(|v| v.to_bits()).collect(),
                    other => panic!("not a decision: {other:?}"),
                })
                .collect()
        };
        assert_eq!(loaded.len(), 20);
        assert_eq!(bits(&loaded), bits(&records), "every feature bit for bit");
        assert_eq!(store.recent_log("a", 3).unwrap().len(), 3);
    }

    #[test]
    fn log_rows_from_before_the_feature_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let old = decision(1, vec![0.25, -1.5]);
        {
            // The log table as it was: features inside the row, no feature-file columns.
            let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            connection
                .execute_batch(
                    "CREATE TABLE experiments (id TEXT PRIMARY KEY NOT NULL, definition TEXT NOT NULL);
                     CREATE TABLE log (experiment_id TEXT NOT NULL, sequence INTEGER NOT NULL,
                        unix_ms INTEGER NOT NULL, kind TEXT NOT NULL, decision_id INTEGER, event_id TEXT,
                        action INTEGER, baseline INTEGER, num_actions INTEGER, propensity REAL,
                        played_baseline INTEGER, reward REAL, alpha REAL, features BLOB, detail TEXT,
                        PRIMARY KEY (experiment_id, sequence));",
                )
                .unwrap();
            connection
                .execute(
                    "INSERT INTO experiments (id, definition) VALUES ('a', ?1)",
                    params![serde_json::to_string(&def("a")).unwrap()],
                )
                .unwrap();
            let LogEntry::Decision(d) = &old.entry else { unreachable!() };
            connection
                .execute(
                    "INSERT INTO log (experiment_id, sequence, unix_ms, kind, decision_id, event_id, action,
                                      baseline, num_actions, propensity, played_baseline, features, detail)
                     VALUES ('a', 1, 5, 'decision', 1, '#1', 1, 0, 2, 1.0, 0, ?1, ?2)",
                    params![crate::log::encode_features(&d.features), serde_json::to_string(d).unwrap()],
                )
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let new = decision(2, vec![3.0, 4.0]);
        store.commit(&[Write::Log(new.clone())]).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, vec![old, new]);
    }

    #[test]
    fn a_store_from_before_the_journal_loads_and_takes_new_records() {
        // The previous version kept features in `features/NNNNNNNN.f64le` (bytes back to back, no frames)
        // and had no journal position. Such a store, written by hand here as that version wrote it.
        let dir = tempfile::tempdir().unwrap();
        let old = decision(1, vec![0.5, -2.0, 1e-300]);
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            let LogEntry::Decision(d) = &old.entry else { unreachable!() };
            let bytes = crate::log::encode_features(&d.features);
            let features_dir = dir.path().join(crate::journal::FEATURES_DIR);
            std::fs::write(features_dir.join("00000007.f64le"), [vec![9; 16], bytes.clone()].concat()).unwrap();
            let connection = store.connection().unwrap();
            connection
                .execute(
                    "INSERT INTO log (experiment_id, sequence, unix_ms, kind, decision_id, event_id, action,
                                      baseline, num_actions, propensity, played_baseline, detail, features_file,
                                      features_offset, features_length, features_crc32)
                     VALUES ('a', 1, 5, 'decision', 1, '#1', 1, 0, 2, 1.0, 0, ?1, 7, 16, ?2, ?3)",
                    params![serde_json::to_string(d).unwrap(), bytes.len() as i64, crc32fast::hash(&bytes)],
                )
                .unwrap();
            connection.execute("DELETE FROM journal", []).unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, vec![old.clone()]);
        let new = decision(2, vec![3.0]);
        store.commit(&[Write::Log(new.clone())]).unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, vec![old, new]);
        assert_eq!(
            journal_files(dir.path()),
            ["00000007.f64le", "00000008.seg"],
            "old file kept, new records in a new segment"
        );
    }

    #[test]
    fn damaged_feature_bytes_are_reported_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            store.commit(&[Write::Log(decision(1, vec![1.0, 2.0]))]).unwrap();
        }
        let file = dir.path().join(crate::journal::FEATURES_DIR).join("00000001.seg");
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 3; // in the features, which end the frame
        bytes[last] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
        let error = SqliteStore::open(dir.path()).unwrap().load_experiment("a").unwrap_err();
        assert!(matches!(&error, StoreError::Corrupt { id, .. } if id == "a"), "{error}");
        assert!(error.to_string().contains("checksum"), "{error}");
    }
    #[test]
    fn deletions_and_compactions_remove_only_the_segments_no_row_points_into() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.journal().set_max_file_bytes(64); // a new file after every group of more than 64 bytes
        store.save_definition(&def("a")).unwrap();
        store.save_definition(&def("b")).unwrap();
        let group = |id: &str, from: u64| -> Vec<Write> {
            (from..from + 3)
                .map(|i| {
                    let mut record = decision(i, vec![i as f64; 6]);
                    record.experiment_id = id.into();
                    Write::Log(record)
                })
                .collect()
        };
        store.commit(&group("a", 1)).unwrap(); // file 1
        store.commit(&group("b", 1)).unwrap(); // file 2
        store.commit(&group("a", 4)).unwrap(); // file 3, the newest
        let files = || journal_files(dir.path());
        assert_eq!(files(), ["00000001.seg", "00000002.seg", "00000003.seg"]);
        store.delete_experiment("a").unwrap();
        // a's first file goes; b's stays; the newest stays (it is being appended to).
        assert_eq!(files(), ["00000002.seg", "00000003.seg"]);
        let b = store.load_experiment("b").unwrap().unwrap().log;
        assert_eq!(b.len(), 3, "b's features still read");
        // A compacting snapshot that covers all of b's log frees b's file.
        let snapshot = Snapshot { experiment_id: "b".into(), sequence: 3, state: vec![1] };
        store.commit(&[Write::Snapshot { snapshot, compact: true }]).unwrap();
        assert_eq!(files(), ["00000003.seg"]);
        assert!(store.load_experiment("b").unwrap().unwrap().log.is_empty());
    }

    /// The names in the journal's directory, sorted.
    fn journal_files(data_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir.join(crate::journal::FEATURES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn reward(sequence: u64, decision_id: u64, value: f64) -> LogRecord {
        LogRecord {
            experiment_id: "a".into(),
            sequence,
            unix_ms: 7,
            entry: LogEntry::Reward { decision_id, event_id: format!("#{decision_id}"), value },
        }
    }

    fn journal_position(store: &SqliteStore) -> (u32, i64) {
        store
            .connection()
            .unwrap()
            .query_row("SELECT file, offset FROM journal", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    }

    #[test]
    fn log_rows_lost_from_the_database_are_replayed_from_the_journal() {
        // Log rows commit without a sync of their own: a crash can lose the last few transactions of the
        // database (rows and journal position together) while their frames are on disk. Simulated here by
        // taking the rows and the position back by hand.
        let dir = tempfile::tempdir().unwrap();
        let records =
            vec![decision(1, vec![1.0, 2.0]), reward(2, 1, 0.5), decision_f32(3, vec![-0.0, 0.1]), reward(4, 3, 0.25)];
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            store.commit(&[Write::Log(records[0].clone()), Write::Log(records[1].clone())]).unwrap();
            let after_first = journal_position(&store);
            let durable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = durable.clone();
            store
                .commit_answering(
                    &[Write::Log(records[2].clone()), Write::Log(records[3].clone())],
                    Box::new(move || {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }),
                )
                .unwrap();
            assert_eq!(durable.load(Ordering::SeqCst), 1, "log records are declared durable once");
            let connection = store.connection().unwrap();
            connection.execute("DELETE FROM log WHERE sequence > 2", []).unwrap();
            connection
                .execute("UPDATE journal SET file = ?1, offset = ?2", params![after_first.0, after_first.1])
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, records, "every record, features bit for bit");
        // The replay moved the position to the journal's end: a second open replays nothing twice.
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, records);
        // Appends continue after the replayed frames.
        let next = decision(5, vec![5.0]);
        store.commit(&[Write::Log(next.clone())]).unwrap();
        drop(store);
        let log = SqliteStore::open(dir.path()).unwrap().load_experiment("a").unwrap().unwrap().log;
        assert_eq!(log.last(), Some(&next));
        assert_eq!(log.len(), 5);
    }

    #[test]
    fn a_reader_sees_the_journal_tail_a_crash_kept_out_of_the_table() {
        // After a crash the journal holds records whose rows never committed; `safebet log` (read-only, no
        // replay) must show them, merged in order, each once, and none of a deleted experiment.
        let dir = tempfile::tempdir().unwrap();
        let of = |id: &str, mut record: LogRecord| {
            record.experiment_id = id.into();
            record
        };
        let first = [of("a", decision(1, vec![1.0, 2.0])), of("b", decision(1, vec![3.0])), of("c", reward(1, 1, 0.1))];
        let second = [
            of("a", decision_f32(2, vec![0.1, -0.0])),
            of("b", reward(2, 1, 0.5)),
            of("a", reward(3, 2, 0.25)),
            of("c", reward(2, 1, 0.2)),
        ];
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            for id in ["a", "b", "c"] {
                store.save_definition(&def(id)).unwrap();
            }
            store.commit(&first.clone().map(Write::Log)).unwrap();
            let after_first = journal_position(&store);
            store.commit(&second.clone().map(Write::Log)).unwrap();
            store.delete_experiment("c").unwrap();
            // The crash: the second group's rows and position lost, except a:3's row (a row and its frame
            // both kept, as after a failed commit's replay).
            let connection = store.connection().unwrap();
            connection.execute("DELETE FROM log WHERE (experiment_id, sequence) IN (('a', 2), ('b', 2))", []).unwrap();
            connection
                .execute("UPDATE journal SET file = ?1, offset = ?2", params![after_first.0, after_first.1])
                .unwrap();
        }
        let reader = SqliteStore::open_read_only(dir.path()).unwrap();
        let read = |experiment: Option<&str>| {
            let mut records = Vec::new();
            reader
                .read_log(experiment, &mut |record| {
                    records.push(record);
                    Ok(())
                })
                .unwrap();
            records
        };
        let (a, b) =
            (vec![first[0].clone(), second[0].clone(), second[2].clone()], vec![first[1].clone(), second[1].clone()]);
        assert_eq!(read(Some("a")), a, "features bit for bit, the kept row once");
        assert_eq!(read(Some("b")), b);
        assert_eq!(read(None), [a.clone(), b.clone()].concat(), "ordered by experiment then sequence");
        assert_eq!(read(Some("c")), vec![], "a deleted experiment's frames stay out");
        // The reader changed nothing: a writable open replays the same records into the table.
        drop(reader);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, a);
        assert_eq!(store.load_experiment("b").unwrap().unwrap().log, b);
    }

    #[test]
    fn log_records_answered_before_their_rows_failed_to_insert_are_kept() {
        // The journal thread answers a group's callers the moment its frames are synced, while the rows are
        // still being inserted. If an insert then fails (disk full, a constraint), the callers have heard
        // "durable": the frames must stay, for the recovery to put the rows in.
        let dir = tempfile::tempdir().unwrap();
        let records = vec![decision(1, vec![1.0]), decision(2, vec![2.0]), reward(3, 2, 0.5)];
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            store.commit(&[Write::Log(records[0].clone())]).unwrap();
            store
                .connection()
                .unwrap()
                .execute_batch(
                    "CREATE TRIGGER refuse BEFORE INSERT ON log WHEN NEW.sequence = 3
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
                )
                .unwrap();
            let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = answered.clone();
            let outcome = store.commit_answering(
                &[Write::Log(records[1].clone()), Write::Log(records[2].clone())],
                Box::new(move || flag.store(true, Ordering::SeqCst)),
            );
            assert!(outcome.is_err(), "the rows did not commit");
            assert!(answered.load(Ordering::SeqCst), "the callers were told their records are durable");
            store.connection().unwrap().execute_batch("DROP TRIGGER refuse").unwrap();
            // What the service does before it takes writes again.
            store.probe().unwrap();
            assert_eq!(store.load_experiment("a").unwrap().unwrap().log, records, "replayed by the recovery");
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, records, "and still there after a reopen");
    }

    #[test]
    fn with_a_sync_interval_records_are_acknowledged_once_written_and_their_rows_commit_with_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![decision(1, vec![1.0, 2.0]), reward(2, 1, 0.5), decision(3, vec![3.0])];
        let store = SqliteStore::open(dir.path()).unwrap().with_sync_interval(Duration::from_secs(3600));
        store.save_definition(&def("a")).unwrap();
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for record in &records[..2] {
            let counter = answered.clone();
            store
                .commit_answering(
                    &[Write::Log(record.clone())],
                    Box::new(move || {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }),
                )
                .unwrap();
        }
        assert_eq!(answered.load(Ordering::SeqCst), 2, "each group is acknowledged");
        // Another reader (an analyst's sqlite3) does not see rows whose frames may not be on disk yet...
        let reader = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        let rows =
            |reader: &Connection| reader.query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(rows(&reader), 0);
        // ...while the frames are in the journal, for a restart after a crash of the process to replay.
        let segment = dir.path().join(crate::journal::FEATURES_DIR).join("00000001.seg");
        let mut journal = Journal::open(dir.path()).unwrap();
        let mut framed = 0;
        journal
            .replay::<StoreError>(None, &mut |_, _| {
                framed += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(framed, 2, "both records framed in {}", segment.display());
        // Any other use of the store commits them first.
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, records[..2]);
        assert_eq!(rows(&reader), 2);
        store.commit(&[Write::Log(records[2].clone())]).unwrap();
        store.save_definition(&def("b")).unwrap();
        assert_eq!(rows(&reader), 3, "an admin change commits the open transaction first");
        assert_eq!(store.load_experiment("a").unwrap().unwrap().log, records);
        store.commit(&[Write::Log(decision(4, vec![4.0]))]).unwrap();
        drop(store);
        assert_eq!(rows(&reader), 4, "dropping the store syncs what it acknowledged");
        let log = SqliteStore::open(dir.path()).unwrap().load_experiment("a").unwrap().unwrap().log;
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn with_a_sync_interval_the_sync_thread_commits_rows_and_a_failed_commit_waits_for_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap().with_sync_interval(Duration::from_millis(5));
        store.save_definition(&def("a")).unwrap();
        let reader = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        let rows =
            |reader: &Connection| reader.query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0)).unwrap();
        store.commit(&[Write::Log(decision(1, vec![1.0]))]).unwrap();
        let waited = std::time::Instant::now();
        while rows(&reader) < 1 {
            assert!(waited.elapsed() < Duration::from_secs(10), "the sync thread never committed the row");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A row that cannot be inserted: its record was acknowledged, so it must come back, and nothing may be
        // acknowledged or committed past it meanwhile.
        reader
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON log WHEN NEW.sequence = 2
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .unwrap();
        store.commit(&[Write::Log(decision(2, vec![2.0]))]).unwrap();
        // Reading commits the queued rows first (unless the sync thread got there before): either way it fails.
        assert!(store.load_experiment("a").is_err(), "reads wait for the replay");
        let refused = store.commit(&[Write::Log(decision(3, vec![3.0]))]).unwrap_err();
        assert!(matches!(refused, StoreError::Unsynced(_)), "no record is acknowledged past the failure: {refused}");
        assert!(store.save_definition(&def("b")).is_err(), "nor anything else committed");
        reader.execute_batch("DROP TRIGGER refuse").unwrap();
        store.probe().unwrap();
        store.commit(&[Write::Log(decision(3, vec![3.0]))]).unwrap();
        let log = store.load_experiment("a").unwrap().unwrap().log;
        assert_eq!(log.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(log[1], decision(2, vec![2.0]), "replayed with its features");
    }

    #[test]
    fn a_read_only_store_reads_what_the_database_holds_and_changes_nothing() {
        // What `safebet log` sees beside a running server: rows not committed yet (their frames at the
        // journal's end, maybe half written). Replaying or cutting them there would race the server; the
        // reader merges the intact frames in memory and stops at the torn one.
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            store.commit(&[Write::Log(decision(1, vec![1.0, 2.0]))]).unwrap();
            let before = journal_position(&store);
            store.commit(&[Write::Log(decision(2, vec![3.0]))]).unwrap();
            let connection = store.connection().unwrap();
            connection.execute("DELETE FROM log WHERE sequence = 2", []).unwrap();
            connection.execute("UPDATE journal SET file = ?1, offset = ?2", params![before.0, before.1]).unwrap();
        }
        let segment = dir.path().join(crate::journal::FEATURES_DIR).join("00000001.seg");
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&bytes.clone()[..30]);
        std::fs::write(&segment, &bytes).unwrap();

        let reader = SqliteStore::open_read_only(dir.path()).unwrap();
        let mut read = Vec::new();
        reader
            .read_log(None, &mut |record| {
                read.push(record);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            read,
            [decision(1, vec![1.0, 2.0]), decision(2, vec![3.0])],
            "the committed row and the journal's intact tail, features included"
        );
        assert!(reader.save_definition(&def("b")).is_err(), "it cannot write");
        drop(reader);
        assert_eq!(std::fs::read(&segment).unwrap(), bytes, "the journal's tail is left as it is");
        let rows: i64 = Connection::open(dir.path().join(DATABASE_FILE))
            .unwrap()
            .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "nothing replayed");
        // The next server replays them.
        let log = SqliteStore::open(dir.path()).unwrap().load_experiment("a").unwrap().unwrap().log;
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn one_writer_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.save_definition(&def("a")).unwrap();
        let second = SqliteStore::open(dir.path()).unwrap_err();
        assert!(matches!(second, StoreError::InUse(_)), "{second}");
        assert!(second.to_string().contains("in use by another process"), "{second}");
        // Readers are welcome.
        assert!(SqliteStore::open_read_only(dir.path()).unwrap().load_experiment("a").unwrap().is_some());
        drop(store);
        SqliteStore::open(dir.path()).unwrap();
    }

    #[test]
    fn replay_skips_deleted_experiments_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.save_definition(&def("a")).unwrap();
            store.save_definition(&def("gone")).unwrap();
            let mut gone = decision(1, vec![9.0]);
            gone.experiment_id = "gone".into();
            store.commit(&[Write::Log(decision(1, vec![1.0]))]).unwrap();
            let before = journal_position(&store);
            store.commit(&[Write::Log(gone), Write::Log(decision(2, vec![2.0]))]).unwrap();
            // As if the crash took back the last log commit, after "gone" was deleted.
            let connection = store.connection().unwrap();
            connection.execute("DELETE FROM log WHERE experiment_id = 'a' AND sequence = 2", []).unwrap();
            connection.execute("UPDATE journal SET file = ?1, offset = ?2", params![before.0, before.1]).unwrap();
            drop(connection);
            store.delete_experiment("gone").unwrap();
        }
        // And half a frame written after the end.
        let segment = dir.path().join(crate::journal::FEATURES_DIR).join("00000001.seg");
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&bytes.clone()[..30]);
        std::fs::write(&segment, &bytes).unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(store.load_experiment("gone").unwrap().is_none(), "a deleted experiment stays deleted");
        let log = store.load_experiment("a").unwrap().unwrap().log;
        assert_eq!(log.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, bytes.len() - 30, "the torn tail is cut");
    }
}
