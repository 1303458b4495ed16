//! One published stream inside the relay: the codec headers and GOP cache a joining player
//! needs, and the fan-out of live media to every player through bounded queues. A stream
//! outlives a publisher whose connection dropped for a grace period (see [`super::resume`]),
//! keeping its players until a new publisher takes over.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::{mpsc, oneshot};

use super::codec::{parse_aac_sequence_header, parse_avc_sequence_header, AacInfo, AvcInfo};
use super::gop_cache::{GopCache, GopPush, MediaMessage};
use super::resume::Timeline;
use super::wire::{Frame, FrameKind, SharedFrame};
use crate::media::MediaKind;

/// Messages a player may have queued before it counts as too slow and is disconnected.
pub const PLAYER_QUEUE_CAPACITY: usize = 512;

/// How a viewer receives the stream, for stats and for picking the right encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewerKind {
    /// An RTMP `play`.
    Rtmp,
    /// An HTTP-FLV download (`GET /APP/KEY.flv`).
    Http,
}

/// What a player connection receives from the stream, in order.
#[derive(Clone, Debug)]
pub enum PlayerItem {
    /// Metadata, a sequence header or a frame.
    Frame(SharedFrame),
    /// What a joining player needs first: metadata, sequence headers, then the GOP cache.
    /// Sent as one item so a long GOP never counts against the live queue.
    Backlog(Vec<SharedFrame>),
    /// Live frames gathered over the merge window, written to the player together.
    Batch(Arc<[SharedFrame]>),
}

/// Why the relay cut a player off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// Its queue filled up: it cannot keep up with the live stream.
    TooSlow,
}

/// The receiving side handed to a player connection when it joins.
#[derive(Debug)]
pub struct PlayerFeed {
    /// Media for this player; closed when the stream ends.
    pub items: mpsc::Receiver<PlayerItem>,
    /// Fires when the relay disconnects this player; dropped unfired when the stream ends.
    pub kick: oneshot::Receiver<Kick>,
    /// The stream's counter of bytes sent to viewers, which the player adds to.
    pub bytes_out: Arc<AtomicU64>,
    /// Whether the stream has video and audio as far as known at join time (FLV header flags).
    pub has_video: bool,
    /// See `has_video`.
    pub has_audio: bool,
}

#[derive(Debug)]
struct PlayerSlot {
    addr: SocketAddr,
    kind: ViewerKind,
    tx: mpsc::Sender<PlayerItem>,
    kick: Option<oneshot::Sender<Kick>>,
    /// False until the player has been given a keyframe to start from.
    started: bool,
}

/// Recent byte counter readings, for bitrates over the last few seconds.
#[derive(Debug, Default)]
struct RateMeter {
    samples: VecDeque<(Instant, u64, u64)>,
}

/// Span over which bitrates are averaged.
const RATE_WINDOW: Duration = Duration::from_secs(5);
const RATE_SAMPLE_EVERY: Duration = Duration::from_millis(500);

impl RateMeter {
    fn record(&mut self, now: Instant, bytes_in: u64, bytes_out: u64) {
        if let Some((last, _, _)) = self.samples.back() {
            if now.duration_since(*last) < RATE_SAMPLE_EVERY {
                return;
            }
        }
        self.samples.push_back((now, bytes_in, bytes_out));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// (in, out) in kbit/s between the oldest sample in the window and now.
    fn rates(&self, now: Instant, bytes_in: u64, bytes_out: u64) -> (f64, f64) {
        let from = self
            .samples
            .iter()
            .find(|(t, _, _)| now.duration_since(*t) <= RATE_WINDOW)
            .or(self.samples.back());
        let Some((t, i, o)) = from else {
            return (0.0, 0.0);
        };
        let secs = now.duration_since(*t).as_secs_f64();
        if secs < 0.2 {
            return (0.0, 0.0);
        }
        let kbps = |delta: u64| delta as f64 * 8.0 / 1000.0 / secs;
        (
            kbps(bytes_in.saturating_sub(*i)),
            kbps(bytes_out.saturating_sub(*o)),
        )
    }
}

/// State of one stream key while it has a publisher, or while its players wait for a new
/// one after the publisher's connection dropped.
#[derive(Debug)]
pub struct Stream {
    /// `app/key`, masked for logs.
    pub display_key: String,
    /// Connection id of the publisher, so only it can feed or end the stream; None while the
    /// stream waits for a publisher to come back.
    pub publisher_id: Option<u64>,
    /// Publisher's address, for stats; None while waiting.
    pub publisher_addr: Option<SocketAddr>,
    /// False when the stream's name is itself a publish key: it is then never listed in full.
    pub listed: bool,
    /// When the current publisher started (or, while waiting, when the last one left).
    pub started_at: Instant,
    /// When the publisher last sent anything: a publisher silent for long whose address
    /// publishes the key again has lost its link (see [`Stream::can_take_over`]).
    last_input: Instant,
    /// While waiting for a publisher: when the wait ends and the players are closed (None: a
    /// grace period too long to represent, which never ends).
    waiting_until: Option<Instant>,
    /// Publisher timestamps mapped onto the players' continuous timeline.
    timeline: Timeline,
    /// Publishers that have fed this stream, the current one included.
    sessions: u32,
    /// The current publisher sent video (a sequence header at least).
    session_has_video: bool,
    /// Bytes read from the publisher.
    pub bytes_in: u64,
    /// Video messages received, sequence headers included.
    pub video_packets_in: u64,
    /// Audio messages received, sequence headers included.
    pub audio_packets_in: u64,
    bytes_out: Arc<AtomicU64>,
    metadata: Option<StreamMetadata>,
    metadata_frame: Option<SharedFrame>,
    video_header: Option<SharedFrame>,
    audio_header: Option<SharedFrame>,
    avc: Option<AvcInfo>,
    aac: Option<AacInfo>,
    gop: GopCache,
    players: HashMap<u64, PlayerSlot>,
    queue_capacity: usize,
    meter: RateMeter,
    /// Live frames not yet handed to players (merged writes), with header/keyframe flags.
    pending: Vec<(SharedFrame, bool, bool)>,
    pending_since: Option<Instant>,
    merge_window: Duration,
}

/// Video parameters of a stream, for stats.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VideoParams {
    /// "h264" when the sequence header says AVC.
    pub codec: String,
    /// Picture width from the SPS, else from metadata.
    pub width: Option<u32>,
    /// Picture height from the SPS, else from metadata.
    pub height: Option<u32>,
    /// Frame rate from metadata.
    pub fps: Option<f64>,
    /// H.264 profile_idc.
    pub profile: Option<u8>,
    /// H.264 level_idc.
    pub level: Option<u8>,
}

/// Audio parameters of a stream, for stats.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AudioParams {
    /// "aac" when the sequence header says AAC.
    pub codec: String,
    /// Samples per second, from the AudioSpecificConfig else metadata.
    pub sample_rate: Option<u32>,
    /// Channels, from the AudioSpecificConfig else metadata.
    pub channels: Option<u32>,
}

impl Stream {
    /// A stream with no media yet.
    pub fn new(display_key: String, publisher_id: u64, publisher_addr: SocketAddr) -> Self {
        Stream {
            display_key,
            publisher_id: Some(publisher_id),
            publisher_addr: Some(publisher_addr),
            listed: true,
            started_at: Instant::now(),
            last_input: Instant::now(),
            waiting_until: None,
            timeline: Timeline::new(),
            sessions: 1,
            session_has_video: false,
            bytes_in: 0,
            video_packets_in: 0,
            audio_packets_in: 0,
            bytes_out: Arc::new(AtomicU64::new(0)),
            metadata: None,
            metadata_frame: None,
            video_header: None,
            audio_header: None,
            avc: None,
            aac: None,
            gop: GopCache::default(),
            players: HashMap::new(),
            queue_capacity: PLAYER_QUEUE_CAPACITY,
            meter: RateMeter::default(),
            pending: Vec::new(),
            pending_since: None,
            merge_window: Duration::ZERO,
        }
    }

    /// Hands live frames to players in batches at most `window` apart instead of one by one:
    /// fewer wake-ups and socket writes per viewer, for up to `window` more latency.
    pub fn with_merge_window(mut self, window: Duration) -> Self {
        self.merge_window = window;
        self
    }

    /// Overrides the per-player queue bound.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// True while a publisher feeds the stream; false during the grace period after it left.
    pub fn is_live(&self) -> bool {
        self.publisher_id.is_some()
    }

    /// Time left before a waiting stream closes its players; None while live (or when the
    /// grace period never ends).
    pub fn grace_left(&self, now: Instant) -> Option<Duration> {
        if self.is_live() {
            return None;
        }
        self.waiting_until
            .map(|until| until.saturating_duration_since(now))
    }

    /// Whether a new publisher from `addr` may take the key from the current one: the same
    /// machine publishing again while its old connection has sent nothing for `silence` is a
    /// publisher reconnecting over a link whose old connection the relay has not seen die yet
    /// (no FIN after a network blip). Refusing it would make the publisher give up on a key it
    /// owns.
    pub fn can_take_over(&self, addr: SocketAddr, silence: Duration) -> bool {
        self.is_live()
            && self.publisher_addr.is_some_and(|a| a.ip() == addr.ip())
            && self.last_input.elapsed() >= silence
    }

    /// The publisher's connection dropped: keep the players, waiting until `until` (None:
    /// forever) for a new publisher. The GOP cache is emptied so nobody is served the departed
    /// publisher's last pictures as if live, and every player will resume on the new
    /// publisher's first keyframe.
    pub fn publisher_left(&mut self, until: Option<Instant>) {
        self.flush();
        self.publisher_id = None;
        self.publisher_addr = None;
        self.started_at = Instant::now();
        self.waiting_until = until;
        self.gop.reset();
        for slot in self.players.values_mut() {
            slot.started = false;
        }
    }

    /// A new publisher took over a waiting stream: its media continues the players'
    /// timeline, and its sequence headers reach them before its first keyframe.
    pub fn resume(&mut self, publisher_id: u64, publisher_addr: SocketAddr, listed: bool) {
        self.publisher_id = Some(publisher_id);
        self.publisher_addr = Some(publisher_addr);
        self.listed = listed;
        self.started_at = Instant::now();
        self.last_input = Instant::now();
        self.waiting_until = None;
        self.timeline.new_session();
        self.sessions = self.sessions.saturating_add(1);
        self.session_has_video = false;
    }

    /// True when a waiting stream is due to go: its grace period is over, or nobody is left
    /// to wait for the publisher.
    pub fn wait_is_over(&self, now: Instant) -> bool {
        !self.is_live()
            && (self.players.is_empty() || self.waiting_until.is_some_and(|until| until <= now))
    }

    /// Number of connected players.
    pub fn viewers(&self) -> usize {
        self.players.len()
    }

    /// Number of connected players of one kind.
    pub fn viewers_of(&self, kind: ViewerKind) -> usize {
        self.players.values().filter(|p| p.kind == kind).count()
    }

    /// Number of messages a player joining now would receive from the GOP cache.
    pub fn gop_cache_packets(&self) -> usize {
        self.gop.len()
    }

    /// Payload bytes in the GOP cache.
    pub fn gop_cache_bytes(&self) -> usize {
        self.gop.bytes()
    }

    /// Bytes sent to all viewers so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Incoming and outgoing bitrates in kbit/s over the last few seconds.
    pub fn bitrates_kbps(&self) -> (f64, f64) {
        self.meter
            .rates(Instant::now(), self.bytes_in, self.bytes_out())
    }

    /// Counts bytes read from the publisher.
    pub fn count_bytes_in(&mut self, n: usize) {
        self.last_input = Instant::now();
        self.bytes_in += n as u64;
        let out = self.bytes_out();
        self.meter.record(Instant::now(), self.bytes_in, out);
    }

    /// Video codec parameters known so far.
    pub fn video_params(&self) -> Option<VideoParams> {
        let meta = self.metadata.as_ref();
        if self.video_header.is_none() && meta.and_then(|m| m.video_codec_id).is_none() {
            return None;
        }
        let codec = match (&self.video_header, meta.and_then(|m| m.video_codec_id)) {
            (Some(h), _) if h.body.first().map(|b| b & 0x0f) == Some(7) => "h264".to_string(),
            (_, Some(7)) => "h264".to_string(),
            (Some(h), _) => format!("flv-codec-{}", h.body.first().map_or(0, |b| b & 0x0f)),
            (None, Some(id)) => format!("flv-codec-{id}"),
            (None, None) => String::new(),
        };
        Some(VideoParams {
            codec,
            width: self
                .avc
                .map(|a| a.width)
                .or(meta.and_then(|m| m.video_width)),
            height: self
                .avc
                .map(|a| a.height)
                .or(meta.and_then(|m| m.video_height)),
            fps: meta
                .and_then(|m| m.video_frame_rate)
                .map(|f| (f64::from(f) * 1000.0).round() / 1000.0),
            profile: self.avc.map(|a| a.profile),
            level: self.avc.map(|a| a.level),
        })
    }

    /// Audio codec parameters known so far.
    pub fn audio_params(&self) -> Option<AudioParams> {
        let meta = self.metadata.as_ref();
        if self.audio_header.is_none() && meta.and_then(|m| m.audio_codec_id).is_none() {
            return None;
        }
        let format = self
            .audio_header
            .as_ref()
            .and_then(|h| h.body.first().map(|b| u32::from(b >> 4)))
            .or(meta.and_then(|m| m.audio_codec_id));
        Some(AudioParams {
            codec: match format {
                Some(10) => "aac".into(),
                Some(2) => "mp3".into(),
                Some(id) => format!("flv-codec-{id}"),
                None => String::new(),
            },
            sample_rate: self
                .aac
                .map(|a| a.sample_rate)
                .or(meta.and_then(|m| m.audio_sample_rate)),
            channels: self
                .aac
                .map(|a| u32::from(a.channels))
                .filter(|c| *c > 0)
                .or(meta.and_then(|m| m.audio_channels))
                .or(meta.and_then(|m| m.audio_is_stereo.map(|s| if s { 2 } else { 1 }))),
        })
    }

    /// Registers a player and queues what it needs to start: metadata, sequence headers and
    /// the current GOP, so its first frame is a keyframe.
    pub fn add_player(&mut self, id: u64, addr: SocketAddr, kind: ViewerKind) -> PlayerFeed {
        // Frames still pending are in the GOP cache already: hand them to the others first so
        // the new player does not get them twice.
        self.flush();
        let (tx, items) = mpsc::channel(self.queue_capacity);
        let (kick_tx, kick) = oneshot::channel();
        let mut backlog = Vec::with_capacity(3 + self.gop.len());
        backlog.extend(self.metadata_frame.iter().cloned());
        backlog.extend(self.video_header.iter().cloned());
        backlog.extend(self.audio_header.iter().cloned());
        backlog.extend(self.gop.messages().iter().cloned());
        // The channel is new and empty, so this cannot fail.
        let _ = tx.try_send(PlayerItem::Backlog(backlog));
        self.players.insert(
            id,
            PlayerSlot {
                addr,
                kind,
                tx,
                kick: Some(kick_tx),
                started: !self.gop.is_empty(),
            },
        );
        let meta = self.metadata.as_ref();
        let mut has_video =
            self.video_header.is_some() || meta.and_then(|m| m.video_codec_id).is_some();
        let mut has_audio =
            self.audio_header.is_some() || meta.and_then(|m| m.audio_codec_id).is_some();
        if !has_video && !has_audio {
            (has_video, has_audio) = (true, true);
        }
        PlayerFeed {
            items,
            kick,
            bytes_out: self.bytes_out.clone(),
            has_video,
            has_audio,
        }
    }

    /// Forgets a player; true if it was registered.
    pub fn remove_player(&mut self, id: u64) -> bool {
        self.players.remove(&id).is_some()
    }

    /// Stores new metadata and forwards it to every player.
    pub fn set_metadata(&mut self, metadata: StreamMetadata) {
        // After a publisher switch, metadata at 0 would step back on the players' timeline.
        let ts = if self.sessions > 1 {
            self.timeline.last().unwrap_or(0)
        } else {
            0
        };
        let frame = Frame::metadata_at(&metadata, ts);
        self.metadata = Some(metadata);
        self.metadata_frame = Some(frame.clone());
        self.dispatch(frame, true, false);
    }

    /// Takes one media message from the publisher: updates headers or the GOP cache, then
    /// forwards it to every player that can use it.
    pub fn push_media(&mut self, message: MediaMessage) {
        match message.kind {
            MediaKind::Video => self.video_packets_in += 1,
            MediaKind::Audio => self.audio_packets_in += 1,
        }
        // A new publisher's timeline starts on what viewers resume on: its first keyframe, or
        // its first audio frame if it sends no video.
        if message.kind == MediaKind::Video {
            self.session_has_video = true;
        }
        let anchor = !message.is_sequence_header()
            && (message.is_keyframe()
                || (message.kind == MediaKind::Audio && !self.session_has_video));
        let ts = self.timeline.map(message.timestamp.value, anchor);
        let frame = Frame::media(message.kind, ts, message.data);
        if frame.is_sequence_header() {
            match frame.kind {
                FrameKind::Video => {
                    self.avc = parse_avc_sequence_header(&frame.body);
                    self.video_header = Some(frame.clone());
                }
                FrameKind::Audio => {
                    self.aac = parse_aac_sequence_header(&frame.body);
                    self.audio_header = Some(frame.clone());
                }
                FrameKind::Metadata => {}
            }
            self.dispatch(frame, true, false);
            return;
        }
        if self.gop.push(&frame) == GopPush::Overflowed {
            tracing::warn!(
                stream = %self.display_key,
                "keyframe interval too long: GOP cache over {} messages or {} bytes, \
                 discarded until the next keyframe",
                super::gop_cache::GOP_CACHE_MAX_MESSAGES,
                super::gop_cache::GOP_CACHE_MAX_BYTES
            );
        }
        let keyframe = frame.is_keyframe();
        self.dispatch(frame, false, keyframe);
    }

    /// Sends a frame to players now, or adds it to the pending batch.
    fn dispatch(&mut self, frame: SharedFrame, header: bool, keyframe: bool) {
        if self.merge_window.is_zero() {
            self.fan_out(PlayerItem::Frame(frame), header, keyframe);
            return;
        }
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.pending.push((frame, header, keyframe));
        self.flush_if_due();
    }

    /// Hands the pending batch to players if it is older than the merge window.
    pub fn flush_if_due(&mut self) {
        if self
            .pending_since
            .is_some_and(|t| t.elapsed() >= self.merge_window)
        {
            self.flush();
        }
    }

    /// Hands the pending batch to players now.
    pub fn flush(&mut self) {
        self.pending_since = None;
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let all: Arc<[SharedFrame]> = pending.iter().map(|(f, _, _)| f.clone()).collect();
        let mut gone = Vec::new();
        for (id, slot) in self.players.iter_mut() {
            let item = if slot.started {
                PlayerItem::Batch(all.clone())
            } else {
                // Not started yet: headers only, until a keyframe.
                let mut own = Vec::new();
                for (frame, header, keyframe) in &pending {
                    if !*header && !slot.started && *keyframe {
                        slot.started = true;
                    }
                    if *header || slot.started {
                        own.push(frame.clone());
                    }
                }
                if own.is_empty() {
                    continue;
                }
                PlayerItem::Batch(own.into())
            };
            if !deliver(&self.display_key, self.queue_capacity, slot, item) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.players.remove(&id);
        }
    }

    /// Queues an item on every player without ever waiting: a player whose queue is full is
    /// disconnected, so one slow viewer never stalls the publisher or the other viewers.
    fn fan_out(&mut self, item: PlayerItem, header: bool, keyframe: bool) {
        let mut gone = Vec::new();
        for (id, slot) in self.players.iter_mut() {
            if !header && !slot.started {
                if !keyframe {
                    continue;
                }
                slot.started = true;
            }
            if !deliver(&self.display_key, self.queue_capacity, slot, item.clone()) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.players.remove(&id);
        }
    }
}

/// Queues `item` for one player without waiting; false if the player is gone or too slow (it
/// is then told so and must be forgotten).
fn deliver(stream: &str, capacity: usize, slot: &mut PlayerSlot, item: PlayerItem) -> bool {
    match slot.tx.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                stream = %stream,
                player = %slot.addr,
                "player cannot keep up ({capacity} items queued): disconnecting it"
            );
            if let Some(kick) = slot.kick.take() {
                let _ = kick.send(Kick::TooSlow);
            }
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rml_rtmp::time::RtmpTimestamp;

    fn addr() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    fn msg(kind: MediaKind, ts: u32, b0: u8, b1: u8) -> MediaMessage {
        MediaMessage {
            kind,
            timestamp: RtmpTimestamp::new(ts),
            data: Bytes::from(vec![b0, b1, 0, 0]),
        }
    }

    fn flatten(item: PlayerItem, out: &mut Vec<SharedFrame>) {
        match item {
            PlayerItem::Backlog(items) => out.extend(items),
            PlayerItem::Batch(items) => out.extend(items.iter().cloned()),
            PlayerItem::Frame(f) => out.push(f),
        }
    }

    fn drain(feed: &mut PlayerFeed) -> Vec<SharedFrame> {
        let mut out = Vec::new();
        while let Ok(item) = feed.items.try_recv() {
            flatten(item, &mut out);
        }
        out
    }

    fn media(items: &[SharedFrame]) -> Vec<(FrameKind, u32, u8)> {
        items
            .iter()
            .filter(|f| f.kind != FrameKind::Metadata)
            .map(|f| (f.kind, f.timestamp, f.body[0]))
            .collect()
    }

    #[test]
    fn joining_player_gets_headers_then_gop_then_live() {
        let mut s = Stream::new("live/te**".into(), 1, addr());
        s.set_metadata(StreamMetadata::new());
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x00));
        s.push_media(msg(MediaKind::Audio, 0, 0xaf, 0x00));
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x01));
        s.push_media(msg(MediaKind::Audio, 10, 0xaf, 0x01));
        s.push_media(msg(MediaKind::Video, 33, 0x27, 0x01));
        s.push_media(msg(MediaKind::Video, 1000, 0x17, 0x01));
        s.push_media(msg(MediaKind::Video, 1033, 0x27, 0x01));
        assert_eq!(s.gop_cache_packets(), 2);

        let mut feed = s.add_player(7, addr(), ViewerKind::Rtmp);
        s.push_media(msg(MediaKind::Audio, 1040, 0xaf, 0x01));
        let items = drain(&mut feed);
        assert_eq!(items[0].kind, FrameKind::Metadata);
        assert_eq!(
            media(&items),
            vec![
                (FrameKind::Video, 0, 0x17),
                (FrameKind::Audio, 0, 0xaf),
                (FrameKind::Video, 1000, 0x17),
                (FrameKind::Video, 1033, 0x27),
                (FrameKind::Audio, 1040, 0xaf),
            ]
        );
        assert_eq!(s.video_packets_in, 5);
        assert_eq!(s.audio_packets_in, 3);
        assert_eq!(s.viewers_of(ViewerKind::Rtmp), 1);
        assert_eq!(s.viewers_of(ViewerKind::Http), 0);
    }

    #[test]
    fn player_before_first_keyframe_gets_only_headers() {
        let mut s = Stream::new("live/te**".into(), 1, addr());
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x00));
        let mut feed = s.add_player(7, addr(), ViewerKind::Http);
        assert!(feed.has_video && !feed.has_audio);
        s.push_media(msg(MediaKind::Audio, 0, 0xaf, 0x00));
        s.push_media(msg(MediaKind::Video, 20, 0x27, 0x01));
        s.push_media(msg(MediaKind::Audio, 21, 0xaf, 0x01));
        assert_eq!(
            media(&drain(&mut feed)),
            vec![(FrameKind::Video, 0, 0x17), (FrameKind::Audio, 0, 0xaf)]
        );
        s.push_media(msg(MediaKind::Video, 40, 0x17, 0x01));
        s.push_media(msg(MediaKind::Audio, 41, 0xaf, 0x01));
        assert_eq!(
            media(&drain(&mut feed)),
            vec![(FrameKind::Video, 40, 0x17), (FrameKind::Audio, 41, 0xaf)]
        );
    }

    #[test]
    fn full_queue_disconnects_only_that_player() {
        let mut s = Stream::new("live/te**".into(), 1, addr()).with_queue_capacity(4);
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x01));
        let mut slow = s.add_player(1, addr(), ViewerKind::Rtmp);
        let mut fast = s.add_player(2, addr(), ViewerKind::Http);
        for ts in 1..=20 {
            s.push_media(msg(MediaKind::Video, ts, 0x27, 0x01));
            drain(&mut fast);
        }
        assert_eq!(s.viewers(), 1);
        assert_eq!(slow.kick.try_recv(), Ok(Kick::TooSlow));
        assert!(fast.kick.try_recv().is_err());
        // The slow player's queue is bounded: backlog plus at most capacity-1 live items.
        let mut n = 0;
        while slow.items.try_recv().is_ok() {
            n += 1;
        }
        assert!(n <= 4, "{n}");
    }

    #[test]
    fn closed_player_is_forgotten() {
        let mut s = Stream::new("live/te**".into(), 1, addr());
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x01));
        let feed = s.add_player(1, addr(), ViewerKind::Rtmp);
        drop(feed);
        s.push_media(msg(MediaKind::Video, 1, 0x27, 0x01));
        assert_eq!(s.viewers(), 0);
    }

    #[test]
    fn codec_parameters_come_from_headers_then_metadata() {
        let mut s = Stream::new("live/te**".into(), 1, addr());
        assert!(s.video_params().is_none() && s.audio_params().is_none());
        let mut meta = StreamMetadata::new();
        meta.video_codec_id = Some(7);
        meta.video_width = Some(640);
        meta.video_height = Some(360);
        meta.video_frame_rate = Some(29.97);
        meta.audio_codec_id = Some(10);
        meta.audio_sample_rate = Some(44100);
        meta.audio_channels = Some(1);
        s.set_metadata(meta);
        let v = s.video_params().unwrap();
        assert_eq!(
            (v.codec.as_str(), v.width, v.height),
            ("h264", Some(640), Some(360))
        );
        assert_eq!(v.fps, Some(29.97));
        s.push_media(MediaMessage {
            kind: MediaKind::Audio,
            timestamp: RtmpTimestamp::new(0),
            data: Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90]),
        });
        let a = s.audio_params().unwrap();
        assert_eq!(
            (a.codec.as_str(), a.sample_rate, a.channels),
            ("aac", Some(48000), Some(2))
        );
    }

    #[test]
    fn merged_batches_keep_order_and_start_late_players_at_a_keyframe() {
        let mut s =
            Stream::new("live/te**".into(), 1, addr()).with_merge_window(Duration::from_secs(3600));
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x00));
        let mut early = s.add_player(1, addr(), ViewerKind::Rtmp);
        s.push_media(msg(MediaKind::Video, 10, 0x27, 0x01));
        s.push_media(msg(MediaKind::Video, 20, 0x17, 0x01));
        s.push_media(msg(MediaKind::Audio, 25, 0xaf, 0x01));
        // Nothing is handed out before the window ends (or a player joins).
        assert_eq!(media(&drain(&mut early)), vec![(FrameKind::Video, 0, 0x17)]);
        let mut late = s.add_player(2, addr(), ViewerKind::Http);
        assert_eq!(
            media(&drain(&mut early)),
            vec![(FrameKind::Video, 20, 0x17), (FrameKind::Audio, 25, 0xaf)]
        );
        s.push_media(msg(MediaKind::Video, 40, 0x27, 0x01));
        s.flush();
        assert_eq!(
            media(&drain(&mut early)),
            vec![(FrameKind::Video, 40, 0x27)]
        );
        // The late player got the GOP once, then the live frame.
        assert_eq!(
            media(&drain(&mut late)),
            vec![
                (FrameKind::Video, 0, 0x17),
                (FrameKind::Video, 20, 0x17),
                (FrameKind::Audio, 25, 0xaf),
                (FrameKind::Video, 40, 0x27),
            ]
        );
    }

    #[test]
    fn rates_are_averaged_over_recent_samples() {
        let mut m = RateMeter::default();
        let t0 = Instant::now();
        m.record(t0, 0, 0);
        m.record(t0 + Duration::from_secs(1), 125_000, 250_000);
        let (i, o) = m.rates(t0 + Duration::from_secs(2), 250_000, 500_000);
        assert!(
            (i - 1000.0).abs() < 1.0 && (o - 2000.0).abs() < 1.0,
            "{i} {o}"
        );
    }
}
