//! The send queue between the encoders and the socket, with the frame-drop policy that keeps
//! it within a delay budget when the link cannot keep up: video goes before audio, frames no
//! one references go first, then whole GOP tails up to the next keyframe, so a viewer never
//! gets a frame whose reference was dropped. Every drop is counted by reason.

use crate::media::{MediaKind, Packet};
use std::collections::VecDeque;

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A video frame no other frame references.
    NonReference,
    /// Video up to the next keyframe, dropped to bring the queue back within budget.
    GopTail,
    /// Video arriving after a drop, discarded until the next keyframe.
    WaitingForKeyframe,
    /// Audio, dropped only when video alone could not bring the queue within budget.
    Audio,
}

/// Drop counters by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub non_reference: u64,
    pub gop_tail: u64,
    pub waiting_for_keyframe: u64,
    pub audio: u64,
}

impl DropCounts {
    /// Video frames dropped for any reason.
    pub fn video(&self) -> u64 {
        self.non_reference + self.gop_tail + self.waiting_for_keyframe
    }

    fn count(&mut self, reason: DropReason) {
        match reason {
            DropReason::NonReference => self.non_reference += 1,
            DropReason::GopTail => self.gop_tail += 1,
            DropReason::WaitingForKeyframe => self.waiting_for_keyframe += 1,
            DropReason::Audio => self.audio += 1,
        }
    }
}

/// A bounded queue of packets waiting for the network: video is kept within the budget,
/// audio within twice the budget.
#[derive(Debug)]
pub struct SendQueue {
    items: VecDeque<Packet>,
    budget_ms: u64,
    bytes: usize,
    need_keyframe: bool,
    keyframe_requested: bool,
    drops: DropCounts,
}

impl SendQueue {
    /// A queue that holds at most `budget_ms` of media.
    pub fn new(budget_ms: u64) -> Self {
        SendQueue {
            items: VecDeque::with_capacity(256),
            budget_ms,
            bytes: 0,
            need_keyframe: false,
            keyframe_requested: false,
            drops: DropCounts::default(),
        }
    }

    /// Adds a packet, then drops what the policy says until the queue is within budget.
    pub fn push(&mut self, p: Packet) {
        if p.kind == MediaKind::Video && self.need_keyframe {
            if !p.keyframe {
                self.drops.count(DropReason::WaitingForKeyframe);
                return;
            }
            self.need_keyframe = false;
        }
        self.bytes += p.data.len();
        self.items.push_back(p);
        while self.delay_ms() > self.budget_ms && self.drop_video_once() {}
        // Audio queued behind video that was already on the wire spans the same time as
        // the dropped video; it goes only past twice the budget, when it is unavoidable.
        while self.delay_ms() > 2 * self.budget_ms && self.drop_audio_once() {}
    }

    /// The next packet to send.
    pub fn pop(&mut self) -> Option<Packet> {
        let p = self.items.pop_front()?;
        self.bytes -= p.data.len();
        Some(p)
    }

    /// Media time waiting in the queue (newest minus oldest timestamp), in ms.
    pub fn delay_ms(&self) -> u64 {
        let mut min = i64::MAX;
        let mut max = i64::MIN;
        for p in &self.items {
            min = min.min(p.dts_ms);
            max = max.max(p.dts_ms);
        }
        if min > max {
            0
        } else {
            (max - min) as u64
        }
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The delay budget in ms.
    pub fn budget_ms(&self) -> u64 {
        self.budget_ms
    }

    /// Drops counted so far.
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// True once after the policy dropped video with no keyframe left in the queue: the
    /// encoder should produce an IDR now rather than at the end of its GOP.
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_requested)
    }

    /// Prepares for a fresh connection: the new session must start on a keyframe, so video
    /// before the first queued keyframe is dropped (and an IDR requested if there is none).
    pub fn restart_at_keyframe(&mut self) {
        match self
            .items
            .iter()
            .position(|p| p.kind == MediaKind::Video && p.keyframe)
        {
            Some(k) => self.remove_video_in(0, k, DropReason::WaitingForKeyframe),
            None => {
                let n = self.items.len();
                self.remove_video_in(0, n, DropReason::WaitingForKeyframe);
                self.need_keyframe = true;
                self.keyframe_requested = true;
            }
        }
    }

    /// One step of the video policy; false when there is no video left to drop.
    fn drop_video_once(&mut self) -> bool {
        // 1. a frame nobody references
        if let Some(i) = self
            .items
            .iter()
            .position(|p| p.kind == MediaKind::Video && p.disposable && !p.keyframe)
        {
            self.remove_at(i, DropReason::NonReference);
            return true;
        }
        // 2. the oldest GOP tail: video from the oldest queued frame up to the next keyframe
        if let Some(first) = self.items.iter().position(|p| p.kind == MediaKind::Video) {
            let next_key = self
                .items
                .iter()
                .enumerate()
                .skip(first + 1)
                .find(|(_, p)| p.kind == MediaKind::Video && p.keyframe)
                .map(|(i, _)| i);
            match next_key {
                Some(k) => self.remove_video_in(first, k, DropReason::GopTail),
                None => {
                    let n = self.items.len();
                    self.remove_video_in(first, n, DropReason::GopTail);
                    self.need_keyframe = true;
                    self.keyframe_requested = true;
                }
            }
            return true;
        }
        false
    }

    /// Drops the oldest audio packet; false when there is none.
    fn drop_audio_once(&mut self) -> bool {
        match self.items.iter().position(|p| p.kind == MediaKind::Audio) {
            Some(i) => {
                self.remove_at(i, DropReason::Audio);
                true
            }
            None => false,
        }
    }

    fn remove_at(&mut self, i: usize, reason: DropReason) {
        if let Some(p) = self.items.remove(i) {
            self.bytes -= p.data.len();
            self.drops.count(reason);
        }
    }

    /// Removes the video packets in positions `from..to`, keeping audio.
    fn remove_video_in(&mut self, from: usize, to: usize, reason: DropReason) {
        let mut i = from;
        let mut end = to.min(self.items.len());
        while i < end {
            if self.items[i].kind == MediaKind::Video {
                self.remove_at(i, reason);
                end -= 1;
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(ms: i64, key: bool, disposable: bool) -> Packet {
        Packet {
            kind: MediaKind::Video,
            data: Bytes::from(vec![0u8; if key { 5000 } else { 1000 }]),
            pts_ms: ms,
            dts_ms: ms,
            keyframe: key,
            disposable,
        }
    }

    fn audio(ms: i64) -> Packet {
        Packet {
            kind: MediaKind::Audio,
            data: Bytes::from(vec![0u8; 300]),
            pts_ms: ms,
            dts_ms: ms,
            keyframe: true,
            disposable: false,
        }
    }

    /// Feeds 30 fps video (keyframe every `gop` frames) plus 21 ms audio for `ms` of media
    /// over a link that carries `link_bytes_per_frame` every 33 ms (0: nothing popped).
    /// Returns what was sent and the largest queue delay seen.
    fn run(
        q: &mut SendQueue,
        ms: i64,
        gop: i64,
        link_bytes_per_frame: usize,
    ) -> (Vec<Packet>, u64) {
        let mut a = 0;
        let mut sent = Vec::new();
        let mut max_delay = 0;
        let mut credit = 0usize;
        for f in 0..(ms / 33) {
            let t = f * 33;
            while a <= t {
                q.push(audio(a));
                a += 21;
            }
            q.push(video(t, f % gop == 0, false));
            max_delay = max_delay.max(q.delay_ms());
            credit += link_bytes_per_frame;
            while link_bytes_per_frame > 0
                && q.items.front().is_some_and(|p| p.data.len() <= credit)
            {
                let p = q.pop().unwrap();
                credit -= p.data.len();
                sent.push(p);
            }
            if q.is_empty() {
                credit = 0;
            }
        }
        (sent, max_delay)
    }

    fn fill(q: &mut SendQueue, ms: i64, gop: i64) {
        run(q, ms, gop, 0);
    }

    /// Checks that every queued non-key video frame follows a keyframe or a frame that
    /// followed one with nothing dropped between (the reference chain is intact).
    fn assert_decodable(sent: &[Packet]) {
        let mut last_video: Option<i64> = None;
        let mut chain_ok = false;
        for p in sent.iter().filter(|p| p.kind == MediaKind::Video) {
            if p.keyframe {
                chain_ok = true;
            } else {
                let gap = last_video.map(|l| p.dts_ms - l).unwrap_or(i64::MAX);
                assert!(
                    chain_ok && gap <= 34,
                    "P frame at {} follows a gap of {gap} ms",
                    p.dts_ms
                );
            }
            last_video = Some(p.dts_ms);
        }
    }

    #[test]
    fn half_rate_link_stays_within_budget_and_keeps_audio() {
        let mut q = SendQueue::new(500);
        // production ~1590 B per 33 ms with keyframes; the link carries 1000
        let (mut sent, max_delay) = run(&mut q, 20_000, 60, 1000);
        assert!(max_delay <= 1000, "delay reached {max_delay} ms");
        assert!(q.drops().video() > 100, "{:?}", q.drops());
        assert_eq!(q.drops().audio, 0, "{:?}", q.drops());
        sent.extend(std::iter::from_fn(|| q.pop()));
        let audio_n = sent.iter().filter(|p| p.kind == MediaKind::Audio).count();
        // audio is pushed up to the last video frame's time
        assert_eq!(audio_n, (20_000 / 33 - 1) * 33 / 21 + 1, "audio was lost");
        assert_decodable(&sent);
        assert!(sent.iter().filter(|p| p.kind == MediaKind::Video).count() > 100);
    }

    #[test]
    fn drops_non_reference_frames_first() {
        let mut q = SendQueue::new(200);
        for f in 0..20i64 {
            // every other frame is disposable (like B-frames)
            q.push(video(f * 33, f == 0, f % 2 == 1));
        }
        let d = q.drops();
        // every disposable frame queued before the overflow went before any reference frame
        assert!(d.non_reference >= 4, "{d:?}");
        let left: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        let first_ref_drop_at = left.first().map(|p| p.dts_ms).unwrap_or(0);
        assert!(left
            .iter()
            .all(|p| !p.disposable || p.dts_ms >= first_ref_drop_at));
        assert!(q.delay_ms() <= 200);
    }

    #[test]
    fn drops_gop_tail_and_waits_for_keyframe() {
        let mut q = SendQueue::new(300);
        // one long GOP without a second keyframe: everything must go, then wait for a key
        for f in 0..15i64 {
            q.push(video(f * 33, f == 0, false));
        }
        assert!(q.take_keyframe_request(), "no IDR requested");
        assert!(!q.take_keyframe_request(), "request must be taken once");
        let before = q.drops().waiting_for_keyframe;
        q.push(video(600, false, false));
        assert_eq!(q.drops().waiting_for_keyframe, before + 1);
        q.push(video(633, true, false));
        q.push(video(666, false, false));
        let sent: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_decodable(&sent);
        assert!(sent.iter().any(|p| p.keyframe && p.dts_ms == 633));
    }

    #[test]
    fn restart_begins_at_a_keyframe() {
        let mut q = SendQueue::new(10_000);
        fill(&mut q, 3000, 45); // keyframes at 0 and 1485 ms
                                // the first GOP was partly sent before the connection broke
        for _ in 0..20 {
            q.pop();
        }
        q.restart_at_keyframe();
        let first_video = std::iter::from_fn(|| q.pop())
            .find(|p| p.kind == MediaKind::Video)
            .unwrap();
        assert!(first_video.keyframe);
        assert_eq!(first_video.dts_ms, 45 * 33);
    }

    #[test]
    fn audio_only_overflow_drops_oldest_audio() {
        let mut q = SendQueue::new(100);
        for i in 0..50 {
            q.push(audio(i * 21));
        }
        assert!(q.delay_ms() <= 200);
        assert!(q.drops().audio > 0);
        assert_eq!(q.pop().unwrap().dts_ms % 21, 0);
    }
}
