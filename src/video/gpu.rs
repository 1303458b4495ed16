//! The application's one GPU device: opened headless on first use (no window needed), or
//! taken from a GUI that already has one (eframe's wgpu device), so filtered frames can be
//! shown without a readback. Reports which adapter was chosen and why.

use anyhow::{anyhow, Context};
use std::sync::{Arc, OnceLock};

/// Set to `cpu` (or `off`) to skip the GPU and use the CPU reference filters; set to any
/// other text to prefer the adapter whose name contains it (case-insensitive).
pub const GPU_ENV: &str = "ONAIR_GPU";

/// A wgpu device and queue with what the filters need to know about them.
pub struct GpuContext {
    /// The device every filter chain allocates on.
    pub device: wgpu::Device,
    /// Its queue, shared by the chains (submissions run in order).
    pub queue: wgpu::Queue,
    /// The adapter behind the device: name, backend, kind, driver.
    pub info: wgpu::AdapterInfo,
    /// Whether passes can be timed on the GPU itself (timestamp queries were enabled).
    pub timestamps: bool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.describe())
            .field("timestamps", &self.timestamps)
            .finish()
    }
}

/// The process-wide device, created by the first [`GpuContext::shared`] or
/// [`GpuContext::install`].
static SHARED: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();

/// One line per adapter wgpu can see: the list `onair gpu` prints.
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| a.get_info())
        .collect()
}

fn instance() -> wgpu::Instance {
    // WGPU_BACKEND (vulkan, metal, dx12) narrows the backends when set.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env())
}

/// Human-readable description of an adapter: name, API, kind and driver.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU (software rendering)",
        wgpu::DeviceType::Other => "unknown kind",
    };
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let driver = if driver.is_empty() {
        String::new()
    } else {
        format!(", driver {driver}")
    };
    format!("{} ({:?}, {kind}{driver})", info.name, info.backend)
}

impl GpuContext {
    /// Opens a device with no window: the adapter named by `ONAIR_GPU` if set, else the
    /// highest-performance one (a real GPU before a software one).
    pub fn new_headless() -> anyhow::Result<Self> {
        let wanted = std::env::var(GPU_ENV).unwrap_or_default();
        let wanted = wanted.trim().to_lowercase();
        if wanted == "cpu" || wanted == "off" {
            return Err(anyhow!("{GPU_ENV}={wanted} turns the GPU off"));
        }
        let instance = instance();
        let adapter = if wanted.is_empty() {
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            }))
            .map_err(|e| {
                anyhow!("no GPU adapter found ({e}); on Linux without a GPU, install mesa-vulkan-drivers for the CPU Vulkan driver")
            })?
        } else {
            let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
            let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
            all.into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                .with_context(|| {
                    format!("{GPU_ENV}={wanted}: no adapter of that name (found: {names:?})")
                })?
        };
        let info = adapter.get_info();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = if timestamps {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        };
        // Frames larger than the default 128 MiB storage binding (8K floats) need more.
        let limits = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("onair video"),
            required_features,
            required_limits,
            ..Default::default()
        }))
        .with_context(|| format!("opening {}", describe_adapter(&info)))?;
        Ok(GpuContext {
            device,
            queue,
            info,
            timestamps,
        })
    }

    /// Wraps a device the application already has (the GUI's), so filters render into its
    /// textures. Timestamps are used only if that device was created with them.
    pub fn from_existing(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Self {
        let timestamps = device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        GpuContext {
            device,
            queue,
            info,
            timestamps,
        }
    }

    /// The process-wide device, opened headless on first call. Fails (and keeps failing, with
    /// the same message) when no adapter exists.
    pub fn shared() -> anyhow::Result<Arc<GpuContext>> {
        SHARED
            .get_or_init(|| {
                GpuContext::new_headless()
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!(e))
    }

    /// Makes `ctx` the process-wide device (call before any filter chain is created, e.g.
    /// when the GUI has opened its device). Returns false if one was already set.
    pub fn install(ctx: Arc<GpuContext>) -> bool {
        SHARED.set(Ok(ctx)).is_ok()
    }

    /// Name, API, kind and driver of the adapter, e.g. for `onair gpu` and status lines.
    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// Whether this is a software rasteriser (llvmpipe, WARP, SwiftShader) rather than a GPU.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }
}

/// What `onair gpu` prints: every adapter wgpu sees, the one the video filters use (or why
/// none, and that the CPU reference takes over) and whether passes can be timed on the GPU.
pub fn report() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let adapters = list_adapters();
    if adapters.is_empty() {
        out.push_str("adapters: none found\n");
    } else {
        out.push_str("adapters:\n");
        for a in &adapters {
            let _ = writeln!(out, "  {}", describe_adapter(a));
        }
    }
    match GpuContext::shared() {
        Ok(ctx) => {
            let _ = writeln!(out, "video filters: {}", ctx.describe());
            let _ = writeln!(
                out,
                "timing: {}",
                if ctx.timestamps {
                    "GPU timestamp queries"
                } else {
                    "wall clock (no timestamp queries on this adapter)"
                }
            );
            if ctx.is_software() {
                out.push_str("note: a software renderer; fine for tests, too slow for 1080p filters in real time\n");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "video filters: CPU reference ({e:#})");
        }
    }
    out
}
