//! Reading a vehicle's rows back from the lake, for the query API's history and past-day
//! answers.
//!
//! Only the partitions that overlap the time range are listed. Inside a file, the
//! `vehicle_id` column is decoded first and the other columns only for the rows that
//! match (a Parquet row filter), and row groups whose `vehicle_id` statistics exclude the
//! vehicle are skipped. A file deleted by compaction between listing and reading is
//! retried with a fresh listing: a reader sees every committed row exactly once.

use crate::lake::{Lake, LakeError};
use crate::writer::Partitioning;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use fleetflow_types::time::Millis;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value};
use std::sync::Arc;

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

/// Reads `q` from dataset `d` of `lake`.
pub async fn read(lake: &Lake, d: &Dataset, q: &Query) -> Result<Rows, LakeError> {
    let mut out = Rows::default();
    for dir in partitions(d.partitioning, q.from, q.to) {
        let prefix = Path::from(format!("{}/{dir}", d.name));
        // A file compacted away after the listing: list again (a few times at most).
        let mut attempt = 0;
        let rows = loop {
            match read_partition(&lake.store, &prefix, d.time_column, q).await {
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
    prefix: &Path,
    time_column: &'static str,
    q: &Query,
) -> Result<Vec<Map<String, Value>>, object_store::Error> {
    let files: Vec<_> = store
        .list(Some(prefix))
        .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".parquet")))
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for meta in files {
        // Files of a partition are compacted to a bounded size: read whole, decode here.
        let bytes = store.get(&meta.location).await?.bytes().await?;
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

/// A batch's rows as JSON objects: strings, numbers, booleans, timestamps as epoch ms,
/// nulls as null.
pub fn to_json(batch: &RecordBatch) -> Vec<Map<String, Value>> {
    let schema = batch.schema();
    let columns: Vec<(String, ArrayRef)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let c = match c.data_type() {
                DataType::Dictionary(..) | DataType::LargeUtf8 | DataType::Utf8View => {
                    arrow::compute::cast(c, &DataType::Utf8).unwrap_or_else(|_| c.clone())
                }
                _ => c.clone(),
            };
            (f.name().clone(), c)
        })
        .collect();
    (0..batch.num_rows())
        .map(|i| {
            columns
                .iter()
                .map(|(name, c)| (name.clone(), value(c, i)))
                .collect()
        })
        .collect()
}

fn value(c: &ArrayRef, i: usize) -> Value {
    if c.is_null(i) {
        return Value::Null;
    }
    match c.data_type() {
        DataType::Utf8 => Value::from(c.as_any().downcast_ref::<StringArray>().map(|a| a.value(i))),
        DataType::Int64 => Value::from(c.as_any().downcast_ref::<Int64Array>().map(|a| a.value(i))),
        DataType::Int32 => Value::from(c.as_primitive::<arrow::datatypes::Int32Type>().value(i)),
        DataType::Float64 => c
            .as_any()
            .downcast_ref::<Float64Array>()
            .map(|a| Value::from(a.value(i)))
            .unwrap_or(Value::Null),
        DataType::Boolean => Value::from(c.as_boolean().value(i)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Value::from(
            c.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .value(i),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Value::from(
            c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(i)
                / 1000,
        ),
        _ => Value::Null,
    }
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
}
