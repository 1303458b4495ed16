//! Load client for relay benchmarks (`scripts/bench-relay`): opens many RTMP or HTTP-FLV
//! viewers on one stream, reads everything without decoding it, and reports how much of the
//! published video each viewer received, plus the server's CPU and memory while it served them.
//!
//! The published stream is a pre-encoded FLV file (`--reference`) sent with `ffmpeg -re -c
//! copy`, so every video message a viewer should get is known: a viewer's messages are located
//! in the reference by their sizes, and its share is the bytes it received over the bytes the
//! reference holds from its first frame to the live edge.
//!
//! ```text
//! cargo run --release --example relay_load -- --url rtmp://127.0.0.1:1935/live/bench \
//!     --viewers 100 --seconds 15 --reference clip.flv --pid 1234
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::{MessagePayload, RtmpMessage};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Command line.
#[derive(Parser, Debug)]
struct Args {
    /// rtmp://HOST:PORT/APP/NAME or http://HOST:PORT/APP/NAME.flv
    #[arg(long)]
    url: String,
    /// Concurrent viewers.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Measurement time once every viewer is connected.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Pause between two connection attempts.
    #[arg(long, default_value_t = 5)]
    ramp_ms: u64,
    /// The FLV file being published (for expected bytes).
    #[arg(long)]
    reference: PathBuf,
    /// Server process to sample CPU time and resident memory of.
    #[arg(long)]
    pid: Option<u32>,
    /// Name printed in the result line.
    #[arg(long, default_value = "")]
    label: String,
}

/// Bytes received by all viewers, for the rate over the measurement window.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// One video message as received: timestamp, size, and whether it is a sequence header.
#[derive(Clone, Copy, Debug)]
struct Video {
    ts: u32,
    size: u32,
    header: bool,
}

/// What one viewer saw.
#[derive(Debug, Default)]
struct ViewerLog {
    video: Vec<Video>,
    bytes: u64,
    error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the client must leave the CPU to the server under test.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let reference = read_reference(&args.reference)?;
    let target = Target::parse(&args.url)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(args.viewers);
    for _ in 0..args.viewers {
        let target = target.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move { viewer(target, stop).await }));
        tokio::time::sleep(Duration::from_millis(args.ramp_ms)).await;
    }
    // Let every viewer settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let received_start = RECEIVED.load(Ordering::Relaxed);
    let cpu_start = args.pid.and_then(cpu_ticks);
    let own_start = cpu_ticks(std::process::id());
    let mut rss_max_kb = 0;
    let mut anon_max_kb = 0;
    while start.elapsed().as_secs_f64() < args.seconds {
        if let Some((rss, anon)) = args.pid.and_then(rss_kb) {
            rss_max_kb = rss_max_kb.max(rss);
            anon_max_kb = anon_max_kb.max(anon);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let received = RECEIVED.load(Ordering::Relaxed) - received_start;
    let cpu_end = args.pid.and_then(cpu_ticks);
    let own_end = cpu_ticks(std::process::id());
    let _ = stop_tx.send(true);
    let mut logs = Vec::with_capacity(tasks.len());
    for task in tasks {
        logs.push(task.await.unwrap_or_else(|e| ViewerLog {
            error: Some(e.to_string()),
            ..ViewerLog::default()
        }));
    }

    let ticks = clock_ticks();
    let cpu = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) as f64 / ticks / wall * 100.0,
        _ => f64::NAN,
    };
    let fractions = fractions(&reference, &logs);
    let connected = logs.iter().filter(|l| !l.video.is_empty()).count();
    let errors: Vec<&str> = logs.iter().filter_map(|l| l.error.as_deref()).collect();
    let mut sorted = fractions.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let min = sorted.first().copied().unwrap_or(0.0);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let at_99 = sorted.iter().filter(|f| **f >= 0.99).count();
    let mbit = received as f64 * 8.0 / 1e6 / wall;
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "url": args.url,
            "viewers": args.viewers,
            "connected": connected,
            "viewers_ge_99": at_99,
            "min_fraction": min,
            "median_fraction": median,
            "server_cpu_percent": cpu(cpu_start, cpu_end),
            "server_rss_max_mb": rss_max_kb as f64 / 1024.0,
            "server_anon_max_mb": anon_max_kb as f64 / 1024.0,
            "client_cpu_percent": cpu(own_start, own_end),
            "received_mbit_per_s": mbit,
            "first_error": errors.first(),
            "errors": errors.len(),
        })
    );
    Ok(())
}

/// Where the viewers connect.
#[derive(Clone, Debug)]
enum Target {
    Rtmp {
        addr: SocketAddr,
        app: String,
        name: String,
    },
    Http {
        addr: SocketAddr,
        path: String,
    },
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let (scheme, rest) = url.split_once("://").context("URL without scheme")?;
        let (authority, path) = rest.split_once('/').context("URL without path")?;
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("{authority} is not IP:PORT"))?;
        match scheme {
            "rtmp" => {
                let (app, name) = path.rsplit_once('/').context("rtmp URL without app")?;
                Ok(Target::Rtmp {
                    addr,
                    app: app.into(),
                    name: name.into(),
                })
            }
            "http" => Ok(Target::Http {
                addr,
                path: format!("/{path}"),
            }),
            _ => bail!("unsupported scheme {scheme}"),
        }
    }
}

async fn viewer(target: Target, stop: tokio::sync::watch::Receiver<bool>) -> ViewerLog {
    let mut log = ViewerLog::default();
    let result = match &target {
        Target::Rtmp { addr, app, name } => rtmp_viewer(*addr, app, name, stop, &mut log).await,
        Target::Http { addr, path } => http_viewer(*addr, path, stop, &mut log).await,
    };
    if let Err(e) = result {
        log.error = Some(format!("{e:#}"));
    }
    log
}

/// Reads into `buf` until stopped; false when the peer closed.
async fn read_some(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let old = buf.len();
    buf.resize(old + 64 * 1024, 0);
    let n = tokio::select! {
        n = socket.read(&mut buf[old..]) => n?,
        _ = stop.wait_for(|s| *s) => 0,
    };
    buf.truncate(old + n);
    RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
    Ok(n > 0)
}

async fn http_viewer(
    addr: SocketAddr,
    path: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    log: &mut ViewerLog,
) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(addr).await?;
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(128 * 1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_some(&mut socket, &mut buf, &mut stop).await? {
            bail!("closed before the response head");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    let chunked = head.contains("transfer-encoding: chunked");
    buf.drain(..head_end);
    let mut flv = FlvScanner::default();
    let mut chunk_left = 0usize;
    // CRLF bytes still to skip after a chunk's data.
    let mut crlf_left = 0usize;
    let mut body = Vec::with_capacity(128 * 1024);
    loop {
        // De-chunk what is buffered into `body`.
        let mut pos = 0;
        let before = body.len();
        if chunked {
            loop {
                if chunk_left > 0 {
                    let take = chunk_left.min(buf.len() - pos);
                    body.extend_from_slice(&buf[pos..pos + take]);
                    pos += take;
                    chunk_left -= take;
                    if chunk_left > 0 {
                        break;
                    }
                    crlf_left = 2;
                }
                if crlf_left > 0 {
                    let skip = crlf_left.min(buf.len() - pos);
                    pos += skip;
                    crlf_left -= skip;
                    if crlf_left > 0 {
                        break;
                    }
                }
                let Some(line) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let size = usize::from_str_radix(std::str::from_utf8(&buf[pos..pos + line])?, 16)?;
                if size == 0 {
                    return Ok(());
                }
                pos += line + 2;
                chunk_left = size;
            }
        } else {
            body.extend_from_slice(&buf);
            pos = buf.len();
        }
        buf.drain(..pos);
        log.bytes += (body.len() - before) as u64;
        let used = flv.scan(&body, log);
        body.drain(..used);
        if !read_some(&mut socket, &mut buf, &mut stop).await? {
            return Ok(());
        }
    }
}

/// Splits an FLV byte stream into tags, recording video tags.
#[derive(Default)]
struct FlvScanner {
    header_done: bool,
}

impl FlvScanner {
    /// Consumes complete tags from `data`; returns how many bytes were used.
    fn scan(&mut self, data: &[u8], log: &mut ViewerLog) -> usize {
        let mut pos = 0;
        if !self.header_done {
            if data.len() < 13 {
                return 0;
            }
            self.header_done = true;
            pos = 13;
        }
        while data.len() - pos >= 11 {
            let t = &data[pos..];
            let size = (usize::from(t[1]) << 16) | (usize::from(t[2]) << 8) | usize::from(t[3]);
            if data.len() - pos < 11 + size + 4 {
                break;
            }
            if t[0] == 9 && size >= 2 {
                let ts = (u32::from(t[4]) << 16)
                    | (u32::from(t[5]) << 8)
                    | u32::from(t[6])
                    | (u32::from(t[7]) << 24);
                log.video.push(Video {
                    ts,
                    size: size as u32,
                    header: t[11] == 0x17 && t[12] == 0,
                });
            }
            pos += 11 + size + 4;
        }
        pos
    }
}

fn command(name: &str, txn: f64, object: Amf0Value, args: Vec<Amf0Value>) -> RtmpMessage {
    RtmpMessage::Amf0Command {
        command_name: name.to_string(),
        transaction_id: txn,
        command_object: object,
        additional_arguments: args,
    }
}

async fn rtmp_viewer(
    addr: SocketAddr,
    app: &str,
    name: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    log: &mut ViewerLog,
) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(addr).await?;
    let _ = socket.set_nodelay(true);
    // Plain handshake: C0+C1, read S0+S1+S2, echo S1 as C2.
    let mut c0c1 = vec![0u8; 1537];
    c0c1[0] = 3;
    socket.write_all(&c0c1).await?;
    let mut s = vec![0u8; 3073];
    socket.read_exact(&mut s).await?;
    socket.write_all(&s[1..1537]).await?;

    let mut serializer = ChunkSerializer::new();
    let mut out = Vec::new();
    let mut send = |out: &mut Vec<u8>, message: RtmpMessage, stream: u32| -> anyhow::Result<()> {
        let payload = MessagePayload::from_rtmp_message(message, RtmpTimestamp::new(0), stream)
            .map_err(|e| anyhow!("{e}"))?;
        let packet = serializer
            .serialize(&payload, false, false)
            .map_err(|e| anyhow!("{e}"))?;
        out.extend_from_slice(&packet.bytes);
        Ok(())
    };
    let mut props = HashMap::new();
    props.insert("app".to_string(), Amf0Value::Utf8String(app.into()));
    props.insert(
        "tcUrl".to_string(),
        Amf0Value::Utf8String(format!("rtmp://{addr}/{app}")),
    );
    send(
        &mut out,
        command("connect", 1.0, Amf0Value::Object(props), vec![]),
        0,
    )?;
    send(
        &mut out,
        command("createStream", 2.0, Amf0Value::Null, vec![]),
        0,
    )?;
    send(
        &mut out,
        command(
            "play",
            3.0,
            Amf0Value::Null,
            vec![Amf0Value::Utf8String(name.into())],
        ),
        1,
    )?;
    socket.write_all(&out).await?;

    let mut parser = RtmpScanner::default();
    let mut buf = Vec::with_capacity(128 * 1024);
    loop {
        if !read_some(&mut socket, &mut buf, &mut stop).await? {
            return Ok(());
        }
        log.bytes += (buf.len() - parser.pending) as u64;
        let reply = parser.scan(&mut buf, log)?;
        if !reply.is_empty() {
            socket.write_all(&reply).await?;
        }
    }
}

#[derive(Clone, Copy, Default)]
struct ChunkState {
    ts: u32,
    delta: u32,
    len: u32,
    type_id: u8,
    extended: bool,
    /// Bytes of the current message still to come (0: next chunk starts a message).
    left: u32,
    first2: [u8; 2],
}

/// A minimal RTMP chunk stream reader: follows message boundaries and timestamps, keeps only
/// the bytes of small control messages, answers pings and acknowledgement windows.
struct RtmpScanner {
    chunk_size: u32,
    streams: HashMap<u32, ChunkState>,
    /// Bytes left unparsed in the buffer after the last scan.
    pending: usize,
    /// Payload of the control message being assembled.
    control: Vec<u8>,
    received: u64,
    ack_window: u64,
    last_ack: u64,
}

impl Default for RtmpScanner {
    fn default() -> Self {
        RtmpScanner {
            chunk_size: 128,
            streams: HashMap::new(),
            pending: 0,
            control: Vec::new(),
            received: 0,
            ack_window: 0,
            last_ack: 0,
        }
    }
}

impl RtmpScanner {
    /// Parses complete chunks from `buf` (removing them); returns bytes to send back.
    fn scan(&mut self, buf: &mut Vec<u8>, log: &mut ViewerLog) -> anyhow::Result<Vec<u8>> {
        self.received += (buf.len() - self.pending) as u64;
        let mut reply = Vec::new();
        let mut pos = 0;
        loop {
            let Some(used) = self.chunk(&buf[pos..], log, &mut reply)? else {
                break;
            };
            pos += used;
        }
        buf.drain(..pos);
        self.pending = buf.len();
        if self.ack_window > 0 && self.received - self.last_ack >= self.ack_window {
            self.last_ack = self.received;
            reply.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 3, 0, 0, 0, 0]);
            reply.extend_from_slice(&(self.received as u32).to_be_bytes());
        }
        Ok(reply)
    }

    /// One chunk if complete: bytes used.
    fn chunk(
        &mut self,
        b: &[u8],
        log: &mut ViewerLog,
        reply: &mut Vec<u8>,
    ) -> anyhow::Result<Option<usize>> {
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 if b.len() >= 2 => (u32::from(b[1]) + 64, 2),
            1 if b.len() >= 3 => (u32::from(b[2]) * 256 + u32::from(b[1]) + 64, 3),
            0 | 1 => return Ok(None),
            x => (u32::from(x), 1),
        };
        let header_len = [11, 7, 3, 0][fmt as usize];
        if b.len() < pos + header_len {
            return Ok(None);
        }
        let mut st = self.streams.get(&csid).copied().unwrap_or_default();
        let h = &b[pos..pos + header_len];
        let ts_field = if fmt < 3 {
            (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2])
        } else {
            0
        };
        if fmt < 2 {
            st.len = (u32::from(h[3]) << 16) | (u32::from(h[4]) << 8) | u32::from(h[5]);
            st.type_id = h[6];
        }
        pos += header_len;
        let extended = if fmt < 3 {
            ts_field == 0xFF_FFFF
        } else {
            st.extended
        };
        let mut ts_value = ts_field;
        if extended {
            if b.len() < pos + 4 {
                return Ok(None);
            }
            ts_value = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
            pos += 4;
        }
        let starting = st.left == 0;
        let left = if starting { st.len } else { st.left };
        let take = left.min(self.chunk_size) as usize;
        if b.len() < pos + take {
            return Ok(None);
        }
        // Commit the header only once the whole chunk is here.
        st.extended = extended;
        if starting {
            match fmt {
                0 => {
                    st.ts = ts_value;
                    st.delta = 0;
                }
                1 | 2 => {
                    st.delta = ts_value;
                    st.ts = st.ts.wrapping_add(ts_value);
                }
                _ => st.ts = st.ts.wrapping_add(st.delta),
            }
            st.first2 = [
                b.get(pos).copied().unwrap_or(0),
                b.get(pos + 1).copied().unwrap_or(0),
            ];
            self.control.clear();
        }
        let payload = &b[pos..pos + take];
        if matches!(st.type_id, 1 | 4 | 5 | 20) && self.control.len() < 64 * 1024 {
            self.control.extend_from_slice(payload);
        }
        st.left = left - take as u32;
        if st.left == 0 {
            self.message_done(&st, log, reply)?;
        }
        self.streams.insert(csid, st);
        Ok(Some(pos + take))
    }

    fn message_done(
        &mut self,
        st: &ChunkState,
        log: &mut ViewerLog,
        reply: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let c = &self.control;
        match st.type_id {
            9 => log.video.push(Video {
                ts: st.ts,
                size: st.len,
                header: st.first2 == [0x17, 0],
            }),
            1 if c.len() >= 4 => {
                self.chunk_size = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff;
            }
            5 if c.len() >= 4 => {
                self.ack_window = u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            }
            // Ping request: answer with a ping response carrying the same timestamp.
            4 if c.len() >= 6 && c[1] == 6 => {
                reply.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0, 0, 7]);
                reply.extend_from_slice(&c[2..6]);
            }
            20 => {
                let text = String::from_utf8_lossy(c);
                for bad in ["StreamNotFound", "Forbidden", "BadName", "Failed"] {
                    if text.contains(bad) {
                        bail!("server refused playback: {bad}");
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Video tag sizes of the published file, in order (sequence headers excluded).
fn read_reference(path: &PathBuf) -> anyhow::Result<Vec<Video>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut log = ViewerLog::default();
    FlvScanner::default().scan(&data, &mut log);
    let video: Vec<Video> = log.video.into_iter().filter(|v| !v.header).collect();
    if video.len() < 100 {
        bail!("{} has only {} video frames", path.display(), video.len());
    }
    Ok(video)
}

/// For each viewer, video bytes received over video bytes published from its first frame to
/// the live edge (the furthest any viewer got, less half a second for data in flight).
fn fractions(reference: &[Video], logs: &[ViewerLog]) -> Vec<f64> {
    const MATCH: usize = 6;
    // Where each viewer's first frames sit in the reference, and the ts offset.
    let placed: Vec<Option<(usize, i64)>> = logs
        .iter()
        .map(|log| {
            let frames: Vec<&Video> = log.video.iter().filter(|v| !v.header).collect();
            for start in 0..frames.len().saturating_sub(MATCH).min(60) {
                let want: Vec<u32> = frames[start..start + MATCH]
                    .iter()
                    .map(|v| v.size)
                    .collect();
                if let Some(i) = reference
                    .windows(MATCH)
                    .position(|w| w.iter().map(|v| v.size).eq(want.iter().copied()))
                {
                    let offset = i64::from(reference[i].ts) - i64::from(frames[start].ts);
                    // Index of the viewer's first frame (start frames before i).
                    return Some((i.saturating_sub(start), offset));
                }
            }
            None
        })
        .collect();
    let edge_ts = logs
        .iter()
        .zip(&placed)
        .filter_map(|(log, p)| {
            let (_, offset) = (*p)?;
            let last = log.video.iter().rev().find(|v| !v.header)?;
            Some(i64::from(last.ts) + offset)
        })
        .max()
        .unwrap_or(0)
        - 500;
    logs.iter()
        .zip(&placed)
        .map(|(log, p)| {
            let Some((first, offset)) = *p else {
                return 0.0;
            };
            let expected: u64 = reference[first..]
                .iter()
                .take_while(|v| i64::from(v.ts) <= edge_ts)
                .map(|v| u64::from(v.size))
                .sum();
            let received: u64 = log
                .video
                .iter()
                .filter(|v| !v.header && i64::from(v.ts) + offset <= edge_ts)
                .map(|v| u64::from(v.size))
                .sum();
            if expected == 0 {
                0.0
            } else {
                received as f64 / expected as f64
            }
        })
        .collect()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line (11 and 12 after the name).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory in kB: all of it, and the anonymous part (heap and stacks: what the
/// process allocated, as opposed to mapped program and library files).
fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100.0
}
