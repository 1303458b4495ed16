//! AAC-LC through fdk-aac: the best-sounding AAC encoder at streaming bitrates. Its licence
//! is not GPL-compatible, so it sits behind the `fdk-aac` feature (see README).

use super::{aac_frame_pts, AudioEncoder, AudioEncoderSettings};
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
    frames_out: u64,
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
            frames_out: 0,
        })
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
                packets.push(Packet {
                    kind: MediaKind::Audio,
                    data: Bytes::copy_from_slice(&self.out[..info.output_size]),
                    pts_ms: aac_frame_pts(self.frames_out, 1024, self.header.sample_rate),
                    dts_ms: aac_frame_pts(self.frames_out, 1024, self.header.sample_rate),
                    keyframe: true,
                    disposable: false,
                });
                self.frames_out += 1;
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
