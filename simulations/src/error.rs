//! The simulator's one error type. Each variant carries what a person needs to fix the input without reading
//! the code: the file, the key or the round, and what was expected.

use std::path::PathBuf;

use safebet_engine::EngineError;

/// What went wrong while reading a scenario, simulating, or writing and merging results.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A scenario file is not valid TOML, has an unknown or missing key, or a value out of its domain.
    #[error("{file}: {key}: {message}{}", location.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Scenario {
        /// The scenario file (or the origin given for an in-memory scenario).
        file: String,
        /// Dotted key path, e.g. `environment.linear.dim` or `policies[1].exploration_scale`.
        key: String,
        /// What was wrong and what was expected.
        message: String,
        /// `line L, column C` where the parser knows it.
        location: Option<String>,
    },
    /// A data file referenced by a scenario is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line number (0 when the problem concerns the whole file).
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// Reading or writing a file failed. The message includes the OS error, so it is not repeated as a source.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The engine refused a policy's configuration or one of the simulator's calls.
    #[error("policy `{label}`: {context}: {error}")]
    Engine {
        /// The policy's label in the scenario.
        label: String,
        /// What the simulator was doing, e.g. `decide at round 17 of run 3`.
        context: String,
        /// The engine's error (in the message, so not repeated as a source).
        error: EngineError,
    },
    /// Shard results cannot be merged (different scenarios, missing or repeated shards or runs).
    #[error("cannot merge: {0}")]
    Merge(String),
    /// A results file written by the simulator could not be parsed back.
    #[error("{}:{line}: {message}", path.display())]
    Results {
        /// The results file.
        path: PathBuf,
        /// 1-based line number (0 for a whole-file problem).
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// Drawing a plot failed.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The SVG being written.
        path: PathBuf,
        /// The drawing backend's message.
        message: String,
    },
    /// The worker thread pool could not be built.
    #[error("cannot start {threads} worker threads: {message}")]
    ThreadPool {
        /// Threads requested.
        threads: usize,
        /// rayon's message.
        message: String,
    },
    /// A run option is out of its domain (seeds, threads, shard).
    #[error("{0}")]
    InvalidOption(String),
}

impl SimError {
    /// Wraps an IO error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SimError {
        let path = path.into();
        move |error| SimError::Io { path, error }
    }
}
