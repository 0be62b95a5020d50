//! Membership of the vehicles of one worker in the geofences, over their final fixes in
//! `ts` order (independent of timely).
//!
//! A runtime change makes a new *version* of the fence set. Each vehicle takes a change
//! at the change's time in its own time (the timeline says when, with
//! [`Finalized::Apply`](super::Finalized::Apply)), so for a while vehicles can be on
//! different versions: every version some vehicle may still need is kept, and a fix is
//! checked against its vehicle's version. A geofence keeps its slot in every version.

use super::fences::FenceChange;
use super::index::FenceIndex;
use super::layers::FenceLayers;
use super::{FixPoint, ViewUpdate};
use crate::sliced::{write_slots, Frozen, Pass, Sliced, SnapshotBody};
use fleetflow_runtime::checkpoint::Blob;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::{
    GeofenceCause, GeofenceChange, GeofenceEvent, GeofenceEventKind, OccupancyChange,
};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Visit {
    slot: u32,
    /// The geofence's id, kept here so that exits and dwells need not look it up.
    id: CompactString,
    entered_at: Millis,
    dwelled: bool,
}

struct VehicleFences {
    id: CompactString,
    tenant: CompactString,
    lat: f64,
    lon: f64,
    /// The version of the fence set it is on (the last change it took; 0: none).
    version: u64,
    /// Visits in progress, sorted by slot: exactly the applicable fences of its version
    /// containing `(lat, lon)`.
    inside: Vec<Visit>,
    /// The least `ts` at which a visit in `inside` that has not dwelled does
    /// ([`dwell_due`]), so that a fix before it reads none of the visits.
    dwell_due: Millis,
    /// The last snapshot it is written in, or was too new for.
    snapshot_gen: u32,
}

/// The least `ts` at which one of `inside` that has not dwelled dwells (a fix at `ts`
/// dwells a visit when `ts - entered_at >= dwell_after`); `Millis::MAX` for none.
fn dwell_due(inside: &[Visit], dwell_after: Millis) -> Millis {
    inside
        .iter()
        .filter(|v| !v.dwelled)
        .map(|v| v.entered_at.saturating_add(dwell_after))
        .min()
        .unwrap_or(Millis::MAX)
}

/// A vehicle, encoded exactly as its [`GeoVehicleSnapshot`] but without copying it.
#[derive(serde::Serialize)]
struct GeoVehicleRef<'a> {
    id: &'a CompactString,
    tenant: &'a CompactString,
    lat: f64,
    lon: f64,
    version: u64,
    inside: VisitsRef<'a>,
}

/// Visits, encoded as a [`GeoVehicleSnapshot`]'s `inside`.
struct VisitsRef<'a>(&'a [Visit]);

impl serde::Serialize for VisitsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| (&v.id, v.entered_at, v.dwelled)))
    }
}

/// The snapshot being written.
struct GeoSnapshotting {
    /// Over the vehicles that existed when it began.
    pass: Pass,
    body: SnapshotBody,
}

/// What geofencing produced; drained by the caller.
#[derive(Default, Debug)]
pub struct GeoOutputs {
    /// Events, for the lake and the API's recent events.
    pub events: Vec<GeofenceEvent>,
    /// Occupancy and applied changes for the API view.
    pub view: Vec<(ViewUpdate, isize)>,
}

/// One version of the fence set: the set after change `seq`.
struct Version {
    seq: u64,
    /// The base index (the first version's is shared by the workers) and the changes since.
    index: FenceLayers,
    /// The change that made it from the version before, with the job clock it took effect
    /// at and the geofence it replaced or removed (`None` for the first version kept).
    made_by: Option<(GeofenceChange, Option<Millis>, Option<Arc<Geofence>>)>,
}

/// Version `seq` among `versions`.
fn version_of(versions: &VecDeque<Version>, seq: u64) -> &Version {
    let k = versions.partition_point(|v| v.seq < seq);
    // A vehicle is never on a version older than the oldest kept; one that is (a vehicle
    // first seen on a version dropped already) takes the oldest kept.
    versions
        .get(k)
        .filter(|v| v.seq == seq)
        .or(versions.get(k.saturating_sub(1)))
        .expect("a version is kept")
}

/// Membership of the vehicles of one worker (independent of timely).
pub struct Geofencing {
    /// The versions some vehicle may still be on, oldest first; the last is in force.
    /// The first version is shared by the workers until a change (each then has its own).
    versions: VecDeque<Version>,
    /// By the timeline's vehicle slot.
    vehicles: Vec<Option<VehicleFences>>,
    dwell_after: Millis,
    buf: Vec<u32>,
    spare: Vec<Visit>,
    /// The geofences in force as checkpoints record them, kept until a change (encoding
    /// many geofences at every checkpoint would repeat the same work).
    fences_frozen: Option<Frozen>,
    snapshotting: Option<GeoSnapshotting>,
    /// Numbers the snapshots (see [`VehicleFences::snapshot_gen`]).
    snapshot_gen: u32,
}

/// One vehicle's geofencing state in a checkpoint.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GeoVehicleSnapshot {
    /// The vehicle.
    pub id: CompactString,
    tenant: CompactString,
    lat: f64,
    lon: f64,
    version: u64,
    /// Visits in progress: geofence id, `entered_at`, whether dwell fired.
    inside: Vec<(CompactString, Millis, bool)>,
}

/// A change a version was made by, in a checkpoint: `(seq, at, id, old, new)` with the
/// geofences as JSON (their properties are free-form).
pub type LoggedChange = (
    u64,
    Option<Millis>,
    CompactString,
    Option<String>,
    Option<String>,
);

/// The geofencing operator's state at a checkpoint boundary.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GeoSnapshot {
    /// The geofences in force, as JSON (on worker 0 only: every worker has the same).
    pub fences: Vec<String>,
    /// The change the fences in force are the version of (0: none).
    pub latest: u64,
    /// The changes that made the versions after the oldest one the worker kept.
    pub log: Vec<LoggedChange>,
    /// The worker's vehicles.
    pub vehicles: Vec<GeoVehicleSnapshot>,
}

impl GeoSnapshot {
    /// The geofences in force.
    pub fn geofences(&self) -> Result<Vec<Arc<Geofence>>, serde_json::Error> {
        self.fences
            .iter()
            .map(|f| serde_json::from_str(f).map(Arc::new))
            .collect()
    }
}

/// What a checkpoint restores into [`Geofencing`] besides the fences in force: the change
/// they are the version of, the logged changes of every worker, and this worker's vehicles
/// at their timeline slots.
#[derive(Default)]
pub struct GeoRestore {
    /// The change the fences in force are the version of.
    pub latest: u64,
    /// Changes some vehicle may not have taken, by seq.
    pub log: BTreeMap<u64, LoggedChange>,
    /// Vehicles at their timeline slots.
    pub vehicles: Vec<(u32, GeoVehicleSnapshot)>,
}

impl Geofencing {
    /// Starts with `index` in force (the version after change `latest`) and no vehicles.
    pub fn new(index: Arc<FenceIndex>, latest: u64, dwell_after: Millis) -> Geofencing {
        Geofencing {
            versions: VecDeque::from([Version {
                seq: latest,
                index: FenceLayers::new(index),
                made_by: None,
            }]),
            vehicles: Vec::new(),
            dwell_after,
            buf: Vec::new(),
            spare: Vec::new(),
            fences_frozen: None,
            snapshotting: None,
            snapshot_gen: 0,
        }
    }

    fn latest(&self) -> &Version {
        self.versions.back().expect("a version is in force")
    }

    fn version(&self, seq: u64) -> &Version {
        version_of(&self.versions, seq)
    }

    /// Number of geofences in force.
    pub fn geofences(&self) -> usize {
        self.latest().index.len()
    }

    /// Number of vehicles seen.
    pub fn vehicles(&self) -> usize {
        self.vehicles.iter().flatten().count()
    }

    /// Number of versions of the fence set kept.
    pub fn versions(&self) -> usize {
        self.versions.len()
    }

    /// Begins a snapshot of the state as it is now (a [`GeoSnapshot`]; `fences` includes
    /// the geofences in force); write it with [`Sliced::continue_snapshot`] while fixes go
    /// on. A vehicle about to change is written first (copy on write).
    pub fn begin_snapshot(&mut self, fences: bool) {
        assert!(self.snapshotting.is_none(), "one snapshot at a time");
        self.snapshot_gen = self.snapshot_gen.wrapping_add(1);
        let (index, latest) = (self.latest().index.clone(), self.latest().seq);
        let json = |g: &Geofence| serde_json::to_string(g).expect("geofences serialize");
        let log: Vec<LoggedChange> = self
            .versions
            .iter()
            .filter_map(|v| v.made_by.as_ref())
            .map(|(c, at, old)| {
                let new = c.geofence.as_deref().map(json);
                (c.seq, *at, c.id.clone(), old.as_deref().map(json), new)
            })
            .collect();
        let mut body = SnapshotBody::new();
        // The fields of a `GeoSnapshot` in order: the geofences (a length, then each as
        // JSON), encoded and compressed once per version of the set and shared by the
        // snapshots until it changes; its vehicles last, counted now (every vehicle of now
        // is written, once).
        if fences {
            let frozen = self.fences_frozen.get_or_insert_with(|| {
                let mut part = SnapshotBody::new();
                debug_assert_eq!(index.iter().count(), index.len());
                part.put(&(index.len() as u64));
                for g in index.iter() {
                    part.put(json(g).as_str());
                }
                part.freeze()
            });
            body.append(frozen);
        } else {
            body.put(&0u64);
        }
        body.put(&(latest, log));
        body.put(&(self.vehicles.iter().flatten().count() as u64));
        self.snapshotting = Some(GeoSnapshotting {
            pass: Pass::new(self.vehicles.len() as u32),
            body,
        });
    }

    /// Writes vehicle `slot` into the snapshot being written, unless it is written already
    /// or is newer than the snapshot. Called before anything the snapshot holds changes.
    fn save(&mut self, slot: u32) {
        let Some(s) = self.snapshotting.as_mut() else {
            return;
        };
        let Some(Some(v)) = self.vehicles.get_mut(slot as usize) else {
            return;
        };
        if !s.pass.covers(slot) || v.snapshot_gen == self.snapshot_gen {
            return;
        }
        v.snapshot_gen = self.snapshot_gen;
        s.body.put(&GeoVehicleRef {
            id: &v.id,
            tenant: &v.tenant,
            lat: v.lat,
            lon: v.lon,
            version: v.version,
            inside: VisitsRef(&v.inside),
        });
    }

    /// The state for a checkpoint at once (tests).
    #[cfg(test)]
    pub fn snapshot(&mut self, fences: bool) -> GeoSnapshot {
        self.begin_snapshot(fences);
        let blob = self.continue_snapshot(None).expect("written at once");
        crate::sliced::decode(&blob.contiguous()).expect("a snapshot decodes")
    }

    /// A fresh instance from a checkpoint: the versions its vehicles may be on, rebuilt
    /// backwards from the fences in force by undoing the logged changes, and every visit
    /// reported to the view as an occupant.
    /// `index` holds the fences in force (shared by the workers while no older version is
    /// needed). A logged geofence that cannot be read is skipped with a warning (the
    /// checkpoint wrote it, so this does not happen).
    pub fn restore(
        index: Arc<FenceIndex>,
        r: GeoRestore,
        dwell_after: Millis,
        out: &mut GeoOutputs,
    ) -> Geofencing {
        let parse = |j: &Option<String>| -> Option<Arc<Geofence>> {
            let text = j.as_deref()?;
            match serde_json::from_str(text) {
                Ok(g) => Some(Arc::new(g)),
                Err(e) => {
                    tracing::warn!(error = %e, "a logged geofence of the checkpoint cannot be read");
                    None
                }
            }
        };
        let mut index = FenceLayers::new(index);
        let mut versions: VecDeque<Version> = VecDeque::new();
        let mut seq = r.latest;
        for (_, (cseq, at, id, old, new)) in r.log.into_iter().rev().filter(|(s, _)| *s <= r.latest)
        {
            if cseq != seq {
                continue;
            }
            let (old, new) = (parse(&old), parse(&new));
            let change = GeofenceChange {
                seq: cseq,
                id: id.clone(),
                geofence: new.clone(),
                at,
            };
            // The change undone: the new version goes, the old one comes back.
            let keys = old
                .as_deref()
                .map(super::index::covering)
                .unwrap_or_default();
            let before = index.changed(&id, new.is_some(), old.clone(), &keys);
            versions.push_front(Version {
                seq: cseq,
                index,
                made_by: Some((change, at, old)),
            });
            index = before;
            seq = cseq - 1;
        }
        versions.push_front(Version {
            seq,
            index,
            made_by: None,
        });
        let mut g = Geofencing {
            versions,
            vehicles: Vec::new(),
            dwell_after,
            buf: Vec::new(),
            spare: Vec::new(),
            fences_frozen: None,
            snapshotting: None,
            snapshot_gen: 0,
        };
        for (slot, snap) in r.vehicles {
            let s = slot as usize;
            if g.vehicles.len() <= s {
                g.vehicles.resize_with(s + 1, || None);
            }
            let index = g.version(snap.version).index.clone();
            let mut inside: Vec<Visit> = snap
                .inside
                .into_iter()
                .filter_map(|(id, entered_at, dwelled)| {
                    let fence = index.slot_of(&id)?;
                    Some(Visit {
                        slot: fence,
                        id,
                        entered_at,
                        dwelled,
                    })
                })
                .collect();
            inside.sort_unstable_by_key(|v| v.slot);
            for v in &inside {
                occupant(&v.id, &snap.id, v.entered_at, 1, out);
            }
            g.vehicles[s] = Some(VehicleFences {
                id: snap.id,
                tenant: snap.tenant,
                lat: snap.lat,
                lon: snap.lon,
                version: snap.version,
                dwell_due: dwell_due(&inside, dwell_after),
                inside,
                snapshot_gen: 0,
            });
        }
        g
    }

    /// Asks the CPU for the record of the vehicle in `slot` (see [`crate::prefetch`]),
    /// a few fixes before its own.
    pub(crate) fn fetch_record(&self, slot: u32) {
        // Not whether it exists yet: that would wait for the record.
        if let Some(v) = self.vehicles.get(slot as usize) {
            crate::prefetch::line(v);
        }
    }

    /// Asks for the visits of the vehicle in `slot` (its record in the cache by then).
    pub(crate) fn fetch_visits(&self, slot: u32) {
        if let Some(Some(v)) = self.vehicles.get(slot as usize) {
            // All of them (a vehicle is in a handful), not only the first line: a moving
            // vehicle's lookup reads every one.
            for visit in v.inside.iter().take(8) {
                crate::prefetch::line(visit);
            }
        }
    }

    /// A final fix, in `ts` order for its vehicle, checked against its vehicle's version.
    pub fn on_fix(&mut self, p: FixPoint, out: &mut GeoOutputs) {
        self.save(p.slot);
        // Borrowed field by field: the index is read in place, never cloned (the first
        // version's is shared by the workers, and a reference count touched per fix by
        // both would bounce between their cores).
        let Geofencing {
            versions,
            vehicles,
            dwell_after,
            buf,
            spare,
            snapshot_gen,
            ..
        } = self;
        let slot = p.slot as usize;
        if vehicles.len() <= slot {
            vehicles.resize_with(slot + 1, || None);
        }
        let state = vehicles[slot].get_or_insert_with(|| VehicleFences {
            id: p.vehicle_id.clone(),
            tenant: p.tenant.clone(),
            lat: f64::NAN,
            lon: f64::NAN,
            version: p.version,
            inside: Vec::new(),
            dwell_due: Millis::MAX,
            // New since a snapshot that is being written: not in it.
            snapshot_gen: *snapshot_gen,
        });
        debug_assert_eq!(state.id, p.vehicle_id, "slots are stable");
        debug_assert_eq!(state.version, p.version, "changes are taken in order");
        state.version = p.version;
        let index: &FenceLayers = &version_of(versions, p.version).index;
        if index.is_empty() && state.inside.is_empty() {
            // No geofence anywhere: only the position matters (for later additions).
            state.lat = p.lat;
            state.lon = p.lon;
            state.tenant = p.tenant;
            return;
        }
        // `inside` is exactly the fences containing the last position, so an unmoved
        // vehicle needs no lookup.
        let moved = state.lat != p.lat || state.lon != p.lon || state.tenant != p.tenant;
        if moved {
            index.containing(p.lat, p.lon, &p.tenant, buf);
            // The ids of the geofences it enters are read below, each likely a cache miss:
            // asked for first, the misses overlap.
            let mut k = 0;
            for &b in buf.iter() {
                while state.inside.get(k).is_some_and(|v| v.slot < b) {
                    k += 1;
                }
                if state.inside.get(k).is_none_or(|v| v.slot != b) {
                    index.fetch_id(b);
                }
            }
            // The visits are rebuilt into a spare buffer that swaps with the old one, so a
            // moving vehicle costs no allocation; visits that go on move across.
            let next = spare;
            next.clear();
            let mut old = std::mem::take(&mut state.inside);
            let mut olds = old.drain(..).peekable();
            let mut news = buf.iter().copied().peekable();
            loop {
                match (olds.peek().map(|v| v.slot), news.peek().copied()) {
                    (None, None) => break,
                    (Some(a), Some(b)) if a == b => {
                        next.extend(olds.next());
                        news.next();
                    }
                    (Some(a), b) if b.is_none_or(|b| a < b) => {
                        let visit = olds.next().expect("peeked");
                        occupant(&visit.id, &p.vehicle_id, visit.entered_at, -1, out);
                        event(
                            &visit.id,
                            &p.vehicle_id,
                            &p.tenant,
                            (GeofenceEventKind::Exit, GeofenceCause::Fix),
                            p.ts,
                            out,
                        );
                    }
                    (_, Some(b)) => {
                        let id = index.id(b).clone();
                        occupant(&id, &p.vehicle_id, p.ts, 1, out);
                        event(
                            &id,
                            &p.vehicle_id,
                            &p.tenant,
                            (GeofenceEventKind::Enter, GeofenceCause::Fix),
                            p.ts,
                            out,
                        );
                        next.push(Visit {
                            slot: b,
                            id,
                            entered_at: p.ts,
                            dwelled: false,
                        });
                        news.next();
                    }
                    (_, None) => unreachable!("the loop ends when both are done"),
                }
            }
            drop(olds);
            state.inside = std::mem::replace(next, old);
            state.dwell_due = dwell_due(&state.inside, *dwell_after);
            state.lat = p.lat;
            state.lon = p.lon;
            state.tenant = p.tenant.clone();
        }
        // Most fixes dwell no visit: they read none (an unmoved vehicle's visits are
        // likely not in the cache).
        if p.ts < state.dwell_due {
            return;
        }
        for visit in state.inside.iter_mut() {
            if !visit.dwelled && p.ts.saturating_sub(visit.entered_at) >= *dwell_after {
                visit.dwelled = true;
                event(
                    &visit.id,
                    &p.vehicle_id,
                    &p.tenant,
                    (GeofenceEventKind::Dwell, GeofenceCause::Fix),
                    p.ts,
                    out,
                );
            }
        }
        state.dwell_due = dwell_due(&state.inside, *dwell_after);
    }

    /// A change reaches this worker, taking effect at job clock `at`: a new version of the
    /// fence set, in force for the vehicles as they take it.
    /// The change comes from the fence set's arrangement ([`super::fences`]): the version
    /// it retracted and the cells it lists the new one under make the new index.
    pub fn register(&mut self, change: FenceChange, at: Option<Millis>, out: &mut GeoOutputs) {
        let latest = self.latest();
        let FenceChange { change, old, keys } = change;
        debug_assert_eq!(
            old.as_ref().map(|g| &g.id),
            latest.index.slot_of(&change.id).map(|_| &change.id),
            "the retracted version is the one in force"
        );
        // Only the changes since the base are copied (see `layers`).
        let index = latest
            .index
            .changed(&change.id, old.is_some(), change.geofence.clone(), &keys);
        out.view.push((
            ViewUpdate::Applied {
                seq: change.seq,
                at,
            },
            1,
        ));
        self.versions.push_back(Version {
            seq: change.seq,
            index,
            made_by: Some((change, at, old)),
        });
        self.fences_frozen = None;
    }

    /// [`Geofencing::register`] of a change made here as the fence set's arrangement makes
    /// it (the version it retracts from the index in force, its cells by the covering), for
    /// tests of the logic apart from the dataflow.
    #[cfg(test)]
    pub(crate) fn register_direct(
        &mut self,
        change: GeofenceChange,
        at: Option<Millis>,
        out: &mut GeoOutputs,
    ) {
        let latest = &self.latest().index;
        let old = latest
            .slot_of(&change.id)
            .and_then(|s| latest.get(s).cloned());
        let keys = change
            .geofence
            .as_deref()
            .map(super::index::covering)
            .unwrap_or_default();
        self.register(FenceChange { change, old, keys }, at, out)
    }

    /// Every vehicle of this worker took every change up to `seq`: older versions go.
    pub fn taken(&mut self, seq: u64) {
        while self.versions.len() > 1 && self.versions[1].seq <= seq {
            self.versions.pop_front();
        }
    }

    /// The vehicle in `slot` takes change `seq` (the next one after its version): it leaves
    /// a removed or replaced geofence it was in (`exit`, cause `geofence_removed`) and
    /// enters an added one that holds its latest final position (`enter`, cause
    /// `geofence_added`), both at the change's time.
    pub fn apply(&mut self, slot: u32, seq: u64, out: &mut GeoOutputs) {
        self.save(slot);
        let Some(Some(state)) = self.vehicles.get_mut(slot as usize) else {
            // No final fix yet: its first one says its version.
            return;
        };
        state.version = seq;
        let k = self.versions.partition_point(|v| v.seq < seq);
        let Some(version) = self.versions.get(k).filter(|v| v.seq == seq) else {
            return;
        };
        let Some((change, at, _)) = &version.made_by else {
            return;
        };
        let ts = at.unwrap_or(0);
        if let Some(k) = state.inside.iter().position(|v| v.id == change.id) {
            let visit = state.inside.remove(k);
            occupant(&change.id, &state.id, visit.entered_at, -1, out);
            event(
                &change.id,
                &state.id,
                &state.tenant,
                (GeofenceEventKind::Exit, GeofenceCause::GeofenceRemoved),
                ts,
                out,
            );
        }
        if let Some(g) = &change.geofence {
            if state.lat.is_finite()
                && g.applies_to(&state.tenant)
                && g.contains(state.lat, state.lon)
            {
                let fence = version.index.slot_of(&g.id).expect("the version holds it");
                let k = state.inside.partition_point(|v| v.slot < fence);
                state.inside.insert(
                    k,
                    Visit {
                        slot: fence,
                        id: g.id.clone(),
                        entered_at: ts,
                        dwelled: false,
                    },
                );
                occupant(&g.id, &state.id, ts, 1, out);
                event(
                    &g.id,
                    &state.id,
                    &state.tenant,
                    (GeofenceEventKind::Enter, GeofenceCause::GeofenceAdded),
                    ts,
                    out,
                );
            }
        }
        state.dwell_due = dwell_due(&state.inside, self.dwell_after);
    }
}

fn event(
    id: &CompactString,
    v: &CompactString,
    tenant: &CompactString,
    (kind, cause): (GeofenceEventKind, GeofenceCause),
    ts: Millis,
    out: &mut GeoOutputs,
) {
    out.events.push(GeofenceEvent {
        geofence_id: id.clone(),
        vehicle_id: v.clone(),
        tenant: tenant.clone(),
        kind,
        ts,
        cause,
    });
}

fn occupant(
    id: &CompactString,
    v: &CompactString,
    entered_at: Millis,
    diff: i8,
    out: &mut GeoOutputs,
) {
    out.view.push((
        ViewUpdate::Occupant(OccupancyChange {
            geofence: id.clone(),
            vehicle: v.clone(),
            entered_at,
            diff,
        }),
        diff as isize,
    ));
}

impl Sliced for Geofencing {
    fn continue_snapshot(&mut self, budget: Option<std::time::Duration>) -> Option<Blob> {
        self.snapshotting.as_ref()?;
        let next = |g: &mut Self| g.snapshotting.as_mut()?.pass.next();
        if !write_slots(self, next, Self::save, budget) {
            return None;
        }
        Some(self.snapshotting.take()?.body.finish())
    }
}
