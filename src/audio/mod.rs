//! The audio chain: processing stages between the microphone and the AAC encoder.
//!
//! Every stage implements [`AudioFilter`], works in place on interleaved f32 samples and
//! never allocates while processing: buffers are sized in the constructor for up to
//! [`MAX_CHANNELS`] channels. [`chain::AudioChain`] runs the stages in a configurable order
//! and meters the signal before and after.

pub mod agc;
pub mod chain;
pub mod compressor;
pub mod denoise;
pub mod eq;
pub mod gate;
pub mod limiter;
pub mod meter;

pub use chain::{AudioChain, AudioChainSettings, ChainMeters, StageKind};

/// Channels every stage keeps state for, so processing never has to grow a buffer.
/// Channels past this many pass through untouched.
pub const MAX_CHANNELS: usize = 8;

/// The level reported for digital silence, in dB, so meters and gains stay finite.
pub const SILENCE_DB: f32 = -200.0;

/// One in-place processing stage of the audio chain.
pub trait AudioFilter: Send {
    /// Processes interleaved samples in place. Must not allocate, lock or block.
    fn process(&mut self, samples: &mut [f32], channels: usize);
    /// Forgets all signal history (delay lines, envelopes, smoothed gains).
    fn reset(&mut self);
    /// A short stable name for logs, settings and meters.
    fn name(&self) -> &'static str;
    /// When bypassed, `process` leaves the samples bit-for-bit untouched.
    /// Leaving bypass resets the stage so no stale history leaks into the output.
    fn set_bypass(&mut self, bypass: bool);
    /// Whether `process` currently leaves samples untouched.
    fn bypassed(&self) -> bool;
    /// How many sample frames the stage delays the signal by while active.
    fn latency_frames(&self) -> usize {
        0
    }
}

/// Converts decibels to a linear amplitude factor.
#[inline]
pub fn db_to_gain(db: f32) -> f32 {
    // 10^(db/20) = e^(db * ln(10)/20)
    (db * (std::f32::consts::LN_10 / 20.0)).exp()
}

/// Converts a linear amplitude to decibels, with silence reported as [`SILENCE_DB`].
#[inline]
pub fn gain_to_db(gain: f32) -> f32 {
    if gain <= 1e-10 {
        SILENCE_DB
    } else {
        20.0 * gain.log10()
    }
}

/// The per-sample coefficient of a one-pole smoother with time constant `ms`
/// (the time to cover 63 % of a step). Zero or negative times mean "instant".
/// Smoothers run in f64: with f32, steps of seconds-long time constants fall below the
/// resolution of the state and the smoother stalls short of its target.
pub(crate) fn time_coef(ms: f32, sample_rate: u32) -> f64 {
    let samples = ms as f64 * sample_rate as f64 / 1000.0;
    if samples <= 0.0 {
        0.0
    } else {
        (-1.0 / samples).exp()
    }
}

/// Fails naming the field when `value` is outside `lo..=hi` (or not a number).
pub(crate) fn check_range(
    path: &str,
    field: &str,
    value: f32,
    lo: f32,
    hi: f32,
) -> anyhow::Result<()> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        anyhow::bail!("{path}.{field} = {value} is invalid: use {lo} to {hi}")
    }
}

/// A peak detector that holds the largest magnitude seen over the last 5–10 ms, so a
/// sine's level reads steady (no ripple between its peaks) down to 100 Hz, while a
/// rising level is seen at once.
#[derive(Clone, Debug)]
pub(crate) struct PeakHold {
    bucket_len: usize,
    count: usize,
    current: f32,
    previous: f32,
}

/// Length of one of the two buckets of [`PeakHold`]: the held window spans one to two.
pub(crate) const PEAK_HOLD_BUCKET_MS: f32 = 5.0;

impl PeakHold {
    pub(crate) fn new(sample_rate: u32) -> Self {
        let bucket_len = ((PEAK_HOLD_BUCKET_MS * sample_rate as f32 / 1000.0) as usize).max(1);
        PeakHold {
            bucket_len,
            count: 0,
            current: 0.0,
            previous: 0.0,
        }
    }

    /// Feeds one magnitude and returns the held peak.
    #[inline]
    pub(crate) fn push(&mut self, magnitude: f32) -> f32 {
        if magnitude > self.current {
            self.current = magnitude;
        }
        let held = self.current.max(self.previous);
        self.count += 1;
        if self.count == self.bucket_len {
            self.previous = self.current;
            self.current = 0.0;
            self.count = 0;
        }
        held
    }

    pub(crate) fn reset(&mut self) {
        self.count = 0;
        self.current = 0.0;
        self.previous = 0.0;
    }
}

/// The largest magnitude among the first `channels` samples of one frame.
#[inline]
pub(crate) fn frame_peak(frame: &[f32]) -> f32 {
    frame.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Signal generators and measurements shared by the stage tests.

    use std::f64::consts::TAU;

    /// A stereo (both channels equal) sine of `amplitude` at `freq` Hz.
    pub fn stereo_sine(freq: f64, amplitude: f32, frames: usize, rate: u32) -> Vec<f32> {
        let mut out = Vec::with_capacity(frames * 2);
        for i in 0..frames {
            let v = ((TAU * freq * i as f64 / rate as f64).sin() as f32) * amplitude;
            out.push(v);
            out.push(v);
        }
        out
    }

    /// RMS of channel `ch` of an interleaved buffer.
    pub fn rms(samples: &[f32], channels: usize, ch: usize) -> f64 {
        let n = samples.len() / channels;
        let sum: f64 = samples
            .iter()
            .skip(ch)
            .step_by(channels)
            .map(|&v| v as f64 * v as f64)
            .sum();
        (sum / n.max(1) as f64).sqrt()
    }

    /// Peak magnitude over all channels.
    pub fn peak(samples: &[f32]) -> f32 {
        samples.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// A tiny deterministic white-noise source (xorshift), uniform in [-1, 1).
    pub struct Noise(u64);

    impl Noise {
        pub fn new(seed: u64) -> Self {
            Noise(seed.max(1))
        }

        pub fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        }
    }

    /// A speech-like test signal: a glottal pulse train (harmonic-rich) with pitch
    /// gliding between 95 and 230 Hz, shaped by three formant resonators that move
    /// from "syllable" to "syllable", in 120–330 ms voiced bursts separated by
    /// 60–250 ms gaps. Mono, 48 kHz, peak near 0.5.
    pub fn speech_like(secs: f64) -> Vec<f32> {
        let rate = 48_000.0;
        let n = (secs * rate) as usize;
        let mut out = vec![0.0f32; n];
        // vowels as (F1, F2, F3) in Hz
        let vowels = [
            (730.0, 1090.0, 2440.0),
            (270.0, 2290.0, 3010.0),
            (530.0, 1840.0, 2480.0),
            (570.0, 840.0, 2410.0),
            (440.0, 1020.0, 2240.0),
            (300.0, 870.0, 2240.0),
        ];
        let mut rng = Noise::new(42);
        let mut t = 0usize;
        let mut syllable = 0usize;
        while t < n {
            let len = (0.12 + 0.21 * (rng.next() as f64 * 0.5 + 0.5)) * rate;
            let gap = (0.06 + 0.19 * (rng.next() as f64 * 0.5 + 0.5)) * rate;
            let (f1, f2, f3) = vowels[syllable % vowels.len()];
            let f0_start = 120.0 + 60.0 * rng.next() as f64;
            let f0_end = 120.0 + 60.0 * rng.next() as f64 + 50.0 * (syllable % 2) as f64;
            let end = (t + len as usize).min(n);
            // formant resonators (two-pole), one state per formant
            let mut res = [(f1, 80.0), (f2, 120.0), (f3, 180.0)].map(|(f, bw)| {
                let r = (-std::f64::consts::PI * bw / rate).exp();
                let c = 2.0 * r * (TAU * f / rate).cos();
                (c, -r * r, 0.0f64, 0.0f64)
            });
            let mut phase = 0.0f64;
            let len = end - t;
            for (j, sample) in out[t..end].iter_mut().enumerate() {
                let k = j as f64 / len as f64;
                let f0 = f0_start + (f0_end - f0_start) * k;
                phase += f0 / rate;
                // glottal source: a pulse once per period, with some aspiration noise
                let mut src = 0.0;
                if phase >= 1.0 {
                    phase -= 1.0;
                    src = 1.0;
                }
                src += 0.02 * rng.next() as f64;
                let mut y = 0.0;
                for (gain, (c, d, y1, y2)) in [1.0, 0.6, 0.3].iter().zip(res.iter_mut()) {
                    let v = src + *c * *y1 + *d * *y2;
                    *y2 = *y1;
                    *y1 = v;
                    y += gain * v;
                }
                // syllable envelope: smooth rise and fall
                let env = (std::f64::consts::PI * k).sin().powf(0.6);
                *sample = (y * env) as f32;
            }
            t = end + gap as usize;
            syllable += 1;
        }
        let peak = peak(&out);
        for v in &mut out {
            *v *= 0.5 / peak;
        }
        out
    }

    /// Runs `samples` through `f` in blocks of `block` frames.
    pub fn run_blocks(
        f: &mut dyn super::AudioFilter,
        samples: &mut [f32],
        channels: usize,
        block: usize,
    ) {
        for chunk in samples.chunks_mut(block * channels) {
            f.process(chunk, channels);
        }
    }
}

/// Counts heap allocations made by the current thread, to prove processing makes none.
#[cfg(test)]
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    fn bump() {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            bump();
            System.alloc(layout)
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            bump();
            System.alloc_zeroed(layout)
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            bump();
            System.realloc(ptr, layout, new_size)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Allocations this thread has made so far.
    pub fn allocations() -> u64 {
        COUNT.with(|c| c.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_does_not_allocate() {
        let mut noise = test_util::Noise::new(11);
        let blocks: Vec<Vec<f32>> = (0..64)
            .map(|_| (0..2048).map(|_| noise.next() * 0.3).collect())
            .collect();
        let mut settings = AudioChainSettings::default();
        settings.eq.bands.push(eq::Band::default());
        let mut chain = AudioChain::from_settings(&settings, 48_000).unwrap();
        let mut block = crate::media::AudioBlock {
            samples: vec![0.0; 2048],
            channels: 2,
            sample_rate: 48_000,
            pts_ms: 0,
        };
        // first pass warms up anything lazily initialised inside the libraries
        for b in &blocks {
            block.samples.copy_from_slice(b);
            chain.process_block(&mut block).unwrap();
        }
        let before = alloc_count::allocations();
        for round in 0..4 {
            for b in &blocks {
                block.samples.copy_from_slice(b);
                chain.process_block(&mut block).unwrap();
                // odd block sizes too
                let n = 2 * (100 + round * 77);
                chain.process(&mut block.samples[..n], 2);
            }
            std::hint::black_box(chain.meters());
        }
        let made = alloc_count::allocations() - before;
        assert_eq!(made, 0, "the chain allocated {made} times while processing");
        // and the counter does see allocations
        std::hint::black_box(vec![0u8; 10]);
        assert!(alloc_count::allocations() > before);
    }

    #[test]
    fn db_conversions_round_trip() {
        for db in [-60.0f32, -24.0, -6.0206, 0.0, 6.0, 12.0] {
            assert!((gain_to_db(db_to_gain(db)) - db).abs() < 1e-4, "{db}");
        }
        assert!((db_to_gain(-6.0206) - 0.5).abs() < 1e-5);
        assert_eq!(gain_to_db(0.0), SILENCE_DB);
    }

    #[test]
    fn peak_hold_holds_a_sine_peak_steady() {
        let rate = 48_000;
        let mut hold = PeakHold::new(rate);
        let sine = test_util::stereo_sine(100.0, 0.5, 48_000, rate);
        let held: Vec<f32> = sine.chunks(2).map(|f| hold.push(frame_peak(f))).collect();
        let min = held[2000..].iter().cloned().fold(1.0f32, f32::min);
        assert!(min > 0.499, "held peak dropped to {min}");
    }

    #[test]
    fn range_check_names_the_field() {
        let e = check_range("audio_chain.compressor", "ratio", 0.5, 1.0, 50.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "audio_chain.compressor.ratio = 0.5 is invalid: use 1 to 50"
        );
        assert!(check_range("a", "b", f32::NAN, 0.0, 1.0).is_err());
    }
}
