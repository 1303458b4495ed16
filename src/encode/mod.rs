//! Encoders: raw frames in, compressed packets out. Every backend implements the same small
//! trait, so the pipeline, the bitrate controller and the tests treat them alike.

#[cfg(feature = "fdk-aac")]
pub mod aac_fdk;
pub mod aac_ffmpeg;
pub mod ffmpeg_hw;
pub mod probe;
pub mod x264;

use crate::media::{AudioBlock, AudioHeader, Packet, VideoFrame, VideoHeader};
use serde::{Deserialize, Serialize};

/// What the user chooses for the H.264 encode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoEncoderSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Target (and, in CBR, maximum) bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// x264 speed preset: ultrafast … veryslow.
    pub preset: String,
    /// x264 tune; `zerolatency` removes lookahead and frame threading delay.
    pub tune: String,
    /// H.264 profile: baseline, main or high.
    pub profile: String,
    /// Seconds between keyframes; viewers can join and recover at each one.
    pub keyint_secs: f32,
    /// B-frames between references (0 for the lowest latency).
    pub bframes: u32,
    /// Which H.264 backend encodes: `auto` (the best one that opens here) or a backend name
    /// (see [`Backend`]); an unavailable explicit choice falls back to x264.
    pub encoder: String,
}

impl Default for VideoEncoderSettings {
    fn default() -> Self {
        VideoEncoderSettings {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 2500,
            preset: "veryfast".into(),
            tune: "zerolatency".into(),
            profile: "high".into(),
            keyint_secs: 2.0,
            bframes: 0,
            encoder: AUTO.into(),
        }
    }
}

/// The `video.encoder` value that lets the probe pick the backend.
pub const AUTO: &str = "auto";

/// An H.264 backend: the software encoders and the GPU encoders reached through FFmpeg.
///
/// [`Backend::ALL`] lists them in the order `auto` prefers them: hardware first (it frees the
/// CPU for the game or the capture), then the direct x264, then libx264 through FFmpeg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// NVIDIA NVENC (`h264_nvenc`).
    Nvenc,
    /// Intel Quick Sync Video (`h264_qsv`).
    Qsv,
    /// Apple VideoToolbox (`h264_videotoolbox`).
    VideoToolbox,
    /// AMD AMF (`h264_amf`).
    Amf,
    /// VA-API on Linux: Intel and AMD GPUs (`h264_vaapi`).
    Vaapi,
    /// V4L2 memory-to-memory encoders on ARM boards such as the Raspberry Pi (`h264_v4l2m2m`).
    V4l2m2m,
    /// libx264 driven directly ([`x264::X264Encoder`]).
    X264,
    /// libx264 through FFmpeg, a cross-check of the direct x264 backend.
    FfmpegX264,
}

impl Backend {
    /// Every backend, in the order `auto` prefers them.
    pub const ALL: [Backend; 8] = [
        Backend::Nvenc,
        Backend::Qsv,
        Backend::VideoToolbox,
        Backend::Amf,
        Backend::Vaapi,
        Backend::V4l2m2m,
        Backend::X264,
        Backend::FfmpegX264,
    ];

    /// The name used in `video.encoder`, `--encoder` and `onair encoders`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nvenc => "nvenc",
            Backend::Qsv => "qsv",
            Backend::VideoToolbox => "videotoolbox",
            Backend::Amf => "amf",
            Backend::Vaapi => "vaapi",
            Backend::V4l2m2m => "v4l2m2m",
            Backend::X264 => "x264",
            Backend::FfmpegX264 => "ffmpeg-x264",
        }
    }

    /// The backend called `name` (as in [`Backend::name`]), if any.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// True for GPU (or SoC) encoders, which `auto` prefers over software.
    pub fn is_hardware(self) -> bool {
        !matches!(self, Backend::X264 | Backend::FfmpegX264)
    }

    /// The FFmpeg encoder behind this backend; None for the direct x264.
    pub fn ffmpeg_codec(self) -> Option<&'static str> {
        match self {
            Backend::Nvenc => Some("h264_nvenc"),
            Backend::Qsv => Some("h264_qsv"),
            Backend::VideoToolbox => Some("h264_videotoolbox"),
            Backend::Amf => Some("h264_amf"),
            Backend::Vaapi => Some("h264_vaapi"),
            Backend::V4l2m2m => Some("h264_v4l2m2m"),
            Backend::X264 => None,
            Backend::FfmpegX264 => Some("libx264"),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every accepted `video.encoder` value, for messages and `--help`.
pub fn encoder_choices() -> String {
    let mut names = vec![AUTO];
    names.extend(Backend::ALL.iter().map(|b| b.name()));
    names.join(", ")
}

/// Checks `video.encoder` names `auto` or a known backend, with a message naming the field.
pub fn validate_encoder(s: &VideoEncoderSettings) -> anyhow::Result<()> {
    if s.encoder != AUTO && Backend::from_name(&s.encoder).is_none() {
        anyhow::bail!(
            "video.encoder = '{}' is unknown: use one of {}",
            s.encoder,
            encoder_choices()
        );
    }
    Ok(())
}

/// What the user chooses for the AAC encode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioEncoderSettings {
    pub sample_rate: u32,
    pub channels: u16,
    pub bitrate_kbps: u32,
}

impl Default for AudioEncoderSettings {
    fn default() -> Self {
        AudioEncoderSettings {
            sample_rate: 48_000,
            channels: 2,
            bitrate_kbps: 128,
        }
    }
}

/// An H.264 encoder.
pub trait VideoEncoder: Send {
    /// Encodes one frame; returns zero or more packets (AVCC payloads).
    fn encode(&mut self, frame: &VideoFrame) -> anyhow::Result<Vec<Packet>>;
    /// Drains delayed frames at the end of the stream.
    fn flush(&mut self) -> anyhow::Result<Vec<Packet>>;
    /// The stream header (SPS/PPS as an AVCDecoderConfigurationRecord).
    fn header(&self) -> VideoHeader;
    /// Changes the bitrate of the running encoder without restarting the stream.
    fn set_bitrate(&mut self, kbps: u32) -> anyhow::Result<()>;
    /// Makes the next encoded frame an IDR (after a reconnect or a drop).
    fn force_keyframe(&mut self);
    /// Attaches an H.264 SEI `user_data_unregistered` message (`payload` = 16-byte UUID, then
    /// data) to the next frame given to [`encode`](Self::encode), in whichever packet that
    /// frame leaves the encoder: the latency stamp ([`crate::qa::stamp`]) travels this way.
    /// Backends that cannot carry SEI ignore it.
    fn attach_sei(&mut self, _payload: Vec<u8>) {}
    /// The backend's name for logs and `onair encoders`.
    fn name(&self) -> &'static str;
}

/// An AAC encoder.
pub trait AudioEncoder: Send {
    /// Encodes one block; returns zero or more raw AAC packets.
    fn encode(&mut self, block: &AudioBlock) -> anyhow::Result<Vec<Packet>>;
    /// The stream header (AudioSpecificConfig).
    fn header(&self) -> AudioHeader;
    /// The backend's name for logs and `onair encoders`.
    fn name(&self) -> &'static str;
}

/// Opens the H.264 encoder `settings.encoder` asks for: `x264` directly (no probing),
/// `auto` as the best backend the probe found, any other backend when it works here. A backend
/// that does not open falls back (for `auto`, to the next working one), ending with x264, and
/// every fallback is logged as a warning.
pub fn open_video(settings: &VideoEncoderSettings) -> anyhow::Result<Box<dyn VideoEncoder>> {
    validate_encoder(settings)?;
    let selection = probe::select(&settings.encoder)?;
    let mut candidates = vec![selection.backend];
    if settings.encoder == AUTO {
        candidates.extend(
            probe::probe()
                .available()
                .into_iter()
                .filter(|b| b.is_hardware() && *b != selection.backend),
        );
    }
    if !candidates.contains(&Backend::X264) {
        candidates.push(Backend::X264);
    }
    for backend in candidates {
        if backend == Backend::X264 {
            break;
        }
        match open_backend(backend, settings) {
            Ok(encoder) => return Ok(encoder),
            Err(e) => {
                tracing::warn!("video encoder {backend} did not open ({e:#}); trying the next")
            }
        }
    }
    open_backend(Backend::X264, settings)
}

/// Opens exactly `backend`, without probing or fallback (tests, benchmarks, the probe).
pub fn open_backend(
    backend: Backend,
    settings: &VideoEncoderSettings,
) -> anyhow::Result<Box<dyn VideoEncoder>> {
    Ok(match backend {
        Backend::X264 => Box::new(x264::X264Encoder::open(settings)?),
        _ => Box::new(ffmpeg_hw::FfmpegVideoEncoder::open(backend, settings)?),
    })
}

/// Opens the AAC encoder this build prefers: fdk-aac when compiled in, else FFmpeg's `aac`.
pub fn open_audio(settings: &AudioEncoderSettings) -> anyhow::Result<Box<dyn AudioEncoder>> {
    #[cfg(feature = "fdk-aac")]
    {
        Ok(Box::new(aac_fdk::FdkAacEncoder::open(settings)?))
    }
    #[cfg(not(feature = "fdk-aac"))]
    {
        Ok(Box::new(aac_ffmpeg::FfmpegAacEncoder::open(settings)?))
    }
}

/// Stamps an AAC encoder's output with the time of the first sample each packet decodes to.
///
/// An AAC encoder delays its input by `delay` samples (MDCT overlap and look-ahead): a decoder
/// fed its packets from the start outputs that much silence first. FLV cannot signal the delay,
/// so stamping packet `k` with `k × frame_len` would make the sound late by `delay`. Instead
/// packet `k` gets `k × frame_len − delay`, and the leading packets that would start before
/// the stream (negative time: priming only, or straddling sample 0) are dropped, so timestamps
/// start at 0 and stay monotonic. The sample count still drives the time, as in
/// [`crate::clock::audio_pts_ms`].
#[derive(Clone, Debug)]
pub(crate) struct AacTimeline {
    delay: u64,
    frame_len: u64,
    sample_rate: u32,
    packets_out: u64,
}

impl AacTimeline {
    /// A timeline for an encoder with `delay` samples of priming and `frame_len`-sample frames.
    pub(crate) fn new(delay: u64, frame_len: u32, sample_rate: u32) -> Self {
        AacTimeline {
            delay,
            frame_len: frame_len as u64,
            sample_rate,
            packets_out: 0,
        }
    }

    /// The pts in ms of the encoder's next output packet, or None when that packet starts
    /// before the stream's first sample and must be dropped.
    pub(crate) fn next_pts(&mut self) -> Option<i64> {
        let start = self.packets_out * self.frame_len;
        self.packets_out += 1;
        let first_sample = start.checked_sub(self.delay)?;
        Some(crate::clock::audio_pts_ms(first_sample, self.sample_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aac_timeline_drops_priming_and_starts_at_zero() {
        let mut t = AacTimeline::new(2048, 1024, 48_000);
        let pts: Vec<_> = (0..5).map(|_| t.next_pts()).collect();
        assert_eq!(pts, [None, None, Some(0), Some(21), Some(42)]);
    }

    #[test]
    fn aac_timeline_drops_a_packet_straddling_the_first_sample() {
        // 1600 samples of delay: packet 1 holds 576 priming and 448 real samples.
        let mut t = AacTimeline::new(1600, 1024, 48_000);
        let pts: Vec<_> = (0..4).map(|_| t.next_pts()).collect();
        assert_eq!(pts, [None, None, Some(9), Some(30)]);
    }

    #[test]
    fn aac_timeline_without_delay_counts_from_zero() {
        let mut t = AacTimeline::new(0, 1024, 44_100);
        assert_eq!(t.next_pts(), Some(0));
        assert_eq!(t.next_pts(), Some(23));
    }
}

/// Shared checks for the AAC encoders' tests: where a sound put in at a known time comes out.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::AudioEncoder;
    use crate::media::AudioBlock;

    /// Encodes silence with a 1 kHz, 100 ms beep starting at input sample `onset_sample`
    /// (48 kHz stereo, blocks of 1024), decodes every packet with FFmpeg's AAC decoder from
    /// the first one the encoder kept, places each packet's samples at its pts, and returns
    /// the time in ms at which the beep is heard. Also checks the timestamps start at 0 and
    /// rise by one AAC frame per packet.
    pub(crate) fn onset_ms(enc: &mut dyn AudioEncoder, onset_sample: u64) -> f64 {
        let rate = 48_000u64;
        let mut packets = Vec::new();
        for b in 0..48u64 {
            let mut samples = Vec::with_capacity(2048);
            for i in 0..1024u64 {
                let n = b * 1024 + i;
                let v = if n >= onset_sample && n < onset_sample + rate / 10 {
                    let t = (n - onset_sample) as f64 / rate as f64;
                    (std::f64::consts::TAU * 1000.0 * t).sin() as f32 * 0.5
                } else {
                    0.0
                };
                samples.extend([v, v]);
            }
            let block = AudioBlock {
                samples,
                channels: 2,
                sample_rate: rate as u32,
                pts_ms: crate::clock::audio_pts_ms(b * 1024, rate as u32),
            };
            packets.extend(enc.encode(&block).unwrap());
        }
        assert!(packets.len() > 40, "only {} packets", packets.len());
        assert_eq!(
            packets[0].pts_ms, 0,
            "the first packet kept starts the stream"
        );
        for w in packets.windows(2) {
            let step = w[1].pts_ms - w[0].pts_ms;
            assert!((21..=22).contains(&step), "pts step {step} ms");
            assert_eq!(w[1].dts_ms, w[1].pts_ms);
        }
        let mut decoder = crate::qa::probe::AacDecoder::new(&enc.header().asc).unwrap();
        for p in &packets {
            let samples = decoder.decode(&p.data, p.pts_ms).unwrap();
            if let Some(i) = samples.iter().position(|v| v.abs() >= 0.1) {
                return p.pts_ms as f64 + i as f64 * 1000.0 / rate as f64;
            }
        }
        panic!("the beep was not heard in {} packets", packets.len());
    }
}
