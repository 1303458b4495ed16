// Sharpen: unsharp mask on luma, detail = pixel - 3x3 binomial blur.
// a.x: gain on the detail.

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
    var blur = 0.0;
    for (var dy = -1; dy <= 1; dy++) {
        for (var dx = -1; dx <= 1; dx++) {
            let w = f32((2 - abs(dx)) * (2 - abs(dy))) / 16.0;
            blur += w * at(l, x + dx, y + dy);
        }
    }
    dst[i] = clamp(c + P.a.x * (c - blur), 0.0, 255.0);
}
