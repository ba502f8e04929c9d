//! A strict Box-compatible emulator (placeholder, filled by the emulator work).
use std::net::SocketAddr;

/// `box-upload-gateway emulator ...`
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
}

pub async fn run(_args: EmulatorArgs) -> std::io::Result<()> {
    Ok(())
}
