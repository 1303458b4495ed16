//! Which H.264 backends work on this machine: each one is opened with a tiny test frame, in
//! its own thread and with a time limit (a wedged GPU driver must not hang the start-up), the
//! reason of every failure is kept for `onair encoders`, and the best working backend becomes
//! the `auto` choice. The result is cached for the life of the process.

use super::ffmpeg_hw::{FfmpegVideoEncoder, OpenError};
use super::x264::X264Encoder;
use super::{encoder_choices, Backend, VideoEncoder, VideoEncoderSettings, AUTO};
use crate::media::VideoFrame;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one backend may take to open and encode the test frame before it counts as
/// unavailable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Size of the probe's test frame: small enough to be instant, large enough for every encoder.
pub const PROBE_SIZE: (u32, u32) = (256, 144);

/// What the probe found out about one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Opened and encoded the test frame.
    Available,
    /// The FFmpeg this build links has no such encoder.
    NotCompiled(String),
    /// No GPU, device node or driver runtime for it.
    NoDevice(String),
    /// Present but failed (driver error, refused settings); FFmpeg's explanation.
    Failed(String),
    /// Did not answer within the time limit.
    TimedOut(Duration),
}

impl Status {
    /// True when the backend can be used.
    pub fn is_available(&self) -> bool {
        matches!(self, Status::Available)
    }

    /// Why the backend cannot be used (None when it can).
    pub fn reason(&self) -> Option<String> {
        match self {
            Status::Available => None,
            Status::NotCompiled(r) | Status::NoDevice(r) | Status::Failed(r) => Some(r.clone()),
            Status::TimedOut(d) => Some(format!("timed out after {:.1} s", d.as_secs_f64())),
        }
    }
}

/// One backend's probe outcome.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// The backend tried.
    pub backend: Backend,
    /// What happened.
    pub status: Status,
    /// How long the attempt took (the time limit when it timed out).
    pub elapsed: Duration,
}

/// Every backend's probe outcome, in [`Backend::ALL`] order.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// One entry per backend, best-ranked first.
    pub results: Vec<ProbeResult>,
    /// Wall time of the whole probe (attempts run in parallel).
    pub elapsed: Duration,
}

impl ProbeReport {
    /// The status of `backend`, if it was probed.
    pub fn status(&self, backend: Backend) -> Option<&Status> {
        self.results
            .iter()
            .find(|r| r.backend == backend)
            .map(|r| &r.status)
    }

    /// True when `backend` was probed and works.
    pub fn is_available(&self, backend: Backend) -> bool {
        self.status(backend).is_some_and(Status::is_available)
    }

    /// The working backends, best first.
    pub fn available(&self) -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| self.is_available(*b))
            .collect()
    }

    /// What `auto` picks: the first working backend in [`Backend::ALL`] order; x264 when
    /// nothing worked (its own error then says why).
    pub fn best(&self) -> Backend {
        self.available().first().copied().unwrap_or(Backend::X264)
    }

    /// The table `onair encoders` prints: backend, availability or reason, and the default.
    pub fn table(&self, selection: &Selection) -> String {
        let mut out = format!(
            "H.264 (probed in {:.2} s, all backends at once, given {} s; `auto` takes the first available):\n",
            self.elapsed.as_secs_f64(),
            PROBE_TIMEOUT.as_secs()
        );
        for r in &self.results {
            let kind = if r.backend.is_hardware() {
                "hardware"
            } else {
                "software"
            };
            let text = match r.status.reason() {
                None => format!("available ({kind})"),
                Some(reason) => format!("unavailable: {reason}"),
            };
            let marker = if r.backend == selection.backend {
                "  <- default"
            } else {
                ""
            };
            out.push_str(&format!("  {:<14} {text}{marker}\n", r.backend.name()));
        }
        out.push_str(&format!(
            "default: {} (video.encoder = {})\n",
            selection.backend, selection.requested
        ));
        if let Some(notice) = &selection.notice {
            out.push_str(&format!("note: {notice}\n"));
        }
        out
    }
}

/// Tries `backend` once at the probe size: open, encode one frame, drain.
pub fn try_backend(backend: Backend) -> Status {
    let settings = VideoEncoderSettings {
        width: PROBE_SIZE.0,
        height: PROBE_SIZE.1,
        fps: 30,
        bitrate_kbps: 500,
        encoder: backend.name().into(),
        ..Default::default()
    };
    let mut encoder: Box<dyn VideoEncoder> = match backend {
        Backend::X264 => match X264Encoder::open(&settings) {
            Ok(e) => Box::new(e),
            Err(e) => return Status::Failed(format!("{e:#}")),
        },
        _ => match FfmpegVideoEncoder::open(backend, &settings) {
            Ok(e) => Box::new(e),
            Err(OpenError::NotCompiled { codec }) => {
                return Status::NotCompiled(format!(
                    "not in this FFmpeg build (it has no {codec} encoder)"
                ))
            }
            Err(OpenError::NoDevice { detail }) => {
                return Status::NoDevice(format!("no usable device or driver: {detail}"))
            }
            Err(e) => return Status::Failed(e.to_string()),
        },
    };
    let frame = VideoFrame::black(settings.width, settings.height, 0, 0);
    let mut packets = match encoder.encode(&frame) {
        Ok(p) => p,
        Err(e) => return Status::Failed(format!("opened but could not encode: {e:#}")),
    };
    match encoder.flush() {
        Ok(rest) => packets.extend(rest),
        Err(e) => return Status::Failed(format!("opened but could not finish: {e:#}")),
    }
    match packets.first() {
        Some(p) if p.keyframe => Status::Available,
        Some(_) => Status::Failed("its first packet is not a keyframe".into()),
        None => Status::Failed("opened but produced no packet".into()),
    }
}

/// One probe attempt: the backend and the work that tells whether it works.
pub type Attempt = (Backend, Box<dyn FnOnce() -> Status + Send>);

/// Runs `attempts` in parallel threads and waits at most `timeout` for all of them; an
/// attempt still running then is reported as timed out and left to finish on its own.
pub fn probe_with(attempts: Vec<Attempt>, timeout: Duration) -> ProbeReport {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let order: Vec<Backend> = attempts.iter().map(|(b, _)| *b).collect();
    for (backend, work) in attempts {
        let sender = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("onair-probe-{backend}"))
            .spawn(move || {
                let t = Instant::now();
                let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                    .unwrap_or_else(|_| Status::Failed("crashed while opening".into()));
                let _ = sender.send((backend, status, t.elapsed()));
            });
        if let Err(e) = spawned {
            let _ = tx.send((
                backend,
                Status::Failed(format!("cannot start a probe thread: {e}")),
                Duration::ZERO,
            ));
        }
    }
    drop(tx);
    let deadline = start + timeout;
    let mut done = Vec::new();
    while done.len() < order.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(result) => done.push(result),
            Err(_) => break,
        }
    }
    let results = order
        .into_iter()
        .map(
            |backend| match done.iter().find(|(b, _, _)| *b == backend) {
                Some((_, status, elapsed)) => ProbeResult {
                    backend,
                    status: status.clone(),
                    elapsed: *elapsed,
                },
                None => ProbeResult {
                    backend,
                    status: Status::TimedOut(timeout),
                    elapsed: timeout,
                },
            },
        )
        .collect();
    ProbeReport {
        results,
        elapsed: start.elapsed(),
    }
}

/// Probes every backend now (not cached), each with `timeout`.
pub fn run_probe(timeout: Duration) -> ProbeReport {
    let attempts = Backend::ALL
        .into_iter()
        .map(|b| -> Attempt { (b, Box::new(move || try_backend(b))) })
        .collect();
    let report = probe_with(attempts, timeout);
    for r in &report.results {
        match r.status.reason() {
            None => tracing::debug!("encoder probe: {} available", r.backend),
            Some(why) => tracing::debug!("encoder probe: {} unavailable: {why}", r.backend),
        }
    }
    report
}

/// The probe result of this process: run on first use, then reused.
pub fn probe() -> &'static ProbeReport {
    static REPORT: OnceLock<ProbeReport> = OnceLock::new();
    REPORT.get_or_init(|| run_probe(PROBE_TIMEOUT))
}

/// The backend a `video.encoder` value resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The backend to open.
    pub backend: Backend,
    /// What the settings asked for (`auto` or a backend name).
    pub requested: String,
    /// Set when an explicit choice is unavailable and x264 stands in: for the user to see.
    pub notice: Option<String>,
}

/// Resolves `encoder` against `report`: `auto` takes the best working backend, an explicit
/// backend wins when it works and falls back to x264 (with a notice) when it does not.
pub fn select_with(encoder: &str, report: &ProbeReport) -> anyhow::Result<Selection> {
    let requested = encoder.to_string();
    if encoder == AUTO {
        return Ok(Selection {
            backend: report.best(),
            requested,
            notice: None,
        });
    }
    let Some(backend) = Backend::from_name(encoder) else {
        anyhow::bail!(
            "video.encoder = '{encoder}' is unknown: use one of {}",
            encoder_choices()
        );
    };
    if backend == Backend::X264 || report.is_available(backend) {
        return Ok(Selection {
            backend,
            requested,
            notice: None,
        });
    }
    let why = report
        .status(backend)
        .and_then(Status::reason)
        .unwrap_or_else(|| "it was not probed".into());
    Ok(Selection {
        backend: Backend::X264,
        requested,
        notice: Some(format!(
            "video encoder '{encoder}' is not available here ({why}); using x264 instead"
        )),
    })
}

/// Resolves `encoder` (a `video.encoder` value) with the cached probe; `x264` needs no probe.
/// A fallback is logged as a warning and described in [`Selection::notice`].
pub fn select(encoder: &str) -> anyhow::Result<Selection> {
    if encoder == Backend::X264.name() {
        return Ok(Selection {
            backend: Backend::X264,
            requested: encoder.into(),
            notice: None,
        });
    }
    let selection = select_with(encoder, probe())?;
    if let Some(notice) = &selection.notice {
        tracing::warn!("{notice}");
    }
    Ok(selection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(available: &[Backend]) -> ProbeReport {
        ProbeReport {
            results: Backend::ALL
                .into_iter()
                .map(|backend| ProbeResult {
                    backend,
                    status: if available.contains(&backend) {
                        Status::Available
                    } else {
                        Status::NoDevice("no usable device or driver: test".into())
                    },
                    elapsed: Duration::ZERO,
                })
                .collect(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn auto_prefers_hardware_in_the_stated_order() {
        let r = report(&[Backend::Vaapi, Backend::Qsv, Backend::X264]);
        assert_eq!(r.best(), Backend::Qsv);
        assert_eq!(
            r.available(),
            vec![Backend::Qsv, Backend::Vaapi, Backend::X264]
        );
        let r = report(&[Backend::FfmpegX264, Backend::X264]);
        assert_eq!(r.best(), Backend::X264);
        assert_eq!(report(&[]).best(), Backend::X264);
        let s = select_with("auto", &report(&[Backend::Nvenc, Backend::X264])).unwrap();
        assert_eq!((s.backend, s.notice), (Backend::Nvenc, None));
    }

    #[test]
    fn explicit_choice_wins_or_falls_back_to_x264_with_a_notice() {
        let r = report(&[Backend::Vaapi, Backend::Nvenc, Backend::X264]);
        let s = select_with("vaapi", &r).unwrap();
        assert_eq!((s.backend, s.notice), (Backend::Vaapi, None));
        let s = select_with("qsv", &r).unwrap();
        assert_eq!(s.backend, Backend::X264);
        let notice = s.notice.unwrap();
        assert!(notice.contains("'qsv' is not available"), "{notice}");
        assert!(notice.contains("using x264"), "{notice}");
        assert!(notice.contains("test"), "the reason is included: {notice}");
        assert!(select_with("h265", &r)
            .unwrap_err()
            .to_string()
            .contains("video.encoder"));
        let s = select("x264").unwrap();
        assert_eq!((s.backend, s.notice), (Backend::X264, None));
    }

    #[test]
    fn the_encoder_setting_is_validated_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("onair.toml");
        std::fs::write(&path, "[video]\nencoder = \"h265\"\n").unwrap();
        let err = format!(
            "{:#}",
            crate::config::Settings::load(Some(&path)).unwrap_err()
        );
        assert!(err.contains("video.encoder = 'h265' is unknown"), "{err}");
        assert!(
            err.contains("ffmpeg-x264") && err.contains("v4l2m2m"),
            "{err}"
        );
        std::fs::write(&path, "[video]\nencoder = \"vaapi\"\n").unwrap();
        let s = crate::config::Settings::load(Some(&path)).unwrap();
        assert_eq!(s.video.encoder, "vaapi");
        assert_eq!(crate::config::Settings::default().video.encoder, "auto");
        for b in Backend::ALL {
            assert_eq!(Backend::from_name(b.name()), Some(b));
        }
    }

    #[test]
    fn a_hanging_backend_times_out_without_blocking() {
        let start = Instant::now();
        let attempts: Vec<Attempt> = vec![
            (
                Backend::Nvenc,
                Box::new(|| {
                    std::thread::sleep(Duration::from_secs(30));
                    Status::Available
                }),
            ),
            (Backend::Qsv, Box::new(|| panic!("driver bug"))),
            (Backend::X264, Box::new(|| Status::Available)),
        ];
        // The limit leaves the panicking attempt time to print its backtrace (slow to
        // symbolise in a debug build on a busy machine) while the hanging one still times out.
        let limit = Duration::from_secs(5);
        let r = probe_with(attempts, limit);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(r.status(Backend::Nvenc), Some(&Status::TimedOut(limit)));
        assert!(r
            .status(Backend::Nvenc)
            .unwrap()
            .reason()
            .unwrap()
            .contains("timed out"));
        assert!(matches!(r.status(Backend::Qsv), Some(Status::Failed(_))));
        assert_eq!(r.best(), Backend::X264);
    }

    #[test]
    fn the_table_names_every_backend_and_the_default() {
        let r = report(&[Backend::X264, Backend::FfmpegX264]);
        let s = select_with("nvenc", &r).unwrap();
        let table = r.table(&s);
        for b in Backend::ALL {
            assert!(table.contains(b.name()), "{table}");
        }
        assert!(
            table.contains("x264           available (software)  <- default"),
            "{table}"
        );
        assert!(
            table.contains("default: x264 (video.encoder = nvenc)"),
            "{table}"
        );
        assert!(
            table.contains("note: video encoder 'nvenc' is not available"),
            "{table}"
        );
    }

    #[test]
    fn the_real_probe_finishes_and_finds_x264() {
        let r = probe();
        assert!(r.elapsed < PROBE_TIMEOUT + Duration::from_secs(2));
        assert_eq!(r.results.len(), Backend::ALL.len());
        assert!(r.is_available(Backend::X264), "{r:?}");
        for res in &r.results {
            if let Some(why) = res.status.reason() {
                assert!(!why.trim().is_empty(), "{} has no reason", res.backend);
            }
        }
        // Cached: the second call returns the same report.
        assert!(std::ptr::eq(r, probe()));
    }
}
