//! What the streamer chose for the video filters: saved with the other settings (the
//! `[video_filters]` table), validated with messages that name the offending field.

use anyhow::bail;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every video filter's switch and parameters. The default turns every filter off, which
/// leaves frames bit-exact.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    /// Turns the whole chain off at once without losing the per-filter choices.
    pub bypass: bool,
    /// Spatial noise reduction on all planes, before anything else.
    pub denoise: DenoiseSettings,
    /// Which pixels count as skin; smoothing only touches those when enabled.
    pub skin_mask: SkinMaskSettings,
    /// Edge-preserving skin smoothing.
    pub smoothing: SmoothingSettings,
    /// Luma lift curve that brightens mid-tones.
    pub whitening: WhiteningSettings,
    /// Brightness, contrast and saturation.
    pub color: ColorSettings,
    /// Unsharp mask on luma.
    pub sharpen: SharpenSettings,
    /// A logo alpha-blended on top of the picture, after every other filter.
    pub watermark: WatermarkSettings,
}

/// Spatial denoise: a small bilateral filter on Y, U and V.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenoiseSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// Strength, 0 to 1: how large a difference between neighbours is still taken as noise.
    pub amount: f32,
}

impl Default for DenoiseSettings {
    fn default() -> Self {
        DenoiseSettings {
            enabled: false,
            amount: 0.3,
        }
    }
}

/// Skin detection by a soft range test on Cb and Cr (BT.601 limited range values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkinMaskSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// Lowest blue-difference (Cb) of skin.
    pub cb_min: f32,
    /// Highest blue-difference (Cb) of skin.
    pub cb_max: f32,
    /// Lowest red-difference (Cr) of skin.
    pub cr_min: f32,
    /// Highest red-difference (Cr) of skin.
    pub cr_max: f32,
    /// Width of the soft edge of the range, 0 (hard) to 1 (about 16 levels each side).
    pub softness: f32,
    /// Show the mask itself (white = skin) instead of the picture, to tune the ranges.
    pub show: bool,
}

impl Default for SkinMaskSettings {
    fn default() -> Self {
        SkinMaskSettings {
            enabled: false,
            cb_min: 80.0,
            cb_max: 130.0,
            cr_min: 132.0,
            cr_max: 172.0,
            softness: 0.5,
            show: false,
        }
    }
}

/// Edge-preserving smoothing (a bilateral filter on luma), applied through the skin mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmoothingSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// How much of the smoothed picture replaces the original, 0 to 1.
    pub amount: f32,
    /// Reach of the filter in pixels of a 720-line picture (scaled with the frame height).
    pub radius: f32,
    /// Luma difference (0-255 levels) kept as an edge; smaller differences get smoothed.
    pub edge: f32,
}

impl Default for SmoothingSettings {
    fn default() -> Self {
        SmoothingSettings {
            enabled: false,
            amount: 0.8,
            radius: 6.0,
            edge: 20.0,
        }
    }
}

/// Brightening by a logarithmic lift of the luma curve (black and white points stay put).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhiteningSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// Strength, 0 to 1.
    pub amount: f32,
    /// Brighten only skin (through the skin mask, when it is on) rather than the whole
    /// picture, so the background keeps its contrast.
    pub skin_only: bool,
}

impl Default for WhiteningSettings {
    fn default() -> Self {
        WhiteningSettings {
            enabled: false,
            amount: 0.3,
            skin_only: true,
        }
    }
}

/// Colour correction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColorSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// -1 to 1: added to luma, 1 being +100 levels.
    pub brightness: f32,
    /// 0 to 2: luma gain around mid-grey, 1 unchanged.
    pub contrast: f32,
    /// 0 to 2: chroma gain, 0 grey, 1 unchanged.
    pub saturation: f32,
}

impl Default for ColorSettings {
    fn default() -> Self {
        ColorSettings {
            enabled: false,
            brightness: 0.0,
            contrast: 1.0,
            saturation: 1.0,
        }
    }
}

/// Unsharp mask: adds back the difference between luma and a 3x3 blur of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharpenSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// Strength, 0 to 1 (1 adds the detail 2.5 times).
    pub amount: f32,
}

impl Default for SharpenSettings {
    fn default() -> Self {
        SharpenSettings {
            enabled: false,
            amount: 0.3,
        }
    }
}

/// Where the logo sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Corner {
    /// Top-left corner.
    TopLeft,
    /// Top-right corner.
    TopRight,
    /// Bottom-left corner.
    BottomLeft,
    /// Bottom-right corner.
    BottomRight,
    /// Centre of the frame (margin ignored).
    Center,
}

/// A PNG logo blended over the picture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkSettings {
    /// Off skips the filter (bypass) and keeps its parameters.
    pub enabled: bool,
    /// PNG file (RGBA, RGB or grey); none: the built-in OnAir badge.
    pub path: Option<PathBuf>,
    /// Corner (or centre) the logo is placed in.
    pub position: Corner,
    /// Distance from the frame edges, as a fraction of the frame height (0 to 0.5).
    pub margin: f32,
    /// Logo width as a fraction of the frame width (0.01 to 1).
    pub scale: f32,
    /// 0 (invisible) to 1 (as drawn).
    pub opacity: f32,
}

impl Default for WatermarkSettings {
    fn default() -> Self {
        WatermarkSettings {
            enabled: false,
            path: None,
            position: Corner::TopRight,
            margin: 0.03,
            scale: 0.15,
            opacity: 0.8,
        }
    }
}

/// Checks `value` lies in `lo..=hi`, naming the field in the error.
fn range(field: &str, value: f32, lo: f32, hi: f32) -> anyhow::Result<()> {
    if !(value.is_finite() && (lo..=hi).contains(&value)) {
        bail!("video_filters.{field} = {value} is invalid: use {lo} to {hi}");
    }
    Ok(())
}

impl FilterSettings {
    /// The "beauty" look: skin-masked smoothing, a little brightening and sharpening.
    pub fn beauty() -> Self {
        let mut s = FilterSettings::default();
        s.denoise.enabled = true;
        s.denoise.amount = 0.1;
        s.skin_mask.enabled = true;
        s.smoothing.enabled = true;
        s.whitening.enabled = true;
        s.sharpen.enabled = true;
        s.sharpen.amount = 0.2;
        s.color.enabled = true;
        s.color.saturation = 1.05;
        s
    }

    /// Rejects out-of-range values, naming the field and its valid range.
    pub fn validate(&self) -> anyhow::Result<()> {
        range("denoise.amount", self.denoise.amount, 0.0, 1.0)?;
        let m = &self.skin_mask;
        range("skin_mask.cb_min", m.cb_min, 0.0, 255.0)?;
        range("skin_mask.cb_max", m.cb_max, 0.0, 255.0)?;
        range("skin_mask.cr_min", m.cr_min, 0.0, 255.0)?;
        range("skin_mask.cr_max", m.cr_max, 0.0, 255.0)?;
        if m.cb_min >= m.cb_max {
            bail!(
                "video_filters.skin_mask.cb_min = {} is invalid: it must be below cb_max ({})",
                m.cb_min,
                m.cb_max
            );
        }
        if m.cr_min >= m.cr_max {
            bail!(
                "video_filters.skin_mask.cr_min = {} is invalid: it must be below cr_max ({})",
                m.cr_min,
                m.cr_max
            );
        }
        range("skin_mask.softness", m.softness, 0.0, 1.0)?;
        range("smoothing.amount", self.smoothing.amount, 0.0, 1.0)?;
        range("smoothing.radius", self.smoothing.radius, 1.0, 16.0)?;
        range("smoothing.edge", self.smoothing.edge, 1.0, 64.0)?;
        range("whitening.amount", self.whitening.amount, 0.0, 1.0)?;
        range("color.brightness", self.color.brightness, -1.0, 1.0)?;
        range("color.contrast", self.color.contrast, 0.0, 2.0)?;
        range("color.saturation", self.color.saturation, 0.0, 2.0)?;
        range("sharpen.amount", self.sharpen.amount, 0.0, 1.0)?;
        let w = &self.watermark;
        range("watermark.margin", w.margin, 0.0, 0.5)?;
        range("watermark.scale", w.scale, 0.01, 1.0)?;
        range("watermark.opacity", w.opacity, 0.0, 1.0)?;
        if let Some(p) = &w.path {
            if p.as_os_str().is_empty() {
                bail!("video_filters.watermark.path is empty: give a PNG file or remove the line for the built-in logo");
            }
        }
        Ok(())
    }

    /// The stages that would change the picture, in processing order. Filters that are
    /// switched off or set to a neutral value are left out, so they cost nothing.
    pub fn active_stages(&self) -> Vec<Stage> {
        if self.bypass {
            return Vec::new();
        }
        let mut v = Vec::new();
        if self.denoise.enabled && self.denoise.amount > 0.0 {
            v.push(Stage::Denoise);
        }
        let smoothing = self.smoothing.enabled && self.smoothing.amount > 0.0;
        let whitening = self.whitening.enabled && self.whitening.amount > 0.0;
        let mask_used = smoothing || (whitening && self.whitening.skin_only);
        if self.skin_mask.enabled && (mask_used || self.skin_mask.show) {
            v.push(Stage::SkinMask);
        }
        if smoothing && !self.skin_mask.show {
            v.push(Stage::Smoothing);
        }
        if whitening && !self.skin_mask.show {
            v.push(Stage::Whitening);
        }
        let c = &self.color;
        if c.enabled && (c.brightness != 0.0 || c.contrast != 1.0 || c.saturation != 1.0) {
            v.push(Stage::Color);
        }
        if self.sharpen.enabled && self.sharpen.amount > 0.0 {
            v.push(Stage::Sharpen);
        }
        if self.watermark.enabled && self.watermark.opacity > 0.0 {
            v.push(Stage::Watermark);
        }
        v
    }
}

/// One filter of the chain, as reported in timings and budget advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// [`DenoiseSettings`].
    Denoise,
    /// [`SkinMaskSettings`].
    SkinMask,
    /// [`SmoothingSettings`].
    Smoothing,
    /// [`WhiteningSettings`].
    Whitening,
    /// [`ColorSettings`].
    Color,
    /// [`SharpenSettings`].
    Sharpen,
    /// [`WatermarkSettings`].
    Watermark,
}

impl Stage {
    /// Every stage in processing order.
    pub const ALL: [Stage; 7] = [
        Stage::Denoise,
        Stage::SkinMask,
        Stage::Smoothing,
        Stage::Whitening,
        Stage::Color,
        Stage::Sharpen,
        Stage::Watermark,
    ];

    /// The settings table name of the stage (`video_filters.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Denoise => "denoise",
            Stage::SkinMask => "skin_mask",
            Stage::Smoothing => "smoothing",
            Stage::Whitening => "whitening",
            Stage::Color => "color",
            Stage::Sharpen => "sharpen",
            Stage::Watermark => "watermark",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_all_off_and_valid() {
        let s = FilterSettings::default();
        s.validate().unwrap();
        assert!(s.active_stages().is_empty());
        FilterSettings::beauty().validate().unwrap();
    }

    #[test]
    fn validate_names_the_field() {
        let mut s = FilterSettings::default();
        s.smoothing.amount = 1.5;
        let e = s.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "video_filters.smoothing.amount = 1.5 is invalid: use 0 to 1"
        );
        let mut s = FilterSettings::default();
        s.color.contrast = f32::NAN;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("video_filters.color.contrast"));
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let s = FilterSettings::beauty();
        let text = toml::to_string(&s).unwrap();
        let back: FilterSettings = toml::from_str(&text).unwrap();
        assert_eq!(back, s);
        let partial: FilterSettings =
            toml::from_str("[smoothing]\nenabled = true\n[watermark]\nposition = \"bottom-left\"")
                .unwrap();
        assert!(partial.smoothing.enabled);
        assert_eq!(
            partial.smoothing.amount,
            SmoothingSettings::default().amount
        );
        assert_eq!(partial.watermark.position, Corner::BottomLeft);
        assert!(toml::from_str::<FilterSettings>("[smoothing]\nstrength = 1").is_err());
        assert!(toml::from_str::<FilterSettings>("blur = 1").is_err());
    }

    #[test]
    fn bypass_and_neutral_values_drop_stages() {
        let mut s = FilterSettings::beauty();
        assert_eq!(
            s.active_stages(),
            vec![
                Stage::Denoise,
                Stage::SkinMask,
                Stage::Smoothing,
                Stage::Whitening,
                Stage::Color,
                Stage::Sharpen
            ]
        );
        s.bypass = true;
        assert!(s.active_stages().is_empty());
        let mut s = FilterSettings::default();
        s.color.enabled = true;
        assert!(s.active_stages().is_empty(), "neutral colour is a no-op");
        s.skin_mask.enabled = true;
        assert!(s.active_stages().is_empty(), "a mask alone changes nothing");
    }
}
