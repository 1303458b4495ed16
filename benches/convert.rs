//! Cost of converting one camera frame to the pipeline's I420 (FFmpeg's MJPEG decoder and
//! swscale through `capture::convert`), per 720p and 1080p frame for each format a camera
//! delivers. The inputs are FFmpeg's testsrc2 pattern, made once with the ffmpeg CLI.

use criterion::{criterion_group, criterion_main, Criterion};
use onair::capture::convert::{Converter, PixelFormat};
use std::hint::black_box;
use std::process::Command;

/// One testsrc2 frame of `w`x`h` in `pix_fmt` (or a JPEG at quality 3 for MJPEG).
fn frame(w: u32, h: u32, pix_fmt: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frame");
    let src = format!("testsrc2=size={w}x{h}:rate=1");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        &src,
    ])
    .args(["-frames:v", "1"]);
    if pix_fmt == "mjpeg" {
        cmd.args(["-c:v", "mjpeg", "-q:v", "3", "-f", "image2"]);
    } else {
        cmd.args(["-pix_fmt", pix_fmt, "-f", "rawvideo"]);
    }
    let status = cmd
        .arg(&path)
        .status()
        .expect("ffmpeg must be installed (scripts/setup)");
    assert!(status.success(), "ffmpeg could not make a {pix_fmt} frame");
    std::fs::read(&path).unwrap()
}

fn bench_convert(c: &mut Criterion) {
    let formats = [
        (PixelFormat::Mjpeg, "mjpeg"),
        (PixelFormat::Yuyv, "yuyv422"),
        (PixelFormat::Nv12, "nv12"),
        (PixelFormat::Rgb24, "rgb24"),
        (PixelFormat::Rgba, "rgba"),
    ];
    for (label, w, h) in [("720p", 1280, 720), ("1080p", 1920, 1080)] {
        let mut group = c.benchmark_group(format!("convert_{label}"));
        for (format, pix_fmt) in formats {
            let input = frame(w, h, pix_fmt);
            let mut conv = Converter::new(w, h).unwrap();
            group.bench_function(format.fourcc(), |b| {
                b.iter(|| black_box(conv.convert(format, w, h, black_box(&input), 0, 0).unwrap()))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench_convert
}

criterion_main!(benches);
