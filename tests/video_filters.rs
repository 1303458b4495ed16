//! Video filters: every filter's GPU output against the CPU reference on the test card and on
//! a photo-like portrait, bit-exact pass-through with everything off, frame order and pts
//! through the pipelined GPU path, and that each filter does what it is for.
//!
//! These run on whatever adapter wgpu finds: in CI the CPU Vulkan driver (lavapipe). A machine
//! with no adapter at all fails them on purpose (install mesa-vulkan-drivers).

use onair::capture::test_card::TestCard;
use onair::clock::MediaClock;
use onair::media::VideoFrame;
use onair::video::gpu::GpuContext;
use onair::video::image::{psnr, RgbaImage};
use onair::video::settings::Corner;
use onair::video::{
    test_image, Backend, BackendChoice, FilterSettings, Stage, TimingSource, VideoFilterChain,
};
use std::path::Path;
use std::sync::Arc;

fn gpu() -> Arc<GpuContext> {
    GpuContext::shared().unwrap_or_else(|e| {
        panic!("no GPU adapter, the GPU filters cannot be tested: {e:#}. Install mesa-vulkan-drivers (scripts/setup) for the CPU Vulkan driver")
    })
}

fn card(width: u32, height: u32, index: u64) -> VideoFrame {
    TestCard::new(MediaClock::start(), width, height, 30)
        .unwrap()
        .render(index, index as i64 * 33)
}

fn portrait(width: u32, height: u32) -> VideoFrame {
    test_image::portrait(width, height).to_i420(0, 0).unwrap()
}

/// The test pictures: the test card (bars, texture, digits) and the portrait (skin).
fn pictures() -> Vec<(&'static str, VideoFrame)> {
    vec![
        ("test card", card(320, 240, 7)),
        ("portrait", portrait(320, 180)),
    ]
}

/// Settings with one filter on (parameters away from their defaults, so they matter).
fn only(stage: Stage) -> FilterSettings {
    let mut s = FilterSettings::default();
    match stage {
        Stage::Denoise => {
            s.denoise.enabled = true;
            s.denoise.amount = 0.6;
        }
        Stage::SkinMask => {
            s.skin_mask.enabled = true;
            s.skin_mask.show = true;
        }
        Stage::Smoothing => {
            s.smoothing.enabled = true;
            s.smoothing.amount = 0.9;
            s.smoothing.radius = 8.0;
        }
        Stage::Whitening => {
            s.whitening.enabled = true;
            s.whitening.amount = 0.6;
        }
        Stage::Color => {
            s.color.enabled = true;
            s.color.brightness = 0.1;
            s.color.contrast = 1.3;
            s.color.saturation = 1.4;
        }
        Stage::Sharpen => {
            s.sharpen.enabled = true;
            s.sharpen.amount = 0.8;
        }
        Stage::Watermark => {
            s.watermark.enabled = true;
            s.watermark.position = Corner::BottomLeft;
            s.watermark.scale = 0.4;
            s.watermark.opacity = 0.7;
        }
    }
    s
}

fn run(settings: &FilterSettings, choice: BackendChoice, frame: &VideoFrame) -> VideoFrame {
    let mut chain =
        VideoFilterChain::with_backend(settings, frame.width, frame.height, choice).unwrap();
    let mut out = frame.clone();
    chain.process(&mut out).unwrap();
    out
}

fn assert_gpu_matches_cpu(name: &str, settings: &FilterSettings) {
    let ctx = gpu();
    for (picture, frame) in pictures() {
        let g = run(settings, BackendChoice::Gpu(ctx.clone()), &frame);
        let c = run(settings, BackendChoice::Cpu, &frame);
        let db = psnr(&c.data, &g.data);
        assert!(
            db >= 40.0,
            "{name} on the {picture}: GPU vs CPU reference PSNR {db:.1} dB < 40 dB"
        );
        assert!(
            c.data != frame.data,
            "{name} on the {picture} changed nothing: the test proves nothing"
        );
    }
}

#[test]
fn gpu_adapter_is_available() {
    let ctx = gpu();
    eprintln!("adapter: {}", ctx.describe());
    assert!(!ctx.info.name.is_empty());
}

#[test]
fn each_filter_on_gpu_matches_cpu_reference() {
    for stage in Stage::ALL {
        assert_gpu_matches_cpu(stage.name(), &only(stage));
    }
}

#[test]
fn whole_beauty_chain_on_gpu_matches_cpu_reference() {
    assert_gpu_matches_cpu("beauty", &FilterSettings::beauty());
    let mut all = FilterSettings::beauty();
    all.watermark.enabled = true;
    all.color.contrast = 1.1;
    assert_gpu_matches_cpu("every filter", &all);
}

#[test]
fn every_filter_off_is_bit_exact() {
    let ctx = gpu();
    let mut bypassed = FilterSettings::beauty();
    bypassed.watermark.enabled = true;
    bypassed.bypass = true;
    let mut switched_off = FilterSettings::default();
    for stage in Stage::ALL {
        // Parameters set, filter switched off.
        let s = only(stage);
        switched_off.denoise.amount = s.denoise.amount.max(switched_off.denoise.amount);
    }
    switched_off.smoothing.amount = 1.0;
    switched_off.sharpen.amount = 1.0;
    switched_off.color.contrast = 2.0;
    let mut neutral = FilterSettings::default();
    neutral.color.enabled = true; // brightness 0, contrast 1, saturation 1
    neutral.whitening.enabled = true;
    neutral.whitening.amount = 0.0;
    for settings in [FilterSettings::default(), bypassed, switched_off, neutral] {
        for (picture, frame) in pictures() {
            for choice in [BackendChoice::Gpu(ctx.clone()), BackendChoice::Cpu] {
                let mut chain = VideoFilterChain::with_backend(
                    &settings,
                    frame.width,
                    frame.height,
                    choice.clone(),
                )
                .unwrap();
                assert!(!chain.is_active());
                let mut out = frame.clone();
                chain.process(&mut out).unwrap();
                assert!(out.data == frame.data, "{picture} changed with {choice:?}");
                let pushed = chain.push(frame.clone()).unwrap();
                assert_eq!(pushed.len(), 1);
                assert!(pushed[0].data == frame.data, "{picture} changed by push");
            }
        }
    }
}

#[test]
fn pipelined_gpu_chain_keeps_frame_order_and_pts() {
    let ctx = gpu();
    let settings = FilterSettings::beauty();
    let (w, h) = (192, 108);
    for depth in [1, 2, 3] {
        let mut chain =
            VideoFilterChain::with_backend(&settings, w, h, BackendChoice::Gpu(ctx.clone()))
                .unwrap();
        chain.set_pipeline_depth(depth).unwrap();
        assert_eq!(chain.latency_frames(), depth - 1);
        let mut cpu = VideoFilterChain::with_backend(&settings, w, h, BackendChoice::Cpu).unwrap();
        let mut out = Vec::new();
        let mut expected = Vec::new();
        for i in 0..12u64 {
            let mut f = card(w, h, i);
            f.pts_ms = 1000 + i as i64 * 33;
            f.index = 100 + i;
            let mut reference = f.clone();
            cpu.process(&mut reference).unwrap();
            expected.push(reference);
            let ready = chain.push(f).unwrap();
            assert!(ready.len() <= 2, "push returned {} frames", ready.len());
            out.extend(ready);
            // Latency is bounded by the number of staging buffers.
            assert!(i as usize + 1 - out.len() < depth.max(1) + 1);
            if i == 5 {
                // Switching filters mid-stream neither loses nor reorders frames.
                chain.update(&FilterSettings::default()).unwrap();
            }
            if i == 8 {
                chain.update(&settings).unwrap();
            }
        }
        out.extend(chain.flush().unwrap());
        assert_eq!(out.len(), 12, "depth {depth}");
        for (i, f) in out.iter().enumerate() {
            assert_eq!(f.index, 100 + i as u64, "depth {depth}: frame order");
            assert_eq!(f.pts_ms, 1000 + i as i64 * 33, "depth {depth}: pts");
            let original = card(w, h, i as u64);
            if (6..=8).contains(&i) {
                assert!(
                    f.data == original.data,
                    "frame {i} was pushed with filters off"
                );
            } else {
                let db = psnr(&expected[i].data, &f.data);
                assert!(db >= 40.0, "depth {depth}, frame {i}: {db:.1} dB");
            }
        }
    }
}

#[test]
fn skin_mask_marks_faces_not_background() {
    let frame = portrait(320, 180);
    let s = only(Stage::SkinMask);
    let out = run(&s, BackendChoice::Gpu(gpu()), &frame);
    let (w, _) = (320usize, 180usize);
    let mean = |x0: usize, y0: usize, x1: usize, y1: usize| {
        let mut sum = 0.0;
        for y in y0..y1 {
            for x in x0..x1 {
                sum += out.data[y * w + x] as f64;
            }
        }
        sum / ((x1 - x0) * (y1 - y0)) as f64
    };
    // Cheeks of the lighter face (centre 0.42w, 0.45h) and forehead of the darker one.
    let light_cheek = mean(118, 82, 130, 92);
    let dark_forehead = mean(230, 55, 244, 62);
    let background = mean(5, 5, 40, 40);
    let shirt = mean(150, 170, 200, 178);
    assert!(light_cheek > 200.0, "light skin mask {light_cheek}");
    assert!(dark_forehead > 200.0, "dark skin mask {dark_forehead}");
    assert!(background < 40.0, "background mask {background}");
    assert!(shirt < 40.0, "shirt mask {shirt}");
}

/// Standard deviation of luma in a rectangle.
fn luma_std(f: &VideoFrame, x0: usize, y0: usize, x1: usize, y1: usize) -> f64 {
    let w = f.width as usize;
    let v: Vec<f64> = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .map(|(x, y)| f.data[y * w + x] as f64)
        .collect();
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn beauty_smooths_skin_and_keeps_the_background_sharp() {
    let frame = portrait(640, 360);
    let mut s = FilterSettings::default();
    s.skin_mask.enabled = true;
    s.smoothing.enabled = true;
    let out = run(&s, BackendChoice::Gpu(gpu()), &frame);
    // A cheek of the lighter face: blemishes and grain are smoothed.
    let before = luma_std(&frame, 236, 170, 262, 190);
    let after = luma_std(&out, 236, 170, 262, 190);
    assert!(
        after < before * 0.7,
        "cheek texture {before:.1} -> {after:.1}"
    );
    // The textured shirt is not skin: left as it was.
    let shirt_before = luma_std(&frame, 300, 340, 340, 356);
    let shirt_after = luma_std(&out, 300, 340, 340, 356);
    assert!(
        (shirt_after - shirt_before).abs() < 0.05 * shirt_before,
        "shirt {shirt_before:.1} -> {shirt_after:.1}"
    );
}

#[test]
fn watermark_only_touches_its_corner() {
    let frame = card(320, 240, 3);
    let mut s = FilterSettings::default();
    s.watermark.enabled = true;
    s.watermark.position = Corner::TopRight;
    s.watermark.scale = 0.25;
    s.watermark.margin = 0.05;
    let out = run(&s, BackendChoice::Gpu(gpu()), &frame);
    // Logo: 80 px wide, 25 high, 12 px from the top and right edges.
    let w = 320usize;
    let mut changed_outside = 0;
    let mut changed_inside = 0;
    for y in 0..240 {
        for x in 0..w {
            let inside = (228..308).contains(&x) && (12..37).contains(&y);
            let differs = out.data[y * w + x] != frame.data[y * w + x];
            match (inside, differs) {
                (true, true) => changed_inside += 1,
                (false, true) => changed_outside += 1,
                _ => {}
            }
        }
    }
    assert_eq!(changed_outside, 0);
    assert!(changed_inside > 80 * 25 / 2, "{changed_inside} logo pixels");
}

#[test]
fn whitening_and_color_move_levels_the_right_way() {
    let frame = portrait(320, 180);
    let mean = |f: &VideoFrame| {
        let n = (f.width * f.height) as usize;
        f.data[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64
    };
    let chroma_spread = |f: &VideoFrame| {
        let n = (f.width * f.height) as usize;
        f.data[n..]
            .iter()
            .map(|&v| (v as f64 - 128.0).abs())
            .sum::<f64>()
    };
    let ctx = gpu();
    let whiter = run(
        &only(Stage::Whitening),
        BackendChoice::Gpu(ctx.clone()),
        &frame,
    );
    assert!(mean(&whiter) > mean(&frame) + 5.0);
    // Skin only: faces get brighter, the background stays as it was.
    let mut skin = only(Stage::Whitening);
    skin.skin_mask.enabled = true;
    assert!(skin.whitening.skin_only);
    let out = run(&skin, BackendChoice::Gpu(ctx.clone()), &frame);
    let luma_at = |f: &VideoFrame, x: usize, y: usize| f.data[y * 320 + x] as i32;
    assert!(
        luma_at(&out, 124, 87) > luma_at(&frame, 124, 87) + 5,
        "cheek"
    );
    let changed = (5..40)
        .flat_map(|y| (5..40).map(move |x| y * 320 + x))
        .filter(|&i| out.data[i] != frame.data[i])
        .count();
    assert_eq!(changed, 0, "background pixels brightened");
    let mut grey = FilterSettings::default();
    grey.color.enabled = true;
    grey.color.saturation = 0.0;
    let g = run(&grey, BackendChoice::Gpu(ctx), &frame);
    assert_eq!(chroma_spread(&g), 0.0);
    assert!(
        g.data[..320 * 180] == frame.data[..320 * 180],
        "luma changed"
    );
}

#[test]
fn stats_time_each_stage_and_report_the_budget() {
    let ctx = gpu();
    let timestamps = ctx.timestamps;
    let frame = card(320, 240, 1);
    let settings = FilterSettings::beauty();
    for choice in [BackendChoice::Gpu(ctx), BackendChoice::Cpu] {
        let mut chain = VideoFilterChain::with_backend(&settings, 320, 240, choice).unwrap();
        chain.set_profiling(true);
        for _ in 0..3 {
            let mut f = frame.clone();
            chain.process(&mut f).unwrap();
        }
        let stats = chain.stats();
        assert_eq!(stats.frames, 3);
        assert_eq!(
            stats.stages.iter().map(|s| s.stage).collect::<Vec<_>>(),
            chain.stages()
        );
        assert!(stats.frame_ms > 0.0);
        assert!(stats.stages.iter().all(|s| s.avg_ms > 0.0), "{stats:?}");
        if matches!(chain.backend(), Backend::Gpu(_)) && timestamps {
            assert_eq!(stats.timing, TimingSource::GpuTimestamps);
        }
        assert!(chain.over_budget(1.0).is_none(), "{stats:?}");
        let warning = chain
            .over_budget(100_000.0)
            .expect("nothing runs at 100k fps");
        let heaviest = stats.heaviest().unwrap().stage;
        assert!(warning.to_string().contains(heaviest.name()), "{warning}");
    }
}

#[test]
fn cpu_backend_says_so_and_validation_names_the_field() {
    let chain =
        VideoFilterChain::with_backend(&FilterSettings::beauty(), 64, 64, BackendChoice::Cpu)
            .unwrap();
    assert_eq!(chain.backend(), Backend::Cpu);
    assert!(chain.status().contains("CPU"), "{}", chain.status());
    let mut bad = FilterSettings::default();
    bad.smoothing.amount = 1.5;
    let e = VideoFilterChain::with_backend(&bad, 64, 64, BackendChoice::Cpu)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("video_filters.smoothing.amount = 1.5"),
        "{e}"
    );
    let mut missing = FilterSettings::default();
    missing.watermark.enabled = true;
    missing.watermark.path = Some("/nonexistent/logo.png".into());
    let e = VideoFilterChain::with_backend(&missing, 64, 64, BackendChoice::Cpu)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("watermark.path"), "{e:#}");
    let mut chain =
        VideoFilterChain::with_backend(&FilterSettings::beauty(), 64, 64, BackendChoice::Cpu)
            .unwrap();
    let mut wrong = VideoFrame::black(32, 32, 0, 0);
    assert!(chain.process(&mut wrong).is_err());
}

#[test]
fn shipped_assets_match_their_generators() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let logo = RgbaImage::load_png(&root.join("watermark.png")).unwrap();
    assert!(
        logo == test_image::badge(480, 150),
        "assets/watermark.png is stale"
    );
    let before = RgbaImage::load_png(&root.join("beauty-before.png")).unwrap();
    assert!(
        before == test_image::portrait(640, 360),
        "assets/beauty-before.png is stale"
    );
}

#[test]
fn tiny_and_odd_frames_match_cpu_reference() {
    let ctx = gpu();
    let mut every = FilterSettings::beauty();
    every.watermark.enabled = true;
    every.watermark.scale = 0.5;
    let mut settings: Vec<FilterSettings> = Stage::ALL.iter().map(|&s| only(s)).collect();
    settings.push(every);
    // 6x2 and 10x6 frames are not a whole number of 32-bit words.
    for (w, h) in [(2, 2), (6, 2), (10, 6), (66, 38)] {
        let frame = card(w.max(64), h.max(64), 2);
        let mut small = VideoFrame::black(w, h, 0, 0);
        for (i, b) in small.data.iter_mut().enumerate() {
            *b = frame.data[(i * 7919) % frame.data.len()];
        }
        for s in &settings {
            let g = run(s, BackendChoice::Gpu(ctx.clone()), &small);
            let c = run(s, BackendChoice::Cpu, &small);
            let db = psnr(&c.data, &g.data);
            assert!(db >= 40.0, "{w}x{h} {:?}: {db:.1} dB", s.active_stages());
        }
    }
}

/// Reads a `width`x`height` RGBA texture back (width * 4 must be a multiple of 256).
fn read_texture(ctx: &GpuContext, texture: &wgpu::Texture, width: u32, height: u32) -> Vec<u8> {
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (width * height * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(width * 4),
                rows_per_image: Some(height),
            },
        },
        texture.size(),
    );
    ctx.queue.submit([encoder.finish()]);
    buffer.map_async(wgpu::MapMode::Read, .., |r| r.expect("mapping"));
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    buffer.get_mapped_range(..).unwrap().to_vec()
}

#[test]
fn preview_texture_shows_the_filtered_frame() {
    let ctx = gpu();
    let (w, h) = (256, 144);
    let frame = portrait(w, h);
    for settings in [FilterSettings::default(), FilterSettings::beauty()] {
        let mut chain =
            VideoFilterChain::with_backend(&settings, w, h, BackendChoice::Gpu(ctx.clone()))
                .unwrap();
        assert!(chain.preview_texture().is_none());
        let texture = chain.enable_preview().unwrap();
        let mut out = frame.clone();
        chain.process(&mut out).unwrap();
        if !chain.is_active() {
            assert!(
                out.data == frame.data,
                "the preview must not change the frame"
            );
        } else {
            assert!(out.data != frame.data, "beauty changed nothing");
        }
        let rgba = read_texture(&ctx, &texture, w, h);
        let expected = RgbaImage::from_i420(&out);
        let db = psnr(&expected.data, &rgba);
        assert!(db >= 40.0, "preview vs the filtered frame: {db:.1} dB");
        // Settings changes keep the preview.
        chain.update(&FilterSettings::beauty()).unwrap();
        assert!(chain.preview_texture().is_some());
    }
    let mut cpu =
        VideoFilterChain::with_backend(&FilterSettings::beauty(), w, h, BackendChoice::Cpu)
            .unwrap();
    assert!(cpu.enable_preview().is_err());
}
