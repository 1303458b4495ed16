//! The main window: preview, Go Live, destination, sources, filters, audio chain, encoder and
//! stats. It reads the pipeline's state once per frame without waiting on it and sends
//! commands through [`Session`]; everything heavy runs elsewhere.

use super::history::History;
use super::session::{local_watch_url, Phase, Session};
use crate::audio::{AudioChainSettings, StageKind, SILENCE_DB};
use crate::config::Settings;
use crate::encode::probe::{self, ProbeReport};
use crate::encode::Backend;
use crate::publish::url::RtmpUrl;
use crate::video::FilterSettings;
use eframe::{egui, egui_wgpu};
use egui::{Color32, RichText};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Go Live / Stop from the keyboard, wherever the focus is.
pub const GO_LIVE_SHORTCUT: egui::KeyboardShortcut =
    egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, egui::Key::Enter);

/// Settings are written this long after the last change (a slider drag saves once).
const SAVE_DELAY: Duration = Duration::from_millis(500);

/// Sources are reopened for the preview this long after the last change.
const PREVIEW_RESTART_DELAY: Duration = Duration::from_millis(300);

/// Resolutions offered in the source picker.
const SIZES: [(u32, u32); 4] = [(640, 360), (854, 480), (1280, 720), (1920, 1080)];

/// Frame rates offered.
const RATES: [u32; 5] = [24, 25, 30, 50, 60];

/// A field of a stats sample, for one line of a graph.
type Field = fn(&super::history::Sample) -> f64;

/// One stats graph: title, unit, and the named lines drawn in it.
type Graph = (&'static str, &'static str, &'static [(&'static str, Field)]);

/// The stats graphs.
const GRAPHS: [Graph; 4] = [
    (
        "bitrate",
        "kbps",
        &[("sent", |s| s.video_kbps), ("target", |s| s.target_kbps)],
    ),
    (
        "fps",
        "fps",
        &[("in", |s| s.fps_in), ("out", |s| s.fps_out)],
    ),
    (
        "delay",
        "ms",
        &[
            ("queue", |s| s.queue_ms),
            ("encode", |s| s.encode_ms),
            ("glass-to-glass", |s| s.latency_ms),
        ],
    ),
    (
        "drops",
        "frames/s",
        &[
            ("capture", |s| s.dropped_capture),
            ("network", |s| s.dropped_network),
            ("audio", |s| s.dropped_audio),
        ],
    ),
];

/// One-click encoder settings: name, width, height, fps, kbit/s.
const QUALITY_PRESETS: [(&str, u32, u32, u32, u32); 3] = [
    ("480p30 1.2 Mbps", 854, 480, 30, 1200),
    ("720p30 2.5 Mbps", 1280, 720, 30, 2500),
    ("1080p30 4.5 Mbps", 1920, 1080, 30, 4500),
];

/// How the window was started.
#[derive(Clone, Debug)]
pub struct AppOptions {
    /// Where settings are saved on change (None: not saved).
    pub settings_path: Option<PathBuf>,
    /// Run the preview while offline (tests turn it off for stable snapshots).
    pub preview_when_offline: bool,
    /// Probe the encoder backends in the background for the encoder picker.
    pub probe_encoders: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            settings_path: Settings::default_path(),
            preview_when_offline: true,
            probe_encoders: true,
        }
    }
}

/// Where the stream goes, as the form shows it (the settings keep one URL).
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationForm {
    /// Stream to the embedded relay on this machine instead of a server.
    pub local: bool,
    /// rtmp://host[:port]/app
    pub server: String,
    /// The secret stream key.
    pub key: String,
    /// Show the key in clear.
    pub reveal_key: bool,
    /// A second server to fail over to.
    pub backup: String,
}

impl DestinationForm {
    /// Splits the settings' URL into server and key.
    pub fn from_settings(s: &Settings) -> Self {
        let url = s.destination.url.clone().unwrap_or_default();
        let (server, key) = match url.rfind('/') {
            Some(i) if url[..i].len() > "rtmp://".len() && url[..i].contains("://") => {
                (url[..i].to_string(), url[i + 1..].to_string())
            }
            _ => (url.clone(), String::new()),
        };
        DestinationForm {
            local: url.is_empty(),
            server,
            key,
            reveal_key: false,
            backup: s.destination.backup_url.clone().unwrap_or_default(),
        }
    }

    /// Writes the form back into the settings.
    pub fn apply(&self, s: &mut Settings) {
        s.destination.url = if self.local {
            None
        } else {
            Some(format!(
                "{}/{}",
                self.server.trim().trim_end_matches('/'),
                self.key.trim()
            ))
        };
        let backup = self.backup.trim();
        s.destination.backup_url = (!backup.is_empty()).then(|| backup.to_string());
    }

    /// What is wrong with the form before going live, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.local {
            return None;
        }
        if self.server.trim().is_empty() {
            return Some("Enter the server URL (rtmp://…) or choose Local test.".into());
        }
        if self.key.trim().is_empty() {
            return Some("Enter the stream key from your streaming service.".into());
        }
        let url = format!(
            "{}/{}",
            self.server.trim().trim_end_matches('/'),
            self.key.trim()
        );
        RtmpUrl::parse(&url)
            .err()
            .map(|e| e.to_string().replace(self.key.trim(), "<key>"))
    }
}

/// The preview texture as registered with the window's renderer.
struct PreviewTexture {
    generation: u64,
    id: Option<egui::TextureId>,
    size: egui::Vec2,
}

/// The desktop app.
pub struct OnAirApp {
    settings: Settings,
    saved: Settings,
    changed_at: Option<Instant>,
    save_error: Option<String>,
    options: AppOptions,
    session: Session,
    history: History,
    history_generation: u64,
    form: DestinationForm,
    confirm_stop: bool,
    render_state: Option<egui_wgpu::RenderState>,
    /// The filters render on this window's device, so their texture can be drawn here.
    shares_filters_device: bool,
    preview: PreviewTexture,
    /// Sources changed: reopen the preview at this time.
    preview_restart: Option<Instant>,
    posted_filters: FilterSettings,
    posted_chain: AudioChainSettings,
    events: Vec<String>,
    events_read: Option<Instant>,
    encoders: Arc<OnceLock<ProbeReport>>,
    microphones: Arc<OnceLock<Vec<String>>>,
    cameras: Arc<OnceLock<Result<Vec<crate::capture::CameraDevice>, String>>>,
    frame_times: FrameTimes,
    clips_seen: (u64, Option<Instant>),
    show_about: bool,
    /// Third-party licence notices, read when the About box first shows them.
    notices: Option<String>,
    problem: Option<String>,
    /// The window renders on a CPU rasteriser (lavapipe, WARP): paint less often.
    software_gpu: bool,
    /// `ONAIR_GUI_STATS`: a JSON file of UI frame times, rewritten every two seconds (for the
    /// smoke test and the frame-time benchmark).
    stats_file: Option<(PathBuf, Option<Instant>)>,
}

/// Environment variable naming the UI frame-time report file.
pub const GUI_STATS_ENV: &str = "ONAIR_GUI_STATS";

impl OnAirApp {
    /// Builds the app; with eframe's wgpu renderer, the filters use the window's device so the
    /// preview is drawn straight from their texture.
    pub fn new(cc: &eframe::CreationContext<'_>, settings: Settings, options: AppOptions) -> Self {
        let render_state = cc.wgpu_render_state.clone();
        // Whether the filters render on this window's device. wgpu compares devices by an id
        // that devices of two instances can share, so this is known only from who installed
        // the process-wide device: a texture of another instance must never be drawn here.
        let mut shares_filters_device = false;
        if let Some(rs) = &render_state {
            let ctx = crate::video::gpu::GpuContext::from_existing(
                rs.device.clone(),
                rs.queue.clone(),
                rs.adapter.get_info(),
            );
            shares_filters_device = crate::video::gpu::GpuContext::install(Arc::new(ctx));
            if !shares_filters_device {
                tracing::debug!("the GPU device was already chosen; the preview is off");
            }
        }
        let encoders = Arc::new(OnceLock::new());
        let microphones = Arc::new(OnceLock::new());
        let cameras = Arc::new(OnceLock::new());
        if options.probe_encoders {
            let slot = encoders.clone();
            let _ = std::thread::Builder::new()
                .name("onair-probe".into())
                .spawn(move || {
                    let _ = slot.set(probe::probe().clone());
                });
        }
        if options.preview_when_offline {
            let slot = microphones.clone();
            let _ = std::thread::Builder::new()
                .name("onair-devices".into())
                .spawn(move || {
                    let names = crate::capture::microphone::input_devices()
                        .map(|d| d.into_iter().map(|d| d.name).collect())
                        .unwrap_or_default();
                    let _ = slot.set(names);
                });
            let slot = cameras.clone();
            let _ = std::thread::Builder::new()
                .name("onair-cameras".into())
                .spawn(move || {
                    let _ = slot.set(crate::capture::list_cameras().map_err(|e| format!("{e:#}")));
                });
        } else {
            let _ = microphones.set(Vec::new());
            let _ = cameras.set(Ok(Vec::new()));
        }
        let session = Session::new().expect("starting the network runtime");
        let software_gpu = render_state
            .as_ref()
            .is_some_and(|rs| rs.adapter.get_info().device_type == wgpu::DeviceType::Cpu);
        let mut app = OnAirApp {
            form: DestinationForm::from_settings(&settings),
            saved: settings.clone(),
            posted_filters: settings.video_filters.clone(),
            posted_chain: settings.audio_chain.clone(),
            settings,
            changed_at: None,
            save_error: None,
            session,
            history: History::default(),
            history_generation: u64::MAX,
            confirm_stop: false,
            render_state,
            shares_filters_device,
            preview: PreviewTexture {
                generation: u64::MAX,
                id: None,
                size: egui::Vec2::ZERO,
            },
            preview_restart: None,
            events: Vec::new(),
            events_read: None,
            encoders,
            microphones,
            cameras,
            frame_times: FrameTimes::default(),
            clips_seen: (0, None),
            show_about: false,
            notices: None,
            problem: None,
            stats_file: std::env::var_os(GUI_STATS_ENV).map(|p| (PathBuf::from(p), None)),
            software_gpu,
            options,
        };
        if app.options.preview_when_offline {
            app.session.start_preview(&app.settings);
        }
        app
    }

    /// The settings as the window holds them now.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The destination form as shown.
    pub fn form(&self) -> &DestinationForm {
        &self.form
    }

    /// The destination form (server, key, reveal toggle).
    pub fn form_mut(&mut self) -> &mut DestinationForm {
        &mut self.form
    }

    /// Where the stream is.
    pub fn phase(&self) -> Phase {
        self.session.phase()
    }

    /// The session behind the window (stats, hooks), for tests and the stats panel.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether the filters' preview texture is what the preview area draws (it is once the
    /// run has rendered into it on the window's own device).
    pub fn preview_on_screen(&self) -> bool {
        self.preview.id.is_some() && self.preview.generation == self.session.generation()
    }

    /// UI frame times measured so far (CPU time of each frame, ms).
    pub fn frame_times(&self) -> &FrameTimes {
        &self.frame_times
    }

    /// Presses Go Live (or asks to confirm Stop), as the button does.
    pub fn toggle_live(&mut self) {
        if self.session.phase().is_running() {
            self.confirm_stop = true;
        } else {
            self.go_live();
        }
    }

    fn go_live(&mut self) {
        self.form.apply(&mut self.settings);
        if let Some(p) = self.form.problem() {
            self.problem = Some(p);
            return;
        }
        if let Err(e) = self.settings.validate() {
            self.problem = Some(format!("{e:#}"));
            return;
        }
        self.problem = None;
        self.session.clear_failure();
        self.session.go_live(&self.settings);
    }

    /// Stops a live stream at once (after the confirmation).
    pub fn stop_live(&mut self) {
        self.confirm_stop = false;
        self.session.stop();
    }

    /// Whether the stop confirmation is shown.
    pub fn confirming_stop(&self) -> bool {
        self.confirm_stop
    }

    fn tick(&mut self, ctx: &egui::Context, frame: &eframe::Frame) {
        if let Some(ms) = frame.info().cpu_usage {
            self.frame_times.push(ms * 1000.0);
        }
        if self.session.poll() && self.options.preview_when_offline {
            self.session.start_preview(&self.settings);
        }
        let now = Instant::now();
        if self.session.generation() != self.history_generation {
            self.history = History::new(now);
            self.history_generation = self.session.generation();
            self.events.clear();
            self.events_read = None;
        }
        let latency = self.session.latency_ms();
        self.history
            .offer(now, self.session.stats().snapshot(), latency);
        if self
            .events_read
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500))
        {
            if let Some(events) = self.session.stats().try_events() {
                self.events = events;
                self.events_read = Some(now);
            }
        }
        self.form.apply(&mut self.settings);
        self.post_live_settings();
        if self.settings != self.saved {
            if self.changed_at.is_none() {
                self.changed_at = Some(now);
            }
            if self.preview_restart.is_none() && self.sources_changed() {
                self.preview_restart = Some(now);
            }
        }
        if self
            .changed_at
            .is_some_and(|t| now.duration_since(t) >= SAVE_DELAY)
        {
            self.save_settings();
        }
        if let Some(t) = self.preview_restart {
            if now.duration_since(t) >= PREVIEW_RESTART_DELAY {
                self.preview_restart = None;
                if self.options.preview_when_offline && !self.session.phase().is_running() {
                    self.session.start_preview(&self.settings);
                }
            }
        }
        self.sync_preview_texture();
        self.write_stats_file(now);
        // The preview and meters move at the video rate; the UI follows them. On a software
        // rasteriser (no GPU) every window frame costs the encoder CPU, so the window paints
        // at half the rate there.
        ctx.request_repaint_after(if self.software_gpu {
            Duration::from_millis(66)
        } else {
            Duration::from_millis(33)
        });
    }

    fn write_stats_file(&mut self, now: Instant) {
        let Some((path, written)) = self.stats_file.as_mut() else {
            return;
        };
        if written.is_some_and(|t| now.duration_since(t) < Duration::from_secs(2)) {
            return;
        }
        *written = Some(now);
        let t = &self.frame_times;
        let report = serde_json::json!({
            "phase": self.session.phase().badge(),
            "frames": t.len(),
            "cpu_ms_p50": t.percentile(0.5),
            "cpu_ms_p95": t.percentile(0.95),
            "cpu_ms_max": t.percentile(1.0),
            "preview_frames": self.session.hooks().preview.as_ref().map(|p| p.frames()),
            "preview_shown": self.preview.id.is_some(),
            "live_secs": self.session.live_for().map(|d| d.as_secs_f64()),
            "stream_fps_out": self.history.latest().map(|s| s.fps_out),
            "frames_dropped": self.session.stats().snapshot().frames_dropped,
            "ui_repaint_ms": if self.software_gpu { 66 } else { 33 },
        });
        let _ = std::fs::write(path, report.to_string());
    }

    fn sources_changed(&self) -> bool {
        let (a, b) = (&self.settings, &self.saved);
        a.sources != b.sources
            || a.video.width != b.video.width
            || a.video.height != b.video.height
            || a.video.fps != b.video.fps
    }

    fn save_settings(&mut self) {
        self.changed_at = None;
        if let Some(path) = &self.options.settings_path {
            match self.settings.save(path) {
                Ok(()) => self.save_error = None,
                Err(e) => self.save_error = Some(format!("{e:#}")),
            }
        }
        self.saved = self.settings.clone();
    }

    /// Sends changed filter and audio chain settings to the running pipeline.
    fn post_live_settings(&mut self) {
        if self.settings.video_filters != self.posted_filters
            && self.settings.video_filters.validate().is_ok()
        {
            self.posted_filters = self.settings.video_filters.clone();
            if let Some(m) = &self.session.hooks().filters {
                m.post(self.posted_filters.clone());
            }
        }
        if self.settings.audio_chain != self.posted_chain
            && self.settings.audio_chain.validate().is_ok()
        {
            self.posted_chain = self.settings.audio_chain.clone();
            if let Some(m) = &self.session.hooks().audio_chain {
                m.post(self.posted_chain.clone());
            }
        }
    }

    /// Registers the current run's preview texture with the renderer (once per run).
    fn sync_preview_texture(&mut self) {
        if self.preview.generation == self.session.generation() {
            return;
        }
        let Some(rs) = &self.render_state else {
            return;
        };
        let Some(texture) = self
            .session
            .hooks()
            .preview
            .as_ref()
            .and_then(|p| p.texture())
        else {
            return;
        };
        // The texture must live on the window's device (it does unless another device was
        // chosen before the window opened).
        self.preview.generation = self.session.generation();
        if !self.shares_filters_device {
            return;
        }
        let view = texture.create_view(&Default::default());
        let mut renderer = rs.renderer.write();
        let id = match self.preview.id {
            Some(id) => {
                renderer.update_egui_texture_from_wgpu_texture(
                    &rs.device,
                    &view,
                    wgpu::FilterMode::Linear,
                    id,
                );
                id
            }
            None => renderer.register_native_texture(&rs.device, &view, wgpu::FilterMode::Linear),
        };
        self.preview.id = Some(id);
        self.preview.size = egui::vec2(texture.width() as f32, texture.height() as f32);
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        let phase = self.session.phase();
        ui.horizontal(|ui| {
            let (bg, fg) = phase_colors(&phase);
            ui.label(
                RichText::new(format!(" {} ", phase.badge()))
                    .strong()
                    .size(18.0)
                    .color(fg)
                    .background_color(bg),
            );
            if let Some(t) = self.session.live_for() {
                ui.label(RichText::new(format_elapsed(t)).monospace().size(18.0));
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let running = phase.is_running();
                let (text, color) = if running {
                    ("Stop", Color32::from_rgb(90, 90, 90))
                } else {
                    ("Go Live", Color32::from_rgb(200, 30, 30))
                };
                let button =
                    egui::Button::new(RichText::new(text).size(20.0).color(Color32::WHITE))
                        .fill(color)
                        .min_size(egui::vec2(150.0, 40.0));
                let shortcut = ui.ctx().format_shortcut(&GO_LIVE_SHORTCUT);
                if ui
                    .add_enabled(!matches!(phase, Phase::Stopping), button)
                    .on_hover_text(format!("{text} ({shortcut})"))
                    .clicked()
                {
                    self.toggle_live();
                }
                if ui.button("About").clicked() {
                    self.show_about = true;
                }
                ui.add(egui::Label::new(phase.describe()).wrap());
            });
        });
        if let Some(p) = &self.problem {
            ui.colored_label(Color32::from_rgb(230, 120, 0), p);
        }
        if let Some(e) = &self.save_error {
            ui.colored_label(
                Color32::from_rgb(230, 120, 0),
                format!("Settings not saved: {e}"),
            );
        }
    }

    fn destination_ui(&mut self, ui: &mut egui::Ui, locked: bool) {
        ui.add_enabled_ui(!locked, |ui| {
            ui.horizontal(|ui| {
                ui.radio_value(&mut self.form.local, false, "Server");
                ui.radio_value(&mut self.form.local, true, "Local test (embedded relay)");
            });
            if self.form.local {
                ui.label("Streams to a relay on this computer. Watch with:");
                let url = local_watch_url(&self.settings);
                ui.code(format!("ffplay -fflags nobuffer {url}"));
                ui.horizontal(|ui| {
                    let l = ui.label("Relay address");
                    ui.text_edit_singleline(&mut self.settings.relay.listen)
                        .labelled_by(l.id);
                });
            } else {
                let l = ui.label("Server URL");
                ui.add(
                    egui::TextEdit::singleline(&mut self.form.server)
                        .hint_text("rtmp://live.example.com/live"),
                )
                .labelled_by(l.id);
                let l = ui.label("Stream key");
                ui.horizontal(|ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut self.form.key)
                            .password(!self.form.reveal_key)
                            .hint_text("from your streaming service")
                            .desired_width(180.0),
                    )
                    .labelled_by(l.id);
                    let label = if self.form.reveal_key { "Hide" } else { "Show" };
                    if ui.button(label).clicked() {
                        self.form.reveal_key = !self.form.reveal_key;
                    }
                });
                let l = ui.label("Backup server URL (optional, with key)");
                ui.text_edit_singleline(&mut self.form.backup)
                    .labelled_by(l.id);
            }
        });
    }

    fn sources_ui(&mut self, ui: &mut egui::Ui, locked: bool) {
        ui.add_enabled_ui(!locked, |ui| {
            let shown = match self.settings.sources.camera.as_deref() {
                None | Some("") => "Test card".to_string(),
                Some(c) => c.to_string(),
            };
            egui::ComboBox::from_label("Camera")
                .selected_text(shown)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.settings.sources.camera, None, "Test card");
                    match self.cameras.get() {
                        Some(Ok(cams)) if cams.is_empty() => {
                            ui.weak("no camera found");
                        }
                        Some(Ok(cams)) => {
                            for cam in cams {
                                let text = match &cam.error {
                                    Some(e) => format!("{} (unavailable: {e})", cam.name),
                                    None => cam.name.clone(),
                                };
                                ui.selectable_value(
                                    &mut self.settings.sources.camera,
                                    Some(cam.name.clone()),
                                    text,
                                );
                            }
                        }
                        Some(Err(e)) => {
                            ui.weak(format!("cameras cannot be listed: {e}"));
                        }
                        None => {
                            ui.weak("looking for cameras…");
                        }
                    }
                });
            let source = self.session.stats().try_video_source().unwrap_or_default();
            if !source.is_empty() {
                ui.weak(format!("Video from: {source}"));
            }
            let mic = self.settings.sources.microphone.clone();
            let shown = match mic.as_deref() {
                None | Some("") => "Tone (test signal)".to_string(),
                Some(name) => name.to_string(),
            };
            egui::ComboBox::from_label("Microphone")
                .selected_text(shown)
                .show_ui(ui, |ui| {
                    ui.selectable_value(
                        &mut self.settings.sources.microphone,
                        None,
                        "Tone (test signal)",
                    );
                    ui.selectable_value(
                        &mut self.settings.sources.microphone,
                        Some("default".into()),
                        "default",
                    );
                    match self.microphones.get() {
                        Some(names) => {
                            for name in names {
                                ui.selectable_value(
                                    &mut self.settings.sources.microphone,
                                    Some(name.clone()),
                                    name,
                                );
                            }
                        }
                        None => {
                            ui.label("looking for microphones…");
                        }
                    }
                });
            let v = &mut self.settings.video;
            egui::ComboBox::from_label("Resolution")
                .selected_text(format!("{}x{}", v.width, v.height))
                .show_ui(ui, |ui| {
                    for (w, h) in SIZES {
                        if ui
                            .selectable_label(v.width == w && v.height == h, format!("{w}x{h}"))
                            .clicked()
                        {
                            v.width = w;
                            v.height = h;
                        }
                    }
                });
            egui::ComboBox::from_label("Frame rate")
                .selected_text(format!("{} fps", v.fps))
                .show_ui(ui, |ui| {
                    for r in RATES {
                        ui.selectable_value(&mut v.fps, r, format!("{r} fps"));
                    }
                });
        });
        if locked {
            ui.weak("Sources change when you are offline.");
        }
    }

    fn video_ui(&mut self, ui: &mut egui::Ui) {
        let f = &mut self.settings.video_filters;
        ui.horizontal(|ui| {
            if ui.button("Beauty").clicked() {
                let watermark = f.watermark.clone();
                *f = FilterSettings::beauty();
                f.watermark = watermark;
            }
            if ui.button("Natural").clicked() {
                let watermark = f.watermark.clone();
                *f = FilterSettings::default();
                f.watermark = watermark;
            }
            ui.checkbox(&mut f.bypass, "Bypass all");
        });
        stage_slider(
            ui,
            &mut f.smoothing.enabled,
            &mut f.smoothing.amount,
            "Skin smoothing",
            0.0..=1.0,
        );
        stage_slider(
            ui,
            &mut f.whitening.enabled,
            &mut f.whitening.amount,
            "Whitening",
            0.0..=1.0,
        );
        stage_slider(
            ui,
            &mut f.sharpen.enabled,
            &mut f.sharpen.amount,
            "Sharpen",
            0.0..=1.0,
        );
        stage_slider(
            ui,
            &mut f.denoise.enabled,
            &mut f.denoise.amount,
            "Denoise",
            0.0..=1.0,
        );
        ui.checkbox(&mut f.color.enabled, "Color");
        ui.add_enabled_ui(f.color.enabled, |ui| {
            ui.add(egui::Slider::new(&mut f.color.brightness, -1.0..=1.0).text("brightness"));
            ui.add(egui::Slider::new(&mut f.color.contrast, 0.0..=2.0).text("contrast"));
            ui.add(egui::Slider::new(&mut f.color.saturation, 0.0..=2.0).text("saturation"));
        });
        ui.checkbox(&mut f.watermark.enabled, "Watermark");
        ui.add_enabled_ui(f.watermark.enabled, |ui| {
            let mut path = f
                .watermark
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            ui.horizontal(|ui| {
                let l = ui.label("PNG");
                if ui
                    .add(egui::TextEdit::singleline(&mut path).hint_text("built-in logo"))
                    .labelled_by(l.id)
                    .changed()
                {
                    f.watermark.path = (!path.trim().is_empty()).then(|| path.trim().into());
                }
            });
            ui.add(egui::Slider::new(&mut f.watermark.opacity, 0.0..=1.0).text("opacity"));
            ui.add(egui::Slider::new(&mut f.watermark.scale, 0.01..=1.0).text("size"));
        });
        ui.separator();
        ui.checkbox(
            &mut self.settings.qa.stamp,
            "Latency stamp (capture time barcode, for onair probe)",
        );
    }

    fn audio_ui(&mut self, ui: &mut egui::Ui) {
        self.meters_ui(ui);
        if self.settings.sources.microphone.is_none() {
            ui.weak("The chain processes the microphone; the test tone goes out untouched.");
        }
        let c = &mut self.settings.audio_chain;
        for kind in StageKind::ALL {
            let mut on = c.order.contains(&kind);
            let name = stage_label(kind);
            ui.horizontal(|ui| {
                if ui.checkbox(&mut on, name).changed() {
                    if on {
                        c.order.push(kind);
                        c.order
                            .sort_by_key(|k| StageKind::ALL.iter().position(|x| x == k));
                    } else {
                        c.order.retain(|k| *k != kind);
                    }
                }
                ui.add_enabled_ui(on, |ui| match kind {
                    StageKind::Denoise => {
                        ui.label("RNNoise");
                    }
                    StageKind::Gate => {
                        ui.add(
                            egui::Slider::new(&mut c.gate.open_threshold_dbfs, -80.0..=-10.0)
                                .text("open dBFS"),
                        );
                        c.gate.close_threshold_dbfs = c
                            .gate
                            .close_threshold_dbfs
                            .min(c.gate.open_threshold_dbfs)
                            .max(-90.0);
                    }
                    StageKind::Eq => {
                        if let Some(band) = c.eq.bands.last_mut() {
                            ui.add(
                                egui::Slider::new(&mut band.gain_db, -12.0..=12.0)
                                    .text(format!("dB @ {:.0} Hz", band.freq_hz)),
                            );
                        }
                    }
                    StageKind::Agc => {
                        ui.add(
                            egui::Slider::new(&mut c.agc.target_dbfs, -40.0..=-6.0)
                                .text("target dBFS"),
                        );
                        c.agc.freeze_below_dbfs = c.agc.freeze_below_dbfs.min(c.agc.target_dbfs);
                    }
                    StageKind::Compressor => {
                        ui.add(
                            egui::Slider::new(&mut c.compressor.threshold_db, -60.0..=0.0)
                                .text("threshold dB"),
                        );
                        ui.add(
                            egui::Slider::new(&mut c.compressor.ratio, 1.0..=20.0).text("ratio"),
                        );
                    }
                    StageKind::Limiter => {
                        ui.add(
                            egui::Slider::new(&mut c.limiter.ceiling_dbfs, -12.0..=0.0)
                                .text("ceiling dBFS"),
                        );
                    }
                });
            });
        }
    }

    fn meters_ui(&mut self, ui: &mut egui::Ui) {
        let Some(meters) = self.session.hooks().meters.clone() else {
            ui.weak("Meters start with the preview.");
            return;
        };
        let clips = meters.clips();
        if clips > self.clips_seen.0 {
            self.clips_seen = (clips, Some(Instant::now()));
        }
        let clipping = self
            .clips_seen
            .1
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2));
        for (ch, name) in ["L", "R"].iter().enumerate() {
            let (peak, rms) = meters.level(ch);
            ui.horizontal(|ui| {
                ui.monospace(*name);
                level_bar(ui, peak, rms);
                ui.monospace(format!("{:>6} / {:>6}", db_text(peak), db_text(rms)));
                if clipping {
                    ui.label(
                        RichText::new(" CLIP ")
                            .strong()
                            .color(Color32::WHITE)
                            .background_color(Color32::RED),
                    );
                }
            });
        }
        ui.weak("peak / RMS dBFS");
    }

    fn encoder_ui(&mut self, ui: &mut egui::Ui, locked: bool) {
        let report = self.encoders.get();
        ui.add_enabled_ui(!locked, |ui| {
            ui.horizontal_wrapped(|ui| {
                for (name, w, h, fps, kbps) in QUALITY_PRESETS {
                    if ui.button(name).clicked() {
                        let v = &mut self.settings.video;
                        (v.width, v.height, v.fps, v.bitrate_kbps) = (w, h, fps, kbps);
                    }
                }
            });
            let v = &mut self.settings.video;
            egui::ComboBox::from_label("Encoder")
                .selected_text(v.encoder.clone())
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut v.encoder, "auto".into(), "auto (best that works)");
                    for b in Backend::ALL {
                        let status = match report.and_then(|r| r.status(b)) {
                            Some(s) if s.is_available() => "available".to_string(),
                            Some(s) => s.reason().unwrap_or_default(),
                            None if b == Backend::X264 => "available".to_string(),
                            None => "not probed yet".to_string(),
                        };
                        ui.selectable_value(
                            &mut v.encoder,
                            b.name().to_string(),
                            format!("{} — {status}", b.name()),
                        );
                    }
                });
            match report.map(|r| probe::select_with(&v.encoder, r)) {
                Some(Ok(sel)) => {
                    ui.label(format!("Active: {}", sel.backend.name()));
                    if let Some(n) = sel.notice {
                        ui.colored_label(Color32::from_rgb(230, 120, 0), n);
                    }
                }
                Some(Err(e)) => {
                    ui.colored_label(Color32::RED, format!("{e:#}"));
                }
                None if v.encoder == "x264" => {
                    ui.label("Active: x264");
                }
                None => {
                    ui.weak("Probing the encoders…");
                }
            }
            egui::ComboBox::from_label("Preset")
                .selected_text(v.preset.clone())
                .show_ui(ui, |ui| {
                    for p in crate::encode::x264::PRESETS {
                        ui.selectable_value(&mut v.preset, p.to_string(), p);
                    }
                });
            ui.horizontal(|ui| {
                let l = ui.label("Bitrate");
                ui.add(
                    egui::DragValue::new(&mut v.bitrate_kbps)
                        .range(200..=20_000)
                        .speed(50)
                        .suffix(" kbps"),
                )
                .labelled_by(l.id);
            });
            ui.horizontal(|ui| {
                let l = ui.label("Keyframe every");
                ui.add(
                    egui::DragValue::new(&mut v.keyint_secs)
                        .range(0.5..=10.0)
                        .speed(0.1)
                        .suffix(" s"),
                )
                .labelled_by(l.id);
            });
            ui.checkbox(
                &mut self.settings.network.adaptive_bitrate,
                "Adapt the bitrate to the network",
            );
        });
    }

    fn stats_ui(&mut self, ui: &mut egui::Ui) {
        let snap = self.session.stats().snapshot();
        let latest = self.history.latest().copied().unwrap_or_default();
        ui.horizontal_wrapped(|ui| {
            ui.label(format!(
                "video {:.0} kbps (target {})",
                latest.video_kbps, snap.target_kbps
            ));
            ui.separator();
            ui.label(format!("fps {:.1} / {:.1}", latest.fps_in, latest.fps_out));
            ui.separator();
            ui.label(format!("encode {:.1} ms", latest.encode_ms));
            ui.separator();
            ui.label(format!("queue {} ms", snap.queue_ms));
            if let Some(ms) = self.session.latency_ms() {
                ui.separator();
                ui.label(format!("glass-to-glass {ms:.0} ms"));
            }
            ui.separator();
            ui.label(format!(
                "dropped: {} capture/encoder, {} network, {} audio",
                snap.frames_dropped,
                snap.queue_video_drops,
                snap.audio_dropped + snap.queue_audio_drops
            ));
            ui.separator();
            ui.label(format!(
                "sent {} frames, {:.1} MB; reconnects {}",
                snap.frames_sent,
                snap.bytes_out as f64 / 1e6,
                snap.reconnects
            ));
            ui.separator();
            ui.label(format!(
                "UI frame {:.1} ms (p95 {:.1})",
                self.frame_times.last(),
                self.frame_times.percentile(0.95)
            ));
        });
        let plot_height = ((ui.available_height() - 90.0) / 1.0).clamp(60.0, 140.0);
        ui.columns(GRAPHS.len(), |cols| {
            for (col, (title, unit, lines)) in cols.iter_mut().zip(GRAPHS) {
                let series: Vec<_> = lines
                    .iter()
                    .map(|(name, field)| (*name, self.history.series(field)))
                    .collect();
                plot(col, title, unit, plot_height, &series);
            }
        });
        ui.label("Log");
        egui::ScrollArea::vertical()
            .stick_to_bottom(true)
            .max_height(ui.available_height())
            .show(ui, |ui| {
                if self.events.is_empty() {
                    ui.weak("Connection, bitrate and reconnect decisions appear here.");
                }
                for e in &self.events {
                    ui.monospace(e);
                }
            });
    }

    fn preview_ui(&mut self, ui: &mut egui::Ui) {
        let phase = self.session.phase();
        let avail = ui.available_rect_before_wrap();
        let aspect = self.settings.video.width as f32 / self.settings.video.height.max(1) as f32;
        let mut size = avail.size();
        if size.x / size.y.max(1.0) > aspect {
            size.x = size.y * aspect;
        } else {
            size.y = size.x / aspect;
        }
        let rect = egui::Rect::from_center_size(avail.center(), size);
        let painter = ui.painter_at(avail);
        painter.rect_filled(rect, 0.0, Color32::from_gray(20));
        let texture = self
            .preview
            .id
            .filter(|_| self.preview.generation == self.session.generation())
            .filter(|_| self.session.hooks().preview.is_some());
        match texture {
            Some(id) => {
                painter.image(
                    id,
                    rect,
                    egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                    Color32::WHITE,
                );
            }
            None => {
                let text = self
                    .session
                    .preview_error()
                    .map(|e| format!("No preview: {e}"))
                    .or_else(|| {
                        self.session
                            .hooks()
                            .preview
                            .as_ref()
                            .and_then(|p| p.unavailable().map(|r| format!("No preview: {r}")))
                    })
                    .unwrap_or_else(|| {
                        if self.options.preview_when_offline || phase.is_running() {
                            "Starting the preview…".into()
                        } else {
                            "Preview off".into()
                        }
                    });
                painter.text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    text,
                    egui::FontId::proportional(16.0),
                    Color32::LIGHT_GRAY,
                );
            }
        }
        // The badge: what the audience sees right now.
        let live = matches!(phase, Phase::Live);
        let badge = if live { "LIVE" } else { "OFFLINE" };
        let text = match self.session.live_for() {
            Some(t) if live => format!("{badge} {}", format_elapsed(t)),
            _ => badge.to_string(),
        };
        let galley = painter.layout_no_wrap(text, egui::FontId::proportional(18.0), Color32::WHITE);
        let badge_rect =
            egui::Rect::from_min_size(rect.min + egui::vec2(10.0, 10.0), galley.size())
                .expand2(egui::vec2(8.0, 4.0));
        painter.rect_filled(
            badge_rect,
            4.0,
            if live {
                Color32::from_rgb(200, 30, 30)
            } else {
                Color32::from_black_alpha(160)
            },
        );
        painter.galley(
            badge_rect.min + egui::vec2(8.0, 4.0),
            galley,
            Color32::WHITE,
        );
        ui.allocate_rect(avail, egui::Sense::hover());
    }

    fn confirm_stop_ui(&mut self, ctx: &egui::Context) {
        if !self.confirm_stop {
            return;
        }
        if !self.session.phase().is_running() {
            self.confirm_stop = false;
            return;
        }
        let modal = egui::Modal::new(egui::Id::unique("confirm-stop")).show(ctx, |ui| {
            ui.heading("Stop the stream?");
            ui.label("Your audience will see the stream end.");
            ui.horizontal(|ui| {
                if ui
                    .button(RichText::new("Stop streaming").color(Color32::WHITE))
                    .clicked()
                {
                    self.stop_live();
                }
                if ui.button("Keep streaming").clicked() {
                    self.confirm_stop = false;
                }
            });
        });
        if modal.should_close() {
            self.confirm_stop = false;
        }
    }

    fn about_ui(&mut self, ctx: &egui::Context) {
        let mut open = self.show_about;
        egui::Window::new("About OnAir")
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                ui.heading(crate::about::version_line());
                ui.label(env!("CARGO_PKG_DESCRIPTION"));
                ui.label(format!(
                    "Licence: {} (AAC: {})",
                    env!("CARGO_PKG_LICENSE"),
                    crate::about::aac_encoder()
                ));
                match crate::about::log_dir() {
                    Some(dir) => ui.label(format!("Logs: {}", dir.display())),
                    None => ui.label("Logs: standard error only"),
                };
                if let Ok(gpu) = crate::video::gpu::GpuContext::shared() {
                    ui.label(format!("GPU: {}", gpu.describe()));
                }
                if let Some(path) = &self.options.settings_path {
                    ui.label(format!("Settings: {}", path.display()));
                }
                ui.collapsing("Third-party licences", |ui| {
                    egui::ScrollArea::vertical()
                        .max_height(300.0)
                        .show(ui, |ui| {
                            let notices = self
                                .notices
                                .get_or_insert_with(crate::about::third_party_notices);
                            ui.monospace(notices.as_str());
                        });
                });
            });
        self.show_about = open;
    }
}

impl eframe::App for OnAirApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.tick(&ctx, frame);
        if ctx.input_mut(|i| i.consume_shortcut(&GO_LIVE_SHORTCUT)) {
            self.toggle_live();
        }
        let locked = self.session.phase().is_running();
        egui::Panel::top("status").show(ui, |ui| {
            ui.add_space(4.0);
            self.status_bar(ui);
            ui.add_space(4.0);
        });
        egui::Panel::left("settings")
            .resizable(true)
            .default_size(360.0)
            .size_range(280.0..=480.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    egui::CollapsingHeader::new("Destination")
                        .default_open(true)
                        .show(ui, |ui| self.destination_ui(ui, locked));
                    egui::CollapsingHeader::new("Sources")
                        .default_open(true)
                        .show(ui, |ui| self.sources_ui(ui, locked));
                    egui::CollapsingHeader::new("Video")
                        .default_open(true)
                        .show(ui, |ui| self.video_ui(ui));
                    egui::CollapsingHeader::new("Audio")
                        .default_open(true)
                        .show(ui, |ui| self.audio_ui(ui));
                    egui::CollapsingHeader::new("Encoder")
                        .default_open(false)
                        .show(ui, |ui| self.encoder_ui(ui, locked));
                });
            });
        egui::Panel::bottom("stats")
            .resizable(true)
            .default_size(250.0)
            .show(ui, |ui| self.stats_ui(ui));
        egui::CentralPanel::default().show(ui, |ui| self.preview_ui(ui));
        self.confirm_stop_ui(&ctx);
        self.about_ui(&ctx);
    }

    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        if self.changed_at.is_some() {
            self.save_settings();
        }
    }
}

/// Recent UI frame times, for the stats panel and the frame-time benchmark.
#[derive(Debug, Default)]
pub struct FrameTimes {
    ms: std::collections::VecDeque<f32>,
}

impl FrameTimes {
    const LEN: usize = 600;

    /// Adds one frame's time in ms.
    pub fn push(&mut self, ms: f32) {
        if self.ms.len() == Self::LEN {
            self.ms.pop_front();
        }
        self.ms.push_back(ms);
    }

    /// The last frame's time (0 before the first).
    pub fn last(&self) -> f32 {
        self.ms.back().copied().unwrap_or(0.0)
    }

    /// The `q` quantile (0..=1) of the recent frame times.
    pub fn percentile(&self, q: f64) -> f32 {
        if self.ms.is_empty() {
            return 0.0;
        }
        let mut v: Vec<f32> = self.ms.iter().copied().collect();
        v.sort_by(f32::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// Number of frames measured.
    pub fn len(&self) -> usize {
        self.ms.len()
    }

    /// Whether no frame was measured yet.
    pub fn is_empty(&self) -> bool {
        self.ms.is_empty()
    }
}

fn phase_colors(phase: &Phase) -> (Color32, Color32) {
    match phase {
        Phase::Offline => (Color32::from_gray(70), Color32::WHITE),
        Phase::Connecting { .. } | Phase::Stopping => {
            (Color32::from_rgb(200, 150, 0), Color32::BLACK)
        }
        Phase::Live => (Color32::from_rgb(200, 30, 30), Color32::WHITE),
        Phase::Reconnecting { .. } => (Color32::from_rgb(230, 110, 0), Color32::BLACK),
        Phase::Failed { .. } => (Color32::from_rgb(120, 0, 0), Color32::WHITE),
    }
}

/// `hh:mm:ss` of a duration.
pub fn format_elapsed(t: Duration) -> String {
    let s = t.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn stage_label(kind: StageKind) -> &'static str {
    match kind {
        StageKind::Denoise => "Noise suppression",
        StageKind::Gate => "Noise gate",
        StageKind::Eq => "Equaliser",
        StageKind::Agc => "Auto gain",
        StageKind::Compressor => "Compressor",
        StageKind::Limiter => "Limiter",
    }
}

fn stage_slider(
    ui: &mut egui::Ui,
    enabled: &mut bool,
    amount: &mut f32,
    name: &str,
    range: std::ops::RangeInclusive<f32>,
) {
    ui.horizontal(|ui| {
        let label = ui.checkbox(enabled, name);
        ui.add_enabled(*enabled, egui::Slider::new(amount, range))
            .labelled_by(label.id);
    });
}

fn db_text(db: f32) -> String {
    if db <= SILENCE_DB + 1.0 {
        "-inf".into()
    } else {
        format!("{db:.1}")
    }
}

/// A horizontal level bar from -60 to 0 dBFS: RMS filled, peak as a line.
fn level_bar(ui: &mut egui::Ui, peak: f32, rms: f32) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(160.0, 12.0), egui::Sense::hover());
    let painter = ui.painter();
    painter.rect_filled(rect, 2.0, Color32::from_gray(40));
    let x = |db: f32| rect.left() + rect.width() * ((db.clamp(-60.0, 0.0) + 60.0) / 60.0);
    let color = if peak >= -0.1 {
        Color32::RED
    } else if peak >= -6.0 {
        Color32::from_rgb(230, 190, 0)
    } else {
        Color32::from_rgb(40, 180, 70)
    };
    painter.rect_filled(
        egui::Rect::from_min_max(rect.min, egui::pos2(x(rms), rect.max.y)),
        2.0,
        color,
    );
    painter.vline(
        x(peak),
        rect.y_range(),
        egui::Stroke::new(2.0, Color32::WHITE),
    );
}

fn plot(ui: &mut egui::Ui, id: &str, unit: &str, height: f32, lines: &[(&str, Vec<[f64; 2]>)]) {
    ui.label(format!("{id} ({unit})"));
    egui_plot::Plot::new(id)
        .height(height)
        .include_y(0.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .show_x(false)
        .legend(egui_plot::Legend::default())
        .show(ui, |p| {
            for (name, points) in lines {
                p.line(egui_plot::Line::new(*name, points.clone()));
            }
        });
}
