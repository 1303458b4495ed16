//! Encoders: raw frames in, compressed packets out. Every backend implements the same small
//! trait, so the pipeline, the bitrate controller and the tests treat them alike.

#[cfg(feature = "fdk-aac")]
pub mod aac_fdk;
pub mod aac_ffmpeg;
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
        }
    }
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

/// Opens the default H.264 encoder (x264).
pub fn open_video(settings: &VideoEncoderSettings) -> anyhow::Result<Box<dyn VideoEncoder>> {
    Ok(Box::new(x264::X264Encoder::open(settings)?))
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
