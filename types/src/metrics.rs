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
            rows_written: datasets.iter().map(|_| AtomicU64::new(0)).collect(),
            datasets,
            files_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
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
