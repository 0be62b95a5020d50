//! Versions of the fence set as layers: a shared base index and the changes since it.
//!
//! Geofencing keeps every version of the fence set some vehicle is still on. Copying the
//! whole index for each runtime change cost 60-130 ms per worker with 100,000 geofences,
//! and every version kept held a copy of its own (about 70 MB). A version is now the base
//! index, shared, plus a top layer: the geofences added or replaced since the base, in a
//! small index of their own, and the base's slots they hide. A change copies only the top.
//! When the top grows past [`COMPACT_AFTER`] geofences, the next version folds it into a
//! new base (one copy of the index for that many changes), as a spine merges its batches.
//!
//! Slots are global: an id keeps the slot the base gave it, and an id the base never had
//! gets the next free slot, kept in the top (and in every later base) when it is removed
//! and added again, so that every version agrees on the slot of every geofence.

use super::fences::FenceKey;
use super::index::FenceIndex;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::CompactString;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Geofences in the top layer (plus base slots hidden) past which a change makes a new
/// base.
pub const COMPACT_AFTER: usize = 256;

/// One version of the fence set: a base index and the changes since it.
#[derive(Clone)]
pub struct FenceLayers {
    base: Arc<FenceIndex>,
    top: Arc<Top>,
}

/// The changes since the base.
#[derive(Clone, Default)]
struct Top {
    /// The geofences added or replaced since the base, under slots of their own.
    index: FenceIndex,
    /// The top's slot -> the global slot.
    global: Vec<u32>,
    /// The global slot -> the top's slot, for every id the top ever held.
    local: HashMap<u32, u32>,
    /// Base slots whose geofence was replaced or removed.
    hidden: HashSet<u32>,
    /// The global slots of ids the base does not know, by id.
    fresh: HashMap<CompactString, u32>,
    /// The next global slot for an id the base does not know.
    next: u32,
}

impl Top {
    fn is_empty(&self) -> bool {
        self.global.is_empty() && self.hidden.is_empty()
    }
}

impl FenceLayers {
    /// A version that is `base` alone.
    pub fn new(base: Arc<FenceIndex>) -> FenceLayers {
        let next = base.next_slot();
        FenceLayers {
            base,
            top: Arc::new(Top {
                next,
                ..Top::default()
            }),
        }
    }

    /// The version after a change to geofence `id`: its version in force (if any) goes
    /// (`retract`), and `geofence` (if any) comes in under `keys` (its covering).
    pub fn changed(
        &self,
        id: &str,
        retract: bool,
        geofence: Option<Arc<Geofence>>,
        keys: &[FenceKey],
    ) -> FenceLayers {
        let mut top = (*self.top).clone();
        if retract {
            if top.index.slot_of(id).is_some() {
                top.index.remove(id);
            } else if let Some(s) = self.base.slot_of(id) {
                top.hidden.insert(s);
            }
        }
        if let Some(g) = geofence {
            debug_assert!(
                retract || self.slot_of(&g.id).is_none(),
                "a geofence in force is retracted before its new version comes in"
            );
            let global = match self
                .base
                .assigned_slot(&g.id)
                .or_else(|| top.fresh.get(&g.id).copied())
            {
                Some(s) => s,
                None => {
                    let s = top.next;
                    top.next += 1;
                    top.fresh.insert(g.id.clone(), s);
                    s
                }
            };
            let local = top.index.insert_listed(g, keys);
            if top.global.len() <= local as usize {
                top.global.resize(local as usize + 1, u32::MAX);
            }
            top.global[local as usize] = global;
            top.local.insert(global, local);
        }
        let layers = FenceLayers {
            base: self.base.clone(),
            top: Arc::new(top),
        };
        // Every id the top ever held counts (a removed one keeps its slot there).
        if layers.top.global.len() + layers.top.hidden.len() > COMPACT_AFTER {
            layers.compacted()
        } else {
            layers
        }
    }

    /// The same version with the top folded into a new base.
    fn compacted(&self) -> FenceLayers {
        let mut base = (*self.base).clone();
        for &s in &self.top.hidden {
            let id = self.base.id(s).clone();
            base.remove(&id);
        }
        for (id, &s) in &self.top.fresh {
            base.reserve_slot(id.clone(), s);
        }
        for g in self.top.index.iter() {
            base.insert(g.clone());
        }
        FenceLayers::new(Arc::new(base))
    }

    /// The slots of the geofences containing the point that apply to `tenant`, in order
    /// ([`FenceLayers::id`] names them).
    pub fn containing(&self, lat: f64, lon: f64, tenant: &str, out: &mut Vec<u32>) {
        if self.top.is_empty() {
            return self.base.containing(lat, lon, tenant, out);
        }
        let top = &self.top;
        out.clear();
        self.base.append_containing(lat, lon, tenant, out);
        out.retain(|s| !top.hidden.contains(s));
        let n = out.len();
        top.index.append_containing(lat, lon, tenant, out);
        for s in &mut out[n..] {
            *s = top.global[*s as usize];
        }
        out.sort_unstable();
    }

    /// Where slot `slot` lives: the top's slot, or `None` for the base.
    fn in_top(&self, slot: u32) -> Option<u32> {
        if self.top.local.is_empty() {
            None
        } else {
            self.top.local.get(&slot).copied()
        }
    }

    /// The id of the geofence in `slot` (or of the last one there).
    pub fn id(&self, slot: u32) -> &CompactString {
        match self.in_top(slot) {
            Some(l) => self.top.index.id(l),
            None => self.base.id(slot),
        }
    }

    /// Asks for the id of the geofence in `slot` (to be read by [`FenceLayers::id`] soon).
    pub(crate) fn fetch_id(&self, slot: u32) {
        match self.in_top(slot) {
            Some(l) => self.top.index.fetch_id(l),
            None => self.base.fetch_id(slot),
        }
    }

    /// The geofence in `slot`.
    pub fn get(&self, slot: u32) -> Option<&Arc<Geofence>> {
        match self.in_top(slot) {
            Some(l) => self.top.index.get(l),
            None if self.top.hidden.contains(&slot) => None,
            None => self.base.get(slot),
        }
    }

    /// The slot of geofence `id`, if it is in force.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        if let Some(l) = self.top.index.slot_of(id) {
            return Some(self.top.global[l as usize]);
        }
        self.base
            .slot_of(id)
            .filter(|s| !self.top.hidden.contains(s))
    }

    /// The geofences in force: the base's not hidden, then the top's.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Geofence>> {
        let top = &self.top;
        self.base
            .iter_slots()
            .filter(|(s, _)| !top.hidden.contains(s))
            .map(|(_, g)| g)
            .chain(top.index.iter())
    }

    /// Number of geofences in force.
    pub fn len(&self) -> usize {
        self.base.len() - self.top.hidden.len() + self.top.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this version is its base alone (tests).
    #[cfg(test)]
    pub(crate) fn is_base(&self) -> bool {
        self.top.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geofence::index::covering;

    use crate::geofence::test_circle as circle;

    /// What a version answers at a few points, by id.
    fn answers(v: &FenceLayers, points: &[(f64, f64)]) -> Vec<Vec<String>> {
        let mut buf = Vec::new();
        points
            .iter()
            .map(|&(lat, lon)| {
                v.containing(lat, lon, "t", &mut buf);
                assert!(buf.windows(2).all(|w| w[0] < w[1]), "in order: {buf:?}");
                let mut ids: Vec<String> = buf.iter().map(|&s| v.id(s).to_string()).collect();
                ids.sort();
                ids
            })
            .collect()
    }

    /// Every version made by layers answers as an index of the same geofences made whole,
    /// agrees with the versions before it on every slot, and the top stays small.
    #[test]
    fn layered_versions_answer_as_whole_indexes_and_keep_slots() {
        let start: Vec<_> = (0..40)
            .map(|i| circle(&format!("f{i}"), 41.15 + i as f64 * 0.001, -8.61, 150.0))
            .collect();
        let points: Vec<(f64, f64)> = (0..60)
            .map(|i| (41.149 + i as f64 * 0.0008, -8.61 + (i % 3) as f64 * 0.0005))
            .collect();
        let mut whole: HashMap<String, Arc<Geofence>> = start
            .iter()
            .map(|g| (g.id.to_string(), g.clone()))
            .collect();
        let mut v = FenceLayers::new(Arc::new(FenceIndex::new(start)));
        let mut slots: HashMap<String, u32> = HashMap::new();
        let mut compactions = 0;
        for k in 0..(3 * COMPACT_AFTER) {
            // Replace, remove and add again, and add new ids, over and over.
            let id = format!("f{}", (k * 7) % 400);
            let lat = 41.15 + ((k * 13) % 50) as f64 * 0.001;
            let retract = whole.contains_key(&id);
            let g = (k % 5 != 3).then(|| circle(&id, lat, -8.61, 100.0 + (k % 9) as f64 * 20.0));
            let keys = g.as_deref().map(covering).unwrap_or_default();
            let before_base = v.is_base();
            v = v.changed(&id, retract, g.clone(), &keys);
            if v.is_base() && !before_base {
                compactions += 1;
            }
            match g {
                Some(g) => whole.insert(id.clone(), g),
                None => whole.remove(&id),
            };
            if let Some(s) = v.slot_of(&id) {
                assert_eq!(
                    *slots.entry(id.clone()).or_insert(s),
                    s,
                    "{id} keeps its slot"
                );
                assert_eq!(v.id(s), &id);
            }
            assert_eq!(v.len(), whole.len());
            assert!(v.top.global.len() + v.top.hidden.len() <= COMPACT_AFTER);
            if k % 37 == 0 || k + 1 == 3 * COMPACT_AFTER {
                let made = FenceLayers::new(Arc::new(FenceIndex::new(whole.values().cloned())));
                assert_eq!(answers(&v, &points), answers(&made, &points), "change {k}");
                let mut ids: Vec<String> = v.iter().map(|g| g.id.to_string()).collect();
                ids.sort();
                let mut want: Vec<String> = whole.keys().cloned().collect();
                want.sort();
                assert_eq!(ids, want);
            }
        }
        assert!(compactions >= 2, "{compactions}");
    }
}
