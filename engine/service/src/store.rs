//! Where experiments outlive the process: definitions (written on every admin change) and learner snapshots
//! (written periodically and on graceful shutdown), reloaded on start.
//!
//! The service talks to storage only through the [`Store`] trait, so a durable decision log (every decision
//! and reward committed before it is acknowledged, snapshots taken atomically with the log position) can
//! replace or extend [`SqliteStore`] without touching the gRPC layer. Each snapshot already carries its
//! experiment's `sequence`, the position in the experiment's ordered history of decisions, rewards and
//! timeouts that the snapshot includes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::definition::ExperimentDef;

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
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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

/// One experiment as stored: its definition and its latest snapshot, if one was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExperiment {
    /// The definition as of the latest admin change.
    pub definition: ExperimentDef,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
}

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
}

/// [`Store`] on an embedded SQLite database (`safebet.sqlite3` in the data directory), in WAL mode with
/// `synchronous = FULL`, so a committed change survives a power cut. No external server is needed.
#[derive(Debug)]
pub struct SqliteStore {
    /// One connection: writes are rare (admin changes, periodic snapshots), so serialising them costs nothing
    /// and keeps SQLite's locking out of the picture.
    connection: Mutex<Connection>,
    path: PathBuf,
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
";

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(DATABASE_FILE);
        let connection = Connection::open(&path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(SqliteStore { connection: Mutex::new(connection), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll back), so the
        // connection stays usable.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for SqliteStore {
    fn save_definition(&self, definition: &ExperimentDef) -> Result<(), StoreError> {
        let json = serde_json::to_string(definition)
            .map_err(|e| StoreError::Corrupt { id: definition.id.clone(), reason: e.to_string() })?;
        self.connection().execute(
            "INSERT INTO experiments (id, definition) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET definition = excluded.definition",
            params![definition.id, json],
        )?;
        Ok(())
    }

    fn delete_experiment(&self, id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let tx = connection.transaction()?;
        tx.execute("DELETE FROM snapshots WHERE experiment_id = ?1", params![id])?;
        tx.execute("DELETE FROM experiments WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    fn save_snapshots(&self, snapshots: &[Snapshot]) -> Result<(), StoreError> {
        if snapshots.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection();
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
        let connection = self.connection();
        let mut select = connection.prepare("SELECT id, definition FROM experiments ORDER BY id")?;
        let rows = select
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut snapshot_query =
            connection.prepare("SELECT sequence, state FROM snapshots WHERE experiment_id = ?1")?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, json) in rows {
            let definition: ExperimentDef = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt { id: id.clone(), reason: e.to_string() })?;
            let snapshot = snapshot_query
                .query_row(params![id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)))
                .optional()?
                .map(|(sequence, state)| Snapshot {
                    experiment_id: id.clone(),
                    sequence: sequence.max(0) as u64,
                    state,
                });
            out.push(StoredExperiment { definition, snapshot });
        }
        Ok(out)
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
    fn a_late_snapshot_never_resurrects_a_deleted_experiment() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.save_definition(&def("a")).unwrap();
        store.delete_experiment("a").unwrap();
        store.save_snapshots(&[Snapshot { experiment_id: "a".into(), sequence: 1, state: vec![1] }]).unwrap();
        assert!(store.load().unwrap().is_empty());
        let connection = store.connection();
        let count: i64 = connection.query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 0);
    }
}
