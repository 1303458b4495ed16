//! Direct x264 against libx264 through FFmpeg at the same settings (720p30, veryfast,
//! zerolatency, 2500 kbps): what going through FFmpeg costs per frame, in time and in CPU.
//!
//! Criterion measures the time per frame; a second pass encodes a fixed run per backend and
//! prints frames per second and process CPU use (Linux: from /proc/self/stat).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onair::capture::test_card::TestCard;
use onair::clock::MediaClock;
use onair::encode::{open_backend, Backend, VideoEncoder, VideoEncoderSettings};
use onair::media::VideoFrame;
use std::time::{Duration, Instant};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const BACKENDS: [Backend; 2] = [Backend::X264, Backend::FfmpegX264];

fn settings(backend: Backend) -> VideoEncoderSettings {
    VideoEncoderSettings {
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        bitrate_kbps: 2500,
        preset: "veryfast".into(),
        tune: "zerolatency".into(),
        encoder: backend.name().into(),
        ..Default::default()
    }
}

/// Two seconds of the test card, re-stamped as the run goes so timestamps keep increasing.
struct Frames {
    frames: Vec<VideoFrame>,
    next: u64,
}

impl Frames {
    fn new() -> Frames {
        let card = TestCard::new(MediaClock::start(), WIDTH, HEIGHT, FPS)
            .unwrap()
            .unpaced();
        let frames = (0..60).map(|i| card.render(i, 0)).collect();
        Frames { frames, next: 0 }
    }

    fn next(&mut self) -> &VideoFrame {
        let i = self.next;
        self.next += 1;
        let n = self.frames.len();
        let f = &mut self.frames[i as usize % n];
        f.pts_ms = (i * 1000 / FPS as u64) as i64;
        f.index = i;
        f
    }
}

fn encode_720p(c: &mut Criterion) {
    let mut group = c.benchmark_group("h264 720p30 veryfast zerolatency 2500k");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    for backend in BACKENDS {
        let mut enc = open_backend(backend, &settings(backend)).unwrap();
        let mut frames = Frames::new();
        group.bench_function(backend.name(), |b| {
            b.iter(|| enc.encode(frames.next()).unwrap())
        });
    }
    group.finish();
}

/// Process CPU time (user + system) so far, where the OS tells us.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // The kernel reports clock ticks; USER_HZ is 100 on every Linux platform we ship for.
    Some(Duration::from_millis((utime + stime) * 10))
}

fn fps_and_cpu(_c: &mut Criterion) {
    const RUN: u64 = 300;
    println!("\n{RUN} frames of 720p30 veryfast zerolatency 2500k per backend:");
    for backend in BACKENDS {
        let mut enc: Box<dyn VideoEncoder> = open_backend(backend, &settings(backend)).unwrap();
        let mut frames = Frames::new();
        for _ in 0..30 {
            enc.encode(frames.next()).unwrap();
        }
        let (wall0, cpu0) = (Instant::now(), cpu_time());
        let mut bytes = 0usize;
        for _ in 0..RUN {
            bytes += enc
                .encode(frames.next())
                .unwrap()
                .iter()
                .map(|p| p.data.len())
                .sum::<usize>();
        }
        let wall = wall0.elapsed().as_secs_f64();
        let cpu = match (cpu0, cpu_time()) {
            (Some(a), Some(b)) => format!(
                "CPU {:.0}% of one core ({:.2} ms per frame)",
                (b - a).as_secs_f64() / wall * 100.0,
                (b - a).as_secs_f64() * 1000.0 / RUN as f64
            ),
            _ => "CPU n/a".into(),
        };
        println!(
            "  {:<12} {:6.1} fps  {cpu}  {:.0} kbps",
            backend.name(),
            RUN as f64 / wall,
            bytes as f64 * 8.0 / (RUN as f64 / FPS as f64) / 1000.0
        );
    }
}

criterion_group!(benches, encode_720p, fps_and_cpu);
criterion_main!(benches);
