//! One job over a timely cluster of three processes (two workers each, on loopback) gives
//! the lake and the API answers of the same job on one process; one process killed with
//! SIGKILL mid-run takes the cluster down, and the restarted cluster still writes exactly
//! that lake.

mod common;

use common::process::Proc;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn spec(lake: &str, interval: &str) -> String {
    format!(
        r#"name = "cluster"
workers = 2

[source]
kind = "file"
path = "in"

[geofences]
path = "fences.geojson"
dwell_after = "2m"

[lake]
url = "file://{lake}"
target_file_size = "256KB"
max_file_age = "300ms"
checkpoint_interval = "{interval}"

[api]
listen = "127.0.0.1:0"
"#
    )
}

/// Generated input in three files (disorder, duplicates and bad lines), the real Porto
/// sample as a fourth, and the quickstart's geofences.
fn job_dir(vehicles: u32, minutes: u64) -> tempfile::TempDir {
    let dir = generated_job_dir(vehicles, minutes, 3, 23);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("examples/data/porto-sample.ndjson"),
        dir.path().join("in/porto.ndjson"),
    )
    .unwrap();
    dir
}

fn cluster_args<'a>(job: &'a str, hosts: &'a str, index: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        job,
        "--processes",
        "3",
        "--process-index",
        index,
        "--hosts",
        hosts,
    ]
}

/// Every page of a listing route, concatenated (`items` is the list's field).
fn all_pages(addr: &str, path: &str, items: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
            None => format!("{path}{sep}limit=1000"),
        };
        let (status, body) = http_get(addr, &url);
        assert_eq!(status, 200, "{url}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        out.extend(v[items].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// What a process's API answers about every vehicle and geofence.
fn answers(addr: &str) -> serde_json::Value {
    let vehicles = all_pages(addr, "/v1/vehicles", "items");
    let fences = all_pages(addr, "/v1/geofences", "items");
    let mut occupants = serde_json::Map::new();
    for g in &fences {
        let id = g["id"].as_str().unwrap();
        let (status, body) = http_get(addr, &format!("/v1/geofences/{id}/occupants"));
        assert_eq!(status, 200, "{body}");
        occupants.insert(id.to_string(), serde_json::from_str(&body).unwrap());
    }
    let (status, events) = http_get(addr, "/v1/geofence-events?limit=1000");
    assert_eq!(status, 200, "{events}");
    let (status, ready) = http_get(addr, "/readyz");
    assert_eq!(status, 200, "{ready}");
    serde_json::json!({
        "vehicles": vehicles,
        "geofences": fences,
        "occupants": occupants,
        "events": serde_json::from_str::<serde_json::Value>(&events).unwrap(),
        "ready": serde_json::from_str::<serde_json::Value>(&ready).unwrap(),
    })
}

const DONE: &str = "input done; serving the API";

/// The datasets compared with the one-process lake. The input has duplicate fixes in
/// different files; which copy arrives first (and so is kept, and names the `source` of a
/// dead letter it may become) depends on how the inputs' reads interleave, which differs
/// between processes and runs. Every other column of every row must be equal.
const CLUSTER_DATASETS: [(&str, &str); 6] = [
    ("raw", "*"),
    ("1m", "*"),
    ("1h", "*"),
    ("1d", "*"),
    ("geofence_events", "*"),
    ("dead_letter", "reason, payload, detail"),
];

#[test]
fn three_processes_write_the_lake_and_answer_like_one() {
    let dir = job_dir(120, 90);
    let d = dir.path();
    std::fs::write(d.join("one.toml"), spec("one", "200ms")).unwrap();
    std::fs::write(d.join("three.toml"), spec("three", "200ms")).unwrap();

    let mut one = Proc::spawn(d, &["run", "one.toml", "--serve"]);
    let one_api = one.api();
    one.wait_for(DONE, Duration::from_secs(300));
    let reference = answers(&one_api);
    assert!(reference["vehicles"].as_array().unwrap().len() > 100);
    assert!(
        !reference["events"]["items"].as_array().unwrap().is_empty(),
        "the input crosses geofences"
    );

    let hosts = cluster_hosts(d, 3);
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let index = i.to_string();
            let mut args = cluster_args("three.toml", &hosts, &index);
            args.push("--serve");
            Proc::spawn(d, &args)
        })
        .collect();
    let apis: Vec<String> = procs.iter_mut().map(Proc::api).collect();
    for p in procs.iter_mut() {
        p.wait_for(DONE, Duration::from_secs(300));
    }

    assert_same_datasets(
        None,
        &d.join("one").display().to_string(),
        &d.join("three").display().to_string(),
        &CLUSTER_DATASETS,
    );
    for (i, api) in apis.iter().enumerate() {
        let got = answers(api);
        assert!(
            got == reference,
            "process {i} answers differently from one process:\n{}\nvs\n{}",
            serde_json::to_string(&got).unwrap(),
            serde_json::to_string(&reference).unwrap()
        );
    }
    // A follower does not take geofence changes; process 0 does, and every process sees it.
    let body = r#"{"type":"Feature","properties":{"radius_m":500},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}"#;
    let (status, answer) = http(&apis[1], "PUT", "/v1/geofences/late", Some(body));
    assert_eq!(status, 421, "{answer}");
    assert!(answer.contains("process 0"), "{answer}");
    drop(procs);
    drop(one);
    // One commit log, written by process 0, with every process's files published.
    assert!(files_under(&d.join("three/_fleetflow/staging")).is_empty());
    let names: Vec<String> = files_under(&d.join("three/raw"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for w in 0..6 {
        assert!(
            names.iter().any(|n| n.contains(&format!("-w{w:03}-"))),
            "worker {w} wrote raw files: {names:?}"
        );
    }
}

/// The number of commits in a lake's log.
fn commits(lake: &Path) -> usize {
    files_under(&lake.join("_fleetflow/log")).len()
}

#[test]
fn a_process_killed_with_sigkill_stops_the_cluster_and_the_restart_loses_nothing() {
    let dir = job_dir(200, 150);
    let d = dir.path();
    std::fs::write(d.join("one.toml"), spec("one", "100ms")).unwrap();
    std::fs::write(d.join("three.toml"), spec("three", "100ms")).unwrap();
    run_to_end(d, "one.toml", &[]);
    let lake = d.join("three");
    // Kill a follower, then the leader (which commits), each after a checkpoint more.
    for victim in [1usize, 0] {
        // Fresh ports for every start: a killed run's ports may linger, or have been taken
        // by a test running beside this one.
        let hosts = cluster_hosts(d, 3);
        let before = commits(&lake);
        let mut procs: Vec<Proc> = (0..3)
            .map(|i| {
                let index = i.to_string();
                Proc::spawn(d, &cluster_args("three.toml", &hosts, &index))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while commits(&lake) < before + 2 {
            assert!(Instant::now() < deadline, "no checkpoint committed");
            assert!(
                procs
                    .iter_mut()
                    .all(|p| p.child.try_wait().unwrap().is_none()),
                "the run ended before the kill: make the input longer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        procs[victim].child.kill().unwrap(); // SIGKILL
        procs[victim].child.wait().unwrap();
        for (i, p) in procs.iter_mut().enumerate().filter(|(i, _)| *i != victim) {
            let (status, log) = p.wait_exit(Duration::from_secs(60));
            assert!(!status.success(), "process {i} went on without {victim}");
            assert!(
                log.contains("lost its connection to the cluster"),
                "process {i}: {log}"
            );
        }
    }
    let hosts = cluster_hosts(d, 3);
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let index = i.to_string();
            Proc::spawn(d, &cluster_args("three.toml", &hosts, &index))
        })
        .collect();
    for (i, p) in procs.iter_mut().enumerate() {
        let (status, log) = p.wait_exit(Duration::from_secs(300));
        assert!(status.success(), "process {i}: {log}");
    }
    assert_same_datasets(
        None,
        &d.join("one").display().to_string(),
        &lake.display().to_string(),
        &CLUSTER_DATASETS,
    );
    assert!(files_under(&lake.join("_fleetflow/staging")).is_empty());
}

/// Every vehicle is its own clock on a cluster too: a tracker an hour ahead, bursts of
/// buffered fixes and an export ordered vehicle by vehicle give the same lake on three
/// processes as on one, with no fix late.
#[test]
fn troubled_input_on_three_processes_writes_the_lake_of_one() {
    use fleetflow_types::config::GeneratorSpec;
    use fleetflow_types::time::HumanDuration;
    let dir = job_dir(1, 1);
    let d = dir.path();
    std::fs::remove_dir_all(d.join("in")).unwrap();
    let lines = generated_with(GeneratorSpec {
        vehicles: 120,
        seed: 31,
        duration: Some(HumanDuration::from_millis(90 * 60_000)),
        disorder: Some(HumanDuration::from_millis(10_000)),
        duplicates: 0.01,
        clock_skew: Some("1h".parse().unwrap()),
        skewed: 2,
        outage: Some(HumanDuration::from_millis(40 * 60_000)),
        outages: 10,
        outage_start: HumanDuration::from_millis(20 * 60_000),
        ..GeneratorSpec::default()
    });
    split_by_vehicle(&d.join("in"), &lines, 3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut porto: Vec<String> =
        std::fs::read_to_string(root.join("examples/data/porto-sample.ndjson"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
    porto.sort_by_key(|l| vehicle_of(l));
    write_lines(&d.join("in/porto-by-vehicle.ndjson"), &porto);
    std::fs::write(d.join("one.toml"), spec("one", "200ms")).unwrap();
    std::fs::write(d.join("three.toml"), spec("three", "200ms")).unwrap();
    run_to_end(d, "one.toml", &[]);
    let hosts = cluster_hosts(d, 3);
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let index = i.to_string();
            Proc::spawn(d, &cluster_args("three.toml", &hosts, &index))
        })
        .collect();
    for (i, p) in procs.iter_mut().enumerate() {
        let (status, log) = p.wait_exit(Duration::from_secs(300));
        assert!(status.success(), "process {i}: {log}");
    }
    let late = duckdb(&format!(
        "select count(*) from {} where reason = 'late'",
        lake_glob(&d.join("three"), "dead_letter")
    ));
    assert_eq!(late[0][0].as_i64(), Some(0));
    assert_same_datasets(
        None,
        &d.join("one").display().to_string(),
        &d.join("three").display().to_string(),
        &CLUSTER_DATASETS,
    );
}

#[test]
fn a_live_stream_on_any_process_carries_the_changes_of_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("examples/geofences/berlin.geojson"),
        d.join("fences.geojson"),
    )
    .unwrap();
    // 60 vehicles reporting every 5 s of event time, at 10x the wall clock.
    std::fs::write(
        d.join("live.toml"),
        "name = \"live\"\nworkers = 2\n[source]\nkind = \"generator\"\nvehicles = 60\ninterval = \"5s\"\nrate = 120\nseed = 9\n[geofences]\npath = \"fences.geojson\"\n[lake]\nurl = \"file://./lake\"\ncheckpoint_interval = \"500ms\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let hosts = cluster_hosts(d, 3);
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let index = i.to_string();
            Proc::spawn(d, &cluster_args("live.toml", &hosts, &index))
        })
        .collect();
    let apis: Vec<String> = procs.iter_mut().map(Proc::api).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while apis.iter().any(|a| http_get(a, "/readyz").0 != 200) {
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The vehicles live on six workers in three processes; a stream from the last process
    // sees changes of all of them, and its snapshot holds the vehicles seen so far.
    let mut stream = Sse::open(&apis[2], "/v1/stream?topics=vehicles", None);
    let (_, kind, snapshot) = stream.next();
    assert_eq!(kind, "snapshot");
    assert!(
        !snapshot["vehicles"].as_array().unwrap().is_empty(),
        "{snapshot}"
    );
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "only {} vehicles changed",
            seen.len()
        );
        let (_, kind, data) = stream.next();
        if kind == "vehicle" {
            if let Some(id) = data["vehicle"]["vehicle_id"].as_str() {
                seen.insert(id.to_string());
            }
        }
    }
    // A geofence added through process 0 reaches the other processes' catalogues.
    let body = r#"{"type":"Feature","properties":{"radius_m":2000},"geometry":{"type":"Point","coordinates":[13.405,52.52]}}"#;
    let (status, answer) = http(&apis[0], "PUT", "/v1/geofences/centre", Some(body));
    assert!(status == 201 || status == 202, "{status} {answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for api in &apis[1..] {
        while http_get(api, "/v1/geofences/centre").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{api} does not list the new geofence"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for p in procs.iter_mut() {
        let sent = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    for (i, p) in procs.iter_mut().enumerate() {
        let (status, log) = p.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "process {i}: {log}");
    }
}

#[test]
fn processes_that_resumed_from_different_commits_stop_before_committing() {
    // Process 0 sees a lake with commits; the others (another lake, standing in for a
    // process that read the log before a dying leader's last commit) resume from none.
    let dir = job_dir(20, 10);
    let d = dir.path();
    std::fs::write(d.join("ahead.toml"), spec("ahead", "100ms")).unwrap();
    std::fs::write(d.join("behind.toml"), spec("behind", "100ms")).unwrap();
    run_to_end(d, "ahead.toml", &[]);
    let before = commits(&d.join("ahead"));
    assert!(before > 0);
    let hosts = cluster_hosts(d, 3);
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let index = i.to_string();
            let job = if i == 0 { "ahead.toml" } else { "behind.toml" };
            Proc::spawn(d, &cluster_args(job, &hosts, &index))
        })
        .collect();
    for (i, p) in procs.iter_mut().enumerate() {
        let (status, log) = p.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "process {i} ran on: {log}");
        if i == 0 {
            assert!(
                log.contains(&format!("from commit 0, process 0 from commit {before}")),
                "{log}"
            );
        } else {
            assert!(log.contains("lost its connection to the cluster"), "{log}");
        }
    }
    assert_eq!(commits(&d.join("ahead")), before, "nothing was committed");
    assert_eq!(commits(&d.join("behind")), 0);
}
