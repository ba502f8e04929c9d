use std::path::PathBuf;

use box_upload_gateway::config::Settings;
use box_upload_gateway::secret::Secret;
use box_upload_gateway::startup::Application;
use box_upload_gateway::{emulator, telemetry};
use clap::{Parser, Subcommand};

/// actix-http grows its read buffer by reallocation and frees it as parts are uploaded: with glibc's
/// malloc the freed memory goes back to the kernel and comes back as fresh zeroed pages, 6 to 9 %
/// of the gateway's CPU per byte (bench/, docs/benchmark.md "What made it cheaper"). mimalloc keeps
/// and reuses it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run the strict Box-compatible emulator.
    Emulator(Box<emulator::EmulatorArgs>),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML settings file; the environment overrides it.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Also start the Box emulator in-process on a loopback port and send every upload there.
    #[arg(long)]
    emulator: bool,
    /// With --emulator: where the emulator keeps the uploaded files.
    #[arg(long, default_value = "./emulator-data", requires = "emulator")]
    emulator_data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Emulator(args) => emulator::run(*args).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("box-upload-gateway: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut settings = Settings::load(args.config.as_deref())?;
    let telemetry = telemetry::init(&settings.log_format, settings.otlp_endpoint.as_deref())?;
    // Kept up until the gateway has drained: uploads in flight still reach it, and abort into it.
    let emulator = match args.emulator {
        true => Some(start_emulator(&mut settings, args.emulator_data_dir).await?),
        false => None,
    };
    let valid = settings
        .validate()
        .map_err(|problems| format!("invalid configuration:\n  {}", problems.join("\n  ")))?;
    let listen = valid.server.listen;
    let app = Application::build(&valid).map_err(|e| format!("cannot start on {listen}: {e}"))?;
    let (box_side, access) = (&valid.box_side, &valid.access);
    tracing::info!(%listen, port = app.port(), box_api = %box_side.urls.api, box_upload = %box_side.urls.upload,
        box_auth = box_side.auth.mode(), api_keys = access.api_keys.len(), allow_anonymous = access.allow_anonymous,
        settings = %settings.for_log(), "gateway listening");
    app.run_until_stopped().await.map_err(|e| e.to_string())?;
    if let Some(emulator) = emulator {
        emulator.stop().await;
        tracing::info!("Box emulator stopped");
    }
    tracing::info!("gateway stopped");
    telemetry.shutdown().await;
    Ok(())
}

/// Starts the emulator on a loopback port and points the gateway's Box URLs and token at it.
async fn start_emulator(
    settings: &mut Settings,
    data_dir: PathBuf,
) -> Result<emulator::EmulatorHandle, String> {
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let config = emulator::EmulatorConfig {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    };
    let handle = emulator::Emulator::spawn(config)
        .await
        .map_err(|e| format!("cannot start the emulator: {e}"))?;
    settings.box_api_url = handle.api_url();
    settings.box_upload_url = handle.upload_url();
    settings.box_token_url = handle.token_url();
    if settings.box_auth == "developer_token" {
        // The emulator's development token is public (documented), not a secret.
        settings.box_developer_token = Some(Secret::new(emulator::DEV_TOKEN));
        settings.box_developer_token_file = None;
    }
    if settings.api_keys.is_empty() && settings.api_keys_file.is_none() && !settings.allow_anonymous {
        settings.allow_anonymous = true;
        tracing::warn!(
            "serve --emulator with no API keys: anonymous uploads are accepted (they land only in the emulator)"
        );
    }
    tracing::info!(
        emulator = %handle.base_url(),
        data_dir = %data_dir.display(),
        download = %format!("curl -H 'Authorization: Bearer {}' {}/files/FILE_ID/content -o FILE", emulator::DEV_TOKEN, handle.api_url()),
        inspect = %format!("{}/_emulator/state", handle.base_url()),
        "Box emulator started: uploads land in data_dir; download one back with the `download` command"
    );
    Ok(handle)
}
