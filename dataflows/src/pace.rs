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
//! The pace is chosen from the rate of fixes the worker took between its publications:
//! once that rate has stayed at or above [`PublishPace::busy_rate`] for
//! [`PublishPace::busy_after`], it publishes every [`PublishPace::busy_every`]; as soon as
//! an interval's rate falls below it, every [`PublishPace::every`] again. A live worker
//! whose input pauses for a moment (a broker's garbage collection, a slow fetch) takes
//! what queued meanwhile in a burst of a few milliseconds: that burst is not a backlog,
//! and publishing it 100 ms later would add those 100 ms to the latency of every fix in
//! it, so a short burst keeps the short interval. Results do not depend on the pace, only
//! how many intermediate states a reader sees.

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
    /// How long the rate must stay at `busy_rate` or more before the longer interval
    /// applies (a burst shorter than this is not a backlog).
    pub busy_after: Duration,
}

impl PublishPace {
    /// The same interval whatever the rate.
    pub fn fixed(every: Duration) -> Self {
        PublishPace {
            every,
            busy_every: every,
            busy_rate: f64::INFINITY,
            busy_after: Duration::ZERO,
        }
    }
}

impl Default for PublishPace {
    /// 10 ms, or 100 ms once a worker has taken 100,000 fixes/s or more for 50 ms.
    fn default() -> Self {
        PublishPace {
            every: Duration::from_millis(10),
            busy_every: Duration::from_millis(100),
            busy_rate: 100_000.0,
            busy_after: Duration::from_millis(50),
        }
    }
}

/// A worker's publication clock under a [`PublishPace`].
#[derive(Debug)]
pub struct Pacer {
    pace: PublishPace,
    last: Instant,
    fixes: usize,
    /// Since when every interval's rate has been `busy_rate` or more.
    high_since: Option<Instant>,
    busy: bool,
}

impl Pacer {
    /// Starts the interval now.
    pub fn new(pace: PublishPace, now: Instant) -> Self {
        Pacer {
            pace,
            last: now,
            fixes: 0,
            high_since: None,
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

    /// Records a publication at `now`; the rate since the last one, and how long it has
    /// been high, set the next interval.
    pub fn published(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        let high = secs > 0.0 && self.fixes as f64 / secs >= self.pace.busy_rate;
        self.high_since = if high {
            Some(self.high_since.unwrap_or(self.last))
        } else {
            None
        };
        self.busy = self
            .high_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.pace.busy_after);
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
        let at = |n: u64| t0 + ms(n);
        let mut p = Pacer::new(PublishPace::default(), t0);
        assert_eq!(p.wait(at(4)), ms(6));
        // 500 fixes in 10 ms: 50,000/s, keeping up.
        p.took(500);
        p.published(at(10));
        assert_eq!(p.interval(), ms(10));
        // 3,000 fixes in 10 ms: 300,000/s, for 50 ms on end: catching up.
        for end in [20, 30, 40, 50] {
            p.took(3_000);
            p.published(at(end));
            assert_eq!(p.interval(), ms(10), "high for {} ms only", end - 10);
        }
        p.took(3_000);
        p.published(at(60));
        assert_eq!(p.interval(), ms(100));
        assert_eq!(p.wait(at(70)), ms(90));
        assert_eq!(p.wait(at(160)), Duration::ZERO);
        // 10,000 fixes in 100 ms: still 100,000/s.
        p.took(10_000);
        p.published(at(160));
        assert_eq!(p.interval(), ms(100));
        // 5,000 fixes in 100 ms: 50,000/s, back to 10 ms at once.
        p.took(5_000);
        p.published(at(260));
        assert_eq!(p.interval(), ms(10));
    }

    #[test]
    fn a_burst_after_a_pause_keeps_the_short_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let at = |n: u64| t0 + ms(n);
        let mut p = Pacer::new(PublishPace::default(), t0);
        // 25,000/s, then nothing for 150 ms (the input paused), then the 3,750 fixes that
        // queued meanwhile in one interval, then 25,000/s again.
        p.took(250);
        p.published(at(10));
        p.published(at(160));
        p.took(3_750);
        p.published(at(170));
        assert_eq!(p.interval(), ms(10), "a burst is not a backlog");
        p.took(250);
        p.published(at(180));
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
