//! The relay keeps its audience through a publisher blip: real ffmpeg publishers and readers
//! (RTMP and HTTP-FLV) over loopback. A publisher is killed and another takes its key within
//! the grace period; readers that came before any publisher wait for one; and with a short
//! grace period, viewers are closed and waiting players refused once it ends. Last, `onair
//! live` itself reconnects after its link dropped, and the relay's reader never notices.

mod common;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use onair::publish::url::RtmpUrl;
use onair::qa::player::RtmpPlayer;
use onair::relay::{start_relay, RelayConfig, RelayHandle};

const KEY: &str = "live/test";

/// Fails (never skips) when the tools these tests drive are missing.
fn require_ffmpeg() {
    assert!(
        ffmpeg_available(),
        "ffmpeg and ffprobe are needed: run scripts/setup"
    );
}

async fn relay(grace: Duration) -> (RelayHandle, SocketAddr) {
    init_tracing();
    let relay = start_relay(RelayConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        publisher_grace: grace,
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .await
    .expect("start relay");
    let http = relay.http_addr.expect("HTTP is on");
    (relay, http)
}

/// An ffmpeg publisher like [`ffmpeg_publisher`], logging its stderr under `name`.
fn publisher(url: &str, seconds: u32, name: &str, dir: &Path) -> ChildGuard {
    ChildGuard::spawn(name, ffmpeg_publisher(url, seconds), dir)
}

/// (dts in ms, keyframe) of every video packet, and the dts of every audio packet, in file
/// order.
fn packets(path: &Path) -> (Vec<(i64, bool)>, Vec<i64>) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type,dts,flags",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let mut video = Vec::new();
    let mut audio = Vec::new();
    for p in json["packets"].as_array().cloned().unwrap_or_default() {
        let Some(dts) = p["dts"].as_i64() else {
            continue;
        };
        match p["codec_type"].as_str() {
            Some("video") => video.push((dts, p["flags"].as_str().unwrap_or("").starts_with('K'))),
            Some("audio") => audio.push(dts),
            _ => {}
        }
    }
    (video, audio)
}

/// Checks a reader's recording: monotonic timestamps, no jump at the switch, and about
/// `min_ms` of video in all (more than what came before the blip).
fn check_recording(path: &Path, what: &str, min_ms: i64) {
    let (video, audio) = packets(path);
    assert!(
        video.len() > 30,
        "{what}: only {} video packets",
        video.len()
    );
    let dts: Vec<i64> = video.iter().map(|(d, _)| *d).collect();
    for (name, track) in [("video", &dts), ("audio", &audio)] {
        if let Some(w) = track.windows(2).find(|w| w[1] < w[0]) {
            panic!(
                "{what}: {name} timestamps go back from {} to {}",
                w[0], w[1]
            );
        }
    }
    let worst_gap = dts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(
        worst_gap < 500,
        "{what}: {worst_gap} ms jump between two video frames"
    );
    let span = dts.last().unwrap() - dts.first().unwrap();
    assert!(
        span >= min_ms,
        "{what}: {span} ms of video recorded, expected at least {min_ms}"
    );
    assert!(video[0].1, "{what}: recording does not start on a keyframe");
    eprintln!(
        "{what}: {} video packets over {span} ms, largest step {worst_gap} ms",
        video.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_keep_watching_through_a_publisher_blip() {
    require_ffmpeg();
    let (relay, http) = relay(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let rtmp = rtmp_url(relay.local_addr, "test");
    let mut first = publisher(&rtmp, 60, "first", dir.path());
    wait_for_video(&relay, KEY, 2, &mut first).await;

    let rtmp_out = dir.path().join("rtmp.flv");
    let http_out = dir.path().join("http.flv");
    let mut rtmp_reader =
        ChildGuard::spawn("rtmp-reader", ffmpeg_recorder(&rtmp, &rtmp_out), dir.path());
    let mut http_reader = ChildGuard::spawn(
        "http-reader",
        ffmpeg_recorder(&format!("http://{http}/live/test.flv"), &http_out),
        dir.path(),
    );
    wait_until("both readers to join", Duration::from_secs(10), || {
        let stats = relay.stats();
        let s = stats.stream(KEY)?;
        (s.rtmp_viewers == 1 && s.http_viewers == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The publisher's connection drops (no deleteStream): the viewers stay and wait.
    drop(first);
    let dropped = Instant::now();
    wait_until("the stream to wait", Duration::from_secs(5), || {
        let stats = relay.stats();
        let s = stats.stream(KEY)?;
        (s.publisher.is_none()).then_some(())
    })
    .await;
    let api = http_json(http, "/api/streams").await;
    assert_eq!(api["streams"][0]["state"], "waiting", "{api:#}");
    assert_eq!(api["streams"][0]["publisher"], serde_json::Value::Null);
    assert_eq!(api["streams"][0]["viewers"], 2, "{api:#}");
    assert_eq!(api["streams"][0]["gop_cache_packets"], 0, "{api:#}");

    // A new publisher on the same key about a second later, restarting its clock at 0.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut second = publisher(&rtmp, 3, "second", dir.path());
    wait_for_video(&relay, KEY, 2, &mut second).await;
    eprintln!("publisher back after {:?}", dropped.elapsed());
    assert!(rtmp_reader.try_wait().is_none(), "{}", rtmp_reader.log());
    assert!(http_reader.try_wait().is_none(), "{}", http_reader.log());
    assert_eq!(relay.stats().stream(KEY).unwrap().viewers, 2);

    // The second publisher ends its stream: now the readers finish, cleanly.
    assert!(second.expect_exit(Duration::from_secs(15)).await.success());
    for (reader, out) in [(&mut rtmp_reader, &rtmp_out), (&mut http_reader, &http_out)] {
        let status = reader.expect_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "reader failed:\n{}", reader.log());
        // About 1.2 s before the blip and 3 s after it, on one timeline.
        check_recording(out, &out.display().to_string(), 3_500);
    }
    assert!(relay.stats().streams.is_empty());
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_that_come_before_the_publisher_get_the_stream() {
    require_ffmpeg();
    let (relay, http) = relay(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let rtmp = rtmp_url(relay.local_addr, "test");
    let rtmp_out = dir.path().join("rtmp.flv");
    let http_out = dir.path().join("http.flv");
    let mut rtmp_reader =
        ChildGuard::spawn("rtmp-reader", ffmpeg_recorder(&rtmp, &rtmp_out), dir.path());
    let mut http_reader = ChildGuard::spawn(
        "http-reader",
        ffmpeg_recorder(&format!("http://{http}/live/test.flv"), &http_out),
        dir.path(),
    );
    // Both readers are connected and waiting; a waiting player is no stream.
    wait_until("both readers to connect", Duration::from_secs(10), || {
        (relay.stats().connections >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.stats().streams.is_empty());
    assert!(rtmp_reader.try_wait().is_none(), "{}", rtmp_reader.log());
    assert!(http_reader.try_wait().is_none(), "{}", http_reader.log());

    let mut publisher = publisher(&rtmp, 3, "publisher", dir.path());
    wait_until(
        "the waiting readers to join",
        Duration::from_secs(10),
        || {
            let stats = relay.stats();
            let s = stats.stream(KEY)?;
            (s.viewers == 2).then_some(())
        },
    )
    .await;
    assert!(publisher
        .expect_exit(Duration::from_secs(15))
        .await
        .success());
    for (reader, out) in [(&mut rtmp_reader, &rtmp_out), (&mut http_reader, &http_out)] {
        let status = reader.expect_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "reader failed:\n{}", reader.log());
        let probe = ffprobe_json(out);
        assert_eq!(probe_stream(&probe, "video")["codec_name"], "h264");
        assert_eq!(probe_stream(&probe, "audio")["codec_name"], "aac");
        check_recording(out, &out.display().to_string(), 2_500);
    }
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_are_closed_and_waiting_players_refused_when_grace_ends() {
    require_ffmpeg();
    let grace = Duration::from_secs(2);
    let (relay, http) = relay(grace).await;
    let dir = tempfile::tempdir().unwrap();
    let rtmp = rtmp_url(relay.local_addr, "test");
    let mut first = publisher(&rtmp, 60, "publisher", dir.path());
    wait_for_video(&relay, KEY, 2, &mut first).await;
    let mut rtmp_reader = ChildGuard::spawn(
        "rtmp-reader",
        ffmpeg_recorder(&rtmp, &dir.path().join("rtmp.flv")),
        dir.path(),
    );
    let mut http_reader = ChildGuard::spawn(
        "http-reader",
        ffmpeg_recorder(
            &format!("http://{http}/live/test.flv"),
            &dir.path().join("http.flv"),
        ),
        dir.path(),
    );
    wait_until("both readers to join", Duration::from_secs(10), || {
        let stats = relay.stats();
        let s = stats.stream(KEY)?;
        (s.viewers == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(first);
    let dropped = Instant::now();
    // Meanwhile, players ask for a key nobody publishes: they wait, then are refused.
    let nobody = RtmpUrl::parse(&rtmp_url(relay.local_addr, "nobody")).unwrap();
    let rtmp_waiter = tokio::spawn(async move {
        let started = Instant::now();
        let err = RtmpPlayer::connect(&nobody, Duration::from_secs(10))
            .await
            .expect_err("playing an unpublished key must fail");
        (format!("{err:#}"), started.elapsed())
    });
    let http_waiter = tokio::spawn(async move {
        let started = Instant::now();
        let (head, _) = http_get(http, "/live/nobody.flv").await.expect("HTTP GET");
        (head.status, started.elapsed())
    });

    for reader in [&mut rtmp_reader, &mut http_reader] {
        let status = reader.expect_exit(grace + Duration::from_secs(5)).await;
        let after = dropped.elapsed();
        assert!(status.success(), "reader failed:\n{}", reader.log());
        assert!(
            after >= grace - Duration::from_millis(300),
            "a viewer was closed {after:?} after the publisher dropped, before the grace ended"
        );
    }
    let closed_after = dropped.elapsed();
    assert!(
        closed_after < grace + Duration::from_secs(2),
        "viewers closed only {closed_after:?} after the publisher dropped"
    );
    assert!(relay.stats().streams.is_empty());

    let (msg, waited) = rtmp_waiter.await.unwrap();
    assert!(msg.contains("StreamNotFound"), "{msg}");
    assert!(waited >= grace - Duration::from_millis(300), "{waited:?}");
    let (status, waited) = http_waiter.await.unwrap();
    assert_eq!(status, 404);
    assert!(waited >= grace - Duration::from_millis(300), "{waited:?}");
    eprintln!("viewers closed {closed_after:?} after the publisher dropped (grace {grace:?})");
    relay.shutdown();
}

#[test]
fn onair_live_reconnecting_keeps_the_relay_audience() {
    require_ffmpeg();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = rt
        .block_on(start_relay(RelayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
        )))
        .expect("start relay");
    let proxy = support::proxy::Proxy::start(&rt, relay.local_addr);
    let url = format!("rtmp://127.0.0.1:{}/live/test", proxy.port);
    let mut live = support::ChildGuard::spawn(
        Command::new(support::onair())
            .args(["live", "--url", &url, "--size", "320x240", "--fps", "30"])
            .args(["--keyint", "1", "--duration", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let poll = |what: &str, live: &mut support::ChildGuard, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            if let Some(status) = live.wait_timeout(Duration::from_millis(20)) {
                panic!(
                    "onair exited ({status}) before {what}:\n{}",
                    live.stderr_string()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what}:\n{}",
                live.stderr_string()
            );
        }
    };
    poll("video at the relay", &mut live, &|| {
        relay
            .stats()
            .stream(KEY)
            .is_some_and(|s| s.video_packets_in > 2)
    });
    let out = tempfile::tempdir().unwrap();
    let watched = out.path().join("watched.flv");
    let mut reader = support::record_stream(&rtmp_url(relay.local_addr, "test"), &watched, &[]);
    poll("reader", &mut live, &|| {
        relay.stats().stream(KEY).is_some_and(|s| s.viewers == 1)
    });
    std::thread::sleep(Duration::from_secs(1));

    // The link drops for a moment; onair reconnects on its own about a second later.
    proxy.set_down(true);
    let dropped = Instant::now();
    poll("wait for the publisher", &mut live, &|| {
        relay
            .stats()
            .stream(KEY)
            .is_some_and(|s| s.publisher.is_none())
    });
    std::thread::sleep(Duration::from_millis(200));
    proxy.set_down(false);
    poll("reconnect", &mut live, &|| {
        relay
            .stats()
            .stream(KEY)
            .is_some_and(|s| s.publisher.is_some())
    });
    let back = dropped.elapsed();
    assert_eq!(relay.stats().stream(KEY).unwrap().viewers, 1);
    std::thread::sleep(Duration::from_millis(1500));

    // A clean stop ends the stream: the reader finishes and has both sessions on one timeline.
    live.interrupt();
    assert!(live
        .wait_timeout(Duration::from_secs(15))
        .expect("onair did not stop")
        .success());
    let status = reader
        .wait_timeout(Duration::from_secs(10))
        .expect("the reader did not finish after the stream ended");
    assert!(
        status.success(),
        "reader failed:\n{}",
        reader.stderr_string()
    );
    check_recording(&watched, "onair live through a reconnect", 2_500);
    eprintln!("onair live was back on the relay {back:?} after its link dropped");
    relay.shutdown();
}
