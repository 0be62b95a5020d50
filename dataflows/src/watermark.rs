//! The job watermark from per-input reports (semantics §1).
//!
//! Every worker applies the same broadcast reports in epoch order, so every worker derives
//! the same watermark for every epoch.

use fleetflow_types::records::{InputReport, InputState};
use fleetflow_types::time::Millis;
use std::collections::BTreeMap;

/// The watermark as derived from the inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// Not every input has produced data yet.
    None,
    /// Every fix with `ts` below this has arrived or will be late.
    At(Millis),
    /// Every input has ended: everything is final.
    End,
}

/// Tracks every input's greatest `ts` and state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WatermarkTracker {
    inputs: BTreeMap<u32, (Option<Millis>, InputState)>,
    lateness: Millis,
}

impl WatermarkTracker {
    /// A tracker for a job with the given allowed lateness (ms).
    pub fn new(lateness: Millis) -> Self {
        WatermarkTracker {
            inputs: BTreeMap::new(),
            lateness,
        }
    }

    /// Applies one report.
    pub fn apply(&mut self, r: &InputReport) {
        self.inputs.insert(r.input, (r.max_ts, r.state));
    }

    /// Greatest `ts` seen on any input.
    pub fn max_ts(&self) -> Option<Millis> {
        self.inputs.values().filter_map(|(m, _)| *m).max()
    }

    /// The watermark: `min` over active inputs of their greatest `ts`, minus the lateness.
    /// Idle and finished inputs do not hold it back; when none is active it follows the
    /// greatest `ts` of the idle ones; when all have finished it is [`Watermark::End`].
    pub fn watermark(&self) -> Watermark {
        if self.inputs.is_empty() {
            return Watermark::None;
        }
        let mut active_min: Option<Millis> = None;
        let mut rest_max: Option<Millis> = None;
        let mut all_finished = true;
        for (max_ts, state) in self.inputs.values() {
            match state {
                InputState::Pending => return Watermark::None,
                InputState::Active => {
                    all_finished = false;
                    let m = max_ts.unwrap_or(Millis::MIN);
                    active_min = Some(active_min.map_or(m, |a| a.min(m)));
                }
                InputState::Idle | InputState::Finished => {
                    all_finished &= *state == InputState::Finished;
                    if let Some(m) = max_ts {
                        rest_max = Some(rest_max.map_or(*m, |r| r.max(*m)));
                    }
                }
            }
        }
        if all_finished {
            return Watermark::End;
        }
        match active_min.or(rest_max) {
            Some(m) => Watermark::At(m.saturating_sub(self.lateness)),
            None => Watermark::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(input: u32, max_ts: Option<Millis>, state: InputState) -> InputReport {
        InputReport {
            input,
            max_ts,
            state,
        }
    }

    #[test]
    fn watermark_is_the_slowest_active_input_minus_lateness() {
        let mut t = WatermarkTracker::new(30);
        assert_eq!(t.watermark(), Watermark::None);
        t.apply(&r(0, None, InputState::Pending));
        t.apply(&r(1, Some(1000), InputState::Active));
        assert_eq!(
            t.watermark(),
            Watermark::None,
            "a pending input holds it back"
        );
        t.apply(&r(0, Some(500), InputState::Active));
        assert_eq!(t.watermark(), Watermark::At(470));
        t.apply(&r(0, Some(500), InputState::Idle));
        assert_eq!(
            t.watermark(),
            Watermark::At(970),
            "idle inputs do not hold it back"
        );
        t.apply(&r(1, Some(1200), InputState::Idle));
        assert_eq!(
            t.watermark(),
            Watermark::At(1170),
            "all idle: follows the newest"
        );
        t.apply(&r(1, Some(1200), InputState::Finished));
        t.apply(&r(0, Some(500), InputState::Finished));
        assert_eq!(t.watermark(), Watermark::End);
        assert_eq!(t.max_ts(), Some(1200));
    }
}
