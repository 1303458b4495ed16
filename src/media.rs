//! The shared vocabulary of the pipeline: raw frames going into encoders and the
//! compressed packets coming out. Every stage talks through these types only.

use bytes::Bytes;

/// A raw video frame in planar I420 (Y, then U, then V, no padding between rows),
/// because that is what every H.264 encoder accepts without conversion.
#[derive(Clone, Debug)]
pub struct VideoFrame {
    pub width: u32,
    pub height: u32,
    /// Y plane (width*height), U and V planes (width/2*height/2 each), contiguous.
    pub data: Vec<u8>,
    /// Presentation time in milliseconds since the stream started, taken at capture.
    pub pts_ms: i64,
    /// Frame number since the source started, to detect drops downstream.
    pub index: u64,
}

impl VideoFrame {
    /// Size in bytes of an I420 frame of this size; width and height must be even.
    pub fn i420_len(width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * (w / 2) * (h / 2)
    }

    /// A black frame, for sources that have nothing to show yet.
    pub fn black(width: u32, height: u32, pts_ms: i64, index: u64) -> Self {
        let luma = (width * height) as usize;
        let mut data = vec![128u8; Self::i420_len(width, height)];
        data[..luma].fill(16);
        VideoFrame {
            width,
            height,
            data,
            pts_ms,
            index,
        }
    }

    /// The three planes (Y, U, V) as slices.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = (self.width * self.height) as usize;
        let chroma = luma / 4;
        let (y, rest) = self.data.split_at(luma);
        let (u, v) = rest.split_at(chroma);
        (y, u, v)
    }
}

/// A block of interleaved f32 audio samples in [-1, 1].
#[derive(Clone, Debug)]
pub struct AudioBlock {
    pub samples: Vec<f32>,
    pub channels: u16,
    pub sample_rate: u32,
    /// Presentation time in milliseconds since the stream started, derived from the sample count.
    pub pts_ms: i64,
}

impl AudioBlock {
    /// Number of sample frames (samples per channel) in the block.
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }
}

/// Which elementary stream a packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Video,
    Audio,
}

/// One compressed access unit, shared cheaply (`Bytes`) between every output.
///
/// Video payloads are AVCC (4-byte big-endian length before each NAL unit, no parameter
/// sets); audio payloads are raw AAC frames (no ADTS header). Codec set-up travels separately
/// in [`StreamHeaders`].
#[derive(Clone, Debug)]
pub struct Packet {
    pub kind: MediaKind,
    pub data: Bytes,
    /// Presentation time, milliseconds since stream start.
    pub pts_ms: i64,
    /// Decoding time, milliseconds since stream start (equals pts without B-frames).
    pub dts_ms: i64,
    /// An IDR frame: a decoder can start here.
    pub keyframe: bool,
    /// No other frame references this one, so it may be dropped under congestion.
    pub disposable: bool,
}

/// What a decoder needs before the first packet of each stream: sent once at start and again
/// after every reconnect.
#[derive(Clone, Debug, Default)]
pub struct StreamHeaders {
    pub video: Option<VideoHeader>,
    pub audio: Option<AudioHeader>,
}

/// H.264 stream parameters and its AVCDecoderConfigurationRecord.
#[derive(Clone, Debug)]
pub struct VideoHeader {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub avc_config: Bytes,
}

/// AAC stream parameters and its AudioSpecificConfig.
#[derive(Clone, Debug)]
pub struct AudioHeader {
    pub sample_rate: u32,
    pub channels: u16,
    pub bitrate_kbps: u32,
    pub asc: Bytes,
}
