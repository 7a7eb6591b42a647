//! Large snapshot states live in files beside the database (`snapshots/<experiment>@<sequence>.sbm`). The
//! flush task writes and syncs the file on its own thread, then commits through the log writer a row that
//! only references it (its name, length and CRC-32). A state of tens of megabytes (many pending decisions)
//! then no longer holds the writer, and every log group queued behind it, for its SQLite insert: 93-311 ms for
//! 38-53 MB here (BENCHMARKS.md, "What a snapshot costs under load").

use std::collections::HashSet;
use std::io::{self, Write as _};
use std::path::Path;

/// The directory of snapshot files, inside the data directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// States at least this large are written to a file; smaller ones stay in their row.
pub const FILE_THRESHOLD: usize = 1 << 20;

/// Marks a stored state that references a file: then the CRC-32 and length of the file (little-endian u32
/// and u64) and its name.
const FILE_STATE: &[u8; 4] = b"SBf1";

const EXTENSION: &str = ".sbm";

/// The file of `experiment_id`'s state at `sequence`. Experiment ids never contain '@'.
fn file_name(experiment_id: &str, sequence: u64) -> String {
    format!("{experiment_id}@{sequence:020}{EXTENSION}")
}

/// The experiment and sequence of a snapshot file's name.
fn parse_file_name(name: &str) -> Option<(&str, u64)> {
    let (experiment_id, rest) = name.strip_suffix(EXTENSION)?.rsplit_once('@')?;
    Some((experiment_id, rest.parse().ok()?))
}

/// Writes `state` to its file in `dir` (a temporary name, synced, renamed, the directory synced) and returns
/// the reference to store in its place.
pub fn stage(dir: &Path, experiment_id: &str, sequence: u64, state: &[u8]) -> io::Result<Vec<u8>> {
    std::fs::create_dir_all(dir)?;
    let name = file_name(experiment_id, sequence);
    let temporary = dir.join(format!("{name}.tmp"));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(state)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, dir.join(&name))?;
    std::fs::File::open(dir)?.sync_all()?;
    let mut reference = FILE_STATE.to_vec();
    reference.extend_from_slice(&crc32fast::hash(state).to_le_bytes());
    reference.extend_from_slice(&(state.len() as u64).to_le_bytes());
    reference.extend_from_slice(name.as_bytes());
    Ok(reference)
}

/// The name of the file a stored state references, if it references one.
fn referenced_name(stored: &[u8]) -> Option<&str> {
    let rest = stored.strip_prefix(FILE_STATE)?;
    std::str::from_utf8(rest.get(12..)?).ok()
}

/// The state a stored snapshot holds: itself, or the content of the file it references, checked against the
/// length and CRC-32 recorded with the reference.
pub fn resolve(dir: &Path, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    let Some(name) = referenced_name(&stored) else {
        return Ok(stored);
    };
    // referenced_name found at least 16 bytes.
    let crc = u32::from_le_bytes(stored[4..8].try_into().expect("4 bytes"));
    let length = u64::from_le_bytes(stored[8..16].try_into().expect("8 bytes"));
    let path = dir.join(name);
    let state = std::fs::read(&path).map_err(|e| format!("snapshot file {}: {e}", path.display()))?;
    if state.len() as u64 != length || crc32fast::hash(&state) != crc {
        return Err(format!(
            "snapshot file {} is damaged: {} bytes where {length} were written, or a CRC-32 mismatch",
            path.display(),
            state.len()
        ));
    }
    Ok(state)
}

/// Removes `experiment_id`'s files for sequences before `sequence` (a snapshot at `sequence` is committed),
/// or all of them with `None` (the experiment is deleted). Failures only leave disk space in use.
pub fn remove_older(dir: &Path, experiment_id: &str, sequence: Option<u64>) {
    remove_where(dir, |name| {
        parse_file_name(name).is_some_and(|(id, at)| id == experiment_id && sequence.is_none_or(|s| at < s))
    });
}

/// Whether `experiment_id`'s state at `sequence` is in a file of `dir`.
pub fn is_staged(dir: &Path, experiment_id: &str, sequence: u64) -> bool {
    dir.join(file_name(experiment_id, sequence)).exists()
}

/// Removes every file (and leftover temporary file) that no stored state references: written for a
/// snapshot whose commit never happened (a crash, a failed commit), or replaced before it could be removed.
pub fn remove_unreferenced<'a>(dir: &Path, stored_states: impl IntoIterator<Item = &'a [u8]>) {
    let referenced: HashSet<&str> = stored_states.into_iter().filter_map(referenced_name).collect();
    remove_where(dir, |name| !referenced.contains(name));
}

fn remove_where(dir: &Path, remove: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if (name.ends_with(EXTENSION) || name.ends_with(".tmp"))
            && remove(name)
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a snapshot file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_state_resolves_to_its_bytes_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let reference = stage(dir.path(), "exp.1", 42, &state).unwrap();
        assert!(reference.len() < 100, "a reference, not the state");
        assert_eq!(resolve(dir.path(), reference.clone()).unwrap(), state);
        // Inline states pass through.
        assert_eq!(resolve(dir.path(), b"SBm1abc".to_vec()).unwrap(), b"SBm1abc");
        let path = dir.path().join(file_name("exp.1", 42));
        let mut damaged = state.clone();
        damaged[500] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert!(resolve(dir.path(), reference.clone()).unwrap_err().contains("damaged"));
        std::fs::remove_file(&path).unwrap();
        assert!(resolve(dir.path(), reference).unwrap_err().contains("snapshot file"));
    }

    #[test]
    fn older_and_unreferenced_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let a1 = stage(dir.path(), "a", 1, b"one").unwrap();
        let a2 = stage(dir.path(), "a", 2, b"two").unwrap();
        let ab = stage(dir.path(), "a-b", 1, b"other").unwrap();
        let b = stage(dir.path(), "b", 9, b"bee").unwrap();
        std::fs::write(dir.path().join("c@00000000000000000001.sbm.tmp"), b"torn").unwrap();
        std::fs::write(dir.path().join("README"), b"not ours").unwrap();
        remove_older(dir.path(), "a", Some(2));
        assert!(resolve(dir.path(), a1).is_err());
        assert_eq!(resolve(dir.path(), a2.clone()).unwrap(), b"two");
        assert_eq!(resolve(dir.path(), ab.clone()).unwrap(), b"other", "another experiment's prefix");
        remove_unreferenced(dir.path(), [&a2[..], &ab[..], b"SBm1inline"]);
        assert!(resolve(dir.path(), b.clone()).is_err(), "unreferenced");
        assert!(!dir.path().join("c@00000000000000000001.sbm.tmp").exists());
        assert!(dir.path().join("README").exists());
        remove_older(dir.path(), "a", None);
        assert!(resolve(dir.path(), a2).is_err());
        assert_eq!(resolve(dir.path(), ab).unwrap(), b"other");
    }
}
