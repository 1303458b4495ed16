//! The chain itself: the stages in the order the settings give, each one bypassable,
//! with meters on the way in and out.

use super::agc::{Agc, AgcSettings};
use super::compressor::{Compressor, CompressorSettings};
use super::denoise::{Denoise, DenoiseSettings};
use super::eq::{EqSettings, Equalizer};
use super::gate::{Gate, GateSettings};
use super::limiter::{Limiter, LimiterSettings};
use super::meter::{Levels, Meter, DEFAULT_WINDOW_MS};
use super::AudioFilter;
use crate::media::AudioBlock;
use serde::{Deserialize, Serialize};

/// Names a stage in the chain's order and in bypass calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// RNNoise noise suppression.
    Denoise,
    /// Noise gate.
    Gate,
    /// Parametric equaliser.
    Eq,
    /// Automatic gain control.
    Agc,
    /// Soft-knee compressor.
    Compressor,
    /// Lookahead peak limiter.
    Limiter,
}

impl StageKind {
    /// Every stage, in the default order: clean the signal up first (noise, pauses),
    /// shape its tone, level it, then catch what is left of the peaks last.
    pub const ALL: [StageKind; 6] = [
        StageKind::Denoise,
        StageKind::Gate,
        StageKind::Eq,
        StageKind::Agc,
        StageKind::Compressor,
        StageKind::Limiter,
    ];
}

/// Settings of the whole chain: the order of stages and each stage's parameters.
/// Defaults suit a voice on an inexpensive USB or headset microphone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioChainSettings {
    /// Stages to run, first to last; a stage left out does not run at all.
    pub order: Vec<StageKind>,
    /// Noise suppression.
    pub denoise: DenoiseSettings,
    /// Noise gate.
    pub gate: GateSettings,
    /// Equaliser bands.
    pub eq: EqSettings,
    /// Automatic gain control.
    pub agc: AgcSettings,
    /// Compressor.
    pub compressor: CompressorSettings,
    /// Limiter (the output ceiling).
    pub limiter: LimiterSettings,
}

impl Default for AudioChainSettings {
    fn default() -> Self {
        AudioChainSettings {
            order: StageKind::ALL.to_vec(),
            denoise: DenoiseSettings::default(),
            gate: GateSettings::default(),
            eq: EqSettings::default(),
            agc: AgcSettings::default(),
            compressor: CompressorSettings::default(),
            limiter: LimiterSettings::default(),
        }
    }
}

impl AudioChainSettings {
    /// Rejects values the chain could not use, naming the field
    /// (e.g. "audio_chain.compressor.ratio = 0.5 is invalid: use 1 to 50").
    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, kind) in self.order.iter().enumerate() {
            if self.order[..i].contains(kind) {
                anyhow::bail!(
                    "audio_chain.order lists {} twice: name each stage at most once",
                    stage_name(*kind)
                );
            }
        }
        self.denoise.validate("audio_chain.denoise")?;
        self.gate.validate("audio_chain.gate")?;
        self.eq.validate("audio_chain.eq")?;
        self.agc.validate("audio_chain.agc")?;
        self.compressor.validate("audio_chain.compressor")?;
        self.limiter.validate("audio_chain.limiter")?;
        Ok(())
    }
}

fn stage_name(kind: StageKind) -> &'static str {
    match kind {
        StageKind::Denoise => "denoise",
        StageKind::Gate => "gate",
        StageKind::Eq => "eq",
        StageKind::Agc => "agc",
        StageKind::Compressor => "compressor",
        StageKind::Limiter => "limiter",
    }
}

/// What the chain is doing right now, for level meters and status displays.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ChainMeters {
    /// Levels entering the chain.
    pub input: Levels,
    /// Levels leaving the chain (what the encoder gets).
    pub output: Levels,
    /// Whether the gate lets the microphone through.
    pub gate_open: bool,
    /// Gain the AGC applies now, dB.
    pub agc_gain_db: f32,
    /// Gain reduction of the compressor now, dB (≥ 0).
    pub compressor_reduction_db: f32,
    /// Gain reduction of the limiter now, dB (≥ 0).
    pub limiter_reduction_db: f32,
}

/// The audio processing chain for one stream.
pub struct AudioChain {
    sample_rate: u32,
    order: Vec<StageKind>,
    denoise: Denoise,
    gate: Gate,
    eq: Equalizer,
    agc: Agc,
    compressor: Compressor,
    limiter: Limiter,
    input_meter: Meter,
    output_meter: Meter,
    bypass: bool,
    /// The settings the stages were last built from, to rebuild only what changed.
    settings: AudioChainSettings,
}

impl AudioChain {
    /// Builds every stage for `sample_rate` after validating the settings. Stages whose
    /// settings say `enabled = false` start bypassed.
    pub fn from_settings(settings: &AudioChainSettings, sample_rate: u32) -> anyhow::Result<Self> {
        settings.validate()?;
        Ok(AudioChain {
            sample_rate,
            order: settings.order.clone(),
            denoise: Denoise::new(&settings.denoise, sample_rate),
            gate: Gate::new(&settings.gate, sample_rate),
            eq: Equalizer::new(&settings.eq, sample_rate),
            agc: Agc::new(&settings.agc, sample_rate),
            compressor: Compressor::new(&settings.compressor, sample_rate),
            limiter: Limiter::new(&settings.limiter, sample_rate),
            input_meter: Meter::new(sample_rate, DEFAULT_WINDOW_MS),
            output_meter: Meter::new(sample_rate, DEFAULT_WINDOW_MS),
            bypass: false,
            settings: settings.clone(),
        })
    }

    /// Applies new settings while running (a user moving a slider): only the stages whose
    /// settings changed are rebuilt, so the others keep their state (gains, noise profile).
    /// Invalid settings are refused and the chain keeps its current ones.
    pub fn apply(&mut self, settings: &AudioChainSettings) -> anyhow::Result<()> {
        settings.validate()?;
        let rate = self.sample_rate;
        let old = &self.settings;
        if old.denoise != settings.denoise {
            self.denoise = Denoise::new(&settings.denoise, rate);
        }
        if old.gate != settings.gate {
            self.gate = Gate::new(&settings.gate, rate);
        }
        if old.eq != settings.eq {
            self.eq = Equalizer::new(&settings.eq, rate);
        }
        if old.agc != settings.agc {
            self.agc = Agc::new(&settings.agc, rate);
        }
        if old.compressor != settings.compressor {
            self.compressor = Compressor::new(&settings.compressor, rate);
        }
        if old.limiter != settings.limiter {
            self.limiter = Limiter::new(&settings.limiter, rate);
        }
        self.order.clone_from(&settings.order);
        self.settings = settings.clone();
        Ok(())
    }

    /// The settings the chain runs with now.
    pub fn settings(&self) -> &AudioChainSettings {
        &self.settings
    }

    /// Processes a block in place and updates the meters. Fails, leaving the block
    /// untouched, if it is not at the rate the chain was built for.
    pub fn process_block(&mut self, block: &mut AudioBlock) -> anyhow::Result<()> {
        if block.sample_rate != self.sample_rate {
            anyhow::bail!(
                "audio chain built for {} Hz was given a {} Hz block",
                self.sample_rate,
                block.sample_rate
            );
        }
        self.process(&mut block.samples, block.channels as usize);
        Ok(())
    }

    /// The sample rate the stages were built for.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The stages that run, first to last.
    pub fn order(&self) -> &[StageKind] {
        &self.order
    }

    /// The stage of kind `kind`, whether or not it is in the order.
    pub fn stage(&self, kind: StageKind) -> &dyn AudioFilter {
        match kind {
            StageKind::Denoise => &self.denoise,
            StageKind::Gate => &self.gate,
            StageKind::Eq => &self.eq,
            StageKind::Agc => &self.agc,
            StageKind::Compressor => &self.compressor,
            StageKind::Limiter => &self.limiter,
        }
    }

    /// Mutable access to one stage, e.g. to bypass it.
    pub fn stage_mut(&mut self, kind: StageKind) -> &mut dyn AudioFilter {
        match kind {
            StageKind::Denoise => &mut self.denoise,
            StageKind::Gate => &mut self.gate,
            StageKind::Eq => &mut self.eq,
            StageKind::Agc => &mut self.agc,
            StageKind::Compressor => &mut self.compressor,
            StageKind::Limiter => &mut self.limiter,
        }
    }

    /// Bypasses (or brings back) one stage while the chain runs.
    pub fn set_stage_bypass(&mut self, kind: StageKind, bypass: bool) {
        self.stage_mut(kind).set_bypass(bypass);
    }

    /// A snapshot of the meters; cheap and allocation-free.
    pub fn meters(&self) -> ChainMeters {
        ChainMeters {
            input: self.input_meter.levels(),
            output: self.output_meter.levels(),
            gate_open: self.gate.is_open(),
            agc_gain_db: self.agc.gain_db(),
            compressor_reduction_db: self.compressor.gain_reduction_db(),
            limiter_reduction_db: self.limiter.gain_reduction_db(),
        }
    }
}

impl AudioFilter for AudioChain {
    /// Runs the active stages in order; meters see the signal even when bypassed.
    fn process(&mut self, samples: &mut [f32], channels: usize) {
        self.input_meter.process(samples, channels);
        if !self.bypass {
            for i in 0..self.order.len() {
                let kind = self.order[i];
                self.stage_mut(kind).process(samples, channels);
            }
        }
        self.output_meter.process(samples, channels);
    }

    fn reset(&mut self) {
        for kind in StageKind::ALL {
            self.stage_mut(kind).reset();
        }
        self.input_meter.reset();
        self.output_meter.reset();
    }

    fn name(&self) -> &'static str {
        "audio chain"
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

    /// Total delay of the stages that run and are not bypassed.
    fn latency_frames(&self) -> usize {
        if self.bypass {
            return 0;
        }
        self.order
            .iter()
            .map(|&k| self.stage(k))
            .filter(|s| !s.bypassed())
            .map(|s| s.latency_frames())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    const RATE: u32 = 48_000;

    fn noisy_voice(frames: usize) -> Vec<f32> {
        let voice = speech_like(frames as f64 / RATE as f64);
        let mut n = Noise::new(5);
        voice
            .iter()
            .flat_map(|&v| [v + 0.01 * n.next(), 0.8 * v + 0.01 * n.next()])
            .collect()
    }

    fn block(samples: Vec<f32>) -> AudioBlock {
        AudioBlock {
            samples,
            channels: 2,
            sample_rate: RATE,
            pts_ms: 0,
        }
    }

    #[test]
    fn apply_rebuilds_only_the_changed_stages() {
        let mut chain = AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
        for c in noisy_voice(RATE as usize).chunks(960) {
            chain.process_block(&mut block(c.to_vec())).unwrap();
        }
        let agc_gain = chain.meters().agc_gain_db;
        assert!(agc_gain.abs() > 0.5, "the AGC moved: {agc_gain}");
        let mut s = AudioChainSettings::default();
        s.gate.enabled = false;
        chain.apply(&s).unwrap();
        assert!(chain.stage(StageKind::Gate).bypassed());
        assert_eq!(
            chain.meters().agc_gain_db,
            agc_gain,
            "the AGC kept its state"
        );
        s.order = vec![StageKind::Limiter];
        chain.apply(&s).unwrap();
        assert_eq!(chain.order(), &[StageKind::Limiter]);
        let mut bad = s.clone();
        bad.order = vec![StageKind::Eq, StageKind::Eq];
        assert!(chain.apply(&bad).is_err());
        assert_eq!(
            chain.settings(),
            &s,
            "refused settings leave the chain as it was"
        );
    }

    #[test]
    fn bypassed_chain_and_stages_are_bit_exact() {
        let x = noisy_voice(RATE as usize);
        // whole chain bypassed
        let mut chain = AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
        chain.set_bypass(true);
        assert_eq!(chain.latency_frames(), 0);
        for c in x.chunks(2048) {
            let mut b = block(c.to_vec());
            chain.process_block(&mut b).unwrap();
            assert!(b
                .samples
                .iter()
                .zip(c)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        // every stage bypassed one by one
        let mut chain = AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
        for kind in StageKind::ALL {
            chain.set_stage_bypass(kind, true);
        }
        for c in x.chunks(2048) {
            let mut b = block(c.to_vec());
            chain.process_block(&mut b).unwrap();
            assert!(b
                .samples
                .iter()
                .zip(c)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        // every stage disabled in the settings
        let mut s = AudioChainSettings::default();
        s.denoise.enabled = false;
        s.gate.enabled = false;
        s.eq.enabled = false;
        s.agc.enabled = false;
        s.compressor.enabled = false;
        s.limiter.enabled = false;
        let mut chain = AudioChain::from_settings(&s, RATE).unwrap();
        let mut y = x.clone();
        chain.process(&mut y, 2);
        assert!(y.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn bypassing_a_stage_equals_leaving_it_out() {
        let x = noisy_voice(RATE as usize);
        for skipped in StageKind::ALL {
            let mut with_bypass =
                AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
            with_bypass.set_stage_bypass(skipped, true);
            let mut s = AudioChainSettings::default();
            s.order.retain(|&k| k != skipped);
            let mut without = AudioChain::from_settings(&s, RATE).unwrap();
            let (mut a, mut b) = (x.clone(), x.clone());
            run_blocks(&mut with_bypass, &mut a, 2, 1024);
            run_blocks(&mut without, &mut b, 2, 1024);
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{skipped:?}"
            );
            assert_eq!(with_bypass.latency_frames(), without.latency_frames());
        }
    }

    #[test]
    fn order_is_followed() {
        // gate after a +20 dB AGC boost opens on a -60 dBFS tone; before it, it does not
        let tone = stereo_sine(300.0, db_to_gain_f(-57.0), 3 * RATE as usize, RATE);
        let run = |order: Vec<StageKind>| {
            let mut s = AudioChainSettings {
                order,
                ..Default::default()
            };
            s.agc.release_ms = 10.0;
            s.agc.freeze_below_dbfs = -80.0;
            let mut chain = AudioChain::from_settings(&s, RATE).unwrap();
            let mut y = tone.clone();
            run_blocks(&mut chain, &mut y, 2, 1024);
            chain.meters().gate_open
        };
        assert!(!run(vec![StageKind::Gate, StageKind::Agc]));
        assert!(run(vec![StageKind::Agc, StageKind::Gate]));
    }

    fn db_to_gain_f(db: f32) -> f32 {
        super::super::db_to_gain(db)
    }

    #[test]
    fn meters_read_a_half_scale_sine() {
        let mut chain = AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
        chain.set_bypass(true);
        let x = stereo_sine(1000.0, 0.5, RATE as usize, RATE);
        for c in x.chunks(2048) {
            chain.process_block(&mut block(c.to_vec())).unwrap();
        }
        let m = chain.meters();
        for levels in [m.input, m.output] {
            assert_eq!(levels.channels().len(), 2);
            for l in levels.channels() {
                assert!((l.peak_dbfs - -6.02).abs() < 0.005, "peak {}", l.peak_dbfs);
                assert!((l.rms_dbfs - -9.03).abs() < 0.005, "rms {}", l.rms_dbfs);
            }
        }
    }

    #[test]
    fn default_chain_levels_a_voice_and_respects_the_ceiling() {
        let mut chain = AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
        assert_eq!(chain.latency_frames(), 960 + 240);
        // a shout (peaks +6 dBFS) then a quiet voice (peaks -26 dBFS)
        let mut x = noisy_voice(12 * RATE as usize);
        for v in &mut x[..2 * 2 * RATE as usize] {
            *v *= 4.0;
        }
        for v in &mut x[2 * 2 * RATE as usize..] {
            *v *= 0.1;
        }
        let input = x.clone();
        run_blocks(&mut chain, &mut x, 2, 1024);
        let p = peak(&x);
        assert!(p <= db_to_gain_f(-1.0), "output peak {p}");
        // the quiet voice comes out much louder than it went in
        let last = 2 * 9 * RATE as usize;
        let in_db = 20.0 * rms(&input[last..], 2, 0).log10();
        let out_db = 20.0 * rms(&x[last..], 2, 0).log10();
        assert!(
            out_db - in_db > 10.0,
            "quiet voice went in at {in_db:.1} dBFS, came out at {out_db:.1} dBFS"
        );
        let m = chain.meters();
        assert!(m.output.channels()[0].peak_dbfs <= -1.0);
    }

    #[test]
    fn settings_round_trip_and_name_bad_fields() {
        let s = AudioChainSettings::default();
        let text = toml::to_string(&s).unwrap();
        let back: AudioChainSettings = toml::from_str(&text).unwrap();
        assert_eq!(back, s);
        // partial settings fill in defaults
        let partial: AudioChainSettings =
            toml::from_str("order = [\"eq\", \"limiter\"]\n[compressor]\nratio = 4.0\n").unwrap();
        assert_eq!(partial.order, vec![StageKind::Eq, StageKind::Limiter]);
        assert_eq!(partial.compressor.ratio, 4.0);
        assert_eq!(partial.compressor.threshold_db, -24.0);
        // unknown fields are refused
        assert!(toml::from_str::<AudioChainSettings>("[limiter]\nceiling = -1.0\n").is_err());
        // validation names the field
        let mut bad = AudioChainSettings::default();
        bad.compressor.ratio = 0.5;
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "audio_chain.compressor.ratio = 0.5 is invalid: use 1 to 50"
        );
        assert!(AudioChain::from_settings(&bad, RATE).is_err());
        let mut twice = AudioChainSettings::default();
        twice.order.push(StageKind::Eq);
        assert!(twice
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eq twice"));
        // a block at the wrong rate is refused
        let mut chain = AudioChain::from_settings(&AudioChainSettings::default(), RATE).unwrap();
        let mut b = block(vec![0.0; 2048]);
        b.sample_rate = 44_100;
        assert!(chain.process_block(&mut b).is_err());
    }
}
