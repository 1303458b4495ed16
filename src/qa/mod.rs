//! QA tooling: reading streams back for tests and latency measurement.

pub mod player;
pub mod probe;
pub mod stamp;
