//! One monotonic media clock for the whole stream, so audio and video timestamps share an
//! origin and never jump when the wall clock is adjusted.

use std::time::{Duration, Instant};

/// The stream's time base: milliseconds since the stream started.
#[derive(Clone, Copy, Debug)]
pub struct MediaClock {
    start: Instant,
}

impl MediaClock {
    /// Starts the clock now.
    pub fn start() -> Self {
        MediaClock {
            start: Instant::now(),
        }
    }

    /// Milliseconds elapsed since the stream started.
    pub fn now_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// The instant at which the stream reaches `ms`, for pacing sources.
    pub fn instant_at(&self, ms: f64) -> Instant {
        self.start + Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    /// Sleeps until the stream reaches `ms` (returns at once if that time has passed).
    pub fn sleep_until(&self, ms: f64) {
        let deadline = self.instant_at(ms);
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
}

/// Presentation time of the sample frame `sample_index` at `sample_rate`, in ms.
///
/// Audio time comes from the sample count rather than the clock, so it advances exactly by
/// the audio actually produced and AAC frames never overlap or leave gaps.
pub fn audio_pts_ms(sample_index: u64, sample_rate: u32) -> i64 {
    (sample_index as u128 * 1000 / sample_rate.max(1) as u128) as i64
}

/// Presentation time of video frame `index` at `fps`, in ms, for sources paced by the clock.
pub fn frame_time_ms(index: u64, fps: u32) -> f64 {
    index as f64 * 1000.0 / fps.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_pts_follows_sample_count() {
        assert_eq!(audio_pts_ms(0, 48_000), 0);
        assert_eq!(audio_pts_ms(1024, 48_000), 21);
        assert_eq!(audio_pts_ms(48_000 * 3600, 48_000), 3_600_000);
        // 1000 AAC frames: no cumulative rounding drift
        assert_eq!(audio_pts_ms(1024 * 1000, 48_000), 21_333);
    }

    #[test]
    fn clock_is_monotonic_and_paces() {
        let c = MediaClock::start();
        let a = c.now_ms();
        c.sleep_until(30.0);
        let b = c.now_ms();
        assert!(b >= 30 && b >= a, "a={a} b={b}");
        assert_eq!(frame_time_ms(30, 30), 1000.0);
    }
}
