//! The query API of a running job over real sockets: the live stream resumes exactly after
//! `Last-Event-ID`, and schemathesis finds no server error or schema violation in what
//! `/openapi.json` describes.

mod common;

use common::process::Proc;
use common::*;
use std::time::Duration;

/// A job fed by the generator in real time (event time runs as fast as the wall clock
/// times `speed`), with the API on a free port.
fn running_job(
    dir: &std::path::Path,
    speed: u32,
) -> (KillOnDrop, String, std::thread::JoinHandle<String>) {
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"live\"\nworkers = 2\n[source]\nkind = \"generator\"\nvehicles = 40\ninterval = \"5s\"\nrate = {}\nseed = 5\n[lake]\nurl = \"file://./lake\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            8 * speed
        ),
    )
    .unwrap();
    let (child, addr, rest) = spawn_with_api(dir, &["run", "job.toml"]);
    wait_ready(&addr);
    (child, addr, rest)
}

fn seq(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

#[test]
fn a_stream_client_resumes_with_last_event_id_and_gets_exactly_the_missed_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, rest) = running_job(dir.path(), 10);
    // The reference client stays connected throughout.
    let mut reference = Sse::open(&addr, "/v1/stream?topics=vehicles", None);
    let (ref_id, kind, ref_snap) = reference.next();
    assert_eq!(kind, "snapshot");
    // The client takes its snapshot, follows some changes, and disconnects.
    let mut client = Sse::open(&addr, "/v1/stream?topics=vehicles", None);
    let (snap_id, kind, snap) = client.next();
    assert_eq!(kind, "snapshot");
    let snap_seq = seq(snap_id.as_deref().unwrap());
    assert!(seq(ref_id.as_deref().unwrap()) <= snap_seq);
    assert!(!snap["vehicles"].as_array().unwrap().is_empty());
    let mut seen = Vec::new();
    for _ in 0..30 {
        let (id, kind, data) = client.next();
        assert_eq!(kind, "vehicle");
        seen.push((id.unwrap(), data));
    }
    let last = seen.last().unwrap().0.clone();
    drop(client);
    std::thread::sleep(Duration::from_secs(1));
    // Resumed: the changes after the last one it saw, no snapshot, none twice.
    let mut resumed = Sse::open(&addr, "/v1/stream?topics=vehicles", Some(&last));
    let mut after = Vec::new();
    for _ in 0..60 {
        let (id, kind, data) = resumed.next();
        assert_eq!(kind, "vehicle", "a resume sends no snapshot");
        after.push((id.unwrap(), data));
    }
    assert_eq!(seq(&after[0].0), seq(&last) + 1, "no gap after the last id");

    // The reference saw the same changes with the same ids: the client's first session
    // and its resumed one together are exactly the reference's stream from its snapshot.
    let mut reference_changes = Vec::new();
    while reference_changes.len() < 200 {
        let (id, _, data) = reference.next();
        let id = id.unwrap();
        let done = id == after.last().unwrap().0;
        reference_changes.push((id, data));
        if done {
            break;
        }
    }
    let from_client: Vec<_> = seen.iter().chain(&after).cloned().collect();
    let start = reference_changes
        .iter()
        .position(|(id, _)| *id == from_client[0].0)
        .expect("the reference saw the client's first change");
    assert_eq!(&reference_changes[start..], &from_client[..]);
    // The snapshot agrees with the stream: the reference's snapshot plus its changes up to
    // the client's snapshot id give the client's snapshot.
    let mut state: std::collections::BTreeMap<String, serde_json::Value> = ref_snap["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vehicle_id"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    for (id, data) in &reference_changes {
        if seq(id) > snap_seq {
            break;
        }
        let v = &data["vehicle"];
        state.insert(v["vehicle_id"].as_str().unwrap().to_string(), v.clone());
    }
    let client_state: std::collections::BTreeMap<String, serde_json::Value> = snap["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vehicle_id"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    assert_eq!(state, client_state);
    interrupt(child, rest);
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, rest) = running_job(dir.path(), 20);
    let schemathesis = std::env::var("FLEETFLOW_SCHEMATHESIS").unwrap_or("schemathesis".into());
    let out = std::process::Command::new(&schemathesis)
        .args([
            "run",
            &format!("http://{addr}/openapi.json"),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            // The streams never end; tests/streams.rs covers them.
            "--exclude-path",
            "/v1/stream",
            "--exclude-path",
            "/v1/ws",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--seed",
            "7",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{schemathesis}: {e} (pip install schemathesis; .ci/run does)"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("passed"), "{report}");
    interrupt(child, rest);
}

#[test]
fn a_served_file_job_without_a_valid_fix_still_ends_its_input_and_keeps_its_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Three lines, none a valid fix: every one goes to the dead-letter output.
    std::fs::write(
        d.join("junk.ndjson"),
        "not json\n{\"vehicle_id\":\"v1\"}\n{\"vehicle_id\":\"v1\",\"ts\":\"2025-01-01T00:00:00Z\",\"lat\":95,\"lon\":0}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("job.toml"),
        "name = \"junk\"\n[source]\nkind = \"file\"\npath = \"junk.ndjson\"\n[lake]\nurl = \"file://./lake\"\ncheckpoint_interval = \"200ms\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut job = Proc::spawn(d, &["run", "job.toml", "--serve"]);
    let addr = job.api();
    // The job says so once a commit holds the whole input, and that commit is in the lake.
    job.wait_for("input done; serving the API", Duration::from_secs(60));
    wait_for_input_ended(&d.join("lake"), Duration::from_secs(5));
    let (status, body) = http_get(&addr, "/v1/vehicles");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 0, "{body}");
    let log = job.interrupt();
    assert!(log.contains("malformed=1 invalid=2"), "{log}");
    let dead = duckdb(&format!(
        "SELECT count(*) FROM {}",
        lake_glob(&d.join("lake"), "dead_letter")
    ));
    assert_eq!(dead, vec![vec![serde_json::json!(3)]]);
}
