//! The `onair` command: headless live streaming, the embedded relay and diagnostics.

use anyhow::Context;
use clap::{Parser, Subcommand};
use onair::config::Settings;
use onair::pipeline::{run_live, LiveOptions};
use onair::relay::cli::RelayArgs;
use onair::stats::Stats;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// OnAir: live-stream a camera (or test card) and microphone (or tone) over RTMP.
#[derive(Parser, Debug)]
#[command(name = "onair", version = onair::about::VERSION_WITH_COMMIT, disable_version_flag = true, about, long_about = None)]
struct Cli {
    /// Print the version and the git commit it was built from.
    #[arg(short = 'V', long)]
    version: bool,
    /// With --version: also print the licence, the AAC encoder and the log directory.
    #[arg(long, requires = "version")]
    verbose: bool,
    /// Print OnAir's licence and those of every library compiled into it.
    #[arg(long)]
    licenses: bool,
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
    /// Run the relay on its own: RTMP in, RTMP and HTTP-FLV out, a watch page and stats.
    Relay(RelayArgs),
    /// List the encoder backends this build has and whether they open on this machine.
    Encoders,
    /// Play a stream stamped with `onair live --stamp` and measure glass-to-glass latency,
    /// jitter and lost frames (rtmp://…, http://….flv or an FLV file).
    Probe(ProbeArgs),
    /// List the microphones (and cameras) this machine offers.
    Devices,
    /// Run the video filters on a PNG picture and write the result (a before/after check).
    Snapshot(SnapshotArgs),
    /// Show the GPU adapters and the one the video filters use.
    Gpu,
    /// Write the manual page (roff) to standard output, or onair.1 and one page per
    /// subcommand into --dir; packages install them.
    #[command(hide = true)]
    Manual(ManualArgs),
    /// Write a shell completion script to standard output.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Options of `onair manual`.
#[derive(clap::Args, Debug)]
struct ManualArgs {
    /// Write onair.1 and onair-SUBCOMMAND.1 pages into this directory instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `onair manual`: the man pages, generated from this CLI definition so they never drift.
fn manual(args: &ManualArgs) -> anyhow::Result<()> {
    use clap::CommandFactory;
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .context("writing the man page")
        }
    }
}

/// `onair completions SHELL`: a completion script generated from this CLI definition.
fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "onair", &mut std::io::stdout());
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
    /// H.264 encoder: auto, x264, ffmpeg-x264, nvenc, qsv, vaapi, videotoolbox, amf or v4l2m2m
    /// (see `onair encoders`); an unavailable one falls back to x264.
    #[arg(long, value_name = "NAME")]
    encoder: Option<String>,
    /// Turn on the beauty filters (skin smoothing, brightening, sharpening) on the GPU; the
    /// `[video_filters]` settings give finer control.
    #[arg(long)]
    beauty: bool,
    /// Microphone to stream ("default" or a name from `onair devices`) instead of the tone.
    #[arg(long, value_name = "NAME")]
    mic: Option<String>,
    /// Camera to stream (an index or a name from `onair devices`) instead of the test card;
    /// a busy, missing or failing camera gives the test card and a warning.
    #[arg(long, value_name = "NAME|INDEX")]
    camera: Option<String>,
    /// Pixel format to ask the camera for: mjpeg, yuyv, nv12, rgb, bgr or gray (default: the
    /// mode closest to --size/--fps in any format).
    #[arg(long, value_name = "FORMAT")]
    camera_format: Option<String>,
    /// Beep once per second in the tone and flash the test card on the first frame of each
    /// second, so `onair probe` can measure the A/V offset (sets qa.sync_marks for this run).
    #[arg(long)]
    sync_marks: bool,
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
    /// Stamp every frame with its capture time and number (barcode, digits and SEI) for
    /// `onair probe` (sets qa.stamp for this run).
    #[arg(long)]
    stamp: bool,
    /// Time each publishing stage (capture, encode, queue, socket) and print the per-stage
    /// p50/p95 at the end.
    #[arg(long)]
    latency_report: bool,
}

/// Options of `onair probe`.
#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// rtmp://host[:port]/app/key, http://host[:port]/path.flv, or an FLV file.
    url: String,
    /// Stop after this many seconds (default: until the stream ends or Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Stop after this many decoded frames.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Seconds after the first frame left out of the latency statistics (a relay's GOP cache
    /// first replays older frames).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write one row per decoded frame to this CSV file.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw latency over time into this PNG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// No status lines.
    #[arg(long)]
    quiet: bool,
}

async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use onair::qa::probe::{run_probe, summary_text, ProbeOptions, ProbeSource};
    let mut opts = ProbeOptions::new(ProbeSource::parse(&args.url)?);
    opts.duration = args
        .duration
        .map(|d| seconds("--duration", d))
        .transpose()?;
    opts.warmup = if args.warmup == 0.0 {
        Duration::ZERO
    } else {
        seconds("--warmup", args.warmup)?
    };
    opts.frames = args.frames;
    opts.csv = args.csv;
    opts.plot = args.plot;
    if args.quiet {
        opts.status_every = None;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(stop_on_signal(tx));
    let summary = run_probe(&opts, rx).await?;
    eprint!("{}", summary_text(&summary));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    // A probe that decoded nothing measured nothing: say so with the exit status too, so a
    // script never takes an empty report for a good stream.
    anyhow::ensure!(
        summary.frames_decoded > 0,
        "measured nothing: no H.264 picture could be decoded from {} (is it empty, truncated, \
         audio-only or another codec?)",
        summary.source
    );
    Ok(())
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
    if let Some(e) = &args.encoder {
        settings.video.encoder = e.clone();
    }
    if let Some(l) = &args.listen {
        settings.relay.listen = l.clone();
    }
    if let Some(m) = &args.mic {
        settings.sources.microphone = Some(m.clone());
    }
    if let Some(c) = &args.camera {
        settings.sources.camera = Some(c.clone());
    }
    if let Some(f) = &args.camera_format {
        settings.sources.camera_format = Some(f.clone());
    }
    if args.sync_marks {
        settings.qa.sync_marks = true;
    }
    if args.beauty {
        settings.video_filters = onair::video::FilterSettings::beauty();
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
    if args.stamp {
        settings.qa.stamp = true;
    }
    settings.validate()
}

/// The longest `--duration` (or `--warmup`) accepted: ten years, far from any timer overflow.
const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// A positive, finite number of seconds no timer overflows on, or an error naming `flag`.
fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        secs > 0.0 && secs <= MAX_SECONDS,
        "{flag} {secs} is invalid: give a positive number of seconds, at most {MAX_SECONDS}"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// Turns Ctrl-C, SIGTERM or SIGHUP into a clean stop; a second one quits at once.
async fn stop_on_signal(tx: tokio::sync::watch::Sender<bool>) {
    let what = onair::signals::stop_requested().await;
    eprintln!("stopping ({what}); press Ctrl-C again to quit at once…");
    let _ = tx.send(true);
    let again = onair::signals::stop_requested().await;
    eprintln!("quitting at once ({again}): the recording may be incomplete");
    std::process::exit(130);
}

async fn live(settings: Settings, args: LiveArgs) -> anyhow::Result<()> {
    let mut settings = settings;
    apply_live_args(&mut settings, &args)?;
    resolve_encoder(&mut settings)?;
    let duration = args
        .duration
        .map(|d| seconds("--duration", d))
        .transpose()?;
    let mut opts = LiveOptions::new(settings);
    opts.duration = duration;
    opts.record = args.record.clone();
    opts.latency_report = args.latency_report;
    if args.quiet {
        opts.status_every = None;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(stop_on_signal(tx));
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
    if let Some(stages) = &report.stages {
        eprint!("{stages}");
    }
    if let Some(path) = &args.record {
        match &report.record_error {
            Some(e) => eprintln!("warning: {e}"),
            None => eprintln!("recording saved to {}", path.display()),
        }
    }
    Ok(())
}

async fn relay(settings: Settings, args: RelayArgs) -> anyhow::Result<()> {
    onair::relay::cli::run(settings.relay, args).await
}

/// Tells the user when the `video.encoder` they chose is unavailable here, and switches the
/// run to the fallback (x264) so the pipeline opens it without repeating the warning.
fn resolve_encoder(settings: &mut Settings) -> anyhow::Result<()> {
    use onair::encode::{probe, Backend};
    if settings.video.encoder == Backend::X264.name() {
        return Ok(());
    }
    let selection = probe::select_with(&settings.video.encoder, probe::probe())?;
    if let Some(notice) = &selection.notice {
        eprintln!("warning: {notice}");
        settings.video.encoder = selection.backend.name().into();
    }
    Ok(())
}

fn encoders(settings: &Settings) -> anyhow::Result<()> {
    let report = onair::encode::probe::probe();
    let selection = onair::encode::probe::select_with(&settings.video.encoder, report)?;
    print!("{}", report.table(&selection));
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

/// `onair devices`: what can be captured here, so the user can pick a name for --mic.
fn devices() -> anyhow::Result<()> {
    println!("Microphones:");
    let mics = onair::capture::microphone::input_devices()?;
    if mics.is_empty() {
        println!("  none found (the test tone is used)");
    }
    for m in &mics {
        let mark = if m.is_default { " (default)" } else { "" };
        println!("  {}{mark}", m.name);
        if let Some(c) = &m.default_config {
            println!(
                "      default format: {} ch, {} Hz, {}",
                c.channels, c.max_sample_rate, c.sample_format
            );
        }
    }
    println!("Cameras:");
    let cameras = onair::capture::list_cameras()?;
    if cameras.is_empty() {
        println!("  none found (the test card is used)");
    }
    for c in &cameras {
        println!("  {}: {} ({})", c.index, c.name, c.description);
        if let Some(e) = &c.error {
            println!("      unavailable: {e}");
        }
        for m in &c.modes {
            println!("      {m}");
        }
    }
    Ok(())
}

/// Options of `onair snapshot`.
#[derive(clap::Args, Debug)]
struct SnapshotArgs {
    /// Filters: beauty, all, none, or a comma-separated list of denoise, skin-mask, smoothing,
    /// whitening, color, sharpen, watermark [default: beauty, or the --filter-settings file].
    #[arg(long)]
    filters: Option<String>,
    /// Filter parameters from a TOML file (a settings file's [video_filters] table, or its
    /// fields at the top level).
    #[arg(long, value_name = "FILE")]
    filter_settings: Option<PathBuf>,
    /// Also write the original and the result side by side to this PNG.
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Use the CPU reference filters instead of the GPU.
    #[arg(long)]
    cpu: bool,
    /// The PNG picture to filter.
    input: PathBuf,
    /// Where to write the filtered PNG.
    output: PathBuf,
}

fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    use onair::video::{snapshot, BackendChoice, FilterSettings};
    let base = match &args.filter_settings {
        Some(path) => snapshot::load_filter_settings(path)?,
        None => FilterSettings::default(),
    };
    let list = match (&args.filters, &args.filter_settings) {
        (Some(list), _) => list.as_str(),
        (None, Some(_)) => "",
        (None, None) => "beauty",
    };
    let settings = snapshot::parse_filter_list(list, &base)?;
    let choice = if args.cpu {
        BackendChoice::Cpu
    } else {
        BackendChoice::Auto
    };
    let report = snapshot::snapshot(
        &args.input,
        &args.output,
        args.compare.as_deref(),
        &settings,
        choice,
    )?;
    eprintln!("{}", report.status);
    let stages: Vec<&str> = report.stages.iter().map(|s| s.name()).collect();
    eprintln!(
        "{}x{} through [{}] in {:.1} ms: wrote {}",
        report.width,
        report.height,
        stages.join(", "),
        report.filter_ms,
        args.output.display()
    );
    if let Some(path) = &args.compare {
        eprintln!("before | after: {}", path.display());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if cli.version {
        if cli.verbose {
            print!("{}", onair::about::version_verbose());
        } else {
            println!("{}", onair::about::version_line());
        }
        return;
    }
    if cli.licenses {
        // Long text, often piped into `less` or `head`: a closed pipe is not an error.
        use std::io::Write;
        let text = onair::about::third_party_notices();
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return;
    }
    if let Some(note) = onair::logging::init() {
        eprintln!("warning: {note}");
    }
    let result = (|| -> anyhow::Result<()> {
        let settings = Settings::load(cli.config.as_deref())?;
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        match cli.command {
            Some(Command::Live(args)) => runtime.block_on(live(settings, args)),
            Some(Command::Relay(args)) => runtime.block_on(relay(settings, args)),
            Some(Command::Encoders) => encoders(&settings),
            Some(Command::Probe(args)) => runtime.block_on(probe(args)),
            Some(Command::Devices) => devices(),
            Some(Command::Snapshot(args)) => snapshot(args),
            Some(Command::Manual(args)) => manual(&args),
            Some(Command::Completions { shell }) => {
                completions(shell);
                Ok(())
            }
            Some(Command::Gpu) => {
                print!("{}", onair::video::gpu::report());
                Ok(())
            }
            None => {
                drop(runtime);
                onair::gui::run(settings, cli.config.clone())
            }
        }
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
