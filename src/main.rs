use box_upload_gateway::emulator;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the strict Box-compatible emulator.
    Emulator(emulator::EmulatorArgs),
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Emulator(args) => emulator::run(args).await,
    }
}
