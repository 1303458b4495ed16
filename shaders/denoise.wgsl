// Spatial denoise: 5x5 bilateral filter on every plane.
// a.x: range sigma in levels (how large a difference still counts as noise).

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let l = locate(i);
    let c = src[i];
    let sigma_r = P.a.x;
    let inv_r = 1.0 / (2.0 * sigma_r * sigma_r);
    let inv_s = 1.0 / (2.0 * 1.5 * 1.5);
    var sum = 0.0;
    var wsum = 0.0;
    for (var dy = -2; dy <= 2; dy++) {
        for (var dx = -2; dx <= 2; dx++) {
            let v = at(l, l.x + dx, l.y + dy);
            let d = v - c;
            let w = exp(-f32(dx * dx + dy * dy) * inv_s - d * d * inv_r);
            sum += w * v;
            wsum += w;
        }
    }
    dst[i] = clamp(sum / wsum, 0.0, 255.0);
}
