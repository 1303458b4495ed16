//! Staying on air through a bad network: `onair live` publishing through a throttling and
//! interrupting proxy to a real RTMP server (the embedded relay), checked from the publisher's
//! event log, the bytes it put on the wire, and a reader of the server.

mod support;

use onair::publish::url::RtmpUrl;
use onair::qa::player::RtmpPlayer;
use onair::relay::{start_relay, RelayConfig, RelayHandle};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::proxy::Proxy;
use support::rtmp_capture::{decode_publisher_bytes, Sent};
use support::{free_port, onair, ChildGuard};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn relay(rt: &tokio::runtime::Runtime) -> RelayHandle {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    rt.block_on(start_relay(RelayConfig {
        listen,
        ..Default::default()
    }))
    .unwrap()
}

/// Starts `onair live` publishing to `url` with extra args; waits until it is live.
fn publisher(url: &str, extra: &[&str]) -> ChildGuard {
    let mut child = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--url", url, "--size", "640x360", "--fps", "30"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_log(&mut child, "live 00:00:01", Duration::from_secs(20));
    child
}

fn wait_for_log(child: &mut ChildGuard, needle: &str, timeout: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if child.stderr_string().contains(needle) {
            return Instant::now();
        }
        if let Some(status) = child.wait_timeout(Duration::from_millis(50)) {
            panic!(
                "onair exited ({status}) before '{needle}':\n{}",
                child.stderr_string()
            );
        }
        assert!(
            start.elapsed() < timeout,
            "no '{needle}' within {timeout:?}:\n{}",
            child.stderr_string()
        );
    }
}

/// Event lines "[   12.3 s] message" of the log, as (seconds, message).
fn events(log: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (t, msg) = rest.split_once(" s] ")?;
            Some((t.trim().parse().ok()?, msg.to_string()))
        })
        .collect()
}

/// The "queue N ms" values of the status lines.
fn queue_values(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let i = l.find("  queue ")?;
            l[i + 8..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Seconds of output time at which the child logged "going live" — approximated by the
/// moment the test saw it, so that test instants map to the log's clock.
struct LogClock(Instant);

impl LogClock {
    fn at(&self, t: Instant) -> f64 {
        t.duration_since(self.0).as_secs_f64()
    }
}

#[test]
fn throttled_link_adapts_then_recovers_without_dropping_the_connection() {
    let rt = runtime();
    let relay = relay(&rt);
    let proxy = Proxy::start(&rt, relay.local_addr);
    let url = format!("rtmp://127.0.0.1:{}/live/abr", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let watched = dir.path().join("watched.flv");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--url", &url, "--size", "640x360", "--fps", "30"])
            .args(["--bitrate", "1000", "--duration", "120"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_log(&mut live, "going live", Duration::from_secs(20));
    let clock = LogClock(Instant::now());
    wait_for_log(&mut live, "live 00:00:03", Duration::from_secs(20));
    let reader_url = format!("rtmp://{}/live/abr", relay.local_addr);
    let mut reader = support::record_stream(&reader_url, &watched, &[]);
    std::thread::sleep(Duration::from_secs(3));

    // (1) half the configured bitrate (1000 video + 128 audio)
    proxy.throttle_kbps(564);
    let throttled_at = clock.at(Instant::now());
    std::thread::sleep(Duration::from_secs(25));
    let log = live.stderr_string();
    let evs = events(&log);
    let first_down = evs
        .iter()
        .find(|(t, m)| {
            *t >= throttled_at - 0.5 && m.starts_with("bitrate") && m.contains("send queue")
        })
        .unwrap_or_else(|| panic!("no step down after throttling at {throttled_at:.1} s:\n{log}"));
    assert!(
        first_down.0 - throttled_at <= 5.0,
        "adapted after {:.1} s:\n{log}",
        first_down.0 - throttled_at
    );
    // the queue stays under 1 s once adapted (status lines from 5 s after the throttle)
    let lines_after: Vec<u64> = queue_values(&log)
        .into_iter()
        .skip(throttled_at as usize + 5)
        .collect();
    assert!(!lines_after.is_empty());
    // Status lines sample the queue at an instant; while the controller is still stepping
    // down, one of them may catch a spike just before a step. Bound: no line over 1.5 s and at
    // most one over 1 s.
    let max_queue = *lines_after.iter().max().unwrap();
    let over_1s = lines_after.iter().filter(|q| **q >= 1000).count();
    assert!(
        max_queue < 1500 && over_1s <= 1,
        "queue reached {max_queue} ms, {over_1s} lines over 1 s:\n{log}"
    );
    assert!(!log.contains("connection lost"), "disconnected:\n{log}");

    // (2) limit lifted: back to the configured bitrate, only going up. Within 60 s unless a
    // probe failed just before the lift: then the controller first waits out its doubled
    // back-off (20 s) and climbs ×1.2 per 5 s from lower down, about 65 s. Bound: 90 s.
    proxy.throttle_kbps(0);
    let lifted_at = clock.at(Instant::now());
    wait_for_log(&mut live, "→ 1000 kbps", Duration::from_secs(92));
    let log = live.stderr_string();
    let evs = events(&log);
    let back = evs
        .iter()
        .find(|(t, m)| *t >= lifted_at && m.contains("→ 1000 kbps"))
        .unwrap_or_else(|| panic!("never back at 1000 kbps:\n{log}"));
    assert!(
        back.0 - lifted_at <= 90.0,
        "recovered after {:.1} s",
        back.0 - lifted_at
    );
    for (t, m) in evs
        .iter()
        .filter(|(t, m)| *t > lifted_at + 1.0 && m.starts_with("bitrate"))
    {
        let (from, to) = parse_change(m);
        assert!(to > from, "oscillated at {t:.1} s: {m}\n{log}");
    }
    assert!(!log.contains("connection lost"), "disconnected:\n{log}");

    // the stream stayed decodable end to end
    live.interrupt();
    assert!(live
        .wait_timeout(Duration::from_secs(15))
        .expect("onair did not stop")
        .success());
    reader
        .wait_timeout(Duration::from_secs(15))
        .expect("reader did not stop");
    support::assert_decodes_cleanly(&watched);
    let frames = support::ffprobe_packets(&watched, "v").len();
    assert!(frames > 30 * 30, "only {frames} frames reached the reader");
    relay.shutdown();
}

fn parse_change(m: &str) -> (u32, u32) {
    // "bitrate 1000 → 800 kbps: ..."
    let mut it = m.split_whitespace();
    it.next();
    let from = it.next().unwrap().parse().unwrap();
    it.next();
    let to = it.next().unwrap().parse().unwrap();
    (from, to)
}

/// The "reconnecting in X s (attempt k)" delays of the log.
fn reconnect_delays(log: &str) -> Vec<(u32, f64)> {
    events(log)
        .iter()
        .filter_map(|(_, m)| {
            let i = m.find("reconnecting in ")?;
            let rest = &m[i + 16..];
            let (secs, rest) = rest.split_once(" s (attempt ")?;
            let attempt = rest.trim_end_matches(')').parse().ok()?;
            Some((attempt, secs.parse().ok()?))
        })
        .collect()
}

#[test]
fn server_outage_reconnects_on_schedule_and_resumes_on_a_keyframe() {
    let rt = runtime();
    let relay = relay(&rt);
    outage_through(&rt, relay.local_addr);
    relay.shutdown();
}

#[test]
fn nginx_outage_reconnects_on_schedule_and_resumes_on_a_keyframe() {
    let rt = runtime();
    let nginx = support::Nginx::start().expect("nginx with the RTMP module (scripts/setup)");
    outage_through(&rt, SocketAddr::from(([127, 0, 0, 1], nginx.rtmp_port)));
}

/// Takes the server at `server` away for 5 s behind a proxy while `onair live` publishes
/// through it, then checks the reconnect schedule, the resumed session and a reader.
fn outage_through(rt: &tokio::runtime::Runtime, server: SocketAddr) {
    let proxy = Proxy::start(rt, server);
    let url = format!("rtmp://127.0.0.1:{}/live/outage", proxy.port);
    let mut live = publisher(
        &url,
        &["--bitrate", "800", "--duration", "40", "--keyint", "2"],
    );
    std::thread::sleep(Duration::from_secs(2));
    proxy.set_down(true);
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    proxy.set_down(false);
    let up_at = Instant::now();
    let resumed = wait_for_log(&mut live, "reconnected", Duration::from_secs(15));
    let log = live.stderr_string();
    // delays follow 1, 2, 4 … s within the ±20 % jitter
    let delays = reconnect_delays(&log);
    assert!(delays.len() >= 2, "{log}");
    for (attempt, secs) in &delays {
        let nominal = 2f64.powi(*attempt as i32 - 1).min(30.0);
        assert!(
            (secs - nominal).abs() <= nominal * 0.2 + 0.05,
            "attempt {attempt}: {secs} s:\n{log}"
        );
    }
    // resumed within the pending delay + 1 s of the server's return
    let pending = delays.last().unwrap().1;
    let waited = resumed.duration_since(up_at).as_secs_f64();
    assert!(
        waited <= pending + 1.0,
        "resumed {waited:.1} s after the server returned:\n{log}"
    );
    assert!(down_at.elapsed() < Duration::from_secs(20));

    // a reader sees the stream continue
    let player_url = RtmpUrl::parse(&format!("rtmp://{server}/live/outage")).unwrap();
    let frames = rt.block_on(async {
        let mut player = RtmpPlayer::connect(&player_url, Duration::from_secs(5))
            .await
            .unwrap();
        let mut frames = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), player.next_event()).await {
                Ok(Ok(Some(e)))
                    if e.is_keyframe()
                        || matches!(e, onair::qa::player::PlayerEvent::Video { .. }) =>
                {
                    frames += 1
                }
                Ok(Ok(None)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
        frames
    });
    assert!(
        frames >= 60,
        "reader got {frames} video messages after the reconnect"
    );
    live.interrupt();
    assert!(live
        .wait_timeout(Duration::from_secs(15))
        .expect("onair did not stop")
        .success());

    // on the wire: the new session starts with headers, then an IDR; time never goes back
    let first = decode_publisher_bytes(&proxy.capture(0));
    let last_conn = proxy.connections() - 1;
    let second = decode_publisher_bytes(&proxy.capture(last_conn));
    assert!(
        first.iter().any(|m| m.is_keyframe()) && second.len() > 30,
        "captures too short"
    );
    let first_video = second
        .iter()
        .position(|m| matches!(m, Sent::Video { .. }))
        .unwrap();
    assert!(
        second[first_video].is_video_header(),
        "new session began with {:?}",
        second[first_video]
    );
    assert!(
        second[..first_video + 2]
            .iter()
            .any(|m| m.is_audio_header())
            || second.iter().take(4).any(|m| m.is_audio_header())
    );
    let first_frame = second
        .iter()
        .find(|m| m.is_keyframe() || m.is_inter())
        .unwrap();
    assert!(
        first_frame.is_keyframe(),
        "first frame after resume is not an IDR"
    );
    let last_ts_before = first
        .iter()
        .filter_map(|m| match m {
            Sent::Video { ts, .. } if !m.is_video_header() => Some(*ts),
            _ => None,
        })
        .max()
        .unwrap();
    let mut prev = 0;
    for m in &second {
        if let Sent::Video { ts, .. } = m {
            if m.is_video_header() {
                continue;
            }
            assert!(
                *ts > last_ts_before,
                "timestamp {ts} after resume is not after {last_ts_before}"
            );
            assert!(*ts >= prev, "timestamps went back: {prev} → {ts}");
            prev = *ts;
        }
    }
}

#[test]
fn refused_stream_key_on_reconnect_is_an_authentication_failure_without_retries() {
    let rt = runtime();
    let relay = relay(&rt);
    let proxy = Proxy::start(&rt, relay.local_addr);
    let url = format!("rtmp://127.0.0.1:{}/live/taken", proxy.port);
    let mut live = publisher(&url, &["--bitrate", "500", "--duration", "40"]);
    proxy.set_down(true);
    // someone else takes the key while we are away
    let direct = format!("rtmp://{}/live/taken", relay.local_addr);
    let _other = ChildGuard::spawn(
        Command::new(onair())
            .args([
                "live",
                "--url",
                &direct,
                "--size",
                "320x240",
                "--duration",
                "30",
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_secs(2));
    proxy.set_down(false);
    let Some(status) = live.wait_timeout(Duration::from_secs(20)) else {
        panic!(
            "publisher kept retrying a refused key:\n{}",
            live.stderr_string()
        );
    };
    let log = live.stderr_string();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("authentication"),
        "not reported as an authentication failure:\n{log}"
    );
    let refusal = events(&log)
        .iter()
        .position(|(_, m)| m.starts_with("giving up"))
        .expect("no 'giving up' event");
    let after: Vec<_> = events(&log).into_iter().skip(refusal + 1).collect();
    assert!(
        after.iter().all(|(_, m)| !m.starts_with("connecting")),
        "retried after refusal:\n{log}"
    );
    relay.shutdown();
}

#[test]
fn backup_url_takes_over_when_the_primary_stays_down() {
    let rt = runtime();
    let primary_relay = relay(&rt);
    let backup_relay = relay(&rt);
    let proxy = Proxy::start(&rt, primary_relay.local_addr);
    let primary = format!("rtmp://127.0.0.1:{}/live/main", proxy.port);
    let backup = format!("rtmp://{}/live/main", backup_relay.local_addr);
    let mut live = publisher(
        &primary,
        &[
            "--bitrate",
            "500",
            "--duration",
            "40",
            "--backup-url",
            &backup,
            "--max-reconnect-delay",
            "1",
        ],
    );
    proxy.set_down(true);
    wait_for_log(
        &mut live,
        "switching to the backup server",
        Duration::from_secs(15),
    );
    wait_for_log(&mut live, "reconnected", Duration::from_secs(10));
    let log = live.stderr_string();
    assert!(
        log.contains(&format!(
            "reconnected to rtmp://{}",
            backup_relay.local_addr
        )),
        "{log}"
    );
    // The switch tries the backup at once instead of waiting the current backoff.
    let ev = events(&log);
    let at = |prefix: &str| {
        ev.iter()
            .find(|(_, m)| m.starts_with(prefix))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no '{prefix}' event:\n{log}"))
    };
    let switched = at("switching to the backup server");
    let resumed = at("reconnected to");
    assert!(
        resumed - switched < 1.0,
        "on the backup {:.1} s after switching:\n{log}",
        resumed - switched
    );
    let player_url = RtmpUrl::parse(&backup).unwrap();
    let got = rt.block_on(async {
        let mut player = RtmpPlayer::connect(&player_url, Duration::from_secs(5))
            .await
            .unwrap();
        let mut n = 0;
        while n < 30 {
            match tokio::time::timeout(Duration::from_secs(3), player.next_event()).await {
                Ok(Ok(Some(onair::qa::player::PlayerEvent::Video { .. }))) => n += 1,
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        n
    });
    assert!(got >= 30, "backup server got {got} frames");
    live.interrupt();
    assert!(live
        .wait_timeout(Duration::from_secs(15))
        .expect("onair did not stop")
        .success());
    primary_relay.shutdown();
    backup_relay.shutdown();
}
