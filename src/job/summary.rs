//! The closing summary of a run: counters, timing, latency and the last checkpoint.

use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::records::Reason;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Events read.
    pub events: u64,
    /// Fixes accepted.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Dead letters per reason.
    pub dead_letters: Vec<(Reason, u64)>,
    /// Optional fields dropped (of the wrong type or out of range), per field.
    pub dropped_fields: Vec<(String, u64)>,
    /// Rows written per dataset.
    pub rows: Vec<(String, u64)>,
    /// Files written.
    pub files: u64,
    /// Bytes uploaded to the lake: published files, staged chunks, merged and compacted
    /// files (so at least the lake's size).
    pub uploaded: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Of which start-up: reading the spec, registry and geofences, binding the API,
    /// building the geofence index, connecting the cluster, until the workers start.
    pub startup: Duration,
    /// Peak resident memory, bytes (Linux).
    pub peak_rss: Option<u64>,
    /// The final job clock.
    pub clock: Option<i64>,
    /// Median time from reading an event to its state being visible in the API, ms.
    pub latency_p50_ms: Option<u64>,
    /// 99th percentile of the same.
    pub latency_p99_ms: Option<u64>,
    /// Kafka message timestamp -> read, p50 and p99 (ms), when the source is Kafka.
    pub delivery_ms: Option<(u64, u64)>,
    /// Checkpoint record written -> tables committed, p50 and p99 (ms).
    pub commit_ms: Option<(u64, u64)>,
    /// The last committed checkpoint: its sequence number and job clock.
    pub checkpoint: Option<(u64, Option<i64>)>,
    /// Size of the last checkpoint's state, bytes.
    pub checkpoint_bytes: u64,
}

impl Summary {
    /// Events per second of wall time.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "events      {} in {:.2}s ({:.0} events/s)",
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_s()
        )?;
        writeln!(
            f,
            "startup     {:.2}s (then {:.0} events/s)",
            self.startup.as_secs_f64(),
            self.events as f64 / (self.elapsed - self.startup).as_secs_f64().max(1e-9)
        )?;
        writeln!(f, "accepted    {}", self.accepted)?;
        writeln!(f, "duplicates  {}", self.duplicates)?;
        let dl: Vec<String> = self
            .dead_letters
            .iter()
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        writeln!(f, "dead        {}", dl.join(" "))?;
        let dropped: Vec<String> = self
            .dropped_fields
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(field, n)| format!("{field}={n}"))
            .collect();
        if !dropped.is_empty() {
            writeln!(
                f,
                "dropped     {} (fields of the wrong type or out of range; the fixes were kept)",
                dropped.join(" ")
            )?;
        }
        let rows: Vec<String> = self.rows.iter().map(|(d, n)| format!("{d}={n}")).collect();
        writeln!(f, "rows        {}", rows.join(" "))?;
        writeln!(f, "files       {}", self.files)?;
        writeln!(f, "uploaded    {} bytes", self.uploaded)?;
        if let Some(w) = self.clock {
            writeln!(
                f,
                "job clock   {} ({})",
                w,
                fleetflow_types::time::rfc3339(w)
            )?;
        }
        if let Some((p50, p99)) = self.delivery_ms {
            writeln!(
                f,
                "delivery    p50 {p50} ms, p99 {p99} ms (Kafka message timestamp -> read)"
            )?;
        }
        if let (Some(p50), Some(p99)) = (self.latency_p50_ms, self.latency_p99_ms) {
            writeln!(
                f,
                "latency     p50 {p50} ms, p99 {p99} ms (read -> visible in the API)"
            )?;
        }
        if let Some((p50, p99)) = self.commit_ms {
            writeln!(
                f,
                "commits     p50 {p50} ms, p99 {p99} ms (record written -> tables committed)"
            )?;
        }
        if let Some((seq, w)) = self.checkpoint {
            writeln!(
                f,
                "checkpoint  {seq} (job clock {}), state {:.1} MiB",
                w.map_or("none".into(), fleetflow_types::time::rfc3339),
                self.checkpoint_bytes as f64 / (1024.0 * 1024.0)
            )?;
        }
        if let Some(rss) = self.peak_rss {
            writeln!(f, "peak rss    {:.1} MiB", rss as f64 / (1024.0 * 1024.0))?;
        }
        Ok(())
    }
}

impl Summary {
    /// The summary of a run that started at `started`, from its metrics.
    pub(crate) fn collect(
        metrics: &Metrics,
        datasets: &[String],
        started: Instant,
        startup: Duration,
        checkpoint: Option<(u64, Option<i64>)>,
    ) -> Self {
        let r = Relaxed;
        Summary {
            events: metrics.events_in.load(r),
            accepted: metrics.accepted.load(r),
            duplicates: metrics.duplicates.load(r),
            dead_letters: Reason::ALL
                .iter()
                .map(|reason| (*reason, metrics.dead_letters_of(*reason)))
                .collect(),
            dropped_fields: fleetflow_runtime::metrics::OPTIONAL_FIELDS
                .iter()
                .map(|f| (f.to_string(), metrics.dropped_of(f)))
                .collect(),
            rows: datasets
                .iter()
                .map(|d| (d.clone(), metrics.rows_of(d)))
                .collect(),
            files: metrics.files_written.load(r),
            uploaded: metrics.bytes_written.load(r),
            elapsed: started.elapsed(),
            startup,
            peak_rss: peak_rss(),
            clock: metrics.clock(),
            latency_p50_ms: metrics.visibility_latency.quantile(0.5),
            latency_p99_ms: metrics.visibility_latency.quantile(0.99),
            commit_ms: metrics
                .commit_latency
                .quantile(0.5)
                .zip(metrics.commit_latency.quantile(0.99)),
            delivery_ms: metrics
                .delivery_latency
                .quantile(0.5)
                .zip(metrics.delivery_latency.quantile(0.99)),
            checkpoint,
            checkpoint_bytes: metrics.checkpoint_bytes.load(r),
        }
    }
}

/// Peak resident set size of this process, from `/proc/self/status`.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
