//! Level meter: peak and RMS per channel in dBFS, so the user can see the microphone is
//! live, not clipping, and where the chain puts the level.
//!
//! Levels are measured over fixed windows (100 ms by default) and published when a
//! window completes; reading them never disturbs the audio path.

use super::{gain_to_db, MAX_CHANNELS, SILENCE_DB};
use serde::{Serialize, Serializer};

/// Length of a metering window unless asked otherwise: about a UI refresh.
pub const DEFAULT_WINDOW_MS: f32 = 100.0;

/// One channel's levels over the last complete window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ChannelLevel {
    /// Largest sample magnitude, dBFS (0 dBFS = 1.0).
    pub peak_dbfs: f32,
    /// Root mean square, dBFS (a full-scale sine reads −3.01).
    pub rms_dbfs: f32,
}

impl Default for ChannelLevel {
    fn default() -> Self {
        ChannelLevel {
            peak_dbfs: SILENCE_DB,
            rms_dbfs: SILENCE_DB,
        }
    }
}

/// Levels of every metered channel, copied out without allocating.
#[derive(Clone, Copy, Default, PartialEq)]
pub struct Levels {
    count: usize,
    levels: [ChannelLevel; MAX_CHANNELS],
}

impl Levels {
    /// The levels of the channels seen, in channel order.
    pub fn channels(&self) -> &[ChannelLevel] {
        &self.levels[..self.count]
    }
}

impl std::fmt::Debug for Levels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.channels()).finish()
    }
}

/// Serialised as the list of channel levels, as a UI or status endpoint wants it.
impl Serialize for Levels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.channels())
    }
}

/// Measures interleaved audio in fixed windows.
pub struct Meter {
    window: usize,
    count: usize,
    channels: usize,
    sum_sq: [f64; MAX_CHANNELS],
    peak: [f32; MAX_CHANNELS],
    levels: Levels,
}

impl Meter {
    /// A meter publishing every `window_ms` of audio at `sample_rate`.
    pub fn new(sample_rate: u32, window_ms: f32) -> Self {
        Meter {
            window: ((window_ms as f64 * sample_rate as f64 / 1000.0) as usize).max(1),
            count: 0,
            channels: 0,
            sum_sq: [0.0; MAX_CHANNELS],
            peak: [0.0; MAX_CHANNELS],
            levels: Levels::default(),
        }
    }

    /// Accounts for a block of interleaved samples.
    pub fn process(&mut self, samples: &[f32], channels: usize) {
        if channels == 0 {
            return;
        }
        let metered = channels.min(MAX_CHANNELS);
        if metered != self.channels {
            self.reset();
            self.channels = metered;
        }
        for frame in samples.chunks_exact(channels) {
            for ((v, sum), peak) in frame[..metered]
                .iter()
                .zip(&mut self.sum_sq)
                .zip(&mut self.peak)
            {
                *sum += *v as f64 * *v as f64;
                *peak = peak.max(v.abs());
            }
            self.count += 1;
            if self.count == self.window {
                self.publish();
            }
        }
    }

    fn publish(&mut self) {
        let n = self.count as f64;
        for ch in 0..self.channels {
            self.levels.levels[ch] = ChannelLevel {
                peak_dbfs: gain_to_db(self.peak[ch]),
                rms_dbfs: gain_to_db((self.sum_sq[ch] / n).sqrt() as f32),
            };
        }
        self.levels.count = self.channels;
        self.sum_sq = [0.0; MAX_CHANNELS];
        self.peak = [0.0; MAX_CHANNELS];
        self.count = 0;
    }

    /// The levels of the last complete window (silence before the first one).
    pub fn levels(&self) -> Levels {
        self.levels
    }

    /// Drops the partial window and the published levels.
    pub fn reset(&mut self) {
        self.count = 0;
        self.sum_sq = [0.0; MAX_CHANNELS];
        self.peak = [0.0; MAX_CHANNELS];
        self.levels = Levels::default();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn half_scale_sine_reads_minus_6_peak_minus_9_rms() {
        let mut m = Meter::new(48_000, DEFAULT_WINDOW_MS);
        let x = stereo_sine(1000.0, 0.5, 48_000, 48_000);
        for block in x.chunks(2 * 1024) {
            m.process(block, 2);
        }
        let levels = m.levels();
        assert_eq!(levels.channels().len(), 2);
        for l in levels.channels() {
            assert!((l.peak_dbfs - -6.02).abs() < 0.005, "peak {}", l.peak_dbfs);
            assert!((l.rms_dbfs - -9.03).abs() < 0.005, "rms {}", l.rms_dbfs);
        }
    }

    #[test]
    fn channels_are_metered_separately() {
        let mut m = Meter::new(48_000, 10.0);
        let x: Vec<f32> = (0..960).flat_map(|_| [0.25f32, 0.0]).collect();
        m.process(&x, 2);
        let l = m.levels();
        assert!((l.channels()[0].peak_dbfs - -12.04).abs() < 0.01);
        assert!((l.channels()[0].rms_dbfs - -12.04).abs() < 0.01);
        assert_eq!(l.channels()[1].peak_dbfs, SILENCE_DB);
        assert_eq!(l.channels()[1].rms_dbfs, SILENCE_DB);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json.matches("peak_dbfs").count(), 2, "{json}");
    }
}
