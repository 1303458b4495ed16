//! When and where to reconnect: a pure state machine over the backoff schedule and the
//! choice of server, driven by connection events and a clock in milliseconds, so a session of
//! any length (hours of streaming, then an outage) can be tested without waiting for it.
//!
//! The rules:
//! - every failed attempt, including the first connection of a run, is retried after the
//!   backoff's delay (1, 2, 4, 8 … s with jitter) until `max_attempts` failures in a row;
//! - the schedule starts again only when the connection that just broke had been up for
//!   `stable_after` (a flapping server keeps the delays growing);
//! - with a backup server, a failure at start switches to the other server at once, and after
//!   `switch_after` failures in a row on one server the next attempt goes to the other one
//!   immediately, unless that one has already failed in this outage (then it waits the
//!   backoff like any other attempt).

use super::backoff::{Backoff, BackoffConfig};
use std::time::Duration;

/// One of the two servers a run may publish to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// The destination URL.
    Primary,
    /// `destination.backup_url`.
    Backup,
}

impl Server {
    fn other(self) -> Server {
        match self {
            Server::Primary => Server::Backup,
            Server::Backup => Server::Primary,
        }
    }

    fn index(self) -> usize {
        match self {
            Server::Primary => 0,
            Server::Backup => 1,
        }
    }
}

/// What to do after a failure.
#[derive(Clone, Debug, PartialEq)]
pub enum NextAttempt {
    /// Connect to `server` after `delay`; `attempt` counts failures in a row (1-based);
    /// `switched` says this attempt goes to a different server than the one that failed.
    Retry {
        delay: Duration,
        server: Server,
        attempt: u32,
        switched: bool,
    },
    /// `max_attempts` failures in a row: stop.
    GiveUp { attempts: u32 },
}

/// The reconnect policy of one run.
#[derive(Clone, Debug)]
pub struct ReconnectPolicy {
    backoff: Backoff,
    has_backup: bool,
    switch_after: u32,
    server: Server,
    /// Failures in a row on `server`.
    failures_here: u32,
    /// When the current connection came up (None while disconnected).
    up_since_ms: Option<u64>,
    /// Whether any connection of this run has come up.
    ever_connected: bool,
    /// Which servers failed since the last connection came up.
    failed_in_outage: [bool; 2],
}

impl ReconnectPolicy {
    /// A policy for a run that starts on the primary server, not yet connected.
    pub fn new(backoff: BackoffConfig, seed: u64, has_backup: bool, switch_after: u32) -> Self {
        ReconnectPolicy {
            backoff: Backoff::new(backoff, seed),
            has_backup,
            switch_after: switch_after.max(1),
            server: Server::Primary,
            failures_here: 0,
            up_since_ms: None,
            ever_connected: false,
            failed_in_outage: [false; 2],
        }
    }

    /// The server the next (or current) connection uses.
    pub fn server(&self) -> Server {
        self.server
    }

    /// Failures in a row so far (0 while a connection is up and none failed since).
    pub fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// Whether a connection of this run has ever come up.
    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// A connection to [`Self::server`] came up at `now_ms`; returns the failures it took.
    pub fn on_connected(&mut self, now_ms: u64) -> u32 {
        self.up_since_ms = Some(now_ms);
        self.ever_connected = true;
        self.failures_here = 0;
        self.failed_in_outage = [false; 2];
        self.backoff.attempt()
    }

    /// A connection broke, or an attempt failed, at `now_ms`: decides the next attempt.
    pub fn on_failure(&mut self, now_ms: u64) -> NextAttempt {
        if let Some(since) = self.up_since_ms.take() {
            let stable_ms = self.backoff.stable_after().as_millis() as u64;
            if now_ms.saturating_sub(since) >= stable_ms {
                self.backoff.reset();
            }
        }
        let Some(delay) = self.backoff.next_delay() else {
            return NextAttempt::GiveUp {
                attempts: self.backoff.attempt(),
            };
        };
        let attempt = self.backoff.attempt();
        self.failures_here += 1;
        self.failed_in_outage[self.server.index()] = true;
        let threshold = if self.ever_connected {
            self.switch_after
        } else {
            1
        };
        if self.has_backup && self.failures_here >= threshold {
            let other = self.server.other();
            let untried = !self.failed_in_outage[other.index()];
            self.server = other;
            self.failures_here = 0;
            return NextAttempt::Retry {
                delay: if untried { Duration::ZERO } else { delay },
                server: other,
                attempt,
                switched: true,
            };
        }
        NextAttempt::Retry {
            delay,
            server: self.server,
            attempt,
            switched: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_attempts: u32) -> BackoffConfig {
        BackoffConfig {
            jitter: 0.0,
            max_attempts,
            ..Default::default()
        }
    }

    fn delay_of(n: &NextAttempt) -> f64 {
        match n {
            NextAttempt::Retry { delay, .. } => delay.as_secs_f64(),
            NextAttempt::GiveUp { .. } => panic!("gave up"),
        }
    }

    /// Fails every attempt from `now_ms` on, waiting each delay; returns the delays.
    fn outage(p: &mut ReconnectPolicy, now_ms: &mut u64, attempts: usize) -> Vec<f64> {
        let mut delays = Vec::new();
        for _ in 0..attempts {
            let next = p.on_failure(*now_ms);
            let d = delay_of(&next);
            delays.push(d);
            // the attempt itself takes a few ms to be refused
            *now_ms += (d * 1000.0) as u64 + 5;
        }
        delays
    }

    #[test]
    fn backoff_keeps_growing_after_a_long_session() {
        let mut p = ReconnectPolicy::new(config(0), 1, false, 3);
        let mut now = 0;
        p.on_connected(now);
        // 70 s of healthy streaming, then the server goes away for long
        now += 70_000;
        let delays = outage(&mut p, &mut now, 8);
        assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
    }

    #[test]
    fn schedule_restarts_only_after_the_current_connection_was_stable() {
        let mut p = ReconnectPolicy::new(config(0), 1, false, 3);
        let mut now = 0;
        p.on_connected(now);
        now += 3_600_000; // an hour live
        assert_eq!(outage(&mut p, &mut now, 3), [1.0, 2.0, 4.0]);
        // back for 10 s only (a flapping server): the delays go on growing
        p.on_connected(now);
        now += 10_000;
        assert_eq!(outage(&mut p, &mut now, 2), [8.0, 16.0]);
        // back for 61 s: a new outage starts at 1 s again
        p.on_connected(now);
        now += 61_000;
        assert_eq!(outage(&mut p, &mut now, 2), [1.0, 2.0]);
    }

    #[test]
    fn max_attempts_is_honoured_after_a_long_session() {
        let mut p = ReconnectPolicy::new(config(3), 1, false, 3);
        let mut now = 0;
        p.on_connected(now);
        now += 70_000;
        assert_eq!(outage(&mut p, &mut now, 3), [1.0, 2.0, 4.0]);
        assert_eq!(p.on_failure(now), NextAttempt::GiveUp { attempts: 3 });
    }

    #[test]
    fn the_first_connection_is_retried() {
        let mut p = ReconnectPolicy::new(config(0), 1, false, 3);
        let mut now = 0;
        assert_eq!(outage(&mut p, &mut now, 4), [1.0, 2.0, 4.0, 8.0]);
        assert!(!p.ever_connected());
        assert_eq!(p.server(), Server::Primary);
    }

    #[test]
    fn a_failed_primary_at_start_goes_to_the_backup_at_once() {
        let mut p = ReconnectPolicy::new(config(0), 1, true, 3);
        let next = p.on_failure(0);
        assert_eq!(
            next,
            NextAttempt::Retry {
                delay: Duration::ZERO,
                server: Server::Backup,
                attempt: 1,
                switched: true
            }
        );
        // the backup is down too: back to the primary, after the backoff this time
        let next = p.on_failure(10);
        assert!(matches!(
            next,
            NextAttempt::Retry { server: Server::Primary, switched: true, delay, .. } if delay == Duration::from_secs(2)
        ));
    }

    #[test]
    fn mid_stream_switch_tries_the_other_server_immediately() {
        let mut p = ReconnectPolicy::new(config(0), 1, true, 3);
        let mut now = 0;
        p.on_connected(now);
        now += 120_000;
        // the primary fails three times in a row: 1, 2 s, then the backup at once
        let a = p.on_failure(now);
        assert!(matches!(
            a,
            NextAttempt::Retry {
                server: Server::Primary,
                switched: false,
                ..
            }
        ));
        now += 1_000;
        let b = p.on_failure(now);
        assert!(matches!(
            b,
            NextAttempt::Retry {
                server: Server::Primary,
                switched: false,
                ..
            }
        ));
        now += 2_000;
        let c = p.on_failure(now);
        assert_eq!(
            c,
            NextAttempt::Retry {
                delay: Duration::ZERO,
                server: Server::Backup,
                attempt: 3,
                switched: true
            }
        );
        // the backup takes the stream; later it fails: its own retries start over
        p.on_connected(now);
        now += 600_000;
        let d = p.on_failure(now);
        assert!(matches!(
            d,
            NextAttempt::Retry {
                server: Server::Backup,
                attempt: 1,
                ..
            }
        ));
    }

    #[test]
    fn both_servers_down_never_spin() {
        let mut p = ReconnectPolicy::new(config(0), 1, true, 3);
        let mut now = 0;
        p.on_connected(now);
        now += 100_000;
        let mut zero_delays = 0;
        let mut total = 0.0;
        for _ in 0..40 {
            let next = p.on_failure(now);
            let d = delay_of(&next);
            if d == 0.0 {
                zero_delays += 1;
            }
            total += d;
            now += (d * 1000.0) as u64 + 5;
        }
        assert_eq!(zero_delays, 1, "only the first switch is immediate");
        assert!(total > 900.0, "40 attempts in {total} s");
    }
}
