//! FLV: tags, AVC decoder configuration record, AudioSpecificConfig, onMetaData, files.
//!
//! RTMP carries FLV tag bodies and `onair live --record` writes the very same tags into a
//! file, so both outputs share the pieces here: Annex B to AVCC conversion, the codec
//! configuration records, the onMetaData script tag, tag bodies, and a writer and a strict
//! parser for whole files.

use std::io::{self, Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::{MediaKind, Packet, StreamHeaders};

/// Tag type of an audio tag, as written in the first byte of every FLV tag header.
pub const TAG_AUDIO: u8 = 8;
/// Tag type of a video tag.
pub const TAG_VIDEO: u8 = 9;
/// Tag type of a script data (AMF0) tag, which carries onMetaData.
pub const TAG_SCRIPT: u8 = 18;

/// FLV video codec id of H.264/AVC, the only video codec OnAir produces.
pub const VIDEO_CODEC_AVC: u8 = 7;
/// FLV sound format of AAC, the only audio codec OnAir produces.
pub const SOUND_FORMAT_AAC: u8 = 10;

/// AVCPacketType of a video tag carrying the AVCDecoderConfigurationRecord.
pub const AVC_SEQUENCE_HEADER: u8 = 0;
/// AVCPacketType of a video tag carrying AVCC NAL units of one access unit.
pub const AVC_NALU: u8 = 1;
/// AVCPacketType of the optional end-of-sequence marker some muxers write last.
pub const AVC_END_OF_SEQUENCE: u8 = 2;
/// AACPacketType of an audio tag carrying the AudioSpecificConfig.
pub const AAC_SEQUENCE_HEADER: u8 = 0;
/// AACPacketType of an audio tag carrying one raw AAC frame.
pub const AAC_RAW: u8 = 1;

/// First byte of every AAC audio tag: AAC, "44 kHz", 16-bit, stereo. FLV requires these
/// flags for AAC whatever the real stream is; decoders read the AudioSpecificConfig instead.
const AAC_SOUND_FLAGS: u8 = (SOUND_FORMAT_AAC << 4) | (3 << 2) | (1 << 1) | 1;

const FLV_HEADER_LEN: usize = 9;
const TAG_HEADER_LEN: usize = 11;
/// Largest body a tag can hold: its size field is 24 bits wide.
const MAX_TAG_BODY: usize = 0xFF_FFFF;
/// Composition time is a signed 24-bit field.
const CTS_MIN: i64 = -0x80_0000;
const CTS_MAX: i64 = 0x7F_FFFF;

/// Everything that can go wrong building or reading FLV data, with messages meant for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// The H.264 headers had no sequence parameter set.
    #[error("no SPS (NAL unit type 7) found in the H.264 headers")]
    MissingSps,
    /// The H.264 headers had no picture parameter set.
    #[error("no PPS (NAL unit type 8) found in the H.264 headers")]
    MissingPps,
    /// The SPS could not be used to build a decoder configuration record.
    #[error("invalid SPS: {0}")]
    InvalidSps(&'static str),
    /// The PPS could not be used to build a decoder configuration record.
    #[error("invalid PPS: {0}")]
    InvalidPps(&'static str),
    /// A parameter set longer than the record's 16-bit length field.
    #[error("parameter set of {0} bytes exceeds the 16-bit length field of the AVC record")]
    ParameterSetTooLarge(usize),
    /// A sample rate that the AAC sampling frequency table cannot express.
    #[error("sample rate {0} Hz is not in the AAC sampling frequency table")]
    UnsupportedSampleRate(u32),
    /// A channel count without an AAC channel configuration (1-6 and 8 have one).
    #[error("{0} audio channels have no AAC channel configuration (supported: 1-6, 8)")]
    UnsupportedChannels(u16),
    /// An audio object type that does not fit the 5-bit field.
    #[error("AAC audio object type {0} is out of range (1-30)")]
    UnsupportedObjectType(u8),
    /// The data does not start with "FLV".
    #[error("not an FLV file: the signature is not \"FLV\"")]
    BadSignature,
    /// An FLV version other than 1.
    #[error("unsupported FLV version {0} (only version 1 exists)")]
    UnsupportedVersion(u8),
    /// The header's DataOffset is smaller than the header itself.
    #[error("FLV header declares a size of {0} bytes, below the 9-byte minimum")]
    BadHeaderSize(u32),
    /// The data ends in the middle of a structure.
    #[error(
        "FLV data truncated: {what} needs {needed} bytes at offset {offset}, only {available} left"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// A PreviousTagSize field disagrees with the tag before it.
    #[error("PreviousTagSize at offset {offset} is {found}, expected {expected}")]
    PreviousTagSizeMismatch {
        offset: usize,
        expected: u32,
        found: u32,
    },
    /// A tag type byte that is not audio, video or script data (or has reserved bits set).
    #[error("unknown FLV tag type {tag_type} at offset {offset}")]
    UnknownTagType { tag_type: u8, offset: usize },
    /// A video tag whose codec is not AVC.
    #[error("video codec id {0} is not AVC (7)")]
    UnsupportedVideoCodec(u8),
    /// An audio tag whose sound format is not AAC.
    #[error("audio sound format {0} is not AAC (10)")]
    UnsupportedAudioFormat(u8),
    /// AVCC data whose length prefixes run past its end.
    #[error("AVCC data malformed: NAL unit length {length} at offset {offset} runs past the end")]
    BadAvccLength { offset: usize, length: usize },
}

// ---------------------------------------------------------------------------------------
// H.264 bitstream helpers
// ---------------------------------------------------------------------------------------

/// Splits an Annex B byte stream (00 00 01 / 00 00 00 01 start codes) into NAL units
/// (without start codes), because encoders emit Annex B while FLV wants length prefixes.
///
/// Bytes before the first start code are ignored, trailing zero bytes of each unit (the
/// extra zero of a 4-byte start code, trailing_zero_8bits) are trimmed, and empty units are
/// skipped. Data without any start code yields no units.
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    fn push<'a>(nals: &mut Vec<&'a [u8]>, mut nal: &'a [u8]) {
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }

    let mut nals = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i + 2] > 1 {
            // No start code can begin at i, i+1 or i+2.
            i += 3;
        } else if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                push(&mut nals, &data[s..i]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        push(&mut nals, &data[s..]);
    }
    nals
}

/// NAL unit type (low 5 bits of the first byte), or 0 for an empty unit.
fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Converts Annex B to AVCC (4-byte big-endian length prefixes), optionally dropping
/// SPS(7)/PPS(8)/AUD(9) NALs (parameter sets travel in the sequence header), because FLV and
/// RTMP carry length-prefixed NAL units.
pub fn annexb_to_avcc(data: &[u8], drop_parameter_sets: bool) -> Vec<u8> {
    let nals = split_annexb(data);
    let mut out = Vec::with_capacity(data.len() + 4 * nals.len());
    for nal in nals {
        if drop_parameter_sets && matches!(nal_type(nal), 7..=9) {
            continue;
        }
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
    out
}

/// Splits AVCC data (4-byte length prefixes) back into NAL units, so recordings can be
/// inspected (keyframe checks, QA); fails instead of panicking on bad lengths.
pub fn split_avcc(data: &[u8]) -> Result<Vec<&[u8]>, FlvError> {
    let mut nals = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let header = data.get(pos..pos + 4).ok_or(FlvError::Truncated {
            what: "AVCC length prefix",
            offset: pos,
            needed: 4,
            available: data.len() - pos,
        })?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = pos + 4;
        if data.len() - start < length {
            return Err(FlvError::BadAvccLength {
                offset: pos,
                length,
            });
        }
        nals.push(&data[start..start + length]);
        pos = start + length;
    }
    Ok(nals)
}

/// Extracts (sps, pps) from Annex B headers (what x264_encoder_headers returns: SPS, PPS,
/// SEI), because the decoder configuration record is built from exactly those two units.
/// The first SPS and the first PPS win; other units are ignored.
pub fn sps_pps_from_annexb(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), FlvError> {
    let nals = split_annexb(data);
    let sps = nals
        .iter()
        .find(|n| nal_type(n) == 7)
        .ok_or(FlvError::MissingSps)?;
    let pps = nals
        .iter()
        .find(|n| nal_type(n) == 8)
        .ok_or(FlvError::MissingPps)?;
    Ok((sps.to_vec(), pps.to_vec()))
}

/// Removes emulation prevention bytes (the 03 in 00 00 03) to get the raw RBSP bits.
pub fn unescape_rbsp(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Inserts emulation-prevention bytes (00 00 0x → 00 00 03 0x for x ≤ 3) into an RBSP.
pub fn escape_rbsp(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 2);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// MSB-first bit reader over RBSP bytes, enough for the Exp-Golomb fields of an SPS.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, bit: 0 }
    }

    fn read_bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.bit / 8)?;
        let value = (byte >> (7 - self.bit % 8)) & 1;
        self.bit += 1;
        Some(u32::from(value))
    }

    fn read_bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.read_bit()?))
    }

    /// Unsigned Exp-Golomb code ue(v); None when truncated or longer than 32 bits.
    fn read_ue(&mut self) -> Option<u32> {
        let mut leading_zeros = 0;
        while self.read_bit()? == 0 {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return None;
            }
        }
        let suffix = self.read_bits(leading_zeros)?;
        Some(((1u64 << leading_zeros) - 1 + u64::from(suffix)) as u32)
    }
}

/// Profiles whose SPS carries chroma_format_idc and bit depths, as listed by the H.264
/// specification (and ffmpeg's SPS reader).
fn profile_has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134
    )
}

/// Reads (chroma_format_idc, bit_depth_luma_minus8, bit_depth_chroma_minus8) from an SPS NAL.
fn sps_chroma_and_depth(sps: &[u8]) -> Result<(u8, u8, u8), FlvError> {
    const TRUNCATED: FlvError = FlvError::InvalidSps("truncated before the bit depth fields");
    let rbsp = unescape_rbsp(&sps[1..]);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.read_bits(8).ok_or(TRUNCATED)? as u8;
    r.read_bits(16).ok_or(TRUNCATED)?; // constraint flags, level_idc
    let sps_id = r.read_ue().ok_or(TRUNCATED)?;
    if sps_id > 31 {
        return Err(FlvError::InvalidSps("seq_parameter_set_id above 31"));
    }
    if !profile_has_chroma_info(profile_idc) {
        return Ok((1, 0, 0));
    }
    let chroma_format_idc = r.read_ue().ok_or(TRUNCATED)?;
    if chroma_format_idc > 3 {
        return Err(FlvError::InvalidSps("chroma_format_idc above 3"));
    }
    if chroma_format_idc == 3 {
        r.read_bit().ok_or(TRUNCATED)?; // separate_colour_plane_flag
    }
    let luma = r.read_ue().ok_or(TRUNCATED)?;
    let chroma = r.read_ue().ok_or(TRUNCATED)?;
    if luma > 6 || chroma > 6 {
        return Err(FlvError::InvalidSps("bit depth above 14"));
    }
    Ok((chroma_format_idc as u8, luma as u8, chroma as u8))
}

/// Builds the AVCDecoderConfigurationRecord (ISO 14496-15) from one SPS and one PPS NAL (no
/// start codes), because FLV/RTMP send it as the video sequence header before any frame.
///
/// The layout is byte for byte what ffmpeg's FLV muxer writes: version 1, profile,
/// compatibility and level copied from `sps[1..4]`, lengthSizeMinusOne 3 (0xFF), one SPS
/// (0xE1) and one PPS, each with a 16-bit length; for every profile other than Baseline (66),
/// Main (77) and Extended (88) it appends chroma_format, the two bit depths and zero SPS
/// extensions, read from the SPS.
pub fn avc_decoder_config_record(sps: &[u8], pps: &[u8]) -> Result<Bytes, FlvError> {
    if sps.len() < 4 {
        return Err(FlvError::InvalidSps("shorter than 4 bytes"));
    }
    if nal_type(sps) != 7 {
        return Err(FlvError::InvalidSps("NAL unit type is not 7"));
    }
    if pps.is_empty() {
        return Err(FlvError::InvalidPps("empty"));
    }
    if nal_type(pps) != 8 {
        return Err(FlvError::InvalidPps("NAL unit type is not 8"));
    }
    for set in [sps, pps] {
        if set.len() > usize::from(u16::MAX) {
            return Err(FlvError::ParameterSetTooLarge(set.len()));
        }
    }
    let extension = match sps[1] {
        66 | 77 | 88 => None,
        _ => Some(sps_chroma_and_depth(sps)?),
    };

    let mut out = BytesMut::with_capacity(11 + sps.len() + pps.len() + 4);
    out.put_u8(1); // configurationVersion
    out.put_slice(&sps[1..4]); // profile, profile compatibility, level
    out.put_u8(0xFF); // reserved 111111 + lengthSizeMinusOne 3
    out.put_u8(0xE1); // reserved 111 + one SPS
    out.put_u16(sps.len() as u16);
    out.put_slice(sps);
    out.put_u8(1); // one PPS
    out.put_u16(pps.len() as u16);
    out.put_slice(pps);
    if let Some((chroma_format, luma, chroma)) = extension {
        out.put_u8(0xFC | chroma_format);
        out.put_u8(0xF8 | luma);
        out.put_u8(0xF8 | chroma);
        out.put_u8(0); // numOfSequenceParameterSetExt
    }
    Ok(out.freeze())
}

// ---------------------------------------------------------------------------------------
// AAC
// ---------------------------------------------------------------------------------------

/// The AAC sampling frequency table; the position is the 4-bit index in the ASC.
const AAC_SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// AAC AudioSpecificConfig (2 bytes for AAC-LC): object type (2 for LC), sampling frequency
/// index and channel configuration, because FLV/RTMP send it as the audio sequence header.
/// Errors for rates not in the AAC table and channel counts without a configuration.
pub fn audio_specific_config(
    object_type: u8,
    sample_rate: u32,
    channels: u16,
) -> Result<[u8; 2], FlvError> {
    if !(1..=30).contains(&object_type) {
        return Err(FlvError::UnsupportedObjectType(object_type));
    }
    let frequency_index = AAC_SAMPLE_RATES
        .iter()
        .position(|&r| r == sample_rate)
        .ok_or(FlvError::UnsupportedSampleRate(sample_rate))? as u8;
    let channel_config: u8 = match channels {
        1..=6 => channels as u8,
        8 => 7,
        _ => return Err(FlvError::UnsupportedChannels(channels)),
    };
    Ok([
        (object_type << 3) | (frequency_index >> 1),
        ((frequency_index & 1) << 7) | (channel_config << 3),
    ])
}

// ---------------------------------------------------------------------------------------
// Tag bodies
// ---------------------------------------------------------------------------------------

fn put_i24(out: &mut BytesMut, value: i32) {
    let v = (value as u32) & 0xFF_FFFF;
    out.put_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8]);
}

/// FLV/RTMP video tag body for one AVCC access unit: `[frame type (1 key / 2 inter) << 4 |
/// codec 7][AVCPacketType 1][composition time, 24-bit signed BE = pts - dts][AVCC data]`.
///
/// The packet must be video; a composition time outside the 24-bit range is clamped.
/// FLV timestamps cannot be negative, so a packet with a negative dts (frames before the
/// first one in B-frame delay) travels at timestamp 0 ([`flv_timestamp`]) and its
/// composition time is taken from that timestamp, keeping pts right.
pub fn video_tag_body(packet: &Packet) -> Bytes {
    let frame_type: u8 = if packet.keyframe { 1 } else { 2 };
    let cts = packet
        .pts_ms
        .saturating_sub(packet.dts_ms.max(0))
        .clamp(CTS_MIN, CTS_MAX) as i32;
    let mut out = BytesMut::with_capacity(5 + packet.data.len());
    out.put_u8((frame_type << 4) | VIDEO_CODEC_AVC);
    out.put_u8(AVC_NALU);
    put_i24(&mut out, cts);
    out.put_slice(&packet.data);
    out.freeze()
}

/// The FLV tag timestamp of a dts: negative values (B-frame delay before the first frame)
/// become 0, because FLV timestamps are unsigned; None past the 32-bit range.
pub fn flv_timestamp(dts_ms: i64) -> Option<u32> {
    u32::try_from(dts_ms.max(0)).ok()
}

/// Video sequence header body, `0x17 0x00 00 00 00` + record: a decoder needs it before the
/// first frame, at the start of a stream and after every reconnect.
pub fn video_sequence_header_body(avc_config: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + avc_config.len());
    out.put_u8((1 << 4) | VIDEO_CODEC_AVC);
    out.put_u8(AVC_SEQUENCE_HEADER);
    put_i24(&mut out, 0);
    out.put_slice(avc_config);
    out.freeze()
}

/// Audio tag body for one raw AAC frame, `0xAF 0x01` + frame (AAC, 44 kHz flag, 16 bit,
/// stereo, as FLV requires for AAC whatever the real format).
pub fn audio_tag_body(aac_frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + aac_frame.len());
    out.put_u8(AAC_SOUND_FLAGS);
    out.put_u8(AAC_RAW);
    out.put_slice(aac_frame);
    out.freeze()
}

/// Audio sequence header body, `0xAF 0x00` + AudioSpecificConfig, which tells the decoder
/// the real sample rate and channel layout.
pub fn audio_sequence_header_body(asc: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + asc.len());
    out.put_u8(AAC_SOUND_FLAGS);
    out.put_u8(AAC_SEQUENCE_HEADER);
    out.put_slice(asc);
    out.freeze()
}

// ---------------------------------------------------------------------------------------
// AMF0 / onMetaData
// ---------------------------------------------------------------------------------------

const AMF0_NUMBER: u8 = 0x00;
const AMF0_BOOLEAN: u8 = 0x01;
const AMF0_STRING: u8 = 0x02;
const AMF0_ECMA_ARRAY: u8 = 0x08;
const AMF0_OBJECT_END: u8 = 0x09;
const AMF0_LONG_STRING: u8 = 0x0C;

/// A property value of the onMetaData array.
enum AmfValue<'a> {
    Number(f64),
    Boolean(bool),
    String(&'a str),
}

/// A UTF-8 string with a 16-bit length (property names), cut at 65535 bytes.
fn amf_put_utf8(out: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

fn amf_put_value(out: &mut BytesMut, value: &AmfValue<'_>) {
    match value {
        AmfValue::Number(n) => {
            out.put_u8(AMF0_NUMBER);
            out.put_f64(*n);
        }
        AmfValue::Boolean(b) => {
            out.put_u8(AMF0_BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        AmfValue::String(s) if s.len() <= usize::from(u16::MAX) => {
            out.put_u8(AMF0_STRING);
            amf_put_utf8(out, s);
        }
        AmfValue::String(s) => {
            out.put_u8(AMF0_LONG_STRING);
            out.put_u32(s.len() as u32);
            out.put_slice(s.as_bytes());
        }
    }
}

/// The AMF0 script data body of an onMetaData tag, which players read for the stream's size,
/// rates and codecs: the string "onMetaData", then an ECMA array built from `headers`.
///
/// Properties, in ffmpeg's order: duration (0, live), width, height, videodatarate,
/// framerate, videocodecid (7) for video; audiodatarate, audiosamplerate, audiosamplesize
/// (16), stereo, audiocodecid (10) for audio; encoder (`"OnAir <version>"`); filesize (0).
pub fn on_metadata_body(headers: &StreamHeaders) -> Bytes {
    let encoder = format!("OnAir {}", env!("CARGO_PKG_VERSION"));
    let mut props: Vec<(&str, AmfValue<'_>)> = vec![("duration", AmfValue::Number(0.0))];
    if let Some(v) = &headers.video {
        props.push(("width", AmfValue::Number(f64::from(v.width))));
        props.push(("height", AmfValue::Number(f64::from(v.height))));
        props.push(("videodatarate", AmfValue::Number(f64::from(v.bitrate_kbps))));
        props.push(("framerate", AmfValue::Number(f64::from(v.fps))));
        props.push(("videocodecid", AmfValue::Number(f64::from(VIDEO_CODEC_AVC))));
    }
    if let Some(a) = &headers.audio {
        props.push(("audiodatarate", AmfValue::Number(f64::from(a.bitrate_kbps))));
        props.push((
            "audiosamplerate",
            AmfValue::Number(f64::from(a.sample_rate)),
        ));
        props.push(("audiosamplesize", AmfValue::Number(16.0)));
        props.push(("stereo", AmfValue::Boolean(a.channels == 2)));
        props.push((
            "audiocodecid",
            AmfValue::Number(f64::from(SOUND_FORMAT_AAC)),
        ));
    }
    props.push(("encoder", AmfValue::String(&encoder)));
    props.push(("filesize", AmfValue::Number(0.0)));

    let mut out = BytesMut::with_capacity(64 + 24 * props.len());
    amf_put_value(&mut out, &AmfValue::String("onMetaData"));
    out.put_u8(AMF0_ECMA_ARRAY);
    out.put_u32(props.len() as u32);
    for (name, value) in &props {
        amf_put_utf8(&mut out, name);
        amf_put_value(&mut out, value);
    }
    out.put_slice(&[0, 0, AMF0_OBJECT_END]);
    out.freeze()
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// Writes an FLV file (used for `onair live --record out.flv`): the 9-byte header and
/// PreviousTagSize0 on creation, then one tag per call, each followed by its size.
///
/// Writes go straight to `inner`; wrap files in a `BufWriter`.
pub struct FlvWriter<W: Write> {
    inner: W,
    bytes_written: u64,
}

impl<W: Write> FlvWriter<W> {
    /// Writes the FLV header (signature, version 1, audio 0x04 / video 0x01 flags, data
    /// offset 9) and PreviousTagSize0, so the output is a valid file from the first byte.
    pub fn new(inner: W, has_video: bool, has_audio: bool) -> io::Result<Self> {
        let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
        let mut header = [0u8; FLV_HEADER_LEN + 4];
        header[..3].copy_from_slice(b"FLV");
        header[3] = 1;
        header[4] = flags;
        header[5..9].copy_from_slice(&(FLV_HEADER_LEN as u32).to_be_bytes());
        let mut writer = FlvWriter {
            inner,
            bytes_written: 0,
        };
        writer.write_all(&header)?;
        Ok(writer)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data)?;
        self.bytes_written += data.len() as u64;
        Ok(())
    }

    /// Writes one tag: 11-byte header (type, 24-bit size, 24-bit timestamp plus 8-bit
    /// extension, stream id 0), the body, then the 32-bit PreviousTagSize.
    ///
    /// Fails with `InvalidInput` for bodies over 16 MiB - 1, which the size field cannot hold.
    pub fn write_tag(&mut self, tag_type: u8, timestamp_ms: u32, body: &[u8]) -> io::Result<()> {
        if body.len() > MAX_TAG_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "FLV tag body of {} bytes exceeds the 24-bit size field",
                    body.len()
                ),
            ));
        }
        let size = body.len() as u32;
        let ts = timestamp_ms;
        let header: [u8; TAG_HEADER_LEN] = [
            tag_type,
            (size >> 16) as u8,
            (size >> 8) as u8,
            size as u8,
            (ts >> 16) as u8,
            (ts >> 8) as u8,
            ts as u8,
            (ts >> 24) as u8,
            0,
            0,
            0,
        ];
        self.write_all(&header)?;
        self.write_all(body)?;
        self.write_all(&(TAG_HEADER_LEN as u32 + size).to_be_bytes())
    }

    /// Convenience: writes onMetaData and the sequence headers of the streams present, all
    /// at timestamp 0, which players need before the first media tag.
    pub fn write_headers(&mut self, headers: &StreamHeaders) -> io::Result<()> {
        self.write_tag(TAG_SCRIPT, 0, &on_metadata_body(headers))?;
        if let Some(video) = &headers.video {
            self.write_tag(TAG_VIDEO, 0, &video_sequence_header_body(&video.avc_config))?;
        }
        if let Some(audio) = &headers.audio {
            self.write_tag(TAG_AUDIO, 0, &audio_sequence_header_body(&audio.asc))?;
        }
        Ok(())
    }

    /// Writes a media packet as the right tag (timestamp = dts, negative dts as 0, see
    /// [`flv_timestamp`]).
    ///
    /// Fails with `InvalidInput` when dts is beyond the 32-bit FLV range (49.7 days).
    pub fn write_packet(&mut self, packet: &Packet) -> io::Result<()> {
        let timestamp = flv_timestamp(packet.dts_ms).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "packet dts {} ms is beyond the FLV timestamp range",
                    packet.dts_ms
                ),
            )
        })?;
        match packet.kind {
            MediaKind::Video => self.write_tag(TAG_VIDEO, timestamp, &video_tag_body(packet)),
            MediaKind::Audio => self.write_tag(TAG_AUDIO, timestamp, &audio_tag_body(&packet.data)),
        }
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// Bytes written so far, header included: the recording's size for status displays.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Gives back the underlying writer (not flushed: call [`FlvWriter::flush`] first).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// The FLV file header as parsed, to check which streams a recording announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlvFileHeader {
    /// Always 1.
    pub version: u8,
    /// The audio flag (0x04) is set.
    pub has_audio: bool,
    /// The video flag (0x01) is set.
    pub has_video: bool,
}

/// A parsed tag, for reading recordings back (tests, QA tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlvTag {
    /// [`TAG_AUDIO`], [`TAG_VIDEO`] or [`TAG_SCRIPT`].
    pub tag_type: u8,
    /// Full 32-bit timestamp (24-bit field plus the extension byte), milliseconds.
    pub timestamp_ms: u32,
    /// The tag body, without tag header and PreviousTagSize.
    pub body: Bytes,
}

/// `n` bytes at `pos`, or a `Truncated` error naming `what` was being read.
fn take<'a>(
    data: &'a [u8],
    pos: usize,
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], FlvError> {
    let available = data.len().saturating_sub(pos);
    if available < n {
        return Err(FlvError::Truncated {
            what,
            offset: pos,
            needed: n,
            available,
        });
    }
    Ok(&data[pos..pos + n])
}

fn be_u24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses a whole FLV byte buffer (header + tags) so recordings can be checked.
///
/// Strict: every PreviousTagSize must match, tag types must be audio, video or script, and
/// the data must end exactly after a PreviousTagSize. Malformed or truncated input gives an
/// [`FlvError`], never a panic.
pub fn parse_flv(data: &[u8]) -> Result<(FlvFileHeader, Vec<FlvTag>), FlvError> {
    let header = take(data, 0, FLV_HEADER_LEN, "FLV header")?;
    if &header[..3] != b"FLV" {
        return Err(FlvError::BadSignature);
    }
    if header[3] != 1 {
        return Err(FlvError::UnsupportedVersion(header[3]));
    }
    let file_header = FlvFileHeader {
        version: header[3],
        has_audio: header[4] & 0x04 != 0,
        has_video: header[4] & 0x01 != 0,
    };
    let data_offset = be_u32(&header[5..9]);
    if (data_offset as usize) < FLV_HEADER_LEN {
        return Err(FlvError::BadHeaderSize(data_offset));
    }
    let mut pos = data_offset as usize;
    take(data, FLV_HEADER_LEN, pos - FLV_HEADER_LEN, "FLV header")?;

    let mut expected_previous = 0u32;
    let mut tags = Vec::new();
    loop {
        let previous = be_u32(take(data, pos, 4, "PreviousTagSize")?);
        if previous != expected_previous {
            return Err(FlvError::PreviousTagSizeMismatch {
                offset: pos,
                expected: expected_previous,
                found: previous,
            });
        }
        pos += 4;
        if pos == data.len() {
            return Ok((file_header, tags));
        }

        let tag_header = take(data, pos, TAG_HEADER_LEN, "tag header")?;
        let tag_type = tag_header[0];
        if !matches!(tag_type, TAG_AUDIO | TAG_VIDEO | TAG_SCRIPT) {
            return Err(FlvError::UnknownTagType {
                tag_type,
                offset: pos,
            });
        }
        let size = be_u24(&tag_header[1..4]);
        let timestamp_ms = be_u24(&tag_header[4..7]) | (u32::from(tag_header[7]) << 24);
        let body = take(data, pos + TAG_HEADER_LEN, size as usize, "tag body")?;
        tags.push(FlvTag {
            tag_type,
            timestamp_ms,
            body: Bytes::copy_from_slice(body),
        });
        pos += TAG_HEADER_LEN + size as usize;
        expected_previous = TAG_HEADER_LEN as u32 + size;
    }
}

/// A parsed AVC video tag body, to check frame types and timing of recordings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoTagInfo<'a> {
    /// FLV frame type: 1 key frame, 2 inter frame (others exist for legacy codecs).
    pub frame_type: u8,
    /// `frame_type == 1`.
    pub keyframe: bool,
    /// [`AVC_SEQUENCE_HEADER`], [`AVC_NALU`] or [`AVC_END_OF_SEQUENCE`].
    pub avc_packet_type: u8,
    /// pts - dts in milliseconds (signed 24-bit).
    pub composition_time_ms: i32,
    /// The record (sequence header) or AVCC NAL units (NALU).
    pub payload: &'a [u8],
}

/// Parses a video tag body: key frame or not, AVCPacketType, composition time, payload.
/// Only AVC is understood; other codecs give [`FlvError::UnsupportedVideoCodec`].
pub fn parse_video_tag_body(body: &[u8]) -> Result<VideoTagInfo<'_>, FlvError> {
    let first = take(body, 0, 1, "video tag flags")?[0];
    let codec = first & 0x0F;
    if codec != VIDEO_CODEC_AVC {
        return Err(FlvError::UnsupportedVideoCodec(codec));
    }
    let head = take(body, 0, 5, "AVC video tag header")?;
    let frame_type = first >> 4;
    let composition_time_ms = ((be_u24(&head[2..5]) << 8) as i32) >> 8;
    Ok(VideoTagInfo {
        frame_type,
        keyframe: frame_type == 1,
        avc_packet_type: head[1],
        composition_time_ms,
        payload: &body[5..],
    })
}

/// A parsed AAC audio tag body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioTagInfo<'a> {
    /// [`AAC_SEQUENCE_HEADER`] or [`AAC_RAW`].
    pub aac_packet_type: u8,
    /// The AudioSpecificConfig or one raw AAC frame.
    pub payload: &'a [u8],
}

/// Parses an audio tag body, to read back the ASC and AAC frames of recordings. Only AAC is
/// understood; other formats give [`FlvError::UnsupportedAudioFormat`].
pub fn parse_audio_tag_body(body: &[u8]) -> Result<AudioTagInfo<'_>, FlvError> {
    let first = take(body, 0, 1, "audio tag flags")?[0];
    let format = first >> 4;
    if format != SOUND_FORMAT_AAC {
        return Err(FlvError::UnsupportedAudioFormat(format));
    }
    let head = take(body, 0, 2, "AAC audio tag header")?;
    Ok(AudioTagInfo {
        aac_packet_type: head[1],
        payload: &body[2..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AudioHeader, VideoHeader};

    // Parameter sets and records captured from ffmpeg 5.1 + libx264 FLV output
    // (testsrc2 320x240 @ 30 fps): the sequence header tag body after `17 00 00 00 00`.
    const BASELINE_SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
    ];
    const BASELINE_PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    const BASELINE_RECORD: &[u8] = &[
        0x01, 0x42, 0xc0, 0x0d, 0xff, 0xe1, 0x00, 0x18, 0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41,
        0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42,
        0xa4, 0x80, 0x01, 0x00, 0x05, 0x68, 0xcb, 0x83, 0xcb, 0x20,
    ];

    const HIGH_SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ];
    const HIGH_PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    const HIGH_RECORD: &[u8] = &[
        0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41,
        0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1,
        0x42, 0x99, 0x60, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8,
        0x00,
    ];

    // High 4:4:4 Predictive (profile 244, chroma_format_idc 3).
    const HIGH444_SPS: &[u8] = &[
        0x67, 0xf4, 0x00, 0x0d, 0x91, 0x9b, 0x28, 0x28, 0x3f, 0x60, 0x22, 0x00, 0x00, 0x03, 0x00,
        0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x28, 0x53, 0x2c,
    ];
    const HIGH444_PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xc4, 0x48, 0x44];
    const HIGH444_RECORD: &[u8] = &[
        0x01, 0xf4, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0xf4, 0x00, 0x0d, 0x91, 0x9b, 0x28,
        0x28, 0x3f, 0x60, 0x22, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e,
        0x28, 0x53, 0x2c, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xc4, 0x48, 0x44, 0xff, 0xf8, 0xf8,
        0x00,
    ];

    // High 10 (profile 110, 10-bit luma and chroma).
    const HIGH10_SPS: &[u8] = &[
        0x67, 0x6e, 0x00, 0x0d, 0xa6, 0xcd, 0x94, 0x14, 0x1f, 0xb0, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x14, 0x29, 0x96,
    ];
    const HIGH10_PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    const HIGH10_RECORD: &[u8] = &[
        0x01, 0x6e, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x6e, 0x00, 0x0d, 0xa6, 0xcd, 0x94,
        0x14, 0x1f, 0xb0, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f,
        0x14, 0x29, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xfa, 0xfa,
        0x00,
    ];

    // ffmpeg's AAC sequence header bodies (48 kHz and 44.1 kHz stereo). Its native AAC
    // encoder appends a 3-byte SBR sync extension (56 e5 00) after the 2-byte LC config.
    const FFMPEG_AAC_48K_STEREO_SEQ: &[u8] = &[0xaf, 0x00, 0x11, 0x90, 0x56, 0xe5, 0x00];
    const FFMPEG_AAC_44K_STEREO_SEQ: &[u8] = &[0xaf, 0x00, 0x12, 0x10, 0x56, 0xe5, 0x00];

    fn video_packet(data: &[u8], pts_ms: i64, dts_ms: i64, keyframe: bool) -> Packet {
        Packet {
            kind: MediaKind::Video,
            data: Bytes::copy_from_slice(data),
            pts_ms,
            dts_ms,
            keyframe,
            disposable: false,
        }
    }

    fn audio_packet(data: &[u8], ms: i64) -> Packet {
        Packet {
            kind: MediaKind::Audio,
            data: Bytes::copy_from_slice(data),
            pts_ms: ms,
            dts_ms: ms,
            keyframe: true,
            disposable: false,
        }
    }

    fn headers(video: bool, audio: bool) -> StreamHeaders {
        StreamHeaders {
            video: video.then(|| VideoHeader {
                width: 1280,
                height: 720,
                fps: 30,
                bitrate_kbps: 2500,
                avc_config: Bytes::from_static(HIGH_RECORD),
            }),
            audio: audio.then(|| AudioHeader {
                sample_rate: 48000,
                channels: 2,
                bitrate_kbps: 160,
                asc: Bytes::from_static(&[0x11, 0x90]),
            }),
        }
    }

    // ---- Annex B / AVCC ----

    #[test]
    fn split_annexb_handles_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 0xAA, 0xBB, // 4-byte start code
            0, 0, 1, 0x68, 0xCC, // 3-byte start code
            0, 0, 0, 1, 0x65, 0x01, 0x00, 0x02, // zero inside the unit is kept
            0, 0, 1, 0x41, 0xDD, 0, 0, // trailing zeros are trimmed
        ];
        let nals = split_annexb(&data);
        assert_eq!(
            nals,
            vec![
                &[0x67, 0xAA, 0xBB][..],
                &[0x68, 0xCC][..],
                &[0x65, 0x01, 0x00, 0x02][..],
                &[0x41, 0xDD][..],
            ]
        );
    }

    #[test]
    fn split_annexb_edge_cases() {
        assert!(split_annexb(&[]).is_empty());
        assert!(
            split_annexb(&[0x65, 0x88, 0x84]).is_empty(),
            "no start code"
        );
        assert!(split_annexb(&[0, 0, 1]).is_empty(), "start code only");
        assert!(
            split_annexb(&[0, 0, 0, 1, 0, 0, 1]).is_empty(),
            "empty units"
        );
        // Garbage before the first start code is not a NAL unit.
        assert_eq!(
            split_annexb(&[0x12, 0x34, 0, 0, 1, 0x09, 0xF0]),
            vec![&[0x09, 0xF0][..]]
        );
        // A 00 00 02 sequence is not a start code.
        assert_eq!(
            split_annexb(&[0, 0, 1, 0x06, 0, 0, 2, 7]),
            vec![&[0x06, 0, 0, 2, 7][..]]
        );
        // Back-to-back start codes right at the end.
        assert_eq!(split_annexb(&[0, 0, 1, 0x0C, 0, 0, 1]), vec![&[0x0C][..]]);
    }

    #[test]
    fn annexb_to_avcc_keeps_or_drops_parameter_sets() {
        let data = [
            0, 0, 0, 1, 0x09, 0xF0, // AUD
            0, 0, 0, 1, 0x67, 0x42, 0x00, 0x1E, // SPS
            0, 0, 1, 0x68, 0xCE, // PPS
            0, 0, 1, 0x06, 0x05, // SEI
            0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x10, // IDR slice
        ];
        let kept = annexb_to_avcc(&data, false);
        assert_eq!(
            kept,
            [
                &[0, 0, 0, 2, 0x09, 0xF0][..],
                &[0, 0, 0, 4, 0x67, 0x42, 0x00, 0x1E],
                &[0, 0, 0, 2, 0x68, 0xCE],
                &[0, 0, 0, 2, 0x06, 0x05],
                &[0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x10],
            ]
            .concat()
        );
        let dropped = annexb_to_avcc(&data, true);
        assert_eq!(
            dropped,
            [
                &[0, 0, 0, 2, 0x06, 0x05][..],
                &[0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x10],
            ]
            .concat()
        );
        assert_eq!(
            split_avcc(&dropped).unwrap(),
            vec![&[0x06, 0x05][..], &[0x65, 0x88, 0x84, 0x00, 0x10][..]]
        );
        assert!(annexb_to_avcc(&[], true).is_empty());
    }

    #[test]
    fn split_avcc_rejects_bad_lengths() {
        assert_eq!(split_avcc(&[]).unwrap(), Vec::<&[u8]>::new());
        assert!(matches!(
            split_avcc(&[0, 0, 0, 5, 1, 2]),
            Err(FlvError::BadAvccLength {
                offset: 0,
                length: 5
            })
        ));
        assert!(matches!(
            split_avcc(&[0, 0, 0, 1, 9, 0, 0]),
            Err(FlvError::Truncated { offset: 5, .. })
        ));
        assert!(split_avcc(&[0xFF, 0xFF, 0xFF, 0xFF, 1]).is_err());
    }

    #[test]
    fn sps_pps_from_x264_style_headers() {
        // SPS and PPS with 4-byte start codes followed by an SEI, as x264 returns them.
        let mut headers = vec![0, 0, 0, 1];
        headers.extend_from_slice(HIGH_SPS);
        headers.extend_from_slice(&[0, 0, 0, 1]);
        headers.extend_from_slice(HIGH_PPS);
        headers.extend_from_slice(&[0, 0, 1, 0x06, 0x05, 0x11, 0x22, 0x80]);
        let (sps, pps) = sps_pps_from_annexb(&headers).unwrap();
        assert_eq!(sps, HIGH_SPS);
        assert_eq!(pps, HIGH_PPS);
        assert_eq!(
            avc_decoder_config_record(&sps, &pps).unwrap(),
            Bytes::from_static(HIGH_RECORD)
        );
    }

    #[test]
    fn sps_pps_from_annexb_reports_what_is_missing() {
        let mut only_sps = vec![0, 0, 1];
        only_sps.extend_from_slice(BASELINE_SPS);
        assert_eq!(sps_pps_from_annexb(&only_sps), Err(FlvError::MissingPps));
        let mut only_pps = vec![0, 0, 1];
        only_pps.extend_from_slice(BASELINE_PPS);
        assert_eq!(sps_pps_from_annexb(&only_pps), Err(FlvError::MissingSps));
        assert_eq!(sps_pps_from_annexb(&[]), Err(FlvError::MissingSps));
    }

    // ---- AVCDecoderConfigurationRecord ----

    #[test]
    fn record_matches_ffmpeg_for_baseline() {
        let record = avc_decoder_config_record(BASELINE_SPS, BASELINE_PPS).unwrap();
        assert_eq!(&record[..], BASELINE_RECORD);
    }

    #[test]
    fn record_matches_ffmpeg_for_high() {
        let record = avc_decoder_config_record(HIGH_SPS, HIGH_PPS).unwrap();
        assert_eq!(&record[..], HIGH_RECORD);
    }

    #[test]
    fn record_matches_ffmpeg_for_high444_and_high10() {
        let record = avc_decoder_config_record(HIGH444_SPS, HIGH444_PPS).unwrap();
        assert_eq!(&record[..], HIGH444_RECORD);
        let record = avc_decoder_config_record(HIGH10_SPS, HIGH10_PPS).unwrap();
        assert_eq!(&record[..], HIGH10_RECORD);
    }

    #[test]
    fn record_rejects_bad_parameter_sets() {
        assert!(matches!(
            avc_decoder_config_record(&[0x67, 0x42], BASELINE_PPS),
            Err(FlvError::InvalidSps(_))
        ));
        assert!(matches!(
            avc_decoder_config_record(BASELINE_PPS, BASELINE_SPS),
            Err(FlvError::InvalidSps(_))
        ));
        assert!(matches!(
            avc_decoder_config_record(BASELINE_SPS, &[]),
            Err(FlvError::InvalidPps(_))
        ));
        assert!(matches!(
            avc_decoder_config_record(BASELINE_SPS, &[0x65, 0x01]),
            Err(FlvError::InvalidPps(_))
        ));
        // A High profile SPS cut before its chroma/bit depth fields.
        assert!(matches!(
            avc_decoder_config_record(&HIGH_SPS[..4], HIGH_PPS),
            Err(FlvError::InvalidSps(_))
        ));
        // A Baseline SPS needs nothing past the level byte.
        assert!(avc_decoder_config_record(&BASELINE_SPS[..4], BASELINE_PPS).is_ok());
        let mut huge_pps = vec![0x68];
        huge_pps.resize(70_000, 0xAB);
        assert_eq!(
            avc_decoder_config_record(BASELINE_SPS, &huge_pps),
            Err(FlvError::ParameterSetTooLarge(70_000))
        );
    }

    #[test]
    fn record_reads_fields_behind_emulation_prevention_bytes() {
        // Profile 100 with constraint and level bytes of zero, so an emulation prevention
        // byte follows them; the fields come after it: sps_id '1' (0), chroma_format_idc
        // '011' (2), luma depth '011' (+2), chroma depth '011' (+2) = 1011 0110 11.
        let sps = [0x67, 0x64, 0x00, 0x00, 0x03, 0xB6, 0xC0];
        let rbsp = unescape_rbsp(&sps[1..]);
        assert_eq!(rbsp, [0x64, 0x00, 0x00, 0xB6, 0xC0]);
        let record = avc_decoder_config_record(&sps, &[0x68, 0xCE]).unwrap();
        assert_eq!(&record[record.len() - 4..], &[0xFE, 0xFA, 0xFA, 0x00]);
    }

    #[test]
    fn unescape_rbsp_removes_only_emulation_prevention() {
        assert_eq!(
            unescape_rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]),
            [0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(unescape_rbsp(&[0, 3, 0, 0, 4, 3]), [0, 3, 0, 0, 4, 3]);
    }

    #[test]
    fn exp_golomb_reader() {
        // '1' = 0, '010' = 1, '011' = 2, '00100' = 3, then '0001000' = 7
        let data = [0b1010_0110, 0b0100_0001, 0b0000_0000];
        let mut r = BitReader::new(&data);
        assert_eq!(r.read_ue(), Some(0));
        assert_eq!(r.read_ue(), Some(1));
        assert_eq!(r.read_ue(), Some(2));
        assert_eq!(r.read_ue(), Some(3));
        assert_eq!(r.read_ue(), Some(7));
        assert_eq!(r.read_ue(), None, "only zeros left");
        assert_eq!(BitReader::new(&[0; 8]).read_ue(), None, "too long");
    }

    // ---- AAC ----

    #[test]
    fn audio_specific_config_matches_known_values() {
        assert_eq!(audio_specific_config(2, 48000, 2).unwrap(), [0x11, 0x90]);
        assert_eq!(audio_specific_config(2, 44100, 2).unwrap(), [0x12, 0x10]);
        assert_eq!(audio_specific_config(2, 44100, 1).unwrap(), [0x12, 0x08]);
        assert_eq!(audio_specific_config(2, 96000, 6).unwrap(), [0x10, 0x30]);
        assert_eq!(audio_specific_config(2, 7350, 8).unwrap(), [0x16, 0x38]);
        assert_eq!(audio_specific_config(5, 24000, 2).unwrap(), [0x2B, 0x10]);
        // The LC part of ffmpeg's sequence headers.
        assert_eq!(
            audio_specific_config(2, 48000, 2).unwrap(),
            FFMPEG_AAC_48K_STEREO_SEQ[2..4]
        );
        assert_eq!(
            audio_specific_config(2, 44100, 2).unwrap(),
            FFMPEG_AAC_44K_STEREO_SEQ[2..4]
        );
    }

    #[test]
    fn audio_specific_config_rejects_what_aac_cannot_express() {
        assert_eq!(
            audio_specific_config(2, 44000, 2),
            Err(FlvError::UnsupportedSampleRate(44000))
        );
        assert_eq!(
            audio_specific_config(2, 0, 2),
            Err(FlvError::UnsupportedSampleRate(0))
        );
        assert_eq!(
            audio_specific_config(2, 48000, 0),
            Err(FlvError::UnsupportedChannels(0))
        );
        assert_eq!(
            audio_specific_config(2, 48000, 7),
            Err(FlvError::UnsupportedChannels(7))
        );
        assert_eq!(
            audio_specific_config(0, 48000, 2),
            Err(FlvError::UnsupportedObjectType(0))
        );
        assert_eq!(
            audio_specific_config(31, 48000, 2),
            Err(FlvError::UnsupportedObjectType(31))
        );
        assert!(FlvError::UnsupportedSampleRate(44000)
            .to_string()
            .contains("44000"));
    }

    // ---- tag bodies ----

    #[test]
    fn video_tag_body_positive_composition_time() {
        let p = video_packet(&[0, 0, 0, 1, 0x65], 133, 66, true);
        let body = video_tag_body(&p);
        assert_eq!(&body[..], &[0x17, 0x01, 0x00, 0x00, 0x43, 0, 0, 0, 1, 0x65]);
        let info = parse_video_tag_body(&body).unwrap();
        assert!(info.keyframe);
        assert_eq!(info.frame_type, 1);
        assert_eq!(info.avc_packet_type, AVC_NALU);
        assert_eq!(info.composition_time_ms, 67);
        assert_eq!(info.payload, &[0, 0, 0, 1, 0x65]);
    }

    #[test]
    fn video_tag_body_negative_composition_time() {
        let p = video_packet(&[0, 0, 0, 1, 0x41], 100, 133, false);
        let body = video_tag_body(&p);
        assert_eq!(&body[..5], &[0x27, 0x01, 0xFF, 0xFF, 0xDF]);
        let info = parse_video_tag_body(&body).unwrap();
        assert!(!info.keyframe);
        assert_eq!(info.frame_type, 2);
        assert_eq!(info.composition_time_ms, -33);
    }

    #[test]
    fn video_tag_body_zero_and_clamped_composition_time() {
        let body = video_tag_body(&video_packet(&[], 40, 40, false));
        assert_eq!(&body[..], &[0x27, 0x01, 0, 0, 0]);
        let body = video_tag_body(&video_packet(&[], 1 << 40, 0, false));
        assert_eq!(&body[2..5], &[0x7F, 0xFF, 0xFF]);
        assert_eq!(
            parse_video_tag_body(&body).unwrap().composition_time_ms,
            0x7F_FFFF
        );
        let body = video_tag_body(&video_packet(&[], i64::MIN, i64::MAX, false));
        assert_eq!(&body[2..5], &[0x80, 0x00, 0x00]);
        assert_eq!(
            parse_video_tag_body(&body).unwrap().composition_time_ms,
            -0x80_0000
        );
    }

    #[test]
    fn negative_dts_travels_at_zero_with_pts_kept() {
        assert_eq!(flv_timestamp(-66), Some(0));
        assert_eq!(flv_timestamp(0), Some(0));
        assert_eq!(flv_timestamp(40), Some(40));
        assert_eq!(flv_timestamp(i64::from(u32::MAX)), Some(u32::MAX));
        assert_eq!(flv_timestamp(i64::from(u32::MAX) + 1), None);

        // B-frame delay: the first frame (pts 0) decodes at -66 ms, the next P at -33 ms.
        let first = video_packet(&[0, 0, 0, 1, 0x65], 0, -66, true);
        let second = video_packet(&[0, 0, 0, 1, 0x41], 100, -33, false);
        assert_eq!(&video_tag_body(&first)[..5], &[0x17, 0x01, 0, 0, 0]);
        assert_eq!(&video_tag_body(&second)[..5], &[0x27, 0x01, 0, 0, 100]);
        let mut w = FlvWriter::new(Vec::new(), true, false).unwrap();
        w.write_packet(&first).unwrap();
        w.write_packet(&second).unwrap();
        let (_, tags) = parse_flv(&w.into_inner()).unwrap();
        let pts: Vec<i64> = tags
            .iter()
            .map(|t| {
                let info = parse_video_tag_body(&t.body).unwrap();
                i64::from(t.timestamp_ms) + i64::from(info.composition_time_ms)
            })
            .collect();
        assert_eq!(pts, [0, 100]);
        assert!(tags.iter().all(|t| t.timestamp_ms == 0));
    }

    #[test]
    fn sequence_header_bodies() {
        let v = video_sequence_header_body(BASELINE_RECORD);
        assert_eq!(&v[..5], &[0x17, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(&v[5..], BASELINE_RECORD);
        let info = parse_video_tag_body(&v).unwrap();
        assert_eq!(info.avc_packet_type, AVC_SEQUENCE_HEADER);
        assert!(info.keyframe);
        assert_eq!(info.payload, BASELINE_RECORD);

        let a = audio_sequence_header_body(&FFMPEG_AAC_48K_STEREO_SEQ[2..]);
        assert_eq!(&a[..], FFMPEG_AAC_48K_STEREO_SEQ);
        let asc = audio_specific_config(2, 44100, 2).unwrap();
        assert_eq!(
            &audio_sequence_header_body(&asc)[..],
            &[0xAF, 0x00, 0x12, 0x10]
        );
    }

    #[test]
    fn audio_tag_body_layout() {
        let body = audio_tag_body(&[0x21, 0x10, 0x04]);
        assert_eq!(&body[..], &[0xAF, 0x01, 0x21, 0x10, 0x04]);
        let info = parse_audio_tag_body(&body).unwrap();
        assert_eq!(info.aac_packet_type, AAC_RAW);
        assert_eq!(info.payload, &[0x21, 0x10, 0x04]);
        assert_eq!(&audio_tag_body(&[])[..], &[0xAF, 0x01]);
    }

    #[test]
    fn tag_body_parsers_reject_bad_input() {
        assert!(matches!(
            parse_video_tag_body(&[]),
            Err(FlvError::Truncated { .. })
        ));
        assert!(matches!(
            parse_video_tag_body(&[0x17, 0x01, 0x00]),
            Err(FlvError::Truncated { .. })
        ));
        assert_eq!(
            parse_video_tag_body(&[0x12, 0, 0, 0, 0]),
            Err(FlvError::UnsupportedVideoCodec(2))
        );
        assert!(matches!(
            parse_audio_tag_body(&[]),
            Err(FlvError::Truncated { .. })
        ));
        assert!(matches!(
            parse_audio_tag_body(&[0xAF]),
            Err(FlvError::Truncated { .. })
        ));
        assert_eq!(
            parse_audio_tag_body(&[0x2F, 0x01]),
            Err(FlvError::UnsupportedAudioFormat(2))
        );
    }

    // ---- onMetaData ----

    #[derive(Debug, PartialEq)]
    enum Amf {
        Number(f64),
        Bool(bool),
        Str(String),
    }

    /// Minimal AMF0 reader for the subset on_metadata_body writes.
    fn read_metadata(body: &[u8]) -> (String, Vec<(String, Amf)>) {
        fn u16_at(b: &[u8], p: usize) -> usize {
            usize::from(u16::from_be_bytes([b[p], b[p + 1]]))
        }
        fn utf8(b: &[u8], p: &mut usize) -> String {
            let n = u16_at(b, *p);
            let s = String::from_utf8(b[*p + 2..*p + 2 + n].to_vec()).unwrap();
            *p += 2 + n;
            s
        }
        let mut p = 0;
        assert_eq!(body[p], AMF0_STRING);
        p += 1;
        let name = utf8(body, &mut p);
        assert_eq!(body[p], AMF0_ECMA_ARRAY);
        let count = u32::from_be_bytes(body[p + 1..p + 5].try_into().unwrap()) as usize;
        p += 5;
        let mut props = Vec::new();
        loop {
            let key = utf8(body, &mut p);
            if key.is_empty() {
                assert_eq!(body[p], AMF0_OBJECT_END);
                assert_eq!(p + 1, body.len(), "nothing after the object end");
                break;
            }
            let marker = body[p];
            p += 1;
            let value = match marker {
                AMF0_NUMBER => {
                    let v = f64::from_be_bytes(body[p..p + 8].try_into().unwrap());
                    p += 8;
                    Amf::Number(v)
                }
                AMF0_BOOLEAN => {
                    p += 1;
                    Amf::Bool(body[p - 1] != 0)
                }
                AMF0_STRING => Amf::Str(utf8(body, &mut p)),
                other => panic!("unexpected AMF0 marker {other}"),
            };
            props.push((key, value));
        }
        assert_eq!(count, props.len(), "ECMA array count");
        (name, props)
    }

    #[test]
    fn on_metadata_body_with_audio_and_video() {
        let body = on_metadata_body(&headers(true, true));
        assert_eq!(
            &body[..18],
            &[
                0x02, 0x00, 0x0A, b'o', b'n', b'M', b'e', b't', b'a', b'D', b'a', b't', b'a', 0x08,
                0, 0, 0, 13
            ]
        );
        // "width" = 1280 as an AMF0 number.
        let width = [
            0x00, 0x05, b'w', b'i', b'd', b't', b'h', 0x00, 0x40, 0x94, 0, 0, 0, 0, 0, 0,
        ];
        assert!(body.windows(width.len()).any(|w| w == width));
        assert_eq!(&body[body.len() - 3..], &[0, 0, 9]);

        let (name, props) = read_metadata(&body);
        assert_eq!(name, "onMetaData");
        let expected = vec![
            ("duration", Amf::Number(0.0)),
            ("width", Amf::Number(1280.0)),
            ("height", Amf::Number(720.0)),
            ("videodatarate", Amf::Number(2500.0)),
            ("framerate", Amf::Number(30.0)),
            ("videocodecid", Amf::Number(7.0)),
            ("audiodatarate", Amf::Number(160.0)),
            ("audiosamplerate", Amf::Number(48000.0)),
            ("audiosamplesize", Amf::Number(16.0)),
            ("stereo", Amf::Bool(true)),
            ("audiocodecid", Amf::Number(10.0)),
            (
                "encoder",
                Amf::Str(format!("OnAir {}", env!("CARGO_PKG_VERSION"))),
            ),
            ("filesize", Amf::Number(0.0)),
        ];
        let expected: Vec<(String, Amf)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(props, expected);
    }

    #[test]
    fn on_metadata_body_lists_only_present_streams() {
        let (_, props) = read_metadata(&on_metadata_body(&headers(false, true)));
        let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "duration",
                "audiodatarate",
                "audiosamplerate",
                "audiosamplesize",
                "stereo",
                "audiocodecid",
                "encoder",
                "filesize"
            ]
        );
        let mut mono = headers(false, true);
        mono.audio.as_mut().unwrap().channels = 1;
        let (_, props) = read_metadata(&on_metadata_body(&mono));
        assert!(props.contains(&("stereo".to_string(), Amf::Bool(false))));

        let (_, props) = read_metadata(&on_metadata_body(&headers(true, false)));
        let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "duration",
                "width",
                "height",
                "videodatarate",
                "framerate",
                "videocodecid",
                "encoder",
                "filesize"
            ]
        );
    }

    #[test]
    fn amf_long_strings_use_the_long_string_marker() {
        let long = "x".repeat(70_000);
        let mut out = BytesMut::new();
        amf_put_value(&mut out, &AmfValue::String(&long));
        assert_eq!(&out[..5], &[AMF0_LONG_STRING, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(out.len(), 5 + 70_000);
    }

    // ---- writer / parser ----

    fn write_sample_file() -> Vec<u8> {
        let mut w = FlvWriter::new(Vec::new(), true, true).unwrap();
        w.write_headers(&headers(true, true)).unwrap();
        w.write_packet(&video_packet(&[0, 0, 0, 2, 0x65, 0x88], 66, 0, true))
            .unwrap();
        w.write_packet(&audio_packet(&[0x21, 0x10], 0)).unwrap();
        w.write_packet(&audio_packet(&[0x21, 0x11], 21)).unwrap();
        w.write_packet(&video_packet(&[0, 0, 0, 1, 0x41], 33, 33, false))
            .unwrap();
        w.write_tag(TAG_VIDEO, 0x0123_4567, &[0x27, 0x02, 0, 0, 0])
            .unwrap();
        w.flush().unwrap();
        let n = w.bytes_written();
        let out = w.into_inner();
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn writer_header_bytes() {
        for (video, audio, flags) in [(true, true, 5), (true, false, 1), (false, true, 4)] {
            let out = FlvWriter::new(Vec::new(), video, audio)
                .unwrap()
                .into_inner();
            assert_eq!(out, [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]);
            let (header, tags) = parse_flv(&out).unwrap();
            assert_eq!(
                header,
                FlvFileHeader {
                    version: 1,
                    has_audio: audio,
                    has_video: video
                }
            );
            assert!(tags.is_empty());
        }
    }

    #[test]
    fn writer_tag_layout_with_extended_timestamp() {
        let mut w = FlvWriter::new(Vec::new(), true, false).unwrap();
        w.write_tag(TAG_VIDEO, 0x1234_5678, &[0xAA, 0xBB, 0xCC])
            .unwrap();
        let out = w.into_inner();
        assert_eq!(
            &out[13..],
            &[
                9, 0x00, 0x00, 0x03, // type, size
                0x34, 0x56, 0x78, 0x12, // timestamp, extension
                0, 0, 0, // stream id
                0xAA, 0xBB, 0xCC, // body
                0, 0, 0, 14, // PreviousTagSize
            ]
        );
        let (_, tags) = parse_flv(&out).unwrap();
        assert_eq!(tags[0].timestamp_ms, 0x1234_5678);

        // Just past the 24-bit range, and the largest timestamp.
        for ts in [0x0100_0000, u32::MAX] {
            let mut w = FlvWriter::new(Vec::new(), false, true).unwrap();
            w.write_tag(TAG_AUDIO, ts, &[1]).unwrap();
            let out = w.into_inner();
            assert_eq!(out[13 + 7], (ts >> 24) as u8);
            assert_eq!(parse_flv(&out).unwrap().1[0].timestamp_ms, ts);
        }
    }

    #[test]
    fn writer_rejects_oversized_bodies_and_bad_timestamps() {
        let mut w = FlvWriter::new(Vec::new(), true, true).unwrap();
        let big = vec![0u8; MAX_TAG_BODY + 1];
        let err = w.write_tag(TAG_VIDEO, 0, &big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = w.write_packet(&audio_packet(&[], 1 << 33)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Nothing was written by the failed calls.
        assert_eq!(w.into_inner().len(), 13);
        // The largest body that fits is accepted.
        let mut w = FlvWriter::new(Vec::new(), true, true).unwrap();
        w.write_tag(TAG_VIDEO, 0, &big[1..]).unwrap();
        let out = w.into_inner();
        assert_eq!(&out[14..17], &[0xFF, 0xFF, 0xFF]);
        assert_eq!(parse_flv(&out).unwrap().1[0].body.len(), MAX_TAG_BODY);
    }

    #[test]
    fn parse_flv_round_trips_writer_output() {
        let out = write_sample_file();
        let (header, tags) = parse_flv(&out).unwrap();
        assert!(header.has_audio && header.has_video);
        let summary: Vec<(u8, u32)> = tags.iter().map(|t| (t.tag_type, t.timestamp_ms)).collect();
        assert_eq!(
            summary,
            [
                (TAG_SCRIPT, 0),
                (TAG_VIDEO, 0),
                (TAG_AUDIO, 0),
                (TAG_VIDEO, 0),
                (TAG_AUDIO, 0),
                (TAG_AUDIO, 21),
                (TAG_VIDEO, 33),
                (TAG_VIDEO, 0x0123_4567),
            ]
        );
        assert_eq!(tags[0].body, on_metadata_body(&headers(true, true)));
        assert_eq!(tags[1].body, video_sequence_header_body(HIGH_RECORD));
        assert_eq!(&tags[2].body[..], &[0xAF, 0x00, 0x11, 0x90]);

        let key = parse_video_tag_body(&tags[3].body).unwrap();
        assert!(key.keyframe);
        assert_eq!(key.composition_time_ms, 66);
        assert_eq!(split_avcc(key.payload).unwrap(), vec![&[0x65, 0x88][..]]);
        let inter = parse_video_tag_body(&tags[6].body).unwrap();
        assert!(!inter.keyframe);
        assert_eq!(inter.composition_time_ms, 0);
        let eos = parse_video_tag_body(&tags[7].body).unwrap();
        assert_eq!(eos.avc_packet_type, AVC_END_OF_SEQUENCE);
        assert!(eos.payload.is_empty());
        assert_eq!(
            parse_audio_tag_body(&tags[5].body).unwrap().payload,
            &[0x21, 0x11]
        );

        // Writing the parsed tags again reproduces the file byte for byte.
        let mut w = FlvWriter::new(Vec::new(), true, true).unwrap();
        for t in &tags {
            w.write_tag(t.tag_type, t.timestamp_ms, &t.body).unwrap();
        }
        assert_eq!(w.into_inner(), out);
    }

    #[test]
    fn parse_flv_every_truncation_is_an_error_or_a_tag_prefix() {
        let out = write_sample_file();
        let (_, all_tags) = parse_flv(&out).unwrap();
        // Lengths at which the file ends cleanly after a PreviousTagSize.
        let mut boundaries = vec![13];
        for t in &all_tags {
            boundaries.push(boundaries.last().unwrap() + TAG_HEADER_LEN + t.body.len() + 4);
        }
        assert_eq!(*boundaries.last().unwrap(), out.len());

        for len in 0..out.len() {
            match parse_flv(&out[..len]) {
                Ok((_, tags)) => {
                    let i = boundaries
                        .iter()
                        .position(|&b| b == len)
                        .unwrap_or_else(|| panic!("truncation at {len} parsed as valid"));
                    assert_eq!(tags, all_tags[..i]);
                }
                Err(e) => {
                    assert!(
                        !boundaries.contains(&len),
                        "clean cut at {len} rejected: {e}"
                    );
                    assert!(matches!(e, FlvError::Truncated { .. }), "at {len}: {e}");
                }
            }
        }
    }

    #[test]
    fn parse_flv_rejects_malformed_headers_and_tags() {
        let out = write_sample_file();

        let mut bad = out.clone();
        bad[0] = b'G';
        assert_eq!(parse_flv(&bad).unwrap_err(), FlvError::BadSignature);

        let mut bad = out.clone();
        bad[3] = 2;
        assert_eq!(
            parse_flv(&bad).unwrap_err(),
            FlvError::UnsupportedVersion(2)
        );

        let mut bad = out.clone();
        bad[5..9].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(parse_flv(&bad).unwrap_err(), FlvError::BadHeaderSize(8));

        let mut bad = out.clone();
        bad[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse_flv(&bad), Err(FlvError::Truncated { .. })));

        let mut bad = out.clone();
        bad[12] = 1; // PreviousTagSize0
        assert!(matches!(
            parse_flv(&bad),
            Err(FlvError::PreviousTagSizeMismatch {
                offset: 9,
                expected: 0,
                found: 1
            })
        ));

        let mut bad = out.clone();
        bad[13] = 7; // first tag type
        assert_eq!(
            parse_flv(&bad).unwrap_err(),
            FlvError::UnknownTagType {
                tag_type: 7,
                offset: 13
            }
        );

        let mut bad = out.clone();
        bad[13] = TAG_VIDEO | 0x20; // filter (encryption) bit
        assert!(matches!(
            parse_flv(&bad),
            Err(FlvError::UnknownTagType { .. })
        ));

        let mut bad = out.clone();
        bad[14..17].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // first tag size
        assert!(matches!(parse_flv(&bad), Err(FlvError::Truncated { .. })));

        let mut bad = out.clone();
        bad[15] ^= 0x01; // first tag one byte shorter than written
        assert!(matches!(
            parse_flv(&bad),
            Err(FlvError::PreviousTagSizeMismatch { .. })
                | Err(FlvError::UnknownTagType { .. })
                | Err(FlvError::Truncated { .. })
        ));

        let mut bad = out.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        assert!(matches!(
            parse_flv(&bad),
            Err(FlvError::PreviousTagSizeMismatch { .. })
        ));

        let mut extra = out.clone();
        extra.push(0);
        assert!(matches!(parse_flv(&extra), Err(FlvError::Truncated { .. })));

        // A header announcing a larger data offset is honoured.
        let mut padded = out[..9].to_vec();
        padded[5..9].copy_from_slice(&12u32.to_be_bytes());
        padded.extend_from_slice(&[0xEE; 3]);
        padded.extend_from_slice(&out[9..]);
        assert_eq!(parse_flv(&padded).unwrap().1, parse_flv(&out).unwrap().1);
    }

    #[test]
    fn parse_flv_survives_garbage() {
        // Deterministic pseudo-random bytes, plain and behind a valid header.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let valid = write_sample_file();
        for round in 0..2000 {
            let len = round % 97;
            let mut data: Vec<u8> = (0..len).map(|_| next()).collect();
            assert!(parse_flv(&data).is_err());
            let mut prefixed = valid[..13].to_vec();
            prefixed.append(&mut data);
            let _ = parse_flv(&prefixed);
            // Flip one byte of a valid file: must not panic, whatever the result.
            let mut flipped = valid.clone();
            let at = usize::from(next()) * 7 % flipped.len();
            flipped[at] ^= next() | 1;
            let _ = parse_flv(&flipped);
            let _ = parse_video_tag_body(&flipped[at..(at + len).min(flipped.len())]);
            let _ = split_avcc(&flipped[at..]);
            let _ = split_annexb(&flipped[at..]);
            let _ = sps_pps_from_annexb(&flipped[at..]);
        }
    }
}
