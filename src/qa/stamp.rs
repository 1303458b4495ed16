//! The latency stamp: every frame carries the wall-clock time it was captured and its frame
//! number, three times over, so a viewer-side tool can measure glass-to-glass latency and
//! count lost frames on any path the stream takes:
//!
//! - a block barcode drawn into the picture (survives re-encoding, scaling and SEI stripping),
//! - the same values as seven-segment digits next to it, for a human or a camera,
//! - an H.264 SEI `user_data_unregistered` message with our UUID, exact and cheap to read.
//!
//! `docs/latency-stamp.md` specifies all three byte by byte; this module is the reference
//! implementation. It also holds [`StageRecorder`], which times each publishing stage of the
//! stamped frames for `onair live --latency-report`.

use crate::flv::{escape_rbsp, unescape_rbsp};
use crate::media::VideoFrame;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The UUID that starts our SEI payload, so readers can tell our message from others (x264
/// writes its own `user_data_unregistered` with its settings).
pub const STAMP_UUID: [u8; 16] = [
    0xbc, 0xde, 0x33, 0x32, 0x8a, 0xd8, 0x4b, 0xd1, 0x85, 0xa0, 0x84, 0x6d, 0x28, 0x36, 0x0e, 0x32,
];

/// Version byte of the SEI payload layout; readers reject versions they do not know.
pub const SEI_VERSION: u8 = 1;

/// Length of our SEI payload: UUID, version, time (8), frame (4), CRC (2).
pub const SEI_PAYLOAD_LEN: usize = 16 + 1 + 8 + 4 + 2;

/// The picture is divided into this many columns for the barcode geometry.
pub const GRID_COLUMNS: usize = 48;
/// The picture is divided into this many rows for the barcode geometry.
pub const GRID_ROWS: usize = 27;
/// Luma of a 1 bit and of the white reference cells (BT.601 limited-range white).
pub const WHITE: u8 = 235;
/// Luma of a 0 bit, the black reference cells and the quiet zone (limited-range black).
pub const BLACK: u8 = 16;
/// Barcode rows, each: white reference, black reference, 32 data bits, white end marker.
pub const BARCODE_ROWS: usize = 3;
/// Data bits per barcode row.
pub const BITS_PER_ROW: usize = 32;
/// First grid row of the barcode.
const FIRST_ROW: usize = 1;
/// Grid column of each row's white reference cell; the black reference follows, then the data.
const FIRST_COLUMN: usize = 1;
/// The quiet zone (black box) covers grid columns `0..BOX_COLUMNS` and rows `0..BOX_ROWS`.
const BOX_COLUMNS: usize = 37;
const BOX_ROWS: usize = 6;
/// The smallest white-minus-black reference difference accepted as a barcode.
const MIN_CONTRAST: u32 = 48;

/// What a stamp carries: when the source produced the frame and which frame it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Capture time, milliseconds since the Unix epoch (UTC). The barcode keeps the low 48
    /// bits (enough until the year 10889).
    pub capture_unix_ms: u64,
    /// Frame number since the source started, wrapping at 2^32.
    pub frame: u32,
}

impl Stamp {
    /// The 12 bytes the barcode encodes: time (48-bit BE), frame (32-bit BE), CRC-16 (BE).
    pub fn barcode_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..6].copy_from_slice(&self.capture_unix_ms.to_be_bytes()[2..]);
        b[6..10].copy_from_slice(&self.frame.to_be_bytes());
        let crc = crc16(&b[..10]);
        b[10..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// The stamp encoded in `bytes` (as from [`Stamp::barcode_bytes`]) if the CRC matches.
    pub fn from_barcode_bytes(bytes: &[u8; 12]) -> Option<Stamp> {
        if crc16(&bytes[..10]).to_be_bytes() != bytes[10..] {
            return None;
        }
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&bytes[..6]);
        Some(Stamp {
            capture_unix_ms: u64::from_be_bytes(t),
            frame: u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]),
        })
    }
}

/// CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
/// XOR; check value 0x29B1 for "123456789"): the check value of the barcode and the SEI.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Milliseconds since the Unix epoch now, as the stamp and the probe count time.
pub fn unix_ms_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Ties the media clock (milliseconds since the stream started) to the wall clock, taken
/// together with [`crate::clock::MediaClock::start`], so a frame's pts gives its capture time
/// without a second clock read in the source.
#[derive(Clone, Copy, Debug)]
pub struct WallAnchor {
    /// The instant the media clock started.
    pub instant: Instant,
    /// The wall-clock time at that instant, Unix milliseconds.
    pub unix_ms: f64,
}

impl WallAnchor {
    /// Anchors now; call right after starting the media clock.
    pub fn now() -> Self {
        WallAnchor {
            instant: Instant::now(),
            unix_ms: unix_ms_now(),
        }
    }

    /// Unix milliseconds of the media time `pts_ms`.
    pub fn unix_ms_at(&self, pts_ms: i64) -> u64 {
        (self.unix_ms + pts_ms as f64).max(0.0).floor() as u64
    }

    /// Media milliseconds (fractional) of `t`, on the same scale as frame pts.
    pub fn media_ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.instant).as_secs_f64() * 1000.0
    }
}

// ---------------------------------------------------------------------------------------
// Barcode geometry and drawing
// ---------------------------------------------------------------------------------------

/// Left edge in pixels of grid column `c` in a picture `width` wide.
pub fn column_x(c: usize, width: usize) -> usize {
    c * width / GRID_COLUMNS
}

/// Top edge in pixels of grid row `r` in a picture `height` high.
pub fn row_y(r: usize, height: usize) -> usize {
    r * height / GRID_ROWS
}

/// Grid (column, row) of data bit `i` (0 = most significant bit of the first byte).
fn bit_cell(i: usize) -> (usize, usize) {
    (
        FIRST_COLUMN + 2 + i % BITS_PER_ROW,
        FIRST_ROW + i / BITS_PER_ROW,
    )
}

/// Luma and chroma planes of an I420 picture, mutable, with strides.
struct Planes<'a> {
    y: &'a mut [u8],
    u: &'a mut [u8],
    v: &'a mut [u8],
    width: usize,
    height: usize,
}

impl Planes<'_> {
    fn of(frame: &mut VideoFrame) -> Planes<'_> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (y, rest) = frame.data.split_at_mut(w * h);
        let (u, v) = rest.split_at_mut((w / 2) * (h / 2));
        Planes {
            y,
            u,
            v,
            width: w,
            height: h,
        }
    }

    /// Fills luma of [x0, x1) x [y0, y1) with `level`.
    fn luma_rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, level: u8) {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        if x0 >= x1 {
            return;
        }
        for row in y0..y1 {
            self.y[row * self.width + x0..row * self.width + x1].fill(level);
        }
    }

    /// Makes [x0, x1) x [y0, y1) grey in chroma (rounded outwards to whole chroma samples).
    fn neutral_chroma(&mut self, x0: usize, y0: usize, x1: usize, y1: usize) {
        let cw = self.width / 2;
        let (cx0, cy0) = (x0 / 2, y0 / 2);
        let (cx1, cy1) = (x1.div_ceil(2).min(cw), y1.div_ceil(2).min(self.height / 2));
        if cx0 >= cx1 {
            return;
        }
        for row in cy0..cy1 {
            self.u[row * cw + cx0..row * cw + cx1].fill(128);
            self.v[row * cw + cx0..row * cw + cx1].fill(128);
        }
    }

    fn cell(&mut self, c: usize, r: usize, level: u8) {
        let (w, h) = (self.width, self.height);
        self.luma_rect(
            column_x(c, w),
            row_y(r, h),
            column_x(c + 1, w),
            row_y(r + 1, h),
            level,
        );
    }
}

/// Draws `stamp` into the top-left corner of `frame`: a black quiet zone, the barcode
/// (3 rows of reference cells and 32 data bits) and the time and frame number in digits.
pub fn draw(frame: &mut VideoFrame, stamp: &Stamp) {
    let mut p = Planes::of(frame);
    let (w, h) = (p.width, p.height);
    let (bx, by) = (column_x(BOX_COLUMNS, w), row_y(BOX_ROWS, h));
    p.luma_rect(0, 0, bx, by, BLACK);
    p.neutral_chroma(0, 0, bx, by);
    for r in FIRST_ROW..FIRST_ROW + BARCODE_ROWS {
        p.cell(FIRST_COLUMN, r, WHITE);
        p.cell(FIRST_COLUMN + 1, r, BLACK);
        p.cell(FIRST_COLUMN + 2 + BITS_PER_ROW, r, WHITE);
    }
    let bytes = stamp.barcode_bytes();
    for i in 0..BARCODE_ROWS * BITS_PER_ROW {
        let bit = bytes[i / 8] >> (7 - i % 8) & 1;
        let (c, r) = bit_cell(i);
        p.cell(c, r, if bit == 1 { WHITE } else { BLACK });
    }
    // Digits: "HH:MM:SS.mmm  FRAME" in the two grid rows under the barcode.
    let top = row_y(FIRST_ROW + BARCODE_ROWS, h);
    let bottom = row_y(BOX_ROWS, h);
    let margin = (bottom - top) / 6;
    let glyph_h = bottom.saturating_sub(top + 2 * margin);
    if glyph_h >= 7 {
        let text = format!(
            "{}  {}",
            utc_time_of_day(stamp.capture_unix_ms),
            stamp.frame
        );
        draw_text(
            &mut p,
            &text,
            column_x(FIRST_COLUMN, w),
            top + margin,
            glyph_h,
            bx,
        );
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn utc_time_of_day(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, ms)
}

/// Seven-segment masks for 0-9 (bit 0 = segment a … bit 6 = segment g).
const SEGMENTS: [u8; 10] = [
    0b0111111, 0b0000110, 0b1011011, 0b1001111, 0b1100110, 0b1101101, 0b1111101, 0b0000111,
    0b1111111, 0b1101111,
];

/// Draws digits, ':' and '.' (other characters are spaces) in white on the quiet zone,
/// stopping at `x_limit`.
fn draw_text(p: &mut Planes, text: &str, x: usize, y: usize, gh: usize, x_limit: usize) {
    let gw = gh / 2;
    let t = (gh / 7).max(1);
    let gap = t * 2;
    let mut ox = x;
    for ch in text.chars() {
        let advance = match ch {
            ':' | '.' => t * 2 + gap,
            _ => gw + gap,
        };
        if ox + advance > x_limit {
            break;
        }
        let half = gh / 2;
        match ch {
            '0'..='9' => {
                let seg = SEGMENTS[(ch as u8 - b'0') as usize];
                let rects = [
                    (ox, y, gw, t),                        // a
                    (ox + gw - t, y, t, half),             // b
                    (ox + gw - t, y + half, t, gh - half), // c
                    (ox, y + gh - t, gw, t),               // d
                    (ox, y + half, t, gh - half),          // e
                    (ox, y, t, half),                      // f
                    (ox, y + half - t / 2, gw, t),         // g
                ];
                for (s, r) in rects.iter().enumerate() {
                    if seg & (1 << s) != 0 {
                        p.luma_rect(r.0, r.1, r.0 + r.2, r.1 + r.3, WHITE);
                    }
                }
            }
            ':' => {
                p.luma_rect(ox, y + gh / 4, ox + t * 2, y + gh / 4 + t * 2, WHITE);
                p.luma_rect(
                    ox,
                    y + gh * 3 / 4 - t,
                    ox + t * 2,
                    y + gh * 3 / 4 + t,
                    WHITE,
                );
            }
            '.' => p.luma_rect(ox, y + gh - t * 2, ox + t * 2, y + gh, WHITE),
            _ => {}
        }
        ox += advance;
    }
}

// ---------------------------------------------------------------------------------------
// Barcode reading
// ---------------------------------------------------------------------------------------

/// Mean luma of the central half (in each direction) of grid cell (c, r).
fn sample_cell(luma: &[u8], stride: usize, width: usize, height: usize, c: usize, r: usize) -> u32 {
    let (x0, x1) = (column_x(c, width), column_x(c + 1, width));
    let (y0, y1) = (row_y(r, height), row_y(r + 1, height));
    let (qx, qy) = ((x1 - x0) / 4, (y1 - y0) / 4);
    let (sx0, sx1) = (x0 + qx, (x1 - qx).max(x0 + qx + 1));
    let (sy0, sy1) = (y0 + qy, (y1 - qy).max(y0 + qy + 1));
    let mut sum = 0u32;
    let mut n = 0u32;
    for y in sy0..sy1.min(height) {
        let row = &luma[y * stride..];
        for &v in &row[sx0..sx1.min(width)] {
            sum += v as u32;
            n += 1;
        }
    }
    sum.checked_div(n).unwrap_or(0)
}

/// Reads the barcode from a decoded picture's luma plane (`stride` bytes per row), at any
/// size the stamped picture was scaled to. None when there is no barcode, the reference
/// cells lack contrast, or the CRC does not match.
pub fn read_barcode(luma: &[u8], stride: usize, width: usize, height: usize) -> Option<Stamp> {
    if width < GRID_COLUMNS || height < GRID_ROWS || stride < width {
        return None;
    }
    if luma.len() < stride * (height - 1) + width {
        return None;
    }
    let sample = |c, r| sample_cell(luma, stride, width, height, c, r);
    let mut bytes = [0u8; 12];
    for row in 0..BARCODE_ROWS {
        let r = FIRST_ROW + row;
        let white = sample(FIRST_COLUMN, r);
        let black = sample(FIRST_COLUMN + 1, r);
        if white < black + MIN_CONTRAST {
            return None;
        }
        let threshold = (white + black) / 2;
        if sample(FIRST_COLUMN + 2 + BITS_PER_ROW, r) <= threshold {
            return None;
        }
        for b in 0..BITS_PER_ROW {
            let i = row * BITS_PER_ROW + b;
            let (c, r) = bit_cell(i);
            if sample(c, r) > threshold {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
    }
    Stamp::from_barcode_bytes(&bytes)
}

// ---------------------------------------------------------------------------------------
// SEI
// ---------------------------------------------------------------------------------------

/// Our `user_data_unregistered` payload for `stamp`: UUID, version, capture time (u64 BE),
/// frame (u32 BE), CRC-16 of the 13 bytes after the UUID (BE).
pub fn sei_payload(stamp: &Stamp) -> [u8; SEI_PAYLOAD_LEN] {
    let mut p = [0u8; SEI_PAYLOAD_LEN];
    p[..16].copy_from_slice(&STAMP_UUID);
    p[16] = SEI_VERSION;
    p[17..25].copy_from_slice(&stamp.capture_unix_ms.to_be_bytes());
    p[25..29].copy_from_slice(&stamp.frame.to_be_bytes());
    let crc = crc16(&p[16..29]);
    p[29..31].copy_from_slice(&crc.to_be_bytes());
    p
}

/// The stamp in a `user_data_unregistered` payload, if it is ours, of a known version and
/// intact.
pub fn parse_sei_payload(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < SEI_PAYLOAD_LEN || payload[..16] != STAMP_UUID || payload[16] != SEI_VERSION
    {
        return None;
    }
    if crc16(&payload[16..29]).to_be_bytes() != payload[29..31] {
        return None;
    }
    Some(Stamp {
        capture_unix_ms: u64::from_be_bytes(payload[17..25].try_into().ok()?),
        frame: u32::from_be_bytes(payload[25..29].try_into().ok()?),
    })
}

/// A complete SEI NAL unit (header byte 0x06, no start code or length) carrying one
/// `user_data_unregistered` message with `payload`, escaped and with RBSP trailing bits.
pub fn sei_nal(payload: &[u8]) -> Vec<u8> {
    let mut rbsp = vec![5u8];
    let mut size = payload.len();
    while size >= 255 {
        rbsp.push(255);
        size -= 255;
    }
    rbsp.push(size as u8);
    rbsp.extend_from_slice(payload);
    rbsp.push(0x80);
    let mut nal = vec![0x06];
    nal.extend_from_slice(&escape_rbsp(&rbsp));
    nal
}

/// The `user_data_unregistered` payloads (type 5) in one SEI NAL unit (with its header byte).
pub fn user_data_payloads(nal: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    if nal.first().map(|b| b & 0x1f) != Some(6) {
        return found;
    }
    let rbsp = unescape_rbsp(&nal[1..]);
    let mut pos = 0;
    let read_ff = |pos: &mut usize| -> Option<usize> {
        let mut v = 0usize;
        loop {
            let b = *rbsp.get(*pos)?;
            *pos += 1;
            v += b as usize;
            if b != 255 {
                return Some(v);
            }
        }
    };
    // A message needs at least a type and a size byte; what is left after is trailing bits.
    while pos + 2 <= rbsp.len() && rbsp[pos] != 0x80 {
        let Some(kind) = read_ff(&mut pos) else { break };
        let Some(size) = read_ff(&mut pos) else { break };
        let Some(body) = rbsp.get(pos..pos + size) else {
            break;
        };
        if kind == 5 {
            found.push(body.to_vec());
        }
        pos += size;
    }
    found
}

/// Our stamp in an AVCC access unit (4-byte lengths), if one of its SEI NAL units holds it.
pub fn find_in_avcc(data: &[u8]) -> Option<Stamp> {
    let nals = crate::flv::split_avcc(data).ok()?;
    nals.into_iter()
        .filter(|n| n.first().map(|b| b & 0x1f) == Some(6))
        .flat_map(user_data_payloads)
        .find_map(|p| parse_sei_payload(&p))
}

/// Inserts the NAL unit `nal` into an AVCC access unit before its first slice (after any
/// AUD, parameter sets and other SEI), where H.264 wants SEI.
pub fn insert_before_first_slice(avcc: &mut Vec<u8>, nal: &[u8]) {
    let mut pos = 0;
    while pos + 4 < avcc.len() {
        let len =
            u32::from_be_bytes([avcc[pos], avcc[pos + 1], avcc[pos + 2], avcc[pos + 3]]) as usize;
        if (1..=5).contains(&(avcc[pos + 4] & 0x1f)) {
            break;
        }
        pos += 4 + len;
    }
    let pos = pos.min(avcc.len());
    let mut unit = Vec::with_capacity(4 + nal.len());
    unit.extend_from_slice(&(nal.len() as u32).to_be_bytes());
    unit.extend_from_slice(nal);
    avcc.splice(pos..pos, unit);
}

// ---------------------------------------------------------------------------------------
// Publishing stages
// ---------------------------------------------------------------------------------------

/// The publishing stages a frame passes, in order; times are taken at the end of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The source produced the frame (its pts).
    Captured = 0,
    /// The frame is drawn and stamped, handed to the encoder.
    Ready = 1,
    /// The encoder returned its packet.
    Encoded = 2,
    /// The output loop took the packet from the encoder queue.
    Queued = 3,
    /// The packet's last byte went into the socket.
    Written = 4,
}

/// Stage names, in [`Stage`] order, for reports.
pub const STAGE_NAMES: [&str; 5] = ["captured", "ready", "encoded", "queued", "written"];

/// Frames kept waiting for their later stages before the oldest are forgotten.
const MAX_PENDING: usize = 600;

/// Records, per video frame (keyed by pts), when each publishing [`Stage`] finished, so a
/// run can say where its latency goes (`onair live --latency-report`).
#[derive(Debug)]
pub struct StageRecorder {
    anchor: WallAnchor,
    state: Mutex<StageState>,
}

#[derive(Debug, Default)]
struct StageState {
    pending: BTreeMap<i64, [f64; 5]>,
    done: Vec<[f64; 5]>,
}

impl StageRecorder {
    /// A recorder on the media clock anchored at `anchor`.
    pub fn new(anchor: WallAnchor) -> Self {
        StageRecorder {
            anchor,
            state: Mutex::new(StageState::default()),
        }
    }

    /// Notes that the frame with `pts_ms` finished `stage` now.
    pub fn mark(&self, pts_ms: i64, stage: Stage) {
        self.mark_at(pts_ms, stage, self.anchor.media_ms(Instant::now()));
    }

    /// Notes that the frame with `pts_ms` finished `stage` at media time `at_ms`.
    pub fn mark_at(&self, pts_ms: i64, stage: Stage, at_ms: f64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if stage == Stage::Captured {
            let mut times = [f64::NAN; 5];
            times[0] = pts_ms as f64;
            s.pending.insert(pts_ms, times);
            while s.pending.len() > MAX_PENDING {
                s.pending.pop_first();
            }
            return;
        }
        let Some(times) = s.pending.get_mut(&pts_ms) else {
            return;
        };
        times[stage as usize] = at_ms;
        if stage == Stage::Written {
            let times = s.pending.remove(&pts_ms).expect("present");
            s.done.push(times);
        }
    }

    /// Percentiles of every stage over the frames that were written.
    pub fn report(&self) -> StageReport {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut stages = Vec::new();
        for i in 1..5 {
            let mut since_capture: Vec<f64> = s
                .done
                .iter()
                .map(|t| t[i] - t[0])
                .filter(|v| v.is_finite())
                .collect();
            let mut step: Vec<f64> = s
                .done
                .iter()
                .map(|t| t[i] - t[i - 1])
                .filter(|v| v.is_finite())
                .collect();
            stages.push(StageStat {
                name: STAGE_NAMES[i],
                p50_ms: percentile(&mut since_capture, 50.0),
                p95_ms: percentile(&mut since_capture, 95.0),
                step_p50_ms: percentile(&mut step, 50.0),
                step_p95_ms: percentile(&mut step, 95.0),
            });
        }
        StageReport {
            frames: s.done.len(),
            stages,
        }
    }
}

/// Latency of one stage: time since capture, and the step from the previous stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageStat {
    /// The stage ([`STAGE_NAMES`]).
    pub name: &'static str,
    /// Median time from capture to the end of this stage, ms.
    pub p50_ms: f64,
    /// 95th percentile of the time from capture to the end of this stage, ms.
    pub p95_ms: f64,
    /// Median time from the previous stage to this one, ms.
    pub step_p50_ms: f64,
    /// 95th percentile of the time from the previous stage to this one, ms.
    pub step_p95_ms: f64,
}

/// Where the time of the publishing side goes, stage by stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageReport {
    /// Frames measured through every stage.
    pub frames: usize,
    /// One entry per stage after capture, in order.
    pub stages: Vec<StageStat>,
}

impl std::fmt::Display for StageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "publisher latency by stage over {} frames (ms; p50 / p95):",
            self.frames
        )?;
        writeln!(
            f,
            "  {:<10} {:>16} {:>16}",
            "stage", "since capture", "this step"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "  {:<10} {:>7.1} / {:<7.1} {:>7.1} / {:<7.1}",
                s.name, s.p50_ms, s.p95_ms, s.step_p50_ms, s.step_p95_ms
            )?;
        }
        Ok(())
    }
}

/// The `p`th percentile (nearest rank) of `values` (sorted in place); NaN when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            capture_unix_ms: 1_764_160_000_123,
            frame: 0x0102_0300,
        }
    }

    /// The worked example of docs/latency-stamp.md, byte for byte.
    #[test]
    fn matches_the_documented_example() {
        let s = Stamp {
            capture_unix_ms: 1_764_160_000_123,
            frame: 90,
        };
        assert_eq!(
            s.barcode_bytes(),
            [0x01, 0x9a, 0xc0, 0x21, 0x50, 0x7b, 0, 0, 0, 0x5a, 0x2a, 0x3c]
        );
        let nal = sei_nal(&sei_payload(&s));
        let expected: Vec<u8> = [
            &[0x06, 0x05, 0x1f][..],
            &STAMP_UUID,
            &[0x01, 0, 0, 3, 0x01, 0x9a, 0xc0, 0x21, 0x50, 0x7b],
            &[0, 0, 3, 0, 0x5a, 0xa6, 0x6a, 0x80],
        ]
        .concat();
        assert_eq!(nal, expected);
        assert_eq!(
            STAMP_UUID,
            [
                0xbc, 0xde, 0x33, 0x32, 0x8a, 0xd8, 0x4b, 0xd1, 0x85, 0xa0, 0x84, 0x6d, 0x28, 0x36,
                0x0e, 0x32
            ]
        );
        // Cell (3 + 7, 1) holds bit 7 of byte 0 (a 1); cell (3, 1) its bit 0 (a 0).
        let mut f = VideoFrame::black(480, 270, 0, 0);
        draw(&mut f, &s);
        let centre = |c: usize, r: usize| {
            let x = (column_x(c, 480) + column_x(c + 1, 480)) / 2;
            let y = (row_y(r, 270) + row_y(r + 1, 270)) / 2;
            f.data[y * 480 + x]
        };
        assert_eq!((centre(3, 1), centre(10, 1)), (BLACK, WHITE));
        assert_eq!(
            (centre(1, 2), centre(2, 2), centre(35, 3)),
            (WHITE, BLACK, WHITE)
        );
    }

    #[test]
    fn crc_has_the_standard_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29b1);
    }

    #[test]
    fn barcode_bytes_round_trip_and_reject_corruption() {
        let s = stamp();
        let mut b = s.barcode_bytes();
        assert_eq!(Stamp::from_barcode_bytes(&b), Some(s));
        b[3] ^= 0x10;
        assert_eq!(Stamp::from_barcode_bytes(&b), None);
    }

    #[test]
    fn barcode_reads_back_at_several_sizes() {
        for (w, h) in [
            (1280, 720),
            (640, 360),
            (320, 180),
            (1920, 1080),
            (854, 480),
        ] {
            let mut f = VideoFrame::black(w, h, 0, 0);
            // A busy background the quiet zone must hide.
            for (i, p) in f.data.iter_mut().enumerate() {
                *p = (i * 37 % 251) as u8;
            }
            let s = Stamp {
                capture_unix_ms: 1_764_160_000_000 + w as u64,
                frame: h,
            };
            draw(&mut f, &s);
            assert_eq!(
                read_barcode(&f.data, w as usize, w as usize, h as usize),
                Some(s),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn no_barcode_reads_as_none() {
        let f = VideoFrame::black(640, 360, 0, 0);
        assert_eq!(read_barcode(&f.data, 640, 640, 360), None);
        let mut f = VideoFrame::black(640, 360, 0, 0);
        f.data[..640 * 360].fill(235);
        assert_eq!(read_barcode(&f.data, 640, 640, 360), None);
        assert_eq!(read_barcode(&[], 0, 0, 0), None);
    }

    #[test]
    fn barcode_survives_a_stride_and_a_2x_downscale() {
        let mut f = VideoFrame::black(1280, 720, 0, 0);
        let s = stamp();
        draw(&mut f, &s);
        // Box-filter to 640x360 into rows 704 bytes apart.
        let stride = 704;
        let mut small = vec![0u8; stride * 360];
        for y in 0..360 {
            for x in 0..640 {
                let at = |dx, dy| f.data[(2 * y + dy) * 1280 + 2 * x + dx] as u32;
                small[y * stride + x] = ((at(0, 0) + at(1, 0) + at(0, 1) + at(1, 1)) / 4) as u8;
            }
        }
        assert_eq!(read_barcode(&small, stride, 640, 360), Some(s));
    }

    #[test]
    fn digits_show_the_time_of_day() {
        assert_eq!(utc_time_of_day(1_764_160_000_123), "12:26:40.123");
        let mut f = VideoFrame::black(640, 360, 0, 0);
        draw(&mut f, &stamp());
        // The digit band (grid rows 4-5) has lit pixels.
        let (top, bottom) = (row_y(4, 360), row_y(6, 360));
        let lit = (top..bottom)
            .flat_map(|y| f.data[y * 640..y * 640 + 400].iter())
            .filter(|&&v| v == WHITE)
            .count();
        assert!(lit > 500, "{lit} lit pixels");
    }

    #[test]
    fn sei_payload_round_trips() {
        let p = sei_payload(&stamp());
        assert_eq!(p.len(), SEI_PAYLOAD_LEN);
        assert_eq!(parse_sei_payload(&p), Some(stamp()));
        let mut bad = p;
        bad[20] ^= 1;
        assert_eq!(parse_sei_payload(&bad), None);
        let mut other = p;
        other[0] ^= 1;
        assert_eq!(parse_sei_payload(&other), None);
    }

    #[test]
    fn sei_nal_is_escaped_and_found_in_an_access_unit() {
        // Time and frame full of zero bytes force emulation prevention.
        let s = Stamp {
            capture_unix_ms: 0x0000_0100_0000_0001,
            frame: 0,
        };
        let nal = sei_nal(&sei_payload(&s));
        assert_eq!(nal[0], 0x06);
        for w in nal.windows(3) {
            assert!(
                !(w[0] == 0 && w[1] == 0 && w[2] <= 2),
                "start code emulated: {nal:02x?}"
            );
        }
        assert_eq!(*nal.last().unwrap(), 0x80);
        let slice: &[u8] = &[0x65, 0x88, 0x80, 0x00];
        let mut avcc = Vec::new();
        for n in [&[0x09u8, 0xf0][..], slice] {
            avcc.extend_from_slice(&(n.len() as u32).to_be_bytes());
            avcc.extend_from_slice(n);
        }
        assert_eq!(find_in_avcc(&avcc), None);
        insert_before_first_slice(&mut avcc, &nal);
        let nals = crate::flv::split_avcc(&avcc).unwrap();
        assert_eq!(nals.len(), 3);
        assert_eq!(nals[1], &nal[..]);
        assert_eq!(nals[2], slice);
        assert_eq!(find_in_avcc(&avcc), Some(s));
    }

    #[test]
    fn escaping_round_trips() {
        let data = [0u8, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 7, 0, 0];
        let e = escape_rbsp(&data);
        assert_eq!(unescape_rbsp(&e), data);
        assert_eq!(&e[..4], &[0, 0, 3, 0]);
    }

    #[test]
    fn other_sei_messages_are_skipped() {
        // A recovery point (type 6) then a foreign user_data_unregistered, then ours.
        let mut rbsp = vec![6u8, 1, 0x84];
        rbsp.extend_from_slice(&[5, 17]);
        rbsp.extend_from_slice(&[0xaa; 17]);
        let ours = sei_payload(&stamp());
        rbsp.push(5);
        rbsp.push(ours.len() as u8);
        rbsp.extend_from_slice(&ours);
        rbsp.push(0x80);
        let mut nal = vec![6u8];
        nal.extend_from_slice(&escape_rbsp(&rbsp));
        let payloads = user_data_payloads(&nal);
        assert_eq!(payloads.len(), 2);
        assert_eq!(parse_sei_payload(&payloads[1]), Some(stamp()));
    }

    #[test]
    fn stage_recorder_reports_percentiles() {
        let r = StageRecorder::new(WallAnchor::now());
        for i in 0..100 {
            let pts = i * 33;
            r.mark_at(pts, Stage::Captured, 0.0);
            r.mark_at(pts, Stage::Ready, pts as f64 + 1.0);
            r.mark_at(pts, Stage::Encoded, pts as f64 + 11.0);
            r.mark_at(pts, Stage::Queued, pts as f64 + 12.0);
            r.mark_at(pts, Stage::Written, pts as f64 + 12.0 + (i % 10) as f64);
        }
        // A frame that never got written is not counted.
        r.mark_at(9999, Stage::Captured, 0.0);
        let rep = r.report();
        assert_eq!(rep.frames, 100);
        assert_eq!(rep.stages[1].name, "encoded");
        assert_eq!(rep.stages[1].p50_ms, 11.0);
        assert_eq!(rep.stages[1].step_p50_ms, 10.0);
        assert_eq!(rep.stages[3].p95_ms, 21.0);
        assert!(rep.to_string().contains("written"));
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
