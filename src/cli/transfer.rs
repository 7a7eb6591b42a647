//! `safebet export` / `safebet import`: move an experiment's complete state (definition, model, budget
//! ledger, pending decisions; for an episodic experiment its counts, ledger and running episode) between
//! servers through the admin and episode APIs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use safebet_proto as pb;
use safebet_proto::episode_service_client::EpisodeServiceClient;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;

/// Exported models can be large (V^-1 and pending decisions); allow up to this much in either direction.
const MAX_MODEL_BYTES: usize = 256 << 20;

/// Write an experiment's complete state to a file (admin `ExportModel`, or `ExportEpisodicExperiment` for an
/// episodic experiment). Sends the API key in SAFEBET_API_KEY, if set.
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

/// Create an experiment from an exported file (admin `ImportModel`, or `ImportEpisodicExperiment` for an
/// episodic export); it continues exactly where the exported one was. Sends the API key in SAFEBET_API_KEY,
/// if set.
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

/// Adds `authorization: Bearer $SAFEBET_API_KEY` to every call, if the variable is set.
fn with_api_key(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Ok(key) = std::env::var("SAFEBET_API_KEY")
        && !key.is_empty()
    {
        let value = format!("Bearer {key}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("SAFEBET_API_KEY holds characters a header cannot carry"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

type Channel = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

async fn connect(server: &str) -> Result<(ExperimentAdminClient<Channel>, EpisodeServiceClient<Channel>)> {
    let channel = tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("'{server}' is not a server address"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let key: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = with_api_key;
    let admin = ExperimentAdminClient::with_interceptor(channel.clone(), key)
        .max_decoding_message_size(MAX_MODEL_BYTES)
        .max_encoding_message_size(MAX_MODEL_BYTES);
    let episodes = EpisodeServiceClient::with_interceptor(channel, key)
        .max_decoding_message_size(MAX_MODEL_BYTES)
        .max_encoding_message_size(MAX_MODEL_BYTES);
    Ok((admin, episodes))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

pub fn export(args: ExportArgs) -> Result<()> {
    let response = runtime()?.block_on(async {
        let (mut admin, mut episodes) = connect(&args.server).await?;
        let exporting = || format!("exporting '{}'", args.id);
        match admin.export_model(pb::ExportModelRequest { id: args.id.clone() }).await {
            Ok(response) => anyhow::Ok(response.into_inner()),
            // Not a bandit experiment: perhaps an episodic one.
            Err(status) if status.code() == tonic::Code::NotFound => {
                let request = pb::ExportEpisodicExperimentRequest { experiment_id: args.id.clone() };
                let response = episodes.export_episodic_experiment(request).await.with_context(exporting)?;
                let response = response.into_inner();
                Ok(pb::ExportModelResponse {
                    id: response.experiment_id,
                    sequence: response.sequence,
                    model: response.model,
                })
            }
            Err(status) => Err(anyhow::Error::new(status).context(exporting())),
        }
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
    // The file says what it holds: an episodic export carries its own format name.
    #[derive(serde::Deserialize)]
    struct Format {
        format: String,
    }
    let episodic =
        serde_json::from_slice::<Format>(&model).is_ok_and(|f| f.format == safebet_service::EPISODIC_EXPORT_FORMAT);
    let importing = || format!("importing {}", args.file.display());
    let id = runtime()?.block_on(async {
        let (mut admin, mut episodes) = connect(&args.server).await?;
        let id = args.id.clone().unwrap_or_default();
        if episodic {
            let request = pb::ImportEpisodicExperimentRequest { model, id };
            anyhow::Ok(episodes.import_episodic_experiment(request).await.with_context(importing)?.into_inner().id)
        } else {
            let request = pb::ImportModelRequest { model, id };
            anyhow::Ok(admin.import_model(request).await.with_context(importing)?.into_inner().id)
        }
    })?;
    eprintln!("imported {}experiment '{id}'", if episodic { "episodic " } else { "" });
    Ok(())
}
