//! `onair probe`: plays a stream (RTMP, HTTP-FLV or an FLV file) the way a viewer would,
//! decodes every frame with FFmpeg's H.264 decoder in low-delay mode, reads the latency stamp
//! ([`crate::qa::stamp`]) from the SEI or, when that was stripped, from the barcode in the
//! decoded picture, and reports glass-to-glass latency (decoded-frame arrival minus capture
//! time, on this machine's clock), jitter, and missing or duplicated frames.
//!
//! It decodes the audio too: a stream published with sync marks (`onair live --sync-marks`:
//! a beep at every whole second of the tone, a white flash on the test card's first frame of
//! every second) gives the A/V offset, each beep's onset against its flash frame's pts.

use super::player::{PlayerEvent, RtmpPlayer};
use super::stamp::{self, percentile, unix_ms_now, Stamp};
use crate::flv::{
    self, AAC_RAW, AAC_SEQUENCE_HEADER, AVC_NALU, AVC_SEQUENCE_HEADER, TAG_AUDIO, TAG_VIDEO,
};
use crate::publish::url::RtmpUrl;
use anyhow::{anyhow, bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use ffmpeg_next as ff;
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Where the stream comes from
// ---------------------------------------------------------------------------------------

/// What `onair probe` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeSource {
    /// `rtmp://host[:port]/app/key`, played with [`RtmpPlayer`].
    Rtmp(RtmpUrl),
    /// `http://host[:port]/path.flv`: HTTP-FLV.
    Http {
        /// Host name or address.
        host: String,
        /// TCP port (80 when not given).
        port: u16,
        /// Path and query, starting with `/`.
        path: String,
    },
    /// A recorded FLV file.
    File(PathBuf),
}

impl ProbeSource {
    /// Parses a URL (`rtmp://`, `http://`) or a file path.
    pub fn parse(text: &str) -> anyhow::Result<ProbeSource> {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("rtmp://") {
            return Ok(ProbeSource::Rtmp(RtmpUrl::parse(text)?));
        }
        if lower.starts_with("https://") || lower.starts_with("rtmps://") {
            bail!("{text}: TLS is not supported by onair probe; use rtmp://, http:// or a file");
        }
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .with_context(|| format!("{text}: port '{p}' is not a number"))?,
                ),
                None => (authority.to_string(), 80),
            };
            if host.is_empty() {
                bail!("{text}: no host");
            }
            return Ok(ProbeSource::Http { host, port, path });
        }
        if lower.contains("://") {
            bail!("{text}: unsupported scheme; use rtmp://, http:// or a file path");
        }
        Ok(ProbeSource::File(PathBuf::from(text)))
    }

    /// True for network sources, where arrival time against capture time is latency.
    pub fn is_live(&self) -> bool {
        !matches!(self, ProbeSource::File(_))
    }
}

/// Decodes an HTTP/1.1 chunked body incrementally.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    pending: BytesMut,
    /// Bytes left in the current chunk, plus its CRLF.
    remaining: usize,
    in_chunk: bool,
    done: bool,
}

impl ChunkedDecoder {
    /// Feeds raw body bytes; appends the decoded data to `out`. Errors on bad framing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        self.pending.extend_from_slice(input);
        loop {
            if self.done {
                self.pending.clear();
                return Ok(());
            }
            if self.in_chunk {
                if self.remaining > 2 {
                    let n = self.pending.len().min(self.remaining - 2);
                    out.extend_from_slice(&self.pending[..n]);
                    self.pending.advance(n);
                    self.remaining -= n;
                    if self.remaining > 2 {
                        return Ok(());
                    }
                }
                if self.pending.len() < self.remaining {
                    return Ok(());
                }
                if &self.pending[..2] != b"\r\n" {
                    bail!("malformed chunked HTTP body (no CRLF after a chunk)");
                }
                self.pending.advance(2);
                self.in_chunk = false;
                continue;
            }
            let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                if self.pending.len() > 1024 {
                    bail!("malformed chunked HTTP body (chunk size line too long)");
                }
                return Ok(());
            };
            let line = std::str::from_utf8(&self.pending[..end])
                .map_err(|_| anyhow!("malformed chunked HTTP body"))?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| anyhow!("malformed chunk size '{hex}' in the HTTP body"))?;
            self.pending.advance(end + 2);
            if size == 0 {
                self.done = true;
                continue;
            }
            self.in_chunk = true;
            self.remaining = size + 2;
        }
    }

    /// True once the last (zero-size) chunk was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// One tag of an FLV byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamTag {
    /// 8 audio, 9 video, 18 script.
    pub tag_type: u8,
    /// Tag timestamp in milliseconds.
    pub timestamp_ms: u32,
    /// Tag body.
    pub body: Bytes,
}

/// Splits an FLV byte stream into tags as bytes arrive (HTTP-FLV, files), unlike
/// [`flv::parse_flv`], which wants the whole file.
#[derive(Debug, Default)]
pub struct FlvStreamParser {
    buf: BytesMut,
    header_done: bool,
}

impl FlvStreamParser {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete tag, None if more bytes are needed.
    pub fn next_tag(&mut self) -> anyhow::Result<Option<StreamTag>> {
        if !self.header_done {
            if self.buf.len() < 9 {
                return Ok(None);
            }
            if &self.buf[..3] != b"FLV" {
                bail!("not an FLV stream (no FLV signature)");
            }
            let offset =
                u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
            if offset < 9 {
                bail!("FLV header size {offset} is invalid");
            }
            // The header, then PreviousTagSize0.
            if self.buf.len() < offset + 4 {
                return Ok(None);
            }
            self.buf.advance(offset + 4);
            self.header_done = true;
        }
        if self.buf.len() < 11 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([0, self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if self.buf.len() < 11 + size + 4 {
            return Ok(None);
        }
        let tag_type = self.buf[0] & 0x1f;
        let timestamp_ms = u32::from_be_bytes([self.buf[7], self.buf[4], self.buf[5], self.buf[6]]);
        self.buf.advance(11);
        let body = self.buf.split_to(size).freeze();
        self.buf.advance(4);
        Ok(Some(StreamTag {
            tag_type,
            timestamp_ms,
            body,
        }))
    }
}

/// Bytes of an HTTP response body (after the headers), plain or chunked.
struct HttpBody {
    stream: tokio::net::TcpStream,
    chunked: Option<ChunkedDecoder>,
    first: Vec<u8>,
}

impl HttpBody {
    async fn open(
        host: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<HttpBody> {
        let connect = async {
            let mut stream = tokio::net::TcpStream::connect((host, port))
                .await
                .with_context(|| format!("cannot connect to http://{host}:{port}"))?;
            let _ = stream.set_nodelay(true);
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: onair-probe\r\n\
                 Accept: */*\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            let end = loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("http://{host}:{port}{path} closed the connection before answering");
                }
                head.extend_from_slice(&buf[..n]);
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if head.len() > 64 * 1024 {
                    bail!("http://{host}:{port}{path} sent oversized headers");
                }
            };
            let text = String::from_utf8_lossy(&head[..end]).to_string();
            let status = text.lines().next().unwrap_or("");
            if status.split_whitespace().nth(1) != Some("200") {
                bail!("http://{host}:{port}{path} answered '{status}'");
            }
            let chunked = text.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("transfer-encoding:") && l.contains("chunked")
            });
            Ok(HttpBody {
                stream,
                chunked: chunked.then(ChunkedDecoder::default),
                first: head[end..].to_vec(),
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| anyhow!("timed out connecting to http://{host}:{port}{path}"))?
    }

    /// Appends the next body bytes to `out`; false at the end of the body.
    async fn read_into(&mut self, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        let raw = if self.first.is_empty() {
            let mut buf = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.truncate(n);
            buf
        } else {
            std::mem::take(&mut self.first)
        };
        match self.chunked.as_mut() {
            None => out.extend_from_slice(&raw),
            Some(c) => {
                c.feed(&raw, out)?;
                if c.is_done() && out.is_empty() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// An open input, yielding FLV video tag bodies.
enum Input {
    Rtmp(Box<RtmpPlayer>),
    Http(Box<HttpBody>, FlvStreamParser),
    File(Box<dyn AsyncRead + Unpin + Send>, FlvStreamParser),
}

impl Input {
    async fn open(source: &ProbeSource, timeout: Duration) -> anyhow::Result<Input> {
        Ok(match source {
            ProbeSource::Rtmp(url) => {
                Input::Rtmp(Box::new(RtmpPlayer::connect(url, timeout).await?))
            }
            ProbeSource::Http { host, port, path } => Input::Http(
                Box::new(HttpBody::open(host, *port, path, timeout).await?),
                FlvStreamParser::default(),
            ),
            ProbeSource::File(path) => {
                let f = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Input::File(Box::new(f), FlvStreamParser::default())
            }
        })
    }

    /// The next audio or video tag (type, timestamp, body); None at the end of the stream.
    async fn next_media(&mut self) -> anyhow::Result<Option<(u8, u32, Bytes)>> {
        match self {
            Input::Rtmp(player) => loop {
                match player.next_event().await? {
                    None => return Ok(None),
                    Some(PlayerEvent::Video { timestamp_ms, data }) => {
                        return Ok(Some((TAG_VIDEO, timestamp_ms, data)))
                    }
                    Some(PlayerEvent::Audio { timestamp_ms, data }) => {
                        return Ok(Some((TAG_AUDIO, timestamp_ms, data)))
                    }
                    Some(_) => {}
                }
            },
            Input::Http(body, parser) => loop {
                if let Some(tag) = parser.next_tag()? {
                    if tag.tag_type == TAG_VIDEO || tag.tag_type == TAG_AUDIO {
                        return Ok(Some((tag.tag_type, tag.timestamp_ms, tag.body)));
                    }
                    continue;
                }
                let mut more = Vec::new();
                if !body.read_into(&mut more).await? {
                    return Ok(None);
                }
                parser.push(&more);
            },
            Input::File(file, parser) => loop {
                if let Some(tag) = parser.next_tag()? {
                    if tag.tag_type == TAG_VIDEO || tag.tag_type == TAG_AUDIO {
                        return Ok(Some((tag.tag_type, tag.timestamp_ms, tag.body)));
                    }
                    continue;
                }
                let mut buf = vec![0u8; 256 * 1024];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                parser.push(&buf[..n]);
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// FFmpeg's H.264 decoder set up for the lowest delay: one thread (frame threads hold frames
/// back), `LOW_DELAY` (no reorder buffering), fed Annex B built from FLV's AVCC.
pub struct H264Decoder {
    decoder: ff::decoder::Video,
    /// SPS and PPS in Annex B, sent before the next access unit.
    parameter_sets: Option<Vec<u8>>,
}

impl H264Decoder {
    /// Opens the decoder.
    pub fn new() -> anyhow::Result<H264Decoder> {
        ff::init().map_err(|e| anyhow!("FFmpeg did not initialise: {e}"))?;
        let codec = ff::decoder::find(ff::codec::Id::H264)
            .ok_or_else(|| anyhow!("this FFmpeg has no H.264 decoder"))?;
        let mut ctx = ff::codec::Context::new_with_codec(codec);
        ctx.set_threading(ff::threading::Config {
            kind: ff::threading::Type::None,
            count: 1,
            ..Default::default()
        });
        ctx.set_flags(ff::codec::Flags::LOW_DELAY);
        let decoder = ctx
            .decoder()
            .open_as(codec)
            .and_then(|o| o.video())
            .context("cannot open the H.264 decoder")?;
        Ok(H264Decoder {
            decoder,
            parameter_sets: None,
        })
    }

    /// Takes the stream's AVCDecoderConfigurationRecord (the FLV sequence header).
    pub fn configure(&mut self, avc_config: &[u8]) -> anyhow::Result<()> {
        let sets = crate::encode::ffmpeg_hw::parse_extradata(avc_config)
            .filter(|_| avc_config.first() == Some(&1))
            .ok_or_else(|| anyhow!("the AVC sequence header has no SPS/PPS"))?;
        let mut annexb = Vec::new();
        for set in [&sets.sps, &sets.pps] {
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(set);
        }
        self.parameter_sets = Some(annexb);
        Ok(())
    }

    /// Decodes one AVCC access unit with presentation time `pts`; returns the pictures that
    /// came out (one per access unit in low-delay streams).
    pub fn decode(&mut self, avcc: &[u8], pts: i64) -> anyhow::Result<Vec<ff::frame::Video>> {
        let nals = flv::split_avcc(avcc).map_err(|e| anyhow!("bad AVCC access unit: {e}"))?;
        let mut annexb = self.parameter_sets.take().unwrap_or_default();
        for nal in nals {
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(nal);
        }
        let mut packet = ff::Packet::copy(&annexb);
        packet.set_pts(Some(pts));
        packet.set_dts(Some(pts));
        let mut frames = Vec::new();
        if let Err(e) = self.decoder.send_packet(&packet) {
            // A damaged access unit (e.g. joined mid-GOP): skip it and keep going.
            tracing::debug!("decoder refused an access unit: {e}");
        }
        self.receive(&mut frames);
        Ok(frames)
    }

    /// Drains the frames still inside the decoder at the end of the stream.
    pub fn flush(&mut self) -> Vec<ff::frame::Video> {
        let _ = self.decoder.send_eof();
        let mut frames = Vec::new();
        self.receive(&mut frames);
        frames
    }

    fn receive(&mut self, frames: &mut Vec<ff::frame::Video>) {
        loop {
            let mut frame = ff::frame::Video::empty();
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => frames.push(frame),
                Err(_) => return,
            }
        }
    }
}

/// Reads the barcode from a decoded picture's luma plane.
pub fn read_barcode_in(frame: &ff::frame::Video) -> Option<Stamp> {
    if frame.planes() == 0 {
        return None;
    }
    stamp::read_barcode(
        frame.data(0),
        frame.stride(0),
        frame.width() as usize,
        frame.height() as usize,
    )
}

// ---------------------------------------------------------------------------------------
// A/V offset
// ---------------------------------------------------------------------------------------

/// FFmpeg's AAC decoder, fed the FLV's raw AAC frames wrapped in ADTS headers built from the
/// AudioSpecificConfig (so no extradata plumbing is needed).
pub struct AacDecoder {
    decoder: ff::decoder::Audio,
    /// Audio object type, sampling-frequency index, channel configuration.
    config: (u8, u8, u8),
}

// SAFETY: the decoder context is owned by this value and used from one thread at a time.
unsafe impl Send for AacDecoder {}

/// AAC's sampling-frequency table, by index.
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl AacDecoder {
    /// Opens the decoder for the stream's AudioSpecificConfig (the FLV AAC sequence header).
    pub fn new(asc: &[u8]) -> anyhow::Result<AacDecoder> {
        if asc.len() < 2 {
            bail!("the AAC sequence header is too short");
        }
        let aot = asc[0] >> 3;
        let sf = ((asc[0] & 7) << 1) | (asc[1] >> 7);
        let ch = (asc[1] >> 3) & 0xf;
        if !(1..=4).contains(&aot) || sf as usize >= AAC_RATES.len() || !(1..=7).contains(&ch) {
            bail!(
                "unsupported AAC configuration (object type {aot}, rate index {sf}, channels {ch})"
            );
        }
        ff::init().map_err(|e| anyhow!("FFmpeg did not initialise: {e}"))?;
        let codec = ff::decoder::find(ff::codec::Id::AAC)
            .ok_or_else(|| anyhow!("this FFmpeg has no AAC decoder"))?;
        let decoder = ff::codec::Context::new_with_codec(codec)
            .decoder()
            .open_as(codec)
            .and_then(|o| o.audio())
            .context("cannot open the AAC decoder")?;
        Ok(AacDecoder {
            decoder,
            config: (aot, sf, ch),
        })
    }

    /// The sample rate of the stream.
    pub fn rate(&self) -> u32 {
        AAC_RATES[self.config.1 as usize]
    }

    /// Decodes one raw AAC frame starting at `pts_ms`; returns its first channel's samples.
    pub fn decode(&mut self, raw: &[u8], pts_ms: i64) -> anyhow::Result<Vec<f32>> {
        let (aot, sf, ch) = self.config;
        let len = raw.len() + 7;
        if len >= 1 << 13 {
            bail!("AAC frame of {} bytes is too large", raw.len());
        }
        let mut adts = vec![
            0xff,
            0xf1,
            ((aot - 1) << 6) | (sf << 2) | (ch >> 2),
            ((ch & 3) << 6) | ((len >> 11) & 3) as u8,
            ((len >> 3) & 0xff) as u8,
            (((len & 7) << 5) as u8) | 0x1f,
            0xfc,
        ];
        adts.extend_from_slice(raw);
        let mut packet = ff::Packet::copy(&adts);
        packet.set_pts(Some(pts_ms));
        self.decoder
            .send_packet(&packet)
            .map_err(|e| anyhow!("AAC decoder refused a frame: {e}"))?;
        let mut out = Vec::new();
        let mut frame = ff::frame::Audio::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            first_channel(&frame, &mut out);
        }
        Ok(out)
    }
}

/// Appends the first channel of a decoded frame as f32 (float or 16-bit, planar or packed).
fn first_channel(frame: &ff::frame::Audio, out: &mut Vec<f32>) {
    use ff::format::sample::{Sample, Type};
    let n = frame.samples();
    let channels = frame.channels().max(1) as usize;
    let data = frame.data(0);
    match frame.format() {
        Sample::F32(t) => {
            let step = if t == Type::Planar { 1 } else { channels };
            out.extend(
                data.chunks_exact(4)
                    .step_by(step)
                    .take(n)
                    .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Sample::I16(t) => {
            let step = if t == Type::Planar { 1 } else { channels };
            out.extend(
                data.chunks_exact(2)
                    .step_by(step)
                    .take(n)
                    .map(|b| i16::from_ne_bytes([b[0], b[1]]) as f32 / 32768.0),
            );
        }
        other => tracing::debug!("ignoring decoded audio in {other:?}"),
    }
}

/// Luma above which a picture counts as the test card's sync flash (the card's normal mean
/// is about 100; the flash is 235).
const FLASH_MEAN_LUMA: f64 = 200.0;

/// True when the centre of the decoded picture is (nearly) white: the sync flash.
pub fn is_flash(frame: &ff::frame::Video) -> bool {
    if frame.planes() == 0 || frame.width() < 8 || frame.height() < 8 {
        return false;
    }
    let (w, h, stride) = (
        frame.width() as usize,
        frame.height() as usize,
        frame.stride(0),
    );
    let y = frame.data(0);
    let (mut sum, mut n) = (0u64, 0u64);
    for row in (h / 4..3 * h / 4).step_by(4) {
        for col in (w / 4..3 * w / 4).step_by(4) {
            sum += y[row * stride + col] as u64;
            n += 1;
        }
    }
    n > 0 && sum as f64 / n as f64 > FLASH_MEAN_LUMA
}

/// A/V offset measured from sync marks, in milliseconds (audio minus video: positive means
/// the sound comes late).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AvOffsetStats {
    /// Beep onsets found in the audio.
    pub beeps: usize,
    /// Flash frames found in the video.
    pub flashes: usize,
    /// Beeps with a flash within ±400 ms (the offsets below).
    pub pairs: usize,
    /// Median offset.
    pub median_ms: f64,
    /// Mean offset.
    pub mean_ms: f64,
    /// Lowest offset.
    pub min_ms: f64,
    /// Highest offset.
    pub max_ms: f64,
    /// Largest offset in either direction.
    pub max_abs_ms: f64,
    /// Every pair's offset, in stream order.
    pub offsets_ms: Vec<f64>,
}

/// Finds beep onsets in the audio and flash frames in the video, and pairs them.
#[derive(Debug, Default)]
pub struct SyncMarks {
    flashes: Vec<i64>,
    onsets: Vec<f64>,
    /// Quiet samples in a row before the current one.
    quiet: usize,
    /// Set once the audio could not be decoded, so the warning is given once.
    audio_failed: bool,
}

/// A sample louder than this (the beep is at 0.5) after [`ONSET_QUIET_MS`] of quiet starts a beep.
const ONSET_LEVEL: f32 = 0.1;
/// Quiet needed before an onset counts.
const ONSET_QUIET_MS: usize = 300;
/// Farthest a flash may be from a beep to be its partner.
const PAIR_WINDOW_MS: f64 = 400.0;

impl SyncMarks {
    /// Feeds one FLV audio tag (the AAC sequence header opens `decoder`).
    pub fn push_audio_tag(&mut self, decoder: &mut Option<AacDecoder>, ts_ms: u32, body: &[u8]) {
        let tag = match flv::parse_audio_tag_body(body) {
            Ok(t) => t,
            Err(e) => {
                if !self.audio_failed {
                    tracing::debug!("not measuring A/V offset: {e}");
                    self.audio_failed = true;
                }
                return;
            }
        };
        match tag.aac_packet_type {
            AAC_SEQUENCE_HEADER => match AacDecoder::new(tag.payload) {
                Ok(d) => *decoder = Some(d),
                Err(e) => tracing::warn!("not measuring A/V offset: {e:#}"),
            },
            AAC_RAW => {
                let Some(d) = decoder.as_mut() else { return };
                match d.decode(tag.payload, ts_ms as i64) {
                    Ok(samples) => self.push_samples(ts_ms as f64, d.rate(), &samples),
                    Err(e) => tracing::debug!("skipping an audio frame at {ts_ms} ms: {e:#}"),
                }
            }
            _ => {}
        }
    }

    /// Feeds decoded mono samples starting at `start_ms`.
    pub fn push_samples(&mut self, start_ms: f64, rate: u32, samples: &[f32]) {
        let need = rate as usize * ONSET_QUIET_MS / 1000;
        for (i, v) in samples.iter().enumerate() {
            if v.abs() >= ONSET_LEVEL {
                if self.quiet >= need {
                    self.onsets.push(start_ms + i as f64 * 1000.0 / rate as f64);
                }
                self.quiet = 0;
            } else {
                self.quiet += 1;
            }
        }
    }

    /// Notes a flash frame at stream pts `pts_ms` (repeats within 500 ms count once).
    pub fn push_flash(&mut self, pts_ms: i64) {
        if self
            .flashes
            .last()
            .is_some_and(|&l| (pts_ms - l).abs() < 500)
        {
            return;
        }
        self.flashes.push(pts_ms);
    }

    /// The offsets so far; None when no beep could be paired with a flash.
    pub fn stats(&self) -> Option<AvOffsetStats> {
        let offsets: Vec<f64> = self
            .onsets
            .iter()
            .filter_map(|&onset| {
                self.flashes
                    .iter()
                    .map(|&f| onset - f as f64)
                    .min_by(|a, b| a.abs().total_cmp(&b.abs()))
                    .filter(|d| d.abs() <= PAIR_WINDOW_MS)
            })
            .collect();
        if offsets.is_empty() {
            return None;
        }
        let mut sorted = offsets.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(AvOffsetStats {
            beeps: self.onsets.len(),
            flashes: self.flashes.len(),
            pairs: n,
            median_ms: median,
            mean_ms: offsets.iter().sum::<f64>() / n as f64,
            min_ms: sorted[0],
            max_ms: sorted[n - 1],
            max_abs_ms: offsets.iter().fold(0.0, |m, v| m.max(v.abs())),
            offsets_ms: offsets,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------

/// How `onair probe` runs.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// What to read.
    pub source: ProbeSource,
    /// Stop after this long (None: until the stream ends).
    pub duration: Option<Duration>,
    /// Stop after this many decoded frames.
    pub frames: Option<u64>,
    /// Frames decoded within this long of the first one count for frame numbering but not
    /// for latency: a relay's GOP cache replays seconds-old frames to a new viewer first.
    pub warmup: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Print a status line this often on stderr (None: quiet).
    pub status_every: Option<Duration>,
    /// Write one CSV row per decoded frame here.
    pub csv: Option<PathBuf>,
    /// Draw latency over time into this PNG.
    pub plot: Option<PathBuf>,
    /// Publish each frame's latency here as it is measured (the desktop app's stats graph).
    pub gauge: Option<std::sync::Arc<LatencyGauge>>,
}

/// The latest measured glass-to-glass latency, readable from another thread without locks.
#[derive(Debug, Default)]
pub struct LatencyGauge {
    last_ms_bits: std::sync::atomic::AtomicU64,
    frames: std::sync::atomic::AtomicU64,
}

impl LatencyGauge {
    /// Records one frame's latency.
    pub fn record(&self, ms: f64) {
        use std::sync::atomic::Ordering;
        self.last_ms_bits.store(ms.to_bits(), Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest latency in ms, once a frame was measured.
    pub fn last_ms(&self) -> Option<f64> {
        use std::sync::atomic::Ordering;
        (self.frames.load(Ordering::Relaxed) > 0)
            .then(|| f64::from_bits(self.last_ms_bits.load(Ordering::Relaxed)))
    }

    /// Frames measured so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ProbeOptions {
    /// Defaults for `source`: until the end, one second of warm-up, status every second.
    pub fn new(source: ProbeSource) -> Self {
        ProbeOptions {
            source,
            duration: None,
            frames: None,
            warmup: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            status_every: Some(Duration::from_secs(1)),
            csv: None,
            plot: None,
            gauge: None,
        }
    }
}

/// Where a frame's stamp was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StampSource {
    /// From our SEI message.
    Sei,
    /// From the barcode in the decoded picture (no SEI).
    Barcode,
    /// Not stamped, or unreadable.
    None,
}

/// What the probe saw of one decoded frame.
#[derive(Clone, Debug, Serialize)]
pub struct FrameRecord {
    /// Decoded frames before this one.
    pub seq: u64,
    /// When the decoded picture was ready, Unix ms (this machine's clock).
    pub arrival_unix_ms: f64,
    /// Presentation time in the stream, ms.
    pub stream_pts_ms: i64,
    /// The stamp's frame number.
    pub frame: Option<u32>,
    /// The stamp's capture time, Unix ms.
    pub capture_unix_ms: Option<u64>,
    /// Arrival minus capture (live sources only).
    pub latency_ms: Option<f64>,
    /// Where the stamp came from.
    pub source: StampSource,
    /// With both SEI and barcode present: whether they agree.
    pub barcode_matches_sei: Option<bool>,
    /// Decoded during the warm-up (left out of the latency statistics).
    pub warmup: bool,
}

/// Latency distribution over the measured frames, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencyStats {
    /// Frames measured.
    pub count: usize,
    /// Lowest latency.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Highest latency.
    pub max: f64,
    /// Mean absolute difference between consecutive frames' latencies.
    pub jitter: f64,
    /// Standard deviation of the latency.
    pub stddev: f64,
}

impl LatencyStats {
    /// The statistics of `values` (in arrival order); None when empty.
    pub fn of(values: &[f64]) -> Option<LatencyStats> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let jitter = if values.len() > 1 {
            values.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        let mut sorted = values.to_vec();
        Some(LatencyStats {
            count: values.len(),
            min: values.iter().cloned().fold(f64::INFINITY, f64::min),
            mean,
            p50: percentile(&mut sorted, 50.0),
            p95: percentile(&mut sorted, 95.0),
            p99: percentile(&mut sorted, 99.0),
            max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            jitter,
            stddev: var.sqrt(),
        })
    }
}

/// The probe's result (`onair probe --json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeSummary {
    /// What was probed.
    pub source: String,
    /// A network source (latency is measured) rather than a file.
    pub live: bool,
    /// Seconds from the first to the last decoded frame.
    pub duration_s: f64,
    /// Pictures decoded.
    pub frames_decoded: u64,
    /// Decoded frames with a readable stamp.
    pub frames_stamped: u64,
    /// Stamps read from our SEI.
    pub from_sei: u64,
    /// Stamps read from the barcode because there was no SEI.
    pub from_barcode: u64,
    /// Frames whose barcode could be read (with or without SEI).
    pub barcode_readable: u64,
    /// Frames with both SEI and barcode where the two agree / were compared.
    pub barcode_agrees: u64,
    /// Frames with both SEI and barcode.
    pub barcode_compared: u64,
    /// Frame numbers never seen between the first and the last one seen.
    pub frames_missing: u64,
    /// Frame numbers seen more than once.
    pub frames_duplicated: u64,
    /// First stamped frame number seen.
    pub first_frame: Option<u32>,
    /// Highest stamped frame number seen (counting on from the first, across a wrap).
    pub last_frame: Option<u32>,
    /// Seconds at the start left out of the latency statistics.
    pub warmup_s: f64,
    /// Glass-to-glass latency (live sources), after the warm-up.
    pub latency_ms: Option<LatencyStats>,
    /// Frames per second decoded.
    pub fps: f64,
    /// A/V offset from the sync marks (None when the stream has none).
    pub av_offset: Option<AvOffsetStats>,
}

/// Accumulates frame records into the summary, live.
#[derive(Debug, Default)]
pub struct Tracker {
    records: Vec<FrameRecord>,
    seen: HashSet<u32>,
    first_frame: Option<u32>,
    /// Highest frame number seen, relative to the first (unwrapped).
    max_rel: u64,
    duplicates: u64,
}

impl Tracker {
    /// Adds one decoded frame.
    pub fn push(&mut self, record: FrameRecord) {
        if let Some(n) = record.frame {
            let first = *self.first_frame.get_or_insert(n);
            let rel = n.wrapping_sub(first) as u64;
            // Frames from before the first one seen (reordering) count as seen, not as a jump.
            if rel < (1 << 31) {
                self.max_rel = self.max_rel.max(rel);
            }
            if !self.seen.insert(n) {
                self.duplicates += 1;
            }
        }
        self.records.push(record);
    }

    /// Every frame so far.
    pub fn records(&self) -> &[FrameRecord] {
        &self.records
    }

    /// Latencies outside the warm-up, in arrival order.
    pub fn latencies(&self) -> Vec<f64> {
        self.records
            .iter()
            .filter(|r| !r.warmup)
            .filter_map(|r| r.latency_ms)
            .collect()
    }

    /// The summary of what was seen so far.
    pub fn summary(&self, source: &str, live: bool, warmup: Duration) -> ProbeSummary {
        let count =
            |f: &dyn Fn(&FrameRecord) -> bool| self.records.iter().filter(|r| f(r)).count() as u64;
        let duration_s = match (self.records.first(), self.records.last()) {
            (Some(a), Some(b)) => (b.arrival_unix_ms - a.arrival_unix_ms) / 1000.0,
            _ => 0.0,
        };
        let frames_decoded = self.records.len() as u64;
        let in_range = self.seen.iter().filter(|&&n| {
            let rel = n.wrapping_sub(self.first_frame.unwrap_or(0)) as u64;
            rel <= self.max_rel
        });
        let unique_in_range = in_range.count() as u64;
        let span = if self.first_frame.is_some() {
            self.max_rel + 1
        } else {
            0
        };
        ProbeSummary {
            source: source.to_string(),
            live,
            duration_s,
            frames_decoded,
            frames_stamped: count(&|r| r.source != StampSource::None),
            from_sei: count(&|r| r.source == StampSource::Sei),
            from_barcode: count(&|r| r.source == StampSource::Barcode),
            barcode_readable: count(&|r| {
                r.source == StampSource::Barcode || r.barcode_matches_sei.is_some()
            }),
            barcode_agrees: count(&|r| r.barcode_matches_sei == Some(true)),
            barcode_compared: count(&|r| r.barcode_matches_sei.is_some()),
            frames_missing: span.saturating_sub(unique_in_range),
            frames_duplicated: self.duplicates,
            first_frame: self.first_frame,
            last_frame: self
                .first_frame
                .map(|f| f.wrapping_add(self.max_rel as u32)),
            warmup_s: warmup.as_secs_f64(),
            latency_ms: if live {
                LatencyStats::of(&self.latencies())
            } else {
                None
            },
            fps: if duration_s > 0.0 {
                (frames_decoded.saturating_sub(1)) as f64 / duration_s
            } else {
                0.0
            },
            av_offset: None,
        }
    }
}

/// Runs the probe until the stream ends, a bound is reached, or `stop` turns true.
pub async fn run_probe(
    opts: &ProbeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<ProbeSummary> {
    let live = opts.source.is_live();
    let name = match &opts.source {
        ProbeSource::Rtmp(u) => u.to_string(),
        ProbeSource::Http { host, port, path } => format!("http://{host}:{port}{path}"),
        ProbeSource::File(p) => p.display().to_string(),
    };
    let mut csv = match &opts.csv {
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(f);
            writeln!(
                w,
                "seq,arrival_unix_ms,stream_pts_ms,frame,capture_unix_ms,latency_ms,source,barcode_matches_sei,warmup"
            )?;
            Some(w)
        }
        None => None,
    };
    let mut input = Input::open(&opts.source, opts.connect_timeout).await?;
    let mut decoder = H264Decoder::new()?;
    let mut tracker = Tracker::default();
    let mut audio: Option<AacDecoder> = None;
    let mut sync = SyncMarks::default();
    // SEI stamps by stream pts, until their picture is decoded.
    let mut sei_by_pts: VecDeque<(i64, Option<Stamp>)> = VecDeque::new();
    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut first_decoded: Option<Instant> = None;
    let mut next_status = Instant::now() + opts.status_every.unwrap_or(Duration::ZERO);
    let mut ended_by_stream = true;
    'outer: loop {
        let next = tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    ended_by_stream = false;
                    break;
                }
                continue;
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                ended_by_stream = false;
                break;
            }
            tag = input.next_media() => tag?,
        };
        let Some((tag_type, timestamp_ms, body)) = next else {
            break;
        };
        if tag_type == TAG_AUDIO {
            sync.push_audio_tag(&mut audio, timestamp_ms, &body);
            continue;
        }
        let tag = match flv::parse_video_tag_body(&body) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("skipping a video tag: {e}");
                continue;
            }
        };
        let pts = timestamp_ms as i64 + tag.composition_time_ms as i64;
        let mut pictures = match tag.avc_packet_type {
            AVC_SEQUENCE_HEADER => {
                decoder.configure(tag.payload)?;
                continue;
            }
            AVC_NALU => {
                sei_by_pts.push_back((pts, stamp::find_in_avcc(tag.payload)));
                while sei_by_pts.len() > 64 {
                    sei_by_pts.pop_front();
                }
                match decoder.decode(tag.payload, pts) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("skipping a damaged video packet at {pts} ms: {e:#}");
                        continue;
                    }
                }
            }
            _ => continue,
        };
        if pictures.is_empty() {
            continue;
        }
        let arrival = unix_ms_now();
        let now = Instant::now();
        let first = *first_decoded.get_or_insert(now);
        for picture in pictures.drain(..) {
            let ppts = picture.pts().unwrap_or(pts);
            let sei = sei_by_pts
                .iter()
                .position(|(p, _)| *p == ppts)
                .and_then(|i| sei_by_pts.remove(i))
                .and_then(|(_, s)| s);
            let barcode = read_barcode_in(&picture);
            if is_flash(&picture) {
                sync.push_flash(ppts);
            }
            let (stamp, source) = match (sei, barcode) {
                (Some(s), _) => (Some(s), StampSource::Sei),
                (None, Some(b)) => (Some(b), StampSource::Barcode),
                (None, None) => (None, StampSource::None),
            };
            let record = FrameRecord {
                seq: tracker.records().len() as u64,
                arrival_unix_ms: arrival,
                stream_pts_ms: ppts,
                frame: stamp.map(|s| s.frame),
                capture_unix_ms: stamp.map(|s| s.capture_unix_ms),
                latency_ms: stamp
                    .filter(|_| live)
                    .map(|s| arrival - s.capture_unix_ms as f64),
                source,
                barcode_matches_sei: match (sei, barcode) {
                    (Some(s), Some(b)) => Some(s == b),
                    _ => None,
                },
                warmup: now.duration_since(first) < opts.warmup,
            };
            if let Some(w) = csv.as_mut() {
                write_csv_row(w, &record)?;
            }
            if let (Some(g), Some(l), false) = (&opts.gauge, record.latency_ms, record.warmup) {
                g.record(l);
            }
            tracker.push(record);
            if opts
                .frames
                .is_some_and(|n| tracker.records().len() as u64 >= n)
            {
                ended_by_stream = false;
                break 'outer;
            }
        }
        if let Some(every) = opts.status_every {
            if Instant::now() >= next_status {
                next_status = Instant::now() + every;
                eprintln!("{}", status_line(&tracker, started.elapsed(), live));
            }
        }
    }
    if ended_by_stream {
        for picture in decoder.flush() {
            let barcode = read_barcode_in(&picture);
            if is_flash(&picture) {
                sync.push_flash(picture.pts().unwrap_or(0));
            }
            tracker.push(FrameRecord {
                seq: tracker.records().len() as u64,
                arrival_unix_ms: unix_ms_now(),
                stream_pts_ms: picture.pts().unwrap_or(0),
                frame: barcode.map(|s| s.frame),
                capture_unix_ms: barcode.map(|s| s.capture_unix_ms),
                latency_ms: None,
                source: if barcode.is_some() {
                    StampSource::Barcode
                } else {
                    StampSource::None
                },
                barcode_matches_sei: None,
                warmup: false,
            });
        }
    }
    if let Some(mut w) = csv {
        w.flush()?;
    }
    let mut summary = tracker.summary(&name, live, opts.warmup);
    summary.av_offset = sync.stats();
    if let Some(path) = &opts.plot {
        write_plot(path, tracker.records(), &name)?;
    }
    Ok(summary)
}

fn write_csv_row(w: &mut impl Write, r: &FrameRecord) -> std::io::Result<()> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    writeln!(
        w,
        "{},{:.3},{},{},{},{},{},{},{}",
        r.seq,
        r.arrival_unix_ms,
        r.stream_pts_ms,
        opt(r.frame.map(|v| v.to_string())),
        opt(r.capture_unix_ms.map(|v| v.to_string())),
        opt(r.latency_ms.map(|v| format!("{v:.3}"))),
        match r.source {
            StampSource::Sei => "sei",
            StampSource::Barcode => "barcode",
            StampSource::None => "none",
        },
        opt(r.barcode_matches_sei.map(|v| v.to_string())),
        r.warmup
    )
}

/// One status line: frames, stamp sources, latency so far, missing and duplicated frames.
fn status_line(tracker: &Tracker, elapsed: Duration, live: bool) -> String {
    let s = tracker.summary("", live, Duration::ZERO);
    let last = tracker
        .records()
        .iter()
        .rev()
        .find_map(|r| r.latency_ms)
        .map(|v| format!("{v:.1}"))
        .unwrap_or_else(|| "-".into());
    let latency = match tracker.latencies() {
        v if v.is_empty() || !live => String::new(),
        mut v => format!(
            ", latency last {last} ms, p50 {:.1}, p95 {:.1}",
            percentile(&mut v, 50.0),
            percentile(&mut v, 95.0)
        ),
    };
    format!(
        "probe {:6.1} s: {} frames (sei {}, barcode {}, unstamped {}){latency}, missing {}, duplicated {}",
        elapsed.as_secs_f64(),
        s.frames_decoded,
        s.from_sei,
        s.from_barcode,
        s.frames_decoded - s.frames_stamped,
        s.frames_missing,
        s.frames_duplicated
    )
}

/// A human summary for the end of `onair probe` (without `--json`).
pub fn summary_text(s: &ProbeSummary) -> String {
    let mut out = format!(
        "{}: {} frames in {:.1} s ({:.1} fps); stamped {} (SEI {}, barcode only {}); barcode readable on {} frames, agrees with SEI on {}/{}; missing {}, duplicated {}\n",
        s.source,
        s.frames_decoded,
        s.duration_s,
        s.fps,
        s.frames_stamped,
        s.from_sei,
        s.from_barcode,
        s.barcode_readable,
        s.barcode_agrees,
        s.barcode_compared,
        s.frames_missing,
        s.frames_duplicated
    );
    match &s.latency_ms {
        Some(l) => out.push_str(&format!(
            "glass-to-glass latency over {} frames (after {:.1} s warm-up): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms, jitter {:.1} ms\n",
            l.count, s.warmup_s, l.p50, l.p95, l.p99, l.max, l.min, l.jitter
        )),
        None if s.live => out.push_str("no stamped frames: no latency measured (was the stream published with --stamp?)\n"),
        None => out.push_str("a file has no arrival times: no latency measured\n"),
    }
    if let Some(a) = &s.av_offset {
        out.push_str(&format!(
            "A/V offset (audio minus video; positive: audio late) over {} beep/flash pairs: median {:+.1} ms, max |offset| {:.1} ms, range {:+.1} … {:+.1} ms ({} beeps, {} flashes)\n",
            a.pairs, a.median_ms, a.max_abs_ms, a.min_ms, a.max_ms, a.beeps, a.flashes
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Plot
// ---------------------------------------------------------------------------------------

/// Fonts tried for the plot's labels; without any, the plot has no text.
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers the first font found as plotters' "sans-serif", once; true if there is one.
fn plot_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws latency (ms) over time (s since the first frame) into a PNG, warm-up frames in grey.
pub fn write_plot(path: &Path, records: &[FrameRecord], title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64, bool)> = match records.first() {
        Some(first) => records
            .iter()
            .filter_map(|r| {
                r.latency_ms.map(|l| {
                    (
                        (r.arrival_unix_ms - first.arrival_unix_ms) / 1000.0,
                        l,
                        r.warmup,
                    )
                })
            })
            .collect(),
        None => Vec::new(),
    };
    if points.is_empty() {
        bail!(
            "nothing to plot into {}: no frame has a latency (a file, or an unstamped stream)",
            path.display()
        );
    }
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let steady: Vec<f64> = points.iter().filter(|p| !p.2).map(|p| p.1).collect();
    let y_source = if steady.is_empty() {
        points.iter().map(|p| p.1).collect()
    } else {
        steady
    };
    let y_max = y_source.iter().cloned().fold(1.0, f64::max) * 1.1;
    let y_min = y_source.iter().cloned().fold(0.0, f64::min);
    let text = plot_font();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if text {
            builder
                .caption(
                    format!("glass-to-glass latency: {title}"),
                    ("sans-serif", 20),
                )
                .x_label_area_size(40)
                .y_label_area_size(55);
        }
        let mut chart = builder.build_cartesian_2d(0f64..x_max, y_min..y_max)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds since the first frame")
                .y_desc("latency (ms)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let warm: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.2)
            .map(|p| (p.0, p.1.min(y_max)))
            .collect();
        let live: Vec<(f64, f64)> = points.iter().filter(|p| !p.2).map(|p| (p.0, p.1)).collect();
        chart.draw_series(LineSeries::new(warm, &RGBColor(170, 170, 170)))?;
        chart.draw_series(LineSeries::new(live, &BLUE))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("cannot draw the plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert!(matches!(
            ProbeSource::parse("rtmp://127.0.0.1:1935/live/test").unwrap(),
            ProbeSource::Rtmp(_)
        ));
        assert_eq!(
            ProbeSource::parse("http://127.0.0.1:8080/live/test.flv").unwrap(),
            ProbeSource::Http {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/live/test.flv".into()
            }
        );
        assert_eq!(
            ProbeSource::parse("http://example.com").unwrap(),
            ProbeSource::Http {
                host: "example.com".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            ProbeSource::parse("rec.flv").unwrap(),
            ProbeSource::File("rec.flv".into())
        );
        assert!(ProbeSource::parse("https://x/y.flv").is_err());
        assert!(ProbeSource::parse("srt://x:1").is_err());
        assert!(!ProbeSource::parse("a.flv").unwrap().is_live());
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            d.feed(&body[..split], &mut out).unwrap();
            d.feed(&body[split..], &mut out).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.is_done());
        }
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn flv_stream_parser_matches_the_file_parser() {
        let mut w = flv::FlvWriter::new(Vec::new(), true, true).unwrap();
        w.write_tag(TAG_VIDEO, 40, &[0x17, 1, 0, 0, 0, 9]).unwrap();
        w.write_tag(flv::TAG_AUDIO, 0x0100_0001, &[0xaf, 1, 2])
            .unwrap();
        w.write_tag(TAG_VIDEO, 73, &[0x27, 1, 0, 0, 0]).unwrap();
        let bytes = w.into_inner();
        let (_, expected) = flv::parse_flv(&bytes).unwrap();
        let mut p = FlvStreamParser::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(7) {
            p.push(chunk);
            while let Some(t) = p.next_tag().unwrap() {
                got.push(t);
            }
        }
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (g.tag_type, g.timestamp_ms, &g.body),
                (e.tag_type, e.timestamp_ms, &e.body)
            );
        }
        let mut bad = FlvStreamParser::default();
        bad.push(b"NOT AN FLV FILE");
        assert!(bad.next_tag().is_err());
    }

    fn record(seq: u64, frame: Option<u32>, latency: Option<f64>) -> FrameRecord {
        FrameRecord {
            seq,
            arrival_unix_ms: 1000.0 + seq as f64 * 33.0,
            stream_pts_ms: seq as i64 * 33,
            frame,
            capture_unix_ms: frame.map(|f| f as u64),
            latency_ms: latency,
            source: if frame.is_some() {
                StampSource::Sei
            } else {
                StampSource::None
            },
            barcode_matches_sei: frame.map(|_| true),
            warmup: false,
        }
    }

    #[test]
    fn tracker_counts_missing_and_duplicated_frames() {
        let mut t = Tracker::default();
        // 10, 11, 13 (12 missing), 13 again, 14, then an unstamped frame, 17 (15, 16 missing).
        for (i, f) in [
            Some(10),
            Some(11),
            Some(13),
            Some(13),
            Some(14),
            None,
            Some(17),
        ]
        .into_iter()
        .enumerate()
        {
            t.push(record(i as u64, f, f.map(|_| 20.0 + i as f64)));
        }
        let s = t.summary("x", true, Duration::ZERO);
        assert_eq!(s.frames_decoded, 7);
        assert_eq!(s.frames_stamped, 6);
        assert_eq!(s.frames_missing, 3);
        assert_eq!(s.frames_duplicated, 1);
        assert_eq!((s.first_frame, s.last_frame), (Some(10), Some(17)));
        let l = s.latency_ms.unwrap();
        assert_eq!(l.count, 6);
        assert_eq!(l.min, 20.0);
        assert_eq!(l.max, 26.0);
        assert_eq!(l.p50, 22.0);
        // A file reports no latency.
        assert!(t.summary("x", false, Duration::ZERO).latency_ms.is_none());
    }

    #[test]
    fn frame_numbers_wrap() {
        let mut t = Tracker::default();
        for (i, f) in [u32::MAX - 1, u32::MAX, 0, 2].into_iter().enumerate() {
            t.push(record(i as u64, Some(f), None));
        }
        let s = t.summary("x", false, Duration::ZERO);
        assert_eq!(s.frames_missing, 1);
        assert_eq!(s.last_frame, Some(2));
    }

    #[test]
    fn latency_stats_have_jitter_and_spread() {
        let l = LatencyStats::of(&[10.0, 20.0, 10.0, 20.0]).unwrap();
        assert_eq!(l.jitter, 10.0);
        assert_eq!(l.mean, 15.0);
        assert_eq!(l.stddev, 5.0);
        assert!(LatencyStats::of(&[]).is_none());
    }

    #[test]
    fn sync_marks_pair_beeps_with_flashes() {
        let mut m = SyncMarks::default();
        // 3 s of 48 kHz audio: a beep 30 ms after each whole second, from second 1 on
        let mut audio = vec![0f32; 48_000 * 3];
        for k in 1..3 {
            let start = k * 48_000 + 30 * 48;
            for i in 0..4800 {
                audio[start + i] = 0.5 * (i as f32 * 0.13).sin().signum();
            }
        }
        for (i, chunk) in audio.chunks(1024).enumerate() {
            m.push_samples(i as f64 * 1024.0 / 48.0, 48_000, chunk);
        }
        for f in [0, 1000, 1000, 2001, 2500 + 600] {
            m.push_flash(f);
        }
        let s = m.stats().unwrap();
        assert_eq!((s.beeps, s.flashes, s.pairs), (2, 4, 2));
        assert!((s.offsets_ms[0] - 30.0).abs() < 0.1, "{:?}", s.offsets_ms);
        assert!((s.offsets_ms[1] - 29.0).abs() < 0.1, "{:?}", s.offsets_ms);
        assert!((s.median_ms - 29.5).abs() < 0.1 && (s.max_abs_ms - 30.0).abs() < 0.1);
        // no flashes: nothing to report
        let mut quiet = SyncMarks::default();
        quiet.push_samples(0.0, 48_000, &audio);
        assert!(quiet.stats().is_none());
    }

    #[test]
    fn plot_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.png");
        let records: Vec<FrameRecord> = (0..90)
            .map(|i| FrameRecord {
                warmup: i < 10,
                ..record(i, Some(i as u32), Some(30.0 + (i % 7) as f64))
            })
            .collect();
        write_plot(&path, &records, "test").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(write_plot(&path, &[record(0, None, None)], "empty").is_err());
    }
}
