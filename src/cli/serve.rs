//! `safebet serve`: the gRPC decision service. Builds the async runtime here so the rest of the binary stays
//! synchronous; everything else is `safebet_service::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use safebet_service::{ExperimentsFile, ServeOptions, SqliteStore};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the embedded store (experiment definitions and learner snapshots).
    #[arg(long, default_value = "safebet-data")]
    data_dir: PathBuf,
    /// TOML file declaring experiments (`[[experiment]]` tables); created at start if not stored yet.
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
        Some(path) => ExperimentsFile::read(path)?.experiment,
        None => Vec::new(),
    };
    let store = SqliteStore::open(&args.data_dir)
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let mut options = ServeOptions::new(Arc::new(store));
    options.declared = declared;
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
