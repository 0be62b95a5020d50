//! The machinery every stage of a running job shares: checkpoint collection and metrics.
//!
//! It sits between [`fleetflow_types`] (plain records and the job spec, no machinery) and
//! the crates that run a job (sources, dataflows, sinks, the query API), which depend on it
//! rather than on each other.
//!
//! - [`checkpoint`]: snapshots aligned on epoch boundaries, collected for the lake's
//!   checkpoints (the hub every participant offers its state to).
//! - [`metrics`]: the counters every stage updates and `/metrics` exposes.
//! - [`background_priority`]: for threads that work beside the workers ([`COMMIT_NICE`],
//!   [`MERGE_NICE`]).
#![deny(missing_docs)]

pub mod checkpoint;
pub mod metrics;

/// The checkpoint coordinator's nice value: below the workers, above the merges (it writes
/// the state and the commit record the next checkpoint waits for).
pub const COMMIT_NICE: i32 = 10;

/// A merge thread's nice value: the lowest. Nothing waits for a merge but the publication
/// of its file at a later checkpoint, so it takes only the CPU nothing else wants (at nice
/// 10 its work after each checkpoint still showed as 85-200 ms tails of the API's latency
/// on a 2-core machine shared with a broker).
pub const MERGE_NICE: i32 = 19;

/// Sets the calling thread's CPU priority to `nice` (see [`COMMIT_NICE`], [`MERGE_NICE`]),
/// for work beside the workers: it takes the CPU the workers leave, so on a busy machine it
/// runs longer rather than delaying the fixes behind it. (A merge reads and writes a
/// partition's 100+ MB; at full priority it was seen stalling both workers of a 2-core
/// machine for hundreds of ms.) Linux only; elsewhere nothing. Failing to is no reason to
/// stop: callers log it.
pub fn background_priority(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)?;
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
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
    fn a_background_thread_runs_at_its_nice_value_and_leaves_the_others_alone() {
        let before = nice();
        for want in [super::COMMIT_NICE, super::MERGE_NICE] {
            let inside = std::thread::spawn(move || {
                // Lowering a nice value needs a privilege: a test run under a higher one
                // (`nice -n 15 cargo test`) may not.
                super::background_priority(want).map(|()| nice()).ok()
            })
            .join()
            .unwrap();
            match inside {
                Some(n) => assert_eq!(n, i64::from(want)),
                None => assert!(before > i64::from(want), "refused at nice {before}"),
            }
        }
        assert_eq!(nice(), before, "only the calling thread");
    }
}
