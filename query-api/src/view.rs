//! The query API's view of vehicle state: applied from the dataflow's published changes,
//! read by handlers without ever touching a dataflow worker.

use crate::changes::{ChangeBody, ChangeLog};
use fleetflow_types::fix::{haversine_km, EARTH_RADIUS_KM};
use fleetflow_types::records::VehicleState;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A vehicle's position on the unit sphere, so that straight-line (chord) distance orders
/// points exactly as great-circle distance does, with its index in [`Positions::states`].
type Located = rstar::primitives::GeomWithData<[f64; 3], usize>;

/// How old the spatial index may get before a query rebuilds it (when anything changed).
pub const INDEX_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(100);

/// A spatial index over the vehicles' positions at one moment, with their states then.
#[derive(Debug)]
struct Positions {
    tree: rstar::RTree<Located>,
    states: Vec<Arc<VehicleState>>,
    as_of: Option<Millis>,
    version: u64,
    built: std::time::Instant,
}

fn on_sphere(lat: f64, lon: f64) -> [f64; 3] {
    let (lat, lon) = (lat.to_radians(), lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// What one producing worker writes to a [`VehicleView`] through (see
/// [`VehicleView::writers`]).
#[derive(Clone, Debug)]
pub struct VehicleWriter {
    view: Arc<VehicleView>,
    share: usize,
}

impl VehicleWriter {
    /// Applies this producer's changes, in the order it produced them, and its job clock.
    ///
    /// The changes are exact retract/insert pairs: a vehicle's new state comes as the
    /// retraction of the old one immediately followed by the insertion of the new one, which
    /// replaces it. A retraction not followed by an insertion of the same vehicle removes
    /// the vehicle (when its state is still the retracted one).
    ///
    /// The dataflow hands over shared states (`Arc<VehicleState>`): the view and the change
    /// log keep that allocation, so applying a change copies no state.
    pub fn apply<S: Into<Arc<VehicleState>>>(
        &self,
        updates: Vec<((CompactString, S), isize)>,
        clock: Option<Millis>,
    ) {
        self.view.apply(self.share, updates, clock);
    }
}

/// Vehicle id -> state, with the job clock each producing worker has published through, and a
/// spatial index (R-tree) over the positions for nearest-first queries.
///
/// Workers only update the map. The index is bulk-loaded by a query that finds it older
/// than [`INDEX_MAX_AGE`] and out of date, so keeping it costs the dataflow nothing; a
/// nearby answer is consistent with its own `as_of`, at most that much older than the map.
#[derive(Debug)]
pub struct VehicleView {
    inner: RwLock<Inner>,
    changes: Option<std::sync::Arc<ChangeLog>>,
    index: std::sync::Mutex<Option<std::sync::Arc<Positions>>>,
}

#[derive(Debug)]
struct Inner {
    /// The states the dataflow published, shared with it and the change log (no copy).
    vehicles: BTreeMap<CompactString, Arc<VehicleState>>,
    /// Counts applied batches with changes (the index is rebuilt when it differs).
    version: u64,
    as_of: Vec<Option<Millis>>,
}

impl Inner {
    /// The smallest worker job clock, once every worker has published one.
    fn as_of(&self) -> Option<Millis> {
        self.as_of
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
    }
}

impl VehicleView {
    /// An empty view fed by `workers` workers.
    pub fn new(workers: usize) -> Self {
        VehicleView {
            inner: RwLock::new(Inner {
                vehicles: BTreeMap::new(),
                version: 0,
                as_of: vec![None; workers.max(1)],
            }),
            index: Default::default(),
            changes: None,
        }
    }

    /// Also appends every change to `log` (for the live streams).
    pub fn with_changes(mut self, log: std::sync::Arc<ChangeLog>) -> Self {
        self.changes = Some(log);
        self
    }

    /// One writer per producing worker (the `workers` the view was made for), in worker
    /// order: each carries its own share of the view's `as_of`, so a producer never names
    /// itself by number.
    pub fn writers(self: &Arc<Self>) -> Vec<VehicleWriter> {
        let shares = self.inner.read().expect("view lock").as_of.len();
        (0..shares)
            .map(|share| VehicleWriter {
                view: Arc::clone(self),
                share,
            })
            .collect()
    }

    /// See [`VehicleWriter::apply`]; `share` is the writer's share of `as_of`.
    fn apply<S: Into<Arc<VehicleState>>>(
        &self,
        share: usize,
        updates: Vec<((CompactString, S), isize)>,
        clock: Option<Millis>,
    ) {
        // The log's lock first (see `changes`): streams see the view and the log agree.
        let mut log = self.changes.as_ref().map(|c| c.write());
        let mut inner = self.inner.write().expect("view lock");
        if !updates.is_empty() {
            inner.version += 1;
        }
        // The producer's latest (it only goes back once, to the exact clock at the end of a
        // bounded input).
        if let (Some(w), Some(slot)) = (clock, inner.as_of.get_mut(share)) {
            *slot = Some(w);
        }
        let as_of = inner.as_of();
        // A retraction waits for the next change: an insertion of the same vehicle
        // replaces the state, anything else makes it a removal.
        let mut retracted: Option<(CompactString, Arc<VehicleState>)> = None;
        let remove = |inner: &mut Inner,
                      log: &mut Option<std::sync::RwLockWriteGuard<'_, crate::changes::Log>>,
                      (id, state): (CompactString, Arc<VehicleState>)| {
            let current = inner.vehicles.get(&id);
            if current.is_some_and(|c| Arc::ptr_eq(c, &state) || **c == *state) {
                inner.vehicles.remove(&id);
                if let Some(log) = log.as_mut() {
                    log.push(
                        ChangeBody::Vehicle {
                            state,
                            removed: true,
                        },
                        as_of,
                    );
                }
            }
        };
        for ((id, state), diff) in updates {
            let state: Arc<VehicleState> = state.into();
            if diff < 0 {
                if let Some(r) = retracted.replace((id, state)) {
                    remove(&mut inner, &mut log, r);
                }
                continue;
            }
            if let Some(r) = retracted.take().filter(|(rid, _)| *rid != id) {
                remove(&mut inner, &mut log, r);
            }
            if let Some(log) = log.as_mut() {
                log.push(
                    ChangeBody::Vehicle {
                        state: Arc::clone(&state),
                        removed: false,
                    },
                    as_of,
                );
            }
            match inner.vehicles.get_mut(&id) {
                Some(slot) => *slot = state,
                None => {
                    inner.vehicles.insert(id, state);
                }
            }
        }
        if let Some(r) = retracted {
            remove(&mut inner, &mut log, r);
        }
        drop(inner);
        if let (Some(log), Some(c)) = (log, &self.changes) {
            c.publish(log);
        }
    }

    /// The job clock through which every worker's results are published.
    pub fn as_of(&self) -> Option<Millis> {
        self.inner.read().expect("view lock").as_of()
    }

    /// One vehicle.
    pub fn get(&self, id: &str) -> Option<VehicleState> {
        self.inner
            .read()
            .expect("view lock")
            .vehicles
            .get(id)
            .map(|s| VehicleState::clone(s))
    }

    /// Every vehicle passing `keep`, in id order, and the `as_of` they are complete through.
    pub fn scan(
        &self,
        keep: impl Fn(&VehicleState) -> bool,
    ) -> (Vec<VehicleState>, Option<Millis>) {
        let inner = self.inner.read().expect("view lock");
        let items = inner
            .vehicles
            .values()
            .filter(|v| keep(v))
            .map(|v| VehicleState::clone(v))
            .collect();
        (items, inner.as_of())
    }

    /// Up to `limit` vehicles after `after` (exclusive) in id order that pass `keep`, and
    /// whether more follow.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&VehicleState) -> bool,
    ) -> (Vec<VehicleState>, bool) {
        let (items, more) = page_after(
            &self.inner.read().expect("view lock").vehicles,
            after,
            limit,
            |v| keep(v),
        );
        (items.into_iter().map(Arc::unwrap_or_clone).collect(), more)
    }

    /// The spatial index, rebuilt first if it is out of date and older than
    /// [`INDEX_MAX_AGE`].
    fn positions(&self) -> std::sync::Arc<Positions> {
        let mut index = self.index.lock().expect("index lock");
        let version = self.inner.read().expect("view lock").version;
        let fresh = index
            .as_ref()
            .is_some_and(|p| p.version == version || p.built.elapsed() < INDEX_MAX_AGE);
        if !fresh {
            // States, version and as_of from one read: the answer is consistent with its
            // as_of. The tree is built after the lock is released.
            let (states, version, as_of) = {
                let inner = self.inner.read().expect("view lock");
                let states: Vec<Arc<VehicleState>> = inner.vehicles.values().cloned().collect();
                (states, inner.version, inner.as_of())
            };
            let points = states
                .iter()
                .enumerate()
                .map(|(i, v)| Located::new(on_sphere(v.fix.lat, v.fix.lon), i))
                .collect();
            *index = Some(std::sync::Arc::new(Positions {
                tree: rstar::RTree::bulk_load(points),
                states,
                as_of,
                version,
                built: std::time::Instant::now(),
            }));
        }
        index.clone().expect("index built")
    }

    /// Up to `limit` vehicles within `radius_m` metres (great circle) of `lat`/`lon` that
    /// pass `keep`, nearest first, each with its distance in metres, and the `as_of` they
    /// are complete through. Served from the R-tree: it visits points in distance order and
    /// stops at the radius or the limit.
    pub fn nearby(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        limit: usize,
        keep: impl Fn(&VehicleState) -> bool,
    ) -> (Vec<(VehicleState, f64)>, Option<Millis>) {
        let positions = self.positions();
        // The chord (on the unit sphere) of a great-circle distance of `radius_m`.
        let angle = (radius_m / (EARTH_RADIUS_KM * 1000.0)).min(std::f64::consts::PI);
        let chord = 2.0 * (angle / 2.0).sin();
        let mut out = Vec::new();
        for (p, d2) in positions
            .tree
            .nearest_neighbor_iter_with_distance_2(&on_sphere(lat, lon))
        {
            // A little slack for rounding; the exact distance decides below.
            if d2 > chord * chord * (1.0 + 1e-9) + 1e-18 || out.len() == limit {
                break;
            }
            let v = &positions.states[p.data];
            let m = haversine_km(lat, lon, v.fix.lat, v.fix.lon) * 1000.0;
            if m <= radius_m && keep(v) {
                out.push((VehicleState::clone(v), m));
            }
        }
        (out, positions.as_of)
    }

    /// Number of vehicles.
    pub fn len(&self) -> usize {
        self.inner.read().expect("view lock").vehicles.len()
    }

    /// Whether no vehicle is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to `limit` values after key `after` (exclusive) in key order that pass `keep`, and
/// whether more follow: one page of a cursor-paginated listing.
pub(crate) fn page_after<V: Clone>(
    map: &BTreeMap<CompactString, V>,
    after: Option<&str>,
    limit: usize,
    keep: impl Fn(&V) -> bool,
) -> (Vec<V>, bool) {
    let range = match after {
        Some(a) => map.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        None => map.range::<str, _>(..),
    };
    let mut items = Vec::with_capacity(limit.min(1024));
    for (_, v) in range.filter(|(_, v)| keep(v)) {
        if items.len() == limit {
            return (items, true);
        }
        items.push(v.clone());
    }
    (items, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::fix::Fix;
    use fleetflow_types::records::Status;
    use std::sync::Arc;

    fn state(id: &str, lat: f64, status: Status) -> VehicleState {
        VehicleState {
            fix: Fix::at(id, "t", 1_000, lat, 13.4),
            status,
            today_distance_km: 0.0,
            today_fuel_used_l: 0.0,
            today_idle_s: 0.0,
        }
    }

    #[test]
    fn a_batch_of_several_epochs_replaces_in_order_and_removes_only_bare_retractions() {
        use crate::changes::{ChangeBody, ChangeLog};
        let log = Arc::new(ChangeLog::new(100, 1));
        let view = Arc::new(VehicleView::new(1).with_changes(log.clone()));
        let a = state("V1", 52.0, Status::Moving);
        let b = state("V1", 52.0, Status::Parked);
        let c = state("V2", 53.0, Status::Idle);
        view.writers()[0].apply(vec![(("V2".into(), c.clone()), 1)], None);
        // V1 goes a -> b -> a within one batch (three epochs); V2 is retracted alone.
        view.writers()[0].apply(
            vec![
                (("V1".into(), a.clone()), 1),
                (("V1".into(), a.clone()), -1),
                (("V1".into(), b.clone()), 1),
                (("V2".into(), c.clone()), -1),
                (("V1".into(), b), -1),
                (("V1".into(), a.clone()), 1),
            ],
            None,
        );
        assert_eq!(view.get("V1"), Some(a));
        assert_eq!(view.get("V2"), None);
        let changes = log.read().after(0, 100).unwrap();
        let seen: Vec<(String, bool)> = changes
            .iter()
            .map(|ch| match &ch.body {
                ChangeBody::Vehicle { state, removed } => {
                    (state.fix.vehicle_id.to_string(), *removed)
                }
                ChangeBody::GeofenceEvent(_) => unreachable!(),
            })
            .collect();
        let expect = [
            ("V2", false),
            ("V1", false),
            ("V1", false),
            ("V2", true),
            ("V1", false),
        ];
        assert_eq!(
            seen,
            expect.map(|(v, r)| (v.to_string(), r)).to_vec(),
            "every new state once, one removal, no removal for a replaced state"
        );
    }

    #[test]
    fn an_applied_state_is_the_dataflows_allocation_in_the_map_and_the_log() {
        use crate::changes::{ChangeBody, ChangeLog};
        let log = Arc::new(ChangeLog::new(10, 1));
        let view = Arc::new(VehicleView::new(1).with_changes(log.clone()));
        let shared = Arc::new(state("V1", 52.0, Status::Moving));
        view.writers()[0].apply(vec![(("V1".into(), shared.clone()), 1)], None);
        let inner = view.inner.read().unwrap();
        assert!(
            Arc::ptr_eq(&inner.vehicles["V1"], &shared),
            "the map copied"
        );
        let changes = log.read().after(0, 10).unwrap();
        match &changes[0].body {
            ChangeBody::Vehicle { state, .. } => {
                assert!(Arc::ptr_eq(state, &shared), "the log copied")
            }
            ChangeBody::GeofenceEvent(_) => unreachable!(),
        }
    }
}
