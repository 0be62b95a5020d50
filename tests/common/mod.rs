//! Shared test helpers: a plain sequential reference of semantics §1-§4, job runners,
//! data converters and DuckDB.
#![allow(dead_code)]

pub mod data;
pub mod delta;
pub mod geofence_reference;
pub mod kafka;
pub mod process;
pub mod reference;

pub use data::*;

use fleetflow::job::{run_job, Captured, RunOptions, RunResult};
use fleetflow_types::config::JobSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a file under `testdata/` (see its README for sources and licences).
pub fn test_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

/// Runs a file job over `input` into `lake`, in process, capturing outputs.
pub fn run_file_job(
    input: &Path,
    lake: &Path,
    workers: usize,
    batch: usize,
    extra: &str,
) -> (RunResult, Captured) {
    let text = format!(
        "name = \"test\"\nworkers = {workers}\n[source]\nkind = \"file\"\npath = {input:?}\n[lake]\nurl = \"file://{}\"\n{extra}",
        lake.display()
    );
    let spec = JobSpec::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let capture = Arc::new(Mutex::new(Captured::default()));
    let opts = RunOptions {
        listen: Some(None),
        batch: Some(batch),
        capture: Some(capture.clone()),
        ..Default::default()
    };
    let result = run_job(&spec, &text, opts).unwrap_or_else(|e| panic!("job failed: {e}"));
    let captured = std::mem::take(&mut *capture.lock().unwrap());
    (result, captured)
}

/// The three input layouts the reference tests run: `(one, shuffled, split)` = the lines in
/// one file, the shuffled lines in one file, and the shuffled lines dealt round-robin to a
/// directory of three files (three inputs).
pub fn write_inputs(
    dir: &Path,
    lines: &[String],
    shuffled: &[String],
) -> (PathBuf, PathBuf, PathBuf) {
    let one = dir.join("one.ndjson");
    write_lines(&one, lines);
    let shuf = dir.join("shuffled.ndjson");
    write_lines(&shuf, shuffled);
    let split = dir.join("split");
    std::fs::create_dir(&split).unwrap();
    for k in 0..3 {
        let part: Vec<String> = shuffled.iter().skip(k).step_by(3).cloned().collect();
        write_lines(&split.join(format!("part-{k}.ndjson")), &part);
    }
    (one, shuf, split)
}

/// A job directory with generated input split over `parts` files under `in/` (each in its
/// own order, with disorder inside the lateness, duplicates and bad lines) and the
/// quickstart's geofences as `fences.geojson`.
pub fn generated_job_dir(
    vehicles: u32,
    minutes: u64,
    parts: usize,
    seed: u64,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lines = generated_lines(vehicles, minutes, 10, 0.01, 0.002, seed);
    std::fs::create_dir(dir.path().join("in")).unwrap();
    for k in 0..parts {
        let part: Vec<String> = lines.iter().skip(k).step_by(parts).cloned().collect();
        write_lines(&dir.path().join(format!("in/part-{k}.ndjson")), &part);
    }
    let fences = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/geofences/berlin.geojson");
    std::fs::copy(fences, dir.path().join("fences.geojson")).unwrap();
    dir
}

/// A free loopback port for a server a test starts (a cluster's process, the S3 server,
/// the broker), taken below Linux's ephemeral range (32768 and up): a port the OS handed
/// out for `:0` and released again could be handed out once more, to another listener on
/// `:0` (a job's API), before the server it was meant for binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Writes `dir/hosts` with `n` free loopback ports for the timely connections of a
/// cluster's processes, and returns its name.
pub fn cluster_hosts(dir: &Path, n: usize) -> String {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(dir.join("hosts"), text).unwrap();
    "hosts".into()
}

/// Runs `fleetflow ARGS` in `dir` to completion, asserts it succeeded, and returns its
/// stdout and stderr.
pub fn fleetflow_ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetflow"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "fleetflow {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Spawns `fleetflow ARGS` in `dir` with the API on a port it logs, and returns the child,
/// the API address and a thread collecting the rest of its stderr.
pub fn spawn_with_api(
    dir: &Path,
    args: &[&str],
) -> (KillOnDrop, String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, Read};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetflow"))
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("http://").nth(1) {
            addr = Some(rest.trim().to_string());
        }
        line.clear();
    }
    let addr = addr.expect("the API address is logged");
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    (KillOnDrop(child), addr, rest)
}

/// Waits until the lake's newest commit is the last of its run (the job finished).
pub fn wait_for_last_commit(lake: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = files_under(&lake.join("_fleetflow/log"))
            .into_iter()
            .max()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if last.is_some_and(|c| c["last"] == true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the lake holds a commit of everything a bounded input produced.
pub fn wait_for_input_ended(lake: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let ended = files_under(&lake.join("_fleetflow/log"))
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .any(|c| c["input_ended"] == true);
        if ended {
            return;
        }
        assert!(Instant::now() < deadline, "no commit of the whole input");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to a minute) until the API at `addr` answers `/readyz` with 200.
pub fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Interrupts a job started by [`spawn_with_api`] (SIGINT), asserts it exited 0 and
/// returns the rest of its log.
pub fn interrupt(mut child: KillOnDrop, rest: std::thread::JoinHandle<String>) -> String {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let exit = child.wait().unwrap();
    let log = rest.join().unwrap();
    assert!(exit.success(), "exit {exit:?}: {log}");
    log
}

/// A child process that is killed when dropped, so that a failing test leaves no job
/// running behind it.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a DuckDB query (Python `duckdb` package) and returns its rows as JSON arrays.
pub fn duckdb(sql: &str) -> Vec<Vec<serde_json::Value>> {
    duckdb_after("", sql)
}

/// Runs the statements of `setup` (a script, `;` at line ends, `--` comments), then the
/// query `sql`, in one DuckDB connection.
pub fn duckdb_after(setup: &str, sql: &str) -> Vec<Vec<serde_json::Value>> {
    duckdb_with(None, setup, sql)
}

/// Like [`duckdb_after`], with the `httpfs` extension (PyPI `duckdb-extension-httpfs`)
/// loaded and an S3 secret for the S3-compatible server at `s3_endpoint` (`host:port`).
pub fn duckdb_with(
    s3_endpoint: Option<&str>,
    setup: &str,
    sql: &str,
) -> Vec<Vec<serde_json::Value>> {
    let script = r#"
import duckdb, json, os, sys
con = duckdb.connect(config={"autoinstall_known_extensions": False})
con.execute("SET enable_progress_bar = false")
# The lake's tables are Delta tables: `delta_scan` (PyPI `duckdb-extension-delta`).
import duckdb_extension_delta
con.execute(f"LOAD '{os.path.join(os.path.dirname(duckdb_extension_delta.__file__), 'extensions', 'v' + duckdb.__version__, 'delta.duckdb_extension')}'")
endpoint = os.environ.get("FLEETFLOW_TEST_S3")
if endpoint:
    import duckdb_extension_httpfs
    ext = os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions",
                       "v" + duckdb.__version__, "httpfs.duckdb_extension")
    con.execute(f"LOAD '{ext}'")
    con.execute(f"CREATE SECRET (TYPE s3, KEY_ID 'test', SECRET 'test', REGION 'us-east-1', "
                f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)")
for stmt in sys.argv[1].split(";\n"):
    body = "\n".join(l for l in stmt.splitlines() if not l.startswith("--")).strip()
    if body:
        con.execute(body)
rows = con.sql(sys.argv[2]).fetchall()
print(json.dumps([list(r) for r in rows], default=str))
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(setup).arg(sql);
    if let Some(e) = s3_endpoint {
        cmd.env("FLEETFLOW_TEST_S3", e);
    }
    let out = cmd
        .output()
        .expect("python3 with duckdb (pip install duckdb)");
    assert!(
        out.status.success(),
        "duckdb failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One HTTP/1.1 request over a fresh connection: `(status, body)`.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP/1.1 client on one kept-alive connection, for many small requests (a new
/// connection per request costs the server more than the request).
pub struct KeepAlive {
    addr: String,
    conn: std::io::BufReader<std::net::TcpStream>,
}

impl KeepAlive {
    /// Connects to `addr`.
    pub fn connect(addr: &str) -> KeepAlive {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive {
            addr: addr.to_string(),
            conn: std::io::BufReader::new(s),
        }
    }

    /// `GET path`: status and body (the response must have a `Content-Length`).
    pub fn get(&mut self, path: &str) -> (u16, String) {
        use std::io::{BufRead, Read, Write};
        write!(
            self.conn.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut line = String::new();
        self.conn.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = None;
        loop {
            line.clear();
            self.conn.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length.expect("a Content-Length")];
        self.conn.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

/// `GET path`.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, None)
}

/// `read_parquet(...)` over one dataset of a lake directory, with Hive partitioning.
pub fn lake_glob(lake: &Path, dataset: &str) -> String {
    lake_url_glob(&lake.display().to_string(), dataset)
}

/// A dataset of a lake at a local path or an `s3://` URL, read as the newest snapshot of its
/// Delta table (`delta_scan`: the partition columns are columns).
pub fn lake_url_glob(lake: &str, dataset: &str) -> String {
    format!("delta_scan('{lake}/{dataset}')")
}

/// Asserts `a` and `b` agree to 1e-9 relative (or 1e-9 absolute near zero).
pub fn assert_close(a: f64, b: f64, what: &str) {
    let tol = 1e-9 * a.abs().max(b.abs()).max(1.0);
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

/// An S3-compatible server (`moto_server` from PyPI's `moto[server]`, which `.ci/run` installs) on a free
/// loopback port, stopped when dropped.
pub struct S3Server {
    child: std::process::Child,
    /// `host:port`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server and waits until it answers.
    pub fn start() -> S3Server {
        let port = free_port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 with moto (pip install 'moto[server]')");
        let endpoint = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&endpoint).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        S3Server { child, endpoint }
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        let (status, body) = http(&self.endpoint, "PUT", &format!("/{name}"), None);
        assert_eq!(status, 200, "{body}");
    }

    /// The `AWS_*` variables a job needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://{}", self.endpoint)),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file below `dir` (none if it does not exist), sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The datasets compared, and the columns that do not depend on when a row was written.
pub const DATASETS: [(&str, &str); 6] = [
    ("raw", "*"),
    ("1m", "*"),
    ("1h", "*"),
    ("1d", "*"),
    ("geofence_events", "*"),
    ("dead_letter", "* exclude (received_at)"),
];

pub fn command(dir: &Path, job: &str, env: &[(&'static str, String)]) -> Command {
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
pub fn run_to_end(dir: &Path, job: &str, env: &[(&'static str, String)]) {
    let out = command(dir, job, env).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the job again and again (SIGKILL after a random time, or an abort at a step of
/// the checkpoint protocol), restarting it each time (with 3 workers every other time),
/// then lets it finish. Returns the
/// number of runs that were killed.
pub fn run_with_crashes(dir: &Path, job: &str, env: &[(&'static str, String)], seed: u64) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    // Aborts inside the protocol: while a sink stages its files, before and after the
    // commit record is written, between publishing two files, between the Delta commits of
    // two tables, between a compaction's merged files, after a vacuum deleted files.
    let failpoints = [
        "sink-cut:3",
        "commit-before:2",
        "delta_commit:2",
        "compact:1",
        "commit-after:2",
        "publish:2",
        "delta_commit:7",
        "vacuum:2",
        "sink-cut:9",
        "commit-after:4",
    ];
    let mut killed = 0;
    for attempt in 0..60 {
        let mut cmd = command(dir, job, env);
        // Every other restart resumes with another number of workers: the state is split
        // over however many there are.
        if attempt % 2 == 1 {
            cmd.args(["--workers", "3"]);
        }
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

/// Asserts that two lakes hold the same multiset of rows in every dataset, each read as the
/// newest snapshot of its Delta table (`delta_scan`).
pub fn assert_same_rows(s3: Option<&str>, a: &str, b: &str) {
    assert_same_datasets(s3, a, b, &DATASETS)
}

/// Like [`assert_same_rows`] for the given datasets and columns.
pub fn assert_same_datasets(s3: Option<&str>, a: &str, b: &str, datasets: &[(&str, &str)]) {
    for &(dataset, columns) in datasets {
        let read = |lake: &str| format!("(select {columns} from delta_scan('{lake}/{dataset}'))");
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
        if n != vec![n[0], n[0], 0, 0] {
            let rows = |x: &str, y: &str| {
                duckdb_with(
                    s3,
                    "",
                    &format!("select * from ({x} except all {y}) limit 5"),
                )
            };
            panic!(
                "{dataset}: rows (reference, crashed), missing, extra: {n:?}\nmissing: {:?}\nextra: {:?}",
                rows(&ra, &rb),
                rows(&rb, &ra)
            );
        }
    }
}

/// The lake datasets compared between a Kafka and a file run of the same events (a dead
/// letter's `source` names its input, which differs).
pub const KAFKA_VS_FILE: [(&str, &str); 5] = [
    ("raw", "*"),
    ("1m", "*"),
    ("1h", "*"),
    ("1d", "*"),
    ("dead_letter", "reason, payload, detail"),
];

/// One SSE event: `(id, event, data)`.
pub type Event = (Option<String>, String, serde_json::Value);

/// A blocking SSE client over HTTP/1.0 (the body is the event stream itself).
pub struct Sse(std::io::BufReader<std::net::TcpStream>);

impl Sse {
    /// Opens `path` on `addr`, resuming after `last_event_id` when given.
    pub fn open(addr: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{resume}\r\n").unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains(" 200 "), "{line}");
        while line.trim() != "" {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        Sse(r)
    }

    /// The connection, past the response headers, for reading the stream line by line
    /// with reads that time out after `timeout`.
    pub fn into_lines(self, timeout: Duration) -> std::io::BufReader<std::net::TcpStream> {
        self.0.get_ref().set_read_timeout(Some(timeout)).unwrap();
        self.0
    }

    /// The next event (panics when the stream ends).
    pub fn next(&mut self) -> Event {
        use std::io::BufRead;
        let (mut id, mut event, mut data) = (None, None, None);
        loop {
            let mut line = String::new();
            assert!(self.0.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if let (Some(e), Some(d)) = (event.take(), data.take()) {
                    return (id, e, d);
                }
                id = None;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).unwrap());
            }
        }
    }
}
