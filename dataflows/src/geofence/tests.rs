use super::index::ring_holds;
use super::*;
use fleetflow_types::geofence::{Geofence, Shape};
use fleetflow_types::records::GeofenceChange;
use serde_json::json;
use std::collections::HashMap;

fn circle(id: &str, lat: f64, lon: f64, r: f64, tenant: Option<&str>) -> Arc<Geofence> {
    let mut props = json!({"radius_m": r});
    if let Some(t) = tenant {
        props["tenant"] = json!(t);
    }
    Arc::new(
        Geofence::from_feature(
            &json!({"type": "Feature", "id": id, "properties": props,
                "geometry": {"type": "Point", "coordinates": [lon, lat]}}),
            None,
            None,
            "#0",
        )
        .unwrap(),
    )
}

fn fix(v: &str, ts: Millis, lat: f64, lon: f64) -> FixPoint {
    FixPoint {
        slot: 0,
        vehicle_id: v.into(),
        tenant: "acme".into(),
        ts,
        lat,
        lon,
        version: 0,
    }
}

fn kinds(out: &GeoOutputs) -> Vec<(String, &'static str, Millis, &'static str)> {
    out.events
        .iter()
        .map(|e| {
            (
                e.geofence_id.to_string(),
                e.kind.as_str(),
                e.ts,
                e.cause.as_str(),
            )
        })
        .collect()
}

#[test]
fn the_flat_ring_test_agrees_with_geo() {
    use geo::coordinate_position::{CoordPos, CoordinatePosition};
    use geo::{Coord, LineString, Polygon};
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(20_000));
    runner
        .run(
            &(
                3usize..12,
                proptest::collection::vec((0.2f64..1.0, 0.0f64..1.0), 12),
                (-1.2f64..1.2, -1.2f64..1.2),
                0usize..12,
                0u8..3,
            ),
            |(n, radii, (px, py), k, which)| {
                // A star polygon around the origin: simple by construction.
                let mut ring: Vec<Coord<f64>> = (0..n)
                    .map(|i| {
                        let a = std::f64::consts::TAU * (i as f64 + radii[i].1 * 0.9) / n as f64;
                        // Rounded so that some edges are axis-aligned or share coordinates.
                        let r = (radii[i].0 * 8.0).round() / 8.0;
                        Coord {
                            x: (r * a.cos() * 8.0).round() / 8.0,
                            y: (r * a.sin() * 8.0).round() / 8.0,
                        }
                    })
                    .collect();
                ring.dedup();
                ring.push(ring[0]);
                let poly = Polygon::new(LineString(ring.clone()), vec![]);
                prop_assume!(ring.len() >= 4 && geo::Validation::is_valid(&poly));
                // Random points, vertices, and edge midpoints (exact on axis-aligned
                // edges with these coordinates).
                let c = match which {
                    0 => Coord { x: px, y: py },
                    1 => ring[k % (ring.len() - 1)],
                    _ => {
                        let (a, b) = (ring[k % (ring.len() - 1)], ring[k % (ring.len() - 1) + 1]);
                        Coord {
                            x: (a.x + b.x) / 2.0,
                            y: (a.y + b.y) / 2.0,
                        }
                    }
                };
                prop_assert_eq!(
                    ring_holds(&ring, c),
                    poly.coordinate_position(&c) != CoordPos::Outside,
                    "point {:?} ring {:?}",
                    c,
                    ring
                );
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn the_index_finds_only_containing_fences() {
    let fences: Vec<_> = (0..1000)
        .map(|i| circle(&format!("c{i}"), 41.0 + i as f64 * 0.01, -8.6, 100.0, None))
        .collect();
    let mut idx = FenceIndex::new(fences);
    let mut out = Vec::new();
    idx.containing(41.5, -8.6, "acme", &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(idx.get(out[0]).unwrap().id, "c50");
    assert_eq!(idx.id(out[0]), "c50");
    idx.remove("c50");
    idx.containing(41.5, -8.6, "acme", &mut out);
    assert!(out.is_empty());
    idx.insert(circle("again", 41.5, -8.6, 10.0, Some("globex")));
    // A large geofence goes to the R-tree and is found like the small ones.
    idx.insert(circle("region", 41.4, -8.6, 30_000.0, None));
    idx.containing(41.5, -8.6, "acme", &mut out);
    assert_eq!(
        out.iter().map(|m| idx.id(*m).as_str()).collect::<Vec<_>>(),
        ["region"]
    );
    assert_eq!(idx.tree.size(), 1);
    idx.remove("region");
    idx.containing(41.5, -8.6, "acme", &mut out);
    assert!(out.is_empty(), "tenant fence");
    idx.containing(41.5, -8.6, "globex", &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(idx.len(), 1000);
}

/// The ids of `idx`'s geofences containing the point, for tenant `acme`.
fn ids_at(idx: &FenceIndex, lat: f64, lon: f64) -> Vec<String> {
    let mut out = Vec::new();
    idx.containing(lat, lon, "acme", &mut out);
    out.into_iter().map(|m| idx.id(m).to_string()).collect()
}

/// The index skips the cells of empty blocks; a geofence added where no block was (far
/// from the others, or into an empty index) is found all the same.
#[test]
fn geofences_added_outside_the_indexed_extent_are_found() {
    let mut idx = FenceIndex::new([circle("porto", 41.15, -8.61, 200.0, None)]);
    assert_eq!(ids_at(&idx, 41.15, -8.61), ["porto"]);
    assert!(ids_at(&idx, 52.52, 13.405).is_empty());
    idx.insert(circle("berlin", 52.52, 13.405, 200.0, None));
    assert_eq!(ids_at(&idx, 52.52, 13.405), ["berlin"]);
    assert_eq!(ids_at(&idx, 41.15, -8.61), ["porto"]);
    // Near the new one but in an empty cell: nothing.
    assert!(ids_at(&idx, 52.53, 13.405).is_empty());
    idx.insert(circle("berlin-north", 52.53, 13.405, 200.0, None));
    assert_eq!(ids_at(&idx, 52.53, 13.405), ["berlin-north"]);
    idx.remove("berlin");
    assert!(ids_at(&idx, 52.52, 13.405).is_empty());
    let mut empty = FenceIndex::new([]);
    assert!(ids_at(&empty, 41.15, -8.61).is_empty());
    empty.insert(circle("porto", 41.15, -8.61, 200.0, None));
    assert_eq!(ids_at(&empty, 41.15, -8.61), ["porto"]);
}

#[test]
fn polygons_sharing_cells_survive_each_others_removal() {
    let square = |id: &str, d: f64| {
        let ring = json!([
            [-8.6 - d, 41.5 - d],
            [-8.6 + d, 41.5 - d],
            [-8.6 + d, 41.5 + d],
            [-8.6 - d, 41.5 + d],
            [-8.6 - d, 41.5 - d]
        ]);
        polygon(id, ring)
    };
    let mut idx = FenceIndex::new([square("a", 0.001), square("b", 0.002)]);
    assert_eq!(ids_at(&idx, 41.5, -8.6), ["a", "b"]);
    assert_eq!(ids_at(&idx, 41.5015, -8.6), ["b"]);
    idx.remove("a");
    assert_eq!(ids_at(&idx, 41.5, -8.6), ["b"]);
    assert_eq!(ids_at(&idx, 41.5015, -8.6), ["b"]);
    assert_eq!(ids_at(&idx, 41.503, -8.6), Vec::<String>::new());
    idx.insert(square("c", 0.0005));
    assert_eq!(ids_at(&idx, 41.5, -8.6).len(), 2);
    idx.remove("b");
    assert_eq!(ids_at(&idx, 41.5, -8.6), ["c"]);
}

#[test]
fn transitions_dwell_and_changes() {
    let a = circle("a", 0.0, 0.0, 1000.0, None);
    let mut g = Geofencing::new(Arc::new(FenceIndex::new([a])), 0, 60_000);
    let mut out = GeoOutputs::default();
    g.on_fix(fix("v", 0, 0.0, 0.0), &mut out);
    g.on_fix(fix("v", 30_000, 0.0, 0.001), &mut out);
    g.on_fix(fix("v", 60_000, 0.0, 0.002), &mut out);
    g.on_fix(fix("v", 70_000, 0.0, 0.002), &mut out); // unmoved: no second dwell
    g.on_fix(fix("v", 80_000, 1.0, 0.0), &mut out);
    g.on_fix(fix("v", 90_000, 0.0, 0.0), &mut out);
    assert_eq!(
        kinds(&out),
        [
            ("a".into(), "enter", 0, "fix"),
            ("a".into(), "dwell", 60_000, "fix"),
            ("a".into(), "exit", 80_000, "fix"),
            ("a".into(), "enter", 90_000, "fix"),
        ]
    );
    out.events.clear();
    // Replace `a` by a fence that still holds the vehicle, add `b` elsewhere, remove `a`.
    let change = |seq, id: &str, g: Option<Arc<Geofence>>| GeofenceChange {
        seq,
        id: id.into(),
        geofence: g,
        at: None,
    };
    g.register_direct(
        change(1, "a", Some(circle("a", 0.0, 0.0, 500.0, None))),
        Some(100_000),
        &mut out,
    );
    g.register_direct(
        change(2, "b", Some(circle("b", 5.0, 5.0, 10.0, None))),
        Some(100_000),
        &mut out,
    );
    g.register_direct(change(3, "a", None), Some(110_000), &mut out);
    assert!(
        out.events.is_empty(),
        "a vehicle takes a change when its clock reaches it"
    );
    assert_eq!(g.versions(), 4);
    for seq in 1..=3 {
        g.apply(0, seq, &mut out);
    }
    g.taken(3);
    assert_eq!(g.versions(), 1, "versions every vehicle passed go");
    assert_eq!(
        kinds(&out),
        [
            ("a".into(), "exit", 100_000, "geofence_removed"),
            ("a".into(), "enter", 100_000, "geofence_added"),
            ("a".into(), "exit", 110_000, "geofence_removed"),
        ]
    );
    // Occupancy nets out to nothing; every change is acknowledged.
    let mut occ: HashMap<(CompactString, Millis), isize> = HashMap::new();
    let mut applied = Vec::new();
    for (u, r) in &out.view {
        match u {
            ViewUpdate::Occupant(o) => {
                *occ.entry((o.geofence.clone(), o.entered_at)).or_default() += r
            }
            ViewUpdate::Applied { seq, .. } => applied.push(*seq),
            ViewUpdate::AsOf(_) => {}
        }
    }
    assert!(occ.values().all(|r| *r == 0), "{occ:?}");
    assert_eq!(applied, [1, 2, 3]);
    assert_eq!(g.geofences(), 1);
}

#[test]
fn a_fix_is_checked_against_its_vehicles_version() {
    let mut g = Geofencing::new(Arc::new(FenceIndex::new([])), 0, 600_000);
    let mut out = GeoOutputs::default();
    let add = GeofenceChange {
        seq: 1,
        id: "depot".into(),
        geofence: Some(circle("depot", 0.0, 0.0, 1000.0, None)),
        at: None,
    };
    g.register_direct(add, Some(50_000), &mut out);
    // Before the change in its own time: the depot does not exist for it yet.
    g.on_fix(fix("v", 40_000, 0.0, 0.0), &mut out);
    assert!(out.events.is_empty());
    // It takes the change: it is inside, so it enters at the change's time.
    g.apply(0, 1, &mut out);
    // Parked inside from then on: it dwells `dwell_after` after the change's time.
    for ts in [60_000, 649_999, 650_000, 700_000] {
        let mut later = fix("v", ts, 0.0, 0.0);
        later.version = 1;
        g.on_fix(later, &mut out);
    }
    assert_eq!(
        kinds(&out),
        [
            ("depot".into(), "enter", 50_000, "geofence_added"),
            ("depot".into(), "dwell", 650_000, "fix"),
        ]
    );
}

/// The geofences of a snapshot are encoded once per version of the set: every snapshot
/// until a change holds the same, and one after it holds the changed set.
#[test]
fn snapshots_hold_the_geofences_in_force_when_they_begin() {
    let c = |id: &str, r: f64| circle(id, 0.0, 0.0, r, None);
    let mut g = Geofencing::new(Arc::new(FenceIndex::new([c("a", 1000.0)])), 0, 600_000);
    let mut out = GeoOutputs::default();
    let ids = |snap: &GeoSnapshot| {
        let mut v: Vec<(String, f64)> = snap
            .geofences()
            .unwrap()
            .iter()
            .map(|f| match f.shape {
                Shape::Circle { radius_m, .. } => (f.id.to_string(), radius_m),
                _ => unreachable!("circles only"),
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let first = g.snapshot(true);
    assert_eq!(ids(&first), [("a".to_string(), 1000.0)]);
    assert_eq!(first.fences, g.snapshot(true).fences);
    assert!(g.snapshot(false).fences.is_empty());
    let put = |seq, id: &str, r| GeofenceChange {
        seq,
        id: id.into(),
        geofence: Some(c(id, r)),
        at: None,
    };
    g.register_direct(put(1, "b", 50.0), Some(2_000), &mut out);
    let after = g.snapshot(true);
    assert_eq!(
        ids(&after),
        [("a".to_string(), 1000.0), ("b".to_string(), 50.0)]
    );
    g.register_direct(put(2, "a", 10.0), Some(3_000), &mut out);
    assert_eq!(
        ids(&g.snapshot(true)),
        [("a".to_string(), 10.0), ("b".to_string(), 50.0)]
    );
}

#[test]
fn restored_versions_are_rebuilt_by_undoing_the_logged_changes() {
    let c = |id: &str, r: f64| circle(id, 0.0, 0.0, r, None);
    let mut g = Geofencing::new(Arc::new(FenceIndex::new([c("a", 1000.0)])), 0, 600_000);
    let mut out = GeoOutputs::default();
    g.on_fix(fix("v", 1_000, 0.0, 0.005), &mut out); // 556 m east: inside a
    let change = |seq, id: &str, g: Option<Arc<Geofence>>| GeofenceChange {
        seq,
        id: id.into(),
        geofence: g,
        at: None,
    };
    g.register_direct(change(1, "a", Some(c("a", 100.0))), Some(2_000), &mut out);
    g.register_direct(change(2, "b", Some(c("b", 1000.0))), Some(3_000), &mut out);
    let snap = g.snapshot(true);
    assert_eq!((snap.latest, snap.log.len()), (2, 2));
    let fences = snap.geofences().unwrap();
    let r = GeoRestore {
        latest: snap.latest,
        log: snap.log.iter().map(|l| (l.0, l.clone())).collect(),
        vehicles: vec![(0, snap.vehicles[0].clone())],
    };
    let mut back = GeoOutputs::default();
    let mut h = Geofencing::restore(Arc::new(FenceIndex::new(fences)), r, 600_000, &mut back);
    assert_eq!(h.versions(), 3);
    // The restored vehicle is still on version 0 and takes both changes as before.
    for (x, out) in [(&mut g, &mut out), (&mut h, &mut back)] {
        out.events.clear();
        x.apply(0, 1, out);
        x.apply(0, 2, out);
    }
    assert_eq!(kinds(&back), kinds(&out));
    assert_eq!(
        kinds(&out),
        [
            ("a".into(), "exit", 2_000, "geofence_removed"),
            ("b".into(), "enter", 3_000, "geofence_added"),
        ]
    );
}

/// A vehicle restored inside a geofence it has not dwelled in yet dwells when it would
/// have without the restore.
#[test]
fn a_restored_visit_dwells_as_it_would_have() {
    let fences = || Arc::new(FenceIndex::new([circle("a", 0.0, 0.0, 1000.0, None)]));
    let mut g = Geofencing::new(fences(), 0, 600_000);
    let mut out = GeoOutputs::default();
    g.on_fix(fix("v", 1_000, 0.0, 0.0), &mut out);
    let snap = g.snapshot(true);
    let r = GeoRestore {
        latest: snap.latest,
        log: Default::default(),
        vehicles: vec![(0, snap.vehicles[0].clone())],
    };
    let mut back = GeoOutputs::default();
    let mut h = Geofencing::restore(fences(), r, 600_000, &mut back);
    for (x, out) in [(&mut g, &mut out), (&mut h, &mut back)] {
        out.events.clear();
        x.on_fix(fix("v", 600_999, 0.0, 0.0), out);
        x.on_fix(fix("v", 601_000, 0.0, 0.0), out);
    }
    assert_eq!(kinds(&back), [("a".into(), "dwell", 601_000, "fix")]);
    assert_eq!(kinds(&back), kinds(&out));
}

fn star(id: &str, lat: f64, lon: f64, radii: &[f64]) -> Arc<Geofence> {
    let k = radii.len();
    let mut ring: Vec<[f64; 2]> = radii
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let t = std::f64::consts::TAU * j as f64 / k as f64;
            [lon + r * t.cos(), lat + r * t.sin()]
        })
        .collect();
    ring.push(ring[0]);
    polygon(id, json!(ring))
}

/// A polygon geofence of one `ring` (GeoJSON positions, closed), for every tenant.
fn polygon(id: &str, ring: serde_json::Value) -> Arc<Geofence> {
    Arc::new(
        Geofence::from_feature(
            &json!({"type": "Feature", "id": id, "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [ring]}}),
            None,
            None,
            "#0",
        )
        .unwrap(),
    )
}

proptest::proptest! {
    /// Whatever the index is built with and whatever is added and removed after, in any
    /// order, a lookup anywhere finds exactly the geofences in force that contain the point
    /// (each tested on its own), so the cells' index, and the rings copied into the cells,
    /// stay right as geofences that share cells come and go.
    #[test]
    fn lookups_equal_testing_every_geofence_in_force_after_any_changes(
        initial in proptest::collection::vec(
            (0.001f64..0.003, 0.001f64..0.003, 0.0002f64..0.0008, proptest::bool::ANY),
            0..4,
        ),
        ops in proptest::collection::vec(
            (0u8..12, proptest::option::weighted(0.7, (
                0.0f64..0.004, 0.0f64..0.004,
                proptest::collection::vec(0.0002f64..0.0015, 3..8),
                proptest::bool::ANY,
            ))),
            1..40,
        ),
        points in proptest::collection::vec((0.0f64..0.006, 0.0f64..0.006), 20),
    ) {
        let mut in_force: std::collections::BTreeMap<String, Arc<Geofence>> = Default::default();
        for (k, (dlat, dlon, r, is_circle)) in initial.into_iter().enumerate() {
            // Ids the changes below may replace or remove (`g0`..`g3`).
            let id = format!("g{k}");
            let (lat, lon) = (41.5 + dlat, -8.6 + dlon);
            let g = if is_circle {
                circle(&id, lat, lon, r * 100_000.0, None)
            } else {
                star(&id, lat, lon, &[r, r * 0.6, r, r * 0.8, r * 0.5])
            };
            in_force.insert(id, g);
        }
        let mut idx = FenceIndex::new(in_force.values().cloned());
        for (n, op) in ops {
            let id = format!("g{n}");
            if idx.slot_of(&id).is_some() {
                idx.remove(&id);
                in_force.remove(&id);
            }
            if let Some((dlat, dlon, radii, is_circle)) = op {
                let (lat, lon) = (41.5 + dlat, -8.6 + dlon);
                let g = if is_circle {
                    circle(&id, lat, lon, radii[0] * 100_000.0, None)
                } else {
                    star(&id, lat, lon, &radii)
                };
                idx.insert(g.clone());
                in_force.insert(id, g);
            }
            for &(dlat, dlon) in &points {
                let (lat, lon) = (41.5 - 0.001 + dlat, -8.6 - 0.001 + dlon);
                let mut out = Vec::new();
                idx.containing(lat, lon, "acme", &mut out);
                let mut got: Vec<String> = out.iter().map(|s| idx.id(*s).to_string()).collect();
                got.sort();
                let want: Vec<String> = in_force
                    .values()
                    .filter(|g| g.contains(lat, lon))
                    .map(|g| g.id.to_string())
                    .collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}

/// A snapshot written a slice at a time while vehicles move in and out of geofences, new
/// vehicles appear and a change registers holds exactly the state of when it began.
#[test]
fn an_interleaved_snapshot_holds_the_state_when_it_began() {
    use crate::sliced::Sliced;
    use proptest::prelude::*;
    let encoded = |s: &GeoSnapshot| {
        let mut v: Vec<Vec<u8>> = s
            .vehicles
            .iter()
            .map(|v| postcard::to_stdvec(v).unwrap())
            .collect();
        v.sort();
        (s.fences.clone(), s.latest, s.log.clone(), v)
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&(any::<u64>(), 0usize..400), |(seed, before)| {
            let mut next = crate::sliced::below(seed);
            let fences =
                (0..4).map(|i| circle(&format!("f{i}"), 0.0, i as f64 * 0.01, 600.0, None));
            let mut g = Geofencing::new(Arc::new(FenceIndex::new(fences)), 0, 60_000);
            let mut out = GeoOutputs::default();
            let mut ts = vec![0; 300];
            let mut step = |g: &mut Geofencing, next: &mut dyn FnMut(u64) -> u64| {
                let v = next(300) as usize;
                ts[v] += 1_000 + next(30_000) as Millis;
                let mut p = fix(&format!("v{v}"), ts[v], 0.0, next(400) as f64 * 1e-4);
                p.slot = v as u32;
                g.on_fix(p, &mut GeoOutputs::default());
            };
            for _ in 0..before {
                step(&mut g, &mut next);
            }
            let reference = encoded(&g.snapshot(true));
            g.begin_snapshot(true);
            let mut registered = false;
            let blob = loop {
                if let Some(b) = g.continue_snapshot(Some(std::time::Duration::ZERO)) {
                    break b;
                }
                if !registered {
                    // A change after the snapshot began is not in it.
                    let added = circle("late", 0.0, 0.0, 50.0, None);
                    let change = GeofenceChange {
                        seq: 1,
                        id: "late".into(),
                        geofence: Some(added),
                        at: None,
                    };
                    g.register_direct(change, Some(1), &mut out);
                    registered = true;
                }
                for _ in 0..next(40) {
                    step(&mut g, &mut next);
                }
            };
            let whole: GeoSnapshot = crate::sliced::decode(&blob.contiguous()).unwrap();
            prop_assert_eq!(encoded(&whole), reference);
            Ok(())
        })
        .unwrap();
}
