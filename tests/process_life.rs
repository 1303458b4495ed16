//! How `onair live` and `onair relay` end: SIGTERM and SIGHUP (systemd, `docker stop`, a closed
//! terminal) stop them as cleanly as Ctrl-C, and values that would overflow a timer or that
//! the test card could not draw are refused or handled, never a panic.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::{ffprobe_packets, free_port, onair, wait_for_port, ChildGuard};

fn signal(child: &ChildGuard, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test spawned and still owns; no memory is involved.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill failed");
}

/// `onair live` recording to a file, stopped by `sig` after 3 s: a complete recording.
fn live_stops_cleanly_on(sig: libc::c_int, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.flv");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--listen", &listen, "--size", "320x240", "--record"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let start = std::time::Instant::now();
    while !live.stderr_string().contains("00:00:03") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            live.stderr_string()
        );
        assert!(live.wait_timeout(Duration::from_millis(50)).is_none());
    }
    signal(&live, sig);
    let status = live
        .wait_timeout(Duration::from_secs(15))
        .expect("onair did not stop");
    let log = live.stderr_string();
    assert!(status.success(), "{name}: {status}\n{log}");
    assert!(log.contains(&format!("stopping ({name})")), "{log}");
    assert!(log.contains("recording saved"), "{log}");
    // The recording is finished: FFmpeg reads its duration and every frame up to the stop.
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&out)
        .output()
        .expect("ffprobe (run scripts/setup)");
    let duration: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    assert!(
        duration >= 2.5,
        "{name}: recording duration {duration} s\n{log}"
    );
    let frames = ffprobe_packets(&out, "v");
    let last = frames.last().map(|(t, _)| *t).unwrap_or(0.0);
    assert!(
        (last - duration).abs() < 0.5,
        "{name}: last frame at {last} s of {duration} s"
    );
}

#[test]
fn sigterm_stops_live_like_ctrl_c() {
    live_stops_cleanly_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_stops_live_like_ctrl_c() {
    live_stops_cleanly_on(libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigterm_stops_the_relay_and_ends_its_viewers_streams() {
    let port = free_port();
    let http_port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{http_port}");
    let mut relay = ChildGuard::spawn(
        Command::new(onair())
            .args(["relay", "--listen", &listen, "--http", &http])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    let url = format!("rtmp://{listen}/live/term");
    let _publisher = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--url", &url, "--size", "320x240", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let rtmp_out = dir.path().join("rtmp.flv");
    let http_out = dir.path().join("http.flv");
    let mut rtmp_viewer = support::record_stream(&url, &rtmp_out, &[]);
    let mut http_viewer =
        support::record_stream(&format!("http://{http}/live/term.flv"), &http_out, &[]);
    // Two viewers that look at how the stream ends: an RTMP player and a raw HTTP/1.1 client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let player_url = onair::publish::url::RtmpUrl::parse(&url).unwrap();
    let mut player = rt
        .block_on(onair::qa::player::RtmpPlayer::connect(
            &player_url,
            Duration::from_secs(5),
        ))
        .unwrap();
    let raw_http = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&http).unwrap();
        s.write_all(b"GET /live/term.flv HTTP/1.1\r\nHost: relay\r\n\r\n")
            .unwrap();
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body);
        body
    });
    std::thread::sleep(Duration::from_secs(3));
    signal(&relay, libc::SIGTERM);
    let ended = rt.block_on(async {
        while let Ok(Some(_)) = player.next_event().await {}
        player.end_status().map(str::to_string)
    });
    assert!(
        ended
            .as_deref()
            .is_some_and(|c| c.contains("Unpublish") || c.contains("Stop")),
        "the RTMP player was not told the stream ended: {ended:?}"
    );
    let body = raw_http.join().unwrap();
    assert!(
        body.len() > 10_000 && body.ends_with(b"0\r\n\r\n"),
        "HTTP-FLV body of {} bytes without its last chunk",
        body.len()
    );
    let status = relay
        .wait_timeout(Duration::from_secs(10))
        .expect("relay did not stop");
    let log = relay.stderr_string();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("relay stopping (SIGTERM)") && log.contains("relay stopped"),
        "{log}"
    );
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "still listening"
    );
    // Both viewers were told the stream ended: ffmpeg finishes its file and exits 0.
    for (viewer, out) in [(&mut rtmp_viewer, &rtmp_out), (&mut http_viewer, &http_out)] {
        let status = viewer
            .wait_timeout(Duration::from_secs(10))
            .expect("viewer still waiting after the relay stopped");
        assert!(
            status.success(),
            "{}: {}",
            out.display(),
            viewer.stderr_string()
        );
        let frames = ffprobe_packets(out, "v");
        assert!(
            frames.len() >= 30,
            "{}: {} frames",
            out.display(),
            frames.len()
        );
    }
}

#[test]
fn values_that_would_overflow_are_refused_with_the_flag() {
    for (args, needle) in [
        (vec!["live", "--duration", "1e30"], "--duration"),
        (vec!["live", "--duration", "inf"], "--duration"),
        (vec!["live", "--duration=-1"], "--duration"),
        (vec!["live", "--duration", "0"], "--duration"),
        (
            vec!["relay", "--idle-timeout", "18446744073709551615"],
            "--idle-timeout",
        ),
    ] {
        let out = Command::new(onair())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("error:") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn odd_frame_shapes_stream_instead_of_panicking() {
    // A tall, narrow frame used to panic the test card's drawing on the video thread.
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(onair())
        .args([
            "live",
            "--listen",
            &listen,
            "--size",
            "64x480",
            "--duration",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains(" 0 video frames sent"), "{err}");
}
