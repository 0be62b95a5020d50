//! The core job with 0, 1,000 and 100,000 geofences: random circles and polygons 50-500 m
//! across, spread uniformly over the generator's area (15 km around its center). Prints,
//! for each count, the median of `FLEETFLOW_BENCH_RUNS` runs (default 3) of: start-up time
//! (loading and indexing the geofences), events/s after start-up and its share of the rate
//! without geofences, events/s over the whole run, p99 read-to-visible latency and peak RSS.
//!
//!     cargo bench --bench geofences
//!
//! Environment: `FLEETFLOW_BENCH_GEOFENCES` (comma-separated counts, default
//! `0,1000,100000`), `FLEETFLOW_BENCH_EVENTS` (default 1000000),
//! `FLEETFLOW_BENCH_VEHICLES` (default 10000), `FLEETFLOW_BENCH_WORKERS` (default 2).

mod common;

use common::{data_dir, env_or, fences, generated_input, run};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let counts: Vec<usize> = env_or("FLEETFLOW_BENCH_GEOFENCES", "0,1000,100000")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "1000000").parse().unwrap();
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let workers = env_or("FLEETFLOW_BENCH_WORKERS", "2");
    let runs: usize = env_or("FLEETFLOW_BENCH_RUNS", "3").parse().unwrap();
    let input = generated_input(bin, events, vehicles, &workers);
    println!(
        "{:>10} {:>10} {:>10} {:>12} {:>8} {:>12} {:>9} {:>10}  rows",
        "geofences",
        "events",
        "startup s",
        "events/s",
        "vs none",
        "whole run/s",
        "p99 ms",
        "peak MiB"
    );
    let mut base: Option<f64> = None;
    for n in counts {
        let path = data_dir().join(format!("fences-{n}.geojson"));
        if !path.exists() {
            std::fs::write(&path, fences(n)).unwrap();
        }
        let lake = tempfile::tempdir().unwrap();
        let spec = lake.path().join("job.toml");
        std::fs::write(
            &spec,
            format!(
                "name = \"bench\"\nworkers = {workers}\n[source]\nkind = \"file\"\npath = {input:?}\n[geofences]\npath = {path:?}\n[lake]\nurl = \"file://{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
                lake.path().join("lake").display()
            ),
        )
        .unwrap();
        let mut all: Vec<_> = (0..runs.max(1)).map(|_| run(bin, &spec)).collect();
        all.sort_by(|a, b| {
            let r = |f: &common::Figures| f.processing_events_per_s.parse::<f64>().unwrap_or(0.0);
            r(a).total_cmp(&r(b))
        });
        let f = all.swap_remove(all.len() / 2);
        let rate: f64 = f.processing_events_per_s.parse().unwrap_or(f64::NAN);
        let share = match base {
            None if n == 0 => {
                base = Some(rate);
                1.0
            }
            Some(b) => rate / b,
            None => f64::NAN,
        };
        println!(
            "{n:>10} {events:>10} {:>10} {:>12} {:>7.0}% {:>12} {:>9} {:>10}  {}",
            f.startup_s,
            f.processing_events_per_s,
            share * 100.0,
            f.events_per_s,
            f.p99_ms.map_or("-".into(), |v| v.to_string()),
            f.peak_mib,
            f.rows.trim_start_matches("rows").trim()
        );
    }
}
