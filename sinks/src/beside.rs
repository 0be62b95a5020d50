//! A worker's encoder thread: the work on its files that need not hold the worker
//! (encoding rows into Parquet, closing files) runs there, in the order the worker hands
//! it over. The queue is bounded, so a worker that produces rows faster than they are
//! encoded waits instead of buffering without limit.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, SyncSender};

/// Jobs waiting at most; a job holds at most one batch of rows.
const QUEUE: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The sending end of one encoder thread; the thread ends when every clone is gone and
/// its queue is empty.
#[derive(Clone)]
pub(crate) struct Beside(SyncSender<Job>);

impl Beside {
    /// Starts the thread (if it cannot be started, jobs run on the caller).
    pub(crate) fn start() -> Beside {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let started = std::thread::Builder::new()
            .name("fleetflow-encode".into())
            .spawn(move || {
                for job in rx {
                    // A job reports its own failures; a panic is one more, and the
                    // jobs behind it still run.
                    if catch_unwind(AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a lake encoding job panicked");
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no encoder thread: lake files are encoded on the worker");
        }
        Beside(tx)
    }

    /// Queues `job` behind every job queued before it, waiting while the queue is full.
    pub(crate) fn run(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(e) = self.0.send(Box::new(job)) {
            // No thread (it never ends while a sender lives, so it never started): run it
            // here.
            (e.0)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn jobs_run_in_order_off_the_caller_and_survive_a_panic() {
        let beside = Beside::start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let seen = seen.clone();
            beside.run(move || {
                if i == 50 {
                    panic!("job 50");
                }
                seen.lock().unwrap().push((i, std::thread::current().id()));
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        beside.run(move || tx.send(()).unwrap());
        rx.recv().unwrap();
        let seen = seen.lock().unwrap();
        let order: Vec<i32> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (0..100).filter(|i| *i != 50).collect::<Vec<_>>());
        assert!(seen.iter().all(|(_, t)| *t != std::thread::current().id()));
    }
}
