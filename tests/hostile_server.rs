//! `onair live` against servers that misbehave: bad handshakes, silence, impossible chunk
//! sizes, deeply nested AMF, random bytes, at connect time and in the middle of a stream.
//! Whatever a server sends, the publisher reports it, retries, and never panics, aborts or
//! hangs.

mod support;

use onair::relay::{start_relay, RelayConfig};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{free_port, onair, ChildGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a hostile server does after accepting a connection.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answers the handshake with random bytes.
    BadHandshake,
    /// Accepts and never says anything.
    Silent,
    /// Completes the handshake, then announces chunk size 0.
    ZeroChunkSize,
    /// Completes the handshake, then announces chunk size 2^31.
    HugeChunkSize,
    /// Completes the handshake, then answers `connect` with AMF objects nested 15,000 deep.
    DeepAmf,
    /// Completes the handshake, then sends random bytes.
    RandomBytes,
    /// Completes the handshake, then announces a 16 MiB command message.
    HugeMessage,
}

/// Deterministic noise for the random behaviours.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One RTMP message in a single chunk on chunk stream `csid` (format 0, stream 0).
fn message(csid: u8, type_id: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![csid, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// SetChunkSize(`size`).
fn set_chunk_size(size: u32) -> Vec<u8> {
    message(2, 1, &size.to_be_bytes())
}

/// `_result` of transaction 1 whose command object nests `depth` objects.
fn deep_amf_result(depth: usize) -> Vec<u8> {
    let mut p = vec![0x02, 0, 7];
    p.extend_from_slice(b"_result");
    p.push(0x00);
    p.extend_from_slice(&1.0f64.to_be_bytes());
    for _ in 0..depth {
        p.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    // Bigger than any chunk the client expects: announce a chunk size that holds it first.
    let mut out = set_chunk_size(0xFF_FFFF);
    out.extend(message(3, 20, &p));
    out
}

/// The hostile bytes sent after a completed handshake.
fn hostile_bytes(b: Behaviour) -> Vec<u8> {
    match b {
        Behaviour::ZeroChunkSize => set_chunk_size(0),
        Behaviour::HugeChunkSize => set_chunk_size(1 << 31),
        Behaviour::DeepAmf => deep_amf_result(15_000),
        Behaviour::RandomBytes => noise(7, 64 * 1024),
        Behaviour::HugeMessage => {
            let mut m = vec![3, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0];
            m.extend(noise(3, 4096));
            m
        }
        Behaviour::BadHandshake | Behaviour::Silent => Vec::new(),
    }
}

/// Server side of the handshake; returns what the client sent after it.
async fn server_handshake(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        match hs.process_bytes(&buf[..n]).ok()? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.ok()?
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await.ok()?;
                return Some(remaining_bytes);
            }
        }
    }
}

async fn serve_hostile(mut socket: TcpStream, b: Behaviour) {
    match b {
        Behaviour::BadHandshake => {
            let mut buf = [0u8; 1537];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(&noise(11, 3073)).await;
        }
        Behaviour::Silent => {}
        _ => {
            if server_handshake(&mut socket).await.is_none() {
                return;
            }
            // let the client's connect request arrive, then answer with the hostile bytes
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = socket.write_all(&hostile_bytes(b)).await;
        }
    }
    // hold the connection open: the client must give up on its own
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_secs(30), socket.read(&mut sink)).await
    {
        if n == 0 {
            break;
        }
    }
}

/// A hostile server on a free port; returns its address.
async fn hostile_server(b: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_hostile(socket, b));
        }
    });
    addr
}

fn live(url: &str, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--url", url, "--size", "320x240", "--quiet"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

fn assert_no_crash(what: &str, status: std::process::ExitStatus, log: &str) {
    assert!(
        status.code().is_some(),
        "{what}: killed by a signal ({status}):\n{log}"
    );
    for bad in ["panicked", "overflow", "RUST_BACKTRACE"] {
        assert!(!log.contains(bad), "{what}: '{bad}' in the log:\n{log}");
    }
}

#[test]
fn hostile_servers_at_connect_are_errors_and_retries_never_crashes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let behaviours = [
        Behaviour::BadHandshake,
        Behaviour::Silent,
        Behaviour::ZeroChunkSize,
        Behaviour::HugeChunkSize,
        Behaviour::DeepAmf,
        Behaviour::RandomBytes,
        Behaviour::HugeMessage,
    ];
    // All at once: each run takes its 4 s in parallel.
    let mut runs: Vec<(Behaviour, ChildGuard)> = behaviours
        .iter()
        .map(|&b| {
            let addr = rt.block_on(hostile_server(b));
            let url = format!("rtmp://{addr}/live/key");
            (b, live(&url, &["--duration", "4"]))
        })
        .collect();
    for (b, child) in runs.iter_mut() {
        let what = format!("{b:?}");
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{what}: onair hung:\n{}", child.stderr_string()));
        let log = child.stderr_string();
        assert_no_crash(&what, status, &log);
        assert!(
            !status.success(),
            "{what}: a run that never went live succeeded:\n{log}"
        );
        assert!(log.contains("never went live"), "{what}:\n{log}");
        if !matches!(b, Behaviour::Silent) {
            // refused at once and retried on the 1, 2 s schedule
            let failures = log.matches("connecting failed").count();
            assert!(failures >= 2, "{what}: {failures} failed attempts:\n{log}");
        }
        let expected = match b {
            Behaviour::BadHandshake => "handshake",
            Behaviour::Silent => "still in progress",
            Behaviour::ZeroChunkSize | Behaviour::HugeChunkSize => "chunk size",
            Behaviour::DeepAmf => "nested deeper",
            Behaviour::HugeMessage => "exceeds the limit",
            Behaviour::RandomBytes => "invalid data",
        };
        assert!(log.contains(expected), "{what}: no '{expected}':\n{log}");
    }
}

/// A proxy in front of a real server that, once `inject` is called, sends the publisher
/// hostile bytes instead of the server's next answer (first connection only).
struct InjectingProxy {
    addr: SocketAddr,
    inject: tokio::sync::watch::Sender<Option<Vec<u8>>>,
}

impl InjectingProxy {
    async fn start(upstream: SocketAddr) -> InjectingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (inject, rx) = tokio::sync::watch::channel(None::<Vec<u8>>);
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let rx = first.then(|| rx.clone());
                first = false;
                tokio::spawn(pump(client, server, rx));
            }
        });
        InjectingProxy { addr, inject }
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    mut inject: Option<tokio::sync::watch::Receiver<Option<Vec<u8>>>>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let injected = async {
            match inject.as_mut() {
                Some(rx) => rx
                    .wait_for(|v| v.is_some())
                    .await
                    .ok()
                    .and_then(|v| v.clone()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = sr.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if cw.write_all(&buf[..n]).await.is_err() { break },
            },
            bytes = injected => {
                if let Some(bytes) = bytes {
                    let _ = cw.write_all(&bytes).await;
                }
                // from now on the server's answers are withheld; the client must leave
                let _ = tokio::time::timeout(Duration::from_secs(20), async {
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = sr.read(&mut sink).await { if n == 0 { break } }
                }).await;
                break;
            }
        }
    }
    up.abort();
}

#[test]
fn hostile_bytes_mid_stream_cost_a_reconnect_not_the_process() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let relay = rt
        .block_on(start_relay(RelayConfig {
            listen,
            ..Default::default()
        }))
        .unwrap();
    let proxy = rt.block_on(InjectingProxy::start(relay.local_addr));
    let url = format!("rtmp://{}/live/hostile", proxy.addr);
    let mut child = live(&url, &["--duration", "8"]);
    std::thread::sleep(Duration::from_secs(3));
    proxy.inject.send_replace(Some(deep_amf_result(15_000)));
    let status = child
        .wait_timeout(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("onair hung:\n{}", child.stderr_string()));
    let log = child.stderr_string();
    assert_no_crash("mid-stream deep AMF", status, &log);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("connection lost") && log.contains("nested deeper"),
        "the hostile answer was not reported:\n{log}"
    );
    assert!(log.contains("reconnected"), "no reconnect:\n{log}");
    relay.shutdown();
}
