//! Cost of the audio chain: the whole default chain and each stage alone, per 1024-frame
//! stereo block at 48 kHz (one AAC frame, 21.33 ms of audio). After criterion's report a
//! summary gives ns per stereo frame and the share of one core each takes in real time.

use criterion::{criterion_group, Criterion, Throughput};
use onair::audio::agc::Agc;
use onair::audio::compressor::Compressor;
use onair::audio::denoise::Denoise;
use onair::audio::eq::Equalizer;
use onair::audio::gate::Gate;
use onair::audio::limiter::Limiter;
use onair::audio::{AudioChain, AudioChainSettings, AudioFilter};
use std::time::{Duration, Instant};

const RATE: u32 = 48_000;
const FRAMES: usize = 1024;
const CHANNELS: usize = 2;
/// Real time available for one block.
const BLOCK_SECS: f64 = FRAMES as f64 / RATE as f64;

/// Two seconds of a voice-like signal in blocks: a 110–190 Hz harmonic buzz in
/// syllable-long bursts with pauses, over -60 dBFS hiss, so the gate opens and closes
/// and the denoiser sees both speech and noise.
fn blocks() -> Vec<Vec<f32>> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let total = 2 * RATE as usize;
    let mut phase = 0.0f64;
    let samples: Vec<f32> = (0..total)
        .flat_map(|i| {
            let t = i as f64 / RATE as f64;
            let syllable = (t * 4.0).fract();
            let env = if syllable < 0.7 {
                (std::f64::consts::PI * syllable / 0.7).sin()
            } else {
                0.0
            };
            phase += (150.0 + 40.0 * (t * 3.0).sin()) / RATE as f64;
            let v: f64 = (1..=12)
                .map(|h| (std::f64::consts::TAU * phase * h as f64).sin() / h as f64)
                .sum();
            let s = (0.15 * env * v) as f32;
            [s + 0.001 * noise(), 0.9 * s + 0.001 * noise()]
        })
        .collect();
    samples
        .chunks_exact(FRAMES * CHANNELS)
        .map(|c| c.to_vec())
        .collect()
}

type Make = fn() -> Box<dyn AudioFilter>;

fn cases() -> Vec<(&'static str, Make)> {
    fn d() -> AudioChainSettings {
        AudioChainSettings::default()
    }
    vec![
        ("default chain", || {
            Box::new(AudioChain::from_settings(&d(), RATE).unwrap())
        }),
        ("denoise", || Box::new(Denoise::new(&d().denoise, RATE))),
        ("gate", || Box::new(Gate::new(&d().gate, RATE))),
        ("eq (2 bands)", || Box::new(Equalizer::new(&d().eq, RATE))),
        ("agc", || Box::new(Agc::new(&d().agc, RATE))),
        ("compressor", || {
            Box::new(Compressor::new(&d().compressor, RATE))
        }),
        ("limiter", || Box::new(Limiter::new(&d().limiter, RATE))),
    ]
}

fn audio_chain(c: &mut Criterion) {
    let input = blocks();
    let mut group = c.benchmark_group("audio 1024-frame stereo block @48k");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for (name, make) in cases() {
        let mut filter = make();
        let mut buf = vec![0.0f32; FRAMES * CHANNELS];
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.copy_from_slice(&input[i % input.len()]);
                i += 1;
                filter.process(&mut buf, CHANNELS);
                buf[0]
            })
        });
    }
    group.finish();
}

/// Plain timing for the summary table: the best of several passes over the input.
fn summary() {
    let input = blocks();
    println!();
    println!("per 1024-frame stereo block at 48 kHz (real time: 21.33 ms per block)");
    println!(
        "{:<16} {:>12} {:>16} {:>12}",
        "stage", "us/block", "ns/stereo frame", "% of a core"
    );
    for (name, make) in cases() {
        let mut filter = make();
        let mut buf = vec![0.0f32; FRAMES * CHANNELS];
        for b in &input {
            buf.copy_from_slice(b);
            filter.process(&mut buf, CHANNELS);
        }
        let mut best = Duration::MAX;
        for _ in 0..7 {
            let start = Instant::now();
            for b in &input {
                buf.copy_from_slice(b);
                filter.process(&mut buf, CHANNELS);
                std::hint::black_box(&buf);
            }
            best = best.min(start.elapsed());
        }
        let per_block = best.as_secs_f64() / input.len() as f64;
        println!(
            "{:<16} {:>12.1} {:>16.1} {:>11.2}%",
            name,
            per_block * 1e6,
            per_block * 1e9 / FRAMES as f64,
            100.0 * per_block / BLOCK_SECS
        );
    }
}

criterion_group!(benches, audio_chain);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes --bench; `cargo test` runs each benchmark once as a smoke test
    // and needs no timing summary.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
