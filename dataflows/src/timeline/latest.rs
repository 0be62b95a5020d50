//! A vehicle's latest fix: the newest provisionally accepted one, which its state shows
//! before its fixes are final. The record names it by its time; the fix itself is the
//! last final fix or a pending one.

use super::Vehicle;
use crate::segments::chain_step;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::IncomingFix;
use fleetflow_types::time::Millis;
use std::collections::VecDeque;

impl Vehicle {
    /// Re-runs the implausible-jump chain from the last final fix over the pending fixes.
    pub(super) fn recompute_latest(&mut self) {
        let mut last: Option<(&Fix, Option<f64>)> = self.anchor.as_ref().map(|(f, k)| (f, *k));
        for p in &self.pending {
            match last {
                Some((a, _)) => {
                    if let Some(kmh) = chain_step(a, &p.fix) {
                        last = Some((&p.fix, Some(kmh)));
                    }
                }
                None => last = Some((&p.fix, None)),
            }
        }
        self.latest = last.map(|(f, k)| (f.ts, k));
    }
}

/// The fix a vehicle's `latest` names, with its implied speed: its newest pending fix
/// (usually), its last final one, or another pending one. Pending fixes have distinct
/// times, and the latest fix is never older than the last final one.
pub(super) fn find_latest<'a>(
    anchor: &'a Option<(Fix, Option<f64>)>,
    pending: &'a VecDeque<IncomingFix>,
    latest: Option<(Millis, Option<f64>)>,
) -> Option<(&'a Fix, Option<f64>)> {
    let (ts, kmh) = latest?;
    if let Some(p) = pending.back().filter(|p| p.fix.ts == ts) {
        return Some((&p.fix, kmh));
    }
    if let Some((a, _)) = anchor.as_ref().filter(|(a, _)| a.ts == ts) {
        return Some((a, kmh));
    }
    let at = pending.partition_point(|p| p.fix.ts < ts);
    let found = pending.get(at).filter(|p| p.fix.ts == ts);
    debug_assert!(
        found.is_some(),
        "the latest fix is the last final or a pending one"
    );
    found.map(|p| (&p.fix, kmh))
}
