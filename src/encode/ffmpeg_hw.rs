//! H.264 through FFmpeg's encoders: the GPU encoders (NVENC, Quick Sync, VA-API, VideoToolbox,
//! AMF, V4L2 mem2mem), so a streamer with a GPU keeps the CPU for everything else, and libx264,
//! as an independent cross-check of the direct x264 backend.
//!
//! Every backend is driven the same way: I420 frames in (converted to NV12 or uploaded to a
//! VA-API surface when the encoder wants that), time base 1/1000 so packet timestamps are our
//! milliseconds, GLOBAL_HEADER so SPS/PPS arrive as extradata (Annex B or avcC, both handled),
//! and packets rewritten to AVCC without parameter sets or AUDs, so they take the same FLV/RTMP
//! path as the direct x264 packets.
//!
//! Live bitrate changes: FFmpeg 5.1 re-reads `bit_rate`, `rc_max_rate` and `rc_buffer_size`
//! between frames for libx264 and NVENC, so those change in place. The other encoders ignore
//! such changes, so the new rate is applied by reopening the encoder at the next scheduled
//! keyframe (at most one keyframe interval later), which costs no extra IDR.
//!
//! Forced IDR: the frame is sent as `pict_type = I` with the encoder's forced-IDR option set
//! (`forced-idr` for NVENC and libx264, `forced_idr` for QSV and AMF). Encoders that still do not
//! answer with an IDR (AMF in FFmpeg 5.1 ignores the picture type) are reopened on the next
//! frame, since a fresh encoder always starts with one.

use super::{Backend, VideoEncoder, VideoEncoderSettings};
use crate::media::{MediaKind, Packet, VideoFrame, VideoHeader};
use anyhow::{bail, Context};
use bytes::Bytes;
use ff::ffi as sys;
use ffmpeg_next as ff;
use std::ffi::{CStr, CString};
use std::os::raw::c_int;
use std::ptr;

/// How an FFmpeg backend spends bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateControl {
    /// Constant bitrate: maxrate = bitrate. What streaming services ask for.
    Cbr,
    /// Variable bitrate around the target, with peaks up to `peak_percent` % of it.
    Vbr {
        /// Peak rate as a percentage of the target (150 = peaks of 1.5x).
        peak_percent: u32,
    },
}

/// Settings of the FFmpeg backends that [`VideoEncoderSettings`] does not carry.
#[derive(Clone, Debug, PartialEq)]
pub struct FfmpegOptions {
    /// CBR (the default, like the x264 backend) or VBR.
    pub rate_control: RateControl,
    /// Size of the rate-control (VBV/HRD) buffer, in milliseconds at the peak rate; 1000 (one
    /// second) matches the x264 backend.
    pub buffer_ms: u32,
    /// VA-API device, e.g. `/dev/dri/renderD129`; None lets FFmpeg pick the first render node.
    pub vaapi_device: Option<String>,
}

impl Default for FfmpegOptions {
    fn default() -> Self {
        FfmpegOptions {
            rate_control: RateControl::Cbr,
            buffer_ms: 1000,
            vaapi_device: None,
        }
    }
}

/// The three rate-control numbers handed to FFmpeg (bits and bits per second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Target, `bit_rate`.
    pub bit_rate: i64,
    /// Peak, `rc_max_rate`.
    pub max_rate: i64,
    /// Buffer, `rc_buffer_size`.
    pub buffer_bits: i32,
}

/// The rate-control numbers for `kbps` under `options`, so every backend and every live
/// change computes them the same way.
pub fn rates(kbps: u32, options: &FfmpegOptions) -> Rates {
    let bit_rate = kbps as i64 * 1000;
    let max_rate = match options.rate_control {
        RateControl::Cbr => bit_rate,
        RateControl::Vbr { peak_percent } => bit_rate * peak_percent.max(100) as i64 / 100,
    };
    let buffer_bits = (max_rate * options.buffer_ms.max(1) as i64 / 1000).min(i32::MAX as i64);
    Rates {
        bit_rate,
        max_rate,
        buffer_bits: buffer_bits as i32,
    }
}

/// Why an FFmpeg backend did not open, sorted the way `onair encoders` reports it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The linked FFmpeg was built without this encoder.
    #[error("not in this FFmpeg build (it has no {codec} encoder)")]
    NotCompiled {
        /// FFmpeg's encoder name, e.g. `h264_amf`.
        codec: &'static str,
    },
    /// The encoder exists but there is no GPU, device node or driver runtime for it.
    #[error("no usable device or driver: {detail}")]
    NoDevice {
        /// FFmpeg's own explanation.
        detail: String,
    },
    /// The device is there but the encoder refused the settings or the driver failed.
    #[error("{codec} failed: {detail}")]
    Failed {
        /// FFmpeg's encoder name.
        codec: &'static str,
        /// FFmpeg's own explanation.
        detail: String,
    },
    /// The direct x264 backend has no FFmpeg encoder.
    #[error("{0} is not an FFmpeg backend")]
    NotFfmpeg(Backend),
}

/// True when FFmpeg 5.1 applies bitrate changes of an open encoder between frames.
pub fn live_bitrate_change(backend: Backend) -> bool {
    matches!(backend, Backend::Nvenc | Backend::FfmpegX264)
}

fn qsv_preset(preset: &str) -> &'static str {
    match preset {
        "ultrafast" | "superfast" | "veryfast" => "veryfast",
        "faster" => "faster",
        "fast" => "fast",
        "medium" => "medium",
        "slow" => "slow",
        "slower" => "slower",
        _ => "veryslow",
    }
}

fn amf_quality(preset: &str) -> &'static str {
    match preset {
        "ultrafast" | "superfast" | "veryfast" | "faster" => "speed",
        "fast" | "medium" => "balanced",
        _ => "quality",
    }
}

/// B-frames actually requested: Baseline has none.
fn effective_bframes(settings: &VideoEncoderSettings) -> u32 {
    if settings.profile == "baseline" {
        0
    } else {
        settings.bframes
    }
}

/// The encoder-private options (`-preset`, `-rc`, …) for `backend`, one list per attempt:
/// QSV is tried with `low_power=1` first and again without it, because older GPUs lack the
/// low-power engine. Exposed so the mapping can be checked without the hardware.
pub fn backend_options(
    backend: Backend,
    settings: &VideoEncoderSettings,
    options: &FfmpegOptions,
) -> Vec<Vec<(&'static str, String)>> {
    let cbr = options.rate_control == RateControl::Cbr;
    let profile = settings.profile.as_str();
    let constrained = |p: &str| {
        if p == "baseline" {
            "constrained_baseline".to_string()
        } else {
            p.to_string()
        }
    };
    let low_latency = effective_bframes(settings) == 0;
    let set = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };
    match backend {
        Backend::Nvenc => {
            let mut o = set(&[
                ("preset", "p4"),
                ("tune", "ll"),
                ("rc", if cbr { "cbr" } else { "vbr" }),
                ("profile", profile),
                ("forced-idr", "1"),
            ]);
            if low_latency {
                // No reordering delay and no output queue: each frame comes out as it goes in.
                o.push(("zerolatency", "1".into()));
                o.push(("delay", "0".into()));
            }
            vec![o]
        }
        Backend::Qsv => {
            let base = set(&[
                ("preset", qsv_preset(&settings.preset)),
                ("profile", profile),
                ("look_ahead", "0"),
                ("async_depth", "1"),
                ("forced_idr", "1"),
            ]);
            let mut low_power = base.clone();
            low_power.push(("low_power", "1".into()));
            vec![low_power, base]
        }
        Backend::Vaapi => vec![vec![
            ("rc_mode", if cbr { "CBR" } else { "VBR" }.into()),
            ("profile", constrained(profile)),
            ("async_depth", "1".into()),
        ]],
        Backend::VideoToolbox => vec![set(&[("realtime", "1"), ("profile", profile)])],
        Backend::Amf => {
            let mut o = vec![
                ("usage", "ultralowlatency".into()),
                ("rc", if cbr { "cbr" } else { "vbr_peak" }.into()),
                ("quality", amf_quality(&settings.preset).into()),
                ("profile", constrained(profile)),
                ("forced_idr", "1".into()),
            ];
            if cbr {
                // Pad easy pictures up to the rate, like the x264 backend.
                o.push(("filler_data", "1".into()));
            }
            vec![o]
        }
        Backend::V4l2m2m => vec![Vec::new()],
        Backend::FfmpegX264 => {
            let mut o = set(&[
                ("preset", &settings.preset),
                ("profile", profile),
                ("forced-idr", "1"),
            ]);
            if !settings.tune.is_empty() {
                o.push(("tune", settings.tune.clone()));
            }
            if cbr {
                // True CBR, as the direct x264 backend: filler keeps the rate constant even
                // on an easy picture.
                o.push(("x264-params", "filler=1".into()));
            }
            vec![o]
        }
        Backend::X264 => Vec::new(),
    }
}

/// The generic `AVCodecContext.profile` for our profile names.
fn generic_profile(backend: Backend, profile: &str) -> c_int {
    match profile {
        "baseline" if backend == Backend::Vaapi => sys::FF_PROFILE_H264_CONSTRAINED_BASELINE,
        "baseline" => sys::FF_PROFILE_H264_BASELINE,
        "main" => sys::FF_PROFILE_H264_MAIN,
        _ => sys::FF_PROFILE_H264_HIGH,
    }
}

// ---------------------------------------------------------------------------------------
// FFmpeg log capture
// ---------------------------------------------------------------------------------------

/// Collects FFmpeg's warnings and errors while opening an encoder, because the error code
/// alone ("Generic error in an external library") does not say that libcuda is missing.
mod ffmpeg_log {
    use std::cell::RefCell;

    /// Lines captured on this thread: (FFmpeg log level, text).
    type Lines = Vec<(std::os::raw::c_int, String)>;

    thread_local! {
        static CAPTURE: RefCell<Option<Lines>> = const { RefCell::new(None) };
    }

    /// Runs `f` with FFmpeg's messages on this thread collected instead of printed; returns
    /// the warnings and errors, or, when there are none, the last few verbose lines (device
    /// set-up explains itself at that level). Without the log hook (other platforms) the list
    /// is empty and messages print as usual.
    pub(super) fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        install();
        let previous = CAPTURE.with(|c| c.replace(Some(Vec::new())));
        let value = f();
        let lines = CAPTURE.with(|c| c.replace(previous)).unwrap_or_default();
        let serious: Vec<String> = lines
            .iter()
            .filter(|(level, _)| *level <= super::sys::AV_LOG_WARNING)
            .map(|(_, l)| l.clone())
            .collect();
        if !serious.is_empty() {
            return (value, serious);
        }
        let skip = lines.len().saturating_sub(3);
        (
            value,
            lines.into_iter().skip(skip).map(|(_, l)| l).collect(),
        )
    }

    #[cfg(all(target_arch = "x86_64", unix))]
    fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: `hook` has the callback's signature and never unwinds.
        ONCE.call_once(|| unsafe { super::sys::av_log_set_callback(Some(hook)) });
    }

    #[cfg(not(all(target_arch = "x86_64", unix)))]
    fn install() {}

    /// FFmpeg's log callback: captures on threads inside [`capture`], forwards to the default
    /// printer everywhere else (so behaviour outside a capture is unchanged).
    #[cfg(all(target_arch = "x86_64", unix))]
    unsafe extern "C" fn hook(
        avcl: *mut std::ffi::c_void,
        level: std::os::raw::c_int,
        fmt: *const std::os::raw::c_char,
        vl: *mut super::sys::__va_list_tag,
    ) {
        use super::sys;
        let handled = CAPTURE
            .try_with(|c| {
                let Ok(mut slot) = c.try_borrow_mut() else {
                    return true;
                };
                let Some(lines) = slot.as_mut() else {
                    return false;
                };
                if level <= sys::AV_LOG_VERBOSE {
                    let mut buf = [0 as std::os::raw::c_char; 1024];
                    let mut print_prefix: std::os::raw::c_int = 0;
                    sys::av_log_format_line2(
                        avcl,
                        level,
                        fmt,
                        vl,
                        buf.as_mut_ptr(),
                        buf.len() as std::os::raw::c_int,
                        &mut print_prefix,
                    );
                    let text = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy();
                    let text = text.trim();
                    if !text.is_empty() {
                        lines.push((level, text.to_string()));
                    }
                }
                true
            })
            .unwrap_or(false);
        if !handled {
            sys::av_log_default_callback(avcl, level, fmt, vl);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw FFmpeg objects
// ---------------------------------------------------------------------------------------

fn av_error_text(code: c_int) -> String {
    ff::Error::from(code).to_string()
}

struct CodecCtx(*mut sys::AVCodecContext);

impl Drop for CodecCtx {
    fn drop(&mut self) {
        // Encoders report statistics on close; they are not for our users.
        let ((), lines) = ffmpeg_log::capture(|| unsafe { sys::avcodec_free_context(&mut self.0) });
        for line in lines {
            tracing::debug!("FFmpeg on close: {line}");
        }
    }
}

struct AvFrame(*mut sys::AVFrame);

impl AvFrame {
    fn alloc() -> anyhow::Result<AvFrame> {
        let f = unsafe { sys::av_frame_alloc() };
        anyhow::ensure!(!f.is_null(), "out of memory allocating a frame");
        Ok(AvFrame(f))
    }
}

impl Drop for AvFrame {
    fn drop(&mut self) {
        unsafe { sys::av_frame_free(&mut self.0) };
    }
}

/// A VA-API device and a pool of NV12 surfaces frames are uploaded into.
struct VaapiFrames {
    device: *mut sys::AVBufferRef,
    frames: *mut sys::AVBufferRef,
}

impl Drop for VaapiFrames {
    fn drop(&mut self) {
        unsafe {
            sys::av_buffer_unref(&mut self.frames);
            sys::av_buffer_unref(&mut self.device);
        }
    }
}

/// Where an open attempt failed, before it is turned into an [`OpenError`].
enum Fail {
    /// Creating the hardware device or its frame pool.
    Device(String),
    /// `avcodec_open2` or a later set-up step.
    Open(String),
}

impl VaapiFrames {
    fn new(device: Option<&str>, width: u32, height: u32) -> Result<VaapiFrames, Fail> {
        let path = match device {
            Some(d) => Some(CString::new(d).map_err(|_| Fail::Device(format!("bad path {d}")))?),
            None => None,
        };
        let mut dev: *mut sys::AVBufferRef = ptr::null_mut();
        let ret = unsafe {
            sys::av_hwdevice_ctx_create(
                &mut dev,
                sys::AVHWDeviceType::AV_HWDEVICE_TYPE_VAAPI,
                path.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
                ptr::null_mut(),
                0,
            )
        };
        if ret < 0 {
            return Err(Fail::Device(format!(
                "cannot open a VA-API device{}: {}",
                device.map(|d| format!(" at {d}")).unwrap_or_default(),
                av_error_text(ret)
            )));
        }
        let mut hw = VaapiFrames {
            device: dev,
            frames: ptr::null_mut(),
        };
        unsafe {
            hw.frames = sys::av_hwframe_ctx_alloc(hw.device);
            if hw.frames.is_null() {
                return Err(Fail::Device("cannot allocate VA-API frames".into()));
            }
            let fc = (*hw.frames).data as *mut sys::AVHWFramesContext;
            (*fc).format = sys::AVPixelFormat::AV_PIX_FMT_VAAPI;
            (*fc).sw_format = sys::AVPixelFormat::AV_PIX_FMT_NV12;
            (*fc).width = width as c_int;
            (*fc).height = height as c_int;
            (*fc).initial_pool_size = 20;
            let ret = sys::av_hwframe_ctx_init(hw.frames);
            if ret < 0 {
                return Err(Fail::Device(format!(
                    "VA-API refused NV12 surfaces of {width}x{height}: {}",
                    av_error_text(ret)
                )));
            }
        }
        Ok(hw)
    }
}

/// How NAL units are delimited in the encoder's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NalFormat {
    /// Start codes (00 00 01), what almost every encoder emits.
    AnnexB,
    /// Big-endian length prefixes of this many bytes (the encoder gave avcC extradata).
    Length(usize),
}

/// SPS, PPS and packet framing read from an encoder's extradata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterSets {
    /// The first SPS NAL unit (no start code).
    pub sps: Vec<u8>,
    /// The first PPS NAL unit (no start code).
    pub pps: Vec<u8>,
    /// How the same encoder frames its packets.
    pub format: NalFormat,
}

/// Reads SPS/PPS from extradata in either form encoders use: Annex B (NVENC, QSV, VA-API,
/// libx264 …) or an avcC record (first byte 1). None when the extradata has no parameter sets.
pub fn parse_extradata(data: &[u8]) -> Option<ParameterSets> {
    if data.len() >= 7 && data[0] == 1 {
        let length = (data[4] & 3) as usize + 1;
        let mut pos = 5;
        // The SPS count shares its byte with three reserved bits; the PPS count does not.
        let read_sets = |pos: &mut usize, mask: u8| -> Option<Vec<Vec<u8>>> {
            let count = (*data.get(*pos)? & mask) as usize;
            *pos += 1;
            let mut sets = Vec::new();
            for _ in 0..count {
                let len = u16::from_be_bytes([*data.get(*pos)?, *data.get(*pos + 1)?]) as usize;
                *pos += 2;
                sets.push(data.get(*pos..*pos + len)?.to_vec());
                *pos += len;
            }
            Some(sets)
        };
        let sps = read_sets(&mut pos, 0x1f)?.into_iter().next()?;
        let pps = read_sets(&mut pos, 0xff)?.into_iter().next()?;
        return Some(ParameterSets {
            sps,
            pps,
            format: NalFormat::Length(length),
        });
    }
    let (sps, pps) = crate::flv::sps_pps_from_annexb(data).ok()?;
    Some(ParameterSets {
        sps,
        pps,
        format: NalFormat::AnnexB,
    })
}

fn split_length_prefixed(data: &[u8], n: usize) -> Option<Vec<&[u8]>> {
    let mut nals = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let head = data.get(pos..pos + n)?;
        let len = head.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        let body = data.get(pos + n..pos + n + len)?;
        if !body.is_empty() {
            nals.push(body);
        }
        pos += n + len;
    }
    Some(nals)
}

/// Splits one encoder packet into NAL units, trusting `format` but falling back to the other
/// framing when the data clearly is not in it.
pub fn split_packet(data: &[u8], format: NalFormat) -> Vec<&[u8]> {
    let annexb = data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1]);
    match format {
        NalFormat::Length(n) => split_length_prefixed(data, n)
            .filter(|nals| !nals.is_empty())
            .unwrap_or_else(|| crate::flv::split_annexb(data)),
        NalFormat::AnnexB if annexb => crate::flv::split_annexb(data),
        NalFormat::AnnexB => {
            split_length_prefixed(data, 4).unwrap_or_else(|| crate::flv::split_annexb(data))
        }
    }
}

/// One encoder packet as AVCC, with what the muxer needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertedAccessUnit {
    /// AVCC payload without SPS/PPS/AUD.
    pub avcc: Vec<u8>,
    /// Contains an IDR slice: a decoder can start here.
    pub keyframe: bool,
    /// No slice is a reference (nal_ref_idc 0): nothing else depends on it.
    pub disposable: bool,
    /// SPS found in the packet, if any.
    pub sps: Option<Vec<u8>>,
    /// PPS found in the packet, if any.
    pub pps: Option<Vec<u8>>,
}

/// Rewrites an encoder packet as AVCC, moving SPS/PPS out (they travel in the sequence
/// header) and dropping access unit delimiters, as RTMP/FLV expect.
pub fn convert_access_unit(data: &[u8], format: NalFormat) -> ConvertedAccessUnit {
    let mut out = ConvertedAccessUnit {
        avcc: Vec::with_capacity(data.len() + 16),
        keyframe: false,
        disposable: true,
        sps: None,
        pps: None,
    };
    for nal in split_packet(data, format) {
        let nal_type = nal[0] & 0x1f;
        match nal_type {
            7 => {
                out.sps.get_or_insert_with(|| nal.to_vec());
                continue;
            }
            8 => {
                out.pps.get_or_insert_with(|| nal.to_vec());
                continue;
            }
            9 => continue,
            5 => out.keyframe = true,
            _ => {}
        }
        if (1..=5).contains(&nal_type) && nal[0] & 0x60 != 0 {
            out.disposable = false;
        }
        out.avcc
            .extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.avcc.extend_from_slice(nal);
    }
    out
}

fn prepend_parameter_sets(avcc: &mut Vec<u8>, sps: &[u8], pps: &[u8]) {
    let mut head = Vec::with_capacity(8 + sps.len() + pps.len() + avcc.len());
    for set in [sps, pps] {
        head.extend_from_slice(&(set.len() as u32).to_be_bytes());
        head.extend_from_slice(set);
    }
    head.append(avcc);
    *avcc = head;
}

/// Copies an I420 frame into an FFmpeg frame as YUV420P or NV12.
///
/// # Safety
/// `dst` must be a writable frame of the frame's size in `format` (YUV420P or NV12).
unsafe fn fill_frame(dst: *mut sys::AVFrame, src: &VideoFrame, nv12: bool) {
    let (w, h) = (src.width as usize, src.height as usize);
    let (y, u, v) = src.planes();
    let (cw, ch) = (w / 2, h / 2);
    let d = &*dst;
    for row in 0..h {
        let line = d.data[0].offset(row as isize * d.linesize[0] as isize);
        ptr::copy_nonoverlapping(y[row * w..].as_ptr(), line, w);
    }
    if nv12 {
        for row in 0..ch {
            let line = std::slice::from_raw_parts_mut(
                d.data[1].offset(row as isize * d.linesize[1] as isize),
                cw * 2,
            );
            let (ur, vr) = (&u[row * cw..][..cw], &v[row * cw..][..cw]);
            for (pair, (a, b)) in line.chunks_exact_mut(2).zip(ur.iter().zip(vr)) {
                pair[0] = *a;
                pair[1] = *b;
            }
        }
    } else {
        for (plane, data) in [(1usize, u), (2, v)] {
            for row in 0..ch {
                let line = d.data[plane].offset(row as isize * d.linesize[plane] as isize);
                ptr::copy_nonoverlapping(data[row * cw..].as_ptr(), line, cw);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One open encoder
// ---------------------------------------------------------------------------------------

/// One opened FFmpeg encoder with its input frame; replaced as a whole on reopen.
struct Session {
    // Field order is drop order: the codec (which holds references to the VA-API frames)
    // goes first.
    ctx: CodecCtx,
    staging: AvFrame,
    vaapi: Option<VaapiFrames>,
    nv12: bool,
    extradata: Vec<u8>,
    codec_name: &'static str,
}

enum Received {
    Packet,
    Again,
    Eof,
}

impl Session {
    /// Opens `backend` with each option set in turn until one works.
    fn open(
        backend: Backend,
        settings: &VideoEncoderSettings,
        options: &FfmpegOptions,
    ) -> Result<Session, OpenError> {
        let codec_name = backend
            .ffmpeg_codec()
            .ok_or(OpenError::NotFfmpeg(backend))?;
        if let Err(e) = ff::init() {
            return Err(OpenError::Failed {
                codec: codec_name,
                detail: format!("FFmpeg did not initialise: {e}"),
            });
        }
        let cname = CString::new(codec_name).expect("codec names have no NUL");
        let codec = unsafe { sys::avcodec_find_encoder_by_name(cname.as_ptr()) };
        if codec.is_null() {
            return Err(OpenError::NotCompiled { codec: codec_name });
        }
        let mut last = None;
        for attempt in backend_options(backend, settings, options) {
            let (result, log) = ffmpeg_log::capture(|| unsafe {
                Self::try_open(codec, codec_name, backend, settings, options, &attempt)
            });
            match result {
                Ok(session) => return Ok(session),
                Err(fail) => last = Some(classify(codec_name, fail, &log)),
            }
        }
        Err(last.unwrap_or(OpenError::Failed {
            codec: codec_name,
            detail: "no option set to try".into(),
        }))
    }

    /// # Safety
    /// `codec` must be the encoder found for `codec_name`.
    unsafe fn try_open(
        codec: *const sys::AVCodec,
        codec_name: &'static str,
        backend: Backend,
        s: &VideoEncoderSettings,
        options: &FfmpegOptions,
        private: &[(&'static str, String)],
    ) -> Result<Session, Fail> {
        let ctx = CodecCtx(sys::avcodec_alloc_context3(codec));
        if ctx.0.is_null() {
            return Err(Fail::Open("out of memory".into()));
        }
        let c = &mut *ctx.0;
        let nv12 = backend != Backend::Vaapi && wants_nv12(codec);
        let sw_format = if nv12 || backend == Backend::Vaapi {
            sys::AVPixelFormat::AV_PIX_FMT_NV12
        } else {
            sys::AVPixelFormat::AV_PIX_FMT_YUV420P
        };
        let gop = keyint_frames(s);
        let r = rates(s.bitrate_kbps, options);
        c.width = s.width as c_int;
        c.height = s.height as c_int;
        c.pix_fmt = sw_format;
        c.sample_aspect_ratio = sys::AVRational { num: 1, den: 1 };
        c.time_base = sys::AVRational { num: 1, den: 1000 };
        c.framerate = sys::AVRational {
            num: s.fps as c_int,
            den: 1,
        };
        c.gop_size = gop as c_int;
        c.keyint_min = gop.min(s.fps) as c_int;
        c.max_b_frames = effective_bframes(s) as c_int;
        c.bit_rate = r.bit_rate;
        c.rc_max_rate = r.max_rate;
        c.rc_buffer_size = r.buffer_bits;
        c.profile = generic_profile(backend, &s.profile);
        c.flags |= sys::AV_CODEC_FLAG_GLOBAL_HEADER as c_int;
        let vaapi = if backend == Backend::Vaapi {
            let hw = VaapiFrames::new(options.vaapi_device.as_deref(), s.width, s.height)?;
            c.pix_fmt = sys::AVPixelFormat::AV_PIX_FMT_VAAPI;
            c.hw_frames_ctx = sys::av_buffer_ref(hw.frames);
            if c.hw_frames_ctx.is_null() {
                return Err(Fail::Open("out of memory".into()));
            }
            Some(hw)
        } else {
            None
        };
        let mut dict: *mut sys::AVDictionary = ptr::null_mut();
        for (key, value) in private {
            let k = CString::new(*key).expect("option names have no NUL");
            let v = CString::new(value.as_str()).map_err(|_| Fail::Open("bad option".into()))?;
            sys::av_dict_set(&mut dict, k.as_ptr(), v.as_ptr(), 0);
        }
        let ret = sys::avcodec_open2(ctx.0, codec, &mut dict);
        let unused = dict_keys(dict);
        sys::av_dict_free(&mut dict);
        if ret < 0 {
            return Err(Fail::Open(av_error_text(ret)));
        }
        if !unused.is_empty() {
            tracing::debug!(
                "{codec_name} in this FFmpeg ignores the options {}",
                unused.join(", ")
            );
        }
        let extradata = if c.extradata.is_null() || c.extradata_size <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(c.extradata, c.extradata_size as usize).to_vec()
        };
        let staging = AvFrame::alloc().map_err(|e| Fail::Open(e.to_string()))?;
        let f = &mut *staging.0;
        f.format = sw_format as c_int;
        f.width = s.width as c_int;
        f.height = s.height as c_int;
        let ret = sys::av_frame_get_buffer(staging.0, 0);
        if ret < 0 {
            return Err(Fail::Open(format!(
                "cannot allocate a frame: {}",
                av_error_text(ret)
            )));
        }
        Ok(Session {
            ctx,
            staging,
            vaapi,
            nv12: sw_format == sys::AVPixelFormat::AV_PIX_FMT_NV12,
            extradata,
            codec_name,
        })
    }

    /// Sends one frame (None: end of stream).
    fn send(&mut self, frame: Option<(&VideoFrame, i64, bool)>) -> anyhow::Result<()> {
        let ret = unsafe {
            match frame {
                None => sys::avcodec_send_frame(self.ctx.0, ptr::null()),
                Some((frame, pts, idr)) => {
                    let f = self.staging.0;
                    let ret = sys::av_frame_make_writable(f);
                    if ret < 0 {
                        bail!("cannot reuse the input frame: {}", av_error_text(ret));
                    }
                    fill_frame(f, frame, self.nv12);
                    (*f).pts = pts;
                    (*f).pict_type = if idr {
                        sys::AVPictureType::AV_PICTURE_TYPE_I
                    } else {
                        sys::AVPictureType::AV_PICTURE_TYPE_NONE
                    };
                    match &self.vaapi {
                        None => sys::avcodec_send_frame(self.ctx.0, f),
                        Some(hw) => {
                            let surface = AvFrame::alloc()?;
                            let mut ret = sys::av_hwframe_get_buffer(hw.frames, surface.0, 0);
                            if ret >= 0 {
                                ret = sys::av_hwframe_transfer_data(surface.0, f, 0);
                            }
                            if ret >= 0 {
                                ret = sys::av_frame_copy_props(surface.0, f);
                            }
                            if ret < 0 {
                                bail!(
                                    "uploading the frame to the VA-API surface failed: {}",
                                    av_error_text(ret)
                                );
                            }
                            sys::avcodec_send_frame(self.ctx.0, surface.0)
                        }
                    }
                }
            }
        };
        if ret < 0 && ret != sys::AVERROR_EOF {
            bail!(
                "{} refused a frame: {}",
                self.codec_name,
                av_error_text(ret)
            );
        }
        Ok(())
    }

    fn receive(&mut self, packet: &mut ff::Packet) -> anyhow::Result<Received> {
        use ff::packet::Mut;
        let ret = unsafe { sys::avcodec_receive_packet(self.ctx.0, packet.as_mut_ptr()) };
        match ret {
            0 => Ok(Received::Packet),
            r if r == sys::AVERROR(ff::util::error::EAGAIN) => Ok(Received::Again),
            r if r == sys::AVERROR_EOF => Ok(Received::Eof),
            r => bail!("{} failed to encode: {}", self.codec_name, av_error_text(r)),
        }
    }

    fn set_target_rate(&mut self, bit_rate: i64) {
        unsafe { (*self.ctx.0).bit_rate = bit_rate };
    }

    fn set_rates(&mut self, r: Rates) {
        unsafe {
            let c = &mut *self.ctx.0;
            c.bit_rate = r.bit_rate;
            c.rc_max_rate = r.max_rate;
            c.rc_buffer_size = r.buffer_bits;
        }
    }
}

/// True when the encoder takes NV12 but not YUV420P (QSV, some VideoToolbox/AMF builds).
///
/// # Safety
/// `codec` must point to a valid encoder.
unsafe fn wants_nv12(codec: *const sys::AVCodec) -> bool {
    let mut p = (*codec).pix_fmts;
    if p.is_null() {
        return false;
    }
    let (mut yuv420p, mut nv12) = (false, false);
    while *p != sys::AVPixelFormat::AV_PIX_FMT_NONE {
        match *p {
            sys::AVPixelFormat::AV_PIX_FMT_YUV420P => yuv420p = true,
            sys::AVPixelFormat::AV_PIX_FMT_NV12 => nv12 = true,
            _ => {}
        }
        p = p.add(1);
    }
    nv12 && !yuv420p
}

/// # Safety
/// `dict` must be null or a valid dictionary.
unsafe fn dict_keys(dict: *const sys::AVDictionary) -> Vec<String> {
    let mut keys = Vec::new();
    let mut entry: *mut sys::AVDictionaryEntry = ptr::null_mut();
    let empty = c"";
    loop {
        entry = sys::av_dict_get(
            dict,
            empty.as_ptr(),
            entry,
            sys::AV_DICT_IGNORE_SUFFIX as c_int,
        );
        if entry.is_null() {
            return keys;
        }
        keys.push(CStr::from_ptr((*entry).key).to_string_lossy().into_owned());
    }
}

/// Messages that mean "this machine has no such GPU or driver" rather than "the encoder
/// refused these settings".
const NO_DEVICE_HINTS: [&str; 9] = [
    "cannot load",
    "no nvenc capable devices",
    "no capable devices",
    "could not find a valid device",
    "mfx session",
    "no device available",
    "cannot open a va display",
    "cannot open drm render node",
    "failed to create a device",
];

fn classify(codec: &'static str, fail: Fail, log: &[String]) -> OpenError {
    let (device, code_text) = match fail {
        Fail::Device(t) => (true, t),
        Fail::Open(t) => (false, t),
    };
    // FFmpeg's message says more than the error code ("Cannot load libcuda.so.1" beats
    // "Operation not permitted"); the code is the fallback.
    let detail = if log.is_empty() {
        code_text
    } else if device {
        format!("{code_text}: {}", log.join("; "))
    } else {
        log.join("; ")
    };
    let lower = detail.to_lowercase();
    if device || NO_DEVICE_HINTS.iter().any(|h| lower.contains(h)) {
        OpenError::NoDevice { detail }
    } else {
        OpenError::Failed { codec, detail }
    }
}

fn keyint_frames(s: &VideoEncoderSettings) -> u32 {
    ((s.fps as f32 * s.keyint_secs).round() as u32).max(1)
}

// ---------------------------------------------------------------------------------------
// The encoder
// ---------------------------------------------------------------------------------------

/// H.264 through one of FFmpeg's encoders (GPU or libx264), as a [`VideoEncoder`].
pub struct FfmpegVideoEncoder {
    backend: Backend,
    settings: VideoEncoderSettings,
    options: FfmpegOptions,
    session: Session,
    format: NalFormat,
    header: VideoHeader,
    /// The parameter sets of the first header: what the far end most likely decodes with.
    announced: (Vec<u8>, Vec<u8>),
    /// The running encoder's parameter sets.
    current: (Vec<u8>, Vec<u8>),
    gop: u32,
    /// Input frames since the last IDR we know of (forced, or the start of a session).
    since_key: u32,
    force_idr: bool,
    /// A bitrate waiting for the next keyframe to reopen the encoder with.
    pending_kbps: Option<u32>,
    /// Peak and buffer of a lowered bitrate, applied one frame after the target (libx264
    /// applies the peak first and would briefly see a peak below the old target).
    staged_rates: Option<Rates>,
    /// Reopen before the next frame (an ignored forced IDR, or encoding after flush).
    reopen: bool,
    /// pts of a frame sent as a forced IDR, until its packet shows whether it was honoured.
    idr_check: Option<i64>,
    last_pts: Option<i64>,
    last_dts: Option<i64>,
    flushed: bool,
    /// SEI payload for the next input frame ([`VideoEncoder::attach_sei`]).
    next_sei: Option<Vec<u8>>,
    /// SEI payloads of frames inside the encoder, by the pts they were sent with; inserted
    /// into their packets as they come out (FFmpeg's encoders take no SEI from us).
    sei_by_pts: std::collections::VecDeque<(i64, Vec<u8>)>,
}

// FFmpeg contexts are used only by the thread that owns the encoder.
unsafe impl Send for FfmpegVideoEncoder {}

impl FfmpegVideoEncoder {
    /// Opens `backend` (any but [`Backend::X264`]) with CBR and default options.
    pub fn open(backend: Backend, settings: &VideoEncoderSettings) -> Result<Self, OpenError> {
        Self::open_with(backend, settings, FfmpegOptions::default())
    }

    /// Opens `backend` with explicit rate-control and device options.
    pub fn open_with(
        backend: Backend,
        settings: &VideoEncoderSettings,
        options: FfmpegOptions,
    ) -> Result<Self, OpenError> {
        let codec = backend
            .ffmpeg_codec()
            .ok_or(OpenError::NotFfmpeg(backend))?;
        if let Err(e) = super::x264::validate(settings) {
            return Err(OpenError::Failed {
                codec,
                detail: format!("{e:#}"),
            });
        }
        let mut session = Session::open(backend, settings, &options)?;
        let sets = match parse_extradata(&session.extradata) {
            Some(sets) => sets,
            None => {
                // No global header (some V4L2 drivers): learn SPS/PPS from a throw-away
                // encode, then start the real encoder fresh.
                drop(session);
                let sets = prime_parameter_sets(backend, settings, &options)?;
                session = Session::open(backend, settings, &options)?;
                sets
            }
        };
        let avc_config =
            crate::flv::avc_decoder_config_record(&sets.sps, &sets.pps).map_err(|e| {
                OpenError::Failed {
                    codec,
                    detail: format!("its SPS/PPS are unusable: {e}"),
                }
            })?;
        let header = VideoHeader {
            width: settings.width,
            height: settings.height,
            fps: settings.fps,
            bitrate_kbps: settings.bitrate_kbps,
            avc_config,
        };
        Ok(FfmpegVideoEncoder {
            backend,
            settings: settings.clone(),
            format: sets.format,
            header,
            announced: (sets.sps.clone(), sets.pps.clone()),
            current: (sets.sps, sets.pps),
            gop: keyint_frames(settings),
            since_key: 0,
            force_idr: false,
            pending_kbps: None,
            staged_rates: None,
            reopen: false,
            idr_check: None,
            last_pts: None,
            last_dts: None,
            flushed: false,
            next_sei: None,
            sei_by_pts: std::collections::VecDeque::new(),
            options,
            session,
        })
    }

    /// The backend this encoder runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The bitrate the encoder is running at now (a pending change not yet applied excluded).
    pub fn current_bitrate_kbps(&self) -> u32 {
        self.settings.bitrate_kbps
    }

    fn drain(&mut self, out: &mut Vec<Packet>) -> anyhow::Result<()> {
        let mut packet = ff::Packet::empty();
        loop {
            match self.session.receive(&mut packet)? {
                Received::Again | Received::Eof => return Ok(()),
                Received::Packet => {
                    if let Some(p) = self.convert(&packet) {
                        out.push(p);
                    }
                }
            }
        }
    }

    fn convert(&mut self, packet: &ff::Packet) -> Option<Packet> {
        let data = packet.data()?;
        let mut unit = convert_access_unit(data, self.format);
        if let (Some(sps), Some(pps)) = (unit.sps.take(), unit.pps.take()) {
            if (&sps, &pps) != (&self.current.0, &self.current.1) {
                self.adopt_parameter_sets(sps, pps);
            }
        }
        if unit.avcc.is_empty() {
            return None;
        }
        if let Some(pts) = packet.pts() {
            if let Some(i) = self.sei_by_pts.iter().position(|(p, _)| *p == pts) {
                let (_, payload) = self.sei_by_pts.remove(i).expect("found");
                crate::qa::stamp::insert_before_first_slice(
                    &mut unit.avcc,
                    &crate::qa::stamp::sei_nal(&payload),
                );
            }
        }
        if unit.keyframe && self.current != self.announced {
            // The decoder was configured with other parameter sets: send these in-band.
            prepend_parameter_sets(&mut unit.avcc, &self.current.0, &self.current.1);
        }
        let fallback = self.last_pts.unwrap_or(0);
        let pts = packet.pts().unwrap_or(fallback);
        let mut dts = packet.dts().unwrap_or(pts).min(pts);
        if let Some(last) = self.last_dts {
            dts = dts.max(last);
        }
        self.last_dts = Some(dts);
        if let Some(expected) = self.idr_check {
            if pts >= expected {
                self.idr_check = None;
                if pts == expected && !unit.keyframe {
                    tracing::info!(
                        "{} did not honour a forced keyframe; restarting it for a new IDR",
                        self.backend
                    );
                    self.reopen = true;
                }
            }
        }
        Some(Packet {
            kind: MediaKind::Video,
            data: Bytes::from(unit.avcc),
            pts_ms: pts,
            dts_ms: dts,
            keyframe: unit.keyframe,
            disposable: unit.disposable,
        })
    }

    fn adopt_parameter_sets(&mut self, sps: Vec<u8>, pps: Vec<u8>) {
        match crate::flv::avc_decoder_config_record(&sps, &pps) {
            Ok(record) => {
                if (&sps, &pps) != (&self.announced.0, &self.announced.1) {
                    tracing::debug!(
                        "{} changed its SPS/PPS; sending them in-band with keyframes",
                        self.backend
                    );
                }
                self.header.avc_config = record;
                self.current = (sps, pps);
            }
            Err(e) => tracing::warn!("{} produced unusable SPS/PPS: {e}", self.backend),
        }
    }

    /// Replaces the running encoder (applying a pending bitrate); its first frame is an IDR.
    fn reopen_session(&mut self, out: &mut Vec<Packet>) -> anyhow::Result<()> {
        let mut settings = self.settings.clone();
        if let Some(kbps) = self.pending_kbps {
            settings.bitrate_kbps = kbps;
        }
        // Open the new encoder while the old one still runs, so a failure changes nothing;
        // devices that allow one session at a time get the old one closed first.
        let session = match Session::open(self.backend, &settings, &self.options) {
            Ok(s) => {
                self.finish_session(out)?;
                s
            }
            Err(first) => {
                self.finish_session(out)?;
                Session::open(self.backend, &settings, &self.options).with_context(|| {
                    format!("reopening {} (first attempt: {first})", self.backend)
                })?
            }
        };
        let old = std::mem::replace(&mut self.session, session);
        drop(old);
        if let Some(sets) = parse_extradata(&self.session.extradata) {
            self.format = sets.format;
            if (&sets.sps, &sets.pps) != (&self.current.0, &self.current.1) {
                self.adopt_parameter_sets(sets.sps, sets.pps);
            }
        }
        self.settings = settings;
        self.pending_kbps = None;
        self.staged_rates = None;
        self.reopen = false;
        self.flushed = false;
        self.idr_check = None;
        self.force_idr = false;
        self.since_key = 0;
        Ok(())
    }

    /// Drains the running encoder to its end.
    fn finish_session(&mut self, out: &mut Vec<Packet>) -> anyhow::Result<()> {
        if !self.flushed {
            self.session.send(None)?;
            self.drain(out)?;
            self.flushed = true;
        }
        Ok(())
    }
}

/// Learns SPS/PPS by encoding one black frame with a throw-away encoder, for encoders that
/// give no extradata even with GLOBAL_HEADER.
fn prime_parameter_sets(
    backend: Backend,
    settings: &VideoEncoderSettings,
    options: &FfmpegOptions,
) -> Result<ParameterSets, OpenError> {
    let codec = backend.ffmpeg_codec().unwrap_or("?");
    let failed = |detail: String| OpenError::Failed { codec, detail };
    let mut session = Session::open(backend, settings, options)?;
    let frame = VideoFrame::black(settings.width, settings.height, 0, 0);
    let (result, log) = ffmpeg_log::capture(|| -> anyhow::Result<Option<ParameterSets>> {
        session.send(Some((&frame, 0, true)))?;
        session.send(None)?;
        let mut packet = ff::Packet::empty();
        while let Received::Packet = session.receive(&mut packet)? {
            let Some(data) = packet.data() else { continue };
            let unit = convert_access_unit(data, NalFormat::AnnexB);
            if let (Some(sps), Some(pps)) = (unit.sps, unit.pps) {
                return Ok(Some(ParameterSets {
                    sps,
                    pps,
                    format: NalFormat::AnnexB,
                }));
            }
        }
        Ok(None)
    });
    match result {
        Ok(Some(sets)) => Ok(sets),
        Ok(None) => Err(failed(
            "it gives no SPS/PPS, neither as extradata nor in its first keyframe".into(),
        )),
        Err(e) => Err(failed(
            format!("{e:#} {}", log.join("; ")).trim().to_string(),
        )),
    }
}

impl VideoEncoder for FfmpegVideoEncoder {
    fn encode(&mut self, frame: &VideoFrame) -> anyhow::Result<Vec<Packet>> {
        if frame.width != self.settings.width || frame.height != self.settings.height {
            bail!(
                "frame is {}x{} but the encoder was opened for {}x{}",
                frame.width,
                frame.height,
                self.settings.width,
                self.settings.height
            );
        }
        let mut out = Vec::new();
        let keyframe_due = self.force_idr || self.since_key >= self.gop;
        if self.flushed || self.reopen || (self.pending_kbps.is_some() && keyframe_due) {
            self.reopen_session(&mut out)?;
        }
        // Encoders need strictly increasing timestamps; equal capture times are nudged by 1 ms.
        let pts = match self.last_pts {
            Some(last) if frame.pts_ms <= last => last + 1,
            _ => frame.pts_ms,
        };
        self.last_pts = Some(pts);
        if let Some(payload) = self.next_sei.take() {
            self.sei_by_pts.push_back((pts, payload));
            // Frames the encoder dropped never come out: forget their payloads.
            while self.sei_by_pts.len() > 64 {
                self.sei_by_pts.pop_front();
            }
        }
        let idr = std::mem::take(&mut self.force_idr);
        if idr {
            self.idr_check = Some(pts);
            self.since_key = 0;
        }
        self.session.send(Some((frame, pts, idr)))?;
        self.since_key += 1;
        if let Some(r) = self.staged_rates.take() {
            self.session.set_rates(r);
        }
        self.drain(&mut out)?;
        Ok(out)
    }

    fn flush(&mut self) -> anyhow::Result<Vec<Packet>> {
        let mut out = Vec::new();
        self.finish_session(&mut out)?;
        Ok(out)
    }

    fn header(&self) -> VideoHeader {
        self.header.clone()
    }

    fn set_bitrate(&mut self, kbps: u32) -> anyhow::Result<()> {
        if !(50..=100_000).contains(&kbps) {
            bail!("bitrate {kbps} kbps is invalid: use 50 to 100000");
        }
        if live_bitrate_change(self.backend) {
            let r = rates(kbps, &self.options);
            let lowering = kbps < self.settings.bitrate_kbps;
            if self.backend == Backend::FfmpegX264 && lowering {
                self.session.set_target_rate(r.bit_rate);
                self.staged_rates = Some(r);
            } else {
                self.session.set_rates(r);
                self.staged_rates = None;
            }
            self.settings.bitrate_kbps = kbps;
            self.pending_kbps = None;
        } else {
            self.pending_kbps = Some(kbps);
        }
        self.header.bitrate_kbps = kbps;
        Ok(())
    }

    fn force_keyframe(&mut self) {
        self.force_idr = true;
    }

    fn attach_sei(&mut self, payload: Vec<u8>) {
        self.next_sei = Some(payload);
    }

    fn name(&self) -> &'static str {
        self.backend.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(n);
        }
        out
    }

    const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb];

    #[test]
    fn extradata_in_both_forms_gives_the_same_sets() {
        let a = parse_extradata(&annexb(&[SPS, PPS])).unwrap();
        assert_eq!((a.sps.as_slice(), a.pps.as_slice()), (SPS, PPS));
        assert_eq!(a.format, NalFormat::AnnexB);
        let mut avcc = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1];
        avcc.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        avcc.extend_from_slice(SPS);
        avcc.push(1);
        avcc.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        avcc.extend_from_slice(PPS);
        let b = parse_extradata(&avcc).unwrap();
        assert_eq!((b.sps.as_slice(), b.pps.as_slice()), (SPS, PPS));
        assert_eq!(b.format, NalFormat::Length(4));
        assert!(parse_extradata(&[]).is_none());
        assert!(parse_extradata(&[1, 2, 3]).is_none());
    }

    #[test]
    fn packets_become_avcc_without_parameter_sets() {
        let aud: &[u8] = &[0x09, 0xf0];
        let sei: &[u8] = &[0x06, 0x05, 0x01, 0x80];
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x21];
        let unit = convert_access_unit(&annexb(&[aud, SPS, PPS, sei, idr]), NalFormat::AnnexB);
        assert!(unit.keyframe && !unit.disposable);
        assert_eq!(unit.sps.as_deref(), Some(SPS));
        assert_eq!(unit.pps.as_deref(), Some(PPS));
        let nals = crate::flv::split_avcc(&unit.avcc).unwrap();
        assert_eq!(nals, vec![sei, idr]);

        // A non-reference B slice (nal_ref_idc 0) may be dropped.
        let b: &[u8] = &[0x01, 0x9e, 0x07];
        let unit = convert_access_unit(&annexb(&[b]), NalFormat::AnnexB);
        assert!(!unit.keyframe && unit.disposable);
        // A reference P slice may not.
        let p: &[u8] = &[0x41, 0x9a, 0x07];
        let unit = convert_access_unit(&annexb(&[p]), NalFormat::AnnexB);
        assert!(!unit.keyframe && !unit.disposable);

        // Length-prefixed input (encoders with avcC extradata) is read as such, even when a
        // length looks like a start code.
        let mut lp = Vec::new();
        let big = [&[0x41u8][..], &[0u8; 299][..]].concat();
        lp.extend_from_slice(&(big.len() as u32).to_be_bytes());
        lp.extend_from_slice(&big);
        let unit = convert_access_unit(&lp, NalFormat::Length(4));
        assert_eq!(crate::flv::split_avcc(&unit.avcc).unwrap(), vec![&big[..]]);
    }

    #[test]
    fn in_band_parameter_sets_can_be_prepended() {
        let mut avcc = vec![0, 0, 0, 1, 0x65];
        prepend_parameter_sets(&mut avcc, SPS, PPS);
        let nals = crate::flv::split_avcc(&avcc).unwrap();
        assert_eq!(nals, vec![SPS, PPS, &[0x65][..]]);
    }

    #[test]
    fn rates_follow_the_rate_control_mode() {
        let cbr = rates(2500, &FfmpegOptions::default());
        assert_eq!(
            cbr,
            Rates {
                bit_rate: 2_500_000,
                max_rate: 2_500_000,
                buffer_bits: 2_500_000
            }
        );
        let vbr = rates(
            2000,
            &FfmpegOptions {
                rate_control: RateControl::Vbr { peak_percent: 150 },
                buffer_ms: 2000,
                vaapi_device: None,
            },
        );
        assert_eq!(vbr.max_rate, 3_000_000);
        assert_eq!(vbr.buffer_bits, 6_000_000);
    }

    fn opts(backend: Backend, s: &VideoEncoderSettings) -> Vec<Vec<(&'static str, String)>> {
        backend_options(backend, s, &FfmpegOptions::default())
    }

    fn has(set: &[(&'static str, String)], key: &str, value: &str) -> bool {
        set.iter().any(|(k, v)| *k == key && v == value)
    }

    #[test]
    fn each_backend_gets_its_low_latency_options() {
        let s = VideoEncoderSettings::default();
        let nvenc = &opts(Backend::Nvenc, &s)[0];
        for (k, v) in [
            ("preset", "p4"),
            ("tune", "ll"),
            ("zerolatency", "1"),
            ("rc", "cbr"),
            ("forced-idr", "1"),
            ("profile", "high"),
        ] {
            assert!(has(nvenc, k, v), "nvenc lacks {k}={v}: {nvenc:?}");
        }
        let qsv = opts(Backend::Qsv, &s);
        assert_eq!(qsv.len(), 2, "QSV retries without low_power");
        assert!(has(&qsv[0], "low_power", "1") && has(&qsv[0], "look_ahead", "0"));
        assert!(!qsv[1].iter().any(|(k, _)| *k == "low_power"));
        assert!(has(&qsv[0], "forced_idr", "1") && has(&qsv[0], "preset", "veryfast"));
        assert!(has(&opts(Backend::Vaapi, &s)[0], "rc_mode", "CBR"));
        assert!(has(&opts(Backend::Amf, &s)[0], "usage", "ultralowlatency"));
        assert!(has(&opts(Backend::Amf, &s)[0], "rc", "cbr"));
        assert!(has(&opts(Backend::VideoToolbox, &s)[0], "realtime", "1"));
        let x = &opts(Backend::FfmpegX264, &s)[0];
        assert!(has(x, "preset", "veryfast") && has(x, "tune", "zerolatency"));
        assert!(has(x, "forced-idr", "1") && has(x, "x264-params", "filler=1"));

        // B-frames turn NVENC's zero-latency mode off; Baseline turns B-frames off.
        let b = VideoEncoderSettings {
            bframes: 2,
            ..Default::default()
        };
        assert!(!opts(Backend::Nvenc, &b)[0]
            .iter()
            .any(|(k, _)| *k == "zerolatency"));
        let baseline = VideoEncoderSettings {
            bframes: 2,
            profile: "baseline".into(),
            ..Default::default()
        };
        assert_eq!(effective_bframes(&baseline), 0);
        assert!(has(
            &opts(Backend::Vaapi, &baseline)[0],
            "profile",
            "constrained_baseline"
        ));
        let vbr = FfmpegOptions {
            rate_control: RateControl::Vbr { peak_percent: 150 },
            ..Default::default()
        };
        assert!(has(
            &backend_options(Backend::Amf, &s, &vbr)[0],
            "rc",
            "vbr_peak"
        ));
        assert!(has(
            &backend_options(Backend::Vaapi, &s, &vbr)[0],
            "rc_mode",
            "VBR"
        ));
    }

    #[test]
    fn missing_hardware_is_an_error_not_a_crash() {
        let s = VideoEncoderSettings {
            width: 256,
            height: 144,
            ..Default::default()
        };
        for backend in Backend::ALL.into_iter().filter(|b| b.is_hardware()) {
            match FfmpegVideoEncoder::open(backend, &s) {
                Ok(_) => eprintln!("{backend} opens on this machine"),
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.len() > 10, "{backend}: {text}");
                }
            }
        }
        assert!(matches!(
            FfmpegVideoEncoder::open(Backend::X264, &s),
            Err(OpenError::NotFfmpeg(Backend::X264))
        ));
    }

    #[test]
    fn vaapi_without_a_device_reports_no_device() {
        let s = VideoEncoderSettings {
            width: 256,
            height: 144,
            ..Default::default()
        };
        let options = FfmpegOptions {
            vaapi_device: Some("/nonexistent/renderD128".into()),
            ..Default::default()
        };
        match FfmpegVideoEncoder::open_with(Backend::Vaapi, &s, options) {
            Err(OpenError::NoDevice { detail }) => assert!(!detail.is_empty()),
            Err(OpenError::NotCompiled { .. }) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
            Ok(_) => panic!("a VA-API device at a missing path opened"),
        }
    }

    fn card(i: u64) -> VideoFrame {
        let mut f = VideoFrame::black(320, 240, i as i64 * 33, i);
        // Something that changes every frame.
        let luma = 320 * 240;
        for (j, p) in f.data[..luma].iter_mut().enumerate() {
            *p = ((j as u64 * 7 + i * 13) % 200) as u8 + 16;
        }
        f
    }

    #[test]
    fn libx264_through_ffmpeg_encodes_and_forces_idr() {
        let s = VideoEncoderSettings {
            width: 320,
            height: 240,
            encoder: "ffmpeg-x264".into(),
            ..Default::default()
        };
        let mut enc = FfmpegVideoEncoder::open(Backend::FfmpegX264, &s).unwrap();
        assert_eq!(enc.name(), "ffmpeg-x264");
        let header = enc.header();
        assert_eq!(header.avc_config[0], 1);
        assert_eq!(header.avc_config[1], 100, "High profile");
        let mut packets = Vec::new();
        for i in 0..20 {
            if i == 10 {
                enc.force_keyframe();
            }
            packets.extend(enc.encode(&card(i)).unwrap());
        }
        packets.extend(enc.flush().unwrap());
        assert_eq!(packets.len(), 20);
        let keys: Vec<usize> = (0..20).filter(|&i| packets[i].keyframe).collect();
        assert_eq!(keys, vec![0, 10]);
        for (i, p) in packets.iter().enumerate() {
            assert_eq!(p.pts_ms, i as i64 * 33);
            assert_eq!(p.dts_ms, p.pts_ms);
            for nal in crate::flv::split_avcc(&p.data).unwrap() {
                assert!(
                    !matches!(nal[0] & 0x1f, 7..=9),
                    "parameter set in packet {i}"
                );
            }
        }
        // Encoding after flush starts a fresh encoder instead of failing.
        let more = enc.encode(&card(20)).unwrap();
        let rest = enc.flush().unwrap();
        let all: Vec<_> = more.into_iter().chain(rest).collect();
        assert_eq!(all.len(), 1);
        assert!(all[0].keyframe);
    }

    #[test]
    fn reopening_applies_a_pending_bitrate_at_the_next_keyframe() {
        // Drive the reopen path (used by the GPU backends) through libx264.
        let s = VideoEncoderSettings {
            width: 320,
            height: 240,
            keyint_secs: 0.5,
            ..Default::default()
        };
        let mut enc = FfmpegVideoEncoder::open(Backend::FfmpegX264, &s).unwrap();
        let mut packets = Vec::new();
        for i in 0..5 {
            packets.extend(enc.encode(&card(i)).unwrap());
        }
        enc.pending_kbps = Some(800);
        for i in 5..40 {
            packets.extend(enc.encode(&card(i)).unwrap());
            if i < 14 {
                assert_eq!(enc.current_bitrate_kbps(), 2500, "frame {i}");
            }
        }
        packets.extend(enc.flush().unwrap());
        assert_eq!(enc.current_bitrate_kbps(), 800);
        assert_eq!(packets.len(), 40);
        let keys: Vec<usize> = (0..40).filter(|&i| packets[i].keyframe).collect();
        assert_eq!(keys, vec![0, 15, 30], "reopened at the scheduled keyframe");
        let mut last = i64::MIN;
        for p in &packets {
            assert!(p.dts_ms >= last && p.dts_ms <= p.pts_ms);
            last = p.dts_ms;
        }
    }
}
