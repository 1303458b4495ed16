//! End-to-end tests of `onair live`: the real binary, real encoders and real RTMP over
//! loopback, checked by real third-party peers (ffmpeg, ffprobe, nginx-rtmp).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    ffprobe_packets, ffprobe_streams, free_port, onair, wait_for_listener, wait_for_port,
    ChildGuard,
};

const FPS: f64 = 30.0;

/// Runs `onair live` to completion with the given extra args; returns (success, stderr).
fn run_onair_live(args: &[&str], timeout: Duration) -> (bool, String) {
    let mut child = ChildGuard::spawn(
        Command::new(onair())
            .arg("live")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let status = child
        .wait_timeout(timeout)
        .expect("onair live did not finish in time");
    (status.success(), child.stderr_string())
}

/// Checks a recording made by a player: codecs, frame completeness and A/V duration.
fn assert_good_stream(path: &std::path::Path, min_video_secs: f64) {
    let streams = ffprobe_streams(path);
    let codecs: Vec<&str> = streams
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap_or(""))
        .collect();
    assert!(codecs.contains(&"h264"), "streams: {codecs:?}");
    assert!(codecs.contains(&"aac"), "streams: {codecs:?}");
    let video: Vec<f64> = ffprobe_packets(path, "v").iter().map(|p| p.0).collect();
    let audio: Vec<f64> = ffprobe_packets(path, "a").iter().map(|p| p.0).collect();
    assert!(!video.is_empty() && !audio.is_empty());
    let vdur = video.last().unwrap() - video.first().unwrap() + 1.0 / FPS;
    let adur = audio.last().unwrap() - audio.first().unwrap() + 1024.0 / 48_000.0;
    let expected = vdur * FPS;
    let got = video.len() as f64;
    assert!(vdur >= min_video_secs, "only {vdur:.2} s of video");
    assert!(
        got >= 0.95 * expected,
        "received {got} of {expected:.0} expected video frames"
    );
    assert!(
        (adur - vdur).abs() <= 0.02 * vdur + 0.05,
        "audio {adur:.3} s vs video {vdur:.3} s"
    );
    // the first video packet is a keyframe: a player can decode from its first frame
    let flags = ffprobe_packets(path, "v");
    assert!(flags[0].1, "first video packet is not a keyframe");
}

#[test]
fn live_to_embedded_relay_is_watchable_by_ffmpeg() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let record = dir.path().join("sent.flv");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args([
                "live",
                "--duration",
                "12",
                "--size",
                "640x360",
                "--fps",
                "30",
            ])
            .args(["--bitrate", "1200", "--listen", &listen])
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    let started = Instant::now();
    let out = dir.path().join("watched.flv");
    let mut player =
        support::record_stream(&format!("rtmp://127.0.0.1:{port}/live/test"), &out, &[]);
    let status = live
        .wait_timeout(Duration::from_secs(40))
        .expect("onair live hung");
    let log = live.stderr_string();
    assert!(status.success(), "onair live failed:\n{log}");
    assert!(
        log.contains("watch with: ffplay"),
        "no watch hint in:\n{log}"
    );
    assert!(log.contains("fps in"), "no status line in:\n{log}");
    let aac = if cfg!(feature = "fdk-aac") {
        "fdk-aac"
    } else {
        "ffmpeg-aac"
    };
    assert!(log.contains(aac), "{aac} not in use:\n{log}");
    player
        .wait_timeout(Duration::from_secs(20))
        .expect("player did not stop at end of stream");
    let watched_for = started.elapsed().as_secs_f64();
    assert!(watched_for > 9.0, "player only ran {watched_for:.1} s");
    assert_good_stream(&out, 9.0);
    // the recording holds the whole stream from its first frame
    assert_good_stream(&record, 11.0);
}

#[test]
fn publishes_to_ffmpeg_listen_server() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("server.flv");
    let mut server = ChildGuard::spawn(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-listen",
                "1",
                "-i",
            ])
            .arg(format!("rtmp://127.0.0.1:{port}/live/k"))
            .args(["-c", "copy", "-f", "flv"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_listener(port, Duration::from_secs(10));
    let url = format!("rtmp://127.0.0.1:{port}/live/k");
    let (ok, log) = run_onair_live(
        &[
            "--url",
            &url,
            "--duration",
            "6",
            "--size",
            "320x240",
            "--quiet",
        ],
        Duration::from_secs(30),
    );
    assert!(ok, "onair live failed:\n{log}");
    server
        .wait_timeout(Duration::from_secs(15))
        .expect("ffmpeg server did not finish");
    assert_good_stream(&out, 5.0);
}

#[test]
fn publishes_to_nginx_rtmp() {
    let Some(nginx) = support::Nginx::start() else {
        panic!("nginx with the RTMP module is required (scripts/setup installs it)");
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nginx.flv");
    let url = format!("rtmp://127.0.0.1:{}/live/nginxkey", nginx.rtmp_port);
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args([
                "live",
                "--url",
                &url,
                "--duration",
                "8",
                "--size",
                "320x240",
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // nginx keeps a player waiting after the publisher leaves: record a fixed span
    let mut player = support::record_stream(&url, &out, &["-t", "5"]);
    let status = live
        .wait_timeout(Duration::from_secs(30))
        .expect("onair live hung");
    assert!(
        status.success(),
        "onair live failed:\n{}",
        live.stderr_string()
    );
    player
        .wait_timeout(Duration::from_secs(20))
        .expect("player did not finish");
    assert_good_stream(&out, 4.0);
}

#[test]
fn bad_url_is_a_clear_error() {
    for (url, needle) in [
        ("http://example.com/live/x", "rtmp://"),
        ("rtmp://127.0.0.1:1935/live", "stream key"),
        ("rtmp://127.0.0.1:99999/live/x", "port"),
    ] {
        let (ok, log) = run_onair_live(&["--url", url, "--duration", "2"], Duration::from_secs(20));
        assert!(!ok, "{url} was accepted");
        assert!(
            log.contains("error:") && log.contains(needle),
            "{url}: {log}"
        );
    }
}

#[test]
fn unreachable_server_is_retried_then_a_clear_error() {
    let port = free_port();
    let url = format!("rtmp://127.0.0.1:{port}/live/x");
    let (ok, log) = run_onair_live(&["--url", &url, "--duration", "4"], Duration::from_secs(20));
    assert!(!ok, "a run that never went live succeeded:\n{log}");
    assert!(
        log.contains("could not connect") && log.contains("Is the server running"),
        "{log}"
    );
    // The first connection is retried like any other: 1 s, then 2 s.
    assert!(log.matches("connecting failed").count() >= 2, "{log}");
    assert!(log.contains("never went live"), "{log}");
}

#[test]
fn refused_publish_is_a_clear_error() {
    // A first stream holds the key on the embedded relay; a second publisher is refused.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut first = ChildGuard::spawn(
        Command::new(onair())
            .args([
                "live",
                "--duration",
                "10",
                "--size",
                "320x240",
                "--quiet",
                "--listen",
                &listen,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("rtmp://127.0.0.1:{port}/live/test");
    let (ok, log) = run_onair_live(&["--url", &url, "--duration", "2"], Duration::from_secs(20));
    assert!(!ok, "second publisher was accepted:\n{log}");
    assert!(
        log.contains("refused to publish") || log.contains("already in use"),
        "{log}"
    );
    let status = first
        .wait_timeout(Duration::from_secs(30))
        .expect("first stream hung");
    assert!(
        status.success(),
        "first stream was disturbed:\n{}",
        first.stderr_string()
    );
}

#[test]
fn invalid_settings_name_the_field() {
    let (ok, log) = run_onair_live(
        &["--bitrate", "5", "--duration", "1"],
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(log.contains("video.bitrate_kbps"), "{log}");
    let (ok, log) = run_onair_live(
        &["--size", "641x360", "--duration", "1"],
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(log.contains("641x360"), "{log}");
}

#[test]
fn ctrl_c_stops_cleanly_and_finishes_the_recording() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("interrupted.flv");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--size", "320x240", "--quiet", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    live.interrupt();
    let status = live
        .wait_timeout(Duration::from_secs(10))
        .expect("onair live did not stop on Ctrl-C");
    let log = live.stderr_string();
    assert!(status.success(), "{log}");
    assert!(log.contains("recording saved"), "{log}");
    // every frame written is readable, and nothing was cut mid-tag
    let bytes = std::fs::read(&record).unwrap();
    let (_, tags) = onair::flv::parse_flv(&bytes).expect("recording is a complete FLV file");
    let video = tags
        .iter()
        .filter(|t| t.tag_type == onair::flv::TAG_VIDEO)
        .count();
    assert!(video >= 80, "only {video} video tags after ~3 s");
    assert_good_stream(&record, 2.5);
}

#[test]
fn beauty_filtered_stream_plays_from_the_relay() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("beauty.flv");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args([
                "live",
                "--beauty",
                "--duration",
                "8",
                "--size",
                "320x240",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    let mut player =
        support::record_stream(&format!("rtmp://127.0.0.1:{port}/live/test"), &out, &[]);
    let status = live
        .wait_timeout(Duration::from_secs(40))
        .expect("onair live hung");
    let log = live.stderr_string();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("video filters on the GPU"),
        "filters not on the GPU:\n{log}"
    );
    player
        .wait_timeout(Duration::from_secs(20))
        .expect("player did not stop");
    assert_good_stream(&out, 5.0);
    support::assert_decodes_cleanly(&out);
}
