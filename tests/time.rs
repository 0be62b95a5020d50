//! Every vehicle is its own clock (semantics §1): the trouble real fleets make (a tracker
//! an hour ahead, an export ordered vehicle by vehicle, a store-and-forward burst, a
//! vehicle silent for hours, a tracker re-sending an old batch) costs no other vehicle a
//! fix. Each kind of trouble against the sequential reference, shuffled within each
//! vehicle's lateness, re-batched, over several files, with 1 and 2 workers; the real Porto
//! sample exported vehicle by vehicle; the job clock; optional fields of the wrong type.

mod common;

use common::reference::*;
use common::*;
use fleetflow_types::config::{GeneratorOrder, GeneratorSpec};
use fleetflow_types::records::{Reason, Status};
use fleetflow_types::time::HumanDuration;

const TIERS: [i64; 3] = [60_000, 3_600_000, 86_400_000];
const VEHICLES: u32 = 40;
const START: i64 = 1_738_366_800_000; // 2025-01-31T23:40:00Z

/// A generated fleet of 40 vehicles over two hours (disorder, duplicates, junk) with some
/// trouble.
fn fleet(trouble: impl FnOnce(&mut GeneratorSpec)) -> Vec<String> {
    let mut spec = GeneratorSpec {
        vehicles: VEHICLES,
        seed: 5,
        duration: Some(HumanDuration::from_millis(2 * 3_600_000)),
        disorder: Some(HumanDuration::from_millis(10_000)),
        duplicates: 0.01,
        bad_lines: 0.002,
        start: "2025-01-31T23:40:00Z".into(),
        ..GeneratorSpec::default()
    };
    trouble(&mut spec);
    generated_with(spec)
}

fn ts_of(line: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["ts"].as_i64())
}

/// The troubles, each a name and its input in the order a job reads it.
fn troubles() -> Vec<(&'static str, Vec<String>)> {
    let ahead = fleet(|s| s.clock_skew = Some("1h".parse().unwrap()));
    let by_vehicle = fleet(|s| s.order = GeneratorOrder::Vehicle);
    let burst = fleet(|s| {
        s.outage = Some(HumanDuration::from_millis(40 * 60_000));
        s.outages = 4;
        s.outage_start = HumanDuration::from_millis(30 * 60_000);
    });
    // V00005 falls silent after 20 minutes and reports again 90 minutes later.
    let silent: Vec<String> = fleet(|_| {})
        .into_iter()
        .filter(|l| {
            vehicle_of(l).as_deref() != Some("V00005")
                || ts_of(l)
                    .is_none_or(|t| !(START + 20 * 60_000..START + 110 * 60_000).contains(&t))
        })
        .collect();
    // V00007 sends a batch of 20 of its fixes again two minutes later: late for its own
    // clock (and duplicates of what it sent), late for no other vehicle.
    let mut resent = fleet(|_| {});
    let old: Vec<String> = resent
        .iter()
        .filter(|l| vehicle_of(l).as_deref() == Some("V00007"))
        .skip(100)
        .take(20)
        .cloned()
        .collect();
    let at = resent
        .iter()
        .position(|l| ts_of(l).is_some_and(|t| t > ts_of(&old[19]).unwrap() + 120_000))
        .unwrap();
    resent.splice(at..at, old);
    vec![
        ("a tracker an hour ahead", ahead),
        ("an export ordered vehicle by vehicle", by_vehicle),
        ("store-and-forward bursts", burst),
        ("a vehicle silent for 90 minutes", silent),
        ("a tracker re-sending an old batch", resent),
    ]
}

#[test]
fn each_kind_of_trouble_matches_the_reference_across_orders_batches_files_and_workers() {
    let registry = generated_registry(VEHICLES);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vehicles.csv"),
        registry_csv(&registry, VEHICLES),
    )
    .unwrap();
    let extra = format!(
        "[vehicles]\nregistry = {:?}\n",
        dir.path().join("vehicles.csv")
    );
    for (k, (trouble, lines)) in troubles().into_iter().enumerate() {
        let exp = expected(&lines, &TIERS, &registry, 600_000);
        assert!(exp.accepted.len() > 50_000, "{trouble}");
        let lates = exp.late.len();
        if trouble.contains("re-sending") {
            assert!(
                lates >= 15 && exp.late.iter().all(|(v, _)| v == "V00007"),
                "{trouble}: {:?}",
                exp.late
            );
        } else {
            assert_eq!(lates, 0, "{trouble}: no fix is late for its own vehicle");
        }
        let shuffled = shuffle_each_vehicle_within(&lines, 15_000, k as u64);
        let exp_shuffled = expected(&shuffled, &TIERS, &registry, 600_000);
        if !trouble.contains("re-sending") {
            // (Shuffling by time puts a re-sent batch back in its place.)
            assert_eq!(
                exp_shuffled.late, exp.late,
                "{trouble}: shuffled within the lateness, the same fixes are late"
            );
        }
        let root = dir.path().join(format!("t{k}"));
        std::fs::create_dir(&root).unwrap();
        let one = root.join("one.ndjson");
        write_lines(&one, &lines);
        let shuf = root.join("shuffled.ndjson");
        write_lines(&shuf, &shuffled);
        let split = split_by_vehicle(&root.join("split"), &shuffled, 3);
        for (n, (input, workers, batch)) in [
            (&one, 1, 4096),
            (&shuf, 2, 7),
            (&split, 2, 4096),
            (&split, 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let (result, cap) = run_file_job(
                input,
                &root.join(format!("lake{n}")),
                workers,
                batch,
                &extra,
            );
            eprintln!("{trouble}: {} workers, {batch} a poll", workers);
            compare(if n == 0 { &exp } else { &exp_shuffled }, &result, cap);
        }
    }
}

#[test]
fn the_porto_sample_exported_vehicle_by_vehicle_matches_the_reference() {
    let mut lines = porto_lines("train.1k.csv");
    // A CSV export of a fleet platform: one vehicle after another, each in time order.
    lines.sort_by_key(|l| (vehicle_of(l), ts_of(l)));
    let exp = expected(&lines, &TIERS, &Default::default(), 600_000);
    assert!(exp.late.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("porto.ndjson");
    write_lines(&input, &lines);
    for workers in [1, 2] {
        let (result, cap) = run_file_job(
            &input,
            &dir.path().join(format!("lake{workers}")),
            workers,
            1000,
            "",
        );
        compare(&exp, &result, cap);
    }
}

#[test]
fn on_a_file_job_the_job_clock_follows_the_fleet_not_a_tracker_ahead_nor_a_silent_vehicle() {
    // V00000 an hour ahead; V00039 silent after its first ten minutes.
    let lines: Vec<String> = fleet(|s| s.clock_skew = Some("1h".parse().unwrap()))
        .into_iter()
        .filter(|l| {
            vehicle_of(l).as_deref() != Some("V00039")
                || ts_of(l).is_none_or(|t| t < START + 10 * 60_000)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    write_lines(&input, &lines);
    let (result, _) = run_file_job(&input, &dir.path().join("lake"), 2, 4096, "");
    let clock = result.summary.clock.unwrap();
    let end = START + 2 * 3_600_000;
    assert!(
        (end - 10_000..end).contains(&clock),
        "the job clock {clock} is the fleet's end, not the tracker ahead nor the silent one"
    );
    assert_eq!(result.vehicles.as_of(), Some(clock));
    let status = |v: &str| result.vehicles.get(v).unwrap().status;
    assert_ne!(status("V00001"), Status::Offline);
    assert_ne!(status("V00000"), Status::Offline, "ahead is not offline");
    assert_eq!(status("V00039"), Status::Offline, "silent for 110 minutes");
    let late = result
        .summary
        .dead_letters
        .iter()
        .find(|(r, _)| *r == Reason::Late)
        .unwrap()
        .1;
    assert_eq!(late, 0);
}

#[test]
fn optional_fields_of_the_wrong_type_or_out_of_range_are_dropped_and_counted() {
    let base = |ts: i64, extra: &str| {
        format!(r#"{{"vehicle_id":"V1","ts":{ts},"lat":52.5,"lon":13.4{extra}}}"#)
    };
    let lines = vec![
        base(START, r#","heading_deg":0"#),
        base(START + 5_000, r#","heading_deg":360"#),
        base(START + 10_000, r#","speed_kmh":-5"#),
        base(START + 15_000, r#","fuel_level_pct":140"#),
        base(START + 20_000, r#","heading_deg":"N","ignition":"on""#),
    ];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    write_lines(&input, &lines);
    let (result, mut cap) = run_file_job(&input, &dir.path().join("lake"), 1, 4096, "");
    assert_eq!(result.summary.accepted, 5, "every fix kept its position");
    assert!(cap.dead.is_empty());
    cap.raw.sort_by_key(|f| f.ts);
    let heading: Vec<Option<f64>> = cap.raw.iter().map(|f| f.heading_deg).collect();
    assert_eq!(heading, [Some(0.0), Some(360.0), None, None, None]);
    assert_eq!(cap.raw[2].speed_kmh, None);
    assert_eq!(cap.raw[3].fuel_level_pct, None);
    assert_eq!(cap.raw[4].ignition, None);
    let dropped = |f: &str| {
        result
            .summary
            .dropped_fields
            .iter()
            .find(|(n, _)| n == f)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        (
            dropped("speed_kmh"),
            dropped("fuel_level_pct"),
            dropped("heading_deg"),
            dropped("ignition"),
            dropped("tenant")
        ),
        (1, 1, 1, 1, 0)
    );
}

#[test]
fn on_a_generator_job_the_job_clock_follows_the_fleet_not_a_tracker_ahead_nor_a_silent_vehicle() {
    // 50 vehicles at 100 times real time: V00000 an hour ahead; V00049 loses coverage for
    // three hours after ten minutes (silent; it would upload later).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.toml"),
        r#"name = "clock"
workers = 2
[source]
kind = "generator"
vehicles = 50
rate = 1000
start = "2025-01-31T23:40:00Z"
clock_skew = "1h"
outage = "3h"
outage_start = "10m"
[time]
idle_timeout = "500ms"
[lake]
url = "file://lake"
[api]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let (child, addr, rest) = spawn_with_api(dir.path(), &["run", "job.toml"]);
    let metric = |text: &str, name: &str| -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let (clock, text) = loop {
        let (status, text) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        if let Some(c) =
            metric(&text, "fleetflow_job_clock_ms").filter(|c| *c > START + 30 * 60_000)
        {
            break (c, text);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job clock did not reach 30 minutes: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (_, body) = http_get(&addr, "/v1/vehicles?limit=100");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = v["items"].as_array().unwrap();
    let as_of = v["as_of"].as_i64().unwrap();
    let state = |id: &str| {
        items
            .iter()
            .find(|i| i["vehicle_id"] == id)
            .unwrap()
            .clone()
    };
    // The fleet's clocks: the job clock sits among them, not an hour ahead, not stuck
    // where the silent vehicle stopped.
    let mut ts: Vec<i64> = items
        .iter()
        .filter(|i| i["vehicle_id"] != "V00000" && i["vehicle_id"] != "V00049")
        .map(|i| i["ts"].as_i64().unwrap())
        .collect();
    ts.sort();
    let (lo, hi) = (ts[0], ts[ts.len() - 1]);
    assert!(
        as_of >= lo - 60_000 && as_of <= hi + 60_000,
        "as_of {as_of} among the fleet's clocks {lo}..{hi}"
    );
    assert!(clock < state("V00000")["ts"].as_i64().unwrap() - 30 * 60_000);
    assert_eq!(
        state("V00049")["status"],
        "offline",
        "silent since minute 10"
    );
    assert!(
        items
            .iter()
            .filter(|i| i["status"] == "offline")
            .all(|i| i["vehicle_id"] == "V00049"),
        "only the silent vehicle is offline: {body}"
    );
    assert_eq!(
        metric(&text, "fleetflow_clock_ahead_vehicles"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "fleetflow_clock_behind_vehicles"),
        Some(0),
        "{text}"
    );
    let voters = metric(&text, "fleetflow_clock_voters").unwrap();
    assert!(
        (45..=49).contains(&voters),
        "the silent vehicle does not vote: {voters}"
    );
    interrupt(child, rest);
}
