//! The decoded location event and the geometry every stage agrees on.

use crate::time::Millis;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Mean Earth radius used for every distance, in km (semantics §2).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance between two WGS84 points in km (haversine, [`EARTH_RADIUS_KM`]).
#[inline]
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp * 0.5).sin().powi(2) + p1.cos() * p2.cos() * (dl * 0.5).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// One accepted-for-processing GPS fix, decoded and validated (see `event-schema.md`).
///
/// `tenant` is already resolved: the event's, else the registry's, else `default`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fix {
    /// Stable vehicle identifier (1..=64 bytes).
    #[schema(value_type = String)]
    pub vehicle_id: CompactString,
    /// Owning tenant.
    #[schema(value_type = String)]
    pub tenant: CompactString,
    /// Event time, epoch ms UTC.
    pub ts: Millis,
    /// WGS84 latitude in degrees.
    pub lat: f64,
    /// WGS84 longitude in degrees.
    pub lon: f64,
    /// Reported ground speed in km/h.
    pub speed_kmh: Option<f64>,
    /// Course over ground in degrees.
    pub heading_deg: Option<f64>,
    /// Tank level in percent.
    pub fuel_level_pct: Option<f64>,
    /// Cumulative fuel-used counter in litres.
    pub fuel_used_l: Option<f64>,
    /// Cumulative odometer in km.
    pub odometer_km: Option<f64>,
    /// Engine on/off.
    pub ignition: Option<bool>,
}

fn cmp_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

impl Fix {
    /// A fix with a position only (every optional field absent).
    pub fn at(vehicle_id: &str, tenant: &str, ts: Millis, lat: f64, lon: f64) -> Fix {
        Fix {
            vehicle_id: vehicle_id.into(),
            tenant: tenant.into(),
            ts,
            lat,
            lon,
            speed_kmh: None,
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: None,
            odometer_km: None,
            ignition: None,
        }
    }

    /// A total order over every field. Among duplicates (same vehicle and `ts`) the least
    /// fix under this order is kept, so the choice does not depend on arrival order.
    pub fn canonical_cmp(&self, other: &Fix) -> Ordering {
        self.vehicle_id
            .cmp(&other.vehicle_id)
            .then(self.ts.cmp(&other.ts))
            .then(self.tenant.cmp(&other.tenant))
            .then(self.lat.total_cmp(&other.lat))
            .then(self.lon.total_cmp(&other.lon))
            .then(cmp_opt(self.speed_kmh, other.speed_kmh))
            .then(cmp_opt(self.heading_deg, other.heading_deg))
            .then(cmp_opt(self.fuel_level_pct, other.fuel_level_pct))
            .then(cmp_opt(self.fuel_used_l, other.fuel_used_l))
            .then(cmp_opt(self.odometer_km, other.odometer_km))
            .then(self.ignition.cmp(&other.ignition))
    }
}

impl PartialEq for Fix {
    fn eq(&self, other: &Self) -> bool {
        self.canonical_cmp(other) == Ordering::Equal
    }
}
impl Eq for Fix {}
impl PartialOrd for Fix {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Fix {
    fn cmp(&self, other: &Self) -> Ordering {
        self.canonical_cmp(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // Porto Sao Bento to Porto airport, about 11.6 km.
        let d = haversine_km(41.1456, -8.6108, 41.2369, -8.6713);
        assert!((d - 11.38).abs() < 0.3, "{d}");
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
        // A quarter of a meridian.
        let q = haversine_km(0.0, 0.0, 90.0, 0.0);
        assert!((q - EARTH_RADIUS_KM * std::f64::consts::FRAC_PI_2).abs() < 1e-9);
    }
}
