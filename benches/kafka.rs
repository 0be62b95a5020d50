//! Kafka into the lake against a real broker process (tansu, as `.ci/run` installs it; or
//! `FLEETFLOW_TANSU`):
//!
//! (a) the maximum sustained rate: the topic (4 partitions) is filled first, then a bounded
//!     job (2 workers, every tier, local lake) reads it to the end; events/s over the
//!     job's whole run (3M events by default; the consumers' start — joining, metadata,
//!     first fetches — takes most of a second of it);
//! (b) end-to-end latency at a steady rate: an unbounded job runs while this bench
//!     produces, into a topic of `FLEETFLOW_BENCH_LIVE_PARTITIONS` partitions (default 1:
//!     tansu's memory storage lists every batch a partition holds on every fetch of it, and
//!     a producer lingering 5 ms adds a batch per partition every 5 ms whatever the rate,
//!     so the broker's work grows with the partitions and the run's length; one partition
//!     carries the default rate, and the job's other worker gets its share of the
//!     vehicles through the exchange; figures in docs/benchmarks.md), at `FLEETFLOW_BENCH_RATE` events/s (default 20,000) for
//!     `FLEETFLOW_BENCH_SECONDS` (default 30), from `rate * 5` vehicles reporting every 5 s
//!     (event time keeps pace with the wall clock), after producing the first 30 s of event
//!     time at once (the allowed lateness: so the job measured is in its steady state,
//!     finalizing fixes, writing the lake and checkpointing 30 s of pending fixes);
//!     `FLEETFLOW_BENCH_SAMPLED` vehicles (default 80) are polled through
//!     `GET /v1/vehicles/{id}` and each fix's latency is the time from handing it to the
//!     producer to seeing its `ts` there (p50/p99); every fix is also followed through
//!     `GET /v1/stream?topics=vehicles` (an upper bound on when it became visible there,
//!     over every fix rather than a sample).
//!
//!     cargo bench --bench kafka
//!
//! Both run against tansu with its in-memory storage, against tansu with sqlite storage
//! (what the tests use: durable across a broker restart, but it serves fetches slowly), and
//! against librdkafka's mock cluster (in this process), which tells the job's own limits
//! from the broker's. Select with `FLEETFLOW_BENCH_BROKER=tansu-memory,tansu,mock`.
//!
//! Environment: `FLEETFLOW_BENCH_EVENTS` (default 3000000), `FLEETFLOW_BENCH_VEHICLES`
//! (default 10000), `FLEETFLOW_BENCH_LAKE` (extra lines of the job's `[lake]` table, e.g.
//! `checkpoint_interval = "1m"`), `FLEETFLOW_BENCH_SOURCE` (extra lines of `[source]`, e.g.
//! `options = { "fetch.wait.max.ms" = "5" }`), `FLEETFLOW_BENCH_ONLY` (`a` or `b`: one of
//! the two).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{env_or, generated_input, run};
use fleetflow_connectors::kafka::produce_events;
use fleetflow_connectors::kafka::rdkafka::mocking::MockCluster;
use harness::{interrupt, spawn_with_api, KafkaBroker, KeepAlive, Sse};
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

/// The `ts` of an input line or of a vehicle in a stream message (the first `"ts":` from
/// `from`).
fn ts_of(text: &str, from: usize) -> Option<i64> {
    let at = text.get(from..)?.find("\"ts\":")? + from + 5;
    let end = text[at..]
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .map_or(text.len(), |e| e + at);
    text[at..end].parse().ok()
}

/// What [`follow_stream`] saw.
#[derive(Default)]
struct Followed {
    /// When each fix (vehicle, `ts`) was first seen in a `vehicle` change.
    seen: HashMap<(String, i64), Instant>,
    /// Connections made (a stream that ends early is resumed from its last id).
    connections: usize,
    /// Times the server said the client read too slowly.
    lagged: usize,
}

/// Follows `GET /v1/stream?topics=vehicles` until `done`, resuming with `Last-Event-ID`
/// (as a dashboard does) whenever the stream ends early. `expected`: about how many fixes
/// (the map of them never grows, which would stall the reading while it is copied).
fn follow_stream(addr: &str, done: &AtomicBool, expected: usize) -> Followed {
    use std::io::BufRead;
    let mut f = Followed {
        seen: HashMap::with_capacity(expected),
        ..Followed::default()
    };
    let mut last_id: Option<String> = None;
    while !done.load(Relaxed) {
        f.connections += 1;
        let mut r = Sse::open(addr, "/v1/stream?topics=vehicles", last_id.as_deref())
            .into_lines(Duration::from_millis(100));
        let mut line = String::new();
        while !done.load(Relaxed) {
            match r.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                // A timeout keeps what was read of the line.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            }
            let now = Instant::now();
            if let Some(id) = line.strip_prefix("id: ") {
                last_id = Some(id.trim_end().to_string());
            } else if line.trim_end() == "event: lagged" {
                f.lagged += 1;
            } else if let Some(data) = line.strip_prefix("data: ") {
                if data.starts_with("{\"type\":\"vehicle\"") {
                    if let Some(at) = data.find("\"vehicle\":{") {
                        if let (Some(k), Some(ts)) = (key_of(&data[at..]), ts_of(data, at)) {
                            f.seen.entry((k, ts)).or_insert(now);
                        }
                    }
                }
            }
            line.clear();
        }
    }
    f
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
            "name = \"{topic}\"\nworkers = 2\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nbounded = {bounded}\n{}\n[lake]\nurl = \"file://{}\"\n{}\n[api]\nlisten = \"127.0.0.1:0\"\n",
            env_or("FLEETFLOW_BENCH_SOURCE", ""),
            dir.join(format!("lake-{topic}")).display(),
            env_or("FLEETFLOW_BENCH_LAKE", "")
        ),
    )
    .unwrap();
    path
}

/// The broker under test.
enum Broker {
    Tansu(KafkaBroker, Storage),
    Mock(
        MockCluster<
            'static,
            fleetflow_connectors::kafka::rdkafka::producer::DefaultProducerContext,
        >,
    ),
}

impl Broker {
    fn name(&self) -> &'static str {
        match self {
            Broker::Tansu(_, Storage::Sqlite) => "tansu 0.6 (sqlite)",
            Broker::Tansu(_, Storage::Memory) => "tansu 0.6 (memory)",
            Broker::Mock(_) => "librdkafka mock cluster",
        }
    }

    fn brokers(&self) -> String {
        match self {
            Broker::Tansu(b, _) => b.brokers(),
            Broker::Mock(m) => m.bootstrap_servers(),
        }
    }

    /// Creates a topic of `partitions` partitions on tansu. The mock cluster keeps at most
    /// 100,000 messages or 5 MB per partition (it drops the oldest), so there the topic has
    /// at least one partition per 25,000 events.
    fn create_topic(&self, name: &str, events: usize, partitions: usize) {
        match self {
            Broker::Tansu(b, _) => b.create_topic(name, partitions as u32),
            Broker::Mock(m) => m
                .create_topic(name, events.div_ceil(25_000).max(partitions) as i32, 1)
                .unwrap(),
        }
    }
}

/// Tansu's storage engine.
#[derive(Clone, Copy, PartialEq)]
enum Storage {
    Sqlite,
    Memory,
}

/// Tansu's in-memory storage can answer a partition's end offset (`ListOffsets`, latest)
/// short of the last record batch (seen: 247,821 of 250,000 messages), so a bounded job
/// would stop before its last events. One more message per partition, in a batch of its
/// own, moves that end past every event; the job may read it too (a malformed line).
fn close_batches(brokers: &str, topic: &str, partitions: i32) {
    use fleetflow_connectors::kafka::rdkafka::config::ClientConfig;
    use fleetflow_connectors::kafka::rdkafka::producer::{
        BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
    };
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for p in 0..partitions {
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(p)
                    .payload("end of the bench's events"),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Seconds of event time (b) produces at once before its measured part: the job's
/// allowed lateness (its default, 30 s), so that from the first measured second the
/// watermark advances and the job does all its steady work: fixes become final, the
/// lake's files are written, and every checkpoint holds the lateness's worth of pending
/// fixes. Without it the first 30 s would measure a job that only updates vehicle state.
const BACKFILL_S: u64 = 30;

/// Vehicle -> its fixes sent and not yet seen: (ts, when handed to the producer).
type Outstanding = HashMap<String, Vec<(i64, Instant)>>;

/// Produces `lines` to `topic` as fast as the broker takes them, keyed by vehicle.
fn produce_all(brokers: &str, topic: &str, lines: &[String]) -> u64 {
    let events = lines.iter().map(|l| (key_of(l), l.as_bytes().to_vec()));
    produce_events(brokers, topic, None, events, |_| {}).unwrap()
}

/// Waits until the job at `addr` has read `n` events (its `fleetflow_events_in_total`).
fn wait_for_events(addr: &str, n: u64) {
    let mut client = KeepAlive::connect(addr);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, text) = client.get("/metrics");
        let read = text
            .lines()
            .find_map(|l| l.strip_prefix("fleetflow_events_in_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if read.is_some_and(|r| r >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the job read {read:?} of the {n} backfilled events in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_fleetflow");
    let events: u64 = env_or("FLEETFLOW_BENCH_EVENTS", "3000000").parse().unwrap();
    let vehicles: u64 = env_or("FLEETFLOW_BENCH_VEHICLES", "10000").parse().unwrap();
    let rate: u64 = env_or("FLEETFLOW_BENCH_RATE", "20000").parse().unwrap();
    let seconds: u64 = env_or("FLEETFLOW_BENCH_SECONDS", "30").parse().unwrap();
    let input = lines(&generated_input(bin, events, vehicles, "1"));
    // (b) is real time: `rate` events/s are `rate * 5` vehicles reporting every 5 s, so event
    // time advances as fast as the wall clock (as it would in production). The first
    // `BACKFILL_S` s of event time are produced at once, before the measured part.
    let steady = lines(&generated_input(
        bin,
        rate * (BACKFILL_S + seconds),
        rate * 5,
        "1",
    ));
    let which = env_or("FLEETFLOW_BENCH_BROKER", "tansu-memory,tansu,mock");
    for name in which.split(',') {
        let broker = match name {
            "tansu" => Broker::Tansu(KafkaBroker::start(), Storage::Sqlite),
            "tansu-memory" => {
                Broker::Tansu(KafkaBroker::start_with("memory://tansu/"), Storage::Memory)
            }
            "mock" => Broker::Mock(MockCluster::new(1).unwrap()),
            other => panic!("FLEETFLOW_BENCH_BROKER: unknown broker {other}"),
        };
        println!("broker: {}", broker.name());
        bench(bin, &broker, &input, &steady, rate);
    }
}

fn bench(bin: &str, broker: &Broker, input: &[String], steady: &[String], rate: u64) {
    let dir = tempfile::tempdir().unwrap();

    let only = env_or("FLEETFLOW_BENCH_ONLY", "ab");
    if only.contains('a') {
        sustained(bin, broker, dir.path(), input);
    }
    if only.contains('b') {
        latency(broker, dir.path(), steady, rate);
    }
}

/// (a) Maximum sustained rate from Kafka into the lake.
fn sustained(bin: &str, broker: &Broker, dir: &std::path::Path, input: &[String]) {
    let brokers = broker.brokers();
    broker.create_topic("fill", input.len(), 4);
    let t = Instant::now();
    let n = produce_all(&brokers, "fill", input);
    let produce_s = t.elapsed().as_secs_f64();
    if matches!(broker, Broker::Tansu(_, Storage::Memory)) {
        close_batches(&brokers, "fill", 4);
    }
    let f = run(bin, &job(dir, &brokers, "fill", true));
    println!(
        "(a) {n} events produced in {produce_s:.1}s ({:.0}/s); job read them into the lake at {} events/s (whole run), {} events/s after start-up, peak RSS {} MiB; {}",
        n as f64 / produce_s,
        f.events_per_s,
        f.processing_events_per_s,
        f.peak_mib,
        f.rows
    );
    println!("    {}", f.counts);
    // Every event, and for tansu's memory storage the closing messages it may read too.
    let closing = f.count("malformed=");
    assert!(
        f.count("events") == n + closing && closing <= 4,
        "the job read every event produced"
    );
}

/// (b) Produce -> visible in the API at a steady rate.
fn latency(broker: &Broker, dir: &std::path::Path, steady: &[String], rate: u64) {
    let brokers = broker.brokers();
    let partitions = env_or("FLEETFLOW_BENCH_LIVE_PARTITIONS", "1")
        .parse()
        .unwrap();
    broker.create_topic("live", steady.len(), partitions);
    let spec = job(dir, &brokers, "live", false);
    let (child, addr, rest) = spawn_with_api(dir, &["run", spec.to_str().unwrap()]);
    let (backfill, steady) = steady.split_at((rate * BACKFILL_S) as usize);
    let filled = produce_all(&brokers, "live", backfill);
    wait_for_events(&addr, filled);
    // `FLEETFLOW_BENCH_SAMPLED` sampled vehicles (default 80: about 430 fixes in 30 s),
    // polled by 4 threads while one of their fixes is on its way (so the polling, every
    // `FLEETFLOW_BENCH_POLL_MS` (default 1), adds about that much to a latency: 80 vehicles
    // cost about 700 requests/s; 400 cost 3,700/s, which loads two cores enough to raise
    // every p99 several times over); fixes handed to the producer in the first
    // `FLEETFLOW_BENCH_WARMUP` s (default 3; the job's consumer connecting) are not counted.
    let sample: usize = env_or("FLEETFLOW_BENCH_SAMPLED", "80").parse().unwrap();
    let sampled: Vec<String> = (0..sample)
        .map(|i| format!("V{:05}", (i * 7) % (rate as usize * 5)))
        .collect();
    let sent: Arc<Mutex<Outstanding>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let warm_up = t + Duration::from_secs(env_or("FLEETFLOW_BENCH_WARMUP", "3").parse().unwrap());
    let poll_every = Duration::from_millis(env_or("FLEETFLOW_BENCH_POLL_MS", "1").parse().unwrap());
    let pollers: Vec<_> = sampled
        .chunks(sample.div_ceil(4).max(1))
        .map(|mine| {
            let (sent, done, addr, mine) =
                (sent.clone(), done.clone(), addr.clone(), mine.to_vec());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut client = KeepAlive::connect(&addr);
                while !done.load(Relaxed) {
                    for v in &mine {
                        if sent.lock().unwrap().get(v).is_none_or(Vec::is_empty) {
                            continue;
                        }
                        let (status, body) = client.get(&format!("/v1/vehicles/{v}"));
                        let seen = Instant::now();
                        let ts = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|j| j["ts"].as_i64());
                        let (200, Some(ts)) = (status, ts) else {
                            continue;
                        };
                        // The fix shown is visible; older ones were overtaken unseen.
                        let mut sent = sent.lock().unwrap();
                        let pending = sent.get_mut(v).expect("checked");
                        if let Some(&(_, at)) = pending.iter().find(|(t, _)| *t == ts) {
                            if at >= warm_up {
                                latencies.push(seen.duration_since(at).as_secs_f64() * 1000.0);
                            }
                        }
                        pending.retain(|(t, _)| *t > ts);
                    }
                    std::thread::sleep(poll_every);
                }
                latencies
            })
        })
        .collect();
    // Every fix, through the change stream a dashboard subscribes to (its messages follow
    // the change to the state `GET /v1/vehicles/{id}` reads: an upper bound on when a fix
    // became visible there, over every fix rather than a sample).
    let stream = {
        let (addr, done, expected) = (addr.clone(), done.clone(), steady.len());
        std::thread::spawn(move || follow_stream(&addr, &done, expected))
    };
    // Every fix as handed to the producer: (vehicle, ts, when).
    let mut every: Vec<(String, i64, Instant)> = Vec::with_capacity(steady.len());
    let every_p = &mut every;
    let sent_p = sent.clone();
    let sampled_p: std::collections::HashSet<String> = sampled.iter().cloned().collect();
    let n = produce_events(
        &brokers,
        "live",
        Some(rate),
        steady.iter().map(move |l| {
            let key = key_of(l);
            if let (Some(k), Some(ts)) = (key.as_ref(), ts_of(l, 0)) {
                let now = Instant::now();
                if sampled_p.contains(k) {
                    sent_p
                        .lock()
                        .unwrap()
                        .entry(k.clone())
                        .or_default()
                        .push((ts, now));
                }
                every_p.push((k.clone(), ts, now));
            }
            (key, l.as_bytes().to_vec())
        }),
        |_| {},
    )
    .unwrap();
    let achieved = n as f64 / t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Relaxed);
    let mut lat: Vec<f64> = pollers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let followed = stream.join().unwrap();
    let (mut all, mut unseen) = (Vec::new(), 0usize);
    // The same by the second the fix was produced in, to tell a steady tail from bursts
    // (a checkpoint every 10 s, the broker's work growing with the topic).
    let mut by_second: Vec<Vec<f64>> = Vec::new();
    for (k, ts, at) in every {
        if at < warm_up {
            continue;
        }
        match followed.seen.get(&(k, ts)) {
            Some(s) => {
                let ms = s.saturating_duration_since(at).as_secs_f64() * 1000.0;
                let second = at.duration_since(t).as_secs() as usize;
                by_second.resize_with(by_second.len().max(second + 1), Vec::new);
                by_second[second].push(ms);
                all.push(ms);
            }
            None => unseen += 1,
        }
    }
    all.sort_by(f64::total_cmp);
    let per_second: Vec<String> = by_second
        .iter_mut()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(second, l)| {
            l.sort_by(f64::total_cmp);
            format!("{second}:{:.0}", percentile(l, 0.99))
        })
        .collect();
    let log = interrupt(child, rest);
    let job_line = |prefix: &str| {
        log.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or(prefix)
            .to_string()
    };
    let (job_latency, delivery) = (job_line("latency"), job_line("delivery"));
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        println!("(b) no latency samples");
        return;
    }
    println!(
        "(b) {n} events from {} vehicles at {achieved:.0} events/s, after {filled} at once ({BACKFILL_S} s of event time): produce -> visible in GET /v1/vehicles/{{id}} p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        rate * 5,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    let stream_note = format!(
        "{} connection(s), lagged {} time(s)",
        followed.connections, followed.lagged
    );
    if all.is_empty() {
        println!("    every fix via /v1/stream: none seen ({stream_note})");
    } else {
        println!(
            "    every fix via /v1/stream: p50 {:.1} ms, p99 {:.1} ms ({} fixes after the warm-up, {unseen} not seen; {stream_note})",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.len(),
        );
        println!(
            "    its p99 by the second produced in (s:ms): {}",
            per_second.join(" ")
        );
    }
    // The job's histograms cover its whole run: the backfill, read as fast as it could be,
    // waited in the topic, and its vehicles' updates came in large batches.
    println!("    the job's own, over its whole run (the backfill included):\n      {delivery}\n      {job_latency}");
}
