//! The dataflow against the plain sequential reference of semantics §1-§4 (tests/common),
//! on generated data with disorder, duplicates and junk lines, shuffled within the
//! lateness, re-batched, split over several files, with 1 and 2 workers; and on the real
//! Porto taxi sample.

mod common;

use common::reference::{expected, Expected};
use common::*;
use fleetflow::job::{Captured, RunResult};
use fleetflow_types::records::{Reason, TierRow};
use fleetflow_types::registry::VehicleRegistry;

const TIERS: [i64; 3] = [60_000, 3_600_000, 86_400_000];

fn generated_registry(vehicles: u32) -> VehicleRegistry {
    let spec = fleetflow_types::config::GeneratorSpec {
        vehicles,
        ..Default::default()
    };
    let mut r = VehicleRegistry::default();
    for row in fleetflow_connectors::generator::registry_rows(&spec) {
        r.insert(row);
    }
    r
}

fn registry_csv(r: &VehicleRegistry, vehicles: u32) -> String {
    let mut csv = String::from("vehicle_id,tenant,tank_capacity_l,class\n");
    for i in 0..vehicles {
        let id = format!("V{i:05}");
        if let Some(info) = r.get(&id) {
            csv.push_str(&format!(
                "{id},{},{},van\n",
                info.tenant.as_deref().unwrap_or(""),
                info.tank_capacity_l.unwrap_or(50.0)
            ));
        }
    }
    csv
}

fn compare_rows(got: &[TierRow], want: &[TierRow]) {
    assert_eq!(got.len(), want.len(), "number of tier rows");
    for (g, w) in got.iter().zip(want) {
        let key = format!("tier {} {} {}", w.tier, w.vehicle_id, w.window_start);
        assert_eq!(
            (
                g.tier,
                &g.vehicle_id,
                &g.tenant,
                g.window_start,
                g.window_end,
                g.fixes,
                g.first_ts,
                g.last_ts
            ),
            (
                w.tier,
                &w.vehicle_id,
                &w.tenant,
                w.window_start,
                w.window_end,
                w.fixes,
                w.first_ts,
                w.last_ts
            ),
            "{key}"
        );
        assert_eq!(
            (g.lat, g.lon),
            (w.lat, w.lon),
            "{key}: position of the last fix"
        );
        assert_eq!(g.max_speed_kmh, w.max_speed_kmh, "{key}");
        assert_eq!(
            g.avg_speed_kmh.is_some(),
            w.avg_speed_kmh.is_some(),
            "{key}"
        );
        if let (Some(a), Some(b)) = (g.avg_speed_kmh, w.avg_speed_kmh) {
            assert_close(a, b, &format!("{key} avg_speed"));
        }
        for (a, b, what) in [
            (g.distance_km, w.distance_km, "distance"),
            (g.fuel_used_l, w.fuel_used_l, "fuel"),
            (g.moving_s, w.moving_s, "moving"),
            (g.idle_s, w.idle_s, "idle"),
        ] {
            assert_close(a, b, &format!("{key} {what}"));
        }
    }
}

/// Compares one run with the reference: accepted fixes exactly, dead letters and
/// duplicates by count (and implausible jumps by fix), tier rows, final vehicle state.
fn compare(exp: &Expected, result: &RunResult, mut cap: Captured) {
    cap.raw
        .sort_by(|a, b| (&a.vehicle_id, a.ts).cmp(&(&b.vehicle_id, b.ts)));
    assert_eq!(cap.raw.len(), exp.accepted.len(), "accepted fixes");
    assert!(cap.raw == exp.accepted, "accepted fixes differ");
    let s = &result.summary;
    assert_eq!(s.accepted as usize, exp.accepted.len());
    assert_eq!(s.duplicates as usize, exp.duplicates, "duplicates");
    let dl = |r: Reason| {
        s.dead_letters
            .iter()
            .find(|(x, _)| *x == r)
            .map(|(_, n)| *n as usize)
            .unwrap_or(0)
    };
    for r in [Reason::Malformed, Reason::Invalid] {
        assert_eq!(dl(r), exp.rejected.get(&r).copied().unwrap_or(0), "{r:?}");
    }
    assert_eq!(dl(Reason::Late), 0, "nothing is late within the lateness");
    assert_eq!(
        dl(Reason::ImplausibleJump),
        exp.implausible.len(),
        "implausible jumps"
    );
    let mut jumps: Vec<(String, i64)> = cap
        .dead
        .iter()
        .filter(|d| d.reason == Reason::ImplausibleJump)
        .map(|d| {
            let f = fleetflow_connectors::intake::decode(d.payload.as_bytes(), i64::MAX / 2, None)
                .unwrap();
            (f.vehicle_id.to_string(), f.ts)
        })
        .collect();
    jumps.sort();
    let want: Vec<(String, i64)> = exp
        .implausible
        .iter()
        .map(|f| (f.vehicle_id.to_string(), f.ts))
        .collect();
    assert_eq!(jumps, want, "implausible jumps carry their payload");
    assert_eq!(
        cap.dead.len(),
        exp.rejected.values().sum::<usize>() + exp.implausible.len(),
        "every rejection is a dead letter"
    );
    cap.rows.sort_by(|a, b| {
        (a.tier, &a.vehicle_id, a.window_start).cmp(&(b.tier, &b.vehicle_id, b.window_start))
    });
    compare_rows(&cap.rows, &exp.rows);
    assert_eq!(
        s.watermark,
        Some(exp.end_watermark),
        "end-of-input watermark"
    );
    assert_eq!(result.vehicles.as_of(), Some(exp.end_watermark));
    assert_eq!(
        result.vehicles.len(),
        exp.states.len(),
        "vehicles in the view"
    );
    for (vid, want) in &exp.states {
        let got = result
            .vehicles
            .get(vid)
            .unwrap_or_else(|| panic!("vehicle {vid} missing"));
        assert!(
            got.fix == want.fix,
            "{vid}: latest fix {:?} vs {:?}",
            got.fix,
            want.fix
        );
        assert_eq!(got.status, want.status, "{vid}: status");
        assert_close(
            got.today_distance_km,
            want.today_distance_km,
            &format!("{vid} today distance"),
        );
        assert_close(
            got.today_fuel_used_l,
            want.today_fuel_used_l,
            &format!("{vid} today fuel"),
        );
        assert_close(
            got.today_idle_s,
            want.today_idle_s,
            &format!("{vid} today idle"),
        );
    }
}

#[test]
fn generated_data_matches_the_reference_across_orders_batches_files_and_workers() {
    let vehicles = 40;
    let lines = generated_lines(vehicles, 45, 10, 0.02, 0.01, 11);
    let registry = generated_registry(vehicles);
    let exp = expected(&lines, &TIERS, &registry, 600_000);
    assert!(
        exp.duplicates > 0 && exp.rejected.len() == 2 && exp.accepted.len() > 10_000,
        "the input exercises the intake"
    );
    assert!(exp
        .rows
        .iter()
        .any(|r| r.fuel_used_l > 0.0 && r.idle_s > 0.0 && r.moving_s > 0.0));
    let shuffled = shuffle_within(&lines, 15_000, 5);
    assert_ne!(shuffled, lines);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vehicles.csv"),
        registry_csv(&registry, vehicles),
    )
    .unwrap();
    let extra = format!(
        "[vehicles]\nregistry = {:?}\n",
        dir.path().join("vehicles.csv")
    );
    // One file, in generator order and shuffled; the shuffled stream over three files.
    let (one, shuf, split) = write_inputs(dir.path(), &lines, &shuffled);
    for (n, (input, workers, batch)) in [
        (&one, 1, 4096),
        (&one, 2, 7),
        (&shuf, 1, 1),
        (&shuf, 2, 4096),
        (&split, 1, 100),
        (&split, 2, 13),
    ]
    .into_iter()
    .enumerate()
    {
        let lake = dir.path().join(format!("lake{n}"));
        let (result, cap) = run_file_job(input, &lake, workers, batch, &extra);
        compare(&exp, &result, cap);
    }
}

#[test]
fn porto_taxis_match_the_reference() {
    let lines = porto_lines("train.1k.csv");
    assert_eq!(lines.len(), 47_304);
    let exp = expected(&lines, &TIERS, &VehicleRegistry::default(), 600_000);
    assert!(!exp.implausible.is_empty(), "the sample has GPS outliers");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("porto.ndjson");
    write_lines(&input, &shuffle_within(&lines, 20_000, 3));
    for workers in [1, 2] {
        let (result, cap) = run_file_job(
            &input,
            &dir.path().join(format!("lake{workers}")),
            workers,
            512,
            "",
        );
        compare(&exp, &result, cap);
    }
}

#[test]
fn one_minute_rows_sum_to_hours_and_hours_to_days() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    write_lines(&input, &generated_lines(25, 90, 5, 0.0, 0.0, 3));
    let (_, cap) = run_file_job(&input, &dir.path().join("lake"), 2, 4096, "");
    let rows = cap.rows;
    assert!(
        rows.iter().any(|r| r.tier == 2
            && r.window_start != rows.iter().find(|x| x.tier == 2).unwrap().window_start),
        "the run crosses midnight"
    );
    for (fine, coarse) in [(0u8, 1u8), (1, 2)] {
        let coarse_rows: Vec<&TierRow> = rows.iter().filter(|r| r.tier == coarse).collect();
        assert!(!coarse_rows.is_empty());
        for c in coarse_rows {
            let parts: Vec<&TierRow> = rows
                .iter()
                .filter(|r| {
                    r.tier == fine
                        && r.vehicle_id == c.vehicle_id
                        && r.window_start >= c.window_start
                        && r.window_end <= c.window_end
                })
                .collect();
            let key = format!("{} tier {coarse} at {}", c.vehicle_id, c.window_start);
            assert_eq!(
                parts.iter().map(|p| p.fixes).sum::<u32>(),
                c.fixes,
                "{key} fixes"
            );
            assert_eq!(
                parts.iter().map(|p| p.first_ts).min(),
                Some(c.first_ts),
                "{key}"
            );
            assert_eq!(
                parts.iter().map(|p| p.last_ts).max(),
                Some(c.last_ts),
                "{key}"
            );
            let last = parts.iter().max_by_key(|p| p.last_ts).unwrap();
            assert_eq!((last.lat, last.lon), (c.lat, c.lon), "{key}");
            assert_eq!(
                parts
                    .iter()
                    .filter_map(|p| p.max_speed_kmh)
                    .reduce(f64::max),
                c.max_speed_kmh,
                "{key}"
            );
            for (what, f) in [
                (
                    "distance",
                    (|r: &TierRow| r.distance_km) as fn(&TierRow) -> f64,
                ),
                ("fuel", |r| r.fuel_used_l),
                ("moving", |r| r.moving_s),
                ("idle", |r| r.idle_s),
            ] {
                let sum: f64 = parts.iter().map(|p| f(p)).sum();
                let tol = 1e-9 * sum.abs().max(1.0);
                assert!((sum - f(c)).abs() <= tol, "{key} {what}: {sum} vs {}", f(c));
            }
        }
    }
}
