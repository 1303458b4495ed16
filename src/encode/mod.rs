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

/// Presentation time in ms of the `n`th AAC frame of `frame_len` samples.
pub(crate) fn aac_frame_pts(n: u64, frame_len: u32, sample_rate: u32) -> i64 {
    crate::clock::audio_pts_ms(n * frame_len as u64, sample_rate)
}
