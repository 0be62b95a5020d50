//! The deterministic `generator` source: a simulated fleet driving around a city.
//!
//! Every vehicle's drive depends only on `(seed, vehicle index)`, so the set of events is
//! the same whatever the number of partitions (workers); only their interleaving differs.
//! Vehicles alternate between driving (speed, heading and position evolve), short stops
//! with the engine running (idle) and parking with the ignition off. They burn fuel
//! (a cumulative `fuel_used_l` counter, or only `fuel_level_pct` for a configurable share
//! of the fleet, whose tank capacity then comes from [`registry_rows`]) and refuel when the
//! tank runs low. Optional disorder (arrival delayed by up to `disorder` of event time),
//! duplicates, junk lines and rare GPS glitches exercise the intake.
//!
//! It also makes the trouble real fleets make, so that users can watch what the engine
//! does with it: trackers whose clocks are off (`clock_skew`), trackers that lose coverage
//! and then upload what they recorded, oldest first (`outage`), and exports ordered
//! vehicle by vehicle (`order = "vehicle"`).

use crate::intake;
use crate::source::{Emit, Polled, Source, SourceError};
use fleetflow_types::config::{GeneratorOrder, GeneratorSpec};
use fleetflow_types::fix::Fix;
use fleetflow_types::registry::VehicleInfo;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
/// Radius of the simulated area around the center, km.
const AREA_KM: f64 = 15.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Driving,
    Stopped,
    Parked,
}

struct SimVehicle {
    index: u32,
    id: CompactString,
    tenant: CompactString,
    rng: SmallRng,
    lat: f64,
    lon: f64,
    heading: f64,
    speed: f64,
    mode: Mode,
    remaining_s: f64,
    fuel_used: f64,
    level_pct: f64,
    capacity: f64,
    odometer: f64,
    level_only: bool,
    /// Offset of this vehicle's fixes within each interval, ms.
    offset: Millis,
}

fn vehicle_rng(seed: u64, index: u32) -> SmallRng {
    SmallRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ 0x5151,
    )
}

impl SimVehicle {
    fn new(spec: &GeneratorSpec, index: u32) -> Self {
        let mut rng = vehicle_rng(spec.seed, index);
        let r = AREA_KM * rng.random::<f64>().sqrt();
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        let [clat, clon] = spec.center;
        let lat = clat + r * a.cos() / 111.2;
        let lon = clon + r * a.sin() / (111.2 * clat.to_radians().cos());
        let capacity = [45.0, 60.0, 80.0, 120.0][rng.random_range(0..4)];
        let level_only = rng.random::<f64>() < spec.level_only;
        let interval = spec.interval.millis().max(1);
        SimVehicle {
            index,
            id: CompactString::from(format!("V{index:05}")),
            tenant: CompactString::const_new(TENANTS[index as usize % TENANTS.len()]),
            lat,
            lon,
            heading: rng.random::<f64>() * 360.0,
            speed: 0.0,
            mode: if rng.random::<f64>() < 0.7 {
                Mode::Driving
            } else {
                Mode::Parked
            },
            remaining_s: rng.random_range(60.0..900.0),
            fuel_used: rng.random_range(1_000.0..50_000.0),
            level_pct: rng.random_range(30.0..95.0),
            capacity,
            odometer: rng.random_range(5_000.0..400_000.0),
            level_only,
            offset: (index as i64 * 7919) % interval,
            rng,
        }
    }

    /// Advances the simulation by `dt` seconds.
    fn step(&mut self, dt: f64, center: [f64; 2]) {
        let mut t = dt;
        while t > 0.0 {
            let slice = t.min(self.remaining_s.max(0.5));
            match self.mode {
                Mode::Driving => {
                    let dv = self.rng.random_range(-6.0..6.0) * slice.sqrt() / 2.0;
                    self.speed = (self.speed + dv).clamp(15.0, 95.0);
                    let dh = self.rng.random_range(-12.0..12.0);
                    self.heading = (self.heading + dh).rem_euclid(360.0);
                    let dlat = (self.lat - center[0]) * 111.2;
                    let dlon = (self.lon - center[1]) * 111.2 * center[0].to_radians().cos();
                    if (dlat * dlat + dlon * dlon).sqrt() > AREA_KM {
                        // Turn back towards the center.
                        self.heading = (dlon.atan2(dlat).to_degrees() + 180.0).rem_euclid(360.0);
                    }
                    let km = self.speed * slice / 3600.0;
                    let h = self.heading.to_radians();
                    self.lat += km * h.cos() / 111.2;
                    self.lon += km * h.sin() / (111.2 * self.lat.to_radians().cos());
                    self.odometer += km;
                    let per_km = self.rng.random_range(0.07..0.13);
                    self.burn(km * per_km);
                }
                Mode::Stopped => {
                    self.speed = 0.0;
                    self.burn(0.8 * slice / 3600.0);
                }
                Mode::Parked => {
                    self.speed = 0.0;
                    if self.level_pct < 15.0 {
                        self.level_pct = self.rng.random_range(90.0..100.0);
                    }
                }
            }
            self.remaining_s -= slice;
            t -= slice;
            if self.remaining_s <= 0.0 {
                let u = self.rng.random::<f64>();
                (self.mode, self.remaining_s) = match self.mode {
                    Mode::Driving if u < 0.65 => {
                        (Mode::Stopped, self.rng.random_range(20.0..150.0))
                    }
                    Mode::Driving => (Mode::Parked, self.rng.random_range(300.0..2_400.0)),
                    Mode::Stopped if u < 0.9 => (Mode::Driving, self.rng.random_range(60.0..900.0)),
                    Mode::Stopped => (Mode::Parked, self.rng.random_range(300.0..2_400.0)),
                    Mode::Parked => (Mode::Driving, self.rng.random_range(60.0..1_200.0)),
                };
            }
        }
    }

    fn burn(&mut self, litres: f64) {
        self.fuel_used += litres;
        self.level_pct = (self.level_pct - litres / self.capacity * 100.0).max(0.0);
    }

    fn fix(&mut self, ts: Millis) -> Fix {
        let round = |x: f64, d: f64| (x * d).round() / d;
        let (fuel_used, level) = if self.level_only {
            (None, Some(round(self.level_pct, 100.0)))
        } else {
            (
                Some(round(self.fuel_used, 1000.0)),
                Some(round(self.level_pct, 100.0)),
            )
        };
        Fix {
            vehicle_id: self.id.clone(),
            tenant: self.tenant.clone(),
            ts,
            lat: round(self.lat, 1e6),
            lon: round(self.lon, 1e6),
            speed_kmh: Some(round(self.speed, 10.0)),
            // Rounded last, so that north is sometimes 360.0, as real trackers send it.
            heading_deg: Some(round(self.heading.rem_euclid(360.0), 10.0)),
            fuel_level_pct: level,
            fuel_used_l: fuel_used,
            odometer_km: Some(round(self.odometer, 1000.0)),
            ignition: Some(self.mode != Mode::Parked),
        }
    }
}

/// Registry rows of the generated fleet (tenant and tank capacity of every vehicle), so
/// that level-only vehicles' fuel can be turned into litres.
pub fn registry_rows(spec: &GeneratorSpec) -> Vec<VehicleInfo> {
    (0..spec.vehicles)
        .map(|i| {
            let v = SimVehicle::new(spec, i);
            VehicleInfo {
                vehicle_id: v.id,
                tenant: Some(v.tenant),
                tank_capacity_l: Some(v.capacity),
                class: Some("van".into()),
            }
        })
        .collect()
}

/// A line waiting for its release: (release ts, sequence, vehicle, line).
type Held = (Millis, u64, u32, Vec<u8>);

/// One partition of the generated fleet: vehicles `i` with `i % partitions == partition`.
pub struct Generator {
    spec: GeneratorSpec,
    partition: u32,
    vehicles: Vec<SimVehicle>,
    t0: Millis,
    interval: Millis,
    end: Option<Millis>,
    round: u64,
    rng: SmallRng,
    /// Lines waiting for their (disordered) release.
    held: BinaryHeap<Reverse<Held>>,
    /// With `order = "vehicle"`: every line, vehicle by vehicle, once generated.
    ordered: Option<std::collections::VecDeque<Vec<u8>>>,
    seq: u64,
    started: Option<std::time::Instant>,
    emitted: u64,
    /// Events skipped when resuming (not paced by `rate`).
    resumed: u64,
    exhausted: bool,
    /// This partition's share of the job-wide `rate`: its share of the fleet.
    rate: Option<f64>,
}

impl Generator {
    /// Partition `partition` of `partitions` of the fleet described by `spec`.
    pub fn new(spec: &GeneratorSpec, partition: u32, partitions: u32) -> Self {
        let t0 = fleetflow_types::time::parse_rfc3339(&spec.start).unwrap_or(1_736_143_200_000);
        let vehicles = (0..spec.vehicles)
            .filter(|i| i % partitions == partition)
            .map(|i| SimVehicle::new(spec, i))
            .collect();
        Generator {
            partition,
            vehicles,
            t0,
            interval: spec.interval.millis().max(1),
            end: spec.duration.map(|d| t0 + d.millis()),
            round: 0,
            rng: SmallRng::seed_from_u64(spec.seed ^ 0xD15C_0BAD ^ ((partition as u64) << 32)),
            held: BinaryHeap::new(),
            ordered: None,
            seq: 0,
            started: None,
            emitted: 0,
            resumed: 0,
            exhausted: false,
            rate: spec.rate.map(|r| {
                let mine = (0..spec.vehicles)
                    .filter(|i| i % partitions == partition)
                    .count();
                r as f64 * mine as f64 / f64::from(spec.vehicles.max(1))
            }),
            spec: spec.clone(),
        }
    }

    /// Input names of a generator with `partitions` partitions.
    pub fn input_names(partitions: u32) -> Vec<String> {
        (0..partitions).map(|p| format!("generator:{p}")).collect()
    }

    fn hold(&mut self, release: Millis, vehicle: u32, line: Vec<u8>) {
        self.seq += 1;
        self.held.push(Reverse((release, self.seq, vehicle, line)));
    }

    /// The clock offset of vehicle `index` (the first `skewed` vehicles).
    fn skew(&self, index: u32) -> Millis {
        match self.spec.clock_skew {
            Some(d) if index < self.spec.skewed => d.0,
            _ => 0,
        }
    }

    /// When a fix taken at `ts` by vehicle `index` is sent: at the end of its outage when it
    /// falls into one (the last `outages` vehicles), else at once.
    fn sent_at(&self, index: u32, ts: Millis) -> Millis {
        let Some(outage) = self.spec.outage else {
            return ts;
        };
        let from = self.t0 + self.spec.outage_start.millis();
        let to = from + outage.millis();
        let affected = index >= self.spec.vehicles.saturating_sub(self.spec.outages);
        if affected && (from..to).contains(&ts) {
            to
        } else {
            ts
        }
    }

    /// Generates one round (one fix per vehicle of this partition).
    fn generate_round(&mut self) {
        let base = self.t0 + self.round as i64 * self.interval;
        if self.end.is_some_and(|end| base >= end) || self.vehicles.is_empty() {
            self.exhausted = true;
            return;
        }
        let dt = if self.round == 0 {
            0.0
        } else {
            self.interval as f64 / 1000.0
        };
        let disorder = self.spec.disorder.map(|d| d.millis()).unwrap_or(0);
        for i in 0..self.vehicles.len() {
            let center = self.spec.center;
            let v = &mut self.vehicles[i];
            v.step(dt, center);
            let ts = base + v.offset;
            if self.end.is_some_and(|end| ts >= end) {
                continue;
            }
            let vid = v.index;
            let mut fix = v.fix(ts);
            // What the tracker reports (its clock may be off), and when it is sent.
            fix.ts += self.skew(vid);
            let sent = self.sent_at(vid, ts);
            if self.rng.random::<f64>() < 0.0003 {
                // A GPS glitch: the fix lands several km off for one report.
                fix.lat += 0.05;
            }
            let mut line = Vec::with_capacity(256);
            intake::encode(&fix, &mut line);
            // A buffered fix is uploaded with the rest of the buffer, oldest first, before
            // any fix taken after the outage: no disorder.
            let buffered = sent != ts;
            let delay = |rng: &mut SmallRng| {
                if disorder > 0 && !buffered {
                    rng.random_range(0..=disorder)
                } else {
                    0
                }
            };
            if self.rng.random::<f64>() < self.spec.duplicates {
                let d = delay(&mut self.rng);
                self.hold(sent + d, vid, line.clone());
            }
            if self.rng.random::<f64>() < self.spec.bad_lines {
                let junk = match self.rng.random_range(0..4) {
                    0 => format!("{{\"vehicle_id\":\"V{vid:05}\",\"ts\":{ts},\"lat\":"),
                    1 => format!(
                        "{{\"vehicle_id\":\"V{vid:05}\",\"ts\":{ts},\"lat\":123.0,\"lon\":2.0}}"
                    ),
                    2 => format!("{{\"vehicle_id\":\"V{vid:05}\",\"lat\":1.0,\"lon\":2.0}}"),
                    _ => "garbage that is not json".to_string(),
                };
                self.hold(sent, vid, junk.into_bytes());
            }
            let d = delay(&mut self.rng);
            self.hold(sent + d, vid, line);
        }
        self.round += 1;
    }
}

impl Generator {
    /// `poll` for `order = "vehicle"`: the whole (finite) output is generated at the first
    /// call, then handed out vehicle by vehicle, each vehicle's lines in the order the
    /// fleet would have sent them.
    fn poll_by_vehicle(&mut self, allowed: u64, sink: &mut Emit<'_>) -> Polled {
        if self.ordered.is_none() {
            let mut all: Vec<(u32, u64, Vec<u8>)> = Vec::new();
            loop {
                let horizon = if self.exhausted {
                    Millis::MAX
                } else {
                    self.t0 + self.round as i64 * self.interval
                };
                match self.held.peek() {
                    Some(Reverse((release, ..))) if *release < horizon => {
                        let Reverse((_, seq, vid, line)) = self.held.pop().expect("peeked");
                        all.push((vid, seq, line));
                    }
                    _ if self.exhausted => break,
                    _ => self.generate_round(),
                }
            }
            // Stable: each vehicle's lines keep the order they were sent in.
            all.sort_by_key(|(vid, ..)| *vid);
            self.ordered = Some(all.into_iter().map(|(_, _, line)| line).collect());
        }
        let ordered = self.ordered.as_mut().expect("generated");
        let mut n = 0u64;
        while n < allowed {
            let Some(line) = ordered.pop_front() else {
                break;
            };
            sink(&line, self.emitted + n, None);
            n += 1;
        }
        self.emitted += n;
        if n == 0 && ordered.is_empty() {
            return Polled::Finished;
        }
        Polled::Data(n as usize)
    }
}

impl Source for Generator {
    fn inputs(&self) -> Vec<u32> {
        vec![self.partition]
    }

    fn position(&self, _local: usize) -> (u64, u64) {
        (self.emitted, 0)
    }

    /// Generation is deterministic: resuming regenerates and skips the events emitted
    /// before (quick: no decoding, no dataflow).
    fn seek(&mut self, _local: usize, (emitted, _): (u64, u64)) -> Result<(), SourceError> {
        let rate = self.rate.take();
        while self.emitted < emitted {
            let budget = (emitted - self.emitted).min(65_536) as usize;
            if self.poll(0, budget, &mut |_, _, _| true)? == Polled::Finished {
                break;
            }
        }
        self.rate = rate;
        self.resumed = self.emitted;
        self.started = None;
        Ok(())
    }

    fn poll(
        &mut self,
        _local: usize,
        budget: usize,
        sink: &mut Emit<'_>,
    ) -> Result<Polled, SourceError> {
        let started = *self.started.get_or_insert_with(std::time::Instant::now);
        let mut allowed = budget as u64;
        if let Some(rate) = self.rate {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            allowed = allowed.min(due.saturating_sub(self.emitted - self.resumed));
            if allowed == 0 {
                return Ok(Polled::Empty);
            }
        }
        if self.spec.order == GeneratorOrder::Vehicle {
            return Ok(self.poll_by_vehicle(allowed, sink));
        }
        let mut n = 0u64;
        while n < allowed {
            // Release what is due before the next round starts.
            let horizon = if self.exhausted {
                Millis::MAX
            } else {
                self.t0 + self.round as i64 * self.interval
            };
            match self.held.peek() {
                Some(Reverse((release, ..))) if *release < horizon => {
                    let Reverse((_, seq, _, line)) = self.held.pop().expect("peeked");
                    sink(&line, seq, None);
                    n += 1;
                }
                _ if self.exhausted => break,
                _ => self.generate_round(),
            }
        }
        self.emitted += n;
        if n == 0 && self.exhausted && self.held.is_empty() {
            return Ok(Polled::Finished);
        }
        Ok(Polled::Data(n as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::time::HumanDuration;

    fn drain(g: &mut Generator) -> Vec<String> {
        let mut out = Vec::new();
        while let Polled::Data(_) = g
            .poll(0, 1000, &mut |l, _, _| {
                out.push(String::from_utf8(l.to_vec()).unwrap());
                true
            })
            .unwrap()
        {}
        out
    }

    fn spec() -> GeneratorSpec {
        GeneratorSpec {
            vehicles: 7,
            duration: Some(HumanDuration::from_millis(600_000)),
            ..GeneratorSpec::default()
        }
    }

    #[test]
    fn partitions_together_produce_the_same_events() {
        let mut one = drain(&mut Generator::new(&spec(), 0, 1));
        let mut three: Vec<String> = (0..3)
            .flat_map(|p| drain(&mut Generator::new(&spec(), p, 3)))
            .collect();
        assert_eq!(one.len(), 7 * 120);
        one.sort();
        three.sort();
        assert_eq!(one, three);
    }

    #[test]
    fn output_decodes_and_is_realistic() {
        let lines = drain(&mut Generator::new(&spec(), 0, 1));
        let fixes: Vec<Fix> = lines
            .iter()
            .map(|l| intake::decode(l.as_bytes(), i64::MAX / 2, None).unwrap())
            .collect();
        assert!(
            fixes.iter().any(|f| f.ignition == Some(false)),
            "some vehicles park"
        );
        assert!(
            fixes.iter().any(|f| f.speed_kmh.unwrap() > 30.0),
            "some vehicles drive"
        );
        let mut by_vehicle: std::collections::BTreeMap<_, Vec<&Fix>> = Default::default();
        for f in &fixes {
            by_vehicle.entry(f.vehicle_id.clone()).or_default().push(f);
        }
        for fs in by_vehicle.values() {
            for w in fs.windows(2) {
                assert!(w[1].ts > w[0].ts);
                assert!(w[1].odometer_km >= w[0].odometer_km);
                if let (Some(a), Some(b)) = (w[0].fuel_used_l, w[1].fuel_used_l) {
                    assert!(b >= a, "fuel counter never decreases");
                }
            }
        }
    }

    #[test]
    fn disorder_duplicates_and_junk_stay_within_bounds() {
        let s = GeneratorSpec {
            disorder: Some(HumanDuration::from_millis(10_000)),
            duplicates: 0.05,
            bad_lines: 0.05,
            ..spec()
        };
        let lines = drain(&mut Generator::new(&s, 0, 1));
        let decoded: Vec<_> = lines
            .iter()
            .map(|l| intake::decode(l.as_bytes(), i64::MAX / 2, None))
            .collect();
        let bad = decoded.iter().filter(|d| d.is_err()).count();
        assert!(bad > 10, "junk lines appear: {bad}");
        let ts: Vec<Millis> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|f| f.ts)
            .collect();
        assert!(ts.windows(2).any(|w| w[1] < w[0]), "some disorder");
        let mut max = i64::MIN;
        for t in ts {
            assert!(t >= max.saturating_sub(10_000), "disorder bounded");
            max = max.max(t);
        }
    }

    fn decoded(lines: &[String]) -> Vec<Fix> {
        lines
            .iter()
            .filter_map(|l| intake::decode(l.as_bytes(), i64::MAX / 2, None).ok())
            .collect()
    }

    #[test]
    fn troubles_skewed_clocks_outages_and_vehicle_order() {
        let plain = decoded(&drain(&mut Generator::new(&spec(), 0, 1)));
        let t0 = plain.iter().map(|f| f.ts).min().unwrap();
        // One tracker an hour ahead: the same fixes, V00000's an hour later.
        let skewed = GeneratorSpec {
            clock_skew: Some("1h".parse().unwrap()),
            ..spec()
        };
        let s = decoded(&drain(&mut Generator::new(&skewed, 0, 1)));
        assert_eq!(s.len(), plain.len());
        for (a, b) in plain.iter().zip(&s) {
            let off = if a.vehicle_id == "V00000" {
                3_600_000
            } else {
                0
            };
            assert_eq!(b.ts, a.ts + off);
        }
        // An outage of 2 minutes from minute 3 for the last vehicle: its fixes of those
        // minutes arrive together, oldest first, when it ends, before its next live fix.
        let outage = GeneratorSpec {
            outage: Some(HumanDuration::from_millis(120_000)),
            outage_start: HumanDuration::from_millis(180_000),
            ..spec()
        };
        let o = decoded(&drain(&mut Generator::new(&outage, 0, 1)));
        assert_eq!(o.len(), plain.len());
        let last: Vec<i64> = o
            .iter()
            .filter(|f| f.vehicle_id == "V00006")
            .map(|f| f.ts - t0)
            .collect();
        assert!(last.windows(2).all(|w| w[0] < w[1]), "oldest first");
        let pos = |ts: i64| {
            o.iter()
                .position(|f| f.vehicle_id == "V00006" && f.ts - t0 == ts)
        };
        let first_buffered = last.iter().copied().find(|t| *t >= 180_000).unwrap();
        let others_after = o[..pos(first_buffered).unwrap()]
            .iter()
            .filter(|f| f.vehicle_id != "V00006")
            .map(|f| f.ts - t0)
            .max()
            .unwrap();
        assert!(
            others_after >= 295_000,
            "buffered fixes wait for the outage's end: {others_after}"
        );
        // Vehicle order: every fix of V00000, then V00001, ...
        let by_vehicle = GeneratorSpec {
            order: GeneratorOrder::Vehicle,
            ..spec()
        };
        let v = decoded(&drain(&mut Generator::new(&by_vehicle, 0, 1)));
        assert_eq!(v.len(), plain.len());
        assert!(v
            .windows(2)
            .all(|w| (&w[0].vehicle_id, w[0].ts) < (&w[1].vehicle_id, w[1].ts)));
    }

    #[test]
    fn some_headings_are_360() {
        let s = GeneratorSpec {
            vehicles: 200,
            ..spec()
        };
        let fixes = decoded(&drain(&mut Generator::new(&s, 0, 1)));
        assert!(fixes.iter().any(|f| f.heading_deg == Some(360.0)));
        assert!(fixes
            .iter()
            .all(|f| f.heading_deg.is_some_and(|h| (0.0..=360.0).contains(&h))));
    }

    #[test]
    fn rate_limits_emission() {
        let s = GeneratorSpec {
            rate: Some(1000),
            ..spec()
        };
        let mut g = Generator::new(&s, 0, 1);
        let mut n = 0;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(100) {
            if let Polled::Data(k) = g.poll(0, 10_000, &mut |_, _, _| true).unwrap() {
                n += k;
            }
        }
        assert!(n <= 150, "{n} events in 100 ms at 1000/s");
    }

    #[test]
    fn the_rate_is_the_whole_jobs_shared_by_the_partitions() {
        let s = GeneratorSpec {
            rate: Some(2000),
            ..spec()
        };
        let mut parts: Vec<Generator> = (0..3).map(|p| Generator::new(&s, p, 3)).collect();
        let mut n = 0;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(200) {
            for g in parts.iter_mut() {
                if let Polled::Data(k) = g.poll(0, 10_000, &mut |_, _, _| true).unwrap() {
                    n += k;
                }
            }
        }
        // 400 due in 200 ms for the job; each partition alone at the full rate made 1,200.
        assert!((300..=500).contains(&n), "{n} events in 200 ms at 2000/s");
    }
}
