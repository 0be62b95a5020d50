//! Exactly once through crashes: the job is killed with SIGKILL (and aborted at chosen
//! steps of the checkpoint protocol) many times and restarted each time; the final lake
//! must hold exactly the rows of an uninterrupted run, on a local directory and on S3.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The datasets compared, and the columns that do not depend on when a row was written.
const DATASETS: [(&str, &str); 6] = [
    ("raw", "*"),
    ("1m", "*"),
    ("1h", "*"),
    ("1d", "*"),
    ("geofence_events", "*"),
    ("dead_letter", "* exclude (received_at)"),
];

fn spec(lake_url: &str, extra: &str) -> String {
    format!(
        r#"name = "recovery"
workers = 2

[source]
kind = "file"
path = "in"

[geofences]
path = "fences.geojson"

[lake]
url = "{lake_url}"
target_file_size = "256KB"
max_file_age = "300ms"
checkpoint_interval = "100ms"
{extra}
[api]
listen = "127.0.0.1:0"
"#
    )
}

/// A job directory with generated input (two files, each in its own order with disorder
/// inside the lateness, duplicates and bad lines) and the quickstart's geofences.
fn job_dir(vehicles: u32, minutes: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lines = generated_lines(vehicles, minutes, 10, 0.01, 0.002, 11);
    std::fs::create_dir(dir.path().join("in")).unwrap();
    for k in 0..2 {
        let part: Vec<String> = lines.iter().skip(k).step_by(2).cloned().collect();
        write_lines(&dir.path().join(format!("in/part-{k}.ndjson")), &part);
    }
    let fences = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/geofences/berlin.geojson");
    std::fs::copy(fences, dir.path().join("fences.geojson")).unwrap();
    dir
}

fn command(dir: &Path, job: &str, env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetflow"));
    cmd.args(["run", job])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the job to completion.
fn run_to_end(dir: &Path, job: &str, env: &[(&'static str, String)]) {
    let out = command(dir, job, env).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the job again and again (SIGKILL after a random time, or an abort at a step of
/// the checkpoint protocol), restarting it each time, then lets it finish. Returns the
/// number of runs that were killed.
fn run_with_crashes(dir: &Path, job: &str, env: &[(&'static str, String)], seed: u64) -> usize {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    // Aborts inside the protocol: while a sink stages its files, before and after the
    // commit record is written, between publishing two files.
    let failpoints = [
        "sink-cut:3",
        "commit-before:2",
        "commit-after:2",
        "publish:2",
        "sink-cut:9",
        "commit-after:4",
    ];
    let mut killed = 0;
    for attempt in 0..60 {
        let mut cmd = command(dir, job, env);
        let failpoint = (attempt % 3 == 1).then(|| failpoints[(attempt / 3) % failpoints.len()]);
        if let Some(fp) = failpoint {
            cmd.env("FLEETFLOW_FAILPOINT", fp);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_millis(rng.random_range(80..400));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if failpoint.is_none() && Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match status {
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
            }
            Some(s) if s.success() => return killed,
            Some(_) => {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(err.contains("failpoint"), "the job failed by itself: {err}");
                killed += 1;
            }
        }
        if killed >= 24 {
            break;
        }
    }
    run_to_end(dir, job, env);
    eprintln!("{job}: killed {killed} times, then ran to the end");
    killed
}

/// Asserts that two lakes hold the same multiset of rows in every dataset.
fn assert_same_rows(s3: Option<&str>, a: &str, b: &str) {
    for (dataset, columns) in DATASETS {
        let read = |lake: &str| {
            format!(
                "(select {columns} from read_parquet('{lake}/{dataset}/**/*.parquet', hive_partitioning = false))"
            )
        };
        let (ra, rb) = (read(a), read(b));
        let sql = format!(
            "select (select count(*) from {ra}), (select count(*) from {rb}), \
             (select count(*) from ({ra} except all {rb})), (select count(*) from ({rb} except all {ra}))"
        );
        let r = duckdb_with(s3, "", &sql);
        let n: Vec<i64> = r[0].iter().map(|v| v.as_i64().unwrap()).collect();
        assert!(
            n[0] > 0 || dataset == "dead_letter",
            "{dataset}: empty reference"
        );
        assert_eq!(
            n,
            vec![n[0], n[0], 0, 0],
            "{dataset}: rows (reference, crashed), missing, extra"
        );
    }
}

#[test]
fn sigkill_at_random_points_leaves_exactly_the_rows_of_an_uninterrupted_run() {
    let dir = job_dir(300, 150);
    std::fs::write(dir.path().join("ref.toml"), spec("file://ref", "")).unwrap();
    std::fs::write(dir.path().join("crash.toml"), spec("file://crash", "")).unwrap();
    run_to_end(dir.path(), "ref.toml", &[]);
    let killed = run_with_crashes(dir.path(), "crash.toml", &[], 7);
    assert!(
        killed >= 10,
        "only {killed} runs were killed before the end"
    );
    let (a, b) = (dir.path().join("ref"), dir.path().join("crash"));
    assert_same_rows(None, &a.display().to_string(), &b.display().to_string());
    assert!(
        files_under(&b.join("_fleetflow/staging")).is_empty(),
        "{:?}",
        files_under(&b.join("_fleetflow/staging"))
    );
}

#[test]
fn on_s3_the_lake_survives_sigkill_and_equals_the_local_lake() {
    let s3 = S3Server::start();
    s3.bucket("lake");
    let env = s3.env();
    let dir = job_dir(200, 150);
    std::fs::write(dir.path().join("ref.toml"), spec("file://ref", "")).unwrap();
    std::fs::write(
        dir.path().join("s3.toml"),
        spec("s3://lake/jobs/recovery", ""),
    )
    .unwrap();
    run_to_end(dir.path(), "ref.toml", &[]);
    let killed = run_with_crashes(dir.path(), "s3.toml", &env, 8);
    assert!(
        killed >= 10,
        "only {killed} runs were killed before the end"
    );
    let local = dir.path().join("ref").display().to_string();
    assert_same_rows(Some(&s3.endpoint), &local, "s3://lake/jobs/recovery");
    // Nothing staged is left, no multipart upload is unfinished, and DuckDB reads the
    // tiers with their Hive partitions over S3.
    let staged = duckdb_with(
        Some(&s3.endpoint),
        "",
        "select count(*) from glob('s3://lake/jobs/recovery/_fleetflow/staging/**')",
    );
    assert_eq!(staged[0][0].as_i64(), Some(0), "{staged:?}");
    let (status, body) = http(&s3.endpoint, "GET", "/lake?uploads", None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("<UploadId>"), "{body}");
    let parts = duckdb_with(
        Some(&s3.endpoint),
        "",
        &format!(
            "select count(distinct date), count(*) from {}",
            lake_url_glob("s3://lake/jobs/recovery", "1m")
        ),
    );
    assert!(parts[0][0].as_i64().unwrap() >= 2, "{parts:?}");
}
