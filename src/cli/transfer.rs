//! `safebet export` / `safebet import`: move an experiment's complete state (definition, model, budget
//! ledger, pending decisions) between servers through the admin API.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use safebet_proto as pb;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;

/// Exported models can be large (V^-1 and pending decisions); allow up to this much in either direction.
const MAX_MODEL_BYTES: usize = 256 << 20;

/// Write an experiment's complete state to a file (admin `ExportModel`). Sends the API key in
/// SAFEBET_API_KEY, if set.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The experiment to export.
    id: String,
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The file to write (JSON).
    #[arg(long, short)]
    output: PathBuf,
}

/// Create an experiment from an exported file (admin `ImportModel`); it continues exactly where the exported
/// one was.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file written by `safebet export`.
    file: PathBuf,
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Import under this id instead of the exported one.
    #[arg(long)]
    id: Option<String>,
}

async fn connect(server: &str) -> Result<ExperimentAdminClient<tonic::transport::Channel>> {
    let client =
        ExperimentAdminClient::connect(server.to_owned()).await.with_context(|| format!("connecting to {server}"))?;
    Ok(client.max_decoding_message_size(MAX_MODEL_BYTES).max_encoding_message_size(MAX_MODEL_BYTES))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

pub fn export(args: ExportArgs) -> Result<()> {
    let response = runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let request = pb::ExportModelRequest { id: args.id.clone() };
        let response = client.export_model(request).await.with_context(|| format!("exporting '{}'", args.id))?;
        anyhow::Ok(response.into_inner())
    })?;
    std::fs::write(&args.output, &response.model).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "exported '{}' at sequence {} ({} bytes) to {}",
        response.id,
        response.sequence,
        response.model.len(),
        args.output.display()
    );
    Ok(())
}

pub fn import(args: ImportArgs) -> Result<()> {
    let model = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let experiment = runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let request = pb::ImportModelRequest { model, id: args.id.clone().unwrap_or_default() };
        let response =
            client.import_model(request).await.with_context(|| format!("importing {}", args.file.display()))?;
        anyhow::Ok(response.into_inner())
    })?;
    eprintln!("imported experiment '{}'", experiment.id);
    Ok(())
}
