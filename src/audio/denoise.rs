//! Noise suppression with RNNoise (the `nnnoiseless` port): removes steady background
//! noise — fans, hiss, hum, traffic — from a voice, which gates and EQ cannot do while
//! someone is talking.
//!
//! RNNoise works on 480-sample frames of 48 kHz audio scaled to the 16-bit range. The
//! stage buffers any block size into those frames per channel, which adds one frame of
//! delay on top of RNNoise's own frame of overlap: [`Denoise::latency_frames`] reports
//! the total. At other sample rates the stage passes audio through untouched.

use super::{AudioFilter, MAX_CHANNELS};
use nnnoiseless::{DenoiseState, RnnModel};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Samples per channel RNNoise processes at a time (10 ms at 48 kHz).
pub const FRAME: usize = DenoiseState::FRAME_SIZE;

/// The only rate RNNoise's model is trained for.
pub const SAMPLE_RATE: u32 = 48_000;

/// Scale between f32 samples in [-1, 1] and RNNoise's 16-bit range.
const SCALE: f32 = 32_768.0;

/// Noise suppression settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenoiseSettings {
    /// Off means the stage starts bypassed.
    pub enabled: bool,
}

impl Default for DenoiseSettings {
    fn default() -> Self {
        DenoiseSettings { enabled: true }
    }
}

impl DenoiseSettings {
    /// Nothing to reject yet; present so every stage validates the same way.
    pub fn validate(&self, _path: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The built-in model, loaded once and shared by every channel of every chain.
fn model() -> &'static RnnModel {
    static MODEL: OnceLock<RnnModel> = OnceLock::new();
    MODEL.get_or_init(RnnModel::default)
}

/// The noise suppression stage.
pub struct Denoise {
    states: Vec<Box<DenoiseState<'static>>>,
    /// Per channel: the frame being filled (input) and the frame being played out.
    input: Vec<[f32; FRAME]>,
    output: Vec<[f32; FRAME]>,
    pos: usize,
    channels: usize,
    active: bool,
    bypass: bool,
}

impl Denoise {
    /// A suppressor for up to [`MAX_CHANNELS`] channels; does nothing unless
    /// `sample_rate` is 48 kHz. Bypassed when the settings disable it.
    pub fn new(settings: &DenoiseSettings, sample_rate: u32) -> Self {
        let active = sample_rate == SAMPLE_RATE;
        if !active && settings.enabled {
            tracing::warn!(
                sample_rate,
                "noise suppression needs 48000 Hz audio: passing audio through"
            );
        }
        Denoise {
            states: (0..MAX_CHANNELS)
                .map(|_| DenoiseState::with_model(model()))
                .collect(),
            input: vec![[0.0; FRAME]; MAX_CHANNELS],
            output: vec![[0.0; FRAME]; MAX_CHANNELS],
            pos: 0,
            channels: 0,
            active,
            bypass: !settings.enabled,
        }
    }

    /// Whether the stage can work at its sample rate (48 kHz).
    pub fn active(&self) -> bool {
        self.active
    }
}

impl AudioFilter for Denoise {
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        if self.bypass || !self.active || channels == 0 {
            return;
        }
        let used = channels.min(MAX_CHANNELS);
        if used != self.channels {
            self.reset();
            self.channels = used;
        }
        for frame in samples.chunks_exact_mut(channels) {
            let pos = self.pos;
            for (ch, s) in frame[..used].iter_mut().enumerate() {
                self.input[ch][pos] = *s * SCALE;
                *s = self.output[ch][pos] * (1.0 / SCALE);
            }
            self.pos += 1;
            if self.pos == FRAME {
                self.pos = 0;
                for ch in 0..used {
                    self.states[ch].process_frame(&mut self.output[ch], &self.input[ch]);
                }
            }
        }
    }

    /// Clears the buffers and starts every channel's model afresh. Unlike processing,
    /// this allocates (RNNoise offers no in-place reset); it happens on a change of
    /// channel count or when leaving bypass, not in the steady state.
    fn reset(&mut self) {
        for s in &mut self.states {
            *s = DenoiseState::with_model(model());
        }
        for f in self.input.iter_mut().chain(self.output.iter_mut()) {
            f.fill(0.0);
        }
        self.pos = 0;
    }

    fn name(&self) -> &'static str {
        "denoise"
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

    /// One frame of buffering here plus one frame of RNNoise's overlap-add.
    fn latency_frames(&self) -> usize {
        if self.active {
            2 * FRAME
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    /// Runs mono `x` through a fresh stage as identical stereo channels, in 1024-frame
    /// blocks, and returns one channel (checking both came out the same).
    fn denoise(x: &[f32], block: usize) -> Vec<f32> {
        let mut d = Denoise::new(&DenoiseSettings::default(), SAMPLE_RATE);
        let mut stereo: Vec<f32> = x.iter().flat_map(|&v| [v, v]).collect();
        run_blocks(&mut d, &mut stereo, 2, block);
        let left: Vec<f32> = stereo.chunks(2).map(|f| f[0]).collect();
        let right: Vec<f32> = stereo.chunks(2).map(|f| f[1]).collect();
        assert_eq!(left, right, "channels denoised differently");
        left
    }

    fn power(x: impl Iterator<Item = f64>) -> f64 {
        let (sum, n) = x.fold((0.0, 0usize), |(s, n), v| (s + v * v, n + 1));
        sum / n as f64
    }

    /// Output SNR by the phase-inversion method of Hagerman and Olofsson, the usual way
    /// to measure a nonlinear noise reducer: process speech + noise and speech − noise;
    /// half their sum is the processed speech, half their difference the processed noise.
    /// Unlike comparing against the clean input sample by sample, this does not count
    /// the stage's own (inaudible) filtering of the speech as noise.
    #[test]
    fn improves_snr_of_speech_in_white_noise_by_10_db() {
        let clean = speech_like(8.0);
        let skip = SAMPLE_RATE as usize; // let the model settle for a second
        let mut rng = Noise::new(9);
        for noise_dbfs in [-30.0f32, -25.0] {
            // uniform noise has RMS = amplitude / sqrt(3)
            let amp = super::super::db_to_gain(noise_dbfs) * 3f32.sqrt();
            let noise: Vec<f32> = clean.iter().map(|_| rng.next() * amp).collect();
            let plus: Vec<f32> = clean.iter().zip(&noise).map(|(s, n)| s + n).collect();
            let minus: Vec<f32> = clean.iter().zip(&noise).map(|(s, n)| s - n).collect();
            let (out_p, out_m) = (denoise(&plus, 1024), denoise(&minus, 1024));

            let speech_in = power(clean[skip..].iter().map(|&v| v as f64));
            let noise_in = power(noise[skip..].iter().map(|&v| v as f64));
            let pairs = || out_p[skip..].iter().zip(&out_m[skip..]);
            let speech_out = power(pairs().map(|(&p, &m)| (p as f64 + m as f64) / 2.0));
            let noise_out = power(pairs().map(|(&p, &m)| (p as f64 - m as f64) / 2.0));

            let snr_in = 10.0 * (speech_in / noise_in).log10();
            let snr_out = 10.0 * (speech_out / noise_out).log10();
            let speech_change = 10.0 * (speech_out / speech_in).log10();
            let report = format!(
                "noise {noise_dbfs} dBFS: SNR {snr_in:.1} -> {snr_out:.1} dB, speech {speech_change:+.2} dB"
            );
            assert!(snr_out - snr_in >= 10.0, "{report}");
            assert!(speech_change.abs() < 1.0, "speech not kept: {report}");
        }
    }

    #[test]
    fn reported_latency_aligns_output_with_input() {
        let clean = speech_like(3.0);
        let d = Denoise::new(&DenoiseSettings::default(), SAMPLE_RATE);
        let out = denoise(&clean, 333);
        // the best-correlating lag, refined between samples, is the reported latency
        // (within two frames: RNNoise's input high-pass and band gains shift it a little)
        let corr = |lag: usize| -> f64 {
            clean[..clean.len() - 2000]
                .iter()
                .zip(&out[lag..])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum()
        };
        let best = (1..1500)
            .max_by(|&a, &b| corr(a).total_cmp(&corr(b)))
            .unwrap();
        let (l, c, r) = (corr(best - 1), corr(best), corr(best + 1));
        let refined = best as f64 + 0.5 * (l - r) / (l - 2.0 * c + r);
        assert!(
            (refined - d.latency_frames() as f64).abs() < 2.0,
            "output lags by {refined:.2} frames, reported {}",
            d.latency_frames()
        );
    }

    #[test]
    fn passes_through_at_other_rates() {
        let mut d = Denoise::new(&DenoiseSettings::default(), 44_100);
        assert!(!d.active());
        assert_eq!(d.latency_frames(), 0);
        let mut x = stereo_sine(440.0, 0.3, 4410, 44_100);
        let orig = x.clone();
        d.process(&mut x, 2);
        assert_eq!(x, orig);
    }
}
