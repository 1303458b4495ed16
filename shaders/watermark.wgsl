// Watermark: alpha blend of a premultiplied YUVA logo, already scaled to its drawn size and
// placed at (logo_x, logo_y); chroma uses the average of the 2x2 luma block it covers.
// a.x: opacity.

fn logo_at(x: i32, y: i32) -> vec4<f32> {
    let lx = x - P.logo_x;
    let ly = y - P.logo_y;
    if lx < 0 || ly < 0 || lx >= i32(P.logo_w) || ly >= i32(P.logo_h) {
        return vec4<f32>(0.0);
    }
    return logo[u32(ly) * P.logo_w + u32(lx)];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let l = locate(i);
    var t: vec4<f32>;
    if l.plane == 0u {
        t = logo_at(l.x, l.y);
    } else {
        t = vec4<f32>(0.0);
        t += logo_at(2 * l.x, 2 * l.y) * 0.25;
        t += logo_at(2 * l.x + 1, 2 * l.y) * 0.25;
        t += logo_at(2 * l.x, 2 * l.y + 1) * 0.25;
        t += logo_at(2 * l.x + 1, 2 * l.y + 1) * 0.25;
    }
    let c = src[i];
    dst[i] = clamp(c * (1.0 - t.w * P.a.x) + t[l.plane] * P.a.x, 0.0, 255.0);
}
