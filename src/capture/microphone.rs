//! Microphone capture through cpal: any input device, sample format, rate and channel
//! count in, 48 kHz stereo f32 blocks out, paced by the device.
//!
//! The device callback only converts samples to f32 and copies them into a lock-free
//! single-producer ring (`rtrb`): no allocation, lock or logging there. Frames that do
//! not fit are counted as overruns. The consumer side ([`AudioSource::next_block`])
//! maps channels to stereo, resamples to 48 kHz with rubato's FFT resampler and cuts
//! 1024-frame blocks. If the device disappears or stops delivering, blocks of silence
//! keep the stream going in real time, [`Microphone::status`] says why, and the device is
//! reopened every couple of seconds.

use super::AudioSource;
use crate::clock::audio_pts_ms;
use crate::media::AudioBlock;
use anyhow::{bail, Context};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The rate every block leaves at: what the audio chain and the AAC encoder expect.
pub const OUTPUT_RATE: u32 = 48_000;

/// Frames per block: one AAC-LC frame, like the tone source.
pub const BLOCK_FRAMES: usize = super::tone::BLOCK_FRAMES;

/// How long the device may deliver nothing before the source switches to silence.
const STALL_TIMEOUT: Duration = Duration::from_millis(500);

/// How often a lost device is looked for again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(2);

/// How long the consumer sleeps while waiting for the device.
const POLL: Duration = Duration::from_millis(2);

/// One input configuration a device offers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceConfig {
    /// Channels captured.
    pub channels: u16,
    /// Lowest rate of the range, Hz.
    pub min_sample_rate: u32,
    /// Highest rate of the range, Hz.
    pub max_sample_rate: u32,
    /// Sample format as cpal names it ("f32", "i16", …).
    pub sample_format: String,
}

/// An input device as the system reports it, for device pickers and `--list-devices`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputDevice {
    /// The name to pass to [`MicrophoneOptions::device`].
    pub name: String,
    /// The host's stable identifier ("alsa:hw:CARD=…"), also accepted as a name.
    pub id: String,
    /// Whether this is the device "default" opens.
    pub is_default: bool,
    /// What the device opens with unless told otherwise (min = max rate).
    pub default_config: Option<DeviceConfig>,
    /// Every channel count, rate range and format it can be opened with.
    pub supported_configs: Vec<DeviceConfig>,
}

/// Lists the input devices of the default host (ALSA on Linux).
pub fn input_devices() -> anyhow::Result<Vec<InputDevice>> {
    let host = cpal::default_host();
    let default_id = host.default_input_device().and_then(|d| d.id().ok());
    let mut out = Vec::new();
    for device in host.input_devices().context("listing input devices")? {
        let id = device.id().ok();
        let default_config = device.default_input_config().ok().map(|c| DeviceConfig {
            channels: c.channels(),
            min_sample_rate: c.sample_rate(),
            max_sample_rate: c.sample_rate(),
            sample_format: c.sample_format().to_string(),
        });
        let supported_configs = device
            .supported_input_configs()
            .map(|configs| {
                configs
                    .map(|r| DeviceConfig {
                        channels: r.channels(),
                        min_sample_rate: r.min_sample_rate(),
                        max_sample_rate: r.max_sample_rate(),
                        sample_format: r.sample_format().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(InputDevice {
            name: device_name(&device),
            is_default: id.is_some() && id == default_id,
            id: id.map(|i| i.to_string()).unwrap_or_default(),
            default_config,
            supported_configs,
        });
    }
    Ok(out)
}

fn device_name(device: &cpal::Device) -> String {
    device
        .description()
        .map(|d| d.name().to_string())
        .unwrap_or_else(|_| device.to_string())
}

/// Which device to open and, optionally, how.
#[derive(Clone, Debug, PartialEq)]
pub struct MicrophoneOptions {
    /// A device name or id from [`input_devices`], or "default".
    pub device: String,
    /// Open the device at this rate instead of its default (it is resampled anyway).
    pub sample_rate: Option<u32>,
    /// Open the device with this many channels instead of its default.
    pub channels: Option<u16>,
}

impl Default for MicrophoneOptions {
    fn default() -> Self {
        MicrophoneOptions {
            device: "default".into(),
            sample_rate: None,
            channels: None,
        }
    }
}

/// Whether audio is coming from the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MicrophoneStatus {
    /// Samples are arriving from the device.
    Running,
    /// The device is gone or silent; the source delivers silence and keeps retrying.
    Lost {
        /// What went wrong, for the status display.
        reason: String,
    },
}

/// State shared with the device callbacks. Only atomics are touched by the data callback.
struct Shared {
    overrun_frames: AtomicU64,
    xruns: AtomicU64,
    lost: AtomicBool,
    /// Written by the error callback only (never by the data callback).
    reason: Mutex<Option<String>>,
}

/// An open device stream and the consumer end of its ring.
struct Capture {
    _stream: cpal::Stream,
    ring: rtrb::Consumer<f32>,
    rate: u32,
    channels: usize,
    format: SampleFormat,
    name: String,
}

/// A microphone (or any capture device) as an [`AudioSource`].
pub struct Microphone {
    options: MicrophoneOptions,
    shared: Arc<Shared>,
    capture: Option<Capture>,
    converter: Converter,
    sample_index: u64,
    last_data: Instant,
    lost: Option<String>,
    last_reopen: Instant,
    next_silence: Instant,
    description: String,
}

impl Microphone {
    /// Opens the device and starts capturing.
    pub fn open(options: MicrophoneOptions) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            overrun_frames: AtomicU64::new(0),
            xruns: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            reason: Mutex::new(None),
        });
        let now = Instant::now();
        let mut mic = Microphone {
            options,
            shared,
            capture: None,
            converter: Converter::new(OUTPUT_RATE)?,
            sample_index: 0,
            last_data: now,
            lost: None,
            last_reopen: now,
            next_silence: now,
            description: String::new(),
        };
        mic.start()?;
        Ok(mic)
    }

    /// Closes the current stream. After the sound server died, closing can block forever
    /// inside ALSA's PulseAudio plugin, so a lost stream is closed on a thread of its own
    /// and abandoned if it never finishes, rather than freezing the audio thread.
    fn close(&mut self) {
        if let Some(capture) = self.capture.take() {
            if self.lost.is_some() || self.shared.lost.load(Ordering::SeqCst) {
                let _ = std::thread::Builder::new()
                    .name("onair-mic-close".into())
                    .spawn(move || drop(capture));
            }
        }
    }

    /// (Re)opens the device named in the options and prepares the resampler for it.
    fn start(&mut self) -> anyhow::Result<()> {
        self.close();
        self.shared.lost.store(false, Ordering::SeqCst);
        *self.shared.reason.lock().unwrap() = None;
        let capture = open_capture(&self.options, self.shared.clone())?;
        self.converter = Converter::new(capture.rate)?;
        self.description = format!(
            "microphone '{}' ({} Hz, {} ch, {}) -> {} Hz stereo",
            capture.name, capture.rate, capture.channels, capture.format, OUTPUT_RATE
        );
        tracing::info!("{}", self.description);
        self.capture = Some(capture);
        self.last_data = Instant::now();
        Ok(())
    }

    /// Frames the device delivered that did not fit in the ring (consumer too slow).
    pub fn overruns(&self) -> u64 {
        self.shared.overrun_frames.load(Ordering::Relaxed)
    }

    /// Overruns or underruns the device itself reported (audio lost before reaching us).
    pub fn xruns(&self) -> u64 {
        self.shared.xruns.load(Ordering::Relaxed)
    }

    /// Whether samples are arriving, or why not.
    pub fn status(&self) -> MicrophoneStatus {
        match &self.lost {
            None => MicrophoneStatus::Running,
            Some(reason) => MicrophoneStatus::Lost {
                reason: reason.clone(),
            },
        }
    }

    /// The device rate, channels and format actually opened (None while lost).
    pub fn device_format(&self) -> Option<(u32, u16, SampleFormat)> {
        self.capture
            .as_ref()
            .map(|c| (c.rate, c.channels as u16, c.format))
    }

    /// Moves everything the device has delivered through the converter.
    /// Returns how many device frames were read.
    fn pull(&mut self) -> anyhow::Result<usize> {
        let Some(cap) = self.capture.as_mut() else {
            return Ok(0);
        };
        let ch = cap.channels;
        // whole frames only; the ring holds a whole number of frames, so no frame is
        // split between the two slices of a chunk
        let available = cap.ring.slots() / ch * ch;
        if available == 0 {
            return Ok(0);
        }
        let chunk = cap
            .ring
            .read_chunk(available)
            .context("reading the capture ring")?;
        let (a, b) = chunk.as_slices();
        self.converter.push(a, ch)?;
        self.converter.push(b, ch)?;
        chunk.commit_all();
        Ok(available / ch)
    }

    fn take_block(&mut self, samples: Vec<f32>) -> AudioBlock {
        let block = AudioBlock {
            samples,
            channels: 2,
            sample_rate: OUTPUT_RATE,
            pts_ms: audio_pts_ms(self.sample_index, OUTPUT_RATE),
        };
        self.sample_index += BLOCK_FRAMES as u64;
        block
    }

    fn enter_lost(&mut self, reason: String) {
        if self.lost.is_none() {
            tracing::warn!("microphone lost: {reason}; sending silence");
            self.next_silence = Instant::now();
            self.last_reopen = Instant::now();
        }
        self.lost = Some(reason);
    }

    /// While lost: a block of silence in real time, and now and then a reopen attempt.
    fn silence_block(&mut self) -> AudioBlock {
        let now = Instant::now();
        if self.next_silence > now {
            std::thread::sleep(self.next_silence - now);
        } else if now - self.next_silence > Duration::from_millis(200) {
            self.next_silence = now; // we were late; do not burst to catch up
        }
        self.next_silence += Duration::from_secs_f64(BLOCK_FRAMES as f64 / OUTPUT_RATE as f64);
        self.take_block(vec![0.0; BLOCK_FRAMES * 2])
    }

    /// Tries to get audio flowing again; true when it does.
    fn try_recover(&mut self) -> bool {
        let device_reported_loss = self.shared.lost.load(Ordering::SeqCst);
        if self.capture.is_some() && !device_reported_loss {
            // the stream is still open: it may simply have resumed
            if let Some(c) = &self.capture {
                if c.ring.slots() >= c.channels * 64 {
                    return true;
                }
            }
        }
        if self.last_reopen.elapsed() < REOPEN_INTERVAL {
            return false;
        }
        self.last_reopen = Instant::now();
        match self.start() {
            Ok(()) => true,
            Err(e) => {
                self.lost = Some(format!("{e:#}"));
                false
            }
        }
    }
}

impl Drop for Microphone {
    fn drop(&mut self) {
        self.close();
    }
}

impl AudioSource for Microphone {
    fn next_block(&mut self) -> anyhow::Result<AudioBlock> {
        loop {
            if let Some(samples) = self.converter.take(BLOCK_FRAMES) {
                return Ok(self.take_block(samples));
            }
            if self.lost.is_some() {
                if self.try_recover() {
                    tracing::info!("microphone back: {}", self.description);
                    self.lost = None;
                    self.last_data = Instant::now();
                    continue;
                }
                return Ok(self.silence_block());
            }
            if self.pull()? > 0 {
                self.last_data = Instant::now();
                continue;
            }
            if self.shared.lost.load(Ordering::SeqCst) {
                let reason = self
                    .shared
                    .reason
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_else(|| "device error".into());
                self.enter_lost(reason);
            } else if self.last_data.elapsed() > STALL_TIMEOUT {
                self.enter_lost(format!(
                    "no audio from the device for {} ms",
                    STALL_TIMEOUT.as_millis()
                ));
            } else {
                std::thread::sleep(POLL);
            }
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Turns interleaved device frames (any channel count, any rate) into 48 kHz stereo:
/// mono is copied to both sides, more than two channels keep the first two (front left
/// and right), and other rates go through rubato's FFT resampler in 10 ms chunks.
struct Converter {
    resampler: Option<Fft<f32>>,
    /// Stereo frames at the device rate waiting for the resampler.
    pending: Vec<f32>,
    /// Resampler output for one call.
    resampled: Vec<f32>,
    /// Stereo 48 kHz samples waiting to be cut into blocks.
    ready: VecDeque<f32>,
}

impl Converter {
    fn new(input_rate: u32) -> anyhow::Result<Self> {
        let resampler = if input_rate == OUTPUT_RATE {
            None
        } else {
            let chunk = (input_rate as usize / 100).max(64);
            Some(
                Fft::<f32>::new(
                    input_rate as usize,
                    OUTPUT_RATE as usize,
                    chunk,
                    2,
                    FixedSync::Input,
                )
                .with_context(|| format!("resampling {input_rate} Hz to {OUTPUT_RATE} Hz"))?,
            )
        };
        let (max_in, max_out) = resampler
            .as_ref()
            .map_or((0, 0), |r| (r.input_frames_max(), r.output_frames_max()));
        Ok(Converter {
            resampler,
            pending: Vec::with_capacity(2 * (max_in + OUTPUT_RATE as usize)),
            resampled: vec![0.0; 2 * max_out],
            ready: VecDeque::with_capacity(2 * OUTPUT_RATE as usize),
        })
    }

    /// Accepts interleaved frames of `channels` channels.
    fn push(&mut self, frames: &[f32], channels: usize) -> anyhow::Result<()> {
        let stereo = frames.chunks_exact(channels).flat_map(|frame| {
            if channels == 1 {
                [frame[0], frame[0]]
            } else {
                [frame[0], frame[1]]
            }
        });
        match self.resampler {
            Some(_) => self.pending.extend(stereo),
            None => self.ready.extend(stereo),
        }
        let Some(resampler) = self.resampler.as_mut() else {
            return Ok(());
        };
        let mut used = 0;
        loop {
            let need = resampler.input_frames_next();
            if (self.pending.len() - used) / 2 < need {
                break;
            }
            let input = InterleavedSlice::new(&self.pending[used..], 2, need)
                .map_err(|e| anyhow::anyhow!("resampler input: {e:?}"))?;
            let capacity = self.resampled.len() / 2;
            let mut output = InterleavedSlice::new_mut(&mut self.resampled, 2, capacity)
                .map_err(|e| anyhow::anyhow!("resampler output: {e:?}"))?;
            let (read, written) = resampler
                .process_into_buffer(&input, &mut output, None)
                .context("resampling")?;
            used += 2 * read;
            self.ready
                .extend(self.resampled[..2 * written].iter().copied());
        }
        self.pending.drain(..used);
        Ok(())
    }

    /// The next `frames` stereo frames, once that many are ready.
    fn take(&mut self, frames: usize) -> Option<Vec<f32>> {
        (self.ready.len() >= 2 * frames).then(|| self.ready.drain(..2 * frames).collect())
    }
}

/// Finds the device, picks its configuration and starts a stream feeding a new ring.
fn open_capture(options: &MicrophoneOptions, shared: Arc<Shared>) -> anyhow::Result<Capture> {
    let host = cpal::default_host();
    let device = if options.device.is_empty() || options.device == "default" {
        host.default_input_device()
            .context("no default input device")?
    } else {
        host.input_devices()
            .context("listing input devices")?
            .find(|d| {
                device_name(d) == options.device
                    || matches!(d.id(), Ok(i) if i.to_string() == options.device || i.id() == options.device)
            })
            .with_context(|| format!("no input device named '{}'", options.device))?
    };
    let name = device_name(&device);
    let default = device
        .default_input_config()
        .with_context(|| format!("input device '{name}' has no default configuration"))?;
    let supported = if options.sample_rate.is_none() && options.channels.is_none() {
        default
    } else {
        let rate = options.sample_rate.unwrap_or(default.sample_rate());
        let channels = options.channels.unwrap_or(default.channels());
        let mut ranges: Vec<_> = device
            .supported_input_configs()
            .with_context(|| format!("listing configurations of '{name}'"))?
            .filter(|r| r.channels() == channels && r.contains_rate(rate))
            .collect();
        // prefer the default sample format, then float, then the widest integer
        ranges.sort_by_key(|r| {
            (
                r.sample_format() != default.sample_format(),
                r.sample_format() != SampleFormat::F32,
            )
        });
        let range = ranges.into_iter().next().with_context(|| {
            format!("input device '{name}' cannot capture {channels} channels at {rate} Hz")
        })?;
        range.with_sample_rate(rate)
    };
    let format = supported.sample_format();
    let mut config = supported.config();
    let channels = config.channels as usize;
    if channels == 0 {
        bail!("input device '{name}' reports 0 channels");
    }
    // Ask for ~10 ms device buffers: low latency, and with the "default" buffer some
    // backends (ALSA's PulseAudio plugin) deliver in bursts and lose audio.
    let wanted = (config.sample_rate / 100).max(32);
    config.buffer_size = match supported.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } => {
            cpal::BufferSize::Fixed(wanted.clamp(*min, (*max).max(*min)))
        }
        cpal::SupportedBufferSize::Unknown => cpal::BufferSize::Fixed(wanted),
    };
    let stream = match build_stream(&device, format, config, shared.clone()) {
        Ok(built) => built,
        Err(e) => {
            tracing::debug!(
                "input device '{name}' refused {config:?} ({e:#}): trying its default buffer"
            );
            config.buffer_size = cpal::BufferSize::Default;
            build_stream(&device, format, config, shared)
                .with_context(|| format!("opening input device '{name}'"))?
        }
    };
    let (stream, ring) = stream;
    stream
        .play()
        .with_context(|| format!("starting input device '{name}'"))?;
    Ok(Capture {
        _stream: stream,
        ring,
        rate: config.sample_rate,
        channels,
        format,
        name,
    })
}

/// Makes a ring (two seconds of audio, a whole number of frames) and builds the stream
/// for the device's sample format feeding it.
fn build_stream(
    device: &cpal::Device,
    format: SampleFormat,
    config: cpal::StreamConfig,
    shared: Arc<Shared>,
) -> anyhow::Result<(cpal::Stream, rtrb::Consumer<f32>)> {
    let capacity = 2 * config.sample_rate as usize * config.channels as usize;
    let (producer, ring) = rtrb::RingBuffer::<f32>::new(capacity);
    let stream = match format {
        SampleFormat::I8 => build::<i8>(device, &config, producer, shared),
        SampleFormat::I16 => build::<i16>(device, &config, producer, shared),
        SampleFormat::I24 => build::<cpal::I24>(device, &config, producer, shared),
        SampleFormat::I32 => build::<i32>(device, &config, producer, shared),
        SampleFormat::U8 => build::<u8>(device, &config, producer, shared),
        SampleFormat::U16 => build::<u16>(device, &config, producer, shared),
        SampleFormat::U32 => build::<u32>(device, &config, producer, shared),
        SampleFormat::F32 => build::<f32>(device, &config, producer, shared),
        SampleFormat::F64 => build::<f64>(device, &config, producer, shared),
        other => bail!("unsupported sample format {other}"),
    }?;
    Ok((stream, ring))
}

/// Builds the input stream for sample type `T`. The data callback converts to f32 and
/// copies whole frames into the ring; whatever does not fit is counted and dropped.
fn build<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    mut producer: rtrb::Producer<f32>,
    shared: Arc<Shared>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = config.channels as usize;
    let data_shared = shared.clone();
    device.build_input_stream(
        *config,
        move |data: &[T], _: &cpal::InputCallbackInfo| {
            let slots = producer.slots();
            let fit = data.len().min(slots - slots % channels);
            if fit < data.len() {
                data_shared
                    .overrun_frames
                    .fetch_add(((data.len() - fit) / channels) as u64, Ordering::Relaxed);
            }
            if fit > 0 {
                if let Ok(chunk) = producer.write_chunk_uninit(fit) {
                    chunk.fill_from_iter(data[..fit].iter().map(|s| s.to_sample::<f32>()));
                }
            }
        },
        move |err: cpal::Error| {
            use cpal::ErrorKind::*;
            match err.kind() {
                DeviceNotAvailable | StreamInvalidated | HostUnavailable => {
                    *shared.reason.lock().unwrap() = Some(err.to_string());
                    shared.lost.store(true, Ordering::SeqCst);
                }
                Xrun => {
                    shared.xruns.fetch_add(1, Ordering::Relaxed);
                }
                _ => tracing::warn!("input device: {err}"),
            }
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, channels: usize, secs: f64) -> Vec<f32> {
        let n = (rate as f64 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let v = (std::f64::consts::TAU * 1000.0 * i as f64 / rate as f64).sin() as f32;
                (0..channels).map(move |c| if c < 2 { 0.5 * v } else { 0.0 })
            })
            .collect()
    }

    /// Frequency from rising zero crossings, interpolated between samples.
    fn frequency(x: &[f32]) -> f64 {
        let c: Vec<f64> = x
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
            .map(|(i, w)| i as f64 + (-w[0] as f64) / (w[1] as f64 - w[0] as f64))
            .collect();
        (c.len() - 1) as f64 * OUTPUT_RATE as f64 / (c[c.len() - 1] - c[0])
    }

    #[test]
    fn any_rate_and_channel_count_becomes_48k_stereo() {
        for (rate, channels) in [
            (44_100, 1),
            (48_000, 2),
            (16_000, 1),
            (96_000, 6),
            (22_050, 2),
        ] {
            let input = sine(rate, channels, 3.0);
            let mut conv = Converter::new(rate).unwrap();
            // uneven pieces, as a device delivers them
            let mut out = Vec::new();
            for piece in input.chunks(channels * 437) {
                conv.push(piece, channels).unwrap();
                while let Some(block) = conv.take(BLOCK_FRAMES) {
                    out.extend(block);
                }
            }
            let frames = out.len() / 2;
            let expected = 3 * OUTPUT_RATE as usize;
            assert!(
                frames + 2 * BLOCK_FRAMES + 2000 > expected && frames <= expected,
                "{rate} Hz: {frames} frames out of 3 s"
            );
            let left: Vec<f32> = out.chunks(2).map(|f| f[0]).skip(4800).collect();
            let right: Vec<f32> = out.chunks(2).map(|f| f[1]).skip(4800).collect();
            assert_eq!(left, right, "{rate} Hz {channels} ch: sides differ");
            let hz = frequency(&left);
            assert!(
                (hz - 1000.0).abs() < 0.5,
                "{rate} Hz {channels} ch: {hz} Hz"
            );
            let peak = left.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                (peak - 0.5).abs() < 0.01,
                "{rate} Hz {channels} ch: peak {peak}"
            );
        }
    }
}
