//! One relay connection: RTMP handshake, then a `ServerSession` driven by a single task that
//! reads from the peer, writes to it, and (for players) pulls media from the stream's queue.
//! Any protocol error ends only this connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};

use super::gop_cache::MediaMessage;
use super::outbox::Outbox;
use super::stream::{Kick, PlayerFeed, PlayerItem, ViewerKind};
use super::wire::CHUNK_SIZE;
use super::{masked_stream_id, split_stream_name, stream_id, PublishAuth, Relay};
use crate::media::MediaKind;
use crate::rtmp_guard::{ChunkGuard, MAX_COMMAND_SIZE};

/// A player's unsent bytes above which no more media is taken from its queue, so a slow
/// socket shows up as a full queue (and a disconnect) instead of growing memory.
pub(super) const OUTBOUND_HIGH_WATER: usize = 256 * 1024;
/// Time allowed to deliver final status messages (rejection, end of stream) before closing.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
const READ_BUFFER: usize = 64 * 1024;

/// Runs one connection to completion, logging why it ended.
pub(super) async fn serve(
    relay: Arc<Relay>,
    mut socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    shutdown: watch::Receiver<bool>,
) {
    tracing::debug!(%peer, "connection accepted");
    let limit = relay.config.handshake_timeout;
    let remaining = match timeout(limit, handshake(&mut socket)).await {
        Ok(Ok(remaining)) => remaining,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "closing connection: {e:#}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: no RTMP handshake within {limit:?}");
            return;
        }
    };
    let mut conn = match Connection::new(relay, peer, id) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%peer, "closing connection: {e:#}");
            return;
        }
    };
    let result = conn.run(&mut socket, remaining, shutdown).await;
    conn.leave();
    match result {
        Ok(Ending::Flush) => {
            let flushed = timeout(FINAL_FLUSH_TIMEOUT, async {
                conn.outbox.write_all(&mut socket).await?;
                socket.shutdown().await
            })
            .await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::debug!(%peer, "could not deliver final messages before closing");
            }
        }
        Ok(Ending::Drop) => {}
        Err(e) if is_disconnect(&e) => tracing::info!(%peer, "connection lost: {e:#}"),
        Err(e) => tracing::warn!(%peer, "closing connection: {e:#}"),
    }
}

/// True when the peer simply went away (reset, broken pipe), which is not worth a warning.
pub(super) fn is_disconnect(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::*;
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe))
}

/// Performs the server side of the handshake; returns bytes the peer sent after it.
async fn handshake(socket: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut handshake = Handshake::new(PeerType::Server);
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .read(&mut buf)
            .await
            .context("read failed during the RTMP handshake")?;
        if n == 0 {
            bail!("peer closed the connection during the RTMP handshake");
        }
        let step = guard_panics(|| handshake.process_bytes(&buf[..n]))
            .and_then(|r| r.map_err(|e| anyhow!(e)))
            .context("invalid RTMP handshake")?;
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// Runs the server handshake over `input` alone (no socket), for fuzzing; true if it completed.
pub(super) fn handshake_bytes(input: &[u8]) -> bool {
    let mut handshake = Handshake::new(PeerType::Server);
    for piece in input.chunks(1537) {
        match guard_panics(|| handshake.process_bytes(piece)) {
            Ok(Ok(HandshakeProcessResult::Completed { .. })) => return true,
            Ok(Ok(HandshakeProcessResult::InProgress { .. })) => {}
            _ => return false,
        }
    }
    false
}

/// Feeds post-handshake input to a connection as the network loop would, without a socket;
/// returns whether the connection ended and how many bytes it queued for the peer.
pub(super) fn feed_pieces(
    relay: Arc<Relay>,
    peer: SocketAddr,
    pieces: &[&[u8]],
) -> anyhow::Result<(bool, usize)> {
    let mut conn = Connection::new(relay, peer, 1)?;
    let mut closed = false;
    let mut result = Ok(());
    for piece in pieces {
        conn.count_bytes_in(piece.len());
        match conn.handle_input(piece) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => {
                closed = true;
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let queued = conn.outbox.len();
    conn.leave();
    result.map(|()| (closed, queued))
}

/// Runs a parser over untrusted input, turning a panic inside it into an error so a hostile
/// peer can only ever close its own connection.
fn guard_panics<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| anyhow!("the RTMP parser rejected the input"))
}

/// How a connection ends.
enum Ending {
    /// Send what is still queued (final status messages) then close.
    Flush,
    /// Close at once.
    Drop,
}

enum Role {
    /// Connected but neither publishing nor playing yet.
    Pending,
    Publisher {
        key: String,
        display_key: String,
    },
    Player {
        key: String,
        display_key: String,
        stream_id: u32,
    },
    /// Asked to play a key nobody publishes yet: the request is answered once a publisher
    /// claims the key (accepted) or when the wait is over (refused).
    Waiting {
        key: String,
        display_key: String,
        request_id: u32,
        stream_id: u32,
        /// When to give up (None: never, for a grace period too long to represent).
        until: Option<Instant>,
    },
}

struct Connection {
    relay: Arc<Relay>,
    peer: SocketAddr,
    id: u64,
    session: ServerSession,
    /// Checks input before the session parser sees it.
    guard: ChunkGuard,
    /// Bytes waiting to be written to the peer, in order.
    outbox: Outbox,
    role: Role,
    items: Option<mpsc::Receiver<PlayerItem>>,
    kick: Option<oneshot::Receiver<Kick>>,
    /// The stream's counter of bytes sent to viewers (players only).
    bytes_out: Option<Arc<AtomicU64>>,
    /// Changes when a publisher claims a key (waiting players only); holds no media.
    publishes: Option<watch::Receiver<u64>>,
    /// The publisher ended its stream itself (`deleteStream`), rather than dropping.
    unpublished: bool,
}

/// What handling some input asks the connection loop to do.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

impl Connection {
    fn new(relay: Arc<Relay>, peer: SocketAddr, id: u64) -> anyhow::Result<Connection> {
        let mut config = ServerSessionConfig::new();
        config.chunk_size = CHUNK_SIZE;
        let (session, initial) =
            ServerSession::new(config).map_err(|e| anyhow!("cannot start RTMP session: {e}"))?;
        let mut conn = Connection {
            relay,
            peer,
            id,
            session,
            guard: ChunkGuard::new(),
            outbox: Outbox::default(),
            role: Role::Pending,
            items: None,
            kick: None,
            bytes_out: None,
            publishes: None,
            unpublished: false,
        };
        conn.handle_results(initial)?;
        Ok(conn)
    }

    async fn run(
        &mut self,
        socket: &mut TcpStream,
        remaining: Vec<u8>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Ending> {
        if self.handle_input(&remaining)? == Flow::Close {
            return Ok(Ending::Flush);
        }
        let (mut reader, mut writer) = socket.split();
        // Players and peers still setting up send little (commands, acknowledgements): a small
        // buffer until publishing, since hundreds of players may be connected.
        let mut buf = vec![0u8; 1024];
        let idle = self.relay.config.idle_timeout;
        let setup_deadline = Instant::now() + idle;
        let mut last_read = Instant::now();
        let merge = self.relay.config.merge_window;
        let mut merge_tick = (!merge.is_zero()).then(|| {
            let mut tick = tokio::time::interval(merge);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            if !self.outbox.is_empty() {
                let n = self
                    .outbox
                    .write_now(|slices| writer.try_write_vectored(slices))
                    .context("write failed")?;
                self.count_bytes_out(n);
            }
            if matches!(self.role, Role::Publisher { .. }) && buf.len() < READ_BUFFER {
                buf.resize(READ_BUFFER, 0);
            }
            let want_media = self.items.is_some() && self.outbox.len() < OUTBOUND_HIGH_WATER;
            let deadline = match self.role {
                Role::Pending => Some(setup_deadline),
                Role::Publisher { .. } => Some(last_read + idle),
                Role::Player { .. } => None,
                Role::Waiting { until, .. } => until,
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => {
                    // The relay is stopping: players are told the stream ended, as when a
                    // publisher finishes, so they close instead of waiting for more.
                    self.end_of_stream()?;
                    return Ok(Ending::Flush);
                }
                read = reader.read(&mut buf) => {
                    let n = read.context("read failed")?;
                    if n == 0 {
                        return Ok(Ending::Drop);
                    }
                    last_read = Instant::now();
                    self.count_bytes_in(n);
                    if self.handle_input(&buf[..n])? == Flow::Close {
                        return Ok(Ending::Flush);
                    }
                    self.flush_due();
                }
                written = self.outbox.write_some(&mut writer), if !self.outbox.is_empty() => {
                    let n = written.context("write failed")?;
                    if n == 0 {
                        bail!("peer stopped accepting data");
                    }
                    self.outbox.advance(n);
                    self.count_bytes_out(n);
                }
                item = next_item(&mut self.items), if want_media => match item {
                    Some(item) => {
                        self.send_item(item)?;
                        // Take whatever else is already queued, so one write carries it all.
                        while self.outbox.len() < OUTBOUND_HIGH_WATER {
                            match self.items.as_mut().map(|rx| rx.try_recv()) {
                                Some(Ok(item)) => self.send_item(item)?,
                                _ => break,
                            }
                        }
                    }
                    None => {
                        self.items = None;
                        self.end_of_stream()?;
                        return Ok(Ending::Flush);
                    }
                },
                kick = kicked(&mut self.kick) => match kick {
                    // The relay already warned when it cut this player off.
                    Some(Kick::TooSlow) => return Ok(Ending::Drop),
                    None => self.kick = None,
                },
                changed = publish_changed(&mut self.publishes) => {
                    if changed {
                        self.retry_join()?;
                    } else {
                        self.publishes = None;
                    }
                }
                _ = tick_opt(&mut merge_tick), if matches!(self.role, Role::Publisher { .. }) => {
                    // The publisher went quiet: hand out what waits in the merge window.
                    self.flush_due();
                }
                _ = sleep_until_opt(deadline) => match self.role {
                    Role::Pending => {
                        bail!("neither publish nor play requested within {idle:?}")
                    }
                    Role::Waiting { .. } => {
                        self.stop_waiting()?;
                        return Ok(Ending::Flush);
                    }
                    _ => bail!("publisher sent nothing for {idle:?}"),
                },
            }
        }
    }

    /// For publishers: hands the stream's merged batch to players if it is due.
    fn flush_due(&self) {
        if let Role::Publisher { key, .. } = &self.role {
            self.relay
                .with_published(key, self.id, |s| s.flush_if_due());
        }
    }

    fn count_bytes_out(&self, n: usize) {
        if let Some(counter) = &self.bytes_out {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn count_bytes_in(&self, n: usize) {
        if let Role::Publisher { key, .. } = &self.role {
            self.relay
                .with_published(key, self.id, |s| s.count_bytes_in(n));
        }
    }

    /// Checks and parses input one message at a time, so limits follow the connection's role
    /// (a publisher may send large media messages, nobody else may).
    fn handle_input(&mut self, mut bytes: &[u8]) -> anyhow::Result<Flow> {
        while !bytes.is_empty() {
            let max_media = match self.role {
                Role::Publisher { .. } => self.relay.config.max_message_size,
                _ => MAX_COMMAND_SIZE,
            };
            let n = self
                .guard
                .feed(bytes, max_media)
                .map_err(|e| anyhow!("refused RTMP input: {e}"))?;
            let session = &mut self.session;
            let piece = &bytes[..n];
            let results = guard_panics(|| session.handle_input(piece))?
                .map_err(|e| anyhow!("malformed RTMP data: {e}"))?;
            if self.handle_results(results)? == Flow::Close {
                return Ok(Flow::Close);
            }
            bytes = &bytes[n..];
        }
        Ok(Flow::Continue)
    }

    fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> anyhow::Result<Flow> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.outbox.push(Bytes::from(packet.bytes))
                }
                ServerSessionResult::RaisedEvent(event) => {
                    if self.handle_event(event)? == Flow::Close {
                        return Ok(Flow::Close);
                    }
                }
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    tracing::trace!(peer = %self.peer, type_id = payload.type_id, "ignored RTMP message");
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn accept(&mut self, request_id: u32) -> anyhow::Result<()> {
        let results = self
            .session
            .accept_request(request_id)
            .map_err(|e| anyhow!("cannot accept request: {e}"))?;
        self.handle_results(results)?;
        Ok(())
    }

    fn reject(&mut self, request_id: u32, code: &str, description: &str) -> anyhow::Result<Flow> {
        let results = self
            .session
            .reject_request(request_id, code, description)
            .map_err(|e| anyhow!("cannot reject request: {e}"))?;
        self.handle_results(results)?;
        Ok(Flow::Close)
    }

    fn handle_event(&mut self, event: ServerSessionEvent) -> anyhow::Result<Flow> {
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                self.accept(request_id)?;
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => return self.on_publish_request(request_id, &app_name, &stream_key),
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                stream_id,
                ..
            } => return self.on_play_request(request_id, &app_name, &stream_key, stream_id),
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.unpublished = true;
                return Ok(Flow::Close);
            }
            ServerSessionEvent::PlayStreamFinished { .. } => return Ok(Flow::Close),
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let Role::Publisher { key, .. } = &self.role {
                    self.relay
                        .with_published(key, self.id, |s| s.set_metadata(metadata));
                }
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.on_media(MediaKind::Video, timestamp, data),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.on_media(MediaKind::Audio, timestamp, data),
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. } => {
                // Arguments are not logged: commands like FCPublish carry the stream key.
                tracing::trace!(peer = %self.peer, command = %command_name, "ignored RTMP command");
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn on_media(&mut self, kind: MediaKind, timestamp: RtmpTimestamp, data: bytes::Bytes) {
        if let Role::Publisher { key, .. } = &self.role {
            let message = MediaMessage {
                kind,
                timestamp,
                data,
            };
            self.relay
                .with_published(key, self.id, |s| s.push_media(message));
        }
    }

    fn on_publish_request(
        &mut self,
        request_id: u32,
        app: &str,
        requested: &str,
    ) -> anyhow::Result<Flow> {
        const BAD_NAME: &str = "NetStream.Publish.BadName";
        if !matches!(self.role, Role::Pending) {
            return self.reject(request_id, BAD_NAME, "this connection is already in use");
        }
        let (name, key) = split_stream_name(requested);
        if name.is_empty() {
            tracing::warn!(peer = %self.peer, app, "publish refused: empty stream key");
            return self.reject(request_id, BAD_NAME, "empty stream key");
        }
        let display_key = masked_stream_id(app, name);
        let listed = match self.relay.authorize_publish(name, key) {
            PublishAuth::Allowed { listed } => listed,
            PublishAuth::Denied => {
                tracing::warn!(
                    peer = %self.peer,
                    stream = %display_key,
                    "publish refused: stream key not allowed"
                );
                return self.reject(request_id, BAD_NAME, "stream key not allowed");
            }
        };
        let key = stream_id(app, name);
        if !self
            .relay
            .start_publish(&key, display_key.clone(), self.id, self.peer, listed)
        {
            tracing::warn!(
                peer = %self.peer,
                stream = %display_key,
                "publish refused: stream key already in use"
            );
            return self.reject(request_id, BAD_NAME, "stream key already in use");
        }
        tracing::info!(peer = %self.peer, stream = %display_key, "publisher connected");
        self.role = Role::Publisher { key, display_key };
        self.accept(request_id)?;
        Ok(Flow::Continue)
    }

    fn on_play_request(
        &mut self,
        request_id: u32,
        app: &str,
        requested: &str,
        stream_id_on_connection: u32,
    ) -> anyhow::Result<Flow> {
        if !matches!(self.role, Role::Pending) {
            return self.reject(
                request_id,
                "NetStream.Play.Failed",
                "this connection is already in use",
            );
        }
        let (name, play_key) = split_stream_name(requested);
        if !self.relay.authorize_play(play_key) {
            tracing::warn!(
                peer = %self.peer,
                stream = %masked_stream_id(app, name),
                "play refused: missing or wrong play key"
            );
            return self.reject(
                request_id,
                "NetStream.Play.Forbidden",
                "play key missing or not allowed (add ?key=PLAY_KEY to the stream name)",
            );
        }
        let key = stream_id(app, name);
        let display_key = masked_stream_id(app, name);
        // Subscribed before looking, so a publisher arriving in between is not missed.
        let publishes = self.relay.publishes();
        if let Some((feed, display_key)) =
            self.relay.join(&key, self.id, self.peer, ViewerKind::Rtmp)
        {
            tracing::info!(peer = %self.peer, stream = %display_key, "player joined");
            return self.start_playing(request_id, key, display_key, stream_id_on_connection, feed);
        }
        let grace = self.relay.config.publisher_grace;
        if grace.is_zero() {
            return self.refuse_not_found(request_id, &display_key);
        }
        tracing::info!(
            peer = %self.peer,
            stream = %display_key,
            "nothing is published on this key yet: the player waits up to {grace:?}"
        );
        self.role = Role::Waiting {
            key,
            display_key,
            request_id,
            stream_id: stream_id_on_connection,
            until: Instant::now().checked_add(grace),
        };
        self.publishes = Some(publishes);
        Ok(Flow::Continue)
    }

    /// Answers a play request for a key nobody publishes on.
    fn refuse_not_found(&mut self, request_id: u32, display_key: &str) -> anyhow::Result<Flow> {
        tracing::info!(
            peer = %self.peer,
            stream = %display_key,
            "play refused: nothing is published on this key"
        );
        self.reject(
            request_id,
            "NetStream.Play.StreamNotFound",
            "nothing is being published on this stream key",
        )
    }

    /// Accepts a play request and starts feeding the player from `feed`.
    fn start_playing(
        &mut self,
        request_id: u32,
        key: String,
        display_key: String,
        stream_id: u32,
        feed: PlayerFeed,
    ) -> anyhow::Result<Flow> {
        self.role = Role::Player {
            key,
            display_key,
            stream_id,
        };
        self.items = Some(feed.items);
        self.kick = Some(feed.kick);
        self.bytes_out = Some(feed.bytes_out);
        self.publishes = None;
        self.accept(request_id)?;
        Ok(Flow::Continue)
    }

    /// A publisher claimed some key: if it is the one this player waits for, start playing.
    fn retry_join(&mut self) -> anyhow::Result<()> {
        let Role::Waiting { key, .. } = &self.role else {
            self.publishes = None;
            return Ok(());
        };
        let Some((feed, display_key)) = self.relay.join(key, self.id, self.peer, ViewerKind::Rtmp)
        else {
            return Ok(());
        };
        let Role::Waiting {
            key,
            request_id,
            stream_id,
            ..
        } = std::mem::replace(&mut self.role, Role::Pending)
        else {
            return Ok(());
        };
        tracing::info!(peer = %self.peer, stream = %display_key, "waiting player joined");
        self.start_playing(request_id, key, display_key, stream_id, feed)?;
        Ok(())
    }

    /// The wait for a publisher is over: refuse the play request as if it had just come.
    fn stop_waiting(&mut self) -> anyhow::Result<()> {
        let Role::Waiting {
            display_key,
            request_id,
            ..
        } = std::mem::replace(&mut self.role, Role::Pending)
        else {
            return Ok(());
        };
        self.publishes = None;
        self.refuse_not_found(request_id, &display_key)?;
        Ok(())
    }

    /// Queues one item for this player, using the shared encoding when it fits.
    fn send_item(&mut self, item: PlayerItem) -> anyhow::Result<()> {
        let Role::Player { stream_id, .. } = self.role else {
            return Ok(());
        };
        match item {
            PlayerItem::Backlog(frames) => {
                for frame in frames {
                    frame.push_rtmp(&mut self.outbox, stream_id);
                }
            }
            PlayerItem::Batch(frames) => {
                for frame in frames.iter() {
                    frame.push_rtmp(&mut self.outbox, stream_id);
                }
            }
            PlayerItem::Frame(frame) => frame.push_rtmp(&mut self.outbox, stream_id),
        }
        Ok(())
    }

    /// The publisher left: tell the player the stream is over.
    fn end_of_stream(&mut self) -> anyhow::Result<()> {
        let Role::Player { stream_id, .. } = self.role else {
            return Ok(());
        };
        let packet = self
            .session
            .finish_playing(stream_id)
            .map_err(|e| anyhow!("cannot end playback: {e}"))?;
        self.outbox.push(Bytes::from(packet.bytes));
        // Many players (ffmpeg, VLC) stop on UnpublishNotify rather than Play.Complete.
        if let Some(bytes) = unpublish_notify(stream_id) {
            self.outbox.push(Bytes::from(bytes));
        }
        Ok(())
    }

    /// Removes this connection from the relay's tables and logs its departure.
    fn leave(&mut self) {
        match std::mem::replace(&mut self.role, Role::Pending) {
            Role::Pending => tracing::debug!(peer = %self.peer, "connection closed"),
            Role::Publisher { key, display_key } => {
                self.relay.end_publish(&key, self.id, self.unpublished);
                tracing::info!(peer = %self.peer, stream = %display_key, "publisher disconnected");
            }
            Role::Waiting { display_key, .. } => {
                tracing::info!(peer = %self.peer, stream = %display_key, "waiting player left");
            }
            Role::Player {
                key, display_key, ..
            } => {
                self.relay.leave(&key, self.id);
                tracing::info!(peer = %self.peer, stream = %display_key, "player left");
            }
        }
    }
}

/// An `onStatus(NetStream.Play.UnpublishNotify)` message, which `ServerSession` cannot build.
///
/// It is serialized with a fresh serializer and a full chunk header, which is valid only
/// because nothing is sent on this connection after it.
fn unpublish_notify(stream_id: u32) -> Option<Vec<u8>> {
    let mut serializer = ChunkSerializer::new();
    // The session already announced this chunk size to the peer; the packet is not resent.
    serializer
        .set_max_chunk_size(CHUNK_SIZE, RtmpTimestamp::new(0))
        .ok()?;
    let mut status = HashMap::new();
    status.insert("level".to_string(), Amf0Value::Utf8String("status".into()));
    status.insert(
        "code".to_string(),
        Amf0Value::Utf8String("NetStream.Play.UnpublishNotify".into()),
    );
    status.insert(
        "description".to_string(),
        Amf0Value::Utf8String("the publisher stopped".into()),
    );
    let message = RtmpMessage::Amf0Command {
        command_name: "onStatus".to_string(),
        transaction_id: 0.0,
        command_object: Amf0Value::Null,
        additional_arguments: vec![Amf0Value::Object(status)],
    };
    let payload = message
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .ok()?;
    serializer
        .serialize(&payload, true, false)
        .ok()
        .map(|p| p.bytes)
}

async fn next_item(items: &mut Option<mpsc::Receiver<PlayerItem>>) -> Option<PlayerItem> {
    match items {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves with the kick reason, or None once the stream ended without kicking (the sender
/// was dropped); pending forever when there is nothing to watch.
async fn kicked(kick: &mut Option<oneshot::Receiver<Kick>>) -> Option<Kick> {
    match kick {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

/// True when a publisher claimed a key; false once the relay is gone; pending forever when
/// the connection waits for nothing.
async fn publish_changed(publishes: &mut Option<watch::Receiver<u64>>) -> bool {
    match publishes {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn tick_opt(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
