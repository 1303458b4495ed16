// Bytes of the uploaded I420 frame (packed four per u32, little-endian) to floats.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = invocation(gid);
    if i >= P.count {
        return;
    }
    let word = packed_in[i / 4u];
    dst[i] = f32((word >> ((i % 4u) * 8u)) & 0xffu);
}
