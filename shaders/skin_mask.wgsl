// Skin mask: soft range test of Cb and Cr (interpolated at each luma pixel), written to
// `mask`; with flags bit 0 the mask itself replaces the picture (white = skin).
// a: cb_min, cb_max, cr_min, cr_max; b.x: width of the soft edge in levels.

fn smooth01(t: f32) -> f32 {
    let c = clamp(t, 0.0, 1.0);
    return c * c * (3.0 - 2.0 * c);
}

fn band(v: f32, lo: f32, hi: f32, m: f32) -> f32 {
    return smooth01((v - lo) / m + 0.5) * smooth01((hi - v) / m + 0.5);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let show = (P.flags & 1u) != 0u;
    if i >= luma_len() {
        if show {
            dst[i] = 128.0;
        }
        return;
    }
    let x = i32(i % P.width);
    let y = i32(i / P.width);
    let m = P.b.x;
    let cb = chroma_at_luma(1u, x, y);
    let cr = chroma_at_luma(2u, x, y);
    let dark = band(src[i], 32.0, 1000.0, m);
    let v = band(cb, P.a.x, P.a.y, m) * band(cr, P.a.z, P.a.w, m) * dark;
    mask[i] = v;
    if show {
        dst[i] = 16.0 + 219.0 * v;
    }
}
