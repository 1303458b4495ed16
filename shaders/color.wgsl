// Colour: brightness and contrast on luma, saturation on chroma.
// a: brightness (levels), contrast, saturation.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let v = src[i];
    var r: f32;
    if i < luma_len() {
        r = (v - 125.5) * P.a.y + 125.5 + P.a.x;
    } else {
        r = (v - 128.0) * P.a.z + 128.0;
    }
    dst[i] = clamp(r, 0.0, 255.0);
}
