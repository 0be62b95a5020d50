//! Geofences (semantics §5) against the sequential reference: generated fleets with
//! polygons, holes, circles and tenant fences under disorder, re-batching, several files and
//! workers; the real Porto taxis with Porto's parishes and taxi stands through the lake and
//! DuckDB; and runtime changes through the HTTP API of a running job.

mod common;

use common::geofence_reference::{expected_geofences, Change, GeoExpected};
use common::reference::expected;
use common::*;
use fleetflow_types::geofence::{load, Geofence};
use fleetflow_types::records::{GeofenceCause, GeofenceEvent, GeofenceEventKind};
use fleetflow_types::registry::VehicleRegistry;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const TIERS: [i64; 3] = [60_000, 3_600_000, 86_400_000];
/// The generator's default center (Berlin).
const CENTER: [f64; 2] = [52.52, 13.405];

/// Offsets `(north_m, east_m)` from a point, in degrees.
fn offset(lat: f64, lon: f64, north_m: f64, east_m: f64) -> (f64, f64) {
    let dlat = north_m / 111_195.0;
    let dlon = east_m / (111_195.0 * lat.to_radians().cos());
    (lat + dlat, lon + dlon)
}

fn star(rng: &mut impl Rng, lat: f64, lon: f64, r_min: f64, r_max: f64) -> Vec<[f64; 2]> {
    let n = rng.random_range(5..12);
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|k| {
            let a = std::f64::consts::TAU * (k as f64 + rng.random_range(0.0..0.8)) / n as f64;
            let r = rng.random_range(r_min..r_max);
            let (y, x) = offset(lat, lon, r * a.cos(), r * a.sin());
            [x, y]
        })
        .collect();
    ring.push(ring[0]);
    ring
}

/// Random geofences over the generator's area: circles, star polygons (some with a hole),
/// a multipolygon, some limited to a tenant; plus three invalid features the job must skip.
fn random_fences(seed: u64, n: usize) -> Value {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let tenants = ["acme", "globex", "initech"];
    let mut features = Vec::new();
    for i in 0..n {
        let (lat, lon) = offset(
            CENTER[0],
            CENTER[1],
            rng.random_range(-12_000.0..12_000.0),
            rng.random_range(-12_000.0..12_000.0),
        );
        let mut props = json!({});
        if i % 4 == 3 {
            props["tenant"] = json!(tenants[i % 3]);
        }
        let geometry = match i % 3 {
            0 => {
                props["radius_m"] = json!(rng.random_range(100.0..1500.0));
                json!({"type": "Point", "coordinates": [lon, lat]})
            }
            1 => {
                let mut rings = vec![star(&mut rng, lat, lon, 600.0, 2500.0)];
                if i % 2 == 1 {
                    // A hole well inside the star's inner radius.
                    let h = 250.0;
                    let c = |n: f64, e: f64| {
                        let (y, x) = offset(lat, lon, n, e);
                        [x, y]
                    };
                    rings.push(vec![c(-h, -h), c(-h, h), c(h, h), c(h, -h), c(-h, -h)]);
                }
                json!({"type": "Polygon", "coordinates": rings})
            }
            _ => {
                let (lat2, lon2) = offset(lat, lon, 4000.0, 0.0);
                json!({"type": "MultiPolygon", "coordinates": [
                    [star(&mut rng, lat, lon, 300.0, 1200.0)],
                    [star(&mut rng, lat2, lon2, 300.0, 1200.0)],
                ]})
            }
        };
        features.push(json!({"type": "Feature", "id": format!("f{i}"), "properties": props, "geometry": geometry}));
    }
    features.push(
        json!({"type": "Feature", "id": "bad-radius", "properties": {"radius_m": 0},
        "geometry": {"type": "Point", "coordinates": [CENTER[1], CENTER[0]]}}),
    );
    features.push(json!({"type": "Feature", "id": "bad-bowtie", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.1], [13.1, 52.0], [13.0, 52.1], [13.0, 52.0]]]}}));
    features.push(json!({"type": "Feature", "properties": {},
        "geometry": {"type": "Point", "coordinates": [CENTER[1], CENTER[0]]}}));
    json!({"type": "FeatureCollection", "features": features})
}

fn compare_geofences(
    exp: &GeoExpected,
    got_events: &[GeofenceEvent],
    result: &fleetflow::job::RunResult,
    what: &str,
) {
    let mut got = got_events.to_vec();
    got.sort();
    if got != exp.events {
        let only_got: Vec<_> = got
            .iter()
            .filter(|e| !exp.events.contains(e))
            .take(5)
            .collect();
        let only_exp: Vec<_> = exp
            .events
            .iter()
            .filter(|e| !got.contains(e))
            .take(5)
            .collect();
        panic!(
            "{what}: {} events, reference {}\nonly in the job: {only_got:#?}\nonly in the reference: {only_exp:#?}",
            got.len(),
            exp.events.len()
        );
    }
    let ids: std::collections::BTreeSet<String> = exp
        .occupants
        .keys()
        .cloned()
        .chain(got.iter().map(|e| e.geofence_id.to_string()))
        .collect();
    for id in ids {
        let occ: BTreeMap<String, i64> = result
            .geofences
            .occupants(&id)
            .into_iter()
            .map(|(v, t)| (v.to_string(), t))
            .collect();
        assert_eq!(
            &occ,
            exp.occupants.get(&id).unwrap_or(&BTreeMap::new()),
            "{what}: occupants of {id}"
        );
    }
}

#[test]
fn generated_fleet_geofence_events_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let fences = random_fences(3, 150);
    let path = dir.path().join("fences.geojson");
    std::fs::write(&path, fences.to_string()).unwrap();
    let loaded = load(&fences.to_string(), None).unwrap();
    assert_eq!(loaded.geofences.len(), 150);
    assert_eq!(loaded.rejected.len(), 3, "{:?}", loaded.rejected);

    let vehicles = 30;
    let lines = generated_lines(vehicles, 40, 10, 0.02, 0.01, 21);
    let exp = expected(&lines, &TIERS, &VehicleRegistry::default(), 600_000);
    let dwell = 300_000;
    let geo = expected_geofences(&exp.accepted, &loaded.geofences, &[], dwell);
    let count = |k: GeofenceEventKind| geo.events.iter().filter(|e| e.kind == k).count();
    assert!(
        count(GeofenceEventKind::Enter) > 150
            && count(GeofenceEventKind::Exit) > 150
            && count(GeofenceEventKind::Dwell) > 20,
        "the fleet crosses many fence edges: {} enter, {} exit, {} dwell",
        count(GeofenceEventKind::Enter),
        count(GeofenceEventKind::Exit),
        count(GeofenceEventKind::Dwell)
    );
    let tenant_fences: std::collections::HashSet<&str> = loaded
        .geofences
        .iter()
        .filter(|g| g.tenant.is_some())
        .map(|g| g.id.as_str())
        .collect();
    assert!(
        geo.events
            .iter()
            .any(|e| tenant_fences.contains(e.geofence_id.as_str())),
        "tenant fences fire"
    );
    let shuffled = shuffle_within(&lines, 15_000, 8);
    let (one, shuf, split) = write_inputs(dir.path(), &lines, &shuffled);
    let extra = format!("[geofences]\npath = {path:?}\ndwell_after = \"5m\"\n");
    for (n, (input, workers, batch)) in [
        (&one, 1, 4096),
        (&shuf, 2, 7),
        (&split, 2, 100),
        (&shuf, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let (result, cap) = run_file_job(
            input,
            &dir.path().join(format!("lake{n}")),
            workers,
            batch,
            &extra,
        );
        compare_geofences(&geo, &cap.geofence_events, &result, &format!("run {n}"));
    }
}

/// Porto's 7 parishes (`dtmnfr` 1312xx, ids from that property) and its 63 taxi stands as
/// 150 m circles, as one GeoJSON file.
fn porto_fences() -> String {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(test_data("porto/parishes.geojson")).unwrap(),
    )
    .unwrap();
    let mut features: Vec<Value> = all["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["properties"]["dtmnfr"]
                .as_str()
                .is_some_and(|d| d.starts_with("1312"))
        })
        .cloned()
        .collect();
    assert_eq!(features.len(), 7);
    let mut stands = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(test_data("porto/taxi-stands.csv"))
        .unwrap();
    for rec in stands.records() {
        let rec = rec.unwrap();
        // One row of the original lacks the comma between latitude and longitude
        // ("41.163066654-8.67598304213"); the minus sign still separates them.
        let (lat, lon) = if rec.len() == 3 {
            let both = rec[2].trim();
            let cut = both.rfind('-').unwrap();
            (both[..cut].to_string(), both[cut..].to_string())
        } else {
            (rec[2].trim().to_string(), rec[3].trim().to_string())
        };
        let (lat, lon): (f64, f64) = (lat.parse().unwrap(), lon.parse().unwrap());
        features.push(
            json!({"type": "Feature", "properties": {"dtmnfr": format!("stand-{}", rec[0].trim()),
            "name": rec[1].trim(), "radius_m": 150.0},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}),
        );
    }
    assert_eq!(features.len(), 7 + 63);
    json!({"type": "FeatureCollection", "features": features}).to_string()
}

fn lake_events(lake: &Path) -> Vec<GeofenceEvent> {
    let rows = duckdb(&format!(
        "select geofence_id, vehicle_id, tenant, kind, epoch_ms(ts), cause, cast(date as varchar) = strftime(ts, '%Y-%m-%d') from {}",
        lake_glob(lake, "geofence_events")
    ));
    rows.into_iter()
        .map(|r| {
            assert_eq!(r[6], json!(true), "partitioned by the event's date: {r:?}");
            GeofenceEvent {
                geofence_id: r[0].as_str().unwrap().into(),
                vehicle_id: r[1].as_str().unwrap().into(),
                tenant: r[2].as_str().unwrap().into(),
                kind: serde_json::from_value(r[3].clone()).unwrap(),
                ts: r[4].as_i64().unwrap(),
                cause: serde_json::from_value(r[5].clone()).unwrap(),
            }
        })
        .collect()
}

#[test]
fn porto_taxis_with_parishes_and_stands_match_the_reference_in_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let fences = porto_fences();
    std::fs::write(dir.path().join("porto.geojson"), &fences).unwrap();
    let loaded = load(&fences, Some("dtmnfr")).unwrap();
    assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
    let lines = porto_lines("train.1k.csv");
    let exp = expected(&lines, &TIERS, &VehicleRegistry::default(), 600_000);
    let geo = expected_geofences(&exp.accepted, &loaded.geofences, &[], 600_000);
    let parish = |id: &str| !id.starts_with("stand-");
    assert!(
        geo.events.iter().filter(|e| parish(&e.geofence_id)).count() > 500
            && geo
                .events
                .iter()
                .filter(|e| !parish(&e.geofence_id))
                .count()
                > 500,
        "taxis cross parishes and pass stands"
    );
    write_lines(
        &dir.path().join("porto.ndjson"),
        &shuffle_within(&lines, 20_000, 4),
    );
    std::fs::write(
        dir.path().join("job.toml"),
        "name = \"porto\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"porto.ndjson\"\n[geofences]\npath = \"porto.geojson\"\nid_property = \"dtmnfr\"\n[lake]\nurl = \"file://./lake\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    fleetflow_ok(dir.path(), &["run", "job.toml"]);
    let mut got = lake_events(&dir.path().join("lake"));
    got.sort();
    assert_eq!(got.len(), geo.events.len());
    assert_eq!(got, geo.events);
}

/// Runs the binary with a generator source and the API on a free port; returns the child,
/// the API address and a thread collecting the rest of stderr.
fn spawn_generator_job(dir: &Path) -> (KillOnDrop, String, std::thread::JoinHandle<String>) {
    std::fs::write(
        dir.join("job.toml"),
        "name = \"runtime\"\nworkers = 2\n[source]\nkind = \"generator\"\nvehicles = 300\ninterval = \"5s\"\nrate = 6000\nseed = 5\n[time]\nallowed_lateness = \"30s\"\n[geofences]\ndwell_after = \"1m\"\n[lake]\nurl = \"file://./lake\"\ntiers = [\"raw\"]\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    spawn_with_api(dir, &["run", "job.toml"])
}

fn circle_feature(radius_m: f64) -> String {
    json!({"type": "Feature", "properties": {"radius_m": radius_m},
        "geometry": {"type": "Point", "coordinates": [CENTER[1], CENTER[0]]}})
    .to_string()
}

/// `METHOD /v1/geofences/{id}` with `body`: asserts the status and returns the change at the
/// job clock it took effect at (for the reference).
fn change_geofence(addr: &str, method: &str, id: &str, body: Option<String>, want: u16) -> Change {
    let (status, resp) = http(
        addr,
        method,
        &format!("/v1/geofences/{id}"),
        body.as_deref(),
    );
    assert_eq!(status, want, "{method} {id}: {resp}");
    let at = serde_json::from_str::<Value>(&resp).unwrap()["effective_at"]
        .as_i64()
        .expect("taken at a job clock");
    Change {
        at,
        fence: body.map(|b| {
            Geofence::from_feature(&serde_json::from_str(&b).unwrap(), Some(id), None, id).unwrap()
        }),
        id: id.to_string(),
        after_input: false,
    }
}

/// [`change_geofence`] on a job serving after its file input ended.
fn change_served(addr: &str, method: &str, id: &str, body: Option<String>, want: u16) -> Change {
    Change {
        after_input: true,
        ..change_geofence(addr, method, id, body, want)
    }
}

#[test]
fn runtime_changes_through_the_api_yield_the_events_and_occupancy_of_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, rest) = spawn_generator_job(dir.path());
    wait_ready(&addr);
    std::thread::sleep(Duration::from_secs(2));

    // Bad requests are 4xx with a JSON error.
    for (method, path, body, status) in [
        ("PUT", "/v1/geofences/x", "{", 400),
        (
            "PUT",
            "/v1/geofences/x",
            r#"{"type":"Feature","properties":{"radius_m":-1},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}"#,
            400,
        ),
        (
            "PUT",
            "/v1/geofences/x",
            r#"{"type":"Feature","id":"y","properties":{"radius_m":5},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}"#,
            400,
        ),
        ("DELETE", "/v1/geofences/nope", "", 404),
        ("GET", "/v1/geofences/nope/occupants", "", 404),
        ("GET", "/v1/geofence-events?since=yesterday", "", 400),
    ] {
        let (got, body) = http(&addr, method, path, Some(body));
        assert_eq!(got, status, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["message"].is_string(), "{body}");
    }

    // Add a 4 km circle at the center, replace it by a 2 km one, add and remove another.
    let mut changes: Vec<Change> = Vec::new();
    let mut step = |method: &str, id: &str, body: Option<String>, want: u16| {
        let change = change_geofence(&addr, method, id, body, want);
        let at = change.at;
        changes.push(change);
        std::thread::sleep(Duration::from_millis(1500));
        at
    };
    let w1 = step("PUT", "depot", Some(circle_feature(4000.0)), 201);
    let (status, body) = http_get(&addr, "/v1/geofences/depot/occupants");
    assert_eq!(status, 200, "{body}");
    let occ: Value = serde_json::from_str(&body).unwrap();
    assert!(occ["as_of"].as_i64().unwrap() >= w1, "{body}");
    let items = occ["items"].as_array().unwrap();
    assert!(
        items.len() > 5,
        "vehicles inside a 4 km circle at the center: {body}"
    );
    assert!(items
        .iter()
        .all(|i| i["entered_at"].as_i64().unwrap() >= w1));
    assert!(
        items.iter().any(|i| i["entered_at"].as_i64() == Some(w1)),
        "entered when added"
    );
    let (status, body) = http_get(&addr, "/v1/geofences?limit=10");
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"][0]["id"], "depot");
    assert_eq!(list["items"][0]["kind"], "circle");
    step("PUT", "depot", Some(circle_feature(2000.0)), 200);
    step("PUT", "ring", Some(circle_feature(6000.0)), 201);
    step("DELETE", "ring", None, 200);
    let (status, body) = http_get(&addr, "/v1/geofence-events?geofence=ring&limit=1000");
    assert_eq!(status, 200);
    let ev: Value = serde_json::from_str(&body).unwrap();
    let ring_events = ev["items"].as_array().unwrap();
    assert!(
        ring_events
            .iter()
            .any(|e| e["cause"] == "geofence_removed" && e["kind"] == "exit"),
        "{body}"
    );
    let ts: Vec<i64> = ring_events
        .iter()
        .map(|e| e["ts"].as_i64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // Stop the job; the lake holds every final fix and every event.
    interrupt(child, rest);

    let lake = dir.path().join("lake");
    let events_in_lake = lake_events_match_the_reference(&lake, &[], &changes);

    // The changes are part of the lake's checkpoint: the job resumed on the same lake
    // has them (not the spec's geofences, which are none) with their occupants, and goes
    // on producing exactly the reference's events.
    let (child, addr, rest) = spawn_generator_job(dir.path());
    wait_ready(&addr);
    let (status, body) = http_get(&addr, "/v1/geofences/depot");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("2000"), "the replaced 2 km depot: {body}");
    assert_eq!(http_get(&addr, "/v1/geofences/ring").0, 404, "removed");
    let (_, body) = http_get(&addr, "/v1/geofences/depot/occupants");
    let occ: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !occ["items"].as_array().unwrap().is_empty(),
        "occupants restored: {body}"
    );
    std::thread::sleep(Duration::from_secs(3));
    interrupt(child, rest);
    let after = lake_events_match_the_reference(&lake, &[], &changes);
    assert!(
        after > events_in_lake,
        "the resumed job produced more events"
    );
}

/// Compares the lake's geofence events with the reference over the lake's raw fixes, the
/// `initial` geofences and `changes`; returns how many there are.
fn lake_events_match_the_reference(lake: &Path, initial: &[Geofence], changes: &[Change]) -> usize {
    let raw = duckdb(&format!(
        "select vehicle_id, tenant, epoch_ms(ts), lat, lon from {}",
        lake_glob(lake, "raw")
    ));
    let accepted: Vec<fleetflow_types::fix::Fix> = raw
        .iter()
        .map(|r| {
            fleetflow_types::fix::Fix::at(
                r[0].as_str().unwrap(),
                r[1].as_str().unwrap(),
                r[2].as_i64().unwrap(),
                r[3].as_f64().unwrap(),
                r[4].as_f64().unwrap(),
            )
        })
        .collect();
    let geo = expected_geofences(&accepted, initial, changes, 60_000);
    let mut got = lake_events(lake);
    got.sort();
    let caused = |c: GeofenceCause| got.iter().filter(|e| e.cause == c).count();
    assert!(caused(GeofenceCause::GeofenceAdded) > 5 && caused(GeofenceCause::GeofenceRemoved) > 5);
    assert!(caused(GeofenceCause::Fix) > 0);
    assert_eq!(
        got.len(),
        geo.events.len(),
        "events in the lake vs the reference"
    );
    assert_eq!(got, geo.events);
    got.len()
}

/// In `d`: a generated fleet of 60 vehicles over 20 minutes (`seed`), the `geofences`
/// (GeoJSON) and a 2-worker file job over them, run with `--serve` until the lake holds
/// its whole input.
fn serve_fleet(
    d: &Path,
    seed: u64,
    geofences: &str,
) -> (KillOnDrop, String, std::thread::JoinHandle<String>) {
    let seed = seed.to_string();
    fleetflow_ok(
        d,
        &[
            "generate",
            "--vehicles",
            "60",
            "--duration",
            "20m",
            "--seed",
            &seed,
            "--out",
            "fleet.ndjson",
        ],
    );
    std::fs::write(d.join("fences.geojson"), geofences).unwrap();
    std::fs::write(
        d.join("job.toml"),
        "name = \"served\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"fleet.ndjson\"\n[geofences]\npath = \"fences.geojson\"\ndwell_after = \"1m\"\n[lake]\nurl = \"file://./lake\"\ncheckpoint_interval = \"500ms\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let served = spawn_with_api(d, &["run", "job.toml", "--serve"]);
    wait_for_input_ended(&d.join("lake"), Duration::from_secs(120));
    served
}

/// `--serve` after a file job keeps the dataflow alive: geofence changes through the API
/// are taken (not refused), yield their events and occupancy, reach the lake and its
/// checkpoint, and equal the reference; the job ends on SIGINT with exit 0.
#[test]
fn after_a_file_job_serve_takes_geofence_changes_like_a_live_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let depot = format!(
        "{{\"type\":\"FeatureCollection\",\"features\":[{}]}}",
        json!({"type": "Feature", "id": "depot", "properties": {"radius_m": 3000.0},
            "geometry": {"type": "Point", "coordinates": [CENTER[1], CENTER[0]]}})
    );
    let (child, addr, rest) = serve_fleet(d, 3, &depot);
    let lake = d.join("lake");
    let (_, body) = http_get(&addr, "/v1/vehicles?limit=1000");
    let vehicles = serde_json::from_str::<Value>(&body).unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(vehicles, 60, "{body}");

    let mut changes = Vec::new();
    let mut change = |method: &str, id: &str, body: Option<String>, want: u16| {
        let change = change_served(&addr, method, id, body, want);
        let at = change.at;
        changes.push(change);
        std::thread::sleep(Duration::from_millis(700));
        at
    };
    // A circle around the whole area: every vehicle is inside.
    let all = change("PUT", "all", Some(circle_feature(60_000.0)), 201);
    let (status, body) = http_get(&addr, "/v1/geofences/all/occupants?limit=1000");
    assert_eq!(status, 200, "{body}");
    let occ: Value = serde_json::from_str(&body).unwrap();
    let items = occ["items"].as_array().unwrap();
    assert_eq!(items.len(), vehicles, "every vehicle entered: {body}");
    assert!(items.iter().all(|i| i["entered_at"].as_i64() == Some(all)));
    change("PUT", "depot", Some(circle_feature(1500.0)), 200);
    change("DELETE", "all", None, 200);
    let (_, body) = http_get(&addr, "/v1/geofence-events?geofence=all&limit=1000");
    let events: Value = serde_json::from_str(&body).unwrap();
    let kinds = |cause: &str| {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["cause"] == cause)
            .count()
    };
    assert_eq!(kinds("geofence_added"), vehicles, "{body}");
    assert_eq!(kinds("geofence_removed"), vehicles, "{body}");

    let log = interrupt(child, rest);
    assert!(
        log.contains("input done; serving the API until interrupted"),
        "{log}"
    );
    let initial = load(&depot, None).unwrap().geofences;
    lake_events_match_the_reference(&lake, &initial, &changes);

    // The changes are in the checkpoint: served again, the job has them.
    let (child, addr, rest) = spawn_with_api(d, &["run", "job.toml", "--serve"]);
    wait_ready(&addr);
    let (status, body) = http_get(&addr, "/v1/geofences/depot");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("1500"), "the replaced depot: {body}");
    assert_eq!(http_get(&addr, "/v1/geofences/all").0, 404, "removed");
    interrupt(child, rest);
}

/// A circle of `radius_m` at `(lat, lon)`, as a request body.
fn circle_at(lat: f64, lon: f64, radius_m: f64) -> String {
    json!({"type": "Feature", "properties": {"radius_m": radius_m},
        "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    .to_string()
}

/// More runtime changes than a version of the fence set layers on its base (so that the
/// layers fold into a new base at least once): the spec's geofences replaced, removed and
/// added again, and new ones, on a served file job. The lake's events equal the reference.
#[test]
fn hundreds_of_runtime_changes_yield_the_events_of_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fences = random_fences(21, 120).to_string();
    let initial = load(&fences, None).unwrap().geofences;
    let ids: Vec<String> = initial.iter().map(|g| g.id.to_string()).collect();
    let (child, addr, rest) = serve_fleet(d, 4, &fences);
    let lake = d.join("lake");

    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    let mut live: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    let mut changes = Vec::new();
    for k in 0..400 {
        let id = match k % 4 {
            3 => format!("new{k}"),
            _ => ids[rng.random_range(0..ids.len())].clone(),
        };
        if k % 4 == 2 && live.contains(&id) {
            changes.push(change_served(&addr, "DELETE", &id, None, 200));
            live.remove(&id);
            continue;
        }
        let (lat, lon) = offset(
            CENTER[0],
            CENTER[1],
            rng.random_range(-8_000.0..8_000.0),
            rng.random_range(-8_000.0..8_000.0),
        );
        let body = circle_at(lat, lon, rng.random_range(300.0..3_000.0));
        let want = if live.contains(&id) { 200 } else { 201 };
        changes.push(change_served(&addr, "PUT", &id, Some(body), want));
        live.insert(id);
    }
    let (_, body) = http_get(&addr, "/v1/geofences?limit=1000");
    let listed = serde_json::from_str::<Value>(&body).unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, live.len(), "{body}");
    interrupt(child, rest);
    lake_events_match_the_reference(&lake, &initial, &changes);
}
