//! The change log: every change the views apply, in one order, with an id, kept in a
//! bounded replay buffer that live streams read from and resume in.
//!
//! ```text
//!   worker publishes ─► log.write() ─► view.apply ─► push(change) ─► buffer (last N) ─► notify
//!                                                                         │
//!   stream: snapshot under log.read() (seq X) ─► forwarder reads seq X+1.. ┘─► client queue
//! ```
//!
//! A writer holds the log's write lock while it applies a batch to a view and appends the
//! batch's changes, so a reader holding the read lock sees views and log at the same point:
//! a snapshot taken under it, followed by the changes after its sequence number, misses
//! nothing and repeats nothing.

use bytes::Bytes;
use fleetflow_types::records::{GeofenceEvent, VehicleState};
use fleetflow_types::time::Millis;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What changed.
#[derive(Debug, Clone)]
pub enum ChangeBody {
    /// A vehicle's state is now `state`, or (`removed`) the vehicle with that last state
    /// was removed.
    Vehicle {
        /// The new (or last) state (the allocation the view holds).
        state: std::sync::Arc<VehicleState>,
        /// Whether the vehicle was removed.
        removed: bool,
    },
    /// A geofence event happened.
    GeofenceEvent(GeofenceEvent),
}

/// One change with its place in the log.
#[derive(Debug)]
pub struct Change {
    /// Sequence number: 1, 2, ... in the order changes were applied.
    pub seq: u64,
    /// The job clock the view reflected once the change was applied.
    pub as_of: Option<Millis>,
    /// What changed.
    pub body: ChangeBody,
    json: OnceLock<Bytes>,
}

impl Change {
    /// The topic it belongs to (`vehicles` or `geofence_events`).
    pub fn topic(&self) -> Topic {
        match self.body {
            ChangeBody::Vehicle { .. } => Topic::Vehicles,
            ChangeBody::GeofenceEvent(_) => Topic::GeofenceEvents,
        }
    }

    /// The vehicle it concerns.
    pub fn vehicle(&self) -> &str {
        match &self.body {
            ChangeBody::Vehicle { state, .. } => &state.fix.vehicle_id,
            ChangeBody::GeofenceEvent(e) => &e.vehicle_id,
        }
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &str {
        match &self.body {
            ChangeBody::Vehicle { state, .. } => &state.fix.tenant,
            ChangeBody::GeofenceEvent(e) => &e.tenant,
        }
    }

    /// The message clients get, serialized once for all of them.
    pub fn json(&self, run: u64) -> &Bytes {
        self.json.get_or_init(|| {
            #[derive(Serialize)]
            struct Message<'a> {
                #[serde(rename = "type")]
                kind: &'static str,
                id: String,
                as_of: Option<Millis>,
                #[serde(skip_serializing_if = "Option::is_none")]
                vehicle: Option<&'a VehicleState>,
                #[serde(skip_serializing_if = "Option::is_none")]
                removed: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                event: Option<&'a GeofenceEvent>,
            }
            let id = event_id(run, self.seq);
            let m = match &self.body {
                ChangeBody::Vehicle { state, removed } => Message {
                    kind: "vehicle",
                    id,
                    as_of: self.as_of,
                    vehicle: (!removed).then_some(state),
                    removed: removed.then_some(state.fix.vehicle_id.as_str()),
                    event: None,
                },
                ChangeBody::GeofenceEvent(e) => Message {
                    kind: "geofence_event",
                    id,
                    as_of: self.as_of,
                    vehicle: None,
                    removed: None,
                    event: Some(e),
                },
            };
            Bytes::from(serde_json::to_vec(&m).expect("a change serializes"))
        })
    }
}

/// A stream topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Vehicle state changes.
    Vehicles,
    /// Geofence enter/exit/dwell events.
    GeofenceEvents,
}

impl Topic {
    /// Its name in `topics=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Vehicles => "vehicles",
            Topic::GeofenceEvents => "geofence_events",
        }
    }
}

/// The id a client sees for change `seq` of run `run`: `{run}-{seq}`. The run (the job's
/// start time) tells a resume against an earlier run of the job, whose numbers mean
/// other changes, from a resume in this one.
pub fn event_id(run: u64, seq: u64) -> String {
    format!("{run}-{seq}")
}

/// Parses an id from [`event_id`].
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (run, seq) = id.trim().split_once('-')?;
    Some((run.parse().ok()?, seq.parse().ok()?))
}

/// The log's contents: the newest changes.
#[derive(Debug)]
pub struct Log {
    last: u64,
    buffer: VecDeque<Arc<Change>>,
    capacity: usize,
}

impl Log {
    /// Appends a change; the oldest is dropped beyond the capacity.
    pub fn push(&mut self, body: ChangeBody, as_of: Option<Millis>) {
        self.last += 1;
        if self.buffer.len() == self.capacity {
            self.buffer.pop_front();
        }
        self.buffer.push_back(Arc::new(Change {
            seq: self.last,
            as_of,
            body,
            json: OnceLock::new(),
        }));
    }

    /// The newest sequence number (0 before any change).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The changes after `after`, at most `max`; `Err(oldest)` when some were already
    /// dropped from the buffer.
    pub fn after(&self, after: u64, max: usize) -> Result<Vec<Arc<Change>>, u64> {
        let oldest = self.last + 1 - self.buffer.len() as u64;
        if after + 1 < oldest {
            return Err(oldest);
        }
        let skip = (after + 1 - oldest) as usize;
        Ok(self.buffer.iter().skip(skip).take(max).cloned().collect())
    }
}

/// The change log shared by the views (writers) and the streams (readers).
#[derive(Debug)]
pub struct ChangeLog {
    log: RwLock<Log>,
    notify: tokio::sync::watch::Sender<u64>,
    run: u64,
}

impl ChangeLog {
    /// A log keeping the newest `capacity` changes, for run `run` (the job's start, ms).
    pub fn new(capacity: usize, run: u64) -> Self {
        ChangeLog {
            log: RwLock::new(Log {
                last: 0,
                buffer: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity: capacity.max(1),
            }),
            notify: tokio::sync::watch::Sender::new(0),
            run,
        }
    }

    /// The run id clients see in change ids.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// The write lock: held while a view applies a batch and appends its changes. Hand it
    /// back to [`ChangeLog::publish`].
    pub fn write(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the write lock and wakes the streams if changes were appended.
    pub fn publish(&self, log: RwLockWriteGuard<'_, Log>) {
        let last = log.last;
        drop(log);
        self.notify.send_if_modified(|seen| {
            let changed = *seen != last;
            *seen = last;
            changed
        });
    }

    /// The read lock: views do not change while it is held.
    pub fn read(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that wakes when changes were appended.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: &str) -> ChangeBody {
        ChangeBody::GeofenceEvent(GeofenceEvent {
            geofence_id: "g".into(),
            vehicle_id: v.into(),
            tenant: "t".into(),
            kind: fleetflow_types::records::GeofenceEventKind::Enter,
            ts: 1,
            cause: fleetflow_types::records::GeofenceCause::Fix,
        })
    }

    #[test]
    fn the_buffer_keeps_the_newest_and_says_when_a_resume_is_too_old() {
        let log = ChangeLog::new(3, 7);
        {
            let mut w = log.write();
            for v in ["a", "b", "c", "d", "e"] {
                w.push(event(v), Some(10));
            }
        }
        let r = log.read();
        assert_eq!(r.last(), 5);
        // 3, 4 and 5 are kept: resuming after 2 is possible, after 1 is not.
        let seqs = |v: Vec<Arc<Change>>| v.iter().map(|c| c.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.after(2, 10).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(r.after(3, 1).unwrap()), vec![4]);
        assert_eq!(seqs(r.after(5, 10).unwrap()), Vec::<u64>::new());
        assert_eq!(r.after(1, 10).unwrap_err(), 3);
        assert_eq!(r.after(0, 10).unwrap_err(), 3);
        let c = &r.after(4, 1).unwrap()[0];
        let v: serde_json::Value = serde_json::from_slice(c.json(7)).unwrap();
        assert_eq!(v["id"], "7-5");
        assert_eq!(v["type"], "geofence_event");
        assert_eq!(v["event"]["vehicle_id"], "e");
        assert_eq!(v["as_of"], 10);
        assert_eq!(parse_event_id("7-5"), Some((7, 5)));
        assert_eq!(parse_event_id("75"), None);
        assert_eq!(parse_event_id("x-5"), None);
    }
}
