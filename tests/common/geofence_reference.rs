//! A plain, sequential reference of semantics §5 (geofences), written from the text: every
//! fix is tested against every geofence (no index, no incremental state beyond the
//! definition), with containment computed here with `geo`'s `Intersects` (boundary included) and
//! the haversine formula.

use fleetflow_types::fix::{haversine_km, Fix};
use fleetflow_types::geofence::{Geofence, Shape};
use fleetflow_types::records::{GeofenceCause, GeofenceEvent, GeofenceEventKind};
use geo::{Coord, Intersects};
use std::collections::BTreeMap;

/// A runtime change that took effect at job clock `at`.
#[derive(Clone, Debug)]
pub struct Change {
    /// The job clock it took effect at.
    pub at: i64,
    /// The geofence id.
    pub id: String,
    /// The new definition, or `None` for a removal.
    pub fence: Option<Geofence>,
    /// Made after the input ended (`--serve` after a file): every fix of the vehicle was
    /// taken before it, those after `at` too (a vehicle whose clock is past a change's
    /// time takes it at once, and events are never revised), so it applies after the last
    /// fix, still at `at`.
    pub after_input: bool,
}

/// What §5 says the job produces.
#[derive(Debug, Default)]
pub struct GeoExpected {
    /// Every event, sorted.
    pub events: Vec<GeofenceEvent>,
    /// Occupancy at the end: geofence -> vehicle -> entered_at.
    pub occupants: BTreeMap<String, BTreeMap<String, i64>>,
}

/// Whether `(lat, lon)` is inside `g`: boundary inside, holes outside, circles by haversine.
pub fn inside(g: &Geofence, lat: f64, lon: f64) -> bool {
    match &g.shape {
        Shape::Polygons(mp) => mp.intersects(&Coord { x: lon, y: lat }),
        Shape::Circle {
            lat: clat,
            lon: clon,
            radius_m,
        } => haversine_km(*clat, *clon, lat, lon) * 1000.0 <= *radius_m,
    }
}

fn applies(g: &Geofence, tenant: &str) -> bool {
    g.tenant.as_deref().is_none_or(|t| t == tenant)
}

/// Events and final occupancy for `accepted` fixes (any order), geofences `initial` in force
/// from the start, `changes` in the order they were applied, and `dwell_after` ms.
pub fn expected_geofences(
    accepted: &[Fix],
    initial: &[Geofence],
    changes: &[Change],
    dwell_after: i64,
) -> GeoExpected {
    let mut by_vehicle: BTreeMap<&str, Vec<&Fix>> = BTreeMap::new();
    for f in accepted {
        by_vehicle.entry(f.vehicle_id.as_str()).or_default().push(f);
    }
    let mut out = GeoExpected::default();
    for (vehicle, mut fixes) in by_vehicle {
        fixes.sort_by_key(|f| f.ts);
        let mut fences: BTreeMap<String, Geofence> = initial
            .iter()
            .map(|g| (g.id.to_string(), g.clone()))
            .collect();
        // Geofence id -> (entered_at, dwell emitted).
        let mut visits: BTreeMap<String, (i64, bool)> = BTreeMap::new();
        let mut last: Option<&Fix> = None;
        let mut next_change = 0;
        let ev = |out: &mut GeoExpected, g: &str, t: &str, kind, ts, cause| {
            out.events.push(GeofenceEvent {
                geofence_id: g.into(),
                vehicle_id: vehicle.into(),
                tenant: t.into(),
                kind,
                ts,
                cause,
            })
        };
        let apply = |c: &Change,
                     out: &mut GeoExpected,
                     fences: &mut BTreeMap<String, Geofence>,
                     visits: &mut BTreeMap<String, (i64, bool)>,
                     last: Option<&Fix>| {
            let Some(last) = last else {
                // No final fix yet: the vehicle is in no geofence.
                match &c.fence {
                    Some(g) => fences.insert(c.id.clone(), g.clone()),
                    None => fences.remove(&c.id),
                };
                return;
            };
            if fences.remove(&c.id).is_some() && visits.remove(&c.id).is_some() {
                ev(
                    out,
                    &c.id,
                    &last.tenant,
                    GeofenceEventKind::Exit,
                    c.at,
                    GeofenceCause::GeofenceRemoved,
                );
            }
            if let Some(g) = &c.fence {
                fences.insert(c.id.clone(), g.clone());
                if applies(g, &last.tenant) && inside(g, last.lat, last.lon) {
                    visits.insert(c.id.clone(), (c.at, false));
                    ev(
                        out,
                        &c.id,
                        &last.tenant,
                        GeofenceEventKind::Enter,
                        c.at,
                        GeofenceCause::GeofenceAdded,
                    );
                }
            }
        };
        // A change applies before the first fix at or after its time; the `None` at the end
        // applies those after the last fix (and those made after the input ended).
        for item in fixes.into_iter().map(Some).chain([None]) {
            let limit = item.map_or(i64::MAX, |f| f.ts);
            while next_change < changes.len()
                && (item.is_none()
                    || (!changes[next_change].after_input && changes[next_change].at <= limit))
            {
                apply(
                    &changes[next_change],
                    &mut out,
                    &mut fences,
                    &mut visits,
                    last,
                );
                next_change += 1;
            }
            let Some(f) = item else { break };
            let now: Vec<&String> = fences
                .iter()
                .filter(|(_, g)| applies(g, &f.tenant) && inside(g, f.lat, f.lon))
                .map(|(id, _)| id)
                .collect();
            let left: Vec<String> = visits
                .keys()
                .filter(|id| !now.contains(id))
                .cloned()
                .collect();
            for id in left {
                visits.remove(&id);
                ev(
                    &mut out,
                    &id,
                    &f.tenant,
                    GeofenceEventKind::Exit,
                    f.ts,
                    GeofenceCause::Fix,
                );
            }
            for id in now {
                if !visits.contains_key(id) {
                    visits.insert(id.clone(), (f.ts, false));
                    ev(
                        &mut out,
                        id,
                        &f.tenant,
                        GeofenceEventKind::Enter,
                        f.ts,
                        GeofenceCause::Fix,
                    );
                }
            }
            for (id, (entered, dwelled)) in visits.iter_mut() {
                if !*dwelled && f.ts - *entered >= dwell_after {
                    *dwelled = true;
                    ev(
                        &mut out,
                        id,
                        &f.tenant,
                        GeofenceEventKind::Dwell,
                        f.ts,
                        GeofenceCause::Fix,
                    );
                }
            }
            last = Some(f);
        }
        for (id, (entered, _)) in visits {
            out.occupants
                .entry(id)
                .or_default()
                .insert(vehicle.to_string(), entered);
        }
    }
    out.events.sort();
    out
}
