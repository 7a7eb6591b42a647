//! The book of pending decisions: values keyed by decision id, where ids are handed out in increasing order
//! and most are resolved a little later.
//!
//! A hash map doubles its table as it grows, moving every entry into a fresh allocation: at 460,000 pending
//! decisions that is a 26 MB table written at once (about 30 ms here, most of it the kernel zeroing the new
//! pages), under the experiment's lock, with every decision of the experiment waiting. The book instead
//! keeps the recent ids in fixed chunks of [`CHUNK`] slots, indexed by `id / CHUNK`, so growing allocates
//! one chunk at a time and nothing already stored moves. A chunk that empties is reused. Ids far from the
//! rest (a decision whose reward never comes, while later ones are resolved) move to a small hash map once
//! their chunk would otherwise stay alive only for them.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

/// Ids per chunk.
pub const CHUNK: usize = 1024;

/// Chunks the window may span before a sparse front chunk's entries move to the outliers.
const WINDOW_BEFORE_MIGRATION: usize = 8;

/// A front chunk with at most this many live entries counts as sparse.
const SPARSE: usize = CHUNK / 8;

/// Ids beyond the window's end by more than this many chunks go to the outliers instead of stretching it.
const MAX_GAP_CHUNKS: u64 = 64;

type DeterministicHasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

#[derive(Debug, Clone)]
struct Chunk<V> {
    slots: Vec<Option<V>>,
    live: usize,
}

impl<V> Chunk<V> {
    fn new() -> Box<Chunk<V>> {
        Box::new(Chunk { slots: std::iter::repeat_with(|| None).take(CHUNK).collect(), live: 0 })
    }
}

/// Values keyed by id (see the module documentation). Iteration order is unspecified.
#[derive(Debug, Clone)]
pub(crate) struct PendingBook<V> {
    /// `id / CHUNK` of `chunks[0]`.
    first_chunk: u64,
    /// The window: `None` for a chunk with no live entry between live ones.
    chunks: VecDeque<Option<Box<Chunk<V>>>>,
    /// Entries outside the window.
    outliers: HashMap<u64, V, DeterministicHasher>,
    len: usize,
    /// An emptied chunk kept for the next one needed, so a steady stream allocates nothing.
    spare: Option<Box<Chunk<V>>>,
    /// Whether an outlier may lie beyond the window's end (where a later extension would cover it). An id
    /// lives in one place only: the window's slot or the outliers.
    outliers_ahead: bool,
}

impl<V> Default for PendingBook<V> {
    fn default() -> Self {
        PendingBook {
            first_chunk: 0,
            chunks: VecDeque::new(),
            outliers: HashMap::default(),
            len: 0,
            spare: None,
            outliers_ahead: false,
        }
    }
}

impl<V> PendingBook<V> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The window position of `id`'s chunk, if the window covers it.
    fn position(&self, id: u64) -> Option<usize> {
        let chunk = id / CHUNK as u64;
        let offset = chunk.checked_sub(self.first_chunk)?;
        (offset < self.chunks.len() as u64).then_some(offset as usize)
    }

    /// Whether `id` has an entry.
    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// The entry of `id`.
    pub fn get(&self, id: u64) -> Option<&V> {
        match self.position(id) {
            Some(at) => self.chunks[at].as_ref()?.slots[id as usize % CHUNK].as_ref(),
            None => self.outliers.get(&id),
        }
    }

    /// Stores `value` under `id`, replacing what was there.
    pub fn insert(&mut self, id: u64, value: V) {
        let chunk = id / CHUNK as u64;
        if self.chunks.is_empty() {
            self.first_chunk = chunk;
        }
        let end = self.first_chunk + self.chunks.len() as u64;
        if chunk < self.first_chunk || chunk >= end + MAX_GAP_CHUNKS {
            self.outliers_ahead |= chunk >= end;
            if self.outliers.insert(id, value).is_none() {
                self.len += 1;
            }
            return;
        }
        if chunk >= end {
            self.chunks.extend(std::iter::repeat_with(|| None).take((chunk - end) as usize + 1));
            if self.outliers_ahead {
                self.take_covered_outliers();
            }
            self.trim_front();
            self.migrate_sparse_front();
        }
        let block = self.chunk_at((chunk - self.first_chunk) as usize);
        let slot = &mut block.slots[id as usize % CHUNK];
        let added = slot.is_none();
        *slot = Some(value);
        if added {
            block.live += 1;
            self.len += 1;
        }
    }

    /// Moves the outliers the window now covers into it (rare: only ids inserted far ahead of the others).
    fn take_covered_outliers(&mut self) {
        let (start, end) =
            (self.first_chunk * CHUNK as u64, (self.first_chunk + self.chunks.len() as u64) * CHUNK as u64);
        let covered: Vec<u64> = self.outliers.keys().copied().filter(|id| (start..end).contains(id)).collect();
        for id in covered {
            if let Some(value) = self.outliers.remove(&id) {
                let block = self.chunk_at((id / CHUNK as u64 - self.first_chunk) as usize);
                block.slots[id as usize % CHUNK] = Some(value);
                block.live += 1;
            }
        }
        self.outliers_ahead = self.outliers.keys().any(|&id| id >= end);
    }

    /// The chunk at window position `at`, the spare (or a new one) put there if it has none.
    fn chunk_at(&mut self, at: usize) -> &mut Chunk<V> {
        let spare = &mut self.spare;
        self.chunks[at].get_or_insert_with(|| spare.take().unwrap_or_else(Chunk::new))
    }

    /// Keeps an emptied chunk as the spare, if there is none yet.
    fn recycle(&mut self, block: Option<Box<Chunk<V>>>) {
        if self.spare.is_none() {
            self.spare = block;
        }
    }

    /// Takes the entry of `id` out.
    pub fn remove(&mut self, id: u64) -> Option<V> {
        let Some(at) = self.position(id) else {
            let value = self.outliers.remove(&id)?;
            self.len -= 1;
            return Some(value);
        };
        let block = self.chunks[at].as_mut()?;
        let value = block.slots[id as usize % CHUNK].take()?;
        block.live -= 1;
        self.len -= 1;
        // An emptied chunk goes (kept as the spare), unless it is the last: new ids land there next.
        if block.live == 0 && at + 1 < self.chunks.len() {
            let emptied = self.chunks[at].take();
            self.recycle(emptied);
            self.trim_front();
        }
        Some(value)
    }

    /// Drops the window's leading chunks that hold nothing (keeping the last).
    fn trim_front(&mut self) {
        while self.chunks.len() > 1
            && self.chunks.front().is_some_and(|front| front.as_ref().is_none_or(|b| b.live == 0))
        {
            let front = self.chunks.pop_front().flatten();
            self.recycle(front);
            self.first_chunk += 1;
        }
    }

    /// While the window is long and its front chunk holds few live entries (decisions left behind by later
    /// ones), moves them to the outliers and drops the chunk.
    fn migrate_sparse_front(&mut self) {
        while self.chunks.len() > WINDOW_BEFORE_MIGRATION {
            let sparse = match self.chunks.front() {
                Some(Some(block)) => block.live <= SPARSE,
                Some(None) => true,
                None => false,
            };
            if !sparse {
                return;
            }
            let first = self.first_chunk * CHUNK as u64;
            if let Some(Some(mut block)) = self.chunks.pop_front() {
                for (offset, slot) in block.slots.iter_mut().enumerate() {
                    if let Some(value) = slot.take() {
                        self.outliers.insert(first + offset as u64, value);
                    }
                }
                block.live = 0;
                self.recycle(Some(block));
            }
            self.first_chunk += 1;
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        let first = self.first_chunk * CHUNK as u64;
        let window = self.chunks.iter().enumerate().flat_map(move |(at, block)| {
            block.iter().flat_map(move |block| {
                block.slots.iter().enumerate().filter_map(move |(offset, slot)| {
                    slot.as_ref().map(|value| (first + (at * CHUNK + offset) as u64, value))
                })
            })
        });
        window.chain(self.outliers.iter().map(|(id, value)| (*id, value)))
    }

    /// Every entry in increasing id order.
    pub fn sorted(&self) -> Vec<(u64, &V)> {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        entries
    }
}

impl<V> FromIterator<(u64, V)> for PendingBook<V> {
    fn from_iter<I: IntoIterator<Item = (u64, V)>>(entries: I) -> Self {
        let mut book = PendingBook::default();
        for (id, value) in entries {
            book.insert(id, value);
        }
        book
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Operations on the book, checked against a plain map.
    #[derive(Debug, Clone)]
    enum Op {
        /// Insert the next id (as a policy does), then maybe skip some ids.
        Next { skip: u16 },
        /// Remove the entry this far back from the newest id.
        RemoveBack(u32),
        /// Insert an arbitrary id (a deserialised state).
        Insert(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..3).prop_map(|skip| Op::Next { skip }),
            1 => (0u16..3000).prop_map(|skip| Op::Next { skip }),
            6 => (0u32..5000).prop_map(Op::RemoveBack),
            1 => prop_oneof![0u64..100_000, Just(u64::MAX), Just(1 << 60)].prop_map(Op::Insert),
        ]
    }

    proptest! {
        #[test]
        fn the_book_behaves_as_a_map(ops in proptest::collection::vec(op(), 1..3000)) {
            let mut book = PendingBook::default();
            let mut model = std::collections::BTreeMap::new();
            let mut next = 0u64;
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Next { skip } => {
                        book.insert(next, step);
                        model.insert(next, step);
                        next += 1 + u64::from(skip);
                    }
                    Op::RemoveBack(back) => {
                        let id = next.saturating_sub(u64::from(back) + 1);
                        prop_assert_eq!(book.remove(id), model.remove(&id));
                    }
                    Op::Insert(id) => {
                        book.insert(id, step);
                        model.insert(id, step);
                    }
                }
                prop_assert_eq!(book.len(), model.len());
            }
            let entries: Vec<(u64, usize)> = book.sorted().into_iter().map(|(id, v)| (id, *v)).collect();
            prop_assert_eq!(entries, model.iter().map(|(id, v)| (*id, *v)).collect::<Vec<_>>());
            for (id, value) in &model {
                prop_assert_eq!(book.get(*id), Some(value));
            }
            prop_assert!(!book.contains(next + 7));
        }
    }

    #[test]
    fn decisions_left_behind_move_out_of_the_window() {
        // One decision in 100 never resolves; the rest resolve a few ids later. The window must follow the
        // live range, not stretch back to the first straggler.
        let mut book = PendingBook::default();
        for id in 0..200_000u64 {
            book.insert(id, id);
            if id >= 5 && (id - 5) % 100 != 0 {
                book.remove(id - 5);
            }
        }
        assert_eq!(book.len(), 2000 + 5);
        assert!(book.chunks.len() <= WINDOW_BEFORE_MIGRATION + 1, "window of {} chunks", book.chunks.len());
        assert!(book.outliers.len() > 1800, "{} stragglers moved out", book.outliers.len());
        assert_eq!(book.iter().count(), book.len());
        assert_eq!(book.get(100), Some(&100));
        assert_eq!(book.remove(100), Some(100));
        assert!(!book.contains(100));
    }

    #[test]
    fn a_steady_stream_reuses_its_chunks() {
        let mut book = PendingBook::default();
        for id in 0..10 * CHUNK as u64 {
            book.insert(id, ());
            if id >= 50 {
                book.remove(id - 50);
            }
        }
        assert_eq!(book.len(), 50);
        assert!(book.chunks.len() <= 2);
        assert!(book.spare.is_some(), "an emptied chunk is kept for the next");
    }
}
