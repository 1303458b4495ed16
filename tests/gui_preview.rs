//! The preview: the window and the filters share one wgpu device, and the filters' texture is
//! what the window draws (no readback). Its own test binary, so that this process's GPU device
//! is the window's (the filters take the first device the process opens).

use eframe::egui;
use egui_kittest::Harness;
use onair::config::Settings;
use onair::gui::{AppOptions, OnAirApp};
use std::time::{Duration, Instant};

#[test]
fn the_preview_draws_the_filters_texture_on_the_windows_device() {
    let mut settings = Settings::default();
    settings.video.width = 640;
    settings.video.height = 360;
    settings.video_filters = onair::video::FilterSettings::beauty();
    let opts = AppOptions {
        settings_path: None,
        preview_when_offline: true,
        probe_encoders: false,
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu()
        .build_eframe(move |cc| OnAirApp::new(cc, settings, opts));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        h.step();
        let app = h.state();
        let frames = app
            .session()
            .hooks()
            .preview
            .as_ref()
            .map_or(0, |p| p.frames());
        if app.preview_on_screen() && frames >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no preview after 30 s: error {:?}, {frames} frames",
            app.session().preview_error()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    // The preview area is not the placeholder: the test card's colour bars are on screen.
    let image = h.render().expect("rendering the window");
    let (w, h_px) = image.dimensions();
    let colourful = (0..h_px)
        .step_by(4)
        .flat_map(|y| (0..w).step_by(4).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let p = image.get_pixel(x, y).0;
            let (max, min) = (p[0].max(p[1]).max(p[2]), p[0].min(p[1]).min(p[2]));
            max as i32 - min as i32 > 100
        })
        .count();
    assert!(
        colourful > 2000,
        "only {colourful} saturated pixels: the preview is not drawn"
    );
}
