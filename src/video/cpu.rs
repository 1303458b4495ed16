//! The CPU reference of every filter: plain Rust written for clarity, one function per shader
//! in `shaders/`, computing the same formulas on the same numbers ([`Uniform`]). Tests compare
//! the GPU against it, and it runs the chain when no GPU adapter exists at all.

use super::params::{PlacedLogo, Uniform};
use super::settings::Stage;

/// An I420 frame as floats (0-255 scale), planes in the same order and layout as the bytes.
pub(crate) struct Planes<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [f32],
}

impl Planes<'_> {
    /// (base offset, width, height) of plane 0 (Y), 1 (U) or 2 (V).
    fn plane(&self, p: usize) -> (usize, usize, usize) {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w / 2, h / 2);
        match p {
            0 => (0, w, h),
            1 => (w * h, cw, ch),
            _ => (w * h + cw * ch, cw, ch),
        }
    }

    /// Which plane sample `i` belongs to, and its (x, y) in that plane.
    fn locate(&self, i: usize) -> (usize, i32, i32) {
        let luma = self.width * self.height;
        let (p, k) = if i < luma {
            (0, i)
        } else {
            let c = (self.width / 2) * (self.height / 2);
            (1 + (i - luma) / c, (i - luma) % c)
        };
        let (_, pw, _) = self.plane(p);
        (p, (k % pw) as i32, (k / pw) as i32)
    }

    /// Sample of plane `p` at (x, y), coordinates clamped to the plane (edge pixels repeat).
    fn at(&self, p: usize, x: i32, y: i32) -> f32 {
        let (base, pw, ph) = self.plane(p);
        let x = x.clamp(0, pw as i32 - 1) as usize;
        let y = y.clamp(0, ph as i32 - 1) as usize;
        self.data[base + y * pw + x]
    }
}

/// Bytes to floats (`shaders/unpack.wgsl`).
pub(crate) fn unpack(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| b as f32).collect()
}

/// Floats to bytes, rounding half up and clamping (`shaders/pack.wgsl`).
pub(crate) fn pack(src: &[f32], out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = (v.clamp(0.0, 255.0) + 0.5).floor() as u8;
    }
}

/// Runs one stage: reads `src`, writes `dst` (when the stage changes the picture) and the
/// skin mask (one value per luma sample).
pub(crate) fn run_stage(
    stage: Stage,
    u: &Uniform,
    logo: Option<&PlacedLogo>,
    src: &[f32],
    dst: &mut [f32],
    mask: &mut [f32],
) {
    let f = Planes {
        width: u.width as usize,
        height: u.height as usize,
        data: src,
    };
    match stage {
        Stage::Denoise => denoise(u, &f, dst),
        Stage::SkinMask => skin_mask(u, &f, dst, mask),
        Stage::Smoothing => smoothing(u, &f, dst, mask),
        Stage::Whitening => whitening(u, &f, dst, mask),
        Stage::Color => color(u, &f, dst),
        Stage::Sharpen => sharpen(u, &f, dst),
        Stage::Watermark => watermark(u, &f, dst, logo),
    }
}

/// 5x5 bilateral filter on every plane (`shaders/denoise.wgsl`).
fn denoise(u: &Uniform, f: &Planes, dst: &mut [f32]) {
    let sigma_r = u.a[0];
    let inv_r = 1.0 / (2.0 * sigma_r * sigma_r);
    let inv_s = 1.0 / (2.0 * 1.5 * 1.5);
    for (i, out) in dst.iter_mut().enumerate() {
        let (p, x, y) = f.locate(i);
        let c = f.data[i];
        let (mut sum, mut wsum) = (0.0f32, 0.0f32);
        for dy in -2..=2 {
            for dx in -2..=2 {
                let v = f.at(p, x + dx, y + dy);
                let d = v - c;
                let w = (-((dx * dx + dy * dy) as f32) * inv_s - d * d * inv_r).exp();
                sum += w * v;
                wsum += w;
            }
        }
        *out = (sum / wsum).clamp(0.0, 255.0);
    }
}

/// Soft membership of `v` in `lo..hi`, ramps of width `m` centred on both ends.
fn band(v: f32, lo: f32, hi: f32, m: f32) -> f32 {
    let s = |t: f32| {
        let t = t.clamp(0.0, 1.0);
        t * t * (3.0 - 2.0 * t)
    };
    s((v - lo) / m + 0.5) * s((hi - v) / m + 0.5)
}

/// Chroma plane `p` interpolated at luma pixel (x, y) (chroma sited at 2x2 block centres).
fn chroma_at_luma(f: &Planes, p: usize, x: i32, y: i32) -> f32 {
    let fx = (x as f32 + 0.5) * 0.5 - 0.5;
    let fy = (y as f32 + 0.5) * 0.5 - 0.5;
    let (x0, y0) = (fx.floor(), fy.floor());
    let (tx, ty) = (fx - x0, fy - y0);
    let (x0, y0) = (x0 as i32, y0 as i32);
    let top = f.at(p, x0, y0) * (1.0 - tx) + f.at(p, x0 + 1, y0) * tx;
    let bottom = f.at(p, x0, y0 + 1) * (1.0 - tx) + f.at(p, x0 + 1, y0 + 1) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// Skin likelihood per luma pixel from a soft Cb/Cr range test (`shaders/skin_mask.wgsl`).
fn skin_mask(u: &Uniform, f: &Planes, dst: &mut [f32], mask: &mut [f32]) {
    let show = u.flags & 1 != 0;
    let m = u.b[0];
    let luma = f.width * f.height;
    for i in 0..luma {
        let (x, y) = ((i % f.width) as i32, (i / f.width) as i32);
        let cb = chroma_at_luma(f, 1, x, y);
        let cr = chroma_at_luma(f, 2, x, y);
        let dark = band(f.data[i], 32.0, 1000.0, m);
        let v = band(cb, u.a[0], u.a[1], m) * band(cr, u.a[2], u.a[3], m) * dark;
        mask[i] = v;
        if show {
            dst[i] = 16.0 + 219.0 * v;
        }
    }
    if show {
        dst[luma..].fill(128.0);
    }
}

/// Bilateral filter on luma, 7x7 taps `step` pixels apart, blended through the skin mask
/// (`shaders/smoothing.wgsl`).
fn smoothing(u: &Uniform, f: &Planes, dst: &mut [f32], mask: &[f32]) {
    let [amount, step, sigma_s, sigma_r] = u.a;
    let step = step as i32;
    let inv_s = 1.0 / (2.0 * sigma_s * sigma_s);
    let inv_r = 1.0 / (2.0 * sigma_r * sigma_r);
    let use_mask = u.flags & 1 != 0;
    let luma = f.width * f.height;
    for i in 0..luma {
        let (x, y) = ((i % f.width) as i32, (i / f.width) as i32);
        let c = f.data[i];
        let (mut sum, mut wsum) = (0.0f32, 0.0f32);
        for ky in -3..=3 {
            for kx in -3..=3 {
                let (dx, dy) = (kx * step, ky * step);
                let v = f.at(0, x + dx, y + dy);
                let d = v - c;
                let w = (-((dx * dx + dy * dy) as f32) * inv_s - d * d * inv_r).exp();
                sum += w * v;
                wsum += w;
            }
        }
        let m = if use_mask { mask[i] } else { 1.0 };
        dst[i] = (c + (sum / wsum - c) * amount * m).clamp(0.0, 255.0);
    }
    dst[luma..].copy_from_slice(&f.data[luma..]);
}

/// Logarithmic lift of luma between black (16) and white (235), through the skin mask when
/// asked (`shaders/whitening.wgsl`).
fn whitening(u: &Uniform, f: &Planes, dst: &mut [f32], mask: &[f32]) {
    let [beta, inv_log_beta, _, _] = u.a;
    let use_mask = u.flags & 1 != 0;
    let luma = f.width * f.height;
    for (i, out) in dst[..luma].iter_mut().enumerate() {
        let y = f.data[i];
        *out = if !(16.0..=235.0).contains(&y) {
            y
        } else {
            let t = (y - 16.0) / 219.0;
            let lifted = 16.0 + 219.0 * (1.0 + (beta - 1.0) * t).ln() * inv_log_beta;
            let m = if use_mask { mask[i] } else { 1.0 };
            y + (lifted - y) * m
        };
    }
    dst[luma..].copy_from_slice(&f.data[luma..]);
}

/// Brightness and contrast on luma, saturation on chroma (`shaders/color.wgsl`).
fn color(u: &Uniform, f: &Planes, dst: &mut [f32]) {
    let [brightness, contrast, saturation, _] = u.a;
    let luma = f.width * f.height;
    for (i, out) in dst.iter_mut().enumerate() {
        let v = f.data[i];
        let r = if i < luma {
            (v - 125.5) * contrast + 125.5 + brightness
        } else {
            (v - 128.0) * saturation + 128.0
        };
        *out = r.clamp(0.0, 255.0);
    }
}

/// Unsharp mask on luma with a 3x3 binomial blur (`shaders/sharpen.wgsl`).
fn sharpen(u: &Uniform, f: &Planes, dst: &mut [f32]) {
    let gain = u.a[0];
    let luma = f.width * f.height;
    for (i, out) in dst[..luma].iter_mut().enumerate() {
        let (x, y) = ((i % f.width) as i32, (i / f.width) as i32);
        let c = f.data[i];
        let mut blur = 0.0f32;
        for dy in -1..=1i32 {
            for dx in -1..=1i32 {
                let w = ((2 - dx.abs()) * (2 - dy.abs())) as f32 / 16.0;
                blur += w * f.at(0, x + dx, y + dy);
            }
        }
        *out = (c + gain * (c - blur)).clamp(0.0, 255.0);
    }
    dst[luma..].copy_from_slice(&f.data[luma..]);
}

/// Premultiplied logo texel at frame luma pixel (x, y); transparent outside the logo.
fn logo_at(u: &Uniform, logo: &PlacedLogo, x: i32, y: i32) -> [f32; 4] {
    let (lx, ly) = (x - u.logo_x, y - u.logo_y);
    if lx < 0 || ly < 0 || lx >= u.logo_w as i32 || ly >= u.logo_h as i32 {
        return [0.0; 4];
    }
    logo.texels[ly as usize * u.logo_w as usize + lx as usize]
}

/// Alpha blend of the placed logo; chroma takes the average of its 2x2 luma block
/// (`shaders/watermark.wgsl`).
fn watermark(u: &Uniform, f: &Planes, dst: &mut [f32], logo: Option<&PlacedLogo>) {
    let opacity = u.a[0];
    let Some(logo) = logo else {
        dst.copy_from_slice(f.data);
        return;
    };
    for (i, out) in dst.iter_mut().enumerate() {
        let (p, x, y) = f.locate(i);
        let t = if p == 0 {
            logo_at(u, logo, x, y)
        } else {
            let mut acc = [0.0f32; 4];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let q = logo_at(u, logo, 2 * x + dx, 2 * y + dy);
                for k in 0..4 {
                    acc[k] += q[k] * 0.25;
                }
            }
            acc
        };
        let c = f.data[i];
        *out = (c * (1.0 - t[3] * opacity) + t[p] * opacity).clamp(0.0, 255.0);
    }
}
