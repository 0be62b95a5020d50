//! End to end: generated NDJSON file -> `fleetflow run` (file source, 2 workers) -> all
//! tiers in a local lake. Prints events/s, read-to-visible latency p50/p99 and peak RSS.
//!
//!     cargo bench --bench end_to_end
//!
//! Environment: `FLEETFLOW_BENCH_EVENTS` (comma-separated sizes, default
//! `1000000,5000000`), `FLEETFLOW_BENCH_VEHICLES` (default 10000),
//! `FLEETFLOW_BENCH_WORKERS` (default 2), `FLEETFLOW_BENCH_FILES` (the input is a directory
//! of this many files, each a share of the fleet; default: one per worker, so that every
//! worker decodes). Generated inputs are cached in the target dir.

use std::process::Command;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let workers = env_or("FLEETFLOW_BENCH_WORKERS", "2");
    let files = env_or("FLEETFLOW_BENCH_FILES", &workers);
    let sizes: Vec<u64> = env_or("FLEETFLOW_BENCH_EVENTS", "1000000,5000000")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| std::path::PathBuf::from(d).join("bench-data"))
        .unwrap_or(dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "{:>10} {:>9} {:>12} {:>9} {:>9} {:>10}",
        "events", "vehicles", "events/s", "p50 ms", "p99 ms", "peak MiB"
    );
    for events in sizes {
        let input = dir.join(format!("gen-{events}-{vehicles}-{files}"));
        if !input.exists() {
            let minutes = (events / vehicles * 5).div_ceil(60).max(1);
            let st = Command::new(bin)
                .args([
                    "generate",
                    "--vehicles",
                    &vehicles.to_string(),
                    "--duration",
                    &format!("{}s", events / vehicles * 5),
                    "--out",
                ])
                .arg(&input)
                .status()
                .unwrap();
            assert!(st.success(), "generate {minutes}m");
        }
        let lake = tempfile::tempdir().unwrap();
        let spec = lake.path().join("job.toml");
        std::fs::write(
            &spec,
            format!(
                "name = \"bench\"\nworkers = {workers}\n[source]\nkind = \"file\"\npath = {input:?}\n[lake]\nurl = \"file://{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
                lake.path().join("lake").display()
            ),
        )
        .unwrap();
        let out = Command::new(bin)
            .args(["run"])
            .arg(&spec)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{summary}");
        let field = |prefix: &str| {
            summary
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.to_string())
                .unwrap_or_default()
        };
        let rate = field("events")
            .split('(')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let lat = field("latency");
        let mut lat = lat.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
        let (p50, p99) = (lat.next(), lat.next());
        let rss = field("peak rss")
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .to_string();
        println!(
            "{events:>10} {vehicles:>9} {rate:>12} {:>9} {:>9} {rss:>10}",
            p50.map_or("-".into(), |v| v.to_string()),
            p99.map_or("-".into(), |v| v.to_string())
        );
    }
}
