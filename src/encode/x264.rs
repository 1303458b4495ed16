//! H.264 through libx264, driven through its C API (`x264-sys`) because streaming needs what
//! a simple wrapper lacks: VBV limits, live reconfiguration of the bitrate and forced IDRs.

use super::{VideoEncoder, VideoEncoderSettings};
use crate::media::{MediaKind, Packet, VideoFrame, VideoHeader};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use std::collections::VecDeque;
use std::ffi::CString;
use std::mem::MaybeUninit;
use x264_sys as sys;

/// A running x264 encoder.
pub struct X264Encoder {
    handle: *mut sys::x264_t,
    params: sys::x264_param_t,
    settings: VideoEncoderSettings,
    header: VideoHeader,
    next_index: i64,
    force_idr: bool,
    /// (frame index, pts in ms) of frames inside the encoder, to map x264's timestamps back.
    in_flight: VecDeque<(i64, i64)>,
    /// ms per frame, for dts before the first frame (B-frame delay).
    frame_ms: f64,
    /// SEI payload for the next input frame ([`VideoEncoder::attach_sei`]).
    next_sei: Option<Vec<u8>>,
}

// The x264 handle is only used from the thread that owns the encoder.
unsafe impl Send for X264Encoder {}

/// x264 presets, fastest first (the values `video.preset` accepts).
pub const PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];
const TUNES: [&str; 8] = [
    "",
    "film",
    "animation",
    "grain",
    "stillimage",
    "psnr",
    "ssim",
    "zerolatency",
];
const PROFILES: [&str; 3] = ["baseline", "main", "high"];

/// Checks the settings x264 would refuse, with a message naming the field.
pub fn validate(s: &VideoEncoderSettings) -> anyhow::Result<()> {
    if !PRESETS.contains(&s.preset.as_str()) {
        bail!(
            "video.preset = '{}' is unknown: use one of {}",
            s.preset,
            PRESETS.join(", ")
        );
    }
    if !TUNES.contains(&s.tune.as_str()) {
        bail!(
            "video.tune = '{}' is unknown: use one of {}",
            s.tune,
            TUNES[1..].join(", ")
        );
    }
    if !PROFILES.contains(&s.profile.as_str()) {
        bail!(
            "video.profile = '{}' is unknown: use one of {}",
            s.profile,
            PROFILES.join(", ")
        );
    }
    if s.width < 16 || s.height < 16 || !s.width.is_multiple_of(2) || !s.height.is_multiple_of(2) {
        bail!("video size (video.width x video.height) {}x{} is invalid: both must be even and at least 16", s.width, s.height);
    }
    if !(1..=240).contains(&s.fps) {
        bail!("video.fps = {} is invalid: use 1 to 240", s.fps);
    }
    if !(50..=100_000).contains(&s.bitrate_kbps) {
        bail!(
            "video.bitrate_kbps = {} is invalid: use 50 to 100000",
            s.bitrate_kbps
        );
    }
    if !(0.1..=20.0).contains(&s.keyint_secs) {
        bail!(
            "video.keyint_secs = {} is invalid: use 0.1 to 20",
            s.keyint_secs
        );
    }
    if s.bframes > 4 {
        bail!("video.bframes = {} is invalid: use 0 to 4", s.bframes);
    }
    Ok(())
}

impl X264Encoder {
    /// Opens x264 with the given settings (CBR: maxrate = bitrate, VBV buffer = 1 s).
    pub fn open(settings: &VideoEncoderSettings) -> anyhow::Result<Self> {
        validate(settings)?;
        let preset = CString::new(settings.preset.as_str())?;
        let tune = CString::new(settings.tune.as_str())?;
        let profile = CString::new(settings.profile.as_str())?;
        let mut params = unsafe {
            let mut p = MaybeUninit::<sys::x264_param_t>::zeroed();
            let tune_ptr = if settings.tune.is_empty() {
                std::ptr::null()
            } else {
                tune.as_ptr()
            };
            if sys::x264_param_default_preset(p.as_mut_ptr(), preset.as_ptr(), tune_ptr) < 0 {
                bail!(
                    "x264 refused preset '{}' / tune '{}'",
                    settings.preset,
                    settings.tune
                );
            }
            p.assume_init()
        };
        params.i_width = settings.width as i32;
        params.i_height = settings.height as i32;
        params.i_csp = sys::X264_CSP_I420 as i32;
        params.i_fps_num = settings.fps;
        params.i_fps_den = 1;
        params.i_timebase_num = 1;
        params.i_timebase_den = settings.fps;
        params.b_vfr_input = 0;
        params.i_keyint_max = ((settings.fps as f32 * settings.keyint_secs).round() as i32).max(1);
        params.i_keyint_min = params.i_keyint_max.min(settings.fps as i32);
        params.i_bframe = settings.bframes as i32;
        params.b_repeat_headers = 0;
        params.b_annexb = 0;
        params.i_log_level = sys::X264_LOG_WARNING as i32;
        params.rc.i_rc_method = sys::X264_RC_ABR as i32;
        set_rate(&mut params, settings.bitrate_kbps);
        // True CBR, as streaming services expect: filler keeps the rate constant even on an
        // easy picture, so the network sees (and adaptation measures) the rate we asked for.
        params.rc.b_filler = 1;
        unsafe {
            if sys::x264_param_apply_profile(&mut params, profile.as_ptr()) < 0 {
                bail!(
                    "x264 refused profile '{}' with these settings",
                    settings.profile
                );
            }
        }
        let handle = unsafe { sys::x264_encoder_open(&mut params) };
        if handle.is_null() {
            bail!(
                "x264 could not open an encoder for {}x{}@{}",
                settings.width,
                settings.height,
                settings.fps
            );
        }
        let mut enc = X264Encoder {
            handle,
            params,
            settings: settings.clone(),
            header: VideoHeader {
                width: settings.width,
                height: settings.height,
                fps: settings.fps,
                bitrate_kbps: settings.bitrate_kbps,
                avc_config: Bytes::new(),
            },
            next_index: 0,
            force_idr: false,
            in_flight: VecDeque::new(),
            frame_ms: 1000.0 / settings.fps as f64,
            next_sei: None,
        };
        enc.header.avc_config = enc.read_headers().context("x264 produced no SPS/PPS")?;
        Ok(enc)
    }

    fn read_headers(&mut self) -> anyhow::Result<Bytes> {
        let mut nals: *mut sys::x264_nal_t = std::ptr::null_mut();
        let mut count = 0;
        let ret = unsafe { sys::x264_encoder_headers(self.handle, &mut nals, &mut count) };
        if ret < 0 || nals.is_null() {
            bail!("x264_encoder_headers failed");
        }
        let nals = unsafe { std::slice::from_raw_parts(nals, count as usize) };
        let (mut sps, mut pps) = (None, None);
        for nal in nals {
            // Without Annex B each payload starts with a 4-byte size instead of a start code.
            let payload =
                unsafe { std::slice::from_raw_parts(nal.p_payload, nal.i_payload as usize) };
            let body = &payload[4..];
            match body.first().map(|b| b & 0x1f) {
                Some(7) => sps = Some(body.to_vec()),
                Some(8) => pps = Some(body.to_vec()),
                _ => {}
            }
        }
        let sps = sps.ok_or_else(|| anyhow!("no SPS in x264 headers"))?;
        let pps = pps.ok_or_else(|| anyhow!("no PPS in x264 headers"))?;
        Ok(crate::flv::avc_decoder_config_record(&sps, &pps)?)
    }

    fn collect(
        &mut self,
        nals: *mut sys::x264_nal_t,
        count: i32,
        pic: &sys::x264_picture_t,
    ) -> Option<Packet> {
        if count <= 0 || nals.is_null() {
            return None;
        }
        let nals = unsafe { std::slice::from_raw_parts(nals, count as usize) };
        let mut data = Vec::with_capacity(nals.iter().map(|n| n.i_payload as usize).sum());
        let mut disposable = true;
        for nal in nals {
            let payload =
                unsafe { std::slice::from_raw_parts(nal.p_payload, nal.i_payload as usize) };
            let nal_type = payload.get(4).map(|b| b & 0x1f).unwrap_or(0);
            if (1..=5).contains(&nal_type) && nal.i_ref_idc != 0 {
                disposable = false;
            }
            data.extend_from_slice(payload);
        }
        let pts_ms = self.pts_ms_of(pic.i_pts);
        let dts_ms = self.dts_ms_of(pic.i_dts);
        // Frames leave x264 in decode order; forget the ones older than this pts.
        while self.in_flight.len() > 64 {
            self.in_flight.pop_front();
        }
        Some(Packet {
            kind: MediaKind::Video,
            data: Bytes::from(data),
            pts_ms,
            dts_ms: dts_ms.min(pts_ms),
            keyframe: pic.b_keyframe != 0,
            disposable,
        })
    }

    fn pts_ms_of(&self, index: i64) -> i64 {
        self.in_flight
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, ms)| *ms)
            .unwrap_or((index as f64 * self.frame_ms) as i64)
    }

    fn dts_ms_of(&self, index: i64) -> i64 {
        if let Some(&(i0, ms0)) = self.in_flight.front() {
            if index < i0 {
                // Before the first frame (B-frame delay): step back by whole frames.
                return ms0 - ((i0 - index) as f64 * self.frame_ms) as i64;
            }
        }
        self.pts_ms_of(index)
    }

    fn encode_raw(&mut self, input: Option<&VideoFrame>) -> anyhow::Result<Option<Packet>> {
        let mut pic_in = MaybeUninit::<sys::x264_picture_t>::zeroed();
        unsafe { sys::x264_picture_init(pic_in.as_mut_ptr()) };
        let mut pic_in = unsafe { pic_in.assume_init() };
        let mut pic_out = MaybeUninit::<sys::x264_picture_t>::zeroed();
        let mut nals: *mut sys::x264_nal_t = std::ptr::null_mut();
        let mut count = 0;
        let ret = match input {
            Some(frame) => {
                if frame.width != self.settings.width || frame.height != self.settings.height {
                    bail!(
                        "frame is {}x{} but the encoder was opened for {}x{}",
                        frame.width,
                        frame.height,
                        self.settings.width,
                        self.settings.height
                    );
                }
                let (y, u, v) = frame.planes();
                let w = frame.width as i32;
                pic_in.img.i_csp = sys::X264_CSP_I420 as i32;
                pic_in.img.i_plane = 3;
                pic_in.img.i_stride = [w, w / 2, w / 2, 0];
                // x264 only reads the input planes.
                pic_in.img.plane = [
                    y.as_ptr() as *mut u8,
                    u.as_ptr() as *mut u8,
                    v.as_ptr() as *mut u8,
                    std::ptr::null_mut(),
                ];
                pic_in.i_pts = self.next_index;
                if self.force_idr {
                    pic_in.i_type = sys::X264_TYPE_IDR as i32;
                    self.force_idr = false;
                }
                if let Some(payload) = self.next_sei.take() {
                    pic_in.extra_sei = extra_sei(&payload)?;
                }
                self.in_flight.push_back((self.next_index, frame.pts_ms));
                self.next_index += 1;
                unsafe {
                    sys::x264_encoder_encode(
                        self.handle,
                        &mut nals,
                        &mut count,
                        &mut pic_in,
                        pic_out.as_mut_ptr(),
                    )
                }
            }
            None => unsafe {
                sys::x264_encoder_encode(
                    self.handle,
                    &mut nals,
                    &mut count,
                    std::ptr::null_mut(),
                    pic_out.as_mut_ptr(),
                )
            },
        };
        if ret < 0 {
            bail!("x264 failed to encode a frame");
        }
        if ret == 0 {
            return Ok(None);
        }
        let pic_out = unsafe { pic_out.assume_init() };
        Ok(self.collect(nals, count, &pic_out))
    }
}

/// Frees what [`extra_sei`] allocated; x264 calls it for each payload and then for the
/// payload array once the SEI is written.
unsafe extern "C" fn free_sei(p: *mut std::ffi::c_void) {
    libc::free(p);
}

/// One `user_data_unregistered` SEI message for x264 to write with a picture. x264 keeps the
/// buffers until the picture is encoded (possibly several calls later) and frees them with
/// `sei_free`, so they are allocated with malloc rather than owned by Rust.
fn extra_sei(payload: &[u8]) -> anyhow::Result<sys::x264_sei_t> {
    unsafe {
        let data = libc::malloc(payload.len().max(1)) as *mut u8;
        let list = libc::malloc(std::mem::size_of::<sys::x264_sei_payload_t>())
            as *mut sys::x264_sei_payload_t;
        if data.is_null() || list.is_null() {
            libc::free(data as *mut libc::c_void);
            libc::free(list as *mut libc::c_void);
            bail!("out of memory for an SEI message");
        }
        std::ptr::copy_nonoverlapping(payload.as_ptr(), data, payload.len());
        list.write(sys::x264_sei_payload_t {
            payload_size: payload.len() as i32,
            payload_type: 5, // user_data_unregistered
            payload: data,
        });
        Ok(sys::x264_sei_t {
            num_payloads: 1,
            payloads: list,
            sei_free: Some(free_sei),
        })
    }
}

fn set_rate(params: &mut sys::x264_param_t, kbps: u32) {
    params.rc.i_bitrate = kbps as i32;
    params.rc.i_vbv_max_bitrate = kbps as i32;
    params.rc.i_vbv_buffer_size = kbps as i32;
}

impl VideoEncoder for X264Encoder {
    fn encode(&mut self, frame: &VideoFrame) -> anyhow::Result<Vec<Packet>> {
        Ok(self.encode_raw(Some(frame))?.into_iter().collect())
    }

    fn flush(&mut self) -> anyhow::Result<Vec<Packet>> {
        let mut out = Vec::new();
        while unsafe { sys::x264_encoder_delayed_frames(self.handle) } > 0 {
            match self.encode_raw(None)? {
                Some(p) => out.push(p),
                None => break,
            }
        }
        Ok(out)
    }

    fn header(&self) -> VideoHeader {
        self.header.clone()
    }

    fn set_bitrate(&mut self, kbps: u32) -> anyhow::Result<()> {
        let mut params = self.params;
        set_rate(&mut params, kbps);
        let ret = unsafe { sys::x264_encoder_reconfig(self.handle, &mut params) };
        if ret < 0 {
            bail!("x264 refused the new bitrate {kbps} kbps");
        }
        self.params = params;
        self.settings.bitrate_kbps = kbps;
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
        "x264"
    }
}

impl Drop for X264Encoder {
    fn drop(&mut self) {
        unsafe { sys::x264_encoder_close(self.handle) };
    }
}
