//! Segments: pairs of consecutive accepted fixes of one vehicle (semantics §2).

use fleetflow_types::fix::{haversine_km, Fix};

/// Moving when either end reports (or implies) at least this speed, km/h.
pub const MOVING_KMH: f64 = 3.0;
/// Segments longer than this are gaps: distance and fuel, no moving or idle time, ms.
pub const GAP_MS: i64 = 300_000;
/// A refuel is a rise of the tank level of at least this many points.
pub const REFUEL_POINTS: f64 = 5.0;

/// What a segment `(a, b)` contributes.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Segment {
    /// `b.ts - a.ts`, ms (> 0).
    pub dt_ms: i64,
    /// Haversine distance, km.
    pub distance_km: f64,
    /// Fuel used, litres.
    pub fuel_used_l: f64,
    /// Litres added by a refuel detected from the tank level.
    pub refuel_l: f64,
    /// Moving time, s.
    pub moving_s: f64,
    /// Idle time, s.
    pub idle_s: f64,
}

impl Segment {
    /// Implied speed `distance / dt`, km/h.
    pub fn implied_kmh(&self) -> f64 {
        implied_kmh(self.distance_km, self.dt_ms)
    }

    /// Whether the segment's end is an implausible jump from its start.
    pub fn is_implausible(&self) -> bool {
        implausible(self.distance_km, self.dt_ms)
    }
}

/// `distance / dt` in km/h (infinite for `dt == 0`).
#[inline]
pub fn implied_kmh(distance_km: f64, dt_ms: i64) -> f64 {
    distance_km / (dt_ms as f64 / 3_600_000.0)
}

/// The implausible-jump rule of semantics §2: farther than 1 km at more than 300 km/h.
#[inline]
fn implausible(distance_km: f64, dt_ms: i64) -> bool {
    distance_km > 1.0 && implied_kmh(distance_km, dt_ms) > 300.0
}

/// One step of the accepted-fix chain from `a` to `b`: `None` when `b` is an implausible
/// jump from `a`, else the implied speed `distance / dt` in km/h. One distance computation.
#[inline]
pub fn chain_step(a: &Fix, b: &Fix) -> Option<f64> {
    let d = haversine_km(a.lat, a.lon, b.lat, b.lon);
    let dt = b.ts - a.ts;
    (!implausible(d, dt)).then(|| implied_kmh(d, dt))
}

/// The segment from `a` to `b` (`a.ts < b.ts`). `capacity_l` is the vehicle's tank capacity
/// when the registry knows it.
pub fn segment(a: &Fix, b: &Fix, capacity_l: Option<f64>) -> Segment {
    let dt_ms = b.ts - a.ts;
    let distance_km = haversine_km(a.lat, a.lon, b.lat, b.lon);
    let (mut fuel_used_l, mut refuel_l) = (0.0, 0.0);
    if let (Some(fa), Some(fb)) = (a.fuel_used_l, b.fuel_used_l) {
        fuel_used_l = (fb - fa).max(0.0);
    } else if let (Some(pa), Some(pb), Some(cap)) = (a.fuel_level_pct, b.fuel_level_pct, capacity_l)
    {
        fuel_used_l = (pa - pb).max(0.0) * cap / 100.0;
        if pb - pa >= REFUEL_POINTS {
            refuel_l = (pb - pa) * cap / 100.0;
        }
    }
    let (mut moving_s, mut idle_s) = (0.0, 0.0);
    if dt_ms <= GAP_MS {
        let implied = implied_kmh(distance_km, dt_ms);
        let moving = a.speed_kmh.unwrap_or(implied) >= MOVING_KMH
            || b.speed_kmh.unwrap_or(implied) >= MOVING_KMH;
        let secs = dt_ms as f64 / 1000.0;
        if moving {
            moving_s = secs;
        } else if b.ignition != Some(false) {
            idle_s = secs;
        }
    }
    Segment {
        dt_ms,
        distance_km,
        fuel_used_l,
        refuel_l,
        moving_s,
        idle_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts: i64, lat: f64, lon: f64) -> Fix {
        Fix::at("v", "default", ts, lat, lon)
    }

    #[test]
    fn fuel_from_counter_wins_over_level() {
        let mut a = fix(0, 52.0, 13.0);
        let mut b = fix(10_000, 52.001, 13.0);
        a.fuel_used_l = Some(100.0);
        b.fuel_used_l = Some(100.5);
        a.fuel_level_pct = Some(50.0);
        b.fuel_level_pct = Some(40.0);
        assert_eq!(segment(&a, &b, Some(60.0)).fuel_used_l, 0.5);
        b.fuel_used_l = Some(99.0);
        assert_eq!(
            segment(&a, &b, Some(60.0)).fuel_used_l,
            0.0,
            "a counter reset uses nothing"
        );
        b.fuel_used_l = None;
        assert!((segment(&a, &b, Some(60.0)).fuel_used_l - 6.0).abs() < 1e-12);
        assert_eq!(
            segment(&a, &b, None).fuel_used_l,
            0.0,
            "no capacity, no litres"
        );
        b.fuel_level_pct = Some(80.0);
        let s = segment(&a, &b, Some(60.0));
        assert_eq!((s.fuel_used_l, s.refuel_l), (0.0, 18.0));
        b.fuel_level_pct = Some(54.0);
        assert_eq!(
            segment(&a, &b, Some(60.0)).refuel_l,
            0.0,
            "a 4-point rise is noise"
        );
    }

    #[test]
    fn moving_idle_and_gaps() {
        let a = fix(0, 52.0, 13.0);
        let mut b = fix(10_000, 52.0, 13.0);
        // Missing speeds: implied 0 km/h; ignition unknown counts as on.
        assert_eq!(segment(&a, &b, None).idle_s, 10.0);
        b.ignition = Some(false);
        let s = segment(&a, &b, None);
        assert_eq!((s.moving_s, s.idle_s), (0.0, 0.0));
        b.speed_kmh = Some(3.0);
        assert_eq!(segment(&a, &b, None).moving_s, 10.0);
        let far = fix(10_000, 52.001, 13.0); // 111 m in 10 s = 40 km/h implied
        assert_eq!(segment(&a, &far, None).moving_s, 10.0);
        let gap = fix(GAP_MS + 1, 52.01, 13.0);
        let s = segment(&a, &gap, None);
        assert_eq!((s.moving_s, s.idle_s), (0.0, 0.0));
        assert!(s.distance_km > 1.0);
    }

    #[test]
    fn implausible_needs_both_distance_and_speed() {
        let a = fix(0, 52.0, 13.0);
        for (b, jump, why) in [
            (fix(10_000, 52.05, 13.0), true, "5.5 km in 10 s"),
            (fix(3_600_000, 52.05, 13.0), false, "5.5 km in an hour"),
            (fix(1_000, 52.008, 13.0), false, "under 1 km"),
        ] {
            assert_eq!(chain_step(&a, &b).is_none(), jump, "{why}");
            assert_eq!(segment(&a, &b, None).is_implausible(), jump, "{why}");
        }
        let kmh = chain_step(&a, &fix(3_600_000, 52.05, 13.0)).unwrap();
        assert!((kmh - 5.56).abs() < 0.01, "{kmh}");
    }
}
