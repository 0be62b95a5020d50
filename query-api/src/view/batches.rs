//! One producer's published batches of a keyed view: sorted runs of net changes, merged
//! geometrically, read through immutable snapshots.
//!
//! Each batch the dataflow publishes becomes one run: the keys it touched, sorted, each with
//! its new value or a tombstone. For the vehicle view a batch is one of the arrangement
//! "Arrange: VehicleState" (net per vehicle); for the occupancy view it is one of the
//! geofence operator's occupancy changes (net per geofence and vehicle). Runs are kept oldest
//! first, and two neighbours are merged whenever the newer one is longer than a
//! [`GROWTH`]th of the older, so there are O(log n) runs to search and every entry is merged
//! O(log n) times, the way differential's spine keeps a trace's batches. Tombstones are
//! dropped when a merge reaches the oldest run.
//!
//! The growth factor trades a producer's merging against a reader's searching: with 8, a
//! fleet of 10,000 vehicles changing in batches of 20 sits in about four runs holding little
//! more than 10,000 entries (with 2, in nine runs holding up to twice that); a change is
//! copied up to 8 times on each of about three levels instead of twice on each of nine.
//!
//! A [`Batches`] value is immutable once published: the producer builds the next one (sharing
//! every run it does not merge) and swaps it in, so readers never wait on a merge.

use fleetflow_types::CompactString;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// A key in a run: its value, or `None` where the batch removed it.
pub(crate) type Entry<K, V> = (K, Option<V>);

/// How much longer each run is than the next newer one, at least.
const GROWTH: usize = 8;

/// One run: entries sorted by key, each key once.
type Run<K, V> = Arc<Vec<Entry<K, V>>>;

/// A producer's runs, oldest first (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Batches<K, V> {
    runs: Vec<Run<K, V>>,
}

impl<K, V> Default for Batches<K, V> {
    fn default() -> Self {
        Batches { runs: Vec::new() }
    }
}

impl<K: Ord + Clone, V: Clone> Batches<K, V> {
    /// The value of the key that `cmp` finds equal (`cmp` orders a run's keys against the
    /// sought one): the newest run that names it decides.
    pub(crate) fn get_by(&self, cmp: impl Fn(&K) -> Ordering) -> Option<&V> {
        for run in self.runs.iter().rev() {
            if let Ok(k) = run.binary_search_by(|(key, _)| cmp(key)) {
                return run[k].1.as_ref();
            }
        }
        None
    }

    /// Number of runs (for tests and docs of the merge policy).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Appends a batch (`run` sorted by key, each key once) and merges runs until each is at
    /// least [`GROWTH`] times as long as the next newer one.
    pub(crate) fn push(&mut self, run: Vec<Entry<K, V>>) {
        debug_assert!(run.windows(2).all(|w| w[0].0 < w[1].0), "sorted, keys once");
        if run.is_empty() {
            return;
        }
        self.runs.push(Arc::new(run));
        while let [.., older, newer] = self.runs.as_slice() {
            if newer.len() * GROWTH <= older.len() {
                break;
            }
            let oldest = self.runs.len() == 2;
            let newer = self.runs.pop().expect("two runs");
            let older = self.runs.pop().expect("two runs");
            self.runs.push(Arc::new(merge(&older, &newer, oldest)));
        }
    }
}

impl<V: Clone> Batches<CompactString, V> {
    /// The value for id `id` (the newest run that names it decides).
    pub(crate) fn get(&self, id: &str) -> Option<&V> {
        self.get_by(|k| k.as_str().cmp(id))
    }
}

/// `older` and `newer` as one run, `newer` deciding for keys in both; without tombstones when
/// the result is the oldest run. Only the entries kept are cloned: the runs are always
/// shared with the snapshot still published (readers may hold it), so they are read, not
/// taken apart.
fn merge<K: Ord + Clone, V: Clone>(
    older: &[Entry<K, V>],
    newer: &[Entry<K, V>],
    oldest: bool,
) -> Vec<Entry<K, V>> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut a, mut b) = (older.iter().peekable(), newer.iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.0.cmp(&y.0) {
                Ordering::Less => a.next(),
                Ordering::Greater => b.next(),
                Ordering::Equal => {
                    a.next();
                    b.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        if let Some(e) = next.filter(|e| !oldest || e.1.is_some()) {
            out.push(e.clone());
        }
    }
    out
}

/// A position in one run during a merged read.
struct Head<'a, K, V> {
    run: &'a [Entry<K, V>],
    pos: usize,
    /// Higher is newer: it decides between runs that name the same key.
    rank: usize,
}

impl<K, V> Head<'_, K, V> {
    fn key(&self) -> &K {
        &self.run[self.pos].0
    }
}

impl<K: Ord, V> PartialEq for Head<'_, K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K: Ord, V> Eq for Head<'_, K, V> {}

impl<K: Ord, V> PartialOrd for Head<'_, K, V> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord, V> Ord for Head<'_, K, V> {
    /// The greatest head is the smallest key, the newest run first (a max-heap pops it).
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(self.key()).then(self.rank.cmp(&other.rank))
    }
}

/// Every key in `producers`' runs from the first one that `before` does not hold for (`before`
/// holds for a prefix of the key order), in key order, with its value: a k-way merge of the
/// runs in which the newest run that names a key decides and tombstones are skipped.
/// Producers publish disjoint sets of keys (each vehicle is published by the worker it
/// belongs to); were a key in several, the later producer would decide.
pub(crate) fn live_from<'a, K, V>(
    producers: impl IntoIterator<Item = &'a Batches<K, V>>,
    before: impl Fn(&K) -> bool,
) -> impl Iterator<Item = (&'a K, &'a V)>
where
    K: Ord + 'a,
    V: 'a,
{
    let mut heap = BinaryHeap::new();
    let mut rank = 0;
    for batches in producers {
        for run in &batches.runs {
            let pos = run.partition_point(|(k, _)| before(k));
            if pos < run.len() {
                heap.push(Head {
                    run: run.as_slice(),
                    pos,
                    rank,
                });
            }
            rank += 1;
        }
    }
    // The head yielded last, moved on: it stays out of the heap while it is still the
    // smallest (most runs are short next to the oldest, so most steps touch no heap).
    let mut current: Option<Head<'a, K, V>> = None;
    std::iter::from_fn(move || loop {
        let top = match current.take() {
            Some(h) if heap.peek().is_none_or(|t| h > *t) => h,
            Some(h) => {
                heap.push(h);
                heap.pop().expect("pushed")
            }
            None => heap.pop()?,
        };
        let (run, pos) = (top.run, top.pos);
        // Older runs naming the same key are passed over.
        while heap.peek().is_some_and(|h| *h.key() == run[pos].0) {
            let mut h = heap.pop().expect("peeked");
            h.pos += 1;
            if h.pos < h.run.len() {
                heap.push(h);
            }
        }
        if pos + 1 < run.len() {
            current = Some(Head {
                run,
                pos: pos + 1,
                rank: top.rank,
            });
        }
        if let (key, Some(value)) = &run[pos] {
            return Some((key, value));
        }
    })
}

/// [`live_from`] for keys that are ids: every id after `after` (exclusive), in id order.
pub(crate) fn live_after<'a, V>(
    producers: impl IntoIterator<Item = &'a Batches<CompactString, V>>,
    after: Option<&'a str>,
) -> impl Iterator<Item = (&'a CompactString, &'a V)>
where
    V: 'a,
{
    live_from(producers, move |k: &CompactString| {
        after.is_some_and(|a| k.as_str() <= a)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::fix::Fix;
    use fleetflow_types::records::{Status, VehicleState};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn state(id: &str, ts: i64) -> Arc<VehicleState> {
        Arc::new(VehicleState::new(
            Fix::at(id, "t", ts, 41.1, -8.6),
            Status::Moving,
        ))
    }

    type Vehicles = Batches<CompactString, Arc<VehicleState>>;

    /// A batch: vehicle number -> new `ts`, or `None` to remove it.
    fn batch(changes: &BTreeMap<u8, Option<i64>>) -> Vec<Entry<CompactString, Arc<VehicleState>>> {
        changes
            .iter()
            .map(|(v, ts)| {
                let id = CompactString::from(format!("V{v:03}"));
                let s = ts.map(|t| state(&id, t));
                (id, s)
            })
            .collect()
    }

    proptest! {
        /// After any sequence of batches, lookups and merged reads from any point equal a
        /// plain map the batches were applied to in order, and the runs stay few.
        #[test]
        fn runs_read_as_the_map_of_every_batch_applied_in_order(
            batches in prop::collection::vec(
                prop::collection::btree_map(0u8..60, prop::option::weighted(0.8, 0i64..1000), 0..25),
                0..40,
            ),
            after in 0u8..64,
        ) {
            let mut b = Vehicles::default();
            let mut reference: BTreeMap<CompactString, i64> = BTreeMap::new();
            for changes in &batches {
                b.push(batch(changes));
                for (v, ts) in changes {
                    let id = CompactString::from(format!("V{v:03}"));
                    match ts {
                        Some(t) => reference.insert(id, *t),
                        None => reference.remove(&id),
                    };
                }
                // Sizes grow geometrically going back, so runs stay logarithmic.
                prop_assert!(b.runs() <= 4, "{} runs", b.runs());
            }
            for v in 0u8..64 {
                let id = format!("V{v:03}");
                prop_assert_eq!(b.get(&id).map(|s| s.fix.ts), reference.get(id.as_str()).copied());
            }
            let got: Vec<(String, i64)> = live_after([&b], None)
                .map(|(id, s)| (id.to_string(), s.fix.ts))
                .collect();
            let want: Vec<(String, i64)> =
                reference.iter().map(|(id, t)| (id.to_string(), *t)).collect();
            prop_assert_eq!(&got, &want);
            let cut = format!("V{after:03}");
            let got: Vec<String> = live_after([&b], Some(&cut)).map(|(id, _)| id.to_string()).collect();
            let want: Vec<String> = reference
                .keys()
                .filter(|id| id.as_str() > cut.as_str())
                .map(|id| id.to_string())
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn producers_merge_in_id_order_and_a_held_snapshot_does_not_change() {
        let mut p0 = Vehicles::default();
        let mut p1 = Vehicles::default();
        p0.push(batch(&BTreeMap::from([(1, Some(10)), (4, Some(40))])));
        p1.push(batch(&BTreeMap::from([(2, Some(20)), (3, Some(30))])));
        let held = p0.clone();
        p0.push(batch(&BTreeMap::from([(1, None), (5, Some(50))])));
        let ids = |ps: [&Vehicles; 2]| -> Vec<String> {
            live_after(ps, None).map(|(id, _)| id.to_string()).collect()
        };
        assert_eq!(ids([&p0, &p1]), ["V002", "V003", "V004", "V005"]);
        assert_eq!(ids([&held, &p1]), ["V001", "V002", "V003", "V004"]);
    }
}
