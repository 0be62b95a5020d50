//! Snapshots written a slice at a time while the state goes on changing.
//!
//! An operator whose state is large (a worker's vehicles) begins a snapshot at a
//! checkpoint cut and writes it over later invocations, a short slice each, so that the
//! fixes behind the cut are not held up. Its state is copied on write: an item about to
//! change is written first, so what is written is the state when the snapshot began.
//! `SnapshotBody` is the encoded snapshot, in chunks; [`SnapshotWriter`] paces the slices
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

/// A snapshot being encoded with `postcard`, as chunks of about [`SNAPSHOT_CHUNK`], each
/// compressed (Snappy's framing format) once complete.
///
/// A snapshot is held in memory from the cut until its checkpoint commits, and most of a
/// worker's is its vehicles' pending fixes with their raw payloads (JSON, about 2.7 KB a
/// vehicle with the default lateness): compressed, it takes about a third of that. The
/// chunks' frame streams concatenate into one stream; [`decode`] reads it.
pub(crate) struct SnapshotBody {
    /// The chunks complete so far, compressed, in order.
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

    /// Completes the chunk being written, compressed (its buffer is written again).
    fn complete(&mut self) {
        self.done.push(compress(&self.body));
        self.body.clear();
    }

    /// Completes the chunk being written once it is full.
    fn roll(&mut self) {
        if self.body.len() >= SNAPSHOT_CHUNK {
            self.complete();
        }
    }

    /// Appends a part encoded and compressed before (the chunk being written completes
    /// first): its chunks are shared, not copied.
    pub(crate) fn append(&mut self, part: &Frozen) {
        if !self.body.is_empty() {
            self.complete();
        }
        self.done.extend(part.0.iter().cloned());
    }

    /// Every chunk, the last one completed (an empty snapshot is one empty stream).
    fn into_chunks(mut self) -> Vec<bytes::Bytes> {
        if !self.body.is_empty() || self.done.is_empty() {
            self.complete();
        }
        self.done
    }

    /// The whole snapshot.
    pub(crate) fn finish(self) -> Blob {
        Blob::from_chunks(self.into_chunks())
    }

    /// What was put, kept to be [appended](SnapshotBody::append) to later snapshots.
    pub(crate) fn freeze(self) -> Frozen {
        Frozen(self.into_chunks())
    }
}

/// A part of snapshots that rarely changes (the geofences in force), encoded and
/// compressed once and shared by every snapshot that holds it until it changes.
#[derive(Clone, Debug)]
pub(crate) struct Frozen(Vec<bytes::Bytes>);

/// `chunk` as a Snappy frame stream.
fn compress(chunk: &[u8]) -> bytes::Bytes {
    use std::io::Write;
    let mut w = snap::write::FrameEncoder::new(Vec::with_capacity(chunk.len() / 2 + 64));
    w.write_all(chunk).expect("compressing into memory");
    w.into_inner().expect("compressing into memory").into()
}

/// The snappy framing format's stream identifier, which every compressed snapshot starts
/// with.
const FRAMED: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// Decodes a snapshot written by a [`SnapshotWriter`]: compressed (this version), or as
/// plain `postcard` (checkpoints of versions before it, which never start with the
/// compressed stream's identifier).
pub fn decode<T: serde::de::DeserializeOwned>(blob: &[u8]) -> Result<T, SnapshotError> {
    if blob.starts_with(FRAMED) {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut snap::read::FrameDecoder::new(blob), &mut plain)
            .map_err(SnapshotError::Decompress)?;
        postcard::from_bytes(&plain).map_err(SnapshotError::Decode)
    } else {
        postcard::from_bytes(blob).map_err(SnapshotError::Decode)
    }
}

/// A snapshot that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Its compressed stream is damaged.
    #[error("decompressing: {0}")]
    Decompress(std::io::Error),
    /// Its content is not the state of this version.
    #[error("decoding: {0}")]
    Decode(postcard::Error),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Items like a pending fix: some numbers and a JSON payload.
    fn items(n: usize) -> Vec<(u64, f64, String)> {
        (0..n)
            .map(|i| {
                let payload = format!(
                    r#"{{"vehicle_id":"veh-{:05}","ts":"2025-01-06T06:{:02}:00Z","lat":41.1{i},"lon":-8.6{i},"speed_kmh":{}}}"#,
                    i % 977,
                    i % 60,
                    i % 90
                );
                (i as u64, i as f64 * 0.5, payload)
            })
            .collect()
    }

    #[test]
    fn a_frozen_part_is_shared_by_the_snapshots_it_is_appended_to() {
        let all = items(300);
        let mut part = SnapshotBody::new();
        part.put(&(all.len() as u64));
        for item in &all {
            part.put(item);
        }
        let part = part.freeze();
        assert!(part.0.len() > 1, "several chunks");
        let snapshot = |head: u32, tail: &str| {
            let mut body = SnapshotBody::new();
            body.put(&head);
            body.append(&part);
            body.put(tail);
            body.finish()
        };
        let (a, b) = (snapshot(1, "one"), snapshot(2, "two"));
        for (blob, head, tail) in [(&a, 1, "one"), (&b, 2, "two")] {
            let back: (u32, Vec<(u64, f64, String)>, String) = decode(&blob.contiguous()).unwrap();
            assert_eq!(back, (head, all.clone(), tail.to_string()));
        }
        // The part's chunks are the same memory in both.
        let shared = |blob: &Blob| blob.chunks().iter().map(|c| c.as_ptr()).collect::<Vec<_>>();
        let (sa, sb) = (shared(&a), shared(&b));
        assert!(part
            .0
            .iter()
            .all(|c| sa.contains(&c.as_ptr()) && sb.contains(&c.as_ptr())));
    }

    #[test]
    fn a_snapshot_of_many_chunks_is_compressed_and_decodes_to_what_was_put() {
        let all = items(400);
        let mut body = SnapshotBody::new();
        body.extend(&postcard::to_stdvec(&7u32).unwrap());
        body.put(&(all.len() as u64));
        for item in &all {
            body.put(item);
        }
        let blob = body.finish();
        assert!(blob.chunks().len() > 1, "several chunks");
        assert!(blob.chunks().iter().all(|c| c.starts_with(FRAMED)));
        let plain = postcard::to_stdvec(&(7u32, all.clone())).unwrap();
        assert!(
            blob.len() * 2 < plain.len(),
            "compressed: {} bytes against {}",
            blob.len(),
            plain.len()
        );
        // Written as a u32, then a length and items: a tuple of the u32 and a Vec reads it.
        let back: (u32, Vec<(u64, f64, String)>) = decode(&blob.contiguous()).unwrap();
        assert_eq!(back, (7, all));
    }

    #[test]
    fn a_plain_snapshot_of_an_earlier_version_still_decodes_and_damage_is_an_error() {
        let all = items(20);
        let plain = postcard::to_stdvec(&all).unwrap();
        let back: Vec<(u64, f64, String)> = decode(&plain).unwrap();
        assert_eq!(back, all);

        let mut body = SnapshotBody::new();
        body.put(&all);
        let mut bytes = body.finish().contiguous().into_owned();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let e = decode::<Vec<(u64, f64, String)>>(&bytes).unwrap_err();
        assert!(matches!(e, SnapshotError::Decompress(_)), "{e}");
    }
}
