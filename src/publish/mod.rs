//! RTMP publishing: URL parsing, the client session, the send queue with its drop policy,
//! adaptive bitrate and reconnect timing.

pub mod abr;
pub mod backoff;
pub mod output;
pub mod queue;
pub mod reconnect;
pub mod rtmp;
pub mod url;
