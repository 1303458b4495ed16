//! Decodes what an RTMP publisher sent on one connection (as captured by the proxy) into its
//! media messages, by replaying the bytes into a real rml_rtmp server session.

use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};

/// One message a publisher sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Sent {
    Metadata,
    Video { ts: u32, data: Vec<u8> },
    Audio { ts: u32, data: Vec<u8> },
}

impl Sent {
    /// AVC sequence header (0x17 0x00).
    pub fn is_video_header(&self) -> bool {
        matches!(self, Sent::Video { data, .. } if data.len() > 1 && data[0] == 0x17 && data[1] == 0)
    }
    /// AVC keyframe NALU packet (0x17 0x01).
    pub fn is_keyframe(&self) -> bool {
        matches!(self, Sent::Video { data, .. } if data.len() > 1 && data[0] == 0x17 && data[1] == 1)
    }
    /// AVC inter frame (0x27 0x01).
    pub fn is_inter(&self) -> bool {
        matches!(self, Sent::Video { data, .. } if data.len() > 1 && data[0] == 0x27 && data[1] == 1)
    }
    /// AAC sequence header (0xAF 0x00).
    pub fn is_audio_header(&self) -> bool {
        matches!(self, Sent::Audio { data, .. } if data.len() > 1 && data[0] == 0xAF && data[1] == 0)
    }
}

/// The media messages in a captured client byte stream, in order.
pub fn decode_publisher_bytes(bytes: &[u8]) -> Vec<Sent> {
    // The handshake has a fixed size (c0 + c1 + c2); its echo check cannot be replayed
    // against a new server, so skip it: the chunk stream starts right after.
    const HANDSHAKE: usize = 1 + 1536 + 1536;
    let Some(rest) = bytes.get(HANDSHAKE..) else {
        return Vec::new();
    };
    let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let mut out = Vec::new();
    // Byte by byte until publishing is accepted, so each request is accepted before the
    // commands that depend on it are read; then in larger pieces.
    let mut publishing = false;
    let mut pos = 0;
    while pos < rest.len() {
        let step = if publishing { 4096 } else { 1 };
        let piece = &rest[pos..(pos + step).min(rest.len())];
        pos += piece.len();
        let Ok(results) = session.handle_input(piece) else {
            break;
        };
        for r in results {
            let ServerSessionResult::RaisedEvent(event) = r else {
                continue;
            };
            match event {
                ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                    let _ = session.accept_request(request_id);
                }
                ServerSessionEvent::PublishStreamRequested { request_id, .. } => {
                    let _ = session.accept_request(request_id);
                    publishing = true;
                }
                ServerSessionEvent::StreamMetadataChanged { .. } => out.push(Sent::Metadata),
                ServerSessionEvent::VideoDataReceived {
                    data, timestamp, ..
                } => out.push(Sent::Video {
                    ts: timestamp.value,
                    data: data.to_vec(),
                }),
                ServerSessionEvent::AudioDataReceived {
                    data, timestamp, ..
                } => out.push(Sent::Audio {
                    ts: timestamp.value,
                    data: data.to_vec(),
                }),
                _ => {}
            }
        }
    }
    out
}
