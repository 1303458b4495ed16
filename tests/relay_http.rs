//! The relay's HTTP side and its server hardening against real clients: ffmpeg publishing,
//! ffmpeg/ffprobe and a raw client playing over HTTP-FLV and RTMP, the stats API, publish and
//! play keys, slow viewers, hostile HTTP and RTMP peers and connection floods.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use onair::publish::url::RtmpUrl;
use onair::qa::player::RtmpPlayer;
use onair::relay::{start_relay, RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const KEY: &str = "live/test";

/// No publisher grace: these tests check what viewers see the moment a publisher goes away
/// (tests/relay_grace.rs covers the grace period).
fn config() -> RelayConfig {
    RelayConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        publisher_grace: Duration::ZERO,
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap())
    }
}

async fn relay(config: RelayConfig) -> (RelayHandle, SocketAddr) {
    init_tracing();
    let relay = start_relay(config).await.expect("start relay");
    let http = relay.http_addr.expect("HTTP is on");
    (relay, http)
}

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_publish_plays_over_http_flv_and_rtmp_with_stats() {
    require_ffmpeg();
    // Merged writes on, as `onair relay` runs by default.
    let (relay, http) = relay(RelayConfig {
        merge_window: Duration::from_millis(30),
        ..config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rtmp = rtmp_url(relay.local_addr, "test");
    let flv_url = format!("http://{http}/live/test.flv");
    let mut publisher = ChildGuard::spawn("publisher", ffmpeg_publisher(&rtmp, 8), dir.path());
    wait_for_video(&relay, KEY, 2, &mut publisher).await;
    // Join mid-GOP (keyframes every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut download = FlvDownload::open(http, "/live/test.flv")
        .await
        .expect("HTTP-FLV request");
    let head = &download.head;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("video/x-flv"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("access-control-allow-origin"), Some("*"));
    assert!(head
        .header("cache-control")
        .is_some_and(|v| v.contains("no-cache")));

    let http_out = dir.path().join("http.flv");
    let rtmp_out = dir.path().join("rtmp.flv");
    let mut http_recorder = ChildGuard::spawn(
        "http-recorder",
        ffmpeg_recorder(&flv_url, &http_out),
        dir.path(),
    );
    let mut rtmp_recorder = ChildGuard::spawn(
        "rtmp-recorder",
        ffmpeg_recorder(&rtmp, &rtmp_out),
        dir.path(),
    );
    let probe = {
        let url = flv_url.clone();
        tokio::task::spawn_blocking(move || ffprobe_url(&url, Duration::from_secs(10)))
    };

    // Read tags while the others join.
    let reader = tokio::spawn(async move {
        let mut tags = Vec::new();
        while let Ok(Ok(Some(tag))) = timeout(Duration::from_secs(5), download.next_tag()).await {
            tags.push(tag);
        }
        (tags, download.ended_cleanly(), download.bytes)
    });

    wait_until("three viewers", Duration::from_secs(10), || {
        let stats = relay.stats();
        let s = stats.stream(KEY)?;
        (s.http_viewers >= 2 && s.rtmp_viewers >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let api = http_json(http, "/api/streams").await;
    let stream = &api["streams"][0];
    assert_eq!(stream["key"], KEY, "{api:#}");
    assert_eq!(stream["flv_path"], "/live/test.flv");
    assert_eq!(stream["video"]["codec"], "h264");
    assert_eq!(stream["video"]["width"], 320);
    assert_eq!(stream["video"]["height"], 240);
    assert_eq!(stream["video"]["fps"], 30.0);
    assert_eq!(stream["audio"]["codec"], "aac");
    assert_eq!(stream["audio"]["sample_rate"], 48000);
    assert_eq!(stream["audio"]["channels"], 1);
    assert!(stream["rtmp_viewers"].as_u64() >= Some(1), "{stream:#}");
    assert!(stream["http_viewers"].as_u64() >= Some(2), "{stream:#}");
    assert!(
        stream["bitrate_in_kbps"].as_f64() > Some(20.0),
        "{stream:#}"
    );
    assert!(
        stream["bitrate_out_kbps"].as_f64() > Some(20.0),
        "{stream:#}"
    );
    assert!(stream["bytes_out"].as_u64() > Some(10_000), "{stream:#}");
    assert!(stream["gop_cache_packets"].as_u64() > Some(0), "{stream:#}");
    assert!(stream["uptime_secs"].as_f64() > Some(1.0), "{stream:#}");
    assert!(stream["publisher"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));

    let probe = probe.await.unwrap();
    let video = probe_stream(&probe, "video");
    assert_eq!(video["codec_name"], "h264", "{probe:#}");
    assert_eq!(video["width"], 320);
    assert_eq!(probe_stream(&probe, "audio")["codec_name"], "aac");

    assert!(publisher
        .expect_exit(Duration::from_secs(20))
        .await
        .success());
    for (recorder, out) in [
        (&mut http_recorder, &http_out),
        (&mut rtmp_recorder, &rtmp_out),
    ] {
        let status = recorder.expect_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "recorder failed:\n{}", recorder.log());
        let probe = ffprobe_json(out);
        let video = probe_stream(&probe, "video");
        assert_eq!(video["codec_name"], "h264");
        assert_eq!(video["height"], 240);
        assert!(packet_count(video) >= 90, "{probe:#}");
        assert!(packet_count(probe_stream(&probe, "audio")) >= 100);
    }

    let (tags, ended_cleanly, bytes) = reader.await.unwrap();
    assert!(
        ended_cleanly,
        "the chunked body did not end with a final chunk"
    );
    assert!(bytes > 50_000, "only {bytes} bytes");
    // Script data, then both sequence headers, then a keyframe, before anything else.
    assert_eq!(tags[0].tag_type, 18, "first tag is not onMetaData");
    let first_media = tags
        .iter()
        .position(|t| t.tag_type != 18 && !t.is_sequence_header())
        .expect("no media tags");
    assert!(tags[..first_media]
        .iter()
        .any(|t| t.tag_type == 9 && t.is_sequence_header()));
    assert!(tags[..first_media]
        .iter()
        .any(|t| t.tag_type == 8 && t.is_sequence_header()));
    let first_video = tags[first_media..]
        .iter()
        .find(|t| t.tag_type == 9)
        .expect("no video");
    assert!(
        first_video.is_keyframe(),
        "first video tag after the headers is not a keyframe"
    );
    assert!(first_video.timestamp >= 1000, "GOP cache not used");
    for kind in [8u8, 9] {
        let stamps: Vec<u32> = tags[first_media..]
            .iter()
            .filter(|t| t.tag_type == kind)
            .map(|t| t.timestamp)
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "{kind}: {stamps:?}"
        );
    }
    let frames = tags.iter().filter(|t| t.tag_type == 9).count();
    assert!(frames >= 150, "only {frames} video tags");
    assert!(relay.stats().streams.is_empty());
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_errors_preflight_and_head() {
    let (relay, http) = relay(config()).await;
    let (head, body) = http_get(http, "/live/nobody.flv").await.unwrap();
    assert_eq!(head.status, 404);
    assert!(String::from_utf8_lossy(&body).contains("nothing is being published"));
    assert_eq!(http_get(http, "/nowhere").await.unwrap().0.status, 404);
    assert_eq!(http_get(http, "/a/b/c.flv").await.unwrap().0.status, 404);
    let (head, body) = http_get(http, "/").await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("/mpegts.js"));
    let api = http_json(http, "/api/streams").await;
    assert_eq!(api["streams"].as_array().map(Vec::len), Some(0));

    let (head, _, _) = http_request(http, "OPTIONS", "/live/x.flv").await.unwrap();
    assert_eq!(head.status, 204);
    assert_eq!(head.header("access-control-allow-origin"), Some("*"));
    assert!(head
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("GET")));
    let (head, _, _) = http_request(http, "POST", "/api/streams").await.unwrap();
    assert_eq!(head.status, 405);
    let (head, _, _) = http_request(http, "HEAD", "/live/x.flv").await.unwrap();
    assert_eq!(head.status, 404);
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_and_play_keys_accept_and_refuse() {
    require_ffmpeg();
    let mut cfg = config();
    cfg.publish_keys = vec!["s3cret".into(), "other".into()];
    cfg.play_key = Some("watch".into());
    let (relay, http) = relay(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("rtmp://127.0.0.1:{}/live", relay.local_addr.port());

    // No key, then a wrong one: refused with a reason ffmpeg shows.
    for (i, url) in [format!("{base}/cam"), format!("{base}/cam?key=guess")]
        .iter()
        .enumerate()
    {
        let mut refused =
            ChildGuard::spawn(&format!("refused{i}"), ffmpeg_publisher(url, 3), dir.path());
        let status = refused.expect_exit(Duration::from_secs(10)).await;
        assert!(
            !status.success(),
            "publisher without a valid key was accepted"
        );
        assert!(
            refused.log().contains("stream key not allowed"),
            "reason not shown:\n{}",
            refused.log()
        );
    }
    assert!(relay.stats().streams.is_empty());

    // NAME?key=KEY publishes as live/cam, listed; the key itself as name is accepted, unlisted.
    let mut cam = ChildGuard::spawn(
        "cam",
        ffmpeg_publisher(&format!("{base}/cam?key=s3cret"), 8),
        dir.path(),
    );
    wait_for_video(&relay, "live/cam", 2, &mut cam).await;
    let mut secret = ChildGuard::spawn(
        "secret",
        ffmpeg_publisher(&format!("{base}/other"), 8),
        dir.path(),
    );
    wait_for_video(&relay, "live/other", 2, &mut secret).await;

    // Playback needs the play key, over RTMP and HTTP, and so does the stats API.
    let err = RtmpPlayer::connect(
        &RtmpUrl::parse(&format!("{base}/cam")).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .expect_err("RTMP play without the play key");
    assert!(format!("{err:#}").contains("play key"), "{err:#}");
    let mut player = RtmpPlayer::connect(
        &RtmpUrl::parse(&format!("{base}/cam?key=watch")).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .expect("RTMP play with the play key");
    let event = timeout(Duration::from_secs(5), player.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(event.is_some());
    assert_eq!(http_get(http, "/live/cam.flv").await.unwrap().0.status, 403);
    assert_eq!(
        http_get(http, "/live/cam.flv?key=nope")
            .await
            .unwrap()
            .0
            .status,
        403
    );
    assert_eq!(http_get(http, "/api/streams").await.unwrap().0.status, 403);
    let mut download = FlvDownload::open(http, "/live/cam.flv?key=watch")
        .await
        .unwrap();
    assert_eq!(download.head.status, 200);
    let tag = timeout(Duration::from_secs(5), download.next_tag())
        .await
        .unwrap()
        .unwrap();
    assert!(tag.is_some());

    let api = http_json(http, "/api/streams?key=watch").await;
    let text = api.to_string();
    assert!(!text.contains("other"), "a publish key leaked: {text}");
    let streams = api["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    let listed: Vec<_> = streams.iter().filter(|s| s["listed"] == true).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["key"], "live/cam");
    relay.shutdown();
}

/// A synthetic publisher sending about 2.5 Mbit/s times `scale`: 30 fps video (keyframe every
/// second) and 47 audio frames per second, for `seconds`. Returns the video frames sent.
async fn publish_synthetic(addr: SocketAddr, seconds: u32, scale: usize) -> u32 {
    let mut publisher = TestPublisher::connect(addr, "live", "test")
        .await
        .expect("publisher connects");
    let start = Instant::now();
    let mut frames = 0;
    let mut next_audio = 0u32;
    for i in 0..seconds * 30 {
        let ts = i * 1000 / 30;
        tokio::time::sleep_until((start + Duration::from_millis(ts as u64)).into()).await;
        let key = i % 30 == 0;
        let size = if key { 40_000 } else { 9_000 } * scale;
        publisher
            .send_video(ts, video_tag(key, size))
            .await
            .expect("publisher blocked");
        frames += 1;
        while next_audio <= ts {
            publisher
                .send_audio(
                    next_audio,
                    bytes::Bytes::from(vec![0xaf, 0x01, 0x21, 0x10, 0x04]),
                )
                .await
                .unwrap();
            next_audio += 21;
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_viewers_do_not_reduce_what_normal_viewers_receive() {
    let (relay, http) = relay(config()).await;
    let addr = relay.local_addr;
    let publishing = tokio::spawn(publish_synthetic(addr, 8, 1));
    wait_until("the stream", Duration::from_secs(5), || {
        relay.stats().stream(KEY).map(|_| ())
    })
    .await;

    // Normal viewers: one over HTTP-FLV, one over RTMP, each counting frames and lag.
    let start = Instant::now();
    let mut download = FlvDownload::open(http, "/live/test.flv").await.unwrap();
    let normal_http = tokio::spawn(async move {
        let mut frames = 0u32;
        let mut worst_lag = 0i64;
        let mut first_ts = None;
        while let Ok(Ok(Some(tag))) = timeout(Duration::from_secs(5), download.next_tag()).await {
            if tag.tag_type == 9 {
                frames += 1;
                let first = *first_ts.get_or_insert(tag.timestamp as i64);
                let lag = start.elapsed().as_millis() as i64 - (tag.timestamp as i64 - first);
                worst_lag = worst_lag.max(lag);
            }
        }
        (frames, worst_lag, download.bytes)
    });
    let url = RtmpUrl::parse(&rtmp_url(addr, "test")).unwrap();
    let mut player = RtmpPlayer::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let normal_rtmp = tokio::spawn(async move {
        let mut frames = 0u32;
        while let Ok(Ok(Some(event))) = timeout(Duration::from_secs(5), player.next_event()).await {
            if matches!(event, onair::qa::player::PlayerEvent::Video { .. }) {
                frames += 1;
            }
        }
        frames
    });
    // Slow viewers read at 10 % of the stream's rate (2.5 Mbit/s = 312 kB/s).
    let slow_http = tokio::spawn(slow_http_reader(
        http,
        "/live/test.flv",
        31_000,
        Duration::from_secs(9),
    ));
    let slow_rtmp = tokio::spawn(async move {
        let mut player = RtmpPlayer::connect(&url, Duration::from_secs(5))
            .await
            .unwrap();
        let mut bytes = 0usize;
        let begin = Instant::now();
        while begin.elapsed() < Duration::from_secs(9) {
            match timeout(Duration::from_secs(2), player.next_event()).await {
                Ok(Ok(Some(onair::qa::player::PlayerEvent::Video { data, .. }))) => {
                    bytes += data.len();
                    // Hold the reader back so it consumes ~31 kB/s.
                    tokio::time::sleep(Duration::from_millis((data.len() / 31) as u64)).await;
                }
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        bytes
    });

    let sent = publishing.await.unwrap();
    let (http_frames, worst_lag, http_bytes) = normal_http.await.unwrap();
    let rtmp_frames = normal_rtmp.await.unwrap();
    let slow_http_bytes = slow_http.await.unwrap().unwrap_or(0);
    let slow_rtmp_bytes = slow_rtmp.await.unwrap();
    // Every frame, give or take the ones published before a viewer joined.
    assert!(
        http_frames + 3 >= sent && http_frames <= sent + 30,
        "HTTP viewer got {http_frames} of {sent} frames"
    );
    assert!(
        rtmp_frames + 3 >= sent && rtmp_frames <= sent + 30,
        "RTMP viewer got {rtmp_frames} of {sent} frames"
    );
    assert!(
        worst_lag < 1500,
        "normal HTTP viewer fell {worst_lag} ms behind"
    );
    assert!(http_bytes > 2_000_000, "{http_bytes}");
    // The slow ones really were slow.
    assert!(
        slow_http_bytes < http_bytes / 4,
        "{slow_http_bytes} vs {http_bytes}"
    );
    assert!(
        slow_rtmp_bytes < http_bytes as usize / 4,
        "{slow_rtmp_bytes}"
    );
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn small_queue_drops_a_stalled_http_viewer_only() {
    let mut cfg = config();
    cfg.player_queue = 32;
    let (relay, http) = relay(cfg).await;
    // 25 Mbit/s: more than socket buffers can absorb from a viewer that never reads.
    let publishing = tokio::spawn(publish_synthetic(relay.local_addr, 6, 10));
    wait_until("the stream", Duration::from_secs(5), || {
        relay.stats().stream(KEY).map(|_| ())
    })
    .await;
    // Connects, sends its request, and never reads.
    let (_, _stalled, _) = http_request(http, "GET", "/live/test.flv").await.unwrap();
    let mut download = FlvDownload::open(http, "/live/test.flv").await.unwrap();
    let reading = tokio::spawn(async move {
        let mut frames = 0u32;
        while let Ok(Ok(Some(tag))) = timeout(Duration::from_secs(5), download.next_tag()).await {
            frames += (tag.tag_type == 9) as u32;
        }
        frames
    });
    wait_until(
        "the stalled viewer to be dropped",
        Duration::from_secs(10),
        || {
            let stats = relay.stats();
            (stats.stream(KEY)?.http_viewers == 1).then_some(())
        },
    )
    .await;
    let sent = publishing.await.unwrap();
    let frames = reading.await.unwrap();
    assert!(frames + 3 >= sent, "reader got {frames} of {sent}");
    relay.shutdown();
}

/// Reads until the peer closes; true if it closed within `limit`.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    timeout(limit, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_peers_and_floods_are_refused_while_others_are_served() {
    let mut cfg = config();
    cfg.max_connections = 40;
    cfg.handshake_timeout = Duration::from_millis(700);
    cfg.idle_timeout = Duration::from_millis(1500);
    let (relay, http) = relay(cfg).await;
    let addr = relay.local_addr;
    let publishing = tokio::spawn(publish_synthetic(addr, 9, 1));
    wait_until("the stream", Duration::from_secs(5), || {
        relay.stats().stream(KEY).map(|_| ())
    })
    .await;
    let mut download = FlvDownload::open(http, "/live/test.flv").await.unwrap();
    let watching = tokio::spawn(async move {
        let mut frames = 0u32;
        while let Ok(Ok(Some(tag))) = timeout(Duration::from_secs(5), download.next_tag()).await {
            frames += (tag.tag_type == 9) as u32;
        }
        frames
    });

    // HTTP: garbage, an oversized head, a request that never finishes (slowloris).
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x10, 0, 0, 0, 0, b'\r', b'\n', b'\r', b'\n',
    ])
    .await
    .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    let mut s = TcpStream::connect(http).await.unwrap();
    let _ = s.write_all(&vec![b'A'; 20_000]).await;
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /live/test.flv HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "slowloris kept open"
    );

    // RTMP: a peer that connects and stalls, one that handshakes and then idles, an oversize
    // message from a non-publisher, and deeply nested AMF.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "stalled handshake kept open"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut s).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(4)).await,
        "idle peer kept open"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut s).await.unwrap();
    let _ = s
        .write_all(&[0x04, 0, 0, 0, 0x0f, 0xff, 0xff, 9, 1, 0, 0, 0])
        .await;
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "oversize message accepted"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut s).await.unwrap();
    let mut amf = vec![0x02, 0, 7];
    amf.extend_from_slice(b"connect");
    for _ in 0..5000 {
        amf.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    amf.truncate(60_000);
    let mut msg = vec![0x03, 0, 0, 0];
    msg.extend_from_slice(&(amf.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&[20, 0, 0, 0, 0]);
    for (i, piece) in amf.chunks(128).enumerate() {
        if i > 0 {
            msg.push(0xC3);
        }
        msg.extend_from_slice(piece);
    }
    let _ = s.write_all(&msg).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "deep AMF accepted"
    );

    // A flood: far more sockets than the limit. Extra ones are closed at once.
    let mut flood = Vec::new();
    for _ in 0..80 {
        if let Ok(s) = TcpStream::connect(addr).await {
            flood.push(s);
        }
    }
    let mut closed = 0;
    for s in flood.iter_mut() {
        let mut b = [0u8; 1];
        if matches!(
            timeout(Duration::from_millis(20), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ) {
            closed += 1;
        }
    }
    assert!(closed >= 30, "only {closed} of 80 flood sockets refused");
    assert!(relay.stats().refused_connections >= 30);
    drop(flood);

    // Everyone legitimate is still served: the watcher never stopped, a new player joins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = FlvDownload::open(http, "/live/test.flv").await.unwrap();
    assert_eq!(late.head.status, 200);
    let first = timeout(Duration::from_secs(5), late.next_tag())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some());
    let sent = publishing.await.unwrap();
    let frames = watching.await.unwrap();
    assert!(
        frames + 3 >= sent,
        "watcher got {frames} of {sent} frames during the attacks"
    );
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_command_prints_urls_and_status_lines() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (rtmp_port, http_port) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onair-relay"));
    cmd.args(["--listen", &format!("127.0.0.1:{rtmp_port}")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--key", "s3cret", "--stats-every", "1"]);
    let mut relay = ChildGuard::spawn("onair-relay", cmd, dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{rtmp_port}").parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let mut publisher = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.is_none() {
        assert!(
            Instant::now() < deadline,
            "relay did not start:\n{}",
            relay.log()
        );
        assert!(relay.try_wait().is_none(), "relay exited:\n{}", relay.log());
        publisher = TestPublisher::connect(addr, "live", "cam?key=s3cret")
            .await
            .ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut publisher = publisher.unwrap();
    // Refused without the key, with the reason.
    let refused = TestPublisher::connect(addr, "live", "other").await;
    assert!(refused.is_err());
    for i in 0..40u32 {
        publisher
            .send_video(i * 33, video_tag(i % 30 == 0, 2000))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let api = http_json(http, "/api/streams").await;
    assert_eq!(api["streams"][0]["key"], "live/cam");
    let log = relay.log();
    assert!(log.contains("publish:   rtmp://127.0.0.1:"), "{log}");
    assert!(log.contains("watch:     http://127.0.0.1:"), "{log}");
    assert!(
        log.contains("relay: 1 stream, 0 viewers"),
        "no status line:\n{log}"
    );
    assert!(
        log.contains("stream key not allowed"),
        "refusal not logged:\n{log}"
    );
    assert!(!log.contains("s3cret"), "a publish key was printed:\n{log}");
}
