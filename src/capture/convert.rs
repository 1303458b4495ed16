//! Camera pixels to the pipeline's I420: cameras deliver MJPEG, YUYV, NV12 or packed RGB at
//! whatever size they support, and the encoders want planar 4:2:0 at the stream's size.
//! FFmpeg does the work (its MJPEG decoder and swscale), so conversions are SIMD-accelerated
//! and match what FFmpeg itself produces; the scaler is kept while size and format stay.

use crate::media::VideoFrame;
use anyhow::{anyhow, bail, Context};
use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

/// A pixel layout a camera can deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Motion JPEG: every frame a JPEG picture (usually 4:2:2 or 4:2:0, full range).
    Mjpeg,
    /// Packed 4:2:2, Y0 U Y1 V (V4L2 `YUYV`, FFmpeg `yuyv422`).
    Yuyv,
    /// A Y plane, then interleaved U/V at half resolution (FFmpeg `nv12`).
    Nv12,
    /// Packed 8-bit R, G, B.
    Rgb24,
    /// Packed 8-bit B, G, R.
    Bgr24,
    /// Packed 8-bit R, G, B, A (alpha ignored).
    Rgba,
    /// 8-bit luma only.
    Gray,
}

impl PixelFormat {
    /// Every format the converter accepts.
    pub const ALL: [PixelFormat; 7] = [
        PixelFormat::Mjpeg,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Rgba,
        PixelFormat::Gray,
    ];

    /// The four-character code shown to users (as V4L2 spells it).
    pub fn fourcc(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "MJPG",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Nv12 => "NV12",
            PixelFormat::Rgb24 => "RGB3",
            PixelFormat::Bgr24 => "BGR3",
            PixelFormat::Rgba => "AB24",
            PixelFormat::Gray => "GREY",
        }
    }

    /// Parses a user's format name (`mjpeg`, `yuyv`, `nv12`, `rgb`, `bgr`, `rgba`, `gray`, or
    /// the fourcc), case-insensitive.
    pub fn parse(text: &str) -> anyhow::Result<PixelFormat> {
        let t = text.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "mjpeg" | "mjpg" | "jpeg" => PixelFormat::Mjpeg,
            "yuyv" | "yuy2" | "yuyv422" => PixelFormat::Yuyv,
            "nv12" => PixelFormat::Nv12,
            "rgb" | "rgb24" | "rgb3" => PixelFormat::Rgb24,
            "bgr" | "bgr24" | "bgr3" => PixelFormat::Bgr24,
            "rgba" | "ab24" => PixelFormat::Rgba,
            "gray" | "grey" | "y8" => PixelFormat::Gray,
            _ => bail!("pixel format '{text}' is not supported: use mjpeg, yuyv, nv12, rgb, bgr, rgba or gray"),
        })
    }

    /// FFmpeg's name for the raw layout (None for MJPEG, which is decoded first).
    fn ff_pixel(self) -> Option<Pixel> {
        Some(match self {
            PixelFormat::Mjpeg => return None,
            PixelFormat::Yuyv => Pixel::YUYV422,
            PixelFormat::Nv12 => Pixel::NV12,
            PixelFormat::Rgb24 => Pixel::RGB24,
            PixelFormat::Bgr24 => Pixel::BGR24,
            PixelFormat::Rgba => Pixel::RGBA,
            PixelFormat::Gray => Pixel::GRAY8,
        })
    }

    /// Bytes of one raw frame of this size (None for MJPEG, whose size varies).
    pub fn frame_len(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        Some(match self {
            PixelFormat::Mjpeg => return None,
            PixelFormat::Yuyv => w * 2 * h,
            PixelFormat::Nv12 => w * h + w.div_ceil(2) * 2 * h.div_ceil(2),
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => w * 3 * h,
            PixelFormat::Rgba => w * 4 * h,
            PixelFormat::Gray => w * h,
        })
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.fourcc())
    }
}

/// Converts camera frames of any supported format and size to I420 at one output size.
pub struct Converter {
    out_width: u32,
    out_height: u32,
    /// The scaler for the last input (format, width, height), reused while it stays.
    scaler: Option<((Pixel, u32, u32), scaling::Context)>,
    /// The MJPEG decoder, opened on the first MJPEG frame.
    mjpeg: Option<ff::decoder::Video>,
    input: ff::frame::Video,
    output: ff::frame::Video,
}

// SAFETY: the FFmpeg contexts and frames are owned exclusively by the converter and only
// used through `&mut self`; FFmpeg allows using them from any one thread at a time.
unsafe impl Send for Converter {}

impl Converter {
    /// A converter producing `width`x`height` I420 (both even and non-zero).
    pub fn new(width: u32, height: u32) -> anyhow::Result<Converter> {
        if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            bail!("output size {width}x{height} is invalid: width and height must be even");
        }
        ff::init().map_err(|e| anyhow!("FFmpeg did not initialise: {e}"))?;
        Ok(Converter {
            out_width: width,
            out_height: height,
            scaler: None,
            mjpeg: None,
            input: ff::frame::Video::empty(),
            output: ff::frame::Video::empty(),
        })
    }

    /// The output size.
    pub fn output_size(&self) -> (u32, u32) {
        (self.out_width, self.out_height)
    }

    /// Converts one camera frame (`data` in `format`, `width`x`height`) into an I420 frame
    /// at the output size with the given pts and index. Short or corrupt input is an error,
    /// never a panic.
    pub fn convert(
        &mut self,
        format: PixelFormat,
        width: u32,
        height: u32,
        data: &[u8],
        pts_ms: i64,
        index: u64,
    ) -> anyhow::Result<VideoFrame> {
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            bail!("camera frame size {width}x{height} is invalid");
        }
        match format.ff_pixel() {
            None => {
                self.decode_mjpeg(data)?;
                let (w, h) = (self.input.width(), self.input.height());
                if (w, h) != (width, height) {
                    tracing::debug!("MJPEG frame is {w}x{h}, camera said {width}x{height}");
                }
            }
            Some(pixel) => self.fill_raw(format, pixel, width, height, data)?,
        }
        self.scale()?;
        let mut frame = VideoFrame::black(self.out_width, self.out_height, pts_ms, index);
        copy_planes(&self.output, &mut frame);
        Ok(frame)
    }

    /// Copies a raw frame into the reusable FFmpeg input frame.
    fn fill_raw(
        &mut self,
        format: PixelFormat,
        pixel: Pixel,
        width: u32,
        height: u32,
        data: &[u8],
    ) -> anyhow::Result<()> {
        let need = format.frame_len(width, height).unwrap_or(0);
        if data.len() < need {
            bail!(
                "camera frame too short: {} bytes for {width}x{height} {format} (need {need})",
                data.len()
            );
        }
        // An empty frame has no format, so it never matches.
        if self.input.format() != pixel
            || self.input.width() != width
            || self.input.height() != height
        {
            self.input = ff::frame::Video::new(pixel, width, height);
        }
        let (w, h) = (width as usize, height as usize);
        // Each plane: (bytes per row, rows) in the tightly packed camera buffer.
        let planes: Vec<(usize, usize)> = match format {
            PixelFormat::Yuyv => vec![(w * 2, h)],
            PixelFormat::Nv12 => vec![(w, h), (w.div_ceil(2) * 2, h.div_ceil(2))],
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => vec![(w * 3, h)],
            PixelFormat::Rgba => vec![(w * 4, h)],
            PixelFormat::Gray => vec![(w, h)],
            PixelFormat::Mjpeg => unreachable!("MJPEG is decoded, not copied"),
        };
        let mut offset = 0;
        for (i, (row, rows)) in planes.into_iter().enumerate() {
            let stride = self.input.stride(i);
            let dst = self.input.data_mut(i);
            for r in 0..rows {
                dst[r * stride..r * stride + row]
                    .copy_from_slice(&data[offset + r * row..offset + (r + 1) * row]);
            }
            offset += row * rows;
        }
        Ok(())
    }

    /// Decodes one JPEG picture into the input frame.
    fn decode_mjpeg(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if data.len() < 4 || data[0] != 0xff || data[1] != 0xd8 {
            bail!(
                "camera sent a corrupt MJPEG frame ({} bytes, no JPEG start marker)",
                data.len()
            );
        }
        if self.mjpeg.is_none() {
            let codec = ff::decoder::find(ff::codec::Id::MJPEG)
                .ok_or_else(|| anyhow!("this FFmpeg has no MJPEG decoder"))?;
            let mut ctx = ff::codec::Context::new_with_codec(codec);
            ctx.set_threading(ff::threading::Config {
                kind: ff::threading::Type::None,
                count: 1,
                ..Default::default()
            });
            let dec = ctx
                .decoder()
                .open_as(codec)
                .and_then(|o| o.video())
                .context("cannot open FFmpeg's MJPEG decoder")?;
            self.mjpeg = Some(dec);
        }
        let dec = self.mjpeg.as_mut().expect("opened above");
        let packet = ff::Packet::copy(data);
        dec.send_packet(&packet)
            .map_err(|e| anyhow!("camera sent an MJPEG frame FFmpeg cannot decode: {e}"))?;
        let mut frame = ff::frame::Video::empty();
        dec.receive_frame(&mut frame)
            .map_err(|e| anyhow!("camera sent an MJPEG frame FFmpeg cannot decode: {e}"))?;
        self.input = frame;
        Ok(())
    }

    /// Runs (and when the input changed, first creates) the scaler.
    fn scale(&mut self) -> anyhow::Result<()> {
        let key = (self.input.format(), self.input.width(), self.input.height());
        if self.scaler.as_ref().map(|(k, _)| *k) != Some(key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                self.out_width,
                self.out_height,
                scaling::Flags::BICUBIC,
            )
            .map_err(|e| {
                anyhow!(
                    "FFmpeg cannot convert {:?} {}x{} to I420 {}x{}: {e}",
                    key.0,
                    key.1,
                    key.2,
                    self.out_width,
                    self.out_height
                )
            })?;
            self.scaler = Some((key, ctx));
            self.output = ff::frame::Video::empty();
        }
        let (_, ctx) = self.scaler.as_mut().expect("created above");
        ctx.run(&self.input, &mut self.output)
            .map_err(|e| anyhow!("FFmpeg's scaler failed: {e}"))
    }
}

/// Copies a YUV420P FFmpeg frame (with strides) into a contiguous I420 frame of equal size.
fn copy_planes(src: &ff::frame::Video, dst: &mut VideoFrame) {
    let (w, h) = (dst.width as usize, dst.height as usize);
    let mut offset = 0;
    for (i, (pw, ph)) in [(w, h), (w / 2, h / 2), (w / 2, h / 2)]
        .into_iter()
        .enumerate()
    {
        let stride = src.stride(i);
        let plane = src.data(i);
        for r in 0..ph {
            dst.data[offset + r * pw..offset + (r + 1) * pw]
                .copy_from_slice(&plane[r * stride..r * stride + pw]);
        }
        offset += pw * ph;
    }
}

/// Peak signal-to-noise ratio of `b` against `a` in dB (8-bit samples; infinite when equal).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "planes of different sizes");
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum();
    if se == 0.0 {
        return f64::INFINITY;
    }
    let mse = se / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packed RGB gradient.
    fn rgb(w: usize, h: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
            }
        }
        v
    }

    #[test]
    fn rgb_converts_with_bt601_levels() {
        let mut c = Converter::new(64, 48).unwrap();
        // pure white and pure black in limited range
        let white = vec![255u8; 64 * 48 * 3];
        let f = c.convert(PixelFormat::Rgb24, 64, 48, &white, 7, 3).unwrap();
        assert_eq!((f.pts_ms, f.index, f.width, f.height), (7, 3, 64, 48));
        let (y, u, v) = f.planes();
        assert!(y.iter().all(|&p| (234..=236).contains(&p)), "Y {}", y[0]);
        assert!(u.iter().chain(v).all(|&p| (127..=129).contains(&p)));
        let black = vec![0u8; 64 * 48 * 3];
        let f = c.convert(PixelFormat::Rgb24, 64, 48, &black, 0, 0).unwrap();
        assert!(f.planes().0.iter().all(|&p| (15..=17).contains(&p)));
    }

    #[test]
    fn scales_to_the_output_size_and_reuses_the_scaler() {
        let mut c = Converter::new(32, 24).unwrap();
        let a = c
            .convert(PixelFormat::Rgb24, 64, 48, &rgb(64, 48), 0, 0)
            .unwrap();
        assert_eq!(a.data.len(), VideoFrame::i420_len(32, 24));
        let ptr = c.scaler.as_ref().map(|(_, s)| s as *const _).unwrap();
        c.convert(PixelFormat::Rgb24, 64, 48, &rgb(64, 48), 1, 1)
            .unwrap();
        assert_eq!(c.scaler.as_ref().map(|(_, s)| s as *const _).unwrap(), ptr);
        // a new input size builds a new scaler
        c.convert(PixelFormat::Rgb24, 32, 24, &rgb(32, 24), 2, 2)
            .unwrap();
        assert_eq!(c.scaler.as_ref().unwrap().0, (Pixel::RGB24, 32, 24));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut c = Converter::new(64, 48).unwrap();
        let e = c
            .convert(PixelFormat::Yuyv, 64, 48, &[0; 100], 0, 0)
            .unwrap_err();
        assert!(format!("{e}").contains("too short"), "{e}");
        assert!(c
            .convert(PixelFormat::Mjpeg, 64, 48, b"not a jpeg", 0, 0)
            .is_err());
        let mut junk = vec![0xff, 0xd8];
        junk.extend(std::iter::repeat_n(0x55, 500));
        assert!(c.convert(PixelFormat::Mjpeg, 64, 48, &junk, 0, 0).is_err());
        assert!(c.convert(PixelFormat::Nv12, 0, 48, &[], 0, 0).is_err());
        assert!(Converter::new(63, 48).is_err());
    }

    #[test]
    fn formats_parse_and_print() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::parse(f.fourcc()).unwrap(), f);
        }
        assert_eq!(PixelFormat::parse("YUYV").unwrap(), PixelFormat::Yuyv);
        assert!(PixelFormat::parse("h264").is_err());
        assert_eq!(PixelFormat::Nv12.frame_len(4, 2), Some(12));
    }

    #[test]
    fn psnr_of_equal_and_different_planes() {
        assert!(psnr(&[1, 2, 3], &[1, 2, 3]).is_infinite());
        let p = psnr(&[0; 100], &[1; 100]);
        assert!((p - 48.13).abs() < 0.01, "{p}");
    }
}
