//! Parametric equaliser: a cascade of RBJ "Audio EQ Cookbook" biquads, to take rumble
//! out from under a voice and add presence a cheap microphone lacks.

use super::{check_range, AudioFilter, MAX_CHANNELS};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// Most bands an equaliser accepts, so settings cannot make it arbitrarily expensive.
pub const MAX_BANDS: usize = 16;

/// The shape of one equaliser band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BandKind {
    /// Boosts or cuts everything below `freq_hz` by `gain_db`.
    LowShelf,
    /// Boosts or cuts everything above `freq_hz` by `gain_db`.
    HighShelf,
    /// Boosts or cuts a bell around `freq_hz`, `q` wide.
    Peaking,
    /// Removes everything below `freq_hz` (12 dB/octave); `gain_db` is ignored.
    HighPass,
    /// Removes everything above `freq_hz` (12 dB/octave); `gain_db` is ignored.
    LowPass,
}

/// One equaliser band as the user sets it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Band {
    /// The filter shape.
    pub kind: BandKind,
    /// Corner (shelves, passes) or centre (peaking) frequency.
    pub freq_hz: f32,
    /// Boost (positive) or cut (negative) for shelves and peaking bands.
    pub gain_db: f32,
    /// Bandwidth (peaking) or steepness (shelves, passes); 0.707 is the smooth default.
    pub q: f32,
}

impl Default for Band {
    fn default() -> Self {
        Band {
            kind: BandKind::Peaking,
            freq_hz: 1000.0,
            gain_db: 0.0,
            q: std::f32::consts::FRAC_1_SQRT_2,
        }
    }
}

/// Equaliser settings: the bands, applied in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EqSettings {
    /// Off means the stage starts bypassed.
    pub enabled: bool,
    /// Applied first to last.
    pub bands: Vec<Band>,
}

impl Default for EqSettings {
    /// Rumble and handling noise out below 80 Hz, presence in with +6 dB above 3 kHz.
    fn default() -> Self {
        EqSettings {
            enabled: true,
            bands: vec![
                Band {
                    kind: BandKind::HighPass,
                    freq_hz: 80.0,
                    gain_db: 0.0,
                    q: std::f32::consts::FRAC_1_SQRT_2,
                },
                Band {
                    kind: BandKind::HighShelf,
                    freq_hz: 3000.0,
                    gain_db: 6.0,
                    q: std::f32::consts::FRAC_1_SQRT_2,
                },
            ],
        }
    }
}

impl EqSettings {
    /// Rejects values no equaliser could use, naming the field under `path`.
    pub fn validate(&self, path: &str) -> anyhow::Result<()> {
        if self.bands.len() > MAX_BANDS {
            anyhow::bail!(
                "{path}.bands has {} bands: use at most {MAX_BANDS}",
                self.bands.len()
            );
        }
        for (i, b) in self.bands.iter().enumerate() {
            let p = format!("{path}.bands[{i}]");
            check_range(&p, "freq_hz", b.freq_hz, 10.0, 20_000.0)?;
            check_range(&p, "gain_db", b.gain_db, -24.0, 24.0)?;
            check_range(&p, "q", b.q, 0.1, 10.0)?;
        }
        Ok(())
    }
}

/// One second-order section with its coefficients normalised by a0 and per-channel
/// state, run in transposed direct form II in f64 so low corners stay clean.
#[derive(Clone, Debug)]
pub struct Biquad {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
    state: [[f64; 2]; MAX_CHANNELS],
}

impl Biquad {
    /// Designs a band with the RBJ cookbook formulas. The frequency is kept below
    /// 0.49 × `sample_rate` so every band stays stable at any rate.
    pub fn design(band: &Band, sample_rate: u32) -> Biquad {
        let fs = sample_rate as f64;
        let f0 = (band.freq_hz as f64).clamp(1.0, 0.49 * fs);
        let q = (band.q as f64).max(0.01);
        let a = 10f64.powf(band.gain_db as f64 / 40.0);
        let w0 = 2.0 * PI * f0 / fs;
        let (sin, cos) = w0.sin_cos();
        let alpha = sin / (2.0 * q);
        let sq = 2.0 * a.sqrt() * alpha;
        let (b0, b1, b2, a0, a1, a2) = match band.kind {
            BandKind::Peaking => (
                1.0 + alpha * a,
                -2.0 * cos,
                1.0 - alpha * a,
                1.0 + alpha / a,
                -2.0 * cos,
                1.0 - alpha / a,
            ),
            BandKind::LowShelf => (
                a * ((a + 1.0) - (a - 1.0) * cos + sq),
                2.0 * a * ((a - 1.0) - (a + 1.0) * cos),
                a * ((a + 1.0) - (a - 1.0) * cos - sq),
                (a + 1.0) + (a - 1.0) * cos + sq,
                -2.0 * ((a - 1.0) + (a + 1.0) * cos),
                (a + 1.0) + (a - 1.0) * cos - sq,
            ),
            BandKind::HighShelf => (
                a * ((a + 1.0) + (a - 1.0) * cos + sq),
                -2.0 * a * ((a - 1.0) + (a + 1.0) * cos),
                a * ((a + 1.0) + (a - 1.0) * cos - sq),
                (a + 1.0) - (a - 1.0) * cos + sq,
                2.0 * ((a - 1.0) - (a + 1.0) * cos),
                (a + 1.0) - (a - 1.0) * cos - sq,
            ),
            BandKind::HighPass => (
                (1.0 + cos) / 2.0,
                -(1.0 + cos),
                (1.0 + cos) / 2.0,
                1.0 + alpha,
                -2.0 * cos,
                1.0 - alpha,
            ),
            BandKind::LowPass => (
                (1.0 - cos) / 2.0,
                1.0 - cos,
                (1.0 - cos) / 2.0,
                1.0 + alpha,
                -2.0 * cos,
                1.0 - alpha,
            ),
        };
        Biquad {
            b0: b0 / a0,
            b1: b1 / a0,
            b2: b2 / a0,
            a1: a1 / a0,
            a2: a2 / a0,
            state: [[0.0; 2]; MAX_CHANNELS],
        }
    }

    /// The designed magnitude response at `freq_hz`, in dB, evaluated from the
    /// coefficients (for drawing the curve and checking the filter).
    pub fn magnitude_db(&self, freq_hz: f64, sample_rate: u32) -> f64 {
        let w = 2.0 * PI * freq_hz / sample_rate as f64;
        let (s1, c1) = w.sin_cos();
        let (s2, c2) = (2.0 * w).sin_cos();
        // H(e^jw) with z^-1 = cos w - j sin w
        let nr = self.b0 + self.b1 * c1 + self.b2 * c2;
        let ni = -(self.b1 * s1 + self.b2 * s2);
        let dr = 1.0 + self.a1 * c1 + self.a2 * c2;
        let di = -(self.a1 * s1 + self.a2 * s2);
        10.0 * ((nr * nr + ni * ni) / (dr * dr + di * di)).log10()
    }

    /// Filters channel `ch` of an interleaved buffer in place.
    #[inline]
    fn run(&mut self, samples: &mut [f32], channels: usize, ch: usize) {
        let [mut z1, mut z2] = self.state[ch];
        let (b0, b1, b2, a1, a2) = (self.b0, self.b1, self.b2, self.a1, self.a2);
        for s in samples.iter_mut().skip(ch).step_by(channels) {
            let x = *s as f64;
            let y = b0 * x + z1;
            z1 = b1 * x - a1 * y + z2;
            z2 = b2 * x - a2 * y;
            *s = y as f32;
        }
        // Flush decaying state before it turns denormal (and slow) in long silences.
        if z1.abs() < 1e-20 {
            z1 = 0.0;
        }
        if z2.abs() < 1e-20 {
            z2 = 0.0;
        }
        self.state[ch] = [z1, z2];
    }

    fn reset(&mut self) {
        self.state = [[0.0; 2]; MAX_CHANNELS];
    }
}

/// The equaliser stage: its bands in series on every channel.
pub struct Equalizer {
    bands: Vec<Biquad>,
    sample_rate: u32,
    bypass: bool,
}

impl Equalizer {
    /// Builds the bands for `sample_rate`; starts bypassed when the settings disable it.
    pub fn new(settings: &EqSettings, sample_rate: u32) -> Self {
        Equalizer {
            bands: settings
                .bands
                .iter()
                .map(|b| Biquad::design(b, sample_rate))
                .collect(),
            sample_rate,
            bypass: !settings.enabled,
        }
    }

    /// The combined designed response of all bands at `freq_hz`, in dB.
    pub fn magnitude_db(&self, freq_hz: f64) -> f64 {
        self.bands
            .iter()
            .map(|b| b.magnitude_db(freq_hz, self.sample_rate))
            .sum()
    }
}

impl AudioFilter for Equalizer {
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        if self.bypass || channels == 0 {
            return;
        }
        for band in &mut self.bands {
            for ch in 0..channels.min(MAX_CHANNELS) {
                band.run(samples, channels, ch);
            }
        }
    }

    fn reset(&mut self) {
        for b in &mut self.bands {
            b.reset();
        }
    }

    fn name(&self) -> &'static str {
        "eq"
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

    /// Gain in dB that the stage applies to a sine at `freq`, measured on the output after
    /// the filter has settled.
    fn measured_gain_db(settings: &EqSettings, freq: f64) -> f64 {
        let mut eq = Equalizer::new(settings, RATE);
        let amp = 0.1;
        let mut x = stereo_sine(freq, amp, RATE as usize, RATE);
        run_blocks(&mut eq, &mut x, 2, 1024);
        // skip the first half second (transient), measure the rest over whole samples
        let tail = &x[RATE as usize..];
        let out = rms(tail, 2, 0);
        let out_r = rms(tail, 2, 1);
        assert!((out - out_r).abs() < 1e-9, "channels differ");
        20.0 * (out / (amp as f64 / 2f64.sqrt())).log10()
    }

    /// Independent statement of the cookbook response, in closed form, so a wrong
    /// coefficient in `Biquad::design` cannot hide behind its own `magnitude_db`.
    fn cookbook_db(kind: BandKind, f0: f64, gain_db: f64, q: f64, f: f64) -> f64 {
        let a = 10f64.powf(gain_db / 40.0);
        let w0 = 2.0 * PI * f0 / RATE as f64;
        let w = 2.0 * PI * f / RATE as f64;
        let alpha = w0.sin() / (2.0 * q);
        // |H|^2 expressed with phi = 4 sin^2(w/2), as given in the cookbook
        let phi = 4.0 * (w / 2.0).sin().powi(2);
        let c = w0.cos();
        let h2 = match kind {
            BandKind::HighPass => {
                let (b0, b1, b2) = ((1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0);
                let (a0, a1, a2) = (1.0 + alpha, -2.0 * c, 1.0 - alpha);
                ratio(b0, b1, b2, a0, a1, a2, phi)
            }
            BandKind::Peaking => ratio(
                1.0 + alpha * a,
                -2.0 * c,
                1.0 - alpha * a,
                1.0 + alpha / a,
                -2.0 * c,
                1.0 - alpha / a,
                phi,
            ),
            BandKind::HighShelf => {
                let s = 2.0 * a.sqrt() * alpha;
                ratio(
                    a * ((a + 1.0) + (a - 1.0) * c + s),
                    -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
                    a * ((a + 1.0) + (a - 1.0) * c - s),
                    (a + 1.0) - (a - 1.0) * c + s,
                    2.0 * ((a - 1.0) - (a + 1.0) * c),
                    (a + 1.0) - (a - 1.0) * c - s,
                    phi,
                )
            }
            BandKind::LowShelf => {
                let s = 2.0 * a.sqrt() * alpha;
                ratio(
                    a * ((a + 1.0) - (a - 1.0) * c + s),
                    2.0 * a * ((a - 1.0) - (a + 1.0) * c),
                    a * ((a + 1.0) - (a - 1.0) * c - s),
                    (a + 1.0) + (a - 1.0) * c + s,
                    -2.0 * ((a - 1.0) + (a + 1.0) * c),
                    (a + 1.0) + (a - 1.0) * c - s,
                    phi,
                )
            }
            BandKind::LowPass => unreachable!(),
        };
        10.0 * h2.log10()
    }

    /// The cookbook's phi form of |H(e^jw)|^2 for a biquad.
    fn ratio(b0: f64, b1: f64, b2: f64, a0: f64, a1: f64, a2: f64, phi: f64) -> f64 {
        let num =
            (b0 + b1 + b2).powi(2) - phi * (4.0 * b0 * b2 + b1 * (b0 + b2)) + phi * phi * b0 * b2;
        let den =
            (a0 + a1 + a2).powi(2) - phi * (4.0 * a0 * a2 + a1 * (a0 + a2)) + phi * phi * a0 * a2;
        num / den
    }

    fn single(kind: BandKind, freq_hz: f32, gain_db: f32, q: f32) -> EqSettings {
        EqSettings {
            enabled: true,
            bands: vec![Band {
                kind,
                freq_hz,
                gain_db,
                q,
            }],
        }
    }

    #[test]
    fn high_shelf_plus_6_at_3k_matches_its_design() {
        let s = single(BandKind::HighShelf, 3000.0, 6.0, 0.707);
        let eq = Equalizer::new(&s, RATE);
        for f in [
            100.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 8000.0, 15000.0,
        ] {
            let measured = measured_gain_db(&s, f);
            let design = cookbook_db(BandKind::HighShelf, 3000.0, 6.0, 0.707, f);
            assert!(
                (measured - design).abs() < 0.5,
                "{f} Hz: measured {measured:.3} dB, design {design:.3} dB"
            );
            assert!((eq.magnitude_db(f) - design).abs() < 1e-6);
        }
        // the shape itself: flat well below, +6 well above, half-way at the corner
        assert!(measured_gain_db(&s, 100.0).abs() < 0.2);
        assert!((measured_gain_db(&s, 15000.0) - 6.0).abs() < 0.3);
        assert!((measured_gain_db(&s, 3000.0) - 3.0).abs() < 0.3);
    }

    #[test]
    fn peaking_low_shelf_and_high_pass_match_their_designs() {
        let cases = [
            (BandKind::Peaking, 1000.0, -9.0, 2.0),
            (BandKind::Peaking, 250.0, 4.0, 1.0),
            (BandKind::LowShelf, 200.0, -6.0, 0.707),
            (BandKind::HighPass, 80.0, 0.0, 0.707),
        ];
        for (kind, f0, g, q) in cases {
            let s = single(kind, f0, g, q);
            for f in [40.0, 80.0, 200.0, 250.0, 700.0, 1000.0, 1400.0, 4000.0] {
                let measured = measured_gain_db(&s, f);
                let design = cookbook_db(kind, f0 as f64, g as f64, q as f64, f);
                assert!(
                    (measured - design).abs() < 0.5,
                    "{kind:?} {f0} Hz {g} dB q {q} at {f} Hz: measured {measured:.3}, design {design:.3}"
                );
            }
        }
        // a peaking band reaches exactly its gain at its centre
        let s = single(BandKind::Peaking, 1000.0, -9.0, 2.0);
        assert!((measured_gain_db(&s, 1000.0) + 9.0).abs() < 0.2);
        // a 2nd-order high-pass is -3 dB at its corner and about -24 dB two octaves below
        let s = single(BandKind::HighPass, 80.0, 0.0, 0.707);
        assert!((measured_gain_db(&s, 80.0) + 3.01).abs() < 0.2);
        assert!(measured_gain_db(&s, 20.0) < -20.0);
    }

    #[test]
    fn disabled_eq_is_bypassed_and_validation_names_the_band() {
        let mut s = EqSettings {
            enabled: false,
            ..Default::default()
        };
        let mut eq = Equalizer::new(&s, RATE);
        let mut x = stereo_sine(5000.0, 0.3, 2048, RATE);
        let orig = x.clone();
        eq.process(&mut x, 2);
        assert_eq!(x, orig);

        s.bands[1].q = 0.0;
        let e = s.validate("audio_chain.eq").unwrap_err().to_string();
        assert_eq!(e, "audio_chain.eq.bands[1].q = 0 is invalid: use 0.1 to 10");
        assert!(EqSettings::default().validate("audio_chain.eq").is_ok());
    }
}
