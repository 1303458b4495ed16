//! Limits on what a peer can make the RTMP parser do, checked before the parser sees the bytes.
//!
//! The RTMP session parser trusts message headers: a 12-byte header announcing a 16 MiB message
//! reserves 16 MiB, a zero or gigantic chunk size is accepted, a message whose length changes
//! mid-way makes it panic, and deeply nested AMF0 values recurse until the thread's stack
//! overflows (which aborts the whole process). [`ChunkGuard`] follows the chunk stream exactly
//! as that parser frames it and refuses such input first, so a hostile peer only ever loses
//! its own connection. Both directions use it: the relay on what publishers and players send,
//! the publisher on what a server answers.

use std::collections::HashMap;

/// Largest AMF command or data message (connect, publish, onMetaData, ...) accepted.
pub const MAX_COMMAND_SIZE: usize = 64 * 1024;
/// Deepest AMF0 nesting of objects and arrays accepted in a command or data message.
pub const MAX_AMF_DEPTH: usize = 32;
/// Smallest chunk size a peer may announce. The protocol allows 1, but nothing legitimate
/// uses less than the default 128, and tiny chunks multiply the parsing work per byte.
pub const MIN_CHUNK_SIZE: u32 = 64;
/// Largest chunk size a peer may announce: no message can be longer than 2^24 - 1 bytes, so
/// anything above that is a broken or hostile peer.
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;

/// The parser's initial chunk size, from the RTMP specification.
const INITIAL_CHUNK_SIZE: usize = 128;
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;

/// Why the input was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    /// A message header announces more bytes than allowed for its type.
    #[error("{kind} message of {length} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// "media" or "command".
        kind: &'static str,
        /// Announced length.
        length: usize,
        /// The limit in force.
        limit: usize,
    },
    /// SetChunkSize with a value outside the accepted range.
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    BadChunkSize(u32),
    /// A header that continues a chunk stream that never started.
    #[error("chunk continues chunk stream {0}, which never started")]
    NoPreviousChunk(u32),
    /// Chunks of different messages interleaved, or a length changed mid-message.
    #[error("message length changed in the middle of a message")]
    InconsistentLength,
    /// An AMF0 value nested deeper than [`MAX_AMF_DEPTH`].
    #[error("AMF0 value nested deeper than {MAX_AMF_DEPTH} levels")]
    AmfTooDeep,
    /// A command without its name, transaction id and command object.
    #[error("AMF0 command with only {0} of its 3 required values")]
    ShortCommand(usize),
}

#[derive(Clone, Copy, Debug, Default)]
struct Header {
    csid: u32,
    timestamp_field: u32,
    length: u32,
    type_id: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    BasicHeader,
    Timestamp,
    LengthAndType,
    StreamId,
    ExtendedTimestamp,
    Payload,
}

/// Follows a peer's chunk stream (after the handshake) the way the session parser frames it,
/// and rejects input that would make that parser misbehave.
#[derive(Debug)]
pub struct ChunkGuard {
    chunk_size: usize,
    stage: Stage,
    format: u8,
    header: Header,
    /// Bytes of the header field being read.
    field: [u8; 4],
    field_len: usize,
    field_want: usize,
    previous: HashMap<u32, Header>,
    /// Length of the message being assembled (shared by all chunk streams, as in the parser).
    payload_len: usize,
    /// The first bytes of that message, for AMF and SetChunkSize checks.
    payload_copy: Vec<u8>,
    chunk_remaining: usize,
}

impl Default for ChunkGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkGuard {
    /// A guard for a fresh connection (chunk size 128).
    pub fn new() -> Self {
        ChunkGuard {
            chunk_size: INITIAL_CHUNK_SIZE,
            stage: Stage::BasicHeader,
            format: 0,
            header: Header::default(),
            field: [0; 4],
            field_len: 0,
            field_want: 0,
            previous: HashMap::new(),
            payload_len: 0,
            payload_copy: Vec::new(),
            chunk_remaining: 0,
        }
    }

    /// The chunk size the peer announced last.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Checks `input` up to the end of the first message it completes (or all of it) and
    /// returns how many bytes were checked: feed exactly those to the session parser, act on
    /// its results, then call again with the rest. Audio and video messages may be up to
    /// `max_media` bytes long.
    pub fn feed(&mut self, input: &[u8], max_media: usize) -> Result<usize, GuardError> {
        let mut pos = 0;
        while pos < input.len() {
            if self.stage == Stage::Payload {
                let take = self.chunk_remaining.min(input.len() - pos);
                let room = MAX_COMMAND_SIZE.saturating_sub(self.payload_copy.len());
                self.payload_copy
                    .extend_from_slice(&input[pos..pos + take.min(room)]);
                self.chunk_remaining -= take;
                pos += take;
                if self.chunk_remaining == 0 && self.end_chunk()? {
                    return Ok(pos);
                }
                continue;
            }
            let byte = input[pos];
            pos += 1;
            if self.stage == Stage::BasicHeader {
                if self.field_len == 0 {
                    self.format = byte >> 6;
                    self.field[0] = byte;
                    self.field_len = 1;
                    self.field_want = match byte & 0x3f {
                        0 => 2,
                        1 => 3,
                        _ => 1,
                    };
                } else {
                    self.field[self.field_len] = byte;
                    self.field_len += 1;
                }
                if self.field_len == self.field_want {
                    self.start_chunk()?;
                    if self.stage == Stage::Payload && self.end_chunk_if_empty()? {
                        return Ok(pos);
                    }
                }
                continue;
            }
            self.field[self.field_len] = byte;
            self.field_len += 1;
            if self.field_len == self.field_want {
                self.end_field(max_media)?;
                if self.stage == Stage::Payload && self.end_chunk_if_empty()? {
                    return Ok(pos);
                }
            }
        }
        Ok(pos)
    }

    fn start_chunk(&mut self) -> Result<(), GuardError> {
        let csid = match self.field[0] & 0x3f {
            0 => u32::from(self.field[1]) + 64,
            1 => u32::from(self.field[2]) * 256 + u32::from(self.field[1]) + 64,
            x => u32::from(x),
        };
        self.header = if self.format == 0 {
            Header {
                csid,
                ..Header::default()
            }
        } else {
            self.previous
                .remove(&csid)
                .ok_or(GuardError::NoPreviousChunk(csid))?
        };
        self.field_len = 0;
        self.next_stage_from(Stage::Timestamp);
        Ok(())
    }

    /// Moves to the first stage at or after `stage` that reads bytes with this header format.
    fn next_stage_from(&mut self, mut stage: Stage) {
        loop {
            let want = match stage {
                Stage::Timestamp if self.format < 3 => 3,
                Stage::LengthAndType if self.format < 2 => 4,
                Stage::StreamId if self.format == 0 => 4,
                Stage::ExtendedTimestamp if self.header.timestamp_field >= EXTENDED_TIMESTAMP => 4,
                Stage::Payload => 0,
                Stage::BasicHeader => 0,
                _ => {
                    stage = match stage {
                        Stage::Timestamp => Stage::LengthAndType,
                        Stage::LengthAndType => Stage::StreamId,
                        Stage::StreamId => Stage::ExtendedTimestamp,
                        _ => Stage::Payload,
                    };
                    continue;
                }
            };
            self.stage = stage;
            self.field_want = want;
            self.field_len = 0;
            if stage == Stage::Payload {
                self.begin_payload();
            }
            return;
        }
    }

    fn end_field(&mut self, max_media: usize) -> Result<(), GuardError> {
        let f = self.field;
        match self.stage {
            Stage::Timestamp => {
                self.header.timestamp_field =
                    (u32::from(f[0]) << 16) | (u32::from(f[1]) << 8) | u32::from(f[2]);
                self.next_stage_from(Stage::LengthAndType);
            }
            Stage::LengthAndType => {
                let length = (u32::from(f[0]) << 16) | (u32::from(f[1]) << 8) | u32::from(f[2]);
                let type_id = f[3];
                let (kind, limit) = if matches!(type_id, 8 | 9) {
                    ("media", max_media)
                } else {
                    ("command", MAX_COMMAND_SIZE)
                };
                if length as usize > limit {
                    return Err(GuardError::MessageTooLarge {
                        kind,
                        length: length as usize,
                        limit,
                    });
                }
                self.header.length = length;
                self.header.type_id = type_id;
                self.next_stage_from(Stage::StreamId);
            }
            Stage::StreamId => self.next_stage_from(Stage::ExtendedTimestamp),
            Stage::ExtendedTimestamp => self.next_stage_from(Stage::Payload),
            Stage::BasicHeader | Stage::Payload => {}
        }
        Ok(())
    }

    /// Sizes the chunk the way the parser does.
    fn begin_payload(&mut self) {
        let length = self.header.length as usize;
        let remaining = length.saturating_sub(self.payload_len);
        self.chunk_remaining = if length > self.chunk_size {
            remaining.min(self.chunk_size)
        } else {
            length
        };
    }

    /// Completes a chunk with no payload bytes at once.
    fn end_chunk_if_empty(&mut self) -> Result<bool, GuardError> {
        if self.payload_len > self.header.length as usize {
            return Err(GuardError::InconsistentLength);
        }
        if self.chunk_remaining == 0 {
            return self.end_chunk();
        }
        Ok(false)
    }

    /// A chunk's payload is complete: true if it completed a message.
    fn end_chunk(&mut self) -> Result<bool, GuardError> {
        let length = self.header.length as usize;
        if self.payload_len > length {
            return Err(GuardError::InconsistentLength);
        }
        let chunk = if length > self.chunk_size {
            (length - self.payload_len).min(self.chunk_size)
        } else {
            length
        };
        self.payload_len += chunk;
        if self.payload_len > length {
            // Chunks of another message were interleaved: the parser would mis-frame from here.
            return Err(GuardError::InconsistentLength);
        }
        let complete = self.payload_len == length;
        if complete {
            self.check_message()?;
            self.payload_len = 0;
            self.payload_copy.clear();
        }
        self.previous.insert(self.header.csid, self.header);
        self.stage = Stage::BasicHeader;
        self.field_len = 0;
        Ok(complete)
    }

    fn check_message(&mut self) -> Result<(), GuardError> {
        let data = &self.payload_copy;
        match self.header.type_id {
            1 if data.len() >= 4 => {
                let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
                    return Err(GuardError::BadChunkSize(size));
                }
                self.chunk_size = size as usize;
            }
            15 | 18 => {
                amf0_check(data)?;
            }
            17 | 20 => {
                let body = if self.header.type_id == 17 && data.first() == Some(&0) {
                    &data[1..]
                } else {
                    &data[..]
                };
                // The parser assumes a command has a name, a transaction id and an object.
                if let Some(values) = amf0_check(body)? {
                    if values < 3 {
                        return Err(GuardError::ShortCommand(values));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Where an AMF0 walk stopped.
enum Walk {
    /// The parser would stop here with an error (or at the end): nothing deeper follows.
    Stop,
    /// Nested too deep.
    TooDeep,
}

/// Rejects AMF0 data nested deeper than [`MAX_AMF_DEPTH`], walking it the way the AMF0 parser
/// reads it (so only what the parser would reach counts). Returns how many top-level values
/// the parser would return, or None when it would fail on the data anyway.
pub fn amf0_check(data: &[u8]) -> Result<Option<usize>, GuardError> {
    let mut r = Reader { data, pos: 0 };
    let mut values = 0;
    loop {
        match next_value(&mut r, 0) {
            Ok(true) => values += 1,
            Ok(false) => return Ok(Some(values)),
            Err(Walk::Stop) => return Ok(None),
            Err(Walk::TooDeep) => return Err(GuardError::AmfTooDeep),
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Walk> {
        let end = self.pos.checked_add(n).ok_or(Walk::Stop)?;
        let s = self.data.get(self.pos..end).ok_or(Walk::Stop)?;
        self.pos = end;
        Ok(s)
    }

    /// Up to `n` bytes: the parser reads string bytes without insisting on all of them.
    fn take_some(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.data.len());
    }

    fn u16(&mut self) -> Result<usize, Walk> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<u32, Walk> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reads one value; false at an object-end marker or the end of the data.
fn next_value(r: &mut Reader, depth: usize) -> Result<bool, Walk> {
    let Some(&marker) = r.data.get(r.pos) else {
        return Ok(false);
    };
    r.pos += 1;
    match marker {
        0x09 => Ok(false),
        0x00 => r.take(8).map(|_| true),
        0x01 => r.take(1).map(|_| true),
        0x05 | 0x06 => Ok(true),
        0x02 => {
            let n = r.u16()?;
            r.take_some(n);
            Ok(true)
        }
        0x03 => object(r, depth + 1).map(|_| true),
        0x08 => {
            r.u32()?;
            object(r, depth + 1).map(|_| true)
        }
        0x0A => {
            if depth + 1 > MAX_AMF_DEPTH {
                return Err(Walk::TooDeep);
            }
            let count = r.u32()?;
            for _ in 0..count {
                if !next_value(r, depth + 1)? {
                    break;
                }
            }
            Ok(true)
        }
        _ => Err(Walk::Stop),
    }
}

fn object(r: &mut Reader, depth: usize) -> Result<(), Walk> {
    if depth > MAX_AMF_DEPTH {
        return Err(Walk::TooDeep);
    }
    loop {
        let label = r.u16()?;
        if label == 0 {
            r.take(1)?;
            return Ok(());
        }
        r.take_some(label);
        if !next_value(r, depth)? {
            return Err(Walk::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header0(csid: u8, len: u32, type_id: u8) -> Vec<u8> {
        let mut h = vec![csid, 0, 0, 0];
        h.extend_from_slice(&len.to_be_bytes()[1..]);
        h.push(type_id);
        h.extend_from_slice(&[1, 0, 0, 0]);
        h
    }

    fn feed_all(g: &mut ChunkGuard, mut input: &[u8], max: usize) -> Result<(), GuardError> {
        while !input.is_empty() {
            let n = g.feed(input, max)?;
            input = &input[n..];
        }
        Ok(())
    }

    #[test]
    fn stops_after_each_complete_message() {
        let mut g = ChunkGuard::new();
        let mut input = header0(4, 200, 9);
        input.extend([0u8; 128]);
        input.push(0xC4);
        input.extend([0u8; 72]);
        input.extend(header0(5, 3, 8));
        input.extend([1, 2, 3]);
        let first = g.feed(&input, 1000).unwrap();
        assert_eq!(first, 12 + 128 + 1 + 72);
        let second = g.feed(&input[first..], 1000).unwrap();
        assert_eq!(first + second, input.len());
    }

    #[test]
    fn refuses_oversize_messages_and_bad_chunk_sizes() {
        let mut g = ChunkGuard::new();
        assert!(matches!(
            g.feed(&header0(4, 2_000_000, 9), 1_000_000),
            Err(GuardError::MessageTooLarge { kind: "media", .. })
        ));
        let mut g = ChunkGuard::new();
        assert!(matches!(
            g.feed(&header0(3, 100_000, 20), 1 << 24),
            Err(GuardError::MessageTooLarge {
                kind: "command",
                ..
            })
        ));
        for size in [0u32, 1, 0x7fff_ffff] {
            let mut g = ChunkGuard::new();
            let mut input = header0(2, 4, 1);
            input.extend(size.to_be_bytes());
            assert_eq!(g.feed(&input, 1000), Err(GuardError::BadChunkSize(size)));
        }
        let mut g = ChunkGuard::new();
        let mut input = header0(2, 4, 1);
        input.extend(4096u32.to_be_bytes());
        g.feed(&input, 1000).unwrap();
        assert_eq!(g.chunk_size(), 4096);
    }

    #[test]
    fn refuses_continuations_and_interleaving_the_parser_cannot_follow() {
        let mut g = ChunkGuard::new();
        assert_eq!(
            g.feed(&[0xC3, 1, 2], 1000),
            Err(GuardError::NoPreviousChunk(3))
        );
        // Half of a 200-byte message, then a new 10-byte message on another chunk stream.
        let mut g = ChunkGuard::new();
        let mut input = header0(4, 200, 9);
        input.extend([0u8; 128]);
        input.extend(header0(5, 10, 8));
        input.extend([0u8; 10]);
        assert_eq!(
            feed_all(&mut g, &input, 1000),
            Err(GuardError::InconsistentLength)
        );
    }

    #[test]
    fn refuses_deep_amf_but_accepts_normal_commands() {
        let mut deep = vec![0x02, 0, 4, b'p', b'l', b'a', b'y'];
        for _ in 0..1000 {
            deep.extend([0x03, 0, 1, b'a']);
        }
        assert_eq!(amf0_check(&deep), Err(GuardError::AmfTooDeep));
        let mut arrays = Vec::new();
        for _ in 0..1000 {
            arrays.extend([0x0A, 0, 0, 0, 1]);
        }
        assert_eq!(amf0_check(&arrays), Err(GuardError::AmfTooDeep));
        let connect = rml_rtmp::rml_amf0::serialize(&vec![
            rml_rtmp::rml_amf0::Amf0Value::Utf8String("connect".into()),
            rml_rtmp::rml_amf0::Amf0Value::Number(1.0),
            rml_rtmp::rml_amf0::Amf0Value::Object(
                [(
                    "app".to_string(),
                    rml_rtmp::rml_amf0::Amf0Value::Utf8String("live".into()),
                )]
                .into_iter()
                .collect(),
            ),
        ])
        .unwrap();
        assert_eq!(amf0_check(&connect), Ok(Some(3)));
        assert_eq!(amf0_check(&connect[..connect.len() - 1]), Ok(None));
        assert_eq!(amf0_check(&[0x02, 0, 1, b'x']), Ok(Some(1)));

        let mut g = ChunkGuard::new();
        let mut input = header0(3, deep.len() as u32, 20);
        let mut body = deep.clone();
        body.truncate(MAX_COMMAND_SIZE);
        input.extend(&body[..128]);
        let mut rest = &body[128..];
        while !rest.is_empty() {
            input.push(0xC3);
            let n = rest.len().min(128);
            input.extend(&rest[..n]);
            rest = &rest[n..];
        }
        assert_eq!(feed_all(&mut g, &input, 1000), Err(GuardError::AmfTooDeep));
    }
}
