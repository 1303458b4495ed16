//! Live counters shared by every stage and read by the CLI status line and the desktop app:
//! the counters are plain atomics, so writers never block; the state words and events sit behind
//! short locks that the window only ever `try_lock`s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// How many output events (ABR decisions, reconnects) are kept for display.
pub const EVENT_HISTORY: usize = 200;

/// Counters updated by the pipeline stages while live.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames produced by the video source.
    pub frames_in: AtomicU64,
    /// Frames that came out of the video encoder.
    pub frames_encoded: AtomicU64,
    /// Video frames that left through the output.
    pub frames_sent: AtomicU64,
    /// Audio frames (AAC access units) that left through the output.
    pub audio_frames_sent: AtomicU64,
    /// Video frames dropped anywhere (source overrun, queue full).
    pub frames_dropped: AtomicU64,
    /// Audio frames dropped anywhere.
    pub audio_dropped: AtomicU64,
    /// Compressed video bytes sent.
    pub video_bytes: AtomicU64,
    /// Compressed audio bytes sent.
    pub audio_bytes: AtomicU64,
    /// Packets waiting in the output queue right now.
    pub queue_depth: AtomicU64,
    /// Total encode time of video frames in microseconds (for the mean encode time).
    pub encode_us: AtomicU64,
    /// Bytes written to the network by the publisher.
    pub bytes_out: AtomicU64,
    /// Timestamp (ms) of the last video packet sent.
    pub last_video_ms: AtomicI64,
    /// Video bitrate the encoder is asked for now (kbit/s).
    pub target_kbps: AtomicU64,
    /// Media delay waiting to be sent: send queue plus unsent socket bytes (ms).
    pub queue_ms: AtomicU64,
    /// Video frames dropped by the send queue because nobody references them.
    pub drop_non_reference: AtomicU64,
    /// Video frames dropped by the send queue up to the next keyframe.
    pub drop_gop_tail: AtomicU64,
    /// Video frames discarded while waiting for a keyframe (after a drop or a reconnect).
    pub drop_waiting_keyframe: AtomicU64,
    /// Audio frames dropped by the send queue.
    pub drop_audio: AtomicU64,
    /// Successful reconnections.
    pub reconnects: AtomicU64,
    /// The output's state in words ("live", "reconnecting in 2.0 s (attempt 2)", …).
    pub state: Mutex<String>,
    /// The latest output events, oldest first.
    pub events: Mutex<VecDeque<String>>,
    /// What the video comes from now ("camera 0 'Webcam' 1280x720@30 MJPG", "test card …"),
    /// so the status panel shows a camera that fell back to the test card.
    pub video_source: Mutex<String>,
}

/// A copy of the counters at one instant, for computing rates between two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub frames_in: u64,
    pub frames_encoded: u64,
    pub frames_sent: u64,
    pub audio_frames_sent: u64,
    pub frames_dropped: u64,
    pub audio_dropped: u64,
    pub video_bytes: u64,
    pub audio_bytes: u64,
    pub queue_depth: u64,
    pub encode_us: u64,
    pub bytes_out: u64,
    pub target_kbps: u64,
    pub queue_ms: u64,
    pub queue_video_drops: u64,
    pub queue_audio_drops: u64,
    pub reconnects: u64,
}

impl Stats {
    /// Adds `n` to a counter (relaxed: counters need no ordering between them).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            frames_in: r(&self.frames_in),
            frames_encoded: r(&self.frames_encoded),
            frames_sent: r(&self.frames_sent),
            audio_frames_sent: r(&self.audio_frames_sent),
            frames_dropped: r(&self.frames_dropped),
            audio_dropped: r(&self.audio_dropped),
            video_bytes: r(&self.video_bytes),
            audio_bytes: r(&self.audio_bytes),
            queue_depth: r(&self.queue_depth),
            encode_us: r(&self.encode_us),
            bytes_out: r(&self.bytes_out),
            target_kbps: r(&self.target_kbps),
            queue_ms: r(&self.queue_ms),
            queue_video_drops: r(&self.drop_non_reference)
                + r(&self.drop_gop_tail)
                + r(&self.drop_waiting_keyframe),
            queue_audio_drops: r(&self.drop_audio),
            reconnects: r(&self.reconnects),
        }
    }

    /// Sets the state shown to the user.
    pub fn set_state(&self, state: impl Into<String>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state.into();
    }

    /// The state shown to the user.
    pub fn state(&self) -> String {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the description of the current video source.
    pub fn set_video_source(&self, source: impl Into<String>) {
        *self.video_source.lock().unwrap_or_else(|p| p.into_inner()) = source.into();
    }

    /// The description of the current video source.
    pub fn video_source(&self) -> String {
        self.video_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The video source's description, unless a pipeline thread is writing it right now.
    pub fn try_video_source(&self) -> Option<String> {
        self.video_source.try_lock().ok().map(|s| s.clone())
    }

    /// Records an event (bounded history).
    pub fn push_event(&self, event: String) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == EVENT_HISTORY {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The state, unless a pipeline thread is writing it right now (then None): for an
    /// interface, which must never wait on the pipeline.
    pub fn try_state(&self) -> Option<String> {
        self.state.try_lock().ok().map(|s| s.clone())
    }

    /// The recent events, unless a pipeline thread is adding one right now (then None).
    pub fn try_events(&self) -> Option<Vec<String>> {
        self.events
            .try_lock()
            .ok()
            .map(|e| e.iter().cloned().collect())
    }

    /// A copy of the recent events, oldest first.
    pub fn events(&self) -> Vec<String> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().cloned().collect()
    }
}

/// One status line from two snapshots `secs` apart: state, elapsed, fps in/out, kbps (and
/// the encoder's target), encode time, drops, queue delay, reconnects.
pub fn status_line(
    state: &str,
    elapsed_s: f64,
    prev: &Snapshot,
    now: &Snapshot,
    secs: f64,
) -> String {
    let secs = secs.max(1e-3);
    let fps_in = (now.frames_in - prev.frames_in) as f64 / secs;
    let fps_out = (now.frames_sent - prev.frames_sent) as f64 / secs;
    let vkbps = (now.video_bytes - prev.video_bytes) as f64 * 8.0 / 1000.0 / secs;
    let akbps = (now.audio_bytes - prev.audio_bytes) as f64 * 8.0 / 1000.0 / secs;
    let enc = now.frames_encoded - prev.frames_encoded;
    let enc_ms = if enc > 0 {
        (now.encode_us - prev.encode_us) as f64 / enc as f64 / 1000.0
    } else {
        0.0
    };
    let total = elapsed_s as u64;
    format!(
        "{state:<4} {:02}:{:02}:{:02}  fps in {:5.1} out {:5.1}  video {:6.0} kbps (target {})  audio {:4.0} kbps  encode {:4.1} ms  dropped {} video / {} audio  queue {} ms  reconnects {}",
        total / 3600,
        total / 60 % 60,
        total % 60,
        fps_in,
        fps_out,
        vkbps,
        now.target_kbps,
        akbps,
        enc_ms,
        now.frames_dropped + now.queue_video_drops,
        now.audio_dropped + now.queue_audio_drops,
        now.queue_ms,
        now.reconnects
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_computes_rates() {
        let prev = Snapshot::default();
        let now = Snapshot {
            frames_in: 30,
            frames_sent: 29,
            video_bytes: 312_500,
            audio_bytes: 16_000,
            frames_dropped: 1,
            queue_video_drops: 2,
            queue_ms: 40,
            target_kbps: 2500,
            frames_encoded: 30,
            encode_us: 60_000,
            ..Snapshot::default()
        };
        let line = status_line("live", 61.0, &prev, &now, 1.0);
        assert!(line.starts_with("live 00:01:01"), "{line}");
        assert!(line.contains("fps in  30.0 out  29.0"), "{line}");
        assert!(line.contains("video   2500 kbps (target 2500)"), "{line}");
        assert!(line.contains("audio  128 kbps"), "{line}");
        assert!(line.contains("encode  2.0 ms"), "{line}");
        assert!(
            line.contains("dropped 3 video / 0 audio  queue 40 ms"),
            "{line}"
        );
    }
}
