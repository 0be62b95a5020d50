//! The machinery every stage of a running job shares: checkpoint collection and metrics.
//!
//! It sits between [`fleetflow_types`] (plain records and the job spec, no machinery) and
//! the crates that run a job (sources, dataflows, sinks, the query API), which depend on it
//! rather than on each other.
//!
//! - [`checkpoint`]: snapshots aligned on epoch boundaries, collected for the lake's
//!   checkpoints (the hub every participant offers its state to).
//! - [`metrics`]: the counters every stage updates and `/metrics` exposes.
//! - [`background_priority`]: for threads that work beside the workers.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod metrics;

/// Lowers the calling thread's CPU priority (nice 10), for work beside the workers (merging
/// a partition's staged chunks, committing a checkpoint): it takes the CPU the workers
/// leave, so on a busy machine it runs longer rather than delaying the fixes behind it. (A
/// merge reads and writes a partition's 100+ MB; at full priority it was seen stalling
/// both workers of a 2-core machine for hundreds of ms.) Linux only; elsewhere nothing.
/// Failing to is no reason to stop: callers log it.
pub fn background_priority() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10)?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's nice value, from `/proc`.
    fn nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_background_thread_runs_at_nice_10_and_leaves_the_others_alone() {
        let before = nice();
        let inside = std::thread::spawn(|| {
            super::background_priority().unwrap();
            nice()
        })
        .join()
        .unwrap();
        // Nice values stop at 19 (a test run under `nice` starts higher).
        assert_eq!(inside, (before + 10).min(19));
        assert_eq!(nice(), before, "only the calling thread");
    }
}
