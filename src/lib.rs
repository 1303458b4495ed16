//! OnAir: a live-streaming broadcaster. Sources produce frames, encoders turn them into
//! packets, outputs (RTMP publisher, FLV recorder, embedded relay) carry them away.

pub mod about;
pub mod audio;
pub mod capture;
pub mod clock;
pub mod config;
pub mod encode;
pub mod flv;
pub mod gui;
pub mod live_control;
pub mod logging;
pub mod media;
pub mod pipeline;
pub mod publish;
pub mod qa;
pub mod relay;
pub mod rtmp_guard;
pub mod signals;
pub mod stats;
pub mod video;
