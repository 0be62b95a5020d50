//! Query API under load, over loopback sockets: route latency p50/p99 with 10,000 vehicles
//! whose state keeps changing and 200 concurrent requesters on keep-alive connections, and
//! live-stream fan-out (deliveries/s and publish -> receive latency) to 1,000 SSE clients.
//!
//! `cargo bench --bench api` (env: FLEETFLOW_BENCH_VEHICLES, _REQUESTERS, _SECONDS,
//! _STREAM_CLIENTS, _CHANGES_PER_S). Server and clients share the machine: on 2 cores the
//! figures include the clients' own CPU.

use fleetflow_query_api::auth::Auth;
use fleetflow_query_api::changes::ChangeLog;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::stream::StreamConfig;
use fleetflow_query_api::view::VehicleView;
use fleetflow_query_api::ApiState;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{Status, VehicleState};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vehicle_state(i: u64, ts: i64, rng: &mut rand::rngs::SmallRng) -> VehicleState {
    let mut fix = Fix::at(
        &format!("V{i:05}"),
        ["acme", "globex", "initech"][(i % 3) as usize],
        ts,
        52.3 + rng.random::<f64>() * 0.4,
        13.1 + rng.random::<f64>() * 0.6,
    );
    fix.speed_kmh = Some(rng.random::<f64>() * 80.0);
    fix.ignition = Some(true);
    VehicleState {
        fix,
        status: Status::Moving,
        today_distance_km: rng.random::<f64>() * 100.0,
        today_fuel_used_l: rng.random::<f64>() * 10.0,
        today_idle_s: 60.0,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A keep-alive HTTP/1.1 client on one connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn get(&mut self, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_lowercase();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        status
    }
}

async fn serve(vehicles: u64) -> (String, ApiState) {
    let changes = Arc::new(ChangeLog::new(100_000, 1));
    let view = Arc::new(VehicleView::new(1).with_changes(changes.clone()));
    let geofences = Arc::new(GeofenceView::new(1, &[], None).with_changes(changes.clone()));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let now = fleetflow_types::time::now_ms();
    let batch = (0..vehicles)
        .map(|i| {
            let s = vehicle_state(i, now, &mut rng);
            ((s.fix.vehicle_id.clone(), s), 1)
        })
        .collect();
    view.writers()[0].apply(batch, Some(now));
    let state = ApiState::new(
        view,
        geofences,
        Arc::new(Metrics::new(vec![])),
        changes,
        Arc::new(Auth::new(Default::default(), None)),
        StreamConfig {
            max_streams: 100_000,
            ..StreamConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(fleetflow_query_api::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    (addr, state)
}

/// Keeps `per_s` vehicle states changing, in batches every 10 ms, until `stop`.
fn churn(
    state: &ApiState,
    vehicles: u64,
    per_s: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let view = state.vehicles.clone();
    std::thread::spawn(move || {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * per_s as f64) as u64;
            let now = fleetflow_types::time::now_ms();
            let batch: Vec<_> = (sent..due)
                .map(|k| {
                    let s = vehicle_state(k % vehicles, now, &mut rng);
                    ((s.fix.vehicle_id.clone(), s), 1)
                })
                .collect();
            sent = due;
            if !batch.is_empty() {
                view.writers()[0].apply(batch, Some(now));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    })
}

/// The request path of a route for the `k`-th request.
type PathOf = Box<dyn Fn(u64) -> String + Send + Sync>;

async fn route_latency(addr: &str, state: &ApiState, vehicles: u64, requesters: u64, seconds: u64) {
    let routes: Vec<(&str, PathOf)> = vec![
        (
            "GET /v1/vehicles/{id}",
            Box::new(move |k| format!("/v1/vehicles/V{:05}", k % vehicles)),
        ),
        (
            "GET /v1/vehicles?limit=100",
            Box::new(|k| {
                format!(
                    "/v1/vehicles?limit=100&tenant={}",
                    ["acme", "globex"][(k % 2) as usize]
                )
            }),
        ),
        (
            "GET /v1/vehicles?bbox=..",
            Box::new(|_| "/v1/vehicles?bbox=13.3,52.45,13.4,52.55&limit=100".to_string()),
        ),
        (
            "GET /v1/vehicles/nearby",
            Box::new(|k| {
                format!(
                    "/v1/vehicles/nearby?lat={}&lon=13.4&radius_m=2000&limit=50",
                    52.4 + (k % 20) as f64 * 0.01
                )
            }),
        ),
        (
            "GET /v1/fuel-efficiency",
            Box::new(|_| "/v1/fuel-efficiency?limit=100".to_string()),
        ),
    ];
    println!("route latency: {vehicles} vehicles changing at 2,000/s, {requesters} concurrent requesters, {seconds} s per route");
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>8}",
        "route", "req/s", "p50 ms", "p99 ms", "non-200"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(state, vehicles, 2_000, stop.clone());
    let routes = Arc::new(routes);
    for r in 0..routes.len() {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for q in 0..requesters {
            let (addr, routes) = (addr.to_string(), routes.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = Client {
                    stream: TcpStream::connect(&addr).await.unwrap(),
                    buf: Vec::new(),
                };
                let (mut lat, mut bad) = (Vec::new(), 0u64);
                let mut k = q * 7919;
                while Instant::now() < deadline {
                    let path = (routes[r].1)(k);
                    k += 1;
                    let t = Instant::now();
                    if c.get(&path).await != 200 {
                        bad += 1;
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (lat, bad)
            }));
        }
        let (mut all, mut bad) = (Vec::new(), 0);
        for t in tasks {
            let (l, b) = t.await.unwrap();
            all.extend(l);
            bad += b;
        }
        all.sort_by(f64::total_cmp);
        println!(
            "{:<30} {:>10.0} {:>10.2} {:>10.2} {:>8}",
            routes[r].0,
            all.len() as f64 / seconds as f64,
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            bad
        );
    }
    stop.store(true, Ordering::Relaxed);
    churner.join().unwrap();
}

async fn fan_out(
    addr: &str,
    state: &ApiState,
    vehicles: u64,
    clients: u64,
    per_s: u64,
    seconds: u64,
) {
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let addr = addr.to_string();
        let done = done.clone();
        // Resuming from the newest change skips the 10,000-vehicle snapshot.
        let last = state.changes.read().last();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!("GET /v1/stream?topics=vehicles HTTP/1.0\r\nHost: bench\r\nLast-Event-ID: 1-{last}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1 << 16);
            let mut chunk = vec![0u8; 1 << 16];
            let (mut lat, mut count) = (Vec::new(), 0u64);
            loop {
                let n = tokio::select! {
                    r = s.read(&mut chunk) => r.unwrap_or(0),
                    _ = tokio::time::sleep(Duration::from_millis(200)), if done.load(Ordering::Relaxed) => 0,
                };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let now = fleetflow_types::time::now_ms();
                while let Some(p) = buf.windows(2).position(|w| w == b"\n\n") {
                    let block = &buf[..p];
                    if let Some(i) = block.windows(5).position(|w| w == b"\"ts\":") {
                        let rest = &block[i + 5..];
                        let end = rest.iter().position(|c| !c.is_ascii_digit()).unwrap_or(rest.len());
                        let ts: i64 = std::str::from_utf8(&rest[..end]).unwrap().parse().unwrap_or(0);
                        if ts > 0 {
                            count += 1;
                            lat.push((now - ts) as f64);
                        }
                    }
                    buf.drain(..p + 2);
                }
            }
            (lat, count)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let churner = churn(state, vehicles, per_s, stop.clone());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let published = churner.join().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64().min(seconds as f64);
    let (mut all, mut delivered) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, c) = t.await.unwrap();
        all.extend(l);
        delivered += c;
    }
    all.sort_by(f64::total_cmp);
    println!(
        "fan-out: {clients} SSE clients, {published} changes at {per_s}/s: {delivered} deliveries ({:.0}/s, {:.1}% of published x clients), publish -> receive p50 {:.0} ms, p99 {:.0} ms",
        delivered as f64 / elapsed,
        100.0 * delivered as f64 / (published * clients).max(1) as f64,
        quantile(&all, 0.5),
        quantile(&all, 0.99),
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this with nothing: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let vehicles = env_num("FLEETFLOW_BENCH_VEHICLES", 10_000);
    let requesters = env_num("FLEETFLOW_BENCH_REQUESTERS", 200);
    let seconds = env_num("FLEETFLOW_BENCH_SECONDS", 10);
    let clients = env_num("FLEETFLOW_BENCH_STREAM_CLIENTS", 1_000);
    let per_s = env_num("FLEETFLOW_BENCH_CHANGES_PER_S", 200);
    let _ = rlimit::increase_nofile_limit(65_536);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, state) = serve(vehicles).await;
        route_latency(&addr, &state, vehicles, requesters, seconds).await;
        let (addr, state) = serve(vehicles).await;
        fan_out(&addr, &state, vehicles, clients, per_s, seconds).await;
    });
}
