//! Video filter cost per frame at 720p and 1080p: each filter alone and the whole chain, on
//! the GPU adapter wgpu picks (in CI and on machines without a GPU: the CPU Vulkan driver,
//! llvmpipe) and on the CPU reference. Per-filter times include the upload, the conversion
//! passes and the readback; the GPU-only time of each pass (timestamp queries) is printed
//! after the whole-chain runs.
//!
//! `cargo bench --bench filters` runs everything (slow on a software renderer);
//! `cargo bench --bench filters -- gpu/` only the GPU, `-- cpu/720p` only that. On a machine
//! with several adapters, `ONAIR_GPU=<part of the name>` picks one (`onair gpu` lists them).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use onair::media::VideoFrame;
use onair::video::gpu::GpuContext;
use onair::video::{test_image, BackendChoice, FilterSettings, Stage, VideoFilterChain};
use std::time::Duration;

fn only(stage: Stage) -> FilterSettings {
    let mut s = FilterSettings::default();
    match stage {
        Stage::Denoise => s.denoise.enabled = true,
        Stage::SkinMask => {
            s.skin_mask.enabled = true;
            s.skin_mask.show = true;
        }
        Stage::Smoothing => s.smoothing.enabled = true,
        Stage::Whitening => s.whitening.enabled = true,
        Stage::Color => {
            s.color.enabled = true;
            s.color.saturation = 1.2;
        }
        Stage::Sharpen => s.sharpen.enabled = true,
        Stage::Watermark => s.watermark.enabled = true,
    }
    s
}

fn whole_chain() -> FilterSettings {
    let mut s = FilterSettings::beauty();
    s.watermark.enabled = true;
    s
}

fn frame(width: u32, height: u32) -> VideoFrame {
    test_image::portrait(width, height)
        .to_i420(0, 0)
        .expect("even size")
}

fn bench_filters(c: &mut Criterion) {
    let gpu = GpuContext::shared()
        .map_err(|e| eprintln!("no GPU adapter ({e:#}): benchmarking the CPU reference only"))
        .ok();
    if let Some(g) = &gpu {
        eprintln!("GPU: {}", g.describe());
    }
    let sizes = [("720p", 1280, 720), ("1080p", 1920, 1080)];
    let mut backends: Vec<(&str, BackendChoice)> = Vec::new();
    if let Some(g) = &gpu {
        backends.push(("gpu", BackendChoice::Gpu(g.clone())));
    }
    backends.push(("cpu", BackendChoice::Cpu));
    for (backend, choice) in &backends {
        for &(size, w, h) in &sizes {
            let mut group = c.benchmark_group(format!("{backend}/{size}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            let input = frame(w, h);
            let mut cases: Vec<(String, FilterSettings)> = Stage::ALL
                .iter()
                .map(|&s| (s.name().to_string(), only(s)))
                .collect();
            cases.push(("chain".into(), whole_chain()));
            for (name, settings) in &cases {
                let mut chain = VideoFilterChain::with_backend(settings, w, h, choice.clone())
                    .expect("filter chain");
                let mut f = input.clone();
                group.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter(|| chain.process(&mut f).expect("filtering"))
                });
                if name == "chain" {
                    print_stage_times(&format!("{backend}/{size}"), &chain);
                }
            }
            if *backend == "gpu" {
                // Throughput with the readback of one frame overlapping the next upload.
                let mut chain =
                    VideoFilterChain::with_backend(&whole_chain(), w, h, choice.clone())
                        .expect("filter chain");
                let mut spare = vec![input.clone(); 3];
                group.bench_function(BenchmarkId::from_parameter("chain-pipelined"), |b| {
                    b.iter(|| {
                        let f = spare.pop().unwrap_or_else(|| input.clone());
                        spare.extend(chain.push(f).expect("filtering"));
                    })
                });
                spare.extend(chain.flush().expect("flush"));
            }
            group.finish();
        }
    }
}

/// Per-stage times the chain measured itself (GPU timestamps or CPU wall clock).
fn print_stage_times(label: &str, chain: &VideoFilterChain) {
    let s = chain.stats();
    let stages: Vec<String> = s
        .stages
        .iter()
        .map(|t| format!("{} {:.2}", t.stage, t.avg_ms))
        .collect();
    eprintln!(
        "{label} stage times ({:?}, ms): {}; conversion {:.2}; frame {:.2}",
        s.timing,
        stages.join(", "),
        s.overhead_ms,
        s.frame_ms
    );
}

criterion_group!(benches, bench_filters);
criterion_main!(benches);
