//! Adaptive bitrate: a pure state machine fed with link measurements, so its behaviour can be
//! tested against scripted link traces. It steps down fast when the send queue grows, probes
//! up slowly after a stable period, and backs off its probing when a probe fails, so it does
//! not oscillate around a limited link.

/// Tuning of the controller; the defaults follow the guide's rule of thumb (queue above half
/// its budget → ×0.8; below a tenth → consider raising).
#[derive(Clone, Debug, PartialEq)]
pub struct AbrConfig {
    /// Never go below this video bitrate.
    pub min_kbps: u32,
    /// Never go above this (the configured bitrate).
    pub max_kbps: u32,
    /// The send queue's delay budget in ms (the drop policy's limit).
    pub queue_budget_ms: u64,
    /// Queue fill (fraction of the budget) above which we step down.
    pub down_threshold: f64,
    /// Queue fill below which the link counts as idle enough to probe up.
    pub up_threshold: f64,
    /// Multiplier of a step down.
    pub down_factor: f64,
    /// Multiplier of a step up.
    pub up_factor: f64,
    /// Minimum time between two step downs (the encoder needs a moment to react).
    pub down_interval_ms: u64,
    /// The queue must stay high this long before a step down (a keyframe burst is not
    /// congestion).
    pub down_hold_ms: u64,
    /// Time the queue must stay low before a step up.
    pub probe_wait_ms: u64,
    /// Upper bound of the probe wait after repeated failed probes.
    pub probe_wait_max_ms: u64,
    /// How long a failed probe's bitrate caps later probes (at 95 % of it).
    pub ceiling_ttl_ms: u64,
}

impl AbrConfig {
    /// Defaults for a stream configured at `max_kbps`.
    pub fn for_bitrate(max_kbps: u32) -> Self {
        AbrConfig {
            min_kbps: (max_kbps / 8).max(150).min(max_kbps),
            max_kbps,
            queue_budget_ms: 800,
            down_threshold: 0.5,
            up_threshold: 0.1,
            down_factor: 0.8,
            up_factor: 1.2,
            down_interval_ms: 1000,
            down_hold_ms: 500,
            probe_wait_ms: 5000,
            probe_wait_max_ms: 20_000,
            ceiling_ttl_ms: 30_000,
        }
    }
}

/// One measurement of the link, taken a few times per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkSample {
    /// Milliseconds on any monotonic clock.
    pub now_ms: u64,
    /// Media time waiting to be sent (our queue plus the socket's unsent bytes).
    pub queue_ms: u64,
    /// Rate actually written to the network over the last interval (kbit/s, all streams).
    pub send_kbps: f64,
    /// Audio bitrate (kbit/s), which the controller cannot change.
    pub audio_kbps: f64,
}

/// A decision to change the video bitrate, with the reason shown to the user.
#[derive(Clone, Debug, PartialEq)]
pub struct BitrateChange {
    pub from_kbps: u32,
    pub to_kbps: u32,
    pub reason: String,
}

/// The controller.
#[derive(Clone, Debug)]
pub struct Abr {
    config: AbrConfig,
    current: u32,
    last_down_ms: Option<u64>,
    /// Queue delay when we last stepped down: step again only if it has not started draining.
    last_down_queue_ms: u64,
    last_up_ms: Option<u64>,
    last_change_ms: u64,
    low_since_ms: Option<u64>,
    high_since_ms: Option<u64>,
    probe_wait_ms: u64,
    /// A bitrate that failed a probe, and when: probes stay below it for a while.
    ceiling: Option<(u32, u64)>,
}

impl Abr {
    /// Starts at the configured maximum.
    pub fn new(config: AbrConfig) -> Self {
        let current = config.max_kbps;
        let probe_wait_ms = config.probe_wait_ms;
        Abr {
            config,
            current,
            last_down_ms: None,
            last_down_queue_ms: 0,
            last_up_ms: None,
            last_change_ms: 0,
            low_since_ms: None,
            high_since_ms: None,
            probe_wait_ms,
            ceiling: None,
        }
    }

    /// The video bitrate the encoder should use now.
    pub fn current_kbps(&self) -> u32 {
        self.current
    }

    /// The configuration in force.
    pub fn config(&self) -> &AbrConfig {
        &self.config
    }

    /// Feeds one measurement; returns a change when one is due.
    pub fn on_sample(&mut self, s: LinkSample) -> Option<BitrateChange> {
        let c = &self.config;
        let budget = c.queue_budget_ms.max(1) as f64;
        let fill = s.queue_ms as f64 / budget;
        if fill > c.down_threshold {
            self.low_since_ms = None;
            let high_since = *self.high_since_ms.get_or_insert(s.now_ms);
            if s.now_ms.saturating_sub(high_since) < c.down_hold_ms {
                return None;
            }
            let due = match self.last_down_ms {
                None => true,
                Some(t) => {
                    let waited = s.now_ms.saturating_sub(t);
                    // Still not draining after the last step (or a long time passed): again.
                    waited >= c.down_interval_ms
                        && (s.queue_ms >= self.last_down_queue_ms
                            || waited >= 4 * c.down_interval_ms)
                }
            };
            if !due || self.current <= c.min_kbps {
                return None;
            }
            let mut target = self.current as f64 * c.down_factor;
            // What got through recently bounds what the link can carry: go there at once.
            let video_capacity = (s.send_kbps - s.audio_kbps) * 0.85;
            // (Unless almost nothing got through: that is an outage, not a capacity.)
            if s.send_kbps > 0.1 * self.current as f64 && video_capacity < target {
                target = video_capacity;
            }
            let to = (target as u32).clamp(c.min_kbps, c.max_kbps);
            if to >= self.current {
                return None;
            }
            // A step down soon after a step up means the probe failed: probe less often, and
            // not up to that bitrate again for a while.
            if let Some(up) = self.last_up_ms {
                if s.now_ms.saturating_sub(up) < c.probe_wait_max_ms * 2 {
                    self.probe_wait_ms = (self.probe_wait_ms * 2).min(c.probe_wait_max_ms);
                    self.ceiling = Some((self.current, s.now_ms));
                }
            }
            let change = BitrateChange {
                from_kbps: self.current,
                to_kbps: to,
                reason: format!(
                    "send queue {} ms is over {:.0} % of its {} ms budget (sent {:.0} kbps)",
                    s.queue_ms,
                    c.down_threshold * 100.0,
                    c.queue_budget_ms,
                    s.send_kbps
                ),
            };
            self.current = to;
            self.last_down_ms = Some(s.now_ms);
            self.last_down_queue_ms = s.queue_ms;
            self.last_change_ms = s.now_ms;
            return Some(change);
        }
        self.high_since_ms = None;
        if fill < c.up_threshold {
            let since = *self.low_since_ms.get_or_insert(s.now_ms);
            let quiet = s.now_ms.saturating_sub(since.max(self.last_change_ms));
            // A probe that held for the base wait was a success: probe at the base rate again.
            if let Some(up) = self.last_up_ms {
                let held = s.now_ms.saturating_sub(up) >= c.probe_wait_ms;
                if held && self.last_down_ms.is_none_or(|d| d < up) {
                    self.probe_wait_ms = c.probe_wait_ms;
                }
            }
            if let Some((_, at)) = self.ceiling {
                if s.now_ms.saturating_sub(at) > c.ceiling_ttl_ms {
                    self.ceiling = None;
                }
            }
            let cap = self
                .ceiling
                .map(|(k, _)| (k as f64 * 0.95) as u32)
                .unwrap_or(c.max_kbps)
                .min(c.max_kbps);
            if self.current < cap && quiet >= self.probe_wait_ms {
                let to = ((self.current as f64 * c.up_factor) as u32).clamp(c.min_kbps, cap);
                let change = BitrateChange {
                    from_kbps: self.current,
                    to_kbps: to,
                    reason: format!(
                        "send queue under {:.0} % of its budget for {:.1} s",
                        c.up_threshold * 100.0,
                        quiet as f64 / 1000.0
                    ),
                };
                self.current = to;
                self.last_up_ms = Some(s.now_ms);
                self.last_change_ms = s.now_ms;
                return Some(change);
            }
        } else {
            self.low_since_ms = None;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated link: the encoder produces `bitrate` plus audio, the link carries
    /// `capacity`; the queue (in ms of media) grows with the difference.
    struct Sim {
        abr: Abr,
        queue_bits: f64,
        t_ms: u64,
        changes: Vec<(u64, BitrateChange)>,
        max_queue_ms: u64,
    }

    const AUDIO: f64 = 128.0;

    impl Sim {
        fn new(max_kbps: u32) -> Self {
            Sim {
                abr: Abr::new(AbrConfig::for_bitrate(max_kbps)),
                queue_bits: 0.0,
                t_ms: 0,
                changes: Vec::new(),
                max_queue_ms: 0,
            }
        }

        /// Runs `secs` seconds with a link of `capacity_kbps`, sampling every 250 ms.
        fn run(&mut self, secs: f64, capacity_kbps: f64) {
            let steps = (secs * 4.0) as u64;
            for _ in 0..steps {
                let produced = (self.abr.current_kbps() as f64 + AUDIO) * 250.0;
                let can_send = capacity_kbps * 250.0;
                let sent = (self.queue_bits + produced).min(can_send);
                self.queue_bits = self.queue_bits + produced - sent;
                // the drop policy keeps the queue within its budget
                let rate = self.abr.current_kbps() as f64 + AUDIO;
                let budget_bits = rate * self.abr.config().queue_budget_ms as f64;
                self.queue_bits = self.queue_bits.min(budget_bits);
                self.t_ms += 250;
                let queue_ms = (self.queue_bits / rate) as u64;
                self.max_queue_ms = self.max_queue_ms.max(queue_ms);
                let sample = LinkSample {
                    now_ms: self.t_ms,
                    queue_ms,
                    send_kbps: sent / 250.0,
                    audio_kbps: AUDIO,
                };
                if let Some(c) = self.abr.on_sample(sample) {
                    self.changes.push((self.t_ms, c));
                }
            }
        }

        fn first_change_after(&self, t: u64) -> Option<u64> {
            self.changes
                .iter()
                .find(|(at, _)| *at > t)
                .map(|(at, _)| at - t)
        }
    }

    #[test]
    fn steady_link_keeps_max_bitrate() {
        let mut sim = Sim::new(2500);
        sim.run(120.0, 10_000.0);
        assert!(sim.changes.is_empty(), "{:?}", sim.changes);
        assert_eq!(sim.abr.current_kbps(), 2500);
    }

    #[test]
    fn step_to_half_capacity_adapts_within_5s_and_does_not_oscillate() {
        let mut sim = Sim::new(2500);
        sim.run(10.0, 10_000.0);
        sim.run(120.0, 1250.0 + AUDIO);
        let first = sim.first_change_after(10_000).expect("no reaction");
        assert!(first <= 2500, "first step after {first} ms");
        // within 5 s the bitrate fits the link
        let at_5s = sim
            .changes
            .iter()
            .rfind(|(t, _)| *t <= 15_000)
            .map(|(_, c)| c.to_kbps)
            .unwrap();
        assert!(at_5s <= 1250, "still at {at_5s} kbps after 5 s");
        // later: few probes, backing off (no oscillation every few seconds)
        let late = sim.changes.iter().filter(|(t, _)| *t > 40_000).count();
        assert!(
            late <= 12,
            "{late} changes in the last 90 s: {:?}",
            sim.changes
        );
        assert!(
            sim.abr.current_kbps() >= 700,
            "collapsed to {}",
            sim.abr.current_kbps()
        );
    }

    #[test]
    fn recovers_to_max_within_60s_after_the_limit_lifts() {
        let mut sim = Sim::new(2500);
        sim.run(60.0, 1250.0 + AUDIO);
        assert!(sim.abr.current_kbps() <= 1300);
        let lifted = sim.t_ms;
        sim.run(60.0, 10_000.0);
        let reached = sim
            .changes
            .iter()
            .find(|(t, c)| *t > lifted && c.to_kbps == 2500)
            .map(|(t, _)| t - lifted)
            .expect("never returned to 2500 kbps");
        assert!(reached <= 60_000, "took {reached} ms");
        // only rises after the lift
        assert!(sim
            .changes
            .iter()
            .filter(|(t, _)| *t > lifted)
            .all(|(_, c)| c.to_kbps > c.from_kbps));
    }

    #[test]
    fn sawtooth_and_outage_stay_within_bounds() {
        let mut sim = Sim::new(3000);
        for i in 0..10 {
            let cap = if i % 2 == 0 { 800.0 } else { 5000.0 };
            sim.run(8.0, cap);
        }
        sim.run(10.0, 0.0); // outage
        sim.run(60.0, 5000.0);
        let cfg = sim.abr.config().clone();
        for (_, c) in &sim.changes {
            assert!(
                c.to_kbps >= cfg.min_kbps && c.to_kbps <= cfg.max_kbps,
                "{c:?}"
            );
        }
        assert!(
            sim.abr.current_kbps() > 1000,
            "did not recover: {:?}",
            sim.changes
        );
    }

    #[test]
    fn a_single_burst_is_not_congestion() {
        let mut abr = Abr::new(AbrConfig::for_bitrate(2500));
        let mut t = 0;
        let mut sample = |queue_ms| {
            t += 250;
            abr.on_sample(LinkSample {
                now_ms: t,
                queue_ms,
                send_kbps: 2600.0,
                audio_kbps: 128.0,
            })
        };
        assert_eq!(sample(10), None);
        assert_eq!(sample(600), None, "reacted to one keyframe burst");
        assert_eq!(sample(20), None);
        assert_eq!(sample(600), None);
        assert_eq!(sample(600), None);
        assert!(sample(600).is_some(), "ignored sustained congestion");
    }

    #[test]
    fn never_below_minimum() {
        let mut sim = Sim::new(2000);
        sim.run(60.0, 50.0);
        assert_eq!(sim.abr.current_kbps(), sim.abr.config().min_kbps);
    }
}
