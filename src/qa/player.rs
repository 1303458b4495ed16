//! A minimal RTMP playback client: connects, asks to play a stream key and hands back the
//! metadata, audio and video messages as they arrive. Tests use it to check what a viewer
//! really receives, and `onair probe` uses it to inspect a live stream.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, StreamMetadata,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::publish::url::RtmpUrl;
use crate::relay::{is_audio_sequence_header, is_video_keyframe, is_video_sequence_header};

/// Something the server sent for the stream being played.
#[derive(Clone, Debug)]
pub enum PlayerEvent {
    /// The publisher's `onMetaData` (size, frame rate, codecs), as the server relays it.
    Metadata(StreamMetadata),
    /// An FLV video tag body.
    Video {
        /// RTMP timestamp in milliseconds, as sent by the server.
        timestamp_ms: u32,
        /// Tag body: frame type and codec byte, AVC packet type, composition time, data.
        data: Bytes,
    },
    /// An FLV audio tag body.
    Audio {
        /// RTMP timestamp in milliseconds, as sent by the server.
        timestamp_ms: u32,
        /// Tag body: sound format byte, AAC packet type, data.
        data: Bytes,
    },
}

impl PlayerEvent {
    /// True for codec set-up messages (AVC or AAC sequence headers).
    pub fn is_sequence_header(&self) -> bool {
        match self {
            PlayerEvent::Video { data, .. } => is_video_sequence_header(data),
            PlayerEvent::Audio { data, .. } => is_audio_sequence_header(data),
            PlayerEvent::Metadata(_) => false,
        }
    }

    /// True for a video keyframe carrying picture data.
    pub fn is_keyframe(&self) -> bool {
        matches!(self, PlayerEvent::Video { data, .. } if is_video_keyframe(data))
    }
}

/// A playing RTMP connection.
pub struct RtmpPlayer {
    socket: TcpStream,
    session: ClientSession,
    /// Events decoded but not yet returned.
    pending: VecDeque<PlayerEvent>,
    /// Bytes to send to the server (acknowledgements, pings), written before the next read.
    outbound: BytesMut,
    ended: bool,
    /// The onStatus code with which the server ended the stream, if it said so.
    end_status: Option<String>,
    url_for_errors: String,
}

impl std::fmt::Debug for RtmpPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpPlayer")
            .field("url", &self.url_for_errors)
            .field("pending_events", &self.pending.len())
            .field("ended", &self.ended)
            .finish()
    }
}

/// onStatus codes that mean the stream is over.
const END_CODES: &[&str] = &[
    "NetStream.Play.Complete",
    "NetStream.Play.Stop",
    "NetStream.Play.UnpublishNotify",
];

impl RtmpPlayer {
    /// Connects (TCP, handshake, `connect` to the app, `play` of the key) and waits until the
    /// server accepts playback, all within `timeout`.
    pub async fn connect(url: &RtmpUrl, timeout: Duration) -> anyhow::Result<RtmpPlayer> {
        match tokio::time::timeout(timeout, Self::connect_inner(url)).await {
            Ok(result) => result,
            Err(_) => bail!(
                "timed out after {:.1} s waiting for {url} to start playback",
                timeout.as_secs_f64()
            ),
        }
    }

    async fn connect_inner(url: &RtmpUrl) -> anyhow::Result<RtmpPlayer> {
        let mut socket = match TcpStream::connect(url.address()).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
                "cannot connect to {url}: connection refused (is the RTMP server or \
                 `onair relay` running on {}?)",
                url.address()
            ),
            Err(e) => return Err(anyhow!(e).context(format!("cannot connect to {url}"))),
        };
        let _ = socket.set_nodelay(true);
        let remaining = client_handshake(&mut socket)
            .await
            .with_context(|| format!("RTMP handshake with {url} failed"))?;

        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(url.tc_url());
        let (session, initial) =
            ClientSession::new(config).map_err(|e| anyhow!("cannot start RTMP session: {e}"))?;
        let mut player = RtmpPlayer {
            socket,
            session,
            pending: VecDeque::new(),
            outbound: BytesMut::new(),
            ended: false,
            end_status: None,
            url_for_errors: url.to_string(),
        };
        player.queue_results(initial)?;
        let request = player
            .session
            .request_connection(url.app.clone())
            .map_err(|e| anyhow!("cannot request connection: {e}"))?;
        player.queue_results(vec![request])?;

        let mut setup = Setup::Connecting;
        let mut buf = vec![0u8; 64 * 1024];
        if !remaining.is_empty() {
            let results = player.decode(&remaining)?;
            player.setup_step(results, &mut setup, url)?;
        }
        while setup != Setup::Playing {
            player.flush().await?;
            let n = player.socket.read(&mut buf).await.context("read failed")?;
            if n == 0 {
                bail!("{url} closed the connection before playback started");
            }
            let results = player.decode(&buf[..n])?;
            player.setup_step(results, &mut setup, url)?;
        }
        player.flush().await?;
        Ok(player)
    }

    /// Handles session results while connecting: requests playback once connected, and turns
    /// refusals into errors.
    fn setup_step(
        &mut self,
        results: Vec<ClientSessionResult>,
        setup: &mut Setup,
        url: &RtmpUrl,
    ) -> anyhow::Result<()> {
        for result in results {
            let event = match result {
                ClientSessionResult::OutboundResponse(packet) => {
                    self.outbound.extend_from_slice(&packet.bytes);
                    continue;
                }
                ClientSessionResult::RaisedEvent(event) => event,
                ClientSessionResult::UnhandleableMessageReceived(_) => continue,
            };
            match event {
                ClientSessionEvent::ConnectionRequestAccepted => {
                    let request = self
                        .session
                        .request_playback(url.stream_key.clone())
                        .map_err(|e| anyhow!("cannot request playback: {e}"))?;
                    self.queue_results(vec![request])?;
                    *setup = Setup::PlayRequested;
                }
                ClientSessionEvent::ConnectionRequestRejected { description } => {
                    bail!(
                        "{url} refused the connection to app '{}': {description}",
                        url.app
                    )
                }
                ClientSessionEvent::PlaybackRequestAccepted => *setup = Setup::Playing,
                ClientSessionEvent::UnknownTransactionResultReceived {
                    additional_values, ..
                } => {
                    let status = Status::find(&additional_values);
                    if status.level.to_ascii_lowercase().contains("error") {
                        bail!(
                            "{url} refused playback: {} ({})",
                            status.code,
                            status.description
                        );
                    }
                }
                ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                    if ["Failed", "NotFound", "Rejected", "BadName", "Error"]
                        .iter()
                        .any(|w| code.contains(w))
                    {
                        bail!("{url} refused playback: {code}");
                    }
                    if END_CODES.contains(&code.as_str()) {
                        bail!("{url} ended the stream before playback started ({code})");
                    }
                }
                other => self.take_event(other),
            }
        }
        Ok(())
    }

    /// How the server ended the stream (`NetStream.Play.UnpublishNotify`, …); None while
    /// playing, or when the connection just closed without a word.
    pub fn end_status(&self) -> Option<&str> {
        self.end_status.as_deref()
    }

    /// The next event; `None` once the server has ended the stream or closed the connection.
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<PlayerEvent>> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            if !self.outbound.is_empty() {
                let n = self
                    .socket
                    .write(&self.outbound)
                    .await
                    .context("write failed")?;
                self.outbound.advance(n);
                continue;
            }
            let n = match self.socket.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "connection to {} failed while playing",
                        self.url_for_errors
                    )))
                }
            };
            if n == 0 {
                self.ended = true;
                continue;
            }
            let results = self.decode(&buf[..n])?;
            self.queue_results(results)?;
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<ClientSessionResult>> {
        let session = &mut self.session;
        catch_unwind(AssertUnwindSafe(|| session.handle_input(bytes)))
            .map_err(|_| anyhow!("the RTMP parser rejected data from the server"))?
            .map_err(|e| anyhow!("malformed RTMP data from the server: {e}"))
    }

    fn queue_results(&mut self, results: Vec<ClientSessionResult>) -> anyhow::Result<()> {
        for result in results {
            match result {
                ClientSessionResult::OutboundResponse(packet) => {
                    self.outbound.extend_from_slice(&packet.bytes)
                }
                ClientSessionResult::RaisedEvent(event) => self.take_event(event),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn take_event(&mut self, event: ClientSessionEvent) {
        match event {
            ClientSessionEvent::StreamMetadataReceived { metadata } => {
                self.pending.push_back(PlayerEvent::Metadata(metadata))
            }
            ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                self.pending.push_back(PlayerEvent::Video {
                    timestamp_ms: timestamp.value,
                    data,
                })
            }
            ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                self.pending.push_back(PlayerEvent::Audio {
                    timestamp_ms: timestamp.value,
                    data,
                })
            }
            ClientSessionEvent::UnhandleableOnStatusCode { code }
                if END_CODES.contains(&code.as_str()) =>
            {
                self.ended = true;
                self.end_status = Some(code);
            }
            _ => {}
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.outbound.is_empty() {
            self.socket
                .write_all(&self.outbound)
                .await
                .context("write failed")?;
            self.outbound.clear();
        }
        Ok(())
    }
}

#[derive(PartialEq, Eq, Debug)]
enum Setup {
    Connecting,
    PlayRequested,
    Playing,
}

/// The status object of an `_error` or `_result` reply.
#[derive(Default)]
struct Status {
    level: String,
    code: String,
    description: String,
}

impl Status {
    fn find(values: &[Amf0Value]) -> Status {
        for value in values {
            if let Amf0Value::Object(props) = value {
                let get = |name: &str| match props.get(name) {
                    Some(Amf0Value::Utf8String(s)) => s.clone(),
                    _ => String::new(),
                };
                return Status {
                    level: get("level"),
                    code: get("code"),
                    description: get("description"),
                };
            }
        }
        Status::default()
    }
}

/// Client side of the RTMP handshake; returns bytes the server sent after it.
async fn client_handshake(socket: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut handshake = Handshake::new(PeerType::Client);
    let p0_p1 = handshake
        .generate_outbound_p0_and_p1()
        .map_err(|e| anyhow!("{e}"))?;
    socket.write_all(&p0_p1).await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        let step = catch_unwind(AssertUnwindSafe(|| handshake.process_bytes(&buf[..n])))
            .map_err(|_| anyhow!("invalid handshake from the server"))?
            .map_err(|e| anyhow!("invalid handshake from the server: {e}"))?;
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await?
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
