//! Noise gate: turns the microphone down while nobody speaks, so room noise, fans and
//! keyboard hiss do not fill the pauses (and the AGC after it is not fooled by them).
//!
//! Two thresholds give hysteresis: the gate opens when the held linked peak reaches the
//! open threshold, and closes only after the level has stayed below the (lower) close
//! threshold for the hold time. The gain moves between unity and −range with the attack
//! (opening) and release (closing) time constants.

use super::MAX_CHANNELS;
use super::{check_range, db_to_gain, frame_peak, time_coef, AudioFilter, PeakHold};
use serde::{Deserialize, Serialize};

/// Noise gate settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateSettings {
    /// Off means the stage starts bypassed.
    pub enabled: bool,
    /// Peak level (dBFS) at which the gate opens.
    pub open_threshold_dbfs: f32,
    /// Peak level (dBFS) under which the gate starts to close; at most the open threshold.
    pub close_threshold_dbfs: f32,
    /// Time constant (63 %) of opening.
    pub attack_ms: f32,
    /// How long the level must stay under the close threshold before closing.
    pub hold_ms: f32,
    /// Time constant (63 %) of closing.
    pub release_ms: f32,
    /// Attenuation when closed, in dB.
    pub range_db: f32,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            enabled: true,
            open_threshold_dbfs: -50.0,
            close_threshold_dbfs: -56.0,
            attack_ms: 1.0,
            hold_ms: 200.0,
            release_ms: 150.0,
            range_db: 40.0,
        }
    }
}

impl GateSettings {
    /// Rejects values no gate could use, naming the field under `path`.
    pub fn validate(&self, path: &str) -> anyhow::Result<()> {
        check_range(
            path,
            "open_threshold_dbfs",
            self.open_threshold_dbfs,
            -90.0,
            0.0,
        )?;
        check_range(
            path,
            "close_threshold_dbfs",
            self.close_threshold_dbfs,
            -90.0,
            self.open_threshold_dbfs,
        )?;
        check_range(path, "attack_ms", self.attack_ms, 0.1, 100.0)?;
        check_range(path, "hold_ms", self.hold_ms, 0.0, 2000.0)?;
        check_range(path, "release_ms", self.release_ms, 1.0, 5000.0)?;
        check_range(path, "range_db", self.range_db, 0.0, 120.0)?;
        Ok(())
    }
}

/// The noise gate stage.
pub struct Gate {
    open_level: f32,
    close_level: f32,
    attack: f64,
    release: f64,
    hold_frames: usize,
    floor: f64,
    detector: PeakHold,
    open: bool,
    hold_left: usize,
    gain: f64,
    bypass: bool,
}

impl Gate {
    /// A gate for `sample_rate`, starting closed; bypassed when the settings disable it.
    pub fn new(settings: &GateSettings, sample_rate: u32) -> Self {
        let floor = db_to_gain(-settings.range_db) as f64;
        Gate {
            open_level: db_to_gain(settings.open_threshold_dbfs),
            close_level: db_to_gain(settings.close_threshold_dbfs),
            attack: time_coef(settings.attack_ms, sample_rate),
            release: time_coef(settings.release_ms, sample_rate),
            hold_frames: (settings.hold_ms as f64 * sample_rate as f64 / 1000.0) as usize,
            floor,
            detector: PeakHold::new(sample_rate),
            open: false,
            hold_left: 0,
            gain: floor,
            bypass: !settings.enabled,
        }
    }

    /// Whether the gate is letting the signal through, for status displays.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Current gain in linear terms (1 = fully open).
    pub fn gain(&self) -> f32 {
        self.gain as f32
    }
}

impl AudioFilter for Gate {
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        if self.bypass || channels == 0 {
            return;
        }
        let linked = channels.min(MAX_CHANNELS);
        for frame in samples.chunks_exact_mut(channels) {
            let level = self.detector.push(frame_peak(&frame[..linked]));
            if level >= self.open_level {
                self.open = true;
                self.hold_left = self.hold_frames;
            } else if self.open {
                if level >= self.close_level {
                    self.hold_left = self.hold_frames;
                } else if self.hold_left > 0 {
                    self.hold_left -= 1;
                } else {
                    self.open = false;
                }
            }
            let target = if self.open { 1.0 } else { self.floor };
            let coef = if target > self.gain {
                self.attack
            } else {
                self.release
            };
            self.gain = target + coef * (self.gain - target);
            let g = self.gain as f32;
            for s in &mut frame[..linked] {
                *s *= g;
            }
        }
    }

    fn reset(&mut self) {
        self.detector.reset();
        self.open = false;
        self.hold_left = 0;
        self.gain = self.floor;
    }

    fn name(&self) -> &'static str {
        "gate"
    }

    fn set_bypass(&mut self, bypass: bool) {
        if self.bypass && !bypass {
            self.reset();
        }
        self.bypass = bypass;
    }

    fn bypassed(&self) -> bool {
        self.bypass
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    const RATE: u32 = 48_000;
    const SEC: usize = RATE as usize;

    fn noise(level_dbfs: f32, frames: usize, seed: u64) -> Vec<f32> {
        let mut n = Noise::new(seed);
        let amp = db_to_gain(level_dbfs);
        (0..frames * 2).map(|_| n.next() * amp).collect()
    }

    fn attenuation_db(input: &[f32], output: &[f32]) -> f64 {
        20.0 * (rms(output, 2, 0) / rms(input, 2, 0)).log10()
    }

    #[test]
    fn closes_on_silence_and_low_noise_and_opens_on_signal() {
        let s = GateSettings::default();
        let mut g = Gate::new(&s, RATE);

        // digital silence then -65 dBFS (peak) noise: stays closed, noise down by the range
        let mut silence = vec![0.0f32; SEC];
        run_blocks(&mut g, &mut silence, 2, 1024);
        assert!(silence.iter().all(|&v| v == 0.0));
        let hiss = noise(-65.0, SEC, 1);
        let mut out = hiss.clone();
        run_blocks(&mut g, &mut out, 2, 1024);
        assert!(!g.is_open());
        let att = attenuation_db(&hiss, &out);
        assert!(att < -39.0, "closed gate attenuates only {att:.1} dB");

        // speech-level signal: opens within a few ms and passes at unity
        let tone = stereo_sine(300.0, db_to_gain(-20.0), SEC, RATE);
        let mut out = tone.clone();
        run_blocks(&mut g, &mut out, 2, 1024);
        assert!(g.is_open());
        let after_5ms = 2 * RATE as usize / 200;
        let att = attenuation_db(&tone[after_5ms..], &out[after_5ms..]);
        assert!(att.abs() < 0.05, "open gate changes level by {att:.3} dB");

        // between the thresholds (-53 dBFS) it stays open: hysteresis
        let mid = noise(-53.0, SEC, 2);
        let mut out = mid.clone();
        run_blocks(&mut g, &mut out, 2, 1024);
        assert!(g.is_open());
        assert!(attenuation_db(&mid, &out).abs() < 0.05);

        // back to low noise: closes after hold + release and attenuates by the range again
        let hiss = noise(-65.0, 3 * SEC, 3);
        let mut out = hiss.clone();
        run_blocks(&mut g, &mut out, 2, 1024);
        assert!(!g.is_open());
        let tail = 4 * SEC; // the last second
        let att = attenuation_db(&hiss[tail..], &out[tail..]);
        assert!(att < -39.0, "closed again, attenuates only {att:.1} dB");
        // ...but not before the hold time has passed
        let during_hold = 2 * (RATE as usize / 10); // 100 ms in, hold is 200 ms
        let att = attenuation_db(&hiss[..during_hold], &out[..during_hold]);
        assert!(att.abs() < 0.05, "closed during hold: {att:.2} dB");

        // the same -53 dBFS noise does not open a closed gate
        let mut out = mid.clone();
        run_blocks(&mut g, &mut out, 2, 1024);
        assert!(!g.is_open());
    }

    #[test]
    fn close_threshold_above_open_is_rejected() {
        let s = GateSettings {
            close_threshold_dbfs: -40.0,
            ..Default::default()
        };
        assert_eq!(
            s.validate("audio_chain.gate").unwrap_err().to_string(),
            "audio_chain.gate.close_threshold_dbfs = -40 is invalid: use -90 to -50"
        );
    }
}
