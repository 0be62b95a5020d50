//! Kafka into the lake against a real broker process (tansu with sqlite storage, as
//! `.ci/run` installs it; or `FLEETFLOW_TANSU`):
//!
//! (a) the maximum sustained rate: the topic (4 partitions) is filled first, then a bounded
//!     job (2 workers, every tier, local lake) reads it to the end; events/s over the
//!     job's whole run;
//! (b) end-to-end latency at a steady rate: an unbounded job runs while this bench
//!     produces at `FLEETFLOW_BENCH_RATE` events/s (default 20,000) for
//!     `FLEETFLOW_BENCH_SECONDS` (default 30); 20 sampled vehicles are polled through
//!     `GET /v1/vehicles/{id}` and each fix's latency is the time from handing it to the
//!     producer to seeing its `ts` there (p50/p99).
//!
//!     cargo bench --bench kafka
//!
//! Environment: `FLEETFLOW_BENCH_EVENTS` (default 1000000), `FLEETFLOW_BENCH_VEHICLES`
//! (default 10000).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{env_or, generated_input, run};
use fleetflow_connectors::kafka::produce_events;
use harness::{http_get, spawn_with_api, KafkaBroker};
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lines(path: &std::path::Path) -> Vec<String> {
    let file = if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .next()
            .unwrap()
    } else {
        path.to_path_buf()
    };
    std::io::BufReader::new(std::fs::File::open(file).unwrap())
        .lines()
        .map(Result::unwrap)
        .collect()
}

fn key_of(line: &str) -> Option<String> {
    let at = line.find("\"vehicle_id\":\"")? + 14;
    let end = line[at..].find('"')? + at;
    Some(line[at..end].to_string())
}

fn job(dir: &std::path::Path, brokers: &str, topic: &str, bounded: bool) -> std::path::PathBuf {
    let path = dir.join(format!("{topic}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{topic}\"\nworkers = 2\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nbounded = {bounded}\n[lake]\nurl = \"file://{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            dir.join(format!("lake-{topic}")).display()
        ),
    )
    .unwrap();
    path
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "1000000").parse().unwrap();
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let rate: u64 = env_or("FLEETFLOW_BENCH_RATE", "20000").parse().unwrap();
    let seconds: u64 = env_or("FLEETFLOW_BENCH_SECONDS", "30").parse().unwrap();
    let input = lines(&generated_input(bin, events, vehicles, "1"));
    let broker = KafkaBroker::start();
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();

    // (a) Maximum sustained rate from Kafka into the lake.
    broker.create_topic("fill", 4);
    let t = Instant::now();
    let n = produce_events(
        &brokers,
        "fill",
        None,
        input.iter().map(|l| (key_of(l), l.as_bytes().to_vec())),
        |_| {},
    )
    .unwrap();
    let produce_s = t.elapsed().as_secs_f64();
    let f = run(bin, &job(dir.path(), &brokers, "fill", true));
    println!(
        "(a) {n} events produced in {produce_s:.1}s ({:.0}/s); job read them into the lake at {} events/s (whole run), {} events/s after start-up, peak RSS {} MiB",
        n as f64 / produce_s,
        f.events_per_s,
        f.processing_events_per_s,
        f.peak_mib
    );

    // (b) Produce -> visible in the API at a steady rate.
    broker.create_topic("live", 4);
    let spec = job(dir.path(), &brokers, "live", false);
    let (mut child, addr, _rest) = spawn_with_api(dir.path(), &["run", spec.to_str().unwrap()]);
    let sampled: Vec<String> = (0..20).map(|i| format!("V{:05}", i * 7)).collect();
    let sent: Arc<Mutex<HashMap<(String, i64), Instant>>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (sent, done, addr, sampled) =
            (sent.clone(), done.clone(), addr.clone(), sampled.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut last: HashMap<String, i64> = HashMap::new();
            while !done.load(Relaxed) {
                for v in &sampled {
                    let (status, body) = http_get(&addr, &format!("/v1/vehicles/{v}"));
                    if status != 200 {
                        continue;
                    }
                    let seen = Instant::now();
                    let Some(ts) = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|j| j["ts"].as_i64())
                    else {
                        continue;
                    };
                    if last.get(v) == Some(&ts) {
                        continue;
                    }
                    last.insert(v.clone(), ts);
                    if let Some(at) = sent.lock().unwrap().remove(&(v.clone(), ts)) {
                        latencies.push(seen.duration_since(at).as_secs_f64() * 1000.0);
                    }
                }
            }
            latencies
        })
    };
    let total = (rate * seconds) as usize;
    let sent_p = sent.clone();
    let sampled_p = sampled.clone();
    let t = Instant::now();
    let n = produce_events(
        &brokers,
        "live",
        Some(rate),
        input.iter().cycle().take(total).map(move |l| {
            let key = key_of(l);
            if let Some(k) = key.as_ref().filter(|k| sampled_p.contains(k)) {
                if let Some(ts) = serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|j| j["ts"].as_i64())
                {
                    sent_p
                        .lock()
                        .unwrap()
                        .insert((k.clone(), ts), Instant::now());
                }
            }
            (key, l.as_bytes().to_vec())
        }),
        |_| {},
    )
    .unwrap();
    let achieved = n as f64 / t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Relaxed);
    let mut lat = poller.join().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        println!("(b) no latency samples");
        return;
    }
    println!(
        "(b) {n} events at {achieved:.0} events/s for {seconds}s: produce -> visible in GET /v1/vehicles/{{id}} p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
}
