//! One picture through the filters, PNG in and PNG out: the visual check behind
//! `onair snapshot`, and how the before/after pictures in `assets/` are made.

use super::image::RgbaImage;
use super::{BackendChoice, FilterSettings, Stage, VideoFilterChain};
use anyhow::{bail, Context};
use std::path::Path;
use std::time::Instant;

/// Builds filter settings from a comma-separated list: `beauty` (the preset), `all` (the
/// preset plus watermark), `none`, or filter names (`denoise`, `skin-mask` (shows the mask),
/// `smoothing`, `whitening`, `color`, `sharpen`, `watermark`), each at its default strength.
/// Names add to `base` (the settings file's `[video_filters]`, or the defaults).
pub fn parse_filter_list(list: &str, base: &FilterSettings) -> anyhow::Result<FilterSettings> {
    let mut s = base.clone();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.replace('_', "-").as_str() {
            "none" => s = FilterSettings::default(),
            "beauty" => s = merge_beauty(&s),
            "all" => {
                s = merge_beauty(&s);
                s.watermark.enabled = true;
            }
            "denoise" => s.denoise.enabled = true,
            "skin-mask" => {
                s.skin_mask.enabled = true;
                s.skin_mask.show = true;
            }
            "smoothing" => s.smoothing.enabled = true,
            "whitening" => s.whitening.enabled = true,
            "color" | "colour" => {
                s.color.enabled = true;
                if s.color.contrast == 1.0 && s.color.saturation == 1.0 && s.color.brightness == 0.0
                {
                    // Defaults are neutral: give the switch something visible to do.
                    s.color.contrast = 1.1;
                    s.color.saturation = 1.2;
                }
            }
            "sharpen" => s.sharpen.enabled = true,
            "watermark" => s.watermark.enabled = true,
            other => bail!(
                "unknown filter '{other}': use beauty, all, none or any of {}",
                Stage::ALL
                    .iter()
                    .map(|s| s.name().replace('_', "-"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    s.bypass = false;
    s.validate()?;
    Ok(s)
}

/// The beauty preset's switches on top of `s`'s parameters where `s` already enables them.
fn merge_beauty(s: &FilterSettings) -> FilterSettings {
    let b = FilterSettings::beauty();
    let mut out = s.clone();
    macro_rules! take {
        ($($f:ident),*) => {$(
            if !out.$f.enabled {
                out.$f = b.$f.clone();
            }
        )*};
    }
    take!(denoise, skin_mask, smoothing, whitening, color, sharpen);
    out
}

/// Reads filter settings from a TOML file: either the fields of `[video_filters]` at the top
/// level, or a whole settings file, whose `[video_filters]` table is used.
pub fn load_filter_settings(path: &Path) -> anyhow::Result<FilterSettings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let value = match table.remove("video_filters") {
        Some(v) => v,
        None => toml::Value::Table(table),
    };
    let settings: FilterSettings = value
        .try_into()
        .with_context(|| format!("{}: invalid video filter settings", path.display()))?;
    settings.validate()?;
    Ok(settings)
}

/// What a snapshot did.
#[derive(Clone, Debug)]
pub struct SnapshotReport {
    /// Backend status line of the chain.
    pub status: String,
    /// Size filtered (the picture, less an odd last row or column).
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// Filters that ran, in order.
    pub stages: Vec<Stage>,
    /// Time to filter the picture once, excluding set-up (milliseconds).
    pub filter_ms: f64,
}

/// Filters the PNG `input` with `settings` and writes `output`; with `compare`, also writes
/// the original and the result side by side.
pub fn snapshot(
    input: &Path,
    output: &Path,
    compare: Option<&Path>,
    settings: &FilterSettings,
    choice: BackendChoice,
) -> anyhow::Result<SnapshotReport> {
    let image = RgbaImage::load_png(input)?;
    let mut frame = image
        .to_i420(0, 0)
        .with_context(|| format!("converting {}", input.display()))?;
    let before = RgbaImage::from_i420(&frame);
    let mut chain = VideoFilterChain::with_backend(settings, frame.width, frame.height, choice)?;
    let t = Instant::now();
    chain.process(&mut frame)?;
    let filter_ms = t.elapsed().as_secs_f64() * 1000.0;
    let after = RgbaImage::from_i420(&frame);
    after.save_png(output)?;
    if let Some(path) = compare {
        before.side_by_side(&after)?.save_png(path)?;
    }
    Ok(SnapshotReport {
        status: chain.status().to_string(),
        width: frame.width,
        height: frame.height,
        stages: chain.stages(),
        filter_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_lists() {
        let d = FilterSettings::default();
        assert_eq!(
            parse_filter_list("beauty", &d).unwrap(),
            FilterSettings::beauty()
        );
        assert!(parse_filter_list("none", &FilterSettings::beauty())
            .unwrap()
            .active_stages()
            .is_empty());
        let s = parse_filter_list("sharpen, watermark", &d).unwrap();
        assert_eq!(s.active_stages(), vec![Stage::Sharpen, Stage::Watermark]);
        let s = parse_filter_list("skin_mask", &d).unwrap();
        assert_eq!(s.active_stages(), vec![Stage::SkinMask]);
        assert!(parse_filter_list("colour", &d)
            .unwrap()
            .active_stages()
            .contains(&Stage::Color));
        let e = parse_filter_list("blur", &d).unwrap_err().to_string();
        assert!(
            e.contains("unknown filter 'blur'") && e.contains("skin-mask"),
            "{e}"
        );
        // Parameters from the settings file survive the preset.
        let mut base = FilterSettings::default();
        base.smoothing.enabled = true;
        base.smoothing.amount = 0.3;
        let s = parse_filter_list("beauty", &base).unwrap();
        assert_eq!(s.smoothing.amount, 0.3);
        assert!(s.sharpen.enabled);
    }

    #[test]
    fn settings_files() {
        let dir = std::env::temp_dir().join(format!("onair-filters-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bare = dir.join("bare.toml");
        std::fs::write(&bare, "[sharpen]\nenabled = true\namount = 0.5\n").unwrap();
        let s = load_filter_settings(&bare).unwrap();
        assert!(s.sharpen.enabled && s.sharpen.amount == 0.5);
        let whole = dir.join("whole.toml");
        std::fs::write(&whole, "[video_filters.whitening]\nenabled = true\n").unwrap();
        assert!(load_filter_settings(&whole).unwrap().whitening.enabled);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[smoothing]\namount = 1.5\n").unwrap();
        let e = format!("{:#}", load_filter_settings(&bad).unwrap_err());
        assert!(e.contains("video_filters.smoothing.amount = 1.5"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
