//! Prometheus metrics on their own HTTP port (`serve --metrics-listen ADDR`, path `/metrics`).
//!
//! The `metrics` facade records; metrics-exporter-prometheus renders. Counters and histograms are updated
//! where things happen (calls, decisions, rewards, store commits); per-experiment gauges (budget margin,
//! pending rewards, baseline share, drift) are refreshed from the reports every second, and so are the
//! store's sizes on disk.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::registry::Registry;
use crate::store::Store;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    let handle = recorder();
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let body = handle.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: \
                 close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

/// Binds the metrics port.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    recorder();
    TcpListener::bind(address).await
}

/// Times one RPC and counts its outcome.
pub struct CallTimer {
    rpc: &'static str,
    started: Instant,
}

impl CallTimer {
    /// Starts timing `rpc`.
    pub fn start(rpc: &'static str) -> CallTimer {
        CallTimer { rpc, started: Instant::now() }
    }

    /// Records the call's latency and, if it failed, its status code.
    pub fn finish<T>(self, result: &Result<T, tonic::Status>) {
        metrics::histogram!("safebet_rpc_duration_seconds", "rpc" => self.rpc).record(self.started.elapsed());
        if let Err(status) = result {
            let code = format!("{:?}", status.code());
            metrics::counter!("safebet_rpc_errors_total", "rpc" => self.rpc, "code" => code).increment(1);
        }
    }
}

/// Refreshes the store's disk gauges (database, WAL, journal), so operators see the log grow, and, with a sync
/// interval, how many acknowledged records are not yet synced.
pub fn refresh_store(store: &dyn Store) {
    for (part, bytes) in store.disk_usage() {
        metrics::gauge!("safebet_store_bytes", "part" => part).set(bytes as f64);
    }
    if let Some(records) = store.unsynced_records() {
        metrics::gauge!("safebet_store_unsynced_records").set(records as f64);
    }
}

/// Refreshes the per-experiment gauges from the experiments' reports.
pub fn refresh(registry: &Registry) {
    for experiment in registry.list() {
        let report = experiment.report();
        let id = experiment.id().to_owned();
        let stats = report.stats;
        let gauge = |name: &'static str, value: f64| metrics::gauge!(name, "experiment" => id.clone()).set(value);
        gauge("safebet_pending_rewards", stats.pending as f64);
        gauge(
            "safebet_baseline_share",
            if stats.decisions == 0 { 0.0 } else { stats.baseline_plays as f64 / stats.decisions as f64 },
        );
        if let Some(margin) = stats.last_margin {
            gauge("safebet_budget_margin", margin);
        }
        gauge("safebet_drift_statistic", stats.drift_statistic);
        gauge("safebet_drift_alarm", if stats.drift_alarm.is_some() { 1.0 } else { 0.0 });
        gauge("safebet_paused", if report.definition.paused { 1.0 } else { 0.0 });
        gauge("safebet_alpha", report.definition.policy.alpha);
        gauge("safebet_model_version", stats.model_version as f64);
    }
    // Episodic experiments under the same names where they mean the same (an episode is a round).
    for experiment in registry.list_episodic() {
        let report = experiment.report();
        let gauge = |name: &'static str, value: f64| {
            metrics::gauge!(name, "experiment" => report.experiment_id.clone()).set(value)
        };
        gauge("safebet_episodes", report.episodes as f64);
        gauge(
            "safebet_baseline_share",
            if report.episodes == 0 { 0.0 } else { report.baseline_episodes as f64 / report.episodes as f64 },
        );
        if let Some(margin) = report.last_margin {
            gauge("safebet_budget_margin", margin);
        }
        gauge("safebet_paused", if report.paused { 1.0 } else { 0.0 });
        gauge("safebet_alpha", report.alpha);
    }
}
