//! `safebet serve`: the gRPC decision service. Builds the async runtime here so the rest of the binary stays
//! synchronous; everything else is `safebet_service::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use safebet_service::{ExperimentsFile, Keys, MemoryStore, ServeOptions, SqliteStore, Store, TlsFiles};

/// Where the service keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded SQLite in --data-dir: every decision and reward is committed to the decision log before it is
    /// acknowledged (group commit), and a restart continues exactly where the service stopped.
    Sqlite,
    /// Nothing is kept: state dies with the process. For measuring what durability costs and for throwaway
    /// runs; never for real traffic.
    Memory,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the embedded store: experiment definitions, the decision log and learner snapshots in
    /// one SQLite file (safebet.sqlite3) that sqlite3 or pandas can read while the service runs, and the
    /// log's journal beside it (features/*.seg: every log record with the decision's features, synced before
    /// a call is answered; `safebet log` exports rows and features together).
    #[arg(long, default_value = "safebet-data")]
    data_dir: PathBuf,
    /// Where state is kept.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Acknowledge decisions and rewards once the log has written them to the operating system, and sync
    /// the log to disk every MS milliseconds, instead of syncing before every acknowledgement (the default).
    /// A crash or kill -9 of the service still loses nothing acknowledged; a power cut or a crash of the
    /// machine may lose about the last MS milliseconds of them. Lower latency and CPU per decision under
    /// load (BENCHMARKS.md). 0 keeps the default.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    sync_interval_ms: u64,
    /// API keys file (`[[key]]` tables: id, role = "admin" | "decide", sha256, optional experiments). Keys
    /// can also come from SAFEBET_API_KEYS ("id:role:sha256[:exp|exp],..."). Without keys, authentication is
    /// off and the service listens on loopback only. `safebet keys new` makes a key.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, the service speaks TLS only.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (decisions, rewards, latency histograms, baseline
    /// share, budget margin, pending rewards, drift, store commit latency, errors by status code).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Retention: delete the decision log up to each stored snapshot (the log then reaches back only to the
    /// latest snapshot; `safebet log` exports only what is kept).
    #[arg(long)]
    compact_log: bool,
    /// TOML file declaring experiments: bandits (`[[experiment]]` tables) and episodic RL (`[[episodic]]`);
    /// each is created at start if not stored yet (a stored one keeps its state).
    #[arg(long)]
    experiments: Option<PathBuf>,
    /// Seconds between snapshots of changed experiments (they are also written at shutdown).
    #[arg(long, default_value_t = 30)]
    snapshot_interval_secs: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let declared = match &args.experiments {
        Some(path) => ExperimentsFile::read(path)?,
        None => ExperimentsFile::default(),
    };
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Sqlite => {
            let store = SqliteStore::open(&args.data_dir)
                .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
            Arc::new(match args.sync_interval_ms {
                0 => store,
                ms => {
                    tracing::info!(ms, "acknowledging log records before they are synced; synced every {ms} ms");
                    store.with_sync_interval(std::time::Duration::from_millis(ms))
                }
            })
        }
        StoreKind::Memory => {
            if args.sync_interval_ms > 0 {
                tracing::warn!("--sync-interval-ms has no effect with --store memory: nothing is written");
            }
            tracing::warn!("--store memory: nothing is kept; state dies with the process");
            Arc::new(MemoryStore)
        }
    };
    let mut options = ServeOptions::new(store);
    options.keys = match (&args.keys, std::env::var("SAFEBET_API_KEYS")) {
        (Some(path), _) => Keys::from_file(path)?,
        (None, Ok(text)) if !text.trim().is_empty() => Keys::parse_env(&text).context("reading SAFEBET_API_KEYS")?,
        _ => Keys::none(),
    };
    options.declared = declared.experiment;
    options.declared_episodic = declared.episodic;
    options.compact_log = args.compact_log;
    options.metrics_listen = args.metrics_listen;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options.tls =
            Some(TlsFiles::read(cert, key).with_context(|| {
                format!("reading the TLS certificate {} and key {}", cert.display(), key.display())
            })?);
    }
    options.snapshot_interval = Duration::from_secs(args.snapshot_interval_secs.max(1));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        safebet_service::run(listener, shutdown_signal(), options).await?;
        Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
