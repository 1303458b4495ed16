//! The latency stamp and `onair probe`: the stamp survives real encoders, bitrates and
//! scaling; the probe measures our own stream through the embedded relay and HTTP-FLV, and
//! reads recordings with and without the SEI.

mod support;
use support::{n, probe};

use onair::capture::test_card::TestCard;
use onair::clock::MediaClock;
use onair::encode::VideoEncoderSettings;
use onair::encode::{ffmpeg_hw::FfmpegVideoEncoder, x264::X264Encoder, Backend, VideoEncoder};
use onair::media::{Packet, VideoFrame};
use onair::qa::probe::{read_barcode_in, H264Decoder};
use onair::qa::stamp::{self, Stamp};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{free_port, onair, wait_for_port, ChildGuard};

const BASE_MS: u64 = 1_764_160_000_000;

fn settings(w: u32, h: u32, kbps: u32) -> VideoEncoderSettings {
    VideoEncoderSettings {
        width: w,
        height: h,
        bitrate_kbps: kbps,
        ..Default::default()
    }
}

/// Encodes `n` stamped test-card frames; returns the packets and the stamp of each pts.
fn encode_stamped(
    encoder: &mut dyn VideoEncoder,
    w: u32,
    h: u32,
    n: u64,
) -> (Vec<Packet>, HashMap<i64, Stamp>) {
    let card = TestCard::new(MediaClock::start(), w, h, 30)
        .unwrap()
        .unpaced();
    let mut packets = Vec::new();
    let mut stamps = HashMap::new();
    for i in 0..n {
        let pts = (i * 1000 / 30) as i64;
        let mut frame: VideoFrame = card.render(i, pts);
        // Times that vary in every bit position over the run, not just the low ones.
        let s = Stamp {
            capture_unix_ms: BASE_MS + i * 33 + (i % 7) * 0x1_0000_0000,
            frame: (i as u32).wrapping_mul(0x9e37_79b9),
        };
        stamp::draw(&mut frame, &s);
        encoder.attach_sei(stamp::sei_payload(&s).to_vec());
        stamps.insert(pts, s);
        packets.extend(encoder.encode(&frame).unwrap());
    }
    packets.extend(encoder.flush().unwrap());
    (packets, stamps)
}

/// Decodes the packets; calls `check` with each picture and the stamp it should carry.
fn decode_all(
    avc_config: &[u8],
    packets: &[Packet],
    stamps: &HashMap<i64, Stamp>,
    mut check: impl FnMut(&ffmpeg_next::frame::Video, &Stamp),
) -> usize {
    let mut decoder = H264Decoder::new().unwrap();
    decoder.configure(avc_config).unwrap();
    let mut pictures = Vec::new();
    for p in packets {
        pictures.extend(decoder.decode(&p.data, p.pts_ms).unwrap());
    }
    pictures.extend(decoder.flush());
    for pic in &pictures {
        let pts = pic.pts().expect("decoded pictures keep their pts");
        check(pic, &stamps[&pts]);
    }
    pictures.len()
}

/// Every packet carries its frame's SEI, and the barcode reads back exactly on ≥ 99 %.
fn assert_round_trip(encoder: &mut dyn VideoEncoder, w: u32, h: u32) {
    let n = 150;
    let (packets, stamps) = encode_stamped(encoder, w, h, n);
    assert_eq!(packets.len() as u64, n);
    for p in &packets {
        assert_eq!(
            stamp::find_in_avcc(&p.data),
            Some(stamps[&p.pts_ms]),
            "SEI of the packet at {} ms",
            p.pts_ms
        );
    }
    let mut exact = 0;
    let decoded = decode_all(&encoder.header().avc_config, &packets, &stamps, |pic, s| {
        assert_eq!((pic.width(), pic.height()), (w, h));
        if read_barcode_in(pic) == Some(*s) {
            exact += 1;
        }
    });
    assert_eq!(decoded as u64, n);
    eprintln!("{}: barcode exact on {exact} of {n} frames", encoder.name());
    assert!(
        exact as f64 >= 0.99 * n as f64,
        "{}: barcode exact on {exact} of {n} frames at {w}x{h}",
        encoder.name()
    );
}

#[test]
fn stamp_survives_x264_at_500_kbps() {
    let s = settings(640, 360, 500);
    let mut enc = X264Encoder::open(&s).unwrap();
    assert_round_trip(&mut enc, 640, 360);
}

#[test]
fn stamp_survives_ffmpeg_libx264_at_500_kbps() {
    let s = settings(640, 360, 500);
    let mut enc = FfmpegVideoEncoder::open(Backend::FfmpegX264, &s).unwrap();
    assert_round_trip(&mut enc, 640, 360);
}

#[test]
fn stamp_survives_720p_at_500_kbps_scaled_to_360p() {
    use ffmpeg_next::format::Pixel;
    use ffmpeg_next::software::scaling::{Context, Flags};
    let s = settings(1280, 720, 500);
    let mut enc = X264Encoder::open(&s).unwrap();
    let n = 120;
    let (packets, stamps) = encode_stamped(&mut enc, 1280, 720, n);
    let mut scaler = Context::get(
        Pixel::YUV420P,
        1280,
        720,
        Pixel::YUV420P,
        640,
        360,
        Flags::BILINEAR,
    )
    .unwrap();
    let mut exact = 0;
    let mut small = ffmpeg_next::frame::Video::empty();
    let decoded = decode_all(&enc.header().avc_config, &packets, &stamps, |pic, s| {
        scaler.run(pic, &mut small).unwrap();
        assert_eq!((small.width(), small.height()), (640, 360));
        if read_barcode_in(&small) == Some(*s) {
            exact += 1;
        }
    });
    assert_eq!(decoded as u64, n);
    eprintln!("720p→360p: barcode exact on {exact} of {n} frames");
    assert!(
        exact as f64 >= 0.99 * n as f64,
        "barcode exact on {exact} of {n} frames after 720p→360p"
    );
}

// ---------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------

/// Starts `onair live --stamp` (640x360) for `secs` seconds with the extra `args`.
fn stamped_live(secs: u32, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--stamp", "--size", "640x360", "--fps", "30"])
            .args([
                "--bitrate",
                "800",
                "--duration",
                &secs.to_string(),
                "--quiet",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

fn assert_sane_latency(summary: &serde_json::Value) {
    assert_eq!(summary["live"], true, "{summary:#}");
    let latency = &summary["latency_ms"];
    let p50 = n(latency, "p50");
    assert!(p50 > 0.0 && p50 < 500.0, "p50 {p50} ms: {summary:#}");
    assert!(n(latency, "p95") >= p50 && n(latency, "max") >= n(latency, "p99"));
    assert!(n(latency, "jitter") >= 0.0);
}

#[test]
fn probe_measures_our_stream_through_the_embedded_relay_and_reads_the_recording() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("stamped.flv");
    let csv = dir.path().join("frames.csv");
    let plot = dir.path().join("latency.png");
    let listen = format!("127.0.0.1:{port}");
    let mut live = stamped_live(
        14,
        &[
            "--listen",
            &listen,
            "--latency-report",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    wait_for_port(port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let url = format!("rtmp://127.0.0.1:{port}/live/test");
    let summary = probe(
        &[
            &url,
            "--duration",
            "8",
            "--csv",
            csv.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_sane_latency(&summary);
    let decoded = n(&summary, "frames_decoded");
    assert!(
        decoded >= 180.0,
        "only {decoded} frames in 8 s: {summary:#}"
    );
    assert_eq!(n(&summary, "from_sei"), decoded, "{summary:#}");
    assert!(n(&summary, "barcode_agrees") >= 0.99 * n(&summary, "barcode_compared"));
    assert!(n(&summary, "barcode_compared") >= 0.99 * decoded);
    assert!(
        n(&summary, "frames_missing") <= 0.02 * decoded,
        "{summary:#}"
    );
    assert_eq!(n(&summary, "frames_duplicated"), 0.0);
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        rows.lines().count() as f64,
        decoded + 1.0,
        "one CSV row per frame"
    );
    assert!(rows.starts_with("seq,arrival_unix_ms"));
    assert_eq!(&std::fs::read(&plot).unwrap()[..4], b"\x89PNG");

    let status = live
        .wait_timeout(Duration::from_secs(40))
        .expect("onair live hung");
    let log = live.stderr_string();
    assert!(status.success(), "onair live failed:\n{log}");
    for stage in ["publisher latency by stage", "encoded", "queued", "written"] {
        assert!(log.contains(stage), "no '{stage}' in:\n{log}");
    }

    // The recording carries the stamp: every frame by SEI, and the barcode agrees.
    let rec = probe(&[record.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(rec["live"], false);
    assert!(rec["latency_ms"].is_null());
    let frames = n(&rec, "frames_decoded");
    assert!(frames >= 380.0, "{rec:#}");
    assert_eq!(n(&rec, "from_sei"), frames, "{rec:#}");
    assert!(n(&rec, "barcode_agrees") >= 0.99 * frames, "{rec:#}");
    assert_eq!(n(&rec, "frames_duplicated"), 0.0);

    // With the SEI stripped by a third-party tool, the barcode alone still reads.
    let stripped = dir.path().join("stripped.flv");
    strip_sei(&record, &stripped);
    let st = probe(&[stripped.to_str().unwrap()], Duration::from_secs(60));
    let frames = n(&st, "frames_decoded");
    assert!(frames >= 380.0, "{st:#}");
    assert_eq!(n(&st, "from_sei"), 0.0, "SEI still there: {st:#}");
    assert!(n(&st, "from_barcode") >= 0.99 * frames, "{st:#}");
    assert!(n(&st, "frames_missing") <= 0.01 * frames, "{st:#}");
}

fn strip_sei(input: &Path, output: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(input)
        .args([
            "-c",
            "copy",
            "-bsf:v",
            "filter_units=remove_types=6",
            "-f",
            "flv",
        ])
        .arg(output)
        .output()
        .expect("ffmpeg must be installed (scripts/setup)");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn probe_reads_http_flv_from_the_relay() {
    let (rtmp, http) = (free_port(), free_port());
    let relay = ChildGuard::spawn(
        Command::new(onair())
            .args(["relay", "--listen", &format!("127.0.0.1:{rtmp}")])
            .args(["--http", &format!("127.0.0.1:{http}"), "--stats-every", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(rtmp, Duration::from_secs(20));
    wait_for_port(http, Duration::from_secs(20));
    let url = format!("rtmp://127.0.0.1:{rtmp}/live/qa");
    let mut live = stamped_live(10, &["--url", &url]);
    std::thread::sleep(Duration::from_millis(1500));
    let summary = probe(
        &[
            &format!("http://127.0.0.1:{http}/live/qa.flv"),
            "--frames",
            "120",
        ],
        Duration::from_secs(30),
    );
    assert_sane_latency(&summary);
    assert_eq!(n(&summary, "frames_decoded"), 120.0);
    assert_eq!(n(&summary, "from_sei"), 120.0, "{summary:#}");
    let status = live
        .wait_timeout(Duration::from_secs(30))
        .expect("onair live hung");
    assert!(status.success(), "{}", live.stderr_string());
    relay.interrupt();
}

#[test]
fn probe_of_an_unstamped_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.flv");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=320x180:rate=30", "-t", "1"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "flv"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = probe(&[plain.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(n(&s, "frames_decoded"), 30.0);
    assert_eq!(n(&s, "frames_stamped"), 0.0);
    let missing = Command::new(onair())
        .args(["probe", "/nonexistent/x.flv"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open"));
}

#[test]
fn probe_fails_when_it_measured_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.flv");
    std::fs::write(&empty, b"").unwrap();
    let garbage = dir.path().join("garbage.flv");
    std::fs::write(
        &garbage,
        (0..50_000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let audio_only = dir.path().join("audio.flv");
    let made = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .args(["sine=frequency=440:duration=2", "-c:a", "aac", "-f", "flv"])
        .arg(&audio_only)
        .status()
        .expect("ffmpeg (run scripts/setup)");
    assert!(made.success());
    for (file, says) in [
        (&empty, "measured nothing"),
        (&garbage, "not an FLV"),
        (&audio_only, "measured nothing"),
    ] {
        let out = std::process::Command::new(support::onair())
            .args(["probe", "--quiet"])
            .arg(file)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: exit 0\n{err}", file.display());
        assert!(err.contains(says), "{}: {err}", file.display());
        assert!(!err.contains("panicked"), "{}: {err}", file.display());
    }
}
