//! The dataflow against the plain sequential reference of semantics §1-§4 (tests/common),
//! on generated data with disorder, duplicates and junk lines, shuffled within the
//! lateness, re-batched, split over several files, with 1 and 2 workers; and on the real
//! Porto taxi sample.

mod common;

use common::reference::*;
use common::*;
use fleetflow_types::records::TierRow;
use fleetflow_types::registry::VehicleRegistry;

const TIERS: [i64; 3] = [60_000, 3_600_000, 86_400_000];

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
