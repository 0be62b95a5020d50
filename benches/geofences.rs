//! The core job with 0, 1,000 and 100,000 geofences: random circles and polygons 50-500 m
//! across, spread uniformly over the generator's area (15 km around its center), and
//! 100,000 spread over 150 km around it (`100000@150`: the fleet drives among about 1% of
//! them, as a regional fleet does among a country's sites). 100,000 over the fleet's own
//! area overlap about eight deep: every fix is inside several, and the job writes 1.65
//! geofence events per fix, so that case measures the event output as much as the index;
//! the wide one measures what geofences away from the vehicles cost. Prints,
//! for each count, the median of `FLEETFLOW_BENCH_RUNS` runs (default 3) of: start-up time
//! (loading and indexing the geofences), events/s after start-up and its share of the rate
//! without geofences, events/s over the whole run, p99 read-to-visible latency and peak RSS.
//!
//!     cargo bench --bench geofences
//!
//! Environment: `FLEETFLOW_BENCH_GEOFENCES` (comma-separated counts, each optionally
//! `@` the radius in km they are spread over; default `0,1000,100000,100000@150`), `FLEETFLOW_BENCH_EVENTS` (default 5000000: long enough that start-up
//! and the end-of-input flush weigh little),
//! `FLEETFLOW_BENCH_VEHICLES` (default 10000), `FLEETFLOW_BENCH_WORKERS` (default 2).

mod common;

use common::{data_dir, env_or, fences, fences_within, generated_input, run};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    // (label, count, radius in km they are spread over: None for the fleet's area).
    let counts: Vec<(String, usize, Option<f64>)> =
        env_or("FLEETFLOW_BENCH_GEOFENCES", "0,1000,100000,100000@150")
            .split(',')
            .map(|s| {
                let s = s.trim();
                let (n, km) = match s.split_once('@') {
                    Some((n, km)) => (n, Some(km.parse().expect("a radius in km after @"))),
                    None => (s, None),
                };
                (s.to_string(), n.parse().expect("a count of geofences"), km)
            })
            .collect();
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "5000000").parse().unwrap();
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
    // Runs are interleaved (every count once per round) so that drift of the machine's
    // speed affects all counts alike; each count reports its median run.
    let specs: Vec<(String, usize, tempfile::TempDir)> = counts
        .iter()
        .map(|(label, n, km)| {
            let (n, km) = (*n, *km);
            let path = match km {
                None => data_dir().join(format!("fences-{n}.geojson")),
                Some(km) => data_dir().join(format!("fences-{n}-within-{km}km.geojson")),
            };
            if !path.exists() {
                let body = match km {
                    None => fences(n),
                    Some(km) => fences_within(n, km * 1000.0),
                };
                std::fs::write(&path, body).unwrap();
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("job.toml"),
                format!(
                    "name = \"bench\"\nworkers = {workers}\n[source]\nkind = \"file\"\npath = {input:?}\n[geofences]\npath = {path:?}\n[lake]\nurl = \"file://{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
                    dir.path().join("lake").display()
                ),
            )
            .unwrap();
            (label.clone(), n, dir)
        })
        .collect();
    let mut results: Vec<Vec<common::Figures>> = counts.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs.max(1) {
        for (i, (_, _, dir)) in specs.iter().enumerate() {
            let _ = std::fs::remove_dir_all(dir.path().join("lake"));
            results[i].push(run(bin, &dir.path().join("job.toml")));
        }
    }
    let rate = |f: &common::Figures| f.processing_events_per_s.parse::<f64>().unwrap_or(f64::NAN);
    let mut base: Option<f64> = None;
    for ((label, n, _), mut all) in specs.iter().zip(results) {
        all.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let f = all.swap_remove(all.len() / 2);
        let r = rate(&f);
        let share = match base {
            None if *n == 0 => {
                base = Some(r);
                1.0
            }
            Some(b) => r / b,
            None => f64::NAN,
        };
        println!(
            "{label:>10} {events:>10} {:>10} {:>12} {:>7.0}% {:>12} {:>9} {:>10}  {}",
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
