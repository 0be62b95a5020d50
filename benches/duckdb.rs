//! Side by side with DuckDB: the same generated NDJSON input (default 1M fixes from 10,000
//! vehicles) through `fleetflow run` (file source, every tier, 25 circular geofences, a
//! local lake, 2 workers) and through DuckDB's batch SQL (`benches/duckdb_aggregates.py`:
//! latest state, 1-minute windows, daily distance and fuel, geofence counts, written as
//! Parquet, 2 threads). Runs alternate; each prints its wall time and peak RSS, and the
//! bench closes with the medians of the per-round ratios fleetflow / DuckDB.
//!
//!     cargo bench --bench duckdb
//!
//! Needs `python3` with the `duckdb` package (`scripts/test` installs it). Environment:
//! `FLEETFLOW_BENCH_EVENTS` (default 1000000), `FLEETFLOW_BENCH_VEHICLES` (default 10000),
//! `FLEETFLOW_BENCH_WORKERS` (default 2; also DuckDB's threads),
//! `FLEETFLOW_BENCH_GEOFENCES` (default 25), `FLEETFLOW_BENCH_ROUNDS` (default 3).

mod common;

use common::{circles, data_dir, env_or, generated_input, median, run};
use std::process::Command;
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "1000000").parse().unwrap();
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let workers = env_or("FLEETFLOW_BENCH_WORKERS", "2");
    let n_fences: usize = env_or("FLEETFLOW_BENCH_GEOFENCES", "25").parse().unwrap();
    let rounds: usize = env_or("FLEETFLOW_BENCH_ROUNDS", "3").parse().unwrap();
    let input = generated_input(bin, events, vehicles, &workers);
    let (geojson, csv) = circles(n_fences);
    let fences = data_dir().join(format!("circles-{n_fences}.geojson"));
    let fences_csv = data_dir().join(format!("circles-{n_fences}.csv"));
    std::fs::write(&fences, geojson).unwrap();
    std::fs::write(&fences_csv, csv).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_aggregates.py");

    println!(
        "{:>10} {:>9} {:>10} {:>10} {:>10}",
        "events", "vehicles", "engine", "wall s", "peak MiB"
    );
    let (mut wall_ratios, mut rss_ratios) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // DuckDB.
        let out = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let o = Command::new("python3")
            .arg(script)
            .arg(&input)
            .arg(&fences_csv)
            .arg(out.path())
            .arg(&workers)
            .output()
            .expect("python3");
        let duck_wall = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let duck_mib = stdout
            .lines()
            .find_map(|l| l.strip_prefix("peak_rss_kib "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("peak_rss_kib")
            / 1024.0;
        println!(
            "{events:>10} {vehicles:>9} {:>10} {duck_wall:>10.3} {duck_mib:>10.1}",
            "duckdb"
        );

        // fleetflow.
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("job.toml");
        std::fs::write(
            &spec,
            format!(
                "name = \"bench\"\nworkers = {workers}\n[source]\nkind = \"file\"\npath = {input:?}\n[geofences]\npath = {fences:?}\n[lake]\nurl = \"file://{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
                dir.path().join("lake").display()
            ),
        )
        .unwrap();
        let started = Instant::now();
        let f = run(bin, &spec);
        let ff_wall = started.elapsed().as_secs_f64();
        let ff_mib: f64 = f.peak_mib.parse().unwrap_or(f64::NAN);
        println!(
            "{events:>10} {vehicles:>9} {:>10} {ff_wall:>10.3} {ff_mib:>10.1}",
            "fleetflow"
        );
        wall_ratios.push(ff_wall / duck_wall);
        rss_ratios.push(ff_mib / duck_mib);
    }
    println!(
        "fleetflow / duckdb: wall time x{:.2}, peak RSS x{:.2} (medians of {rounds} rounds)",
        median(&mut wall_ratios),
        median(&mut rss_ratios)
    );
}
