// Whitening / brightening: logarithmic lift of luma between black (16) and white (235),
// through the skin mask when flags bit 0 is set.
// a.x: curve base (1 + 4 * amount), a.y: 1 / ln(base).

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let y = src[i];
    if i >= luma_len() || y < 16.0 || y > 235.0 {
        dst[i] = y;
        return;
    }
    let t = (y - 16.0) / 219.0;
    let lifted = 16.0 + 219.0 * log(1.0 + (P.a.x - 1.0) * t) * P.a.y;
    var m = 1.0;
    if (P.flags & 1u) != 0u {
        m = mask[i];
    }
    dst[i] = y + (lifted - y) * m;
}
