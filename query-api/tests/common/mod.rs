//! A served API over views the test drives, and a minimal SSE client on a raw socket.

#![allow(dead_code)]

use fleetflow_query_api::auth::Auth;
use fleetflow_query_api::changes::ChangeLog;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::stream::StreamConfig;
use fleetflow_query_api::view::VehicleView;
use fleetflow_query_api::ApiState;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{Status, VehicleState};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A vehicle state at `ts`.
pub fn vehicle(id: &str, tenant: &str, ts: i64) -> VehicleState {
    VehicleState::new(
        Fix {
            vehicle_id: id.into(),
            tenant: tenant.into(),
            ts,
            lat: 52.5 + (ts % 1000) as f64 * 1e-5,
            lon: 13.4,
            speed_kmh: Some(30.0),
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: None,
            odometer_km: None,
            ignition: Some(true),
        },
        Status::Moving,
    )
}

/// A running API.
pub struct Served {
    pub addr: String,
    pub state: ApiState,
    pub vehicles: Arc<VehicleView>,
    pub geofences: Arc<GeofenceView>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serves an API on a free loopback port: `replay` changes kept, `tokens` (none: open).
pub async fn serve(
    replay: usize,
    streams: StreamConfig,
    tokens: &[(&str, &str)],
    rate_limit: Option<u32>,
) -> Served {
    serve_with(replay, streams, tokens, rate_limit, &[]).await
}

/// The same with geofences in force.
pub async fn serve_with(
    replay: usize,
    streams: StreamConfig,
    tokens: &[(&str, &str)],
    rate_limit: Option<u32>,
    fences: &[Arc<fleetflow_types::geofence::Geofence>],
) -> Served {
    let changes = Arc::new(ChangeLog::new(replay, 42));
    let vehicles = Arc::new(VehicleView::new(1).with_changes(changes.clone()));
    let geofences = Arc::new(GeofenceView::new(1, fences, None).with_changes(changes.clone()));
    let tokens: BTreeMap<String, String> = tokens
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let state = ApiState::new(
        vehicles.clone(),
        geofences.clone(),
        Arc::new(Metrics::new(vec![])),
        changes,
        Arc::new(Auth::new(
            tokens,
            rate_limit.and_then(std::num::NonZeroU32::new),
        )),
        streams,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fleetflow_query_api::serve(
        listener,
        state.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Served {
        addr,
        state,
        vehicles,
        geofences,
        stop: Some(tx),
    }
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

/// An SSE client over HTTP/1.0 (no chunked encoding: the body is the event stream).
pub struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub head: String,
}

impl Sse {
    /// `GET path` with optional headers.
    pub async fn connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
        let stream = TcpStream::connect(addr).await.unwrap();
        Sse::on(stream, path, headers).await
    }

    /// The same on an existing socket.
    pub async fn on(mut stream: TcpStream, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        buf.drain(..end + 4);
        Sse {
            stream,
            buf,
            status,
            head,
        }
    }

    /// The rest of the body as text (for error answers).
    pub async fn body(mut self) -> String {
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).await.unwrap();
        self.buf.extend(rest);
        String::from_utf8_lossy(&self.buf).to_string()
    }

    /// The next event (comments and `retry:` are skipped), `None` at the end.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..p].to_vec()).unwrap();
                self.buf.drain(..p + 2);
                let (mut id, mut event, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return Some(Event { id, event, data });
                }
                continue;
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The sequence number of an event id `run-seq`.
pub fn seq(id: &str) -> u64 {
    id.split_once('-').unwrap().1.parse().unwrap()
}

/// One request over a fresh HTTP/1.0 connection: `(status, head, body)`.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}
