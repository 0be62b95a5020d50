//! Shared by the end-to-end benches: cached generated inputs and running the release binary.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An environment variable or a default.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Where generated inputs are cached: `$CARGO_TARGET_DIR/bench-data`.
pub fn data_dir() -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("bench-data"))
        .unwrap_or(dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A generated input of about `events` fixes from `vehicles` vehicles in `files` files
/// (5 s interval), generated once and cached.
pub fn generated_input(bin: &str, events: u64, vehicles: u64, files: &str) -> PathBuf {
    generated_input_every(bin, events, vehicles, files, 5_000)
}

/// [`generated_input`] with each vehicle reporting every `interval_ms`.
pub fn generated_input_every(
    bin: &str,
    events: u64,
    vehicles: u64,
    files: &str,
    interval_ms: u64,
) -> PathBuf {
    let every = if interval_ms == 5_000 {
        String::new()
    } else {
        format!("-i{interval_ms}")
    };
    let input = data_dir().join(format!("gen-{events}-{vehicles}-f{files}{every}"));
    if !input.exists() {
        let st = Command::new(bin)
            .args([
                "generate",
                "--vehicles",
                &vehicles.to_string(),
                "--duration",
                &format!("{}ms", events / vehicles * interval_ms),
                "--interval",
                &format!("{interval_ms}ms"),
                "--files",
                files,
                "--out",
            ])
            .arg(&input)
            .status()
            .unwrap();
        assert!(st.success(), "generate");
    }
    input
}

/// What one run printed in its summary.
#[derive(Debug, Default)]
pub struct Figures {
    /// Events per second (wall time of the whole run).
    pub events_per_s: String,
    /// Start-up time, s.
    pub startup_s: String,
    /// Events per second after start-up.
    pub processing_events_per_s: String,
    /// Read-to-visible latency p50, ms.
    pub p50_ms: Option<u64>,
    /// The same, p99.
    pub p99_ms: Option<u64>,
    /// Peak resident memory, MiB.
    pub peak_mib: String,
    /// The `rows` line (rows per dataset).
    pub rows: String,
    /// The `events` and `dead` lines (read, and rejected by reason).
    pub counts: String,
}

impl Figures {
    /// A number of the `events` and `dead` lines: `count("events")` (events read),
    /// `count("malformed=")` (rejected for that reason).
    pub fn count(&self, label: &str) -> u64 {
        let at = self.counts.find(label).expect("a count") + label.len();
        let digits: String = self.counts[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a number")
    }
}

/// Runs `fleetflow run spec` and reads its closing summary.
pub fn run(bin: &str, spec: &Path) -> Figures {
    let out = Command::new(bin)
        .args(["run"])
        .arg(spec)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{summary}");
    let field = |prefix: &str| {
        summary
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    let events_per_s = field("events")
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let startup = field("startup");
    let startup_s = startup
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .trim_end_matches('s')
        .to_string();
    let processing_events_per_s = startup
        .split("(then ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let lat = field("latency");
    let mut lat = lat.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    let (p50_ms, p99_ms) = (lat.next(), lat.next());
    let peak_mib = field("peak rss")
        .split_whitespace()
        .nth(2)
        .unwrap_or("?")
        .to_string();
    Figures {
        events_per_s,
        startup_s,
        processing_events_per_s,
        p50_ms,
        p99_ms,
        peak_mib,
        rows: field("rows"),
        counts: format!("{}; {}", field("events"), field("dead")),
    }
}

/// The generator's default center and area radius.
const CENTER: [f64; 2] = [52.52, 13.405];
const AREA_M: f64 = 15_000.0;

fn offset(lat: f64, lon: f64, north_m: f64, east_m: f64) -> [f64; 2] {
    [
        lon + east_m / (111_195.0 * lat.to_radians().cos()),
        lat + north_m / 111_195.0,
    ]
}

/// A point spread uniformly over the generator's area, `[lon, lat]`.
fn random_point(rng: &mut impl Rng) -> [f64; 2] {
    random_point_within(rng, AREA_M)
}

/// A point spread uniformly over the disc of radius `area_m` around the generator's
/// center, `[lon, lat]`.
fn random_point_within(rng: &mut impl Rng, area_m: f64) -> [f64; 2] {
    let (r, a) = (
        area_m * rng.random::<f64>().sqrt(),
        rng.random_range(0.0..std::f64::consts::TAU),
    );
    offset(CENTER[0], CENTER[1], r * a.cos(), r * a.sin())
}

/// The median of a non-empty list.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `n` random geofences, half circles, half star-shaped polygons, 50-500 m across.
pub fn fences(n: usize) -> String {
    fences_within(n, AREA_M)
}

/// Like [`fences`], spread over the disc of radius `area_m` around the generator's center
/// instead of its area (a wider disc leaves most of them where no vehicle drives).
pub fn fences_within(n: usize, area_m: f64) -> String {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let features: Vec<_> = (0..n)
        .map(|i| {
            let [lon, lat] = random_point_within(&mut rng, area_m);
            let radius = rng.random_range(25.0..250.0);
            if i % 2 == 0 {
                json!({"type": "Feature", "id": format!("c{i}"), "properties": {"radius_m": radius},
                    "geometry": {"type": "Point", "coordinates": [lon, lat]}})
            } else {
                let k = rng.random_range(5..10);
                let mut ring: Vec<[f64; 2]> = (0..k)
                    .map(|j| {
                        let t = std::f64::consts::TAU * j as f64 / k as f64;
                        let rr = radius * rng.random_range(0.5..1.0);
                        offset(lat, lon, rr * t.cos(), rr * t.sin())
                    })
                    .collect();
                ring.push(ring[0]);
                json!({"type": "Feature", "id": format!("p{i}"), "properties": {},
                    "geometry": {"type": "Polygon", "coordinates": [ring]}})
            }
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features}).to_string()
}

/// `n` random circular geofences (id, lat, lon, radius in m), 200 m to 2 km in radius,
/// spread uniformly over the generator's area: a GeoJSON collection for the job and the
/// same circles as CSV (`id,lat,lon,radius_m`) for a SQL reference.
pub fn circles(n: usize) -> (String, String) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut csv = String::from("id,lat,lon,radius_m\n");
    let features: Vec<_> = (0..n)
        .map(|i| {
            let [lon, lat] = random_point(&mut rng);
            let radius: f64 = rng.random_range(200.0..2000.0);
            csv.push_str(&format!("c{i},{lat},{lon},{radius}\n"));
            json!({"type": "Feature", "id": format!("c{i}"), "properties": {"radius_m": radius},
                "geometry": {"type": "Point", "coordinates": [lon, lat]}})
        })
        .collect();
    (
        json!({"type": "FeatureCollection", "features": features}).to_string(),
        csv,
    )
}
