//! End to end against Apache Kafka (a single-node KRaft broker, tests/common/kafka.rs):
//! `fleetflow generate --kafka` produces the stream, the job is killed with SIGKILL
//! mid-stream and restarted until done, and the broker itself is stopped and restarted
//! during a run; transactional producers commit and abort. Each time the lake must equal a
//! file-source run of the same (committed) events, and the consumer group's offsets, as
//! Kafka's own `kafka-consumer-groups` tool reports them, are at the end of every partition.

mod common;

use common::kafka::KafkaBroker;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const GENERATE: [&str; 10] = [
    "--vehicles",
    "200",
    "--duration",
    "90m",
    "--disorder",
    "10s",
    "--duplicates",
    "0.01",
    "--bad-lines",
    "0.002",
];

/// Produces the generated stream to `topic` and writes the same events to `in.ndjson`,
/// with a file job over them in `file.toml` and a bounded Kafka job in `kafka.toml`.
fn setup(dir: &Path, broker: &KafkaBroker, topic: &str) {
    broker.create_topic(topic, 4);
    let mut args = vec!["generate"];
    args.extend(GENERATE);
    let brokers = broker.brokers();
    let mut to_kafka = args.clone();
    to_kafka.extend(["--kafka", &brokers, "--topic", topic]);
    let (_, log) = fleetflow_ok(dir, &to_kafka);
    assert!(log.contains("events/s achieved"), "{log}");
    let mut to_file = args;
    to_file.extend(["--out", "in.ndjson"]);
    fleetflow_ok(dir, &to_file);
    write_jobs(
        dir,
        &brokers,
        topic,
        "in.ndjson",
        "checkpoint_interval = \"100ms\"\nmax_file_age = \"300ms\"\n",
    );
    run_to_end(dir, "file.toml", &[]);
}

/// `file.toml`, a file job over `input` into `file/`, and `kafka.toml`, a bounded job over
/// `topic` into `kafka/` with `lake_extra` lines in its `[lake]` table.
fn write_jobs(dir: &Path, brokers: &str, topic: &str, input: &str, lake_extra: &str) {
    std::fs::write(
        dir.join("file.toml"),
        format!("name = \"file\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"{input}\"\n[lake]\nurl = \"file://file\"\n[api]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("kafka.toml"),
        format!(
            "name = \"kafka\"\nworkers = 2\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nbounded = true\n[lake]\nurl = \"file://kafka\"\n{lake_extra}[api]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
}

/// Waits (at most 120 s, else fails with `stuck`) for `job` to exit, asserts that it
/// succeeded, and returns its standard error.
fn finished_ok(mut job: KillOnDrop, stuck: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "{stuck}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    err
}

fn same_lakes(dir: &Path) {
    let (a, b) = (dir.join("file"), dir.join("kafka"));
    assert_same_datasets(
        None,
        &a.display().to_string(),
        &b.display().to_string(),
        &KAFKA_VS_FILE,
    );
}

#[test]
fn sigkill_mid_stream_and_restart_leaves_the_lake_of_the_file_run() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &broker, "locations");
    let killed = run_with_crashes(dir.path(), "kafka.toml", &[], 21);
    assert!(killed >= 5, "only {killed} kills");
    same_lakes(dir.path());
    group_at_end(&broker, "fleetflow-kafka", "locations", 4);
}

/// The consumer group's committed offsets, as Kafka's `kafka-consumer-groups --describe`
/// shows them, are the log end offset of each of the topic's `partitions` partitions (so
/// the lag it shows is 0).
fn group_at_end(broker: &KafkaBroker, group: &str, topic: &str, partitions: i32) {
    let offsets = broker.group_offsets(group);
    assert_eq!(
        offsets.len(),
        partitions as usize,
        "one row per partition: {offsets:?}"
    );
    for p in 0..partitions {
        let (current, end) = offsets[&(topic.to_string(), p)];
        assert!(end > 0, "partition {p} is not empty: {offsets:?}");
        assert_eq!(current, Some(end), "partition {p}: {offsets:?}");
    }
}

/// Produces `lines` (keyed by vehicle) to `topic` in one transaction per element of
/// `transactions`, committing those marked `true` and aborting the others.
fn produce_in_transactions(brokers: &str, topic: &str, transactions: &[(&[String], bool)]) {
    use fleetflow_connectors::kafka::rdkafka::producer::{
        BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
    };
    use fleetflow_connectors::kafka::rdkafka::ClientConfig;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", format!("test-{topic}"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    for (lines, commit) in transactions {
        producer.begin_transaction().unwrap();
        for line in lines.iter() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let key = v["vehicle_id"].as_str().unwrap_or("").to_string();
            let mut record = BaseRecord::to(topic).key(&key).payload(line);
            while let Err((e, r)) = producer.send(record) {
                assert!(format!("{e}").contains("Queue full"), "{e}");
                std::thread::sleep(Duration::from_millis(5));
                record = r;
            }
        }
        if *commit {
            producer.commit_transaction(timeout).unwrap();
        } else {
            producer.flush(timeout).unwrap();
            producer.abort_transaction(timeout).unwrap();
        }
    }
}

/// Generated events (valid ones only), split into `parts` runs of consecutive lines.
fn generated(dir: &Path, parts: usize) -> Vec<Vec<String>> {
    fleetflow_ok(
        dir,
        &[
            "generate",
            "--vehicles",
            "60",
            "--duration",
            "40m",
            "--out",
            "gen.ndjson",
        ],
    );
    let lines: Vec<String> = std::fs::read_to_string(dir.join("gen.ndjson"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let size = lines.len().div_ceil(parts);
    lines.chunks(size).map(<[String]>::to_vec).collect()
}

/// Jobs over the same topic and over a file of `committed`: a bounded Kafka job and a
/// file job, run to the end; the lakes must be equal.
fn kafka_equals_file_of(dir: &Path, broker: &KafkaBroker, topic: &str, committed: &[String]) {
    write_lines(&dir.join("committed.ndjson"), committed);
    write_jobs(dir, &broker.brokers(), topic, "committed.ndjson", "");
    run_to_end(dir, "file.toml", &[]);
    // A bounded read that could not pass the markers would never end.
    let job = KillOnDrop(command(dir, "kafka.toml", &[]).spawn().unwrap());
    finished_ok(
        job,
        "the bounded Kafka job did not finish: a partition ending in transaction markers never reached its end",
    );
    same_lakes(dir);
}

#[test]
fn only_committed_transactions_are_read_and_aborted_ones_never() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let parts = generated(dir.path(), 4);
    broker.create_topic("txn", 3);
    // Aborted transactions between committed ones: their records lie in the partitions
    // among committed records, followed by abort markers; the last transaction commits.
    produce_in_transactions(
        &broker.brokers(),
        "txn",
        &[
            (&parts[0], true),
            (&parts[1], false),
            (&parts[2], true),
            (&parts[3][..parts[3].len() / 2], false),
            (&parts[3][parts[3].len() / 2..], true),
        ],
    );
    let committed: Vec<String> = [
        &parts[0][..],
        &parts[2][..],
        &parts[3][parts[3].len() / 2..],
    ]
    .concat();
    kafka_equals_file_of(dir.path(), &broker, "txn", &committed);
    group_at_end(&broker, "fleetflow-kafka", "txn", 3);
}

#[test]
fn a_bounded_read_ends_on_partitions_whose_last_records_are_transaction_markers() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let parts = generated(dir.path(), 2);
    broker.create_topic("markers", 2);
    // Every partition ends in a commit marker after the first transaction, then in an
    // abort marker after records nobody may read.
    produce_in_transactions(
        &broker.brokers(),
        "markers",
        &[(&parts[0], true), (&parts[1], false)],
    );
    kafka_equals_file_of(dir.path(), &broker, "markers", &parts[0]);
    group_at_end(&broker, "fleetflow-kafka", "markers", 2);
}

#[test]
fn the_job_survives_the_broker_going_away_and_coming_back() {
    let mut broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &broker, "outage");
    let mut job = KillOnDrop(command(dir.path(), "kafka.toml", &[]).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job waits for the broker instead of failing or finishing"
    );
    broker.restart();
    let err = finished_ok(job, "the job did not finish after the broker returned");
    assert!(
        err.contains("retrying"),
        "the outage was noticed and logged: {err}"
    );
    same_lakes(dir.path());
}

#[test]
fn a_topic_that_does_not_exist_is_a_clear_startup_error() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.toml"),
        format!(
            "name = \"k\"\n[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"nope\"\n[lake]\nurl = \"file://lake\"\n",
            broker.brokers()
        ),
    )
    .unwrap();
    let out = command(dir.path(), "job.toml", &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("source.topic") && err.contains("\"nope\" does not exist"),
        "{err}"
    );
}
