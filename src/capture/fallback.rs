//! Keeps the stream on air when the camera goes away: the [`FallbackSource`] plays the camera
//! while it works and switches to the test card, with a clear message, the moment it fails
//! (busy or missing at start, unplugged or stalled mid-stream). The stream is never ended
//! for it: timestamps keep rising and frame numbers keep counting, so the encoder and the
//! viewers only see the picture change.

use super::camera::{CameraRequest, CameraSource};
use super::convert::PixelFormat;
use super::test_card::TestCard;
use super::VideoSource;
use crate::clock::MediaClock;
use crate::config::Settings;
use crate::media::VideoFrame;
use crate::stats::Stats;
use std::sync::Arc;

/// A video source that falls back to the test card when its primary source fails.
pub struct FallbackSource {
    primary: Option<Box<dyn VideoSource>>,
    card: TestCard,
    stats: Arc<Stats>,
    /// Frames handed out so far: output frame numbers continue across the switch.
    next_index: u64,
    last_pts: i64,
    /// Drops counted by a primary that is gone.
    primary_skipped: u64,
}

impl FallbackSource {
    /// Plays `primary`, or `card` once it fails; switches are reported to `stats`.
    pub fn new(primary: Box<dyn VideoSource>, card: TestCard, stats: Arc<Stats>) -> Self {
        stats.set_video_source(primary.describe());
        FallbackSource {
            primary: Some(primary),
            card,
            stats,
            next_index: 0,
            last_pts: -1,
            primary_skipped: 0,
        }
    }

    /// Plays the test card from the start, because the primary could not be opened; `why`
    /// is shown to the user.
    pub fn card_only(card: TestCard, stats: Arc<Stats>, why: &str) -> Self {
        let msg = format!("{why}; streaming the test card instead");
        warn(&stats, &msg);
        stats.set_video_source(card.describe());
        FallbackSource {
            primary: None,
            card,
            stats,
            next_index: 0,
            last_pts: -1,
            primary_skipped: 0,
        }
    }

    /// True once the stream shows the test card.
    pub fn on_fallback(&self) -> bool {
        self.primary.is_none()
    }
}

/// Tells the user (stderr, log, and the stats' events for the status panel).
fn warn(stats: &Stats, msg: &str) {
    eprintln!("warning: {msg}");
    tracing::warn!("{msg}");
    stats.push_event(msg.to_string());
}

impl VideoSource for FallbackSource {
    fn next_frame(&mut self) -> anyhow::Result<VideoFrame> {
        let mut frame = None;
        if let Some(p) = self.primary.as_mut() {
            match p.next_frame() {
                Ok(f) => frame = Some(f),
                Err(e) => {
                    let p = self.primary.take().expect("checked above");
                    self.primary_skipped = p.skipped();
                    warn(
                        &self.stats,
                        &format!(
                            "video source failed: {e:#}; switched to the test card, the stream goes on"
                        ),
                    );
                    self.card.resume_now();
                    self.stats.set_video_source(self.card.describe());
                }
            }
        }
        let mut frame = match frame {
            Some(f) => f,
            None => self.card.next_frame()?,
        };
        frame.pts_ms = frame.pts_ms.max(self.last_pts + 1);
        self.last_pts = frame.pts_ms;
        frame.index = self.next_index;
        self.next_index += 1;
        Ok(frame)
    }

    fn skipped(&self) -> u64 {
        let primary = match &self.primary {
            Some(p) => p.skipped(),
            None => self.primary_skipped,
        };
        primary + self.card.skipped()
    }

    fn describe(&self) -> String {
        match &self.primary {
            Some(p) => p.describe(),
            None => format!("{} (fallback)", self.card.describe()),
        }
    }
}

/// The video source the settings ask for: the test card, or the camera of `sources.camera`
/// wrapped in a [`FallbackSource`] so a busy, missing or failing camera gives the test card
/// instead of ending the stream.
pub fn open_video_source(
    settings: &Settings,
    clock: MediaClock,
    stats: Arc<Stats>,
) -> anyhow::Result<Box<dyn VideoSource>> {
    let v = &settings.video;
    let mut card = TestCard::new(clock, v.width, v.height, v.fps)?;
    if settings.qa.sync_marks {
        card = card.with_sync_marks();
    }
    let Some(device) = settings
        .sources
        .camera
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    else {
        stats.set_video_source(card.describe());
        return Ok(Box::new(card));
    };
    let format = match settings.sources.camera_format.as_deref() {
        Some(f) if !f.trim().is_empty() => Some(PixelFormat::parse(f)?),
        _ => None,
    };
    let req = CameraRequest {
        device: device.to_string(),
        width: v.width,
        height: v.height,
        fps: v.fps,
        format,
    };
    match CameraSource::open(&req, clock) {
        Ok(cam) => {
            eprintln!("camera: {}", cam.describe());
            Ok(Box::new(FallbackSource::new(Box::new(cam), card, stats)))
        }
        Err(e) => Ok(Box::new(FallbackSource::card_only(
            card,
            stats,
            &format!("camera '{device}' is not available: {e:#}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    /// Gives `n` frames with pts 0, 10, 20…, then fails.
    struct Flaky {
        n: u64,
        given: u64,
    }

    impl VideoSource for Flaky {
        fn next_frame(&mut self) -> anyhow::Result<VideoFrame> {
            if self.given == self.n {
                bail!("unplugged");
            }
            self.given += 1;
            Ok(VideoFrame::black(
                64,
                64,
                self.given as i64 * 10,
                100 + self.given,
            ))
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    #[test]
    fn switches_to_the_card_and_keeps_counting() {
        let stats = Arc::new(Stats::default());
        let card = TestCard::new(MediaClock::start(), 64, 64, 100).unwrap();
        let mut src = FallbackSource::new(Box::new(Flaky { n: 3, given: 0 }), card, stats.clone());
        assert_eq!(stats.video_source(), "flaky");
        let frames: Vec<VideoFrame> = (0..6).map(|_| src.next_frame().unwrap()).collect();
        let idx: Vec<u64> = frames.iter().map(|f| f.index).collect();
        assert_eq!(idx, [0, 1, 2, 3, 4, 5]);
        assert!(frames.windows(2).all(|w| w[1].pts_ms > w[0].pts_ms));
        assert!(src.on_fallback());
        assert!(src.describe().contains("test card"));
        assert!(stats.video_source().contains("test card"));
        let events = stats.events.lock().unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.contains("unplugged") && e.contains("test card")),
            "{events:?}"
        );
    }

    #[test]
    fn no_camera_setting_gives_the_plain_card() {
        let stats = Arc::new(Stats::default());
        let src = open_video_source(&Settings::default(), MediaClock::start(), stats).unwrap();
        assert_eq!(src.describe(), "test card 1280x720@30");
    }

    #[test]
    fn a_missing_camera_falls_back_at_start() {
        let stats = Arc::new(Stats::default());
        let mut s = Settings::default();
        s.sources.camera = Some("no-such-camera-here".into());
        let mut src = open_video_source(&s, MediaClock::start(), stats.clone()).unwrap();
        assert!(src.describe().contains("fallback"), "{}", src.describe());
        assert!(src.next_frame().is_ok());
        let events = stats.events.lock().unwrap();
        assert!(
            events.iter().any(|e| e.contains("no-such-camera-here")),
            "{events:?}"
        );
    }
}
