//! Per-vehicle event-time logic on one worker: dedup, late fixes, implausible jumps,
//! segments, tier windows and vehicle state (semantics §1-§4), independent of timely.
//!
//! ```text
//!  offer(fix) ──► ts < W(v)? ──► dead letter `late`
//!                 │
//!                 ▼
//!  pending (sorted by ts, per vehicle; dedup by ts) ──► provisional latest fix (state)
//!                 │ the vehicle's watermark W(v) = its newest ts - lateness passes it
//!                 ▼
//!  implausible? ──► dead letter `implausible_jump`
//!                 │
//!                 ▼
//!  accepted ──► raw row, segment from the previous accepted fix,
//!               tier windows (1m/1h/1d, closed once W(v) passes their end), today's sums
//! ```
//!
//! Every vehicle is its own clock: its watermark moves only with its own fixes, so no other
//! tracker's clock, order or delay can make its fixes late. The job clock (see
//! [`crate::clock`]) is used for what needs one "now": status and "today" of the published
//! state, when a geofence change takes effect and, on unbounded inputs only, the
//! finality of vehicles that went silent ([`Silence`]). On a bounded input nothing but a
//! vehicle's own fixes and the end of input makes its fixes final.
//!
//! State kept per vehicle: the last final fix, the fixes not yet final (bounded by the
//! lateness), one open window per tier, today's sums and its clock. Nothing grows with the
//! number of events seen.

mod ahead;
mod latest;
mod snapshot;
#[cfg(test)]
mod tests;

use latest::find_latest;
pub use snapshot::VehicleSnapshot;
use snapshot::{Snapshotting, VehicleClock};

use crate::clock::ClockSample;
use crate::geofence::{Finalized, FixPoint};
use crate::segments::{chain_step, segment, MOVING_KMH};
use crate::tiers::WindowAcc;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{
    source_name, DeadLetter, IncomingFix, Reason, Status, TierRow, VehicleState,
};
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::{day_of, Millis};
use fleetflow_types::CompactString;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// What makes the fixes of a silent vehicle final on an unbounded input, where no end of
/// input ever does. Silence is measured in job-clock time since the vehicle was last heard
/// from, so a vehicle that keeps reporting, however far behind its clock is, is never
/// silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    /// Silent this long: every fix it sent becomes final (later fixes at or before its
    /// newest `ts` are late), and it takes pending geofence changes at once.
    pub quiet_after: Millis,
    /// Silent this long: its watermark follows the job clock minus this, so its windows
    /// close; a fix it sends later with a `ts` below that is late (a store-and-forward
    /// upload of older fixes survives up to this).
    pub close_after: Millis,
}

/// Settings of the per-vehicle logic.
#[derive(Clone, Debug)]
pub struct TimelineConfig {
    /// Allowed lateness: a vehicle's watermark is its newest `ts` minus this, ms.
    pub lateness: Millis,
    /// Silence after which a vehicle is offline, ms (job clock minus its newest fix).
    pub offline_after: Millis,
    /// Window sizes of the window tiers, ms, in tier order.
    pub tiers: Vec<Millis>,
    /// Whether accepted fixes are emitted for the raw tier.
    pub raw: bool,
    /// Whether final fixes are emitted for geofence evaluation.
    pub finals: bool,
    /// Finality of silent vehicles on unbounded inputs (`None`: bounded input).
    pub silence: Option<Silence>,
    /// Processing time without a fix after which a vehicle stops voting for the job clock
    /// (`None`: every vehicle votes, as on a bounded input), ms.
    pub vote_for: Option<u64>,
    /// Whether the inputs can be read again from a position before a checkpoint's (Kafka):
    /// then a snapshot records, per input, the least position of the fixes not yet final
    /// instead of the fixes (their payloads), and a restore reads them again from there.
    pub replay: bool,
}

/// What the logic produced; drained by the caller.
#[derive(Default, Debug)]
pub struct Outputs {
    /// Accepted fixes, final, for the raw tier.
    pub raw: Vec<Fix>,
    /// Completed tier rows.
    pub rows: Vec<TierRow>,
    /// Late fixes and implausible jumps.
    pub dead: Vec<DeadLetter>,
    /// Changes to the vehicle-state collection. A state is allocated once and shared
    /// (the API's view and its change log hold the same allocation).
    pub state: Vec<((CompactString, Arc<VehicleState>), isize)>,
    /// Final fixes in `ts` order per vehicle, interleaved with the geofence changes the
    /// vehicles take between them (for the geofence operator).
    pub finals: Vec<Finalized>,
}

struct Vehicle {
    id: CompactString,
    capacity: Option<f64>,
    /// Last final accepted fix and the implied speed of the segment ending at it.
    anchor: Option<(Fix, Option<f64>)>,
    /// Fixes not yet final, sorted by ts, distinct ts.
    pending: VecDeque<IncomingFix>,
    /// Newest provisionally accepted fix (the anchor when no pending fix qualifies): its
    /// `ts` and implied speed. The fix itself is the anchor or a pending fix
    /// ([`find_latest`]): not a copy, so an offer copies no fix for it.
    latest: Option<(Millis, Option<f64>)>,
    windows: Vec<Option<WindowAcc>>,
    today_day: i64,
    today_km: f64,
    today_l: f64,
    today_idle_s: f64,
    /// Its clock, watermark, when it was last heard from and the geofence changes taken.
    clock: VehicleClock,
    /// Processing time it was last heard from (ms since the timelines began).
    heard: u64,
    published: Option<Arc<VehicleState>>,
    touched: bool,
    /// Whether an offline check is queued (at most one per vehicle).
    offline_timer: bool,
    /// Whether a silence check is queued (at most one per vehicle).
    silence_timer: bool,
    /// The snapshot generation this vehicle was last written into.
    snapshot_gen: u32,
}

/// A geofence change the vehicles of this worker take one by one.
#[derive(Clone, Copy, Debug)]
struct Change {
    seq: u64,
    /// The job clock it took effect at.
    at: Millis,
    /// Vehicles that have not taken it yet.
    remaining: u32,
}

/// Every vehicle of one worker.
pub struct Timelines {
    cfg: TimelineConfig,
    registry: Arc<VehicleRegistry>,
    input_names: Arc<Vec<String>>,
    metrics: Arc<Metrics>,
    slots: ahash::AHashMap<CompactString, u32>,
    vehicles: Vec<Vehicle>,
    /// The job clock, once there is one.
    clock: Option<Millis>,
    /// (time it goes offline, slot).
    offline: BinaryHeap<Reverse<(Millis, u32)>>,
    /// (job clock at which its silence rules next apply, slot).
    silence: BinaryHeap<Reverse<(Millis, u32)>>,
    /// Geofence changes some vehicle has not taken yet, by seq.
    changes: VecDeque<Change>,
    /// The newest change registered (what a new vehicle starts with).
    latest_change: u64,
    /// Changes a restore found taken by every vehicle, not yet told to geofencing.
    taken_on_restore: Option<u64>,
    touched: Vec<u32>,
    day: Option<i64>,
    /// Processing time now, ms since `started`.
    now: u64,
    started: std::time::Instant,
    /// The snapshot being written, if any.
    snapshotting: Option<Snapshotting>,
    /// Generation of the newest snapshot begun.
    snapshot_gen: u32,
}

impl Timelines {
    /// Empty timelines.
    pub fn new(
        cfg: TimelineConfig,
        registry: Arc<VehicleRegistry>,
        input_names: Arc<Vec<String>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Timelines {
            cfg,
            registry,
            input_names,
            metrics,
            slots: Default::default(),
            vehicles: Vec::new(),
            clock: None,
            offline: BinaryHeap::new(),
            silence: BinaryHeap::new(),
            changes: VecDeque::new(),
            latest_change: 0,
            taken_on_restore: None,
            touched: Vec::new(),
            day: None,
            now: 0,
            started: std::time::Instant::now(),
            snapshotting: None,
            snapshot_gen: 0,
        }
    }

    /// Number of vehicles seen.
    pub fn vehicles(&self) -> usize {
        self.vehicles.len()
    }

    /// The job clock these timelines were last given.
    pub fn clock(&self) -> Option<Millis> {
        self.clock
    }

    /// Fixes not yet final, and open windows (for memory accounting and logs).
    pub fn open_state(&self) -> (usize, usize) {
        let pending = self.vehicles.iter().map(|v| v.pending.len()).sum();
        let windows = self
            .vehicles
            .iter()
            .map(|v| v.windows.iter().filter(|w| w.is_some()).count())
            .sum();
        (pending, windows)
    }

    /// Sizes of the internal queues: (offline checks, silence checks, geofence changes not
    /// taken by every vehicle), for diagnostics.
    pub fn queue_lengths(&self) -> (usize, usize, usize) {
        (self.offline.len(), self.silence.len(), self.changes.len())
    }

    /// Marks the processing time now (for the vehicles' votes on the job clock).
    pub fn tick(&mut self) {
        self.now = self.started.elapsed().as_millis() as u64;
    }

    fn slot(&mut self, id: &CompactString) -> u32 {
        if let Some(s) = self.slots.get(id) {
            return *s;
        }
        let s = self.vehicles.len() as u32;
        self.vehicles.push(Vehicle {
            id: id.clone(),
            capacity: self.registry.get(id).and_then(|i| i.tank_capacity_l),
            anchor: None,
            pending: VecDeque::new(),
            latest: None,
            windows: vec![None; self.cfg.tiers.len()],
            today_day: i64::MIN,
            today_km: 0.0,
            today_l: 0.0,
            today_idle_s: 0.0,
            clock: VehicleClock {
                newest: Millis::MIN,
                watermark: Millis::MIN,
                heard_at: self.clock.unwrap_or(Millis::MIN),
                // A new vehicle takes the geofences in force when it is first seen.
                version: self.latest_change,
            },
            heard: self.now,
            published: None,
            touched: false,
            offline_timer: false,
            silence_timer: false,
            snapshot_gen: 0,
        });
        self.slots.insert(id.clone(), s);
        s
    }

    fn touch(&mut self, slot: u32) {
        let v = &mut self.vehicles[slot as usize];
        if !v.touched {
            v.touched = true;
            self.touched.push(slot);
        }
    }

    /// Takes in a fix as it arrives.
    pub fn offer(&mut self, inc: IncomingFix, out: &mut Outputs) {
        let slot = self.slot(&inc.fix.vehicle_id);
        self.offer_at(slot, inc, out);
    }

    /// Takes in a fix of the vehicle in `slot`.
    fn offer_at(&mut self, slot: u32, inc: IncomingFix, out: &mut Outputs) {
        if inc.replayed {
            return self.replay(inc);
        }
        self.save(slot);
        let lateness = self.cfg.lateness;
        let (now, clock) = (self.now, self.clock);
        let v = &mut self.vehicles[slot as usize];
        v.heard = now;
        if let Some(c) = clock {
            v.clock.heard_at = c;
        }
        let ts = inc.fix.ts;
        if ts < v.clock.watermark {
            self.metrics.dead_letter(Reason::Late);
            let detail = format!(
                "ts {ts} below the vehicle's watermark {} (its newest ts {} minus the allowed lateness)",
                v.clock.watermark, v.clock.newest
            );
            out.dead
                .push(dead_letter(&self.input_names, Reason::Late, detail, inc));
            return;
        }
        // Fixes mostly arrive in order: appending is the common case, and a fix newer than
        // the vehicle's newest is newer than every pending one (the queue's last entry,
        // likely not in the cache, is not read for it).
        let appended = ts > v.clock.newest;
        if appended {
            match find_latest(&v.anchor, &v.pending, v.latest) {
                Some((l, _)) => {
                    if let Some(kmh) = chain_step(l, &inc.fix) {
                        v.latest = Some((ts, Some(kmh)));
                    }
                }
                None => v.latest = Some((ts, None)),
            }
            v.pending.push_back(inc);
        } else {
            let at = v.pending.partition_point(|p| p.fix.ts < ts);
            if v.pending.get(at).is_some_and(|p| p.fix.ts == ts) {
                self.metrics.duplicates.fetch_add(1, Relaxed);
                if inc.fix < v.pending[at].fix {
                    v.pending[at] = inc;
                    v.recompute_latest();
                    self.touch(slot);
                }
                return;
            }
            v.pending.insert(at, inc);
            v.recompute_latest();
        }
        if ts > v.clock.newest {
            v.clock.newest = ts;
            self.raise(slot, ts.saturating_sub(lateness), out);
        }
        self.touch(slot);
        self.arm_silence(slot);
    }

    /// Raises the watermark of the vehicle in `slot` to `to`: its fixes below it become
    /// final in `ts` order, with the geofence changes it takes at their place among them,
    /// and its windows that end at or before it close.
    fn raise(&mut self, slot: u32, to: Millis, out: &mut Outputs) {
        if to <= self.vehicles[slot as usize].clock.watermark {
            return;
        }
        self.save(slot);
        self.vehicles[slot as usize].clock.watermark = to;
        let mut changed = false;
        loop {
            let v = &self.vehicles[slot as usize];
            let fix_ts = v.pending.front().map(|p| p.fix.ts).filter(|ts| *ts < to);
            let change = self.next_change(v.clock.version).filter(|c| c.at <= to);
            match (fix_ts, change) {
                // A change at `at` comes before fixes at or after it.
                (_, Some(c)) if fix_ts.is_none_or(|ts| c.at <= ts) => {
                    self.take_change(slot, c.seq, out)
                }
                (Some(_), _) => {
                    self.finalize_front(slot, out);
                    changed = true;
                }
                (None, _) => break,
            }
        }
        let v = &mut self.vehicles[slot as usize];
        for w in v.windows.iter_mut() {
            if w.as_ref().is_some_and(|w| w.end() <= to) {
                out.rows.push(w.take().expect("checked").finish());
            }
        }
        if changed {
            if v.latest.is_none() {
                v.latest = v.anchor.as_ref().map(|(a, kmh)| (a.ts, *kmh));
            }
            self.touch(slot);
        }
    }

    /// The first change registered after `version`.
    fn next_change(&self, version: u64) -> Option<Change> {
        let k = self.changes.partition_point(|c| c.seq <= version);
        self.changes.get(k).copied()
    }

    /// The vehicle in `slot` takes change `seq` (the next one it has not taken).
    fn take_change(&mut self, slot: u32, seq: u64, out: &mut Outputs) {
        self.save(slot);
        self.vehicles[slot as usize].clock.version = seq;
        if self.cfg.finals {
            out.finals.push(Finalized::Apply { slot, seq });
        }
        let k = self.changes.partition_point(|c| c.seq < seq);
        if let Some(c) = self.changes.get_mut(k) {
            c.remaining = c.remaining.saturating_sub(1);
        }
        self.trim_changes(out);
    }

    /// Forgets the changes every vehicle has taken, telling geofencing.
    fn trim_changes(&mut self, out: &mut Outputs) {
        let mut taken = None;
        while self.changes.front().is_some_and(|c| c.remaining == 0) {
            taken = self.changes.pop_front().map(|c| c.seq);
        }
        if let (Some(seq), true) = (taken.or(self.taken_on_restore.take()), self.cfg.finals) {
            out.finals.push(Finalized::Taken(seq));
        }
    }

    /// Makes the vehicle's first pending fix final.
    fn finalize_front(&mut self, slot: u32, out: &mut Outputs) {
        let tiers = &self.cfg.tiers;
        let v = &mut self.vehicles[slot as usize];
        let inc = v.pending.pop_front().expect("a pending fix");
        let seg = v
            .anchor
            .as_ref()
            .map(|(a, _)| (a.ts, segment(a, &inc.fix, v.capacity)));
        if let Some((from, s)) = seg.filter(|(_, s)| s.is_implausible()) {
            let secs = s.dt_ms as f64 / 1000.0;
            let detail = format!(
                "{:.3} km in {secs:.3} s after the fix at {from}",
                s.distance_km
            );
            self.metrics.dead_letter(Reason::ImplausibleJump);
            out.dead.push(dead_letter(
                &self.input_names,
                Reason::ImplausibleJump,
                detail,
                inc,
            ));
            return;
        }
        let seg = seg.map(|(_, s)| s);
        let fix = inc.fix;
        if let Some(s) = &seg {
            let day = day_of(fix.ts);
            if day != v.today_day {
                (v.today_day, v.today_km, v.today_l) = (day, 0.0, 0.0);
                v.today_idle_s = 0.0;
            }
            v.today_km += s.distance_km;
            v.today_l += s.fuel_used_l;
            v.today_idle_s += s.idle_s;
        }
        for (i, size) in tiers.iter().enumerate() {
            let w = &mut v.windows[i];
            if w.as_ref().is_some_and(|w| fix.ts >= w.end()) {
                out.rows.push(w.take().expect("checked").finish());
            }
            w.get_or_insert_with(|| WindowAcc::open(i as u8, *size, &fix))
                .add(&fix, seg.as_ref());
        }
        self.metrics.accepted.fetch_add(1, Relaxed);
        if self.cfg.finals {
            out.finals
                .push(Finalized::Fix(FixPoint::of(&fix, slot, v.clock.version)));
        }
        if self.cfg.raw {
            out.raw.push(fix.clone());
        }
        v.anchor = Some((fix, seg.map(|s| s.implied_kmh())));
    }

    /// Queues the vehicle's next silence check (unbounded inputs), unless one is queued or
    /// there is nothing its silence would make final.
    fn arm_silence(&mut self, slot: u32) {
        let Some(rules) = self.cfg.silence else {
            return;
        };
        let v = &self.vehicles[slot as usize];
        if v.silence_timer {
            return;
        }
        let heard = v.clock.heard_at;
        let due = if !v.pending.is_empty() || self.next_change(v.clock.version).is_some() {
            heard.saturating_add(rules.quiet_after + 1)
        } else if let Some(end) = v.windows.iter().flatten().map(WindowAcc::end).min() {
            end.saturating_add(rules.close_after)
                .max(heard.saturating_add(rules.close_after + 1))
        } else {
            return;
        };
        self.vehicles[slot as usize].silence_timer = true;
        self.silence.push(Reverse((due, slot)));
    }

    /// Applies the silence rules of the vehicle in `slot` at job clock `c`.
    fn silence_check(&mut self, slot: u32, c: Millis, out: &mut Outputs) {
        let Some(rules) = self.cfg.silence else {
            return;
        };
        self.save(slot);
        let v = &mut self.vehicles[slot as usize];
        if v.clock.heard_at == Millis::MIN {
            // Heard from before the job clock began: count from its first value.
            v.clock.heard_at = c;
        }
        let (heard, newest) = (v.clock.heard_at, v.clock.newest);
        if c - heard > rules.quiet_after {
            // Everything it sent becomes final, and it takes every pending change.
            self.raise(slot, newest.saturating_add(1), out);
            while let Some(next) = self.next_change(self.vehicles[slot as usize].clock.version) {
                self.take_change(slot, next.seq, out);
            }
        }
        if c - heard > rules.close_after {
            self.raise(slot, c - rules.close_after, out);
        }
    }

    /// Moves the job clock to `c` (it never goes back): offline statuses, "today", and on
    /// unbounded inputs the silence rules.
    pub fn set_clock(&mut self, c: Millis, out: &mut Outputs) {
        if self.clock.is_some_and(|old| c <= old) {
            return;
        }
        self.clock = Some(c);
        let day = day_of(c);
        if self.day != Some(day) {
            self.day = Some(day);
            for s in 0..self.vehicles.len() as u32 {
                self.touch(s);
            }
        }
        while let Some(Reverse((at, slot))) = self.offline.peek().copied() {
            if at >= c {
                break;
            }
            self.offline.pop();
            self.vehicles[slot as usize].offline_timer = false;
            self.touch(slot);
        }
        while let Some(Reverse((at, slot))) = self.silence.peek().copied() {
            if at > c {
                break;
            }
            self.silence.pop();
            self.vehicles[slot as usize].silence_timer = false;
            self.silence_check(slot, c, out);
            self.arm_silence(slot);
        }
    }

    /// The end of a bounded input sets the job clock to `c`, also back: every vehicle's
    /// state is evaluated again at it.
    pub fn end_clock(&mut self, c: Millis, out: &mut Outputs) {
        if self.clock.is_some_and(|old| c < old) {
            self.clock = Some(c);
            self.day = Some(day_of(c));
            for s in 0..self.vehicles.len() as u32 {
                self.touch(s);
            }
        } else {
            self.set_clock(c, out);
        }
    }

    /// A geofence change reaches this worker: it takes effect at the job clock `T` it
    /// carries (the same on every worker). Each vehicle takes it at `T` in its own time
    /// (its fixes before `T` are checked against the old geofences, later ones against the
    /// new), once its watermark reaches `T`; a vehicle whose watermark is already past `T`
    /// (a clock ahead of the fleet) or that is silent takes it at once.
    /// (`at`: `None` before the job clock began.)
    pub fn register_change(&mut self, seq: u64, at: Option<Millis>, out: &mut Outputs) {
        if self.cfg.finals {
            out.finals.push(Finalized::Change { seq, at });
        }
        let at = at.unwrap_or(Millis::MIN);
        self.latest_change = self.latest_change.max(seq);
        self.changes.push_back(Change {
            seq,
            at,
            remaining: self.vehicles.len() as u32,
        });
        let quiet = self.cfg.silence.map(|s| s.quiet_after);
        for slot in 0..self.vehicles.len() as u32 {
            let v = &self.vehicles[slot as usize];
            let heard = v.clock.heard_at;
            let silent =
                quiet.is_some_and(|q| heard != Millis::MIN && at.saturating_sub(heard) > q);
            if v.clock.watermark >= at || silent {
                // Earlier changes it has not taken come first, in order.
                while let Some(next) = self.next_change(self.vehicles[slot as usize].clock.version)
                {
                    if next.seq > seq {
                        break;
                    }
                    self.take_change(slot, next.seq, out);
                }
            } else {
                self.arm_silence(slot);
            }
        }
        self.trim_changes(out);
    }

    /// End of input: every pending fix becomes final, every vehicle takes every change and
    /// every window completes.
    pub fn finish(&mut self, out: &mut Outputs) {
        for slot in 0..self.vehicles.len() as u32 {
            self.raise(slot, Millis::MAX, out);
        }
        debug_assert!(self
            .vehicles
            .iter()
            .all(|v| v.windows.iter().all(Option::is_none) && v.pending.is_empty()));
    }

    /// Whether the vehicle votes for the job clock: it has a clock and, on unbounded
    /// inputs, was heard from within `vote_for` of processing time.
    fn votes(&self, v: &Vehicle) -> bool {
        v.clock.newest != Millis::MIN
            && self
                .cfg
                .vote_for
                .is_none_or(|f| self.now.saturating_sub(v.heard) <= f)
    }

    /// A report of this worker's vehicles' clocks for the job clock: those that vote,
    /// sampled when there are many.
    pub fn clock_sample(&self, worker: u32) -> ClockSample {
        let n = self.vehicles.len();
        let stride = n.div_ceil(crate::clock::MAX_SAMPLE).max(1);
        let clocks: Vec<Millis> = self
            .vehicles
            .iter()
            .step_by(stride)
            .filter(|v| self.votes(v))
            .map(|v| v.clock.newest)
            .collect();
        ClockSample::of(worker, clocks, stride as u64)
    }

    /// The voting vehicles far (more than `offline_after`) ahead of and behind the job
    /// clock. One pass over the vehicles.
    pub fn outliers(&self) -> (u64, u64) {
        let Some(c) = self.clock else {
            return (0, 0);
        };
        let far = self.cfg.offline_after;
        let (mut ahead, mut behind) = (0, 0);
        for v in self.vehicles.iter().filter(|v| self.votes(v)) {
            if v.clock.newest > c.saturating_add(far) {
                ahead += 1;
            } else if v.clock.newest < c.saturating_sub(far) {
                behind += 1;
            }
        }
        (ahead, behind)
    }

    /// The earliest event time of a row the vehicles will still produce: the first fix not
    /// yet final and the start of the earliest open window of any vehicle (`Millis::MAX`
    /// when none). One pass over the vehicles.
    pub fn unfinished_from(&self) -> Millis {
        self.vehicles
            .iter()
            .flat_map(|v| {
                v.pending
                    .front()
                    .map(|p| p.fix.ts)
                    .into_iter()
                    .chain(v.windows.iter().flatten().map(WindowAcc::start))
            })
            .min()
            .unwrap_or(Millis::MAX)
    }

    /// Every vehicle's clock (for the exact job clock at the end of a bounded input).
    pub fn clocks(&self) -> Vec<Millis> {
        self.vehicles
            .iter()
            .map(|v| v.clock.newest)
            .filter(|c| *c != Millis::MIN)
            .collect()
    }

    /// Emits the changes to vehicle state since the last call, at the job clock (status and
    /// "today" depend on it).
    pub fn publish(&mut self, out: &mut Outputs) {
        let clock = self.clock;
        let offline_after = self.cfg.offline_after;
        for slot in std::mem::take(&mut self.touched) {
            let v = &mut self.vehicles[slot as usize];
            v.touched = false;
            let Some((fix, kmh)) = find_latest(&v.anchor, &v.pending, v.latest) else {
                continue;
            };
            let status = status_of(fix, kmh, clock, offline_after);
            let today = clock.map(day_of).unwrap_or(v.today_day) == v.today_day;
            let state = VehicleState {
                fix: fix.clone(),
                status,
                today_distance_km: if today { v.today_km } else { 0.0 },
                today_fuel_used_l: if today { v.today_l } else { 0.0 },
                today_idle_s: if today { v.today_idle_s } else { 0.0 },
            };
            if status != Status::Offline && !v.offline_timer {
                // One check per vehicle; when it fires early (newer fix) it is re-armed here.
                v.offline_timer = true;
                self.offline
                    .push(Reverse((fix.ts.saturating_add(offline_after), slot)));
            }
            if v.published.as_deref() == Some(&state) {
                continue;
            }
            if let Some(old) = v.published.take() {
                out.state.push(((v.id.clone(), old), -1));
            }
            let state = Arc::new(state);
            out.state.push(((v.id.clone(), state.clone()), 1));
            v.published = Some(state);
        }
    }
}

/// Status of a vehicle whose latest fix is `fix` at job clock `clock` (semantics §3). A
/// missing speed is taken from the implied speed of the segment ending at the fix.
pub fn status_of(
    fix: &Fix,
    implied_kmh: Option<f64>,
    clock: Option<Millis>,
    offline_after: Millis,
) -> Status {
    if clock.is_some_and(|c| c.saturating_sub(fix.ts) > offline_after) {
        Status::Offline
    } else if fix.ignition == Some(false) {
        Status::Parked
    } else if fix.speed_kmh.or(implied_kmh).unwrap_or(0.0) >= MOVING_KMH {
        Status::Moving
    } else {
        Status::Idle
    }
}

fn dead_letter(names: &[String], reason: Reason, detail: String, inc: IncomingFix) -> DeadLetter {
    DeadLetter {
        reason,
        detail,
        source: source_name(names, inc.input, inc.position),
        payload: String::from_utf8_lossy(&inc.payload).into_owned(),
        received_at: inc.received_at,
        event_ts: inc.fix.ts,
        input: inc.input,
        position: inc.position,
        key: Some(bytes::Bytes::copy_from_slice(inc.fix.vehicle_id.as_bytes())),
        raw: None,
    }
}
