use std::path::PathBuf;

use box_upload_gateway::config::Settings;
use box_upload_gateway::startup::Application;
use box_upload_gateway::{emulator, telemetry};
use clap::{Parser, Subcommand};

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
    Emulator(emulator::EmulatorArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML settings file; the environment overrides it.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Emulator(args) => emulator::run(args).await.map_err(|e| e.to_string()),
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
    let settings = Settings::load(args.config.as_deref())?;
    let valid = settings
        .validate()
        .map_err(|problems| format!("invalid configuration:\n  {}", problems.join("\n  ")))?;
    telemetry::init(&valid.log_format);
    let app = Application::build(&valid).map_err(|e| format!("cannot start on {}: {e}", valid.listen))?;
    tracing::info!(listen = %valid.listen, port = app.port(), box_api = %valid.box_urls.api,
        box_upload = %valid.box_urls.upload, settings = ?settings, "gateway listening");
    app.run_until_stopped().await.map_err(|e| e.to_string())
}
