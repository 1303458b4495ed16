//! A sine tone generator: the default audio source, so a stream always has audible,
//! verifiable sound even on a machine without a microphone.

use super::AudioSource;
use crate::clock::{audio_pts_ms, MediaClock};
use crate::media::AudioBlock;

/// Samples per block: one AAC-LC frame, so each block becomes exactly one packet.
pub const BLOCK_FRAMES: usize = 1024;

/// Frequency of the sync beep, Hz.
pub const BEEP_HZ: f32 = 1000.0;
/// Length of the sync beep, ms.
pub const BEEP_MS: u32 = 100;
/// Level of the sync beep (−6 dBFS).
pub const BEEP_AMPLITUDE: f32 = 0.5;

/// A stereo sine wave at a fixed frequency and level.
pub struct Tone {
    clock: MediaClock,
    sample_rate: u32,
    frequency: f32,
    amplitude: f32,
    sample_index: u64,
    paced: bool,
    sync_marks: bool,
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
            sync_marks: false,
        }
    }

    /// The tone the settings ask for: `sources.tone_hz`, or sync beeps with `qa.sync_marks`.
    pub fn from_settings(s: &crate::config::Settings, clock: MediaClock) -> Self {
        let tone = Tone::new(clock, s.sources.tone_hz);
        if s.qa.sync_marks {
            tone.with_sync_marks()
        } else {
            tone
        }
    }

    /// Generates as fast as asked instead of in real time (benchmarks, offline tests).
    pub fn unpaced(mut self) -> Self {
        self.paced = false;
        self
    }

    /// Replaces the tone by a sync beep: [`BEEP_HZ`] for [`BEEP_MS`] at every whole second
    /// of the stream (sample count, so exactly on the audio timeline), silence otherwise. It
    /// lines up with the test card's flash ([`super::test_card::TestCard::with_sync_marks`]).
    pub fn with_sync_marks(mut self) -> Self {
        self.sync_marks = true;
        self
    }

    /// Fills the next block without waiting.
    pub fn generate(&mut self) -> AudioBlock {
        let mut samples = Vec::with_capacity(BLOCK_FRAMES * 2);
        let rate = self.sample_rate as u64;
        let (freq, amplitude) = if self.sync_marks {
            (BEEP_HZ, BEEP_AMPLITUDE)
        } else {
            (self.frequency, self.amplitude)
        };
        let beep_len = rate * BEEP_MS as u64 / 1000;
        let step = std::f64::consts::TAU * freq as f64 / self.sample_rate as f64;
        for i in 0..BLOCK_FRAMES as u64 {
            let n = self.sample_index + i;
            // Phase from the absolute sample index: no accumulated error over hours.
            let phase = ((n % rate) as f64 * step) % std::f64::consts::TAU;
            let on = !self.sync_marks || n % rate < beep_len;
            let v = if on {
                (phase.sin() as f32) * amplitude
            } else {
                0.0
            };
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
        if self.sync_marks {
            return format!(
                "sync beeps {BEEP_HZ} Hz {BEEP_MS} ms every second, {} Hz stereo",
                self.sample_rate
            );
        }
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

    #[test]
    fn sync_marks_beep_at_each_second() {
        let mut t = Tone::new(MediaClock::start(), 440.0)
            .unpaced()
            .with_sync_marks();
        let mut all = Vec::new();
        for _ in 0..150 {
            all.extend(t.generate().samples.chunks(2).map(|c| c[0]));
        }
        // onsets: a loud sample after 10 ms of silence
        let onsets: Vec<usize> = (480..all.len())
            .filter(|&i| all[i].abs() > 0.05 && all[i - 480..i].iter().all(|v| *v == 0.0))
            .collect();
        // the first beep starts at sample 0 (no silence before it), then one per second
        assert_eq!(onsets.len(), 3, "{onsets:?}");
        for (k, o) in onsets.iter().enumerate() {
            let start = (k + 1) * 48_000;
            assert!((start..start + 3).contains(o), "onset {o}");
        }
        // 100 ms long: loud within, silent after
        assert!(all[48_000 + 4700..48_000 + 4790]
            .iter()
            .any(|v| v.abs() > 0.4));
        assert!(all[48_000 + 4800..96_000].iter().all(|v| *v == 0.0));
    }
}
