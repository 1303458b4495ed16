//! Builds the live graph from Settings and runs it: sources → encoders (one thread each) →
//! a bounded packet queue → outputs (RTMP publisher, FLV recorder) on tokio. The CLI, the
//! desktop app and the tests all go through [`run_live`], so they run the same pipeline.

use crate::audio::meter::{Meter, DEFAULT_WINDOW_MS};
use crate::audio::AudioChain;
use crate::capture::microphone::{Microphone, MicrophoneOptions};
use crate::capture::tone::Tone;
use crate::capture::{AudioSource, VideoSource};
use crate::clock::MediaClock;
use crate::config::Settings;
use crate::encode::{self, AudioEncoder, VideoEncoder};
use crate::flv::FlvWriter;
use crate::live_control::LiveHooks;
use crate::media::VideoFrame;
use crate::media::{MediaKind, Packet, StreamHeaders};
use crate::publish::output::{run_output, EncoderControl, OutputConfig, WrittenHook};
use crate::publish::rtmp::PublishError;
use crate::publish::url::RtmpUrl;
use crate::qa::stamp::{self, Stage, StageRecorder, StageReport, WallAnchor};
use crate::relay::{start_relay, RelayConfig, RelayHandle};
use crate::stats::{status_line, Stats};
use crate::video::VideoFilterChain;
use anyhow::Context;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Packets the output queue may hold (~4 s of 30 fps video plus audio) before dropping.
pub const QUEUE_CAPACITY: usize = 512;

/// The stream key used when streaming to the embedded relay.
pub const LOCAL_STREAM_KEY: &str = "test";

/// What to run: settings plus the options of one run.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub settings: Settings,
    /// Stop after this long; None runs until stopped.
    pub duration: Option<Duration>,
    /// Also write everything that goes out to this FLV file.
    pub record: Option<PathBuf>,
    /// Print a status line this often (None: quiet).
    pub status_every: Option<Duration>,
    /// How long each connection step may take.
    pub connect_timeout: Duration,
    /// Stamp every frame with its capture time and number ([`crate::qa::stamp`]); defaults
    /// to `qa.stamp` of the settings.
    pub stamp: bool,
    /// Time each publishing stage of every video frame and return the percentiles in
    /// [`LiveReport::stages`].
    pub latency_report: bool,
    /// What a user interface attaches: preview texture, live settings, meters.
    pub hooks: LiveHooks,
}

impl LiveOptions {
    /// Options for `settings` with defaults: run until stopped, status every second.
    pub fn new(settings: Settings) -> Self {
        LiveOptions {
            duration: None,
            record: None,
            status_every: Some(Duration::from_secs(1)),
            connect_timeout: Duration::from_secs(10),
            stamp: settings.qa.stamp,
            latency_report: false,
            hooks: LiveHooks::default(),
            settings,
        }
    }
}

/// What a finished run did, for the final message and for tests.
#[derive(Clone, Debug, Default)]
pub struct LiveReport {
    pub elapsed: Duration,
    pub frames_sent: u64,
    pub audio_frames_sent: u64,
    pub frames_dropped: u64,
    pub audio_dropped: u64,
    pub bytes_sent: u64,
    /// Times the connection was re-established after a failure.
    pub reconnects: u64,
    /// Set when recording failed (e.g. disk full); the stream itself went on.
    pub record_error: Option<String>,
    /// Per-stage publishing latency, when [`LiveOptions::latency_report`] asked for it.
    pub stages: Option<StageReport>,
}

/// Where the run publishes: a user URL, or the embedded relay started for it.
struct Destination {
    url: RtmpUrl,
    _relay: Option<RelayHandle>,
}

async fn resolve_destination(settings: &Settings) -> anyhow::Result<Destination> {
    if let Some(url) = settings
        .destination
        .url
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        let url = RtmpUrl::parse(url)?;
        return Ok(Destination { url, _relay: None });
    }
    let listen = settings.relay.listen.parse().with_context(|| {
        format!(
            "relay.listen = '{}' is not an address",
            settings.relay.listen
        )
    })?;
    let relay = start_relay(RelayConfig {
        publisher_grace: Duration::from_secs(settings.relay.publisher_grace_secs),
        ..RelayConfig::new(listen)
    })
    .await?;
    let url = RtmpUrl::parse(&format!(
        "rtmp://{}/live/{}",
        relay.local_addr, LOCAL_STREAM_KEY
    ))?;
    eprintln!("embedded relay listening on rtmp://{}", relay.local_addr);
    eprintln!(
        "watch with: ffplay -fflags nobuffer rtmp://{}/live/{}",
        relay.local_addr, LOCAL_STREAM_KEY
    );
    Ok(Destination {
        url,
        _relay: Some(relay),
    })
}

/// Shared between the media threads and the output loop.
struct Shared {
    stop: AtomicBool,
    stats: Arc<Stats>,
    error: Mutex<Option<anyhow::Error>>,
}

impl Shared {
    fn fail(&self, e: anyhow::Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts a pipeline thread named `onair-NAME`. A panic in it becomes the run's error (every
/// thread stops, the run ends with a message and a non-zero exit) instead of a silently
/// missing video or audio stream.
fn spawn_guarded(
    name: &'static str,
    shared: Arc<Shared>,
    body: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("onair-{name}"))
        .spawn(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                shared.fail(anyhow::anyhow!(
                    "the {name} thread crashed ({what}). This is a bug: please report it with the log"
                ));
            }
        })
        .unwrap_or_else(|e| panic!("the system refused a new thread for {name}: {e}"))
}

/// The output settings for a run: destination, backup, adaptation and reconnect limits.
fn output_config(
    s: &Settings,
    primary: RtmpUrl,
    connect_timeout: Duration,
) -> anyhow::Result<OutputConfig> {
    let mut cfg = OutputConfig::new(primary, s.video.bitrate_kbps, s.audio.bitrate_kbps);
    cfg.connect_timeout = connect_timeout;
    cfg.backup = match s
        .destination
        .backup_url
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        Some(u) => Some(RtmpUrl::parse(u).context("destination.backup_url is invalid")?),
        None => None,
    };
    cfg.backoff.max_attempts = s.network.max_reconnect_attempts;
    cfg.backoff.max = Duration::from_secs(s.network.max_reconnect_delay_secs as u64);
    cfg.backoff.jitter = s.network.reconnect_jitter;
    if !s.network.adaptive_bitrate {
        cfg.abr = None;
    } else if let Some(abr) = cfg.abr.as_mut() {
        if s.network.min_bitrate_kbps > 0 {
            abr.min_kbps = s.network.min_bitrate_kbps;
        }
    }
    Ok(cfg)
}

/// Runs a live session until `duration`, a stop request, or an error.
pub async fn run_live(
    opts: LiveOptions,
    stats: Arc<Stats>,
    mut stop_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<LiveReport> {
    let s = &opts.settings;
    s.validate()?;
    let dest = resolve_destination(s).await?;
    let video_enc = encode::open_video(&s.video).context("opening the video encoder")?;
    let audio_enc = encode::open_audio(&s.audio).context("opening the audio encoder")?;
    let headers = StreamHeaders {
        video: Some(video_enc.header()),
        audio: Some(audio_enc.header()),
    };
    eprintln!(
        "going live to {} ({}x{}@{} {} {} kbps + {} {} kbps)",
        dest.url,
        s.video.width,
        s.video.height,
        s.video.fps,
        video_enc.name(),
        s.video.bitrate_kbps,
        audio_enc.name(),
        s.audio.bitrate_kbps
    );
    let mut out_cfg = output_config(s, dest.url.clone(), opts.connect_timeout)?;
    let mut recorder = match &opts.record {
        Some(path) => Some(open_recorder(path, &headers)?),
        None => None,
    };
    let mut record_error = None;

    let clock = MediaClock::start();
    let anchor = WallAnchor::now();
    let stages = opts
        .latency_report
        .then(|| Arc::new(StageRecorder::new(anchor)));
    if let Some(st) = stages.clone() {
        out_cfg.on_video_written = Some(WrittenHook(Arc::new(move |pts| {
            st.mark(pts, Stage::Written)
        })));
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        stats: stats.clone(),
        error: Mutex::new(None),
    });
    let control = Arc::new(EncoderControl::new(s.video.bitrate_kbps));
    let (tx, rx) = mpsc::channel::<Packet>(QUEUE_CAPACITY);
    let video_source = open_video_source(s, clock, &stats)?;
    let filters = open_filters(s, &opts.hooks)?;
    let (audio_source, chain) = open_audio_source(s, clock)?;
    let video_thread = spawn_video(
        Box::new(video_source),
        video_enc,
        tx.clone(),
        shared.clone(),
        control.clone(),
        VideoExtras {
            filters,
            fps: s.video.fps,
            stamp: opts.stamp.then_some(anchor),
            stages: stages.clone(),
            hooks: opts.hooks.clone(),
        },
    );
    let audio_thread = spawn_audio(
        audio_source,
        chain,
        Some(audio_enc),
        tx,
        shared.clone(),
        opts.hooks.clone(),
    );

    let started = Instant::now();
    let output = run_output(
        &out_cfg,
        &headers,
        // The output connects while capture and encoding start; a failure is retried.
        None,
        rx,
        &control,
        &stats,
        Duration::from_secs(2),
        |p| {
            if let (Some(st), MediaKind::Video) = (&stages, p.kind) {
                st.mark(p.pts_ms, Stage::Queued);
            }
            if let Some(w) = recorder.as_mut() {
                if let Err(e) = w.write_packet(p) {
                    let msg = format!(
                    "recording stopped: {e}. The stream goes on; free disk space or choose another --record path"
                );
                    eprintln!("warning: {msg}");
                    record_error = Some(msg);
                    recorder = None;
                }
            }
        },
    );
    let supervise = async {
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        let every = opts.status_every.unwrap_or(Duration::from_secs(3600));
        let mut status_tick = tokio::time::interval(every);
        status_tick.tick().await;
        let mut prev = stats.snapshot();
        let mut prev_at = Instant::now();
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = until_deadline => shared.stop.store(true, Ordering::SeqCst),
                changed = stop_rx.changed() => {
                    if changed.is_err() || *stop_rx.borrow() {
                        shared.stop.store(true, Ordering::SeqCst);
                    }
                }
                _ = status_tick.tick(), if opts.status_every.is_some() => {
                    let now = stats.snapshot();
                    let line = status_line(
                        &stats.state(),
                        started.elapsed().as_secs_f64(),
                        &prev,
                        &now,
                        prev_at.elapsed().as_secs_f64(),
                    );
                    eprintln!("{line}");
                    prev = now;
                    prev_at = Instant::now();
                }
            }
            if shared.stop.load(Ordering::SeqCst)
                && deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
            {
                // keep printing while the output drains; the output future ends the select
                std::future::pending::<()>().await;
            }
        }
    };
    let result = tokio::select! {
        r = output => r,
        _ = supervise => unreachable!("the supervisor never ends"),
    };
    shared.stop.store(true, Ordering::SeqCst);
    for t in [video_thread, audio_thread] {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Some(mut w) = recorder {
        if let Err(e) = w.flush() {
            record_error = Some(format!("recording could not be finished: {e}"));
        }
    }
    let summary = result.map_err(|e| match e {
        // already says the whole story
        PublishError::NeverLive { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context("the stream ended"),
    })?;
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    let snap = stats.snapshot();
    Ok(LiveReport {
        elapsed: started.elapsed(),
        frames_sent: snap.frames_sent,
        audio_frames_sent: snap.audio_frames_sent,
        frames_dropped: snap.frames_dropped + snap.queue_video_drops,
        audio_dropped: snap.audio_dropped + snap.queue_audio_drops,
        bytes_sent: summary.bytes_sent,
        reconnects: summary.reconnects,
        record_error,
        stages: stages.map(|s| s.report()),
    })
}

fn open_recorder(
    path: &std::path::Path,
    headers: &StreamHeaders,
) -> anyhow::Result<FlvWriter<BufWriter<std::fs::File>>> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the recording {}", path.display()))?;
    let mut w = FlvWriter::new(BufWriter::with_capacity(1 << 16, file), true, true)?;
    w.write_headers(headers)
        .with_context(|| format!("cannot write the recording {}", path.display()))?;
    Ok(w)
}

/// Outcome of offering a packet to the bounded queue.
enum Offer {
    Sent,
    Dropped,
    Closed,
}

fn offer(tx: &mpsc::Sender<Packet>, p: Packet) -> Offer {
    match tx.try_send(p) {
        Ok(()) => Offer::Sent,
        Err(mpsc::error::TrySendError::Full(_)) => Offer::Dropped,
        Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
    }
}

/// What the video thread does besides capture and encode: filters, the latency stamp and
/// stage timing.
struct VideoExtras {
    /// The GPU (or CPU reference) filter chain, when any filter is on.
    filters: Option<VideoFilterChain>,
    /// Frame rate, for the filters' budget check.
    fps: u32,
    /// Stamp frames, with capture times from this anchor.
    stamp: Option<WallAnchor>,
    stages: Option<Arc<StageRecorder>>,
    /// Preview and live filter settings from a user interface.
    hooks: LiveHooks,
}

/// The video source the settings ask for.
fn open_video_source(
    s: &Settings,
    clock: MediaClock,
    stats: &Arc<Stats>,
) -> anyhow::Result<Box<dyn VideoSource>> {
    crate::capture::open_video_source(s, clock, stats.clone())
}

/// The filter chain, when a filter is on or an interface wants the preview (which is
/// rendered by the GPU chain even with every filter off).
fn open_filters(s: &Settings, hooks: &LiveHooks) -> anyhow::Result<Option<VideoFilterChain>> {
    if s.video_filters.active_stages().is_empty() && hooks.preview.is_none() {
        return Ok(None);
    }
    let mut chain = VideoFilterChain::new(&s.video_filters, s.video.width, s.video.height)
        .context("starting the video filters")?;
    eprintln!("video filters: {}", chain.status());
    if let Some(slot) = &hooks.preview {
        match chain.enable_preview() {
            Ok(texture) => slot.set_texture(texture),
            Err(e) => slot.set_unavailable(format!("{e:#}")),
        }
    }
    Ok(Some(chain))
}

/// How frames reach the preview when no filter changes them: only the preview needs the GPU
/// then, and on a software rasteriser (no GPU: the CPU does that work beside the encoder)
/// only every other frame is shown; the others go straight to the encoder.
struct PreviewOnly {
    /// Show every n-th frame (1: all).
    stride: u64,
    count: u64,
    /// Whether the last frame was drawn into the preview.
    rendered: bool,
}

impl PreviewOnly {
    fn new(chain: Option<&VideoFilterChain>) -> Self {
        let software = chain.is_some_and(|c| c.preview_texture().is_some())
            && crate::video::gpu::GpuContext::shared().is_ok_and(|g| g.is_software());
        PreviewOnly {
            stride: if software { 2 } else { 1 },
            count: 0,
            rendered: false,
        }
    }
}

/// Runs one frame through the filter chain, or, when no filter is on and the preview may skip
/// frames, draws every n-th frame into the preview and passes the frame on unchanged.
fn preview_or_filter(
    chain: &mut VideoFilterChain,
    mut frame: VideoFrame,
    preview: &mut PreviewOnly,
) -> anyhow::Result<Vec<VideoFrame>> {
    preview.rendered = true;
    if chain.is_active() || preview.stride == 1 {
        return chain.push(frame);
    }
    // Frames still in flight from when a filter was on come out first, in order.
    let mut out = chain.flush()?;
    preview.count += 1;
    preview.rendered = preview.count.is_multiple_of(preview.stride);
    if preview.rendered {
        chain.process(&mut frame)?;
    }
    out.push(frame);
    Ok(out)
}

/// Picks up filter settings posted by an interface, between frames (never waits for it).
fn apply_filter_updates(filters: &mut Option<VideoFilterChain>, hooks: &LiveHooks, stats: &Stats) {
    let (Some(chain), Some(mailbox)) = (filters.as_mut(), hooks.filters.as_ref()) else {
        return;
    };
    if let Some(new) = mailbox.try_take() {
        if let Err(e) = chain.update(&new) {
            stats.push_event(format!("video filters kept their settings: {e:#}"));
        }
    }
}

fn spawn_video(
    mut source: Box<dyn VideoSource>,
    mut encoder: Box<dyn VideoEncoder>,
    tx: mpsc::Sender<Packet>,
    shared: Arc<Shared>,
    control: Arc<EncoderControl>,
    extras: VideoExtras,
) -> std::thread::JoinHandle<()> {
    spawn_guarded("video", shared.clone(), move || {
        let stats = shared.stats.clone();
        // After a drop, inter frames would reference a missing picture: skip to an IDR.
        let mut need_keyframe = false;
        let mut skipped_seen = 0;
        let mut bitrate = control.bitrate();
        let mut deliver = |p: Packet, encoder: &mut Box<dyn VideoEncoder>| -> bool {
            if need_keyframe && !p.keyframe {
                Stats::add(&stats.frames_dropped, 1);
                return true;
            }
            match offer(&tx, p) {
                Offer::Sent => need_keyframe = false,
                Offer::Dropped => {
                    Stats::add(&stats.frames_dropped, 1);
                    need_keyframe = true;
                    encoder.force_keyframe();
                }
                Offer::Closed => return false,
            }
            true
        };
        let mut filters = extras.filters;
        let mut preview_only = PreviewOnly::new(filters.as_ref());
        let mut budget_checked = Instant::now();
        // Stamp, encode and deliver one (filtered) frame; false when the output is gone.
        let mut encode_one =
            |mut frame: VideoFrame,
             encoder: &mut Box<dyn VideoEncoder>,
             deliver: &mut dyn FnMut(Packet, &mut Box<dyn VideoEncoder>) -> bool|
             -> anyhow::Result<bool> {
                if let Some(anchor) = &extras.stamp {
                    let s = stamp::Stamp {
                        capture_unix_ms: anchor.unix_ms_at(frame.pts_ms),
                        frame: frame.index as u32,
                    };
                    stamp::draw(&mut frame, &s);
                    encoder.attach_sei(stamp::sei_payload(&s).to_vec());
                }
                if let Some(st) = &extras.stages {
                    st.mark(frame.pts_ms, Stage::Ready);
                }
                apply_control(&control, encoder.as_mut(), &mut bitrate);
                let t = Instant::now();
                let packets = encoder.encode(&frame).context("video encoder failed")?;
                Stats::add(&stats.encode_us, t.elapsed().as_micros() as u64);
                Stats::add(&stats.frames_encoded, packets.len() as u64);
                if let Some(st) = &extras.stages {
                    for p in &packets {
                        st.mark(p.pts_ms, Stage::Encoded);
                    }
                }
                for p in packets {
                    if !deliver(p, encoder) {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
        while !shared.stop.load(Ordering::SeqCst) {
            let frame = match source.next_frame() {
                Ok(f) => f,
                Err(e) => return shared.fail(e.context("video source failed")),
            };
            if let Some(st) = &extras.stages {
                st.mark(frame.pts_ms, Stage::Captured);
            }
            Stats::add(&shared.stats.frames_in, 1);
            let skipped = source.skipped();
            if skipped > skipped_seen {
                Stats::add(&shared.stats.frames_dropped, skipped - skipped_seen);
                skipped_seen = skipped;
            }
            apply_filter_updates(&mut filters, &extras.hooks, &stats);
            let frames = match filters.as_mut() {
                Some(f) => match preview_or_filter(f, frame, &mut preview_only) {
                    Ok(frames) => frames,
                    Err(e) => return shared.fail(e.context("video filters failed")),
                },
                None => vec![frame],
            };
            if let Some(slot) = &extras.hooks.preview {
                if preview_only.rendered {
                    slot.frame_rendered();
                }
            }
            for frame in frames {
                match encode_one(frame, &mut encoder, &mut deliver) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => return shared.fail(e),
                }
            }
            if let Some(f) = filters.as_ref() {
                if budget_checked.elapsed() >= Duration::from_secs(5) {
                    budget_checked = Instant::now();
                    if let Some(w) = f.over_budget(extras.fps as f64) {
                        tracing::warn!("{w}");
                        shared.stats.push_event(format!("video filters: {w}"));
                    }
                }
            }
        }
        // Nothing captured is lost at the end: frames still in the filters, then the encoder.
        if let Some(f) = filters.as_mut() {
            if let Ok(rest) = f.flush() {
                for frame in rest {
                    if !matches!(encode_one(frame, &mut encoder, &mut deliver), Ok(true)) {
                        return;
                    }
                }
            }
        }
        if let Ok(rest) = encoder.flush() {
            for p in rest {
                if !deliver(p, &mut encoder) {
                    return;
                }
            }
        }
    })
}

/// Applies the output's requests (bitrate, IDR) to the encoder between frames.
fn apply_control(control: &EncoderControl, encoder: &mut dyn VideoEncoder, bitrate: &mut u32) {
    if control.take_keyframe_request() {
        encoder.force_keyframe();
    }
    let wanted = control.bitrate();
    if wanted != *bitrate {
        match encoder.set_bitrate(wanted) {
            Ok(()) => *bitrate = wanted,
            Err(e) => {
                tracing::warn!("encoder kept {} kbps: {e:#}", *bitrate);
                control.set_bitrate(*bitrate);
            }
        }
    }
}

/// The audio source the settings ask for: a microphone through the audio chain, or the test
/// tone as it is (a voice chain would only distort a test signal).
fn open_audio_source(
    s: &Settings,
    clock: MediaClock,
) -> anyhow::Result<(Box<dyn AudioSource>, Option<AudioChain>)> {
    match s.sources.microphone.as_deref().filter(|m| !m.is_empty()) {
        Some(device) => {
            let mic = Microphone::open(MicrophoneOptions {
                device: device.to_string(),
                ..Default::default()
            })
            .with_context(|| {
                format!("cannot open the microphone '{device}': check `onair devices` for its name, or whether another program holds it")
            })?;
            eprintln!("microphone: {}", mic.describe());
            let chain = AudioChain::from_settings(&s.audio_chain, s.audio.sample_rate)?;
            Ok((Box::new(mic), Some(chain)))
        }
        None => Ok((Box::new(Tone::from_settings(s, clock)), None)),
    }
}

fn spawn_audio(
    mut source: Box<dyn AudioSource>,
    mut chain: Option<AudioChain>,
    mut encoder: Option<Box<dyn AudioEncoder>>,
    tx: mpsc::Sender<Packet>,
    shared: Arc<Shared>,
    hooks: LiveHooks,
) -> std::thread::JoinHandle<()> {
    spawn_guarded("audio", shared.clone(), move || {
        let stats = shared.stats.clone();
        // Meters of what the encoder gets when no chain measures it (the tone).
        let mut meter = Meter::new(48_000, DEFAULT_WINDOW_MS);
        while !shared.stop.load(Ordering::SeqCst) {
            let mut block = match source.next_block() {
                Ok(b) => b,
                Err(e) => return shared.fail(e.context("audio source failed")),
            };
            if let (Some(chain), Some(mailbox)) = (chain.as_mut(), &hooks.audio_chain) {
                if let Some(new) = mailbox.try_take() {
                    if let Err(e) = chain.apply(&new) {
                        stats.push_event(format!("audio chain kept its settings: {e:#}"));
                    }
                }
            }
            if let Some(chain) = chain.as_mut() {
                if let Err(e) = chain.process_block(&mut block) {
                    return shared.fail(e.context("audio chain failed"));
                }
            }
            if let Some(meters) = &hooks.meters {
                match chain.as_ref() {
                    Some(chain) => meters.publish(&chain.meters().output),
                    None => {
                        meter.process(&block.samples, block.channels as usize);
                        meters.publish(&meter.levels());
                    }
                }
            }
            let Some(encoder) = encoder.as_mut() else {
                continue;
            };
            let packets = match encoder.encode(&block) {
                Ok(p) => p,
                Err(e) => return shared.fail(e.context("audio encoder failed")),
            };
            for p in packets {
                match offer(&tx, p) {
                    Offer::Sent => {}
                    Offer::Dropped => Stats::add(&stats.audio_dropped, 1),
                    Offer::Closed => return,
                }
            }
        }
    })
}

/// A preview without going live: the sources, filters and audio chain the settings ask for,
/// running on their own threads and feeding `hooks` (preview texture, meters), with nothing
/// encoded or sent. The desktop app shows it while offline; stopping it releases the camera
/// and microphone for the live run.
pub struct PreviewRun {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PreviewRun {
    /// Opens the sources and starts the preview.
    pub fn start(settings: &Settings, hooks: LiveHooks, stats: Arc<Stats>) -> anyhow::Result<Self> {
        settings.validate()?;
        let clock = MediaClock::start();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stats: stats.clone(),
            error: Mutex::new(None),
        });
        let mut source = open_video_source(settings, clock, &stats)?;
        let mut filters = open_filters(settings, &hooks)?;
        let (audio_source, chain) = open_audio_source(settings, clock)?;
        // Never read: the preview encodes nothing.
        let (tx, _rx) = mpsc::channel::<Packet>(1);
        let audio = spawn_audio(audio_source, chain, None, tx, shared.clone(), hooks.clone());
        let video_shared = shared.clone();
        let video = spawn_guarded("preview", shared.clone(), move || {
            let shared = video_shared;
            while !shared.stop.load(Ordering::SeqCst) {
                let frame = match source.next_frame() {
                    Ok(f) => f,
                    Err(e) => return shared.fail(e.context("video source failed")),
                };
                Stats::add(&shared.stats.frames_in, 1);
                apply_filter_updates(&mut filters, &hooks, &shared.stats);
                if let Some(f) = filters.as_mut() {
                    if let Err(e) = f.push(frame) {
                        return shared.fail(e.context("video filters failed"));
                    }
                }
                if let Some(slot) = &hooks.preview {
                    slot.frame_rendered();
                }
            }
        });
        Ok(PreviewRun {
            shared,
            threads: vec![video, audio],
        })
    }

    /// Why the preview stopped on its own (a source or the filters failed), if it did.
    pub fn error(&self) -> Option<String> {
        self.shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| format!("{e:#}"))
    }

    /// Stops the threads and waits for them (the sources are closed when this returns).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PreviewRun {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            stats: Arc::new(Stats::default()),
            error: Mutex::new(None),
        })
    }

    #[test]
    fn a_panicking_thread_stops_the_run_with_a_clear_error() {
        let shared = shared();
        let t = spawn_guarded("video", shared.clone(), || {
            let v: Vec<u8> = Vec::new();
            let _ = v[3];
        });
        t.join().expect("the panic is caught inside the thread");
        assert!(
            shared.stop.load(Ordering::SeqCst),
            "the other threads are told to stop"
        );
        let e = shared
            .error
            .lock()
            .unwrap()
            .take()
            .expect("an error for the run");
        let msg = format!("{e:#}");
        assert!(msg.contains("the video thread crashed"), "{msg}");
        assert!(msg.contains("index out of bounds"), "{msg}");
    }

    #[test]
    fn a_thread_that_ends_normally_leaves_no_error() {
        let shared = shared();
        spawn_guarded("audio", shared.clone(), || {})
            .join()
            .unwrap();
        assert!(!shared.stop.load(Ordering::SeqCst));
        assert!(shared.error.lock().unwrap().is_none());
    }
}
