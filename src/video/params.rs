//! Turns settings into the numbers each filter runs with, once per configuration, shared by
//! the GPU (as the uniform block of every shader) and the CPU reference, so both compute the
//! same thing from the same inputs.

use super::image::RgbaImage;
use super::settings::{Corner, FilterSettings, Stage};
use bytemuck::{Pod, Zeroable};

/// Threads per workgroup of every shader (`@workgroup_size(256)` in `shaders/`).
pub(crate) const WORKGROUP: u32 = 256;

/// The uniform block of every shader; field order and padding match `Params` in
/// `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct Uniform {
    pub width: u32,
    pub height: u32,
    /// Bytes (= samples) in the I420 frame.
    pub len: u32,
    /// Invocations that do work in this dispatch.
    pub count: u32,
    /// Invocations per row of the 2-D dispatch grid.
    pub row_threads: u32,
    /// Stage-specific switches (bit 0).
    pub flags: u32,
    pub logo_w: u32,
    pub logo_h: u32,
    pub logo_x: i32,
    pub logo_y: i32,
    pub _pad: [u32; 2],
    /// Stage-specific numbers (see [`stage_uniform`]).
    pub a: [f32; 4],
    pub b: [f32; 4],
}

/// Workgroups to dispatch (x, y) so that at least `count` invocations run, staying within
/// the 65535-per-dimension limit.
pub(crate) fn dispatch_size(count: u32) -> (u32, u32) {
    let groups = count.div_ceil(WORKGROUP).max(1);
    let x = groups.min(65_535);
    (x, groups.div_ceil(x))
}

impl Uniform {
    /// The common part: frame size and a dispatch covering `count` invocations.
    pub(crate) fn frame(width: u32, height: u32, count: u32) -> Self {
        let (x, _) = dispatch_size(count);
        Uniform {
            width,
            height,
            len: crate::media::VideoFrame::i420_len(width, height) as u32,
            count,
            row_threads: x * WORKGROUP,
            ..Default::default()
        }
    }
}

/// A logo ready to blend: premultiplied (Y·a, U·a, V·a, a) per pixel at the exact size it is
/// drawn, with its top-left corner in frame pixels.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlacedLogo {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
    pub texels: Vec<[f32; 4]>,
}

/// Scales `logo` to the size and corner the settings ask for on a `width`x`height` frame,
/// converting it to premultiplied BT.601 limited-range YUVA.
pub(crate) fn place_logo(
    logo: &RgbaImage,
    s: &super::settings::WatermarkSettings,
    width: u32,
    height: u32,
) -> PlacedLogo {
    let aspect = logo.height as f32 / logo.width.max(1) as f32;
    let mut tw = (s.scale * width as f32).round().max(1.0);
    let mut th = (tw * aspect).round().max(1.0);
    if th > height as f32 {
        tw = (tw * height as f32 / th).round().max(1.0);
        th = height as f32;
    }
    let (tw, th) = (tw as u32, th as u32);
    let margin = (s.margin * height as f32).round() as i32;
    let (fw, fh) = (width as i32, height as i32);
    let (x, y) = match s.position {
        Corner::TopLeft => (margin, margin),
        Corner::TopRight => (fw - tw as i32 - margin, margin),
        Corner::BottomLeft => (margin, fh - th as i32 - margin),
        Corner::BottomRight => (fw - tw as i32 - margin, fh - th as i32 - margin),
        Corner::Center => ((fw - tw as i32) / 2, (fh - th as i32) / 2),
    };
    // Premultiplied RGBA in 0..1, so resampling does not bleed colour from transparent areas.
    let src: Vec<[f32; 4]> = logo
        .data
        .chunks_exact(4)
        .map(|p| {
            let a = p[3] as f32 / 255.0;
            [p[0] as f32 * a, p[1] as f32 * a, p[2] as f32 * a, a]
        })
        .collect();
    let (lw, lh) = (logo.width as usize, logo.height as usize);
    let sx = lw as f32 / tw as f32;
    let sy = lh as f32 / th as f32;
    let mut texels = Vec::with_capacity((tw * th) as usize);
    for ty in 0..th as usize {
        for tx in 0..tw as usize {
            let p = if sx > 1.0 || sy > 1.0 {
                // Shrinking: average the source pixels under this one.
                let x0 = (tx as f32 * sx) as usize;
                let x1 = (((tx + 1) as f32 * sx).ceil() as usize).clamp(x0 + 1, lw);
                let y0 = (ty as f32 * sy) as usize;
                let y1 = (((ty + 1) as f32 * sy).ceil() as usize).clamp(y0 + 1, lh);
                let mut acc = [0.0f32; 4];
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        let q = src[yy * lw + xx];
                        for k in 0..4 {
                            acc[k] += q[k];
                        }
                    }
                }
                let n = ((x1 - x0) * (y1 - y0)) as f32;
                acc.map(|v| v / n)
            } else {
                // Enlarging: bilinear.
                let fx = ((tx as f32 + 0.5) * sx - 0.5).max(0.0);
                let fy = ((ty as f32 + 0.5) * sy - 0.5).max(0.0);
                let (x0, y0) = (fx as usize, fy as usize);
                let (x1, y1) = ((x0 + 1).min(lw - 1), (y0 + 1).min(lh - 1));
                let (wx, wy) = (fx - x0 as f32, fy - y0 as f32);
                let mut acc = [0.0f32; 4];
                for (xx, yy, wgt) in [
                    (x0, y0, (1.0 - wx) * (1.0 - wy)),
                    (x1, y0, wx * (1.0 - wy)),
                    (x0, y1, (1.0 - wx) * wy),
                    (x1, y1, wx * wy),
                ] {
                    let q = src[yy * lw + xx];
                    for k in 0..4 {
                        acc[k] += q[k] * wgt;
                    }
                }
                acc
            };
            // Premultiplied RGB to premultiplied YUV: the offsets scale with alpha too.
            let [r, g, b, a] = p;
            texels.push([
                16.0 * a + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0,
                128.0 * a + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0,
                128.0 * a + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0,
                a,
            ]);
        }
    }
    PlacedLogo {
        x,
        y,
        width: tw,
        height: th,
        texels,
    }
}

/// The uniform block of `stage` for a `width`x`height` frame.
pub(crate) fn stage_uniform(
    stage: Stage,
    s: &FilterSettings,
    width: u32,
    height: u32,
    logo: Option<&PlacedLogo>,
) -> Uniform {
    let len = crate::media::VideoFrame::i420_len(width, height) as u32;
    let mut u = Uniform::frame(width, height, len);
    match stage {
        Stage::Denoise => {
            let sigma_r = 30.0 * s.denoise.amount;
            u.a = [sigma_r, 0.0, 0.0, 0.0];
        }
        Stage::SkinMask => {
            let m = &s.skin_mask;
            u.a = [m.cb_min, m.cb_max, m.cr_min, m.cr_max];
            u.b = [0.5 + 16.0 * m.softness, 0.0, 0.0, 0.0];
            u.flags = m.show as u32;
        }
        Stage::Smoothing => {
            let r = (s.smoothing.radius * height as f32 / 720.0).max(1.0);
            let step = (r / 3.0).round().max(1.0);
            let sigma_s = (r / 2.0).max(0.5);
            u.a = [s.smoothing.amount, step, sigma_s, s.smoothing.edge];
            u.flags = s.skin_mask.enabled as u32;
        }
        Stage::Whitening => {
            let beta = 1.0 + 4.0 * s.whitening.amount;
            u.a = [beta, 1.0 / beta.ln(), 0.0, 0.0];
            u.flags = (s.whitening.skin_only && s.skin_mask.enabled) as u32;
        }
        Stage::Color => {
            let c = &s.color;
            u.a = [c.brightness * 100.0, c.contrast, c.saturation, 0.0];
        }
        Stage::Sharpen => {
            u.a = [2.5 * s.sharpen.amount, 0.0, 0.0, 0.0];
        }
        Stage::Watermark => {
            if let Some(l) = logo {
                u.logo_x = l.x;
                u.logo_y = l.y;
                u.logo_w = l.width;
                u.logo_h = l.height;
            }
            u.a = [s.watermark.opacity, 0.0, 0.0, 0.0];
        }
    }
    u
}

/// Whether a stage replaces the frame (true) or only produces the skin mask (false).
pub(crate) fn writes_frame(stage: Stage, s: &FilterSettings) -> bool {
    stage != Stage::SkinMask || s.skin_mask.show
}
