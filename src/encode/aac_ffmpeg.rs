//! AAC-LC through FFmpeg's native `aac` encoder: the redistributable choice, used when the
//! build has no fdk-aac (installers are built that way).

use super::{AacTimeline, AudioEncoder, AudioEncoderSettings};
use crate::media::{AudioBlock, AudioHeader, MediaKind, Packet};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use ff::format::sample::Type as SampleType;
use ff::format::Sample;
use ffmpeg_next as ff;

/// A running FFmpeg AAC encoder fed with planar float frames of 1024 samples.
pub struct FfmpegAacEncoder {
    encoder: ff::encoder::Audio,
    header: AudioHeader,
    frame: ff::frame::Audio,
    frame_len: usize,
    /// Interleaved samples waiting to fill a whole encoder frame.
    pending: Vec<f32>,
    frames_in: i64,
    /// Output packets' timestamps, corrected for the encoder's delay.
    timeline: AacTimeline,
    /// The encoder's delay in samples (its `initial_padding`).
    delay: u32,
}

// FFmpeg contexts are used only by the thread that owns the encoder.
unsafe impl Send for FfmpegAacEncoder {}

impl FfmpegAacEncoder {
    /// Opens FFmpeg's `aac` at the given rate and bitrate, stereo.
    pub fn open(settings: &AudioEncoderSettings) -> anyhow::Result<Self> {
        ff::init().context("initialising FFmpeg")?;
        // FFmpeg's own chatter (e.g. encoder statistics on close) is not for our users.
        ff::util::log::set_level(ff::util::log::Level::Error);
        if settings.channels != 2 {
            bail!(
                "audio channels {} is not supported: the stream is stereo (2)",
                settings.channels
            );
        }
        let codec = ff::encoder::find(ff::codec::Id::AAC)
            .ok_or_else(|| anyhow!("this FFmpeg has no AAC encoder"))?;
        let ctx = ff::codec::context::Context::new_with_codec(codec);
        let mut enc = ctx.encoder().audio()?;
        enc.set_rate(settings.sample_rate as i32);
        enc.set_channel_layout(ff::ChannelLayout::STEREO);
        enc.set_format(Sample::F32(SampleType::Planar));
        enc.set_bit_rate(settings.bitrate_kbps as usize * 1000);
        enc.set_time_base(ff::Rational(1, settings.sample_rate as i32));
        // Global header: the AudioSpecificConfig goes to extradata, not into every frame.
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        let encoder = enc
            .open_as(codec)
            .context("FFmpeg could not open its AAC encoder")?;
        let asc = unsafe {
            let raw = encoder.as_ptr();
            std::slice::from_raw_parts((*raw).extradata, (*raw).extradata_size as usize).to_vec()
        };
        if asc.is_empty() {
            bail!("FFmpeg's AAC encoder gave no AudioSpecificConfig");
        }
        // Samples of priming the encoder puts before the first input sample.
        // SAFETY: `encoder` owns the opened context; this reads a plain field of it.
        let delay = unsafe { (*encoder.as_ptr()).initial_padding }.max(0) as u32;
        let frame_len = match encoder.frame_size() {
            0 => 1024,
            n => n as usize,
        };
        let mut frame = ff::frame::Audio::new(
            Sample::F32(SampleType::Planar),
            frame_len,
            ff::ChannelLayout::STEREO,
        );
        frame.set_rate(settings.sample_rate);
        Ok(FfmpegAacEncoder {
            encoder,
            header: AudioHeader {
                sample_rate: settings.sample_rate,
                channels: 2,
                bitrate_kbps: settings.bitrate_kbps,
                asc: Bytes::from(asc),
            },
            frame,
            frame_len,
            pending: Vec::with_capacity(frame_len * 4),
            frames_in: 0,
            timeline: AacTimeline::new(delay as u64, frame_len as u32, settings.sample_rate),
            delay,
        })
    }

    /// Samples between an input sample and the same sample in the decoded output.
    pub fn delay_samples(&self) -> u32 {
        self.delay
    }

    fn drain(&mut self, out: &mut Vec<Packet>) -> anyhow::Result<()> {
        let mut packet = ff::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            // Packets holding only the encoder's priming are dropped.
            let Some(pts) = self.timeline.next_pts() else {
                continue;
            };
            let data = packet.data().unwrap_or(&[]);
            out.push(Packet {
                kind: MediaKind::Audio,
                data: Bytes::copy_from_slice(data),
                pts_ms: pts,
                dts_ms: pts,
                keyframe: true,
                disposable: false,
            });
        }
        Ok(())
    }
}

impl AudioEncoder for FfmpegAacEncoder {
    fn encode(&mut self, block: &AudioBlock) -> anyhow::Result<Vec<Packet>> {
        if block.channels != 2 || block.sample_rate != self.header.sample_rate {
            bail!(
                "audio block is {} Hz/{} ch but the encoder expects {} Hz stereo",
                block.sample_rate,
                block.channels,
                self.header.sample_rate
            );
        }
        self.pending.extend_from_slice(&block.samples);
        let mut out = Vec::new();
        let n = self.frame_len;
        while self.pending.len() >= n * 2 {
            // Split interleaved stereo into the two planes of the frame.
            let src = &self.pending[..n * 2];
            for (d, s) in self
                .frame
                .plane_mut::<f32>(0)
                .iter_mut()
                .zip(src.chunks_exact(2))
            {
                *d = s[0];
            }
            for (d, s) in self
                .frame
                .plane_mut::<f32>(1)
                .iter_mut()
                .zip(src.chunks_exact(2))
            {
                *d = s[1];
            }
            self.pending.drain(..n * 2);
            self.frame.set_pts(Some(self.frames_in * n as i64));
            self.frames_in += 1;
            self.encoder
                .send_frame(&self.frame)
                .context("FFmpeg AAC encode failed")?;
            self.drain(&mut out)?;
        }
        Ok(out)
    }

    fn header(&self) -> AudioHeader {
        self.header.clone()
    }

    fn name(&self) -> &'static str {
        "ffmpeg-aac"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::tests_support::onset_ms;

    #[test]
    fn a_decoded_onset_lands_at_its_input_time() {
        let settings = AudioEncoderSettings::default();
        let mut enc = FfmpegAacEncoder::open(&settings).unwrap();
        assert_eq!(
            enc.delay_samples(),
            1024,
            "FFmpeg's aac declares one frame of priming"
        );
        let onset = onset_ms(&mut enc, 12_000);
        eprintln!(
            "ffmpeg aac: delay {} samples, onset at 250.0 ms heard at {onset:.2} ms",
            enc.delay_samples()
        );
        assert!(
            (onset - 250.0).abs() <= 1.5,
            "onset at input 250.0 ms decodes at {onset:.2} ms"
        );
    }
}
