//! The `onair` command: headless live streaming, the embedded relay and diagnostics.

use anyhow::Context;
use clap::{Parser, Subcommand};
use onair::config::Settings;
use onair::pipeline::{run_live, LiveOptions};
use onair::relay::{start_relay, RelayConfig};
use onair::stats::Stats;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// OnAir: live-stream a camera (or test card) and microphone (or tone) over RTMP.
#[derive(Parser, Debug)]
#[command(name = "onair", version, about, long_about = None)]
struct Cli {
    /// Settings file (default: onair.toml in the platform config directory, if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Go live: stream to --url, or to the embedded relay when no destination is set.
    Live(LiveArgs),
    /// Run the embedded RTMP relay on its own (publish to it, play from it).
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:1935")]
        listen: String,
    },
    /// List the encoder backends this build has and whether they open on this machine.
    Encoders,
}

#[derive(clap::Args, Debug)]
struct LiveArgs {
    /// Destination, rtmp://host[:port]/app/streamkey (default: the embedded relay).
    #[arg(long)]
    url: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Video size, WIDTHxHEIGHT.
    #[arg(long, value_name = "WxH")]
    size: Option<String>,
    /// Frames per second.
    #[arg(long)]
    fps: Option<u32>,
    /// Video bitrate in kbit/s.
    #[arg(long, value_name = "KBPS")]
    bitrate: Option<u32>,
    /// x264 preset (ultrafast … veryslow).
    #[arg(long)]
    preset: Option<String>,
    /// Seconds between keyframes.
    #[arg(long, value_name = "SECS")]
    keyint: Option<f32>,
    /// Also record what goes out to this FLV file.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// A second server to fail over to when --url stays down.
    #[arg(long, value_name = "URL")]
    backup_url: Option<String>,
    /// Keep the bitrate fixed instead of adapting it to the network.
    #[arg(long)]
    no_abr: bool,
    /// Reconnect attempts in a row before giving up (0: never).
    #[arg(long, value_name = "N")]
    max_reconnects: Option<u32>,
    /// Longest wait between reconnect attempts, in seconds.
    #[arg(long, value_name = "SECS")]
    max_reconnect_delay: Option<u32>,
    /// Listen address of the embedded relay (when no --url is given).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// No status lines.
    #[arg(long)]
    quiet: bool,
}

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--size '{s}' is not WIDTHxHEIGHT, e.g. 1280x720"))?;
    let w = w
        .trim()
        .parse()
        .with_context(|| format!("--size '{s}': width is not a number"))?;
    let h = h
        .trim()
        .parse()
        .with_context(|| format!("--size '{s}': height is not a number"))?;
    Ok((w, h))
}

fn apply_live_args(settings: &mut Settings, args: &LiveArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.url {
        settings.destination.url = Some(url.clone());
    }
    if let Some(size) = &args.size {
        let (w, h) = parse_size(size)?;
        settings.video.width = w;
        settings.video.height = h;
    }
    if let Some(fps) = args.fps {
        settings.video.fps = fps;
    }
    if let Some(b) = args.bitrate {
        settings.video.bitrate_kbps = b;
    }
    if let Some(p) = &args.preset {
        settings.video.preset = p.clone();
    }
    if let Some(k) = args.keyint {
        settings.video.keyint_secs = k;
    }
    if let Some(l) = &args.listen {
        settings.relay.listen = l.clone();
    }
    if let Some(u) = &args.backup_url {
        settings.destination.backup_url = Some(u.clone());
    }
    if args.no_abr {
        settings.network.adaptive_bitrate = false;
    }
    if let Some(n) = args.max_reconnects {
        settings.network.max_reconnect_attempts = n;
    }
    if let Some(d) = args.max_reconnect_delay {
        settings.network.max_reconnect_delay_secs = d;
    }
    settings.validate()
}

async fn stop_on_ctrl_c(tx: tokio::sync::watch::Sender<bool>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("stopping…");
        let _ = tx.send(true);
    }
}

async fn live(settings: Settings, args: LiveArgs) -> anyhow::Result<()> {
    let mut settings = settings;
    apply_live_args(&mut settings, &args)?;
    if let Some(d) = args.duration {
        anyhow::ensure!(
            d > 0.0 && d.is_finite(),
            "--duration {d} is invalid: give a positive number of seconds"
        );
    }
    let mut opts = LiveOptions::new(settings);
    opts.duration = args.duration.map(Duration::from_secs_f64);
    opts.record = args.record.clone();
    if args.quiet {
        opts.status_every = None;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(stop_on_ctrl_c(tx));
    let report = run_live(opts, Arc::new(Stats::default()), rx).await?;
    eprintln!(
        "stopped after {:.1} s: {} video frames and {} audio frames sent, {} video / {} audio dropped, {} bytes, {} reconnects",
        report.elapsed.as_secs_f64(),
        report.frames_sent,
        report.audio_frames_sent,
        report.frames_dropped,
        report.audio_dropped,
        report.bytes_sent,
        report.reconnects
    );
    if let Some(path) = &args.record {
        match &report.record_error {
            Some(e) => eprintln!("warning: {e}"),
            None => eprintln!("recording saved to {}", path.display()),
        }
    }
    Ok(())
}

async fn relay(listen: String) -> anyhow::Result<()> {
    let listen = listen.parse().with_context(|| {
        format!("--listen '{listen}' is not an address: write IP:PORT, e.g. 127.0.0.1:1935")
    })?;
    let handle = start_relay(RelayConfig { listen }).await?;
    eprintln!("relay listening on rtmp://{} (publish to rtmp://{}/live/KEY, play the same URL); Ctrl-C stops", handle.local_addr, handle.local_addr);
    tokio::signal::ctrl_c().await.ok();
    handle.shutdown();
    eprintln!("relay stopped");
    Ok(())
}

fn encoders() -> anyhow::Result<()> {
    let settings = onair::encode::VideoEncoderSettings {
        width: 320,
        height: 240,
        ..Default::default()
    };
    println!("H.264:");
    match onair::encode::open_video(&settings) {
        Ok(e) => println!("  {:<14} available (software, default)", e.name()),
        Err(e) => println!("  x264           unavailable: {e:#}"),
    }
    println!("AAC:");
    #[cfg(feature = "fdk-aac")]
    match onair::encode::aac_fdk::FdkAacEncoder::open(&Default::default()) {
        Ok(_) => println!("  fdk-aac        available (default in this build)"),
        Err(e) => println!("  fdk-aac        unavailable: {e:#}"),
    }
    #[cfg(not(feature = "fdk-aac"))]
    println!("  fdk-aac        not in this build (built without the fdk-aac feature)");
    match onair::encode::aac_ffmpeg::FfmpegAacEncoder::open(&Default::default()) {
        Ok(_) => println!("  ffmpeg-aac     available"),
        Err(e) => println!("  ffmpeg-aac     unavailable: {e:#}"),
    }
    Ok(())
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
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        match cli.command {
            Some(Command::Live(args)) => runtime.block_on(live(settings, args)),
            Some(Command::Relay { listen }) => runtime.block_on(relay(listen)),
            Some(Command::Encoders) => encoders(),
            None => {
                eprintln!("The desktop window is not part of this build yet. Start streaming with `onair live` (see `onair --help`).");
                std::process::exit(2);
            }
        }
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
