//! Sources: where frames and samples come from. The built-in test card and tone are the
//! defaults whenever no device is configured, and drive every automated test.

pub mod camera;
pub mod convert;
pub mod fallback;
pub mod microphone;
pub mod test_card;
pub mod tone;

pub use camera::{list_cameras, CameraDevice, CameraMode};
pub use fallback::open_video_source;

use crate::media::{AudioBlock, VideoFrame};

/// Produces raw video frames, paced in real time by the media clock.
pub trait VideoSource: Send {
    /// Blocks until the next frame is due and returns it (pts = capture time).
    fn next_frame(&mut self) -> anyhow::Result<VideoFrame>;
    /// Frames the source had to skip because the consumer was late.
    fn skipped(&self) -> u64 {
        0
    }
    /// A human description for logs and status ("test card 1280x720@30").
    fn describe(&self) -> String;
}

/// A boxed source is a source, so wrappers and the pipeline can take either.
impl<T: VideoSource + ?Sized> VideoSource for Box<T> {
    fn next_frame(&mut self) -> anyhow::Result<VideoFrame> {
        (**self).next_frame()
    }
    fn skipped(&self) -> u64 {
        (**self).skipped()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Produces interleaved f32 audio blocks, paced in real time.
pub trait AudioSource: Send {
    /// Blocks until the next block is due and returns it (pts from the sample count).
    fn next_block(&mut self) -> anyhow::Result<AudioBlock>;
    /// A human description for logs and status.
    fn describe(&self) -> String;
}
