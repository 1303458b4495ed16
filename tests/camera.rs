//! Cameras: enumeration on a machine without one, conversion of every camera pixel format
//! against FFmpeg's own conversion, and the fallback to the test card when a camera fails
//! mid-stream (a fake device behind the hardware boundary, everything else real), at start
//! (`onair live --camera 0` here, through the embedded relay).

mod support;

use onair::capture::camera::{CameraMode, CameraSource, FrameGrabber};
use onair::capture::convert::{psnr, Converter, PixelFormat};
use onair::capture::fallback::FallbackSource;
use onair::capture::test_card::TestCard;
use onair::capture::VideoSource;
use onair::clock::MediaClock;
use onair::encode::VideoEncoderSettings;
use onair::stats::Stats;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{free_port, onair, wait_for_port, ChildGuard};

#[test]
fn enumeration_without_cameras_is_an_empty_list() {
    let cameras = onair::capture::list_cameras().expect("listing cameras must not fail");
    let has_video_nodes = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false);
    if !has_video_nodes {
        assert!(cameras.is_empty(), "{cameras:?}");
    }
    // `onair devices` says so too, and lists the microphones section as before
    let out = Command::new(onair()).arg("devices").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Cameras:"), "{text}");
    if !has_video_nodes {
        assert!(
            text.contains("none found (the test card is used)"),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Conversion against FFmpeg
// ---------------------------------------------------------------------------------------

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg must be installed (scripts/setup)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One frame of FFmpeg's testsrc2 at `size` in `pix_fmt`, as raw bytes (or a JPEG).
fn source_frame(dir: &Path, size: &str, pix_fmt: &str) -> Vec<u8> {
    let src = format!("testsrc2=size={size}:rate=1");
    let path = dir.join(format!("in-{size}-{pix_fmt}"));
    let p = path.to_str().unwrap();
    if pix_fmt == "mjpeg" {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &src,
            "-frames:v",
            "1",
            "-c:v",
            "mjpeg",
            "-q:v",
            "2",
            "-f",
            "image2",
            p,
        ]);
    } else {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &src,
            "-frames:v",
            "1",
            "-pix_fmt",
            pix_fmt,
            "-f",
            "rawvideo",
            p,
        ]);
    }
    std::fs::read(&path).unwrap()
}

/// FFmpeg's conversion of the same input to I420 at `out_size`.
fn reference(dir: &Path, input: &[u8], size: &str, pix_fmt: &str, out_size: &str) -> Vec<u8> {
    let inp = dir.join("ref-in");
    std::fs::write(&inp, input).unwrap();
    let out = dir.join("ref-out.yuv");
    let (w, h) = out_size.split_once('x').unwrap();
    let scale = format!("scale={w}:{h}:flags=bicubic,format=yuv420p");
    let mut args: Vec<&str> = Vec::new();
    if pix_fmt == "mjpeg" {
        args.extend(["-f", "mjpeg"]);
    } else {
        args.extend(["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", size]);
    }
    args.extend(["-i", inp.to_str().unwrap(), "-vf", &scale]);
    args.extend(["-f", "rawvideo", out.to_str().unwrap()]);
    ffmpeg(&args);
    std::fs::read(&out).unwrap()
}

fn check_format(format: PixelFormat, pix_fmt: &str, size: &str, out_size: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = source_frame(dir.path(), size, pix_fmt);
    let expected = reference(dir.path(), &input, size, pix_fmt, out_size);
    let (w, h) = parse(size);
    let (ow, oh) = parse(out_size);
    let mut conv = Converter::new(ow, oh).unwrap();
    let frame = conv.convert(format, w, h, &input, 0, 0).unwrap();
    assert_eq!(frame.data.len(), expected.len(), "{pix_fmt}");
    let luma = (ow * oh) as usize;
    let chroma = luma / 4;
    let planes = [
        ("Y", 0..luma),
        ("U", luma..luma + chroma),
        ("V", luma + chroma..luma + 2 * chroma),
    ];
    for (name, range) in planes {
        let p = psnr(&expected[range.clone()], &frame.data[range]);
        assert!(
            p >= 45.0,
            "{pix_fmt} {size}->{out_size}: {name} plane PSNR {p:.1} dB against FFmpeg"
        );
    }
}

fn parse(size: &str) -> (u32, u32) {
    let (w, h) = size.split_once('x').unwrap();
    (w.parse().unwrap(), h.parse().unwrap())
}

#[test]
fn every_format_converts_like_ffmpeg() {
    for (format, pix_fmt) in [
        (PixelFormat::Yuyv, "yuyv422"),
        (PixelFormat::Nv12, "nv12"),
        (PixelFormat::Rgb24, "rgb24"),
        (PixelFormat::Bgr24, "bgr24"),
        (PixelFormat::Rgba, "rgba"),
        (PixelFormat::Gray, "gray"),
        (PixelFormat::Mjpeg, "mjpeg"),
    ] {
        check_format(format, pix_fmt, "640x360", "640x360");
    }
}

#[test]
fn conversion_scales_like_ffmpeg() {
    // a camera at 1280x720 feeding a 640x360 stream, and 640x480 feeding 1280x720
    check_format(PixelFormat::Yuyv, "yuyv422", "1280x720", "640x360");
    check_format(PixelFormat::Mjpeg, "mjpeg", "1280x720", "640x360");
    check_format(PixelFormat::Nv12, "nv12", "640x480", "1280x720");
}

// ---------------------------------------------------------------------------------------
// Fallback
// ---------------------------------------------------------------------------------------

/// A fake camera: YUYV frames of FFmpeg's test pattern at its frame rate, then a failure
/// (unplugged) after `fail_after`, or a hang (a driver that stops answering).
struct FakeCamera {
    frame: Vec<u8>,
    interval: Duration,
    next: Instant,
    left: u32,
    hang: bool,
}

impl FrameGrabber for FakeCamera {
    fn grab(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        if self.left == 0 {
            if self.hang {
                std::thread::sleep(Duration::from_secs(3600));
            }
            anyhow::bail!("No such device (os error 19)");
        }
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next += self.interval;
        self.left -= 1;
        out.clear();
        out.extend_from_slice(&self.frame);
        Ok(())
    }
}

fn fake_camera(frames: u32, hang: bool, clock: MediaClock) -> CameraSource {
    let dir = tempfile::tempdir().unwrap();
    let frame = source_frame(dir.path(), "640x480", "yuyv422");
    let mode = CameraMode {
        width: 640,
        height: 480,
        fps: 30,
        format: PixelFormat::Yuyv,
    };
    let open = move || -> anyhow::Result<Box<dyn FrameGrabber>> {
        Ok(Box::new(FakeCamera {
            frame,
            interval: Duration::from_millis(33),
            next: Instant::now(),
            left: frames,
            hang,
        }))
    };
    CameraSource::spawn("camera 0 'Fake Cam'".into(), mode, open, clock, 320, 240)
        .unwrap()
        .with_stall_timeout(Duration::from_millis(400))
}

/// Pulls frames for `secs` through the real x264 encoder; returns (pts, was a camera
/// frame) per frame and the packets' count.
fn run_through_encoder(src: &mut dyn VideoSource, secs: f64) -> (Vec<(i64, bool)>, usize) {
    let mut enc = onair::encode::open_video(&VideoEncoderSettings {
        width: 320,
        height: 240,
        bitrate_kbps: 500,
        ..Default::default()
    })
    .unwrap();
    let start = Instant::now();
    let mut frames = Vec::new();
    let mut packets = 0;
    while start.elapsed().as_secs_f64() < secs {
        let f = src.next_frame().expect("the fallback source never fails");
        // testsrc2 (the fake camera) has a bright top-left; the test card starts with 75 % white
        let from_camera = !src.describe().contains("test card");
        frames.push((f.pts_ms, from_camera));
        packets += enc.encode(&f).unwrap().len();
    }
    packets += enc.flush().unwrap().len();
    (frames, packets)
}

fn assert_fell_back(frames: &[(i64, bool)], stats: &Stats, max_gap_ms: i64) {
    let camera = frames.iter().filter(|f| f.1).count();
    let card = frames.iter().filter(|f| !f.1).count();
    assert!(camera >= 20, "only {camera} camera frames");
    assert!(card >= 20, "only {card} test-card frames after the failure");
    // once on the card, it stays there; pts rise throughout with no long gap
    let switch = frames.iter().position(|f| !f.1).unwrap();
    assert!(frames[switch..].iter().all(|f| !f.1));
    for w in frames.windows(2) {
        assert!(w[1].0 > w[0].0, "pts went back: {:?}", w);
        assert!(
            w[1].0 - w[0].0 <= max_gap_ms,
            "a {} ms hole in the stream",
            w[1].0 - w[0].0
        );
    }
    let events = stats.events.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.contains("Fake Cam") && e.contains("test card")),
        "no event: {events:?}"
    );
    assert!(stats.video_source().contains("test card"));
}

#[test]
fn an_unplugged_camera_switches_to_the_test_card_and_the_encoder_keeps_going() {
    let clock = MediaClock::start();
    let stats = Arc::new(Stats::default());
    let camera = fake_camera(30, false, clock);
    let card = TestCard::new(clock, 320, 240, 30).unwrap();
    let mut src = FallbackSource::new(Box::new(camera), card, stats.clone());
    assert!(stats.video_source().contains("'Fake Cam' 640x480@30 YUYV"));
    let (frames, packets) = run_through_encoder(&mut src, 2.5);
    // one picture interval plus scheduling slack
    assert_fell_back(&frames, &stats, 120);
    assert!(
        packets + 2 >= frames.len(),
        "{packets} packets for {} frames",
        frames.len()
    );
}

#[test]
fn a_hung_camera_times_out_into_the_test_card() {
    let clock = MediaClock::start();
    let stats = Arc::new(Stats::default());
    let camera = fake_camera(30, true, clock);
    let card = TestCard::new(clock, 320, 240, 30).unwrap();
    let mut src = FallbackSource::new(Box::new(camera), card, stats.clone());
    let (frames, _) = run_through_encoder(&mut src, 2.5);
    // the stall timeout (400 ms) is the longest the picture may freeze
    assert_fell_back(&frames, &stats, 500);
    let events = stats.events.lock().unwrap();
    assert!(
        events.iter().any(|e| e.contains("no frame for 0.4 s")),
        "{events:?}"
    );
}

#[test]
fn live_with_a_missing_camera_streams_the_test_card() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--camera", "0", "--size", "320x240", "--fps", "30"])
            .args(["--bitrate", "500", "--duration", "6", "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("fallback.flv");
    let url = format!("rtmp://127.0.0.1:{port}/live/test");
    let mut reader = support::record_stream(&url, &rec, &["-t", "3"]);
    reader
        .wait_timeout(Duration::from_secs(30))
        .expect("ffmpeg reading the relay hung");
    let status = live
        .wait_timeout(Duration::from_secs(30))
        .expect("onair live hung");
    let log = live.stderr_string();
    assert!(status.success(), "onair live failed:\n{log}");
    assert!(
        log.contains("camera '0' is not available") && log.contains("test card instead"),
        "no clear warning:\n{log}"
    );
    let streams = support::ffprobe_streams(&rec);
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap_or_else(|| panic!("no video in {streams:?}"));
    assert_eq!(video["width"], 320);
    assert_eq!(video["height"], 240);
    let packets = support::ffprobe_packets(&rec, "v:0");
    assert!(packets.len() >= 60, "only {} video packets", packets.len());
}

#[test]
fn an_unknown_camera_format_is_a_clear_error() {
    let out = Command::new(onair())
        .args(["live", "--camera", "0", "--camera-format", "h264"])
        .args(["--duration", "1", "--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("sources.camera_format is invalid")
            && err.contains("use mjpeg, yuyv, nv12, rgb, bgr, rgba or gray"),
        "{err}"
    );
}
