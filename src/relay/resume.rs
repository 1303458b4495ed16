//! Keeping a stream's audience through a publisher blip: the grace period a stream outlives
//! its publisher by, and the timestamp continuation that lets viewers carry on when a new
//! publisher takes over the key.
//!
//! A publisher whose connection drops (as opposed to one that ends its stream with
//! `deleteStream`) usually comes back within a second or two: `onair live` reconnects on its
//! own, and so do OBS and most encoders. Closing every viewer at once would make each of them
//! reconnect by hand; instead the stream waits for a new publisher during the grace period.
//! The new publisher's clock may restart at 0 or carry on: either way its timestamps are
//! shifted so that every viewer sees one continuous, monotonic timeline.

use std::time::{Duration, Instant};

/// Default time a stream whose publisher dropped keeps its viewers waiting for a new one, and
/// a player that asks for a stream nobody publishes yet waits for it. nginx-rtmp, SRS and
/// node-media-server likewise keep such players.
pub const PUBLISHER_GRACE: Duration = Duration::from_secs(30);
/// Longest grace period accepted: long enough for any reconnect, short enough that an
/// abandoned viewer does not hold a connection for days.
pub const MAX_PUBLISHER_GRACE_SECS: u64 = 24 * 60 * 60;
/// Milliseconds between the last message of the departed publisher and the first of the new
/// one on the viewers' timeline: about one video frame, so players see a short pause rather
/// than two frames sharing a timestamp.
pub const RESUME_GAP_MS: u32 = 40;

/// `now + grace`, or None when that is beyond what `Instant` can represent (a grace that long
/// simply never ends).
pub fn deadline_after(now: Instant, grace: Duration) -> Option<Instant> {
    now.checked_add(grace)
}

/// Maps each publisher session's timestamps onto the viewers' timeline.
///
/// The first session passes through unchanged. After [`Timeline::new_session`], the new
/// session's anchor — the first message viewers can resume on: its first keyframe, or its
/// first audio frame when it has no video — is placed [`RESUME_GAP_MS`] after the latest
/// timestamp sent so far, and the rest of that session keeps its own spacing from there.
/// Anchoring on the keyframe rather than on whatever comes first matters: an encoder that
/// resumes sending audio at once but video only at its next keyframe would otherwise leave
/// viewers, who resume on that keyframe, with a hole as long as the wait for it. Nothing of a later session is ever stamped at or before the end of the previous one,
/// so a publisher restarting at 0, continuing its clock, or sending a track slightly behind
/// the other all come out monotonic across the switch. Arithmetic wraps like RTMP's 32-bit
/// millisecond timestamps do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Latest timestamp handed to viewers, if any.
    last: Option<u32>,
    /// Added (wrapping) to the current session's timestamps.
    offset: u32,
    /// No timestamp of the current session goes below this (set after a switch).
    floor: Option<u32>,
    /// A new session started and its first media message has not been seen yet.
    rebase: bool,
}

impl Timeline {
    /// A timeline for a stream's first publisher: timestamps pass through unchanged.
    pub fn new() -> Self {
        Timeline::default()
    }

    /// A new publisher took over: its timestamps will continue the timeline from where the
    /// previous one stopped. Nothing changes if nothing was sent yet.
    pub fn new_session(&mut self) {
        if self.last.is_some() {
            self.rebase = true;
        }
    }

    /// Latest timestamp handed to viewers.
    pub fn last(&self) -> Option<u32> {
        self.last
    }

    /// The viewers' timestamp for a message the publisher stamped `ts`; `anchor` says whether
    /// viewers could resume on it (see the type's description). Messages of a new session that
    /// come before its anchor (sequence headers, audio waiting for the keyframe) are placed
    /// where the anchor will be, so they never fix the offset: an encoder may send its headers
    /// at 0 and its frames on a running clock.
    pub fn map(&mut self, ts: u32, anchor: bool) -> u32 {
        if self.rebase {
            let last = self.last.unwrap_or(0);
            let start = last.wrapping_add(RESUME_GAP_MS);
            if !anchor {
                return start;
            }
            self.offset = start.wrapping_sub(ts);
            self.floor = Some(last.wrapping_add(1));
            self.rebase = false;
        }
        let mut out = ts.wrapping_add(self.offset);
        if let Some(floor) = self.floor {
            if before(out, floor) {
                out = floor;
            }
        }
        if self.last.is_none_or(|last| before(last, out)) {
            self.last = Some(out);
        }
        out
    }
}

/// True when `a` comes before `b` on RTMP's wrapping 32-bit clock.
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps (ts, anchor) pairs and returns the outputs.
    fn run(t: &mut Timeline, input: &[(u32, bool)]) -> Vec<u32> {
        input.iter().map(|&(ts, h)| t.map(ts, h)).collect()
    }

    fn monotonic(ts: &[u32]) -> bool {
        ts.windows(2).all(|w| !before(w[1], w[0]))
    }

    #[test]
    fn first_session_passes_through() {
        let mut t = Timeline::new();
        t.new_session();
        assert_eq!(
            run(&mut t, &[(0, false), (0, true), (33, false), (5000, true)]),
            vec![0, 0, 33, 5000]
        );
        assert_eq!(t.last(), Some(5000));
    }

    #[test]
    fn publisher_restarting_at_zero_continues_after_a_small_gap() {
        let mut t = Timeline::new();
        run(&mut t, &[(0, true), (9_000, false), (9_033, false)]);
        t.new_session();
        // Two sequence headers, the keyframe, then audio and a P-frame.
        let out = run(
            &mut t,
            &[(0, false), (0, false), (0, true), (21, false), (33, false)],
        );
        let start = 9_033 + RESUME_GAP_MS;
        assert_eq!(out, vec![start, start, start, start + 21, start + 33]);
    }

    #[test]
    fn publisher_continuing_its_clock_is_not_pushed_into_the_future() {
        let mut t = Timeline::new();
        run(&mut t, &[(60_000, true), (61_000, false)]);
        t.new_session();
        // Headers at 0, then frames on the old clock 2 s later: no 60 s jump either way.
        let out = run(&mut t, &[(0, false), (63_000, true), (63_033, false)]);
        let start = 61_000 + RESUME_GAP_MS;
        assert_eq!(out, vec![start, start, start + 33]);
    }

    #[test]
    fn a_track_behind_the_other_never_goes_back_past_the_switch() {
        let mut t = Timeline::new();
        run(&mut t, &[(1_000, true)]);
        t.new_session();
        // The keyframe at 50 arrives first, then audio at 0 (earlier on the publisher's clock).
        let out = run(&mut t, &[(50, true), (0, false), (60, false)]);
        assert_eq!(out, vec![1_040, 1_001, 1_050]);
        assert!(out.iter().all(|&ts| ts > 1_000));
    }

    #[test]
    fn repeated_switches_stay_monotonic() {
        let mut t = Timeline::new();
        let mut all = Vec::new();
        for session in 0..5u32 {
            t.new_session();
            let base = session * 7_777;
            for i in 0..50u32 {
                all.push(t.map(base + i * 33, i == 3));
            }
        }
        assert!(monotonic(&all), "{all:?}");
        assert_eq!(all[0], 0);
    }

    #[test]
    fn timestamps_wrap_like_rtmp() {
        let mut t = Timeline::new();
        run(&mut t, &[(u32::MAX - 10, true)]);
        t.new_session();
        let out = run(&mut t, &[(0, true), (100, false)]);
        assert_eq!(out, vec![29, 129]);
        assert_eq!(t.last(), Some(129));
    }

    #[test]
    fn switch_before_anything_was_sent_changes_nothing() {
        let mut t = Timeline::new();
        t.new_session();
        assert_eq!(run(&mut t, &[(500, false)]), vec![500]);
    }

    #[test]
    fn audio_sent_while_waiting_for_the_keyframe_does_not_open_a_hole() {
        let mut t = Timeline::new();
        run(&mut t, &[(10_000, true)]);
        t.new_session();
        // Audio resumes at once on a running clock; the keyframe comes 1 s later.
        let out = run(
            &mut t,
            &[
                (20_000, false),
                (20_500, false),
                (21_000, true),
                (21_021, false),
            ],
        );
        let start = 10_000 + RESUME_GAP_MS;
        assert_eq!(out, vec![start, start, start, start + 21]);
    }

    mod stream {
        use std::net::SocketAddr;

        use bytes::Bytes;
        use rml_rtmp::time::RtmpTimestamp;

        use super::super::super::gop_cache::MediaMessage;
        use super::super::super::stream::{PlayerFeed, PlayerItem, Stream, ViewerKind};
        use super::super::super::wire::{FrameKind, SharedFrame};
        use super::super::super::{Relay, RelayConfig, StreamState};
        use super::super::*;
        use crate::media::MediaKind;

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

        /// Headers at `t0`, then a keyframe and a P-frame with audio, as a publisher sends.
        fn publish(s: &mut Stream, t0: u32) {
            s.push_media(msg(MediaKind::Video, t0, 0x17, 0x00));
            s.push_media(msg(MediaKind::Audio, t0, 0xaf, 0x00));
            s.push_media(msg(MediaKind::Video, t0, 0x17, 0x01));
            s.push_media(msg(MediaKind::Audio, t0 + 21, 0xaf, 0x01));
            s.push_media(msg(MediaKind::Video, t0 + 33, 0x27, 0x01));
        }

        fn drain(feed: &mut PlayerFeed) -> Vec<SharedFrame> {
            let mut out = Vec::new();
            while let Ok(item) = feed.items.try_recv() {
                match item {
                    PlayerItem::Backlog(items) => out.extend(items),
                    PlayerItem::Batch(items) => out.extend(items.iter().cloned()),
                    PlayerItem::Frame(f) => out.push(f),
                }
            }
            out
        }

        fn media(items: &[SharedFrame]) -> Vec<(FrameKind, u32, u8, u8)> {
            items
                .iter()
                .filter(|f| f.kind != FrameKind::Metadata)
                .map(|f| (f.kind, f.timestamp, f.body[0], f.body[1]))
                .collect()
        }

        #[test]
        fn viewer_resumes_on_the_new_keyframe_after_new_headers_with_continuous_time() {
            let mut s = Stream::new("live/te**".into(), 1, addr());
            publish(&mut s, 5_000);
            let mut feed = s.add_player(9, addr(), ViewerKind::Rtmp);
            drain(&mut feed);
            s.publisher_left(None);
            assert!(!s.is_live());
            assert_eq!(
                s.gop_cache_packets(),
                0,
                "departed publisher's GOP still cached"
            );
            // A viewer joining now gets no stale pictures.
            let mut late = s.add_player(10, addr(), ViewerKind::Http);
            assert!(media(&drain(&mut late))
                .iter()
                .all(|(_, _, _, b1)| *b1 == 0x00));

            s.resume(2, addr(), true);
            // The new publisher starts at 0 with a P-frame before its keyframe.
            s.push_media(msg(MediaKind::Video, 0, 0x17, 0x00));
            s.push_media(msg(MediaKind::Audio, 0, 0xaf, 0x00));
            s.push_media(msg(MediaKind::Video, 0, 0x27, 0x01));
            s.push_media(msg(MediaKind::Video, 33, 0x17, 0x01));
            s.push_media(msg(MediaKind::Audio, 40, 0xaf, 0x01));
            // Its keyframe lands just after the last frame the viewer got; the P-frame before
            // it is skipped since viewers resume on a keyframe.
            let start = 5_033 + RESUME_GAP_MS;
            for feed in [&mut feed, &mut late] {
                assert_eq!(
                    media(&drain(feed)),
                    vec![
                        (FrameKind::Video, start, 0x17, 0x00),
                        (FrameKind::Audio, start, 0xaf, 0x00),
                        (FrameKind::Video, start, 0x17, 0x01),
                        (FrameKind::Audio, start + 7, 0xaf, 0x01),
                    ]
                );
            }
        }

        #[test]
        fn relay_keeps_viewers_through_a_drop_but_not_through_a_finished_stream() {
            let relay = Relay::new(RelayConfig::default());
            let key = "live/test";
            assert!(relay.start_publish(key, "live/te**".into(), 1, addr(), true));
            let (mut feed, _) = relay.join(key, 5, addr(), ViewerKind::Rtmp).unwrap();
            relay.with_published(key, 1, |s| publish(s, 0));
            drain(&mut feed);

            // Connection lost: the stream waits, shown as such, with no publisher.
            assert!(relay.end_publish(key, 1, false));
            let stats = relay.stats();
            let st = stats.stream(key).unwrap();
            assert_eq!(st.state, StreamState::Waiting);
            assert!(st.publisher.is_none() && st.viewers == 1);
            assert!(st.grace_left_secs.unwrap() > 29.0);
            assert_eq!(st.gop_cache_packets, 0);
            relay.close_abandoned(Instant::now());
            assert!(feed.items.try_recv().is_err(), "viewer closed during grace");

            // A publisher on the same key takes over; a second one is still refused.
            let publishes = relay.publishes();
            assert!(relay.start_publish(key, "live/te**".into(), 2, addr(), true));
            assert!(publishes.has_changed().unwrap());
            assert!(!relay.start_publish(key, "live/te**".into(), 3, addr(), true));
            assert!(relay.with_published(key, 1, |_| ()).is_none());
            relay.with_published(key, 2, |s| publish(s, 0));
            let ts: Vec<u32> = drain(&mut feed).iter().map(|f| f.timestamp).collect();
            assert!(ts.iter().all(|&t| t > 33), "{ts:?}");
            assert_eq!(relay.stats().stream(key).unwrap().state, StreamState::Live);

            // Ending the stream (deleteStream) closes the viewers at once.
            assert!(relay.end_publish(key, 2, true));
            assert!(relay.stats().streams.is_empty());
            drain(&mut feed);
            assert!(matches!(
                feed.items.try_recv(),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
            ));
        }

        #[test]
        fn grace_ends_with_its_deadline_or_its_last_viewer() {
            let relay = Relay::new(RelayConfig::default());
            let key = "live/test";
            relay.start_publish(key, "live/te**".into(), 1, addr(), true);
            let (mut feed, _) = relay.join(key, 5, addr(), ViewerKind::Http).unwrap();
            relay.end_publish(key, 1, false);
            relay.close_abandoned(Instant::now() + PUBLISHER_GRACE - Duration::from_secs(1));
            assert_eq!(relay.stats().streams.len(), 1);
            relay.close_abandoned(Instant::now() + PUBLISHER_GRACE);
            assert!(relay.stats().streams.is_empty());
            drain(&mut feed);
            assert!(matches!(
                feed.items.try_recv(),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
            ));

            // A waiting stream whose last viewer leaves goes at once.
            relay.start_publish(key, "live/te**".into(), 2, addr(), true);
            let _feed = relay.join(key, 6, addr(), ViewerKind::Rtmp).unwrap();
            relay.end_publish(key, 2, false);
            assert_eq!(relay.stats().streams.len(), 1);
            relay.leave(key, 6);
            assert!(relay.stats().streams.is_empty());

            // Without viewers, or without a grace period, a dropped publisher ends the stream.
            relay.start_publish(key, "live/te**".into(), 3, addr(), true);
            relay.end_publish(key, 3, false);
            assert!(relay.stats().streams.is_empty());
            let no_grace = Relay::new(RelayConfig {
                publisher_grace: Duration::ZERO,
                ..RelayConfig::default()
            });
            no_grace.start_publish(key, "live/te**".into(), 1, addr(), true);
            let _feed = no_grace.join(key, 5, addr(), ViewerKind::Rtmp).unwrap();
            no_grace.end_publish(key, 1, false);
            assert!(no_grace.stats().streams.is_empty());
        }
    }

    #[test]
    fn huge_grace_has_no_deadline_instead_of_overflowing() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::from_secs(u64::MAX)).is_none());
        assert!(deadline_after(now, PUBLISHER_GRACE).is_some());
    }
}
