//! `fleetflow`: run, validate and feed stream-processing jobs over vehicle telemetry.
//!
//! Exit codes: 0 success, 2 bad arguments or job spec, 1 runtime failure. Errors are one
//! line on stderr.

use clap::{Parser, Subcommand};
use fleetflow::job::{run_job, JobError, RunOptions};
use fleetflow_connectors::generator::Generator;
use fleetflow_connectors::source::{Polled, Source};
use fleetflow_types::config::{GeneratorOrder, GeneratorSpec, JobSpec, SpecError};
use fleetflow_types::time::{HumanDuration, SignedDuration};
use std::io::Write;
use std::process::ExitCode;

/// jemalloc: the job allocates and frees many multi-megabyte buffers (Parquet parts, read
/// chunks) from several threads; glibc's malloc keeps such memory in per-thread arenas and
/// peak RSS then drifts up with the length of the run. jemalloc returns it. It is built with
/// one arena per CPU (`percpu_arena`, in `.cargo/config.toml`), so that the job's
/// short-lived threads reuse what others freed; `_RJEM_MALLOC_CONF` overrides that.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "fleetflow",
    version,
    about = "Incremental stream processing of vehicle telemetry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job.
    Run {
        /// The job spec.
        job: std::path::PathBuf,
        /// Timely worker threads (overrides `workers`).
        #[arg(long)]
        workers: Option<usize>,
        /// API address (overrides `[api].listen`).
        #[arg(long)]
        listen: Option<String>,
        /// With a file source: keep the API up after the input is done, until interrupted.
        #[arg(long)]
        serve: bool,
        /// Processes in the timely cluster.
        #[arg(long)]
        processes: Option<usize>,
        /// This process's index in the cluster.
        #[arg(long)]
        process_index: Option<usize>,
        /// File of `host:port` lines, one per process.
        #[arg(long)]
        hosts: Option<std::path::PathBuf>,
    },
    /// Print the statements that expose the job's lake to Athena (Glue DDL with partition
    /// projection) or DuckDB (views).
    Ddl {
        /// The job spec.
        job: std::path::PathBuf,
        /// `athena` or `duckdb`.
        #[arg(long, value_enum)]
        dialect: DdlDialect,
    },
    /// Delete the files a job's Delta tables removed (compaction, retention) longer ago
    /// than the vacuum grace period; the job does this as it runs, this is for a lake
    /// whose job has stopped.
    Vacuum {
        /// The job spec.
        job: std::path::PathBuf,
        /// Grace period (default: the spec's `[lake] vacuum_grace`); `0s` deletes every
        /// removed file.
        #[arg(long)]
        grace: Option<HumanDuration>,
    },
    /// Check a job spec.
    Validate {
        /// The job spec.
        job: std::path::PathBuf,
    },
    /// Write deterministic synthetic events in the input format.
    Generate {
        /// Number of vehicles.
        #[arg(long)]
        vehicles: u32,
        /// Event-time span, e.g. 10m.
        #[arg(long)]
        duration: HumanDuration,
        /// Interval between a vehicle's fixes.
        #[arg(long, default_value = "5s")]
        interval: HumanDuration,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Event time of the first fix (RFC 3339).
        #[arg(long)]
        start: Option<String>,
        /// Output NDJSON file (with --files N: a directory of N files).
        #[arg(long, required_unless_present = "kafka")]
        out: Option<std::path::PathBuf>,
        /// Split the fleet over this many files (vehicle i goes to file i mod N).
        #[arg(long, default_value_t = 1)]
        files: u32,
        /// Kafka bootstrap servers.
        #[arg(long, requires = "topic")]
        kafka: Option<String>,
        /// Kafka topic.
        #[arg(long)]
        topic: Option<String>,
        /// Events per second.
        #[arg(long)]
        rate: Option<u64>,
        /// Greatest arrival displacement, e.g. 10s.
        #[arg(long)]
        disorder: Option<HumanDuration>,
        /// Fraction of fixes sent twice.
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Fraction of extra junk lines.
        #[arg(long, default_value_t = 0.0)]
        bad_lines: f64,
        /// Trouble: the clocks of the first --skewed trackers are off by this, e.g. 1h
        /// (local time sent as UTC) or -1d.
        #[arg(long, allow_hyphen_values = true)]
        clock_skew: Option<SignedDuration>,
        /// How many trackers have the skewed clock.
        #[arg(long, default_value_t = 1)]
        skewed: u32,
        /// Trouble: the last --outages vehicles lose coverage for this long, e.g. 40m, and
        /// then upload what they recorded, oldest first (store and forward).
        #[arg(long)]
        outage: Option<HumanDuration>,
        /// How many vehicles have an outage.
        #[arg(long, default_value_t = 1)]
        outages: u32,
        /// When the outage begins, after --start.
        #[arg(long, default_value = "10m")]
        outage_start: HumanDuration,
        /// Order of the output: time (as a fleet reports) or vehicle (every fix of one
        /// vehicle, then the next: a CSV export).
        #[arg(long, default_value = "time")]
        order: GeneratorOrder,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DdlDialect {
    Athena,
    Duckdb,
}

fn ddl(spec: &JobSpec, dialect: DdlDialect) -> Result<String, Failure> {
    use fleetflow_sinks::catalogue::Catalogue;
    use fleetflow_sinks::ddl::{statement, Dialect};
    let url = spec.lake.url.trim_end_matches('/');
    let local = url.strip_prefix("file://").map(|dir| {
        std::path::absolute(dir)
            .unwrap_or_else(|_| std::path::PathBuf::from(dir))
            .display()
            .to_string()
    });
    let location = local.clone().unwrap_or_else(|| url.to_owned());
    let dialect = match dialect {
        DdlDialect::Athena => {
            if local.is_some() {
                eprintln!("note: Athena reads S3; this lake is a local directory");
            }
            Dialect::Athena
        }
        DdlDialect::Duckdb => Dialect::DuckDb,
    };
    let mut out = String::new();
    for d in Catalogue::for_lake(&spec.lake).iter() {
        let missing = dialect == Dialect::DuckDb
            && local.as_ref().is_some_and(|dir| {
                !std::path::Path::new(dir)
                    .join(&d.name)
                    .join("_delta_log")
                    .is_dir()
            });
        if missing {
            // DuckDB cannot create a view over a table that does not exist; the job creates
            // every table at its first commit.
            out.push_str(&format!(
                "-- \"{}\": no table yet; run `fleetflow ddl` again once the job has committed\n",
                d.name
            ));
        } else {
            out.push_str(&statement(dialect, &spec.name, &location, d));
        }
    }
    Ok(out)
}

fn vacuum(spec: &JobSpec, grace: HumanDuration) -> Result<(), Failure> {
    use fleetflow_sinks::{catalogue::Catalogue, delta::DeltaTables, lake::Lake};
    let fail = |e: &dyn std::fmt::Display| Failure::Runtime(format!("vacuum: {e}"));
    let lake = Lake::open(&spec.lake.url, &spec.lake.s3)
        .map_err(|e| Failure::Usage(format!("lake.url: {e}")))?;
    let tables = DeltaTables::new(&lake, Catalogue::for_lake(&spec.lake), &spec.name)
        .map_err(|e| Failure::Usage(format!("lake.url: {e}")))?
        .with_vacuum_grace(grace.0);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| fail(&e))?;
    for (table, deleted) in runtime
        .block_on(tables.vacuum_all())
        .map_err(|e| fail(&e))?
    {
        println!("{table}: {deleted} files deleted");
    }
    Ok(())
}

enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<JobError> for Failure {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Spec(s) => Failure::Usage(s.to_string()),
            JobError::Runtime(e) => Failure::Runtime(format!("{e:#}")),
        }
    }
}

fn load(path: &std::path::Path) -> Result<(JobSpec, String), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let spec = JobSpec::parse(&text)
        .map_err(|e: SpecError| Failure::Usage(format!("{}: {e}", path.display())))?;
    Ok((spec, text))
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Ddl { job, dialect } => {
            let (spec, _) = load(&job)?;
            print!("{}", ddl(&spec, dialect)?);
            Ok(())
        }
        Command::Vacuum { job, grace } => {
            let (spec, _) = load(&job)?;
            vacuum(&spec, grace.unwrap_or(spec.lake.vacuum_grace))
        }
        Command::Validate { job } => {
            let (spec, text) = load(&job)?;
            spec.check_paths(&text)
                .map_err(|e| Failure::Usage(format!("{}: {e}", job.display())))?;
            println!("{}: ok", job.display());
            Ok(())
        }
        Command::Run {
            job,
            workers,
            listen,
            serve,
            processes,
            process_index,
            hosts,
        } => {
            let cluster =
                fleetflow::ClusterSpec::from_flags(processes, process_index, hosts.as_deref())
                    .map_err(|e| Failure::Usage(e.to_string()))?;
            if workers == Some(0) {
                return Err(Failure::Usage("--workers: must be at least 1".into()));
            }
            if let Some(l) = &listen {
                if l.parse::<std::net::SocketAddr>().is_err() {
                    return Err(Failure::Usage(format!(
                        "--listen: not a socket address: {l:?}"
                    )));
                }
            }
            let (spec, text) = load(&job)?;
            let opts = RunOptions {
                workers,
                listen: listen.map(Some),
                serve,
                // One bar per terminal: in a cluster, process 0's.
                progress: cluster.as_ref().is_none_or(|c| c.index == 0),
                cluster,
                ..Default::default()
            };
            let result = run_job(&spec, &text, opts).map_err(|e| match Failure::from(e) {
                Failure::Usage(m) => Failure::Usage(format!("{}: {m}", job.display())),
                f => f,
            })?;
            eprint!("{}", result.summary);
            // The process ends here: its memory goes with it, without freeing the views
            // piece by piece first.
            std::mem::forget(result);
            Ok(())
        }
        Command::Generate {
            vehicles,
            duration,
            interval,
            seed,
            start,
            out,
            files,
            kafka,
            topic,
            rate,
            disorder,
            duplicates,
            bad_lines,
            clock_skew,
            skewed,
            outage,
            outages,
            outage_start,
            order,
        } => {
            if vehicles == 0 {
                return Err(Failure::Usage("--vehicles: must be at least 1".into()));
            }
            for (name, v) in [("--duplicates", duplicates), ("--bad-lines", bad_lines)] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(Failure::Usage(format!(
                        "{name}: must be a fraction between 0 and 1, got {v}"
                    )));
                }
            }
            if outage.is_some_and(|o| o.millis() == 0) {
                return Err(Failure::Usage("--outage: must be longer than 0s".into()));
            }
            let start = start.unwrap_or_else(fleetflow_types::config::default_start);
            if fleetflow_types::time::parse_rfc3339(&start).is_none() {
                return Err(Failure::Usage(format!(
                    "--start: invalid RFC 3339 timestamp {start:?}"
                )));
            }
            let spec = GeneratorSpec {
                vehicles,
                interval,
                seed,
                rate,
                duration: Some(duration),
                start,
                disorder,
                duplicates,
                bad_lines,
                clock_skew,
                skewed,
                outage,
                outages,
                outage_start,
                order,
                ..GeneratorSpec::default()
            };
            if files == 0 || files > vehicles {
                return Err(Failure::Usage(format!(
                    "--files: must be between 1 and --vehicles ({vehicles}), got {files}"
                )));
            }
            let expected = (duration.millis() / interval.millis().max(1)) as u64 * vehicles as u64;
            if let (Some(brokers), Some(topic)) = (kafka, topic) {
                // The generator in its own order (one partition), paced by the producer.
                let mut generator = Generator::new(
                    &GeneratorSpec {
                        rate: None,
                        ..spec.clone()
                    },
                    0,
                    1,
                );
                let mut buf: std::collections::VecDeque<(Option<String>, Vec<u8>)> =
                    Default::default();
                let mut finished = false;
                let events = std::iter::from_fn(move || {
                    while buf.is_empty() && !finished {
                        match generator.poll(0, 8192, &mut |line, _, _| {
                            let key =
                                fleetflow_connectors::intake::decode(line, i64::MAX / 2, None)
                                    .ok()
                                    .map(|f| f.vehicle_id.to_string());
                            buf.push_back((key, line.to_vec()));
                            true
                        }) {
                            Ok(Polled::Finished) | Err(_) => finished = true,
                            _ => {}
                        }
                    }
                    buf.pop_front()
                });
                let bar = indicatif::ProgressBar::new(expected);
                let started = std::time::Instant::now();
                let n = fleetflow_connectors::kafka::produce_events(
                    &brokers,
                    &topic,
                    rate,
                    events,
                    |n| bar.set_position(n),
                )
                .map_err(|e| Failure::Runtime(e.to_string()))?;
                bar.finish_and_clear();
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "produced {n} events to {topic} on {brokers} in {secs:.2}s ({:.0} events/s achieved)",
                    n as f64 / secs.max(1e-9)
                );
                return Ok(());
            }
            let out = out.expect("clap requires --out without --kafka");
            let paths: Vec<std::path::PathBuf> = if files == 1 {
                vec![out.clone()]
            } else {
                std::fs::create_dir_all(&out)
                    .map_err(|e| Failure::Runtime(format!("{}: {e}", out.display())))?;
                (0..files)
                    .map(|i| out.join(format!("part-{i:03}.ndjson")))
                    .collect()
            };
            let bar = indicatif::ProgressBar::new(expected);
            let started = std::time::Instant::now();
            let mut n = 0u64;
            for (i, path) in paths.iter().enumerate() {
                let file = std::fs::File::create(path)
                    .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
                let mut generator = Generator::new(&spec, i as u32, files);
                let mut err = None;
                loop {
                    let polled = generator
                        .poll(0, 8192, &mut |line, _, _| {
                            if err.is_none() {
                                if let Err(e) = w.write_all(line).and_then(|_| w.write_all(b"\n")) {
                                    err = Some(e);
                                }
                            }
                            n += 1;
                            true
                        })
                        .map_err(|e| Failure::Runtime(e.to_string()))?;
                    bar.set_position(n);
                    match polled {
                        Polled::Finished => break,
                        Polled::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
                        Polled::Data(_) => {}
                    }
                }
                if let Some(e) = err {
                    return Err(Failure::Runtime(format!("{}: {e}", path.display())));
                }
                w.flush()
                    .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
            }
            bar.finish_and_clear();
            let path = out;
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "wrote {n} events to {} in {secs:.2}s ({:.0} events/s)",
                path.display(),
                n as f64 / secs.max(1e-9)
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,fleetflow=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}
