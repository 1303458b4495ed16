//! A/V offset: `onair live --stamp --sync-marks` beeps once per second and flashes the test
//! card on the same second; `onair probe` pairs beep onsets with flash frames. Our own stream
//! through the embedded relay is in sync (within one AAC frame of 0: the encoders' priming
//! delay is taken out of the audio timestamps), and a recording remuxed with the audio shifted
//! 200 ms by FFmpeg is reported 200 ms off.

mod support;
use support::{n, probe};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{free_port, onair, wait_for_port, ChildGuard};

/// One AAC frame at 48 kHz, ms: the resolution of the audio timeline in FLV.
const AAC_FRAME_MS: f64 = 1024.0 / 48.0;

/// The offset the pipeline is expected to show. The AAC encoders stamp each packet with the
/// time of the first sample it decodes to (their priming delay taken off, priming-only packets
/// dropped), so what remains is the rounding of FLV's millisecond timestamps (audio pts are
/// floored, up to 1 ms early) and the flash frame's capture time (≤ 1 ms after the second):
/// measured −0.3 ms median, −0.6 … +0.0 ms range. See BENCHMARKS.md (A/V offset).
const EXPECTED_OFFSET_MS: f64 = 0.0;

/// How far the median may stray from [`EXPECTED_OFFSET_MS`]: half an AAC frame, so stamping
/// packets from the sample count without taking the priming off (+21.3 ms with FFmpeg's AAC,
/// +42.7 ms with fdk-aac) fails, while the flash frame's pacing under load has room.
const MEDIAN_TOLERANCE_MS: f64 = AAC_FRAME_MS / 2.0;

/// Remuxes `input` with its audio delayed by `secs` (FFmpeg's `-itsoffset`).
fn shift_audio(input: &Path, output: &Path, secs: &str) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(input)
        .args(["-itsoffset", secs, "-i"])
        .arg(input)
        .args(["-map", "0:v", "-map", "1:a", "-c", "copy", "-f", "flv"])
        .arg(output)
        .output()
        .expect("ffmpeg must be installed (scripts/setup)");
    assert!(
        out.status.success(),
        "ffmpeg remux failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn probe_measures_the_av_offset_of_our_stream_and_of_a_shifted_recording() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("sync.flv");
    let listen = format!("127.0.0.1:{port}");
    let mut live = ChildGuard::spawn(
        Command::new(onair())
            .args(["live", "--stamp", "--sync-marks", "--size", "640x360"])
            .args(["--fps", "30", "--bitrate", "800", "--duration", "11"])
            .args(["--quiet", "--listen", &listen, "--record"])
            .arg(&record)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1000));
    let url = format!("rtmp://127.0.0.1:{port}/live/test");
    let summary = probe(&[&url, "--duration", "7"], Duration::from_secs(30));
    let av = &summary["av_offset"];
    assert!(
        n(av, "pairs") >= 5.0,
        "too few beep/flash pairs: {summary:#}"
    );
    let median = n(av, "median_ms");
    assert!(
        (median - EXPECTED_OFFSET_MS).abs() <= MEDIAN_TOLERANCE_MS,
        "A/V offset {median:.1} ms through the relay, expected {EXPECTED_OFFSET_MS:.1} ± {MEDIAN_TOLERANCE_MS:.1}: {summary:#}"
    );
    // Every pair within one AAC frame: no beep is heard a whole frame early or late.
    assert!(
        (n(av, "max_ms") - EXPECTED_OFFSET_MS).abs() <= AAC_FRAME_MS
            && (n(av, "min_ms") - EXPECTED_OFFSET_MS).abs() <= AAC_FRAME_MS,
        "{summary:#}"
    );

    let status = live
        .wait_timeout(Duration::from_secs(40))
        .expect("onair live hung");
    assert!(
        status.success(),
        "onair live failed:\n{}",
        live.stderr_string()
    );

    // The recording gives the same offset.
    let rec = probe(&[record.to_str().unwrap()], Duration::from_secs(60));
    let base = n(&rec["av_offset"], "median_ms");
    assert!(n(&rec["av_offset"], "pairs") >= 8.0, "{rec:#}");
    assert!(
        (base - EXPECTED_OFFSET_MS).abs() <= MEDIAN_TOLERANCE_MS,
        "recording: {rec:#}"
    );

    // Audio delayed by 200 ms with FFmpeg: reported 200 ms late.
    let shifted = dir.path().join("shifted.flv");
    shift_audio(&record, &shifted, "0.2");
    let sh = probe(&[shifted.to_str().unwrap()], Duration::from_secs(60));
    let off = n(&sh["av_offset"], "median_ms");
    assert!(
        (off - base - 200.0).abs() <= 25.0,
        "shifted by 200 ms but measured {off:.1} ms (unshifted {base:.1}): {sh:#}"
    );
    assert!((off - 200.0 - EXPECTED_OFFSET_MS).abs() <= 25.0, "{sh:#}");
}

#[test]
fn a_stream_without_sync_marks_reports_no_offset() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.flv");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", "3", "-c:v", "libx264", "-c:a", "aac", "-f", "flv"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = probe(&[plain.to_str().unwrap()], Duration::from_secs(30));
    assert!(s["av_offset"].is_null(), "{s:#}");
}
