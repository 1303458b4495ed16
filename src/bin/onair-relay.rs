//! `onair-relay`: the relay alone, for running it as a small always-on server. Same options
//! and settings as `onair relay`, without the broadcaster's capture and codec libraries, so
//! it starts faster and needs a fraction of the memory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use onair::config::Settings;
use onair::relay::cli::{run, RelayArgs};

/// OnAir relay: RTMP in; RTMP, HTTP-FLV and a watch page out.
#[derive(Parser, Debug)]
#[command(name = "onair-relay", version, about, long_about = None)]
struct Cli {
    /// Settings file (default: onair.toml in the platform config directory, if present).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Worker threads. One serves hundreds of viewers; more spread the work over more cores.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    relay: RelayArgs,
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = (|| -> anyhow::Result<()> {
        let settings = Settings::load(cli.config.as_deref())?;
        anyhow::ensure!(cli.threads >= 1, "--threads must be at least 1");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(run(settings.relay, cli.relay))
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
