//! Cameras through nokhwa (V4L2 on Linux, AVFoundation on macOS, Media Foundation on
//! Windows): list them with the formats they offer, open one by index or name at the format
//! closest to what the stream wants, and capture on a thread of its own.
//!
//! The capture thread only copies the device's buffer and takes the capture time; it hands
//! the frame over through a one-slot queue that keeps the newest frame, so a slow encoder
//! never makes the device stall and a stalled device never blocks the pipeline for long.
//! Conversion to I420 ([`super::convert`]) happens on the consumer's side, so frames that
//! would be dropped are never converted.

use super::convert::{Converter, PixelFormat};
use super::VideoSource;
use crate::clock::MediaClock;
use crate::media::VideoFrame;
use anyhow::{anyhow, bail, Context};
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

/// How long the consumer waits for a frame before it declares the camera gone.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One capture mode a camera offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CameraMode {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Pixel layout the device delivers.
    pub format: PixelFormat,
}

impl std::fmt::Display for CameraMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}@{} {}",
            self.width, self.height, self.fps, self.format
        )
    }
}

/// A camera found on this machine, as `onair devices` and the desktop app list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraDevice {
    /// Position in the system's list; `--camera INDEX` picks it.
    pub index: u32,
    /// The device's name; `--camera NAME` picks it.
    pub name: String,
    /// Where it lives (e.g. "Video4Linux Device @ /dev/video0").
    pub description: String,
    /// Modes it offers, sorted by size, then frame rate (empty when it could not be opened).
    pub modes: Vec<CameraMode>,
    /// Why the modes could not be read (e.g. another program holds the camera).
    pub error: Option<String>,
}

/// Lists the cameras of this machine with the modes each offers.
///
/// Used by `onair devices` and the desktop app's source picker. A machine without cameras
/// gives an empty list, not an error; a camera that cannot be opened (busy, no permission)
/// is listed with `error` set and no modes.
pub fn list_cameras() -> anyhow::Result<Vec<CameraDevice>> {
    let infos = match nokhwa::query(ApiBackend::Auto) {
        Ok(infos) => infos,
        // Platforms without a camera API in this build have no cameras to offer.
        Err(nokhwa::NokhwaError::UnsupportedOperationError(_)) => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("cannot list the cameras: {e}")),
    };
    let mut out = Vec::new();
    for (pos, info) in infos.iter().enumerate() {
        let index = match info.index() {
            CameraIndex::Index(i) => *i,
            CameraIndex::String(_) => pos as u32,
        };
        let (modes, error) = match query_modes(info.index()) {
            Ok(m) => (m, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        out.push(CameraDevice {
            index,
            name: info.human_name(),
            description: info.description().to_string(),
            modes,
            error,
        });
    }
    Ok(out)
}

/// Nokhwa's formats this converter handles (all of them today).
fn all_frame_formats() -> [FrameFormat; 6] {
    [
        FrameFormat::MJPEG,
        FrameFormat::YUYV,
        FrameFormat::NV12,
        FrameFormat::RAWRGB,
        FrameFormat::RAWBGR,
        FrameFormat::GRAY,
    ]
}

fn from_frame_format(f: FrameFormat) -> PixelFormat {
    match f {
        FrameFormat::MJPEG => PixelFormat::Mjpeg,
        FrameFormat::YUYV => PixelFormat::Yuyv,
        FrameFormat::NV12 => PixelFormat::Nv12,
        FrameFormat::RAWRGB => PixelFormat::Rgb24,
        FrameFormat::RAWBGR => PixelFormat::Bgr24,
        FrameFormat::GRAY => PixelFormat::Gray,
    }
}

fn to_frame_format(f: PixelFormat) -> Option<FrameFormat> {
    Some(match f {
        PixelFormat::Mjpeg => FrameFormat::MJPEG,
        PixelFormat::Yuyv => FrameFormat::YUYV,
        PixelFormat::Nv12 => FrameFormat::NV12,
        PixelFormat::Rgb24 => FrameFormat::RAWRGB,
        PixelFormat::Bgr24 => FrameFormat::RAWBGR,
        PixelFormat::Gray => FrameFormat::GRAY,
        PixelFormat::Rgba => return None,
    })
}

/// Opens the camera just long enough to read its modes.
fn query_modes(index: &CameraIndex) -> anyhow::Result<Vec<CameraMode>> {
    let formats = all_frame_formats();
    let mut cam = nokhwa::Camera::new(
        index.clone(),
        RequestedFormat::with_formats(RequestedFormatType::AbsoluteHighestFrameRate, &formats),
    )
    .map_err(|e| anyhow!("cannot open it: {e}"))?;
    let modes = cam
        .compatible_camera_formats()
        .map_err(|e| anyhow!("cannot read its formats: {e}"))?;
    Ok(sorted_modes(modes.into_iter().map(mode_of).collect()))
}

fn mode_of(f: CameraFormat) -> CameraMode {
    CameraMode {
        width: f.width(),
        height: f.height(),
        fps: f.frame_rate(),
        format: from_frame_format(f.format()),
    }
}

fn sorted_modes(mut modes: Vec<CameraMode>) -> Vec<CameraMode> {
    modes.sort_by_key(|m| (m.width * m.height, m.width, m.fps, m.format.fourcc()));
    modes.dedup();
    modes
}

/// What the stream asks of a camera.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraRequest {
    /// `INDEX` (digits) or a name (exact, else a case-insensitive part of it).
    pub device: String,
    /// Wanted size and rate: the stream's.
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Wanted pixel format; None lets the camera's best match decide.
    pub format: Option<PixelFormat>,
}

/// Picks the mode closest to the request: the asked format first (when given), then the
/// size (by area ratio, a smaller size costing a little more than a larger one, which can be
/// scaled down without blur), then the frame rate, then the cheapest format to convert.
pub fn choose_mode(modes: &[CameraMode], req: &CameraRequest) -> Option<CameraMode> {
    let want_area = (req.width.max(1) * req.height.max(1)) as f64;
    let cost = |m: &CameraMode| -> f64 {
        let area = (m.width.max(1) * m.height.max(1)) as f64;
        let ratio = (area / want_area).ln();
        let size = if ratio < 0.0 { -ratio * 1.5 } else { ratio };
        let fps = (m.fps.max(1) as f64 / req.fps.max(1) as f64).ln().abs();
        let format = match req.format {
            Some(f) if f != m.format => 100.0,
            _ => 0.0,
        };
        // Raw formats convert cheapest; MJPEG needs a JPEG decode.
        let convert = match m.format {
            PixelFormat::Nv12 => 0.0,
            PixelFormat::Yuyv => 0.001,
            PixelFormat::Mjpeg => 0.002,
            _ => 0.003,
        };
        format + size * 2.0 + fps + convert
    };
    modes
        .iter()
        .copied()
        .min_by(|a, b| cost(a).total_cmp(&cost(b)))
}

/// Finds the camera `spec` names among `cameras`: an index, an exact name, or a
/// case-insensitive part of exactly one name.
pub fn find_camera<'a>(
    cameras: &'a [CameraDevice],
    spec: &str,
) -> anyhow::Result<&'a CameraDevice> {
    let spec = spec.trim();
    let names = || {
        if cameras.is_empty() {
            "this machine has no camera".to_string()
        } else {
            let list: Vec<String> = cameras
                .iter()
                .map(|c| format!("{} '{}'", c.index, c.name))
                .collect();
            format!("cameras here: {}", list.join(", "))
        }
    };
    if let Ok(i) = spec.parse::<u32>() {
        return cameras
            .iter()
            .find(|c| c.index == i)
            .ok_or_else(|| anyhow!("no camera with index {i} ({})", names()));
    }
    if let Some(c) = cameras.iter().find(|c| c.name == spec) {
        return Ok(c);
    }
    let lower = spec.to_lowercase();
    let matches: Vec<&CameraDevice> = cameras
        .iter()
        .filter(|c| c.name.to_lowercase().contains(&lower))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => bail!("no camera named '{spec}' ({})", names()),
        _ => bail!(
            "'{spec}' matches several cameras ({}): give the index or the full name",
            names()
        ),
    }
}

/// The device side of a camera: blocks until the next frame and copies its bytes.
///
/// This is the boundary to the hardware; tests put a fake camera behind it.
pub trait FrameGrabber {
    /// Waits for the next frame and copies it into `out` (replacing its contents).
    fn grab(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()>;
}

/// A frame as the camera delivered it, with its capture time.
struct RawFrame {
    data: Vec<u8>,
    pts_ms: i64,
}

/// The one-slot queue between the capture thread and the pipeline: a new frame replaces an
/// unread one (counted as dropped), so the consumer always gets the newest picture.
#[derive(Default)]
struct LatestSlot {
    state: Mutex<SlotState>,
    ready: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    frame: Option<RawFrame>,
    /// Set when the capture thread ended: why.
    ended: Option<String>,
    /// A buffer the consumer is done with, for the capture thread to reuse.
    spare: Option<Vec<u8>>,
}

impl LatestSlot {
    fn put(&self, frame: RawFrame) -> Option<Vec<u8>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let old = s.frame.replace(frame);
        if old.is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
        old.map(|f| f.data).or_else(|| s.spare.take())
    }

    fn end(&self, why: String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ended.get_or_insert(why);
        self.ready.notify_all();
    }

    /// The newest frame, waiting up to `timeout`; Err with the reason once the thread ended.
    fn take(&self, timeout: Duration) -> Result<Option<RawFrame>, String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut s, _) = self
            .ready
            .wait_timeout_while(s, timeout, |s| s.frame.is_none() && s.ended.is_none())
            .unwrap_or_else(|p| p.into_inner());
        match s.frame.take() {
            Some(f) => Ok(Some(f)),
            None => match &s.ended {
                Some(why) => Err(why.clone()),
                None => Ok(None),
            },
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.spare = Some(buf);
    }
}

/// A camera capturing on its own thread, converted to I420 at the stream's size.
pub struct CameraSource {
    name: String,
    mode: CameraMode,
    slot: Arc<LatestSlot>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    converter: Converter,
    index: u64,
    last_pts: i64,
    stall_timeout: Duration,
}

impl CameraSource {
    /// Opens the camera `req` names, at the mode closest to the request, converting to
    /// `req.width`x`req.height`. Says which mode it chose in [`VideoSource::describe`].
    pub fn open(req: &CameraRequest, clock: MediaClock) -> anyhow::Result<CameraSource> {
        let cameras = list_cameras()?;
        let cam = find_camera(&cameras, &req.device)?;
        if let Some(e) = &cam.error {
            bail!(
                "camera {} '{}' cannot be used: {e}. Is another program using it?",
                cam.index,
                cam.name
            );
        }
        let mode = choose_mode(&cam.modes, req).ok_or_else(|| {
            anyhow!(
                "camera {} '{}' offers no format this build can convert",
                cam.index,
                cam.name
            )
        })?;
        let index = cam.index;
        let name = format!("camera {} '{}'", cam.index, cam.name);
        let open = move || -> anyhow::Result<Box<dyn FrameGrabber>> {
            Ok(Box::new(NokhwaGrabber::open(index, mode)?))
        };
        Self::spawn(name, mode, open, clock, req.width, req.height)
    }

    /// Starts capturing from the grabber `open` creates (on the capture thread, since device
    /// handles need not be `Send`), delivering `mode` frames converted to `width`x`height`.
    /// Fails if `open` fails.
    pub fn spawn<F>(
        name: String,
        mode: CameraMode,
        open: F,
        clock: MediaClock,
        width: u32,
        height: u32,
    ) -> anyhow::Result<CameraSource>
    where
        F: FnOnce() -> anyhow::Result<Box<dyn FrameGrabber>> + Send + 'static,
    {
        let converter = Converter::new(width, height)?;
        let slot = Arc::new(LatestSlot::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = mpsc::sync_channel::<anyhow::Result<()>>(1);
        let thread = {
            let (slot, stop, name) = (slot.clone(), stop.clone(), name.clone());
            std::thread::Builder::new()
                .name("onair-camera".into())
                .spawn(move || {
                    let mut grabber = match open() {
                        Ok(g) => {
                            let _ = opened_tx.send(Ok(()));
                            g
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    capture_loop(grabber.as_mut(), &slot, &stop, clock, &name);
                })
                .context("cannot start the camera thread")?
        };
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.context(format!("cannot open {name}")));
            }
            Err(_) => {
                let _ = thread.join();
                bail!("the thread opening {name} ended unexpectedly");
            }
        }
        Ok(CameraSource {
            name,
            mode,
            slot,
            stop,
            thread: Some(thread),
            converter,
            index: 0,
            last_pts: -1,
            stall_timeout: STALL_TIMEOUT,
        })
    }

    /// How long `next_frame` waits for the camera before it reports it gone.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// The mode the camera runs in.
    pub fn mode(&self) -> CameraMode {
        self.mode
    }
}

fn capture_loop(
    grabber: &mut dyn FrameGrabber,
    slot: &LatestSlot,
    stop: &AtomicBool,
    clock: MediaClock,
    name: &str,
) {
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = grabber.grab(&mut buf) {
            slot.end(format!("{name} stopped delivering frames: {e:#}"));
            return;
        }
        // The capture time: when the device handed the frame over.
        let pts_ms = clock.now_ms();
        let data = std::mem::take(&mut buf);
        if let Some(reuse) = slot.put(RawFrame { data, pts_ms }) {
            buf = reuse;
        }
    }
    slot.end(format!("{name} was closed"));
}

impl VideoSource for CameraSource {
    fn next_frame(&mut self) -> anyhow::Result<VideoFrame> {
        let raw = match self.slot.take(self.stall_timeout) {
            Ok(Some(f)) => f,
            Ok(None) => bail!(
                "{} delivered no frame for {:.1} s (unplugged?)",
                self.name,
                self.stall_timeout.as_secs_f64()
            ),
            Err(why) => bail!("{why}"),
        };
        let pts = raw.pts_ms.max(self.last_pts + 1);
        self.last_pts = pts;
        let frame = self.converter.convert(
            self.mode.format,
            self.mode.width,
            self.mode.height,
            &raw.data,
            pts,
            self.index,
        );
        self.slot.give_back(raw.data);
        let frame =
            frame.with_context(|| format!("{} sent a frame that cannot be used", self.name))?;
        self.index += 1;
        Ok(frame)
    }

    fn skipped(&self) -> u64 {
        self.slot.dropped.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let (w, h) = self.converter.output_size();
        if (w, h) == (self.mode.width, self.mode.height) {
            format!("{} {}", self.name, self.mode)
        } else {
            format!("{} {} scaled to {w}x{h}", self.name, self.mode)
        }
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A grab blocked in the driver returns within a frame interval; do not wait on a
        // device that hangs.
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A nokhwa camera opened at one exact mode.
struct NokhwaGrabber {
    camera: nokhwa::Camera,
}

impl NokhwaGrabber {
    fn open(index: u32, mode: CameraMode) -> anyhow::Result<NokhwaGrabber> {
        let format = to_frame_format(mode.format)
            .ok_or_else(|| anyhow!("{} is not a camera format", mode.format))?;
        let wanted = CameraFormat::new_from(mode.width, mode.height, format, mode.fps);
        let formats = [format];
        let mut camera = nokhwa::Camera::new(
            CameraIndex::Index(index),
            RequestedFormat::with_formats(RequestedFormatType::Exact(wanted), &formats),
        )
        .map_err(|e| anyhow!("{e} (is another program using the camera?)"))?;
        camera
            .open_stream()
            .map_err(|e| anyhow!("cannot start the stream: {e}"))?;
        Ok(NokhwaGrabber { camera })
    }
}

impl FrameGrabber for NokhwaGrabber {
    fn grab(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let data = self.camera.frame_raw().map_err(|e| anyhow!("{e}"))?;
        out.clear();
        out.extend_from_slice(&data);
        Ok(())
    }
}

impl Drop for NokhwaGrabber {
    fn drop(&mut self) {
        let _ = self.camera.stop_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(width: u32, height: u32, fps: u32, format: PixelFormat) -> CameraMode {
        CameraMode {
            width,
            height,
            fps,
            format,
        }
    }

    fn req(width: u32, height: u32, fps: u32, format: Option<PixelFormat>) -> CameraRequest {
        CameraRequest {
            device: "0".into(),
            width,
            height,
            fps,
            format,
        }
    }

    #[test]
    fn chooses_the_closest_mode() {
        use PixelFormat::*;
        let modes = [
            mode(640, 480, 30, Yuyv),
            mode(1280, 720, 10, Yuyv),
            mode(1280, 720, 30, Mjpeg),
            mode(1920, 1080, 30, Mjpeg),
            mode(1920, 1080, 5, Yuyv),
        ];
        // exact match
        assert_eq!(
            choose_mode(&modes, &req(1280, 720, 30, None)),
            Some(modes[2])
        );
        // 720p30 YUYV does not exist: the format wins over size and rate
        assert_eq!(
            choose_mode(&modes, &req(1280, 720, 30, Some(Yuyv))),
            Some(modes[1])
        );
        // 1080p60: closest is 1080p30
        assert_eq!(
            choose_mode(&modes, &req(1920, 1080, 60, None)),
            Some(modes[3])
        );
        // an odd size: 800x600 is nearer 640x480 by area but smaller sizes cost more
        let got = choose_mode(&modes, &req(800, 600, 30, None)).unwrap();
        assert_eq!((got.width, got.fps), (1280, 30), "{got}");
        assert_eq!(choose_mode(&[], &req(640, 480, 30, None)), None);
    }

    fn cam(index: u32, name: &str) -> CameraDevice {
        CameraDevice {
            index,
            name: name.into(),
            description: String::new(),
            modes: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn finds_cameras_by_index_and_name() {
        let cams = [cam(0, "Integrated Webcam"), cam(2, "USB Capture HDMI")];
        assert_eq!(find_camera(&cams, "2").unwrap().name, "USB Capture HDMI");
        assert_eq!(find_camera(&cams, "usb").unwrap().index, 2);
        assert_eq!(find_camera(&cams, "Integrated Webcam").unwrap().index, 0);
        let e = format!("{}", find_camera(&cams, "1").unwrap_err());
        assert!(
            e.contains("no camera with index 1") && e.contains("USB Capture"),
            "{e}"
        );
        let e = format!("{}", find_camera(&cams, "a").unwrap_err());
        assert!(e.contains("several"), "{e}");
        let e = format!("{}", find_camera(&[], "0").unwrap_err());
        assert!(e.contains("no camera"), "{e}");
    }

    /// Delivers numbered grey frames as fast as asked, then fails.
    struct Counting {
        n: u8,
        fail_after: u8,
    }

    impl FrameGrabber for Counting {
        fn grab(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
            if self.n >= self.fail_after {
                bail!("device unplugged");
            }
            std::thread::sleep(Duration::from_millis(5));
            out.clear();
            out.resize(64 * 48, self.n * 10);
            self.n += 1;
            Ok(())
        }
    }

    #[test]
    fn source_delivers_newest_frames_then_reports_the_failure() {
        let m = mode(64, 48, 30, PixelFormat::Gray);
        let open = || -> anyhow::Result<Box<dyn FrameGrabber>> {
            Ok(Box::new(Counting {
                n: 0,
                fail_after: 20,
            }))
        };
        let mut src =
            CameraSource::spawn("fake".into(), m, open, MediaClock::start(), 32, 24).unwrap();
        let mut last = -1;
        let mut got = 0;
        let err = loop {
            match src.next_frame() {
                Ok(f) => {
                    assert!(f.pts_ms > last);
                    assert_eq!((f.width, f.height), (32, 24));
                    last = f.pts_ms;
                    got += 1;
                    // a slow consumer: the slot keeps only the newest frame
                    std::thread::sleep(Duration::from_millis(12));
                }
                Err(e) => break e,
            }
        };
        assert!(format!("{err:#}").contains("device unplugged"), "{err:#}");
        assert!(got >= 3, "only {got} frames");
        assert!(src.skipped() > 0, "a slow consumer must see drops");
        assert!(got as u64 + src.skipped() <= 20);
        assert!(src.describe().contains("64x48@30 GREY scaled to 32x24"));
    }

    #[test]
    fn a_camera_that_cannot_open_is_an_error() {
        let m = mode(64, 48, 30, PixelFormat::Gray);
        let open = || -> anyhow::Result<Box<dyn FrameGrabber>> { bail!("device busy") };
        let e = CameraSource::spawn("cam".into(), m, open, MediaClock::start(), 64, 48)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("device busy"), "{e:#}");
    }
}
