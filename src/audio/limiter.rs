//! Lookahead peak limiter: the last stage, so nothing the encoder receives ever goes
//! past the ceiling, whatever the stages before it do.
//!
//! The signal is delayed by the lookahead. For every incoming frame the gain that would
//! bring its linked peak down to the ceiling is computed; the minimum of that over a
//! window of lookahead + 1 frames, averaged again over the same window, gives a gain
//! that ramps down smoothly *before* a peak and is never above the gain that peak needs
//! when it leaves the delay line. Recovery then follows the release time constant.
//! A final clamp absorbs floating-point rounding, so the output sample peak never
//! exceeds the ceiling. (Inter-sample peaks after reconstruction are not bounded: keep
//! the ceiling a little below 0 dBFS for that.)

use super::MAX_CHANNELS;
use super::{check_range, db_to_gain, frame_peak, gain_to_db, time_coef, AudioFilter};
use serde::{Deserialize, Serialize};

/// Limiter settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterSettings {
    /// Off means the stage starts bypassed.
    pub enabled: bool,
    /// Highest sample magnitude the output may reach, in dBFS.
    pub ceiling_dbfs: f32,
    /// How far ahead the limiter looks, which is also the delay it adds.
    pub lookahead_ms: f32,
    /// Time constant (63 %) for the gain to recover after a peak.
    pub release_ms: f32,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        LimiterSettings {
            enabled: true,
            ceiling_dbfs: -1.0,
            lookahead_ms: 5.0,
            release_ms: 60.0,
        }
    }
}

impl LimiterSettings {
    /// Rejects values no limiter could use, naming the field under `path`.
    pub fn validate(&self, path: &str) -> anyhow::Result<()> {
        check_range(path, "ceiling_dbfs", self.ceiling_dbfs, -30.0, 0.0)?;
        check_range(path, "lookahead_ms", self.lookahead_ms, 0.5, 20.0)?;
        check_range(path, "release_ms", self.release_ms, 1.0, 2000.0)?;
        Ok(())
    }
}

/// The limiter stage.
pub struct Limiter {
    ceiling: f32,
    release: f64,
    /// Lookahead in frames: the delay of the signal.
    lookahead: usize,
    /// Window of the running minimum and of the average: lookahead + 1.
    window: usize,
    /// Delay line, `lookahead` frames of `MAX_CHANNELS` slots.
    delay: Vec<f32>,
    delay_pos: usize,
    /// Monotonic queue of (frame number, required gain) for the running minimum.
    min_idx: Vec<u64>,
    min_val: Vec<f32>,
    min_head: usize,
    min_len: usize,
    /// The last `window` running minima and their sum, for the average.
    avg: Vec<f32>,
    avg_pos: usize,
    avg_sum: f64,
    frame_no: u64,
    gain: f64,
    overshoots: u64,
    channels: usize,
    bypass: bool,
}

impl Limiter {
    /// A limiter for `sample_rate`; starts bypassed when the settings disable it.
    pub fn new(settings: &LimiterSettings, sample_rate: u32) -> Self {
        let lookahead =
            ((settings.lookahead_ms as f64 * sample_rate as f64 / 1000.0).round() as usize).max(1);
        let window = lookahead + 1;
        let mut l = Limiter {
            ceiling: db_to_gain(settings.ceiling_dbfs).min(1.0),
            release: time_coef(settings.release_ms, sample_rate),
            lookahead,
            window,
            delay: vec![0.0; lookahead * MAX_CHANNELS],
            delay_pos: 0,
            min_idx: vec![0; window],
            min_val: vec![1.0; window],
            min_head: 0,
            min_len: 0,
            avg: vec![1.0; window],
            avg_pos: 0,
            avg_sum: window as f64,
            frame_no: 0,
            gain: 1.0,
            overshoots: 0,
            channels: 0,
            bypass: !settings.enabled,
        };
        l.reset();
        l
    }

    /// The ceiling as a linear magnitude.
    pub fn ceiling(&self) -> f32 {
        self.ceiling
    }

    /// Current gain reduction in dB (0 when no peak is near), for meters.
    pub fn gain_reduction_db(&self) -> f32 {
        0.0 - gain_to_db(self.gain as f32)
    }

    /// Samples the final clamp had to pull in by more than float rounding. The gain
    /// computation alone should keep this at 0; it is a health check, not a feature.
    pub fn overshoots(&self) -> u64 {
        self.overshoots
    }

    /// Pushes the gain frame `n` needs and returns the smoothed gain for the frame
    /// leaving the delay line now.
    #[inline]
    fn next_gain(&mut self, required: f32) -> f32 {
        // `required` and the running minimum stay f32; averaging and recovery run in f64.
        let n = self.frame_no;
        self.frame_no += 1;
        let cap = self.window;
        // running minimum over the last `window` frames (monotonic queue)
        while self.min_len > 0 {
            let back = (self.min_head + self.min_len - 1) % cap;
            if self.min_val[back] >= required {
                self.min_len -= 1;
            } else {
                break;
            }
        }
        let slot = (self.min_head + self.min_len) % cap;
        self.min_idx[slot] = n;
        self.min_val[slot] = required;
        self.min_len += 1;
        while self.min_idx[self.min_head] + (cap as u64) <= n {
            self.min_head = (self.min_head + 1) % cap;
            self.min_len -= 1;
        }
        let min = self.min_val[self.min_head];
        // average of the last `window` minima: a ramp that lands on each minimum
        self.avg_sum += min as f64 - self.avg[self.avg_pos] as f64;
        self.avg[self.avg_pos] = min;
        self.avg_pos = (self.avg_pos + 1) % cap;
        let target = self.avg_sum / cap as f64;
        // instant down (already ramped), exponential recovery, never above the target
        self.gain = if target < self.gain {
            target
        } else {
            target + self.release * (self.gain - target)
        };
        self.gain as f32
    }
}

impl AudioFilter for Limiter {
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        if self.bypass || channels == 0 {
            return;
        }
        let active = channels.min(MAX_CHANNELS);
        if active != self.channels {
            self.reset();
            self.channels = active;
        }
        // Re-add the running sum exactly once per block so rounding cannot drift.
        self.avg_sum = self.avg.iter().map(|&v| v as f64).sum();
        let ceiling = self.ceiling;
        for frame in samples.chunks_exact_mut(channels) {
            let peak = frame_peak(&frame[..active]);
            let required = if peak > ceiling { ceiling / peak } else { 1.0 };
            let g = self.next_gain(required);
            let base = self.delay_pos * MAX_CHANNELS;
            for (s, d) in frame[..active]
                .iter_mut()
                .zip(&mut self.delay[base..base + active])
            {
                let out = *d * g;
                *d = *s;
                if out.abs() > ceiling * (1.0 + 1e-5) {
                    self.overshoots += 1;
                }
                *s = out.clamp(-ceiling, ceiling);
            }
            self.delay_pos += 1;
            if self.delay_pos == self.lookahead {
                self.delay_pos = 0;
            }
        }
    }

    fn reset(&mut self) {
        self.delay.fill(0.0);
        self.delay_pos = 0;
        self.min_head = 0;
        self.min_len = 0;
        self.avg.fill(1.0);
        self.avg_pos = 0;
        self.avg_sum = self.window as f64;
        self.frame_no = 0;
        self.gain = 1.0;
    }

    fn name(&self) -> &'static str {
        "limiter"
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

    fn latency_frames(&self) -> usize {
        self.lookahead
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    const RATE: u32 = 48_000;

    fn limiter() -> Limiter {
        Limiter::new(&LimiterSettings::default(), RATE)
    }

    fn assert_under_ceiling(name: &str, mut x: Vec<f32>, block: usize) -> Vec<f32> {
        let mut l = limiter();
        let ceiling = l.ceiling();
        run_blocks(&mut l, &mut x, 2, block);
        let p = peak(&x);
        assert!(p <= ceiling, "{name}: output peak {p} > ceiling {ceiling}");
        // the gain itself got there, not the safety clamp
        assert_eq!(l.overshoots(), 0, "{name}: the gain let peaks through");
        x
    }

    #[test]
    fn never_exceeds_the_ceiling_on_worst_case_signals() {
        let n = RATE as usize;
        // full-scale square, switching every sample and every 100 samples
        for period in [1usize, 2, 100, 2400] {
            let x: Vec<f32> = (0..n)
                .flat_map(|i| {
                    let v = if (i / period) % 2 == 0 { 1.0 } else { -1.0 };
                    [v, v]
                })
                .collect();
            let out = assert_under_ceiling(&format!("square /{period}"), x, 1024);
            if period >= 100 {
                // and it is held at the ceiling, not crushed below it
                let tail_peak = peak(&out[n..]);
                assert!(
                    tail_peak > 0.99 * db_to_gain(-1.0),
                    "square /{period}: {tail_peak}"
                );
            }
        }
        // isolated impulses at +12 dB, alone and in bursts, after silence
        let mut x = vec![0.0f32; 2 * n];
        for (k, i) in (1000..n).step_by(3001).enumerate() {
            let amp = if k % 2 == 0 { 3.98 } else { -3.98 };
            for j in 0..(k % 4 + 1) {
                x[2 * (i + j * 7)] = amp;
                x[2 * (i + j * 7) + 1] = -amp * 0.5;
            }
        }
        assert_under_ceiling("impulses", x, 1024);
        // a +12 dB sine, and one that jumps from silence
        let x = stereo_sine(997.0, 3.98, n, RATE);
        assert_under_ceiling("+12 dB sine", x, 1024);
        let mut x = vec![0.0f32; n];
        x.extend(stereo_sine(50.0, 3.98, n / 2, RATE).iter());
        assert_under_ceiling("sine from silence", x, 1);
        // loud white noise in odd block sizes, different per channel
        let mut noise = Noise::new(7);
        let x: Vec<f32> = (0..2 * n).map(|_| noise.next() * 8.0).collect();
        assert_under_ceiling("+18 dB noise", x.clone(), 333);
        assert_under_ceiling("+18 dB noise, 1-frame blocks", x, 1);
    }

    #[test]
    fn quiet_signal_passes_unchanged_after_the_reported_latency() {
        let mut l = limiter();
        let latency = l.latency_frames();
        assert_eq!(latency, 240);
        let x = stereo_sine(440.0, 0.5, 4800, RATE);
        let mut y = x.clone();
        run_blocks(&mut l, &mut y, 2, 1000);
        assert!(y[..2 * latency].iter().all(|&v| v == 0.0));
        for (i, (a, b)) in x.iter().zip(&y[2 * latency..]).enumerate() {
            assert_eq!(a, b, "sample {i}");
        }
        assert_eq!(l.gain_reduction_db(), 0.0);
    }

    #[test]
    fn gain_ramps_before_a_peak_and_recovers_with_release() {
        let mut l = limiter();
        let ceiling = l.ceiling();
        let latency = l.latency_frames();
        // steady 0.25 with one +12 dB click in the middle
        let n = 24_000;
        let mut x = vec![0.25f32; 2 * n];
        let click = 10_000;
        x[2 * click] = 4.0;
        x[2 * click + 1] = 4.0;
        let mut y = x.clone();
        l.process(&mut y, 2);
        let out_click = y[2 * (click + latency)];
        assert!(
            (out_click - ceiling).abs() < 1e-3,
            "click came out at {out_click}"
        );
        // the gain starts coming down a lookahead before the click, not earlier
        let before = y[2 * (click - 2)];
        assert_eq!(before, 0.25);
        let ramp = y[2 * (click + latency - latency / 2)];
        assert!(ramp < 0.25 && ramp > 0.1, "mid-ramp {ramp}");
        // recovery: 63 % of the way back one release time after the middle of the ramp up
        let back = click + latency + latency / 2 + 60 * 48;
        let g = y[2 * back] / 0.25;
        let g_min = ceiling / 4.0;
        let progress = (g - g_min) / (1.0 - g_min);
        assert!((progress - 0.632).abs() < 0.07, "recovered {progress}");
    }
}
