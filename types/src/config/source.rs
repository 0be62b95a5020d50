//! The `[source]` section's specs: files, Kafka, the generator.

use crate::time::{HumanDuration, SignedDuration};
use serde::{Deserialize, Serialize};

/// `[source] kind = "file"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    /// A file, or a directory whose `*.ndjson` / `*.json` / `*.jsonl` files are read.
    pub path: String,
}

/// Where a Kafka consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaStart {
    /// The earliest retained offset.
    #[default]
    Earliest,
    /// Only new messages.
    Latest,
    /// The consumer group's committed offsets.
    Committed,
}

/// `[source] kind = "kafka"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic of location events.
    pub topic: String,
    /// Consumer group id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where to start without a checkpoint.
    #[serde(default)]
    pub start: KafkaStart,
    /// Stop at the partitions' end offsets as of start-up and finish like a file job
    /// (close every window, flush, exit) instead of running until interrupted.
    #[serde(default)]
    pub bounded: bool,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`,
    /// `sasl.mechanisms`); they override fleetflow's defaults.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// `[source] kind = "generator"`: deterministic synthetic fleet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Number of vehicles.
    #[serde(default = "default_vehicles")]
    pub vehicles: u32,
    /// Event-time interval between two fixes of one vehicle.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Events per second of wall-clock time; absent means as fast as possible.
    #[serde(default)]
    pub rate: Option<u64>,
    /// Seed of the pseudo-random drives.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Event-time span to generate; absent means endless.
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    /// Event time of the first fix (RFC 3339).
    #[serde(default = "default_start")]
    pub start: String,
    /// Center of the simulated area `[lat, lon]`.
    #[serde(default = "default_center")]
    pub center: [f64; 2],
    /// Greatest displacement of a fix's arrival from its event-time order.
    #[serde(default)]
    pub disorder: Option<HumanDuration>,
    /// Fraction of fixes sent twice.
    #[serde(default)]
    pub duplicates: f64,
    /// Fraction of extra junk lines (malformed or invalid).
    #[serde(default)]
    pub bad_lines: f64,
    /// Fraction of vehicles that report only `fuel_level_pct` (no fuel counter).
    #[serde(default = "default_level_only")]
    pub level_only: f64,
    /// Trouble: the clocks of the first `skewed` vehicles are off by this much (`"1h"`: a
    /// tracker reporting local time as UTC; `"-1d"`: one a day behind).
    #[serde(default)]
    pub clock_skew: Option<SignedDuration>,
    /// How many vehicles have the skewed clock.
    #[serde(default = "default_one")]
    pub skewed: u32,
    /// Trouble: the last `outages` vehicles lose coverage for this long and then upload
    /// what they recorded meanwhile, oldest first (store and forward).
    #[serde(default)]
    pub outage: Option<HumanDuration>,
    /// How many vehicles have an outage.
    #[serde(default = "default_one")]
    pub outages: u32,
    /// When the outage begins, after `start`.
    #[serde(default = "default_outage_start")]
    pub outage_start: HumanDuration,
    /// Order of the output: `time` (as a fleet reports) or `vehicle` (every fix of one
    /// vehicle, then the next: the shape of a CSV export; needs a `duration`).
    #[serde(default)]
    pub order: GeneratorOrder,
}

/// The order of the generator's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorOrder {
    /// Round by round, as the fleet reports.
    #[default]
    Time,
    /// Vehicle by vehicle, each in `ts` order.
    Vehicle,
}

impl std::str::FromStr for GeneratorOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "time" => Ok(GeneratorOrder::Time),
            "vehicle" => Ok(GeneratorOrder::Vehicle),
            other => Err(format!("unknown order {other:?} (time, vehicle)")),
        }
    }
}

fn default_one() -> u32 {
    1
}
fn default_outage_start() -> HumanDuration {
    HumanDuration::from_millis(600_000)
}

fn default_vehicles() -> u32 {
    100
}
fn default_interval() -> HumanDuration {
    HumanDuration::from_millis(5_000)
}
fn default_seed() -> u64 {
    7
}
/// The generator's default start: a fixed instant, so that output is reproducible.
pub fn default_start() -> String {
    "2025-01-06T06:00:00Z".to_string()
}
fn default_center() -> [f64; 2] {
    [52.52, 13.405]
}
fn default_level_only() -> f64 {
    0.2
}

impl Default for GeneratorSpec {
    fn default() -> Self {
        GeneratorSpec {
            vehicles: default_vehicles(),
            interval: default_interval(),
            rate: None,
            seed: default_seed(),
            duration: None,
            start: default_start(),
            center: default_center(),
            disorder: None,
            duplicates: 0.0,
            bad_lines: 0.0,
            level_only: default_level_only(),
            clock_skew: None,
            skewed: default_one(),
            outage: None,
            outages: default_one(),
            outage_start: default_outage_start(),
            order: GeneratorOrder::Time,
        }
    }
}
