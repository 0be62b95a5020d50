//! Test data: generated fleets (with the trouble real fleets make), reordered and split
//! over files; the real Porto taxi sample as input lines.

use super::test_data;
use std::path::{Path, PathBuf};

/// Writes lines to a file.
pub fn write_lines(path: &Path, lines: &[String]) {
    let mut body = lines.join("\n");
    body.push('\n');
    std::fs::write(path, body).unwrap();
}

/// Generated lines (the generator's output in its own arrival order).
pub fn generated_lines(
    vehicles: u32,
    minutes: u64,
    disorder_s: u64,
    duplicates: f64,
    bad_lines: f64,
    seed: u64,
) -> Vec<String> {
    use fleetflow_types::config::GeneratorSpec;
    use fleetflow_types::time::HumanDuration;
    generated_with(GeneratorSpec {
        vehicles,
        seed,
        duration: Some(HumanDuration::from_millis(minutes * 60_000)),
        disorder: (disorder_s > 0).then(|| HumanDuration::from_millis(disorder_s * 1000)),
        duplicates,
        bad_lines,
        // Start just before midnight so that runs cross a day (and a month) boundary.
        start: "2025-01-31T23:40:00Z".into(),
        ..GeneratorSpec::default()
    })
}

/// Every line of a (finite) generator, in the order it sends them.
pub fn generated_with(spec: fleetflow_types::config::GeneratorSpec) -> Vec<String> {
    use fleetflow_connectors::generator::Generator;
    use fleetflow_connectors::source::{Polled, Source};
    let mut g = Generator::new(&spec, 0, 1);
    let mut out = Vec::new();
    while let Polled::Data(_) = g
        .poll(0, 4096, &mut |l, _, _| {
            out.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap()
    {}
    out
}

/// The `vehicle_id` of a line, if it has one.
pub fn vehicle_of(line: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["vehicle_id"].as_str().map(str::to_string))
}

/// Shuffles each vehicle's lines within `max_ms` of event time among themselves, keeping
/// the places of every vehicle's lines in the stream: how the stream interleaves vehicles
/// does not change, and no fix moves behind its vehicle's fixes by more than `max_ms`.
pub fn shuffle_each_vehicle_within(lines: &[String], max_ms: i64, seed: u64) -> Vec<String> {
    let mut by_vehicle: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, l) in lines.iter().enumerate() {
        by_vehicle
            .entry(vehicle_of(l).unwrap_or_default())
            .or_default()
            .push(i);
    }
    let mut out = lines.to_vec();
    for (k, places) in by_vehicle.values().enumerate() {
        let own: Vec<String> = places.iter().map(|i| lines[*i].clone()).collect();
        for (place, line) in places
            .iter()
            .zip(shuffle_within(&own, max_ms, seed ^ k as u64))
        {
            out[*place] = line;
        }
    }
    out
}

/// Writes `lines` to `parts` files under `dir`, each vehicle's lines in one file (in their
/// order), and returns the directory.
pub fn split_by_vehicle(dir: &Path, lines: &[String], parts: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut files: Vec<Vec<String>> = vec![Vec::new(); parts];
    for l in lines {
        let v = vehicle_of(l).unwrap_or_default();
        let h = v
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        files[h % parts].push(l.clone());
    }
    for (k, part) in files.iter().enumerate() {
        write_lines(&dir.join(format!("part-{k}.ndjson")), part);
    }
    dir.to_path_buf()
}

/// Shuffles lines so that no fix moves more than `max_ms` of event time behind a fix
/// already delivered (junk lines keep a random place): sort by `ts + U[0, max_ms)`.
pub fn shuffle_within(lines: &[String], max_ms: i64, seed: u64) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut keyed: Vec<(i64, usize, &String)> = Vec::with_capacity(lines.len());
    let mut last_ts = 0i64;
    for (i, l) in lines.iter().enumerate() {
        let ts = serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["ts"].as_i64())
            .unwrap_or(last_ts);
        last_ts = ts;
        keyed.push((ts + rng.random_range(0..max_ms), i, l));
    }
    keyed.sort();
    keyed.into_iter().map(|(_, _, l)| l.clone()).collect()
}

/// Porto taxi trips (ECML/PKDD 2015 sample) as NDJSON lines in event-time order: one fix
/// every 15 s from the trip's TIMESTAMP, vehicle = TAXI_ID.
pub fn porto_lines(file: &str) -> Vec<String> {
    let path = test_data(&format!("porto/{file}"));
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (taxi, ts, poly) = (col("TAXI_ID"), col("TIMESTAMP"), col("POLYLINE"));
    let mut fixes: Vec<(i64, String, String)> = Vec::new();
    for rec in reader.records() {
        let rec = rec.unwrap();
        let start: i64 = rec[ts].parse().unwrap();
        let points: Vec<[f64; 2]> = serde_json::from_str(&rec[poly]).unwrap();
        for (i, [lon, lat]) in points.into_iter().enumerate() {
            let t = (start + 15 * i as i64) * 1000;
            let line = format!("{{\"vehicle_id\":\"{}\",\"ts\":{t},\"lat\":{lat},\"lon\":{lon},\"tenant\":\"porto\"}}", &rec[taxi]);
            fixes.push((t, rec[taxi].to_string(), line));
        }
    }
    fixes.sort();
    fixes.into_iter().map(|(_, _, l)| l).collect()
}
