//! Settings: what the streamer chose, saved as TOML in the platform config directory, so the
//! next start (GUI or CLI) remembers it. CLI flags override the file for one run.

use crate::encode::{AudioEncoderSettings, VideoEncoderSettings};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a live session needs to know.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub destination: Destination,
    pub video: VideoEncoderSettings,
    pub audio: AudioEncoderSettings,
    pub sources: Sources,
    pub relay: RelaySettings,
    pub network: NetworkSettings,
    pub qa: QaSettings,
    /// Processing of the microphone signal (not applied to the test tone).
    pub audio_chain: crate::audio::AudioChainSettings,
    /// The GPU video filters (beauty, color, sharpen, denoise, watermark); all off by default.
    pub video_filters: crate::video::FilterSettings,
}

/// Quality-assurance aids that change what goes out, off unless asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaSettings {
    /// Stamp every frame with its capture time and number (barcode, digits and SEI), so
    /// `onair probe` can measure glass-to-glass latency and lost frames on the viewer side.
    pub stamp: bool,
    /// Beep once per second in the tone (instead of the steady tone) and flash the test card
    /// on the frame of each whole second, so `onair probe` can measure the A/V offset.
    pub sync_marks: bool,
}

/// How the stream copes with a bad network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Lower the video bitrate under congestion and raise it back when the link recovers.
    pub adaptive_bitrate: bool,
    /// The lowest video bitrate adaptation may choose (0: an eighth of video.bitrate_kbps).
    pub min_bitrate_kbps: u32,
    /// Reconnect attempts in a row before giving up (0: never give up).
    pub max_reconnect_attempts: u32,
    /// Longest wait between reconnect attempts, in seconds.
    pub max_reconnect_delay_secs: u32,
    /// Random spread of each reconnect delay (0.2: ±20 %), so many encoders behind one
    /// failed server do not all come back at the same instant; 0 for exact delays.
    pub reconnect_jitter: f64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            adaptive_bitrate: true,
            min_bitrate_kbps: 0,
            max_reconnect_attempts: 0,
            max_reconnect_delay_secs: 30,
            reconnect_jitter: 0.2,
        }
    }
}

/// Where the stream goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Destination {
    /// `rtmp://host[:port]/app/streamkey`; empty means the embedded relay.
    pub url: Option<String>,
    /// A second server to fail over to when the first stays down.
    pub backup_url: Option<String>,
}

/// Which sources feed the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sources {
    /// Frequency of the test tone in Hz.
    pub tone_hz: f32,
    /// Microphone to capture ("default" or a name from `onair devices`); none: the test tone.
    pub microphone: Option<String>,
    /// Camera to capture: an index or a name from `onair devices`; none: the test card. A
    /// camera that is busy, missing or fails mid-stream gives the test card, not an error.
    pub camera: Option<String>,
    /// Pixel format to ask the camera for (mjpeg, yuyv, nv12, rgb, bgr, gray); none: the
    /// closest mode to the stream's size and rate in any format.
    pub camera_format: Option<String>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            tone_hz: 440.0,
            microphone: None,
            camera: None,
            camera_format: None,
        }
    }
}

/// The embedded relay used when no destination is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Address to listen on; loopback by default so nothing is exposed by accident.
    pub listen: String,
    /// Address of the HTTP side (HTTP-FLV, watch page, stats API) of `onair relay`; empty
    /// turns it off.
    pub http_listen: String,
    /// Stream keys allowed to publish; empty lets anyone publish.
    pub keys: Vec<String>,
    /// Key players must give (`?key=`); unset leaves playback open.
    pub play_key: Option<String>,
    /// Most simultaneous connections; 0 means the built-in default.
    pub max_connections: usize,
    /// Milliseconds of live media handed to each viewer in one write (0: every message at
    /// once); more means less CPU per viewer and that much more latency.
    pub merge_ms: u64,
    /// Seconds a stream whose publisher's connection dropped keeps its viewers waiting for a
    /// publisher to come back on the same key (they resume on one continuous timeline), and
    /// a player asking for a key nobody publishes yet waits for one; 0 closes and refuses at
    /// once, as a relay without a grace period does.
    pub publisher_grace_secs: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            listen: "127.0.0.1:1935".into(),
            http_listen: "127.0.0.1:8080".into(),
            keys: Vec::new(),
            play_key: None,
            max_connections: 0,
            merge_ms: 30,
            publisher_grace_secs: crate::relay::resume::PUBLISHER_GRACE.as_secs(),
        }
    }
}

impl Settings {
    /// `onair.toml` in the platform config directory (e.g. `~/.config/onair/`).
    pub fn default_path() -> Option<PathBuf> {
        directories::ProjectDirs::from("", "", "onair").map(|d| d.config_dir().join("onair.toml"))
    }

    /// Loads `path`, or the default file if it exists, or the defaults. An explicit path that
    /// does not exist is an error; a file with unknown or invalid fields is an error naming them.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match Self::default_path() {
                Some(p) => (p, false),
                None => return Ok(Settings::default()),
            },
        };
        if !path.exists() {
            if required {
                bail!("settings file {} does not exist", path.display());
            }
            return Ok(Settings::default());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read settings file {}", path.display()))?;
        let settings: Settings = toml::from_str(&text)
            .with_context(|| format!("settings file {} is invalid", path.display()))?;
        settings
            .validate()
            .with_context(|| format!("settings file {} is invalid", path.display()))?;
        Ok(settings)
    }

    /// Writes the settings (creating the directory), so choices survive a restart.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = toml::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Rejects values no part of the pipeline could use, naming the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::encode::x264::validate(&self.video)?;
        crate::encode::validate_encoder(&self.video)?;
        self.audio_chain.validate()?;
        self.video_filters.validate()?;
        if self.audio.sample_rate != 48_000 && self.audio.sample_rate != 44_100 {
            bail!(
                "audio.sample_rate = {} is not supported: use 48000 or 44100",
                self.audio.sample_rate
            );
        }
        if self.audio.channels != 2 {
            bail!(
                "audio.channels = {} is not supported: use 2",
                self.audio.channels
            );
        }
        if !(32..=512).contains(&self.audio.bitrate_kbps) {
            bail!(
                "audio.bitrate_kbps = {} is invalid: use 32 to 512",
                self.audio.bitrate_kbps
            );
        }
        if !(20.0..=20_000.0).contains(&self.sources.tone_hz) {
            bail!(
                "sources.tone_hz = {} is invalid: use 20 to 20000",
                self.sources.tone_hz
            );
        }
        if let Some(f) = self.sources.camera_format.as_deref() {
            if !f.trim().is_empty() {
                crate::capture::convert::PixelFormat::parse(f)
                    .context("sources.camera_format is invalid")?;
            }
        }
        if let Some(c) = &self.sources.camera {
            if c.len() > 256 || c.chars().any(char::is_control) {
                bail!(
                    "sources.camera is invalid: give a camera index or name from `onair devices`"
                );
            }
        }
        if self.relay.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "relay.listen = '{}' is not an address: write IP:PORT, e.g. 127.0.0.1:1935",
                self.relay.listen
            );
        }
        if self.relay.publisher_grace_secs > crate::relay::resume::MAX_PUBLISHER_GRACE_SECS {
            bail!(
                "relay.publisher_grace_secs = {} is too long: at most {} (one day)",
                self.relay.publisher_grace_secs,
                crate::relay::resume::MAX_PUBLISHER_GRACE_SECS
            );
        }
        if let Some(url) = &self.destination.url {
            if !url.is_empty() {
                crate::publish::url::RtmpUrl::parse(url).context("destination.url is invalid")?;
            }
        }
        if let Some(url) = &self.destination.backup_url {
            if !url.is_empty() {
                crate::publish::url::RtmpUrl::parse(url)
                    .context("destination.backup_url is invalid")?;
            }
        }
        let n = &self.network;
        if n.min_bitrate_kbps > self.video.bitrate_kbps {
            bail!(
                "network.min_bitrate_kbps = {} is above video.bitrate_kbps = {}",
                n.min_bitrate_kbps,
                self.video.bitrate_kbps
            );
        }
        if !(1..=600).contains(&n.max_reconnect_delay_secs) {
            bail!(
                "network.max_reconnect_delay_secs = {} is invalid: use 1 to 600",
                n.max_reconnect_delay_secs
            );
        }
        if !(0.0..=0.5).contains(&n.reconnect_jitter) {
            bail!(
                "network.reconnect_jitter = {} is invalid: use 0 to 0.5",
                n.reconnect_jitter
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/onair.toml");
        let mut s = Settings::default();
        s.video.bitrate_kbps = 4500;
        s.destination.url = Some("rtmp://example.com/live/key".into());
        s.save(&path).unwrap();
        assert_eq!(Settings::load(Some(&path)).unwrap(), s);
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("onair.toml");
        std::fs::write(&path, "[video]\nfps = 60\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.video.fps, 60);
        assert_eq!(s.video.width, 1280);
    }

    #[test]
    fn invalid_values_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("onair.toml");
        std::fs::write(&path, "[video]\nbitrate_kbps = 5\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
        assert!(err.contains("video.bitrate_kbps"), "{err}");
        std::fs::write(&path, "[video]\nbitrat = 5\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
        assert!(err.contains("bitrat"), "{err}");
        std::fs::write(&path, "[destination]\nurl = \"http://x\"\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
        assert!(err.contains("destination.url"), "{err}");
        assert!(Settings::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn publisher_grace_is_bounded_without_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("onair.toml");
        std::fs::write(
            &path,
            format!("[relay]\npublisher_grace_secs = {}\n", i64::MAX),
        )
        .unwrap();
        let err = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
        assert!(err.contains("relay.publisher_grace_secs"), "{err}");
        let mut relay = RelaySettings {
            publisher_grace_secs: u64::MAX,
            ..RelaySettings::default()
        };
        let err = format!(
            "{:#}",
            crate::relay::RelayConfig::from_settings(&relay, false).unwrap_err()
        );
        assert!(err.contains("relay.publisher_grace_secs"), "{err}");
        relay.publisher_grace_secs = 0;
        let config = crate::relay::RelayConfig::from_settings(&relay, false).unwrap();
        assert!(config.publisher_grace.is_zero());
        assert_eq!(RelaySettings::default().publisher_grace_secs, 30);
    }
}
