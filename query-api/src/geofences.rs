//! The query API's geofence side: the catalogue (what the job was told), the channel that
//! carries runtime changes into the dataflow, and the view the dataflow publishes into
//! (occupancy, recent events, which changes each worker applied).
//!
//! Occupancy is read the way vehicle state is ([`crate::view`]): each batch of a producing
//! worker's occupancy changes becomes one sorted run of `(geofence, vehicle) -> entered_at`
//! (or a tombstone), the producer's runs are merged geometrically
//! (`view::batches`), and the producer swaps its next immutable snapshot in. A
//! request loads the snapshots without a lock; a worker never waits for a reader.

use crate::changes::{ChangeBody, ChangeLog};
use crate::view::batches::{live_from, Batches, Entry};
use arc_swap::ArcSwap;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::{GeofenceChange, GeofenceEvent, OccupancyChange};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many recent events `GET /v1/geofence-events` can return (the lake has all of them).
pub const RECENT_EVENTS: usize = 100_000;

/// Why a change could not be handed to the dataflow.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The job no longer runs (its input ended or it was interrupted).
    #[error("the job is not running: geofences can change only while it runs")]
    NotRunning,
    /// No geofence with that id.
    #[error("no geofence {0:?}")]
    Unknown(String),
    /// This process of a cluster does not take changes (see [`GeofenceView::follow`]).
    #[error("{0}")]
    Follower(String),
}

/// Why [`GeofenceView::wait_applied`] returned without the change in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplied {
    /// Not applied within the timeout; it still will be.
    Pending,
    /// The dataflow stopped before applying it.
    Stopped,
}

/// A change handed to the dataflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Its sequence number.
    pub seq: u64,
    /// Whether the id existed before.
    pub existed: bool,
}

/// Geofence catalogue and view, shared by the API handlers and the dataflow.
pub struct GeofenceView {
    catalog: Mutex<Catalog>,
    /// One shard per worker: a worker writes only its own (its vehicles), readers merge.
    shards: Vec<RwLock<Shard>>,
    /// By worker: its occupancy runs, loaded by readers without a lock.
    occupancy: Vec<ArcSwap<Occupancy>>,
    changed: tokio::sync::Notify,
    closed: AtomicBool,
    changes: Option<Arc<ChangeLog>>,
}

struct Catalog {
    fences: BTreeMap<CompactString, Arc<Geofence>>,
    sender: Option<std::sync::mpsc::Sender<GeofenceChange>>,
    next_seq: u64,
    /// Set on a process of a cluster that does not take changes: why not.
    follower: Option<String>,
}

/// A visit's key in the occupancy runs: the hashes of the geofence and vehicle ids first,
/// so that sorting and merging runs compare two integers (the ids decide only between
/// equal hashes), then the ids. A geofence's occupants are the keys with its hash and id.
type VisitKey = (u64, u64, CompactString, CompactString);

/// One worker's occupancy: visit key -> `entered_at`.
type Occupancy = Batches<VisitKey, Millis>;

/// The hash of an id in a [`VisitKey`] (fixed seeds: writers and readers agree).
fn id_hash(id: &str) -> u64 {
    static HASHER: std::sync::LazyLock<ahash::RandomState> =
        std::sync::LazyLock::new(|| ahash::RandomState::with_seeds(1, 2, 3, 4));
    HASHER.hash_one(id)
}

/// A batch of occupancy changes (in the order they happened) as one run: per geofence and
/// vehicle, the visit in progress after them (`None`: none).
///
/// An enter starts a visit and a leave ends the visit in progress. A producer's changes
/// are consistent (geofencing's state is the truth they are made from: every leave ends a
/// visit the same producer entered, with its `entered_at`), so a batch decides each key on
/// its own and no key is looked up in the older runs; debug builds check the leaves.
fn occupancy_run(
    current: &Occupancy,
    changes: Vec<OccupancyChange>,
) -> Vec<Entry<VisitKey, Millis>> {
    if cfg!(debug_assertions) {
        leaves_end_visits(current, &changes);
    }
    let mut keyed: Vec<(VisitKey, Option<Millis>)> = changes
        .into_iter()
        .map(|c| {
            (
                visit_key(c.geofence, c.vehicle),
                (c.diff > 0).then_some(c.entered_at),
            )
        })
        .collect();
    // Stable: each key's changes stay in the order they happened; the last one decides.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut run: Vec<Entry<VisitKey, Millis>> = Vec::with_capacity(keyed.len());
    for (key, visit) in keyed {
        match run.last_mut() {
            Some(last) if last.0 == key => last.1 = visit,
            _ => run.push((key, visit)),
        }
    }
    run
}

/// Checks (debug builds) that every leave in `changes` ends the visit in progress, with its
/// `entered_at`: the one entered earlier in the batch, or else the one in `current`.
fn leaves_end_visits(current: &Occupancy, changes: &[OccupancyChange]) {
    let mut batch: std::collections::HashMap<VisitKey, Option<Millis>> = Default::default();
    for c in changes {
        let key = visit_key(c.geofence.clone(), c.vehicle.clone());
        if c.diff < 0 {
            let before = match batch.get(&key) {
                Some(v) => *v,
                None => current.get_by(|k| k.cmp(&key)).copied(),
            };
            assert_eq!(
                before,
                Some(c.entered_at),
                "a leave of {key:?} ends the visit in progress"
            );
        }
        batch.insert(key, (c.diff > 0).then_some(c.entered_at));
    }
}

/// The key of `vehicle`'s visit to `geofence`.
fn visit_key(geofence: CompactString, vehicle: CompactString) -> VisitKey {
    (id_hash(&geofence), id_hash(&vehicle), geofence, vehicle)
}

/// What one producing worker writes its shard of a [`GeofenceView`] through (see
/// [`GeofenceView::writers`]).
#[derive(Clone)]
pub struct GeofenceWriter {
    view: Arc<GeofenceView>,
    shard: usize,
}

impl GeofenceWriter {
    /// Applies this producer's changes in the order they happened: occupancy updates (+1
    /// enters, -1 leaves), events and applied changes, and the job clock they reflect.
    pub fn apply(
        &self,
        occupants: Vec<OccupancyChange>,
        events: &[GeofenceEvent],
        applied: Vec<(u64, Option<Millis>)>,
        clock: Option<Millis>,
    ) {
        self.view
            .apply(self.shard, occupants, events, applied, clock);
    }

    /// Records the job clock this producer's geofence results reflect.
    pub fn advance(&self, clock: Option<Millis>) {
        self.view.advance(self.shard, clock);
    }
}

#[derive(Default)]
struct Shard {
    events: VecDeque<GeofenceEvent>,
    /// The last change applied.
    applied: u64,
    /// Change -> the job clock it took effect at (recent ones).
    effective: BTreeMap<u64, Option<Millis>>,
    as_of: Option<Millis>,
}

impl GeofenceView {
    /// A view fed by `workers` workers, starting with `initial` geofences in force and
    /// `sender` carrying changes to the dataflow.
    pub fn new(
        workers: usize,
        initial: &[Arc<Geofence>],
        sender: Option<std::sync::mpsc::Sender<GeofenceChange>>,
    ) -> Self {
        GeofenceView {
            catalog: Mutex::new(Catalog {
                fences: initial.iter().map(|g| (g.id.clone(), g.clone())).collect(),
                sender,
                next_seq: 1,
                follower: None,
            }),
            shards: (0..workers.max(1))
                .map(|_| RwLock::new(Shard::default()))
                .collect(),
            occupancy: (0..workers.max(1)).map(|_| ArcSwap::default()).collect(),
            changed: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            changes: None,
        }
    }

    /// Numbers the changes after `seq` (a job resumed from a checkpoint whose fences are
    /// the version of change `seq`).
    pub fn continuing_after(self, seq: u64) -> Self {
        {
            let mut c = self.catalog.lock().expect("catalog lock");
            c.next_seq = c.next_seq.max(seq + 1);
        }
        self
    }

    /// Also appends every geofence event to `log` (for the live streams).
    pub fn with_changes(mut self, log: Arc<ChangeLog>) -> Self {
        self.changes = Some(log);
        self
    }

    /// Makes this the view of a process that does not take changes (`reason` answers a
    /// request for one); its catalogue follows the changes the dataflow applies instead
    /// (see [`GeofenceView::follow_change`]).
    pub fn follow(self, reason: String) -> Self {
        self.catalog.lock().expect("catalog lock").follower = Some(reason);
        self
    }

    /// On a follower, records a change another process took, as the dataflow delivers it
    /// (in the order of its sequence numbers).
    pub fn follow_change(&self, change: &GeofenceChange) {
        let mut c = self.catalog.lock().expect("catalog lock");
        if c.follower.is_none() {
            return;
        }
        c.next_seq = c.next_seq.max(change.seq + 1);
        match &change.geofence {
            Some(g) => c.fences.insert(change.id.clone(), g.clone()),
            None => c.fences.remove(&change.id),
        };
    }

    /// The dataflow stopped taking changes.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.catalog.lock().expect("catalog lock").sender = None;
        self.changed.notify_waiters();
    }

    /// Adds or replaces (`Some`) or removes (`None`) geofence `id`.
    pub fn submit(&self, id: &str, geofence: Option<Geofence>) -> Result<Submitted, ChangeError> {
        let mut c = self.catalog.lock().expect("catalog lock");
        if let Some(reason) = &c.follower {
            return Err(ChangeError::Follower(reason.clone()));
        }
        let existed = c.fences.contains_key(id);
        if geofence.is_none() && !existed {
            return Err(ChangeError::Unknown(id.to_owned()));
        }
        let seq = c.next_seq;
        let geofence = geofence.map(Arc::new);
        let change = GeofenceChange {
            seq,
            id: id.into(),
            geofence: geofence.clone(),
            at: None,
        };
        match &c.sender {
            Some(tx) if tx.send(change).is_ok() => {}
            _ => return Err(ChangeError::NotRunning),
        }
        c.next_seq += 1;
        match geofence {
            Some(g) => c.fences.insert(id.into(), g),
            None => c.fences.remove(id),
        };
        Ok(Submitted { seq, existed })
    }

    /// Waits until every worker registered change `seq` and returns the job clock it took
    /// effect at (`None` when it took effect before the job clock began).
    pub async fn wait_applied(
        &self,
        seq: u64,
        timeout: std::time::Duration,
    ) -> Result<Option<Millis>, NotApplied> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut at = None;
            let mut done = true;
            for shard in &self.shards {
                let shard = shard.read().expect("view lock");
                done &= shard.applied >= seq;
                at = at.or(shard.effective.get(&seq).copied());
            }
            if done {
                return Ok(at.flatten());
            }
            if self.closed.load(Ordering::Relaxed) {
                return Err(NotApplied::Stopped);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NotApplied::Pending);
            }
        }
    }

    /// Number of geofences in the catalogue.
    pub fn len(&self) -> usize {
        self.catalog.lock().expect("catalog lock").fences.len()
    }

    /// Whether the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One geofence of the catalogue.
    pub fn get(&self, id: &str) -> Option<Arc<Geofence>> {
        self.catalog
            .lock()
            .expect("catalog lock")
            .fences
            .get(id)
            .cloned()
    }

    /// Up to `limit` geofences after `after` in id order that pass `keep`, and whether more
    /// follow.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Geofence) -> bool,
    ) -> (Vec<Arc<Geofence>>, bool) {
        let c = self.catalog.lock().expect("catalog lock");
        crate::view::page_after(&c.fences, after, limit, |g| keep(g))
    }

    /// One writer per producing worker (the `workers` the view was made for), in worker
    /// order: each writes only its own shard, so a producer never names itself by number.
    pub fn writers(self: &Arc<Self>) -> Vec<GeofenceWriter> {
        (0..self.shards.len())
            .map(|shard| GeofenceWriter {
                view: Arc::clone(self),
                shard,
            })
            .collect()
    }

    /// See [`GeofenceWriter::apply`].
    fn apply(
        &self,
        worker: usize,
        occupants: Vec<OccupancyChange>,
        events: &[GeofenceEvent],
        applied: Vec<(u64, Option<Millis>)>,
        clock: Option<Millis>,
    ) {
        let (Some(shard), Some(occupancy)) = (self.shards.get(worker), self.occupancy.get(worker))
        else {
            return;
        };
        let notify = !applied.is_empty();
        // The next snapshot of this worker's occupancy, built off any lock (only this worker
        // swaps it, so the one loaded here stays the latest).
        let had_occupants = !occupants.is_empty();
        let next = had_occupants.then(|| {
            let current = occupancy.load_full();
            let run = occupancy_run(&current, occupants);
            let mut next = Occupancy::clone(&current);
            next.push(run);
            Arc::new(next)
        });
        // The log's lock first (see `changes`): streams see the view and the log agree.
        let log = self
            .changes
            .as_ref()
            .filter(|_| !events.is_empty() || had_occupants)
            .map(|c| c.write());
        if let Some(next) = next {
            occupancy.store(next);
        }
        {
            let mut shard = shard.write().expect("view lock");
            if let Some(w) = clock {
                shard.as_of = Some(w);
            }
            let shard = &mut *shard;
            // Only the newest events are kept: copy no more than fit.
            let events = &events[events.len().saturating_sub(RECENT_EVENTS)..];
            let excess = (shard.events.len() + events.len()).saturating_sub(RECENT_EVENTS);
            shard.events.drain(..excess);
            shard.events.extend(events.iter().cloned());
            for (seq, at) in applied {
                shard.applied = shard.applied.max(seq);
                shard.effective.insert(seq, at);
                while shard.effective.len() > 4096 {
                    shard.effective.pop_first();
                }
            }
        }
        if let (Some(mut log), Some(c)) = (log, &self.changes) {
            // Still under the log's lock: no snapshot sees the shard without these.
            let as_of = self.as_of();
            for e in events {
                log.push(ChangeBody::GeofenceEvent(e.clone()), as_of);
            }
            c.publish(log);
        }
        if notify {
            self.changed.notify_waiters();
        }
    }

    /// See [`GeofenceWriter::advance`].
    fn advance(&self, worker: usize, clock: Option<Millis>) {
        if let (Some(w), Some(shard)) = (clock, self.shards.get(worker)) {
            let mut shard = shard.write().expect("view lock");
            shard.as_of = Some(w);
        }
    }

    /// The job clock every worker's geofence results reflect (the least over workers).
    pub fn as_of(&self) -> Option<Millis> {
        self.shards
            .iter()
            .map(|s| s.read().expect("view lock").as_of)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
    }

    /// The vehicles inside geofence `id` with their `entered_at`, by vehicle id.
    pub fn occupants(&self, id: &str) -> Vec<(CompactString, Millis)> {
        let snaps: Vec<Arc<Occupancy>> = self.occupancy.iter().map(|o| o.load_full()).collect();
        let h = id_hash(id);
        let mut out: Vec<(CompactString, Millis)> =
            live_from(snaps.iter().map(|o| &**o), |k| k.0 < h)
                .take_while(|(k, _)| k.0 == h)
                .filter(|(k, _)| k.2 == id)
                .map(|(k, t)| (k.3.clone(), *t))
                .collect();
        out.sort();
        out
    }

    /// Every occupant of every geofence passing `keep(geofence, vehicle)`, as
    /// `(geofence, vehicle, entered_at)` in that order.
    pub fn all_occupants(
        &self,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<(CompactString, CompactString, Millis)> {
        let snaps: Vec<Arc<Occupancy>> = self.occupancy.iter().map(|o| o.load_full()).collect();
        let mut out: Vec<(CompactString, CompactString, Millis)> =
            live_from(snaps.iter().map(|o| &**o), |_| false)
                .filter(|(k, _)| keep(&k.2, &k.3))
                .map(|(k, t)| (k.2.clone(), k.3.clone(), *t))
                .collect();
        out.sort();
        out
    }

    /// Recent events passing `keep`, newest first, at most `limit`.
    pub fn recent_events(
        &self,
        limit: usize,
        keep: impl Fn(&GeofenceEvent) -> bool,
    ) -> Vec<GeofenceEvent> {
        let mut out: Vec<GeofenceEvent> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().expect("view lock");
            out.extend(shard.events.iter().filter(|e| keep(e)).cloned());
        }
        // Newest first; ties in a fixed order.
        out.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| b.cmp(a)));
        out.truncate(limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn change(g: u8, v: u8, entered_at: Millis, diff: i8) -> OccupancyChange {
        OccupancyChange {
            geofence: format!("G{g}").into(),
            vehicle: format!("V{v}").into(),
            entered_at,
            diff,
        }
    }

    proptest! {
        /// Batches of occupancy changes from two workers, published one batch at a time,
        /// read exactly like one map the changes were applied to in order, whoever reads:
        /// occupants of one geofence, or every occupant. Each step of a worker toggles a
        /// vehicle in a geofence the way geofencing does: it enters (at `t`) where it is
        /// not inside and leaves the visit in progress where it is, so batches hold
        /// enters, leaves, visits begun and ended within one batch, and re-entries.
        #[test]
        fn occupancy_runs_read_as_the_changes_applied_in_order(
            batches in prop::collection::vec(
                (0usize..2, prop::collection::vec((0u8..4, 0u8..6, 0i64..3), 0..20)),
                0..30,
            ),
        ) {
            let view = Arc::new(GeofenceView::new(2, &[], None));
            let writers = view.writers();
            let mut reference: BTreeMap<(CompactString, CompactString), Millis> = BTreeMap::new();
            for (worker, steps) in &batches {
                let mut changes = Vec::new();
                // Each worker owns its vehicles (odd ones are worker 1's), as in a job.
                for &(g, v, t) in steps.iter().filter(|s| (s.1 % 2) as usize == *worker) {
                    let key: (CompactString, CompactString) =
                        (format!("G{g}").into(), format!("V{v}").into());
                    match reference.remove(&key) {
                        Some(entered_at) => changes.push(change(g, v, entered_at, -1)),
                        None => {
                            reference.insert(key, t);
                            changes.push(change(g, v, t, 1));
                        }
                    }
                }
                writers[*worker].apply(changes, &[], Vec::new(), None);
                let all = view.all_occupants(|_, _| true);
                let want: Vec<_> = reference.iter().map(|((g, v), t)| (g.clone(), v.clone(), *t)).collect();
                prop_assert_eq!(&all, &want);
                let fences: BTreeSet<&CompactString> = reference.keys().map(|(g, _)| g).collect();
                for g in (0..4).map(|g| format!("G{g}")) {
                    let want: Vec<_> = reference
                        .iter()
                        .filter(|((rg, _), _)| *rg == g)
                        .map(|((_, v), t)| (v.clone(), *t))
                        .collect();
                    prop_assert_eq!(view.occupants(&g), want);
                    prop_assert_eq!(fences.contains(&CompactString::from(g.as_str())), !view.occupants(&g).is_empty());
                }
            }
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "ends the visit in progress")]
    fn a_leave_of_another_visit_than_the_one_in_progress_is_caught_in_debug_builds() {
        let view = Arc::new(GeofenceView::new(1, &[], None));
        let writer = view.writers().swap_remove(0);
        writer.apply(vec![change(1, 1, 10, 1)], &[], Vec::new(), None);
        writer.apply(vec![change(1, 1, 20, -1)], &[], Vec::new(), None);
    }
}
