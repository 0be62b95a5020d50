//! The catalogue of a job's lake, declared once: every dataset's name, what it holds, how
//! it is partitioned, its columns and its retention. The sink, the checkpoint log
//! (compaction and retention), `fleetflow ddl`, the API's history route and the run summary
//! all read it, so adding a dataset is one entry here.

use crate::schema::{dead_letter_schema, geofence_event_schema, raw_schema, tier_schema};
use arrow::datatypes::SchemaRef;
use fleetflow_types::config::{LakeSpec, WindowTier};
use fleetflow_types::time::{utc_parts, window_start, Millis, DAY_MS, HOUR_MS};

/// What a dataset holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// Every final fix (`raw`).
    Raw,
    /// Closed windows of one tier (the window's size).
    Tier(WindowTier),
    /// Geofence enter / exit / dwell events.
    GeofenceEvents,
    /// Rejected input with its reason.
    DeadLetter,
}

/// One dataset of the lake.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Directory under the lake root, table and view name.
    pub name: String,
    /// What it holds.
    pub kind: DatasetKind,
    /// How it is partitioned by event time.
    pub partitioning: Partitioning,
    /// Its columns.
    pub schema: SchemaRef,
    /// How long its partitions are kept (event time), when limited.
    pub retention: Option<Millis>,
}

/// The datasets a job writes, in order: `raw` (when listed), the window tiers in the order
/// given, `geofence_events`, `dead_letter`.
#[derive(Clone, Debug)]
pub struct Catalogue {
    datasets: Vec<Dataset>,
}

impl Catalogue {
    /// The datasets of a lake with (or without) `raw` and these window tiers, kept forever.
    pub fn new(raw: bool, tiers: &[WindowTier]) -> Self {
        let mut datasets = Vec::new();
        let mut add = |name: &str, kind, partitioning, schema| {
            datasets.push(Dataset {
                name: name.to_owned(),
                kind,
                partitioning,
                schema,
                retention: None,
            })
        };
        if raw {
            add("raw", DatasetKind::Raw, Partitioning::Hour, raw_schema());
        }
        for t in tiers {
            let p = Partitioning::for_window(t.size_ms);
            add(&t.name, DatasetKind::Tier(t.clone()), p, tier_schema());
        }
        add(
            "geofence_events",
            DatasetKind::GeofenceEvents,
            Partitioning::Day,
            geofence_event_schema(),
        );
        add(
            "dead_letter",
            DatasetKind::DeadLetter,
            Partitioning::Day,
            dead_letter_schema(),
        );
        Catalogue { datasets }
    }

    /// The datasets of a job's `[lake]`, with their retention.
    pub fn for_lake(lake: &LakeSpec) -> Self {
        let mut c = Catalogue::new(lake.has_raw(), &lake.window_tiers());
        for d in &mut c.datasets {
            d.retention = lake.retention.get(&d.name).map(|r| r.millis());
        }
        c
    }

    /// Every dataset, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Dataset> {
        self.datasets.iter()
    }

    /// The dataset of this name.
    pub fn get(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<String> {
        self.datasets.iter().map(|d| d.name.clone()).collect()
    }

    /// Whether `raw` is written.
    pub fn has_raw(&self) -> bool {
        self.datasets.iter().any(|d| d.kind == DatasetKind::Raw)
    }

    /// The window tiers, in the order of `TierRow::tier`.
    pub fn tiers(&self) -> Vec<WindowTier> {
        self.datasets
            .iter()
            .filter_map(|d| match &d.kind {
                DatasetKind::Tier(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }
}

/// How a dataset is partitioned by event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// `date=YYYY-MM-DD/hour=HH`
    Hour,
    /// `date=YYYY-MM-DD`
    Day,
    /// `month=YYYY-MM`
    Month,
}

impl Partitioning {
    /// The partitioning `interface.md` gives a window tier of `size_ms`.
    pub fn for_window(size_ms: Millis) -> Self {
        if size_ms < HOUR_MS {
            Partitioning::Hour
        } else if size_ms < DAY_MS {
            Partitioning::Day
        } else {
            Partitioning::Month
        }
    }

    /// The partition key (its start, for hours and days; `year*100+month` for months).
    pub fn key(self, ts: Millis) -> i64 {
        match self {
            Partitioning::Hour => window_start(ts, HOUR_MS),
            Partitioning::Day => window_start(ts, DAY_MS),
            Partitioning::Month => {
                let (y, m, _, _) = utc_parts(ts);
                y as i64 * 100 + m as i64
            }
        }
    }

    /// The partition directory of a key.
    pub fn dir(self, key: i64) -> String {
        match self {
            Partitioning::Hour => {
                let (y, m, d, h) = utc_parts(key);
                format!("date={y:04}-{m:02}-{d:02}/hour={h:02}")
            }
            Partitioning::Day => {
                let (y, m, d, _) = utc_parts(key);
                format!("date={y:04}-{m:02}-{d:02}")
            }
            Partitioning::Month => format!("month={:04}-{:02}", key / 100, key % 100),
        }
    }

    /// Event time at which the partition of `key` is complete (its end).
    pub fn closes_at(self, key: i64) -> Option<Millis> {
        Some(self.start(key) + self.len(key))
    }

    /// Event time at which the partition of `key` starts.
    pub fn start(self, key: i64) -> Millis {
        match self {
            Partitioning::Hour | Partitioning::Day => key,
            Partitioning::Month => month_start((key / 100) as i32, (key % 100) as u32),
        }
    }

    fn len(self, key: i64) -> Millis {
        match self {
            Partitioning::Hour => HOUR_MS,
            Partitioning::Day => DAY_MS,
            Partitioning::Month => {
                let (y, m) = ((key / 100) as i32, (key % 100) as u32);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                month_start(ny, nm) - month_start(y, m)
            }
        }
    }

    /// The key of a partition directory (`date=…/hour=…`, `date=…`, `month=…`).
    pub fn parse_dir(self, dir: &str) -> Option<i64> {
        let date = |s: &str| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| {
                    d.and_hms_opt(0, 0, 0)
                        .expect("midnight")
                        .and_utc()
                        .timestamp_millis()
                })
        };
        match self {
            Partitioning::Hour => {
                let (d, h) = dir.split_once("/hour=")?;
                let h: i64 = h.parse().ok().filter(|h| (0..24).contains(h))?;
                Some(date(d.strip_prefix("date=")?)? + h * HOUR_MS)
            }
            Partitioning::Day => date(dir.strip_prefix("date=")?),
            Partitioning::Month => {
                let (y, m) = dir.strip_prefix("month=")?.split_once('-')?;
                let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
                (1..=12).contains(&m).then_some(y * 100 + m)
            }
        }
    }
}

fn month_start(y: i32, m: u32) -> Millis {
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |d| d.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Millis = 1_736_125_200_000; // 2025-01-06T01:00:00Z

    #[test]
    fn partition_directories_follow_the_layout() {
        assert_eq!(
            Partitioning::Hour.dir(Partitioning::Hour.key(T + 59 * 60_000)),
            "date=2025-01-06/hour=01"
        );
        assert_eq!(
            Partitioning::Day.dir(Partitioning::Day.key(T)),
            "date=2025-01-06"
        );
        assert_eq!(
            Partitioning::Month.dir(Partitioning::Month.key(T)),
            "month=2025-01"
        );
        assert_eq!(Partitioning::for_window(60_000), Partitioning::Hour);
        assert_eq!(Partitioning::for_window(3_600_000), Partitioning::Day);
        assert_eq!(Partitioning::for_window(86_400_000), Partitioning::Month);
        assert_eq!(
            Partitioning::Hour.closes_at(Partitioning::Hour.key(T + 1)),
            Some(T + HOUR_MS)
        );
    }

    #[test]
    fn month_partitions_close_at_the_end_of_the_month_and_dirs_parse_back() {
        let feb = Partitioning::Month.key(1_738_368_000_000); // 2025-02-01
        assert_eq!(Partitioning::Month.closes_at(feb), Some(1_740_787_200_000)); // 2025-03-01
        for p in [Partitioning::Hour, Partitioning::Day, Partitioning::Month] {
            let k = p.key(T + 7 * HOUR_MS);
            assert_eq!(p.parse_dir(&p.dir(k)), Some(k), "{p:?}");
        }
        assert_eq!(
            Partitioning::Hour.parse_dir("date=2025-01-06/hour=25"),
            None
        );
    }

    #[test]
    fn the_catalogue_lists_raw_tiers_events_and_dead_letters_in_order() {
        let tiers = [WindowTier {
            name: "1m".into(),
            size_ms: 60_000,
        }];
        let c = Catalogue::new(true, &tiers);
        assert_eq!(c.names(), ["raw", "1m", "geofence_events", "dead_letter"]);
        assert!(c.has_raw());
        assert_eq!(c.tiers(), tiers);
        assert_eq!(
            c.get("1m").map(|d| d.partitioning),
            Some(Partitioning::Hour)
        );
        assert!(!Catalogue::new(false, &[]).has_raw());
    }
}
