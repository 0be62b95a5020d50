//! The lake's table committers side by side: Delta Lake tables (`DeltaTables`, every job's
//! since the lake became Delta) against the plain Parquet sink it replaced
//! (`HiveDirectories`: files renamed into Hive partition directories, nothing else), on
//! the same staged files in one process, alternating rounds. Each commit publishes
//! `FLEETFLOW_BENCH_FILES` files of `FLEETFLOW_BENCH_ROWS` raw rows into hour partitions,
//! and every fourth commit also removes the files of the commit three before (as a
//! compaction does). Prints, per committer, the rows committed per second of commit time
//! and the commit latency (p50, p99, max): the time from a checkpoint record being written
//! to its files being visible in the datasets (for Delta: renames, footers read for the
//! statistics, one log entry per table, checkpoints every ten commits).
//!
//!     cargo bench --bench tables
//!
//! Environment: `FLEETFLOW_BENCH_COMMITS` (default 60), `FLEETFLOW_BENCH_FILES` (files per
//! commit, default 8), `FLEETFLOW_BENCH_ROWS` (rows per file, default 20000),
//! `FLEETFLOW_BENCH_RUNS` (rounds, default 2).

mod common;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::array::{TimestampMicrosecondArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use common::env_or;
use fleetflow_sinks::catalogue::Catalogue;
use fleetflow_sinks::commit::Commit;
use fleetflow_sinks::delta::DeltaTables;
use fleetflow_sinks::lake::Lake;
use fleetflow_sinks::table::{HiveDirectories, TableCommitter};
use fleetflow_sinks::writer::Pending;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `rows` rows of `schema` for vehicles `V00000..`, one per second from `start` (ms).
fn batch(schema: &Arc<Schema>, rows: usize, start: i64) -> RecordBatch {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.data_type() {
                DataType::Utf8 if f.name() == "vehicle_id" => Arc::new(
                    StringArray::from_iter_values((0..rows).map(|i| format!("V{:05}", i % 10_000))),
                ),
                DataType::Utf8 => {
                    Arc::new(StringArray::from_iter_values((0..rows).map(|_| "acme")))
                }
                DataType::Float64 => Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| i as f64 * 0.5),
                )),
                DataType::Int64 => Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                DataType::Boolean => {
                    Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 2 == 0))))
                }
                DataType::Timestamp(TimeUnit::Millisecond, tz) => Arc::new(
                    TimestampMillisecondArray::from_iter_values(
                        (0..rows as i64).map(|i| start + i * 3_600_000 / rows as i64),
                    )
                    .with_timezone_opt(tz.clone()),
                ),
                DataType::Timestamp(TimeUnit::Microsecond, tz) => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..rows as i64).map(|i| (start + i * 3_600_000 / rows as i64) * 1_000),
                    )
                    .with_timezone_opt(tz.clone()),
                ),
                other => panic!("no generator for a {other} column"),
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    out
}

/// Commit latencies and rows committed by one committer over `commits` commits.
fn run(
    committer: &str,
    commits: u64,
    files: usize,
    body: &[u8],
    rows: u64,
    rt: &tokio::runtime::Runtime,
) -> (Vec<Duration>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(
        &format!("file://{}", dir.path().join("lake").display()),
        &BTreeMap::new(),
    )
    .unwrap();
    let catalogue = Catalogue::new(true, &[]);
    let tables: Arc<dyn TableCommitter> = match committer {
        "delta" => Arc::new(DeltaTables::new(&lake, catalogue, "bench").unwrap()),
        _ => Arc::new(HiveDirectories),
    };
    let hour0 = 1_736_143_200_000i64; // 2025-01-06T06:00Z
    let mut published: Vec<Vec<String>> = Vec::new();
    let mut latencies = Vec::new();
    let mut total = 0;
    for seq in 1..=commits {
        // Staged by the sinks before the record is written: not timed.
        let hour = hour0 + (seq as i64 / 10) * 3_600_000;
        let date = fleetflow_types::time::rfc3339(hour);
        let (day, hh) = (&date[..10], &date[11..13]);
        let mut publish = Vec::new();
        for f in 0..files {
            let to = format!("raw/date={day}/hour={hh}/part-{seq:06}-{f:03}.parquet");
            let from = format!("_fleetflow/staging/{to}");
            rt.block_on(
                lake.store
                    .put(&Path::from(from.as_str()), PutPayload::from(body.to_vec())),
            )
            .unwrap();
            publish.push(Pending {
                from,
                to,
                dataset: "raw".into(),
                rows,
            });
        }
        let delete = match seq % 4 == 0 && seq > 3 {
            true => published[seq as usize - 4].clone(),
            false => Vec::new(),
        };
        published.push(publish.iter().map(|p| p.to.clone()).collect());
        let commit = Commit {
            seq,
            clock: Some(hour),
            job: "bench".into(),
            publish,
            delete,
            ..Default::default()
        };
        let started = Instant::now();
        rt.block_on(tables.apply(&*lake.store, &commit, None))
            .unwrap();
        latencies.push(started.elapsed());
        total += rows * files as u64;
    }
    (latencies, total)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let commits: u64 = env_or("FLEETFLOW_BENCH_COMMITS", "60").parse().unwrap();
    let files: usize = env_or("FLEETFLOW_BENCH_FILES", "8").parse().unwrap();
    let rows: usize = env_or("FLEETFLOW_BENCH_ROWS", "20000").parse().unwrap();
    let rounds: usize = env_or("FLEETFLOW_BENCH_RUNS", "2").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let catalogue = Catalogue::new(true, &[]);
    let schema = catalogue.get("raw").unwrap().schema.clone();
    let body = parquet_bytes(&batch(&schema, rows, 1_736_143_200_000));
    println!(
        "{commits} commits of {files} files x {rows} rows ({:.1} MiB a file)",
        body.len() as f64 / (1024.0 * 1024.0)
    );
    println!(
        "{:>6} {:>8} {:>12} {:>9} {:>9} {:>9}",
        "round", "tables", "rows/s", "p50 ms", "p99 ms", "max ms"
    );
    for round in 0..rounds {
        for committer in ["parquet", "delta"] {
            let (mut lat, total) = run(committer, commits, files, &body, rows as u64, &rt);
            let spent: Duration = lat.iter().sum();
            lat.sort();
            let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
            println!(
                "{round:>6} {committer:>8} {:>12.0} {:>9.1} {:>9.1} {:>9.1}",
                total as f64 / spent.as_secs_f64(),
                q(0.5),
                q(0.99),
                q(1.0)
            );
        }
    }
}
