//! Offering a batch of fixes with each vehicle's state fetched into the cache ahead of
//! its use.
//!
//! Fixes of ten thousand vehicles arrive interleaved, so consecutive fixes belong to
//! different vehicles and each one's state (its entry in the map of vehicles, its record,
//! its pending fixes) is most likely not in the cache: one offer waits for several memory
//! loads in a row. A batch is therefore offered in two passes. The first looks up every
//! fix's vehicle (a short loop whose independent lookups the CPU overlaps); the second
//! offers the fixes in order, asking the CPU ([`crate::prefetch`]) to load the record of
//! the vehicle a few fixes ahead and, once that is in, its oldest pending fix (read whole
//! when it becomes final) and where the next one is appended. The loads then overlap with
//! the work on the fixes before them. The results are exactly those of offering the
//! fixes one by one.
//!
//! What is fetched was measured (`docs/benchmarks.md`): fetching every line of the record
//! and of the open windows as well was slower than these few lines.

use super::{Outputs, Timelines, Vehicle};
use crate::prefetch;
use fleetflow_types::records::IncomingFix;

impl Timelines {
    /// Takes in a batch of fixes in the order they arrived: the same as offering each in
    /// turn.
    pub fn offer_batch(&mut self, batch: Vec<IncomingFix>, out: &mut Outputs) {
        // Vehicles first seen in the batch take their slots in arrival order, as one by
        // one: nothing a new vehicle starts with changes within a batch.
        let slots: Vec<u32> = batch
            .iter()
            .map(|inc| self.slot(&inc.fix.vehicle_id))
            .collect();
        prefetch::in_order(
            self,
            &slots,
            batch,
            |t, s| fetch_record(&t.vehicles[s as usize]),
            |t, s| fetch_queues(&t.vehicles[s as usize]),
            |t, s, inc| t.offer_at(s, inc, out),
        );
    }
}

/// Asks for the lines of the vehicle's record that every offer reads first.
fn fetch_record(v: &Vehicle) {
    prefetch::line(&v.clock);
    prefetch::line(&v.pending);
    prefetch::line(&v.latest);
    prefetch::line(&v.anchor);
    prefetch::line(&v.windows);
}

/// Asks for the vehicle's oldest pending fix (every line of it: about 200 bytes, by
/// fields no more than a line apart), the line after its newest (where the next fix is
/// appended) and its first open window.
fn fetch_queues(v: &Vehicle) {
    if let Some(p) = v.pending.front() {
        prefetch::line(&p.fix.speed_kmh);
        prefetch::line(&p.fix.odometer_km);
        prefetch::line(&p.fix.ts);
        prefetch::line(&p.position);
        prefetch::line(&p.replayed);
    }
    if let Some(p) = v.pending.back() {
        prefetch::line(&p.replayed);
    }
    if let Some(w) = v.windows.first() {
        prefetch::line(w);
    }
}
