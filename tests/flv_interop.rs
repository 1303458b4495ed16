//! Interoperability of the FLV module with ffmpeg: files written by `FlvWriter` from
//! ffmpeg's elementary streams must probe and decode cleanly, and ffmpeg's own FLV files
//! must parse and re-encode to the same bytes.

use std::fs;
use std::io::BufWriter;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use onair::flv::{self, FlvWriter, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use onair::media::{AudioHeader, MediaKind, Packet, StreamHeaders, VideoHeader};
use serde_json::Value;

const FRAMES: usize = 30;
const FPS: usize = 30;

/// Runs ffmpeg quietly with whitespace-separated `args` then `output`, and fails the test
/// with its stderr if it fails.
fn ffmpeg(args: &str, output: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args.split_whitespace())
        .arg(output)
        .output()
        .expect("ffmpeg must be installed");
    assert!(
        out.status.success(),
        "ffmpeg {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ffprobe -show_streams -show_format -count_packets` as JSON.
fn ffprobe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-count_packets",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe must be installed");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffprobe complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

fn stream<'a>(probe: &'a Value, codec_type: &str) -> &'a Value {
    probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["codec_type"] == codec_type)
        .unwrap_or_else(|| panic!("no {codec_type} stream in {probe}"))
}

/// Decodes every frame with ffmpeg and asserts it reports no error at all.
fn assert_decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg must be installed");
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "decoding errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_vcl(nal: &[u8]) -> bool {
    matches!(nal[0] & 0x1f, 1 | 5)
}

/// Groups Annex B NAL units into access units: a new one starts at an AUD/SPS/PPS/SEI or at
/// a slice with first_mb_in_slice 0 once the current one already holds a slice.
fn access_units(annexb: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut units: Vec<Vec<&[u8]>> = Vec::new();
    let mut current: Vec<&[u8]> = Vec::new();
    for nal in flv::split_annexb(annexb) {
        let starts_picture = is_vcl(nal) && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let starts_unit = matches!(nal[0] & 0x1f, 6..=9) || starts_picture;
        if starts_unit && current.iter().any(|n| is_vcl(n)) {
            units.push(std::mem::take(&mut current));
        }
        current.push(nal);
    }
    if !current.is_empty() {
        units.push(current);
    }
    units
}

/// Raw AAC frames of an ADTS stream, with (sampling frequency index, channel configuration)
/// read from the first header.
fn adts_frames(data: &[u8]) -> (Vec<&[u8]>, u8, u8) {
    let mut frames = Vec::new();
    let mut params = None;
    let mut pos = 0;
    while pos < data.len() {
        let h = &data[pos..pos + 7];
        assert_eq!((h[0], h[1] & 0xF6), (0xFF, 0xF0), "ADTS sync at {pos}");
        let protection_absent = h[1] & 1 == 1;
        let header_len = if protection_absent { 7 } else { 9 };
        let frame_len =
            (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        params.get_or_insert(((h[2] >> 2) & 0x0F, ((h[2] & 1) << 2) | (h[3] >> 6)));
        frames.push(&data[pos + header_len..pos + frame_len]);
        pos += frame_len;
    }
    let (freq, channels) = params.expect("at least one ADTS frame");
    (frames, freq, channels)
}

#[test]
fn flv_written_from_ffmpeg_elementary_streams_probes_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let h264 = dir.path().join("video.h264");
    let aac = dir.path().join("audio.aac");
    let out = dir.path().join("out.flv");
    let remux = dir.path().join("remux.flv");

    // Two IDRs (frames 0 and 15), no B-frames, so pts = dts = frame time.
    ffmpeg(
        "-f lavfi -i testsrc2=size=320x240:rate=30 -frames:v 30 -c:v libx264 -profile:v high \
         -bf 0 -g 15 -sc_threshold 0 -threads 1 -f h264",
        &h264,
    );
    ffmpeg(
        "-f lavfi -i sine=frequency=440:sample_rate=48000 -ac 2 -t 1 -c:a aac -b:a 128k -f adts",
        &aac,
    );
    // ffmpeg's own FLV of the same video, for its AVCDecoderConfigurationRecord.
    ffmpeg(&format!("-i {} -c copy -f flv", h264.display()), &remux);

    let annexb = fs::read(&h264).unwrap();
    let units = access_units(&annexb);
    assert_eq!(units.len(), FRAMES, "access units in the H.264 stream");
    let (sps, pps) = flv::sps_pps_from_annexb(&annexb).unwrap();
    let avc_config = flv::avc_decoder_config_record(&sps, &pps).unwrap();

    let (_, ffmpeg_tags) = flv::parse_flv(&fs::read(&remux).unwrap()).unwrap();
    let ffmpeg_seq = ffmpeg_tags
        .iter()
        .find(|t| t.tag_type == TAG_VIDEO)
        .expect("video sequence header");
    assert_eq!(
        ffmpeg_seq.body,
        flv::video_sequence_header_body(&avc_config),
        "record differs from ffmpeg's"
    );

    let adts = fs::read(&aac).unwrap();
    let (aac_frames, freq_index, channel_config) = adts_frames(&adts);
    assert_eq!((freq_index, channel_config), (3, 2), "48 kHz stereo");
    let asc = flv::audio_specific_config(2, 48000, 2).unwrap();
    let aac_probe = ffprobe(&aac);
    assert_eq!(
        stream(&aac_probe, "audio")["nb_read_packets"],
        aac_frames.len().to_string(),
        "ADTS frame count"
    );

    let mut packets: Vec<Packet> = Vec::new();
    let mut keyframes = 0;
    for (i, unit) in units.iter().enumerate() {
        let annexb_unit: Vec<u8> = unit
            .iter()
            .flat_map(|nal| [&[0u8, 0, 0, 1][..], nal].concat())
            .collect();
        let keyframe = unit.iter().any(|nal| nal[0] & 0x1f == 5);
        keyframes += usize::from(keyframe);
        let ms = (i * 1000 / FPS) as i64;
        packets.push(Packet {
            kind: MediaKind::Video,
            data: Bytes::from(flv::annexb_to_avcc(&annexb_unit, true)),
            pts_ms: ms,
            dts_ms: ms,
            keyframe,
            disposable: false,
        });
    }
    assert_eq!(keyframes, 2);
    for (j, frame) in aac_frames.iter().enumerate() {
        let ms = (j * 1024 * 1000 / 48000) as i64;
        packets.push(Packet {
            kind: MediaKind::Audio,
            data: Bytes::copy_from_slice(frame),
            pts_ms: ms,
            dts_ms: ms,
            keyframe: true,
            disposable: false,
        });
    }
    // Stable sort: interleaved by dts, video first on ties.
    packets.sort_by_key(|p| p.dts_ms);

    let headers = StreamHeaders {
        video: Some(VideoHeader {
            width: 320,
            height: 240,
            fps: FPS as u32,
            bitrate_kbps: 0,
            avc_config: avc_config.clone(),
        }),
        audio: Some(AudioHeader {
            sample_rate: 48000,
            channels: 2,
            bitrate_kbps: 128,
            asc: Bytes::copy_from_slice(&asc),
        }),
    };
    let file = BufWriter::new(fs::File::create(&out).unwrap());
    let mut writer = FlvWriter::new(file, true, true).unwrap();
    writer.write_headers(&headers).unwrap();
    for p in &packets {
        writer.write_packet(p).unwrap();
    }
    writer.flush().unwrap();
    let written = writer.bytes_written();
    drop(writer);

    let data = fs::read(&out).unwrap();
    assert_eq!(data.len() as u64, written);
    let (header, tags) = flv::parse_flv(&data).unwrap();
    assert!(header.has_audio && header.has_video);
    assert_eq!(tags.len(), 3 + FRAMES + aac_frames.len());
    assert_eq!(tags[0].tag_type, TAG_SCRIPT);

    let probe = ffprobe(&out);
    let video = stream(&probe, "video");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["profile"], "High");
    assert_eq!(video["width"], 320);
    assert_eq!(video["height"], 240);
    assert_eq!(video["nb_read_packets"], FRAMES.to_string());
    let audio = stream(&probe, "audio");
    assert_eq!(audio["codec_name"], "aac");
    assert_eq!(audio["profile"], "LC");
    assert_eq!(audio["sample_rate"], "48000");
    assert_eq!(audio["channels"], 2);
    assert_eq!(audio["nb_read_packets"], aac_frames.len().to_string());
    assert_eq!(probe["format"]["format_name"], "flv");
    assert_eq!(
        probe["format"]["tags"]["encoder"],
        format!("OnAir {}", env!("CARGO_PKG_VERSION"))
    );

    assert_decodes_cleanly(&out);
}

#[test]
fn ffmpeg_flv_parses_and_rebuilds_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref.flv");
    // Default x264 settings use B-frames, so composition times are non-zero.
    ffmpeg(
        "-f lavfi -i testsrc2=size=320x240:rate=30 \
         -f lavfi -i sine=frequency=440:sample_rate=44100 -ac 2 -t 1 \
         -c:v libx264 -profile:v high -threads 1 -c:a aac -f flv",
        &reference,
    );
    let data = fs::read(&reference).unwrap();
    let (header, tags) = flv::parse_flv(&data).unwrap();
    assert!(header.has_audio && header.has_video);

    let probe = ffprobe(&reference);
    let count = |kind: &str, tag_type: u8| {
        let packets: usize = stream(&probe, kind)["nb_read_packets"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let tags = tags.iter().filter(|t| t.tag_type == tag_type).count();
        (packets, tags)
    };
    // Tags = packets + the sequence header (+ ffmpeg's end-of-sequence tag for video).
    let (video_packets, video_tags) = count("video", TAG_VIDEO);
    assert_eq!(video_packets, FRAMES);
    assert_eq!(video_tags, FRAMES + 2);
    let (audio_packets, audio_tags) = count("audio", TAG_AUDIO);
    assert_eq!(audio_tags, audio_packets + 1);

    let mut rewriter = FlvWriter::new(Vec::new(), true, true).unwrap();
    let mut saw_b_frame = false;
    for tag in &tags {
        rewriter
            .write_tag(tag.tag_type, tag.timestamp_ms, &tag.body)
            .unwrap();
        match tag.tag_type {
            TAG_VIDEO => {
                let info = flv::parse_video_tag_body(&tag.body).unwrap();
                match info.avc_packet_type {
                    flv::AVC_SEQUENCE_HEADER => {
                        // Our record from ffmpeg's SPS and PPS equals ffmpeg's record.
                        let record = info.payload;
                        let sps_len = usize::from(u16::from_be_bytes([record[6], record[7]]));
                        let sps = &record[8..8 + sps_len];
                        let p = 8 + sps_len + 1;
                        let pps_len = usize::from(u16::from_be_bytes([record[p], record[p + 1]]));
                        let pps = &record[p + 2..p + 2 + pps_len];
                        assert_eq!(flv::avc_decoder_config_record(sps, pps).unwrap(), record);
                        assert_eq!(flv::video_sequence_header_body(record), tag.body);
                    }
                    flv::AVC_NALU => {
                        saw_b_frame |= info.composition_time_ms > 0;
                        let dts = i64::from(tag.timestamp_ms);
                        let packet = Packet {
                            kind: MediaKind::Video,
                            data: Bytes::copy_from_slice(info.payload),
                            pts_ms: dts + i64::from(info.composition_time_ms),
                            dts_ms: dts,
                            keyframe: info.keyframe,
                            disposable: false,
                        };
                        assert_eq!(flv::video_tag_body(&packet), tag.body);
                        let nals = flv::split_avcc(info.payload).unwrap();
                        assert_eq!(info.keyframe, nals.iter().any(|n| n[0] & 0x1f == 5));
                    }
                    other => assert_eq!(other, flv::AVC_END_OF_SEQUENCE),
                }
            }
            TAG_AUDIO => {
                let info = flv::parse_audio_tag_body(&tag.body).unwrap();
                if info.aac_packet_type == flv::AAC_SEQUENCE_HEADER {
                    // ffmpeg's encoder appends an SBR sync extension after the LC config.
                    assert_eq!(
                        info.payload[..2],
                        flv::audio_specific_config(2, 44100, 2).unwrap()
                    );
                    assert_eq!(flv::audio_sequence_header_body(info.payload), tag.body);
                } else {
                    assert_eq!(flv::audio_tag_body(info.payload), tag.body);
                }
            }
            _ => assert_eq!(tag.tag_type, TAG_SCRIPT),
        }
    }
    assert!(saw_b_frame, "expected B-frames in the reference");
    assert_eq!(
        rewriter.into_inner(),
        data,
        "rewritten file differs from ffmpeg's"
    );
}
