//! The last minutes of the stream's numbers, sampled from the pipeline's counters for the
//! stats graphs. Bounded: the oldest samples go first.

use crate::stats::Snapshot;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples kept: ten minutes at one per second.
pub const HISTORY_LEN: usize = 600;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The stream's numbers over one sampling interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Video bitrate actually sent, kbit/s.
    pub video_kbps: f64,
    /// Video bitrate the encoder is asked for, kbit/s.
    pub target_kbps: f64,
    /// Frames per second out of the source.
    pub fps_in: f64,
    /// Frames per second that left through the network.
    pub fps_out: f64,
    /// Mean video encode time, ms.
    pub encode_ms: f64,
    /// Delay waiting to be sent, ms.
    pub queue_ms: f64,
    /// Video frames dropped in this interval before the send queue (source, encoder queue).
    pub dropped_capture: f64,
    /// Video frames dropped by the send queue (network too slow) in this interval.
    pub dropped_network: f64,
    /// Audio frames dropped in this interval.
    pub dropped_audio: f64,
    /// Glass-to-glass latency, ms (NaN when not measured).
    pub latency_ms: f64,
}

/// A bounded series of samples.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<Sample>,
    started: Instant,
    last: Option<(Instant, Snapshot)>,
}

impl Default for History {
    fn default() -> Self {
        History::new(Instant::now())
    }
}

impl History {
    /// An empty history whose time axis starts at `started`.
    pub fn new(started: Instant) -> Self {
        History {
            samples: VecDeque::with_capacity(HISTORY_LEN),
            started,
            last: None,
        }
    }

    /// Offers the counters read at `now`; a sample is added once per [`SAMPLE_EVERY`].
    /// Returns whether one was added.
    pub fn offer(&mut self, now: Instant, snap: Snapshot, latency_ms: Option<f64>) -> bool {
        let Some((at, prev)) = self.last else {
            self.last = Some((now, snap));
            return false;
        };
        let secs = now.duration_since(at).as_secs_f64();
        if secs < SAMPLE_EVERY.as_secs_f64() {
            return false;
        }
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let encoded = d(snap.frames_encoded, prev.frames_encoded);
        let sample = Sample {
            t: now.duration_since(self.started).as_secs_f64(),
            video_kbps: d(snap.video_bytes, prev.video_bytes) * 8.0 / 1000.0 / secs,
            target_kbps: snap.target_kbps as f64,
            fps_in: d(snap.frames_in, prev.frames_in) / secs,
            fps_out: d(snap.frames_sent, prev.frames_sent) / secs,
            encode_ms: if encoded > 0.0 {
                d(snap.encode_us, prev.encode_us) / encoded / 1000.0
            } else {
                0.0
            },
            queue_ms: snap.queue_ms as f64,
            dropped_capture: d(snap.frames_dropped, prev.frames_dropped),
            dropped_network: d(snap.queue_video_drops, prev.queue_video_drops),
            dropped_audio: d(
                snap.audio_dropped + snap.queue_audio_drops,
                prev.audio_dropped + prev.queue_audio_drops,
            ),
            latency_ms: latency_ms.unwrap_or(f64::NAN),
        };
        if self.samples.len() == HISTORY_LEN {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.last = Some((now, snap));
        true
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// `(t, value)` points of one field, for a plot line (unmeasured values left out).
    pub fn series(&self, field: impl Fn(&Sample) -> f64) -> Vec<[f64; 2]> {
        self.samples
            .iter()
            .map(|s| [s.t, field(s)])
            .filter(|p| p[1].is_finite())
            .collect()
    }

    /// Number of samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was taken yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_counter_differences() {
        let t0 = Instant::now();
        let mut h = History::new(t0);
        assert!(!h.offer(t0, Snapshot::default(), None));
        let snap = Snapshot {
            frames_in: 30,
            frames_sent: 28,
            frames_encoded: 30,
            encode_us: 90_000,
            video_bytes: 312_500,
            target_kbps: 2500,
            queue_ms: 40,
            frames_dropped: 1,
            queue_video_drops: 1,
            ..Snapshot::default()
        };
        assert!(!h.offer(t0 + Duration::from_millis(500), snap, None));
        assert!(h.offer(t0 + Duration::from_secs(1), snap, Some(12.5)));
        let s = *h.latest().unwrap();
        assert_eq!(s.fps_in, 30.0);
        assert_eq!(s.fps_out, 28.0);
        assert_eq!(s.video_kbps, 2500.0);
        assert_eq!(s.encode_ms, 3.0);
        assert_eq!(s.dropped_capture, 1.0);
        assert_eq!(s.dropped_network, 1.0);
        assert_eq!(h.series(|s| s.queue_ms), vec![[1.0, 40.0]]);
        assert_eq!(h.series(|s| s.latency_ms), vec![[1.0, 12.5]]);
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::new(t0);
        for i in 0..(HISTORY_LEN as u64 + 50) {
            h.offer(t0 + Duration::from_secs(i), Snapshot::default(), None);
        }
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.samples().next().unwrap().t, 50.0);
    }
}
