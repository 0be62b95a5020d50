//! Per-vehicle event-time logic on one worker: dedup, late fixes, implausible jumps,
//! segments, tier windows and vehicle state (semantics §1-§4), independent of timely.
//!
//! ```text
//!  offer(fix) ──► late? ──► dead letter `late`
//!                 │
//!                 ▼
//!  pending (sorted by ts, per vehicle; dedup by ts) ──► provisional latest fix (state)
//!                 │ advance(watermark): ts < watermark, in ts order
//!                 ▼
//!  implausible? ──► dead letter `implausible_jump`
//!                 │
//!                 ▼
//!  accepted ──► raw row, segment from the previous accepted fix,
//!               tier windows (1m/1h/1d), today's sums
//! ```
//!
//! State kept per vehicle: the last final fix, the fixes not yet below the watermark
//! (bounded by the allowed lateness), one open window per tier and today's sums. Nothing
//! grows with the number of events seen.

use crate::geofence::{Finalized, FixPoint};
use crate::segments::{chain_step, segment, MOVING_KMH};
use crate::tiers::WindowAcc;
use fleetflow_types::checkpoint::Blob;
use fleetflow_types::fix::Fix;
use fleetflow_types::metrics::Metrics;
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

/// Settings of the per-vehicle logic.
#[derive(Clone, Debug)]
pub struct TimelineConfig {
    /// Silence after which a vehicle is offline, ms.
    pub offline_after: Millis,
    /// Window sizes of the window tiers, ms, in tier order.
    pub tiers: Vec<Millis>,
    /// Whether accepted fixes are emitted for the raw tier.
    pub raw: bool,
    /// Whether final fixes are emitted for geofence evaluation.
    pub finals: bool,
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
    /// Changes to the vehicle-state collection.
    pub state: Vec<((CompactString, VehicleState), isize)>,
    /// Final fixes in `ts` order per vehicle, interleaved with the geofence changes the
    /// operator applied between them (for the geofence operator).
    pub finals: Vec<Finalized>,
}

struct Vehicle {
    id: CompactString,
    capacity: Option<f64>,
    /// Last final accepted fix and the implied speed of the segment ending at it.
    anchor: Option<(Fix, Option<f64>)>,
    /// Fixes not yet final, sorted by ts, distinct ts.
    pending: VecDeque<IncomingFix>,
    /// Newest provisionally accepted fix (the anchor when no pending fix qualifies).
    latest: Option<(Fix, Option<f64>)>,
    windows: Vec<Option<WindowAcc>>,
    today_day: i64,
    today_km: f64,
    today_l: f64,
    today_idle_s: f64,
    published: Option<VehicleState>,
    touched: bool,
    /// Whether an offline check is queued (at most one per vehicle).
    offline_timer: bool,
    /// The snapshot generation this vehicle was last written into.
    snapshot_gen: u32,
}

/// Every vehicle of one worker.
pub struct Timelines {
    cfg: TimelineConfig,
    registry: Arc<VehicleRegistry>,
    input_names: Arc<Vec<String>>,
    metrics: Arc<Metrics>,
    slots: ahash::AHashMap<CompactString, u32>,
    vehicles: Vec<Vehicle>,
    /// (least pending ts, slot): vehicles with fixes to finalize.
    due: BinaryHeap<Reverse<(Millis, u32)>>,
    /// (window end, slot, tier): windows to close.
    closing: BinaryHeap<Reverse<(Millis, u32, u8)>>,
    /// (time it goes offline, slot).
    offline: BinaryHeap<Reverse<(Millis, u32)>>,
    touched: Vec<u32>,
    day: Option<i64>,
    /// The snapshot being written, if any.
    snapshotting: Option<Snapshotting>,
    /// Generation of the newest snapshot begun.
    snapshot_gen: u32,
}

/// Size at which a snapshot's chunk is complete and the next one begins: a snapshot of
/// hundreds of MB is never one buffer that grows (each growth copies it, stalling the
/// worker for tens of ms).
#[cfg(not(test))]
const SNAPSHOT_CHUNK: usize = 1 << 20;
#[cfg(test)]
const SNAPSHOT_CHUNK: usize = 512;

/// A snapshot of every vehicle, written a share at a time while the vehicles go on
/// changing (an asynchronous snapshot). A vehicle about to change is written first (copy on
/// write), so what is written is the state when the snapshot began, however its writing
/// interleaves with later fixes.
struct Snapshotting {
    /// The vehicles that existed when it began: the slots below this.
    upto: u32,
    /// The next slot the background pass looks at.
    cursor: u32,
    /// The chunks complete so far, in order.
    done: Vec<bytes::Bytes>,
    /// The chunk being written. All the chunks together are the head, the count, and the
    /// vehicles written, each encoded as a [`VehicleSnapshot`].
    body: Vec<u8>,
}

impl Snapshotting {
    /// An empty chunk, with room for the vehicle that fills it past [`SNAPSHOT_CHUNK`].
    fn chunk() -> Vec<u8> {
        Vec::with_capacity(SNAPSHOT_CHUNK * 9 / 8)
    }

    /// Completes the chunk being written once it is full.
    fn roll(&mut self) {
        if self.body.len() >= SNAPSHOT_CHUNK {
            let full = std::mem::replace(&mut self.body, Snapshotting::chunk());
            self.done.push(full.into());
        }
    }
}

/// A vehicle, encoded exactly as its [`VehicleSnapshot`] but without copying it.
#[derive(serde::Serialize)]
struct VehicleSnapshotRef<'a> {
    id: &'a CompactString,
    anchor: &'a Option<(Fix, Option<f64>)>,
    pending: &'a VecDeque<IncomingFix>,
    windows: &'a [Option<WindowAcc>],
    today_day: i64,
    today_km: f64,
    today_l: f64,
    today_idle_s: f64,
}

/// One vehicle's part of a [`Timelines`] snapshot: everything that is not derived.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VehicleSnapshot {
    /// The vehicle.
    pub id: CompactString,
    anchor: Option<(Fix, Option<f64>)>,
    pending: Vec<IncomingFix>,
    windows: Vec<Option<WindowAcc>>,
    today_day: i64,
    today_km: f64,
    today_l: f64,
    today_idle_s: f64,
}

impl Timelines {
    /// Restores vehicles from snapshots (into empty timelines), in the given order: the
    /// `i`-th becomes slot `i`. Every restored vehicle publishes its state again.
    pub fn restore(&mut self, vehicles: Vec<VehicleSnapshot>) {
        assert!(self.vehicles.is_empty(), "restore into empty timelines");
        for snap in vehicles {
            let slot = self.slot(&snap.id);
            let v = &mut self.vehicles[slot as usize];
            v.anchor = snap.anchor;
            v.pending = snap.pending.into();
            v.windows = snap.windows;
            v.windows.resize(self.cfg.tiers.len(), None);
            (v.today_day, v.today_km, v.today_l) = (snap.today_day, snap.today_km, snap.today_l);
            v.today_idle_s = snap.today_idle_s;
            v.recompute_latest();
            if let Some(p) = v.pending.front() {
                self.due.push(Reverse((p.fix.ts, slot)));
            }
            for (tier, w) in v.windows.iter().enumerate() {
                if let Some(w) = w {
                    self.closing.push(Reverse((w.end(), slot, tier as u8)));
                }
            }
            self.touch(slot);
        }
    }

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
            due: BinaryHeap::new(),
            closing: BinaryHeap::new(),
            offline: BinaryHeap::new(),
            touched: Vec::new(),
            day: None,
            snapshotting: None,
            snapshot_gen: 0,
        }
    }

    /// Begins a snapshot of every vehicle as it is now, to follow `head`; write it with
    /// [`Timelines::continue_snapshot`] while the timelines go on.
    pub fn begin_snapshot(&mut self, head: Vec<u8>) {
        assert!(self.snapshotting.is_none(), "one snapshot at a time");
        self.snapshot_gen = self.snapshot_gen.wrapping_add(1);
        let upto = self.vehicles.len() as u32;
        let mut body = Snapshotting::chunk();
        body.extend_from_slice(&head);
        // Every vehicle of now is written, once: the count is known.
        body = postcard::to_extend(&(upto as u64), body).expect("a count encodes");
        self.snapshotting = Some(Snapshotting {
            upto,
            cursor: 0,
            done: Vec::new(),
            body,
        });
    }

    /// Writes vehicles of the snapshot begun last, for about `budget` (`None`: all of
    /// them). Once every vehicle is written: the snapshot, that is the head followed by the
    /// `Vec<VehicleSnapshot>` (`postcard`) of every vehicle as it was when the snapshot
    /// began, in no particular order.
    pub fn continue_snapshot(&mut self, budget: Option<std::time::Duration>) -> Option<Blob> {
        let started = std::time::Instant::now();
        loop {
            let s = self.snapshotting.as_mut()?;
            if s.cursor >= s.upto {
                break;
            }
            let slot = s.cursor;
            s.cursor += 1;
            self.save(slot);
            if budget.is_some_and(|b| slot % 16 == 15 && started.elapsed() >= b) {
                return None;
            }
        }
        let mut s = self.snapshotting.take()?;
        s.done.push(s.body.into());
        Some(Blob::from_chunks(s.done))
    }

    /// How many vehicles the pass of the snapshot being written has looked at.
    #[cfg(test)]
    pub(crate) fn snapshot_cursor(&self) -> Option<u32> {
        self.snapshotting.as_ref().map(|s| s.cursor)
    }

    /// Writes vehicle `slot` into the snapshot being written, unless it is written already
    /// or is newer than the snapshot. Called before anything the snapshot holds changes.
    fn save(&mut self, slot: u32) {
        let Some(s) = self.snapshotting.as_mut() else {
            return;
        };
        let v = &mut self.vehicles[slot as usize];
        if slot >= s.upto || v.snapshot_gen == self.snapshot_gen {
            return;
        }
        v.snapshot_gen = self.snapshot_gen;
        let r = VehicleSnapshotRef {
            id: &v.id,
            anchor: &v.anchor,
            pending: &v.pending,
            windows: &v.windows,
            today_day: v.today_day,
            today_km: v.today_km,
            today_l: v.today_l,
            today_idle_s: v.today_idle_s,
        };
        s.body =
            postcard::to_extend(&r, std::mem::take(&mut s.body)).expect("vehicle state encodes");
        s.roll();
    }

    /// Number of vehicles seen.
    pub fn vehicles(&self) -> usize {
        self.vehicles.len()
    }

    /// Fixes waiting for the watermark, and open windows (for memory accounting and logs).
    pub fn open_state(&self) -> (usize, usize) {
        let pending = self.vehicles.iter().map(|v| v.pending.len()).sum();
        let windows = self
            .vehicles
            .iter()
            .map(|v| v.windows.iter().filter(|w| w.is_some()).count())
            .sum();
        (pending, windows)
    }

    /// Sizes of the internal timer queues: (fixes to finalize, windows to close, offline
    /// checks), for diagnostics.
    pub fn queue_lengths(&self) -> (usize, usize, usize) {
        (self.due.len(), self.closing.len(), self.offline.len())
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
            published: None,
            touched: false,
            offline_timer: false,
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

    /// Takes in a fix that arrived while the watermark was `watermark`.
    pub fn offer(&mut self, inc: IncomingFix, watermark: Option<Millis>, out: &mut Outputs) {
        let slot = self.slot(&inc.fix.vehicle_id);
        self.save(slot);
        let v = &mut self.vehicles[slot as usize];
        let ts = inc.fix.ts;
        let below_final = v.anchor.as_ref().is_some_and(|(a, _)| ts <= a.ts);
        if let Some(w) = watermark
            .filter(|w| ts < *w)
            .or(below_final.then_some(Millis::MIN))
        {
            self.metrics.dead_letter(Reason::Late);
            let detail = if w == Millis::MIN {
                "ts not after the last final fix".to_string()
            } else {
                format!("ts {ts} below the watermark {w}")
            };
            out.dead
                .push(dead_letter(&self.input_names, Reason::Late, detail, inc));
            return;
        }
        // Fixes mostly arrive in order: appending is the common case.
        let at = match v.pending.back() {
            None => 0,
            Some(last) if last.fix.ts < ts => v.pending.len(),
            Some(_) => v.pending.partition_point(|p| p.fix.ts < ts),
        };
        if v.pending.get(at).is_some_and(|p| p.fix.ts == ts) {
            self.metrics.duplicates.fetch_add(1, Relaxed);
            if inc.fix < v.pending[at].fix {
                v.pending[at] = inc;
                v.recompute_latest();
                self.touch(slot);
            }
            return;
        }
        let appended = at == v.pending.len();
        if at == 0 {
            self.due.push(Reverse((ts, slot)));
        }
        v.pending.insert(at, inc);
        if appended {
            let new = &v.pending[at].fix;
            match &v.latest {
                Some((l, _)) => {
                    if let Some(kmh) = chain_step(l, new) {
                        v.latest = Some((new.clone(), Some(kmh)));
                    }
                }
                None => v.latest = Some((new.clone(), None)),
            }
        } else {
            v.recompute_latest();
        }
        self.touch(slot);
    }

    /// Makes every fix with `ts < watermark` final and completes the windows that end at or
    /// before it.
    pub fn advance(&mut self, watermark: Millis, out: &mut Outputs) {
        while let Some(Reverse((ts, slot))) = self.due.peek().copied() {
            if ts >= watermark {
                break;
            }
            self.due.pop();
            let v = &self.vehicles[slot as usize];
            if v.pending.front().is_none_or(|p| p.fix.ts != ts) {
                continue; // stale entry
            }
            self.finalize_vehicle(slot, watermark, out);
            if let Some(p) = self.vehicles[slot as usize].pending.front() {
                self.due.push(Reverse((p.fix.ts, slot)));
            }
        }
        while let Some(Reverse((end, slot, tier))) = self.closing.peek().copied() {
            if end > watermark {
                break;
            }
            self.closing.pop();
            self.save(slot);
            let w = &mut self.vehicles[slot as usize].windows[tier as usize];
            if w.as_ref().is_some_and(|w| w.end() == end) {
                out.rows.push(w.take().expect("checked").finish());
            }
        }
    }

    /// End of input: every pending fix becomes final and every window completes.
    pub fn finish(&mut self, out: &mut Outputs) {
        // Every open window has an entry in `closing`, so this completes all of them.
        self.advance(Millis::MAX, out);
        debug_assert!(self
            .vehicles
            .iter()
            .all(|v| v.windows.iter().all(Option::is_none)));
    }

    fn finalize_vehicle(&mut self, slot: u32, watermark: Millis, out: &mut Outputs) {
        self.save(slot);
        let tiers = &self.cfg.tiers;
        let v = &mut self.vehicles[slot as usize];
        let mut changed = false;
        while v.pending.front().is_some_and(|p| p.fix.ts < watermark) {
            let inc = v.pending.pop_front().expect("checked");
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
                continue;
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
                let w = w.get_or_insert_with(|| {
                    let acc = WindowAcc::open(i as u8, *size, &fix);
                    self.closing.push(Reverse((acc.end(), slot, i as u8)));
                    acc
                });
                w.add(&fix, seg.as_ref());
            }
            self.metrics.accepted.fetch_add(1, Relaxed);
            if self.cfg.finals {
                out.finals.push(Finalized::Fix(FixPoint::of(&fix, slot)));
            }
            if self.cfg.raw {
                out.raw.push(fix.clone());
            }
            v.anchor = Some((fix, seg.map(|s| s.implied_kmh())));
            changed = true;
        }
        if changed {
            if v.latest.is_none() {
                v.latest = v.anchor.clone();
            }
            self.touch(slot);
        }
    }

    /// Emits the changes to vehicle state since the last call, at the state watermark
    /// `watermark` (status and "today" depend on it).
    pub fn publish(&mut self, watermark: Option<Millis>, out: &mut Outputs) {
        if let Some(w) = watermark {
            let day = day_of(w);
            if self.day != Some(day) {
                self.day = Some(day);
                for s in 0..self.vehicles.len() as u32 {
                    self.touch(s);
                }
            }
            while let Some(Reverse((at, slot))) = self.offline.peek().copied() {
                if at >= w {
                    break;
                }
                self.offline.pop();
                self.vehicles[slot as usize].offline_timer = false;
                self.touch(slot);
            }
        }
        let offline_after = self.cfg.offline_after;
        for slot in std::mem::take(&mut self.touched) {
            let v = &mut self.vehicles[slot as usize];
            v.touched = false;
            let Some((fix, kmh)) = v.latest.as_ref() else {
                continue;
            };
            let status = status_of(fix, *kmh, watermark, offline_after);
            let today = watermark.map(day_of).unwrap_or(v.today_day) == v.today_day;
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
            if v.published.as_ref() == Some(&state) {
                continue;
            }
            if let Some(old) = v.published.take() {
                out.state.push(((old.fix.vehicle_id.clone(), old), -1));
            }
            out.state
                .push(((state.fix.vehicle_id.clone(), state.clone()), 1));
            v.published = Some(state);
        }
    }
}

impl Vehicle {
    /// Re-runs the implausible-jump chain from the last final fix over the pending fixes.
    fn recompute_latest(&mut self) {
        let mut last: Option<(&Fix, Option<f64>)> = self.anchor.as_ref().map(|(f, k)| (f, *k));
        for p in &self.pending {
            match last {
                Some((a, _)) => {
                    if let Some(kmh) = chain_step(a, &p.fix) {
                        last = Some((&p.fix, Some(kmh)));
                    }
                }
                None => last = Some((&p.fix, None)),
            }
        }
        self.latest = last.map(|(f, k)| (f.clone(), k));
    }
}

/// Status of a vehicle whose latest fix is `fix` (semantics §3). A missing speed is taken
/// from the implied speed of the segment ending at the fix.
pub fn status_of(
    fix: &Fix,
    implied_kmh: Option<f64>,
    watermark: Option<Millis>,
    offline_after: Millis,
) -> Status {
    if watermark.is_some_and(|w| w.saturating_sub(fix.ts) > offline_after) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::time::{DAY_MS, MINUTE_MS};

    const T0: Millis = 1_736_121_600_000; // 2025-01-06T00:00:00Z

    fn inc(vid: &str, ts: Millis, lat: f64, speed: Option<f64>) -> IncomingFix {
        let fix = Fix {
            vehicle_id: vid.into(),
            tenant: "t".into(),
            ts,
            lat,
            lon: 13.0,
            speed_kmh: speed,
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: None,
            odometer_km: None,
            ignition: Some(true),
        };
        IncomingFix {
            payload: format!("payload@{ts}").into_bytes().into(),
            fix,
            input: 0,
            position: ts as u64,
            received_at: 0,
        }
    }

    /// Every vehicle's state as it is, copied at once: the reference for the snapshots
    /// written a slice at a time.
    fn state_now(t: &Timelines) -> Vec<VehicleSnapshot> {
        t.vehicles
            .iter()
            .map(|v| VehicleSnapshot {
                id: v.id.clone(),
                anchor: v.anchor.clone(),
                pending: v.pending.iter().cloned().collect(),
                windows: v.windows.clone(),
                today_day: v.today_day,
                today_km: v.today_km,
                today_l: v.today_l,
                today_idle_s: v.today_idle_s,
            })
            .collect()
    }

    fn timelines() -> (Timelines, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(vec![]));
        let cfg = TimelineConfig {
            offline_after: 10 * MINUTE_MS,
            tiers: vec![MINUTE_MS, DAY_MS],
            raw: true,
            finals: false,
        };
        (
            Timelines::new(
                cfg,
                Arc::new(VehicleRegistry::default()),
                Arc::new(vec!["in".into()]),
                metrics.clone(),
            ),
            metrics,
        )
    }

    fn latest(out: &Outputs, vid: &str) -> Option<VehicleState> {
        out.state
            .iter()
            .rev()
            .find(|((v, _), r)| v == vid && *r > 0)
            .map(|((_, s), _)| s.clone())
    }

    #[test]
    fn a_fix_below_the_watermark_is_late_and_changes_nothing() {
        let (mut t, m) = timelines();
        let mut out = Outputs::default();
        t.offer(
            inc("a", T0 + 10_000, 52.0, Some(10.0)),
            Some(T0 + 20_000),
            &mut out,
        );
        assert_eq!(out.dead.len(), 1);
        assert_eq!(out.dead[0].reason, Reason::Late);
        assert_eq!(out.dead[0].payload, format!("payload@{}", T0 + 10_000));
        assert_eq!(out.dead[0].source, format!("in:{}", T0 + 10_000));
        assert_eq!(m.dead_letters_of(Reason::Late), 1);
        t.publish(Some(T0 + 20_000), &mut out);
        assert!(out.state.is_empty(), "a late fix creates no state");
        // After a fix is final, an older one is late even if the watermark did not say so.
        t.offer(
            inc("a", T0 + 30_000, 52.0, Some(10.0)),
            Some(T0 + 20_000),
            &mut out,
        );
        t.advance(T0 + 40_000, &mut out);
        t.offer(inc("a", T0 + 30_000, 52.0, Some(10.0)), None, &mut out);
        assert_eq!(m.dead_letters_of(Reason::Late), 2);
    }

    #[test]
    fn duplicates_are_dropped_and_the_least_copy_wins_in_any_order() {
        for order in [[0, 1], [1, 0]] {
            let (mut t, m) = timelines();
            let mut out = Outputs::default();
            let copies = [
                inc("a", T0, 52.0, Some(10.0)),
                inc("a", T0, 52.0, Some(11.0)),
            ];
            for i in order {
                t.offer(copies[i].clone(), None, &mut out);
            }
            t.finish(&mut out);
            assert_eq!(m.duplicates.load(Relaxed), 1);
            assert_eq!(out.raw.len(), 1);
            assert_eq!(out.raw[0].speed_kmh, Some(10.0), "order {order:?}");
            assert!(out.dead.is_empty());
        }
    }

    #[test]
    fn an_implausible_jump_is_rejected_and_the_next_fix_compared_with_the_last_good_one() {
        let (mut t, m) = timelines();
        let mut out = Outputs::default();
        t.offer(inc("a", T0, 52.0, Some(10.0)), None, &mut out);
        t.offer(inc("a", T0 + 10_000, 52.1, Some(10.0)), None, &mut out); // 11 km in 10 s
        t.offer(inc("a", T0 + 20_000, 52.0005, Some(10.0)), None, &mut out);
        t.publish(None, &mut out);
        assert_eq!(
            latest(&out, "a").unwrap().fix.ts,
            T0 + 20_000,
            "eager state skips the jump"
        );
        t.finish(&mut out);
        assert_eq!(
            out.raw.iter().map(|f| f.ts).collect::<Vec<_>>(),
            vec![T0, T0 + 20_000]
        );
        assert_eq!(m.dead_letters_of(Reason::ImplausibleJump), 1);
        assert_eq!(out.dead[0].payload, format!("payload@{}", T0 + 10_000));
        assert!(
            out.dead[0].detail.contains("km in 10.000 s"),
            "{}",
            out.dead[0].detail
        );
        let minute = out
            .rows
            .iter()
            .find(|r| r.tier == 0 && r.window_start == T0)
            .unwrap();
        assert_eq!(minute.fixes, 2);
        assert!(
            (minute.distance_km - 0.0556).abs() < 0.001,
            "{}",
            minute.distance_km
        );
    }

    #[test]
    fn state_is_eager_and_revised_when_an_earlier_fix_arrives() {
        let (mut t, _) = timelines();
        let mut out = Outputs::default();
        t.offer(inc("a", T0, 52.0, Some(10.0)), None, &mut out);
        t.offer(inc("a", T0 + 20_000, 52.018, Some(10.0)), None, &mut out); // 2 km in 20 s: a jump
        t.publish(None, &mut out);
        assert_eq!(latest(&out, "a").unwrap().fix.ts, T0);
        // Fixes in between (each hop under 1 km) make the later one plausible.
        t.offer(inc("a", T0 + 14_000, 52.0132, Some(10.0)), None, &mut out);
        t.offer(inc("a", T0 + 7_000, 52.0066, Some(10.0)), None, &mut out);
        t.publish(None, &mut out);
        assert_eq!(latest(&out, "a").unwrap().fix.ts, T0 + 20_000);
        let net: isize = out.state.iter().map(|(_, r)| r).sum();
        assert_eq!(net, 1, "one live state per vehicle");
        t.finish(&mut out);
        assert_eq!(out.raw.len(), 4);
        assert!(out.dead.is_empty());
    }

    #[test]
    fn windows_close_at_the_watermark_and_vehicles_go_offline() {
        let (mut t, _) = timelines();
        let mut out = Outputs::default();
        t.offer(inc("a", T0 + 5_000, 52.0, Some(0.0)), None, &mut out);
        t.offer(inc("a", T0 + 65_000, 52.001, Some(20.0)), None, &mut out);
        t.advance(T0 + 60_000, &mut out);
        assert_eq!(out.rows.len(), 1, "the first minute closed");
        assert_eq!((out.rows[0].window_start, out.rows[0].fixes), (T0, 1));
        t.advance(T0 + 120_000, &mut out);
        assert_eq!(
            out.rows.len(),
            2,
            "the second minute closed without another fix"
        );
        t.publish(Some(T0 + 120_000), &mut out);
        let s = latest(&out, "a").unwrap();
        assert_eq!(s.status, Status::Moving);
        assert!(s.today_distance_km > 0.1);
        t.advance(T0 + 65_000 + 10 * MINUTE_MS + 1, &mut out);
        t.publish(Some(T0 + 65_000 + 10 * MINUTE_MS + 1), &mut out);
        assert_eq!(latest(&out, "a").unwrap().status, Status::Offline);
        // Next day: today's sums reset.
        t.publish(Some(T0 + DAY_MS), &mut out);
        assert_eq!(latest(&out, "a").unwrap().today_distance_km, 0.0);
        t.finish(&mut out);
        assert!(
            out.rows.iter().any(|r| r.tier == 1 && r.fixes == 2),
            "the day row completes at the end"
        );
    }

    /// A snapshot written a slice at a time while fixes keep arriving, windows close and
    /// new vehicles appear holds exactly the state of when it began, and its encoding
    /// continues a `TimelineSnapshot`-like head.
    #[test]
    fn an_interleaved_snapshot_holds_the_state_when_it_began() {
        use proptest::prelude::*;
        #[derive(serde::Deserialize)]
        struct Whole {
            head: (u32, Option<Millis>),
            vehicles: Vec<VehicleSnapshot>,
        }
        let encoded = |mut v: Vec<VehicleSnapshot>| {
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v.iter()
                .map(|v| postcard::to_stdvec(v).unwrap())
                .collect::<Vec<_>>()
        };
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
        runner
            .run(&(any::<u64>(), 0usize..400), |(seed, before)| {
                let mut rng = seed | 1;
                let mut next = move |n: u64| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % n
                };
                let (mut t, _) = timelines();
                let mut out = Outputs::default();
                let mut clock = T0;
                let mut step =
                    |t: &mut Timelines, out: &mut Outputs, next: &mut dyn FnMut(u64) -> u64| {
                        clock += next(3_000) as Millis;
                        let v = format!("v{}", next(300));
                        let ts = clock - next(20_000) as Millis;
                        t.offer(
                            inc(&v, ts, 52.0 + next(100) as f64 * 1e-4, Some(30.0)),
                            Some(clock - 30_000),
                            out,
                        );
                        if next(10) == 0 {
                            t.advance(clock - 30_000, out);
                        }
                    };
                for _ in 0..before {
                    step(&mut t, &mut out, &mut next);
                }
                let reference = encoded(state_now(&t));
                t.begin_snapshot(postcard::to_stdvec(&(7u32, Some(T0))).unwrap());
                let blob = loop {
                    if let Some(v) = t.continue_snapshot(Some(std::time::Duration::ZERO)) {
                        break v;
                    }
                    for _ in 0..next(40) {
                        step(&mut t, &mut out, &mut next);
                    }
                };
                prop_assert!(t.snapshotting.is_none(), "written once, then done");
                prop_assert!(
                    blob.chunks().len() > 1 || blob.len() < SNAPSHOT_CHUNK,
                    "written in chunks"
                );
                let whole: Whole = postcard::from_bytes(&blob.contiguous()).unwrap();
                prop_assert_eq!(whole.head, (7, Some(T0)));
                prop_assert_eq!(encoded(whole.vehicles), reference);
                Ok(())
            })
            .unwrap();
    }
}
