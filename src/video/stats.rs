//! How long the filters take, per stage and per frame, and whether that fits the frame rate:
//! the numbers behind the "can't keep up" warning and its remedy.

use super::settings::Stage;
use std::time::Duration;

/// Where the timings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// GPU timestamp queries around each pass: exact GPU time, no stalls added.
    GpuTimestamps,
    /// Wall-clock time around each stage: exact on the CPU. On a GPU without timestamp
    /// queries, per-stage times need profiling on (each stage then waits for the previous
    /// one); otherwise only the frame time is known, measured from submission to readback,
    /// which with pipelined frames is an upper bound.
    WallClock,
}

/// Time of one stage, smoothed over recent frames.
#[derive(Clone, Debug, PartialEq)]
pub struct StageTime {
    /// Which filter.
    pub stage: Stage,
    /// Exponential moving average over about 16 frames, in milliseconds.
    pub avg_ms: f64,
    /// The most recent frame, in milliseconds.
    pub last_ms: f64,
}

/// Timings of the whole chain.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterStats {
    /// How the times below were measured.
    pub timing: TimingSource,
    /// Frames whose timings were recorded.
    pub frames: u64,
    /// Active stages in processing order.
    pub stages: Vec<StageTime>,
    /// Converting the frame to and from the working format (GPU: unpack and pack passes).
    pub overhead_ms: f64,
    /// Whole chain per frame (smoothed), milliseconds: what must fit in the frame interval.
    pub frame_ms: f64,
    /// Frame width the chain runs at.
    pub width: u32,
    /// Frame height the chain runs at.
    pub height: u32,
}

const EMA: f64 = 1.0 / 16.0;

fn ema(avg: f64, v: f64, first: bool) -> f64 {
    if first {
        v
    } else {
        avg + (v - avg) * EMA
    }
}

impl FilterStats {
    /// Empty stats for a chain of `stages` on `width`x`height` frames.
    pub fn new(timing: TimingSource, stages: &[Stage], width: u32, height: u32) -> Self {
        FilterStats {
            timing,
            frames: 0,
            stages: stages
                .iter()
                .map(|&stage| StageTime {
                    stage,
                    avg_ms: 0.0,
                    last_ms: 0.0,
                })
                .collect(),
            overhead_ms: 0.0,
            frame_ms: 0.0,
            width,
            height,
        }
    }

    /// Records one frame: a time per stage (same order as `stages`), the conversion
    /// overhead, and the whole frame (`None`: the sum of the others).
    pub(crate) fn record(
        &mut self,
        per_stage: &[Duration],
        overhead: Duration,
        frame: Option<Duration>,
    ) {
        let first = self.frames == 0;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        for (s, d) in self.stages.iter_mut().zip(per_stage) {
            s.last_ms = ms(*d);
            s.avg_ms = ema(s.avg_ms, s.last_ms, first);
        }
        self.overhead_ms = ema(self.overhead_ms, ms(overhead), first);
        let total = frame.unwrap_or_else(|| per_stage.iter().sum::<Duration>() + overhead);
        self.frame_ms = ema(self.frame_ms, ms(total), first);
        self.frames += 1;
    }

    /// The stage that takes longest on average.
    pub fn heaviest(&self) -> Option<&StageTime> {
        self.stages
            .iter()
            .max_by(|a, b| a.avg_ms.total_cmp(&b.avg_ms))
    }

    /// `None` while the chain fits in a frame interval at `fps`; otherwise what is over and
    /// what to do about it.
    pub fn over_budget(&self, fps: f64) -> Option<BudgetWarning> {
        if self.frames == 0 || fps <= 0.0 {
            return None;
        }
        let budget_ms = 1000.0 / fps;
        (self.frame_ms > budget_ms).then(|| BudgetWarning {
            frame_ms: self.frame_ms,
            budget_ms,
            fps,
            width: self.width,
            height: self.height,
            heaviest: self.heaviest().map(|s| (s.stage, s.avg_ms)),
        })
    }
}

/// The chain is slower than the frame rate allows.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetWarning {
    /// What a frame takes (smoothed), milliseconds.
    pub frame_ms: f64,
    /// What a frame may take at `fps`, milliseconds.
    pub budget_ms: f64,
    /// The frame rate checked against.
    pub fps: f64,
    /// Frame width the chain runs at.
    pub width: u32,
    /// Frame height the chain runs at.
    pub height: u32,
    /// The stage to drop first, with its time in milliseconds.
    pub heaviest: Option<(Stage, f64)>,
}

impl std::fmt::Display for BudgetWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "video filters take {:.1} ms per frame but {} fps leaves {:.1} ms",
            self.frame_ms, self.fps, self.budget_ms
        )?;
        if self.height > 720 {
            let w = (self.width as u64 * 720 / self.height as u64) & !1;
            write!(
                f,
                ": process at {w}x720 and upscale to {}x{}",
                self.width, self.height
            )?;
        } else {
            write!(f, ": process at a lower resolution and upscale")?;
        }
        if let Some((stage, ms)) = self.heaviest {
            write!(
                f,
                ", or turn off video_filters.{stage} (the heaviest stage, {ms:.1} ms)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_warning_names_the_remedy() {
        let mut s = FilterStats::new(
            TimingSource::WallClock,
            &[Stage::Denoise, Stage::Smoothing],
            1920,
            1080,
        );
        assert!(s.over_budget(30.0).is_none(), "no frames yet");
        s.record(
            &[Duration::from_millis(5), Duration::from_millis(30)],
            Duration::from_millis(2),
            None,
        );
        assert!((s.frame_ms - 37.0).abs() < 1e-9);
        let w = s.over_budget(30.0).expect("37 ms does not fit 33.3 ms");
        let text = w.to_string();
        assert!(text.contains("1280x720"), "{text}");
        assert!(text.contains("video_filters.smoothing"), "{text}");
        assert!(s.over_budget(25.0).is_none());
    }
}
