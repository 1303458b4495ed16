//! A sine tone generator: the default audio source, so a stream always has audible,
//! verifiable sound even on a machine without a microphone.

use super::AudioSource;
use crate::clock::{audio_pts_ms, MediaClock};
use crate::media::AudioBlock;

/// Samples per block: one AAC-LC frame, so each block becomes exactly one packet.
pub const BLOCK_FRAMES: usize = 1024;

/// A stereo sine wave at a fixed frequency and level.
pub struct Tone {
    clock: MediaClock,
    sample_rate: u32,
    frequency: f32,
    amplitude: f32,
    sample_index: u64,
    paced: bool,
}

impl Tone {
    /// A tone at `frequency` Hz, −12 dBFS, 48 kHz stereo, paced by `clock`.
    pub fn new(clock: MediaClock, frequency: f32) -> Self {
        Tone {
            clock,
            sample_rate: 48_000,
            frequency,
            amplitude: 0.25,
            sample_index: 0,
            paced: true,
        }
    }

    /// Generates as fast as asked instead of in real time (benchmarks, offline tests).
    pub fn unpaced(mut self) -> Self {
        self.paced = false;
        self
    }

    /// Fills the next block without waiting.
    pub fn generate(&mut self) -> AudioBlock {
        let mut samples = Vec::with_capacity(BLOCK_FRAMES * 2);
        let step = std::f64::consts::TAU * self.frequency as f64 / self.sample_rate as f64;
        for i in 0..BLOCK_FRAMES as u64 {
            // Phase from the absolute sample index: no accumulated error over hours.
            let phase = ((self.sample_index + i) as f64 * step) % std::f64::consts::TAU;
            let v = (phase.sin() as f32) * self.amplitude;
            samples.push(v);
            samples.push(v);
        }
        let block = AudioBlock {
            samples,
            channels: 2,
            sample_rate: self.sample_rate,
            pts_ms: audio_pts_ms(self.sample_index, self.sample_rate),
        };
        self.sample_index += BLOCK_FRAMES as u64;
        block
    }
}

impl AudioSource for Tone {
    fn next_block(&mut self) -> anyhow::Result<AudioBlock> {
        if self.paced {
            // A block is due once its last sample has been "captured".
            let end = self.sample_index + BLOCK_FRAMES as u64;
            self.clock
                .sleep_until(end as f64 * 1000.0 / self.sample_rate as f64);
        }
        Ok(self.generate())
    }

    fn describe(&self) -> String {
        format!("tone {} Hz, {} Hz stereo", self.frequency, self.sample_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_has_right_frequency_level_and_pts() {
        let mut t = Tone::new(MediaClock::start(), 1000.0).unpaced();
        let mut all = Vec::new();
        let mut pts = Vec::new();
        for _ in 0..47 {
            let b = t.generate();
            assert_eq!(b.frames(), BLOCK_FRAMES);
            pts.push(b.pts_ms);
            all.extend(b.samples.chunks(2).map(|c| c[0]));
        }
        assert_eq!(pts[1], 21);
        assert_eq!(pts[46], audio_pts_ms(46 * 1024, 48_000));
        // count rising zero crossings over ~1 s: a 1 kHz tone has ~1000
        let crossings = all.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        let secs = all.len() as f64 / 48_000.0;
        let hz = crossings as f64 / secs;
        assert!((hz - 1000.0).abs() < 5.0, "measured {hz} Hz");
        let peak = all.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.25).abs() < 0.01, "peak {peak}");
    }
}
