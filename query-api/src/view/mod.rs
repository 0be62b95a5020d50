//! The query API's view of vehicle state: each producing worker's published batches of the
//! arrangement "Arrange: VehicleState", read by handlers without ever touching a dataflow
//! worker or waiting on one.
//!
//! ```text
//!   worker w: batch of the arrangement ─► net change per vehicle, sorted ─► run ─┐
//!                                                                                ▼
//!   producer w's runs (oldest first, merged geometrically) ─► immutable snapshot (Arc)
//!                                                                                │
//!   get / page / scan / nearby: every producer's snapshot, runs searched newest first
//! ```
//!
//! There is no second map of every vehicle: a producer turns each published batch into one
//! sorted run (`batches`), builds its next snapshot off any lock (sharing every run it
//! does not merge) and swaps one pointer in. A reader loads each producer's pointer (no
//! lock, usually no reference count) and searches the runs; it never blocks a producer, and
//! a producer never blocks it.
//!
//! With a change log ([`crate::changes`]), the swap happens under the log's write lock
//! together with the batch's changes, so a stream's snapshot (taken under the read lock)
//! and the changes after it agree.

pub(crate) mod batches;

use crate::changes::{ChangeBody, ChangeLog};
use arc_swap::ArcSwap;
use batches::{live_after, Batches, Entry};
use fleetflow_types::fix::{haversine_km, EARTH_RADIUS_KM};
use fleetflow_types::records::VehicleState;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// Publishes this producer's changes, in the order it produced them, and its job clock.
    ///
    /// The changes are exact retract/insert pairs: a vehicle's new state comes as the
    /// retraction of the old one immediately followed by the insertion of the new one, which
    /// replaces it. A retraction not followed by an insertion of the same vehicle removes
    /// the vehicle. A producer's changes are exact (they are the net changes of its
    /// arrangement's batches), so a retraction is of the state the producer published last;
    /// debug builds check it.
    ///
    /// The dataflow hands over shared states (`Arc<VehicleState>`): the runs and the change
    /// log keep that allocation, so publishing a change copies no state.
    pub fn apply<S: Into<Arc<VehicleState>>>(
        &self,
        updates: Vec<((CompactString, S), isize)>,
        clock: Option<Millis>,
    ) {
        self.view.apply(self.share, updates, clock);
    }
}

/// One producer's published state: its runs, how many vehicles they hold, and the job
/// clock it has published through. Immutable once swapped in.
#[derive(Clone, Debug, Default)]
struct Published {
    batches: Batches<CompactString, Arc<VehicleState>>,
    len: usize,
    as_of: Option<Millis>,
}

/// Vehicle state as the producing workers published it (see the module docs), with a
/// spatial index (R-tree) over the positions for nearest-first queries.
///
/// The index is bulk-loaded by a query that finds it older than [`INDEX_MAX_AGE`] and out of
/// date, so keeping it costs the dataflow nothing; a nearby answer is consistent with its
/// own `as_of`, at most that much older than the runs.
#[derive(Debug)]
pub struct VehicleView {
    /// By producer: its latest snapshot, loaded by readers without a lock.
    producers: Vec<ArcSwap<Published>>,
    /// Counts published batches with changes (the index is rebuilt when it differs).
    version: AtomicU64,
    changes: Option<Arc<ChangeLog>>,
    index: std::sync::Mutex<Option<Arc<Positions>>>,
}

/// The smallest producer job clock, once every producer has published one.
fn min_as_of<'a>(producers: impl IntoIterator<Item = &'a Arc<Published>>) -> Option<Millis> {
    producers
        .into_iter()
        .map(|p| p.as_of)
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min())
}

impl VehicleView {
    /// An empty view fed by `workers` workers.
    pub fn new(workers: usize) -> Self {
        VehicleView {
            producers: (0..workers.max(1)).map(|_| ArcSwap::default()).collect(),
            version: AtomicU64::new(0),
            index: Default::default(),
            changes: None,
        }
    }

    /// Also appends every change to `log` (for the live streams).
    pub fn with_changes(mut self, log: Arc<ChangeLog>) -> Self {
        self.changes = Some(log);
        self
    }

    /// One writer per producing worker (the `workers` the view was made for), in worker
    /// order: each publishes its own runs and job clock, so a producer never names itself
    /// by number.
    pub fn writers(self: &Arc<Self>) -> Vec<VehicleWriter> {
        (0..self.producers.len())
            .map(|share| VehicleWriter {
                view: Arc::clone(self),
                share,
            })
            .collect()
    }

    /// Every producer's latest snapshot.
    fn snapshots(&self) -> Vec<Arc<Published>> {
        self.producers.iter().map(|p| p.load_full()).collect()
    }

    /// See [`VehicleWriter::apply`]; `share` is the producer's index.
    fn apply<S: Into<Arc<VehicleState>>>(
        &self,
        share: usize,
        updates: Vec<((CompactString, S), isize)>,
        clock: Option<Millis>,
    ) {
        let Some(slot) = self.producers.get(share) else {
            return;
        };
        // Only this producer swaps its slot, so the snapshot read here stays the latest.
        let current = slot.load_full();
        let changed = !updates.is_empty();
        // The batch's net change per vehicle, and its changes for the log in order. A
        // retraction waits for the next change: an insertion of the same vehicle replaces
        // the state, anything else makes it a removal.
        type Net = HashMap<CompactString, Option<Arc<VehicleState>>, ahash::RandomState>;
        let mut net = Net::default();
        let mut logged: Vec<ChangeBody> = Vec::new();
        let mut retracted: Option<(CompactString, Arc<VehicleState>)> = None;
        // How many vehicles the batch adds (+1 an insertion, -1 a retraction).
        let mut added: isize = 0;
        let remove = |net: &mut Net,
                      logged: &mut Vec<ChangeBody>,
                      (id, state): (CompactString, Arc<VehicleState>)| {
            if cfg!(debug_assertions) {
                let now = match net.get(&id) {
                    Some(s) => s.clone(),
                    None => current.batches.get(&id).cloned(),
                };
                assert!(
                    now.is_some_and(|c| Arc::ptr_eq(&c, &state) || *c == *state),
                    "a retraction of {id:?} is of the state published last"
                );
            }
            net.insert(id, None);
            logged.push(ChangeBody::Vehicle {
                state,
                removed: true,
            });
        };
        for ((id, state), diff) in updates {
            let state: Arc<VehicleState> = state.into();
            added += diff.signum();
            if diff < 0 {
                if let Some(r) = retracted.replace((id, state)) {
                    remove(&mut net, &mut logged, r);
                }
                continue;
            }
            if let Some(r) = retracted.take().filter(|(rid, _)| *rid != id) {
                remove(&mut net, &mut logged, r);
            }
            logged.push(ChangeBody::Vehicle {
                state: Arc::clone(&state),
                removed: false,
            });
            net.insert(id, Some(state));
        }
        if let Some(r) = retracted {
            remove(&mut net, &mut logged, r);
        }
        // The next snapshot, built off any lock.
        let mut next = Published::clone(&current);
        let mut run: Vec<Entry<CompactString, Arc<VehicleState>>> = net.into_iter().collect();
        run.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        next.len = next.len.saturating_add_signed(added);
        next.batches.push(run);
        // The producer's latest (it only goes back once, to the exact clock at the end of a
        // bounded input).
        if clock.is_some() {
            next.as_of = clock;
        }
        let next = Arc::new(next);
        // The log's lock around the swap (see the module docs).
        let mut log = self.changes.as_ref().map(|c| c.write());
        if let Some(log) = log.as_mut() {
            let mut snaps = self.snapshots();
            snaps[share] = Arc::clone(&next);
            let as_of = min_as_of(&snaps);
            for body in logged {
                log.push(body, as_of);
            }
        }
        slot.store(next);
        if changed {
            self.version.fetch_add(1, Ordering::Release);
        }
        if let (Some(log), Some(c)) = (log, &self.changes) {
            c.publish(log);
        }
    }

    /// The job clock through which every worker's results are published.
    pub fn as_of(&self) -> Option<Millis> {
        min_as_of(&self.snapshots())
    }

    /// One vehicle's state, as the producers published it (the allocation they share).
    fn get_shared(&self, id: &str) -> Option<Arc<VehicleState>> {
        self.producers
            .iter()
            .find_map(|p| p.load().batches.get(id).cloned())
    }

    /// One vehicle.
    pub fn get(&self, id: &str) -> Option<VehicleState> {
        self.get_shared(id).map(Arc::unwrap_or_clone)
    }

    /// Every vehicle passing `keep`, in id order, and the `as_of` they are complete through.
    pub fn scan(
        &self,
        keep: impl Fn(&VehicleState) -> bool,
    ) -> (Vec<VehicleState>, Option<Millis>) {
        let snaps = self.snapshots();
        let items = live_after(snaps.iter().map(|p| &p.batches), None)
            .filter(|(_, v)| keep(v))
            .map(|(_, v)| VehicleState::clone(v))
            .collect();
        (items, min_as_of(&snaps))
    }

    /// Up to `limit` vehicles after `after` (exclusive) in id order that pass `keep`, and
    /// whether more follow.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&VehicleState) -> bool,
    ) -> (Vec<VehicleState>, bool) {
        let snaps = self.snapshots();
        let live = live_after(snaps.iter().map(|p| &p.batches), after);
        take_page(
            live.filter(|(_, v)| keep(v))
                .map(|(_, v)| VehicleState::clone(v)),
            limit,
        )
    }

    /// The spatial index, rebuilt first if it is out of date and older than
    /// [`INDEX_MAX_AGE`].
    fn positions(&self) -> Arc<Positions> {
        let mut index = self.index.lock().expect("index lock");
        // The version before the snapshots: an index is never older than its version says.
        let version = self.version.load(Ordering::Acquire);
        let fresh = index
            .as_ref()
            .is_some_and(|p| p.version == version || p.built.elapsed() < INDEX_MAX_AGE);
        if !fresh {
            let snaps = self.snapshots();
            let states: Vec<Arc<VehicleState>> = live_after(snaps.iter().map(|p| &p.batches), None)
                .map(|(_, v)| Arc::clone(v))
                .collect();
            let points = states
                .iter()
                .enumerate()
                .map(|(i, v)| Located::new(on_sphere(v.fix.lat, v.fix.lon), i))
                .collect();
            *index = Some(Arc::new(Positions {
                tree: rstar::RTree::bulk_load(points),
                states,
                as_of: min_as_of(&snaps),
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
        self.snapshots().iter().map(|p| p.len).sum()
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
    take_page(range.map(|(_, v)| v).filter(|v| keep(v)).cloned(), limit)
}

/// The first `limit` of `items`, and whether more follow.
fn take_page<V>(mut items: impl Iterator<Item = V>, limit: usize) -> (Vec<V>, bool) {
    let page: Vec<V> = items.by_ref().take(limit).collect();
    let more = items.next().is_some();
    (page, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::fix::Fix;
    use fleetflow_types::records::Status;
    use std::sync::Arc;

    fn state(id: &str, lat: f64, status: Status) -> VehicleState {
        VehicleState::new(Fix::at(id, "t", 1_000, lat, 13.4), status)
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
        assert_eq!(view.len(), 1, "V1 came, V2 went");
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
    #[cfg(debug_assertions)]
    #[should_panic(expected = "is of the state published last")]
    fn a_retraction_of_another_state_than_the_published_one_is_caught_in_debug_builds() {
        let view = Arc::new(VehicleView::new(1));
        let writer = view.writers().swap_remove(0);
        writer.apply(
            vec![(("V1".into(), state("V1", 52.0, Status::Moving)), 1)],
            None,
        );
        writer.apply(
            vec![(("V1".into(), state("V1", 52.0, Status::Idle)), -1)],
            None,
        );
    }

    #[test]
    fn an_applied_state_is_the_dataflows_allocation_in_the_map_and_the_log() {
        use crate::changes::{ChangeBody, ChangeLog};
        let log = Arc::new(ChangeLog::new(10, 1));
        let view = Arc::new(VehicleView::new(1).with_changes(log.clone()));
        let shared = Arc::new(state("V1", 52.0, Status::Moving));
        view.writers()[0].apply(vec![(("V1".into(), shared.clone()), 1)], None);
        assert!(
            Arc::ptr_eq(&view.get_shared("V1").unwrap(), &shared),
            "the runs copied"
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
