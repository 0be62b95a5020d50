//! Window accumulators for the `1m` / `1h` / `1d` tiers (semantics §4).
//!
//! Fixes reach a vehicle's accumulators in `ts` order once final, so each tier needs only
//! the one window the vehicle is currently in: a fix in a later window completes the
//! previous one, and the watermark completes windows of vehicles that fall silent.

use crate::segments::Segment;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::TierRow;
use fleetflow_types::time::{window_start, Millis};

/// The open window of one vehicle in one tier.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowAcc {
    row: TierRow,
    speed_sum: f64,
    speed_count: u32,
}

impl WindowAcc {
    /// A window of tier `tier` (size `size_ms`) starting with fix `fix`.
    pub fn open(tier: u8, size_ms: Millis, fix: &Fix) -> Self {
        let start = window_start(fix.ts, size_ms);
        WindowAcc {
            row: TierRow {
                tier,
                vehicle_id: fix.vehicle_id.clone(),
                tenant: fix.tenant.clone(),
                window_start: start,
                window_end: start + size_ms,
                fixes: 0,
                first_ts: fix.ts,
                last_ts: fix.ts,
                lat: fix.lat,
                lon: fix.lon,
                avg_speed_kmh: None,
                max_speed_kmh: None,
                distance_km: 0.0,
                fuel_used_l: 0.0,
                moving_s: 0.0,
                idle_s: 0.0,
            },
            speed_sum: 0.0,
            speed_count: 0,
        }
    }

    /// Exclusive end of the window.
    pub fn end(&self) -> Millis {
        self.row.window_end
    }

    /// Start of the window.
    pub fn start(&self) -> Millis {
        self.row.window_start
    }

    /// Adds an accepted fix (in `ts` order) and the segment that ends at it.
    pub fn add(&mut self, fix: &Fix, seg: Option<&Segment>) {
        let r = &mut self.row;
        r.fixes += 1;
        r.first_ts = r.first_ts.min(fix.ts);
        r.last_ts = fix.ts;
        r.lat = fix.lat;
        r.lon = fix.lon;
        r.tenant.clone_from(&fix.tenant);
        if let Some(s) = fix.speed_kmh {
            self.speed_sum += s;
            self.speed_count += 1;
            r.max_speed_kmh = Some(r.max_speed_kmh.map_or(s, |m| m.max(s)));
        }
        if let Some(seg) = seg {
            r.distance_km += seg.distance_km;
            r.fuel_used_l += seg.fuel_used_l;
            r.moving_s += seg.moving_s;
            r.idle_s += seg.idle_s;
        }
    }

    /// The finished row.
    pub fn finish(mut self) -> TierRow {
        self.row.avg_speed_kmh =
            (self.speed_count > 0).then(|| self.speed_sum / self.speed_count as f64);
        self.row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_sums_its_fixes_and_segments() {
        let mut f = Fix {
            vehicle_id: "v".into(),
            tenant: "t".into(),
            ts: 60_500,
            lat: 1.0,
            lon: 2.0,
            speed_kmh: Some(10.0),
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: None,
            odometer_km: None,
            ignition: None,
        };
        let mut w = WindowAcc::open(0, 60_000, &f);
        w.add(&f, None);
        f.ts = 70_000;
        f.lat = 1.5;
        f.speed_kmh = None;
        let seg = Segment {
            dt_ms: 9_500,
            distance_km: 2.0,
            fuel_used_l: 0.5,
            refuel_l: 0.0,
            moving_s: 9.5,
            idle_s: 0.0,
        };
        w.add(&f, Some(&seg));
        let row = w.finish();
        assert_eq!(
            (row.window_start, row.window_end, row.fixes),
            (60_000, 120_000, 2)
        );
        assert_eq!((row.first_ts, row.last_ts, row.lat), (60_500, 70_000, 1.5));
        assert_eq!(
            (row.avg_speed_kmh, row.max_speed_kmh),
            (Some(10.0), Some(10.0))
        );
        assert_eq!(
            (row.distance_km, row.moving_s, row.km_per_l()),
            (2.0, 9.5, Some(4.0))
        );
    }
}
