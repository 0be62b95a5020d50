//! End to end against a real Kafka-protocol broker process (tansu, sqlite storage):
//! `fleetflow generate --kafka` produces the stream, the job is killed with SIGKILL
//! mid-stream and restarted until done, and the broker itself is stopped and restarted
//! during a run. Each time the lake must equal a file-source run of the same events.

mod common;

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
    std::fs::write(
        dir.join("file.toml"),
        "name = \"file\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"in.ndjson\"\n[lake]\nurl = \"file://file\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("kafka.toml"),
        format!(
            "name = \"kafka\"\nworkers = 2\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nbounded = true\n[lake]\nurl = \"file://kafka\"\ncheckpoint_interval = \"100ms\"\nmax_file_age = \"300ms\"\n[api]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    run_to_end(dir, "file.toml", &[]);
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
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish after the broker returned"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
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
