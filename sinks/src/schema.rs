//! Arrow schemas of the lake datasets and conversion of records to record batches.
//!
//! Timestamps are `Timestamp(Millisecond, "UTC")`, which Parquet stores as
//! `TIMESTAMP(MILLIS, isAdjustedToUTC=true)`.

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{DeadLetter, GeofenceEvent, TierRow};
use std::sync::{Arc, OnceLock};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn ts_builder(n: usize) -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC")
}

/// A record type that has a lake dataset (its rows are encoded beside the worker too).
pub trait LakeRecord: Sized + Send + 'static {
    /// The dataset's Arrow schema.
    fn schema() -> SchemaRef;
    /// Converts rows to one record batch.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;
    /// Rough in-memory size of one row, for buffering decisions.
    const APPROX_BYTES: usize;
    /// Columns written with dictionary encoding (repetitive strings; the rest plain).
    const DICTIONARY: &'static [&'static str];
}

/// Schema of the `raw` dataset: the event fields.
pub fn raw_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let f = |n: &str| Field::new(n, DataType::Float64, true);
        Arc::new(Schema::new(vec![
            Field::new("vehicle_id", DataType::Utf8, false),
            Field::new("tenant", DataType::Utf8, false),
            Field::new("ts", ts_type(), false),
            Field::new("lat", DataType::Float64, false),
            Field::new("lon", DataType::Float64, false),
            f("speed_kmh"),
            f("heading_deg"),
            f("fuel_level_pct"),
            f("fuel_used_l"),
            f("odometer_km"),
            Field::new("ignition", DataType::Boolean, true),
        ]))
    })
    .clone()
}

impl LakeRecord for Fix {
    const APPROX_BYTES: usize = 120;
    const DICTIONARY: &'static [&'static str] = &["vehicle_id", "tenant"];
    fn schema() -> SchemaRef {
        raw_schema()
    }
    fn to_batch(rows: &[Fix]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut vid = StringBuilder::with_capacity(n, n * 8);
        let mut tenant = StringBuilder::with_capacity(n, n * 8);
        let mut ts = ts_builder(n);
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut opt: Vec<Float64Builder> =
            (0..5).map(|_| Float64Builder::with_capacity(n)).collect();
        let mut ign = BooleanBuilder::with_capacity(n);
        for r in rows {
            vid.append_value(&r.vehicle_id);
            tenant.append_value(&r.tenant);
            ts.append_value(r.ts);
            lat.append_value(r.lat);
            lon.append_value(r.lon);
            for (b, v) in opt.iter_mut().zip([
                r.speed_kmh,
                r.heading_deg,
                r.fuel_level_pct,
                r.fuel_used_l,
                r.odometer_km,
            ]) {
                b.append_option(v);
            }
            ign.append_option(r.ignition);
        }
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(vid.finish()),
            Arc::new(tenant.finish()),
            Arc::new(ts.finish()),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
        ];
        cols.extend(opt.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        cols.push(Arc::new(ign.finish()));
        RecordBatch::try_new(raw_schema(), cols)
    }
}

/// Schema of the window tiers (semantics §4).
pub fn tier_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let f = |n: &str, null| Field::new(n, DataType::Float64, null);
        Arc::new(Schema::new(vec![
            Field::new("vehicle_id", DataType::Utf8, false),
            Field::new("tenant", DataType::Utf8, false),
            Field::new("window_start", ts_type(), false),
            Field::new("window_end", ts_type(), false),
            Field::new("fixes", DataType::Int64, false),
            Field::new("first_ts", ts_type(), false),
            Field::new("last_ts", ts_type(), false),
            f("lat", false),
            f("lon", false),
            f("avg_speed_kmh", true),
            f("max_speed_kmh", true),
            f("distance_km", false),
            f("fuel_used_l", false),
            f("moving_s", false),
            f("idle_s", false),
            f("km_per_l", true),
        ]))
    })
    .clone()
}

impl LakeRecord for TierRow {
    const APPROX_BYTES: usize = 160;
    const DICTIONARY: &'static [&'static str] = &["vehicle_id", "tenant"];
    fn schema() -> SchemaRef {
        tier_schema()
    }
    fn to_batch(rows: &[TierRow]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut vid = StringBuilder::with_capacity(n, n * 8);
        let mut tenant = StringBuilder::with_capacity(n, n * 8);
        let mut ts: Vec<TimestampMillisecondBuilder> = (0..4).map(|_| ts_builder(n)).collect();
        let mut fixes = Int64Builder::with_capacity(n);
        let mut fl: Vec<Float64Builder> =
            (0..9).map(|_| Float64Builder::with_capacity(n)).collect();
        for r in rows {
            vid.append_value(&r.vehicle_id);
            tenant.append_value(&r.tenant);
            for (b, v) in ts
                .iter_mut()
                .zip([r.window_start, r.window_end, r.first_ts, r.last_ts])
            {
                b.append_value(v);
            }
            fixes.append_value(r.fixes as i64);
            let vals = [
                Some(r.lat),
                Some(r.lon),
                r.avg_speed_kmh,
                r.max_speed_kmh,
                Some(r.distance_km),
                Some(r.fuel_used_l),
                Some(r.moving_s),
                Some(r.idle_s),
                r.km_per_l(),
            ];
            for (b, v) in fl.iter_mut().zip(vals) {
                b.append_option(v);
            }
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(vid.finish()), Arc::new(tenant.finish())];
        let mut ts = ts.into_iter();
        cols.push(Arc::new(ts.next().expect("4").finish()));
        cols.push(Arc::new(ts.next().expect("4").finish()));
        cols.push(Arc::new(fixes.finish()));
        cols.extend(ts.map(|mut b| Arc::new(b.finish()) as ArrayRef));
        cols.extend(fl.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        RecordBatch::try_new(tier_schema(), cols)
    }
}

/// Schema of the `dead_letter` dataset.
pub fn dead_letter_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("reason", DataType::Utf8, false),
            Field::new("payload", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("received_at", ts_type(), false),
            Field::new("detail", DataType::Utf8, false),
        ]))
    })
    .clone()
}

impl LakeRecord for DeadLetter {
    const APPROX_BYTES: usize = 400;
    const DICTIONARY: &'static [&'static str] = &["reason", "source"];
    fn schema() -> SchemaRef {
        dead_letter_schema()
    }
    fn to_batch(rows: &[DeadLetter]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut reason = StringBuilder::with_capacity(n, n * 8);
        let mut payload = StringBuilder::with_capacity(n, n * 200);
        let mut source = StringBuilder::with_capacity(n, n * 32);
        let mut at = ts_builder(n);
        let mut detail = StringBuilder::with_capacity(n, n * 32);
        for r in rows {
            reason.append_value(r.reason.as_str());
            payload.append_value(&r.payload);
            source.append_value(&r.source);
            at.append_value(r.received_at);
            detail.append_value(&r.detail);
        }
        RecordBatch::try_new(
            dead_letter_schema(),
            vec![
                Arc::new(reason.finish()),
                Arc::new(payload.finish()),
                Arc::new(source.finish()),
                Arc::new(at.finish()),
                Arc::new(detail.finish()),
            ],
        )
    }
}

/// Schema of the `geofence_events` dataset.
pub fn geofence_event_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("geofence_id", DataType::Utf8, false),
            Field::new("vehicle_id", DataType::Utf8, false),
            Field::new("tenant", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("ts", ts_type(), false),
            Field::new("cause", DataType::Utf8, false),
        ]))
    })
    .clone()
}

impl LakeRecord for GeofenceEvent {
    const APPROX_BYTES: usize = 24;
    // Few distinct values. Geofence and vehicle ids repeat too, but interning one per
    // event costs more than the plain encoding plus Snappy saves here.
    const DICTIONARY: &'static [&'static str] = &["tenant", "kind", "cause"];
    fn schema() -> SchemaRef {
        geofence_event_schema()
    }
    fn to_batch(rows: &[GeofenceEvent]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut geofence = StringBuilder::with_capacity(n, n * 8);
        let mut vehicle = StringBuilder::with_capacity(n, n * 8);
        let mut tenant = StringBuilder::with_capacity(n, n * 8);
        let mut kind = StringBuilder::with_capacity(n, n * 5);
        let mut ts = ts_builder(n);
        let mut cause = StringBuilder::with_capacity(n, n * 4);
        for r in rows {
            geofence.append_value(&r.geofence_id);
            vehicle.append_value(&r.vehicle_id);
            tenant.append_value(&r.tenant);
            kind.append_value(r.kind.as_str());
            ts.append_value(r.ts);
            cause.append_value(r.cause.as_str());
        }
        RecordBatch::try_new(
            geofence_event_schema(),
            vec![
                Arc::new(geofence.finish()),
                Arc::new(vehicle.finish()),
                Arc::new(tenant.finish()),
                Arc::new(kind.finish()),
                Arc::new(ts.finish()),
                Arc::new(cause.finish()),
            ],
        )
    }
}
