//! Latency histograms in milliseconds, on `hdrhistogram`.

use hdrhistogram::Histogram;
use std::sync::Mutex;

/// Greatest latency tracked exactly (larger ones are recorded as this), ms: an hour.
const MAX_MS: u64 = 3_600_000;

/// A latency histogram in milliseconds (two significant digits: a quantile is exact to
/// within 1%). Recorded per batch of observations, so the lock is taken rarely.
#[derive(Debug)]
pub struct LatencyHistogram {
    h: Mutex<Histogram<u64>>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            h: Mutex::new(Histogram::new_with_max(MAX_MS, 2).expect("valid bounds")),
        }
    }
}

impl LatencyHistogram {
    /// Records `count` observations of `ms`.
    pub fn record(&self, ms: u64, count: u64) {
        if count == 0 {
            return;
        }
        let mut h = self.h.lock().expect("histogram lock");
        // Within bounds by construction: saturate at the top.
        let _ = h.record_n(ms.min(MAX_MS), count);
    }

    /// The `q` quantile (0..=1) in ms, if anything was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let h = self.h.lock().expect("histogram lock");
        (!h.is_empty()).then(|| h.value_at_quantile(q))
    }

    /// The count of observations at or below each bound (ms), the total count and the sum
    /// (ms): a Prometheus histogram's buckets.
    pub fn cumulative(&self, bounds: &[u64]) -> (Vec<u64>, u64, f64) {
        let h = self.h.lock().expect("histogram lock");
        let counts = bounds
            .iter()
            .map(|b| h.count_between(0, *b.min(&MAX_MS)))
            .collect();
        let sum = h
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum();
        (counts, h.len(), sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_buckets_follow_what_was_recorded() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000u64 {
            h.record(ms, 1);
        }
        h.record(5, 0);
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((495..=505).contains(&p50), "{p50}");
        assert!((985..=1000).contains(&p99), "{p99}");
        let (counts, total, sum) = h.cumulative(&[10, 100, 10_000]);
        assert_eq!(total, 1000);
        assert_eq!(counts, [10, 100, 1000]);
        assert!((sum - 500_500.0).abs() / 500_500.0 < 0.01, "{sum}");
        h.record(10_000_000, 2);
        assert_eq!(
            h.quantile(1.0).map(|v| v >= 3_590_000),
            Some(true),
            "saturates"
        );
    }
}
