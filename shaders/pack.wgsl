// Floats back to bytes (rounded half up, clamped), four per u32, for the readback.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = invocation(gid);
    if j >= P.count {
        return;
    }
    var word = 0u;
    for (var k = 0u; k < 4u; k++) {
        let i = j * 4u + k;
        if i < P.len {
            let b = u32(floor(clamp(src[i], 0.0, 255.0) + 0.5));
            word = word | (b << (8u * k));
        }
    }
    packed_out[j] = word;
}
