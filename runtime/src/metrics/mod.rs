//! Counters shared by sources, the dataflow, sinks and the query API.
//!
//! - [`Metrics`]: plain atomics every stage bumps without locks; the closing summary reads
//!   them.
//! - [`latency`]: latency histograms (`hdrhistogram`).
//! - [`export`]: all of it as a `prometheus` collector, which `/metrics` encodes in the
//!   Prometheus text format.

pub mod export;
pub mod latency;

pub use latency::LatencyHistogram;

use fleetflow_types::records::Reason;
use fleetflow_types::time::Millis;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Sentinel for "no time yet" (no job clock, no event on an input).
pub const NO_TIME: Millis = i64::MIN;

/// The optional fields of a location event, in metric order (`event-schema.md`): one whose
/// value has the wrong type or is out of range is dropped, the fix kept, the drop counted.
pub const OPTIONAL_FIELDS: [&str; 7] = [
    "speed_kmh",
    "heading_deg",
    "fuel_level_pct",
    "fuel_used_l",
    "odometer_km",
    "ignition",
    "tenant",
];

/// The job's counters.
#[derive(Debug)]
pub struct Metrics {
    /// Lines or messages read from every source.
    pub events_in: AtomicU64,
    /// Payload bytes read.
    pub bytes_in: AtomicU64,
    /// Fixes accepted into the results.
    pub accepted: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Dead letters by [`Reason::index`].
    pub dead_letters: [AtomicU64; 4],
    /// Optional fields dropped from accepted events, by index into [`OPTIONAL_FIELDS`].
    pub dropped_fields: [AtomicU64; 7],
    /// The job clock (epoch ms), [`NO_TIME`] before the first vehicle reported.
    pub clock: AtomicI64,
    /// The job clock of the newest commit whose files are published: lake readers' `as_of`
    /// ([`NO_TIME`] before the first).
    pub lake_clock: AtomicI64,
    /// Whether a commit holds everything a bounded input produced (its end reached every
    /// sink); a job serving its API after the input announces it then.
    pub lake_input_ended: std::sync::atomic::AtomicBool,
    /// Vehicles whose clock is more than `offline_after` ahead of the job clock.
    pub clock_ahead: AtomicU64,
    /// Vehicles still reporting whose clock is more than `offline_after` behind it.
    pub clock_behind: AtomicU64,
    /// Vehicles that vote for the job clock (heard from within `idle_timeout` on live
    /// inputs; every vehicle on bounded ones).
    pub clock_voters: AtomicU64,
    /// Rows written per lake dataset, in the order of [`Metrics::datasets`].
    pub rows_written: Vec<AtomicU64>,
    /// Per dataset (same order): every row of a partition ending at or before this is in
    /// the lake's newest published commit ([`NO_TIME`] before the first).
    pub lake_complete: Vec<AtomicI64>,
    /// Names of the lake datasets.
    pub datasets: Vec<String>,
    /// Parquet files committed to the lake.
    pub files_written: AtomicU64,
    /// Bytes committed to the lake.
    pub bytes_written: AtomicU64,
    /// Failed object-store writes that were retried.
    pub write_retries: AtomicU64,
    /// Time from reading an event to its effect being visible in the query API, ms.
    pub visibility_latency: LatencyHistogram,
    /// Time from a Kafka message's timestamp (set by its producer, or by the broker with
    /// `LogAppendTime`) to the source reading it, ms: the delivery part of end-to-end
    /// latency, before `visibility_latency`.
    pub delivery_latency: LatencyHistogram,
    /// Time to make a checkpoint's commit visible in the lake's tables once its record is
    /// written (publishing its files, the table commits, vacuum), ms.
    pub commit_latency: LatencyHistogram,
    /// Size of the last checkpoint's state object, bytes (0 before the first).
    pub checkpoint_bytes: AtomicU64,
    /// Per input (file, generator partition, Kafka partition), by global input id.
    pub inputs: Vec<InputMetrics>,
}

/// One input's counters.
#[derive(Debug)]
pub struct InputMetrics {
    /// The input's name (`kafka:TOPIC/PARTITION`, a file path, ...).
    pub name: String,
    /// Messages (lines) read.
    pub messages: AtomicU64,
    /// Payload bytes read.
    pub bytes: AtomicU64,
    /// Greatest event time seen, [`NO_TIME`] before the first.
    pub max_ts: AtomicI64,
    /// Kafka consumer lag (high watermark minus next offset), -1 when unknown.
    pub lag: AtomicI64,
    /// Where it is in event time (the median `ts` of its last fixes), `Millis::MIN` before
    /// the first: set by the source reading it, and for inputs of other processes from
    /// their reports.
    pub progress: AtomicI64,
    /// Whether it ended.
    pub finished: std::sync::atomic::AtomicBool,
    /// Whether a source of this process reads it.
    pub local: std::sync::atomic::AtomicBool,
}

impl Metrics {
    /// Counters for a job writing the given datasets.
    pub fn new(datasets: Vec<String>) -> Self {
        Metrics {
            events_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_letters: Default::default(),
            dropped_fields: Default::default(),
            clock: AtomicI64::new(NO_TIME),
            lake_clock: AtomicI64::new(NO_TIME),
            lake_input_ended: std::sync::atomic::AtomicBool::new(false),
            clock_ahead: AtomicU64::new(0),
            clock_behind: AtomicU64::new(0),
            clock_voters: AtomicU64::new(0),
            rows_written: datasets.iter().map(|_| AtomicU64::new(0)).collect(),
            lake_complete: datasets.iter().map(|_| AtomicI64::new(NO_TIME)).collect(),
            datasets,
            files_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
            visibility_latency: LatencyHistogram::default(),
            commit_latency: LatencyHistogram::default(),
            checkpoint_bytes: AtomicU64::new(0),
            delivery_latency: LatencyHistogram::default(),
            inputs: Vec::new(),
        }
    }

    /// The same, with counters for the named inputs (by global input id).
    pub fn with_inputs(mut self, names: &[String]) -> Self {
        self.inputs = names
            .iter()
            .map(|name| InputMetrics {
                name: name.clone(),
                messages: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                max_ts: AtomicI64::new(NO_TIME),
                lag: AtomicI64::new(-1),
                progress: AtomicI64::new(NO_TIME),
                finished: std::sync::atomic::AtomicBool::new(false),
                local: std::sync::atomic::AtomicBool::new(false),
            })
            .collect();
        self
    }

    /// Counts what one read of input `input` produced.
    pub fn input_read(&self, input: u32, messages: u64, bytes: u64, max_ts: Option<Millis>) {
        if let Some(m) = self.inputs.get(input as usize) {
            m.messages.fetch_add(messages, Relaxed);
            m.bytes.fetch_add(bytes, Relaxed);
            if let Some(t) = max_ts {
                m.max_ts.fetch_max(t, Relaxed);
            }
        }
    }

    /// Counts one dead letter.
    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters[reason.index()].fetch_add(1, Relaxed);
    }

    /// Dead letters of one reason.
    pub fn dead_letters_of(&self, reason: Reason) -> u64 {
        self.dead_letters[reason.index()].load(Relaxed)
    }

    /// Counts the optional fields dropped from one event (bit `i`: [`OPTIONAL_FIELDS`]`[i]`).
    pub fn dropped(&self, mask: u8) {
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            self.dropped_fields[i].fetch_add(1, Relaxed);
            m &= m - 1;
        }
    }

    /// Optional field `name` dropped so far.
    pub fn dropped_of(&self, name: &str) -> u64 {
        OPTIONAL_FIELDS
            .iter()
            .position(|f| *f == name)
            .map_or(0, |i| self.dropped_fields[i].load(Relaxed))
    }

    /// The job clock, once any vehicle has reported.
    pub fn clock(&self) -> Option<Millis> {
        let w = self.clock.load(Relaxed);
        (w != NO_TIME).then_some(w)
    }

    /// The job clock of the lake's newest published commit.
    pub fn lake_clock(&self) -> Option<Millis> {
        let w = self.lake_clock.load(Relaxed);
        (w != NO_TIME).then_some(w)
    }

    /// Raises the job clock to `c` (it never goes back).
    pub fn advance_clock(&self, c: Millis) {
        self.clock.fetch_max(c, Relaxed);
    }

    /// Records the vehicles far ahead of and behind the job clock, and its voters.
    pub fn set_clock_outliers(&self, ahead: u64, behind: u64, voters: u64) {
        self.clock_ahead.store(ahead, Relaxed);
        self.clock_behind.store(behind, Relaxed);
        self.clock_voters.store(voters, Relaxed);
    }

    /// Records the progress of an input another process reads (ignored for this process's
    /// own inputs, whose sources record it first hand). An input that finished stays
    /// finished: every worker of the process records every report, and one worker may
    /// record an older report after another recorded the last.
    pub fn remote_input(&self, input: u32, progress: Option<Millis>, finished: bool) {
        if let Some(m) = self.inputs.get(input as usize) {
            if !m.local.load(Relaxed) && !m.finished.load(Relaxed) {
                m.progress.store(progress.unwrap_or(Millis::MIN), Relaxed);
                if finished {
                    m.finished.store(true, Relaxed);
                }
            }
        }
    }

    /// The two slowest inputs that have not ended, by their progress (see
    /// [`InputMetrics::progress`]): `(slowest's id, its progress, the next one's)`, with
    /// `Millis::MIN` for one never read and `Millis::MAX` for none. What aligned sources
    /// read in step with.
    pub fn slowest_inputs(&self) -> (Option<u32>, Millis, Millis) {
        let (mut first, mut second) = ((None, Millis::MAX), Millis::MAX);
        for (id, i) in self.inputs.iter().enumerate() {
            if i.finished.load(Relaxed) {
                continue;
            }
            let p = i.progress.load(Relaxed);
            if p < first.1 {
                second = first.1;
                first = (Some(id as u32), p);
            } else if p < second {
                second = p;
            }
        }
        (first.0, first.1, second)
    }

    /// Records what a dataset is complete through in the newest commit.
    pub fn set_lake_complete(&self, dataset: &str, t: Millis) {
        if let Some(i) = self.datasets.iter().position(|d| d == dataset) {
            self.lake_complete[i].fetch_max(t, Relaxed);
        }
    }

    /// What a dataset is complete through in the newest commit.
    pub fn lake_complete_of(&self, dataset: &str) -> Option<Millis> {
        let i = self.datasets.iter().position(|d| d == dataset)?;
        let t = self.lake_complete[i].load(Relaxed);
        (t != NO_TIME).then_some(t)
    }

    /// Adds written rows to a dataset's counter.
    pub fn add_rows(&self, dataset: &str, rows: u64) {
        if let Some(i) = self.datasets.iter().position(|d| d == dataset) {
            self.rows_written[i].fetch_add(rows, Relaxed);
        }
    }

    /// Rows written to a dataset so far.
    pub fn rows_of(&self, dataset: &str) -> u64 {
        self.datasets
            .iter()
            .position(|d| d == dataset)
            .map(|i| self.rows_written[i].load(Relaxed))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_input_that_finished_stays_finished() {
        let m = Metrics::new(vec![]).with_inputs(&["file:a".to_string(), "file:b".to_string()]);
        m.remote_input(0, Some(10), false);
        m.remote_input(0, Some(20), true);
        // A worker that is behind records an older report afterwards.
        m.remote_input(0, Some(15), false);
        assert!(m.inputs[0].finished.load(Relaxed));
        assert_eq!(m.inputs[0].progress.load(Relaxed), 20);
        assert_eq!(
            m.slowest_inputs().0,
            Some(1),
            "only b holds the aligned sources back"
        );
    }
}
