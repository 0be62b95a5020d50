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
//!
//! Side by side: `FLEETFLOW_BENCH_REFERENCE=/path/to/another/fleetflow` runs that binary
//! and this build alternately on each input, `FLEETFLOW_BENCH_ROUNDS` times each (default
//! 3), and prints the median ratio this / reference of events/s and peak RSS.

mod common;

use common::{env_or, generated_input, median, run};

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
    let reference = std::env::var("FLEETFLOW_BENCH_REFERENCE").ok();
    let rounds: usize = env_or(
        "FLEETFLOW_BENCH_ROUNDS",
        if reference.is_some() { "3" } else { "1" },
    )
    .parse()
    .unwrap();
    println!(
        "{:>10} {:>9} {:>10} {:>12} {:>9} {:>9} {:>10}",
        "events", "vehicles", "binary", "events/s", "p50 ms", "p99 ms", "peak MiB"
    );
    for events in sizes {
        let input = generated_input(bin, events, vehicles, &files);
        let mut binaries = vec![("this", bin.to_string())];
        if let Some(r) = &reference {
            binaries.insert(0, ("reference", r.clone()));
        }
        // Per round, this build's figure over the reference's.
        let (mut rate_ratios, mut rss_ratios) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut round = Vec::new();
            for (label, b) in &binaries {
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
                let f = run(b, &spec);
                println!(
                    "{events:>10} {vehicles:>9} {label:>10} {:>12} {:>9} {:>9} {:>10}",
                    f.events_per_s,
                    f.p50_ms.map_or("-".into(), |v| v.to_string()),
                    f.p99_ms.map_or("-".into(), |v| v.to_string()),
                    f.peak_mib
                );
                let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
                round.push((num(&f.events_per_s), num(&f.peak_mib)));
            }
            if let [r, t] = round[..] {
                rate_ratios.push(t.0 / r.0);
                rss_ratios.push(t.1 / r.1);
            }
        }
        if !rate_ratios.is_empty() {
            println!(
                "{events:>10} {vehicles:>9} this/ref: events/s x{:.2}, peak RSS x{:.2} (medians of {rounds} rounds)",
                median(&mut rate_ratios),
                median(&mut rss_ratios)
            );
        }
    }
}
