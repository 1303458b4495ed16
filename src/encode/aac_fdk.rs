//! AAC-LC through fdk-aac: the best-sounding AAC encoder at streaming bitrates. Its licence
//! is not GPL-compatible, so it sits behind the `fdk-aac` feature (see README).

use super::{AacTimeline, AudioEncoder, AudioEncoderSettings};
use crate::media::{AudioBlock, AudioHeader, MediaKind, Packet};
use anyhow::{bail, Context};
use bytes::Bytes;
use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};

/// A running fdk-aac encoder producing raw AAC-LC frames.
pub struct FdkAacEncoder {
    encoder: Encoder,
    header: AudioHeader,
    pcm: Vec<i16>,
    out: Vec<u8>,
    /// Output packets' timestamps, corrected for the encoder's delay.
    timeline: AacTimeline,
    /// The encoder's delay in samples, as it reports it.
    delay: u32,
}

// The encoder handle is used only by the thread that owns it.
unsafe impl Send for FdkAacEncoder {}

impl FdkAacEncoder {
    /// Opens an AAC-LC encoder (stereo only: that is what a stream carries).
    pub fn open(settings: &AudioEncoderSettings) -> anyhow::Result<Self> {
        if settings.channels != 2 {
            bail!(
                "audio channels {} is not supported: the stream is stereo (2)",
                settings.channels
            );
        }
        let encoder = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(settings.bitrate_kbps * 1000),
            sample_rate: settings.sample_rate,
            transport: Transport::Raw,
            channels: ChannelMode::Stereo,
            audio_object_type: AudioObjectType::Mpeg4LowComplexity,
        })
        .map_err(|e| anyhow::anyhow!("fdk-aac could not open: {e:?}"))
        .context("opening the AAC encoder")?;
        let info = encoder
            .info()
            .map_err(|e| anyhow::anyhow!("fdk-aac info: {e:?}"))?;
        let asc = info.confBuf[..info.confSize as usize].to_vec();
        // fdk-aac's own figure for input-to-decoded-output delay (2048 for AAC-LC).
        let delay = info.nDelay;
        Ok(FdkAacEncoder {
            encoder,
            header: AudioHeader {
                sample_rate: settings.sample_rate,
                channels: 2,
                bitrate_kbps: settings.bitrate_kbps,
                asc: Bytes::from(asc),
            },
            pcm: Vec::with_capacity(4096),
            out: vec![0u8; 8192],
            timeline: AacTimeline::new(delay as u64, info.frameLength, settings.sample_rate),
            delay,
        })
    }

    /// Samples between an input sample and the same sample in the decoded output.
    pub fn delay_samples(&self) -> u32 {
        self.delay
    }
}

impl AudioEncoder for FdkAacEncoder {
    fn encode(&mut self, block: &AudioBlock) -> anyhow::Result<Vec<Packet>> {
        if block.channels != 2 || block.sample_rate != self.header.sample_rate {
            bail!(
                "audio block is {} Hz/{} ch but the encoder expects {} Hz stereo",
                block.sample_rate,
                block.channels,
                self.header.sample_rate
            );
        }
        self.pcm.clear();
        self.pcm.extend(
            block
                .samples
                .iter()
                .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16),
        );
        let mut packets = Vec::new();
        let mut offset = 0;
        while offset < self.pcm.len() {
            let info = self
                .encoder
                .encode(&self.pcm[offset..], &mut self.out)
                .map_err(|e| anyhow::anyhow!("fdk-aac encode failed: {e:?}"))?;
            if info.output_size > 0 {
                // Packets holding only the encoder's priming are dropped.
                if let Some(pts) = self.timeline.next_pts() {
                    packets.push(Packet {
                        kind: MediaKind::Audio,
                        data: Bytes::copy_from_slice(&self.out[..info.output_size]),
                        pts_ms: pts,
                        dts_ms: pts,
                        keyframe: true,
                        disposable: false,
                    });
                }
            }
            if info.input_consumed == 0 && info.output_size == 0 {
                break;
            }
            offset += info.input_consumed;
        }
        Ok(packets)
    }

    fn header(&self) -> AudioHeader {
        self.header.clone()
    }

    fn name(&self) -> &'static str {
        "fdk-aac"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::tests_support::onset_ms;

    #[test]
    fn a_decoded_onset_lands_at_its_input_time() {
        let settings = AudioEncoderSettings::default();
        let mut enc = FdkAacEncoder::open(&settings).unwrap();
        let onset = onset_ms(&mut enc, 12_000);
        eprintln!(
            "fdk-aac: delay {} samples, onset at 250.0 ms heard at {onset:.2} ms",
            enc.delay_samples()
        );
        assert!(
            (onset - 250.0).abs() <= 1.5,
            "onset at input 250.0 ms decodes at {onset:.2} ms"
        );
    }
}
