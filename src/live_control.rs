//! The links between a running pipeline and a user interface: the preview texture, settings
//! changed while running (filters, audio chain) and audio levels.
//!
//! The rule is that the pipeline never waits for the interface: it only ever *tries* to take
//! a lock the interface may hold (and goes on without it), and it publishes levels through
//! atomics. So a slow UI frame never stalls capture or encoding.

use crate::audio::meter::Levels;
use crate::audio::{AudioChainSettings, SILENCE_DB};
use crate::video::FilterSettings;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The GPU texture the video thread renders the filtered frame into; the interface samples it
/// directly (no readback). Set once per run, when the filter chain has created it.
#[derive(Debug, Default)]
pub struct PreviewSlot {
    texture: OnceLock<wgpu::Texture>,
    /// Why there is no preview (e.g. the filters run on the CPU), for the interface to show.
    unavailable: OnceLock<String>,
    /// Frames rendered into the texture so far (the interface repaints when it changes).
    frames: AtomicU64,
}

impl PreviewSlot {
    /// Publishes the texture (only the first call of a run counts).
    pub fn set_texture(&self, texture: wgpu::Texture) {
        let _ = self.texture.set(texture);
    }

    /// The texture, once the pipeline has made it.
    pub fn texture(&self) -> Option<&wgpu::Texture> {
        self.texture.get()
    }

    /// Records why this run has no preview.
    pub fn set_unavailable(&self, reason: String) {
        let _ = self.unavailable.set(reason);
    }

    /// Why this run has no preview, if it has none.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.get().map(String::as_str)
    }

    /// Counts one rendered frame.
    pub fn frame_rendered(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames rendered into the texture so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

/// A value the interface posts and the pipeline picks up between frames. The pipeline only
/// uses `try_lock`, so it never waits on the interface; a busy mailbox is read next frame.
#[derive(Debug)]
pub struct Mailbox<T> {
    slot: Mutex<Option<T>>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            slot: Mutex::new(None),
        }
    }
}

impl<T> Mailbox<T> {
    /// Posts a new value, replacing one not yet taken (only the newest matters).
    pub fn post(&self, value: T) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }

    /// Takes the posted value, if any, without ever blocking.
    pub fn try_take(&self) -> Option<T> {
        match self.slot.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// Peak and RMS of each channel (up to two: what the stream carries), written by the audio
/// thread with atomics and read by the interface's meters.
#[derive(Debug)]
pub struct AudioMeters {
    peak_bits: [AtomicU32; 2],
    rms_bits: [AtomicU32; 2],
    /// Windows in which a channel reached full scale (clipping), since the start.
    clips: AtomicU64,
    /// Windows published so far (the interface can tell a silent meter from a dead one).
    updates: AtomicU64,
}

impl Default for AudioMeters {
    fn default() -> Self {
        let silent = SILENCE_DB.to_bits();
        AudioMeters {
            peak_bits: [AtomicU32::new(silent), AtomicU32::new(silent)],
            rms_bits: [AtomicU32::new(silent), AtomicU32::new(silent)],
            clips: AtomicU64::new(0),
            updates: AtomicU64::new(0),
        }
    }
}

/// A peak at or above this level (dBFS) counts as clipping.
pub const CLIP_DBFS: f32 = -0.1;

impl AudioMeters {
    /// Publishes one metering window (allocation-free, lock-free).
    pub fn publish(&self, levels: &Levels) {
        let mut clipped = false;
        for (i, ch) in levels.channels().iter().take(2).enumerate() {
            self.peak_bits[i].store(ch.peak_dbfs.to_bits(), Ordering::Relaxed);
            self.rms_bits[i].store(ch.rms_dbfs.to_bits(), Ordering::Relaxed);
            clipped |= ch.peak_dbfs >= CLIP_DBFS;
        }
        if clipped {
            self.clips.fetch_add(1, Ordering::Relaxed);
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// (peak, rms) in dBFS of channel `ch` (0 or 1).
    pub fn level(&self, ch: usize) -> (f32, f32) {
        (
            f32::from_bits(self.peak_bits[ch].load(Ordering::Relaxed)),
            f32::from_bits(self.rms_bits[ch].load(Ordering::Relaxed)),
        )
    }

    /// Metering windows that clipped so far.
    pub fn clips(&self) -> u64 {
        self.clips.load(Ordering::Relaxed)
    }

    /// Metering windows published so far.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }
}

/// Everything an interface attaches to a run. All parts are optional: the CLI attaches none.
#[derive(Clone, Debug, Default)]
pub struct LiveHooks {
    /// Where the filtered preview goes.
    pub preview: Option<Arc<PreviewSlot>>,
    /// New video filter settings while running (sliders).
    pub filters: Option<Arc<Mailbox<FilterSettings>>>,
    /// New audio chain settings while running (stage toggles, parameters).
    pub audio_chain: Option<Arc<Mailbox<AudioChainSettings>>>,
    /// Levels of what goes to the audio encoder.
    pub meters: Option<Arc<AudioMeters>>,
}

impl LiveHooks {
    /// Hooks with every part attached, as the desktop app uses them.
    pub fn all() -> Self {
        LiveHooks {
            preview: Some(Arc::new(PreviewSlot::default())),
            filters: Some(Arc::new(Mailbox::default())),
            audio_chain: Some(Arc::new(Mailbox::default())),
            meters: Some(Arc::new(AudioMeters::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::meter::Meter;

    #[test]
    fn mailbox_keeps_only_the_newest_value_and_never_blocks() {
        let m = Mailbox::default();
        assert_eq!(m.try_take(), None);
        m.post(1);
        m.post(2);
        assert_eq!(m.try_take(), Some(2));
        assert_eq!(m.try_take(), None);
        m.post(3);
        let held = m.slot.lock().unwrap();
        assert_eq!(
            m.try_take(),
            None,
            "a held mailbox is skipped, not waited on"
        );
        drop(held);
        assert_eq!(m.try_take(), Some(3));
    }

    #[test]
    fn meters_publish_levels_and_count_clips() {
        let meters = AudioMeters::default();
        assert_eq!(meters.level(0).0, SILENCE_DB);
        let mut meter = Meter::new(48_000, 10.0);
        // 10 ms of a full-scale square wave on the left, -20 dBFS on the right
        let samples: Vec<f32> = (0..480)
            .flat_map(|i| {
                let s = if i % 2 == 0 { 1.0 } else { -1.0 };
                [s, 0.1 * s]
            })
            .collect();
        meter.process(&samples, 2);
        meters.publish(&meter.levels());
        let (peak_l, rms_l) = meters.level(0);
        let (peak_r, _) = meters.level(1);
        assert!(
            peak_l.abs() < 0.01 && rms_l.abs() < 0.01,
            "{peak_l} {rms_l}"
        );
        assert!((peak_r + 20.0).abs() < 0.01, "{peak_r}");
        assert_eq!(meters.clips(), 1);
        assert_eq!(meters.updates(), 1);
    }
}
