// Edge-preserving skin smoothing: bilateral filter on luma (7x7 taps `step` pixels apart),
// blended into the picture by `amount` times the skin mask (flags bit 0; else everywhere).
// a: amount, step, spatial sigma (pixels), range sigma (levels).

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    if i >= luma_len() {
        dst[i] = src[i];
        return;
    }
    let l = plane_loc(0u);
    let x = i32(i % P.width);
    let y = i32(i / P.width);
    let c = src[i];
    let step = i32(P.a.y);
    let inv_s = 1.0 / (2.0 * P.a.z * P.a.z);
    let inv_r = 1.0 / (2.0 * P.a.w * P.a.w);
    var sum = 0.0;
    var wsum = 0.0;
    for (var ky = -3; ky <= 3; ky++) {
        for (var kx = -3; kx <= 3; kx++) {
            let dx = kx * step;
            let dy = ky * step;
            let v = at(l, x + dx, y + dy);
            let d = v - c;
            let w = exp(-f32(dx * dx + dy * dy) * inv_s - d * d * inv_r);
            sum += w * v;
            wsum += w;
        }
    }
    var m = 1.0;
    if (P.flags & 1u) != 0u {
        m = mask[i];
    }
    dst[i] = clamp(c + (sum / wsum - c) * P.a.x * m, 0.0, 255.0);
}
