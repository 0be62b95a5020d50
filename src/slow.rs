//! Finding what holds a worker up: with `RUST_LOG=fleetflow::slow=debug`, every operator
//! invocation that keeps its worker busy for longer than [`SLOW`] (or
//! `FLEETFLOW_SLOW_MS` milliseconds) is logged with the operator's name, so a latency tail
//! can be traced to the step that caused it.
//!
//! It reads timely's own scheduling log (start and stop of every operator), which costs
//! nothing unless the target is enabled.

use std::collections::HashMap;
use std::time::Duration;
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// Invocations at least this long are logged, unless `FLEETFLOW_SLOW_MS` says otherwise.
pub const SLOW: Duration = Duration::from_millis(50);

fn threshold() -> Duration {
    std::env::var("FLEETFLOW_SLOW_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(SLOW, Duration::from_millis)
}

/// Registers the scheduling logger on `worker` when `fleetflow::slow` is enabled at debug.
pub fn log_slow_operators(worker: &mut timely::worker::Worker) {
    if !tracing::enabled!(target: "fleetflow::slow", tracing::Level::DEBUG) {
        return;
    }
    let index = worker.index();
    let slow = threshold();
    let mut names: HashMap<usize, String> = HashMap::new();
    // Invocations nest (a region is scheduled around its operators): a stack of starts.
    let mut started: Vec<(usize, Duration)> = Vec::new();
    let Some(mut register) = worker.log_register() else {
        return;
    };
    register.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
        for (at, event) in events.iter().flat_map(|e| e.iter()) {
            match event {
                TimelyEvent::Operates(o) => {
                    names.insert(o.id, o.name.clone());
                }
                TimelyEvent::Schedule(s) => match s.start_stop {
                    StartStop::Start => started.push((s.id, *at)),
                    StartStop::Stop => {
                        if let Some((id, from)) = started.pop() {
                            let took = at.saturating_sub(from);
                            if took >= slow {
                                tracing::debug!(
                                    target: "fleetflow::slow",
                                    worker = index,
                                    operator = names.get(&id).map_or("?", String::as_str),
                                    ms = took.as_millis() as u64,
                                    "slow operator invocation"
                                );
                            }
                        }
                    }
                },
                _ => {}
            }
        }
    });
}
