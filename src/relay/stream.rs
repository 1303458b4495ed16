//! One published stream inside the relay: the codec headers and GOP cache a joining player
//! needs, and the fan-out of live media to every player through bounded queues.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::{mpsc, oneshot};

use super::gop_cache::{GopCache, GopPush, MediaMessage};
use crate::media::MediaKind;

/// Messages a player may have queued before it counts as too slow and is disconnected.
pub const PLAYER_QUEUE_CAPACITY: usize = 512;

/// What a player connection receives from the stream, in order.
#[derive(Clone, Debug)]
pub enum PlayerItem {
    /// The publisher's latest `onMetaData`.
    Metadata(Arc<StreamMetadata>),
    /// A sequence header or a frame.
    Media(MediaMessage),
    /// What a joining player needs first: metadata, sequence headers, then the GOP cache.
    /// Sent as one item so a long GOP never counts against the live queue.
    Backlog(Vec<PlayerItem>),
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
}

#[derive(Debug)]
struct PlayerSlot {
    addr: SocketAddr,
    tx: mpsc::Sender<PlayerItem>,
    kick: Option<oneshot::Sender<Kick>>,
    /// False until the player has been given a keyframe to start from.
    started: bool,
}

/// State of one stream key while its publisher is connected.
#[derive(Debug)]
pub struct Stream {
    /// `app/key`, masked for logs.
    pub display_key: String,
    /// Connection id of the publisher, so only it can feed or end the stream.
    pub publisher_id: u64,
    /// Publisher's address, for stats.
    pub publisher_addr: SocketAddr,
    /// Bytes read from the publisher.
    pub bytes_in: u64,
    /// Video messages received, sequence headers included.
    pub video_packets_in: u64,
    /// Audio messages received, sequence headers included.
    pub audio_packets_in: u64,
    metadata: Option<Arc<StreamMetadata>>,
    video_header: Option<MediaMessage>,
    audio_header: Option<MediaMessage>,
    gop: GopCache,
    players: HashMap<u64, PlayerSlot>,
    queue_capacity: usize,
}

impl Stream {
    /// A stream with no media yet.
    pub fn new(display_key: String, publisher_id: u64, publisher_addr: SocketAddr) -> Self {
        Stream {
            display_key,
            publisher_id,
            publisher_addr,
            bytes_in: 0,
            video_packets_in: 0,
            audio_packets_in: 0,
            metadata: None,
            video_header: None,
            audio_header: None,
            gop: GopCache::default(),
            players: HashMap::new(),
            queue_capacity: PLAYER_QUEUE_CAPACITY,
        }
    }

    /// Overrides the per-player queue bound (tests use tiny queues).
    #[cfg(test)]
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// Number of connected players.
    pub fn viewers(&self) -> usize {
        self.players.len()
    }

    /// Number of messages a player joining now would receive from the GOP cache.
    pub fn gop_cache_packets(&self) -> usize {
        self.gop.len()
    }

    /// Registers a player and queues what it needs to start: metadata, sequence headers and
    /// the current GOP, so its first frame is a keyframe.
    pub fn add_player(&mut self, id: u64, addr: SocketAddr) -> PlayerFeed {
        let (tx, items) = mpsc::channel(self.queue_capacity);
        let (kick_tx, kick) = oneshot::channel();
        let mut backlog = Vec::with_capacity(3 + self.gop.len());
        if let Some(metadata) = &self.metadata {
            backlog.push(PlayerItem::Metadata(metadata.clone()));
        }
        if let Some(header) = &self.video_header {
            backlog.push(PlayerItem::Media(header.clone()));
        }
        if let Some(header) = &self.audio_header {
            backlog.push(PlayerItem::Media(header.clone()));
        }
        backlog.extend(self.gop.messages().iter().cloned().map(PlayerItem::Media));
        // The channel is new and empty, so this cannot fail.
        let _ = tx.try_send(PlayerItem::Backlog(backlog));
        self.players.insert(
            id,
            PlayerSlot {
                addr,
                tx,
                kick: Some(kick_tx),
                started: !self.gop.is_empty(),
            },
        );
        PlayerFeed { items, kick }
    }

    /// Forgets a player; true if it was registered.
    pub fn remove_player(&mut self, id: u64) -> bool {
        self.players.remove(&id).is_some()
    }

    /// Stores new metadata and forwards it to every player.
    pub fn set_metadata(&mut self, metadata: StreamMetadata) {
        let metadata = Arc::new(metadata);
        self.metadata = Some(metadata.clone());
        self.fan_out(PlayerItem::Metadata(metadata), true, false);
    }

    /// Takes one media message from the publisher: updates headers or the GOP cache, then
    /// forwards it to every player that can use it.
    pub fn push_media(&mut self, message: MediaMessage) {
        match message.kind {
            MediaKind::Video => self.video_packets_in += 1,
            MediaKind::Audio => self.audio_packets_in += 1,
        }
        if message.is_sequence_header() {
            match message.kind {
                MediaKind::Video => self.video_header = Some(message.clone()),
                MediaKind::Audio => self.audio_header = Some(message.clone()),
            }
            self.fan_out(PlayerItem::Media(message), true, false);
            return;
        }
        if self.gop.push(&message) == GopPush::Overflowed {
            tracing::warn!(
                stream = %self.display_key,
                "keyframe interval too long: GOP cache over {} messages or {} bytes, \
                 discarded until the next keyframe",
                super::gop_cache::GOP_CACHE_MAX_MESSAGES,
                super::gop_cache::GOP_CACHE_MAX_BYTES
            );
        }
        let keyframe = message.is_keyframe();
        self.fan_out(PlayerItem::Media(message), false, keyframe);
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
            match slot.tx.try_send(item.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        stream = %self.display_key,
                        player = %slot.addr,
                        "player cannot keep up ({} messages queued): disconnecting it",
                        self.queue_capacity
                    );
                    if let Some(kick) = slot.kick.take() {
                        let _ = kick.send(Kick::TooSlow);
                    }
                    gone.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        for id in gone {
            self.players.remove(&id);
        }
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

    fn flatten(item: PlayerItem, out: &mut Vec<PlayerItem>) {
        match item {
            PlayerItem::Backlog(items) => items.into_iter().for_each(|i| flatten(i, out)),
            other => out.push(other),
        }
    }

    fn drain(feed: &mut PlayerFeed) -> Vec<PlayerItem> {
        let mut out = Vec::new();
        while let Ok(item) = feed.items.try_recv() {
            flatten(item, &mut out);
        }
        out
    }

    fn media(items: &[PlayerItem]) -> Vec<(MediaKind, u32, u8)> {
        items
            .iter()
            .filter_map(|i| match i {
                PlayerItem::Media(m) => Some((m.kind, m.timestamp.value, m.data[0])),
                _ => None,
            })
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

        let mut feed = s.add_player(7, addr());
        s.push_media(msg(MediaKind::Audio, 1040, 0xaf, 0x01));
        let items = drain(&mut feed);
        assert!(matches!(items[0], PlayerItem::Metadata(_)));
        assert_eq!(
            media(&items),
            vec![
                (MediaKind::Video, 0, 0x17),
                (MediaKind::Audio, 0, 0xaf),
                (MediaKind::Video, 1000, 0x17),
                (MediaKind::Video, 1033, 0x27),
                (MediaKind::Audio, 1040, 0xaf),
            ]
        );
        assert_eq!(s.video_packets_in, 5);
        assert_eq!(s.audio_packets_in, 3);
    }

    #[test]
    fn player_before_first_keyframe_gets_only_headers() {
        let mut s = Stream::new("live/te**".into(), 1, addr());
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x00));
        let mut feed = s.add_player(7, addr());
        s.push_media(msg(MediaKind::Audio, 0, 0xaf, 0x00));
        s.push_media(msg(MediaKind::Video, 20, 0x27, 0x01));
        s.push_media(msg(MediaKind::Audio, 21, 0xaf, 0x01));
        assert_eq!(
            media(&drain(&mut feed)),
            vec![(MediaKind::Video, 0, 0x17), (MediaKind::Audio, 0, 0xaf)]
        );
        s.push_media(msg(MediaKind::Video, 40, 0x17, 0x01));
        s.push_media(msg(MediaKind::Audio, 41, 0xaf, 0x01));
        assert_eq!(
            media(&drain(&mut feed)),
            vec![(MediaKind::Video, 40, 0x17), (MediaKind::Audio, 41, 0xaf)]
        );
    }

    #[test]
    fn full_queue_disconnects_only_that_player() {
        let mut s = Stream::new("live/te**".into(), 1, addr()).with_queue_capacity(4);
        s.push_media(msg(MediaKind::Video, 0, 0x17, 0x01));
        let mut slow = s.add_player(1, addr());
        let mut fast = s.add_player(2, addr());
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
        let feed = s.add_player(1, addr());
        drop(feed);
        s.push_media(msg(MediaKind::Video, 1, 0x27, 0x01));
        assert_eq!(s.viewers(), 0);
    }
}
