//! Partitioned Parquet writers and the timely sink operator that feeds them.
//!
//! ```text
//!   raw fixes ───┐
//!   tier rows ───┤   "LakeSink" (per worker)      per (dataset, partition):
//!   dead letters ┤ ─────────────────────────────► rows ─► Arrow batches ─► ArrowWriter (in memory)
//!   geofence ev. ┤
//!   progress ────┘                                       │ roll: partition closed by the watermark,
//!                                                        │       target size, max age, end of input
//!                                                        ▼
//!                                                Uploader: one atomic put per file
//! ```
//!
//! Every row reaching this operator is final (closed windows, final fixes), so each is
//! written exactly once in a run. Files are named `part-{run}-w{worker}-{seq}.parquet`.

use crate::lake::{StreamingFile, Uploader};
use crate::schema::LakeRecord;
use fleetflow_types::config::WindowTier;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{DeadLetter, GeofenceEvent, Progress, TierRow};
use fleetflow_types::time::{utc_parts, window_start, Millis, DAY_MS, HOUR_MS};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

/// Rows encoded into Arrow at a time.
const BATCH_ROWS: usize = 8192;

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

    /// Event time at which the partition of `key` is complete (None for months: they
    /// close with their last day's rows, which the age and end-of-input rules flush).
    pub fn closes_at(self, key: i64) -> Option<Millis> {
        match self {
            Partitioning::Hour => Some(key + HOUR_MS),
            Partitioning::Day => Some(key + DAY_MS),
            Partitioning::Month => None,
        }
    }
}

/// File rolling settings.
#[derive(Clone, Debug)]
pub struct RollPolicy {
    /// Roll at this encoded size.
    pub target_bytes: u64,
    /// Roll at this age (processing time).
    pub max_age: Duration,
}

struct PartBuf<R> {
    rows: Vec<R>,
    writer: Option<ArrowWriter<StreamingFile>>,
    opened: Instant,
    count: u64,
}

/// Buffers and encodes one dataset's rows per partition; each open partition streams its
/// file to the lake as it grows (see [`StreamingFile`]).
pub struct DatasetWriter<R: LakeRecord> {
    name: String,
    partitioning: Partitioning,
    prefix: String,
    parts: HashMap<i64, PartBuf<R>>,
    seq: u64,
    worker: usize,
    uploader: Uploader,
}

fn props(dictionary: &[&str]) -> WriterProperties {
    // Dictionaries pay off for the repetitive string columns only; float columns are nearly
    // all distinct and would just be hashed and then fall back to plain encoding.
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_dictionary_enabled(false);
    for col in dictionary {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), true);
    }
    b.build()
}

type ParquetResult = Result<(), parquet::errors::ParquetError>;

impl<R: LakeRecord> DatasetWriter<R> {
    /// A writer of dataset `name` (its directory) with the given partitioning, for
    /// `worker`; file names start with `prefix`.
    pub fn new(
        name: &str,
        partitioning: Partitioning,
        prefix: String,
        worker: usize,
        uploader: Uploader,
    ) -> Self {
        DatasetWriter {
            name: name.to_string(),
            partitioning,
            prefix,
            parts: HashMap::new(),
            seq: 0,
            worker,
            uploader,
        }
    }

    /// Adds a row whose partitioning time is `ts`.
    pub fn push(&mut self, ts: Millis, row: R) -> ParquetResult {
        let key = self.partitioning.key(ts);
        let part = self.parts.entry(key).or_insert_with(|| PartBuf {
            rows: Vec::with_capacity(1024),
            writer: None,
            opened: Instant::now(),
            count: 0,
        });
        part.rows.push(row);
        part.count += 1;
        if part.rows.len() >= BATCH_ROWS {
            self.encode(key)?;
        }
        Ok(())
    }

    fn encode(&mut self, key: i64) -> ParquetResult {
        let part = self.parts.get_mut(&key).expect("present");
        if part.rows.is_empty() {
            return Ok(());
        }
        let batch = R::to_batch(&part.rows)?;
        part.rows.clear();
        if part.writer.is_none() {
            self.seq += 1;
            let path = format!(
                "{}/{}/{}-w{:03}-{:06}.parquet",
                self.name,
                self.partitioning.dir(key),
                self.prefix,
                self.worker,
                self.seq
            );
            let file = StreamingFile::new(self.uploader.clone(), path);
            part.writer = Some(ArrowWriter::try_new(
                file,
                R::schema(),
                Some(props(R::DICTIONARY)),
            )?);
        }
        part.writer.as_mut().expect("opened").write(&batch)
    }

    /// Rolls the files that are due: partitions the watermark closed, files at the target
    /// size or age, or everything when `force`.
    pub fn roll(
        &mut self,
        watermark: Option<Millis>,
        policy: &RollPolicy,
        force: bool,
    ) -> ParquetResult {
        let partitioning = self.partitioning;
        let due: Vec<i64> = self
            .parts
            .iter()
            .filter(|(key, p)| {
                let closed = matches!((watermark, partitioning.closes_at(**key)), (Some(w), Some(c)) if w >= c);
                let size = p.writer.as_ref().map_or(0, |w| w.in_progress_size() + w.bytes_written()) as u64 + (p.rows.len() * R::APPROX_BYTES / 4) as u64;
                force || closed || size >= policy.target_bytes || p.opened.elapsed() >= policy.max_age
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.encode(key)?;
            let mut part = self.parts.remove(&key).expect("listed");
            let Some(writer) = part.writer.take() else {
                continue;
            };
            writer.into_inner()?.finish(self.name.clone(), part.count)?;
        }
        Ok(())
    }
}

/// What the lake sink writes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Write the raw tier.
    pub raw: bool,
    /// The window tiers, in the order of `TierRow::tier`.
    pub tiers: Vec<WindowTier>,
    /// File naming prefix, unique per run (`part-{run}`).
    pub prefix: String,
    /// File rolling.
    pub roll: RollPolicy,
}

/// Renders the lake sink for one worker's share of the results.
pub fn render_lake_sink<'scope>(
    raw: Stream<'scope, u64, Vec<Fix>>,
    rows: Stream<'scope, u64, Vec<TierRow>>,
    dead: Stream<'scope, u64, Vec<DeadLetter>>,
    geofence_events: Stream<'scope, u64, Vec<GeofenceEvent>>,
    progress: Stream<'scope, u64, Vec<Progress>>,
    cfg: SinkConfig,
    uploader: Uploader,
) {
    let scope = raw.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("LakeSink".to_owned(), scope);
    let mut raw_in = builder.new_input(raw, Pipeline);
    let mut rows_in = builder.new_input(rows, Pipeline);
    let mut dead_in = builder.new_input(dead, Pipeline);
    let mut events_in = builder.new_input(geofence_events, Pipeline);
    let mut progress_in = builder.new_input(progress, Pipeline);
    builder.build(move |_caps| {
        let (prefix, up) = (&cfg.prefix, &uploader);
        let mut raw_w: DatasetWriter<Fix> = DatasetWriter::new(
            "raw",
            Partitioning::Hour,
            prefix.clone(),
            worker,
            up.clone(),
        );
        let mut tier_w: Vec<DatasetWriter<TierRow>> = cfg
            .tiers
            .iter()
            .map(|t| {
                DatasetWriter::new(
                    &t.name,
                    Partitioning::for_window(t.size_ms),
                    prefix.clone(),
                    worker,
                    up.clone(),
                )
            })
            .collect();
        let mut dead_w: DatasetWriter<DeadLetter> = DatasetWriter::new(
            "dead_letter",
            Partitioning::Day,
            prefix.clone(),
            worker,
            up.clone(),
        );
        let mut events_w: DatasetWriter<GeofenceEvent> = DatasetWriter::new(
            "geofence_events",
            Partitioning::Day,
            prefix.clone(),
            worker,
            up.clone(),
        );
        let mut watermark: Option<Millis> = None;
        let mut end = false;
        let mut done = false;
        let mut failed = false;
        let mut last_roll = Instant::now();
        move |frontiers| {
            if done {
                return;
            }
            // The first encoding failure is recorded with the uploader (the job then ends
            // with a one-line error and exit 1); the rows after it are dropped, not half-written.
            let mut result: ParquetResult = Ok(());
            raw_in.for_each(|_, data| {
                for fix in data.drain(..) {
                    if !failed && result.is_ok() {
                        result = raw_w.push(fix.ts, fix);
                    }
                }
            });
            rows_in.for_each(|_, data| {
                for row in data.drain(..) {
                    if !failed && result.is_ok() {
                        result = tier_w[row.tier as usize].push(row.window_start, row);
                    }
                }
            });
            dead_in.for_each(|_, data| {
                for d in data.drain(..) {
                    if !failed && result.is_ok() {
                        result = dead_w.push(d.event_ts, d);
                    }
                }
            });
            events_in.for_each(|_, data| {
                for e in data.drain(..) {
                    if !failed && result.is_ok() {
                        result = events_w.push(e.ts, e);
                    }
                }
            });
            progress_in.for_each(|_, data| {
                for p in data.drain(..) {
                    watermark = Some(watermark.map_or(p.watermark, |w| w.max(p.watermark)));
                    end |= p.end;
                }
            });
            let finished = frontiers.iter().all(|f| f.frontier().is_empty());
            if !failed
                && result.is_ok()
                && (finished || end || last_roll.elapsed() >= Duration::from_millis(200))
            {
                last_roll = Instant::now();
                let force = finished || end;
                result = raw_w.roll(watermark, &cfg.roll, force);
                for w in tier_w.iter_mut() {
                    result = result.and_then(|_| w.roll(watermark, &cfg.roll, force));
                }
                result = result.and_then(|_| dead_w.roll(watermark, &cfg.roll, force));
                result = result.and_then(|_| events_w.roll(watermark, &cfg.roll, force));
            }
            if let Err(e) = result {
                failed = true;
                uploader.fail(format!("worker {worker}: encoding Parquet: {e}"));
            }
            done = finished;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_uploader;

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
    fn rows_round_trip_through_parquet_files_in_the_lake() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, metrics, _rt) = test_uploader(dir.path());
        let mut w: DatasetWriter<Fix> = DatasetWriter::new(
            "raw",
            Partitioning::Hour,
            "part-test".into(),
            0,
            uploader.clone(),
        );
        let policy = RollPolicy {
            target_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
        };
        for i in 0..20_000i64 {
            let fix = Fix {
                vehicle_id: format!("V{}", i % 7).into(),
                tenant: "t".into(),
                ts: T + i * 100,
                lat: 1.0 + i as f64 * 1e-6,
                lon: 2.0,
                speed_kmh: (i % 2 == 0).then_some(5.0),
                heading_deg: None,
                fuel_level_pct: None,
                fuel_used_l: Some(i as f64),
                odometer_km: None,
                ignition: Some(i % 3 == 0),
            };
            w.push(fix.ts, fix).unwrap();
        }
        // Nothing closed yet: no file.
        w.roll(Some(T), &policy, false).unwrap();
        uploader.finish().unwrap();
        assert_eq!(
            metrics
                .files_written
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // The watermark passes the hour: one file with every row.
        w.roll(Some(T + HOUR_MS), &policy, false).unwrap();
        uploader.finish().unwrap();
        assert_eq!(metrics.rows_of("raw"), 20_000);
        let file = dir
            .path()
            .join("raw/date=2025-01-06/hour=01/part-test-w000-000001.parquet");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 20_000);
        assert_eq!(
            batches[0]
                .schema()
                .field_with_name("ts")
                .unwrap()
                .data_type(),
            &arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Millisecond,
                Some("UTC".into())
            )
        );
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no staging files left behind: {names:?}");
    }
}
