//! The filter chain on the GPU: I420 bytes are uploaded, unpacked to floats, run through one
//! compute pass per active filter (ping-ponging between two buffers), packed back to bytes and
//! copied to one of several staging buffers that the CPU maps when the frame is wanted. With
//! more than one staging buffer the GPU filters frame N while the encoder works on N-1.

use super::gpu::GpuContext;
use super::params::{dispatch_size, Uniform};
use super::settings::Stage;
use super::stats::{FilterStats, TimingSource};
use super::Plan;
use crate::media::VideoFrame;
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

/// Source of each kernel: the shared header followed by the filter's own file.
macro_rules! shader {
    ($file:literal) => {
        concat!(
            include_str!("../../shaders/common.wgsl"),
            include_str!(concat!("../../shaders/", $file))
        )
    };
}

/// A compute kernel of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kernel {
    Unpack,
    Pack,
    Filter(Stage),
}

impl Kernel {
    fn source(self) -> &'static str {
        match self {
            Kernel::Unpack => shader!("unpack.wgsl"),
            Kernel::Pack => shader!("pack.wgsl"),
            Kernel::Filter(Stage::Denoise) => shader!("denoise.wgsl"),
            Kernel::Filter(Stage::SkinMask) => shader!("skin_mask.wgsl"),
            Kernel::Filter(Stage::Smoothing) => shader!("smoothing.wgsl"),
            Kernel::Filter(Stage::Whitening) => shader!("whitening.wgsl"),
            Kernel::Filter(Stage::Color) => shader!("color.wgsl"),
            Kernel::Filter(Stage::Sharpen) => shader!("sharpen.wgsl"),
            Kernel::Filter(Stage::Watermark) => shader!("watermark.wgsl"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kernel::Unpack => "unpack",
            Kernel::Pack => "pack",
            Kernel::Filter(s) => s.name(),
        }
    }
}

/// One recorded compute pass.
struct Pass {
    kernel: Kernel,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// Map state of a staging buffer, set by the map callback.
const MAP_PENDING: u8 = 0;
const MAP_OK: u8 = 1;
const MAP_FAILED: u8 = 2;

/// A staging buffer and the frame whose result it will hold.
struct Slot {
    buffer: wgpu::Buffer,
    state: Arc<AtomicU8>,
    submission: Option<wgpu::SubmissionIndex>,
    submitted_at: Option<Instant>,
    /// Per-pass wall-clock times when profiling without timestamps.
    wall: Vec<Duration>,
}

/// GPU resources sized for one frame size.
pub(crate) struct GpuChain {
    ctx: Arc<GpuContext>,
    width: u32,
    height: u32,
    len: usize,
    words: u64,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
    input: wgpu::Buffer,
    planes: [wgpu::Buffer; 2],
    mask: wgpu::Buffer,
    output: wgpu::Buffer,
    passes: Vec<Pass>,
    stages: Vec<Stage>,
    slots: Vec<Slot>,
    /// Offset of the timestamps in each staging buffer.
    ts_offset: u64,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    profile_wall: bool,
    /// Working buffer that holds the finished frame (input of the pack pass).
    last: usize,
    preview: Option<Preview>,
    pub(crate) stats: FilterStats,
}

/// The RGBA texture a window can draw, and the pass that fills it.
struct Preview {
    texture: wgpu::Texture,
    pipeline: wgpu::ComputePipeline,
    frame_group: wgpu::BindGroup,
    texture_group: wgpu::BindGroup,
    groups: (u32, u32),
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl GpuChain {
    /// Allocates buffers for `plan`'s frame size, compiles its kernels and records its passes.
    pub(crate) fn new(ctx: Arc<GpuContext>, plan: &Plan, slots: usize) -> anyhow::Result<Self> {
        let device = &ctx.device;
        let (width, height) = (plan.width, plan.height);
        let len = VideoFrame::i420_len(width, height);
        let words = len.div_ceil(4) as u64;
        let limit = device.limits().max_storage_buffer_binding_size;
        if len as u64 * 4 > limit {
            bail!(
                "{width}x{height} frames need {} MiB buffers but this GPU allows {} MiB",
                (len * 4) >> 20,
                limit >> 20
            );
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("video filter"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, false),
                storage(3, false),
                storage(4, true),
                storage(5, true),
                storage(6, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("video filter"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16),
                usage,
                mapped_at_creation: false,
            })
        };
        let st = wgpu::BufferUsages::STORAGE;
        let input = buffer("frame in", words * 4, st | wgpu::BufferUsages::COPY_DST);
        let planes = [
            buffer("planes a", len as u64 * 4, st),
            buffer("planes b", len as u64 * 4, st),
        ];
        let mask = buffer("skin mask", (width * height) as u64 * 4, st);
        let output = buffer("frame out", words * 4, st | wgpu::BufferUsages::COPY_SRC);
        let mut chain = GpuChain {
            stats: FilterStats::new(TimingSource::WallClock, &[], width, height),
            ctx,
            width,
            height,
            len,
            words,
            layout,
            pipeline_layout,
            pipelines: HashMap::new(),
            input,
            planes,
            mask,
            output,
            passes: Vec::new(),
            stages: Vec::new(),
            slots: Vec::new(),
            ts_offset: 0,
            queries: None,
            profile_wall: false,
            last: 0,
            preview: None,
        };
        chain.set_plan(plan)?;
        chain.set_slots(slots)?;
        Ok(chain)
    }

    /// Device and adapter this chain runs on.
    pub(crate) fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// With no timestamp queries, time each pass by waiting for it (slower; for benchmarks).
    pub(crate) fn set_profiling(&mut self, on: bool) {
        self.profile_wall = on;
    }

    fn pipeline(&mut self, kernel: Kernel) -> anyhow::Result<()> {
        if self.pipelines.contains_key(&kernel) {
            return Ok(());
        }
        let device = &self.ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.label()),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.label()),
            layout: Some(&self.pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("compiling the {} shader: {e}", kernel.label());
        }
        self.pipelines.insert(kernel, pipeline);
        Ok(())
    }

    /// Records the passes of `plan` (same frame size) and resets the statistics.
    pub(crate) fn set_plan(&mut self, plan: &Plan) -> anyhow::Result<()> {
        if (plan.width, plan.height) != (self.width, self.height) {
            bail!("a GPU chain cannot change frame size");
        }
        let device = self.ctx.device.clone();
        let logo_texels: Vec<[f32; 4]> = match &plan.logo {
            Some(l) => l.texels.clone(),
            None => vec![[0.0; 4]],
        };
        let logo = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("logo"),
            contents: bytemuck::cast_slice(&logo_texels),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let words = self.words as u32;
        let len = self.len as u32;
        let mut passes = Vec::new();
        let mut cur = 0usize;
        let frame = |count| Uniform::frame(self.width, self.height, count);
        let mut kernels = vec![(Kernel::Unpack, frame(len), true)];
        for p in &plan.stages {
            kernels.push((Kernel::Filter(p.stage), p.uniform, p.writes_frame));
        }
        kernels.push((Kernel::Pack, frame(words), false));
        for (kernel, uniform, writes) in kernels {
            self.pipeline(kernel)?;
            // Each pass reads one working buffer and writes the other; unpack fills buffer 0
            // and every later frame-writing pass swaps the roles.
            let src = if kernel == Kernel::Unpack { 1 } else { cur };
            let bind_group = self.bind_group(kernel.label(), &uniform, src, &logo)?;
            if kernel != Kernel::Unpack && writes {
                cur = 1 - cur;
            }
            passes.push(Pass {
                kernel,
                bind_group,
                groups: dispatch_size(uniform.count),
            });
        }
        self.passes = passes;
        self.last = cur;
        self.stages = plan.stages.iter().map(|p| p.stage).collect();
        if self.preview.is_some() {
            self.enable_preview()?;
        }
        let timing = if self.ctx.timestamps {
            TimingSource::GpuTimestamps
        } else {
            TimingSource::WallClock
        };
        self.stats = FilterStats::new(timing, &self.stages, self.width, self.height);
        // Staging buffers hold the frame, then (256-aligned) two timestamps per pass.
        self.ts_offset = (self.words * 4).next_multiple_of(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT);
        self.queries = self.ctx.timestamps.then(|| {
            let count = 2 * self.passes.len() as u32;
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("filter timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: count as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (set, resolve)
        });
        let n = self.slots.len();
        if n > 0 {
            self.set_slots(n)?;
        }
        Ok(())
    }

    /// The preview texture, if enabled.
    pub(crate) fn preview_texture(&self) -> Option<&wgpu::Texture> {
        self.preview.as_ref().map(|p| &p.texture)
    }

    /// Creates (or, after a new plan, re-binds) the preview texture and its pass.
    pub(crate) fn enable_preview(&mut self) -> anyhow::Result<wgpu::Texture> {
        let device = self.ctx.device.clone();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let texture = match self.preview.take() {
            Some(p) => p.texture,
            None => device.create_texture(&wgpu::TextureDescriptor {
                label: Some("filtered preview"),
                size: wgpu::Extent3d {
                    width: self.width,
                    height: self.height,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba8Unorm,
                usage: wgpu::TextureUsages::STORAGE_BINDING
                    | wgpu::TextureUsages::TEXTURE_BINDING
                    | wgpu::TextureUsages::COPY_SRC,
                view_formats: &[],
            }),
        };
        let texture_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("preview"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::StorageTexture {
                    access: wgpu::StorageTextureAccess::WriteOnly,
                    format: wgpu::TextureFormat::Rgba8Unorm,
                    view_dimension: wgpu::TextureViewDimension::D2,
                },
                count: None,
            }],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("preview"),
            bind_group_layouts: &[Some(&self.layout), Some(&texture_layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("preview"),
            source: wgpu::ShaderSource::Wgsl(shader!("preview.wgsl").into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("preview"),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let uniform = Uniform::frame(self.width, self.height, self.width * self.height);
        let frame_group = self.bind_group("preview", &uniform, self.last, &self.dummy_logo())?;
        let view = texture.create_view(&Default::default());
        let texture_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("preview"),
            layout: &texture_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::TextureView(&view),
            }],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("setting up the preview texture: {e}");
        }
        self.preview = Some(Preview {
            texture: texture.clone(),
            pipeline,
            frame_group,
            texture_group,
            groups: dispatch_size(uniform.count),
        });
        Ok(texture)
    }

    fn dummy_logo(&self) -> wgpu::Buffer {
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no logo"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    }

    /// The chain's bind group for a pass reading working buffer `src` (writing the other).
    fn bind_group(
        &self,
        label: &str,
        uniform: &Uniform,
        src: usize,
        logo: &wgpu::Buffer,
    ) -> anyhow::Result<wgpu::BindGroup> {
        let device = &self.ctx.device;
        let ubuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(uniform),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let entries = [
            ubuf.as_entire_binding(),
            self.planes[src].as_entire_binding(),
            self.planes[1 - src].as_entire_binding(),
            self.mask.as_entire_binding(),
            logo.as_entire_binding(),
            self.input.as_entire_binding(),
            self.output.as_entire_binding(),
        ];
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        Ok(device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &self.layout,
            entries: &entries,
        }))
    }

    /// Number of staging buffers, i.e. frames that can be in flight (1 to 3). Only while
    /// none is in flight.
    pub(crate) fn set_slots(&mut self, n: usize) -> anyhow::Result<()> {
        if self.slots.iter().any(|s| s.submission.is_some()) {
            bail!("cannot resize the readback ring while frames are in flight");
        }
        let size = self.ts_offset + 2 * self.passes.len() as u64 * 8;
        self.slots = (0..n.clamp(1, 3))
            .map(|i| Slot {
                buffer: self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("readback {i}")),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(MAP_PENDING)),
                submission: None,
                submitted_at: None,
                wall: Vec::new(),
            })
            .collect();
        Ok(())
    }

    /// Number of staging buffers.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Uploads `frame` and queues its filtering into staging buffer `slot` (which must be free).
    pub(crate) fn submit(&mut self, frame: &VideoFrame, slot: usize) -> anyhow::Result<()> {
        if (frame.width, frame.height) != (self.width, self.height) || frame.data.len() != self.len
        {
            bail!(
                "frame is {}x{} ({} bytes) but the filter chain was set up for {}x{}",
                frame.width,
                frame.height,
                frame.data.len(),
                self.width,
                self.height
            );
        }
        let queue = &self.ctx.queue;
        let aligned = self.len & !3;
        queue.write_buffer(&self.input, 0, &frame.data[..aligned]);
        if aligned < self.len {
            let mut tail = [0u8; 4];
            tail[..self.len - aligned].copy_from_slice(&frame.data[aligned..]);
            queue.write_buffer(&self.input, aligned as u64, &tail);
        }
        let device = &self.ctx.device;
        let s = &mut self.slots[slot];
        if s.submission.is_some() {
            bail!("readback buffer {slot} is still in use");
        }
        s.wall.clear();
        s.submitted_at = Some(Instant::now());
        let wall_profile = self.profile_wall && self.queries.is_none();
        let mut encoder = device.create_command_encoder(&Default::default());
        for (k, pass) in self.passes.iter().enumerate() {
            {
                let timestamp_writes =
                    self.queries
                        .as_ref()
                        .map(|(set, _)| wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(2 * k as u32),
                            end_of_pass_write_index: Some(2 * k as u32 + 1),
                        });
                let mut cp = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(pass.kernel.label()),
                    timestamp_writes,
                });
                cp.set_pipeline(&self.pipelines[&pass.kernel]);
                cp.set_bind_group(0, &pass.bind_group, &[]);
                cp.dispatch_workgroups(pass.groups.0, pass.groups.1, 1);
            }
            if wall_profile {
                let t = Instant::now();
                let index = queue.submit([encoder.finish()]);
                device
                    .poll(wgpu::PollType::Wait {
                        submission_index: Some(index),
                        timeout: Some(Duration::from_secs(60)),
                    })
                    .map_err(|e| anyhow!("waiting for the {} pass: {e}", pass.kernel.label()))?;
                s.wall.push(t.elapsed());
                encoder = device.create_command_encoder(&Default::default());
            }
        }
        if let Some(p) = &self.preview {
            let mut cp = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("preview"),
                timestamp_writes: None,
            });
            cp.set_pipeline(&p.pipeline);
            cp.set_bind_group(0, &p.frame_group, &[]);
            cp.set_bind_group(1, &p.texture_group, &[]);
            cp.dispatch_workgroups(p.groups.0, p.groups.1, 1);
        }
        encoder.copy_buffer_to_buffer(&self.output, 0, &s.buffer, 0, self.words * 4);
        if let Some((set, resolve)) = &self.queries {
            let n = 2 * self.passes.len() as u32;
            encoder.resolve_query_set(set, 0..n, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, &s.buffer, self.ts_offset, n as u64 * 8);
        }
        let index = queue.submit([encoder.finish()]);
        s.state.store(MAP_PENDING, Ordering::SeqCst);
        let state = s.state.clone();
        s.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            state.store(
                if r.is_ok() { MAP_OK } else { MAP_FAILED },
                Ordering::SeqCst,
            );
        });
        s.submission = Some(index);
        Ok(())
    }

    /// Whether the frame in `slot` is ready to read without waiting.
    pub(crate) fn is_ready(&self, slot: usize) -> bool {
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
        self.slots[slot].state.load(Ordering::SeqCst) != MAP_PENDING
    }

    /// Waits for the frame in `slot`, copies it into `frame.data` and frees the slot.
    pub(crate) fn finish(&mut self, slot: usize, frame: &mut VideoFrame) -> anyhow::Result<()> {
        let s = &mut self.slots[slot];
        let index = s
            .submission
            .take()
            .context("no frame was submitted to this readback buffer")?;
        while s.state.load(Ordering::SeqCst) == MAP_PENDING {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(index.clone()),
                    timeout: Some(Duration::from_secs(60)),
                })
                .map_err(|e| anyhow!("waiting for the GPU filters: {e}"))?;
        }
        if s.state.load(Ordering::SeqCst) == MAP_FAILED {
            bail!("reading the filtered frame back from the GPU failed");
        }
        let elapsed = s.submitted_at.map(|t| t.elapsed());
        let passes = self.passes.len();
        let mut ticks = Vec::new();
        {
            let view = s
                .buffer
                .get_mapped_range(..)
                .map_err(|e| anyhow!("mapping the readback buffer: {e:?}"))?;
            frame.data.copy_from_slice(&view[..self.len]);
            if self.queries.is_some() {
                let ts = &view[self.ts_offset as usize..self.ts_offset as usize + passes * 16];
                ticks = bytemuck::pod_collect_to_vec::<u8, u64>(ts);
            }
        }
        s.buffer.unmap();
        // Per-pass times: GPU timestamps, wall clock when profiling, else only the total.
        let per_pass: Vec<Duration> = if !ticks.is_empty() {
            let period = self.ctx.queue.get_timestamp_period() as f64;
            ticks
                .chunks_exact(2)
                .map(|p| Duration::from_nanos((p[1].saturating_sub(p[0]) as f64 * period) as u64))
                .collect()
        } else if s.wall.len() == passes {
            std::mem::take(&mut s.wall)
        } else {
            Vec::new()
        };
        if per_pass.len() == passes {
            let overhead = per_pass[0] + per_pass[passes - 1];
            self.stats.record(&per_pass[1..passes - 1], overhead, None);
        } else {
            let zero = vec![Duration::ZERO; self.stages.len()];
            self.stats.record(&zero, Duration::ZERO, elapsed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_unpack_pack_readback_is_exact() {
        let ctx = GpuContext::shared().expect("no GPU adapter: install mesa-vulkan-drivers");
        // 6x2 has 18 bytes: the last word is partly padding.
        for (w, h) in [(2, 2), (6, 2), (64, 36)] {
            let plan = Plan {
                width: w,
                height: h,
                stages: Vec::new(),
                logo: None,
            };
            let mut g = GpuChain::new(ctx.clone(), &plan, 1).unwrap();
            let mut frame = VideoFrame::black(w, h, 0, 0);
            for (i, b) in frame.data.iter_mut().enumerate() {
                *b = (i * 37 % 256) as u8;
            }
            g.submit(&frame, 0).unwrap();
            let mut out = frame.clone();
            out.data.fill(0);
            g.finish(0, &mut out).unwrap();
            assert_eq!(out.data, frame.data, "{w}x{h}");
        }
    }
}
