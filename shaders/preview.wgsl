// Preview: the filtered frame as an RGBA texture (BT.601 limited range to RGB, chroma
// interpolated), so a window on the same device can draw it without a readback.

@group(1) @binding(0) var preview: texture_storage_2d<rgba8unorm, write>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let x = i32(i % P.width);
    let y = i32(i / P.width);
    let l = 1.164 * (src[i] - 16.0);
    let u = chroma_at_luma(1u, x, y) - 128.0;
    let v = chroma_at_luma(2u, x, y) - 128.0;
    let rgb = vec3<f32>(l + 1.596 * v, l - 0.392 * u - 0.813 * v, l + 2.017 * u) / 255.0;
    textureStore(preview, vec2<i32>(x, y), vec4<f32>(clamp(rgb, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0));
}
