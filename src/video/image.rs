//! Pictures in and out of the filter chain: PNG files, RGB(A) ⇄ I420 (BT.601 limited range,
//! as the encoders expect), and the PSNR used to compare two frames.

use crate::media::VideoFrame;
use anyhow::{bail, Context};
use std::io::{BufReader, Cursor, Write};
use std::path::Path;

/// An 8-bit RGBA picture, rows top to bottom, no padding: what PNG files decode to.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbaImage {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `width * height * 4` bytes, non-premultiplied alpha.
    pub data: Vec<u8>,
}

impl RgbaImage {
    /// Decodes a PNG (grey, grey+alpha, RGB, RGBA or palette, 8 or 16 bits).
    pub fn decode_png(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut decoder = png::Decoder::new(BufReader::new(Cursor::new(bytes)));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().context("not a PNG file")?;
        let size = reader
            .output_buffer_size()
            .context("PNG too large to decode")?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).context("decoding the PNG")?;
        let (w, h) = (info.width, info.height);
        let px = (w * h) as usize;
        let data = match info.color_type {
            png::ColorType::Rgba => buf[..px * 4].to_vec(),
            png::ColorType::Rgb => buf[..px * 3]
                .chunks_exact(3)
                .flat_map(|c| [c[0], c[1], c[2], 255])
                .collect(),
            png::ColorType::GrayscaleAlpha => buf[..px * 2]
                .chunks_exact(2)
                .flat_map(|c| [c[0], c[0], c[0], c[1]])
                .collect(),
            png::ColorType::Grayscale => buf[..px].iter().flat_map(|&g| [g, g, g, 255]).collect(),
            other => bail!("PNG colour type {other:?} is not supported"),
        };
        Ok(RgbaImage {
            width: w,
            height: h,
            data,
        })
    }

    /// Reads and decodes a PNG file.
    pub fn load_png(path: &Path) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::decode_png(&bytes).with_context(|| format!("{} is not a usable PNG", path.display()))
    }

    /// Encodes as an RGBA PNG, or RGB when every pixel is opaque (smaller files).
    pub fn encode_png(&self) -> anyhow::Result<Vec<u8>> {
        let opaque = self.data.chunks_exact(4).all(|p| p[3] == 255);
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_depth(png::BitDepth::Eight);
            let rgb: Vec<u8>;
            let data = if opaque {
                enc.set_color(png::ColorType::Rgb);
                rgb = self
                    .data
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]])
                    .collect();
                &rgb[..]
            } else {
                enc.set_color(png::ColorType::Rgba);
                &self.data[..]
            };
            let mut writer = enc.write_header()?;
            writer.write_image_data(data)?;
            writer.finish()?;
        }
        Ok(out)
    }

    /// Writes the picture as a PNG file.
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = self.encode_png()?;
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(&bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Converts to an I420 frame, dropping a last odd row or column (I420 needs even sizes);
    /// alpha is ignored.
    pub fn to_i420(&self, pts_ms: i64, index: u64) -> anyhow::Result<VideoFrame> {
        let (w, h) = (self.width & !1, self.height & !1);
        if w < 2 || h < 2 {
            bail!(
                "picture {}x{} is too small: at least 2x2 is needed",
                self.width,
                self.height
            );
        }
        let mut frame = VideoFrame::black(w, h, pts_ms, index);
        let (wu, hu, stride) = (w as usize, h as usize, self.width as usize);
        let px = |x: usize, y: usize| {
            let o = (y * stride + x) * 4;
            [
                self.data[o] as f32,
                self.data[o + 1] as f32,
                self.data[o + 2] as f32,
            ]
        };
        for y in 0..hu {
            for x in 0..wu {
                let [r, g, b] = px(x, y);
                frame.data[y * wu + x] =
                    to_u8(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0);
            }
        }
        let (cw, ch) = (wu / 2, hu / 2);
        let luma = wu * hu;
        for cy in 0..ch {
            for cx in 0..cw {
                let mut s = [0.0f32; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = px(cx * 2 + dx, cy * 2 + dy);
                    for k in 0..3 {
                        s[k] += p[k] / 4.0;
                    }
                }
                let [r, g, b] = s;
                let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
                let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
                frame.data[luma + cy * cw + cx] = to_u8(u);
                frame.data[luma + cw * ch + cy * cw + cx] = to_u8(v);
            }
        }
        Ok(frame)
    }

    /// Converts an I420 frame to an opaque RGBA picture (chroma upsampled bilinearly).
    pub fn from_i420(frame: &VideoFrame) -> Self {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (cw, ch) = (w / 2, h / 2);
        let (yp, up, vp) = frame.planes();
        let chroma = |plane: &[u8], x: usize, y: usize| -> f32 {
            // Chroma samples sit at the centre of each 2x2 luma block.
            let fx = ((x as f32 + 0.5) * 0.5 - 0.5).max(0.0);
            let fy = ((y as f32 + 0.5) * 0.5 - 0.5).max(0.0);
            let (x0, y0) = (fx as usize, fy as usize);
            let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
            let (x1, y1) = ((x0 + 1).min(cw - 1), (y0 + 1).min(ch - 1));
            let at = |x: usize, y: usize| plane[y * cw + x] as f32;
            let top = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
            let bottom = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
            top * (1.0 - ty) + bottom * ty
        };
        let mut data = Vec::with_capacity(w * h * 4);
        for y in 0..h {
            for x in 0..w {
                let l = 1.164 * (yp[y * w + x] as f32 - 16.0);
                let u = chroma(up, x, y) - 128.0;
                let v = chroma(vp, x, y) - 128.0;
                data.extend_from_slice(&[
                    to_u8(l + 1.596 * v),
                    to_u8(l - 0.392 * u - 0.813 * v),
                    to_u8(l + 2.017 * u),
                    255,
                ]);
            }
        }
        RgbaImage {
            width: frame.width,
            height: frame.height,
            data,
        }
    }

    /// Two pictures of the same height next to each other (before | after).
    pub fn side_by_side(&self, other: &RgbaImage) -> anyhow::Result<RgbaImage> {
        if self.height != other.height {
            bail!(
                "cannot put a {}-line picture next to a {}-line one",
                self.height,
                other.height
            );
        }
        let width = self.width + other.width;
        let mut data = Vec::with_capacity((width * self.height * 4) as usize);
        for y in 0..self.height as usize {
            let a = self.width as usize * 4;
            let b = other.width as usize * 4;
            data.extend_from_slice(&self.data[y * a..(y + 1) * a]);
            data.extend_from_slice(&other.data[y * b..(y + 1) * b]);
        }
        Ok(RgbaImage {
            width,
            height: self.height,
            data,
        })
    }
}

fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Peak signal-to-noise ratio of `b` against `a` in dB (8-bit samples); infinite when equal.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "PSNR of buffers of different sizes");
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    if se == 0.0 {
        return f64::INFINITY;
    }
    let mse = se / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_and_i420_round_trip() {
        let img = RgbaImage {
            width: 4,
            height: 2,
            data: [
                [224, 172, 140, 255],
                [224, 172, 140, 255],
                [10, 200, 30, 255],
                [10, 200, 30, 255],
            ]
            .repeat(2)
            .concat(),
        };
        let back = RgbaImage::decode_png(&img.encode_png().unwrap()).unwrap();
        assert_eq!(back, img);
        let skin = RgbaImage {
            width: 4,
            height: 4,
            data: [224, 172, 140, 255].repeat(16),
        };
        let frame = skin.to_i420(0, 0).unwrap();
        let rgb = RgbaImage::from_i420(&frame);
        for (a, b) in skin.data.iter().zip(&rgb.data) {
            assert!((*a as i32 - *b as i32).abs() <= 2, "{a} vs {b}");
        }
        assert!(psnr(&skin.data, &rgb.data) > 40.0);
        assert!(psnr(&img.data, &img.data).is_infinite());
    }
}
