//! Wire framing of relayed messages, made once per message and shared by every viewer: the
//! RTMP chunk headers for RTMP players and the chunked-HTTP FLV tag framing for HTTP-FLV
//! viewers. The payload itself is never copied: each viewer queues reference-counted slices
//! of it between the shared headers, so fan-out costs a few reference counts per viewer.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::StreamMetadata;

use super::gop_cache::{is_audio_sequence_header, is_video_keyframe, is_video_sequence_header};
use super::outbox::Outbox;
use crate::flv::{FlvWriter, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use crate::media::MediaKind;

/// RTMP chunk size the relay sends with (SRS and Node-Media-Server use the same): nearly
/// every message fits in one chunk, so most messages go out as one header and one payload.
pub const CHUNK_SIZE: u32 = 60_000;
/// Message stream id that almost every player gets from its first `createStream`; the shared
/// RTMP headers use it and other ids get headers of their own.
pub const SHARED_STREAM_ID: u32 = 1;
/// Chunk streams for relayed media, distinct from the ones the RTMP session uses (2 to 6) so
/// the session's header compression never depends on bytes written around it.
const CSID_AUDIO: u8 = 7;
const CSID_VIDEO: u8 = 8;
const CSID_DATA: u8 = 9;
/// RTMP message type ids.
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
const TYPE_DATA_AMF0: u8 = 18;
/// Timestamps from this value on travel in the extended timestamp field.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
/// Bytes of an FLV file header plus PreviousTagSize0.
const FLV_FILE_HEADER_LEN: usize = 13;
/// Bytes of an FLV tag header.
const FLV_TAG_HEADER_LEN: usize = 11;

/// What a relayed message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// An FLV video tag body.
    Video,
    /// An FLV audio tag body.
    Audio,
    /// The stream's `onMetaData`.
    Metadata,
}

impl FrameKind {
    fn rtmp_ids(self) -> (u8, u8) {
        match self {
            FrameKind::Audio => (CSID_AUDIO, TYPE_AUDIO),
            FrameKind::Video => (CSID_VIDEO, TYPE_VIDEO),
            FrameKind::Metadata => (CSID_DATA, TYPE_DATA_AMF0),
        }
    }

    fn flv_tag_type(self) -> u8 {
        match self {
            FrameKind::Audio => TAG_AUDIO,
            FrameKind::Video => TAG_VIDEO,
            FrameKind::Metadata => TAG_SCRIPT,
        }
    }
}

/// One relayed message with the framing each kind of viewer needs around it.
#[derive(Debug)]
pub struct Frame {
    /// What the body is.
    pub kind: FrameKind,
    /// The publisher's timestamp in milliseconds, forwarded unchanged.
    pub timestamp: u32,
    /// The FLV tag body (for metadata, the AMF0 `onMetaData` body), as received.
    pub body: Bytes,
    /// All framing in one buffer: RTMP first-chunk header, RTMP continuation header, HTTP
    /// chunk size line with the FLV tag header, then PreviousTagSize and CRLF.
    framing: Bytes,
    rtmp_head: usize,
    rtmp_continuation: usize,
    http_head: usize,
}

/// Frames are shared between the GOP cache and every viewer queue.
pub type SharedFrame = Arc<Frame>;

impl Frame {
    /// Frames an audio or video tag body for every kind of viewer.
    pub fn media(kind: MediaKind, timestamp: u32, body: Bytes) -> SharedFrame {
        let kind = match kind {
            MediaKind::Video => FrameKind::Video,
            MediaKind::Audio => FrameKind::Audio,
        };
        Self::build(kind, timestamp, body)
    }

    /// Frames the publisher's metadata as an `onMetaData` message, timestamp 0.
    pub fn metadata(metadata: &StreamMetadata) -> SharedFrame {
        Self::metadata_at(metadata, 0)
    }

    /// Frames the publisher's metadata at `timestamp`: a stream resumed after a publisher
    /// blip sends the new metadata mid-stream, where timestamp 0 would step back in time.
    pub fn metadata_at(metadata: &StreamMetadata, timestamp: u32) -> SharedFrame {
        Self::build(FrameKind::Metadata, timestamp, on_metadata_body(metadata))
    }

    fn build(kind: FrameKind, timestamp: u32, body: Bytes) -> SharedFrame {
        let mut framing = BytesMut::with_capacity(48);
        rtmp_header(&mut framing, kind, timestamp, SHARED_STREAM_ID, body.len());
        let rtmp_head = framing.len();
        rtmp_continuation(&mut framing, kind, timestamp);
        let rtmp_continuation = framing.len();
        let (tag_header, previous_tag_size) = flv_tag_framing(kind, timestamp, &body);
        let tag_len = FLV_TAG_HEADER_LEN + body.len() + 4;
        framing.put_slice(format!("{tag_len:X}\r\n").as_bytes());
        framing.put_slice(&tag_header);
        let http_head = framing.len();
        framing.put_slice(&previous_tag_size);
        framing.put_slice(b"\r\n");
        Arc::new(Frame {
            kind,
            timestamp,
            body,
            framing: framing.freeze(),
            rtmp_head,
            rtmp_continuation,
            http_head,
        })
    }

    /// Queues this message as RTMP chunks for a player on message stream `stream_id`.
    pub fn push_rtmp(&self, out: &mut Outbox, stream_id: u32) {
        if stream_id == SHARED_STREAM_ID {
            out.push(self.framing.slice(..self.rtmp_head));
        } else {
            let mut head = BytesMut::with_capacity(16);
            rtmp_header(
                &mut head,
                self.kind,
                self.timestamp,
                stream_id,
                self.body.len(),
            );
            out.push(head.freeze());
        }
        let chunk = CHUNK_SIZE as usize;
        let mut start = 0;
        while start < self.body.len() {
            if start > 0 {
                out.push(self.framing.slice(self.rtmp_head..self.rtmp_continuation));
            }
            let end = (start + chunk).min(self.body.len());
            out.push(self.body.slice(start..end));
            start = end;
        }
    }

    /// Queues this message as one FLV tag: inside one HTTP chunk when `chunked`, else bare.
    pub fn push_http(&self, out: &mut Outbox, chunked: bool) {
        let head_start = if chunked {
            self.rtmp_continuation
        } else {
            self.http_head - FLV_TAG_HEADER_LEN
        };
        out.push(self.framing.slice(head_start..self.http_head));
        out.push(self.body.clone());
        let tail_end = if chunked {
            self.framing.len()
        } else {
            self.http_head + 4
        };
        out.push(self.framing.slice(self.http_head..tail_end));
    }

    /// Size of the payload (tag body), for byte counters.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// True when the body is empty (never the case for well-formed media).
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// A codec set-up message (AVC or AAC sequence header) that players need before any frame.
    pub fn is_sequence_header(&self) -> bool {
        match self.kind {
            FrameKind::Video => is_video_sequence_header(&self.body),
            FrameKind::Audio => is_audio_sequence_header(&self.body),
            FrameKind::Metadata => false,
        }
    }

    /// A video frame a decoder can start from.
    pub fn is_keyframe(&self) -> bool {
        self.kind == FrameKind::Video && is_video_keyframe(&self.body)
    }
}

/// The type 0 header of a message's first chunk: absolute timestamp, so the bytes do not
/// depend on what the player received before.
fn rtmp_header(out: &mut BytesMut, kind: FrameKind, timestamp: u32, stream_id: u32, len: usize) {
    let (csid, type_id) = kind.rtmp_ids();
    out.put_u8(csid);
    out.put_slice(&timestamp.min(EXTENDED_TIMESTAMP).to_be_bytes()[1..]);
    // Message lengths are 24-bit; longer bodies never get here (the input side limits them).
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(type_id);
    out.put_u32_le(stream_id);
    if timestamp >= EXTENDED_TIMESTAMP {
        out.put_u32(timestamp);
    }
}

/// The type 3 header of a continuation chunk (repeating an extended timestamp).
fn rtmp_continuation(out: &mut BytesMut, kind: FrameKind, timestamp: u32) {
    out.put_u8(0xC0 | kind.rtmp_ids().0);
    if timestamp >= EXTENDED_TIMESTAMP {
        out.put_u32(timestamp);
    }
}

/// Serializes one message as contiguous RTMP chunks (for tests and one-off uses).
pub fn rtmp_chunks(kind: FrameKind, timestamp: u32, stream_id: u32, body: &[u8]) -> Bytes {
    let frame = Frame::build(kind, timestamp, Bytes::copy_from_slice(body));
    let mut out = Outbox::default();
    frame.push_rtmp(&mut out, stream_id);
    out.concat()
}

/// Collects the first and last bytes of an FLV tag as [`FlvWriter`] writes it, skipping the
/// body in between, so the relay frames tags with the FLV writer without copying payloads.
struct TagFramingRecorder {
    total: usize,
    seen: usize,
    header: [u8; FLV_TAG_HEADER_LEN],
    trailer: [u8; 4],
}

impl Write for TagFramingRecorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for (i, &b) in buf.iter().enumerate() {
            let at = self.seen + i;
            if at < FLV_TAG_HEADER_LEN {
                self.header[at] = b;
            } else if at + 4 >= self.total && at < self.total {
                self.trailer[at + 4 - self.total] = b;
            }
        }
        self.seen += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The 11-byte tag header and the PreviousTagSize that surround `body` in an FLV stream.
fn flv_tag_framing(kind: FrameKind, timestamp: u32, body: &[u8]) -> ([u8; 11], [u8; 4]) {
    let mut tag = TagFramingRecorder {
        total: FLV_TAG_HEADER_LEN + body.len() + 4,
        seen: 0,
        header: [0; FLV_TAG_HEADER_LEN],
        trailer: [0; 4],
    };
    // FlvWriter starts with the file header: drop it, record the tag.
    let mut sink = SkipFirst {
        skip: FLV_FILE_HEADER_LEN,
        inner: &mut tag,
    };
    let written = FlvWriter::new(&mut sink, false, false)
        .and_then(|mut w| w.write_tag(kind.flv_tag_type(), timestamp, body));
    if written.is_err() {
        // Only bodies over 16 MiB fail, and the input side never accepts those.
        return ([0; FLV_TAG_HEADER_LEN], [0; 4]);
    }
    (tag.header, tag.trailer)
}

/// Drops the first `skip` bytes written, passing the rest on.
struct SkipFirst<'a, W: Write> {
    skip: usize,
    inner: &'a mut W,
}

impl<W: Write> Write for SkipFirst<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dropped = self.skip.min(buf.len());
        self.skip -= dropped;
        if dropped < buf.len() {
            self.inner.write_all(&buf[dropped..])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The start of an HTTP-FLV body: the FLV file header and PreviousTagSize0, as one HTTP chunk.
pub fn http_flv_file_header(has_video: bool, has_audio: bool) -> Bytes {
    let mut header = Vec::with_capacity(FLV_FILE_HEADER_LEN);
    // Writing to a Vec cannot fail.
    let _ = FlvWriter::new(&mut header, has_video, has_audio);
    let mut out = BytesMut::with_capacity(header.len() + 8);
    out.put_slice(format!("{:X}\r\n", header.len()).as_bytes());
    out.put_slice(&header);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The end of a chunked HTTP body.
pub const HTTP_LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// AMF0 `onMetaData` with the fields the publisher sent that the relay understood.
fn on_metadata_body(metadata: &StreamMetadata) -> Bytes {
    let mut props = HashMap::new();
    let mut number = |name: &str, value: Option<f64>| {
        if let Some(v) = value {
            props.insert(name.to_string(), Amf0Value::Number(v));
        }
    };
    number("width", metadata.video_width.map(f64::from));
    number("height", metadata.video_height.map(f64::from));
    number("videocodecid", metadata.video_codec_id.map(f64::from));
    number("videodatarate", metadata.video_bitrate_kbps.map(f64::from));
    number("framerate", metadata.video_frame_rate.map(f64::from));
    number("audiocodecid", metadata.audio_codec_id.map(f64::from));
    number("audiodatarate", metadata.audio_bitrate_kbps.map(f64::from));
    number("audiosamplerate", metadata.audio_sample_rate.map(f64::from));
    number("audiochannels", metadata.audio_channels.map(f64::from));
    if let Some(stereo) = metadata.audio_is_stereo {
        props.insert("stereo".into(), Amf0Value::Boolean(stereo));
    }
    if let Some(encoder) = &metadata.encoder {
        props.insert("encoder".into(), Amf0Value::Utf8String(encoder.clone()));
    }
    let values = vec![
        Amf0Value::Utf8String("onMetaData".into()),
        Amf0Value::Object(props),
    ];
    Bytes::from(rml_rtmp::rml_amf0::serialize(&values).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkDeserializer;

    fn deserialize_all(bytes: &[u8]) -> Vec<rml_rtmp::messages::MessagePayload> {
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(CHUNK_SIZE as usize).unwrap();
        let mut out = Vec::new();
        let mut input = bytes;
        while let Some(m) = d.get_next_message(input).unwrap() {
            out.push(m);
            input = &[];
        }
        out
    }

    #[test]
    fn rtmp_chunks_round_trip_through_a_deserializer() {
        let body: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        let mut all = Vec::new();
        for ts in [0u32, 40, 0x00FF_FFFE, 0x0100_0000, 0xFFFF_FFF0] {
            all.extend_from_slice(&rtmp_chunks(FrameKind::Video, ts, 1, &body));
            all.extend_from_slice(&rtmp_chunks(FrameKind::Audio, ts, 3, &body[..10]));
        }
        let messages = deserialize_all(&all);
        assert_eq!(messages.len(), 10);
        for (i, ts) in [0u32, 40, 0x00FF_FFFE, 0x0100_0000, 0xFFFF_FFF0]
            .iter()
            .enumerate()
        {
            let v = &messages[2 * i];
            assert_eq!(v.type_id, 9);
            assert_eq!(v.timestamp.value, *ts);
            assert_eq!(v.message_stream_id, 1);
            assert_eq!(&v.data[..], &body[..]);
            let a = &messages[2 * i + 1];
            assert_eq!(a.type_id, 8);
            assert_eq!(a.message_stream_id, 3);
            assert_eq!(&a.data[..], &body[..10]);
        }
    }

    #[test]
    fn http_chunks_concatenate_into_a_parseable_flv() {
        let mut meta = StreamMetadata::new();
        meta.video_width = Some(320);
        let frames = [
            Frame::metadata(&meta),
            Frame::media(
                MediaKind::Video,
                0,
                Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
            ),
            Frame::media(MediaKind::Audio, 5, Bytes::from_static(&[0xaf, 1, 9])),
        ];
        let mut out = Outbox::default();
        out.push(http_flv_file_header(true, true));
        for f in &frames {
            f.push_http(&mut out, true);
        }
        let chunked = out.concat().to_vec();
        // Undo the chunked transfer coding.
        let mut flv = Vec::new();
        let mut rest = &chunked[..];
        while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
            let len =
                usize::from_str_radix(std::str::from_utf8(&rest[..pos]).unwrap(), 16).unwrap();
            flv.extend_from_slice(&rest[pos + 2..pos + 2 + len]);
            rest = &rest[pos + 4 + len..];
        }
        let (header, tags) = crate::flv::parse_flv(&flv).unwrap();
        assert!(header.has_audio && header.has_video);
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[2].timestamp_ms, 5);
        assert_eq!(&tags[1].body[..], &frames[1].body[..]);

        // HTTP/1.0 bodies are the same tags without the chunk framing.
        let mut out = Outbox::default();
        for f in &frames {
            f.push_http(&mut out, false);
        }
        let mut plain = http_flv_file_header(true, true).to_vec();
        plain.drain(..3);
        plain.truncate(13);
        plain.extend_from_slice(&out.concat());
        assert_eq!(crate::flv::parse_flv(&plain).unwrap().1, tags);
    }
}
