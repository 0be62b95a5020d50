//! Exactly once through crashes: the job is killed with SIGKILL (and aborted at chosen
//! steps of the checkpoint protocol) many times and restarted each time; the final lake
//! must hold exactly the rows of an uninterrupted run, on a local directory and on S3, read
//! through the Delta tables' logs by DuckDB and by the `deltalake` package, with no
//! checkpoint committed twice to any table.

mod common;

use common::*;

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

/// Two files of generated input and the quickstart's geofences.
fn job_dir(vehicles: u32, minutes: u64) -> tempfile::TempDir {
    generated_job_dir(vehicles, minutes, 2, 11)
}

#[test]
fn sigkill_at_random_points_leaves_exactly_the_rows_of_an_uninterrupted_run() {
    let dir = job_dir(300, 150);
    std::fs::write(dir.path().join("ref.toml"), spec("file://ref", "")).unwrap();
    std::fs::write(
        dir.path().join("crash.toml"),
        spec("file://crash", "vacuum_grace = \"0s\"\n"),
    )
    .unwrap();
    run_to_end(dir.path(), "ref.toml", &[]);
    let killed = run_with_crashes(dir.path(), "crash.toml", &[], 7);
    assert!(
        killed >= 10,
        "only {killed} runs were killed before the end"
    );
    let (a, b) = (dir.path().join("ref"), dir.path().join("crash"));
    assert_same_rows(None, &a.display().to_string(), &b.display().to_string());
    assert_eq!(
        delta::assert_delta_readers_agree(None, &b.display().to_string(), "recovery"),
        delta::assert_delta_readers_agree(None, &a.display().to_string(), "recovery")
    );
    assert!(
        files_under(&b.join("_fleetflow/staging")).is_empty(),
        "{:?}",
        files_under(&b.join("_fleetflow/staging"))
    );
    // Without a vacuum grace period, crashes in compactions and vacuums leave no file the
    // table does not read, and lose none it does.
    for dataset in ["raw", "1m", "1h", "1d"] {
        assert_eq!(
            delta::stored_files(&b, dataset),
            delta::table_files(&b, dataset),
            "{dataset}"
        );
    }
}

#[test]
fn sigkill_in_store_and_forward_bursts_leaves_exactly_the_rows_of_an_uninterrupted_run() {
    use fleetflow_types::config::GeneratorSpec;
    use fleetflow_types::time::HumanDuration;
    // 900 vehicles over 100 minutes; 300 of them lose coverage for 40 minutes from minute
    // 30 and then upload what they recorded all at once, oldest first: a burst of 144,000
    // fixes an hour old, none of them late for its own vehicle. (With a third of that, a
    // fast machine ran the whole job within the kills' window: too few runs were killed.)
    let lines = generated_with(GeneratorSpec {
        vehicles: 900,
        seed: 17,
        duration: Some(HumanDuration::from_millis(100 * 60_000)),
        disorder: Some(HumanDuration::from_millis(10_000)),
        duplicates: 0.01,
        bad_lines: 0.002,
        outage: Some(HumanDuration::from_millis(40 * 60_000)),
        outages: 300,
        outage_start: HumanDuration::from_millis(30 * 60_000),
        ..GeneratorSpec::default()
    });
    let dir = job_dir(1, 1);
    std::fs::remove_dir_all(dir.path().join("in")).unwrap();
    split_by_vehicle(&dir.path().join("in"), &lines, 2);
    std::fs::write(dir.path().join("ref.toml"), spec("file://ref", "")).unwrap();
    std::fs::write(
        dir.path().join("crash.toml"),
        spec("file://crash", "vacuum_grace = \"0s\"\n"),
    )
    .unwrap();
    run_to_end(dir.path(), "ref.toml", &[]);
    let late = duckdb(&format!(
        "select count(*) filter (where reason = 'late'), count(*) from {}",
        lake_glob(&dir.path().join("ref"), "dead_letter")
    ));
    assert_eq!(
        late[0][0].as_i64(),
        Some(0),
        "the burst is not late: {late:?}"
    );
    let killed = run_with_crashes(dir.path(), "crash.toml", &[], 29);
    assert!(
        killed >= 10,
        "only {killed} runs were killed before the end"
    );
    let (a, b) = (dir.path().join("ref"), dir.path().join("crash"));
    assert_same_rows(None, &a.display().to_string(), &b.display().to_string());
    assert!(files_under(&b.join("_fleetflow/staging")).is_empty());
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
        spec("s3://lake/jobs/recovery", "vacuum_grace = \"0s\"\n"),
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
    assert_eq!(
        delta::assert_delta_readers_agree(
            Some(&s3.endpoint),
            "s3://lake/jobs/recovery",
            "recovery"
        ),
        delta::assert_delta_readers_agree(None, &local, "recovery")
    );
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
