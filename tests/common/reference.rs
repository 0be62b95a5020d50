//! A plain, sequential reference of semantics §1-§4, written from the text and sharing no
//! logic with the dataflow (only decoding, the haversine formula and record types).
//!
//! Every vehicle is its own clock: the lines are taken in the order given, and a fix whose
//! `ts` is below its vehicle's watermark (the greatest `ts` of its valid fixes so far minus
//! the allowed lateness) is late. So the order within each vehicle must be the order the
//! job reads them in (one file, or each vehicle's lines in one file); the order across
//! vehicles does not matter. The whole input is read: the end of input makes every fix
//! final and closes every window, and the job clock is the lower median of the vehicles'
//! clocks.

use super::assert_close;
use fleetflow::job::{Captured, RunResult};
use fleetflow_connectors::intake::decode;
use fleetflow_types::fix::{haversine_km, Fix};
use fleetflow_types::records::{Reason, Status, TierRow, VehicleState};
use fleetflow_types::registry::VehicleRegistry;
use std::collections::BTreeMap;

/// What the reference computes.
#[derive(Debug, Default)]
pub struct Expected {
    /// Accepted fixes, by (vehicle, ts).
    pub accepted: Vec<Fix>,
    /// Fixes rejected as implausible jumps, by (vehicle, ts).
    pub implausible: Vec<Fix>,
    /// Lines rejected while decoding, by reason.
    pub rejected: BTreeMap<Reason, usize>,
    /// Fixes late for their own vehicle's watermark, by (vehicle, ts).
    pub late: Vec<(String, i64)>,
    /// Duplicates dropped.
    pub duplicates: usize,
    /// Tier rows by (tier, vehicle, window_start).
    pub rows: Vec<TierRow>,
    /// Final vehicle state.
    pub states: BTreeMap<String, VehicleState>,
    /// The job clock at the end of input.
    pub end_clock: i64,
}

struct Seg {
    end_ts: i64,
    km: f64,
    litres: f64,
    moving_s: f64,
    idle_s: f64,
}

fn seg(a: &Fix, b: &Fix, capacity: Option<f64>) -> Seg {
    let km = haversine_km(a.lat, a.lon, b.lat, b.lon);
    let dt = (b.ts - a.ts) as f64 / 1000.0;
    let litres = match (
        a.fuel_used_l,
        b.fuel_used_l,
        a.fuel_level_pct,
        b.fuel_level_pct,
        capacity,
    ) {
        (Some(x), Some(y), ..) => (y - x).max(0.0),
        (_, _, Some(p), Some(q), Some(c)) => (p - q).max(0.0) * c / 100.0,
        _ => 0.0,
    };
    let implied = km / (dt / 3600.0);
    let moving = a.speed_kmh.unwrap_or(implied) >= 3.0 || b.speed_kmh.unwrap_or(implied) >= 3.0;
    let (mut moving_s, mut idle_s) = (0.0, 0.0);
    if dt <= 300.0 {
        if moving {
            moving_s = dt;
        } else if b.ignition != Some(false) {
            idle_s = dt;
        }
    }
    Seg {
        end_ts: b.ts,
        km,
        litres,
        moving_s,
        idle_s,
    }
}

/// The allowed lateness of the reference runs.
pub const LATENESS: i64 = 30_000;

/// Computes the expected results of `lines`, read in this order (see the module docs).
pub fn expected(
    lines: &[String],
    tiers: &[i64],
    registry: &VehicleRegistry,
    offline_after: i64,
) -> Expected {
    let now = fleetflow_types::time::now_ms();
    let mut e = Expected::default();
    let mut by_vehicle: BTreeMap<String, BTreeMap<i64, Fix>> = BTreeMap::new();
    // Each vehicle's clock: the greatest ts of its valid fixes.
    let mut clocks: BTreeMap<String, i64> = BTreeMap::new();
    for line in lines {
        match decode(line.as_bytes(), now, Some(registry)) {
            Err(r) => *e.rejected.entry(r.reason).or_default() += 1,
            Ok(fix) => {
                let vid = fix.vehicle_id.to_string();
                let clock = clocks.entry(vid.clone()).or_insert(i64::MIN);
                if fix.ts < clock.saturating_sub(LATENESS) {
                    e.late.push((vid, fix.ts));
                    continue;
                }
                *clock = (*clock).max(fix.ts);
                let slot = by_vehicle.entry(vid).or_default();
                match slot.get_mut(&fix.ts) {
                    Some(existing) => {
                        e.duplicates += 1;
                        if fix < *existing {
                            *existing = fix;
                        }
                    }
                    None => {
                        slot.insert(fix.ts, fix);
                    }
                }
            }
        }
    }
    e.late.sort();
    let mut all: Vec<i64> = clocks.values().copied().collect();
    all.sort();
    e.end_clock = all[(all.len() - 1) / 2];
    let end_day = e.end_clock.div_euclid(86_400_000);
    for (vid, fixes) in by_vehicle {
        let capacity = registry.get(&vid).and_then(|i| i.tank_capacity_l);
        let mut accepted: Vec<Fix> = Vec::new();
        let mut segs: Vec<Seg> = Vec::new();
        for fix in fixes.into_values() {
            if let Some(a) = accepted.last() {
                let d = haversine_km(a.lat, a.lon, fix.lat, fix.lon);
                let kmh = d / ((fix.ts - a.ts) as f64 / 3_600_000.0);
                if d > 1.0 && kmh > 300.0 {
                    e.implausible.push(fix);
                    continue;
                }
                segs.push(seg(a, &fix, capacity));
            }
            accepted.push(fix);
        }
        // Tier rows: group fixes and segment ends by window.
        for (t, size) in tiers.iter().enumerate() {
            let mut windows: BTreeMap<i64, (Vec<&Fix>, Vec<&Seg>)> = BTreeMap::new();
            for f in &accepted {
                windows
                    .entry(f.ts.div_euclid(*size) * size)
                    .or_default()
                    .0
                    .push(f);
            }
            for s in &segs {
                windows
                    .entry(s.end_ts.div_euclid(*size) * size)
                    .or_default()
                    .1
                    .push(s);
            }
            for (start, (fs, ss)) in windows {
                let last = fs.last().expect("a segment end is a fix");
                let speeds: Vec<f64> = fs.iter().filter_map(|f| f.speed_kmh).collect();
                e.rows.push(TierRow {
                    tier: t as u8,
                    vehicle_id: vid.as_str().into(),
                    tenant: last.tenant.clone(),
                    window_start: start,
                    window_end: start + size,
                    fixes: fs.len() as u32,
                    first_ts: fs[0].ts,
                    last_ts: last.ts,
                    lat: last.lat,
                    lon: last.lon,
                    avg_speed_kmh: (!speeds.is_empty())
                        .then(|| speeds.iter().sum::<f64>() / speeds.len() as f64),
                    max_speed_kmh: speeds.iter().copied().reduce(f64::max),
                    distance_km: ss.iter().map(|s| s.km).sum(),
                    fuel_used_l: ss.iter().map(|s| s.litres).sum(),
                    moving_s: ss.iter().map(|s| s.moving_s).sum(),
                    idle_s: ss.iter().map(|s| s.idle_s).sum(),
                });
            }
        }
        // Vehicle state at the end of input.
        let last = accepted.last().expect("at least one fix").clone();
        let implied = segs
            .last()
            .filter(|s| s.end_ts == last.ts)
            .map(|s| s.km / ((s.end_ts - accepted[accepted.len() - 2].ts) as f64 / 3_600_000.0));
        let status = if e.end_clock - last.ts > offline_after {
            Status::Offline
        } else if last.ignition == Some(false) {
            Status::Parked
        } else if last.speed_kmh.or(implied).unwrap_or(0.0) >= 3.0 {
            Status::Moving
        } else {
            Status::Idle
        };
        let today: Vec<&Seg> = segs
            .iter()
            .filter(|s| s.end_ts.div_euclid(86_400_000) == end_day)
            .collect();
        e.states.insert(
            vid.clone(),
            VehicleState {
                fix: last,
                status,
                today_distance_km: today.iter().map(|s| s.km).sum(),
                today_fuel_used_l: today.iter().map(|s| s.litres).sum(),
                today_idle_s: today.iter().map(|s| s.idle_s).sum(),
            },
        );
        e.accepted.extend(accepted);
    }
    e.rows.sort_by(|a, b| {
        (a.tier, &a.vehicle_id, a.window_start).cmp(&(b.tier, &b.vehicle_id, b.window_start))
    });
    e
}

/// The vehicle registry of a generated fleet.
pub fn generated_registry(vehicles: u32) -> VehicleRegistry {
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

/// The registry as CSV rows.
pub fn registry_csv(r: &VehicleRegistry, vehicles: u32) -> String {
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

/// Compares tier rows exactly (floats to 1e-9 relative).
pub fn compare_rows(got: &[TierRow], want: &[TierRow]) {
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
pub fn compare(exp: &Expected, result: &RunResult, mut cap: Captured) {
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
    let mut late: Vec<(String, i64)> = cap
        .dead
        .iter()
        .filter(|d| d.reason == Reason::Late)
        .map(|d| {
            let f = fleetflow_connectors::intake::decode(d.payload.as_bytes(), i64::MAX / 2, None)
                .unwrap();
            (f.vehicle_id.to_string(), f.ts)
        })
        .collect();
    late.sort();
    assert_eq!(
        late, exp.late,
        "late fixes, each against its own vehicle's clock"
    );
    assert_eq!(dl(Reason::Late), exp.late.len());
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
        exp.rejected.values().sum::<usize>() + exp.implausible.len() + exp.late.len(),
        "every rejection is a dead letter"
    );
    cap.rows.sort_by(|a, b| {
        (a.tier, &a.vehicle_id, a.window_start).cmp(&(b.tier, &b.vehicle_id, b.window_start))
    });
    compare_rows(&cap.rows, &exp.rows);
    assert_eq!(s.clock, Some(exp.end_clock), "end-of-input job clock");
    assert_eq!(result.vehicles.as_of(), Some(exp.end_clock));
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
