//! Conflated live streams (`conflate_ms=`): a client that wants the picture rather than
//! every step (a map of a large fleet) gets each vehicle's latest state once per interval,
//! so what it must parse follows the fleet's size, not its fix rate.
//!
//! Within an interval a vehicle change replaces the vehicle's change held before it;
//! geofence events are all kept. At the end of the interval everything held goes out in
//! log order. Resuming stays exact: a change a client never got was replaced by a later
//! change of the same vehicle, which follows any id the client got before it.

use crate::changes::{Change, ChangeBody};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The changes a conflated stream holds until its interval ends.
#[derive(Debug)]
pub(crate) struct Conflate {
    every: Duration,
    next: Instant,
    held: BTreeMap<u64, Arc<Change>>,
    /// Vehicle id -> the sequence number of its change held.
    of_vehicle: HashMap<fleetflow_types::CompactString, u64, ahash::RandomState>,
}

impl Conflate {
    /// Holds changes for `every` at a time.
    pub(crate) fn new(every: Duration) -> Conflate {
        Conflate {
            every,
            next: Instant::now() + every,
            held: BTreeMap::new(),
            of_vehicle: HashMap::default(),
        }
    }

    /// Holds `c`, replacing the change held for its vehicle (vehicle changes only).
    pub(crate) fn hold(&mut self, c: Arc<Change>) {
        if let ChangeBody::Vehicle { state, .. } = &c.body {
            if let Some(old) = self.of_vehicle.insert(state.fix.vehicle_id.clone(), c.seq) {
                self.held.remove(&old);
            }
        }
        self.held.insert(c.seq, c);
    }

    /// When the interval ends, if anything is held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (!self.held.is_empty()).then_some(self.next)
    }

    /// Everything held, in log order, once the interval has ended (and the next begins).
    pub(crate) fn take_due(&mut self) -> Vec<Arc<Change>> {
        let now = Instant::now();
        if now < self.next {
            return Vec::new();
        }
        self.next = now + self.every;
        self.of_vehicle.clear();
        std::mem::take(&mut self.held).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::ChangeLog;
    use fleetflow_types::fix::Fix;
    use fleetflow_types::records::{Status, VehicleState};

    #[test]
    fn each_vehicle_goes_out_once_per_interval_in_log_order_and_events_all() {
        let log = ChangeLog::new(100, 1);
        let vehicle = |id: &str, ts| ChangeBody::Vehicle {
            state: Arc::new(VehicleState::new(
                Fix::at(id, "t", ts, 52.0, 13.0),
                Status::Moving,
            )),
            removed: false,
        };
        let event = |v: &str| {
            ChangeBody::GeofenceEvent(
                serde_json::from_value(serde_json::json!({
                "geofence_id": "g", "vehicle_id": v, "tenant": "t", "kind": "enter",
                "ts": 1, "cause": "fix"}))
                .unwrap(),
            )
        };
        {
            let mut w = log.write();
            for body in [
                vehicle("a", 1),
                vehicle("b", 1),
                event("a"),
                vehicle("a", 2),
                event("b"),
            ] {
                w.push(body, None);
            }
        }
        let mut c = Conflate::new(Duration::from_millis(200));
        for ch in log.read().after(0, 100).unwrap() {
            c.hold(ch);
        }
        assert!(c.take_due().is_empty(), "the interval has not ended");
        std::thread::sleep(Duration::from_millis(200));
        let out: Vec<u64> = c.take_due().iter().map(|ch| ch.seq).collect();
        // b (2), the two events (3, 5) and a's later state (4); a's first state (1) is
        // replaced by it.
        assert_eq!(out, [2, 3, 4, 5]);
        assert_eq!(c.deadline(), None, "nothing held after");
    }
}
