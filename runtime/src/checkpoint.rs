//! Consistent snapshots of a running dataflow, aligned on epoch boundaries.
//!
//! Timely times are processing epochs (wall-clock ms). A checkpoint is taken at a
//! *boundary*: a multiple of the checkpoint interval. The snapshot at boundary `B` is the
//! state of every stateful operator after it processed all data with a time below `B` and
//! none at or above it, and the position of every source after everything it emitted
//! below `B`. Because every operator sees the same boundaries in the same time domain,
//! no barrier messages are needed: the timely frontier is the barrier.
//!
//! ```text
//!   operator (per worker)                      hub                       coordinator
//!   processes data in time order;   piece {lo..=hi, blob}   ┌───────────────┐
//!   before data at t crosses a  ───────────────────────────►│ pieces per    │── greatest B covered by
//!   boundary, it snapshots          (valid for every        │ participant   │   every participant:
//!                                    boundary in lo..=hi)    └───────────────┘   write state, commit
//! ```
//!
//! A piece is valid for a *range* of boundaries: when an operator's frontier jumps over
//! several boundaries with no data in between, its state is the same at all of them, and
//! one piece covers them. Each participant's pieces tile the boundaries, so the greatest
//! boundary covered by every participant always has exactly one piece per participant.
//! When the frontier closes (end of input or interrupt), an operator offers a *final*
//! piece that covers every later boundary ([`FINAL`]).

use bytes::Bytes;
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};

/// A participant's serialized state: the concatenation of its chunks. A large state is
/// written a chunk at a time, so that it never has to grow (and be copied) as one buffer;
/// cloning a blob shares its chunks. Blobs are equal when their bytes are, however they are
/// chunked.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Blob(Vec<Bytes>);

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self.len() == other.len() && self.contiguous() == other.contiguous()
    }
}

impl Eq for Blob {}

impl Blob {
    /// The blob made of `chunks`, in order.
    pub fn from_chunks(chunks: Vec<Bytes>) -> Blob {
        Blob(chunks)
    }

    /// Its chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    /// Its bytes in one slice: borrowed when it is one chunk, else copied together.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match self.0.as_slice() {
            [] => Cow::Borrowed(&[]),
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        }
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(vec![Bytes::from(v)])
    }
}

/// `hi` of a final piece: valid for every boundary from its `lo` on.
pub const FINAL: u64 = u64::MAX;

/// Tracks which boundaries an operator has covered with pieces.
#[derive(Clone, Copy, Debug)]
pub struct Cuts {
    every: u64,
    covered: u64,
    closed: bool,
}

impl Cuts {
    /// Boundaries every `every` ms; boundaries up to `covered` are already covered (the
    /// boundary a restored state was taken at, or 0 for a fresh start).
    pub fn new(every: u64, covered: u64) -> Cuts {
        Cuts {
            every: every.max(1),
            covered,
            closed: false,
        }
    }

    fn floor(&self, t: u64) -> u64 {
        t - t % self.every
    }

    /// Before processing data at time `t`: the range of boundaries the current state is
    /// valid for, if `t` lies beyond a boundary not covered yet. The caller snapshots its
    /// state for that range before touching the data.
    pub fn before(&mut self, t: u64) -> Option<(u64, u64)> {
        let b = self.floor(t);
        (!self.closed && b > self.covered).then(|| {
            let lo = self.covered + self.every;
            self.covered = b;
            (lo, b)
        })
    }

    /// After processing every datum below the frontier `f` (`None`: the frontier closed):
    /// the range the state is valid for, if it covers a boundary not covered yet. A closed
    /// frontier gives the final range, once.
    pub fn frontier(&mut self, f: Option<u64>) -> Option<(u64, u64)> {
        match f {
            Some(f) => self.before(f),
            None if !self.closed => {
                self.closed = true;
                let lo = self.covered + self.every;
                self.covered = FINAL;
                Some((lo, FINAL))
            }
            None => None,
        }
    }
}

/// One participant's snapshot, valid for boundaries `lo..=hi`.
#[derive(Clone, Debug)]
pub struct Piece {
    /// First boundary it is valid for.
    pub lo: u64,
    /// Last boundary it is valid for ([`FINAL`]: every later one).
    pub hi: u64,
    /// The serialized state.
    pub blob: Blob,
}

/// A participant: an operator on a worker.
pub type Participant = (String, usize);

#[derive(Default)]
struct HubState {
    pieces: BTreeMap<Participant, VecDeque<Piece>>,
    committed: u64,
    failed: Option<String>,
    /// A relay's pieces, waiting to be carried to the hub of the cluster.
    outbox: Option<Vec<Offered>>,
}

/// A piece as offered by a participant, to be carried to another process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Offered {
    /// The operator.
    pub op: String,
    /// The worker (global index).
    pub worker: usize,
    /// First boundary the piece is valid for.
    pub lo: u64,
    /// Last boundary ([`FINAL`]: every later one).
    pub hi: u64,
    /// The serialized state.
    pub blob: Blob,
}

/// Where operators hand their pieces and the coordinator collects complete checkpoints.
///
/// In a cluster, process 0 holds the hub every participant's pieces reach; the other
/// processes hold a *relay* ([`Hub::relay`]): it keeps what its operators offer until the
/// job carries it to process 0 (through the dataflow), and learns each committed boundary
/// back the same way.
pub struct Hub {
    every: u64,
    state: Mutex<HubState>,
    changed: Condvar,
}

/// A complete checkpoint: one piece per participant, all valid at `boundary`.
#[derive(Debug)]
pub struct Ready {
    /// The boundary (epoch) it is taken at.
    pub boundary: u64,
    /// The pieces, by participant.
    pub pieces: Vec<(Participant, Blob)>,
    /// Whether every participant's frontier has closed (the job is ending).
    pub last: bool,
}

impl Hub {
    /// A hub for boundaries every `every` ms, expecting pieces from `participants`;
    /// `committed` is the boundary of the checkpoint the job resumed from (0 if none).
    pub fn new(every: u64, participants: Vec<Participant>, committed: u64) -> Hub {
        let pieces = participants
            .into_iter()
            .map(|p| (p, VecDeque::new()))
            .collect();
        Hub {
            every: every.max(1),
            state: Mutex::new(HubState {
                pieces,
                committed,
                failed: None,
                outbox: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// A relay for a process of a cluster other than the first: offers are kept for
    /// [`Hub::take_offered`]; nothing is ever ready here.
    pub fn relay(every: u64, committed: u64) -> Hub {
        Hub {
            every: every.max(1),
            state: Mutex::new(HubState {
                pieces: BTreeMap::new(),
                committed,
                failed: None,
                outbox: Some(Vec::new()),
            }),
            changed: Condvar::new(),
        }
    }

    /// Whether this is a relay.
    pub fn is_relay(&self) -> bool {
        self.state.lock().expect("hub lock").outbox.is_some()
    }

    /// A relay's pieces of `worker` offered since the last call, in offer order.
    pub fn take_offered(&self, worker: usize) -> Vec<Offered> {
        let mut s = self.state.lock().expect("hub lock");
        let Some(outbox) = s.outbox.as_mut() else {
            return Vec::new();
        };
        let (mine, rest): (Vec<Offered>, Vec<Offered>) =
            outbox.drain(..).partition(|o| o.worker == worker);
        *outbox = rest;
        mine
    }

    /// Whether every participant has offered its final piece (the job is ending).
    pub fn all_final(&self) -> bool {
        let s = self.state.lock().expect("hub lock");
        s.pieces
            .values()
            .all(|q| q.back().is_some_and(|p| p.hi == FINAL))
    }

    /// The checkpoint interval, ms.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Cuts for a participant resuming at the last committed boundary.
    pub fn cuts(&self) -> Cuts {
        Cuts::new(self.every, self.committed())
    }

    /// Offers a piece of `op` on `worker`.
    pub fn offer(&self, op: &str, worker: usize, lo: u64, hi: u64, blob: impl Into<Blob>) {
        let blob = blob.into();
        let mut s = self.state.lock().expect("hub lock");
        if let Some(outbox) = s.outbox.as_mut() {
            outbox.push(Offered {
                op: op.to_string(),
                worker,
                lo,
                hi,
                blob,
            });
        } else if let Some(q) = s.pieces.get_mut(&(op.to_string(), worker)) {
            q.push_back(Piece { lo, hi, blob });
        } else {
            debug_assert!(false, "unknown participant {op}/{worker}");
        }
        self.changed.notify_all();
    }

    /// The boundary of the last checkpoint committed, or taken to be committed: on the hub
    /// it moves when the coordinator takes a ready checkpoint (so a sink need not list
    /// again the files that checkpoint lists; if its commit fails, the job stops); on a
    /// relay, when the news arrives, which can be several checkpoints later.
    pub fn committed(&self) -> u64 {
        self.state.lock().expect("hub lock").committed
    }

    /// Records that the checkpoint at `boundary` is committed (by the coordinator once its
    /// record is durable; on a relay, as the news arrives).
    pub fn set_committed(&self, boundary: u64) {
        let mut s = self.state.lock().expect("hub lock");
        s.committed = s.committed.max(boundary);
        self.changed.notify_all();
    }

    /// Records that committing failed: the job stops taking checkpoints and reports it.
    pub fn fail(&self, error: String) {
        let mut s = self.state.lock().expect("hub lock");
        s.failed.get_or_insert(error);
        self.changed.notify_all();
    }

    /// The first commit failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().expect("hub lock").failed.clone()
    }

    /// The greatest boundary above the last committed one that every participant covers,
    /// with their pieces; pieces that only cover earlier boundaries are dropped.
    pub fn take_ready(&self) -> Option<Ready> {
        let mut s = self.state.lock().expect("hub lock");
        Self::ready(&mut s)
    }

    /// Like [`Hub::take_ready`], waiting up to `timeout` for one.
    pub fn wait_ready(&self, timeout: std::time::Duration) -> Option<Ready> {
        let s = self.state.lock().expect("hub lock");
        let (mut s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| Self::peek(s).is_none())
            .expect("hub lock");
        Self::ready(&mut s)
    }

    fn peek(s: &HubState) -> Option<(u64, bool)> {
        let mut upto = FINAL;
        let mut lo_max = 0;
        for q in s.pieces.values() {
            let last = q.back()?;
            upto = upto.min(last.hi);
            lo_max = lo_max.max(last.lo);
        }
        let last = upto == FINAL;
        let b = if last { lo_max } else { upto };
        (b > s.committed).then_some((b, last))
    }

    fn ready(s: &mut HubState) -> Option<Ready> {
        let (boundary, last) = Self::peek(s)?;
        let mut pieces = Vec::with_capacity(s.pieces.len());
        for (p, q) in s.pieces.iter_mut() {
            while q.front().is_some_and(|x| x.hi < boundary) {
                q.pop_front();
            }
            let piece = q.front().expect("covered");
            debug_assert!(piece.lo <= boundary && boundary <= piece.hi);
            pieces.push((p.clone(), piece.blob.clone()));
        }
        // The commit moves `committed` on; pieces valid beyond it stay for the next one.
        s.committed = boundary;
        Some(Ready {
            boundary,
            pieces,
            last,
        })
    }
}

/// Crash injection for recovery tests: `FLEETFLOW_FAILPOINT=name:n` aborts the process
/// (as abruptly as `kill -9`: no destructor, no flush) at the `n`-th time the point
/// `name` is reached. Costs one relaxed load when unset.
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::OnceLock;
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("FLEETFLOW_FAILPOINT").ok()?;
        let (n, k) = v.split_once(':')?;
        Some((n.to_string(), k.parse().ok()?))
    });
    if let Some((n, k)) = spec {
        if n == name && HITS.fetch_add(1, Relaxed) + 1 == *k {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_each_boundary_once_and_collapse_jumps() {
        let mut c = Cuts::new(100, 0);
        assert_eq!(c.before(50), None);
        assert_eq!(c.before(99), None);
        assert_eq!(c.before(100), Some((100, 100)));
        assert_eq!(c.before(150), None);
        // A jump over three boundaries without data: one piece.
        assert_eq!(c.frontier(Some(420)), Some((200, 400)));
        assert_eq!(c.before(430), None);
        assert_eq!(c.frontier(None), Some((500, FINAL)));
        assert_eq!(c.frontier(None), None);
        assert_eq!(c.before(10_000), None, "closed");
    }

    #[test]
    fn a_relay_keeps_offers_per_worker_until_taken() {
        let relay = Hub::relay(100, 300);
        assert!(relay.is_relay());
        assert_eq!(
            relay.cuts().before(450),
            Some((400, 400)),
            "resumes after 300"
        );
        relay.offer("a", 2, 100, 100, vec![1]);
        relay.offer("a", 3, 100, 200, vec![2]);
        relay.offer("b", 2, 200, FINAL, vec![3]);
        assert!(relay.take_ready().is_none());
        let two = relay.take_offered(2);
        assert_eq!(
            two.iter()
                .map(|o| (o.op.as_str(), o.hi))
                .collect::<Vec<_>>(),
            vec![("a", 100), ("b", FINAL)]
        );
        assert!(relay.take_offered(2).is_empty());
        assert_eq!(relay.take_offered(3)[0].blob, Blob::from(vec![2]));
        relay.set_committed(200);
        assert_eq!(relay.committed(), 300, "never backwards");
        relay.set_committed(500);
        assert_eq!(relay.committed(), 500);
    }

    #[test]
    fn the_hub_commits_the_greatest_boundary_everyone_covers() {
        let parts = vec![("a".to_string(), 0), ("b".to_string(), 0)];
        let hub = Hub::new(100, parts, 0);
        hub.offer("a", 0, 100, 100, vec![1]);
        hub.offer("a", 0, 200, 300, vec![2]);
        assert!(hub.take_ready().is_none(), "b has nothing yet");
        hub.offer("b", 0, 100, 200, vec![3]);
        let r = hub.take_ready().unwrap();
        assert_eq!(r.boundary, 200);
        assert_eq!(r.pieces[0].1, Blob::from(vec![2]));
        assert_eq!(r.pieces[1].1, Blob::from(vec![3]));
        assert!(!r.last);
        assert!(hub.take_ready().is_none());
        hub.offer("b", 0, 300, FINAL, vec![4]);
        let r = hub.take_ready().unwrap();
        assert_eq!((r.boundary, r.last), (300, false));
        assert_eq!(
            r.pieces[0].1,
            Blob::from(vec![2]),
            "a's piece covers 300 too"
        );
        assert!(!hub.all_final());
        hub.offer("a", 0, 400, FINAL, vec![5]);
        assert!(hub.all_final());
        let r = hub.take_ready().unwrap();
        assert_eq!((r.boundary, r.last), (400, true));
        assert_eq!(
            (r.pieces[0].1.clone(), r.pieces[1].1.clone()),
            (Blob::from(vec![5]), Blob::from(vec![4]))
        );
        assert!(hub.take_ready().is_none());
    }

    #[test]
    fn a_blob_reads_as_its_chunks_together() {
        let b = Blob::from_chunks(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!((b.len(), b.is_empty()), (5, false));
        assert_eq!(&*b.contiguous(), b"abcde");
        assert_eq!(b, Blob::from(b"abcde".to_vec()), "equal by content");
        assert_ne!(b, Blob::from(b"abcdf".to_vec()));
        let one = Blob::from(b"xyz".to_vec());
        assert!(matches!(one.contiguous(), Cow::Borrowed(b"xyz")));
        assert!(Blob::default().is_empty());
        assert_eq!(&*Blob::default().contiguous(), b"");
        let wire = postcard::to_stdvec(&b).unwrap();
        assert_eq!(postcard::from_bytes::<Blob>(&wire).unwrap(), b);
    }
}
