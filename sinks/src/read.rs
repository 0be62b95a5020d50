//! Reading a vehicle's rows back from the lake, for the query API's history and past-day
//! answers.
//!
//! A question reads one snapshot of each table: [`Snapshots`] reads the table's newest
//! version from its Delta log and only that version's files of the partitions that
//! overlap the time range are read (a file that compaction or retention removed, and that
//! stays in the store for the vacuum grace period, is not). Inside a file, the
//! `vehicle_id` column is decoded first and the other columns only for the rows that
//! match (a Parquet row filter), and row groups whose `vehicle_id` statistics exclude the
//! vehicle are skipped. A file vacuumed between the snapshot and the read is retried with
//! a newer snapshot: a reader sees every committed row exactly once.

use crate::catalogue::{Catalogue, Partitioning};
use crate::delta::{store_error, DeltaError, DeltaTables};
use crate::lake::{Lake, LakeError};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use fleetflow_types::time::Millis;
use object_store::path::Path;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The lake's tables as readers see them (see the module docs).
pub struct Snapshots {
    lake: Lake,
    tables: DeltaTables,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("lake", &self.lake.url)
            .finish()
    }
}

impl Snapshots {
    /// Reads the tables of `datasets` in `lake`.
    pub fn new(lake: &Lake, datasets: Catalogue) -> Result<Snapshots, DeltaError> {
        Ok(Snapshots {
            lake: lake.clone(),
            tables: DeltaTables::new(lake, datasets, "reader")?,
        })
    }

    /// The files of `dataset` under `prefix` in its table's newest version.
    async fn files(
        &self,
        dataset: &str,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, object_store::Error> {
        self.tables
            .newest_files(dataset, prefix)
            .await
            .map_err(store_error)
    }
}

/// One dataset of the lake and how to find a vehicle's rows in it.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its directory (`raw`, `1m`, ...).
    pub name: String,
    /// Its partitioning.
    pub partitioning: Partitioning,
    /// The column rows are placed by (`ts` for raw, `window_start` for tiers).
    pub time_column: &'static str,
}

/// A question: one vehicle's (or every vehicle's) rows with time in `[from, to)`, at most
/// `limit`.
#[derive(Debug, Clone)]
pub struct Query {
    /// The vehicle (`None`: all).
    pub vehicle: Option<String>,
    /// Inclusive start, epoch ms.
    pub from: Millis,
    /// Exclusive end, epoch ms.
    pub to: Millis,
    /// Rows at most (the answer says when more exist).
    pub limit: usize,
}

/// Rows as JSON objects (timestamps as epoch ms), in time order, and whether the limit
/// cut them.
#[derive(Debug, Default)]
pub struct Rows {
    /// The rows.
    pub rows: Vec<Map<String, Value>>,
    /// Whether more rows matched than `limit`.
    pub truncated: bool,
}

/// The partition directories of `d` that overlap `[from, to)`.
fn partitions(p: Partitioning, from: Millis, to: Millis) -> Vec<String> {
    let mut out = Vec::new();
    if from >= to {
        return out;
    }
    let mut key = p.key(from);
    loop {
        out.push(p.dir(key));
        let end = p.closes_at(key).unwrap_or(Millis::MAX);
        if end >= to || out.len() > 100_000 {
            break;
        }
        key = p.key(end);
    }
    out
}

/// Reads `q` from dataset `d` of the lake `tables` read.
pub async fn read(tables: &Snapshots, d: &Dataset, q: &Query) -> Result<Rows, LakeError> {
    let mut out = Rows::default();
    for dir in partitions(d.partitioning, q.from, q.to) {
        let prefix = format!("{}/{dir}", d.name);
        // A file vacuumed after the snapshot: read a newer one (a few times at most).
        let mut attempt = 0;
        let rows = loop {
            let files = tables
                .files(&d.name, &prefix)
                .await
                .map_err(LakeError::Store)?;
            match read_partition(&tables.lake.store, files, d.time_column, q).await {
                Err(object_store::Error::NotFound { .. }) if attempt < 3 => attempt += 1,
                other => break other,
            }
        }
        .map_err(LakeError::Store)?;
        out.rows.extend(rows);
        if out.rows.len() > q.limit {
            break;
        }
    }
    let ts = |r: &Map<String, Value>| r.get(d.time_column).and_then(Value::as_i64);
    out.rows.sort_by_key(|r| ts(r));
    if out.rows.len() > q.limit {
        out.rows.truncate(q.limit);
        out.truncated = true;
    }
    Ok(out)
}

async fn read_partition(
    store: &Arc<dyn ObjectStore>,
    mut files: Vec<(String, u64)>,
    time_column: &'static str,
    q: &Query,
) -> Result<Vec<Map<String, Value>>, object_store::Error> {
    files.sort();
    let mut out = Vec::new();
    for (path, _) in files {
        // Files of a partition are compacted to a bounded size: read whole, decode here.
        let bytes = store.get(&Path::from(path)).await?.bytes().await?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err)?;
        let schema = builder.parquet_schema();
        let column =
            |name: &str| (0..schema.num_columns()).find(|i| schema.column(*i).name() == name);
        let (Some(vid_col), Some(time_col)) = (column("vehicle_id"), column(time_column)) else {
            continue;
        };
        // Row groups whose vehicle_id range excludes the vehicle are skipped.
        let groups: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| {
                let vehicle = match (&q.vehicle, rg.column(vid_col).statistics()) {
                    (Some(v), Some(Statistics::ByteArray(s))) => {
                        let v = v.as_bytes();
                        s.min_opt().is_none_or(|m| m.data() <= v)
                            && s.max_opt().is_none_or(|m| m.data() >= v)
                    }
                    _ => true,
                };
                let time = match rg.column(time_col).statistics() {
                    Some(Statistics::Int64(s)) => {
                        s.min_opt().is_none_or(|m| *m < q.to)
                            && s.max_opt().is_none_or(|m| *m >= q.from)
                    }
                    _ => true,
                };
                vehicle && time
            })
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            continue;
        }
        let mask = ProjectionMask::leaves(schema, [vid_col, time_col]);
        let (vehicle, from, to) = (q.vehicle.clone(), q.from, q.to);
        let predicate = ArrowPredicateFn::new(mask, move |batch: RecordBatch| {
            let strings = arrow::compute::cast(
                batch.column_by_name("vehicle_id").expect("projected"),
                &DataType::Utf8,
            )?;
            let strings = strings.as_string::<i32>();
            let times = arrow::compute::cast(
                batch.column_by_name(time_column).expect("projected"),
                &DataType::Int64,
            )?;
            let times = times.as_primitive::<arrow::datatypes::Int64Type>();
            Ok(strings
                .iter()
                .zip(times.iter())
                .map(|(v, t)| {
                    Some(
                        vehicle.as_deref().is_none_or(|want| v == Some(want))
                            && t.is_some_and(|t| t >= from && t < to),
                    )
                })
                .collect::<BooleanArray>())
        });
        let reader = builder
            .with_row_groups(groups)
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
            .build()
            .map_err(parquet_err)?;
        for batch in reader {
            let batch = batch.map_err(|e| parquet_err(e.into()))?;
            out.extend(to_json(&batch));
            if out.len() > q.limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn parquet_err(e: parquet::errors::ParquetError) -> object_store::Error {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<object_store::Error>() {
                Ok(os) => *os,
                Err(other) => object_store::Error::Generic {
                    store: "parquet",
                    source: other,
                },
            }
        }
        other => object_store::Error::Generic {
            store: "parquet",
            source: Box::new(other),
        },
    }
}

/// A batch's rows as JSON objects (`arrow-json`): strings, numbers, booleans, timestamps
/// as epoch ms, nulls as null.
pub fn to_json(batch: &RecordBatch) -> Vec<Map<String, Value>> {
    // Timestamps become epoch milliseconds and dictionaries plain strings first.
    let columns: Vec<(Field, ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let to = match c.data_type() {
                DataType::Timestamp(..) => Some(DataType::Int64),
                DataType::Dictionary(..) | DataType::LargeUtf8 | DataType::Utf8View => {
                    Some(DataType::Utf8)
                }
                _ => None,
            };
            match to {
                Some(DataType::Int64) => {
                    let ms = cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None))
                        .and_then(|m| cast(&m, &DataType::Int64));
                    (f.as_ref().clone().with_data_type(DataType::Int64), ms)
                }
                Some(t) => (f.as_ref().clone().with_data_type(t.clone()), cast(c, &t)),
                None => (f.as_ref().clone(), Ok(c.clone())),
            }
        })
        .filter_map(|(f, c)| c.ok().map(|c| (f, c)))
        .collect();
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let Ok(plain) = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays) else {
        return Vec::new();
    };
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(Vec::new());
    if writer.write(&plain).and_then(|_| writer.finish()).is_err() {
        return Vec::new();
    }
    serde_json::from_slice(&writer.into_inner()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_the_range_and_nothing_else() {
        let h = 3_600_000;
        assert_eq!(
            partitions(Partitioning::Hour, 0, 2 * h),
            vec!["date=1970-01-01/hour=00", "date=1970-01-01/hour=01"]
        );
        assert_eq!(
            partitions(Partitioning::Hour, h - 1, h + 1),
            vec!["date=1970-01-01/hour=00", "date=1970-01-01/hour=01"]
        );
        assert!(partitions(Partitioning::Day, 5, 5).is_empty());
        // 1970-01-31 to 1970-03-01: January and February.
        assert_eq!(
            partitions(Partitioning::Month, 30 * 24 * h, 59 * 24 * h),
            vec!["month=1970-01", "month=1970-02"]
        );
    }

    #[test]
    fn rows_become_json_with_timestamps_as_epoch_ms_and_nulls_kept() {
        use arrow::array::{
            DictionaryArray, Float64Array, StringArray, TimestampMicrosecondArray,
            TimestampMillisecondArray,
        };
        use arrow::datatypes::Int32Type;
        let ts = TimestampMillisecondArray::from(vec![1_700_000_000_123, 5]).with_timezone("UTC");
        let us = TimestampMicrosecondArray::from(vec![1_000_000, 2_000]);
        let tenant: DictionaryArray<Int32Type> = vec!["acme", "globex"].into_iter().collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("ts", Arc::new(ts) as ArrayRef),
            ("at", Arc::new(us) as ArrayRef),
            ("tenant", Arc::new(tenant) as ArrayRef),
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "speed",
                Arc::new(Float64Array::from(vec![Some(1.5), None])) as ArrayRef,
            ),
            (
                "on",
                Arc::new(BooleanArray::from(vec![true, false])) as ArrayRef,
            ),
        ])
        .unwrap();
        let rows = to_json(&batch);
        assert_eq!(
            serde_json::Value::from(rows),
            serde_json::json!([
                {"ts": 1_700_000_000_123i64, "at": 1000, "tenant": "acme", "id": "a", "speed": 1.5, "on": true},
                {"ts": 5, "at": 2, "tenant": "globex", "id": "b", "speed": null, "on": false},
            ])
        );
    }
}
