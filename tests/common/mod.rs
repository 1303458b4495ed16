//! Helpers shared by the integration tests: free ports, child processes that never outlive a
//! test, ffmpeg/ffprobe wrappers, and a synthetic RTMP publisher.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Logs from the code under test, shown with `RUST_LOG=onair=debug cargo test -- --nocapture`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// True when both `ffmpeg` and `ffprobe` run.
pub fn ffmpeg_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let runs = |tool: &str| {
            Command::new(tool)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        runs("ffmpeg") && runs("ffprobe")
    })
}

/// Fails the test when ffmpeg or ffprobe is missing: a test never passes without running.
pub fn require_ffmpeg() {
    assert!(
        ffmpeg_available(),
        "ffmpeg and ffprobe are needed by this test: run scripts/setup"
    );
}

/// Waits until a publisher feeds `key` on `relay` and at least `min` video messages came in;
/// fails the test if the publisher exits first or nothing arrives within 15 s.
pub async fn wait_for_video(
    relay: &onair::relay::RelayHandle,
    key: &str,
    min: u64,
    publisher: &mut ChildGuard,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if relay
            .stats()
            .stream(key)
            .is_some_and(|s| s.publisher.is_some() && s.video_packets_in >= min)
        {
            return;
        }
        if let Some(status) = publisher.try_wait() {
            panic!("publisher exited early ({status}):\n{}", publisher.log());
        }
        assert!(
            Instant::now() < deadline,
            "no video reached the relay:\n{}",
            publisher.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A child process killed (and reaped) when dropped, so a failing test never leaks one.
/// Its stderr goes to a log file that failing assertions can print.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` with stdin and stdout closed and stderr written to `log_dir/name.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> ChildGuard {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("create child log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log_path,
        }
    }

    /// What the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (without blocking the runtime) up to `limit` for the child to exit.
    pub async fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`ChildGuard::wait_timeout`] but panics with the child's log on timeout.
    pub async fn expect_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.wait_timeout(limit).await {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {limit:?}; its log:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `rtmp://127.0.0.1:PORT/live/KEY`.
pub fn rtmp_url(addr: SocketAddr, key: &str) -> String {
    format!("rtmp://127.0.0.1:{}/live/{key}", addr.port())
}

/// An ffmpeg publishing a 320x240 30 fps test pattern (keyframe every second) and a 440 Hz
/// tone in real time for `seconds` to `url`.
pub fn ffmpeg_publisher(url: &str, seconds: u32) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", "30", "-c:a", "aac", "-f", "flv", url]);
    cmd
}

/// An ffmpeg copying the stream at `url` into the FLV file `out`.
pub fn ffmpeg_recorder(url: &str, out: &Path) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-y"])
        .args(["-i", url, "-c", "copy", "-f", "flv"])
        .arg(out);
    cmd
}

/// `ffprobe -show_streams -count_packets -of json` on a file.
pub fn ffprobe_json(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-count_packets",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// The first stream of `codec_type` ("video"/"audio") in ffprobe output.
pub fn probe_stream<'a>(probe: &'a serde_json::Value, codec_type: &str) -> &'a serde_json::Value {
    probe["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["codec_type"] == codec_type))
        .unwrap_or_else(|| panic!("no {codec_type} stream in {probe:#}"))
}

/// `nb_read_packets` of an ffprobe stream entry (a string in ffprobe's JSON).
pub fn packet_count(stream: &serde_json::Value) -> u64 {
    stream["nb_read_packets"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| stream["nb_read_packets"].as_u64())
        .unwrap_or_else(|| panic!("no nb_read_packets in {stream:#}"))
}

/// Polls `check` every 20 ms until it returns Some, or fails after `limit`.
pub async fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds an FLV video tag body: `0x17 0x01` (keyframe) or `0x27 0x01`, padded to `len`.
pub fn video_tag(keyframe: bool, len: usize) -> Bytes {
    let mut data = vec![0u8; len.max(5)];
    data[0] = if keyframe { 0x17 } else { 0x27 };
    data[1] = 0x01;
    Bytes::from(data)
}

/// A synthetic RTMP publisher: sends whatever tags a test builds, at whatever rate it wants,
/// which ffmpeg cannot do (e.g. megabytes per second of fake frames).
pub struct TestPublisher {
    socket: TcpStream,
    session: ClientSession,
}

impl TestPublisher {
    /// Connects to `addr`, handshakes, and publishes on `app/key` (live).
    pub async fn connect(addr: SocketAddr, app: &str, key: &str) -> anyhow::Result<Self> {
        tokio::time::timeout(Duration::from_secs(5), Self::connect_inner(addr, app, key))
            .await
            .map_err(|_| anyhow!("publisher setup timed out"))?
    }

    async fn connect_inner(addr: SocketAddr, app: &str, key: &str) -> anyhow::Result<Self> {
        let mut socket = TcpStream::connect(addr).await.context("connect")?;
        socket.set_nodelay(true)?;
        let remaining = client_handshake(&mut socket).await?;
        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(format!("rtmp://{addr}/{app}"));
        let (mut session, _) = ClientSession::new(config).map_err(|e| anyhow!("{e}"))?;
        let mut out = Vec::new();
        push_packet(&mut out, session.request_connection(app.to_string()));
        socket.write_all(&out).await?;

        let mut pending = remaining;
        let mut buf = vec![0u8; 16 * 1024];
        let mut requested = false;
        loop {
            let results = session
                .handle_input(&pending)
                .map_err(|e| anyhow!("publisher session: {e}"))?;
            let mut out = Vec::new();
            for result in results {
                match result {
                    ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestAccepted,
                    ) if !requested => {
                        requested = true;
                        push_packet(
                            &mut out,
                            session.request_publishing(key.to_string(), PublishRequestType::Live),
                        );
                    }
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::PublishRequestAccepted,
                    ) => {
                        socket.write_all(&out).await?;
                        return Ok(TestPublisher { socket, session });
                    }
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::UnknownTransactionResultReceived {
                            additional_values,
                            ..
                        },
                    ) => bail!("publish refused: {additional_values:?}"),
                    _ => {}
                }
            }
            socket.write_all(&out).await?;
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                bail!("relay closed the publisher connection");
            }
            pending = buf[..n].to_vec();
        }
    }

    /// Sends one video tag body with timestamp `ts_ms`.
    pub async fn send_video(&mut self, ts_ms: u32, data: Bytes) -> anyhow::Result<()> {
        let packet = self
            .session
            .publish_video_data(data, RtmpTimestamp::new(ts_ms), false)
            .map_err(|e| anyhow!("{e}"))?;
        self.write(packet).await
    }

    /// Sends one audio tag body with timestamp `ts_ms`.
    pub async fn send_audio(&mut self, ts_ms: u32, data: Bytes) -> anyhow::Result<()> {
        let packet = self
            .session
            .publish_audio_data(data, RtmpTimestamp::new(ts_ms), false)
            .map_err(|e| anyhow!("{e}"))?;
        self.write(packet).await
    }

    async fn write(&mut self, result: ClientSessionResult) -> anyhow::Result<()> {
        if let ClientSessionResult::OutboundResponse(p) = result {
            self.socket.write_all(&p.bytes).await?;
        }
        Ok(())
    }
}

fn push_packet<E: std::fmt::Display>(out: &mut Vec<u8>, result: Result<ClientSessionResult, E>) {
    match result {
        Ok(ClientSessionResult::OutboundResponse(p)) => out.extend_from_slice(&p.bytes),
        Ok(_) => {}
        Err(e) => panic!("client session refused a request: {e}"),
    }
}

/// Client side of the RTMP handshake over `socket`; returns bytes received after it.
pub async fn client_handshake(socket: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut handshake = Handshake::new(PeerType::Client);
    let p0_p1 = handshake
        .generate_outbound_p0_and_p1()
        .map_err(|e| anyhow!("{e}"))?;
    socket.write_all(&p0_p1).await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            bail!("server closed the connection during the handshake");
        }
        match handshake
            .process_bytes(&buf[..n])
            .map_err(|e| anyhow!("{e}"))?
        {
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

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct HttpHead {
    /// Status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl HttpHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` over a new connection and returns the head and the socket, with any body
/// bytes already read.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(HttpHead, TcpStream, Vec<u8>)> {
    let mut socket = TcpStream::connect(addr).await.context("connect")?;
    socket
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: onair-test\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = socket.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    Ok((HttpHead { status, headers }, socket, rest))
}

/// `GET path` and the whole body (the relay closes non-streaming responses).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(HttpHead, Vec<u8>)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (head, mut socket, mut body) = http_request(addr, "GET", path).await?;
        socket.read_to_end(&mut body).await?;
        Ok((head, body))
    })
    .await
    .map_err(|_| anyhow!("GET {path} timed out"))?
}

/// `GET path` parsed as JSON.
pub async fn http_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (head, body) = http_get(addr, path).await.expect("HTTP GET");
    assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON body")
}

/// One FLV tag read from an HTTP-FLV stream.
#[derive(Debug, Clone)]
pub struct FlvTagRead {
    /// 8 audio, 9 video, 18 script.
    pub tag_type: u8,
    /// Timestamp in milliseconds.
    pub timestamp: u32,
    /// Tag body.
    pub body: Bytes,
}

impl FlvTagRead {
    /// Video keyframe with picture data.
    pub fn is_keyframe(&self) -> bool {
        self.tag_type == 9 && self.body.len() >= 2 && self.body[0] >> 4 == 1 && self.body[1] == 1
    }

    /// AVC or AAC sequence header.
    pub fn is_sequence_header(&self) -> bool {
        self.body.len() >= 2
            && self.body[1] == 0
            && ((self.tag_type == 9 && self.body[0] == 0x17)
                || (self.tag_type == 8 && self.body[0] >> 4 == 10))
    }
}

/// An HTTP-FLV download, de-chunked and split into tags as it arrives.
pub struct FlvDownload {
    /// The response head.
    pub head: HttpHead,
    socket: TcpStream,
    raw: Vec<u8>,
    flv: Vec<u8>,
    chunked: bool,
    body_done: bool,
    file_header_seen: bool,
    /// Body bytes received (after de-chunking).
    pub bytes: u64,
}

impl FlvDownload {
    /// Requests `path` (e.g. `/live/test.flv`).
    pub async fn open(addr: SocketAddr, path: &str) -> anyhow::Result<FlvDownload> {
        let (head, socket, rest) = http_request(addr, "GET", path).await?;
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        Ok(FlvDownload {
            head,
            socket,
            raw: rest,
            flv: Vec::new(),
            chunked,
            body_done: false,
            file_header_seen: false,
            bytes: 0,
        })
    }

    fn dechunk(&mut self) -> anyhow::Result<()> {
        if !self.chunked {
            self.bytes += self.raw.len() as u64;
            self.flv.append(&mut self.raw);
            return Ok(());
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return Ok(());
            };
            let size_text = std::str::from_utf8(&self.raw[..line_end])?;
            let size = usize::from_str_radix(size_text.trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            if self.raw.len() < line_end + 2 + size + 2 {
                return Ok(());
            }
            if size == 0 {
                self.body_done = true;
                self.raw.clear();
                return Ok(());
            }
            let data = &self.raw[line_end + 2..line_end + 2 + size];
            self.flv.extend_from_slice(data);
            self.bytes += size as u64;
            if &self.raw[line_end + 2 + size..line_end + 4 + size] != b"\r\n" {
                bail!("chunk not followed by CRLF");
            }
            self.raw.drain(..line_end + 4 + size);
        }
    }

    /// The next tag; None when the body ended.
    pub async fn next_tag(&mut self) -> anyhow::Result<Option<FlvTagRead>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.dechunk()?;
            if !self.file_header_seen && self.flv.len() >= 13 {
                if &self.flv[..3] != b"FLV" {
                    bail!("body does not start with an FLV header");
                }
                self.flv.drain(..13);
                self.file_header_seen = true;
            }
            if self.file_header_seen && self.flv.len() >= 11 {
                let size = ((self.flv[1] as usize) << 16)
                    | ((self.flv[2] as usize) << 8)
                    | self.flv[3] as usize;
                if self.flv.len() >= 11 + size + 4 {
                    let ts = ((self.flv[4] as u32) << 16)
                        | ((self.flv[5] as u32) << 8)
                        | self.flv[6] as u32
                        | ((self.flv[7] as u32) << 24);
                    let tag = FlvTagRead {
                        tag_type: self.flv[0],
                        timestamp: ts,
                        body: Bytes::copy_from_slice(&self.flv[11..11 + size]),
                    };
                    let prev =
                        u32::from_be_bytes(self.flv[11 + size..15 + size].try_into().unwrap());
                    if prev as usize != 11 + size {
                        bail!(
                            "PreviousTagSize {prev} does not match tag size {}",
                            11 + size
                        );
                    }
                    self.flv.drain(..15 + size);
                    return Ok(Some(tag));
                }
            }
            if self.body_done {
                return Ok(None);
            }
            let n = self.socket.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// True once the server sent the final (zero-size) chunk.
    pub fn ended_cleanly(&self) -> bool {
        self.body_done
    }
}

/// A raw HTTP-FLV connection that reads at most `bytes_per_sec`, to play a slow viewer.
pub async fn slow_http_reader(
    addr: SocketAddr,
    path: &str,
    bytes_per_sec: usize,
    run_for: Duration,
) -> anyhow::Result<u64> {
    let (head, mut socket, rest) = http_request(addr, "GET", path).await?;
    if head.status != 200 {
        bail!("status {}", head.status);
    }
    let mut total = rest.len() as u64;
    let start = Instant::now();
    let step = Duration::from_millis(50);
    let per_step = (bytes_per_sec / 20).max(1);
    let mut buf = vec![0u8; per_step];
    while start.elapsed() < run_for {
        tokio::time::sleep(step).await;
        match tokio::time::timeout(step, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n as u64,
            Err(_) => {}
        }
    }
    Ok(total)
}

/// ffprobe of a URL (live stream) with a time limit: streams as JSON.
pub fn ffprobe_url(url: &str, limit: Duration) -> serde_json::Value {
    let out = Command::new("timeout")
        .arg(limit.as_secs().max(1).to_string())
        .args(["ffprobe", "-v", "error", "-show_streams", "-of", "json"])
        .arg(url)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}
