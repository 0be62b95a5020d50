//! Counters shared by sources, the dataflow, sinks and the query API.
//!
//! Plain atomics: every stage bumps them without locks, `/metrics` and the closing summary
//! read them.

use crate::records::Reason;
use crate::time::Millis;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Sentinel for "no watermark yet".
pub const NO_WATERMARK: Millis = i64::MIN;

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
    /// The job watermark (epoch ms), [`NO_WATERMARK`] before the first one.
    pub watermark: AtomicI64,
    /// The watermark of the newest commit whose files are published: lake readers' `as_of`
    /// ([`NO_WATERMARK`] before the first).
    pub lake_watermark: AtomicI64,
    /// Rows written per lake dataset, in the order of [`Metrics::datasets`].
    pub rows_written: Vec<AtomicU64>,
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
    /// The newest watermark any worker has derived, published or not: what sources align
    /// their inputs to (flow control only; `watermark` is what results are complete through).
    pub derived_watermark: AtomicI64,
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
    /// Greatest event time seen, [`NO_WATERMARK`] before the first.
    pub max_ts: AtomicI64,
    /// Kafka consumer lag (high watermark minus next offset), -1 when unknown.
    pub lag: AtomicI64,
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
            watermark: AtomicI64::new(NO_WATERMARK),
            lake_watermark: AtomicI64::new(NO_WATERMARK),
            rows_written: datasets.iter().map(|_| AtomicU64::new(0)).collect(),
            datasets,
            files_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
            visibility_latency: LatencyHistogram::default(),
            delivery_latency: LatencyHistogram::default(),
            derived_watermark: AtomicI64::new(NO_WATERMARK),
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
                max_ts: AtomicI64::new(NO_WATERMARK),
                lag: AtomicI64::new(-1),
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

    /// The watermark, if one exists yet.
    pub fn watermark(&self) -> Option<Millis> {
        let w = self.watermark.load(Relaxed);
        (w != NO_WATERMARK).then_some(w)
    }

    /// The watermark the lake's published files are complete through.
    pub fn lake_watermark(&self) -> Option<Millis> {
        let w = self.lake_watermark.load(Relaxed);
        (w != NO_WATERMARK).then_some(w)
    }

    /// Raises the watermark to `w` (it never goes back).
    pub fn advance_watermark(&self, w: Millis) {
        self.watermark.fetch_max(w, Relaxed);
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

/// A lock-free latency histogram in milliseconds (log buckets, 4 per power of two, so a
/// percentile is exact to within 19%).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 96],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    fn bucket(ms: u64) -> usize {
        if ms < 4 {
            return ms as usize;
        }
        let log = 63 - ms.leading_zeros() as usize; // >= 2
        let sub = ((ms >> (log - 2)) & 3) as usize;
        (4 * (log - 1) + sub).min(95)
    }

    fn upper(bucket: usize) -> u64 {
        if bucket < 4 {
            return bucket as u64;
        }
        let log = bucket / 4 + 1;
        let sub = (bucket % 4) as u64;
        ((4 + sub + 1) << (log - 2)) - 1
    }

    /// Records `count` observations of `ms`.
    pub fn record(&self, ms: u64, count: u64) {
        self.buckets[Self::bucket(ms)].fetch_add(count, Relaxed);
    }

    /// The `q` quantile (0..=1) in ms, if anything was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000u64 {
            h.record(ms, 1);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((500..=600).contains(&p50), "{p50}");
        assert!((990..=1200).contains(&p99), "{p99}");
        for ms in [0u64, 3, 4, 7, 8, 100, 12345] {
            let b = LatencyHistogram::bucket(ms);
            assert!(
                LatencyHistogram::upper(b) >= ms && (b == 0 || LatencyHistogram::upper(b - 1) < ms),
                "{ms}"
            );
        }
    }
}
