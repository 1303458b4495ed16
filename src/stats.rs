//! Live counters shared by every stage and read by the CLI status line (and later the GUI):
//! plain atomics, so writers never block and readers never lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
        }
    }
}

/// One status line from two snapshots `secs` apart: elapsed, fps in/out, kbps, drops, queue.
pub fn status_line(elapsed_s: f64, prev: &Snapshot, now: &Snapshot, secs: f64) -> String {
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
        "{:02}:{:02}:{:02}  fps in {:5.1} out {:5.1}  video {:6.0} kbps  audio {:4.0} kbps  encode {:4.1} ms  dropped {} video / {} audio  queue {}",
        total / 3600,
        total / 60 % 60,
        total % 60,
        fps_in,
        fps_out,
        vkbps,
        akbps,
        enc_ms,
        now.frames_dropped,
        now.audio_dropped,
        now.queue_depth
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
            queue_depth: 3,
            frames_encoded: 30,
            encode_us: 60_000,
            ..Snapshot::default()
        };
        let line = status_line(61.0, &prev, &now, 1.0);
        assert!(line.starts_with("00:01:01"), "{line}");
        assert!(line.contains("fps in  30.0 out  29.0"), "{line}");
        assert!(line.contains("video   2500 kbps"), "{line}");
        assert!(line.contains("audio  128 kbps"), "{line}");
        assert!(line.contains("encode  2.0 ms"), "{line}");
        assert!(
            line.contains("dropped 1 video / 0 audio  queue 3"),
            "{line}"
        );
    }
}
