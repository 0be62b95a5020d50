//! The fence set as a differential collection: the job's geofences and every runtime
//! change to them, by id, and the changes since the start arranged by spatial cell on
//! every worker.
//!
//! ```text
//!   changes (worker 0's copy) ─┬─► "Upsert: Fences"  id -> FenceVersion (the fence set, sharded by id)
//!   initial set (time 0) ──────┘        │ exact retract/insert pairs, from time 1 on
//!                                       ▼ Broadcast, then on every worker:
//!                              covering: (cell, Covers(version)) for each cell of its box
//!   changes ──► (Changes, Change(mark)) ┴─► "Arrange: FenceChanges"  FenceKey -> FenceHeld
//!                                              │ batches
//!                                              ├─► change marks ─► "VehicleTimeline"
//!                                              └─► "Geofences" (its versions of the index)
//! ```
//!
//! - The fence set is defined by upsert ([`arrange_from_upsert`], "Upsert: Fences"): the
//!   initial set at time 0, and each runtime change at the epoch it entered the dataflow,
//!   one change per epoch ([`super::render_geofence_input`] makes it so), so that no
//!   change is consolidated away by a later one of the same epoch: the reference emits the
//!   events of each. A version's value holds the sequence number of the change that made
//!   it, so a geofence replaced by an identical one still retracts the old version and
//!   inserts the new one, as the reference exits and enters its occupants.
//! - "Arrange: FenceChanges" lists the fence set's difference from its initial set (the
//!   upsert's updates from time 1 on: the set at time 0 is the initial set) by cell: each
//!   version under the cells its box touches ([`covering`]), or under [`FenceKey::Wide`]
//!   when the R-tree holds it, and each change itself under [`FenceKey::Changes`] (its
//!   sequence number, the job clock it takes effect at, the geofence it names). A batch
//!   carries a change exactly when it carries the cells the change moved, as the
//!   vehicle-state arrangement carries its progress. The initial set is indexed once and
//!   shared by the workers; listing its 600,000 cells (for 100,000 geofences) on every
//!   worker at the start cost 0.7 s of CPU and 200 MiB for nothing any reader used.
//! - The timeline reads the marks from the batches and decides where each vehicle takes
//!   a change; geofencing reads the same batches before its finals, so a version's cells
//!   are always there before its mark, and makes its versions of the index from them
//!   ([`FenceChange`]): the initial index plus the accumulated changes. The trace is not
//!   kept: geofencing's versions of the index are the state the lookups read.

use super::index::{covering, FenceIndex};
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::{Cursor, Navigable};
use differential_dataflow::trace::implementations::{ValBatcher, ValBuilder, ValSpine};
use differential_dataflow::trace::SpanOf;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::GeofenceChange;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Concat;
use timely::dataflow::Stream;

/// One version of a geofence: the geofence as change `seq` made it (0: the job's
/// initial set). Versions compare by `(seq, id)`, which identifies them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FenceVersion {
    /// The change that made it.
    pub seq: u64,
    /// The geofence.
    pub geofence: Arc<Geofence>,
}

impl FenceVersion {
    fn key(&self) -> (u64, &str) {
        (self.seq, self.geofence.id.as_str())
    }
}

impl PartialEq for FenceVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for FenceVersion {}

impl PartialOrd for FenceVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FenceVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// What a key of the fence-set arrangement names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FenceKey {
    /// A cell of the geofence index's grid (`x`, `y` in cells of its size).
    Cell(i32, i32),
    /// The geofences too large for the grid (the index's R-tree).
    Wide,
    /// The changes themselves.
    Changes,
}

/// A runtime change as the fence-set arrangement marks it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChangeMark {
    /// The change's sequence number.
    pub seq: u64,
    /// The job clock it takes effect at (`None`: before the clock began).
    pub at: Option<Millis>,
    /// The geofence it adds, replaces or removes.
    pub id: CompactString,
}

/// What the fence-set arrangement holds under a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FenceHeld {
    /// Under a cell (or [`FenceKey::Wide`]): a version of a geofence covering it.
    Covers(FenceVersion),
    /// Under [`FenceKey::Changes`]: the change of the epoch.
    Change(ChangeMark),
}

/// The fence set by id, as the upsert keeps it.
pub type FenceIdSpine = ValSpine<CompactString, FenceVersion, u64, isize>;
/// The arrangement of the fence set's changes: [`FenceKey`] -> [`FenceHeld`], at epochs.
pub type FenceSpine = ValSpine<FenceKey, FenceHeld, u64, isize>;
/// The fence set's changes since the start, arranged by cell.
pub type FenceArrangement<'scope> = Arranged<'scope, TraceAgent<FenceSpine>>;

/// A span of the fence set's batches, as its arrangement's stream carries them.
pub type FenceSpan = SpanOf<TraceAgent<FenceSpine>>;

type Update<D> = (D, u64, isize);

/// Defines the fence set by id from the geofences of `initial` (the index in force at the
/// start, read on worker 0) at time 0 and the runtime `changes` (the
/// broadcast change stream: every worker holds every change, worker 0's copy defines the
/// collection) at their epochs, which are at least 1 and hold one change each, and
/// arranges its changes since the start by cell on every worker. See the module docs.
pub fn arrange_fences<'scope>(
    changes: Stream<'scope, u64, Vec<GeofenceChange>>,
    initial: &FenceIndex,
) -> FenceArrangement<'scope> {
    let scope = changes.scope();
    let defines = scope.index() == 0;
    let mut initial: Vec<Arc<Geofence>> = if defines {
        initial.iter().cloned().collect()
    } else {
        Vec::new()
    };
    let upserts = changes
        .clone()
        .unary(Pipeline, "Fences as upserts", move |cap, info| {
            // The initial set goes out at time 0, at the first activation.
            let mut start = Some(cap);
            scope.activator_for(info.address).activate();
            move |input, output| {
                if let Some(cap) = start.take() {
                    output
                        .session(&cap)
                        .give_iterator(initial.drain(..).map(|g| {
                            let version = FenceVersion {
                                seq: 0,
                                geofence: g,
                            };
                            (version.geofence.id.clone(), Some(version), 0)
                        }));
                }
                input.for_each(|cap, data| {
                    let Some(t) = cap.least().copied() else {
                        return;
                    };
                    if !defines {
                        data.clear();
                        return;
                    }
                    output
                        .session(&cap)
                        .give_iterator(data.drain(..).map(move |c| {
                            debug_assert!(t > 0, "time 0 is the initial set's");
                            let version = c.geofence.map(|geofence| FenceVersion {
                                seq: c.seq,
                                geofence,
                            });
                            (c.id, version, t)
                        }));
                });
            }
        });
    let by_id = arrange_from_upsert::<
        ValBuilder<CompactString, FenceVersion, u64, isize>,
        FenceIdSpine,
        CompactString,
        FenceVersion,
    >(upserts, "Upsert: Fences");
    // The upsert keeps its own reader of the set by id (it needs the version a change
    // replaces); nothing else reads it, so its handle goes with `as_collection`. The
    // updates at time 0 are the initial set, which geofencing has indexed already: the
    // cells list the difference from it (see `arrange_fences`).
    let versions = by_id
        .as_collection(|_, v| v.clone())
        .inner
        .unary(Pipeline, "Fences since the start", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    data.retain(|(_, t, _)| *t > 0);
                    if !data.is_empty() {
                        output.session(&cap).give_container(data);
                    }
                });
            }
        })
        .broadcast();
    let covers = versions.unary(Pipeline, "Fence covering", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for (v, t, r) in data.drain(..) {
                    let keys = covering(&v.geofence);
                    let (last, rest) = keys.split_last().expect("a geofence covers a key");
                    for k in rest {
                        session.give(((*k, FenceHeld::Covers(v.clone())), t, r));
                    }
                    session.give(((*last, FenceHeld::Covers(v)), t, r));
                }
            });
        }
    });
    let marks = changes.unary(Pipeline, "Fence changes as marks", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(t) = cap.least().copied() else {
                    return;
                };
                output
                    .session(&cap)
                    .give_iterator(data.drain(..).map(move |c| {
                        let mark = ChangeMark {
                            seq: c.seq,
                            at: c.at,
                            id: c.id,
                        };
                        ((FenceKey::Changes, FenceHeld::Change(mark)), t, 1isize)
                    }));
            });
        }
    });
    let updates: Stream<'scope, u64, Vec<Update<(FenceKey, FenceHeld)>>> = covers.concat(marks);
    arrange_core::<_, _, ValBatcher<FenceKey, FenceHeld, u64, isize>, FenceSpine>(
        updates,
        Pipeline,
        "Arrange: FenceChanges",
        ValBatcher::new,
    )
}

/// A runtime change as a batch of the fence set carries it: what geofencing needs to make
/// the version of the index after it, and the events of the vehicles that take it.
#[derive(Clone, Debug)]
pub struct FenceChange {
    /// The change: its sequence number, geofence id, new definition (`None`: removed) and
    /// the job clock it takes effect at.
    pub change: GeofenceChange,
    /// The version it retracted (replaced or removed), if any.
    pub old: Option<Arc<Geofence>>,
    /// The keys the new version is listed under (empty when removed).
    pub keys: Vec<FenceKey>,
}

/// Reads the runtime changes out of spans of the fence set's batches, by sequence number.
/// (Updates without a change at their time are the initial set's.)
pub fn changes_in(spans: &[FenceSpan], out: &mut BTreeMap<u64, FenceChange>) {
    // Per epoch: its change, and its cells' net updates.
    type Epoch = (Option<ChangeMark>, Vec<(FenceKey, FenceVersion, isize)>);
    let mut epochs: BTreeMap<u64, Epoch> = BTreeMap::new();
    for span in spans {
        let Some(batch) = span.inner.as_ref() else {
            continue;
        };
        let mut cursor = batch.cursor();
        while let Some(key) = cursor.get_key(batch) {
            while let Some(val) = cursor.get_val(batch) {
                cursor.map_times(batch, |t, r| {
                    let e = epochs.entry(*t).or_default();
                    match val {
                        FenceHeld::Change(m) => e.0 = Some(m.clone()),
                        FenceHeld::Covers(v) => e.1.push((*key, v.clone(), *r)),
                    }
                });
                cursor.step_val(batch);
            }
            cursor.step_key(batch);
        }
    }
    for (t, (mark, covers)) in epochs {
        let Some(mark) = mark else {
            debug_assert_eq!(t, 0, "updates of an epoch without a change");
            continue;
        };
        let mut change = FenceChange {
            change: GeofenceChange {
                seq: mark.seq,
                id: mark.id,
                geofence: None,
                at: mark.at,
            },
            old: None,
            keys: Vec::new(),
        };
        for (key, v, r) in covers {
            debug_assert_eq!(v.geofence.id, change.change.id, "one change an epoch");
            if r < 0 {
                change.old = Some(v.geofence);
            } else {
                change.keys.push(key);
                change.change.geofence = Some(v.geofence);
            }
        }
        out.insert(mark.seq, change);
    }
}

/// The marks of the runtime changes in the fence set's batches, at their epochs, in
/// order of sequence number: what the timeline needs of a change.
pub fn change_marks<'scope>(
    fences: &FenceArrangement<'scope>,
) -> Stream<'scope, u64, Vec<ChangeMark>> {
    fences
        .stream
        .clone()
        .unary(Pipeline, "Fence change marks", |_, _| {
            move |input, output| {
                input.for_each(|cap, spans| {
                    let mut marks: BTreeMap<(u64, u64), ChangeMark> = BTreeMap::new();
                    for span in spans.iter() {
                        let Some(batch) = span.inner.as_ref() else {
                            continue;
                        };
                        let mut cursor = batch.cursor();
                        cursor.seek_key(batch, &FenceKey::Changes);
                        if cursor.get_key(batch) != Some(&FenceKey::Changes) {
                            continue;
                        }
                        while let Some(val) = cursor.get_val(batch) {
                            if let FenceHeld::Change(m) = val {
                                cursor.map_times(batch, |t, r| {
                                    if *r > 0 {
                                        marks.insert((*t, m.seq), m.clone());
                                    }
                                });
                            }
                            cursor.step_val(batch);
                        }
                    }
                    for ((t, _), m) in marks {
                        output.session(&cap.delayed(&t, 0)).give(m);
                    }
                });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::capture::{Capture, Extract};
    use timely::dataflow::operators::Input;

    use crate::geofence::test_circle as circle;

    type Seen = (
        Vec<(u64, Vec<ChangeMark>)>,
        Vec<(u64, String, bool, bool, usize)>,
    );

    /// On every worker of two: the marks at their epochs, and per change its id, whether
    /// it retracted and inserted a version, and how many keys the new one is under.
    fn run(initial: Vec<Arc<Geofence>>, changes: Vec<GeofenceChange>) -> Vec<Seen> {
        let guards = timely::execute(timely::Config::process(2), move |worker| {
            let initial = initial.clone();
            let changes = changes.clone();
            let got: Rc<RefCell<BTreeMap<u64, FenceChange>>> = Default::default();
            let got_w = got.clone();
            let (mut input, marks) = worker.dataflow::<u64, _, _>(move |scope| {
                let (input, stream) = scope.new_input::<Vec<GeofenceChange>>();
                let fences = arrange_fences(stream, &FenceIndex::new(initial));
                let marks = change_marks(&fences).capture();
                fences.stream.sink(Pipeline, "Read", move |(input, _)| {
                    input.for_each(|_, spans| changes_in(spans, &mut got_w.borrow_mut()));
                });
                (input, marks)
            });
            // Every worker sends the whole log, as the broadcast change stream holds it.
            for c in changes {
                input.advance_to(c.seq);
                input.send(c);
            }
            drop(input);
            while worker.step_or_park(None) {}
            let got = got.borrow();
            let changes = got
                .values()
                .map(|c| {
                    let new = c.change.geofence.as_ref();
                    if let Some(g) = new {
                        assert_eq!(c.keys, covering(g), "listed under its covering");
                    }
                    let old = c.old.as_ref().map(|g| g.id.clone());
                    assert!(old.is_none() || old == Some(c.change.id.clone()));
                    (
                        c.change.seq,
                        c.change.id.to_string(),
                        old.is_some(),
                        new.is_some(),
                        c.keys.len(),
                    )
                })
                .collect();
            (marks.extract(), changes)
        })
        .expect("timely runs");
        guards
            .join()
            .into_iter()
            .map(|r| r.expect("a worker"))
            .collect()
    }

    #[test]
    fn every_change_is_a_retraction_and_an_insertion_under_the_cells_at_its_epoch() {
        let (a, big) = (
            circle("a", 41.15, -8.61, 100.0),
            circle("big", 41.15, -8.61, 50_000.0),
        );
        assert_eq!(covering(&big), [FenceKey::Wide]);
        let a_keys = covering(&a).len();
        assert!(a_keys > 1, "{a_keys}");
        let b = circle("b", 41.2, -8.6, 300.0);
        let small = circle("big", 41.3, -8.6, 50.0);
        let change = |seq, id: &str, g: Option<&Arc<Geofence>>| GeofenceChange {
            seq,
            id: id.into(),
            geofence: g.cloned(),
            at: Some(seq as Millis * 1_000),
        };
        let changes = vec![
            change(1, "b", Some(&b)),
            // The same definition again: still a new version, as the reference replaces it.
            change(2, "a", Some(&a)),
            // From the R-tree to the grid.
            change(3, "big", Some(&small)),
            change(4, "b", None),
            // A geofence that does not exist: the change has no version to move.
            change(5, "none", None),
        ];
        let seen = run(vec![a.clone(), big], changes);
        assert_eq!(seen.len(), 2);
        for (marks, changes) in seen {
            let marks: Vec<(u64, u64, Option<Millis>, String)> = marks
                .into_iter()
                .flat_map(|(t, ms)| {
                    ms.into_iter()
                        .map(move |m| (t, m.seq, m.at, m.id.to_string()))
                })
                .collect();
            let want: Vec<_> = [(1, "b"), (2, "a"), (3, "big"), (4, "b"), (5, "none")]
                .into_iter()
                .map(|(s, id)| (s, s, Some(s as Millis * 1_000), id.to_string()))
                .collect();
            assert_eq!(marks, want);
            assert_eq!(
                changes,
                [
                    (1, "b".into(), false, true, covering(&b).len()),
                    (2, "a".into(), true, true, a_keys),
                    (3, "big".into(), true, true, covering(&small).len()),
                    (4, "b".into(), true, false, 0),
                    (5, "none".into(), false, false, 0),
                ]
            );
        }
    }
}
