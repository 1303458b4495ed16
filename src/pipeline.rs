//! Builds the live graph from Settings and runs it: sources → encoders (one thread each) →
//! a bounded packet queue → outputs (RTMP publisher, FLV recorder) on tokio. The CLI, the
//! future GUI and the tests all go through [`run_live`], so they run the same pipeline.

use crate::capture::test_card::TestCard;
use crate::capture::tone::Tone;
use crate::capture::{AudioSource, VideoSource};
use crate::clock::MediaClock;
use crate::config::Settings;
use crate::encode::{self, AudioEncoder, VideoEncoder};
use crate::flv::FlvWriter;
use crate::media::{MediaKind, Packet, StreamHeaders};
use crate::publish::rtmp::RtmpPublisher;
use crate::publish::url::RtmpUrl;
use crate::relay::{start_relay, RelayConfig, RelayHandle};
use crate::stats::{status_line, Stats};
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
}

impl LiveOptions {
    /// Options for `settings` with defaults: run until stopped, status every second.
    pub fn new(settings: Settings) -> Self {
        LiveOptions {
            settings,
            duration: None,
            record: None,
            status_every: Some(Duration::from_secs(1)),
            connect_timeout: Duration::from_secs(10),
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
    /// Set when recording failed (e.g. disk full); the stream itself went on.
    pub record_error: Option<String>,
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
    let relay = start_relay(RelayConfig { listen }).await?;
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
    let mut publisher = RtmpPublisher::connect(&dest.url, &headers, opts.connect_timeout).await?;
    let mut recorder = match &opts.record {
        Some(path) => Some(open_recorder(path, &headers)?),
        None => None,
    };
    let mut record_error = None;

    let clock = MediaClock::start();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        stats: stats.clone(),
        error: Mutex::new(None),
    });
    let (tx, mut rx) = mpsc::channel::<Packet>(QUEUE_CAPACITY);
    let video_source = TestCard::new(clock, s.video.width, s.video.height, s.video.fps)?;
    let audio_source = Tone::new(clock, s.sources.tone_hz);
    let video_thread = spawn_video(
        Box::new(video_source),
        video_enc,
        tx.clone(),
        shared.clone(),
    );
    let audio_thread = spawn_audio(Box::new(audio_source), audio_enc, tx, shared.clone());

    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut status_tick =
        tokio::time::interval(opts.status_every.unwrap_or(Duration::from_secs(3600)));
    status_tick.tick().await;
    let mut prev = stats.snapshot();
    let mut prev_at = Instant::now();
    let mut stream_error = None;
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            packet = rx.recv() => {
                let Some(packet) = packet else { break };
                stats.queue_depth.store(rx.len() as u64, Ordering::Relaxed);
                if let Err(e) = publisher.send_packet(&packet).await {
                    stream_error = Some(anyhow::Error::new(e));
                    shared.stop.store(true, Ordering::SeqCst);
                    break;
                }
                count_sent(&stats, &packet);
                if let Some(w) = recorder.as_mut() {
                    if let Err(e) = w.write_packet(&packet) {
                        let msg = format!("recording stopped: {e}. The stream goes on; free disk space or choose another --record path");
                        eprintln!("warning: {msg}");
                        record_error = Some(msg);
                        recorder = None;
                    }
                }
            }
            n = publisher.read_server() => {
                let r = match n {
                    Ok(n) => publisher.handle_server_data(n).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    stream_error = Some(anyhow::Error::new(e));
                    shared.stop.store(true, Ordering::SeqCst);
                    break;
                }
            }
            _ = until_deadline => shared.stop.store(true, Ordering::SeqCst),
            changed = stop_rx.changed() => {
                if changed.is_err() || *stop_rx.borrow() {
                    shared.stop.store(true, Ordering::SeqCst);
                }
            }
            _ = status_tick.tick(), if opts.status_every.is_some() => {
                let now = stats.snapshot();
                eprintln!("{}", status_line(started.elapsed().as_secs_f64(), &prev, &now, prev_at.elapsed().as_secs_f64()));
                prev = now;
                prev_at = Instant::now();
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    drop(rx);
    for t in [video_thread, audio_thread] {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let bytes_sent = publisher.bytes_sent;
    if stream_error.is_none() {
        let _ = publisher.close().await;
    }
    if let Some(mut w) = recorder {
        if let Err(e) = w.flush() {
            record_error = Some(format!("recording could not be finished: {e}"));
        }
    }
    if let Some(e) = stream_error {
        return Err(e.context("the stream was interrupted"));
    }
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
        frames_dropped: snap.frames_dropped,
        audio_dropped: snap.audio_dropped,
        bytes_sent,
        record_error,
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

fn count_sent(stats: &Stats, p: &Packet) {
    match p.kind {
        MediaKind::Video => {
            Stats::add(&stats.frames_sent, 1);
            Stats::add(&stats.video_bytes, p.data.len() as u64);
            stats.last_video_ms.store(p.pts_ms, Ordering::Relaxed);
        }
        MediaKind::Audio => {
            Stats::add(&stats.audio_frames_sent, 1);
            Stats::add(&stats.audio_bytes, p.data.len() as u64);
        }
    }
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

fn spawn_video(
    mut source: Box<dyn VideoSource>,
    mut encoder: Box<dyn VideoEncoder>,
    tx: mpsc::Sender<Packet>,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("onair-video".into())
        .spawn(move || {
            let stats = shared.stats.clone();
            // After a drop, inter frames would reference a missing picture: skip to an IDR.
            let mut need_keyframe = false;
            let mut skipped_seen = 0;
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
            while !shared.stop.load(Ordering::SeqCst) {
                let frame = match source.next_frame() {
                    Ok(f) => f,
                    Err(e) => return shared.fail(e.context("video source failed")),
                };
                Stats::add(&stats.frames_in, 1);
                let skipped = source.skipped();
                if skipped > skipped_seen {
                    Stats::add(&stats.frames_dropped, skipped - skipped_seen);
                    skipped_seen = skipped;
                }
                let t = Instant::now();
                let packets = match encoder.encode(&frame) {
                    Ok(p) => p,
                    Err(e) => return shared.fail(e.context("video encoder failed")),
                };
                Stats::add(&stats.encode_us, t.elapsed().as_micros() as u64);
                Stats::add(&stats.frames_encoded, packets.len() as u64);
                for p in packets {
                    if !deliver(p, &mut encoder) {
                        return;
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
        .expect("spawning the video thread")
}

fn spawn_audio(
    mut source: Box<dyn AudioSource>,
    mut encoder: Box<dyn AudioEncoder>,
    tx: mpsc::Sender<Packet>,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("onair-audio".into())
        .spawn(move || {
            let stats = shared.stats.clone();
            while !shared.stop.load(Ordering::SeqCst) {
                let block = match source.next_block() {
                    Ok(b) => b,
                    Err(e) => return shared.fail(e.context("audio source failed")),
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
        .expect("spawning the audio thread")
}
