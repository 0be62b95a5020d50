//! Snapshots written a slice at a time while the state goes on changing.
//!
//! An operator whose state is large (a worker's vehicles) begins a snapshot at a
//! checkpoint cut and writes it over later invocations, a short slice each, so that the
//! fixes behind the cut are not held up. Its state is copied on write: an item about to
//! change is written first, so what is written is the state when the snapshot began.
//! [`SnapshotBody`] is the encoded snapshot, in chunks; [`SnapshotWriter`] paces the slices
//! of anything that is [`Sliced`] and offers the snapshot to the checkpoint hub once
//! complete. Used by the timelines ([`crate::timeline`]) and geofence membership
//! ([`crate::geofence`]).

use fleetflow_runtime::checkpoint::{Blob, Hub};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size at which a snapshot's chunk is complete and the next one begins: a snapshot of
/// hundreds of MB is never one buffer that grows (each growth copies it, stalling the
/// worker for tens of ms).
#[cfg(not(test))]
pub(crate) const SNAPSHOT_CHUNK: usize = 1 << 20;
#[cfg(test)]
pub(crate) const SNAPSHOT_CHUNK: usize = 512;

/// How long one invocation of an operator spends writing a snapshot, at most (about):
/// the rest waits for the next invocation, so a checkpoint of many vehicles does not hold
/// up the fixes behind it. A fix waits for several invocations on its way (its epoch's
/// frontier, the exchange, the output's progress), each of which may carry a slice, so
/// the slice is short (`benches/kafka.rs` measures what it costs the read -> visible
/// latency).
pub const SNAPSHOT_SLICE: Duration = Duration::from_millis(1);

/// The least time from the end of one slice to the start of the next: a snapshot takes at
/// most a fifth of its worker while fixes flow, so that a large checkpoint does not starve
/// the broker and the API next to the job.
pub const SNAPSHOT_PAUSE: Duration = Duration::from_millis(4);

/// A snapshot being encoded with `postcard`, as chunks of about [`SNAPSHOT_CHUNK`].
pub(crate) struct SnapshotBody {
    /// The chunks complete so far, in order.
    done: Vec<bytes::Bytes>,
    /// The chunk being written.
    body: Vec<u8>,
}

impl SnapshotBody {
    pub(crate) fn new() -> SnapshotBody {
        SnapshotBody {
            done: Vec::new(),
            body: Self::chunk(),
        }
    }

    /// An empty chunk, with room for the item that fills it past [`SNAPSHOT_CHUNK`].
    fn chunk() -> Vec<u8> {
        Vec::with_capacity(SNAPSHOT_CHUNK * 9 / 8)
    }

    /// Appends bytes encoded already.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
        self.roll();
    }

    /// Appends `value`, encoded.
    pub(crate) fn put<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        self.body = postcard::to_extend(value, std::mem::take(&mut self.body))
            .expect("snapshot state encodes");
        self.roll();
    }

    /// Completes the chunk being written once it is full.
    fn roll(&mut self) {
        if self.body.len() >= SNAPSHOT_CHUNK {
            let full = std::mem::replace(&mut self.body, Self::chunk());
            self.done.push(full.into());
        }
    }

    /// The whole snapshot.
    pub(crate) fn finish(mut self) -> Blob {
        self.done.push(self.body.into());
        Blob::from_chunks(self.done)
    }
}

/// A snapshot's pass over the slots that existed when it began.
pub(crate) struct Pass {
    /// The slots below this existed.
    upto: u32,
    /// The next slot the pass looks at.
    cursor: u32,
}

impl Pass {
    /// A pass over the slots below `upto`.
    pub(crate) fn new(upto: u32) -> Pass {
        Pass { upto, cursor: 0 }
    }

    /// The next slot, if any is left.
    pub(crate) fn next(&mut self) -> Option<u32> {
        (self.cursor < self.upto).then(|| {
            self.cursor += 1;
            self.cursor - 1
        })
    }

    /// Whether `slot` existed when the snapshot began.
    pub(crate) fn covers(&self, slot: u32) -> bool {
        slot < self.upto
    }

    /// How many slots the pass has looked at.
    #[cfg(test)]
    pub(crate) fn cursor(&self) -> u32 {
        self.cursor
    }
}

/// Goes on with the pass of `state`'s snapshot for about `budget` (`None`: to its end);
/// whether it reached the end. A snapshot written by slot writes each item once, copy on
/// write: `next` moves the pass over the slots on (`None` once none is left), `save` writes
/// the item in a slot unless it is written already or newer than the snapshot (the state
/// also calls it for every item about to change).
pub(crate) fn write_slots<S>(
    state: &mut S,
    next: impl Fn(&mut S) -> Option<u32>,
    save: impl Fn(&mut S, u32),
    budget: Option<Duration>,
) -> bool {
    let started = Instant::now();
    while let Some(slot) = next(state) {
        save(state, slot);
        if budget.is_some_and(|b| slot % 16 == 15 && started.elapsed() >= b) {
            return false;
        }
    }
    true
}

/// State whose snapshot is written a slice at a time.
pub trait Sliced {
    /// Writes the snapshot begun last for about `budget` (`None`: all of what is left).
    /// Once it is complete: the snapshot.
    fn continue_snapshot(&mut self, budget: Option<Duration>) -> Option<Blob>;
}

/// Writes an operator's snapshots a slice at a time and offers each to the hub once
/// complete.
pub struct SnapshotWriter {
    pub(crate) hub: Option<Arc<Hub>>,
    op: &'static str,
    worker: usize,
    /// The range of the snapshot being written.
    writing: Option<(u64, u64)>,
    /// When the next slice may be written ([`SNAPSHOT_PAUSE`] after the last one ended).
    pub(crate) next_slice: Instant,
}

impl SnapshotWriter {
    /// A writer of participant `op`'s snapshots on `worker` (none without a hub).
    pub fn new(hub: Option<Arc<Hub>>, op: &'static str, worker: usize) -> SnapshotWriter {
        SnapshotWriter {
            hub,
            op,
            worker,
            writing: None,
            next_slice: Instant::now(),
        }
    }

    /// Whether snapshots are taken at all (there is a hub).
    pub fn enabled(&self) -> bool {
        self.hub.is_some()
    }

    /// Begins the snapshot for `range` with `begin` (which begins it on `state` as it is
    /// now), after finishing the one being written.
    pub fn begin<S: Sliced>(
        &mut self,
        state: &mut S,
        range: (u64, u64),
        begin: impl FnOnce(&mut S),
    ) {
        if self.hub.is_none() {
            return;
        }
        self.step(state, None, Instant::now());
        begin(state);
        self.writing = Some(range);
    }

    /// Writes for about `budget` (`None`: to the end, at once), a slice only once
    /// [`SNAPSHOT_PAUSE`] has passed since the last one (`now`: the time it is); offers
    /// the snapshot once written. How long until the next slice is due (`None`: nothing is
    /// left to write).
    pub fn step<S: Sliced>(
        &mut self,
        state: &mut S,
        budget: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        let (Some(hub), Some(_)) = (&self.hub, &self.writing) else {
            return None;
        };
        if budget.is_some() && self.next_slice > now {
            return Some(self.next_slice - now);
        }
        let Some(blob) = state.continue_snapshot(budget) else {
            self.next_slice = Instant::now() + SNAPSHOT_PAUSE;
            return Some(SNAPSHOT_PAUSE);
        };
        let (lo, hi) = self.writing.take().expect("checked");
        hub.offer(self.op, self.worker, lo, hi, blob);
        None
    }
}

/// Tests of snapshots written while the state changes: `next(n)`, a number below `n` from
/// a sequence that `seed` decides (xorshift).
#[cfg(test)]
pub(crate) fn below(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed | 1;
    move |n| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    }
}
