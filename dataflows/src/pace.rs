//! How often the per-vehicle operator publishes vehicle state and progress.
//!
//! Every publication emits one retract/insert pair per vehicle whose state changed since
//! the last one, and everything downstream (the state arrangement, the API's view, the
//! live streams) pays per pair. A live fleet sends a fix every few seconds per vehicle, so
//! a short interval costs nothing extra and keeps changes visible within milliseconds. A
//! worker catching up (a file, a Kafka backlog, a device uploading an hour of fixes) sees
//! many fixes per vehicle per interval: there a longer interval coalesces them into one
//! pair per vehicle (on the 1M-event benchmark file, 1.5M state updates at 10 ms against
//! 0.21M at 100 ms).
//!
//! The pace is chosen from the rate of fixes the worker took since its last publication:
//! at or above [`PublishPace::busy_rate`] it publishes every [`PublishPace::busy_every`],
//! below it every [`PublishPace::every`]. Results do not depend on the pace, only how many
//! intermediate states a reader sees.

use std::time::{Duration, Instant};

/// The publication intervals and the rate that switches between them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PublishPace {
    /// The interval while the worker keeps up.
    pub every: Duration,
    /// The interval while the worker takes fixes at `busy_rate` or more.
    pub busy_every: Duration,
    /// Fixes per second on one worker from which it counts as catching up.
    pub busy_rate: f64,
}

impl PublishPace {
    /// The same interval whatever the rate.
    pub fn fixed(every: Duration) -> Self {
        PublishPace {
            every,
            busy_every: every,
            busy_rate: f64::INFINITY,
        }
    }
}

impl Default for PublishPace {
    /// 10 ms, or 100 ms from 100,000 fixes/s on a worker.
    fn default() -> Self {
        PublishPace {
            every: Duration::from_millis(10),
            busy_every: Duration::from_millis(100),
            busy_rate: 100_000.0,
        }
    }
}

/// A worker's publication clock under a [`PublishPace`].
#[derive(Debug)]
pub struct Pacer {
    pace: PublishPace,
    last: Instant,
    fixes: usize,
    busy: bool,
}

impl Pacer {
    /// Starts the interval now.
    pub fn new(pace: PublishPace, now: Instant) -> Self {
        Pacer {
            pace,
            last: now,
            fixes: 0,
            busy: false,
        }
    }

    /// Counts fixes taken.
    pub fn took(&mut self, fixes: usize) {
        self.fixes += fixes;
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        if self.busy {
            self.pace.busy_every
        } else {
            self.pace.every
        }
    }

    /// How long until the next publication is due (zero when it is).
    pub fn wait(&self, now: Instant) -> Duration {
        self.interval()
            .saturating_sub(now.saturating_duration_since(self.last))
    }

    /// Records a publication at `now`; the rate since the last one sets the next interval.
    pub fn published(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.busy = secs > 0.0 && self.fixes as f64 / secs >= self.pace.busy_rate;
        self.fixes = 0;
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_worker_publishes_less_often_and_returns_to_the_short_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(PublishPace::default(), t0);
        assert_eq!(p.wait(t0 + ms(4)), ms(6));
        // 500 fixes in 10 ms: 50,000/s, keeping up.
        p.took(500);
        p.published(t0 + ms(10));
        assert_eq!(p.interval(), ms(10));
        // 3,000 fixes in 10 ms: 300,000/s, catching up.
        p.took(3_000);
        p.published(t0 + ms(20));
        assert_eq!(p.interval(), ms(100));
        assert_eq!(p.wait(t0 + ms(30)), ms(90));
        assert_eq!(p.wait(t0 + ms(130)), Duration::ZERO);
        // 5,000 fixes in 100 ms: 50,000/s, back to 10 ms.
        p.took(5_000);
        p.published(t0 + ms(120));
        assert_eq!(p.interval(), ms(10));
    }

    #[test]
    fn a_fixed_pace_never_changes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(PublishPace::fixed(ms(1)), t0);
        p.took(1_000_000);
        p.published(t0 + ms(1));
        assert_eq!(p.interval(), ms(1));
    }
}
