//! Pictures drawn in code, so tests, benchmarks and the shipped assets need no photographs:
//! a photo-like portrait with two skin tones, blemishes and grain (what the beauty filters
//! are for), and the OnAir badge used as the default watermark.

use super::image::RgbaImage;

/// Deterministic hash noise in [0, 1) for integer coordinates and a seed.
fn hash(x: i32, y: i32, seed: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x8da6_b343)
        ^ (y as u32).wrapping_mul(0xd816_3841)
        ^ seed.wrapping_mul(0xcb1a_b31f);
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^= h >> 15;
    (h & 0xff_ffff) as f32 / 16_777_216.0
}

/// Smooth value noise (bilinear between hashed lattice points `cell` pixels apart).
fn value_noise(x: f32, y: f32, cell: f32, seed: u32) -> f32 {
    let (fx, fy) = (x / cell, y / cell);
    let (x0, y0) = (fx.floor(), fy.floor());
    let (tx, ty) = (fx - x0, fy - y0);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let (ix, iy) = (x0 as i32, y0 as i32);
    let a = hash(ix, iy, seed) * (1.0 - sx) + hash(ix + 1, iy, seed) * sx;
    let b = hash(ix, iy + 1, seed) * (1.0 - sx) + hash(ix + 1, iy + 1, seed) * sx;
    a * (1.0 - sy) + b * sy
}

/// Coverage (0 outside, 1 inside) of an ellipse with a one-pixel soft edge.
fn ellipse(x: f32, y: f32, cx: f32, cy: f32, rx: f32, ry: f32) -> f32 {
    let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
    let d = (dx * dx + dy * dy).sqrt();
    // Distance to the edge in pixels, roughly.
    let px = (1.0 - d) * rx.min(ry);
    (px + 0.5).clamp(0.0, 1.0)
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale(c: [f32; 3], k: f32) -> [f32; 3] {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// One face: skin tone, placement and the seed of its blemishes.
struct Face {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    skin: [f32; 3],
    hair: [f32; 3],
    seed: u32,
}

impl Face {
    /// Paints this face (hair, neck, face, features) over `c` at pixel (x, y).
    fn paint(&self, x: f32, y: f32, mut c: [f32; 3]) -> [f32; 3] {
        let (cx, cy, rx, ry) = (self.cx, self.cy, self.rx, self.ry);
        // Hair behind the head, with strands.
        let hair = ellipse(x, y, cx, cy - ry * 0.15, rx * 1.22, ry * 1.12);
        if hair > 0.0 {
            let strands = 0.75 + 0.5 * value_noise(x * 3.0, y * 0.4, 3.0, self.seed + 1);
            c = mix(c, scale(self.hair, strands), hair);
        }
        // Neck.
        let neck = if (x - cx).abs() < rx * 0.45 && y > cy && y < cy + ry * 1.6 {
            ((rx * 0.45 - (x - cx).abs()) + 0.5).clamp(0.0, 1.0)
        } else {
            0.0
        };
        if neck > 0.0 {
            c = mix(c, scale(self.skin, 0.8), neck);
        }
        // Face with light from the upper left.
        let face = ellipse(x, y, cx, cy, rx, ry);
        if face > 0.0 {
            let (nx, ny) = ((x - cx) / rx, (y - cy) / ry);
            let shade = 1.04 - 0.1 * (nx * nx + ny * ny) - 0.06 * (nx + ny * 0.5);
            let mut s = scale(self.skin, shade);
            // Blush on the cheeks.
            for side in [-1.0, 1.0] {
                let b = ellipse(
                    x,
                    y,
                    cx + side * rx * 0.5,
                    cy + ry * 0.25,
                    rx * 0.22,
                    ry * 0.13,
                );
                s = mix(s, [s[0] * 1.06, s[1] * 0.9, s[2] * 0.9], b * 0.6);
            }
            // Blemishes: small reddish-brown spots.
            let cell = (rx / 9.0).max(3.0);
            let (gx, gy) = ((x / cell).floor() as i32, (y / cell).floor() as i32);
            if hash(gx, gy, self.seed) < 0.25 {
                let ox = (gx as f32 + 0.2 + 0.6 * hash(gx, gy, self.seed + 7)) * cell;
                let oy = (gy as f32 + 0.2 + 0.6 * hash(gx, gy, self.seed + 9)) * cell;
                let r = 0.8 + cell * 0.25 * hash(gx, gy, self.seed + 11);
                let spot = ellipse(x, y, ox, oy, r, r);
                s = mix(s, [s[0] * 0.93, s[1] * 0.84, s[2] * 0.83], spot * 0.8);
            }
            // Pores and sensor grain.
            let grain = (hash(x as i32, y as i32, self.seed + 3) - 0.5) * 16.0;
            let mottling = (value_noise(x, y, 5.0, self.seed + 5) - 0.5) * 14.0;
            s = [
                s[0] + grain + mottling,
                s[1] + grain + mottling * 0.8,
                s[2] + grain,
            ];
            // Eyes, brows, nose shadow and lips.
            for side in [-1.0, 1.0] {
                let ex = cx + side * rx * 0.38;
                let ey = cy - ry * 0.12;
                let brow = ellipse(x, y, ex, ey - ry * 0.17, rx * 0.22, ry * 0.045);
                s = mix(s, scale(self.hair, 0.8), brow);
                let white = ellipse(x, y, ex, ey, rx * 0.17, ry * 0.07);
                s = mix(s, [235.0, 230.0, 225.0], white);
                let iris = ellipse(x, y, ex, ey, rx * 0.075, ry * 0.07);
                s = mix(s, [70.0, 95.0, 60.0], iris);
                let pupil = ellipse(x, y, ex, ey, rx * 0.035, ry * 0.035);
                s = mix(s, [10.0, 10.0, 12.0], pupil);
                let glint = ellipse(x, y, ex - rx * 0.02, ey - ry * 0.02, 1.2, 1.2);
                s = mix(s, [250.0, 250.0, 250.0], glint);
            }
            let nose = ellipse(x, y, cx + rx * 0.06, cy + ry * 0.18, rx * 0.1, ry * 0.16);
            s = mix(s, scale(s, 0.9), nose * 0.7);
            let lips = ellipse(x, y, cx, cy + ry * 0.52, rx * 0.32, ry * 0.09);
            s = mix(
                s,
                [self.skin[0] * 0.85, self.skin[1] * 0.45, self.skin[2] * 0.5],
                lips,
            );
            let mouth = ellipse(x, y, cx, cy + ry * 0.52, rx * 0.3, 0.9);
            s = mix(s, [60.0, 20.0, 25.0], mouth);
            c = mix(c, s, face);
        }
        c
    }
}

/// A photo-like portrait: a soft background with bokeh, a lighter face in front and a darker
/// face behind, both with blemishes and grain, and clothing with a fine texture.
pub fn portrait(width: u32, height: u32) -> RgbaImage {
    let (w, h) = (width as f32, height as f32);
    let faces = [
        Face {
            cx: w * 0.74,
            cy: h * 0.42,
            rx: h * 0.16,
            ry: h * 0.21,
            skin: [141.0, 92.0, 60.0],
            hair: [25.0, 20.0, 18.0],
            seed: 77,
        },
        Face {
            cx: w * 0.42,
            cy: h * 0.45,
            rx: h * 0.22,
            ry: h * 0.29,
            skin: [226.0, 176.0, 146.0],
            hair: [70.0, 45.0, 30.0],
            seed: 11,
        },
    ];
    let mut data = Vec::with_capacity((width * height * 4) as usize);
    for yi in 0..height {
        for xi in 0..width {
            let (x, y) = (xi as f32 + 0.5, yi as f32 + 0.5);
            let t = y / h;
            let mut c = mix([70.0, 90.0, 120.0], [150.0, 130.0, 115.0], t);
            // Out-of-focus lights.
            for k in 0..6 {
                let bx = w * hash(k, 1, 99);
                let by = h * 0.6 * hash(k, 2, 99);
                let r = h * (0.04 + 0.06 * hash(k, 3, 99));
                let light = ellipse(x, y, bx, by, r, r) * 0.35;
                c = mix(c, [250.0, 225.0, 170.0], light);
            }
            for face in &faces {
                c = face.paint(x, y, c);
                // Shoulders in a textured shirt below each face.
                let shoulders = ellipse(
                    x,
                    y,
                    face.cx,
                    face.cy + face.ry * 2.3,
                    face.rx * 2.4,
                    face.ry * 1.1,
                );
                if shoulders > 0.0 {
                    let weave = if (xi / 2 + yi / 2) % 2 == 0 {
                        1.0
                    } else {
                        0.88
                    };
                    c = mix(c, scale([40.0, 70.0, 130.0], weave), shoulders);
                }
            }
            data.extend_from_slice(&[
                c[0].clamp(0.0, 255.0) as u8,
                c[1].clamp(0.0, 255.0) as u8,
                c[2].clamp(0.0, 255.0) as u8,
                255,
            ]);
        }
    }
    RgbaImage {
        width,
        height,
        data,
    }
}

/// Segments of the letters O, N, A, I, R on a 3x5 grid (bit 14 = top-left, row by row).
const LETTERS: [u16; 5] = [
    0b111_101_101_101_111, // O
    0b110_101_101_101_101, // N
    0b010_101_111_101_101, // A
    0b111_010_010_010_111, // I
    0b110_101_110_101_101, // R
];

/// The OnAir badge: a red rounded rectangle with a white dot and "ONAIR", with transparent
/// corners and a soft shadow, so alpha blending is exercised.
pub fn badge(width: u32, height: u32) -> RgbaImage {
    let (w, h) = (width as f32, height as f32);
    let radius = h * 0.3;
    let mut data = Vec::with_capacity((width * height * 4) as usize);
    let inside = |x: f32, y: f32, inset: f32| -> f32 {
        let (x0, y0, x1, y1) = (inset, inset, w - inset, h - inset);
        let qx = (x0 + radius - x).max(x - (x1 - radius)).max(0.0);
        let qy = (y0 + radius - y).max(y - (y1 - radius)).max(0.0);
        let outside_corner = (qx * qx + qy * qy).sqrt() - radius;
        let edge = if qx > 0.0 && qy > 0.0 {
            -outside_corner
        } else {
            (x - x0).min(x1 - x).min(y - y0).min(y1 - y)
        };
        (edge + 0.5).clamp(0.0, 1.0)
    };
    let cell = h * 0.1;
    let text_x = h * 0.9;
    let text_y = (h - cell * 5.0) / 2.0;
    for yi in 0..height {
        for xi in 0..width {
            let (x, y) = (xi as f32 + 0.5, yi as f32 + 0.5);
            let body = inside(x, y, 2.0);
            let shadow = inside(x - 1.5, y - 1.5, 1.0) * 0.35;
            let mut rgb = [200.0, 20.0, 30.0];
            let dot = ellipse(x, y, h * 0.5, h * 0.5, h * 0.16, h * 0.16);
            let mut white = dot;
            let (gx, gy) = ((x - text_x) / cell, (y - text_y) / cell);
            if (0.0..5.0).contains(&gy) && gx >= 0.0 {
                let letter = (gx / 4.0) as usize;
                let col = gx as usize % 4;
                if letter < LETTERS.len() && col < 3 {
                    let bit = 14 - (gy as usize * 3 + col);
                    if LETTERS[letter] >> bit & 1 == 1 {
                        white = 1.0;
                    }
                }
            }
            rgb = mix(rgb, [255.0, 255.0, 255.0], white);
            let alpha = body + shadow * (1.0 - body);
            let rgb = if alpha > 0.0 {
                scale(rgb, body / alpha)
            } else {
                [0.0; 3]
            };
            data.extend_from_slice(&[
                rgb[0] as u8,
                rgb[1] as u8,
                rgb[2] as u8,
                (alpha * 255.0 + 0.5) as u8,
            ]);
        }
    }
    RgbaImage {
        width,
        height,
        data,
    }
}
