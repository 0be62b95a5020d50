//! Reading a lake's Delta tables with the readers analysts use.

/// Asserts that the two Delta readers analysts use, DuckDB's `delta_scan` and the
/// `deltalake` package, read the same rows from every table of `lake` (each directory with
/// a `_delta_log`, in name order; `lake` a path or an
/// `s3://` URL, with the S3 server's `host:port`), that no table has a checkpoint committed
/// twice, that each table's `txn` version for `job` is its newest checkpoint, and that its
/// files' statistics count its rows and bound `vehicle_id` and the time column. Returns
/// each table's row count.
pub fn assert_delta_readers_agree(s3: Option<&str>, lake: &str, job: &str) -> Vec<(String, i64)> {
    let script = r#"
import duckdb, json, os, sys, deltalake
import duckdb_extension_delta
lake, job, endpoint = sys.argv[1], sys.argv[2], os.environ.get("FLEETFLOW_TEST_S3")
con = duckdb.connect(config={"autoinstall_known_extensions": False})
con.execute("SET enable_progress_bar = false")
con.execute(f"LOAD '{os.path.join(os.path.dirname(duckdb_extension_delta.__file__), 'extensions', 'v' + duckdb.__version__, 'delta.duckdb_extension')}'")
options = None
if endpoint:
    import duckdb_extension_httpfs
    con.execute(f"LOAD '{os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), 'extensions', 'v' + duckdb.__version__, 'httpfs.duckdb_extension')}'")
    con.execute(f"CREATE SECRET (TYPE s3, KEY_ID 'test', SECRET 'test', REGION 'us-east-1', "
                f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)")
    options = {"AWS_ENDPOINT_URL": f"http://{endpoint}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
out = []
if endpoint:
    names = sorted({r[0].split("/")[-3] for r in con.execute(f"select file from glob('{lake}/*/_delta_log/*.json')").fetchall()})
else:
    names = sorted(d for d in os.listdir(lake) if os.path.isdir(os.path.join(lake, d, "_delta_log")))
for name in names:
    uri = f"{lake}/{name}"
    table = deltalake.DeltaTable(uri, storage_options=options)
    rows = table.to_pyarrow_table()
    con.register("by_package", rows)
    scan = f"(select * from delta_scan('{uri}'))"
    cols = ", ".join(f'"{c}"' for c in rows.column_names)
    n_scan, n_pkg, missing, extra = con.execute(
        f"select (select count(*) from {scan}), (select count(*) from by_package), "
        f"(select count(*) from (select {cols} from {scan} except all select {cols} from by_package)), "
        f"(select count(*) from (select {cols} from by_package except all select {cols} from {scan}))").fetchone()
    assert (n_scan, missing, extra) == (n_pkg, 0, 0), (name, n_scan, n_pkg, missing, extra)
    # Per-file statistics: row counts that add up, and bounds of vehicle_id and the time
    # column for every file, so readers can skip files.
    import pyarrow as pa
    adds = pa.table(table.get_add_actions(flatten=True))
    assert sum(adds.column("num_records").to_pylist()) == n_scan, (name, "numRecords")
    time = {"raw": "ts", "geofence_events": "ts", "dead_letter": "received_at"}.get(name, "window_start")
    for col in (["vehicle_id"] if "vehicle_id" in rows.column_names else []) + [time]:
        lo, hi = adds.column(f"min.{col}").to_pylist(), adds.column(f"max.{col}").to_pylist()
        assert all(a is not None and b is not None and a <= b for a, b in zip(lo, hi)), (name, col, lo, hi)
    checkpoints = [h["fleetflow.checkpoint"] for h in table.history() if "fleetflow.checkpoint" in h]
    assert len(checkpoints) == len(set(checkpoints)), (name, "a checkpoint committed twice", checkpoints)
    assert max(checkpoints, default=None) == table.transaction_version(job), (name, checkpoints)
    out.append([name, n_scan])
print(json.dumps(out))
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(lake).arg(job);
    if let Some(e) = s3 {
        cmd.env("FLEETFLOW_TEST_S3", e);
    }
    let out = cmd.output().expect("python3 with duckdb and deltalake");
    assert!(
        out.status.success(),
        "Delta readers disagree on {lake}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answer is the last line (a library may print before it).
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

/// The data files of table `dataset` of the lake at `lake` in its newest version, as read
/// by the `deltalake` package, relative to the table's directory.
pub fn table_files(lake: &std::path::Path, dataset: &str) -> std::collections::BTreeSet<String> {
    let script = r#"
import deltalake, json, os, sys, urllib.parse
root = os.path.realpath(sys.argv[1])
def local(u):
    u = urllib.parse.unquote(u)
    return os.path.relpath(os.path.realpath(u[len("file://"):] if u.startswith("file://") else u), root)
print(json.dumps([local(u) for u in deltalake.DeltaTable(root).file_uris()]))
"#;
    let table = lake.join(dataset);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&table)
        .output()
        .expect("python3 with deltalake");
    assert!(
        out.status.success(),
        "reading {}: {}",
        table.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

/// Data files in the store under a dataset's directory of a local lake, relative to it.
pub fn stored_files(lake: &std::path::Path, dataset: &str) -> std::collections::BTreeSet<String> {
    let root = lake.join(dataset);
    super::files_under(&root)
        .into_iter()
        .filter(|f| !f.starts_with(root.join("_delta_log")))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}
