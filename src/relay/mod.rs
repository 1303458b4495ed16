//! The embedded RTMP relay: accepts one publisher per stream key and any number of players.
//!
//! It exists so a broadcast can be watched locally (or re-served on a LAN) without an external
//! server: OnAir, OBS or ffmpeg publish to `rtmp://127.0.0.1:1935/APP/KEY` and players (ffplay,
//! VLC, `onair probe`) read the same URL. Joining players get the stream's metadata, codec
//! headers and the current GOP first, so their first frame is always a keyframe.

pub mod gop_cache;
mod rtmp;
mod stream;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use gop_cache::{
    is_audio_sequence_header, is_video_keyframe, is_video_sequence_header, MediaMessage,
};
use stream::{PlayerFeed, Stream};

/// Most simultaneous connections (publishers, players, and peers still handshaking) the relay
/// accepts, so a flood of sockets cannot exhaust file descriptors or memory.
pub const MAX_CONNECTIONS: usize = 1024;

/// Where the relay listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Address to bind; `127.0.0.1:1935` by default so nothing is exposed beyond this machine
    /// unless asked for.
    pub listen: SocketAddr,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, crate::publish::url::DEFAULT_PORT)),
        }
    }
}

/// State shared by the accept loop and every connection: the published streams.
#[derive(Debug)]
pub struct Relay {
    streams: Mutex<HashMap<String, Stream>>,
    next_connection_id: AtomicU64,
    connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

/// Controls a running relay. Dropping it leaves the relay running; call
/// [`RelayHandle::shutdown`] to stop it.
#[derive(Debug)]
pub struct RelayHandle {
    /// The address actually bound (useful when listening on port 0).
    pub local_addr: SocketAddr,
    relay: Arc<Relay>,
}

/// A snapshot of the relay's activity, for status lines and tests.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RelayStats {
    /// One entry per published stream, sorted by key.
    pub streams: Vec<StreamStats>,
}

/// Activity of one published stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamStats {
    /// `app/key`, in full: this is the identifier players use. Show `masked_key` to people.
    pub key: String,
    /// `app/key` with the key hidden, safe to print or log.
    pub masked_key: String,
    /// Address of the publishing peer.
    pub publisher: SocketAddr,
    /// Number of connected players.
    pub viewers: usize,
    /// Bytes received from the publisher since it connected.
    pub bytes_in: u64,
    /// Video messages received from the publisher (sequence headers included).
    pub video_packets_in: u64,
    /// Audio messages received from the publisher (sequence headers included).
    pub audio_packets_in: u64,
    /// Messages a player joining now would receive from the GOP cache.
    pub gop_cache_packets: usize,
}

impl RelayStats {
    /// The stream published on `app/key`, if any.
    pub fn stream(&self, key: &str) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.key == key)
    }
}

/// Binds the listening socket and spawns the accept loop on the current tokio runtime.
///
/// Fails with a message naming `--listen` if the address is already taken, because a second
/// relay (or another RTMP server) on port 1935 is the usual cause.
pub async fn start_relay(config: RelayConfig) -> anyhow::Result<RelayHandle> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| bind_error(config.listen, e))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the relay's bound address")?;
    let relay = Arc::new(Relay::new());
    tracing::info!(%local_addr, "RTMP relay listening");
    tokio::spawn(accept_loop(listener, relay.clone()));
    Ok(RelayHandle { local_addr, relay })
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "port {} is already in use: another RTMP server (or another OnAir relay) is \
             listening on {addr}; stop it or use --listen to choose another address",
            addr.port()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {addr} (ports below 1024 need extra privileges): \
             use --listen with a port above 1024"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "cannot listen on {addr}: that address does not belong to this machine; \
             use --listen 127.0.0.1:1935 or 0.0.0.0:1935"
        ),
        _ => anyhow::Error::new(e).context(format!("cannot listen on {addr}")),
    }
}

async fn accept_loop(listener: TcpListener, relay: Arc<Relay>) {
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
            tracing::warn!(%peer, "relay has {MAX_CONNECTIONS} connections already: refusing");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let id = relay.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let relay = relay.clone();
        let shutdown = relay.shutdown.subscribe();
        tokio::spawn(async move {
            rtmp::serve(relay, socket, peer, id, shutdown).await;
            drop(guard);
        });
    }
    tracing::info!("RTMP relay stopped listening");
}

/// Counts a live connection for [`MAX_CONNECTIONS`]; released on drop.
struct ConnectionSlot(Arc<Relay>);

impl ConnectionSlot {
    fn acquire(relay: &Arc<Relay>) -> Option<ConnectionSlot> {
        let previous = relay.connections.fetch_add(1, Ordering::AcqRel);
        if previous >= MAX_CONNECTIONS {
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

/// The identifier of a stream: application and key, since two apps may reuse a key.
fn stream_id(app: &str, key: &str) -> String {
    format!("{app}/{key}")
}

/// The stream identifier with the key masked, for logs.
fn masked_stream_id(app: &str, key: &str) -> String {
    format!("{app}/{}", crate::publish::url::mask_key(key))
}

impl Relay {
    fn new() -> Self {
        Relay {
            streams: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
        }
    }

    /// The stream table. A panic elsewhere never leaves it half-updated in a way that matters
    /// (every update is a few field writes), so a poisoned lock is simply taken over.
    fn streams(&self) -> MutexGuard<'_, HashMap<String, Stream>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Current streams and their counters, sorted by key.
    pub fn stats(&self) -> RelayStats {
        let streams = self.streams();
        let mut list: Vec<StreamStats> = streams
            .iter()
            .map(|(key, s)| StreamStats {
                key: key.clone(),
                masked_key: s.display_key.clone(),
                publisher: s.publisher_addr,
                viewers: s.viewers(),
                bytes_in: s.bytes_in,
                video_packets_in: s.video_packets_in,
                audio_packets_in: s.audio_packets_in,
                gop_cache_packets: s.gop_cache_packets(),
            })
            .collect();
        drop(streams);
        list.sort_by(|a, b| a.key.cmp(&b.key));
        RelayStats { streams: list }
    }

    /// Claims `key` for publisher `id`; false if someone else is publishing on it.
    fn start_publish(&self, key: &str, display_key: String, id: u64, addr: SocketAddr) -> bool {
        let mut streams = self.streams();
        if streams.contains_key(key) {
            return false;
        }
        streams.insert(key.to_string(), Stream::new(display_key, id, addr));
        true
    }

    /// Removes the stream if `id` is its publisher. Dropping it closes every player queue, so
    /// players drain what they have and then finish.
    fn end_publish(&self, key: &str, id: u64) -> bool {
        let mut streams = self.streams();
        match streams.get(key) {
            Some(s) if s.publisher_id == id => {
                let stream = streams.remove(key);
                drop(streams);
                drop(stream);
                true
            }
            _ => false,
        }
    }

    /// Runs `f` on the stream published by `id` on `key`.
    fn with_published<R>(&self, key: &str, id: u64, f: impl FnOnce(&mut Stream) -> R) -> Option<R> {
        let mut streams = self.streams();
        match streams.get_mut(key) {
            Some(s) if s.publisher_id == id => Some(f(s)),
            _ => None,
        }
    }

    /// Adds a player to a published stream; None if nobody publishes on `key`.
    fn join(&self, key: &str, id: u64, addr: SocketAddr) -> Option<(PlayerFeed, String)> {
        let mut streams = self.streams();
        let stream = streams.get_mut(key)?;
        Some((stream.add_player(id, addr), stream.display_key.clone()))
    }

    /// Removes a player (no-op if the stream or the player is already gone).
    fn leave(&self, key: &str, id: u64) {
        if let Some(s) = self.streams().get_mut(key) {
            s.remove_player(id);
        }
    }
}
