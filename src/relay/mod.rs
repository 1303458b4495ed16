//! The embedded relay: accepts one publisher per stream key and serves any number of viewers.
//!
//! It exists so a broadcast can be watched locally (or re-served on a LAN) without an external
//! server: OnAir, OBS or ffmpeg publish to `rtmp://127.0.0.1:1935/APP/KEY`; players (ffplay,
//! VLC, `onair probe`) read the same URL over RTMP, or `http://127.0.0.1:8080/APP/KEY.flv` over
//! HTTP-FLV (ffplay, mpegts.js/flv.js), and `http://127.0.0.1:8080/` is a watch page listing
//! the live streams, with their stats as JSON at `/api/streams`. Joining viewers get the
//! stream's metadata, codec headers and the current GOP first, so their first frame is always
//! a keyframe.
//!
//! It is a server exposed to network input, so it behaves like one: optional publish and play
//! keys, limits on connections, message sizes and idle time, every peer's input checked
//! before it is parsed, and bounded per-viewer queues so a slow viewer is dropped instead of
//! slowing the publisher or anyone else. Media is framed once per message and shared by all
//! viewers.
//!
//! Viewers outlast a publisher blip: when a publisher's connection drops, the stream keeps
//! its viewers for a grace period and they resume, on one continuous timeline, as soon as a
//! publisher comes back on the same key ([`resume`]). A player asking for a key nobody
//! publishes yet likewise waits for a publisher for that long before it is refused.

pub mod cli;
pub mod codec;
pub mod fuzz;
pub mod gop_cache;
mod http;
mod outbox;
pub mod resume;
mod rtmp;
mod stream;
mod web;
pub mod wire;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use gop_cache::{
    is_audio_sequence_header, is_video_keyframe, is_video_sequence_header, MediaMessage,
};
pub use stream::{AudioParams, VideoParams, ViewerKind};
use stream::{PlayerFeed, Stream};

/// How long a publisher must have been silent before a new connection from the same address
/// may take its stream key over (a reconnect after a blip the relay did not see).
pub const TAKEOVER_SILENCE: std::time::Duration = std::time::Duration::from_secs(2);
/// Default most simultaneous connections (publishers, players, HTTP clients, and peers still
/// handshaking), so a flood of sockets cannot exhaust file descriptors or memory.
pub const MAX_CONNECTIONS: usize = 1024;
/// Default largest audio or video message a publisher may send. A 4K keyframe at a high
/// bitrate stays well below this; nginx-rtmp's default is 1 MiB.
pub const MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;
/// Default time a peer has to complete the RTMP handshake or send its HTTP request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may stay without publishing or playing, and a publisher may stay
/// silent, before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the relay listens and what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// RTMP address to bind; `127.0.0.1:1935` by default so nothing is exposed beyond this
    /// machine unless asked for.
    pub listen: SocketAddr,
    /// HTTP address for HTTP-FLV playback, the watch page and the stats API; `None` (the
    /// default) runs RTMP only.
    pub http_listen: Option<SocketAddr>,
    /// Stream keys allowed to publish; empty means anyone may publish on any key. A publisher
    /// names an allowed key either as its stream key or as `NAME?key=KEY`.
    pub publish_keys: Vec<String>,
    /// When set, players must add `?key=PLAY_KEY` to the stream (RTMP) or URL (HTTP).
    pub play_key: Option<String>,
    /// Most simultaneous connections, RTMP and HTTP together.
    pub max_connections: usize,
    /// Largest audio or video message accepted from a publisher, in bytes.
    pub max_message_size: usize,
    /// Time allowed for the RTMP handshake or the HTTP request head.
    pub handshake_timeout: Duration,
    /// Time a connection may stay without publishing or playing, and a publisher may stay
    /// silent.
    pub idle_timeout: Duration,
    /// Messages (or merged batches) a viewer may have queued before it counts as too slow
    /// and is disconnected.
    pub player_queue: usize,
    /// Live media is handed to viewers in batches at most this far apart (zero: each message
    /// at once). Merging cuts wake-ups and socket writes per viewer several times over, for
    /// that much more latency; SRS calls this merged-write latency.
    pub merge_window: Duration,
    /// How long a stream whose publisher's connection dropped keeps its viewers waiting for a
    /// publisher to come back on the same key, and how long a player asking for a key nobody
    /// publishes waits for one before it is refused. Zero closes and refuses at once.
    pub publisher_grace: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig::new(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            crate::publish::url::DEFAULT_PORT,
        )))
    }
}

impl RelayConfig {
    /// RTMP on `listen`, HTTP off, open publishing and playback, default limits.
    pub fn new(listen: SocketAddr) -> Self {
        RelayConfig {
            listen,
            http_listen: None,
            publish_keys: Vec::new(),
            play_key: None,
            max_connections: MAX_CONNECTIONS,
            max_message_size: MAX_MESSAGE_SIZE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            player_queue: stream::PLAYER_QUEUE_CAPACITY,
            merge_window: Duration::ZERO,
            publisher_grace: resume::PUBLISHER_GRACE,
        }
    }

    /// The relay described by the `[relay]` settings; `with_http` also starts the HTTP side
    /// on `relay.http_listen` (the standalone relay does, the one inside `onair live` need not).
    pub fn from_settings(
        settings: &crate::config::RelaySettings,
        with_http: bool,
    ) -> anyhow::Result<Self> {
        let listen = settings.listen.parse().with_context(|| {
            format!(
                "relay.listen = '{}' is not an address: write IP:PORT, e.g. 127.0.0.1:1935",
                settings.listen
            )
        })?;
        let mut config = RelayConfig::new(listen);
        if with_http && !settings.http_listen.is_empty() {
            config.http_listen = Some(settings.http_listen.parse().with_context(|| {
                format!(
                    "relay.http_listen = '{}' is not an address: write IP:PORT, e.g. \
                     127.0.0.1:8080",
                    settings.http_listen
                )
            })?);
        }
        config.publish_keys = settings.keys.clone();
        config.play_key = settings.play_key.clone().filter(|k| !k.is_empty());
        if settings.max_connections > 0 {
            config.max_connections = settings.max_connections;
        }
        config.merge_window = Duration::from_millis(settings.merge_ms);
        anyhow::ensure!(
            settings.publisher_grace_secs <= resume::MAX_PUBLISHER_GRACE_SECS,
            "relay.publisher_grace_secs = {} is too long: at most {} (one day)",
            settings.publisher_grace_secs,
            resume::MAX_PUBLISHER_GRACE_SECS
        );
        config.publisher_grace = Duration::from_secs(settings.publisher_grace_secs);
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings the relay cannot honour, naming the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(bad) = self
            .publish_keys
            .iter()
            .chain(self.play_key.iter())
            .find(|k| k.is_empty() || k.contains(['?', '&', '/', ' ']))
        {
            anyhow::bail!(
                "stream key '{}' is invalid: keys must be non-empty and contain no '?', '&', \
                 '/' or spaces",
                crate::publish::url::mask_key(bad)
            );
        }
        anyhow::ensure!(
            self.max_connections > 0,
            "relay max_connections must be at least 1"
        );
        anyhow::ensure!(
            (64 * 1024..=16 * 1024 * 1024).contains(&self.max_message_size),
            "relay max_message_size must be between 64 KiB and 16 MiB"
        );
        anyhow::ensure!(
            self.player_queue > 0,
            "relay player_queue must be at least 1"
        );
        anyhow::ensure!(
            self.merge_window <= Duration::from_secs(1),
            "relay merge_window must be at most 1 s"
        );
        anyhow::ensure!(
            self.publisher_grace <= Duration::from_secs(resume::MAX_PUBLISHER_GRACE_SECS),
            "relay publisher_grace must be at most {} s (one day)",
            resume::MAX_PUBLISHER_GRACE_SECS
        );
        Ok(())
    }

    /// True when nothing stops a stranger from publishing on this relay.
    fn exposed_without_keys(&self) -> bool {
        !self.listen.ip().is_loopback() && self.publish_keys.is_empty()
    }
}

/// State shared by the accept loops and every connection: the published streams.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    streams: Mutex<HashMap<String, Stream>>,
    next_connection_id: AtomicU64,
    connections: AtomicUsize,
    refused: AtomicU64,
    started_at: Instant,
    shutdown: watch::Sender<bool>,
    /// Bumped each time a publisher claims a key, so waiting players look again.
    published: watch::Sender<u64>,
}

/// Controls a running relay. Dropping it leaves the relay running; call
/// [`RelayHandle::shutdown`] to stop it.
#[derive(Debug)]
pub struct RelayHandle {
    /// The RTMP address actually bound (useful when listening on port 0).
    pub local_addr: SocketAddr,
    /// The HTTP address actually bound, when HTTP is on.
    pub http_addr: Option<SocketAddr>,
    relay: Arc<Relay>,
}

/// A snapshot of the relay's activity, for status lines, the stats API and tests.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RelayStats {
    /// One entry per published stream, sorted by key.
    pub streams: Vec<StreamStats>,
    /// Open connections (RTMP and HTTP, any state).
    pub connections: usize,
    /// Connections refused since start because the connection limit was reached.
    pub refused_connections: u64,
    /// Seconds since the relay started.
    pub uptime_secs: f64,
}

/// Activity of one published stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamStats {
    /// `app/name`, in full: this is the identifier players use. Show `masked_key` to people.
    pub key: String,
    /// `app/name` with the name hidden, safe to print or log.
    pub masked_key: String,
    /// False when the name is itself a publish key: the stats API and watch page then show
    /// only `masked_key`.
    pub listed: bool,
    /// Address of the publishing peer; None while the stream waits for a publisher to come
    /// back.
    pub publisher: Option<SocketAddr>,
    /// "live" while a publisher feeds the stream, "waiting" during the grace period after its
    /// connection dropped (viewers stay connected, nothing is sent).
    pub state: StreamState,
    /// While waiting: seconds before the viewers are closed if no publisher comes back.
    pub grace_left_secs: Option<f64>,
    /// Number of connected players (RTMP and HTTP-FLV).
    pub viewers: usize,
    /// Players over RTMP.
    pub rtmp_viewers: usize,
    /// Players over HTTP-FLV.
    pub http_viewers: usize,
    /// Seconds since the current publisher started (while waiting: since the last one left).
    pub uptime_secs: f64,
    /// Bytes received from the publisher since it connected.
    pub bytes_in: u64,
    /// Bytes sent to all viewers.
    pub bytes_out: u64,
    /// Incoming bitrate over the last few seconds, kbit/s.
    pub bitrate_in_kbps: f64,
    /// Outgoing bitrate (all viewers) over the last few seconds, kbit/s.
    pub bitrate_out_kbps: f64,
    /// Video messages received from the publisher (sequence headers included).
    pub video_packets_in: u64,
    /// Audio messages received from the publisher (sequence headers included).
    pub audio_packets_in: u64,
    /// Video codec parameters, once known.
    pub video: Option<VideoParams>,
    /// Audio codec parameters, once known.
    pub audio: Option<AudioParams>,
    /// Messages a player joining now would receive from the GOP cache.
    pub gop_cache_packets: usize,
    /// Payload bytes in the GOP cache.
    pub gop_cache_bytes: usize,
}

/// Whether a stream has a publisher, for stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    /// A publisher feeds the stream.
    Live,
    /// The publisher's connection dropped; the viewers wait for a new one.
    Waiting,
}

impl RelayStats {
    /// The stream published on `app/key`, if any.
    pub fn stream(&self, key: &str) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.key == key)
    }

    /// One line for a terminal: streams, viewers, bitrates.
    pub fn summary(&self) -> String {
        let viewers: usize = self.streams.iter().map(|s| s.viewers).sum();
        let http: usize = self.streams.iter().map(|s| s.http_viewers).sum();
        let kin = self
            .streams
            .iter()
            .fold(0.0, |sum, s| sum + s.bitrate_in_kbps);
        let kout = self
            .streams
            .iter()
            .fold(0.0, |sum, s| sum + s.bitrate_out_kbps);
        let mut line = format!(
            "{} stream{}, {viewers} viewer{} ({} rtmp, {http} http), in {:.0} kbit/s, out {:.0} kbit/s, {} connection{}",
            self.streams.len(),
            if self.streams.len() == 1 { "" } else { "s" },
            if viewers == 1 { "" } else { "s" },
            viewers - http,
            kin,
            kout,
            self.connections,
            if self.connections == 1 { "" } else { "s" },
        );
        for s in self.streams.iter().take(3) {
            let video = s
                .video
                .as_ref()
                .map(|v| match (v.width, v.height) {
                    (Some(w), Some(h)) => format!(
                        " {w}x{h}{}",
                        v.fps.map(|f| format!("@{f:.0}")).unwrap_or_default()
                    ),
                    _ => format!(" {}", v.codec),
                })
                .unwrap_or_default();
            let state = match s.state {
                StreamState::Live => format!("up {}s", s.uptime_secs as u64),
                StreamState::Waiting => "waiting for the publisher".to_string(),
            };
            line.push_str(&format!(
                "; {}{video} {} viewer{} {state}",
                s.masked_key,
                s.viewers,
                if s.viewers == 1 { "" } else { "s" },
            ));
        }
        if self.refused_connections > 0 {
            line.push_str(&format!(
                "; {} connections refused (limit)",
                self.refused_connections
            ));
        }
        line
    }
}

/// Binds the listening sockets and spawns the accept loops on the current tokio runtime.
///
/// Fails with a message naming `--listen` (or `--http`) if an address is already taken,
/// because a second relay (or another RTMP or web server) on the same port is the usual cause.
pub async fn start_relay(config: RelayConfig) -> anyhow::Result<RelayHandle> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| bind_error(config.listen, e, "--listen"))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the relay's bound address")?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| bind_error(addr, e, "--http"))?,
        ),
        None => None,
    };
    let http_addr = match &http_listener {
        Some(l) => Some(
            l.local_addr()
                .context("cannot read the relay's bound HTTP address")?,
        ),
        None => None,
    };
    if config.exposed_without_keys() {
        tracing::warn!(
            %local_addr,
            "the relay listens on a non-loopback address without stream keys: anyone who can \
             reach it can publish; add --key (relay.keys) to restrict publishing"
        );
    }
    if let Some(addr) = http_addr {
        if !addr.ip().is_loopback() && config.play_key.is_none() {
            tracing::warn!(
                %addr,
                "HTTP playback and stats are reachable from other machines without a play key; \
                 add --play-key to restrict them"
            );
        }
    }
    let relay = Arc::new(Relay::new(config));
    tracing::info!(%local_addr, "RTMP relay listening");
    tokio::spawn(accept_loop(listener, relay.clone(), Protocol::Rtmp));
    tokio::spawn(close_abandoned_streams(relay.clone()));
    if let Some(l) = http_listener {
        tracing::info!(addr = %http_addr.unwrap_or(local_addr), "HTTP-FLV relay listening");
        tokio::spawn(accept_loop(l, relay.clone(), Protocol::Http));
    }
    Ok(RelayHandle {
        local_addr,
        http_addr,
        relay,
    })
}

fn bind_error(addr: SocketAddr, e: std::io::Error, flag: &str) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "port {} is already in use: another server (or another OnAir relay) is \
             listening on {addr}; stop it or use {flag} to choose another address",
            addr.port()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {addr} (ports below 1024 need extra privileges): \
             use {flag} with a port above 1024"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "cannot listen on {addr}: that address does not belong to this machine; \
             use {flag} 127.0.0.1:PORT or 0.0.0.0:PORT"
        ),
        _ => anyhow::Error::new(e).context(format!("cannot listen on {addr}")),
    }
}

/// How often streams waiting for a publisher are checked for the end of their grace period.
const GRACE_CHECK_EVERY: Duration = Duration::from_millis(200);

/// Closes the viewers of streams whose grace period ended without a publisher coming back.
async fn close_abandoned_streams(relay: Arc<Relay>) {
    let mut shutdown = relay.shutdown.subscribe();
    let mut tick = tokio::time::interval(GRACE_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tick.tick() => relay.close_abandoned(Instant::now()),
        }
    }
}

/// Which protocol an accept loop serves.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Rtmp,
    Http,
}

async fn accept_loop(listener: TcpListener, relay: Arc<Relay>, protocol: Protocol) {
    let mut shutdown = relay.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!("relay cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(guard) = ConnectionSlot::acquire(&relay) else {
            let refused = relay.refused.fetch_add(1, Ordering::Relaxed);
            // One line per refusal would let a flood fill the log: log the first few, then
            // one in a thousand.
            if refused < 10 || refused.is_multiple_of(1000) {
                tracing::warn!(
                    %peer,
                    "relay has {} connections already: refusing ({} refused so far)",
                    relay.config.max_connections,
                    refused + 1
                );
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let id = relay.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let relay = relay.clone();
        let shutdown = relay.shutdown.subscribe();
        tokio::spawn(serve(relay, socket, peer, id, shutdown, protocol, guard));
    }
    tracing::info!(?protocol, "relay stopped listening");
}

async fn serve(
    relay: Arc<Relay>,
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    shutdown: watch::Receiver<bool>,
    protocol: Protocol,
    slot: ConnectionSlot,
) {
    match protocol {
        Protocol::Rtmp => rtmp::serve(relay, socket, peer, id, shutdown).await,
        Protocol::Http => http::serve(relay, socket, peer, id, shutdown).await,
    }
    drop(slot);
}

/// Counts a live connection against the connection limit; released on drop.
struct ConnectionSlot(Arc<Relay>);

impl ConnectionSlot {
    fn acquire(relay: &Arc<Relay>) -> Option<ConnectionSlot> {
        let previous = relay.connections.fetch_add(1, Ordering::AcqRel);
        if previous >= relay.config.max_connections {
            relay.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(relay.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RelayHandle {
    /// Stops accepting and closes every connection (publishers and players).
    pub fn shutdown(&self) {
        self.relay.shutdown.send_replace(true);
    }

    /// Current streams and their counters.
    pub fn stats(&self) -> RelayStats {
        self.relay.stats()
    }

    /// The shared relay state, for callers that outlive the handle.
    pub fn relay(&self) -> Arc<Relay> {
        self.relay.clone()
    }
}

/// The identifier of a stream: application and name, since two apps may reuse a name.
fn stream_id(app: &str, name: &str) -> String {
    format!("{app}/{name}")
}

/// The stream identifier with the name masked, for logs.
fn masked_stream_id(app: &str, name: &str) -> String {
    format!("{app}/{}", crate::publish::url::mask_key(name))
}

/// A stream name as a client sends it (`NAME` or `NAME?key=K&...`), split into the name and
/// the `key` query parameter.
pub(crate) fn split_stream_name(requested: &str) -> (&str, Option<&str>) {
    match requested.split_once('?') {
        None => (requested, None),
        Some((name, query)) => (name, query_param(query, "key")),
    }
}

/// The value of `name=` in a query string (no percent-decoding: keys are plain tokens).
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compares secrets without stopping at the first difference.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Outcome of a publish request against the configured keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PublishAuth {
    /// Allowed; `listed` is false when the name itself is the secret key.
    Allowed { listed: bool },
    /// No configured key matches.
    Denied,
}

impl Relay {
    fn new(config: RelayConfig) -> Self {
        Relay {
            config,
            streams: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            started_at: Instant::now(),
            shutdown: watch::channel(false).0,
            published: watch::channel(0).0,
        }
    }

    /// The configuration the relay runs with.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The stream table. A panic elsewhere never leaves it half-updated in a way that matters
    /// (every update is a few field writes), so a poisoned lock is simply taken over.
    fn streams(&self) -> MutexGuard<'_, HashMap<String, Stream>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Current streams and their counters, sorted by key.
    pub fn stats(&self) -> RelayStats {
        let now = Instant::now();
        let streams = self.streams();
        let mut list: Vec<StreamStats> = streams
            .iter()
            .map(|(key, s)| {
                let (bitrate_in_kbps, bitrate_out_kbps) = s.bitrates_kbps();
                StreamStats {
                    key: key.clone(),
                    masked_key: s.display_key.clone(),
                    listed: s.listed,
                    publisher: s.publisher_addr,
                    state: if s.is_live() {
                        StreamState::Live
                    } else {
                        StreamState::Waiting
                    },
                    grace_left_secs: s.grace_left(now).map(|d| d.as_secs_f64()),
                    viewers: s.viewers(),
                    rtmp_viewers: s.viewers_of(ViewerKind::Rtmp),
                    http_viewers: s.viewers_of(ViewerKind::Http),
                    uptime_secs: s.started_at.elapsed().as_secs_f64(),
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out(),
                    bitrate_in_kbps,
                    bitrate_out_kbps,
                    video_packets_in: s.video_packets_in,
                    audio_packets_in: s.audio_packets_in,
                    video: s.video_params(),
                    audio: s.audio_params(),
                    gop_cache_packets: s.gop_cache_packets(),
                    gop_cache_bytes: s.gop_cache_bytes(),
                }
            })
            .collect();
        drop(streams);
        list.sort_by(|a, b| a.key.cmp(&b.key));
        RelayStats {
            streams: list,
            connections: self.connections.load(Ordering::Relaxed),
            refused_connections: self.refused.load(Ordering::Relaxed),
            uptime_secs: self.started_at.elapsed().as_secs_f64(),
        }
    }

    /// Checks a publish request for stream `name` carrying `key` against the allowed keys.
    pub(crate) fn authorize_publish(&self, name: &str, key: Option<&str>) -> PublishAuth {
        let keys = &self.config.publish_keys;
        if keys.is_empty() {
            return PublishAuth::Allowed { listed: true };
        }
        if keys.iter().any(|k| same_secret(k, name)) {
            return PublishAuth::Allowed { listed: false };
        }
        match key {
            Some(key) if keys.iter().any(|k| same_secret(k, key)) => {
                PublishAuth::Allowed { listed: true }
            }
            _ => PublishAuth::Denied,
        }
    }

    /// True when a player presenting `key` may watch.
    pub(crate) fn authorize_play(&self, key: Option<&str>) -> bool {
        match (&self.config.play_key, key) {
            (None, _) => true,
            (Some(expected), Some(given)) => same_secret(expected, given),
            (Some(_), None) => false,
        }
    }

    /// Claims `key` for publisher `id`; false if someone else is publishing on it. A stream
    /// waiting for its publisher to come back is taken over, viewers and all.
    fn start_publish(
        &self,
        key: &str,
        display_key: String,
        id: u64,
        addr: SocketAddr,
        listed: bool,
    ) -> bool {
        let mut streams = self.streams();
        match streams.get_mut(key) {
            Some(s) if s.can_take_over(addr, TAKEOVER_SILENCE) => {
                tracing::warn!(
                    stream = %s.display_key,
                    viewers = s.viewers(),
                    "publisher reconnected while its old connection was silent for {} s: \
                     the new connection takes over, viewers resume on its first keyframe",
                    TAKEOVER_SILENCE.as_secs()
                );
                s.publisher_left(None);
                s.resume(id, addr, listed);
            }
            Some(s) if s.is_live() => return false,
            Some(s) => {
                tracing::info!(
                    stream = %s.display_key,
                    viewers = s.viewers(),
                    "publisher is back: viewers resume on its first keyframe"
                );
                s.resume(id, addr, listed);
            }
            None => {
                let mut stream = Stream::new(display_key, id, addr)
                    .with_queue_capacity(self.config.player_queue)
                    .with_merge_window(self.config.merge_window);
                stream.listed = listed;
                streams.insert(key.to_string(), stream);
            }
        }
        drop(streams);
        self.published.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// Ends publisher `id`'s session on `key`. A publisher that ended its stream (`finished`)
    /// takes it away with it; one whose connection dropped leaves its viewers waiting for the
    /// grace period, unless it had none. A removed stream closes every player queue, so
    /// players drain what they have and then finish.
    fn end_publish(&self, key: &str, id: u64, finished: bool) -> bool {
        let mut streams = self.streams();
        match streams.get_mut(key) {
            Some(s) if s.publisher_id == Some(id) => {
                let grace = self.config.publisher_grace;
                if !finished && !grace.is_zero() && s.viewers() > 0 {
                    s.publisher_left(resume::deadline_after(Instant::now(), grace));
                    tracing::info!(
                        stream = %s.display_key,
                        viewers = s.viewers(),
                        "publisher dropped: viewers wait up to {grace:?} for it to come back"
                    );
                    return true;
                }
                let mut stream = streams.remove(key);
                // Players get what was still waiting in the merge window, then the end.
                if let Some(s) = stream.as_mut() {
                    s.flush();
                }
                drop(streams);
                drop(stream);
                true
            }
            _ => false,
        }
    }

    /// Closes the players of streams whose wait for a publisher is over (and forgets
    /// waiting streams nobody watches any more).
    fn close_abandoned(&self, now: Instant) {
        let mut streams = self.streams();
        let over: Vec<String> = streams
            .iter()
            .filter(|(_, s)| s.wait_is_over(now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut closed = Vec::with_capacity(over.len());
        for key in over {
            if let Some(s) = streams.remove(&key) {
                if s.viewers() > 0 {
                    tracing::info!(
                        stream = %s.display_key,
                        viewers = s.viewers(),
                        "no publisher came back within {:?}: closing the viewers",
                        self.config.publisher_grace
                    );
                }
                closed.push(s);
            }
        }
        drop(streams);
        drop(closed);
    }

    /// A receiver that changes each time a publisher claims a key; players waiting for a
    /// stream subscribe before looking for it, so no publisher can slip in between.
    fn publishes(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Runs `f` on the stream published by `id` on `key`.
    fn with_published<R>(&self, key: &str, id: u64, f: impl FnOnce(&mut Stream) -> R) -> Option<R> {
        let mut streams = self.streams();
        match streams.get_mut(key) {
            Some(s) if s.publisher_id == Some(id) => Some(f(s)),
            _ => None,
        }
    }

    /// Adds a player to a stream that is published (or waiting for its publisher to come
    /// back); None if there is no such stream on `key`.
    fn join(
        &self,
        key: &str,
        id: u64,
        addr: SocketAddr,
        kind: ViewerKind,
    ) -> Option<(PlayerFeed, String)> {
        let mut streams = self.streams();
        let stream = streams.get_mut(key)?;
        Some((
            stream.add_player(id, addr, kind),
            stream.display_key.clone(),
        ))
    }

    /// Removes a player (no-op if the stream or the player is already gone). A stream
    /// waiting for its publisher goes with its last player.
    fn leave(&self, key: &str, id: u64) {
        let mut streams = self.streams();
        if let Some(s) = streams.get_mut(key) {
            s.remove_player(id);
            if s.wait_is_over(Instant::now()) {
                let gone = streams.remove(key);
                drop(streams);
                drop(gone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_keys() {
        assert_eq!(split_stream_name("cam"), ("cam", None));
        assert_eq!(split_stream_name("cam?key=s3"), ("cam", Some("s3")));
        assert_eq!(split_stream_name("cam?a=1&key=s3&b"), ("cam", Some("s3")));
        assert_eq!(split_stream_name("cam?x=1"), ("cam", None));
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }

    #[test]
    fn publish_and_play_authorization() {
        let open = Relay::new(RelayConfig::default());
        assert_eq!(
            open.authorize_publish("x", None),
            PublishAuth::Allowed { listed: true }
        );
        assert!(open.authorize_play(None));
        let keyed = Relay::new(RelayConfig {
            publish_keys: vec!["s3cret".into()],
            play_key: Some("watch".into()),
            ..RelayConfig::default()
        });
        assert_eq!(
            keyed.authorize_publish("s3cret", None),
            PublishAuth::Allowed { listed: false }
        );
        assert_eq!(
            keyed.authorize_publish("cam", Some("s3cret")),
            PublishAuth::Allowed { listed: true }
        );
        assert_eq!(keyed.authorize_publish("cam", None), PublishAuth::Denied);
        assert_eq!(
            keyed.authorize_publish("cam", Some("nope")),
            PublishAuth::Denied
        );
        assert!(keyed.authorize_play(Some("watch")));
        assert!(!keyed.authorize_play(None) && !keyed.authorize_play(Some("w")));
    }

    #[test]
    fn exposure_needs_a_non_loopback_address_and_no_keys() {
        let mut c = RelayConfig::default();
        assert!(!c.exposed_without_keys());
        c.listen = "0.0.0.0:1935".parse().unwrap();
        assert!(c.exposed_without_keys());
        c.publish_keys = vec!["k".into()];
        assert!(!c.exposed_without_keys());
    }

    #[test]
    fn config_validation() {
        let mut c = RelayConfig {
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        c.publish_keys = vec!["a?b".into()];
        assert!(c.validate().is_err());
        c.publish_keys.clear();
        c.max_message_size = 10;
        assert!(c.validate().is_err());
    }
}
