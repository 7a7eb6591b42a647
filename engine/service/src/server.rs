//! `run(listener, shutdown, options)`: the whole service on an already-bound listener until `shutdown`
//! completes (mini-redis style), so tests bind `127.0.0.1:0` and run the real server in-process.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use safebet_proto as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use tonic::service::interceptor::InterceptedService;

use crate::ServiceError;
use crate::admin::{AdminApi, blocking, now_unix_ms};
use crate::auth::Keys;
use crate::decision::DecisionApi;
use crate::definition::{EpisodicDef, ExperimentDef};
use crate::episodes::{EpisodeApi, EpisodicExperiment, declare_episodic};
use crate::limits::Limits;
use crate::registry::Registry;
use crate::store::{Snapshot, Store, StoreError, Write};
use crate::telemetry;
use crate::writer::LogWriter;

/// HTTP/2 flow-control windows, bytes: large enough that a full batch needs no window update.
const STREAM_WINDOW: u32 = 4 << 20;
/// See [`STREAM_WINDOW`].
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be read at start.
    #[error("loading stored experiments: {0}")]
    Store(#[from] StoreError),
    /// A stored or declared experiment is invalid.
    #[error("experiment definitions: {0}")]
    Definition(#[from] ServiceError),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics port could not be bound.
    #[error("binding the metrics port {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
    /// Without API keys the service would be open to anyone who can reach it.
    #[error(
        "refusing to listen on {0} without API keys: without keys anyone who can reach the port may change \
         experiments. Listen on 127.0.0.1 or ::1, or configure keys (--keys FILE or SAFEBET_API_KEYS)"
    )]
    Unauthenticated(std::net::SocketAddr),
}

/// A TLS identity, PEM-encoded.
#[derive(Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub certificate: Vec<u8>,
    /// The private key.
    pub key: Vec<u8>,
}

impl TlsFiles {
    /// Reads the certificate chain and key from PEM files.
    pub fn read(certificate: &std::path::Path, key: &std::path::Path) -> std::io::Result<TlsFiles> {
        Ok(TlsFiles { certificate: std::fs::read(certificate)?, key: std::fs::read(key)? })
    }
}

/// What the server runs with besides its listener.
pub struct ServeOptions {
    /// Where definitions and snapshots are kept.
    pub store: Arc<dyn Store>,
    /// Experiments declared in an experiments file: created if absent from the store; a stored experiment of
    /// the same id keeps its stored state (a differing declaration is logged and ignored).
    pub declared: Vec<ExperimentDef>,
    /// Episodic experiments declared in an experiments file, kept the same way.
    pub declared_episodic: Vec<EpisodicDef>,
    /// Per-request and per-experiment limits.
    pub limits: Limits,
    /// How often changed experiments are snapshotted to the store (also done at graceful shutdown).
    pub snapshot_interval: Duration,
    /// How often overdue rewards are looked for; a timeout fires at most this late.
    pub timeout_check_interval: Duration,
    /// TLS: the server's certificate chain and private key, PEM. None: plaintext (loopback or a trusted
    /// network only).
    pub tls: Option<TlsFiles>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// API keys; without any, every call is allowed and the server refuses to listen beyond loopback.
    pub keys: Keys,
    /// Delete the log records a stored snapshot includes (retention: the log then reaches back only to the
    /// latest snapshot). Off by default: the log is the experiment's audit of record.
    pub compact_log: bool,
}

impl ServeOptions {
    /// Default limits, snapshots every 30 s, timeouts checked every 50 ms.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ServeOptions {
            store,
            declared: Vec::new(),
            declared_episodic: Vec::new(),
            limits: Limits::default(),
            snapshot_interval: Duration::from_secs(30),
            timeout_check_interval: Duration::from_millis(50),
            compact_log: false,
            keys: Keys::none(),
            metrics_listen: None,
            tls: None,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("declared", &self.declared.len())
            .field("declared_episodic", &self.declared_episodic.len())
            .field("limits", &self.limits)
            .field("snapshot_interval", &self.snapshot_interval)
            .field("timeout_check_interval", &self.timeout_check_interval)
            .field("compact_log", &self.compact_log)
            .finish_non_exhaustive()
    }
}

/// Loads the stored experiments (snapshot, then the log after it) and adds the declared ones that are not
/// stored yet.
async fn load(options: &ServeOptions, writer: Option<Arc<LogWriter>>) -> Result<Arc<Registry>, ServeError> {
    let registry = Arc::new(Registry::new(options.limits.clone(), writer));
    let stored = blocking(&options.store, |store| store.load()).await?;
    let now = Instant::now();
    let mut replayed = 0;
    for record in &stored {
        replayed += record.log.len();
        let experiment = registry.rebuilt(record, now)?;
        registry.insert(Arc::new(experiment))?;
    }
    let episodic = blocking(&options.store, |store| store.load_episodic()).await?;
    for record in &episodic {
        replayed += record.log.len();
        registry.insert_episodic(Arc::new(EpisodicExperiment::rebuild(record, registry.writer().cloned())?))?;
    }
    tracing::info!(experiments = stored.len(), episodic = episodic.len(), replayed, "stored experiments loaded");
    for declared in &options.declared {
        declared.check(&options.limits)?;
        if let Ok(existing) = registry.get(&declared.id) {
            let mut stored = existing.definition();
            // Alpha and the kill switch are steered at run time; creation time is the store's.
            stored.policy.alpha = declared.policy.alpha;
            stored.paused = declared.paused;
            stored.created_unix_ms = declared.created_unix_ms;
            if &stored != declared {
                tracing::warn!(
                    experiment = %declared.id,
                    "the experiments file declares this experiment differently from the stored one; the stored \
                     definition and state are kept (delete the experiment to start it anew)"
                );
            }
            continue;
        }
        registry.check_insert(&declared.id)?;
        let mut definition = declared.clone();
        definition.created_unix_ms = now_unix_ms();
        let experiment = Arc::new(registry.fresh(definition.clone())?);
        blocking(&options.store, move |store| store.save_definition(&definition)).await?;
        registry.insert(experiment)?;
        tracing::info!(experiment = %declared.id, "declared experiment created");
    }
    for declared in &options.declared_episodic {
        declare_episodic(&registry, &options.store, declared).await?;
    }
    Ok(registry)
}

/// Snapshots every experiment that changed since its last snapshot (none with a store that keeps nothing).
/// With a decision log the snapshots go through its writer, behind the records they include.
async fn flush(registry: &Registry, store: &Arc<dyn Store>, compact: bool) -> Result<usize, ServiceError> {
    // A store that keeps nothing would throw the snapshot away: do not clone and serialise every experiment's
    // state (its pending decisions can run to hundreds of megabytes of JSON under load) for it.
    if !store.is_durable() {
        return Ok(0);
    }
    // Cloning and encoding a state with many pending decisions takes tens of milliseconds (73 ms for 200,000
    // of them), and the store may write a large one to a file of its own (stage_snapshot): on a blocking
    // thread, not on a runtime worker whose queued requests would wait behind it.
    let (bandits, episodic_experiments, staging) = (registry.list(), registry.list_episodic(), store.clone());
    let taking = tokio::task::spawn_blocking(move || {
        let stage =
            |(snapshot, revision): (Snapshot, u64)| Ok::<_, StoreError>((staging.stage_snapshot(snapshot)?, revision));
        let mut episodic = Vec::new();
        for experiment in episodic_experiments {
            if let Some(taken) = experiment.snapshot(false) {
                episodic.push((experiment, stage(taken)?));
            }
        }
        let mut taken = Vec::new();
        for experiment in bandits {
            if let Some(snapshot) = experiment.snapshot(false) {
                taken.push((experiment, stage(snapshot)?));
            }
        }
        Ok::<_, StoreError>((taken, episodic))
    });
    let (taken, episodic) = match taking.await {
        Ok(snapshots) => snapshots?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return Err(StoreError::ShuttingDown.into()),
    };
    let episodic_count = episodic.len();
    // (experiment, sequence) of the snapshots committed: their older staged states may go.
    let mut committed = Vec::new();
    if let Some(writer) = registry.writer() {
        for (experiment, (snapshot, revision)) in episodic {
            committed.push((snapshot.experiment_id.clone(), snapshot.sequence));
            writer.submit(Write::Snapshot { snapshot, compact }).wait().await.map_err(ServiceError::Unavailable)?;
            experiment.mark_flushed(revision);
        }
    }
    if taken.is_empty() {
        forget_older_snapshots(store, committed).await;
        return Ok(episodic_count);
    }
    let revisions: Vec<_> = taken
        .iter()
        .map(|(experiment, (snapshot, revision))| (experiment.clone(), *revision, snapshot.sequence))
        .collect();
    let snapshots: Vec<Snapshot> = taken.into_iter().map(|(_, (snapshot, _))| snapshot).collect();
    match registry.writer() {
        Some(writer) => {
            // The snapshots move into the writer's queue (no copy of their bytes).
            let commits: Vec<_> =
                snapshots.into_iter().map(|snapshot| writer.submit(Write::Snapshot { snapshot, compact })).collect();
            for commit in commits {
                commit.wait().await.map_err(ServiceError::Unavailable)?;
            }
        }
        None => blocking(store, move |store| store.save_snapshots(&snapshots)).await?,
    }
    for (experiment, revision, sequence) in &revisions {
        experiment.mark_flushed(*revision);
        committed.push((experiment.id().to_owned(), *sequence));
    }
    forget_older_snapshots(store, committed).await;
    Ok(revisions.len())
}

/// Tells the store which snapshots are committed (it removes the files of older ones) off the runtime.
async fn forget_older_snapshots(store: &Arc<dyn Store>, committed: Vec<(String, u64)>) {
    if committed.is_empty() {
        return;
    }
    let _ = blocking(store, move |store| {
        for (id, sequence) in &committed {
            store.snapshot_committed(id, *sequence);
        }
        Ok(())
    })
    .await;
}

/// After a failed commit: once the store accepts writes again, rebuilds every experiment from the store (so
/// memory holds exactly what the log holds) and lets the writer accept writes.
async fn recover(registry: &Registry, store: &Arc<dyn Store>) {
    let Some(writer) = registry.writer() else { return };
    if writer.failure().is_none() || blocking(store, |store| store.probe()).await.is_err() {
        return;
    }
    // Everything queued before now is refused (the writer is failed); wait until it is drained.
    let _ = writer.barrier().wait().await;
    let now = Instant::now();
    for experiment in registry.list() {
        let id = experiment.id().to_owned();
        match blocking(store, move |store| store.load_experiment(&id)).await {
            Ok(Some(stored)) => {
                if let Err(e) = experiment.reload(&stored, registry.limits(), now) {
                    tracing::error!(experiment = %experiment.id(), error = %e, "rebuilding from the store failed");
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the store while recovering failed; will retry");
                return;
            }
        }
    }
    match blocking(store, |store| store.load_episodic()).await {
        Ok(stored) => {
            for record in &stored {
                if let Ok(experiment) = registry.episodic(&record.id)
                    && let Err(e) = experiment.reload(record)
                {
                    tracing::error!(experiment = %record.id, error = %e, "rebuilding from the store failed");
                    return;
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the store while recovering failed; will retry");
            return;
        }
    }
    writer.resume();
    tracing::warn!("the store accepts writes again: experiments rebuilt from the log, decisions resumed");
}

/// Resolves overdue decisions of every experiment with a reward timeout.
async fn expire_overdue(registry: &Registry) {
    /// Decisions resolved per lock: bounds how long one sweep can hold up an experiment's deciders.
    const SLICE: usize = 1024;
    for experiment in registry.list() {
        if experiment.shape().reward_timeout.is_none() {
            continue;
        }
        loop {
            let (_, more) = experiment.expire_due(Instant::now(), SLICE);
            if !more {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Runs the service on `listener` until `shutdown` completes: the decision and admin services, gRPC health
/// (`grpc.health.v1.Health`) and reflection (v1 and v1alpha). At shutdown it stops accepting calls, lets
/// in-flight calls finish, and flushes every changed experiment to the store before returning.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> Result<(), ServeError> {
    if options.keys.is_empty() {
        match listener.local_addr() {
            Ok(address) if !address.ip().is_loopback() => return Err(ServeError::Unauthenticated(address)),
            _ => tracing::warn!("no API keys configured: authentication is off, listening on loopback only"),
        }
    }
    // The recorder must exist before experiments are built: they label their counters once.
    let metrics_listener = match options.metrics_listen {
        Some(address) => Some(telemetry::bind(address).await.map_err(|e| ServeError::Metrics(address, e))?),
        None => None,
    };
    let store = options.store.clone();
    let writer = store.is_durable().then(|| Arc::new(LogWriter::start(store.clone())));
    let registry = load(&options, writer.clone()).await?;
    let compact = options.compact_log;
    let limits = options.limits.clone();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::decision_service_server::DecisionServiceServer<DecisionApi>>().await;
    health.set_serving::<pb::experiment_admin_server::ExperimentAdminServer<AdminApi>>().await;
    health.set_serving::<pb::episode_service_server::EpisodeServiceServer<EpisodeApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServiceError::FailedPrecondition(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServiceError::FailedPrecondition(format!("reflection: {e}")))?;

    // Every API call passes the key check first; health and reflection stay open.
    let decisions = InterceptedService::new(
        pb::decision_service_server::DecisionServiceServer::new(DecisionApi::new(registry.clone()))
            .max_decoding_message_size(limits.max_message_bytes),
        options.keys.interceptor(),
    );
    let admin = InterceptedService::new(
        pb::experiment_admin_server::ExperimentAdminServer::new(AdminApi::new(registry.clone(), store.clone()))
            .max_decoding_message_size(limits.max_message_bytes),
        options.keys.interceptor(),
    );
    let episodes = InterceptedService::new(
        pb::episode_service_server::EpisodeServiceServer::new(EpisodeApi::new(registry.clone(), store.clone()))
            .max_decoding_message_size(limits.max_message_bytes),
        options.keys.interceptor(),
    );

    // Background work stops when `stop` flips, before the final flush.
    let (stop, stopped) = watch::channel(false);
    let sweeper = {
        let registry = registry.clone();
        let mut stopped = stopped.clone();
        let period = options.timeout_check_interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => expire_overdue(&registry).await,
                    _ = stopped.changed() => break,
                }
            }
        })
    };
    let snapshotter = {
        let registry = registry.clone();
        let store = store.clone();
        let mut stopped = stopped.clone();
        let period = options.snapshot_interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => match flush(&registry, &store, compact).await {
                        Ok(n) => tracing::debug!(experiments = n, "periodic snapshot"),
                        Err(e) => tracing::error!(error = %e, "periodic snapshot failed; will retry"),
                    },
                    _ = stopped.changed() => break,
                }
            }
        })
    };

    let metrics = metrics_listener.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "Prometheus metrics at /metrics");
        }
        let registry = registry.clone();
        let store = store.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let server = tokio::spawn(telemetry::serve(listener));
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        telemetry::refresh(&registry);
                        // A directory listing and three stats: cheap enough for the runtime's thread.
                        telemetry::refresh_store(&*store);
                    }
                    _ = stopped.changed() => break,
                }
            }
            server.abort();
        })
    });
    let recoverer = {
        let registry = registry.clone();
        let store = store.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => recover(&registry, &store).await,
                    _ = stopped.changed() => break,
                }
            }
        })
    };

    match listener.local_addr() {
        Ok(address) => tracing::info!(%address, experiments = registry.len(), "safebet serving"),
        Err(e) => tracing::warn!(error = %e, experiments = registry.len(), "safebet serving on an unknown address"),
    }
    let shutdown_health = health.clone();
    let mut builder = Server::builder();
    if let Some(tls) = &options.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.certificate, &tls.key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        tracing::info!("TLS on");
    }
    let served = builder
        .layer(crate::request_id::RequestIdLayer)
        // HTTP/2's default 64 KiB windows make a 400 KiB DecideBatch wait for several window updates.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(decisions)
        .add_service(admin)
        .add_service(episodes)
        // Nagle's algorithm with delayed ACKs would hold small responses back for up to 40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight calls");
            shutdown_health.set_not_serving::<pb::decision_service_server::DecisionServiceServer<DecisionApi>>().await;
            shutdown_health.set_not_serving::<pb::experiment_admin_server::ExperimentAdminServer<AdminApi>>().await;
        })
        .await;

    let _ = stop.send(true);
    let _ = sweeper.await;
    let _ = snapshotter.await;
    let _ = recoverer.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let flushed = flush(&registry, &store, compact).await;
    match &flushed {
        Ok(n) => tracing::info!(experiments = n, "state flushed"),
        Err(e) => tracing::error!(error = %e, "final snapshot failed (the log still holds everything)"),
    }
    if let Some(writer) = &writer {
        let stats = writer.stats();
        tracing::info!(
            commits = stats.commits,
            writes = stats.writes,
            largest_group = stats.largest_group,
            "decision log closed"
        );
        writer.stop();
    }
    served?;
    Ok(())
}
