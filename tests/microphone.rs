//! Microphone capture against a real sound server: a private PulseAudio daemon with a
//! null sink plays a known 1 kHz tone, and the microphone source records the sink's
//! monitor through cpal's ALSA host (ALSA's default device is PulseAudio's plugin).
//! Skips when PulseAudio is not installed (scripts/setup installs it).

use onair::capture::microphone::{
    input_devices, Microphone, MicrophoneOptions, MicrophoneStatus, BLOCK_FRAMES, OUTPUT_RATE,
};
use onair::capture::AudioSource;
use onair::clock::audio_pts_ms;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TONE_HZ: f64 = 1000.0;
const TONE_AMPLITUDE: f64 = 0.25; // -12.04 dBFS peak, -15.05 dBFS RMS

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A private PulseAudio daemon with a null sink "virt", stopped when dropped.
struct Pulse {
    runtime: tempfile::TempDir,
}

impl Pulse {
    fn start() -> Pulse {
        let runtime = tempfile::tempdir().unwrap();
        let status = Command::new("pulseaudio")
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args([
                "--daemonize=yes",
                "--exit-idle-time=-1",
                "-n",
                "--load=module-native-protocol-unix",
                "--load=module-null-sink sink_name=virt",
            ])
            .status()
            .expect("running pulseaudio");
        assert!(status.success(), "pulseaudio did not start");
        let pulse = Pulse { runtime };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pulse.cmd("pactl").arg("info").status().unwrap().success() {
            assert!(Instant::now() < deadline, "pulseaudio never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        pulse
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn play(&self, wav: &Path) -> Child {
        self.cmd("paplay")
            .args(["-d", "virt"])
            .arg(wav)
            .spawn()
            .expect("running paplay")
    }

    fn kill(&self) {
        let _ = self.cmd("pulseaudio").arg("-k").status();
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a stereo 16-bit WAV of the test tone (the same on both channels: a mono file
/// would be spread over the sink's two channels at -3 dB).
fn write_tone(dir: &Path, rate: u32, secs: u32) -> PathBuf {
    let frames = rate * secs;
    let mut data = Vec::with_capacity(frames as usize * 4);
    for i in 0..frames {
        let v = (std::f64::consts::TAU * TONE_HZ * i as f64 / rate as f64).sin() * TONE_AMPLITUDE;
        let s = ((v * 32767.0).round() as i16).to_le_bytes();
        data.extend_from_slice(&s);
        data.extend_from_slice(&s);
    }
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&2u16.to_le_bytes()); // stereo
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 4).to_le_bytes());
    wav.extend_from_slice(&4u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    let path = dir.join("tone.wav");
    std::fs::write(&path, wav).unwrap();
    path
}

/// Reads blocks for `secs`, checking their shape and timestamps; returns the left and
/// right channels.
fn capture(mic: &mut Microphone, secs: f64) -> (Vec<f32>, Vec<f32>) {
    let blocks = (secs * OUTPUT_RATE as f64 / BLOCK_FRAMES as f64) as usize;
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut first_index = None;
    for i in 0..blocks {
        let b = mic.next_block().unwrap();
        assert_eq!(b.channels, 2);
        assert_eq!(b.sample_rate, OUTPUT_RATE);
        assert_eq!(b.frames(), BLOCK_FRAMES);
        let start = *first_index.get_or_insert(b.pts_ms);
        let expected = start + audio_pts_ms((i * BLOCK_FRAMES) as u64, OUTPUT_RATE);
        assert!(
            (b.pts_ms - expected).abs() <= 1,
            "pts {} != {}",
            b.pts_ms,
            expected
        );
        for f in b.samples.chunks(2) {
            left.push(f[0]);
            right.push(f[1]);
        }
    }
    (left, right)
}

/// Frequency from rising zero crossings, interpolated between samples.
fn frequency(x: &[f32]) -> f64 {
    let crossings: Vec<f64> = x
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + (-w[0] as f64) / (w[1] as f64 - w[0] as f64))
        .collect();
    assert!(
        crossings.len() > 10,
        "no tone: {} crossings",
        crossings.len()
    );
    let span = crossings.last().unwrap() - crossings[0];
    (crossings.len() - 1) as f64 * OUTPUT_RATE as f64 / span
}

fn rms_dbfs(x: &[f32]) -> f64 {
    let p: f64 = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    10.0 * p.log10()
}

/// Checks the tone arrived at the right frequency and level on both channels. The sound
/// server sends silence for a second or so after a capture stream opens, so the analysis
/// starts 100 ms after the tone first shows up, and needs at least one second of it.
fn assert_tone(name: &str, left: &[f32], right: &[f32]) {
    let onset = left
        .iter()
        .position(|v| v.abs() > 0.5 * TONE_AMPLITUDE as f32)
        .unwrap_or_else(|| panic!("{name}: the tone never arrived"));
    let skip = onset + OUTPUT_RATE as usize / 10;
    assert!(
        left.len() >= skip + OUTPUT_RATE as usize,
        "{name}: the tone arrived only after {:.2} s",
        onset as f64 / OUTPUT_RATE as f64
    );
    for (ch, x) in [("left", &left[skip..]), ("right", &right[skip..])] {
        let hz = frequency(x);
        let level = rms_dbfs(x);
        let want = 20.0 * (TONE_AMPLITUDE / 2f64.sqrt()).log10();
        assert!((hz - TONE_HZ).abs() < 1.0, "{name} {ch}: {hz:.2} Hz");
        assert!(
            (level - want).abs() < 1.0,
            "{name} {ch}: {level:.2} dBFS RMS, sent {want:.2}"
        );
    }
}

#[test]
fn captures_a_tone_through_pulseaudio_and_survives_losing_it() {
    assert!(
        have("pulseaudio") && have("paplay") && have("pactl"),
        "pulseaudio, paplay and pactl are needed by this test: run scripts/setup"
    );
    let pulse = Pulse::start();
    // This test binary has a single test, so setting the environment is race-free.
    // libpulse (inside ALSA's pulse plugin) reads both when cpal opens the device.
    std::env::set_var("XDG_RUNTIME_DIR", pulse.runtime.path());
    std::env::set_var("PULSE_SOURCE", "virt.monitor");

    let wav = write_tone(pulse.runtime.path(), 48_000, 30);
    let mut player = pulse.play(&wav);

    let devices = input_devices().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d.is_default && d.default_config.is_some()),
        "no default input device among {devices:#?}"
    );

    // the device's own default configuration
    let mut mic = Microphone::open(MicrophoneOptions::default()).unwrap();
    let (left, right) = capture(&mut mic, 4.0);
    assert_tone(&mic.describe(), &left, &right);
    assert_eq!(mic.status(), MicrophoneStatus::Running);
    assert_eq!((mic.overruns(), mic.xruns()), (0, 0));
    drop(mic);

    // forced to 44.1 kHz mono: channel mapping and a real resampling ratio
    let mut mic = Microphone::open(MicrophoneOptions {
        sample_rate: Some(44_100),
        channels: Some(1),
        ..Default::default()
    })
    .unwrap();
    let (rate, channels, _) = mic.device_format().unwrap();
    assert_eq!((rate, channels), (44_100, 1));
    let (left, right) = capture(&mut mic, 4.0);
    assert_tone(&mic.describe(), &left, &right);
    assert_eq!((mic.overruns(), mic.xruns()), (0, 0));

    // the sound server goes away mid-stream: blocks keep coming in real time, silent
    let _ = player.kill();
    let _ = player.wait();
    pulse.kill();
    let start = Instant::now();
    let (left, _) = capture(&mut mic, 3.0);
    let took = start.elapsed().as_secs_f64();
    assert!(took > 2.0 && took < 4.5, "3 s of blocks took {took:.2} s");
    let tail = &left[left.len() - OUTPUT_RATE as usize..];
    assert!(
        tail.iter().all(|&v| v == 0.0),
        "not silent after losing the device"
    );
    match mic.status() {
        MicrophoneStatus::Lost { reason } => assert!(!reason.is_empty()),
        s => panic!("status {s:?} after losing the device"),
    }
}
