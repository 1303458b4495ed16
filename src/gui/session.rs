//! What the desktop app runs: the offline preview or a live session, both through the
//! pipeline API the CLI uses ([`run_live`], [`PreviewRun`]). The window only sends commands
//! here and reads the state; the pipeline runs on its own threads and on this controller's
//! tokio runtime, so neither can stall the other.

use crate::config::Settings;
use crate::live_control::LiveHooks;
use crate::pipeline::{run_live, LiveOptions, LiveReport, PreviewRun, LOCAL_STREAM_KEY};
use crate::qa::probe::{run_probe, LatencyGauge, ProbeOptions, ProbeSource};
use crate::stats::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where the stream is, in the words and colours the window shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Not streaming.
    Offline,
    /// Opening encoders and connecting (first connection or a retry).
    Connecting { detail: String },
    /// On air.
    Live,
    /// The connection dropped; the next attempt is scheduled.
    Reconnecting { detail: String },
    /// Stop was asked for; the last packets are being sent.
    Stopping,
    /// The last attempt ended with an error the user has to act on.
    Failed { reason: String, advice: String },
}

impl Phase {
    /// Whether a live session is running (Go Live turns into Stop).
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            Phase::Connecting { .. } | Phase::Live | Phase::Reconnecting { .. } | Phase::Stopping
        )
    }

    /// The short badge text: OFFLINE, CONNECTING, LIVE, RECONNECTING, STOPPING, FAILED.
    pub fn badge(&self) -> &'static str {
        match self {
            Phase::Offline => "OFFLINE",
            Phase::Connecting { .. } => "CONNECTING",
            Phase::Live => "LIVE",
            Phase::Reconnecting { .. } => "RECONNECTING",
            Phase::Stopping => "STOPPING",
            Phase::Failed { .. } => "FAILED",
        }
    }

    /// The sentence under the badge.
    pub fn describe(&self) -> String {
        match self {
            Phase::Offline => "Offline: nobody sees this yet. Press Go Live to start.".into(),
            Phase::Connecting { detail } => format!("Connecting: {detail}"),
            Phase::Live => "Live: your audience sees and hears this.".into(),
            Phase::Reconnecting { detail } => {
                format!("Connection lost, {detail}. Viewers see a pause; nothing is lost yet.")
            }
            Phase::Stopping => "Stopping: sending what is left…".into(),
            Phase::Failed { reason, advice } => {
                let end = if reason.ends_with(['.', '?', '!']) {
                    ""
                } else {
                    "."
                };
                format!("Failed: {reason}{end} {advice}")
            }
        }
    }
}

/// Reads the output's state words ([`Stats::state`]) as a phase.
pub fn phase_from_state(state: &str) -> Phase {
    if state == "live" {
        Phase::Live
    } else if let Some(rest) = state.strip_prefix("reconnecting") {
        Phase::Reconnecting {
            detail: format!("reconnecting{rest}"),
        }
    } else if let Some(reason) = state.strip_prefix("failed: ") {
        Phase::Failed {
            reason: reason.to_string(),
            advice: advice_for(reason),
        }
    } else if state.is_empty() {
        Phase::Connecting {
            detail: "opening the encoders and the connection".into(),
        }
    } else {
        Phase::Connecting {
            detail: state.to_string(),
        }
    }
}

/// What the user can do about an error, from its message.
pub fn advice_for(reason: &str) -> String {
    let r = reason.to_lowercase();
    if r.contains("stream key") || r.contains("authentic") || r.contains("refused the key") {
        "Check the stream key (copy it again from your streaming service).".into()
    } else if r.contains("rtmp url")
        || r.contains("no host")
        || r.contains("no application")
        || r.contains("invalid port")
        || r.contains("destination")
    {
        "Fix the server URL: rtmp://HOST[:PORT]/APP, e.g. rtmp://live.example.com/live.".into()
    } else if r.contains("refused")
        || r.contains("unreachable")
        || r.contains("timed out")
        || r.contains("resolve")
    {
        "Check the server URL and your network, or try Local test to check the rest works.".into()
    } else if r.contains("address") && r.contains("in use") {
        "Another program uses the relay's port: change the relay address or close it.".into()
    } else if r.contains("encoder") {
        "Pick another encoder (x264 always works) or a lower resolution.".into()
    } else if r.contains("microphone") || r.contains("camera") {
        "Pick another source, or close the program that holds the device.".into()
    } else {
        "See the log below for details, then try again.".into()
    }
}

/// The live run in progress.
struct LiveRun {
    handle: tokio::task::JoinHandle<anyhow::Result<LiveReport>>,
    stop_tx: watch::Sender<bool>,
    stopping: bool,
    live_since: Option<Instant>,
}

/// Runs the preview and live sessions for the window.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    live: Option<LiveRun>,
    preview: Option<PreviewRun>,
    hooks: LiveHooks,
    stats: Arc<Stats>,
    /// The output's state words as last read (kept when the pipeline was writing them).
    state: String,
    failure: Option<(String, String)>,
    preview_error: Option<String>,
    last_report: Option<LiveReport>,
    /// Bumped whenever a new run (preview or live) starts: new stats and preview texture.
    generation: u64,
    /// Glass-to-glass latency measured by a probe reading the embedded relay (stamp on).
    latency: Option<Arc<LatencyGauge>>,
}

/// The in-process latency probe reads the relay in segments this long, so its per-frame
/// records stay bounded however long the stream runs.
const PROBE_SEGMENT: Duration = Duration::from_secs(300);

impl Session {
    /// A controller with its own tokio runtime (two workers: the output and the relay).
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("onair-net")
            .enable_all()
            .build()?;
        Ok(Session {
            runtime,
            live: None,
            preview: None,
            hooks: LiveHooks::default(),
            stats: Arc::new(Stats::default()),
            state: String::new(),
            failure: None,
            preview_error: None,
            last_report: None,
            generation: 0,
            latency: None,
        })
    }

    /// Starts (or restarts) the offline preview with `settings`. Failures are kept for
    /// [`preview_error`](Self::preview_error); the window stays usable.
    pub fn start_preview(&mut self, settings: &Settings) {
        if self.live.is_some() {
            return;
        }
        self.stop_preview();
        self.new_run();
        match PreviewRun::start(settings, self.hooks.clone(), self.stats.clone()) {
            Ok(run) => {
                self.preview = Some(run);
                self.preview_error = None;
            }
            Err(e) => self.preview_error = Some(format!("{e:#}")),
        }
    }

    /// Stops the preview (releasing camera and microphone).
    pub fn stop_preview(&mut self) {
        if let Some(p) = self.preview.take() {
            p.stop();
        }
    }

    /// Why the preview is not running, if it failed.
    pub fn preview_error(&self) -> Option<String> {
        self.preview_error
            .clone()
            .or_else(|| self.preview.as_ref().and_then(|p| p.error()))
    }

    fn new_run(&mut self) {
        self.hooks = LiveHooks::all();
        self.stats = Arc::new(Stats::default());
        self.state.clear();
        self.generation += 1;
    }

    /// Goes live with `settings` (stopping the preview first: the devices move to the run).
    pub fn go_live(&mut self, settings: &Settings) {
        if self.live.is_some() {
            return;
        }
        self.stop_preview();
        self.new_run();
        self.failure = None;
        self.last_report = None;
        let mut opts = LiveOptions::new(settings.clone());
        opts.status_every = None;
        opts.hooks = self.hooks.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = self.stats.clone();
        self.latency = None;
        if opts.stamp && settings.destination.url.as_deref().unwrap_or("").is_empty() {
            let gauge = Arc::new(LatencyGauge::default());
            self.latency = Some(gauge.clone());
            let url = local_watch_url(settings);
            self.runtime
                .spawn(measure_latency(url, gauge, stop_rx.clone()));
        }
        let handle = self
            .runtime
            .spawn(async move { run_live(opts, stats, stop_rx).await });
        self.live = Some(LiveRun {
            handle,
            stop_tx,
            stopping: false,
            live_since: None,
        });
    }

    /// Asks the live run to stop; it finishes sending and ends (see [`poll`](Self::poll)).
    pub fn stop(&mut self) {
        if let Some(run) = self.live.as_mut() {
            run.stopping = true;
            let _ = run.stop_tx.send(true);
        }
    }

    /// Reads the pipeline's state without waiting for it; when the live run has ended,
    /// collects its outcome and returns true (the window then restarts the preview).
    pub fn poll(&mut self) -> bool {
        if let Some(state) = self.stats.try_state() {
            self.state = state;
        }
        let Some(run) = self.live.as_mut() else {
            return false;
        };
        if run.live_since.is_none() && self.state == "live" {
            run.live_since = Some(Instant::now());
        }
        if !run.handle.is_finished() {
            return false;
        }
        let run = self.live.take().expect("checked above");
        let outcome = self
            .runtime
            .block_on(run.handle)
            .map_err(|e| anyhow::anyhow!("the live session crashed: {e}"))
            .and_then(|r| r);
        match outcome {
            Ok(report) => {
                self.failure = None;
                self.last_report = Some(report);
            }
            Err(e) => {
                let reason = format!("{e:#}");
                let advice = advice_for(&reason);
                self.stats.push_event(format!("failed: {reason}"));
                self.failure = Some((reason, advice));
            }
        }
        true
    }

    /// Where the stream is now.
    pub fn phase(&self) -> Phase {
        match &self.live {
            None => match &self.failure {
                Some((reason, advice)) => Phase::Failed {
                    reason: reason.clone(),
                    advice: advice.clone(),
                },
                None => Phase::Offline,
            },
            Some(run) if run.stopping => Phase::Stopping,
            Some(_) => phase_from_state(&self.state),
        }
    }

    /// How long the stream has been on air (since the first successful connection).
    pub fn live_for(&self) -> Option<Duration> {
        self.live
            .as_ref()
            .and_then(|r| r.live_since)
            .map(|t| t.elapsed())
    }

    /// Counters of the current (or last) run.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Preview, live settings and meters of the current run.
    pub fn hooks(&self) -> &LiveHooks {
        &self.hooks
    }

    /// The latest glass-to-glass latency (ms), when streaming stamped frames to the
    /// embedded relay.
    pub fn latency_ms(&self) -> Option<f64> {
        self.latency.as_ref().and_then(|g| g.last_ms())
    }

    /// Changes whenever a new run starts (the window re-reads the preview texture).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the last live run did, when it ended without an error.
    pub fn last_report(&self) -> Option<&LiveReport> {
        self.last_report.as_ref()
    }

    /// Clears a shown failure (the user dismissed it or changed the settings).
    pub fn clear_failure(&mut self) {
        self.failure = None;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the window ends the stream cleanly rather than cutting it.
        if let Some(run) = self.live.take() {
            let _ = run.stop_tx.send(true);
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), run.handle).await });
        }
        self.stop_preview();
    }
}

/// Reads the embedded relay like a viewer would, decoding every frame and reading its stamp,
/// until the live run stops. Retries while the stream is not there yet.
async fn measure_latency(url: String, gauge: Arc<LatencyGauge>, mut stop: watch::Receiver<bool>) {
    let Ok(source) = ProbeSource::parse(&url) else {
        return;
    };
    while !*stop.borrow() {
        let mut opts = ProbeOptions::new(source.clone());
        opts.status_every = None;
        opts.duration = Some(PROBE_SEGMENT);
        opts.gauge = Some(gauge.clone());
        if let Err(e) = run_probe(&opts, stop.clone()).await {
            tracing::debug!("latency probe: {e:#}");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// The addresses to watch a local test: RTMP on the relay's listen address.
pub fn local_watch_url(settings: &Settings) -> String {
    format!("rtmp://{}/live/{LOCAL_STREAM_KEY}", settings.relay.listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_states_map_to_phases() {
        assert_eq!(phase_from_state("live"), Phase::Live);
        assert!(matches!(
            phase_from_state("reconnecting in 2.0 s (attempt 2)"),
            Phase::Reconnecting { detail } if detail == "reconnecting in 2.0 s (attempt 2)"
        ));
        assert!(matches!(
            phase_from_state("connecting (attempt 1)"),
            Phase::Connecting { .. }
        ));
        let Phase::Failed { advice, .. } =
            phase_from_state("failed: the server refused the stream key")
        else {
            panic!("a failure")
        };
        assert!(advice.contains("stream key"), "{advice}");
    }

    #[test]
    fn advice_names_what_to_fix() {
        assert!(advice_for("connection refused").contains("server URL"));
        assert!(advice_for("'x' is not an RTMP URL").contains("Fix the server URL"));
        assert!(advice_for("opening the video encoder").contains("encoder"));
    }
}
