//! The RTMP publisher: an rml_rtmp `ClientSession` driven over a tokio `TcpStream`.
//! It turns every server answer into a message a streamer can act on.

use super::url::RtmpUrl;
use crate::flv;
use crate::media::{MediaKind, Packet, StreamHeaders};
use crate::rtmp_guard::{ChunkGuard, MAX_COMMAND_SIZE};
use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why publishing failed, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("could not connect to {addr}: {cause}. Is the server running and the address right?")]
    Connect { addr: String, cause: std::io::Error },
    #[error("no answer from {addr} within {secs} s: the server may be down, or a firewall is dropping RTMP (port {port})")]
    Timeout { addr: String, secs: u64, port: u16 },
    #[error("the server at {addr} closed the connection during {stage}: {hint}")]
    Closed {
        addr: String,
        stage: &'static str,
        hint: &'static str,
    },
    #[error("the server rejected the application '{app}': {description}. Check the part of the URL after the host")]
    AppRejected { app: String, description: String },
    #[error("the server refused to publish stream key {key} ({code}): authentication failed or the key is already live elsewhere. Check the stream key")]
    PublishRefused { key: String, code: String },
    #[error("RTMP handshake with {addr} failed: {detail}. Is this an RTMP server?")]
    Handshake { addr: String, detail: String },
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("network error while streaming to {addr}: {cause}")]
    Io { addr: String, cause: std::io::Error },
    #[error("the connection to {addr} delivered nothing for {secs} s: the link is gone (a changed network or a dead route)")]
    Stalled { addr: String, secs: u64 },
    #[error("the stream never went live ({attempts} failed attempt(s)); the last one: {last}")]
    NeverLive { attempts: u32, last: String },
}

/// Does the client half of the RTMP handshake; returns bytes that arrived after it.
pub async fn client_handshake(stream: &mut TcpStream, addr: &str) -> Result<Vec<u8>, PublishError> {
    let hs_err = |e: &dyn std::fmt::Debug| PublishError::Handshake {
        addr: addr.to_string(),
        detail: format!("{e:?}"),
    };
    let mut handshake = Handshake::new(PeerType::Client);
    let p0p1 = handshake
        .generate_outbound_p0_and_p1()
        .map_err(|e| hs_err(&e))?;
    write_all(stream, addr, &p0p1).await?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| io_err(addr, e))?;
        if n == 0 {
            return Err(PublishError::Closed {
                addr: addr.to_string(),
                stage: "the handshake",
                hint: "it may not speak RTMP, or it limits connections",
            });
        }
        let step = guard_panics(|| handshake.process_bytes(&buf[..n]))
            .map_err(|e| hs_err(&e))?
            .map_err(|e| hs_err(&e))?;
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                write_all(stream, addr, &response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                write_all(stream, addr, &response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// Runs rml_rtmp's parser over server bytes, turning a panic inside it into an error: a broken
/// or hostile server costs the connection (and a reconnect), never the process.
fn guard_panics<T>(f: impl FnOnce() -> T) -> Result<T, &'static str> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| "the RTMP parser failed on the server's data")
}

/// Checks server bytes with a [`ChunkGuard`] (chunk sizes, message lengths, AMF nesting)
/// before the client session parses them, one message at a time, as the relay does with its
/// peers: rml_rtmp's parser trusts what it reads and can panic, reserve gigabytes or overflow
/// its stack on hostile input. A server sends a publisher only control and command messages,
/// so nothing longer than [`MAX_COMMAND_SIZE`] is accepted.
pub fn parse_server_input(
    guard: &mut ChunkGuard,
    session: &mut ClientSession,
    mut data: &[u8],
) -> Result<Vec<ClientSessionResult>, PublishError> {
    let mut results = Vec::new();
    while !data.is_empty() {
        let n = guard
            .feed(data, MAX_COMMAND_SIZE)
            .map_err(|e| PublishError::Protocol(format!("the server sent invalid data: {e}")))?;
        let piece = &data[..n];
        let mut r = guard_panics(|| session.handle_input(piece))
            .map_err(|e| PublishError::Protocol(e.to_string()))?
            .map_err(|e| PublishError::Protocol(format!("the server sent invalid data: {e}")))?;
        results.append(&mut r);
        data = &data[n..];
    }
    Ok(results)
}

/// "code: description" of an error status object (level "error"), if that is what it is.
fn error_status(values: &[rml_rtmp::rml_amf0::Amf0Value]) -> Option<String> {
    use rml_rtmp::rml_amf0::Amf0Value;
    values.iter().find_map(|v| {
        let Amf0Value::Object(props) = v else {
            return None;
        };
        let text = |k: &str| match props.get(k) {
            Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
            _ => None,
        };
        let is_error = text("level").as_deref() == Some("error");
        let code = text("code").unwrap_or_default();
        if !is_error && !code.contains("BadName") && !code.contains("Rejected") {
            return None;
        }
        Some(match text("description") {
            Some(d) if !d.is_empty() => format!("{code}: {d}"),
            _ => code,
        })
    })
}

fn io_err(addr: &str, cause: std::io::Error) -> PublishError {
    PublishError::Io {
        addr: addr.to_string(),
        cause,
    }
}

async fn write_all(stream: &mut TcpStream, addr: &str, bytes: &[u8]) -> Result<(), PublishError> {
    stream.write_all(bytes).await.map_err(|e| io_err(addr, e))
}

async fn open_socket(addr: &str, send_buffer: Option<u32>) -> std::io::Result<TcpStream> {
    let mut last_err = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(size) = send_buffer {
            socket.set_send_buffer_size(size)?;
        }
        match socket.connect(sa).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host name has no address")
    }))
}

/// A connected, publishing RTMP session.
pub struct RtmpPublisher {
    stream: TcpStream,
    session: ClientSession,
    /// Checks the server's bytes before `session` parses them.
    guard: ChunkGuard,
    url: RtmpUrl,
    addr: String,
    read_buf: Vec<u8>,
    /// Bytes written to the socket so far.
    pub bytes_sent: u64,
    /// Bytes the server acknowledged receiving (RTMP Acknowledgement).
    pub bytes_acked: u64,
}

impl RtmpPublisher {
    /// Connects, handshakes, connects to the app and starts publishing `url`'s stream key,
    /// then sends metadata and the sequence headers. Every step is bounded by `timeout`.
    pub async fn connect(
        url: &RtmpUrl,
        headers: &StreamHeaders,
        timeout: Duration,
    ) -> Result<RtmpPublisher, PublishError> {
        Self::connect_with_buffer(url, headers, timeout, None).await
    }

    /// Like [`Self::connect`], with the socket's send buffer limited to `send_buffer` bytes:
    /// a large kernel buffer would hide congestion from the send queue for seconds.
    pub async fn connect_with_buffer(
        url: &RtmpUrl,
        headers: &StreamHeaders,
        timeout: Duration,
        send_buffer: Option<u32>,
    ) -> Result<RtmpPublisher, PublishError> {
        let addr = url.address();
        let timeout_err = || PublishError::Timeout {
            addr: addr.clone(),
            secs: timeout.as_secs().max(1),
            port: url.port,
        };
        let mut stream = tokio::time::timeout(timeout, open_socket(&addr, send_buffer))
            .await
            .map_err(|_| timeout_err())?
            .map_err(|cause| PublishError::Connect {
                addr: addr.clone(),
                cause,
            })?;
        // Low latency: never hold a small packet back waiting for more data.
        let _ = stream.set_nodelay(true);
        let remaining = tokio::time::timeout(timeout, client_handshake(&mut stream, &addr))
            .await
            .map_err(|_| timeout_err())??;
        let mut config = ClientSessionConfig::new();
        config.chunk_size = 4096;
        config.tc_url = Some(url.tc_url());
        let (session, initial) =
            ClientSession::new(config).map_err(|e| PublishError::Protocol(e.to_string()))?;
        let mut publisher = RtmpPublisher {
            stream,
            session,
            guard: ChunkGuard::new(),
            url: url.clone(),
            addr: addr.clone(),
            read_buf: vec![0u8; 16 * 1024],
            bytes_sent: 0,
            bytes_acked: 0,
        };
        publisher.send_results(initial).await?;
        let events = publisher.feed(&remaining).await?;
        tokio::time::timeout(timeout, publisher.negotiate(events))
            .await
            .map_err(|_| timeout_err())??;
        publisher.send_headers(headers).await?;
        Ok(publisher)
    }

    async fn negotiate(
        &mut self,
        mut pending: Vec<ClientSessionEvent>,
    ) -> Result<(), PublishError> {
        let req = self
            .session
            .request_connection(self.url.app.clone())
            .map_err(|e| PublishError::Protocol(e.to_string()))?;
        self.send_results(vec![req]).await?;
        let mut stage = "connect";
        loop {
            for event in pending.drain(..) {
                match event {
                    ClientSessionEvent::ConnectionRequestAccepted => {
                        let req = self
                            .session
                            .request_publishing(
                                self.url.stream_key.clone(),
                                PublishRequestType::Live,
                            )
                            .map_err(|e| PublishError::Protocol(e.to_string()))?;
                        self.send_results(vec![req]).await?;
                        stage = "publish";
                    }
                    ClientSessionEvent::ConnectionRequestRejected { description } => {
                        return Err(PublishError::AppRejected {
                            app: self.url.app.clone(),
                            description,
                        });
                    }
                    ClientSessionEvent::PublishRequestAccepted => return Ok(()),
                    ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                        return Err(PublishError::PublishRefused {
                            key: self.url.masked_key(),
                            code,
                        });
                    }
                    // Some servers answer a refused publish with an `_error` that names no
                    // transaction of ours.
                    ClientSessionEvent::UnknownTransactionResultReceived {
                        additional_values,
                        ..
                    } => {
                        if let Some(code) = error_status(&additional_values) {
                            return Err(PublishError::PublishRefused {
                                key: self.url.masked_key(),
                                code,
                            });
                        }
                    }
                    _ => {}
                }
            }
            let n = self
                .stream
                .read(&mut self.read_buf)
                .await
                .map_err(|e| io_err(&self.addr, e))?;
            if n == 0 {
                return Err(PublishError::Closed {
                    addr: self.addr.clone(),
                    stage: if stage == "connect" {
                        "the connect request"
                    } else {
                        "the publish request"
                    },
                    hint: if stage == "connect" {
                        "the application name may be wrong"
                    } else {
                        "the stream key may be wrong or already in use"
                    },
                });
            }
            let data = self.read_buf[..n].to_vec();
            pending = self.feed(&data).await?;
        }
    }

    /// Feeds bytes from the server into the session, sends its replies, returns its events.
    async fn feed(&mut self, data: &[u8]) -> Result<Vec<ClientSessionEvent>, PublishError> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let results = parse_server_input(&mut self.guard, &mut self.session, data)?;
        let mut events = Vec::new();
        let mut out = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    out.push(ClientSessionResult::OutboundResponse(p))
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::AcknowledgementReceived {
                    bytes_received,
                }) => self.bytes_acked = bytes_received as u64,
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        self.send_results(out).await?;
        Ok(events)
    }

    async fn send_results(
        &mut self,
        results: Vec<ClientSessionResult>,
    ) -> Result<(), PublishError> {
        for r in results {
            if let ClientSessionResult::OutboundResponse(packet) = r {
                self.write(&packet.bytes).await?;
            }
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), PublishError> {
        write_all(&mut self.stream, &self.addr, bytes).await?;
        self.bytes_sent += bytes.len() as u64;
        Ok(())
    }

    /// Sends onMetaData and the AVC/AAC sequence headers (again after every reconnect).
    pub async fn send_headers(&mut self, headers: &StreamHeaders) -> Result<(), PublishError> {
        let mut meta = StreamMetadata::new();
        if let Some(v) = &headers.video {
            meta.video_width = Some(v.width);
            meta.video_height = Some(v.height);
            meta.video_codec_id = Some(7);
            meta.video_frame_rate = Some(v.fps as f32);
            meta.video_bitrate_kbps = Some(v.bitrate_kbps);
        }
        if let Some(a) = &headers.audio {
            meta.audio_codec_id = Some(10);
            meta.audio_bitrate_kbps = Some(a.bitrate_kbps);
            meta.audio_sample_rate = Some(a.sample_rate);
            meta.audio_channels = Some(a.channels as u32);
            meta.audio_is_stereo = Some(a.channels == 2);
        }
        meta.encoder = Some(format!("OnAir {}", env!("CARGO_PKG_VERSION")));
        let r = self
            .session
            .publish_metadata(&meta)
            .map_err(|e| PublishError::Protocol(e.to_string()))?;
        self.send_results(vec![r]).await?;
        if let Some(v) = &headers.video {
            let body = flv::video_sequence_header_body(&v.avc_config);
            self.send_body(MediaKind::Video, body, 0, false).await?;
        }
        if let Some(a) = &headers.audio {
            let body = flv::audio_sequence_header_body(&a.asc);
            self.send_body(MediaKind::Audio, body, 0, false).await?;
        }
        Ok(())
    }

    async fn send_body(
        &mut self,
        kind: MediaKind,
        body: Bytes,
        timestamp_ms: u32,
        droppable: bool,
    ) -> Result<(), PublishError> {
        let ts = RtmpTimestamp::new(timestamp_ms);
        let r = match kind {
            MediaKind::Video => self.session.publish_video_data(body, ts, droppable),
            MediaKind::Audio => self.session.publish_audio_data(body, ts, droppable),
        }
        .map_err(|e| PublishError::Protocol(e.to_string()))?;
        self.send_results(vec![r]).await
    }

    /// Sends one media packet (timestamp = dts, composition offset inside the video tag).
    pub async fn send_packet(&mut self, packet: &Packet) -> Result<(), PublishError> {
        let bytes = self.serialize_packet(packet)?;
        self.write(&bytes).await
    }

    /// Turns a media packet into RTMP chunk bytes without sending them, so the caller can
    /// write them as the socket allows and keep deciding what to drop meanwhile. Bytes must be
    /// written in the order they were serialized.
    pub fn serialize_packet(&mut self, packet: &Packet) -> Result<Vec<u8>, PublishError> {
        let body = match packet.kind {
            MediaKind::Video => flv::video_tag_body(packet),
            MediaKind::Audio => flv::audio_tag_body(&packet.data),
        };
        let ts = RtmpTimestamp::new(packet.dts_ms.max(0) as u32);
        let r = match packet.kind {
            MediaKind::Video => self.session.publish_video_data(body, ts, packet.disposable),
            MediaKind::Audio => self.session.publish_audio_data(body, ts, false),
        }
        .map_err(|e| PublishError::Protocol(e.to_string()))?;
        match r {
            ClientSessionResult::OutboundResponse(p) => Ok(p.bytes),
            _ => Ok(Vec::new()),
        }
    }

    /// Writes as much of `bytes` as the socket takes now, waiting until it takes something.
    /// Cancel-safe: nothing is written unless the count is returned.
    pub async fn write_some(&mut self, bytes: &[u8]) -> Result<usize, PublishError> {
        loop {
            self.stream
                .writable()
                .await
                .map_err(|e| io_err(&self.addr, e))?;
            match self.stream.try_write(bytes) {
                Ok(n) => {
                    self.bytes_sent += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err(&self.addr, e)),
            }
        }
    }

    /// Bytes written to the socket that the peer has not acknowledged yet (Linux TIOCOUTQ);
    /// None where the OS does not say.
    pub fn unsent_bytes(&self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let mut n: libc::c_int = 0;
            // SAFETY: TIOCOUTQ writes one int for a valid socket descriptor.
            let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
            if r == 0 && n >= 0 {
                return Some(n as u64);
            }
        }
        None
    }

    /// Waits for data from the server (acknowledgements, pings). Cancel-safe, so it can sit in
    /// a `select!` beside the packet queue; pass the count to [`Self::handle_server_data`].
    /// Returns an error when the server has closed the connection.
    pub async fn read_server(&mut self) -> Result<usize, PublishError> {
        let n = self
            .stream
            .read(&mut self.read_buf)
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        if n == 0 {
            return Err(PublishError::Closed {
                addr: self.addr.clone(),
                stage: "streaming",
                hint: "the server ended the stream or went away",
            });
        }
        Ok(n)
    }

    /// The socket, for callers that wait on readiness themselves.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }

    /// Processes bytes from the server; returns the answers to send (acknowledgements, pong)
    /// for the caller to write after the message it is writing, so a full socket never
    /// blocks the caller here.
    pub fn handle_server_bytes(&mut self, data: &[u8]) -> Result<Vec<u8>, PublishError> {
        let results = parse_server_input(&mut self.guard, &mut self.session, data)?;
        let mut out = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                ClientSessionResult::RaisedEvent(ClientSessionEvent::AcknowledgementReceived {
                    bytes_received,
                }) => self.bytes_acked = bytes_received as u64,
                ClientSessionResult::RaisedEvent(e) => tracing::debug!(?e, "server event"),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(out)
    }

    /// Ends the stream politely (deleteStream) and flushes the socket.
    pub async fn close(mut self) -> Result<(), PublishError> {
        if let Ok(r) = self.session.stop_publishing() {
            self.send_results(r).await?;
        }
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Where this publisher streams to.
    pub fn destination(&self) -> &RtmpUrl {
        &self.url
    }
}
