//! The Kafka source against librdkafka's mock cluster (a Kafka-protocol broker in this
//! process, on loopback): partitions over workers, the job clock beside an empty
//! partition, the dead-letter topic, and resuming from checkpointed offsets.

mod common;

use common::*;
use fleetflow_connectors::kafka::rdkafka;
use fleetflow_connectors::kafka::{describe_topic, produce_events, KafkaSource};
use fleetflow_connectors::source::Source;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::config::KafkaSourceSpec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn source_spec(brokers: &str, topic: &str) -> KafkaSourceSpec {
    KafkaSourceSpec {
        brokers: brokers.into(),
        topic: topic.into(),
        group_id: Some("fleetflow-test".into()),
        start: Default::default(),
        bounded: true,
        options: BTreeMap::new(),
    }
}

/// Produces lines keyed by their vehicle id (bad lines without a key).
fn produce(brokers: &str, topic: &str, lines: &[String]) {
    let events = lines.iter().map(|l| {
        let key = serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["vehicle_id"].as_str().map(String::from));
        (key, l.as_bytes().to_vec())
    });
    let sent = produce_events(brokers, topic, None, events, |_| {}).unwrap();
    assert_eq!(sent, lines.len() as u64);
}

/// Every message of a topic: (key, payload, headers).
type Consumed = Vec<(Option<Vec<u8>>, Vec<u8>, BTreeMap<String, String>)>;

fn consume_all(brokers: &str, topic: &str, partitions: i32) -> Consumed {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = 0;
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        ends += c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap()
            .1;
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < ends && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
    out
}

fn kafka_job(lake: &str, brokers: &str, topic: &str, extra: &str) -> String {
    format!(
        r#"name = "kafka"
workers = 2

[source]
kind = "kafka"
brokers = "{brokers}"
topic = "{topic}"
group_id = "fleetflow-test"
bounded = true

[lake]
url = "{lake}"
checkpoint_interval = "100ms"
max_file_age = "300ms"
{extra}
[api]
listen = "127.0.0.1:0"
"#
    )
}

fn file_job(lake: &str) -> String {
    format!(
        "name = \"file\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"in.ndjson\"\n[lake]\nurl = \"{lake}\"\n[api]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// A directory with `lines` in `in.ndjson`, the file job over them already run into
/// `file/`, and `kafka.toml`: a bounded job over `topic` into `kafka/`.
fn jobs(lines: &[String], brokers: &str, topic: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_lines(&dir.path().join("in.ndjson"), lines);
    std::fs::write(dir.path().join("file.toml"), file_job("file://file")).unwrap();
    std::fs::write(
        dir.path().join("kafka.toml"),
        kafka_job("file://kafka", brokers, topic, extra),
    )
    .unwrap();
    run_to_end(dir.path(), "file.toml", &[]);
    dir
}

/// Asserts that the job's consumer group holds the end offset of every partition of
/// `topic`, and that every partition has data.
fn assert_group_at_end(brokers: &str, topic: &str, partitions: i32) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "fleetflow-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for p in 0..partitions {
        let end = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap()
            .1;
        assert!(end > 0, "partition {p} has data");
        let got = committed.find_partition(topic, p).unwrap().offset();
        assert_eq!(got, Offset::Offset(end), "partition {p}");
    }
}

fn lake(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn partitions_are_spread_over_workers_and_every_worker_reads_its_own() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("spread", 5, 1).unwrap();
    let spec = source_spec(&brokers, "spread");
    let info = describe_topic(&spec).unwrap();
    assert_eq!(info.partitions, 5);
    let metrics = Arc::new(Metrics::new(vec![]));
    let mut all: Vec<u32> = Vec::new();
    for worker in 0..3 {
        let s = KafkaSource::new(&spec, "t", &info, worker, 3, metrics.clone()).unwrap();
        let mine = s.inputs();
        assert!(mine.iter().all(|p| *p as usize % 3 == worker), "{mine:?}");
        all.extend(mine);
    }
    all.sort();
    assert_eq!(
        all,
        vec![0, 1, 2, 3, 4],
        "each partition on exactly one worker"
    );
}

#[test]
fn a_kafka_job_equals_the_file_job_and_fills_the_dead_letter_topic() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("locations", 4, 1).unwrap();
    cluster.create_topic("locations-dlq", 1, 1).unwrap();
    let lines = generated_lines(60, 40, 10, 0.01, 0.01, 5);
    produce(&brokers, "locations", &lines);
    // A message whose key is not its vehicle id is rejected too.
    let good = lines
        .iter()
        .find(|l| l.contains("\"vehicle_id\":\"V00003\""))
        .unwrap()
        .clone();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to("locations")
                .key("V99999")
                .payload(good.as_str())
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = jobs(
        &lines,
        &brokers,
        "locations",
        "[dead_letter]\ntopic = \"locations-dlq\"\n",
    );
    run_to_end(dir.path(), "kafka.toml", &[]);

    // The same rows, except the one rejected for its key.
    let (a, b) = (lake(dir.path(), "file"), lake(dir.path(), "kafka"));
    assert_same_datasets(None, &a, &b, &KAFKA_VS_FILE[..4]);
    let dead = |l: &str| {
        duckdb(&format!(
            "select reason, payload, detail from delta_scan('{l}/dead_letter') order by all"
        ))
    };
    let (dead_file, dead_kafka) = (dead(&a), dead(&b));
    assert!(!dead_file.is_empty());
    let key_rejected: Vec<_> = dead_kafka
        .iter()
        .filter(|r| r[2].as_str().unwrap().contains("differs from vehicle_id"))
        .collect();
    assert_eq!(key_rejected.len(), 1, "{dead_kafka:?}");
    assert_eq!(key_rejected[0][1].as_str().unwrap(), good);
    let mut rest: Vec<_> = dead_kafka
        .iter()
        .filter(|r| !r[2].as_str().unwrap().contains("differs from vehicle_id"))
        .cloned()
        .collect();
    rest.sort_by_key(|r| r.iter().map(|v| v.to_string()).collect::<Vec<_>>());
    let mut expected = dead_file.clone();
    expected.sort_by_key(|r| r.iter().map(|v| v.to_string()).collect::<Vec<_>>());
    assert_eq!(rest, expected);

    // The dead-letter topic has every rejected message with its key, payload and origin.
    let dlq = consume_all(&brokers, "locations-dlq", 1);
    assert_eq!(dlq.len(), dead_kafka.len(), "one message per dead letter");
    let mut payloads: Vec<String> = dlq
        .iter()
        .map(|(_, p, _)| String::from_utf8(p.clone()).unwrap())
        .collect();
    payloads.sort();
    let mut lake_payloads: Vec<String> = dead_kafka
        .iter()
        .map(|r| r[1].as_str().unwrap().to_string())
        .collect();
    lake_payloads.sort();
    assert_eq!(payloads, lake_payloads);
    let (key, _, headers) = dlq.iter().find(|(_, p, _)| p == good.as_bytes()).unwrap();
    assert_eq!(key.as_deref(), Some(&b"V99999"[..]), "the original key");
    assert_eq!(headers["fleetflow-reason"], "invalid");
    assert_eq!(headers["fleetflow-topic"], "locations");
    assert_eq!(headers["fleetflow-partition"], "0");
    assert!(headers["fleetflow-offset"].parse::<u64>().is_ok());
    assert!(headers["fleetflow-detail"].contains("differs from vehicle_id"));
    for (_, _, h) in &dlq {
        assert!(["malformed", "invalid", "late", "implausible_jump"]
            .contains(&h["fleetflow-reason"].as_str()));
    }

    // The checkpointed offsets reached the consumer group: the end of every partition.
    assert_group_at_end(&brokers, "locations", 4);
}

#[test]
fn a_kafka_job_on_three_processes_reads_every_partition_once_and_equals_the_file_job() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // Six partitions for six workers: two in each of three processes.
    cluster.create_topic("clustered", 6, 1).unwrap();
    let lines = generated_lines(60, 40, 10, 0.01, 0.01, 8);
    produce(&brokers, "clustered", &lines);
    let dir = jobs(&lines, &brokers, "clustered", "");
    let hosts = cluster_hosts(dir.path(), 3);
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut cmd = command(dir.path(), "kafka.toml", &[]);
            cmd.args(["--processes", "3", "--process-index", &i.to_string()])
                .args(["--hosts", &hosts]);
            KillOnDrop(cmd.spawn().unwrap())
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "process {i}: {err}");
    }
    let (a, b) = (lake(dir.path(), "file"), lake(dir.path(), "kafka"));
    assert_same_datasets(None, &a, &b, &KAFKA_VS_FILE);
    // Process 0 committed the offsets of every partition, those the others read too.
    assert_group_at_end(&brokers, "clustered", 6);
}

#[test]
fn killed_kafka_jobs_resume_from_the_checkpointed_offsets() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("resume", 3, 1).unwrap();
    let lines = generated_lines(150, 90, 10, 0.01, 0.002, 9);
    produce(&brokers, "resume", &lines);
    let dir = jobs(&lines, &brokers, "resume", "");
    let killed = run_with_crashes(dir.path(), "kafka.toml", &[], 3);
    assert!(killed >= 5, "only {killed} kills");
    let (a, b) = (lake(dir.path(), "file"), lake(dir.path(), "kafka"));
    assert_same_datasets(None, &a, &b, &KAFKA_VS_FILE);
}

#[test]
fn an_empty_partition_holds_nothing_back_and_the_job_clock_follows_the_vehicles() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("idle", 2, 1).unwrap();
    // Data on partition 0 only; partition 1 stays empty.
    let lines = generated_lines(5, 10, 0, 0.0, 0.0, 1);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut clocks: std::collections::BTreeMap<String, i64> = Default::default();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let c = clocks
            .entry(v["vehicle_id"].as_str().unwrap().to_string())
            .or_default();
        *c = (*c).max(v["ts"].as_i64().unwrap());
        producer
            .send(BaseRecord::<str, str>::to("idle").payload(l).partition(0))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = kafka_job("file://lake", &brokers, "idle", "")
        .replace("bounded = true", "bounded = false")
        + "[time]\nidle_timeout = \"1s\"\nallowed_lateness = \"30s\"\n";
    std::fs::write(dir.path().join("job.toml"), job).unwrap();
    let (child, addr, rest) = spawn_with_api(dir.path(), &["run", "job.toml"]);
    // The job clock: the median of the vehicles' clocks (all five vote while they are
    // read: idle_timeout is processing time).
    let mut sorted: Vec<i64> = clocks.values().copied().collect();
    sorted.sort();
    let median = sorted[(sorted.len() - 1) / 2];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut clock = None;
    while Instant::now() < deadline {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        let w = body
            .lines()
            .find_map(|l| l.strip_prefix("fleetflow_job_clock_ms "))
            .and_then(|v| v.trim().parse::<i64>().ok());
        // Everything read: partition 0 has no lag left (librdkafka's statistics come
        // every second), and the empty partition 1 none either.
        let caught_up = ["0", "1"].iter().all(|p| {
            body.contains(&format!(
                "fleetflow_kafka_consumer_lag{{input=\"kafka:idle/{p}\"}} 0\n"
            ))
        });
        if w == Some(median) && caught_up {
            clock = w;
            assert!(
                body.contains(&format!(
                    "fleetflow_input_messages_total{{input=\"kafka:idle/0\"}} {}\n",
                    lines.len()
                )),
                "{body}"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    interrupt(child, rest);
    assert_eq!(
        clock,
        Some(median),
        "the job clock is the median of the vehicles' clocks, whatever partition 1 does"
    );
}

#[test]
fn a_slow_partition_is_not_idle_and_none_of_its_events_are_late() {
    // Partition 1 lives on a broker that answers every request 2.5 s late: it is silent
    // for longer than idle_timeout while it still has a backlog. Every vehicle being its
    // own clock, the faster partition 0 makes none of its events late.
    let cluster = MockCluster::new(2).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("slow", 2, 1).unwrap();
    cluster.partition_leader("slow", 0, Some(1)).unwrap();
    cluster.partition_leader("slow", 1, Some(2)).unwrap();
    let lines = generated_lines(40, 20, 0, 0.0, 0.0, 4);
    produce(&brokers, "slow", &lines);
    cluster
        .broker_round_trip_time(2, Duration::from_millis(2500))
        .unwrap();
    let dir = jobs(&lines, &brokers, "slow", "[time]\nidle_timeout = \"1s\"\n");
    run_to_end(dir.path(), "kafka.toml", &[]);
    let (a, b) = (lake(dir.path(), "file"), lake(dir.path(), "kafka"));
    assert_same_datasets(None, &a, &b, &KAFKA_VS_FILE);
}

/// Checkpoints record where the fixes not yet final begin, not the fixes: for the same
/// fleet reporting every 5 s and every 2 s (2.5 times the events per second, so 2.5 times
/// the fixes within the allowed lateness), the checkpoint of a live job that has read
/// everything is about the same size.
#[test]
fn a_checkpoint_does_not_grow_with_the_event_rate() {
    use fleetflow_types::config::GeneratorSpec;
    use fleetflow_types::time::HumanDuration;
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut sizes = Vec::new();
    for (topic, every_ms) in [("every5s", 5_000), ("every2s", 2_000)] {
        cluster.create_topic(topic, 4, 1).unwrap();
        let lines = generated_with(GeneratorSpec {
            vehicles: 2_000,
            seed: 5,
            duration: Some(HumanDuration::from_millis(120_000)),
            interval: HumanDuration::from_millis(every_ms),
            start: "2025-01-31T23:40:00Z".into(),
            ..GeneratorSpec::default()
        });
        produce(&brokers, topic, &lines);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("live.toml"),
            kafka_job("file://lake", &brokers, topic, "")
                .replace("bounded = true", "bounded = false"),
        )
        .unwrap();
        let (child, addr, rest) = spawn_with_api(dir.path(), &["run", "live.toml"]);
        let mut api = KeepAlive::connect(&addr);
        let metric = |api: &mut KeepAlive, name: &str| -> u64 {
            let (_, text) = api.get("/metrics");
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(&mut api, "fleetflow_events_in_total") < lines.len() as u64 {
            assert!(Instant::now() < deadline, "the job did not read the topic");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A checkpoint taken after everything was read (the interval is 100 ms).
        std::thread::sleep(Duration::from_millis(1_500));
        let bytes = metric(&mut api, "fleetflow_checkpoint_bytes");
        interrupt(child, rest);
        assert!(bytes > 0, "a checkpoint was taken");
        sizes.push((lines.len(), bytes));
    }
    let (slow, fast) = (sizes[0], sizes[1]);
    assert!(fast.0 as f64 > slow.0 as f64 * 2.4, "{sizes:?}");
    let ratio = fast.1 as f64 / slow.1 as f64;
    eprintln!(
        "checkpoint (events, bytes): every 5 s {slow:?}, every 2 s {fast:?}, ratio {ratio:.2}"
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "checkpoint bytes (events, bytes) at 5 s and 2 s reports: {sizes:?}, ratio {ratio:.2}"
    );
}
