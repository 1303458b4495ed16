//! Reconnect timing: exponential backoff (1, 2, 4, 8 … s, capped) with jitter, so a server
//! coming back is not hammered by every encoder at the same instant, reset after a stable
//! period so one blip an hour does not leave the next reconnect waiting 30 s.

use std::time::Duration;

/// Settings of the reconnect schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Relative jitter: 0.2 spreads each delay over ±20 %.
    pub jitter: f64,
    /// Connected this long without trouble → the next failure starts again at `initial`.
    pub stable_after: Duration,
    /// Give up after this many failed attempts in a row (0 = never give up).
    pub max_attempts: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: 0.2,
            stable_after: Duration::from_secs(60),
            max_attempts: 0,
        }
    }
}

/// The state of the reconnect schedule.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A schedule seeded for its jitter (use different seeds per process).
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The nominal (unjittered) delay before attempt `n` (1-based).
    pub fn nominal(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
        self.config
            .initial
            .saturating_mul(factor)
            .min(self.config.max)
    }

    /// Records a failure and returns the delay before the next try, or None when the
    /// configured number of attempts is used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.config.max_attempts > 0 && self.attempt >= self.config.max_attempts {
            return None;
        }
        self.attempt += 1;
        let nominal = self.nominal(self.attempt).as_secs_f64();
        let j = self.config.jitter.clamp(0.0, 0.9);
        let spread = 1.0 + j * (2.0 * self.uniform() - 1.0);
        // Jitter spreads the delay but never past the cap the user set.
        let max = self.config.max.as_secs_f64();
        Some(Duration::from_secs_f64((nominal * spread).min(max)))
    }

    /// Starts the schedule again (after `stable_after` of healthy streaming).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How long a connection must stay healthy before [`Self::reset`].
    pub fn stable_after(&self) -> Duration {
        self.config.stable_after
    }

    fn uniform(&mut self) -> f64 {
        // xorshift64*: enough for jitter, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(BackoffConfig::default(), 42);
        let nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for n in nominal {
            let d = b.next_delay().unwrap().as_secs_f64();
            assert!(
                d >= n * 0.8 - 1e-9 && d <= n * 1.2 + 1e-9,
                "{d} not within 20 % of {n}"
            );
        }
        assert_eq!(b.attempt(), 8);
        for _ in 0..100 {
            assert!(
                b.next_delay().unwrap() <= Duration::from_secs(30),
                "past the cap"
            );
        }
        b.reset();
        let d = b.next_delay().unwrap().as_secs_f64();
        assert!((0.8..=1.2).contains(&d));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = Vec::new();
        for seed in 0..50 {
            let mut b = Backoff::new(BackoffConfig::default(), seed);
            seen.push(b.next_delay().unwrap().as_secs_f64());
        }
        let min = seen.iter().cloned().fold(f64::MAX, f64::min);
        let max = seen.iter().cloned().fold(0.0, f64::max);
        assert!(max - min > 0.2, "jitter too narrow: {min}..{max}");
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let cfg = BackoffConfig {
            max_attempts: 3,
            jitter: 0.0,
            ..Default::default()
        };
        let mut b = Backoff::new(cfg, 1);
        assert_eq!(b.next_delay(), Some(Duration::from_secs(1)));
        assert_eq!(b.next_delay(), Some(Duration::from_secs(2)));
        assert_eq!(b.next_delay(), Some(Duration::from_secs(4)));
        assert_eq!(b.next_delay(), None);
    }
}
