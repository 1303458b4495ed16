//! Entry points that run the relay's input handling on arbitrary bytes, synchronously, for
//! property tests and fuzzers: whatever the bytes, nothing may panic out, hang, or allocate
//! without bound.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Relay, RelayConfig};

/// What happened to one simulated connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuzzOutcome {
    /// The handshake completed.
    pub handshake_done: bool,
    /// The connection was closed by the relay (refused input, protocol error, or a rejection).
    pub closed: bool,
    /// Why, when closed because of an error.
    pub error: Option<String>,
    /// Streams published on the relay after the input.
    pub streams: usize,
    /// Bytes the relay queued for the peer.
    pub bytes_out: usize,
}

/// Feeds `handshake` to a server-side RTMP handshake, then (independently, as if a handshake
/// had succeeded) feeds each piece of `pieces` to a fresh relay connection exactly as the
/// network loop would, answering connect/publish/play requests as the relay does.
pub fn rtmp_connection(handshake: &[u8], pieces: &[&[u8]]) -> FuzzOutcome {
    let mut outcome = FuzzOutcome {
        handshake_done: super::rtmp::handshake_bytes(handshake),
        ..FuzzOutcome::default()
    };
    let relay = Arc::new(Relay::new(RelayConfig::default()));
    let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
    match super::rtmp::feed_pieces(relay.clone(), peer, pieces) {
        Ok((closed, bytes_out)) => {
            outcome.closed = closed;
            outcome.bytes_out = bytes_out;
        }
        Err(e) => {
            outcome.closed = true;
            outcome.error = Some(format!("{e:#}"));
        }
    }
    outcome.streams = relay.stats().streams.len();
    outcome
}

/// Parses `head` as the relay's HTTP side parses a request head.
pub fn http_request(head: &[u8]) -> bool {
    super::http::parse_request(head).is_ok()
}
