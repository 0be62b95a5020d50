//! Kafka into the lake against Apache Kafka 4.4 (a single-node KRaft broker started from the
//! jars `scripts/setup` resolves, tests/common/kafka.rs) and librdkafka's mock cluster:
//!
//! (a) the maximum sustained rate: the topic (4 partitions) is filled first, then a bounded
//!     job (2 workers, every tier, local lake) reads it to the end; events/s over the
//!     job's whole run (3M events by default; the consumers' start — joining, metadata,
//!     first fetches — takes most of a second of it);
//! (b) end-to-end latency at a steady rate: an unbounded job runs while this bench
//!     produces, into a topic of `FLEETFLOW_BENCH_LIVE_PARTITIONS` partitions (default 4),
//!     at `FLEETFLOW_BENCH_RATE` events/s (default 50,000) for `FLEETFLOW_BENCH_SECONDS`
//!     (default 600), from `FLEETFLOW_BENCH_FLEET` vehicles (default `rate * 5`, each
//!     reporting every 5 s; a fixed fleet reports more often at a higher rate; event time
//!     keeps pace with the wall clock), after producing the first 30 s of event time at once (the
//!     allowed lateness: so the job measured is in its steady state, finalizing fixes,
//!     writing the lake and checkpointing 30 s of pending fixes); `FLEETFLOW_BENCH_SAMPLED`
//!     vehicles (default 80) are polled through `GET /v1/vehicles/{id}` and each fix's
//!     latency is the time from handing it to the producer to seeing its `ts` there; with
//!     `FLEETFLOW_BENCH_FOLLOW=1` every fix is also followed through
//!     `GET /v1/stream?topics=vehicles` (an upper bound on when it became visible there,
//!     over every fix rather than a sample; off by default: that reader parses all 50,000
//!     changes/s on the cores the job and the broker share, so it weighs on the GET figure
//!     the target is about; run it as a measurement of its own). Reported: p50
//!     and p99 over the run, the p99 of every minute (of every second, for the stream), the
//!     job's RSS at the end of every minute (sampled from `/proc` every second), and the
//!     largest checkpoint size and consumer lag of every minute (its `/metrics`).
//!
//!     cargo bench --bench kafka
//!
//! The mock cluster (in this process) tells the job's own limits from the broker's. Select
//! with `FLEETFLOW_BENCH_BROKER=kafka,mock` (the default).
//!
//! Environment: `FLEETFLOW_BENCH_EVENTS` (default 3000000), `FLEETFLOW_BENCH_VEHICLES`
//! (default 10000), `FLEETFLOW_BENCH_LAKE` (extra lines of the job's `[lake]` table, e.g.
//! `checkpoint_interval = "1m"`), `FLEETFLOW_BENCH_SOURCE` (extra lines of `[source]`, e.g.
//! `options = { "fetch.wait.max.ms" = "5" }`), `FLEETFLOW_BENCH_ONLY` (`a` or `b`: one of
//! the two), `FLEETFLOW_BENCH_FOLLOW` (`1`: (b) also follows the stream, see above),
//! `FLEETFLOW_BENCH_JOB_LOG` (a file for (b)'s job log; with
//! `RUST_LOG=fleetflow::slow=debug` it names every operator invocation over 50 ms, or
//! `FLEETFLOW_SLOW_MS`), `FLEETFLOW_BENCH_SETTLE` (how many seconds in a row (b)'s job must
//! keep up before the measured part begins; default 10).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{env_or, generated_input, generated_input_every, run};
use fleetflow_connectors::kafka::produce_events;
use fleetflow_connectors::kafka::rdkafka::mocking::MockCluster;
use harness::kafka::KafkaBroker;
use harness::{interrupt, spawn_with_api, KeepAlive, Sse};
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `ts` of an input line or of a vehicle in a stream message (the first `"ts":` from
/// `from`).
fn ts_of(text: &str, from: usize) -> Option<i64> {
    let at = text.get(from..)?.find("\"ts\":")? + from + 5;
    let end = text[at..]
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .map_or(text.len(), |e| e + at);
    text[at..end].parse().ok()
}

/// Vehicle -> its fixes handed to the producer and not yet seen: (`ts`, when handed over).
type Outstanding = HashMap<String, Vec<(i64, Instant)>>;

/// Records that the fix `ts` of `vehicle` was handed to the producer at `at`.
fn handed_over(outstanding: &Mutex<Outstanding>, vehicle: &str, ts: i64, at: Instant) {
    outstanding
        .lock()
        .unwrap()
        .entry(vehicle.to_string())
        .or_default()
        .push((ts, at));
}

/// Takes the fixes of `vehicle` up to `ts` off `outstanding` (a fix shown overtakes older
/// ones, which are then never shown): when the fix `ts` itself was handed over, if it was,
/// and how many older ones it overtook.
fn seen(outstanding: &mut Outstanding, vehicle: &str, ts: i64) -> (Option<Instant>, usize) {
    let Some(pending) = outstanding.get_mut(vehicle) else {
        return (None, 0);
    };
    let at = pending.iter().find(|(t, _)| *t == ts).map(|(_, at)| *at);
    let before = pending.len();
    pending.retain(|(t, _)| *t > ts);
    let taken = before - pending.len();
    (at, taken - usize::from(at.is_some()))
}

/// What [`follow_stream`] saw.
#[derive(Default)]
struct Followed {
    /// Latencies (ms) of the fixes seen in a `vehicle` change, by the second (since the
    /// measured part began) they were handed to the producer in; fixes handed over before
    /// it are not counted.
    by_second: Vec<Vec<f32>>,
    /// Fixes never shown because a newer fix of the same vehicle was shown first.
    overtaken: usize,
    /// Connections made (a stream that ends early is resumed from its last id).
    connections: usize,
    /// Times the server said the client read too slowly.
    lagged: usize,
}

/// Follows `GET /v1/stream?topics=vehicles` until `done`, resuming with `Last-Event-ID`
/// (as a dashboard does) whenever the stream ends early, and takes every fix it shows off
/// `outstanding` (by the second from `t` it was handed over in).
fn follow_stream(
    addr: &str,
    done: &AtomicBool,
    outstanding: &Mutex<Outstanding>,
    t: Instant,
) -> Followed {
    use std::io::BufRead;
    let mut f = Followed::default();
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
                            let (sent, overtaken) = seen(&mut outstanding.lock().unwrap(), &k, ts);
                            f.overtaken += overtaken;
                            if let Some(sent) = sent.filter(|s| *s >= t) {
                                let second = sent.duration_since(t).as_secs() as usize;
                                f.by_second
                                    .resize_with(f.by_second.len().max(second + 1), Vec::new);
                                f.by_second[second].push(
                                    now.saturating_duration_since(sent).as_secs_f32() * 1000.0,
                                );
                            }
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
    Kafka(KafkaBroker),
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
            Broker::Kafka(_) => "Apache Kafka 4.4 (KRaft, one node)",
            Broker::Mock(_) => "librdkafka mock cluster",
        }
    }

    fn brokers(&self) -> String {
        match self {
            Broker::Kafka(b) => b.brokers(),
            Broker::Mock(m) => m.bootstrap_servers(),
        }
    }

    /// Creates a topic of `partitions` partitions. The mock cluster keeps at most 100,000
    /// messages or 5 MB per partition (it drops the oldest), so there the topic has at
    /// least one partition per 25,000 of the `events` it must hold at once.
    fn create_topic(&self, name: &str, events: usize, partitions: usize) {
        match self {
            Broker::Kafka(b) => b.create_topic(name, partitions as u32),
            Broker::Mock(m) => m
                .create_topic(name, events.div_ceil(25_000).max(partitions) as i32, 1)
                .unwrap(),
        }
    }
}

/// Seconds of event time (b) produces at once before its measured part: the job's
/// allowed lateness (its default, 30 s), so that from the first measured second the
/// watermark advances and the job does all its steady work: fixes become final, the
/// lake's files are written, and every checkpoint holds the lateness's worth of pending
/// fixes. Without it the first 30 s would measure a job that only updates vehicle state.
const BACKFILL_S: u64 = 30;

/// Produces `lines` to `topic` as fast as the broker takes them, keyed by vehicle.
fn produce_all<S: AsRef<str>>(brokers: &str, topic: &str, lines: impl Iterator<Item = S>) -> u64 {
    let events = lines.map(|l| (key_of(l.as_ref()), l.as_ref().as_bytes().to_vec()));
    produce_events(brokers, topic, None, events, |_| {}).unwrap()
}

/// The lines of a generated input, read as they are needed (the steady run's input does
/// not fit in memory).
fn lines_of(path: &std::path::Path) -> impl Iterator<Item = String> {
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
    let rate: u64 = env_or("FLEETFLOW_BENCH_RATE", "50000").parse().unwrap();
    let seconds: u64 = env_or("FLEETFLOW_BENCH_SECONDS", "600").parse().unwrap();
    let only = env_or("FLEETFLOW_BENCH_ONLY", "ab");
    let input: Vec<String> = if only.contains('a') {
        lines_of(&generated_input(bin, events, vehicles, "1")).collect()
    } else {
        Vec::new()
    };
    // (b) is real time: `rate` events/s are `fleet` vehicles reporting every `fleet / rate`
    // s (by default `rate * 5` vehicles every 5 s), so event
    // time advances as fast as the wall clock (as it would in production). The first
    // `BACKFILL_S` s of event time are produced at once, before the measured part.
    let fleet: u64 = env_or("FLEETFLOW_BENCH_FLEET", &(rate * 5).to_string())
        .parse()
        .unwrap();
    let steady = if only.contains('b') {
        generated_input_every(
            bin,
            rate * (BACKFILL_S + seconds),
            fleet,
            "1",
            fleet * 1000 / rate,
        )
    } else {
        std::path::PathBuf::new()
    };
    let which = env_or("FLEETFLOW_BENCH_BROKER", "kafka,mock");
    for name in which.split(',') {
        let broker = match name {
            "kafka" => Broker::Kafka(KafkaBroker::start()),
            "mock" => Broker::Mock(MockCluster::new(1).unwrap()),
            other => panic!("FLEETFLOW_BENCH_BROKER: unknown broker {other}"),
        };
        println!("broker: {}", broker.name());
        bench(bin, &broker, &input, &steady, (rate, fleet), seconds);
    }
}

fn bench(
    bin: &str,
    broker: &Broker,
    input: &[String],
    steady: &std::path::Path,
    rate: (u64, u64),
    seconds: u64,
) {
    let dir = tempfile::tempdir().unwrap();

    let only = env_or("FLEETFLOW_BENCH_ONLY", "ab");
    if only.contains('a') {
        sustained(bin, broker, dir.path(), input);
    }
    if only.contains('b') {
        latency(broker, dir.path(), steady, rate, seconds);
    }
}

/// (a) Maximum sustained rate from Kafka into the lake.
fn sustained(bin: &str, broker: &Broker, dir: &std::path::Path, input: &[String]) {
    let brokers = broker.brokers();
    broker.create_topic("fill", input.len(), 4);
    let t = Instant::now();
    let n = produce_all(&brokers, "fill", input.iter());
    let produce_s = t.elapsed().as_secs_f64();
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
    assert_eq!(f.count("events"), n, "the job read every event produced");
}

/// The job's resident set size, KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What (b) samples of the job every second.
struct Gauges {
    rss_kib: u64,
    checkpoint_bytes: u64,
    lag: u64,
    /// Fixes delivered (Kafka timestamp -> read by the job) within 50 ms, and all.
    delivery: (u64, u64),
    /// Fixes visible (read -> in the API's view) within 50 ms, and all.
    visible: (u64, u64),
}

/// Of the Prometheus histogram `name` in `text`: the observations at or below the bucket
/// bound `le` (seconds, as written), and all of them.
fn histogram_at(text: &str, name: &str, le: &str) -> (u64, u64) {
    let bucket = format!("{name}_bucket{{le=\"{le}\"}}");
    let below = text
        .lines()
        .find_map(|l| l.strip_prefix(&bucket)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (below as u64, metric(text, &format!("{name}_count")))
}

/// From the gauges sampled every second, beginning at sample `from`: the share of a
/// histogram's observations (`f`: within the bound, all) over the bound in each minute, %.
fn share_over_by_minute(gauges: &[Gauges], from: usize, f: fn(&Gauges) -> (u64, u64)) -> String {
    let mut prev = from
        .checked_sub(1)
        .and_then(|i| gauges.get(i))
        .map_or((0, 0), f);
    gauges[from.min(gauges.len())..]
        .chunks(60)
        .enumerate()
        .map(|(minute, c)| {
            let last = c.last().map_or(prev, f);
            let below = last.0.saturating_sub(prev.0);
            let all = last.1.saturating_sub(prev.1);
            prev = last;
            let share = 100.0 * all.saturating_sub(below) as f64 / all.max(1) as f64;
            format!("{minute}:{share:.2}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of the unlabelled metric `name` (the sum over its label sets) in a Prometheus
/// text exposition; 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `minute:p99` for latencies grouped by the second they were handed over in.
fn p99_by_minute(by_second: &[Vec<f32>]) -> String {
    by_second
        .chunks(60)
        .enumerate()
        .filter_map(|(minute, seconds)| {
            let mut l: Vec<f64> = seconds.iter().flatten().map(|&ms| f64::from(ms)).collect();
            (!l.is_empty()).then(|| {
                l.sort_by(f64::total_cmp);
                format!("{minute}:{:.0}", percentile(&l, 0.99))
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// (b) Produce -> visible in the API at a steady rate.
fn latency(
    broker: &Broker,
    dir: &std::path::Path,
    steady: &std::path::Path,
    (rate, fleet): (u64, u64),
    seconds: u64,
) {
    let brokers = broker.brokers();
    let partitions = env_or("FLEETFLOW_BENCH_LIVE_PARTITIONS", "4")
        .parse()
        .unwrap();
    // The mock cluster must hold what the job has not read yet: a few seconds' worth.
    broker.create_topic("live", (rate * 10) as usize, partitions);
    let spec = job(dir, &brokers, "live", false);
    let (child, addr, rest) = spawn_with_api(dir, &["run", spec.to_str().unwrap()]);
    let mut input = lines_of(steady);
    let filled = produce_all(
        &brokers,
        "live",
        input.by_ref().take((rate * BACKFILL_S) as usize),
    );
    wait_for_events(&addr, filled);
    // `FLEETFLOW_BENCH_SAMPLED` sampled vehicles (default 80: each reports every 5 s),
    // polled by 4 threads while one of their fixes is on its way (so the polling, every
    // `FLEETFLOW_BENCH_POLL_MS` (default 1), adds about that much to a latency: 80 vehicles
    // cost about 700 requests/s; 400 cost 3,700/s, which loads two cores enough to raise
    // every p99 several times over). The measured part begins once the job has caught up
    // with the backfill: its consumer lag below 50 ms of input for `FLEETFLOW_BENCH_SETTLE`
    // s in a row (default 10: reading the backfill is not the end of it, its fixes become
    // final 30 s of event time later and the job falls behind again for a few seconds),
    // at least `FLEETFLOW_BENCH_WARMUP` s (default 3) in; it begins at the first of those
    // seconds. Fixes handed to the producer before are not counted, and minutes count from
    // there.
    let sample: usize = env_or("FLEETFLOW_BENCH_SAMPLED", "80").parse().unwrap();
    let sampled: Vec<String> = (0..sample)
        .map(|i| format!("V{:05}", (i * 7) % fleet as usize))
        .collect();
    let sent: Arc<Mutex<Outstanding>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let warm_up = t + Duration::from_secs(env_or("FLEETFLOW_BENCH_WARMUP", "3").parse().unwrap());
    let measured_from: Arc<OnceLock<Instant>> = Default::default();
    let settle: u32 = env_or("FLEETFLOW_BENCH_SETTLE", "10").parse().unwrap();
    let poll_every = Duration::from_millis(env_or("FLEETFLOW_BENCH_POLL_MS", "1").parse().unwrap());
    let pollers: Vec<_> = sampled
        .chunks(sample.div_ceil(4).max(1))
        .map(|mine| {
            let (sent, done, addr, mine) =
                (sent.clone(), done.clone(), addr.clone(), mine.to_vec());
            std::thread::spawn(move || {
                // (second from `t` handed over in, latency ms)
                let mut latencies: Vec<(u64, f64)> = Vec::new();
                let mut client = KeepAlive::connect(&addr);
                while !done.load(Relaxed) {
                    for v in &mine {
                        if sent.lock().unwrap().get(v).is_none_or(Vec::is_empty) {
                            continue;
                        }
                        let (status, body) = client.get(&format!("/v1/vehicles/{v}"));
                        let now = Instant::now();
                        let ts = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|j| j["ts"].as_i64());
                        let (200, Some(ts)) = (status, ts) else {
                            continue;
                        };
                        // The fix shown is visible; older ones were overtaken unseen.
                        if let (Some(at), _) = seen(&mut sent.lock().unwrap(), v, ts) {
                            if at >= t {
                                latencies.push((
                                    at.duration_since(t).as_secs(),
                                    now.duration_since(at).as_secs_f64() * 1000.0,
                                ));
                            }
                        }
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
    let every: Arc<Mutex<Outstanding>> = Default::default();
    let follow = env_or("FLEETFLOW_BENCH_FOLLOW", "0") != "0";
    let stream = follow.then(|| {
        let (addr, done, every) = (addr.clone(), done.clone(), every.clone());
        std::thread::spawn(move || follow_stream(&addr, &done, &every, t))
    });
    // The job's RSS, and its checkpoint size and consumer lag from `/metrics`, at the end
    // of every second.
    let gauges = {
        let (done, pid, addr) = (done.clone(), child.id(), addr.clone());
        let from = measured_from.clone();
        std::thread::spawn(move || {
            let mut client = KeepAlive::connect(&addr);
            let mut samples = Vec::new();
            // The first second of the current run of seconds with the job caught up.
            let mut caught_up: Option<(Instant, u32)> = None;
            while !done.load(Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let (_, metrics) = client.get("/metrics");
                let lag = metric(&metrics, "fleetflow_kafka_consumer_lag");
                caught_up = (Instant::now() >= warm_up && lag <= rate / 20).then(|| {
                    let (first, n) = caught_up.unwrap_or((Instant::now(), 0));
                    (first, n + 1)
                });
                if let Some((first, _)) = caught_up.filter(|(_, n)| *n >= settle) {
                    let _ = from.set(first);
                }
                samples.push(Gauges {
                    rss_kib: rss_kib(pid).unwrap_or(0),
                    checkpoint_bytes: metric(&metrics, "fleetflow_checkpoint_bytes"),
                    lag,
                    delivery: histogram_at(&metrics, "fleetflow_delivery_latency_seconds", "0.05"),
                    visible: histogram_at(&metrics, "fleetflow_visibility_latency_seconds", "0.05"),
                });
            }
            samples
        })
    };
    let sampled_p: std::collections::HashSet<String> = sampled.iter().cloned().collect();
    let (sent_p, every_p) = (sent.clone(), every.clone());
    let n = produce_events(
        &brokers,
        "live",
        Some(rate),
        input.take((rate * seconds) as usize).map(move |l| {
            let key = key_of(&l);
            if let (Some(k), Some(ts)) = (key.as_ref(), ts_of(&l, 0)) {
                let now = Instant::now();
                if sampled_p.contains(k) {
                    handed_over(&sent_p, k, ts, now);
                }
                if follow {
                    handed_over(&every_p, k, ts, now);
                }
            }
            (key, l.into_bytes())
        }),
        |_| {},
    )
    .unwrap();
    let achieved = n as f64 / t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Relaxed);
    let samples: Vec<(u64, f64)> = pollers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let mut followed = stream.map(|s| s.join().unwrap()).unwrap_or_default();
    let gauges = gauges.join().unwrap();
    let rss: Vec<u64> = gauges.iter().map(|g| g.rss_kib).collect();
    let unseen: usize = every.lock().unwrap().values().map(Vec::len).sum();
    let log = interrupt(child, rest);
    if let Ok(path) = std::env::var("FLEETFLOW_BENCH_JOB_LOG") {
        std::fs::write(&path, &log).unwrap();
        println!("    the job's log: {path} (its second 0 is {started_at:?} after the epoch)");
    }
    let job_line = |prefix: &str| {
        log.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or(prefix)
            .to_string()
    };
    let (job_latency, delivery) = (job_line("latency"), job_line("delivery"));
    let Some(from) = measured_from.get() else {
        println!("(b) the job never caught up with the backfill: nothing measured");
        return;
    };
    if samples.is_empty() {
        println!("(b) no latency samples");
        return;
    }
    println!(
        "(b) the job caught up with the backfill {:.0} s after the steady input began and stayed caught up (lag under 50 ms of input for {settle} s in a row); measured from there ({:.0} s)",
        from.duration_since(t).as_secs_f64(),
        (t + Duration::from_secs(seconds)).saturating_duration_since(*from).as_secs_f64()
    );
    // What was handed over before the measured part began is not counted.
    let skip = from.duration_since(t).as_secs_f64().ceil() as u64;
    let samples: Vec<(u64, f64)> = samples
        .into_iter()
        .filter(|(second, _)| *second >= skip)
        .map(|(second, ms)| (second - skip, ms))
        .collect();
    let stream_skip = followed.by_second.len().min(skip as usize);
    followed.by_second.drain(..stream_skip);
    let mut lat: Vec<f64> = samples.iter().map(|(_, ms)| *ms).collect();
    lat.sort_by(f64::total_cmp);
    let mut by_second: Vec<Vec<f32>> = Vec::new();
    for (second, ms) in &samples {
        let second = *second as usize;
        by_second.resize_with(by_second.len().max(second + 1), Vec::new);
        by_second[second].push(*ms as f32);
    }
    println!(
        "(b) {n} events from {fleet} vehicles (each every {} ms) at {achieved:.0} events/s for {seconds} s, after {filled} at once ({BACKFILL_S} s of event time): produce -> visible in GET /v1/vehicles/{{id}} p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        fleet * 1000 / rate,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    println!(
        "    its p99 by the minute produced in (minute:ms): {}",
        p99_by_minute(&by_second)
    );
    let mut all: Vec<f64> = followed
        .by_second
        .iter()
        .flatten()
        .map(|&ms| f64::from(ms))
        .collect();
    all.sort_by(f64::total_cmp);
    let stream_note = format!(
        "{} connection(s), lagged {} time(s), {} overtaken by a newer fix, {unseen} never shown",
        followed.connections, followed.lagged, followed.overtaken
    );
    if !follow {
        println!(
            "    every fix via /v1/stream: not followed (FLEETFLOW_BENCH_FOLLOW=1 follows it)"
        );
    } else if all.is_empty() {
        println!("    every fix via /v1/stream: none seen ({stream_note})");
    } else {
        println!(
            "    every fix via /v1/stream: p50 {:.1} ms, p99 {:.1} ms ({} fixes after the warm-up; {stream_note})",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.len(),
        );
        println!(
            "    its p99 by the minute produced in (minute:ms): {}",
            p99_by_minute(&followed.by_second)
        );
        if seconds <= 120 {
            let per_second: Vec<String> = followed
                .by_second
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_empty())
                .map(|(second, l)| {
                    let mut l: Vec<f64> = l.iter().map(|&ms| f64::from(ms)).collect();
                    l.sort_by(f64::total_cmp);
                    format!("{second}:{:.0}", percentile(&l, 0.99))
                })
                .collect();
            println!(
                "    its p99 by the second produced in, from the measured part's start (s:ms): {}",
                per_second.join(" ")
            );
        }
    }
    let rss_by_minute: Vec<String> = rss
        .chunks(60)
        .enumerate()
        .map(|(minute, s)| format!("{minute}:{}", s.last().copied().unwrap_or(0) / 1024))
        .collect();
    println!(
        "    the job's RSS at the end of each minute (minute:MiB): {}; min {} MiB, max {} MiB",
        rss_by_minute.join(" "),
        rss.iter().min().copied().unwrap_or(0) / 1024,
        rss.iter().max().copied().unwrap_or(0) / 1024
    );
    let by_minute = |f: fn(&Gauges) -> u64| {
        gauges
            .chunks(60)
            .enumerate()
            .map(|(minute, s)| format!("{minute}:{}", s.iter().map(f).max().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "    the job's checkpoint size, the largest of each minute (minute:bytes): {}",
        by_minute(|g| g.checkpoint_bytes)
    );
    println!(
        "    its Kafka consumer lag, the largest of each minute (minute:messages): {}",
        by_minute(|g| g.lag)
    );
    // Where a minute's slow fixes lost their time: before the job read them (the producer's
    // batching, the broker, the fetch) or in the job (read -> visible), from the job's own
    // histograms, in the measured part's minutes.
    println!(
        "    fixes over 50 ms by the minute, Kafka timestamp -> read (minute:%): {}",
        share_over_by_minute(&gauges, skip as usize, |g| g.delivery)
    );
    println!(
        "    fixes over 50 ms by the minute, read -> visible in the API (minute:%): {}",
        share_over_by_minute(&gauges, skip as usize, |g| g.visible)
    );
    if seconds <= 120 {
        let lag: Vec<String> = gauges
            .iter()
            .enumerate()
            .map(|(second, g)| format!("{}:{}", second + 1, g.lag))
            .collect();
        println!(
            "    its lag by the second, from the steady input's start (s:messages): {}",
            lag.join(" ")
        );
    }
    // The job's histograms cover its whole run: the backfill, read as fast as it could be,
    // waited in the topic, and its vehicles' updates came in large batches.
    println!("    the job's own, over its whole run (the backfill included):\n      {delivery}\n      {job_latency}");
}
