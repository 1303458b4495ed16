//! Codec parameters read from a stream's sequence headers, so the stats API can show what a
//! publisher really sends (picture size, sample rate) even when its metadata is missing or
//! wrong. Parsers here read untrusted bytes: they return `None` on anything unexpected.

/// Video parameters from an AVC sequence header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AvcInfo {
    /// Coded width minus cropping, in pixels.
    pub width: u32,
    /// Coded height minus cropping, in pixels.
    pub height: u32,
    /// `profile_idc` (66 baseline, 77 main, 100 high).
    pub profile: u8,
    /// `level_idc` times ten (31 is level 3.1).
    pub level: u8,
}

/// Audio parameters from an AAC sequence header (AudioSpecificConfig).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AacInfo {
    /// Audio object type (2 is AAC-LC).
    pub object_type: u8,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channel configuration (1 mono, 2 stereo).
    pub channels: u8,
}

/// Parses the SPS inside an FLV AVC sequence header tag body (`0x17 0x00 ...`).
pub fn parse_avc_sequence_header(body: &[u8]) -> Option<AvcInfo> {
    // Tag body: frame/codec byte, packet type, 3-byte composition time, then the record.
    let record = body.get(5..)?;
    if record.first() != Some(&1) {
        return None;
    }
    let sps_count = record.get(5)? & 0x1f;
    if sps_count == 0 {
        return None;
    }
    let len = u16::from_be_bytes([*record.get(6)?, *record.get(7)?]) as usize;
    let sps = record.get(8..8 + len)?;
    parse_sps(sps)
}

/// Parses an H.264 sequence parameter set NAL unit (header byte included).
pub fn parse_sps(nal: &[u8]) -> Option<AvcInfo> {
    if nal.first()? & 0x1f != 7 {
        return None;
    }
    let rbsp = crate::flv::unescape_rbsp(&nal[1..]);
    let mut r = Bits::new(&rbsp);
    let profile = r.bits(8)? as u8;
    r.bits(8)?;
    let level = r.bits(8)? as u8;
    r.ue()?;
    let mut chroma_format_idc = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None;
        }
        if chroma_format_idc == 3 {
            r.bits(1)?;
        }
        r.ue()?;
        r.ue()?;
        r.bits(1)?;
        if r.bits(1)? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?;
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    r.ue()?;
    r.bits(1)?;
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?;
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        crop_l = r.ue()?;
        crop_r = r.ue()?;
        crop_t = r.ue()?;
        crop_b = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        0 => (1, 1),
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_unit_y = sub_h * (2 - frame_mbs_only);
    let width = width_mbs
        .checked_mul(16)?
        .checked_sub(sub_w * (crop_l.checked_add(crop_r)?))?;
    let height = height_units
        .checked_mul(16 * (2 - frame_mbs_only))?
        .checked_sub(crop_unit_y.checked_mul(crop_t.checked_add(crop_b)?)?)?;
    Some(AvcInfo {
        width,
        height,
        profile,
        level,
    })
}

/// Parses the AudioSpecificConfig inside an FLV AAC sequence header tag body (`0xAF 0x00 ...`).
pub fn parse_aac_sequence_header(body: &[u8]) -> Option<AacInfo> {
    let asc = body.get(2..)?;
    let mut r = Bits::new(asc);
    let mut object_type = r.bits(5)?;
    if object_type == 31 {
        object_type = 32 + r.bits(6)?;
    }
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let index = r.bits(4)?;
    let sample_rate = if index == 15 {
        r.bits(24)?
    } else {
        *RATES.get(index as usize)?
    };
    let channels = r.bits(4)? as u8;
    Some(AacInfo {
        object_type: object_type as u8,
        sample_rate,
        channels,
    })
}

fn skip_scaling_list(r: &mut Bits, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()? as i64;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Big-endian bit reader with Exp-Golomb codes.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0 }
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + u64::from(rest)).try_into().ok()
    }

    fn se(&mut self) -> Option<i32> {
        let v = self.ue()? as i64;
        let signed = if v % 2 == 1 { (v + 1) / 2 } else { -(v / 2) };
        i32::try_from(signed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sps_size_with_cropping() {
        // x264 High profile 1280x720 (720 = 45 macroblocks, no cropping needed).
        let sps = [
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x83, 0x19, 0x60,
        ];
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.profile, 100);
        assert_eq!(info.level, 31);
        // High profile 320x240.
        let sps = [
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03,
            0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
        ];
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (320, 240));
        // Constrained baseline 1280x720.
        let sps = [
            0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
            0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x83, 0x24, 0x80,
        ];
        let info = parse_sps(&sps).unwrap();
        assert_eq!(info.profile, 66);
        assert_eq!((info.width, info.height), (1280, 720));
        // High profile 1920x1080: 1088 coded lines cropped to 1080.
        let sps = [
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00,
            0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xc8, 0x3c, 0x60, 0xc6, 0x58,
        ];
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
    }

    #[test]
    fn reads_audio_specific_config() {
        let info = parse_aac_sequence_header(&[0xaf, 0x00, 0x11, 0x90]).unwrap();
        assert_eq!(info.object_type, 2);
        assert_eq!(info.sample_rate, 48000);
        assert_eq!(info.channels, 2);
        let info = parse_aac_sequence_header(&[0xaf, 0x00, 0x12, 0x10]).unwrap();
        assert_eq!(info.sample_rate, 44100);
    }

    #[test]
    fn garbage_gives_none_without_panicking() {
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_avc_sequence_header(&data);
            let _ = parse_aac_sequence_header(&data);
            let mut sps = vec![0x67];
            sps.extend(&data);
            let _ = parse_sps(&sps);
        }
        assert!(parse_sps(&[0x67, 0x64, 0, 0x1f, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
