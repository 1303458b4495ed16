//! The embedded relay against real peers: ffmpeg publishers and recorders, the QA player,
//! raw sockets sending garbage, and a player that stops reading.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use onair::publish::url::RtmpUrl;
use onair::qa::player::{PlayerEvent, RtmpPlayer};
use onair::relay::{start_relay, RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const KEY: &str = "live/test";

/// A relay without publisher grace: these tests check what players see the moment a
/// publisher goes away (tests/relay_grace.rs covers the grace period).
async fn relay() -> RelayHandle {
    init_tracing();
    start_relay(RelayConfig {
        publisher_grace: Duration::ZERO,
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .await
    .expect("start relay")
}

fn player_url(addr: SocketAddr, key: &str) -> RtmpUrl {
    RtmpUrl::parse(&rtmp_url(addr, key)).unwrap()
}

/// Next player event, failing the test if none comes within `limit`.
async fn next(player: &mut RtmpPlayer, limit: Duration) -> Option<PlayerEvent> {
    timeout(limit, player.next_event())
        .await
        .expect("player event timed out")
        .expect("player error")
}

fn video_ts(event: &PlayerEvent) -> Option<u32> {
    match event {
        PlayerEvent::Video { timestamp_ms, .. } => Some(*timestamp_ms),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_recording_gets_every_frame_published_after_it_joined() {
    require_ffmpeg();
    let relay = relay().await;
    let dir = tempfile::tempdir().unwrap();
    let url = rtmp_url(relay.local_addr, "test");
    let started = Instant::now();
    let mut publisher = ChildGuard::spawn("publisher", ffmpeg_publisher(&url, 6), dir.path());
    wait_for_video(&relay, KEY, 2, &mut publisher).await;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;

    let out = dir.path().join("out.flv");
    let mut recorder = ChildGuard::spawn("recorder", ffmpeg_recorder(&url, &out), dir.path());
    // Frames published from the moment the recorder is registered as a viewer on.
    let frames_before_join = wait_until("the recorder to join", Duration::from_secs(10), || {
        let stats = relay.stats();
        let s = stats.stream(KEY)?;
        (s.viewers >= 1).then_some(s.video_packets_in - 1)
    })
    .await;

    let status = publisher.expect_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "publisher failed:\n{}", publisher.log());
    let status = recorder.expect_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "recorder failed:\n{}", recorder.log());
    assert!(relay.stats().streams.is_empty(), "stream not removed");

    let probe = ffprobe_json(&out);
    let video = probe_stream(&probe, "video");
    let audio = probe_stream(&probe, "audio");
    assert_eq!(video["codec_name"], "h264", "{probe:#}");
    assert_eq!(video["width"], 320);
    assert_eq!(video["height"], 240);
    assert_eq!(audio["codec_name"], "aac", "{probe:#}");

    let published = 6 * 30;
    let expected_min = (published - frames_before_join) * 9 / 10;
    let got = packet_count(video);
    assert!(
        got >= expected_min && got <= published,
        "recorded {got} video packets; {frames_before_join} of {published} were published \
         before the recorder joined, so expected at least {expected_min}"
    );
    // 48 kHz AAC: about 47 packets per second for the ~5 s recorded.
    let audio_packets = packet_count(audio);
    assert!(audio_packets >= 100, "only {audio_packets} audio packets");
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn late_player_gets_headers_then_a_keyframe_then_live_frames() {
    require_ffmpeg();
    let relay = relay().await;
    let dir = tempfile::tempdir().unwrap();
    let url = rtmp_url(relay.local_addr, "test");
    let mut publisher = ChildGuard::spawn("publisher", ffmpeg_publisher(&url, 5), dir.path());
    wait_for_video(&relay, KEY, 2, &mut publisher).await;
    let first_video = Instant::now();
    // Join 2.5 s in: mid-GOP (keyframes every second), long after the sequence headers.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut player = RtmpPlayer::connect(
        &player_url(relay.local_addr, "test"),
        Duration::from_secs(5),
    )
    .await
    .expect("player connects");
    let joined_after = first_video.elapsed();

    let mut events = Vec::new();
    while let Some(event) = next(&mut player, Duration::from_secs(10)).await {
        events.push(event);
    }
    assert!(publisher
        .expect_exit(Duration::from_secs(10))
        .await
        .success());

    // Metadata and both sequence headers come before any frame.
    let first_frame = events
        .iter()
        .position(|e| !e.is_sequence_header() && !matches!(e, PlayerEvent::Metadata(_)))
        .expect("no frames received");
    let head = &events[..first_frame];
    assert!(
        matches!(head.first(), Some(PlayerEvent::Metadata(_))),
        "{head:?}"
    );
    assert!(
        head.iter().any(|e| matches!(e, PlayerEvent::Video { .. })),
        "no video sequence header before the first frame"
    );
    assert!(
        head.iter().any(|e| matches!(e, PlayerEvent::Audio { .. })),
        "no audio sequence header before the first frame"
    );

    // The first picture is a keyframe from the GOP cache, not the stream's first keyframe.
    let first_picture = events
        .iter()
        .find(|e| video_ts(e).is_some() && !e.is_sequence_header())
        .unwrap();
    assert!(
        first_picture.is_keyframe(),
        "first picture is not a keyframe"
    );
    let ts = video_ts(first_picture).unwrap();
    let joined_ms = joined_after.as_millis() as u32;
    assert!(
        ts >= 1000 && ts <= joined_ms + 1000,
        "first keyframe at {ts} ms for a player joining ~{joined_ms} ms in"
    );

    // Timestamps never go backwards within each kind.
    for kind in ["video", "audio"] {
        let stamps: Vec<u32> = events
            .iter()
            .filter_map(|e| match (kind, e) {
                ("video", PlayerEvent::Video { timestamp_ms, .. }) => Some(*timestamp_ms),
                ("audio", PlayerEvent::Audio { timestamp_ms, .. }) => Some(*timestamp_ms),
                _ => None,
            })
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "{kind} timestamps go backwards: {stamps:?}"
        );
    }
    let pictures = events
        .iter()
        .filter(|e| video_ts(e).is_some() && !e.is_sequence_header())
        .count();
    assert!(pictures >= 60, "only {pictures} video frames after joining");
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn second_publisher_on_a_key_is_rejected_and_the_first_continues() {
    require_ffmpeg();
    let relay = relay().await;
    let dir = tempfile::tempdir().unwrap();
    let url = rtmp_url(relay.local_addr, "test");
    let mut first = ChildGuard::spawn("first", ffmpeg_publisher(&url, 8), dir.path());
    wait_for_video(&relay, KEY, 2, &mut first).await;
    let owner = relay.stats().stream(KEY).unwrap().publisher;

    let mut player = RtmpPlayer::connect(
        &player_url(relay.local_addr, "test"),
        Duration::from_secs(5),
    )
    .await
    .expect("player connects");

    let mut second = ChildGuard::spawn("second", ffmpeg_publisher(&url, 5), dir.path());
    let status = second.expect_exit(Duration::from_secs(5)).await;
    assert!(
        !status.success(),
        "second publisher was accepted:\n{}",
        second.log()
    );
    assert!(
        second.log().contains("stream key already in use"),
        "rejection reason not reported:\n{}",
        second.log()
    );
    assert_eq!(relay.stats().stream(KEY).unwrap().publisher, owner);

    // The player keeps receiving the first publisher's live frames in real time.
    let mut stamps = Vec::new();
    let check_from = Instant::now();
    while check_from.elapsed() < Duration::from_millis(1500) {
        let event = next(&mut player, Duration::from_secs(2))
            .await
            .expect("stream ended while the first publisher was live");
        if let (Some(ts), false) = (video_ts(&event), event.is_sequence_header()) {
            stamps.push(ts);
        }
    }
    assert!(
        stamps.len() >= 20,
        "only {} frames in 1.5 s after the rejection",
        stamps.len()
    );
    let span = stamps[stamps.len() - 1] - stamps[0];
    assert!(span >= 1000, "stream advanced only {span} ms in 1.5 s");
    assert!(
        first.try_wait().is_none(),
        "first publisher died:\n{}",
        first.log()
    );
    relay.shutdown();
}

/// Opens a raw connection, sends `bytes`, and waits for the relay to close it.
async fn send_raw(addr: SocketAddr, bytes: &[u8], handshake: bool, close_write: bool) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    if handshake {
        client_handshake(&mut socket).await.expect("handshake");
    }
    // The relay may close before reading everything: a failed write is fine.
    let _ = socket.write_all(bytes).await;
    if close_write {
        let _ = socket.shutdown().await;
    }
    let mut buf = [0u8; 4096];
    let closed = timeout(Duration::from_secs(5), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "relay kept a hostile connection open");
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
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

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_closes_only_that_connection() {
    require_ffmpeg();
    let relay = relay().await;
    let addr = relay.local_addr;

    // Not RTMP at all.
    send_raw(addr, &noise(4096, 1), false, false).await;
    send_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, false).await;
    // Right version byte, then a handshake cut short.
    let mut truncated = vec![3u8];
    truncated.extend(noise(700, 2));
    send_raw(addr, &truncated, false, true).await;
    // A valid handshake followed by garbage chunks.
    for seed in 3..8 {
        send_raw(addr, &noise(2048, seed), true, false).await;
    }
    // A chunk continuing a message on a chunk stream that never started one.
    send_raw(addr, &[0xc3, 1, 2, 3, 4], true, false).await;
    // A message whose length shrinks mid-message (header type 1 after a partial chunk).
    let mut shrinking = vec![0x03, 0, 0, 0, 0, 0, 200, 20, 0, 0, 0, 0];
    shrinking.extend([0x05; 128]);
    shrinking.extend([0x43, 0, 0, 0, 0, 0, 10, 20]);
    shrinking.extend([0x05; 10]);
    send_raw(addr, &shrinking, true, false).await;
    // An absurd chunk size followed by a huge message header.
    let mut huge = vec![
        0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
    ];
    huge.extend([0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]);
    huge.extend(noise(1000, 9));
    send_raw(addr, &huge, true, true).await;

    // The relay still serves a normal publisher and player.
    let dir = tempfile::tempdir().unwrap();
    let url = rtmp_url(addr, "test");
    let mut publisher = ChildGuard::spawn("publisher", ffmpeg_publisher(&url, 3), dir.path());
    wait_for_video(&relay, KEY, 2, &mut publisher).await;
    let mut player = RtmpPlayer::connect(&player_url(addr, "test"), Duration::from_secs(5))
        .await
        .expect("player connects after hostile peers");
    let mut keyframes = 0;
    while let Some(event) = next(&mut player, Duration::from_secs(10)).await {
        keyframes += event.is_keyframe() as u32;
    }
    assert!(keyframes >= 1, "no keyframe received");
    assert!(publisher
        .expect_exit(Duration::from_secs(10))
        .await
        .success());
    assert!(relay.stats().streams.is_empty());
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn player_that_stops_reading_is_dropped_without_stalling_others() {
    let relay = relay().await;
    let addr = relay.local_addr;
    let mut publisher = TestPublisher::connect(addr, "live", "test")
        .await
        .expect("publisher connects");
    let url = player_url(addr, "test");
    let _stalled = RtmpPlayer::connect(&url, Duration::from_secs(5))
        .await
        .expect("stalled player connects");
    let mut reader = RtmpPlayer::connect(&url, Duration::from_secs(5))
        .await
        .expect("reading player connects");

    // The reading player records how late each frame arrives relative to its timestamp.
    let start = Instant::now();
    let reading = tokio::spawn(async move {
        let mut frames = 0u32;
        let mut worst_lag_ms = 0i64;
        while let Ok(Ok(Some(event))) = timeout(Duration::from_secs(5), reader.next_event()).await {
            if let Some(ts) = video_ts(&event) {
                frames += 1;
                let lag = start.elapsed().as_millis() as i64 - ts as i64;
                worst_lag_ms = worst_lag_ms.max(lag);
            }
        }
        (frames, worst_lag_ms)
    });

    // 32 KiB frames at 250 per second (8 MB/s), for up to 10 s: far more than the socket
    // buffers and the stalled player's queue can hold. Stop half a second after the relay
    // drops the stalled player.
    let mut sent = 0u32;
    let mut dropped_at = None;
    let mut worst_send_delay = Duration::ZERO;
    for i in 0..2500u32 {
        let ts = i * 4;
        let due = start + Duration::from_millis(ts as u64);
        tokio::time::sleep_until(due.into()).await;
        publisher
            .send_video(ts, video_tag(i % 100 == 0, 32 * 1024))
            .await
            .expect("publisher blocked or disconnected");
        sent += 1;
        worst_send_delay = worst_send_delay.max(due.elapsed());
        let viewers = relay.stats().stream(KEY).map(|s| s.viewers);
        match dropped_at {
            None if viewers == Some(1) => dropped_at = Some(ts),
            Some(at) if ts >= at + 500 => break,
            _ => {}
        }
    }
    let dropped_at = dropped_at.expect("the stalled player was never disconnected");
    assert!(
        worst_send_delay < Duration::from_millis(500),
        "publisher was held up {worst_send_delay:?} (stalled player dropped at {dropped_at} ms)"
    );
    drop(publisher);

    let (frames, worst_lag_ms) = reading.await.unwrap();
    assert_eq!(frames, sent, "the reading player lost frames");
    assert!(
        worst_lag_ms < 1500,
        "the reading player fell {worst_lag_ms} ms behind (stalled player dropped at {dropped_at} ms)"
    );
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn play_of_unknown_key_and_busy_port_give_clear_errors() {
    let relay = relay().await;
    let err = RtmpPlayer::connect(
        &player_url(relay.local_addr, "nobody"),
        Duration::from_secs(5),
    )
    .await
    .expect_err("playing an unpublished key must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("StreamNotFound"), "{msg}");
    assert!(!msg.contains("nobody"), "stream key leaked: {msg}");

    let err = start_relay(RelayConfig::new(relay.local_addr))
        .await
        .expect_err("second bind must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("already in use") && msg.contains("--listen"),
        "{msg}"
    );

    relay.shutdown();
    let port = free_port();
    let refused = RtmpPlayer::connect(
        &RtmpUrl::parse(&format!("rtmp://127.0.0.1:{port}/live/x")).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .expect_err("nothing listens there");
    assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
}
