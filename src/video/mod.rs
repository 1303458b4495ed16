//! Video filters between capture and encoder: denoise, skin mask, skin smoothing, whitening,
//! colour, sharpen and watermark, on I420 frames in place.
//!
//! They run as WGSL compute shaders (`shaders/`, one file per filter) on the application's
//! GPU device ([`gpu::GpuContext`]), with the readback of frame N overlapping the encoding of
//! frame N-1 ([`VideoFilterChain::push`]). When no GPU adapter exists at all, the same chain
//! runs on the CPU reference ([`cpu`]), far slower, and [`VideoFilterChain::status`] says so.
//! With every filter off, frames pass through untouched (bit-exact, no GPU work).

pub mod cpu;
pub mod gpu;
mod gpu_chain;
pub mod image;
mod params;
pub mod settings;
pub mod snapshot;
pub mod stats;
pub mod test_image;

pub use settings::{FilterSettings, Stage};
pub use stats::{BudgetWarning, FilterStats, StageTime, TimingSource};

use crate::media::VideoFrame;
use anyhow::{bail, Context};
use gpu::GpuContext;
use gpu_chain::GpuChain;
use params::{PlacedLogo, Uniform};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// The built-in watermark (`assets/watermark.png`), used when no logo file is set.
pub const DEFAULT_LOGO_PNG: &[u8] = include_bytes!("../../assets/watermark.png");

/// One active stage with the numbers it runs with.
pub(crate) struct PlannedStage {
    pub stage: Stage,
    pub uniform: Uniform,
    pub writes_frame: bool,
}

/// What a chain runs for one frame size: settings turned into per-stage numbers.
pub(crate) struct Plan {
    pub width: u32,
    pub height: u32,
    pub stages: Vec<PlannedStage>,
    pub logo: Option<PlacedLogo>,
}

impl Plan {
    fn new(settings: &FilterSettings, width: u32, height: u32) -> anyhow::Result<Self> {
        settings.validate()?;
        if width < 2 || height < 2 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            bail!("video filters need an even frame size of at least 2x2, not {width}x{height}");
        }
        let stages = settings.active_stages();
        let logo = if stages.contains(&Stage::Watermark) {
            let image = match &settings.watermark.path {
                Some(path) => image::RgbaImage::load_png(path)
                    .with_context(|| "video_filters.watermark.path".to_string())?,
                None => image::RgbaImage::decode_png(DEFAULT_LOGO_PNG)?,
            };
            Some(params::place_logo(
                &image,
                &settings.watermark,
                width,
                height,
            ))
        } else {
            None
        };
        let stages = stages
            .into_iter()
            .map(|stage| PlannedStage {
                stage,
                uniform: params::stage_uniform(stage, settings, width, height, logo.as_ref()),
                writes_frame: params::writes_frame(stage, settings),
            })
            .collect();
        Ok(Plan {
            width,
            height,
            stages,
            logo,
        })
    }
}

/// Which implementation runs the filters.
#[derive(Clone, Debug)]
pub enum BackendChoice {
    /// The process-wide GPU ([`GpuContext::shared`]), or the CPU reference when there is none.
    Auto,
    /// This GPU device; no fallback.
    Gpu(Arc<GpuContext>),
    /// The CPU reference (tests, or when the GPU is wanted for something else).
    Cpu,
}

/// Where a chain ended up running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// On a GPU adapter, described as in [`gpu::describe_adapter`].
    Gpu(String),
    /// On the CPU reference implementation.
    Cpu,
}

/// The CPU reference chain with its reusable buffers.
struct CpuChain {
    a: Vec<f32>,
    b: Vec<f32>,
    mask: Vec<f32>,
    stats: FilterStats,
}

impl CpuChain {
    fn new(plan: &Plan) -> Self {
        let stages: Vec<Stage> = plan.stages.iter().map(|s| s.stage).collect();
        CpuChain {
            a: Vec::new(),
            b: Vec::new(),
            mask: vec![0.0; (plan.width * plan.height) as usize],
            stats: FilterStats::new(TimingSource::WallClock, &stages, plan.width, plan.height),
        }
    }

    fn process(&mut self, plan: &Plan, frame: &mut VideoFrame) {
        let t0 = Instant::now();
        self.a = cpu::unpack(&frame.data);
        self.b.resize(self.a.len(), 0.0);
        let mut overhead = t0.elapsed();
        let mut times = Vec::with_capacity(plan.stages.len());
        for p in &plan.stages {
            let t = Instant::now();
            cpu::run_stage(
                p.stage,
                &p.uniform,
                plan.logo.as_ref(),
                &self.a,
                &mut self.b,
                &mut self.mask,
            );
            if p.writes_frame {
                std::mem::swap(&mut self.a, &mut self.b);
            }
            times.push(t.elapsed());
        }
        let t = Instant::now();
        cpu::pack(&self.a, &mut frame.data);
        overhead += t.elapsed();
        self.stats.record(&times, overhead, None);
    }
}

enum Engine {
    Gpu(Box<GpuChain>),
    Cpu(CpuChain),
}

/// A frame handed to [`VideoFilterChain::push`] and not yet returned.
struct InFlight {
    frame: VideoFrame,
    /// Staging buffer holding its result; `None` when it needed no filtering.
    slot: Option<usize>,
}

/// The video filter chain for one frame size: build it from the settings, then feed it every
/// frame from the video thread.
pub struct VideoFilterChain {
    settings: FilterSettings,
    plan: Plan,
    engine: Engine,
    status: String,
    in_flight: VecDeque<InFlight>,
}

impl VideoFilterChain {
    /// A chain on the process-wide GPU, or on the CPU reference when no adapter exists (the
    /// status says which, and why).
    pub fn new(settings: &FilterSettings, width: u32, height: u32) -> anyhow::Result<Self> {
        Self::with_backend(settings, width, height, BackendChoice::Auto)
    }

    /// A chain on a chosen backend.
    pub fn with_backend(
        settings: &FilterSettings,
        width: u32,
        height: u32,
        choice: BackendChoice,
    ) -> anyhow::Result<Self> {
        let plan = Plan::new(settings, width, height)?;
        let (engine, status) = match choice {
            BackendChoice::Cpu => (
                Engine::Cpu(CpuChain::new(&plan)),
                "video filters on the CPU reference".to_string(),
            ),
            BackendChoice::Gpu(ctx) => {
                let status = format!("video filters on the GPU: {}", ctx.describe());
                (
                    Engine::Gpu(Box::new(GpuChain::new(ctx, &plan, 2)?)),
                    status,
                )
            }
            BackendChoice::Auto => match GpuContext::shared() {
                Ok(ctx) => {
                    let status = format!("video filters on the GPU: {}", ctx.describe());
                    (
                        Engine::Gpu(Box::new(GpuChain::new(ctx, &plan, 2)?)),
                        status,
                    )
                }
                Err(e) => (
                    Engine::Cpu(CpuChain::new(&plan)),
                    format!(
                        "{e:#}: video filters fall back to the CPU reference, which is too slow for real time above small sizes"
                    ),
                ),
            },
        };
        Ok(VideoFilterChain {
            settings: settings.clone(),
            plan,
            engine,
            status,
            in_flight: VecDeque::new(),
        })
    }

    /// One line for the log or status bar: which backend runs the filters and why.
    pub fn status(&self) -> &str {
        &self.status
    }

    /// Where the filters run.
    pub fn backend(&self) -> Backend {
        match &self.engine {
            Engine::Gpu(g) => Backend::Gpu(g.context().describe()),
            Engine::Cpu(_) => Backend::Cpu,
        }
    }

    /// The settings the chain runs with.
    pub fn settings(&self) -> &FilterSettings {
        &self.settings
    }

    /// Frame size the chain was built for.
    pub fn size(&self) -> (u32, u32) {
        (self.plan.width, self.plan.height)
    }

    /// Whether any filter would change the picture; when not, frames pass untouched.
    pub fn is_active(&self) -> bool {
        !self.plan.stages.is_empty()
    }

    /// Whether frames go through the GPU: filters are active or a preview is wanted.
    fn uses_gpu(&self) -> bool {
        match &self.engine {
            Engine::Gpu(g) => self.is_active() || g.preview_texture().is_some(),
            Engine::Cpu(_) => false,
        }
    }

    /// Also draws every filtered frame into an RGBA texture on the chain's device (GPU only),
    /// so a window on the same device (see [`GpuContext::from_existing`]) shows it with no
    /// readback. With every filter off frames still go through the GPU for the preview, and
    /// still come out bit-exact. Returns the texture (`Rgba8Unorm`, frame size, usable as
    /// `TEXTURE_BINDING`); it is updated at each submission.
    pub fn enable_preview(&mut self) -> anyhow::Result<wgpu::Texture> {
        match &mut self.engine {
            Engine::Gpu(g) => g.enable_preview(),
            Engine::Cpu(_) => bail!("no preview texture: the filters run on the CPU"),
        }
    }

    /// The preview texture, once [`enable_preview`](Self::enable_preview) was called.
    pub fn preview_texture(&self) -> Option<&wgpu::Texture> {
        match &self.engine {
            Engine::Gpu(g) => g.preview_texture(),
            Engine::Cpu(_) => None,
        }
    }

    /// The active stages in processing order.
    pub fn stages(&self) -> Vec<Stage> {
        self.plan.stages.iter().map(|s| s.stage).collect()
    }

    /// Applies new settings (same frame size) from the next frame on; frames already in
    /// flight finish with the old ones. Invalid settings are rejected and the old ones kept.
    pub fn update(&mut self, settings: &FilterSettings) -> anyhow::Result<()> {
        let plan = Plan::new(settings, self.plan.width, self.plan.height)?;
        match &mut self.engine {
            Engine::Gpu(g) => {
                // Finish what is in flight with the old passes; the frames stay queued and
                // come out of the next push or flush.
                for f in self.in_flight.iter_mut() {
                    if let Some(slot) = f.slot.take() {
                        g.finish(slot, &mut f.frame)?;
                    }
                }
                g.set_plan(&plan)?;
            }
            Engine::Cpu(c) => *c = CpuChain::new(&plan),
        }
        self.plan = plan;
        self.settings = settings.clone();
        Ok(())
    }

    /// How many frames may be in flight on the GPU (1: synchronous readback; 2, the default:
    /// double-buffered; 3: triple-buffered). Ignored on the CPU. Only between streams
    /// (nothing in flight).
    pub fn set_pipeline_depth(&mut self, frames: usize) -> anyhow::Result<()> {
        if !self.in_flight.is_empty() {
            bail!("cannot change the pipeline depth with frames in flight: flush first");
        }
        if let Engine::Gpu(g) = &mut self.engine {
            g.set_slots(frames)?;
        }
        Ok(())
    }

    /// Frames [`push`](Self::push) may hold back before returning them (0 on the CPU).
    pub fn latency_frames(&self) -> usize {
        match &self.engine {
            Engine::Gpu(g) => g.slot_count() - 1,
            Engine::Cpu(_) => 0,
        }
    }

    /// On a GPU without timestamp queries, time each stage by waiting for it: per-stage
    /// numbers for benchmarks at the cost of the overlap. No effect elsewhere.
    pub fn set_profiling(&mut self, on: bool) {
        if let Engine::Gpu(g) = &mut self.engine {
            g.set_profiling(on);
        }
    }

    /// Filters one frame in place and returns when it is done (no overlap with the caller).
    /// Not to be mixed with frames pending in [`push`](Self::push).
    pub fn process(&mut self, frame: &mut VideoFrame) -> anyhow::Result<()> {
        if !self.in_flight.is_empty() {
            bail!("process() called with frames still in flight: call flush() first");
        }
        if !self.is_active() && !self.uses_gpu() {
            return Ok(());
        }
        match &mut self.engine {
            Engine::Cpu(c) => {
                check_size(&self.plan, frame)?;
                c.process(&self.plan, frame);
                Ok(())
            }
            Engine::Gpu(g) => {
                g.submit(frame, 0)?;
                g.finish(0, frame)
            }
        }
    }

    /// Hands a frame to the chain and returns the frames that are finished, oldest first,
    /// each with its own pts and index. On the GPU the frame just pushed usually comes back
    /// from a later call, so the GPU filters it while the caller encodes the previous one;
    /// call [`flush`](Self::flush) at the end of the stream for the rest.
    pub fn push(&mut self, frame: VideoFrame) -> anyhow::Result<Vec<VideoFrame>> {
        let mut frame = frame;
        let active = self.is_active();
        let on_gpu = self.uses_gpu();
        let gpu = match &mut self.engine {
            Engine::Gpu(g) if on_gpu => Some(g),
            _ => None,
        };
        match gpu {
            Some(g) => {
                // A free staging buffer: every one in use means waiting for the oldest.
                let used: Vec<usize> = self.in_flight.iter().filter_map(|f| f.slot).collect();
                if used.len() >= g.slot_count() {
                    let mut out = Vec::new();
                    drain_front(g, &mut self.in_flight, &mut out, true)?;
                    return self.push_after(frame, out);
                }
                let slot = (0..g.slot_count())
                    .find(|s| !used.contains(s))
                    .expect("a free slot");
                g.submit(&frame, slot)?;
                self.in_flight.push_back(InFlight {
                    frame,
                    slot: Some(slot),
                });
                let mut out = Vec::new();
                // Bounded latency: with every buffer busy, wait for the oldest frame.
                let busy = self.in_flight.iter().filter(|f| f.slot.is_some()).count();
                drain_front(g, &mut self.in_flight, &mut out, busy >= g.slot_count())?;
                Ok(out)
            }
            None => {
                if let Engine::Cpu(c) = &mut self.engine {
                    if active {
                        check_size(&self.plan, &frame)?;
                        c.process(&self.plan, &mut frame);
                    }
                }
                self.in_flight.push_back(InFlight { frame, slot: None });
                self.drain_all()
            }
        }
    }

    /// Continues a push that first had to wait for a staging buffer.
    fn push_after(
        &mut self,
        frame: VideoFrame,
        mut out: Vec<VideoFrame>,
    ) -> anyhow::Result<Vec<VideoFrame>> {
        out.extend(self.push(frame)?);
        Ok(out)
    }

    /// Waits for every frame in flight and returns them, oldest first.
    pub fn flush(&mut self) -> anyhow::Result<Vec<VideoFrame>> {
        self.drain_all()
    }

    fn drain_all(&mut self) -> anyhow::Result<Vec<VideoFrame>> {
        let mut out = Vec::new();
        while let Some(mut f) = self.in_flight.pop_front() {
            if let (Some(slot), Engine::Gpu(g)) = (f.slot, &mut self.engine) {
                g.finish(slot, &mut f.frame)?;
            }
            out.push(f.frame);
        }
        Ok(out)
    }

    /// Timings per stage and per frame.
    pub fn stats(&self) -> &FilterStats {
        match &self.engine {
            Engine::Gpu(g) => &g.stats,
            Engine::Cpu(c) => &c.stats,
        }
    }

    /// `None` while the chain keeps up with `fps`; else how far over it is and the remedy
    /// (process at 720p and upscale, or drop the heaviest stage).
    pub fn over_budget(&self, fps: f64) -> Option<BudgetWarning> {
        if !self.is_active() {
            return None;
        }
        self.stats().over_budget(fps)
    }
}

/// Returns finished frames from the front of the queue: the oldest one even if that means
/// waiting (`wait`), then any that are already done.
fn drain_front(
    g: &mut GpuChain,
    queue: &mut VecDeque<InFlight>,
    out: &mut Vec<VideoFrame>,
    wait: bool,
) -> anyhow::Result<()> {
    let mut must_wait = wait;
    while let Some(front) = queue.front() {
        let ready = match front.slot {
            None => true,
            Some(slot) => must_wait || g.is_ready(slot),
        };
        if !ready {
            break;
        }
        let mut f = queue.pop_front().expect("front exists");
        if let Some(slot) = f.slot {
            g.finish(slot, &mut f.frame)?;
            must_wait = false;
        }
        out.push(f.frame);
    }
    Ok(())
}

fn check_size(plan: &Plan, frame: &VideoFrame) -> anyhow::Result<()> {
    if (frame.width, frame.height) != (plan.width, plan.height)
        || frame.data.len() != VideoFrame::i420_len(plan.width, plan.height)
    {
        bail!(
            "frame is {}x{} ({} bytes) but the filter chain was set up for {}x{}",
            frame.width,
            frame.height,
            frame.data.len(),
            plan.width,
            plan.height
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_can_move_to_the_video_thread() {
        fn send<T: Send>() {}
        send::<VideoFilterChain>();
        send::<Arc<GpuContext>>();
    }
}
