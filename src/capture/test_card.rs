//! The moving test card: colour bars, a bouncing box and a frame counter. It is the default
//! video source and the picture every test checks, so motion and numbering are deterministic.

use super::VideoSource;
use crate::clock::{frame_time_ms, MediaClock};
use crate::media::VideoFrame;

/// BT.601 limited-range Y, U, V of the 75 % SMPTE bars, left to right.
const BARS: [(u8, u8, u8); 7] = [
    (180, 128, 128), // white
    (162, 44, 142),  // yellow
    (131, 156, 44),  // cyan
    (112, 72, 58),   // green
    (84, 184, 198),  // magenta
    (65, 100, 212),  // red
    (35, 212, 114),  // blue
];

/// Segments lit for each digit 0-9 (bits: a b c d e f g = 0..6).
const SEGMENTS: [u8; 10] = [
    0b0111111, 0b0000110, 0b1011011, 0b1001111, 0b1100110, 0b1101101, 0b1111101, 0b0000111,
    0b1111111, 0b1101111,
];

/// Generates the test card at a fixed size and frame rate.
pub struct TestCard {
    width: u32,
    height: u32,
    fps: u32,
    clock: MediaClock,
    background: Vec<u8>,
    /// Two periods of the lower band's luma texture, sliced at a moving offset per row.
    texture: Vec<u8>,
    index: u64,
    skipped: u64,
    paced: bool,
    last_pts: i64,
    /// Flash the first frame of every second ([`TestCard::with_sync_marks`]).
    sync_marks: bool,
    /// The second (pts / 1000) of the last frame, to find the first frame of the next one.
    last_second: i64,
}

/// Luma of the sync flash: the whole frame turns white, so a reader finds it by mean level.
pub const SYNC_FLASH_LUMA: u8 = 235;

impl TestCard {
    /// A card of `width`x`height` (both even, at least 64x64) at `fps`, paced by `clock`.
    pub fn new(clock: MediaClock, width: u32, height: u32, fps: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            width >= 64 && height >= 64 && width.is_multiple_of(2) && height.is_multiple_of(2),
            "test card size {width}x{height} is invalid: width and height must be even and at least 64"
        );
        anyhow::ensure!(
            (1..=240).contains(&fps),
            "frame rate {fps} is invalid: use 1 to 240"
        );
        Ok(TestCard {
            width,
            height,
            fps,
            clock,
            background: draw_background(width, height),
            texture: texture(width as usize),
            index: 0,
            skipped: 0,
            paced: true,
            last_pts: -1,
            sync_marks: false,
            last_second: -1,
        })
    }

    /// Generates frames as fast as asked (benchmarks, offline tests).
    pub fn unpaced(mut self) -> Self {
        self.paced = false;
        self
    }

    /// Turns the whole frame white on the first frame of every second of the media clock
    /// (pts 0, the first at or after 1000 ms, …), to line up with the tone's beeps
    /// ([`super::tone::Tone::with_sync_marks`]) so `onair probe` can measure the A/V offset.
    pub fn with_sync_marks(mut self) -> Self {
        self.sync_marks = true;
        self
    }

    /// Continues with the frame due now instead of catching up from where the card stopped,
    /// for a card that takes over from another source mid-stream (no false skip count).
    pub fn resume_now(&mut self) {
        if self.paced {
            let now = self.clock.now_ms().max(0) as u64;
            let due = (now * self.fps as u64).div_ceil(1000);
            self.index = self.index.max(due);
        }
    }

    /// Draws frame `index` with the given pts.
    pub fn render(&self, index: u64, pts_ms: i64) -> VideoFrame {
        let mut frame = VideoFrame {
            width: self.width,
            height: self.height,
            data: self.background.clone(),
            pts_ms,
            index,
        };
        let (w, h) = (self.width as usize, self.height as usize);
        // Lower band: a textured diagonal ramp scrolling 4 px per frame, so every frame has
        // real motion and detail for the encoder (like FFmpeg's testsrc2).
        let bar_h = (h * 2 / 3) & !1;
        for y in bar_h..h {
            let offset = (index as usize * 4 + y) % w;
            frame.data[y * w..(y + 1) * w].copy_from_slice(&self.texture[offset..offset + w]);
        }
        // Box bouncing left-right across the lower band, one period every 4 s.
        let size = ((h / 6).max(8) & !1).min(w & !1);
        let travel = w - size;
        let period = (self.fps as u64 * 4).max(2);
        let t = index % period;
        let half = period / 2;
        let pos = if t < half { t } else { period - t };
        let x = ((pos as usize * travel) / half as usize) & !1;
        let y = (h * 2 / 3 + (h / 3).saturating_sub(size) / 2) & !1;
        fill_rect(&mut frame, x, y, size, size, (235, 128, 128));
        // Frame counter, top-left of the lower band.
        let digit_h = (h / 10).max(10);
        draw_number(&mut frame, index, w / 40 + 2, h * 2 / 3 + 4, digit_h);
        frame
    }
}

impl VideoSource for TestCard {
    fn next_frame(&mut self) -> anyhow::Result<VideoFrame> {
        if self.paced {
            let now = self.clock.now_ms() as f64;
            let due = frame_time_ms(self.index, self.fps);
            let interval = 1000.0 / self.fps as f64;
            if now > due + interval {
                // The consumer fell behind: skip to the current frame instead of queueing.
                let behind = ((now - due) / interval) as u64;
                self.index += behind;
                self.skipped += behind;
            }
            self.clock.sleep_until(frame_time_ms(self.index, self.fps));
        }
        let pts = if self.paced {
            // Capture time, but strictly increasing even when two frames leave in the same ms.
            self.clock.now_ms().max(self.last_pts + 1)
        } else {
            frame_time_ms(self.index, self.fps) as i64
        };
        self.last_pts = pts;
        let mut frame = self.render(self.index, pts);
        if self.sync_marks {
            let second = pts.div_euclid(1000);
            if second != self.last_second {
                let luma = (frame.width * frame.height) as usize;
                frame.data[..luma].fill(SYNC_FLASH_LUMA);
                frame.data[luma..].fill(128);
            }
            self.last_second = second;
        }
        self.index += 1;
        Ok(frame)
    }

    fn skipped(&self) -> u64 {
        self.skipped
    }

    fn describe(&self) -> String {
        format!("test card {}x{}@{}", self.width, self.height, self.fps)
    }
}

fn draw_background(width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut f = VideoFrame::black(width, height, 0, 0);
    let bar_h = (h * 2 / 3) & !1;
    for (i, c) in BARS.iter().enumerate() {
        let x0 = (w * i / 7) & !1;
        let x1 = (w * (i + 1) / 7) & !1;
        fill_rect(&mut f, x0, 0, x1 - x0, bar_h, *c);
    }
    // Lower band: a luma ramp, so scaling and compression artefacts are visible.
    for y in bar_h..h {
        let row = &mut f.data[y * w..(y + 1) * w];
        for (x, p) in row.iter_mut().enumerate() {
            *p = 16 + (x * 219 / w.max(1)) as u8 / 2;
        }
    }
    f.data
}

/// A luma ramp with fine pseudo-random grain, repeated twice (width `2 * w`).
fn texture(w: usize) -> Vec<u8> {
    let mut seed = 0x2545_f491_u32;
    let row: Vec<u8> = (0..w)
        .map(|x| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let ramp = 16 + (x * 219 / w.max(1)) as u32;
            (ramp - ramp / 4 + (seed % 48)).min(235) as u8
        })
        .collect();
    [row.clone(), row].concat()
}

/// Fills a rectangle (even coordinates) with a Y, U, V colour, clipped to the frame, so any
/// frame size the settings allow can be drawn.
fn fill_rect(f: &mut VideoFrame, x: usize, y: usize, rw: usize, rh: usize, c: (u8, u8, u8)) {
    let (w, h) = (f.width as usize, f.height as usize);
    let x1 = (x + rw).min(w);
    let y1 = (y + rh).min(h);
    if x >= x1 || y >= y1 {
        return;
    }
    for row in y..y1 {
        f.data[row * w + x..row * w + x1].fill(c.0);
    }
    let (cw, luma) = (w / 2, w * h);
    let chroma = cw * (h / 2);
    for row in y / 2..y1 / 2 {
        let (a, b) = (row * cw + x / 2, row * cw + x1 / 2);
        f.data[luma + a..luma + b].fill(c.1);
        f.data[luma + chroma + a..luma + chroma + b].fill(c.2);
    }
}

/// Draws `n` in seven-segment digits of height `dh` at (x, y).
fn draw_number(f: &mut VideoFrame, n: u64, x: usize, y: usize, dh: usize) {
    let digits = n.to_string();
    let dw = dh / 2;
    let t = (dh / 8).max(2) & !1;
    let white = (235, 128, 128);
    let black_w = (dw + t * 2) * digits.len() + t * 2;
    fill_rect(f, x & !1, y & !1, black_w, dh + t * 2, (16, 128, 128));
    for (i, ch) in digits.bytes().enumerate() {
        let seg = SEGMENTS[(ch - b'0') as usize];
        let ox = x + t + i * (dw + t * 2);
        let oy = y + t;
        let half = dh / 2;
        let rects = [
            (ox, oy, dw, t),                   // a
            (ox + dw - t, oy, t, half),        // b
            (ox + dw - t, oy + half, t, half), // c
            (ox, oy + dh - t, dw, t),          // d
            (ox, oy + half, t, half),          // e
            (ox, oy, t, half),                 // f
            (ox, oy + half - t / 2, dw, t),    // g
        ];
        for (s, r) in rects.iter().enumerate() {
            if seg & (1 << s) != 0 {
                fill_rect(f, r.0 & !1, r.1 & !1, r.2, r.3, white);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_has_bars_and_moves() {
        let card = TestCard::new(MediaClock::start(), 320, 240, 30).unwrap();
        let a = card.render(0, 0);
        let b = card.render(15, 500);
        assert_eq!(a.data.len(), VideoFrame::i420_len(320, 240));
        // first bar is 75% white, second is yellow (low U)
        assert_eq!(a.data[10 * 320 + 10], 180);
        let u_plane = &a.data[320 * 240..];
        assert_eq!(u_plane[5 * 160 + 160 / 7 + 5], 44);
        // the picture changes between frames (moving box and counter)
        let diff = a.data.iter().zip(&b.data).filter(|(x, y)| x != y).count();
        assert!(diff > 500, "only {diff} bytes differ");
        // and the bars region does not
        assert_eq!(a.data[..320 * 100], b.data[..320 * 100]);
    }

    #[test]
    fn draws_every_size_the_settings_allow() {
        // Tall, wide and tiny frames: the box, bars and counter are clipped, never out of bounds.
        for (w, h) in [
            (64, 64),
            (64, 480),
            (480, 64),
            (64, 2160),
            (3840, 64),
            (66, 70),
        ] {
            let card = TestCard::new(MediaClock::start(), w, h, 30).unwrap();
            for i in (0..240).step_by(7) {
                let f = card.render(i, i as i64 * 33);
                assert_eq!(f.data.len(), VideoFrame::i420_len(w, h), "{w}x{h}");
            }
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(TestCard::new(MediaClock::start(), 321, 240, 30).is_err());
        assert!(TestCard::new(MediaClock::start(), 320, 240, 0).is_err());
    }

    #[test]
    fn sync_marks_flash_the_first_frame_of_each_second() {
        let mut card = TestCard::new(MediaClock::start(), 64, 64, 30)
            .unwrap()
            .unpaced()
            .with_sync_marks();
        let flashes: Vec<i64> = (0..95)
            .map(|_| card.next_frame().unwrap())
            .filter(|f| f.data[..64 * 64].iter().all(|&y| y == SYNC_FLASH_LUMA))
            .map(|f| f.pts_ms)
            .collect();
        assert_eq!(flashes, [0, 1000, 2000, 3000]);
        // without the option, no frame is all white
        let mut plain = TestCard::new(MediaClock::start(), 64, 64, 30)
            .unwrap()
            .unpaced();
        assert!((0..40).all(|_| plain.next_frame().unwrap().data[..64 * 64]
            .iter()
            .any(|&y| y != SYNC_FLASH_LUMA)));
    }

    #[test]
    fn resuming_skips_ahead_without_counting_drops() {
        let clock = MediaClock::start();
        let mut card = TestCard::new(clock, 64, 64, 50).unwrap();
        clock.sleep_until(200.0);
        card.resume_now();
        let f = card.next_frame().unwrap();
        assert!(f.index >= 10, "index {}", f.index);
        assert_eq!(card.skipped(), 0);
    }

    #[test]
    fn paced_card_runs_in_real_time() {
        let mut card = TestCard::new(MediaClock::start(), 64, 64, 50).unwrap();
        let start = std::time::Instant::now();
        let mut last = -1;
        for _ in 0..10 {
            let f = card.next_frame().unwrap();
            assert!(f.pts_ms > last);
            last = f.pts_ms;
        }
        // 10 frames at 50 fps: the 10th is due at 180 ms
        assert!(start.elapsed().as_millis() >= 170);
    }
}
