//! The job clock: the engine's single "now" in event time (semantics §1).
//!
//! ```text
//!   "VehicleTimeline" on worker w ──ClockReport (a sample of its vehicles' clocks)──┐
//!        ▲                                                             broadcast, │
//!        └──────────── every worker's reports, one epoch later ◄──── feedback(+1) ┘
//! ```
//!
//! Every vehicle is its own clock: the greatest `ts` of its valid fixes. The job clock is
//! the **median** of the clocks of the vehicles that vote, and it never goes back. A
//! minority of trackers with wrong clocks (an hour ahead, a day behind) sits on one side of
//! the median and cannot move it; vehicles that stop reporting stop voting:
//!
//! - on unbounded inputs (Kafka, an endless generator) a vehicle votes while it has been
//!   heard from within `idle_timeout` of processing time, so parked or disconnected
//!   vehicles do not hold the clock back, however many there are;
//! - on bounded inputs (files, a bounded Kafka read, a generator with a `duration`) every
//!   vehicle seen votes; at the end of the input the clock is the exact median of every
//!   vehicle's clock, so that the final results depend on the data only. (While reading,
//!   the median of the vehicles seen so far can be ahead of it, say on an export ordered
//!   vehicle by vehicle: the end sets it back, once.)
//!
//! Each worker reports a sample of its voters' clocks (all of them up to
//! [`EXACT_POINTS`], else [`SAMPLE_POINTS`] equal-weight order statistics of a sample of at
//! most [`MAX_SAMPLE`] vehicles); the reports are broadcast and fed back, so every worker
//! applies the same reports at the same epoch and derives the same clock.
//!
//! Limits: with fewer than three vehicles there is no minority to outvote; when every
//! vehicle of a live source is silent the clock stands still (it does not follow the wall
//! clock); a majority of vehicles with wrong clocks moves it.

use fleetflow_types::time::Millis;
use serde::{Deserialize, Serialize};

/// A worker reports every clock it has when it has at most this many voters.
pub const EXACT_POINTS: usize = 256;
/// Order statistics reported by a worker with more voters.
pub const SAMPLE_POINTS: usize = 64;
/// Most vehicles a worker looks at for one report.
pub const MAX_SAMPLE: usize = 8192;

/// What a worker tells every worker about its vehicles' clocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClockReport {
    /// A sample of the worker's voters.
    Sample(ClockSample),
    /// End of a bounded input: every clock of the worker's vehicles.
    End {
        /// The reporting worker.
        worker: u32,
        /// Every vehicle's clock.
        clocks: Vec<Millis>,
    },
}

/// A sample of one worker's voters' clocks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClockSample {
    /// The reporting worker.
    pub worker: u32,
    /// How many vehicles vote (an estimate when sampled).
    pub voters: u64,
    /// Sorted clocks, each standing for `voters / points.len()` vehicles.
    pub points: Vec<Millis>,
    /// Vehicles whose clock is far ahead of the job clock the worker knew.
    pub ahead: u64,
    /// Voting vehicles whose clock is far behind it.
    pub behind: u64,
}

impl ClockSample {
    /// The sample of a worker whose voters have the given clocks (in any order), the
    /// sampled ones each standing for `stride` vehicles.
    pub fn of(worker: u32, mut clocks: Vec<Millis>, stride: u64) -> ClockSample {
        clocks.sort_unstable();
        let n = clocks.len();
        let points = if n <= EXACT_POINTS {
            clocks
        } else {
            (0..SAMPLE_POINTS)
                .map(|i| clocks[(2 * i + 1) * n / (2 * SAMPLE_POINTS)])
                .collect()
        };
        ClockSample {
            worker,
            voters: n as u64 * stride.max(1),
            points,
            ahead: 0,
            behind: 0,
        }
    }
}

/// The lower median of `clocks` (the value at rank ⌈n/2⌉): the job clock at the end of a
/// bounded input.
pub fn median(clocks: &mut [Millis]) -> Option<Millis> {
    if clocks.is_empty() {
        return None;
    }
    let k = (clocks.len() - 1) / 2;
    Some(*clocks.select_nth_unstable(k).1)
}

/// Merges the workers' reports into the job clock (the same on every worker that applies
/// the same reports).
#[derive(Clone, Debug, Default)]
pub struct JobClock {
    samples: Vec<Option<ClockSample>>,
    clock: Option<Millis>,
    ends: Vec<Option<Vec<Millis>>>,
}

impl JobClock {
    /// A clock for `workers` workers that starts at `clock` (a restored one, or none).
    pub fn new(workers: usize, clock: Option<Millis>) -> JobClock {
        JobClock {
            samples: vec![None; workers],
            clock,
            ends: vec![None; workers],
        }
    }

    /// The job clock, once any vehicle has voted.
    pub fn now(&self) -> Option<Millis> {
        self.clock
    }

    /// Applies one report; returns the clock when it moved forward.
    pub fn apply(&mut self, report: ClockReport) -> Option<Millis> {
        match report {
            ClockReport::Sample(s) => {
                let w = s.worker as usize;
                if w >= self.samples.len() {
                    self.samples.resize(w + 1, None);
                }
                self.samples[w] = Some(s);
                let m = self.weighted_median()?;
                self.advance(m)
            }
            ClockReport::End { worker, clocks } => {
                let w = worker as usize;
                if w >= self.ends.len() {
                    self.ends.resize(w + 1, None);
                }
                self.ends[w] = Some(clocks);
                None
            }
        }
    }

    /// Once every worker's end report is in: the job clock at the end of a bounded input,
    /// the exact median of every vehicle's clock (the clock so far when there is none).
    pub fn end(&mut self) -> Option<Option<Millis>> {
        if self.ends.iter().any(Option::is_none) {
            return None;
        }
        let mut all: Vec<Millis> = self.ends.iter().flatten().flatten().copied().collect();
        if let Some(m) = median(&mut all) {
            self.clock = Some(m);
        }
        Some(self.clock)
    }

    /// Vehicles far ahead of and far behind the clock, as the workers last reported.
    pub fn outliers(&self) -> (u64, u64) {
        self.samples
            .iter()
            .flatten()
            .fold((0, 0), |(a, b), s| (a + s.ahead, b + s.behind))
    }

    /// Vehicles that vote, as the workers last reported.
    pub fn voters(&self) -> u64 {
        self.samples.iter().flatten().map(|s| s.voters).sum()
    }

    fn advance(&mut self, to: Millis) -> Option<Millis> {
        if self.clock.is_some_and(|c| c >= to) {
            return None;
        }
        self.clock = Some(to);
        self.clock
    }

    /// The value at which the cumulative weight of the sorted points first reaches half
    /// of the total: the lower median of every voter, estimated from the samples.
    fn weighted_median(&self) -> Option<Millis> {
        // Integer weights, so that every worker computes exactly the same: a point of a
        // sample of `k` points over `n` voters weighs `n / k`; scaled by the product of
        // the point counts to stay integral.
        let samples: Vec<&ClockSample> = self
            .samples
            .iter()
            .flatten()
            .filter(|s| s.voters > 0 && !s.points.is_empty())
            .collect();
        if samples.is_empty() {
            return None;
        }
        let scale: u128 = samples
            .iter()
            .map(|s| s.points.len() as u128)
            .fold(1u128, |a, b| a.saturating_mul(b))
            .min(1 << 64);
        let mut points: Vec<(Millis, u128)> = Vec::new();
        let mut total: u128 = 0;
        for s in &samples {
            let w = s.voters as u128 * scale / s.points.len() as u128;
            for p in &s.points {
                points.push((*p, w));
                total += w;
            }
        }
        points.sort_unstable();
        let half = total.div_ceil(2);
        let mut seen = 0;
        for (p, w) in points {
            seen += w;
            if seen >= half {
                return Some(p);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(worker: u32, clocks: &[Millis]) -> ClockReport {
        ClockReport::Sample(ClockSample::of(worker, clocks.to_vec(), 1))
    }

    #[test]
    fn the_clock_is_the_lower_median_and_never_goes_back() {
        let mut c = JobClock::new(2, None);
        assert_eq!(c.now(), None);
        assert_eq!(c.apply(sample(0, &[10, 20, 30])), Some(20));
        // Worker 1's vehicles are behind: the median of all six falls, the clock stays.
        assert_eq!(c.apply(sample(1, &[1, 2, 3])), None);
        assert_eq!(c.now(), Some(20));
        assert_eq!(c.apply(sample(1, &[40, 50, 60])), Some(30));
    }

    #[test]
    fn a_minority_of_wrong_clocks_moves_it_neither_forward_nor_back() {
        let fleet: Vec<Millis> = (0..99).map(|i| 1_000_000 + i).collect();
        let mut ahead = fleet.clone();
        ahead[0] = 1_000_000 + 3_600_000; // one tracker an hour ahead
        let mut behind = fleet.clone();
        behind[98] = 0; // one silent for ever
        let base = {
            let mut c = JobClock::new(1, None);
            c.apply(sample(0, &fleet));
            c.now()
        };
        for clocks in [ahead, behind] {
            let mut c = JobClock::new(1, None);
            c.apply(sample(0, &clocks));
            let got = c.now().unwrap();
            assert!((got - base.unwrap()).abs() <= 1, "{got} vs {base:?}");
        }
    }

    #[test]
    fn sampled_workers_weigh_by_their_voters() {
        // Worker 0: 10,000 vehicles around t = 1e6; worker 1: 100 vehicles far behind.
        let many: Vec<Millis> = (0..10_000).map(|i| 1_000_000 + i % 1_000).collect();
        let few: Vec<Millis> = (0..100).collect();
        let mut c = JobClock::new(2, None);
        c.apply(ClockReport::Sample(ClockSample::of(0, many, 1)));
        c.apply(ClockReport::Sample(ClockSample::of(1, few, 1)));
        let m = c.now().unwrap();
        assert!((1_000_400..=1_000_600).contains(&m), "{m}");
    }

    #[test]
    fn the_end_is_the_exact_median_of_every_clock() {
        let mut c = JobClock::new(2, Some(5));
        assert_eq!(c.end(), None, "not every worker reported");
        c.apply(ClockReport::End {
            worker: 0,
            clocks: vec![100, 1, 7],
        });
        assert_eq!(c.end(), None);
        c.apply(ClockReport::End {
            worker: 1,
            clocks: vec![3, 9],
        });
        assert_eq!(c.end(), Some(Some(7)), "1 3 [7] 9 100");
        // Ahead while reading (the first vehicles of an export ordered by vehicle): the
        // end is the median of every vehicle all the same.
        let mut c = JobClock::new(1, None);
        c.apply(ClockReport::Sample(ClockSample::of(0, vec![50, 60], 1)));
        assert_eq!(c.now(), Some(50));
        c.apply(ClockReport::End {
            worker: 0,
            clocks: vec![1, 2, 3, 50, 60],
        });
        assert_eq!(c.end(), Some(Some(3)));
    }
}
