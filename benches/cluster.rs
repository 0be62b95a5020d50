//! Scale-out: the same file job on 1, 2 and 3 processes of a timely cluster on this
//! machine (loopback). Prints, per cluster size, the wall-clock events/s (spawn to the last
//! exit), events/s after the cluster connected, and peak RSS per process and in sum.
//!
//!     cargo bench --bench cluster
//!
//! Environment: `FLEETFLOW_BENCH_EVENTS` (default 2000000), `FLEETFLOW_BENCH_VEHICLES`
//! (default 10000), `FLEETFLOW_BENCH_WORKERS` (workers per process, default 2),
//! `FLEETFLOW_BENCH_PROCESSES` (comma-separated cluster sizes, default `1,2,3`). The input
//! is a directory of 6 files, so that every worker of the largest cluster reads.
//!
//! On a machine with fewer cores than workers the figures show what exchange between
//! processes costs (serialization and loopback TCP), not a speed-up.

mod common;

use common::{env_or, generated_input};
use std::process::{Command, Stdio};
use std::time::Instant;

/// One process's closing summary lines.
struct ProcessFigures {
    startup_s: f64,
    peak_mib: f64,
}

fn parse(summary: &str) -> ProcessFigures {
    let field = |prefix: &str| {
        summary
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{summary}"))
            .to_string()
    };
    let startup_s = field("startup")
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or(0.0);
    let peak_mib = field("peak rss")
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    ProcessFigures {
        startup_s,
        peak_mib,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "2000000").parse().unwrap();
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let workers = env_or("FLEETFLOW_BENCH_WORKERS", "2");
    let sizes: Vec<usize> = env_or("FLEETFLOW_BENCH_PROCESSES", "1,2,3")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let input = generated_input(bin, events, vehicles, "6");
    println!(
        "{:>9} {:>8} {:>10} {:>12} {:>16} {:>10} {:>13} {:>13}",
        "processes",
        "workers",
        "events",
        "events/s",
        "after connect/s",
        "connect s",
        "peak MiB max",
        "peak MiB sum"
    );
    for processes in sizes {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("job.toml");
        std::fs::write(
            &spec,
            format!(
                "name = \"bench\"\nworkers = {workers}\n[source]\nkind = \"file\"\npath = {input:?}\n[lake]\nurl = \"file://{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
                dir.path().join("lake").display()
            ),
        )
        .unwrap();
        let hosts = dir.path().join("hosts");
        let ports: Vec<String> = (0..processes)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("127.0.0.1:{}\n", l.local_addr().unwrap().port())
            })
            .collect();
        std::fs::write(&hosts, ports.concat()).unwrap();
        let started = Instant::now();
        let children: Vec<_> = (0..processes)
            .map(|i| {
                let mut cmd = Command::new(bin);
                cmd.arg("run").arg(&spec).env("RUST_LOG", "warn");
                if processes > 1 {
                    cmd.args(["--processes", &processes.to_string()])
                        .args(["--process-index", &i.to_string()])
                        .arg("--hosts")
                        .arg(&hosts);
                }
                cmd.stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let figures: Vec<ProcessFigures> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                let summary = String::from_utf8_lossy(&out.stderr).into_owned();
                assert!(out.status.success(), "{summary}");
                parse(&summary)
            })
            .collect();
        let wall = started.elapsed().as_secs_f64();
        let connect = figures.iter().map(|f| f.startup_s).fold(0.0, f64::max);
        let peak_max = figures.iter().map(|f| f.peak_mib).fold(0.0, f64::max);
        let peak_sum: f64 = figures.iter().map(|f| f.peak_mib).sum();
        let total_workers = processes * workers.parse::<usize>().unwrap();
        println!(
            "{processes:>9} {total_workers:>8} {events:>10} {:>12.0} {:>16.0} {:>10.2} {:>13.1} {:>13.1}",
            events as f64 / wall,
            events as f64 / (wall - connect).max(1e-9),
            connect,
            peak_max,
            peak_sum
        );
    }
}
