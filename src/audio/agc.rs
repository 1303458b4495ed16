//! Automatic gain control: slowly rides the microphone level toward a target loudness,
//! so a streamer who leans back or a mic set too low still comes out at a steady level.
//!
//! Feed-forward: the short-term RMS of the input (channel-linked, 20 ms) gives the gain
//! that would put it on target; the applied gain follows in dB with the attack time
//! constant when it must come down and the release time constant when it may go up.
//! Below the freeze level (pauses, a closed gate) the gain holds, so noise is not
//! pumped up between sentences.

use super::{check_range, db_to_gain, time_coef, AudioFilter, MAX_CHANNELS};
use serde::{Deserialize, Serialize};

/// Time constant of the level detector: long enough to ignore single waveform cycles
/// of a voice, short next to any sensible attack.
const DETECTOR_MS: f32 = 20.0;

/// AGC settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgcSettings {
    /// Off means the stage starts bypassed.
    pub enabled: bool,
    /// RMS level (dBFS) the output is steered to.
    pub target_dbfs: f32,
    /// Most boost, and most cut, the AGC may apply.
    pub max_gain_db: f32,
    /// Time constant (63 %) of bringing the gain down when the input gets louder.
    pub attack_ms: f32,
    /// Time constant (63 %) of raising the gain when the input gets quieter.
    pub release_ms: f32,
    /// Input RMS level (dBFS) below which the gain holds instead of chasing noise.
    pub freeze_below_dbfs: f32,
}

impl Default for AgcSettings {
    fn default() -> Self {
        AgcSettings {
            enabled: true,
            target_dbfs: -20.0,
            max_gain_db: 20.0,
            attack_ms: 300.0,
            release_ms: 2000.0,
            freeze_below_dbfs: -50.0,
        }
    }
}

impl AgcSettings {
    /// Rejects values no AGC could use, naming the field under `path`.
    pub fn validate(&self, path: &str) -> anyhow::Result<()> {
        check_range(path, "target_dbfs", self.target_dbfs, -40.0, -3.0)?;
        check_range(path, "max_gain_db", self.max_gain_db, 0.0, 40.0)?;
        check_range(path, "attack_ms", self.attack_ms, 10.0, 10_000.0)?;
        check_range(path, "release_ms", self.release_ms, 10.0, 30_000.0)?;
        check_range(
            path,
            "freeze_below_dbfs",
            self.freeze_below_dbfs,
            -90.0,
            self.target_dbfs,
        )?;
        Ok(())
    }
}

/// The AGC stage.
pub struct Agc {
    target_db: f32,
    max_gain_db: f32,
    freeze_power: f64,
    attack: f64,
    release: f64,
    detector: f64,
    power: f64,
    gain_db: f64,
    bypass: bool,
}

impl Agc {
    /// An AGC for `sample_rate` starting at 0 dB gain; bypassed when the settings disable it.
    pub fn new(settings: &AgcSettings, sample_rate: u32) -> Self {
        Agc {
            target_db: settings.target_dbfs,
            max_gain_db: settings.max_gain_db,
            freeze_power: 10f64.powf(settings.freeze_below_dbfs as f64 / 10.0),
            attack: time_coef(settings.attack_ms, sample_rate),
            release: time_coef(settings.release_ms, sample_rate),
            detector: time_coef(DETECTOR_MS, sample_rate),
            power: 0.0,
            gain_db: 0.0,
            bypass: !settings.enabled,
        }
    }

    /// The gain currently applied, in dB, for meters.
    pub fn gain_db(&self) -> f32 {
        self.gain_db as f32
    }
}

impl AudioFilter for Agc {
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        if self.bypass || channels == 0 {
            return;
        }
        let linked = channels.min(MAX_CHANNELS);
        let inv = 1.0 / linked as f64;
        let (lo, hi) = (-self.max_gain_db as f64, self.max_gain_db as f64);
        for frame in samples.chunks_exact_mut(channels) {
            let p = frame[..linked].iter().map(|&v| v * v).sum::<f32>() as f64 * inv;
            self.power = p + self.detector * (self.power - p);
            if self.power > self.freeze_power {
                let level_db = 10.0 * self.power.log10();
                let want = (self.target_db as f64 - level_db).clamp(lo, hi);
                let coef = if want < self.gain_db {
                    self.attack
                } else {
                    self.release
                };
                self.gain_db = want + coef * (self.gain_db - want);
            }
            let g = db_to_gain(self.gain_db as f32);
            for s in &mut frame[..linked] {
                *s *= g;
            }
        }
        // Flush a decaying detector before it turns denormal (and slow) in long silences.
        if self.power < 1e-200 {
            self.power = 0.0;
        }
    }

    fn reset(&mut self) {
        self.power = 0.0;
        self.gain_db = 0.0;
    }

    fn name(&self) -> &'static str {
        "agc"
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

    /// A sine whose RMS is `rms_dbfs`.
    fn sine_at(rms_dbfs: f32, secs: f64) -> Vec<f32> {
        let amp = db_to_gain(rms_dbfs) * std::f32::consts::SQRT_2;
        stereo_sine(220.0, amp, (secs * RATE as f64) as usize, RATE)
    }

    /// Runs `x` through the AGC frame by frame, returning the gain after each frame.
    fn gain_trace(agc: &mut Agc, x: &mut [f32]) -> Vec<f32> {
        x.chunks_mut(2)
            .map(|f| {
                agc.process(f, 2);
                agc.gain_db()
            })
            .collect()
    }

    fn ms_to_63(trace: &[f32], start: f32, end: f32) -> f64 {
        let mark = start + 0.632 * (end - start);
        let i = trace
            .iter()
            .position(|&g| if end > start { g >= mark } else { g <= mark })
            .expect("never reached 63 %");
        i as f64 * 1000.0 / RATE as f64
    }

    #[test]
    fn quiet_voice_is_raised_to_target_within_its_release_time() {
        let s = AgcSettings::default();
        let mut agc = Agc::new(&s, RATE);
        let mut x = sine_at(-35.0, 12.0);
        let trace = gain_trace(&mut agc, &mut x);
        let t = ms_to_63(&trace, 0.0, 15.0);
        assert!(
            (t - s.release_ms as f64).abs() < 0.1 * s.release_ms as f64,
            "63 % of the boost after {t:.0} ms, release is {} ms",
            s.release_ms
        );
        // after five time constants the output sits on the target
        let last = &x[x.len() - 2 * RATE as usize..];
        let out_db = 20.0 * rms(last, 2, 0).log10();
        assert!((out_db - -20.0).abs() < 0.2, "output {out_db:.2} dBFS");
    }

    #[test]
    fn loud_voice_is_brought_down_within_its_attack_time() {
        let s = AgcSettings::default();
        let mut agc = Agc::new(&s, RATE);
        let mut x = sine_at(-6.0, 3.0);
        let trace = gain_trace(&mut agc, &mut x);
        let t = ms_to_63(&trace, 0.0, -14.0);
        assert!(
            (t - s.attack_ms as f64).abs() < 0.1 * s.attack_ms as f64,
            "63 % of the cut after {t:.0} ms, attack is {} ms",
            s.attack_ms
        );
        let last = &x[x.len() - RATE as usize / 2..];
        let out_db = 20.0 * rms(last, 2, 0).log10();
        assert!((out_db - -20.0).abs() < 0.2, "output {out_db:.2} dBFS");
    }

    #[test]
    fn pauses_and_gain_limits_are_respected() {
        let s = AgcSettings::default();
        let mut agc = Agc::new(&s, RATE);
        // steer to +10 dB on a -30 dBFS voice
        let mut x = sine_at(-30.0, 12.0);
        gain_trace(&mut agc, &mut x);
        let before = agc.gain_db();
        assert!((before - 10.0).abs() < 0.2, "{before}");
        // a long pause with -70 dBFS hiss: the gain holds
        let mut n = Noise::new(3);
        let amp = db_to_gain(-70.0) * 3f32.sqrt(); // uniform noise: RMS = amp / sqrt(3)
        let mut hiss: Vec<f32> = (0..10 * 2 * RATE as usize)
            .map(|_| n.next() * amp)
            .collect();
        // the detector needs ~100 ms to fall from -30 to the -50 dBFS freeze level...
        let trace = gain_trace(&mut agc, &mut hiss);
        let settled = trace[RATE as usize / 5];
        assert!((settled - before).abs() < 0.5, "{before} -> {settled}");
        // ...then the gain stays put for the rest of the ten seconds
        assert!(
            (agc.gain_db() - settled).abs() < 0.01,
            "{settled} -> {}",
            agc.gain_db()
        );
        // a very quiet voice gets at most max_gain_db
        let mut x = sine_at(-48.0, 20.0);
        gain_trace(&mut agc, &mut x);
        assert!((agc.gain_db() - 20.0).abs() < 0.05, "{}", agc.gain_db());
    }

    #[test]
    fn freeze_level_must_be_under_the_target() {
        let s = AgcSettings {
            freeze_below_dbfs: -10.0,
            ..Default::default()
        };
        assert_eq!(
            s.validate("audio_chain.agc").unwrap_err().to_string(),
            "audio_chain.agc.freeze_below_dbfs = -10 is invalid: use -90 to -20"
        );
    }
}
