//! RTMP publishing: URL parsing and the client session that pushes packets to a server.

pub mod rtmp;
pub mod url;
