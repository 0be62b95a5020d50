//! What the inputs report about themselves: whether every one has ended (the end of a
//! bounded input).
//!
//! Event time is not tracked per input: every vehicle is its own clock (see
//! [`crate::timeline`]) and the job clock comes from the vehicles (see [`crate::clock`]).
//! Every worker applies the same broadcast reports in epoch order, so every worker agrees
//! on when the input ended.

use fleetflow_types::records::{InputReport, InputState};
use fleetflow_types::time::Millis;
use std::collections::BTreeMap;

/// Every input's last report.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct InputTracker {
    inputs: BTreeMap<u32, (Option<Millis>, InputState)>,
}

impl InputTracker {
    /// Applies one report. An input that ended stays ended: its last report may reach a
    /// worker before reports it made earlier in the same epoch, should they be reordered.
    pub fn apply(&mut self, r: &InputReport) {
        let entry = self.inputs.entry(r.input).or_insert((r.progress, r.state));
        if entry.1 != InputState::Finished {
            *entry = (r.progress, r.state);
        }
    }

    /// Whether every input reported and has ended.
    pub fn ended(&self) -> bool {
        !self.inputs.is_empty()
            && self
                .inputs
                .values()
                .all(|(_, s)| *s == InputState::Finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(input: u32, progress: Option<Millis>, state: InputState) -> InputReport {
        InputReport {
            input,
            progress,
            state,
        }
    }

    #[test]
    fn the_input_ends_when_every_input_has_ended() {
        let mut t = InputTracker::default();
        assert!(!t.ended(), "nothing reported");
        t.apply(&r(0, None, InputState::Pending));
        t.apply(&r(1, Some(1000), InputState::Active));
        t.apply(&r(0, Some(500), InputState::Idle));
        t.apply(&r(1, Some(1000), InputState::Finished));
        assert!(!t.ended());
        t.apply(&r(0, Some(500), InputState::Finished));
        assert!(t.ended());
        // A report made before the end, applied after it, does not undo it.
        t.apply(&r(1, Some(900), InputState::Active));
        t.apply(&r(0, Some(400), InputState::Active));
        assert!(t.ended());
    }
}
