//! The query API's view of vehicle state: applied from the dataflow's published changes,
//! read by handlers without ever touching a dataflow worker.

use fleetflow_types::records::VehicleState;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// Vehicle id -> state, with the watermark each worker has published through.
#[derive(Debug)]
pub struct VehicleView {
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    vehicles: BTreeMap<CompactString, VehicleState>,
    as_of: Vec<Option<Millis>>,
}

impl VehicleView {
    /// An empty view fed by `workers` workers.
    pub fn new(workers: usize) -> Self {
        VehicleView {
            inner: RwLock::new(Inner {
                vehicles: BTreeMap::new(),
                as_of: vec![None; workers.max(1)],
            }),
        }
    }

    /// Applies a worker's changes (retractions before insertions) and its watermark.
    pub fn apply(
        &self,
        worker: usize,
        updates: Vec<((CompactString, VehicleState), isize)>,
        watermark: Option<Millis>,
    ) {
        // A vehicle has one state at a time: an insertion replaces it, and a retraction
        // only matters when no insertion of the same vehicle follows in the batch.
        let inserted: std::collections::HashSet<CompactString> = updates
            .iter()
            .filter(|(_, d)| *d > 0)
            .map(|((id, _), _)| id.clone())
            .collect();
        let mut inner = self.inner.write().expect("view lock");
        for ((id, state), diff) in updates {
            if diff > 0 {
                match inner.vehicles.get_mut(&id) {
                    Some(slot) => *slot = state,
                    None => {
                        inner.vehicles.insert(id, state);
                    }
                }
            } else if !inserted.contains(&id) && inner.vehicles.get(&id) == Some(&state) {
                inner.vehicles.remove(&id);
            }
        }
        if let (Some(w), Some(slot)) = (watermark, inner.as_of.get_mut(worker)) {
            *slot = Some(slot.map_or(w, |old| old.max(w)));
        }
    }

    /// The watermark through which every worker's results are published.
    pub fn as_of(&self) -> Option<Millis> {
        let inner = self.inner.read().expect("view lock");
        inner
            .as_of
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
    }

    /// One vehicle.
    pub fn get(&self, id: &str) -> Option<VehicleState> {
        self.inner
            .read()
            .expect("view lock")
            .vehicles
            .get(id)
            .cloned()
    }

    /// Up to `limit` vehicles after `after` (exclusive) in id order that pass `keep`, and
    /// whether more follow.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&VehicleState) -> bool,
    ) -> (Vec<VehicleState>, bool) {
        page_after(
            &self.inner.read().expect("view lock").vehicles,
            after,
            limit,
            keep,
        )
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
