//! The RTMP output: moves packets from the encoders to the server through the send queue,
//! measures the link, runs adaptive bitrate, and reconnects with backoff when the connection
//! breaks, so a network blip costs a few frames instead of the stream. Every decision is
//! logged and counted in [`Stats`].

use super::abr::{Abr, AbrConfig, LinkSample};
use super::backoff::BackoffConfig;
use super::queue::SendQueue;
use super::reconnect::{NextAttempt, ReconnectPolicy, Server};
use super::rtmp::{PublishError, RtmpPublisher};
use super::url::RtmpUrl;
use crate::media::{MediaKind, Packet, StreamHeaders};
use crate::stats::Stats;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
// tokio's clock, so the reconnect and bitrate policies can be tested with paused time.
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How the encoder is steered from the output: bitrate changes and IDR requests. The video
/// thread applies them between frames.
#[derive(Debug, Default)]
pub struct EncoderControl {
    force_keyframe: AtomicBool,
    bitrate_kbps: AtomicU32,
}

impl EncoderControl {
    /// A handle starting at `kbps`.
    pub fn new(kbps: u32) -> Self {
        EncoderControl {
            force_keyframe: AtomicBool::new(false),
            bitrate_kbps: AtomicU32::new(kbps),
        }
    }

    /// Asks for an IDR as soon as possible.
    pub fn request_keyframe(&self) {
        self.force_keyframe.store(true, Ordering::Relaxed);
    }

    /// Takes a pending IDR request.
    pub fn take_keyframe_request(&self) -> bool {
        self.force_keyframe.swap(false, Ordering::Relaxed)
    }

    /// Sets the bitrate the encoder should use.
    pub fn set_bitrate(&self, kbps: u32) {
        self.bitrate_kbps.store(kbps, Ordering::Relaxed);
    }

    /// The bitrate the encoder should use.
    pub fn bitrate(&self) -> u32 {
        self.bitrate_kbps.load(Ordering::Relaxed)
    }
}

/// How the output behaves.
#[derive(Clone, Debug)]
pub struct OutputConfig {
    pub primary: RtmpUrl,
    /// Tried at once when the primary fails at start, and after `switch_after` failures in a
    /// row on one server mid-stream (see [`ReconnectPolicy`]).
    pub backup: Option<RtmpUrl>,
    pub switch_after: u32,
    pub connect_timeout: Duration,
    pub backoff: BackoffConfig,
    /// None: fixed bitrate.
    pub abr: Option<AbrConfig>,
    /// Delay budget of the send queue.
    pub queue_budget_ms: u64,
    pub audio_kbps: u32,
    /// Socket send buffer in bytes (None: the OS default).
    pub send_buffer: Option<u32>,
    /// Told the pts of each video packet once its last byte is in the socket (latency report).
    pub on_video_written: Option<WrittenHook>,
    /// A connection that has data to deliver and delivers none of it for this long is dead
    /// (a link that vanished without a FIN, e.g. after a change of network): reconnect
    /// instead of waiting minutes for TCP to give up.
    pub stall_timeout: Duration,
}

/// A callback taking the pts of a video packet that was fully written to the socket, so the
/// latency report can time the publisher up to the network.
#[derive(Clone)]
pub struct WrittenHook(pub std::sync::Arc<dyn Fn(i64) + Send + Sync>);

impl std::fmt::Debug for WrittenHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrittenHook")
    }
}

impl OutputConfig {
    /// Defaults for streaming `video_kbps` + `audio_kbps` to `primary`.
    pub fn new(primary: RtmpUrl, video_kbps: u32, audio_kbps: u32) -> Self {
        let queue_budget_ms = 450;
        let abr = AbrConfig {
            queue_budget_ms,
            ..AbrConfig::for_bitrate(video_kbps)
        };
        OutputConfig {
            primary,
            backup: None,
            switch_after: 3,
            connect_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            abr: Some(abr),
            queue_budget_ms,
            audio_kbps,
            send_buffer: Some(send_buffer_for(video_kbps + audio_kbps)),
            on_video_written: None,
            stall_timeout: Duration::from_secs(15),
        }
    }
}

/// A socket send buffer holding about 150 ms at `kbps`: enough to keep the link busy, small
/// enough that congestion shows in our queue, where we can act on it.
pub fn send_buffer_for(kbps: u32) -> u32 {
    (kbps * 1000 / 8 * 150 / 1000).clamp(16 * 1024, 1024 * 1024)
}

/// Failures that retrying cannot fix: the server refused the key or the application.
pub fn is_permanent(e: &PublishError) -> bool {
    matches!(
        e,
        PublishError::PublishRefused { .. } | PublishError::AppRejected { .. }
    )
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<RtmpPublisher, PublishError>> + Send>>;

fn connect_future(cfg: &OutputConfig, url: &RtmpUrl, headers: &StreamHeaders) -> ConnectFuture {
    let (url, headers) = (url.clone(), headers.clone());
    let (timeout, buffer) = (cfg.connect_timeout, cfg.send_buffer);
    Box::pin(
        async move { RtmpPublisher::connect_with_buffer(&url, &headers, timeout, buffer).await },
    )
}

/// Connects to the primary server once, without retries (for callers and tests that want
/// a connection before [`run_output`]; the live pipeline lets `run_output` connect).
pub async fn connect_first(
    cfg: &OutputConfig,
    headers: &StreamHeaders,
) -> Result<RtmpPublisher, PublishError> {
    connect_future(cfg, &cfg.primary, headers).await
}

/// What happened over a whole run.
#[derive(Clone, Debug, Default)]
pub struct OutputSummary {
    pub bytes_sent: u64,
    pub reconnects: u64,
}

/// The output loop state that outlives a connection.
struct Output<'a> {
    cfg: &'a OutputConfig,
    headers: &'a StreamHeaders,
    stats: &'a Stats,
    control: &'a EncoderControl,
    started: Instant,
    queue: SendQueue,
    abr: Option<Abr>,
    policy: ReconnectPolicy,
    conn: Option<RtmpPublisher>,
    /// Bytes of the message being written, and how far we got.
    outbuf: Vec<u8>,
    outpos: usize,
    /// pts of the video packet that ends `outbuf`, for [`OutputConfig::on_video_written`].
    outbuf_video_pts: Option<i64>,
    /// Answers to the server, written after the current message.
    control_bytes: Vec<u8>,
    /// The failure that ended the last attempt, shown if the run never goes live.
    last_error: Option<String>,
    reconnect_at: Option<tokio::time::Instant>,
    connecting: Option<ConnectFuture>,
    bytes_sent_before: u64,
    last_sample: (Instant, u64),
    /// Bytes the peer had taken (written minus still in the socket) at the last progress,
    /// and when: see [`OutputConfig::stall_timeout`].
    delivered: (u64, Instant),
}

impl Output<'_> {
    fn log(&self, msg: String) {
        let t = self.started.elapsed().as_secs_f64();
        let line = format!("[{t:7.1} s] {msg}");
        tracing::info!("{line}");
        eprintln!("{line}");
        self.stats.push_event(line);
    }

    fn io_error(&self, cause: std::io::Error) -> PublishError {
        PublishError::Io {
            addr: self.current_url().address(),
            cause,
        }
    }

    fn closed_error(&self) -> PublishError {
        PublishError::Closed {
            addr: self.current_url().address(),
            stage: "streaming",
            hint: "the server ended the stream or went away",
        }
    }

    fn current_url(&self) -> &RtmpUrl {
        match (&self.cfg.backup, self.policy.server()) {
            (Some(b), Server::Backup) => b,
            _ => &self.cfg.primary,
        }
    }

    /// Milliseconds since the run started: the reconnect policy's clock.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn bytes_sent(&self) -> u64 {
        self.bytes_sent_before + self.conn.as_ref().map(|c| c.bytes_sent).unwrap_or(0)
    }

    /// The connection broke, or an attempt failed: schedule the next attempt (or give up).
    fn on_failure(&mut self, e: PublishError) -> Result<(), PublishError> {
        let was_live = self.conn.is_some();
        if let Some(c) = self.conn.take() {
            self.bytes_sent_before += c.bytes_sent;
        }
        self.outbuf.clear();
        self.outpos = 0;
        self.control_bytes.clear();
        if is_permanent(&e) {
            self.stats.set_state(format!("failed: {e}"));
            self.log(format!("giving up: {e}"));
            return Err(e);
        }
        self.last_error = Some(e.to_string());
        let what = if was_live {
            "connection lost"
        } else {
            "connecting failed"
        };
        match self.policy.on_failure(self.now_ms()) {
            NextAttempt::Retry {
                delay,
                server,
                attempt,
                switched,
            } => {
                self.reconnect_at = Some(tokio::time::Instant::now() + delay);
                let secs = delay.as_secs_f64();
                // Mid-stream the log says why; before the stream is ever live, the state
                // itself carries the reason, since there is nothing on screen yet to fix.
                let (verb, state) = if self.policy.ever_connected() {
                    let verb = "reconnecting";
                    (verb, format!("{verb} in {secs:.1} s (attempt {attempt})"))
                } else {
                    let verb = "not live yet, retrying";
                    (
                        verb,
                        format!("{verb} in {secs:.1} s (attempt {attempt}): {e}"),
                    )
                };
                self.stats.set_state(state);
                self.log(format!(
                    "{what}: {e}; {verb} in {secs:.1} s (attempt {attempt})"
                ));
                if switched {
                    let name = match server {
                        Server::Primary => "primary",
                        Server::Backup => "backup",
                    };
                    let when = if delay.is_zero() {
                        "now".to_string()
                    } else {
                        format!("in {secs:.1} s")
                    };
                    self.log(format!(
                        "switching to the {name} server {}: connecting {when}",
                        self.current_url()
                    ));
                }
                Ok(())
            }
            NextAttempt::GiveUp { attempts } => {
                let msg = format!("gave up after {attempts} attempts: {e}");
                self.stats.set_state(format!("failed: {msg}"));
                self.log(msg);
                Err(e)
            }
        }
    }

    fn on_connected(&mut self, conn: RtmpPublisher) {
        let reconnect = self.policy.ever_connected();
        let attempts = self.policy.on_connected(self.now_ms());
        self.conn = Some(conn);
        self.last_error = None;
        // The new session starts on a fresh IDR, after the headers connect() sent.
        self.queue.restart_at_keyframe();
        self.queue.take_keyframe_request();
        self.control.request_keyframe();
        self.stats.set_state("live");
        if reconnect {
            crate::stats::Stats::add(&self.stats.reconnects, 1);
            self.log(format!(
                "reconnected to {} after {attempts} attempt(s); resuming at the next keyframe",
                self.current_url(),
            ));
        } else if attempts > 0 {
            self.log(format!(
                "connected to {} after {attempts} failed attempt(s)",
                self.current_url(),
            ));
        }
        self.last_sample = (Instant::now(), self.bytes_sent());
        self.delivered = (0, Instant::now());
    }

    /// Fails the connection when it has had data to deliver and delivered none of it for
    /// [`OutputConfig::stall_timeout`].
    fn check_stall(&mut self) -> Result<(), PublishError> {
        let Some(conn) = self.conn.as_ref() else {
            return Ok(());
        };
        let unsent = conn.unsent_bytes().unwrap_or(0);
        let delivered = conn.bytes_sent.saturating_sub(unsent);
        let waiting = unsent > 0 || !self.queue.is_empty() || self.outpos < self.outbuf.len();
        if delivered != self.delivered.0 || !waiting {
            self.delivered = (delivered, Instant::now());
            return Ok(());
        }
        let stalled = self.delivered.1.elapsed();
        if stalled < self.cfg.stall_timeout {
            return Ok(());
        }
        Err(PublishError::Stalled {
            addr: self.current_url().address(),
            secs: stalled.as_secs(),
        })
    }

    /// Moves the next packet (and pending answers) into the write buffer.
    fn refill(&mut self) -> Result<(), PublishError> {
        if self.outpos < self.outbuf.len() {
            return Ok(());
        }
        self.outbuf.clear();
        self.outpos = 0;
        self.outbuf_video_pts = None;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        self.outbuf.append(&mut self.control_bytes);
        if let Some(p) = self.queue.pop() {
            let bytes = conn.serialize_packet(&p)?;
            self.outbuf.extend_from_slice(&bytes);
            count_sent(self.stats, &p);
            self.outbuf_video_pts = (p.kind == MediaKind::Video).then_some(p.pts_ms);
        }
        Ok(())
    }

    /// Periodic measurement: stats, ABR (unless `draining`), keyframe requests.
    fn sample(&mut self, draining: bool) {
        let now = Instant::now();
        let sent = self.bytes_sent();
        let secs = now
            .duration_since(self.last_sample.0)
            .as_secs_f64()
            .max(1e-3);
        let send_kbps = (sent - self.last_sample.1) as f64 * 8.0 / 1000.0 / secs;
        self.last_sample = (now, sent);
        let rate_kbps = (self.control.bitrate() + self.cfg.audio_kbps).max(1) as u64;
        let unsent = self
            .conn
            .as_ref()
            .and_then(|c| c.unsent_bytes())
            .unwrap_or(0)
            + (self.outbuf.len() - self.outpos) as u64;
        let queue_ms = self.queue.delay_ms() + unsent * 8 / rate_kbps;
        self.stats.queue_ms.store(queue_ms, Ordering::Relaxed);
        let d = self.queue.drops();
        self.stats
            .drop_non_reference
            .store(d.non_reference, Ordering::Relaxed);
        self.stats
            .drop_gop_tail
            .store(d.gop_tail, Ordering::Relaxed);
        self.stats
            .drop_waiting_keyframe
            .store(d.waiting_for_keyframe, Ordering::Relaxed);
        self.stats.drop_audio.store(d.audio, Ordering::Relaxed);
        self.stats.bytes_out.store(sent, Ordering::Relaxed);
        if self.queue.take_keyframe_request() {
            self.control.request_keyframe();
        }
        if self.conn.is_none() || draining {
            return;
        }
        if let Some(abr) = self.abr.as_mut() {
            let sample = LinkSample {
                now_ms: self.started.elapsed().as_millis() as u64,
                queue_ms,
                send_kbps,
                audio_kbps: self.cfg.audio_kbps as f64,
            };
            if let Some(change) = abr.on_sample(sample) {
                self.control.set_bitrate(change.to_kbps);
                self.stats
                    .target_kbps
                    .store(change.to_kbps as u64, Ordering::Relaxed);
                self.log(format!(
                    "bitrate {} → {} kbps: {}",
                    change.from_kbps, change.to_kbps, change.reason
                ));
            }
        }
    }
}

/// Writes what the socket takes now (cancel-safe: nothing is written unless returned).
async fn write_some(
    stream: Option<&tokio::net::TcpStream>,
    bytes: &[u8],
) -> std::io::Result<usize> {
    let stream = stream.expect("write only while connected");
    loop {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Reads what the server sent (cancel-safe).
async fn read_some(
    stream: Option<&tokio::net::TcpStream>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let stream = stream.expect("read only while connected");
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

/// Streams packets from `rx` until it closes (then drains the queue for up to `drain`), or a
/// permanent failure. With `first` = None it makes the first connection itself, while the
/// packets queue up, and retries a failure like a broken connection (going to the backup
/// server at once if there is one), so a slow or absent server never delays capture, a stop
/// request or `--duration`. A run that ends without ever going live returns
/// [`PublishError::NeverLive`]. `on_packet` sees every packet as it arrives (the recorder).
#[allow(clippy::too_many_arguments)]
pub async fn run_output(
    cfg: &OutputConfig,
    headers: &StreamHeaders,
    first: Option<RtmpPublisher>,
    mut rx: mpsc::Receiver<Packet>,
    control: &EncoderControl,
    stats: &Stats,
    drain: Duration,
    mut on_packet: impl FnMut(&Packet),
) -> Result<OutputSummary, PublishError> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        ^ std::process::id() as u64;
    stats
        .target_kbps
        .store(control.bitrate() as u64, Ordering::Relaxed);
    stats.set_state("live");
    let mut out = Output {
        cfg,
        headers,
        stats,
        control,
        started: Instant::now(),
        queue: SendQueue::new(cfg.queue_budget_ms),
        abr: cfg.abr.clone().map(Abr::new),
        policy: ReconnectPolicy::new(
            cfg.backoff.clone(),
            seed,
            cfg.backup.is_some(),
            cfg.switch_after,
        ),
        conn: None,
        outbuf: Vec::with_capacity(64 * 1024),
        outpos: 0,
        outbuf_video_pts: None,
        control_bytes: Vec::new(),
        last_error: None,
        reconnect_at: None,
        connecting: None,
        bytes_sent_before: 0,
        last_sample: (Instant::now(), 0),
        delivered: (0, Instant::now()),
    };
    match first {
        Some(conn) => {
            out.policy.on_connected(0);
            out.conn = Some(conn);
        }
        None => {
            out.stats
                .set_state(format!("connecting to {}", cfg.primary));
            out.connecting = Some(connect_future(cfg, &cfg.primary, headers));
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut input_open = true;
    let mut read_buf = vec![0u8; 16 * 1024];
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if out.conn.is_some() {
            if let Err(e) = out.refill() {
                out.on_failure(e)?;
            }
        }
        let writing = out.conn.is_some() && out.outpos < out.outbuf.len();
        if !input_open {
            let idle = out.queue.is_empty() && !writing;
            if idle || out.conn.is_none() {
                break;
            }
            let deadline =
                *drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + drain);
            if tokio::time::Instant::now() >= deadline {
                out.log("stopped before the send queue emptied".into());
                break;
            }
        }
        let reconnect_due = out.reconnect_at;
        let stream = out.conn.as_ref().map(|c| c.socket());
        let pending = &out.outbuf[out.outpos.min(out.outbuf.len())..];
        let is_connecting = out.connecting.is_some();
        let can_connect = reconnect_due.is_some() && !is_connecting;
        let connecting = out.connecting.as_mut();
        enum Event {
            Packet(Option<Packet>),
            Wrote(std::io::Result<usize>),
            Read(std::io::Result<usize>),
            ReconnectDue,
            Connected(Box<Result<RtmpPublisher, PublishError>>),
            Tick,
        }
        let event = tokio::select! {
            p = rx.recv(), if input_open => Event::Packet(p),
            r = write_some(stream, pending), if writing => Event::Wrote(r),
            r = read_some(stream, &mut read_buf), if stream.is_some() => Event::Read(r),
            _ = sleep_until_opt(reconnect_due), if can_connect => Event::ReconnectDue,
            r = async { connecting.expect("guarded").await }, if is_connecting => Event::Connected(Box::new(r)),
            _ = tick.tick() => Event::Tick,
        };
        match event {
            Event::Packet(Some(p)) => {
                on_packet(&p);
                out.queue.push(p);
            }
            Event::Packet(None) => input_open = false,
            Event::Wrote(Ok(n)) => {
                out.outpos += n;
                if out.outpos >= out.outbuf.len() {
                    if let (Some(pts), Some(hook)) =
                        (out.outbuf_video_pts.take(), &cfg.on_video_written)
                    {
                        (hook.0)(pts);
                    }
                }
                if let Some(c) = out.conn.as_mut() {
                    c.bytes_sent += n as u64;
                }
            }
            Event::Wrote(Err(e)) => {
                let e = out.io_error(e);
                out.on_failure(e)?
            }
            Event::Read(r) => {
                let answer = match r {
                    Ok(0) => Err(out.closed_error()),
                    Ok(n) => out
                        .conn
                        .as_mut()
                        .expect("read only while connected")
                        .handle_server_bytes(&read_buf[..n]),
                    Err(e) => Err(out.io_error(e)),
                };
                match answer {
                    Ok(bytes) => out.control_bytes.extend_from_slice(&bytes),
                    Err(e) => out.on_failure(e)?,
                }
            }
            Event::ReconnectDue => {
                out.reconnect_at = None;
                let url = out.current_url().clone();
                let attempt = out.policy.attempt();
                out.stats
                    .set_state(format!("connecting (attempt {attempt})"));
                out.log(format!("connecting to {url} (attempt {attempt})"));
                out.connecting = Some(connect_future(out.cfg, &url, out.headers));
            }
            Event::Connected(r) => {
                out.connecting = None;
                match *r {
                    Ok(conn) => out.on_connected(conn),
                    Err(e) => out.on_failure(e)?,
                }
            }
            Event::Tick => {
                out.sample(!input_open);
                if let Err(e) = out.check_stall() {
                    out.on_failure(e)?;
                }
            }
        }
    }
    out.sample(true);
    if !out.policy.ever_connected() {
        return Err(PublishError::NeverLive {
            attempts: out.policy.attempt(),
            last: out.last_error.take().unwrap_or_else(|| {
                "no answer from the server yet (the first attempt was still in progress)".into()
            }),
        });
    }
    let bytes_sent = out.bytes_sent();
    if let Some(conn) = out.conn.take() {
        let _ = conn.close().await;
    }
    Ok(OutputSummary {
        bytes_sent,
        reconnects: stats.reconnects.load(Ordering::Relaxed),
    })
}
