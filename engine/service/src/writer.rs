//! Group commit: one thread owns the store's write path, drains whatever writes have queued up, commits them
//! in one transaction (one fsync), and answers each caller once its write is durable: callers of log records
//! as soon as the store says so (the SQLite store's journal is synced before its tables commit), the others
//! when the commit is done. Under load a commit carries hundreds of decisions, so durability costs a fraction
//! of a sync per decision instead of one sync each.
//!
//! Ordering: callers enqueue under their experiment's lock, right after the engine applied the change, so the
//! queue holds each experiment's records in `sequence` order, and a snapshot enqueued after a record is
//! committed with or after it: a stored snapshot never runs ahead of the stored log.
//!
//! Failure: if a commit fails (disk full, read-only directory, IO error), the writer refuses every later
//! write without trying, so the log never gets a gap; callers answer UNAVAILABLE. The service then rebuilds
//! its experiments from the store (so memory holds nothing the log does not) and [`LogWriter::resume`]s once
//! the store accepts writes again.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::store::{Store, Write};

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 4096;

/// The outcome of a commit, as the caller sees it.
pub type CommitResult = Result<(), String>;

/// A pending commit: resolves when the write is durable (or failed).
#[derive(Debug)]
pub struct Commit(Option<oneshot::Receiver<CommitResult>>);

impl Commit {
    /// A commit that is already done (nothing to wait for).
    pub fn done() -> Commit {
        Commit(None)
    }

    /// Waits until the write is durable.
    pub async fn wait(self) -> CommitResult {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or_else(|_| Err("the log writer stopped".into())),
        }
    }

    /// Waits, blocking the thread (for callers outside the async runtime).
    pub fn wait_blocking(self) -> CommitResult {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver.blocking_recv().unwrap_or_else(|_| Err("the log writer stopped".into())),
        }
    }
}

enum Job {
    Write(Write, Option<oneshot::Sender<CommitResult>>),
    /// Answers once everything queued before it is committed (or refused).
    Barrier(oneshot::Sender<CommitResult>),
}

/// Commit statistics, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes committed.
    pub writes: u64,
    /// Total time spent committing.
    pub commit_time: Duration,
    /// The largest group committed at once.
    pub largest_group: usize,
}

/// The single writer of a store.
#[derive(Debug)]
pub struct LogWriter {
    queue: Mutex<Option<Sender<Job>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Why writes are refused, while they are.
    failed: Mutex<Option<String>>,
    stats: Mutex<WriterStats>,
}

impl LogWriter {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> LogWriter {
        let (sender, receiver) = channel();
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("safebet-log".into())
                .spawn(move || run(&*store, &receiver, &shared))
                .expect("spawning the log writer thread")
        };
        LogWriter { queue: Mutex::new(Some(sender)), shared, thread: Mutex::new(Some(thread)) }
    }

    /// Why writes are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Accepts writes again (after the service rebuilt its state from the store).
    pub fn resume(&self) {
        *self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Commit statistics so far.
    pub fn stats(&self) -> WriterStats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write; the returned [`Commit`] resolves when it is durable.
    pub fn submit(&self, write: Write) -> Commit {
        let (sender, receiver) = oneshot::channel();
        self.send(Job::Write(write, Some(sender)));
        Commit(Some(receiver))
    }

    /// Queues a write nobody waits for (a timeout found by the sweeper); a failure still stops the writer.
    pub fn submit_detached(&self, write: Write) {
        self.send(Job::Write(write, None));
    }

    /// Resolves once everything queued so far is committed or refused.
    pub fn barrier(&self) -> Commit {
        let (sender, receiver) = oneshot::channel();
        self.send(Job::Barrier(sender));
        Commit(Some(receiver))
    }

    fn send(&self, job: Job) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let refused = match queue.as_ref() {
            Some(sender) => sender.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            answer(job, Err("the log writer has stopped".into()));
        }
    }

    /// Commits what is queued and stops the thread.
    pub fn stop(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(job: Job, result: CommitResult) {
    match job {
        Job::Write(_, Some(sender)) | Job::Barrier(sender) => {
            let _ = sender.send(result);
        }
        Job::Write(_, None) => {}
    }
}

fn run(store: &dyn Store, receiver: &Receiver<Job>, shared: &Shared) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut writes: Vec<Write> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = receiver.recv() {
        jobs.push(first);
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let refused = shared.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let result = match refused {
            Some(reason) => Err(reason),
            None => {
                // Callers of log records may be answered as soon as their frames are durable (before the
                // transaction ends); barriers, snapshots and audit entries only once it has committed.
                let mut early = Vec::with_capacity(jobs.len());
                let mut late = Vec::new();
                for job in jobs.drain(..) {
                    match job {
                        Job::Write(write @ Write::Log(_), sender) => {
                            writes.push(write);
                            early.push(sender);
                        }
                        Job::Write(write, sender) => {
                            writes.push(write);
                            late.push(sender);
                        }
                        Job::Barrier(sender) => late.push(Some(sender)),
                    }
                }
                // Answered on the journal's thread the moment the records are on disk; whoever the store did
                // not answer (a failure, or a store that answers only by returning) is answered below.
                let started = Instant::now();
                let early = Arc::new(Mutex::new(early));
                let answer_early = {
                    let early = early.clone();
                    Box::new(move || {
                        // What a decision's caller waits for the log: less than the whole commit.
                        metrics::histogram!("safebet_store_durable_seconds").record(started.elapsed());
                        for sender in early.lock().unwrap_or_else(|p| p.into_inner()).drain(..).flatten() {
                            let _ = sender.send(Ok(()));
                        }
                    })
                };
                let outcome = store.commit_answering(&writes, answer_early);
                let elapsed = started.elapsed();
                metrics::histogram!("safebet_store_commit_seconds").record(elapsed);
                metrics::histogram!("safebet_store_commit_writes").record(writes.len() as f64);
                let result = match outcome {
                    Ok(()) => {
                        let mut stats = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
                        stats.commits += 1;
                        stats.writes += writes.len() as u64;
                        stats.commit_time += elapsed;
                        stats.largest_group = stats.largest_group.max(writes.len());
                        Ok(())
                    }
                    Err(e) => {
                        let reason = format!(
                            "the decision log cannot be written ({e}); decisions and rewards are refused until the \
                             store accepts writes again"
                        );
                        tracing::error!(error = %e, "log commit failed; refusing writes");
                        *shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                        Err(reason)
                    }
                };
                writes.clear();
                let unanswered = std::mem::take(&mut *early.lock().unwrap_or_else(|p| p.into_inner()));
                for sender in unanswered.into_iter().chain(late).flatten() {
                    let _ = sender.send(result.clone());
                }
                continue;
            }
        };
        for job in jobs.drain(..) {
            answer(job, result.clone());
        }
    }
}
