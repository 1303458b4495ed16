//! The H.264 backends: hardware probing and fallback on a machine without a GPU encoder, and
//! libx264 through FFmpeg checked by ffprobe/ffmpeg, from a file and end to end over RTMP.

mod support;

use onair::capture::test_card::TestCard;
use onair::clock::MediaClock;
use onair::encode::ffmpeg_hw::FfmpegVideoEncoder;
use onair::encode::probe::{self, Status, PROBE_TIMEOUT};
use onair::encode::{open_backend, Backend, VideoEncoder, VideoEncoderSettings};
use onair::flv::FlvWriter;
use onair::media::{Packet, StreamHeaders, VideoFrame};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    assert_decodes_cleanly, ffprobe_packets, ffprobe_streams, free_port, onair, wait_for_port,
    ChildGuard,
};

const FPS: u32 = 30;

fn settings(width: u32, height: u32) -> VideoEncoderSettings {
    VideoEncoderSettings {
        width,
        height,
        fps: FPS,
        ..Default::default()
    }
}

/// True when this machine has GPU device nodes, where a hardware backend may really open.
fn has_gpu_nodes() -> bool {
    ["/dev/dri", "/dev/nvidia0", "/dev/nvidiactl"]
        .iter()
        .any(|p| Path::new(p).exists())
}

fn test_card(width: u32, height: u32) -> TestCard {
    TestCard::new(MediaClock::start(), width, height, FPS)
        .unwrap()
        .unpaced()
}

fn pts_of(i: u64) -> i64 {
    (i * 1000 / FPS as u64) as i64
}

/// The moving test card with per-frame noise on the luma: expensive to encode, so the
/// encoder spends whatever the rate control allows.
fn noisy(card: &TestCard, i: u64) -> VideoFrame {
    let mut frame = card.render(i, pts_of(i));
    let luma = (frame.width * frame.height) as usize;
    let mut state = 0x9e37_79b9_u32 ^ (i as u32).wrapping_mul(0x85eb_ca6b);
    for p in &mut frame.data[..luma] {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *p = p.saturating_add((state & 0x3f) as u8).min(235);
    }
    frame
}

fn encode_all(
    enc: &mut dyn VideoEncoder,
    frames: impl IntoIterator<Item = VideoFrame>,
) -> Vec<Packet> {
    let mut packets = Vec::new();
    for f in frames {
        packets.extend(enc.encode(&f).unwrap());
    }
    packets.extend(enc.flush().unwrap());
    packets
}

fn write_flv(path: &Path, enc: &dyn VideoEncoder, packets: &[Packet]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = FlvWriter::new(file, true, false).unwrap();
    w.write_headers(&StreamHeaders {
        video: Some(enc.header()),
        audio: None,
    })
    .unwrap();
    for p in packets {
        w.write_packet(p).unwrap();
    }
    w.flush().unwrap();
}

/// Frames ffmpeg's decoder produced from the file's video stream.
fn decoded_frames(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe must be installed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn assert_h264_stream(path: &Path, width: u64, height: u64) {
    let streams = ffprobe_streams(path);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["width"].as_u64(), Some(width));
    assert_eq!(streams[0]["height"].as_u64(), Some(height));
}

#[test]
fn probe_reports_every_missing_backend_with_a_reason_in_bounded_time() {
    let start = Instant::now();
    let report = probe::run_probe(PROBE_TIMEOUT);
    let took = start.elapsed();
    eprintln!(
        "{}",
        report.table(&probe::select_with("auto", &report).unwrap())
    );
    assert!(
        took < PROBE_TIMEOUT + Duration::from_secs(3),
        "probe took {took:?}"
    );
    assert_eq!(report.results.len(), Backend::ALL.len());
    for r in &report.results {
        match r.status.reason() {
            None => assert!(
                !r.backend.is_hardware() || has_gpu_nodes(),
                "{} claims to work without any GPU device node",
                r.backend
            ),
            Some(why) => assert!(why.len() > 10, "{}: reason '{why}'", r.backend),
        }
    }
    assert!(report.is_available(Backend::X264));
    assert!(report.is_available(Backend::FfmpegX264));
    if !has_gpu_nodes() {
        for b in Backend::ALL.into_iter().filter(|b| b.is_hardware()) {
            assert!(!report.is_available(b), "{b} available without a GPU");
        }
        assert_eq!(report.best(), Backend::X264);
    }
    if cfg!(target_os = "linux") {
        // FFmpeg cannot have VideoToolbox on Linux.
        assert!(
            matches!(report.status(Backend::VideoToolbox), Some(Status::NotCompiled(r)) if r.contains("not in this FFmpeg build")),
            "{:?}",
            report.status(Backend::VideoToolbox)
        );
    }
}

#[test]
fn onair_encoders_prints_the_table_and_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("onair.toml");
    std::fs::write(&config, "").unwrap();
    let stdout = dir.path().join("stdout.txt");
    let mut child = ChildGuard::spawn(
        Command::new(onair())
            .arg("--config")
            .arg(&config)
            .arg("encoders")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::piped()),
    );
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("onair encoders hung");
    assert!(status.success(), "{}", child.stderr_string());
    let out = std::fs::read_to_string(&stdout).unwrap();
    for b in Backend::ALL {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(b.name())),
            "{b} missing:\n{out}"
        );
    }
    assert!(out.contains("x264           available (software)"), "{out}");
    if !has_gpu_nodes() {
        assert!(
            out.contains("nvenc          unavailable: "),
            "nvenc line:\n{out}"
        );
        assert!(
            out.contains("default: x264 (video.encoder = auto)"),
            "{out}"
        );
    }
    assert!(out.contains("AAC:"), "{out}");
}

#[test]
fn ffmpeg_x264_packets_make_a_valid_flv() {
    let dir = tempfile::tempdir().unwrap();
    let card = test_card(320, 240);
    for bframes in [0, 2] {
        let s = VideoEncoderSettings {
            bframes,
            ..settings(320, 240)
        };
        let mut enc = FfmpegVideoEncoder::open(Backend::FfmpegX264, &s).unwrap();
        let packets = encode_all(&mut enc, (0..90).map(|i| card.render(i, pts_of(i))));
        assert_eq!(packets.len(), 90, "bframes {bframes}");
        assert!(packets[0].keyframe);
        let reordered = packets.iter().filter(|p| p.pts_ms != p.dts_ms).count();
        if bframes == 0 {
            assert_eq!(reordered, 0);
        } else {
            assert!(reordered > 10, "no composition offsets with B-frames");
            assert!(
                packets.iter().any(|p| p.disposable),
                "no disposable B-frame"
            );
        }
        let path = dir.path().join(format!("ffmpeg-x264-b{bframes}.flv"));
        write_flv(&path, &enc, &packets);
        assert_h264_stream(&path, 320, 240);
        let probed = ffprobe_packets(&path, "v");
        assert_eq!(probed.len(), 90);
        assert!(probed[0].1, "first packet is not a keyframe");
        // Presentation times come back as the frames' own, whatever the decode order.
        let mut pts: Vec<f64> = probed.iter().map(|p| p.0).collect();
        pts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for (i, t) in pts.iter().enumerate() {
            let want = pts_of(i as u64) as f64 / 1000.0;
            assert!((t - want).abs() < 0.0015, "frame {i}: pts {t} vs {want}");
        }
        assert_eq!(decoded_frames(&path), 90);
        assert_decodes_cleanly(&path);
    }
}

#[test]
fn ffmpeg_x264_matches_direct_x264_at_the_same_settings() {
    let card = test_card(640, 360);
    let s = settings(640, 360);
    let mut direct = open_backend(Backend::X264, &s).unwrap();
    let mut through = open_backend(Backend::FfmpegX264, &s).unwrap();
    assert_eq!(through.name(), "ffmpeg-x264");
    let frames: Vec<VideoFrame> = (0..150).map(|i| card.render(i, pts_of(i))).collect();
    let a = encode_all(direct.as_mut(), frames.clone());
    let b = encode_all(through.as_mut(), frames);
    assert_eq!(a.len(), b.len());
    let keys = |p: &[Packet]| -> Vec<usize> { (0..p.len()).filter(|&i| p[i].keyframe).collect() };
    assert_eq!(keys(&a), vec![0, 60, 120]);
    assert_eq!(keys(&a), keys(&b));
    // Same profile, constraints and level in the decoder configuration.
    assert_eq!(
        direct.header().avc_config[1..4],
        through.header().avc_config[1..4]
    );
    let bytes = |p: &[Packet]| p.iter().map(|p| p.data.len()).sum::<usize>() as f64;
    let ratio = bytes(&b) / bytes(&a);
    eprintln!(
        "direct {} B, through FFmpeg {} B, ratio {ratio:.3}",
        bytes(&a),
        bytes(&b)
    );
    assert!((0.85..1.15).contains(&ratio), "size ratio {ratio:.2}");
}

#[test]
fn live_bitrate_change_through_ffmpeg_changes_the_byte_rate() {
    let card = test_card(640, 360);
    let s = VideoEncoderSettings {
        bitrate_kbps: 2000,
        ..settings(640, 360)
    };
    let mut enc = open_backend(Backend::FfmpegX264, &s).unwrap();
    let n = 150u64;
    let mut first = Vec::new();
    for i in 0..n {
        first.extend(enc.encode(&noisy(&card, i)).unwrap());
    }
    enc.set_bitrate(300).unwrap();
    assert_eq!(enc.header().bitrate_kbps, 300);
    let mut second = Vec::new();
    for i in n..2 * n {
        second.extend(enc.encode(&noisy(&card, i)).unwrap());
    }
    second.extend(enc.flush().unwrap());
    // kbit/s over the steady part of each half (the VBV buffer absorbs the first second).
    let rate = |p: &[Packet]| {
        let steady = &p[30..];
        steady.iter().map(|p| p.data.len()).sum::<usize>() as f64 * 8.0
            / (steady.len() as f64 / FPS as f64)
            / 1000.0
    };
    let (before, after) = (rate(&first), rate(&second));
    eprintln!("before {before:.0} kbps, after {after:.0} kbps");
    assert!(
        (1700.0..2300.0).contains(&before),
        "before: {before:.0} kbps"
    );
    assert!((240.0..380.0).contains(&after), "after: {after:.0} kbps");
}

#[test]
fn forced_idr_through_ffmpeg_is_a_keyframe_for_ffprobe() {
    let dir = tempfile::tempdir().unwrap();
    let card = test_card(320, 240);
    let mut enc = open_backend(Backend::FfmpegX264, &settings(320, 240)).unwrap();
    let mut packets = Vec::new();
    for i in 0..50u64 {
        if i == 17 || i == 31 {
            enc.force_keyframe();
        }
        let out = enc.encode(&card.render(i, pts_of(i))).unwrap();
        if i == 17 || i == 31 {
            assert!(
                out.len() == 1 && out[0].keyframe,
                "frame {i} did not come out as a keyframe"
            );
        }
        packets.extend(out);
    }
    packets.extend(enc.flush().unwrap());
    let keys: Vec<usize> = (0..packets.len())
        .filter(|&i| packets[i].keyframe)
        .collect();
    assert_eq!(keys, vec![0, 17, 31]);
    let path = dir.path().join("idr.flv");
    write_flv(&path, enc.as_ref(), &packets);
    let probed = ffprobe_packets(&path, "v");
    let probed_keys: Vec<usize> = (0..probed.len()).filter(|&i| probed[i].1).collect();
    assert_eq!(probed_keys, vec![0, 17, 31]);
    assert_decodes_cleanly(&path);
}

#[test]
fn live_with_ffmpeg_x264_plays_from_the_embedded_relay() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--encoder", "ffmpeg-x264", "--duration", "6"])
            .args(["--size", "320x240", "--listen", &listen, "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    let out = dir.path().join("watched.flv");
    let mut player =
        support::record_stream(&format!("rtmp://127.0.0.1:{port}/live/test"), &out, &[]);
    let status = live
        .wait_timeout(Duration::from_secs(40))
        .expect("onair live hung");
    let log = live.stderr_string();
    assert!(status.success(), "onair live failed:\n{log}");
    assert!(
        log.contains("ffmpeg-x264"),
        "ffmpeg-x264 not in use:\n{log}"
    );
    player
        .wait_timeout(Duration::from_secs(20))
        .expect("player did not stop at end of stream");
    let streams = ffprobe_streams(&out);
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .expect("no video stream");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["width"].as_u64(), Some(320));
    assert_eq!(video["height"].as_u64(), Some(240));
    let packets = ffprobe_packets(&out, "v");
    assert!(packets[0].1, "first watched packet is not a keyframe");
    let span = packets.last().unwrap().0 - packets[0].0 + 1.0 / FPS as f64;
    assert!(span > 4.0, "only {span:.1} s watched");
    assert!(
        packets.len() as f64 >= 0.95 * span * FPS as f64,
        "{} packets in {span:.1} s",
        packets.len()
    );
    assert_decodes_cleanly(&out);
}

#[test]
fn unavailable_backend_falls_back_to_x264_and_says_so() {
    if probe::probe().is_available(Backend::Nvenc) {
        eprintln!("NVENC works on this machine: nothing to fall back from");
        return;
    }
    // Library: the selection carries the notice.
    let selection = probe::select("nvenc").unwrap();
    assert_eq!(selection.backend, Backend::X264);
    let notice = selection.notice.unwrap();
    assert!(
        notice.starts_with("video encoder 'nvenc' is not available here ("),
        "{notice}"
    );
    assert!(notice.ends_with("); using x264 instead"), "{notice}");
    let enc = onair::encode::open_video(&VideoEncoderSettings {
        encoder: "nvenc".into(),
        ..settings(320, 240)
    })
    .unwrap();
    assert_eq!(enc.name(), "x264");

    // CLI: the stream goes out with x264 and the user is told why.
    let port = free_port();
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--encoder", "nvenc", "--duration", "2"])
            .args(["--size", "320x240", "--quiet"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let status = live
        .wait_timeout(Duration::from_secs(30))
        .expect("onair live hung");
    let log = live.stderr_string();
    assert!(status.success(), "onair live failed:\n{log}");
    assert!(
        log.contains("warning: video encoder 'nvenc' is not available here ("),
        "no fallback message:\n{log}"
    );
    assert!(log.contains("using x264 instead"), "{log}");
    assert_eq!(
        log.matches("is not available here").count(),
        1,
        "said more than once:\n{log}"
    );
    assert!(log.contains(" x264 "), "x264 not in use:\n{log}");

    // An unknown name is refused, naming the setting.
    let out = Command::new(onair())
        .args(["live", "--encoder", "h265", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("video.encoder = 'h265' is unknown"), "{err}");
}
