//! The desktop app (`onair` with no subcommand): one window from preview to Go Live.
//! eframe draws with wgpu on the same device as the video filters, so the preview is the
//! filters' own texture. The window drives the same pipeline as the CLI through
//! [`session::Session`].

pub mod app;
pub mod history;
pub mod session;

pub use app::{AppOptions, OnAirApp};
use eframe::{egui, egui_wgpu};

use crate::config::Settings;
use std::path::PathBuf;
use std::sync::Arc;

/// The wgpu setup of the window: the adapter wgpu prefers (a real GPU before a software one),
/// with the limits and features the filters ask for when they open their own device.
pub fn wgpu_setup() -> egui_wgpu::WgpuSetup {
    let mut setup = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    setup.instance_descriptor.backends =
        wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    setup.device_descriptor = Arc::new(|adapter: &wgpu::Adapter| {
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        wgpu::DeviceDescriptor {
            label: Some("onair window and filters"),
            required_features: if timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            },
            required_limits: wgpu::Limits {
                max_texture_dimension_2d: limits.max_texture_dimension_2d.min(8192),
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_buffer_size: limits.max_buffer_size,
                ..wgpu::Limits::default()
            },
            ..Default::default()
        }
    });
    egui_wgpu::WgpuSetup::CreateNew(setup)
}

/// Opens the window and runs until it is closed. Settings come from `settings_path` (or the
/// default file) and are saved there on every change.
pub fn run(settings: Settings, settings_path: Option<PathBuf>) -> anyhow::Result<()> {
    let options = AppOptions {
        settings_path: settings_path.or_else(Settings::default_path),
        ..AppOptions::default()
    };
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("OnAir")
            .with_app_id("onair")
            .with_inner_size([1280.0, 820.0])
            .with_min_inner_size([900.0, 600.0]),
        renderer: eframe::Renderer::Wgpu,
        persist_window: true,
        wgpu_options: egui_wgpu::WgpuConfiguration {
            wgpu_setup: wgpu_setup(),
            ..Default::default()
        },
        ..Default::default()
    };
    eframe::run_native(
        "onair",
        native,
        Box::new(move |cc| Ok(Box::new(OnAirApp::new(cc, settings, options)))),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window: {e}. Without a display (or a Vulkan driver: install \
             mesa-vulkan-drivers), stream from the command line with `onair live`"
        )
    })
}
