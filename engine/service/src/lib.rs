//! # safebet-service
//!
//! The gRPC decision service around the pure [`safebet_engine`]: product services call `Decide` and `Reward`
//! (`safebet.v1.DecisionService`), operators create and steer experiments (`safebet.v1.ExperimentAdmin`),
//! and standard gRPC health and reflection answer too. Episodic RL experiments (`safebet.v1.EpisodeService`:
//! `StartEpisode` says whether the learner or the baseline drives, then `Act`, `Observe`, `EndEpisode`) run
//! the engine's `EpisodicLearner` in an [`EpisodicExperiment`], logged in the same decision log and recovered
//! the same way (snapshot, then replay). The service validates, maps ids and holds state; every policy
//! decision is the engine's.
//!
//! Principal types: [`run`] (the server on a bound listener until a shutdown future completes),
//! [`ServeOptions`], [`Registry`] and [`Experiment`] (one lock per experiment, so experiments never wait on
//! each other), [`Store`] with [`SqliteStore`] (definitions and learner snapshots in an embedded SQLite
//! database), [`ExperimentDef`] and [`ExperimentsFile`] (what `safebet serve --experiments FILE` reads),
//! [`Limits`], and [`ServiceError`], whose [`ServiceError::code`] is the one mapping of errors to gRPC
//! statuses.
//!
//! ```
//! use std::sync::Arc;
//! use safebet_service::{ExperimentsFile, Limits};
//!
//! let file = ExperimentsFile::parse(r#"
//!     [[experiment]]
//!     id = "homepage"
//!     policy = { algorithm = "clucb", layout = { kind = "shared", dim = 32 }, alpha = 0.05 }
//! "#)?;
//! file.experiment[0].check(&Limits::default())?;
//! // let store = Arc::new(safebet_service::SqliteStore::open("safebet-data".as_ref())?);
//! // safebet_service::run(listener, shutdown, safebet_service::ServeOptions::new(store)).await?;
//! # Ok::<(), safebet_service::ServiceError>(())
//! ```

#![deny(missing_docs)]

mod admin;
mod auth;
mod decision;
mod definition;
mod episodes;
mod error;
mod journal;
mod limits;
mod log;
mod registry;
mod request_id;
mod server;
mod snapshot_files;
mod store;
mod telemetry;
mod writer;

pub use admin::AdminApi;
pub use auth::{KeySpec, Keys, KeysError, Principal, Role, hash_key};
pub use decision::DecisionApi;
pub use definition::{EpisodicDef, ExperimentDef, ExperimentsFile, FeaturePrecision};
pub use episodes::{EPISODIC_EXPORT_FORMAT, EpisodeApi, EpisodicExperiment, check_episodic};
pub use error::ServiceError;
pub use limits::{Limits, MAX_EVENT_ID_LEN, MAX_EXPERIMENT_ID_LEN};
pub use log::{DecisionRecord, LogEntry, LogRecord, decode_features, encode_features};
pub use registry::{Answer, DecideInput, Experiment, Registry, Report, RewardAnswer, Shape};
pub use request_id::RequestIdLayer;
pub use server::{ServeError, ServeOptions, TlsFiles, run};
pub use store::{
    AuditEntry, DATABASE_FILE, DEFAULT_WAL_RESTART_FRAMES, MemoryStore, OnDurable, Snapshot, SqliteStore, Store,
    StoreError, StoredEpisodic, StoredExperiment, Write, decode_state, encode_state,
};
pub use writer::{Commit, CommitResult, LogWriter, WriterStats};
