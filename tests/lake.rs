//! The lake's file sizing, compaction of closed partitions and retention, in the files and
//! in the Delta tables' logs.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Files per partition directory of a dataset (its Delta log aside).
fn partitions(lake: &Path, dataset: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let root = lake.join(dataset);
    for f in files_under(&root)
        .into_iter()
        .filter(|f| !f.starts_with(root.join("_delta_log")))
    {
        let dir = f.parent().unwrap().strip_prefix(&root).unwrap();
        out.entry(dir.display().to_string())
            .or_default()
            .push(std::fs::metadata(&f).unwrap().len());
    }
    out
}

/// The table's files per partition directory (what its newest version reads; files it
/// removed can still be in the store for the vacuum grace period).
fn table_partitions(lake: &Path, dataset: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in delta::table_files(lake, dataset) {
        let (dir, _) = f.rsplit_once('/').unwrap();
        let size = std::fs::metadata(lake.join(dataset).join(&f))
            .unwrap()
            .len();
        out.entry(dir.to_string()).or_default().push(size);
    }
    out
}

/// The newest commit record.
fn last_commit(lake: &Path) -> serde_json::Value {
    let log = files_under(&lake.join("_fleetflow/log"));
    serde_json::from_slice(&std::fs::read(log.last().unwrap()).unwrap()).unwrap()
}

/// End (epoch ms) of an hour partition `date=YYYY-MM-DD/hour=HH`.
fn hour_end(dir: &str) -> i64 {
    let (d, h) = dir.split_once("/hour=").unwrap();
    let day = fleetflow_types::time::parse_date(d.strip_prefix("date=").unwrap()).unwrap();
    day + (h.parse::<i64>().unwrap() + 1) * 3_600_000
}

fn same_rows(a: &Path, b: &Path, dataset: &str) {
    let read = |l: &Path| format!("(select * from delta_scan('{}/{dataset}'))", l.display());
    let (ra, rb) = (read(a), read(b));
    let r = duckdb(&format!(
        "select (select count(*) from {ra}), (select count(*) from ({ra} except all {rb})), \
         (select count(*) from ({rb} except all {ra}))"
    ));
    assert!(r[0][0].as_i64().unwrap() > 0, "{dataset}: no rows");
    assert_eq!(
        (r[0][1].as_i64(), r[0][2].as_i64()),
        (Some(0), Some(0)),
        "{dataset}"
    );
}

fn generator_spec(lake: &str, rate: u32, lake_extra: &str) -> String {
    format!(
        r#"name = "lowrate"
workers = 2
[source]
kind = "generator"
vehicles = 20
interval = "2s"
duration = "70m"
rate = {rate}
start = "2025-01-06T06:00:00Z"
[lake]
url = "{lake}"
tiers = ["raw", "1m", "1h"]
checkpoint_interval = "100ms"
{lake_extra}
[api]
listen = "127.0.0.1:0"
"#
    )
}

#[test]
fn a_low_rate_run_leaves_few_files_per_closed_partition() {
    let dir = tempfile::tempdir().unwrap();
    // 42,000 events over about 3 s: every partition stays open for many file ages.
    std::fs::write(
        dir.path().join("slow.toml"),
        generator_spec("file://slow", 14_000, r#"max_file_age = "150ms""#),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fast.toml"),
        generator_spec("file://fast", 10_000_000, ""),
    )
    .unwrap();
    let (_, log) = fleetflow_ok(dir.path(), &["run", "slow.toml"]);
    fleetflow_ok(dir.path(), &["run", "fast.toml"]);
    let slow = dir.path().join("slow");
    let published: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("files       "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let clock = last_commit(&slow)["clock"].as_i64().unwrap();
    let mut closed = 0;
    let mut remaining = 0;
    for dataset in ["raw", "1m"] {
        // The default vacuum grace period (an hour) keeps the files compaction removed in
        // the store; the table no longer reads them.
        let (stored, table) = (
            delta::stored_files(&slow, dataset),
            delta::table_files(&slow, dataset),
        );
        assert!(
            table.is_subset(&stored),
            "{dataset}: the table's files exist"
        );
        assert!(
            stored.len() > table.len(),
            "{dataset}: removed files stay for the grace period"
        );
        for (dir, sizes) in table_partitions(&slow, dataset) {
            remaining += sizes.len() as u64;
            if hour_end(&dir) <= clock {
                closed += 1;
                assert!(
                    sizes.len() <= 2,
                    "{dataset}/{dir}: {} files after compaction",
                    sizes.len()
                );
            }
        }
    }
    assert!(closed >= 2, "the run closes partitions");
    assert!(
        published > remaining + 10,
        "many small files were written ({published}) and compacted ({remaining} remain)"
    );
    // Compaction changes files, not rows.
    for dataset in ["raw", "1m", "1h"] {
        same_rows(&slow, &dir.path().join("fast"), dataset);
    }
    // `fleetflow vacuum` with no grace period deletes the files the tables removed, and
    // only those; the rows stay.
    let (out, _) = fleetflow_ok(dir.path(), &["vacuum", "slow.toml", "--grace", "0s"]);
    assert!(
        out.contains("raw: ") && !out.contains("raw: 0 files"),
        "{out}"
    );
    for dataset in ["raw", "1m", "1h"] {
        assert_eq!(
            delta::stored_files(&slow, dataset),
            delta::table_files(&slow, dataset),
            "{dataset}: {out}"
        );
        same_rows(&slow, &dir.path().join("fast"), dataset);
    }
}

#[test]
fn files_roll_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let lines = generated_lines(400, 120, 5, 0.0, 0.0, 3);
    write_lines(&dir.path().join("in.ndjson"), &lines);
    std::fs::write(
        dir.path().join("job.toml"),
        r#"name = "sized"
workers = 1
[source]
kind = "file"
path = "in.ndjson"
[lake]
url = "file://lake"
tiers = ["raw"]
target_file_size = "512KB"
checkpoint_interval = "10s"
[api]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let (_, log) = fleetflow_ok(dir.path(), &["run", "job.toml"]);
    let accepted: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("accepted    "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let parts = partitions(&dir.path().join("lake"), "raw");
    let sizes: Vec<u64> = parts.values().flatten().copied().collect();
    let target = 512 * 1024;
    assert!(
        sizes.iter().filter(|s| **s >= target / 2).count() >= 4,
        "{sizes:?}"
    );
    assert!(sizes.iter().all(|s| *s < 2 * target), "{sizes:?}");
    // Every hour has its rows, nothing twice.
    let n = duckdb(&format!(
        "select count(*) from {}",
        lake_glob(&dir.path().join("lake"), "raw")
    ));
    assert_eq!(n[0][0].as_u64(), Some(accepted));
    assert!(accepted > lines.len() as u64 * 99 / 100);
}

#[test]
fn retention_and_vacuum_delete_exactly_the_expired_partitions_and_replaced_files() {
    let dir = tempfile::tempdir().unwrap();
    // Five hours of data from 2025-01-31T23:40Z.
    let lines = generated_lines(50, 300, 5, 0.0, 0.0, 5);
    write_lines(&dir.path().join("in.ndjson"), &lines);
    let spec = |lake: &str, retention: &str| {
        format!(
            r#"name = "retention"
workers = 2
[source]
kind = "file"
path = "in.ndjson"
[lake]
url = "file://{lake}"
tiers = ["raw", "1m", "1h"]
checkpoint_interval = "50ms"
{retention}
[api]
listen = "127.0.0.1:0"
"#
        )
    };
    std::fs::write(dir.path().join("all.toml"), spec("all", "")).unwrap();
    // No vacuum grace: the store keeps exactly the table's files.
    std::fs::write(
        dir.path().join("kept.toml"),
        spec(
            "kept",
            "retention = { raw = \"2h\", \"1m\" = \"90m\" }\nvacuum_grace = \"0s\"",
        ),
    )
    .unwrap();
    fleetflow_ok(dir.path(), &["run", "all.toml"]);
    fleetflow_ok(dir.path(), &["run", "kept.toml"]);
    let (all, kept) = (dir.path().join("all"), dir.path().join("kept"));
    let commit = last_commit(&kept);
    let clock = commit["clock"].as_i64().unwrap();
    for (dataset, keep_ms) in [("raw", 2 * 3_600_000), ("1m", 90 * 60_000)] {
        let cutoff = clock - keep_ms;
        assert_eq!(
            commit["retention"][dataset].as_i64(),
            Some(cutoff),
            "{commit}"
        );
        let everything: BTreeSet<String> = partitions(&all, dataset).into_keys().collect();
        let expected: BTreeSet<String> = everything
            .iter()
            .filter(|d| hour_end(d) > cutoff)
            .cloned()
            .collect();
        let got: BTreeSet<String> = partitions(&kept, dataset).into_keys().collect();
        assert!(expected.len() < everything.len(), "something expires");
        assert_eq!(got, expected, "{dataset}: cutoff {cutoff}");
        // The table's newest version lists exactly the kept partitions (retention removed
        // the others through the log).
        let listed = duckdb(&format!(
            "select distinct 'date=' || date || '/hour=' || hour from {} order by 1",
            lake_glob(&kept, dataset)
        ));
        let listed: BTreeSet<String> = listed
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, expected, "{dataset}: the Delta table");
        // Vacuum deleted every file the table removed (expired or compacted), and no other.
        assert_eq!(
            delta::stored_files(&kept, dataset),
            delta::table_files(&kept, dataset),
            "{dataset}: the store holds exactly the table's files"
        );
        // The partitions kept hold all their rows.
        let first = expected.iter().next().unwrap().clone();
        let day = first
            .split('/')
            .next()
            .unwrap()
            .trim_start_matches("date=")
            .to_string();
        let hour: i64 = first.split("hour=").nth(1).unwrap().parse().unwrap();
        let filter = format!(
            "where cast(date as varchar) || lpad(cast(hour as varchar), 2, '0') >= '{day}{hour:02}'"
        );
        let q = |l: &Path| {
            format!(
                "(select * exclude (date, hour) from {} {filter})",
                lake_glob(l, dataset)
            )
        };
        let r = duckdb(&format!(
            "select (select count(*) from {a}), (select count(*) from ({a} except all {b})), (select count(*) from ({b} except all {a}))",
            a = q(&all),
            b = q(&kept)
        ));
        assert_eq!(r[0][1].as_i64(), Some(0), "{dataset}: {r:?}");
        assert_eq!(r[0][2].as_i64(), Some(0), "{dataset}: {r:?}");
    }
    delta::assert_delta_readers_agree(None, &kept.display().to_string(), "retention");
    // Tiers without a retention keep everything.
    assert_eq!(
        partitions(&all, "1h").into_keys().collect::<Vec<_>>(),
        partitions(&kept, "1h").into_keys().collect::<Vec<_>>()
    );
}

/// Samples tables `raw` and `1m` of the lake at `argv[1]` with the `deltalake` package until
/// the file `argv[2]` exists, then once more: in every snapshot each row is there once,
/// and each snapshot holds every row of the one before. Prints the versions it read.
const SAMPLER: &str = r#"
import deltalake, json, os, sys, time
lake, done = sys.argv[1], sys.argv[2]
keys = {"raw": "ts", "1m": "window_start"}
seen = {t: set() for t in keys}
versions = {t: [] for t in keys}
last = False
while True:
    finished = os.path.exists(done)
    for table, time_col in keys.items():
        if not os.path.isdir(f"{lake}/{table}/_delta_log"):
            continue
        t = deltalake.DeltaTable(f"{lake}/{table}")
        rows = t.to_pyarrow_table(columns=["vehicle_id", time_col])
        now = set(zip(rows.column(0).to_pylist(), rows.column(1).to_pylist()))
        assert len(now) == rows.num_rows, (table, t.version(), "a row twice", rows.num_rows - len(now))
        lost = seen[table] - now
        assert not lost, (table, t.version(), "rows lost", len(lost))
        seen[table] = now
        versions[table].append(t.version())
    if finished:
        break
    time.sleep(0.02)
print(json.dumps({t: {"versions": v, "rows": len(seen[t])} for t, v in versions.items()}), flush=True)
# Past the interpreter's teardown, which can abort with the package's threads running.
os._exit(0)
"#;

/// The versions of a table's log whose commit removed files, and whether one was a
/// vacuum.
fn removals(lake: &Path, dataset: &str) -> (Vec<u64>, bool) {
    let (mut removing, mut vacuumed) = (Vec::new(), false);
    for f in files_under(&lake.join(dataset).join("_delta_log")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let Some(version) = name
            .strip_suffix(".json")
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        if text.lines().any(|l| l.starts_with(r#"{"remove""#)) {
            removing.push(version);
        }
        vacuumed |= text.contains("VACUUM END");
    }
    removing.sort();
    (removing, vacuumed)
}

#[test]
fn snapshots_read_while_the_job_compacts_and_vacuums_show_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    // 43,200 events of six hours over about 11 s in small files, compacted as each hour's
    // partition closes; removed files are vacuumed 2 s after their commit, while the
    // readers sample.
    let spec = generator_spec(
        "file://sampled",
        4_000,
        "max_file_age = \"150ms\"\nvacuum_grace = \"2s\"",
    )
    .replace(
        "interval = \"2s\"\nduration = \"70m\"",
        "interval = \"10s\"\nduration = \"6h\"",
    );
    assert!(spec.contains("6h"));
    std::fs::write(dir.path().join("sampled.toml"), spec).unwrap();
    let lake = dir.path().join("sampled");
    let done = dir.path().join("done");
    let sampler = std::process::Command::new("python3")
        .args(["-c", SAMPLER])
        .arg(&lake)
        .arg(&done)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with deltalake");
    let job = command(dir.path(), "sampled.toml", &[]).output().unwrap();
    // The sampler stops after one more sample, also when the job failed.
    std::fs::write(&done, "").unwrap();
    let out = sampler.wait_with_output().unwrap();
    assert!(
        job.status.success(),
        "{}",
        String::from_utf8_lossy(&job.stderr)
    );
    assert!(
        out.status.success(),
        "a snapshot showed a row twice or lost one: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    for dataset in ["raw", "1m"] {
        let sampled: Vec<u64> = report[dataset]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let (removing, vacuumed) = removals(&lake, dataset);
        // Compactions happened while the readers sampled, between two versions they read.
        let (first, last) = (sampled[0], *sampled.last().unwrap());
        assert!(
            removing
                .iter()
                .filter(|v| first < **v && **v <= last)
                .count()
                >= 2,
            "{dataset}: compactions {removing:?} within the sampled versions {first}..={last}"
        );
        assert!(vacuumed, "{dataset}: a vacuum ran during the job");
        let distinct: BTreeSet<u64> = sampled.iter().copied().collect();
        assert!(
            distinct.len() >= 5,
            "{dataset}: sampled versions {distinct:?}"
        );
        // The last snapshot is the table's rows.
        let total = duckdb(&format!(
            "select count(*) from {}",
            lake_glob(&lake, dataset)
        ));
        assert_eq!(
            report[dataset]["rows"].as_u64(),
            total[0][0].as_u64(),
            "{dataset}"
        );
    }
    assert!(report["raw"]["rows"].as_u64().unwrap() > 40_000, "{report}");
}
