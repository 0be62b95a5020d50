//! Cluster mode: one job over several processes, connected by timely's own networking.
//!
//! Every process runs the same job spec with `--processes P --process-index I --hosts FILE`
//! and `workers` threads; timely connects them into one computation of `P × workers`
//! workers. What is specific to a cluster:
//!
//! - **Sources** split their inputs (files, Kafka partitions, generator partitions) over
//!   every worker of every process, by global worker index.
//! - **Checkpoints**: process 0 runs the only coordinator. The other processes' operators
//!   offer their pieces to a relay [`Hub`]; [`render_checkpoint_transport`] carries them to
//!   worker 0 through a dataflow of their own and carries every committed boundary back,
//!   so one commit covers the work of every process, atomically.
//! - **The lake**: every worker stages its own files under names carrying its global index;
//!   process 0 recovers the lake and cleans its staging area before the cluster connects,
//!   so no process's new files can be taken for leftovers.
//! - **The API**: vehicle state and geofence results are mirrored to every process
//!   ([`fleetflow_dataflows::cluster::mirror`]), so any process answers for all of them.
//!   Geofence changes are taken by process 0 (it numbers them); the others answer 421.
//!
//! ```text
//!   process 1, 2, …: operators ─offer─► relay ─"Checkpoint: pieces"─► worker 0 ─► Hub ─► Coordinator
//!                                  ▲                                                      │
//!                                  └──────────── "Checkpoint: committed" (broadcast) ◄────┘
//! ```

use fleetflow_runtime::checkpoint::{Hub, Offered, FINAL};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;

/// This process's place in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This process's index, `0..hosts.len()`.
    pub index: usize,
    /// Every process's `host:port`, in process order.
    pub hosts: Vec<String>,
}

/// Why cluster arguments are wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    /// The hosts file cannot be read.
    #[error("--hosts: cannot read {path}: {message}")]
    Hosts {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A line of the hosts file is not `host:port`.
    #[error("--hosts: {path} line {line}: {text:?} is not host:port")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// The flags disagree with each other or with the file.
    #[error("{0}")]
    Flags(String),
}

impl ClusterSpec {
    /// The cluster of the command-line flags; `None` when they describe one process.
    /// `--hosts` lists one `host:port` a line (blank lines and `#` comments are skipped).
    pub fn from_flags(
        processes: Option<usize>,
        index: Option<usize>,
        hosts: Option<&Path>,
    ) -> Result<Option<ClusterSpec>, ClusterError> {
        let processes = processes.unwrap_or(1);
        if processes == 0 {
            return Err(ClusterError::Flags(
                "--processes: must be at least 1".into(),
            ));
        }
        if processes == 1 && hosts.is_none() {
            return match index {
                None | Some(0) => Ok(None),
                Some(i) => Err(ClusterError::Flags(format!(
                    "--process-index: {i} is out of range for 1 process"
                ))),
            };
        }
        let Some(path) = hosts else {
            return Err(ClusterError::Flags(
                "--hosts: required with --processes above 1 (one host:port a line)".into(),
            ));
        };
        let Some(index) = index else {
            return Err(ClusterError::Flags(
                "--process-index: required in a cluster".into(),
            ));
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Hosts {
            path: name.clone(),
            message: e.to_string(),
        })?;
        let hosts = parse_hosts(&text, &name)?;
        if hosts.len() != processes {
            return Err(ClusterError::Flags(format!(
                "--processes: {processes}, but {name} lists {} hosts",
                hosts.len()
            )));
        }
        if index >= processes {
            return Err(ClusterError::Flags(format!(
                "--process-index: {index} is out of range for {processes} processes"
            )));
        }
        Ok(Some(ClusterSpec { index, hosts }))
    }

    /// Processes in the cluster.
    pub fn processes(&self) -> usize {
        self.hosts.len()
    }
}

/// The `host:port` lines of a hosts file.
/// The timely configuration of `workers` threads in this process: one process alone, or
/// this process of `cluster`.
pub fn timely_config(cluster: Option<&ClusterSpec>, workers: usize) -> timely::Config {
    match cluster {
        Some(c) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: c.index,
                addresses: c.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
        None => timely::Config::process(workers),
    }
}

pub fn parse_hosts(text: &str, path: &str) -> Result<Vec<String>, ClusterError> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let ok = line
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(ClusterError::Line {
                path: path.to_string(),
                line: i + 1,
                text: line.to_string(),
            });
        }
        hosts.push(line.to_string());
    }
    Ok(hosts)
}

type Out<D> = OutputBuilder<u64, CapacityContainerBuilder<Vec<D>>>;

/// Makes this process stop at once, with one line and exit code 1, when it loses another
/// process of the cluster. Timely's network threads panic then, and the panic spreads to
/// the workers; nothing this process would do afterwards can complete, since the
/// computation spans every process. The cluster resumes from the lake's last checkpoint
/// when its processes are started again. Other panics keep the default report.
pub fn stop_when_a_process_is_lost(process: usize) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let lost = [
            "timely communication error",
            "MergeQueue poisoned",
            "thread panic",
        ]
        .iter()
        .any(|m| message.contains(m));
        if lost {
            eprintln!(
                "error: process {process} lost its connection to the cluster ({message}); \
                 stopping: restart every process to resume from the last checkpoint"
            );
            std::process::exit(1);
        }
        default(info);
    }));
}

/// How often the transport looks for new pieces and commits.
const POLL: Duration = Duration::from_millis(10);

/// The first message of every relay worker: the commit it resumed from (in `lo`).
const RESUMED: &str = "resumed-from";

/// Renders the checkpoint transport on this worker (see the module docs): a dataflow of
/// its own, so that it never holds back the job's frontier. `hub` is process 0's hub or
/// another process's relay; `ops` is the number of participants per worker. It ends when
/// this worker's participants have all offered their final pieces (on a relay) and every
/// participant's final piece reached the hub (on worker 0), or when a hub records a failure.
///
/// `resumed` is the sequence number of the commit this process resumed from (0: none).
/// Every process must resume from the same one; a process that read an older commit (while
/// a process of the previous run was still committing) would repeat or lose rows, so
/// worker 0 checks each relay's first message and stops the whole cluster on a mismatch,
/// before any piece of that process can be committed.
pub fn render_checkpoint_transport(
    worker: &mut timely::worker::Worker,
    hub: Arc<Hub>,
    ops: usize,
    resumed: u64,
) {
    let me = worker.index();
    worker.dataflow::<u64, _, _>(move |scope| {
        // A relay's pieces, to worker 0.
        let mut builder = OperatorBuilder::new("Checkpoint: pieces out".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address);
        let (out, pieces) = builder.new_output::<Vec<Offered>>();
        let mut out: Out<Offered> = OutputBuilder::from(out);
        let relay = hub.clone();
        builder.build(move |caps| {
            let mut cap = if relay.is_relay() {
                caps.into_iter().next()
            } else {
                None
            };
            let mut finals = 0;
            let mut hello = Some(Offered {
                op: RESUMED.into(),
                worker: me,
                lo: resumed,
                hi: 0,
                blob: Default::default(),
            });
            move |_frontiers| {
                let Some(held) = cap.as_ref() else { return };
                if let Some(h) = hello.take() {
                    out.activate().session(held).give(h);
                }
                let offered = relay.take_offered(me);
                finals += offered.iter().filter(|o| o.hi == FINAL).count();
                if !offered.is_empty() {
                    out.activate().session(held).give_iterator(offered.into_iter());
                }
                if finals >= ops || relay.failure().is_some() {
                    cap = None;
                } else {
                    activator.activate_after(POLL);
                }
            }
        });
        let mut builder = OperatorBuilder::new("Checkpoint: pieces in".to_owned(), scope);
        let mut input = builder.new_input(pieces, Exchange::new(|_: &Offered| 0));
        let receiver = hub.clone();
        builder.build(move |_caps| {
            move |_frontiers| {
                input.for_each(|_cap, data| {
                    for o in data.drain(..) {
                        if o.op != RESUMED {
                            receiver.offer(&o.op, o.worker, o.lo, o.hi, o.blob);
                        } else if o.lo != resumed {
                            // No commit can include this worker's pieces yet: stop here,
                            // and the other processes lose their connection and stop too.
                            tracing::error!(
                                "worker {} resumed from commit {}, process 0 from commit {resumed}: \
                                 a process of the previous run was still committing; restart \
                                 every process of the cluster",
                                o.worker,
                                o.lo
                            );
                            std::process::exit(1);
                        }
                    }
                });
            }
        });

        // Committed boundaries, from worker 0 to every relay.
        let mut builder = OperatorBuilder::new("Checkpoint: committed".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address);
        let (out, committed) = builder.new_output::<Vec<u64>>();
        let mut out: Out<u64> = OutputBuilder::from(out);
        let source = hub.clone();
        builder.build(move |caps| {
            let mut cap = if me == 0 && !source.is_relay() {
                caps.into_iter().next()
            } else {
                None
            };
            let mut sent = source.committed();
            move |_frontiers| {
                let Some(held) = cap.as_ref() else { return };
                let now = source.committed();
                if now > sent {
                    sent = now;
                    out.activate().session(held).give(now);
                }
                if source.all_final() || source.failure().is_some() {
                    cap = None;
                } else {
                    activator.activate_after(POLL);
                }
            }
        });
        let mut builder = OperatorBuilder::new("Checkpoint: committed in".to_owned(), scope);
        let mut input = builder.new_input(committed.broadcast(), Pipeline);
        let relay = hub;
        builder.build(move |_caps| {
            move |_frontiers| {
                input.for_each(|_cap, data| {
                    for b in data.drain(..) {
                        if relay.is_relay() {
                            relay.set_committed(b);
                        }
                    }
                });
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_and_flags() {
        assert_eq!(
            parse_hosts("# cluster\n10.0.0.1:2101\n\n  host-b:2101  # b\n", "h").unwrap(),
            vec!["10.0.0.1:2101", "host-b:2101"]
        );
        let e = parse_hosts("a:1\nnot-an-address\n", "h").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--hosts: h line 2: \"not-an-address\" is not host:port"
        );
        assert_eq!(ClusterSpec::from_flags(None, None, None), Ok(None));
        assert!(ClusterSpec::from_flags(Some(3), Some(0), None)
            .unwrap_err()
            .to_string()
            .starts_with("--hosts: required"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1:1\n127.0.0.1:2\n").unwrap();
        let two = ClusterSpec::from_flags(Some(2), Some(1), Some(&file))
            .unwrap()
            .unwrap();
        assert_eq!((two.index, two.processes()), (1, 2));
        assert!(ClusterSpec::from_flags(Some(3), Some(1), Some(&file))
            .unwrap_err()
            .to_string()
            .contains("lists 2 hosts"));
        assert!(ClusterSpec::from_flags(Some(2), Some(2), Some(&file))
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(ClusterSpec::from_flags(Some(2), None, Some(&file))
            .unwrap_err()
            .to_string()
            .starts_with("--process-index"));
    }
}
