//! One relay connection: RTMP handshake, then a `ServerSession` driven by a single task that
//! reads from the peer, writes to it, and (for players) pulls media from the stream's queue.
//! Any protocol error ends only this connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BytesMut};
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
use super::stream::{Kick, PlayerItem};
use super::{masked_stream_id, stream_id, Relay};
use crate::media::MediaKind;

/// RTMP chunk size the relay sends with: large enough that most audio and small video
/// messages fit in one chunk.
pub const CHUNK_SIZE: u32 = 4096;
/// A peer must finish the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer must start publishing or playing within this time of connecting.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A publisher that sends nothing for this long is considered gone.
const PUBLISHER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A player's unsent bytes above which no more media is taken from its queue, so a slow
/// socket shows up as a full queue (and a disconnect) instead of growing memory.
const OUTBOUND_HIGH_WATER: usize = 256 * 1024;
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
    let remaining = match timeout(HANDSHAKE_TIMEOUT, handshake(&mut socket)).await {
        Ok(Ok(remaining)) => remaining,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "closing connection: {e:#}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: no RTMP handshake within {HANDSHAKE_TIMEOUT:?}");
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
                socket.write_all(&conn.outbound).await?;
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
fn is_disconnect(e: &anyhow::Error) -> bool {
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
}

struct Connection {
    relay: Arc<Relay>,
    peer: SocketAddr,
    id: u64,
    session: ServerSession,
    /// Bytes waiting to be written to the peer, in order.
    outbound: BytesMut,
    role: Role,
    items: Option<mpsc::Receiver<PlayerItem>>,
    kick: Option<oneshot::Receiver<Kick>>,
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
            outbound: BytesMut::with_capacity(8 * 1024),
            role: Role::Pending,
            items: None,
            kick: None,
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
        let mut buf = vec![0u8; READ_BUFFER];
        let setup_deadline = Instant::now() + SETUP_TIMEOUT;
        let mut last_read = Instant::now();
        loop {
            let want_media = self.items.is_some() && self.outbound.len() < OUTBOUND_HIGH_WATER;
            let deadline = match self.role {
                Role::Pending => Some(setup_deadline),
                Role::Publisher { .. } => Some(last_read + PUBLISHER_IDLE_TIMEOUT),
                Role::Player { .. } => None,
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(Ending::Drop),
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
                }
                written = writer.write(&self.outbound), if !self.outbound.is_empty() => {
                    let n = written.context("write failed")?;
                    if n == 0 {
                        bail!("peer stopped accepting data");
                    }
                    self.outbound.advance(n);
                }
                item = next_item(&mut self.items), if want_media => match item {
                    Some(item) => self.send_item(item)?,
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
                _ = sleep_until_opt(deadline) => match self.role {
                    Role::Pending => {
                        bail!("neither publish nor play requested within {SETUP_TIMEOUT:?}")
                    }
                    _ => bail!("publisher sent nothing for {PUBLISHER_IDLE_TIMEOUT:?}"),
                },
            }
        }
    }

    fn count_bytes_in(&self, n: usize) {
        if let Role::Publisher { key, .. } = &self.role {
            self.relay
                .with_published(key, self.id, |s| s.bytes_in += n as u64);
        }
    }

    fn handle_input(&mut self, bytes: &[u8]) -> anyhow::Result<Flow> {
        if bytes.is_empty() {
            return Ok(Flow::Continue);
        }
        let session = &mut self.session;
        let results = guard_panics(|| session.handle_input(bytes))?
            .map_err(|e| anyhow!("malformed RTMP data: {e}"))?;
        self.handle_results(results)
    }

    fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> anyhow::Result<Flow> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.outbound.extend_from_slice(&packet.bytes)
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
            ServerSessionEvent::PublishStreamFinished { .. }
            | ServerSessionEvent::PlayStreamFinished { .. } => return Ok(Flow::Close),
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
        stream_key: &str,
    ) -> anyhow::Result<Flow> {
        const BAD_NAME: &str = "NetStream.Publish.BadName";
        if !matches!(self.role, Role::Pending) {
            return self.reject(request_id, BAD_NAME, "this connection is already in use");
        }
        if stream_key.is_empty() {
            tracing::warn!(peer = %self.peer, app, "publish refused: empty stream key");
            return self.reject(request_id, BAD_NAME, "empty stream key");
        }
        let key = stream_id(app, stream_key);
        let display_key = masked_stream_id(app, stream_key);
        if !self
            .relay
            .start_publish(&key, display_key.clone(), self.id, self.peer)
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
        stream_key: &str,
        stream_id_on_connection: u32,
    ) -> anyhow::Result<Flow> {
        if !matches!(self.role, Role::Pending) {
            return self.reject(
                request_id,
                "NetStream.Play.Failed",
                "this connection is already in use",
            );
        }
        let key = stream_id(app, stream_key);
        let Some((feed, display_key)) = self.relay.join(&key, self.id, self.peer) else {
            tracing::info!(
                peer = %self.peer,
                stream = %masked_stream_id(app, stream_key),
                "play refused: nothing is published on this key"
            );
            return self.reject(
                request_id,
                "NetStream.Play.StreamNotFound",
                "nothing is being published on this stream key",
            );
        };
        tracing::info!(peer = %self.peer, stream = %display_key, "player joined");
        self.role = Role::Player {
            key,
            display_key,
            stream_id: stream_id_on_connection,
        };
        self.items = Some(feed.items);
        self.kick = Some(feed.kick);
        self.accept(request_id)?;
        Ok(Flow::Continue)
    }

    /// Serializes one item for this player.
    fn send_item(&mut self, item: PlayerItem) -> anyhow::Result<()> {
        let Role::Player { stream_id, .. } = self.role else {
            return Ok(());
        };
        let packet = match item {
            PlayerItem::Backlog(items) => {
                for item in items {
                    self.send_item(item)?;
                }
                return Ok(());
            }
            PlayerItem::Metadata(metadata) => self.session.send_metadata(stream_id, &metadata),
            PlayerItem::Media(message) => {
                // Marking frames droppable makes the following message use a full chunk
                // header, so every media message carries its absolute timestamp.
                let droppable = !message.is_sequence_header();
                match message.kind {
                    MediaKind::Video => self.session.send_video_data(
                        stream_id,
                        message.data,
                        message.timestamp,
                        droppable,
                    ),
                    MediaKind::Audio => self.session.send_audio_data(
                        stream_id,
                        message.data,
                        message.timestamp,
                        droppable,
                    ),
                }
            }
        }
        .map_err(|e| anyhow!("cannot serialize media for player: {e}"))?;
        self.outbound.extend_from_slice(&packet.bytes);
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
        self.outbound.extend_from_slice(&packet.bytes);
        // Many players (ffmpeg, VLC) stop on UnpublishNotify rather than Play.Complete.
        if let Some(bytes) = unpublish_notify(stream_id) {
            self.outbound.extend_from_slice(&bytes);
        }
        Ok(())
    }

    /// Removes this connection from the relay's tables and logs its departure.
    fn leave(&mut self) {
        match std::mem::replace(&mut self.role, Role::Pending) {
            Role::Pending => tracing::debug!(peer = %self.peer, "connection closed"),
            Role::Publisher { key, display_key } => {
                self.relay.end_publish(&key, self.id);
                tracing::info!(peer = %self.peer, stream = %display_key, "publisher disconnected");
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
