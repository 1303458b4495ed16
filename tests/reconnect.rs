//! The reconnect schedule of the real output loop (x264 packets, the RTMP publisher, the
//! embedded relay, a proxy that takes the server away), with its timers scaled down so that a
//! session longer than every timer fits in seconds: the schedule must keep doubling after a
//! long healthy session and `max_attempts` must be honoured then. The policy itself is tested
//! over hours of simulated time in `publish::reconnect`.

mod support;

use onair::capture::test_card::TestCard;
use onair::clock::MediaClock;
use onair::config::Settings;
use onair::media::{Packet, StreamHeaders};
use onair::publish::backoff::BackoffConfig;
use onair::publish::output::{connect_first, run_output, EncoderControl, OutputConfig};
use onair::publish::url::RtmpUrl;
use onair::relay::{start_relay, RelayConfig, RelayHandle};
use onair::stats::Stats;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::free_port;
use support::proxy::Proxy;
use tokio::sync::mpsc;

/// Two seconds of 320x240 x264 packets (keyframe every second) and their headers.
fn encoded_clip() -> (StreamHeaders, Vec<Packet>) {
    let mut s = Settings::default();
    s.video.width = 320;
    s.video.height = 240;
    s.video.fps = 30;
    s.video.bitrate_kbps = 400;
    s.video.keyint_secs = 1.0;
    let mut enc = onair::encode::open_video(&s.video).expect("x264 (run scripts/setup)");
    let card = TestCard::new(MediaClock::start(), 320, 240, 30).unwrap();
    let mut packets = Vec::new();
    for i in 0..60u64 {
        packets.extend(enc.encode(&card.render(i, i as i64 * 33)).unwrap());
    }
    packets.extend(enc.flush().unwrap());
    let headers = StreamHeaders {
        video: Some(enc.header()),
        audio: None,
    };
    (headers, packets)
}

/// Feeds the clip in real time, looping with timestamps that keep growing, until `tx` closes
/// or `until` passes.
async fn feed(tx: mpsc::Sender<Packet>, clip: Vec<Packet>, until: Instant) {
    let start = tokio::time::Instant::now();
    let mut offset = 0i64;
    while Instant::now() < until {
        for p in &clip {
            let mut p = p.clone();
            p.pts_ms += offset;
            p.dts_ms += offset;
            tokio::time::sleep_until(start + Duration::from_millis(p.dts_ms.max(0) as u64)).await;
            if tx.send(p).await.is_err() {
                return;
            }
        }
        offset += 2000;
    }
}

async fn relay() -> RelayHandle {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    start_relay(RelayConfig {
        listen,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Output settings with a fast, jitter-free schedule: 200, 400, 800 ms …, stable after 2 s.
fn config(url: &str, max_attempts: u32) -> OutputConfig {
    let mut cfg = OutputConfig::new(RtmpUrl::parse(url).unwrap(), 400, 0);
    cfg.abr = None;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.backoff = BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(30),
        jitter: 0.0,
        stable_after: Duration::from_secs(2),
        max_attempts,
    };
    cfg
}

/// The "(in X s (attempt k)" delays of the events, in order.
fn delays(events: &[String]) -> Vec<(u32, f64)> {
    events
        .iter()
        .filter_map(|m| {
            let i = m.find("reconnecting in ")?;
            let rest = &m[i + 16..];
            let (secs, rest) = rest.split_once(" s (attempt ")?;
            let attempt = rest.split(')').next()?.parse().ok()?;
            Some((attempt, secs.parse().ok()?))
        })
        .collect()
}

/// What one run of the output loop did.
struct Run {
    result: Result<onair::publish::output::OutputSummary, onair::publish::rtmp::PublishError>,
    events: Vec<String>,
    log: String,
    state: String,
    took: Duration,
}

/// Streams the clip for `feed_for` through the real output loop with `cfg` (connecting
/// first when `connect_first` is set) while `disturb` acts on the link.
async fn stream_through(
    cfg: OutputConfig,
    connect_before: bool,
    feed_for: Duration,
    disturb: impl std::future::Future<Output = ()>,
) -> Run {
    let (headers, clip) = encoded_clip();
    let (tx, rx) = mpsc::channel(512);
    let stats = Arc::new(Stats::default());
    let control = EncoderControl::new(400);
    let first = if connect_before {
        let c = connect_first(&cfg, &headers).await;
        assert!(
            c.is_ok(),
            "first connection failed: {c:?}",
            c = c.as_ref().err()
        );
        c.ok()
    } else {
        None
    };
    let started = Instant::now();
    tokio::spawn(feed(tx, clip, started + feed_for));
    let output = run_output(
        &cfg,
        &headers,
        first,
        rx,
        &control,
        &stats,
        Duration::from_secs(1),
        |_| {},
    );
    let disturb = async {
        disturb.await;
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = output => r,
        _ = disturb => unreachable!(),
    };
    let events = stats.events();
    Run {
        result,
        log: events.join("\n"),
        events,
        state: stats.state(),
        took: started.elapsed(),
    }
}

#[test]
fn backoff_keeps_doubling_after_a_session_longer_than_stable_after() {
    let rt = support_runtime();
    rt.block_on(async {
        let relay = relay().await;
        let proxy = Proxy::start(&rt, relay.local_addr);
        let url = format!("rtmp://127.0.0.1:{}/live/long", proxy.port);
        let outage = async {
            // live for 3 s, longer than stable_after (2 s): the bug reset the schedule on
            // every failed retry from here on
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.set_down(true);
            tokio::time::sleep(Duration::from_millis(3300)).await;
            proxy.set_down(false);
        };
        let run =
            stream_through(config(&url, 0), true, Duration::from_millis(10_500), outage).await;
        let log = &run.log;
        assert!(run.result.is_ok(), "{:?}\n{log}", run.result.err());
        let d = delays(&run.events);
        // 0.2, 0.4, 0.8, 1.6 s while the server is away, then it is back
        assert!(d.len() >= 4, "{log}");
        for (i, (attempt, secs)) in d.iter().enumerate() {
            assert_eq!(*attempt as usize, i + 1, "{log}");
            let nominal = 0.2 * 2f64.powi(i as i32);
            assert!(
                (secs - nominal).abs() < 0.01,
                "attempt {attempt} waited {secs} s, not {nominal} s:\n{log}"
            );
        }
        assert!(log.contains("reconnected"), "{log}");
        relay.shutdown();
    });
}

#[test]
fn max_reconnects_is_honoured_after_a_session_longer_than_stable_after() {
    let rt = support_runtime();
    rt.block_on(async {
        let relay = relay().await;
        let proxy = Proxy::start(&rt, relay.local_addr);
        let url = format!("rtmp://127.0.0.1:{}/live/giveup", proxy.port);
        let outage = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.set_down(true);
        };
        let run = stream_through(config(&url, 3), true, Duration::from_secs(30), outage).await;
        let log = &run.log;
        assert!(run.result.is_err(), "kept retrying:\n{log}");
        assert!(log.contains("gave up after 3 attempts"), "{log}");
        // 3 s live + 0.2 + 0.4 + 0.8 s of retries (and the refusals themselves)
        let took = run.took.as_secs_f64();
        assert!(
            (4.2..8.0).contains(&took),
            "gave up after {took:.1} s:\n{log}"
        );
        assert!(run.state.starts_with("failed: gave up"), "{}", run.state);
        relay.shutdown();
    });
}

fn support_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_primary_down_at_start_goes_to_the_backup_at_once() {
    use std::process::{Command, Stdio};
    let rt = support_runtime();
    let backup = rt.block_on(relay());
    let primary = format!("rtmp://127.0.0.1:{}/live/start", free_port());
    let backup_url = format!("rtmp://{}/live/start", backup.local_addr);
    let started = Instant::now();
    let mut live = support::ChildGuard::spawn(
        Command::new(support::onair())
            .args(["live", "--url", &primary, "--backup-url", &backup_url])
            .args(["--size", "320x240", "--duration", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let status = live
        .wait_timeout(Duration::from_secs(30))
        .expect("onair hung");
    let log = live.stderr_string();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("switching to the backup server") && log.contains("connecting now"),
        "{log}"
    );
    assert!(
        log.contains(&format!("connected to rtmp://{}/live/", backup.local_addr)),
        "{log}"
    );
    // on the backup within a second of the refusal, not after a backoff
    let connected_at = log
        .lines()
        .find(|l| l.contains("] connected to "))
        .and_then(|l| {
            l.trim_start_matches('[')
                .split(" s]")
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no 'connected to' event:\n{log}"));
    assert!(
        connected_at < 1.0,
        "on the backup after {connected_at} s:\n{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let sent: u64 = log
        .split(" video frames and ")
        .next()
        .and_then(|head| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary:\n{log}"));
    assert!(sent >= 60, "{sent} video frames reached the backup:\n{log}");
    backup.shutdown();
}

/// A proxy whose existing connections can be frozen: nothing passes either way and nothing
/// is closed, as when a network vanishes without a FIN. Later connections pass normally.
struct FreezingProxy {
    addr: SocketAddr,
    freeze: tokio::sync::watch::Sender<bool>,
}

impl FreezingProxy {
    async fn start(upstream: SocketAddr) -> FreezingProxy {
        // A small receive buffer, as a real path has: once frozen, the publisher's bytes stop
        // being acknowledged almost at once instead of filling a large kernel buffer here.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let (freeze, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                // a connection made while frozen is never frozen
                let frozen_at_start = *rx.borrow();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (r, w) in [(cr, sw), (sr, cw)] {
                    let mut rx = rx.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let (mut r, mut w) = (r, w);
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            tokio::select! {
                                n = r.read(&mut buf) => match n {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => if w.write_all(&buf[..n]).await.is_err() { break },
                                },
                                _ = async { let _ = rx.wait_for(|f| *f).await; }, if !frozen_at_start => {
                                    // hold both sockets open, pass nothing
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    break;
                                }
                            }
                        }
                    });
                }
            }
        });
        FreezingProxy { addr, freeze }
    }
}

#[test]
fn a_link_that_vanishes_without_a_fin_is_detected_and_the_relay_hands_the_key_over() {
    let rt = support_runtime();
    rt.block_on(async {
        let relay = relay().await;
        let proxy = FreezingProxy::start(relay.local_addr).await;
        let url = format!("rtmp://{}/live/frozen", proxy.addr);
        let mut cfg = config(&url, 0);
        cfg.stall_timeout = Duration::from_secs(2);
        let freeze = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.freeze.send_replace(true);
        };
        let run = stream_through(cfg, false, Duration::from_secs(10), freeze).await;
        let log = &run.log;
        assert!(run.result.is_ok(), "{:?}\n{log}", run.result.err());
        assert!(log.contains("delivered nothing for 2 s"), "{log}");
        // the relay let the reconnecting publisher take its own key back
        assert!(log.contains("reconnected to"), "{log}");
        assert!(!log.contains("refused"), "{log}");
        let reconnected_at: f64 = log
            .lines()
            .find(|l| l.contains("] reconnected to"))
            .and_then(|l| {
                l.trim_start_matches('[')
                    .split(" s]")
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap();
        assert!(
            (4.5..7.5).contains(&reconnected_at),
            "reconnected at {reconnected_at} s:\n{log}"
        );
        relay.shutdown();
    });
}
