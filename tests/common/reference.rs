//! A plain, sequential reference of semantics §1-§4, written from the text and sharing no
//! logic with the dataflow (only decoding, the haversine formula and record types).
//!
//! It assumes no fix is late (inputs disordered within the allowed lateness), and that the
//! whole input is read (end of input closes every window).

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
    /// Duplicates dropped.
    pub duplicates: usize,
    /// Tier rows by (tier, vehicle, window_start).
    pub rows: Vec<TierRow>,
    /// Final vehicle state.
    pub states: BTreeMap<String, VehicleState>,
    /// The watermark at the end of input.
    pub end_watermark: i64,
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

/// Computes the expected results of `lines` (all read, nothing late).
pub fn expected(
    lines: &[String],
    tiers: &[i64],
    registry: &VehicleRegistry,
    offline_after: i64,
) -> Expected {
    let now = fleetflow_types::time::now_ms();
    let mut e = Expected::default();
    let mut by_vehicle: BTreeMap<String, BTreeMap<i64, Fix>> = BTreeMap::new();
    let mut max_ts = i64::MIN;
    for line in lines {
        match decode(line.as_bytes(), now, Some(registry)) {
            Err(r) => *e.rejected.entry(r.reason).or_default() += 1,
            Ok(fix) => {
                max_ts = max_ts.max(fix.ts);
                let slot = by_vehicle.entry(fix.vehicle_id.to_string()).or_default();
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
    e.end_watermark = max_ts + 1;
    let end_day = e.end_watermark.div_euclid(86_400_000);
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
        let status = if e.end_watermark - last.ts > offline_after {
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
