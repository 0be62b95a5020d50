//! Asynchronous snapshots of the timelines, and restoring from one.
//!
//! A snapshot of every vehicle is written a share at a time while the vehicles go on
//! changing. A vehicle about to change is written first (copy on write), so what is written
//! is the state when the snapshot began, however its writing interleaves with later fixes.
//! Encoded with `postcard` as the caller's head, the worker's geofence changes, the vehicle
//! count, every [`VehicleSnapshot`] in no particular order, and the replay positions.
//!
//! On replayable inputs (Kafka, [`super::TimelineConfig::replay`]) a vehicle's fixes that
//! are not final yet are not written: the snapshot ends with the least position of such a
//! fix per input, and a restore reads each input again from there up to the checkpoint's
//! position ([`fleetflow_types::records::IncomingFix::replayed`]). The snapshot's size then
//! grows with the vehicles, not with the event rate times the allowed lateness.

use super::{Change, Timelines};
use crate::sliced::{write_slots, Pass, Sliced, SnapshotBody};
use crate::tiers::WindowAcc;
use fleetflow_runtime::checkpoint::Blob;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::IncomingFix;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::VecDeque;

/// A vehicle's own time: what decides lateness and finality of its fixes (semantics §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VehicleClock {
    /// Its clock: the greatest `ts` of its valid fixes (`Millis::MIN` before the first).
    pub newest: Millis,
    /// Its watermark: fixes below it are final (and late when they arrive); windows that
    /// end at or before it are closed.
    pub watermark: Millis,
    /// The job clock when it was last heard from (`Millis::MIN`: before the clock began).
    pub heard_at: Millis,
    /// The last geofence change it has taken (its `seq`; 0 for none).
    pub version: u64,
}

/// The snapshot being written.
pub(crate) struct Snapshotting {
    /// Over the vehicles that existed when it began.
    pass: Pass,
    /// What is written so far.
    body: SnapshotBody,
    /// Replayable inputs: input -> the least position of a fix not final when it began.
    replay_from: std::collections::BTreeMap<u32, u64>,
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
    clock: &'a VehicleClock,
}

/// One vehicle's part of a [`Timelines`] snapshot: everything that is not derived.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VehicleSnapshot {
    /// The vehicle.
    pub id: CompactString,
    pub(crate) anchor: Option<(Fix, Option<f64>)>,
    pub(crate) pending: Vec<IncomingFix>,
    pub(crate) windows: Vec<Option<WindowAcc>>,
    pub(crate) today_day: i64,
    pub(crate) today_km: f64,
    pub(crate) today_l: f64,
    pub(crate) today_idle_s: f64,
    /// Its clock, watermark and geofence version.
    pub clock: VehicleClock,
}

impl Timelines {
    /// Restores vehicles from snapshots (into empty timelines), in the given order (the
    /// `i`-th becomes slot `i`), with the geofence changes `(seq, at)` some of them had not
    /// taken, the newest change and the job clock. Every restored vehicle publishes its
    /// state again.
    pub fn restore(
        &mut self,
        vehicles: Vec<VehicleSnapshot>,
        changes: Vec<(u64, Millis)>,
        latest_change: u64,
        clock: Option<Millis>,
    ) {
        assert!(self.vehicles.is_empty(), "restore into empty timelines");
        self.clock = clock;
        self.latest_change = latest_change;
        self.changes = changes
            .into_iter()
            .map(|(seq, at)| Change {
                seq,
                at,
                remaining: 0,
            })
            .collect();
        for snap in vehicles {
            let slot = self.slot(&snap.id);
            let v = &mut self.vehicles[slot as usize];
            v.anchor = snap.anchor;
            v.pending = snap.pending.into();
            v.windows = snap.windows;
            v.windows.resize(self.cfg.tiers.len(), None);
            (v.today_day, v.today_km, v.today_l) = (snap.today_day, snap.today_km, snap.today_l);
            v.today_idle_s = snap.today_idle_s;
            v.clock = snap.clock;
            v.recompute_latest();
            let version = v.clock.version;
            for c in self.changes.iter_mut().filter(|c| c.seq > version) {
                c.remaining += 1;
            }
            self.touch(slot);
            self.arm_silence(slot);
        }
        while self.changes.front().is_some_and(|c| c.remaining == 0) {
            self.taken_on_restore = self.changes.pop_front().map(|c| c.seq);
        }
    }

    /// Takes in a fix read again after a restore ([`IncomingFix::replayed`]). It was read
    /// before the checkpoint, so it is among its vehicle's pending fixes exactly when it was
    /// then: not below the vehicle's watermark and not above its newest `ts` (which counted
    /// every fix then read). Anything else it was then (final, late, a duplicate) it
    /// already was: it is dropped without a dead letter, metric or clock change.
    pub(super) fn replay(&mut self, inc: IncomingFix) {
        let slot = self.slot(&inc.fix.vehicle_id);
        self.save(slot);
        let v = &mut self.vehicles[slot as usize];
        let ts = inc.fix.ts;
        if ts < v.clock.watermark || ts > v.clock.newest {
            return;
        }
        let at = v.pending.partition_point(|p| p.fix.ts < ts);
        match v.pending.get_mut(at) {
            // Of duplicates the least is kept, whatever the order they are read in.
            Some(p) if p.fix.ts == ts => {
                if inc.fix >= p.fix {
                    return;
                }
                *p = inc;
            }
            _ => v.pending.insert(at, inc),
        }
        v.recompute_latest();
        self.touch(slot);
        self.arm_silence(slot);
    }

    /// Begins a snapshot of every vehicle as it is now, to follow `head`; write it with
    /// [`Timelines::continue_snapshot`] while the timelines go on.
    pub fn begin_snapshot(&mut self, head: Vec<u8>) {
        assert!(self.snapshotting.is_none(), "one snapshot at a time");
        self.snapshot_gen = self.snapshot_gen.wrapping_add(1);
        let upto = self.vehicles.len() as u32;
        let mut body = SnapshotBody::new();
        body.extend(&head);
        let changes: Vec<(u64, Millis)> = self.changes.iter().map(|c| (c.seq, c.at)).collect();
        body.put(&(changes, self.latest_change));
        // Every vehicle of now is written, once: the count is known.
        body.put(&(upto as u64));
        self.snapshotting = Some(Snapshotting {
            pass: Pass::new(upto),
            body,
            replay_from: Default::default(),
        });
    }

    /// Writes vehicles of the snapshot begun last, for about `budget` (`None`: all of
    /// them). Once every vehicle is written: the snapshot (see the module docs).
    pub fn continue_snapshot(&mut self, budget: Option<std::time::Duration>) -> Option<Blob> {
        self.snapshotting.as_ref()?;
        let next = |t: &mut Self| t.snapshotting.as_mut()?.pass.next();
        if !write_slots(self, next, Self::save, budget) {
            return None;
        }
        let mut s = self.snapshotting.take()?;
        let replay_from: Vec<(u32, u64)> = s.replay_from.into_iter().collect();
        s.body.put(&replay_from);
        Some(s.body.finish())
    }

    /// How many vehicles the pass of the snapshot being written has looked at.
    #[cfg(test)]
    pub(crate) fn snapshot_cursor(&self) -> Option<u32> {
        self.snapshotting.as_ref().map(|s| s.pass.cursor())
    }

    /// Whether a snapshot is being written.
    #[cfg(test)]
    pub(crate) fn snapshotting(&self) -> bool {
        self.snapshotting.is_some()
    }

    /// Writes vehicle `slot` into the snapshot being written, unless it is written already
    /// or is newer than the snapshot. Called before anything the snapshot holds changes.
    pub(crate) fn save(&mut self, slot: u32) {
        let Some(s) = self.snapshotting.as_mut() else {
            return;
        };
        let v = &mut self.vehicles[slot as usize];
        if !s.pass.covers(slot) || v.snapshot_gen == self.snapshot_gen {
            return;
        }
        v.snapshot_gen = self.snapshot_gen;
        let none = VecDeque::new();
        let pending = if self.cfg.replay {
            for p in &v.pending {
                let least = s.replay_from.entry(p.input).or_insert(p.position);
                *least = (*least).min(p.position);
            }
            &none
        } else {
            &v.pending
        };
        let r = VehicleSnapshotRef {
            id: &v.id,
            anchor: &v.anchor,
            pending,
            windows: &v.windows,
            today_day: v.today_day,
            today_km: v.today_km,
            today_l: v.today_l,
            today_idle_s: v.today_idle_s,
            clock: &v.clock,
        };
        s.body.put(&r);
    }

    /// Every vehicle's state as it is, copied at once (tests: the reference for snapshots
    /// written a slice at a time).
    #[cfg(test)]
    pub(crate) fn state_now(&self) -> Vec<VehicleSnapshot> {
        self.vehicles
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
                clock: v.clock,
            })
            .collect()
    }
}

impl Sliced for Timelines {
    fn continue_snapshot(&mut self, budget: Option<std::time::Duration>) -> Option<Blob> {
        Timelines::continue_snapshot(self, budget)
    }
}
