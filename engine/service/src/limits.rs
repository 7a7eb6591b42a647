//! Limits on what one request or one experiment may ask for, so that no caller can make the service spend
//! unbounded memory or time.

/// Per-request and per-experiment limits. Requests over a limit are refused with RESOURCE_EXHAUSTED (counts)
/// or INVALID_ARGUMENT (shapes), naming the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest number of actions in one round (shared layout), and of fixed actions of an experiment.
    pub max_actions: usize,
    /// Largest feature or context dimension of an experiment.
    pub max_dim: usize,
    /// Largest number of items in one `DecideBatch` or `RewardBatch`.
    pub max_batch: usize,
    /// Largest encoded request, in bytes; tonic refuses larger messages while decoding them.
    pub max_message_bytes: usize,
    /// Largest number of experiments the service holds.
    pub max_experiments: usize,
    /// Largest number of decisions of one experiment waiting for a reward; beyond it Decide is refused until
    /// rewards arrive or time out.
    pub max_pending: u64,
    /// How many client event ids each experiment remembers for idempotent retries (the most recent ones).
    pub idempotency_window: usize,
}

/// Longest experiment id, in bytes.
pub const MAX_EXPERIMENT_ID_LEN: usize = 128;
/// Longest client event id or action id, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_actions: 1024,
            max_dim: 1024,
            max_batch: 1000,
            max_message_bytes: 8 << 20,
            max_experiments: 10_000,
            max_pending: 1_000_000,
            idempotency_window: 100_000,
        }
    }
}
