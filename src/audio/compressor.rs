//! Feed-forward soft-knee compressor, to even out a voice so quiet words stay audible
//! and loud ones do not jump out.
//!
//! The level is the channel-linked peak, held over 5–10 ms so a sine reads as its
//! amplitude rather than rippling with every cycle. The static curve is the quadratic
//! soft knee of Giannoulis, Massberg and Reiss; the resulting gain is smoothed in dB with
//! separate attack and release time constants, then makeup gain is added.

use super::{
    check_range, db_to_gain, frame_peak, gain_to_db, time_coef, AudioFilter, PeakHold, MAX_CHANNELS,
};
use serde::{Deserialize, Serialize};

/// Compressor settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressorSettings {
    /// Off means the stage starts bypassed.
    pub enabled: bool,
    /// Level (dBFS, peak) at the centre of the knee.
    pub threshold_db: f32,
    /// Width of the soft knee in dB, centred on the threshold; 0 is a hard knee.
    pub knee_db: f32,
    /// Input dB above the threshold per output dB above it.
    pub ratio: f32,
    /// Time constant (63 %) for the gain to come down when the level rises.
    pub attack_ms: f32,
    /// Time constant (63 %) for the gain to recover when the level falls.
    pub release_ms: f32,
    /// Gain added after compression, to win back the loudness taken away.
    pub makeup_db: f32,
}

impl Default for CompressorSettings {
    fn default() -> Self {
        CompressorSettings {
            enabled: true,
            threshold_db: -24.0,
            knee_db: 30.0,
            ratio: 12.0,
            attack_ms: 5.0,
            release_ms: 120.0,
            makeup_db: 6.0,
        }
    }
}

impl CompressorSettings {
    /// Rejects values no compressor could use, naming the field under `path`.
    pub fn validate(&self, path: &str) -> anyhow::Result<()> {
        check_range(path, "threshold_db", self.threshold_db, -60.0, 0.0)?;
        check_range(path, "knee_db", self.knee_db, 0.0, 40.0)?;
        check_range(path, "ratio", self.ratio, 1.0, 50.0)?;
        check_range(path, "attack_ms", self.attack_ms, 0.1, 500.0)?;
        check_range(path, "release_ms", self.release_ms, 1.0, 5000.0)?;
        check_range(path, "makeup_db", self.makeup_db, 0.0, 30.0)?;
        Ok(())
    }

    /// The static curve: output level in dB for a steady input level `x_db`
    /// (before makeup).
    pub fn static_curve_db(&self, x_db: f32) -> f32 {
        let (t, w, r) = (self.threshold_db, self.knee_db, self.ratio);
        let over = x_db - t;
        if 2.0 * over < -w {
            x_db
        } else if 2.0 * over.abs() <= w && w > 0.0 {
            let d = over + w / 2.0;
            x_db + (1.0 / r - 1.0) * d * d / (2.0 * w)
        } else {
            t + over / r
        }
    }
}

/// The compressor stage.
pub struct Compressor {
    settings: CompressorSettings,
    attack: f64,
    release: f64,
    makeup: f32,
    hold: PeakHold,
    /// Smoothed gain change in dB (≤ 0).
    gain_db: f64,
    bypass: bool,
}

impl Compressor {
    /// A compressor for `sample_rate`; starts bypassed when the settings disable it.
    pub fn new(settings: &CompressorSettings, sample_rate: u32) -> Self {
        Compressor {
            settings: settings.clone(),
            attack: time_coef(settings.attack_ms, sample_rate),
            release: time_coef(settings.release_ms, sample_rate),
            makeup: settings.makeup_db,
            hold: PeakHold::new(sample_rate),
            gain_db: 0.0,
            bypass: !settings.enabled,
        }
    }

    /// Current gain reduction in dB (0 when the level is below the knee), for meters.
    pub fn gain_reduction_db(&self) -> f32 {
        0.0 - self.gain_db as f32
    }
}

impl AudioFilter for Compressor {
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        if self.bypass || channels == 0 {
            return;
        }
        let linked = channels.min(MAX_CHANNELS);
        let knee_start = self.settings.threshold_db - self.settings.knee_db / 2.0;
        for frame in samples.chunks_exact_mut(channels) {
            let level = self.hold.push(frame_peak(&frame[..linked]));
            let x_db = gain_to_db(level);
            let target = if x_db < knee_start {
                0.0
            } else {
                (self.settings.static_curve_db(x_db) - x_db) as f64
            };
            let coef = if target < self.gain_db {
                self.attack
            } else {
                self.release
            };
            self.gain_db = target + coef * (self.gain_db - target);
            let g = db_to_gain(self.gain_db as f32 + self.makeup);
            for s in &mut frame[..linked] {
                *s *= g;
            }
        }
    }

    fn reset(&mut self) {
        self.hold.reset();
        self.gain_db = 0.0;
    }

    fn name(&self) -> &'static str {
        "compressor"
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
    use super::*;

    const RATE: u32 = 48_000;

    /// A stereo square wave of `amplitude`: its magnitude is constant, so its level is
    /// exactly `amplitude` at every sample and the static curve can be read directly.
    fn square(amplitude: f32, frames: usize) -> Vec<f32> {
        (0..frames)
            .flat_map(|i| {
                let v = if (i / 24) % 2 == 0 {
                    amplitude
                } else {
                    -amplitude
                };
                [v, v]
            })
            .collect()
    }

    fn guide() -> CompressorSettings {
        CompressorSettings {
            makeup_db: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn static_curve_matches_threshold_knee_and_ratio() {
        let s = guide();
        // below the knee (starts at -39): untouched
        assert_eq!(s.static_curve_db(-50.0), -50.0);
        // above the knee (ends at -9): threshold + excess / ratio
        assert!((s.static_curve_db(0.0) - (-24.0 + 24.0 / 12.0)).abs() < 1e-5);
        // the knee is continuous at both ends
        assert!((s.static_curve_db(-39.0) + 39.0).abs() < 1e-4);
        assert!((s.static_curve_db(-9.0) - (-24.0 + 15.0 / 12.0)).abs() < 1e-4);
        // at the threshold the soft knee gives (1/R - 1) W / 8 of reduction
        let at_t = s.static_curve_db(-24.0) + 24.0;
        assert!((at_t - (1.0 / 12.0 - 1.0) * 30.0 / 8.0).abs() < 1e-4);

        // measured with steady signals through the stage
        for x_db in [-45.0f32, -36.0, -30.0, -24.0, -18.0, -12.0, -6.0, -3.0] {
            let mut c = Compressor::new(&s, RATE);
            let mut x = square(db_to_gain(x_db), RATE as usize);
            c.process(&mut x, 2);
            let out_db = gain_to_db(x[x.len() - 2].abs());
            let want = s.static_curve_db(x_db);
            assert!(
                (out_db - want).abs() < 0.05,
                "in {x_db} dB: out {out_db:.3} dB, curve {want:.3} dB"
            );
        }

        // makeup is added on top
        let mut with_makeup = guide();
        with_makeup.makeup_db = 6.0;
        let mut c = Compressor::new(&with_makeup, RATE);
        let mut x = square(db_to_gain(-12.0), RATE as usize);
        c.process(&mut x, 2);
        let out_db = gain_to_db(x[x.len() - 1].abs());
        assert!((out_db - (s.static_curve_db(-12.0) + 6.0)).abs() < 0.05);
    }

    /// Time for the gain reduction to cover 63 % of a step, in ms.
    fn time_to_63(trace: &[f32], start: f32, end: f32) -> f64 {
        let mark = start + 0.632 * (end - start);
        let i = trace
            .iter()
            .position(|&g| if end > start { g >= mark } else { g <= mark })
            .expect("never reached 63 %");
        i as f64 * 1000.0 / RATE as f64
    }

    #[test]
    fn attack_and_release_follow_their_time_constants() {
        for (attack_ms, release_ms) in [(5.0f32, 120.0f32), (20.0, 400.0), (1.0, 50.0)] {
            let s = CompressorSettings {
                attack_ms,
                release_ms,
                ..guide()
            };
            let mut c = Compressor::new(&s, RATE);
            // settle quiet, then a loud step, then quiet again
            let quiet = db_to_gain(-50.0);
            let loud = db_to_gain(-6.0);
            let mut x = square(quiet, RATE as usize / 2);
            c.process(&mut x, 2);
            assert_eq!(c.gain_reduction_db(), 0.0);

            let mut trace = Vec::new();
            for frame in square(loud, RATE as usize).chunks(2) {
                let mut f = [frame[0], frame[1]];
                c.process(&mut f, 2);
                trace.push(c.gain_reduction_db());
            }
            let full = -6.0 - s.static_curve_db(-6.0);
            let measured = time_to_63(&trace, 0.0, full);
            assert!(
                (measured - attack_ms as f64).abs() <= 0.1 * attack_ms as f64 + 0.05,
                "attack {attack_ms} ms measured {measured:.2} ms"
            );

            let mut trace = Vec::new();
            for frame in square(quiet, 3 * RATE as usize).chunks(2) {
                let mut f = [frame[0], frame[1]];
                c.process(&mut f, 2);
                trace.push(c.gain_reduction_db());
            }
            // the peak hold keeps the old level for 5-10 ms before release begins
            let measured = time_to_63(&trace, full, 0.0);
            let hold_ms = 5.0..=10.0;
            let release = measured - release_ms as f64;
            assert!(
                release >= hold_ms.start() - 0.1 * release_ms as f64
                    && release <= hold_ms.end() + 0.1 * release_ms as f64,
                "release {release_ms} ms measured {measured:.2} ms (including the hold)"
            );
        }
    }

    #[test]
    fn sine_level_reads_as_its_peak_without_pumping() {
        // a 200 Hz sine at -6 dBFS peak: after settling, the gain is steady within 0.1 dB
        let s = guide();
        let mut c = Compressor::new(&s, RATE);
        let mut x = super::super::test_util::stereo_sine(200.0, 0.5, RATE as usize, RATE);
        let mut trace = Vec::new();
        for frame in x.chunks_mut(2) {
            c.process(frame, 2);
            trace.push(c.gain_reduction_db());
        }
        let tail = &trace[RATE as usize / 2..];
        let (lo, hi) = tail
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &g| (l.min(g), h.max(g)));
        let want = -6.0206 - s.static_curve_db(-6.0206);
        assert!(hi - lo < 0.1, "gain ripples {lo}..{hi}");
        assert!(
            (lo - want).abs() < 0.1,
            "reduction {lo} dB, curve says {want}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let s = CompressorSettings {
            ratio: 0.5,
            ..Default::default()
        };
        assert_eq!(
            s.validate("audio_chain.compressor")
                .unwrap_err()
                .to_string(),
            "audio_chain.compressor.ratio = 0.5 is invalid: use 1 to 50"
        );
        assert!(CompressorSettings::default()
            .validate("audio_chain.compressor")
            .is_ok());
    }
}
