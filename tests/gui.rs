//! The desktop window, driven like a user would (egui_kittest clicks and typing) over the real
//! pipeline: Go Live streams to the embedded relay and an ffmpeg reader gets h264 + aac.
//! Snapshot images of the main states are kept under tests/snapshots/ (rendered with wgpu on
//! the CPU Vulkan driver).

mod support;

use eframe::egui;
use egui_kittest::kittest::{By, Queryable};
use egui_kittest::Harness;
use onair::config::Settings;
use onair::gui::session::Phase;
use onair::gui::{AppOptions, OnAirApp};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{ffprobe_streams, free_port, record_stream};

const SIZE: egui::Vec2 = egui::vec2(1280.0, 800.0);
const SECRET: &str = "sk_live_7f3a9c2e";

/// Small, fast settings streaming to an embedded relay on a free port.
fn local_settings() -> (Settings, u16) {
    let port = free_port();
    let mut s = Settings::default();
    s.destination.url = None;
    s.relay.listen = format!("127.0.0.1:{port}");
    s.video.width = 640;
    s.video.height = 360;
    s.video.bitrate_kbps = 800;
    s.video.encoder = "x264".into();
    (s, port)
}

fn options(path: Option<PathBuf>) -> AppOptions {
    AppOptions {
        settings_path: path,
        preview_when_offline: false,
        probe_encoders: false,
    }
}

fn harness(settings: Settings, opts: AppOptions) -> Harness<'static, OnAirApp> {
    harness_sized(settings, opts, SIZE)
}

fn harness_sized(
    settings: Settings,
    opts: AppOptions,
    size: egui::Vec2,
) -> Harness<'static, OnAirApp> {
    Harness::builder()
        .with_size(size)
        .build_eframe(move |cc| OnAirApp::new(cc, settings, opts))
}

fn snapshot_harness(settings: Settings) -> Harness<'static, OnAirApp> {
    // Pictures must not depend on which test ran first: with the filters' device chosen
    // before the window opens, a snapshot never shows moving video ("Preview off").
    let _ = onair::video::gpu::GpuContext::shared();
    Harness::builder()
        .with_size(SIZE)
        .wgpu()
        .build_eframe(move |cc| OnAirApp::new(cc, settings, options(None)))
}

/// Steps the window (in real time) until `done` holds, or fails after `secs`.
fn step_until(
    h: &mut Harness<'static, OnAirApp>,
    secs: u64,
    what: &str,
    done: impl Fn(&OnAirApp) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(h.state()) {
        assert!(
            Instant::now() < deadline,
            "{what}: still {:?} after {secs} s",
            h.state().phase()
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

#[test]
fn go_live_and_stop_follow_the_real_pipeline() {
    let (mut settings, port) = local_settings();
    // Stamped frames to the embedded relay: the stats show glass-to-glass latency.
    settings.qa.stamp = true;
    let mut h = harness(settings, options(None));
    h.run_steps(2);
    assert_eq!(h.state().phase(), Phase::Offline);
    h.get_by_label_contains("OFFLINE");

    h.get_by_label("Go Live").click();
    h.step();
    assert!(h.state().phase().is_running(), "{:?}", h.state().phase());
    step_until(&mut h, 20, "going live", |a| a.phase() == Phase::Live);
    h.get_by_label("Stop");
    assert!(h.query_by_label("Go Live").is_none());

    // The relay really has the stream: an ffmpeg reader records h264 + aac from it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("read.flv");
    let url = format!("rtmp://127.0.0.1:{port}/live/test");
    let mut reader = record_stream(&url, &out, &["-t", "3"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reader.wait_timeout(Duration::from_millis(30)).is_none() {
        assert!(
            Instant::now() < deadline,
            "the reader did not finish: {}",
            reader.stderr_string()
        );
        h.step();
    }
    let codecs: Vec<String> = ffprobe_streams(&out)
        .iter()
        .filter_map(|s| s["codec_name"].as_str().map(String::from))
        .collect();
    assert!(codecs.contains(&"h264".to_string()), "{codecs:?}");
    assert!(codecs.contains(&"aac".to_string()), "{codecs:?}");
    assert!(h.state().session().live_for().is_some());
    step_until(&mut h, 20, "measuring latency", |a| {
        a.session().latency_ms().is_some()
    });
    let latency = h.state().session().latency_ms().unwrap();
    assert!(
        (0.0..2000.0).contains(&latency),
        "glass-to-glass {latency} ms"
    );
    let shown = h
        .query_all(By::new().predicate(|n| {
            let text = n.value().or(n.label()).unwrap_or_default();
            text.starts_with("glass-to-glass ") && text.ends_with(" ms")
        }))
        .count();
    assert!(shown > 0, "the stats show the latency");

    // Stop asks first; "Keep streaming" keeps the stream.
    h.get_by_label("Stop").click();
    h.run_steps(2);
    assert!(h.state().confirming_stop());
    h.get_by_label_contains("Stop the stream?");
    h.get_by_label("Keep streaming").click();
    h.run_steps(2);
    assert!(!h.state().confirming_stop());
    assert_eq!(h.state().phase(), Phase::Live);

    // The keyboard shortcut does the same as the button.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    h.run_steps(2);
    assert!(h.state().confirming_stop());
    h.get_by_label("Stop streaming").click();
    h.step();
    step_until(&mut h, 15, "stopping", |a| a.phase() == Phase::Offline);
    let report = h.state().session().last_report().expect("a report").clone();
    assert!(report.frames_sent > 30, "{report:?}");
    h.get_by_label("Go Live");
}

#[test]
fn unreachable_server_is_retried_with_the_reason_then_fails_with_what_to_do() {
    let (mut settings, _) = local_settings();
    settings.destination.url = Some(format!("rtmp://127.0.0.1:{}/live/{SECRET}", free_port()));
    let mut h = harness(settings, options(None));
    h.run_steps(2);
    h.get_by_label("Go Live").click();
    // Not live yet: the window says it retries, and why.
    step_until(
        &mut h,
        20,
        "retrying",
        |a| matches!(a.phase(), Phase::Connecting { detail } if detail.contains("retrying")),
    );
    let Phase::Connecting { detail } = h.state().phase() else {
        unreachable!()
    };
    assert!(detail.contains("Is the server running"), "{detail}");
    h.get_by_label_contains("CONNECTING");
    assert_no_secret(&h);
    // Stopping a run that never went live ends in FAILED with what to do.
    h.get_by_label("Stop").click();
    h.run_steps(2);
    h.get_by_label("Stop streaming").click();
    step_until(&mut h, 20, "failing", |a| {
        matches!(a.phase(), Phase::Failed { .. })
    });
    let Phase::Failed { advice, reason } = h.state().phase() else {
        unreachable!()
    };
    assert!(reason.contains("never went live"), "{reason}");
    assert!(advice.contains("server URL"), "{advice}");
    h.get_by_label_contains("FAILED");
    h.get_by_label_contains("Check the server URL");
    assert_no_secret(&h);
    // Go Live is offered again.
    h.get_by_label("Go Live");
}

#[test]
fn a_missing_key_is_explained_before_connecting() {
    let (mut settings, _) = local_settings();
    settings.destination.url = Some("rtmp://127.0.0.1:1935/live/".into());
    let mut h = harness(settings, options(None));
    h.run_steps(2);
    h.state_mut().form_mut().local = false;
    h.state_mut().form_mut().key.clear();
    h.run_steps(1);
    h.get_by_label("Go Live").click();
    h.run_steps(2);
    assert_eq!(h.state().phase(), Phase::Offline);
    h.get_by_label_contains("Enter the stream key");
}

/// No node of the accessibility tree (what is on screen, as text) shows the key.
fn assert_no_secret(h: &Harness<'static, OnAirApp>) {
    let shown: Vec<String> = h
        .query_all(By::new().predicate(|n| {
            n.value().is_some_and(|v| v.contains(SECRET))
                || n.label().is_some_and(|l| l.contains(SECRET))
        }))
        .map(|n| format!("{n:?}"))
        .collect();
    assert!(shown.is_empty(), "the key is on screen: {shown:?}");
}

#[test]
fn the_stream_key_is_masked_until_revealed() {
    let (mut settings, _) = local_settings();
    settings.destination.url = Some(format!("rtmp://live.example.com/live/{SECRET}"));
    let mut h = harness(settings, options(None));
    h.run_steps(3);
    assert!(!h.state().form().local);
    assert_no_secret(&h);
    h.get_by_label("Show").click();
    h.run_steps(2);
    assert_eq!(
        h.get_by_label("Stream key").value().as_deref(),
        Some(SECRET),
        "revealing shows the key"
    );
    h.get_by_label("Hide").click();
    h.run_steps(2);
    assert_no_secret(&h);
}

#[test]
fn settings_are_saved_on_change_and_loaded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("onair.toml");
    let (settings, _) = local_settings();
    // Tall enough that the whole settings column is on screen.
    let tall = egui::vec2(1280.0, 1600.0);
    let mut h = harness_sized(settings, options(Some(path.clone())), tall);
    h.run_steps(2);
    // Encoder section is folded by default.
    h.get_by_label("Encoder").click();
    // (the section opens with a short animation)
    h.run_steps(20);
    h.get_by_label("1080p30 4.5 Mbps").click();
    h.run_steps(1);
    h.get_by_label("Beauty").click();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "settings were not saved");
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
    h.run_steps(2);
    let saved = Settings::load(Some(&path)).unwrap();
    assert_eq!(
        (
            saved.video.width,
            saved.video.height,
            saved.video.bitrate_kbps
        ),
        (1920, 1080, 4500)
    );
    assert_eq!(saved.video_filters, onair::video::FilterSettings::beauty());
    drop(h);
    // A new window starts from the saved file and shows it.
    let mut h = harness_sized(saved, options(Some(path)), tall);
    h.run_steps(2);
    assert_eq!(h.state().settings().video.width, 1920);
    let shown = h
        .query_all(By::new().predicate(|n| {
            n.value().is_some_and(|v| v.contains("1920x1080"))
                || n.label().is_some_and(|l| l.contains("1920x1080"))
        }))
        .count();
    assert!(shown > 0, "the resolution picker shows 1920x1080");
}

#[test]
fn snapshot_of_the_offline_window() {
    let (mut settings, _) = local_settings();
    // Never used (nothing goes live here) but shown: fixed, so the image is too.
    settings.relay.listen = "127.0.0.1:1935".into();
    let mut h = snapshot_harness(settings.clone());
    h.run_steps(3);
    h.snapshot("main_offline");
}

#[test]
fn snapshots_of_a_failed_start() {
    let (mut failing, _) = local_settings();
    failing.destination.url = Some(format!("rtmp://127.0.0.1:1/live/{SECRET}"));
    // exact delays, so the log in the picture is the same every run
    failing.network.reconnect_jitter = 0.0;
    let mut h = snapshot_harness(failing);
    h.run_steps(2);
    h.snapshot("main_key_masked");
    h.get_by_label("Go Live").click();
    // The first connection is retried; stopping a run that never went live ends in FAILED.
    step_until(
        &mut h,
        20,
        "retrying",
        |a| matches!(a.phase(), Phase::Connecting { detail } if detail.contains("retrying")),
    );
    h.get_by_label("Stop").click();
    h.run_steps(2);
    h.get_by_label("Stop streaming").click();
    step_until(&mut h, 20, "failing", |a| {
        matches!(a.phase(), Phase::Failed { .. })
    });
    h.run_steps(2);
    // The stats line's queue figure of the stopped run differs by a few milliseconds from run
    // to run: a few digits' worth of pixels, no more.
    h.snapshot_options(
        "main_failed",
        &egui_kittest::SnapshotOptions::new().max_failed_pixels(120),
    );
}
