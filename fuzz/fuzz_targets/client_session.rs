//! Feeds arbitrary bytes, split at arbitrary points, to a publishing client session through
//! the publisher's guard, exactly as `onair live` reads a server: it may refuse the input,
//! never panic out, overflow its stack or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onair::publish::rtmp::parse_server_input;
use onair::rtmp_guard::ChunkGuard;
use rml_rtmp::sessions::{ClientSession, ClientSessionConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut config = ClientSessionConfig::new();
    config.chunk_size = 4096;
    let Ok((mut session, _)) = ClientSession::new(config) else {
        return;
    };
    let _ = session.request_connection("live".into());
    let mut guard = ChunkGuard::new();
    let cut = (split as usize * rest.len()) / 255;
    for piece in [&rest[..cut], &rest[cut..]] {
        if parse_server_input(&mut guard, &mut session, piece).is_err() {
            break;
        }
    }
});
