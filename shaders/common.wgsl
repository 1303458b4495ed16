// Shared by every filter shader (prepended to each file at pipeline creation): the uniform
// block, the bindings of the chain's single bind group layout and plane helpers.
// Frames are I420 as floats in 0..255: Y (width x height), then U and V (half size each).

struct Params {
    width: u32,
    height: u32,
    len: u32,
    count: u32,
    row_threads: u32,
    flags: u32,
    logo_w: u32,
    logo_h: u32,
    logo_x: i32,
    logo_y: i32,
    pad0: u32,
    pad1: u32,
    a: vec4<f32>,
    b: vec4<f32>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read> logo: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> packed_in: array<u32>;
@group(0) @binding(6) var<storage, read_write> packed_out: array<u32>;

// Linear invocation index over the 2-D dispatch grid.
fn invocation(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * P.row_threads;
}

fn luma_len() -> u32 {
    return P.width * P.height;
}

// A sample's plane (0 Y, 1 U, 2 V), its coordinates and its plane's base and size.
struct Loc {
    plane: u32,
    x: i32,
    y: i32,
    base: u32,
    pw: i32,
    ph: i32,
}

fn plane_loc(p: u32) -> Loc {
    let cw = P.width / 2u;
    let ch = P.height / 2u;
    if p == 0u {
        return Loc(0u, 0, 0, 0u, i32(P.width), i32(P.height));
    }
    return Loc(p, 0, 0, luma_len() + (p - 1u) * cw * ch, i32(cw), i32(ch));
}

fn locate(i: u32) -> Loc {
    let luma = luma_len();
    var p = 0u;
    var k = i;
    if i >= luma {
        let c = (P.width / 2u) * (P.height / 2u);
        p = 1u + (i - luma) / c;
        k = (i - luma) % c;
    }
    var l = plane_loc(p);
    l.x = i32(k % u32(l.pw));
    l.y = i32(k / u32(l.pw));
    return l;
}

// Sample of the plane described by `l` at (x, y), clamped to its edges.
fn at(l: Loc, x: i32, y: i32) -> f32 {
    let cx = clamp(x, 0, l.pw - 1);
    let cy = clamp(y, 0, l.ph - 1);
    return src[l.base + u32(cy * l.pw + cx)];
}

// Chroma plane `p` (1 U, 2 V) interpolated at luma pixel (x, y); chroma samples sit at the
// centres of their 2x2 luma blocks.
fn chroma_at_luma(p: u32, x: i32, y: i32) -> f32 {
    let l = plane_loc(p);
    let fx = (f32(x) + 0.5) * 0.5 - 0.5;
    let fy = (f32(y) + 0.5) * 0.5 - 0.5;
    let x0 = floor(fx);
    let y0 = floor(fy);
    let tx = fx - x0;
    let ty = fy - y0;
    let ix = i32(x0);
    let iy = i32(y0);
    let top = at(l, ix, iy) * (1.0 - tx) + at(l, ix + 1, iy) * tx;
    let bottom = at(l, ix, iy + 1) * (1.0 - tx) + at(l, ix + 1, iy + 1) * tx;
    return top * (1.0 - ty) + bottom * ty;
}
