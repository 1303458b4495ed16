//! The group-of-pictures cache: every media message since the latest video keyframe, so a
//! player that joins mid-stream can start decoding at once instead of waiting for the next
//! keyframe (and never sees an inter frame it cannot decode).

use bytes::Bytes;
use rml_rtmp::time::RtmpTimestamp;

use super::wire::SharedFrame;
use crate::media::MediaKind;

/// Most messages kept in one GOP; beyond this the publisher's keyframe interval is unusable.
pub const GOP_CACHE_MAX_MESSAGES: usize = 1000;
/// Most payload bytes kept in one GOP, so one stream cannot hold more memory than this.
pub const GOP_CACHE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// One FLV audio or video tag body as received from the publisher, shared (not copied)
/// between the cache and every player queue.
#[derive(Clone, Debug)]
pub struct MediaMessage {
    /// Audio or video: they travel as different RTMP message types.
    pub kind: MediaKind,
    /// The publisher's timestamp, forwarded unchanged.
    pub timestamp: RtmpTimestamp,
    /// The FLV tag body exactly as the publisher sent it.
    pub data: Bytes,
}

impl MediaMessage {
    /// A codec set-up message (AVC or AAC sequence header) that players need before any frame.
    pub fn is_sequence_header(&self) -> bool {
        match self.kind {
            MediaKind::Video => is_video_sequence_header(&self.data),
            MediaKind::Audio => is_audio_sequence_header(&self.data),
        }
    }

    /// A video frame a decoder can start from.
    pub fn is_keyframe(&self) -> bool {
        self.kind == MediaKind::Video && is_video_keyframe(&self.data)
    }
}

/// An FLV video tag body carrying the AVCDecoderConfigurationRecord (keyframe, AVC, packet
/// type 0): decoders need it before the first frame.
pub fn is_video_sequence_header(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] == 0x17 && data[1] == 0x00
}

/// An FLV video tag body holding a keyframe (frame type 1) with coded data (AVC packet type 1):
/// the only place a new player can start decoding.
pub fn is_video_keyframe(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] >> 4 == 1 && data[1] == 0x01
}

/// An FLV audio tag body carrying the AAC AudioSpecificConfig (sound format 10, packet type 0).
pub fn is_audio_sequence_header(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] >> 4 == 10 && data[1] == 0x00
}

/// Media since the most recent keyframe, replaced at each keyframe and bounded in size.
#[derive(Debug)]
pub struct GopCache {
    messages: Vec<SharedFrame>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// True until a keyframe is seen (at start, or after the cache overflowed).
    waiting_for_keyframe: bool,
}

/// What [`GopCache::push`] did with a message, so the caller can log overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GopPush {
    /// Kept in the cache.
    Stored,
    /// Dropped: no keyframe yet to start a group from.
    Skipped,
    /// The group grew past its bounds and was discarded until the next keyframe.
    Overflowed,
}

impl Default for GopCache {
    fn default() -> Self {
        GopCache::new(GOP_CACHE_MAX_MESSAGES, GOP_CACHE_MAX_BYTES)
    }
}

impl GopCache {
    /// An empty cache with the given bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        GopCache {
            messages: Vec::new(),
            bytes: 0,
            max_messages,
            max_bytes,
            waiting_for_keyframe: true,
        }
    }

    /// Adds a media message (never a sequence header): a keyframe starts a new group.
    pub fn push(&mut self, message: &SharedFrame) -> GopPush {
        if message.is_keyframe() {
            self.clear();
            self.waiting_for_keyframe = false;
        } else if self.waiting_for_keyframe {
            return GopPush::Skipped;
        }
        self.messages.push(message.clone());
        self.bytes += message.len();
        if self.messages.len() > self.max_messages || self.bytes > self.max_bytes {
            self.clear();
            self.waiting_for_keyframe = true;
            return GopPush::Overflowed;
        }
        GopPush::Stored
    }

    /// The cached group, starting with its keyframe (empty if there is none).
    pub fn messages(&self) -> &[SharedFrame] {
        &self.messages
    }

    /// Number of cached messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when nothing is cached (no keyframe yet, or after an overflow).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Total payload bytes cached.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets the cached group and waits for the next keyframe: the publisher left, and its
    /// last group must not be served to anyone as if it were live.
    pub fn reset(&mut self) {
        self.clear();
        self.waiting_for_keyframe = true;
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::relay::wire::Frame;

    fn video(ts: u32, key: bool, len: usize) -> SharedFrame {
        let mut data = vec![0u8; len.max(2)];
        data[0] = if key { 0x17 } else { 0x27 };
        data[1] = 0x01;
        Frame::media(MediaKind::Video, ts, Bytes::from(data))
    }

    fn audio(ts: u32) -> SharedFrame {
        Frame::media(
            MediaKind::Audio,
            ts,
            Bytes::from_static(&[0xaf, 0x01, 0x21]),
        )
    }

    #[test]
    fn classifies_tags() {
        assert!(is_video_sequence_header(&[0x17, 0x00, 0, 0, 0]));
        assert!(!is_video_sequence_header(&[0x17, 0x01]));
        assert!(is_video_keyframe(&[0x17, 0x01, 0, 0, 0]));
        assert!(!is_video_keyframe(&[0x27, 0x01]));
        assert!(!is_video_keyframe(&[0x17, 0x00]));
        assert!(!is_video_keyframe(&[0x17]));
        assert!(is_audio_sequence_header(&[0xaf, 0x00, 0x12, 0x10]));
        assert!(!is_audio_sequence_header(&[0xaf, 0x01]));
        assert!(!is_audio_sequence_header(&[0x2f, 0x00]));
        assert!(!is_audio_sequence_header(&[]));
    }

    #[test]
    fn waits_for_keyframe_then_restarts_at_each_keyframe() {
        let mut gop = GopCache::default();
        assert_eq!(gop.push(&video(0, false, 10)), GopPush::Skipped);
        assert_eq!(gop.push(&audio(5)), GopPush::Skipped);
        assert!(gop.is_empty());
        assert_eq!(gop.push(&video(33, true, 10)), GopPush::Stored);
        gop.push(&audio(40));
        gop.push(&video(66, false, 10));
        assert_eq!(gop.len(), 3);
        assert!(gop.messages()[0].is_keyframe());
        gop.push(&video(1000, true, 10));
        assert_eq!(gop.len(), 1);
        assert_eq!(gop.messages()[0].timestamp, 1000);
        assert_eq!(gop.bytes(), 10);
    }

    #[test]
    fn overflow_clears_until_next_keyframe() {
        let mut gop = GopCache::new(3, 1 << 20);
        gop.push(&video(0, true, 10));
        gop.push(&video(1, false, 10));
        gop.push(&video(2, false, 10));
        assert_eq!(gop.push(&video(3, false, 10)), GopPush::Overflowed);
        assert!(gop.is_empty());
        assert_eq!(gop.push(&video(4, false, 10)), GopPush::Skipped);
        assert_eq!(gop.push(&video(5, true, 10)), GopPush::Stored);

        let mut gop = GopCache::new(100, 25);
        gop.push(&video(0, true, 10));
        gop.push(&video(1, false, 10));
        assert_eq!(gop.push(&video(2, false, 10)), GopPush::Overflowed);
        assert_eq!(gop.bytes(), 0);
    }
}
