//! Every metric the engine collects, as Prometheus metric families (the `prometheus`
//! crate's model), encoded in the text format by [`encode`].
//!
//! Names end in `_total` for counters; times are epoch milliseconds (`_ms`) and latencies
//! seconds (`_seconds`), as Prometheus expects. A time that does not exist yet (no job
//! clock) is left out rather than given a made-up value.

use super::{Metrics, OPTIONAL_FIELDS};
use fleetflow_types::records::Reason;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::Encoder;
use std::sync::atomic::Ordering::Relaxed;

/// Upper bounds of the latency histograms' buckets, ms.
const LATENCY_BOUNDS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labelled(mut m: Metric, labels: &[(&str, &str)]) -> Metric {
    m.set_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    );
    m
}

fn counter_metric(v: u64, labels: &[(&str, &str)]) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::default();
    m.set_counter(c);
    labelled(m, labels)
}

fn gauge_metric(v: f64, labels: &[(&str, &str)]) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_gauge(g);
    labelled(m, labels)
}

/// A counter family of one unlabelled value.
pub fn counter(name: &str, help: &str, v: u64) -> MetricFamily {
    family(
        name,
        help,
        MetricType::COUNTER,
        vec![counter_metric(v, &[])],
    )
}

/// A gauge family of one unlabelled value.
pub fn gauge(name: &str, help: &str, v: f64) -> MetricFamily {
    family(name, help, MetricType::GAUGE, vec![gauge_metric(v, &[])])
}

/// A gauge family with one value per label (`label=value`), leaving out `None`s.
fn gauge_by(name: &str, help: &str, label: &str, values: Vec<(&str, Option<f64>)>) -> MetricFamily {
    let metrics = values
        .into_iter()
        .filter_map(|(l, v)| v.map(|v| gauge_metric(v, &[(label, l)])))
        .collect();
    family(name, help, MetricType::GAUGE, metrics)
}

fn counter_by(name: &str, help: &str, label: &str, values: Vec<(&str, u64)>) -> MetricFamily {
    let metrics = values
        .into_iter()
        .map(|(l, v)| counter_metric(v, &[(label, l)]))
        .collect();
    family(name, help, MetricType::COUNTER, metrics)
}

fn latency(name: &str, help: &str, h: &super::LatencyHistogram) -> MetricFamily {
    let (counts, total, sum_ms) = h.cumulative(&LATENCY_BOUNDS_MS);
    let mut hist = Histogram::default();
    hist.set_sample_count(total);
    hist.set_sample_sum(sum_ms / 1000.0);
    hist.set_bucket(
        LATENCY_BOUNDS_MS
            .iter()
            .zip(counts)
            .map(|(b, c)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*b as f64 / 1000.0);
                bucket.set_cumulative_count(c);
                bucket
            })
            .collect(),
    );
    family(
        name,
        help,
        MetricType::HISTOGRAM,
        vec![{
            let mut m = Metric::default();
            m.set_histogram(hist);
            m
        }],
    )
}

fn millis(v: i64) -> Option<f64> {
    (v != super::NO_TIME).then_some(v as f64)
}

impl Metrics {
    /// Every metric the engine collects, as of now.
    pub fn families(&self) -> Vec<MetricFamily> {
        let r = Relaxed;
        let inputs = &self.inputs;
        let now = fleetflow_types::time::now_ms();
        let mut out = vec![
            counter("fleetflow_events_in_total", "Events (lines, messages) read from every source.", self.events_in.load(r)),
            counter("fleetflow_bytes_in_total", "Payload bytes read.", self.bytes_in.load(r)),
            counter("fleetflow_events_accepted_total", "Fixes accepted into the results.", self.accepted.load(r)),
            counter("fleetflow_duplicates_total", "Duplicate fixes dropped.", self.duplicates.load(r)),
            counter_by(
                "fleetflow_dead_letters_total",
                "Rejected events by reason.",
                "reason",
                Reason::ALL.iter().map(|x| (x.as_str(), self.dead_letters_of(*x))).collect(),
            ),
            counter_by(
                "fleetflow_dropped_fields_total",
                "Optional fields of accepted events dropped as of the wrong type or out of range (the fix was kept).",
                "field",
                OPTIONAL_FIELDS.iter().map(|f| (*f, self.dropped_of(f))).collect(),
            ),
            gauge(
                "fleetflow_checkpoint_bytes",
                "Size of the last checkpoint's state object (the operators' snapshots and the inputs' positions).",
                self.checkpoint_bytes.load(r) as f64,
            ),
            gauge(
                "fleetflow_clock_voters",
                "Vehicles that vote for the job clock (heard from within idle_timeout on live inputs, all on bounded ones).",
                self.clock_voters.load(r) as f64,
            ),
            gauge(
                "fleetflow_clock_ahead_vehicles",
                "Vehicles whose clock is more than offline_after ahead of the job clock (a tracker reporting local time as UTC, a wrong clock).",
                self.clock_ahead.load(r) as f64,
            ),
            gauge(
                "fleetflow_clock_behind_vehicles",
                "Vehicles still reporting whose clock is more than offline_after behind the job clock.",
                self.clock_behind.load(r) as f64,
            ),
            counter_by(
                "fleetflow_lake_rows_total",
                "Rows committed per dataset.",
                "dataset",
                self.datasets.iter().map(|d| (d.as_str(), self.rows_of(d))).collect(),
            ),
            gauge_by(
                "fleetflow_lake_complete_ms",
                "Per dataset: every row of a partition ending at or before this is in the newest commit, epoch ms.",
                "dataset",
                self.datasets
                    .iter()
                    .map(|d| (d.as_str(), self.lake_complete_of(d).map(|t| t as f64)))
                    .collect(),
            ),
            counter("fleetflow_lake_files_total", "Parquet files committed.", self.files_written.load(r)),
            counter("fleetflow_lake_bytes_total", "Bytes written to the lake (published, staged, merged and compacted files).", self.bytes_written.load(r)),
            counter("fleetflow_lake_write_retries_total", "Failed object-store writes that were retried.", self.write_retries.load(r)),
            counter_by(
                "fleetflow_input_messages_total",
                "Messages (lines) read per input (Kafka partition, file, generator partition).",
                "input",
                inputs.iter().map(|i| (i.name.as_str(), i.messages.load(r))).collect(),
            ),
            counter_by(
                "fleetflow_input_bytes_total",
                "Payload bytes read per input.",
                "input",
                inputs.iter().map(|i| (i.name.as_str(), i.bytes.load(r))).collect(),
            ),
            gauge_by(
                "fleetflow_input_event_time_ms",
                "Greatest event time read per input, epoch ms.",
                "input",
                inputs.iter().map(|i| (i.name.as_str(), millis(i.max_ts.load(r)))).collect(),
            ),
            gauge_by(
                "fleetflow_input_progress_ms",
                "Where each input is in event time (the median ts of its last fixes), epoch ms.",
                "input",
                inputs
                    .iter()
                    .map(|i| (i.name.as_str(), Some(i.progress.load(r)).filter(|p| *p != i64::MIN).map(|p| p as f64)))
                    .collect(),
            ),
            gauge_by(
                "fleetflow_input_finished",
                "Whether each input has ended (1) or not (0).",
                "input",
                inputs
                    .iter()
                    .map(|i| (i.name.as_str(), Some(if i.finished.load(r) { 1.0 } else { 0.0 })))
                    .collect(),
            ),
            gauge_by(
                "fleetflow_kafka_consumer_lag",
                "Messages behind the partition's high watermark (librdkafka's statistics).",
                "input",
                inputs
                    .iter()
                    .map(|i| (i.name.as_str(), Some(i.lag.load(r)).filter(|l| *l >= 0).map(|l| l as f64)))
                    .collect(),
            ),
            latency(
                "fleetflow_visibility_latency_seconds",
                "Time from reading an event to its effect being visible in the query API.",
                &self.visibility_latency,
            ),
            latency(
                "fleetflow_commit_seconds",
                "Time to make a checkpoint's commit visible in the lake's tables after its record is written.",
                &self.commit_latency,
            ),
            latency(
                "fleetflow_delivery_latency_seconds",
                "Time from a Kafka message's timestamp to the source reading it.",
                &self.delivery_latency,
            ),
        ];
        // Times that exist only once the job clock does.
        if let Some(c) = self.clock() {
            out.push(gauge(
                "fleetflow_job_clock_ms",
                "The job clock: the median of the vehicles' clocks, epoch ms.",
                c as f64,
            ));
            out.push(gauge(
                "fleetflow_job_clock_delay_ms",
                "Wall clock minus the job clock, ms.",
                (now - c) as f64,
            ));
        }
        if let Some(c) = self.lake_clock() {
            out.push(gauge(
                "fleetflow_lake_clock_ms",
                "The job clock of the lake's newest published commit, epoch ms.",
                c as f64,
            ));
        }
        out
    }
}

/// `families` in the Prometheus text format, and its content type.
pub fn encode(families: &[MetricFamily]) -> (String, String) {
    let encoder = prometheus::TextEncoder::new();
    let mut buf = Vec::new();
    // A family without values (a time that does not exist yet) is left out: the encoder
    // refuses one. Encoding well-formed families into memory cannot fail.
    let present: Vec<MetricFamily> = families
        .iter()
        .filter(|f| !f.get_metric().is_empty())
        .cloned()
        .collect();
    let _ = encoder.encode(&present, &mut buf);
    (
        String::from_utf8_lossy(&buf).into_owned(),
        encoder.format_type().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_encoded_and_times_appear_once_they_exist() {
        let m = Metrics::new(vec!["raw".into()]).with_inputs(&["file:a".to_string()]);
        let (text, kind) = encode(&m.families());
        assert!(kind.starts_with("text/plain"), "{kind}");
        assert!(!text.contains("fleetflow_job_clock_ms"), "no clock yet");
        assert!(
            text.contains("fleetflow_dead_letters_total{reason=\"late\"} 0"),
            "{text}"
        );
        m.advance_clock(1234);
        m.visibility_latency.record(7, 3);
        m.dropped(0b10);
        let (text, _) = encode(&m.families());
        assert!(text.contains("fleetflow_job_clock_ms 1234"), "{text}");
        assert!(text.contains("fleetflow_dropped_fields_total{field=\"heading_deg\"} 1"));
        assert!(text.contains("# TYPE fleetflow_visibility_latency_seconds histogram"));
        assert!(
            text.contains("fleetflow_visibility_latency_seconds_bucket{le=\"0.01\"} 3"),
            "{text}"
        );
        assert!(text.contains("fleetflow_visibility_latency_seconds_count 3"));
        assert!(text.contains("fleetflow_input_finished{input=\"file:a\"} 0"));
    }
}
