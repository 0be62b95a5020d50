//! The lake sink on S3 next to `file://`: the same generated input through `fleetflow run`
//! (file source, 2 workers, every tier) into a local lake and into an `s3://` lake on
//! `moto_server` (PyPI `moto[server]`, started here on loopback). Prints the rows written
//! per second, the bytes uploaded per second (published files, staged chunks, merges and
//! compactions) and the lake's final size, per run.
//!
//!     cargo bench --bench lake
//!
//! Environment: `FLEETFLOW_BENCH_EVENTS` (default `1000000`), `FLEETFLOW_BENCH_VEHICLES`
//! (default 10000), `FLEETFLOW_BENCH_RUNS` (interleaved rounds, default 2),
//! `FLEETFLOW_BENCH_CHECKPOINT` (checkpoint interval, default `10s`).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{env_or, generated_input};
use harness::S3Server;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// What one run wrote.
struct Written {
    seconds: f64,
    events: u64,
    rows: u64,
    uploaded: u64,
}

fn run(bin: &str, spec: &Path, env: &[(&'static str, String)]) -> Written {
    let started = Instant::now();
    let out = Command::new(bin)
        .arg("run")
        .arg(spec)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{summary}");
    let line = |prefix: &str| {
        summary
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {summary}"))
            .trim()
            .to_string()
    };
    let rows = line("rows ")
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap().1.parse::<u64>().unwrap())
        .sum();
    Written {
        seconds,
        events: line("events ")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        rows,
        uploaded: line("uploaded ")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap(),
    }
}

/// Bytes under `dir`, outside `_fleetflow/`.
fn lake_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "_fleetflow" {
            continue;
        }
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            lake_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "1000000").parse().unwrap();
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let rounds: usize = env_or("FLEETFLOW_BENCH_RUNS", "2").parse().unwrap();
    let checkpoint = env_or("FLEETFLOW_BENCH_CHECKPOINT", "10s");
    let input = generated_input(bin, events, vehicles, "2");
    let s3 = S3Server::start();
    let spec = |dir: &Path, url: &str| {
        let path = dir.join("job.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"bench\"\nworkers = 2\n[source]\nkind = \"file\"\npath = {input:?}\n\
                 [lake]\nurl = \"{url}\"\ncheckpoint_interval = \"{checkpoint}\"\n\
                 [lake.s3]\nallow_http = \"true\"\n[api]\nlisten = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        path
    };
    println!(
        "{:>8} {:>10} {:>10} {:>8} {:>12} {:>12} {:>11} {:>9}",
        "lake", "events", "rows", "seconds", "rows/s", "uploaded/s", "uploaded", "lake"
    );
    let mib = |b: f64| b / (1024.0 * 1024.0);
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("lake");
        let file = run(
            bin,
            &spec(dir.path(), &format!("file://{}", local.display())),
            &[],
        );
        let size = lake_bytes(&local);
        let bucket = format!("bench{round}");
        s3.bucket(&bucket);
        let on_s3 = run(
            bin,
            &spec(dir.path(), &format!("s3://{bucket}/lake")),
            &s3.env(),
        );
        assert_eq!(file.rows, on_s3.rows, "both lakes get the same rows");
        for (name, w) in [("file://", &file), ("s3://", &on_s3)] {
            println!(
                "{name:>8} {:>10} {:>10} {:>8.2} {:>12.0} {:>8.1} MiB/s {:>7.1} MiB {:>5.1} MiB",
                w.events,
                w.rows,
                w.seconds,
                w.rows as f64 / w.seconds,
                mib(w.uploaded as f64 / w.seconds),
                mib(w.uploaded as f64),
                mib(size as f64),
            );
        }
    }
}
