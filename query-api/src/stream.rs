//! Live streams: `GET /v1/stream` (Server-Sent Events) and `GET /v1/ws` (WebSocket).
//!
//! ```text
//!   subscribe ─► snapshot (under the log's read lock: seq X) ─► client queue ─► socket
//!                forwarder task: log changes X+1.. ─filter─► client queue (bounded)
//!                                        │ queue full / fell out of the replay buffer
//!                                        └─► "lagged" message, end; cut off if unread
//! ```
//!
//! Every message is JSON with `type`, `id` and `as_of`:
//! - `snapshot`: `vehicles` (states) and `occupants` (`geofence_id, vehicle_id,
//!   entered_at`) at change `id`; changes follow from the next one.
//! - `vehicle`: a vehicle's new state (`vehicle`), or `removed: ID`.
//! - `geofence_event`: an enter, exit or dwell `event`.
//! - `reset`: the resume point is gone (out of the replay buffer, or from an earlier run
//!   of the job); a fresh `snapshot` follows.
//! - `lagged`: the client read too slowly; the stream ends. Reconnecting with the last id
//!   resumes if the replay buffer still holds what follows it.
//!
//! On SSE the id is the event's `id:` (so `Last-Event-ID` resumes) and `type` its `event:`.
//! On WebSocket the client sends `{"subscribe": {"topics": [..], "vehicle": [..],
//! "geofence": "..", "tenant": ".."}, "resume": "ID"}` (every field optional); a new
//! subscribe message replaces the previous one. The query parameters of `/v1/ws`, when
//! given, subscribe at once.
//!
//! With `conflate_ms` the forwarder holds changes and sends each vehicle's latest state
//! once per interval, with every event, in log order (`conflate`).
//!
//! A forwarder never blocks the dataflow: it only takes the log's read lock to copy
//! pointers. A client's queue holds at most `queue` messages; a client that does not read
//! its `lagged` message within `cutoff_grace` is disconnected.

use crate::auth::Access;
use crate::changes::{event_id, parse_event_id, Change, Topic};
use crate::conflate::Conflate;
use crate::conn::{Conn, ConnControl};
use crate::error::ApiError;
use crate::params::{Params, StreamParams};
use crate::ApiState;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use fleetflow_types::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::mpsc;

/// Limits of the live streams.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Open streams at most; more are answered 503.
    pub max_streams: usize,
    /// Messages a client's queue holds before it is told it lagged.
    pub queue: usize,
    /// How long a lagged client has to read its `lagged` message before it is cut off.
    pub cutoff_grace: Duration,
    /// Idle streams get a keep-alive this often.
    pub keepalive: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_streams: 10_000,
            queue: 4096,
            cutoff_grace: Duration::from_secs(5),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// What a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    vehicles_topic: bool,
    events_topic: bool,
    vehicles: Option<BTreeSet<String>>,
    geofence: Option<String>,
    tenant: Option<String>,
    /// Each vehicle's latest state once per this interval ([`crate::conflate`]).
    conflate: Option<Duration>,
}

/// The longest `conflate_ms`.
const MAX_CONFLATE_MS: u64 = 60_000;

/// A WebSocket subscription, also the shape of the SSE query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscription {
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    vehicle: Option<Vec<String>>,
    #[serde(default)]
    geofence: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    conflate_ms: Option<u64>,
}

/// A WebSocket client message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    #[serde(default)]
    subscribe: Subscription,
    #[serde(default)]
    resume: Option<String>,
}

impl Filter {
    fn new(sub: Subscription, access: &Access) -> Result<Filter, ApiError> {
        let (mut vehicles_topic, mut events_topic) = (true, true);
        if let Some(topics) = sub.topics {
            (vehicles_topic, events_topic) = (false, false);
            for t in topics.iter().flat_map(|t| t.split(',')) {
                match t.trim() {
                    "vehicles" => vehicles_topic = true,
                    "geofence_events" => events_topic = true,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "unknown topic {other:?} (vehicles, geofence_events)"
                        )))
                    }
                }
            }
            if !vehicles_topic && !events_topic {
                return Err(ApiError::BadRequest("topics names no topic".into()));
            }
        }
        let vehicles = sub.vehicle.map(|v| {
            v.iter()
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect::<BTreeSet<_>>()
        });
        let conflate = match sub.conflate_ms {
            None => None,
            Some(ms @ 1..=MAX_CONFLATE_MS) => Some(Duration::from_millis(ms)),
            Some(ms) => {
                return Err(ApiError::BadRequest(format!(
                    "conflate_ms must be from 1 to {MAX_CONFLATE_MS}, got {ms}"
                )))
            }
        };
        Ok(Filter {
            vehicles_topic,
            events_topic,
            vehicles,
            geofence: sub.geofence,
            tenant: access.narrow(sub.tenant)?,
            conflate,
        })
    }

    /// The filter of a stream's query parameters, the `last_event_id` they give, and
    /// whether they name anything besides the token.
    fn from_query(
        q: StreamParams,
        access: &Access,
    ) -> Result<(Filter, Option<String>, bool), ApiError> {
        let any = q.topics.is_some()
            || q.vehicle.is_some()
            || q.geofence.is_some()
            || q.tenant.is_some()
            || q.conflate_ms.is_some()
            || q.last_event_id.is_some();
        let sub = Subscription {
            topics: q.topics.map(|t| vec![t]),
            vehicle: q.vehicle.map(|v| vec![v]),
            geofence: q.geofence,
            tenant: q.tenant,
            conflate_ms: q.conflate_ms,
        };
        Ok((Filter::new(sub, access)?, q.last_event_id, any))
    }

    fn keeps_vehicle(&self, id: &str, tenant: &str) -> bool {
        self.vehicles.as_ref().is_none_or(|v| v.contains(id))
            && self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    fn keeps(&self, c: &Change) -> bool {
        let topic = match c.topic() {
            Topic::Vehicles => self.vehicles_topic,
            Topic::GeofenceEvents => {
                self.events_topic
                    && match &c.body {
                        crate::changes::ChangeBody::GeofenceEvent(e) => {
                            self.geofence.as_deref().is_none_or(|g| g == e.geofence_id)
                        }
                        _ => true,
                    }
            }
        };
        topic && self.keeps_vehicle(c.vehicle(), c.tenant())
    }
}

/// One message to a client.
#[derive(Debug)]
enum Frame {
    /// A snapshot, already serialized, with its id.
    Snapshot(Bytes, String),
    Change(Arc<Change>),
    Reset(String),
    Lagged(Option<String>),
    KeepAlive,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    as_of: Option<Millis>,
    vehicles: &'a [fleetflow_types::records::VehicleState],
    occupants: Vec<Occupant<'a>>,
}

#[derive(Serialize)]
struct Occupant<'a> {
    geofence_id: &'a str,
    vehicle_id: &'a str,
    entered_at: Millis,
}

impl Frame {
    fn json(&self, run: u64) -> Option<Bytes> {
        Some(match self {
            Frame::Snapshot(b, _) => b.clone(),
            Frame::Change(c) => c.json(run).clone(),
            Frame::Reset(why) => Bytes::from(
                serde_json::json!({"type": "reset", "message": why}).to_string(),
            ),
            Frame::Lagged(last) => Bytes::from(
                serde_json::json!({
                    "type": "lagged",
                    "id": last,
                    "message": "this client read too slowly and missed changes; reconnect, resuming from the last id it processed",
                })
                .to_string(),
            ),
            Frame::KeepAlive => return None,
        })
    }

    /// The frame in the SSE wire format.
    fn sse(&self, run: u64, out: &mut Vec<u8>) {
        let (event, id) = match self {
            Frame::Snapshot(_, id) => ("snapshot", Some(id.clone())),
            Frame::Change(c) => (
                match c.topic() {
                    Topic::Vehicles => "vehicle",
                    Topic::GeofenceEvents => "geofence_event",
                },
                Some(event_id(run, c.seq)),
            ),
            Frame::Reset(_) => ("reset", None),
            Frame::Lagged(_) => ("lagged", None),
            Frame::KeepAlive => {
                out.extend_from_slice(b": keep-alive\n\n");
                return;
            }
        };
        if let Some(id) = id {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&self.json(run).expect("not a keep-alive"));
        out.extend_from_slice(b"\n\n");
    }
}

/// A snapshot for `filter`, taken while the log's read lock keeps the views still, and
/// the sequence number it is complete through.
fn snapshot(s: &ApiState, filter: &Filter) -> (Frame, u64) {
    let log = s.changes.read();
    let seq = log.last();
    let (vehicles, as_of) = if filter.vehicles_topic {
        s.vehicles
            .scan(|v| filter.keeps_vehicle(&v.fix.vehicle_id, &v.fix.tenant))
    } else {
        (Vec::new(), s.vehicles.as_of())
    };
    let occupants = if filter.events_topic {
        s.geofences.all_occupants(|g, v| {
            filter.geofence.as_deref().is_none_or(|f| f == g)
                && filter.vehicles.as_ref().is_none_or(|vs| vs.contains(v))
                && filter
                    .tenant
                    .as_deref()
                    .is_none_or(|t| s.vehicles.get(v).is_some_and(|state| state.fix.tenant == t))
        })
    } else {
        Vec::new()
    };
    drop(log);
    let id = event_id(s.changes.run(), seq);
    let body = Snapshot {
        kind: "snapshot",
        id: &id,
        as_of,
        vehicles: &vehicles,
        occupants: occupants
            .iter()
            .map(|(g, v, t)| Occupant {
                geofence_id: g,
                vehicle_id: v,
                entered_at: *t,
            })
            .collect(),
    };
    let json = serde_json::to_vec(&body).expect("a snapshot serializes");
    (Frame::Snapshot(Bytes::from(json), id), seq)
}

/// The first frames of a stream and the sequence number changes follow from: a resume
/// from `resume` when the replay buffer still holds what follows it, else a snapshot
/// (after a `reset` when a resume was asked for and is not possible).
fn start(s: &ApiState, filter: &Filter, resume: Option<&str>) -> (Vec<Frame>, u64) {
    if let Some(r) = resume {
        let why = match parse_event_id(r) {
            None => format!("{r:?} is not an id of this API"),
            Some((run, _)) if run != s.changes.run() => {
                "the id is from an earlier run of the job".to_string()
            }
            Some((_, seq)) => {
                let log = s.changes.read();
                if seq > log.last() {
                    "the id is newer than any change".to_string()
                } else if log.after(seq, 0).is_err() {
                    "the changes after the id are no longer in the replay buffer".to_string()
                } else {
                    return (Vec::new(), seq);
                }
            }
        };
        let (snap, seq) = snapshot(s, filter);
        return (vec![Frame::Reset(why), snap], seq);
    }
    let (snap, seq) = snapshot(s, filter);
    (vec![snap], seq)
}

/// Copies the changes after `next` that pass `filter` into the client's queue until the
/// client goes away, the server stops, or the client lags.
#[allow(clippy::too_many_arguments)]
async fn forward(
    s: ApiState,
    filter: Filter,
    mut after: u64,
    tx: mpsc::Sender<Frame>,
    control: Option<Arc<ConnControl>>,
    finished: Arc<AtomicBool>,
) {
    let mut wake = s.changes.subscribe();
    let mut stop = s.stop.subscribe();
    let cfg = s.streams.clone();
    let run = s.changes.run();
    let mut last_sent: Option<u64> = None;
    let mut held = filter.conflate.map(Conflate::new);
    let lagged = loop {
        if *stop.borrow() {
            break false;
        }
        let batch = s.changes.read().after(after, 1024);
        let batch = match batch {
            Ok(b) => b,
            Err(_) => break true,
        };
        let mut out = Vec::new();
        if batch.is_empty() {
            let flush_at = held.as_ref().and_then(Conflate::deadline);
            tokio::select! {
                r = wake.changed() => if r.is_err() { break false },
                _ = stop.changed() => break false,
                _ = tx.closed() => break false,
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)),
                    if flush_at.is_some() => {}
                _ = tokio::time::sleep(cfg.keepalive) => {
                    if tx.capacity() > 1 && tx.try_send(Frame::KeepAlive).is_err() {
                        break false;
                    }
                }
            }
        }
        for c in batch {
            after = c.seq;
            if !filter.keeps(&c) {
                continue;
            }
            match held.as_mut() {
                Some(h) => h.hold(c),
                None => out.push(c),
            }
        }
        if let Some(h) = held.as_mut() {
            out.extend(h.take_due());
        }
        match send(&tx, out, &mut last_sent) {
            Sent::All => {}
            Sent::Lagged => break true,
            Sent::Gone => break false,
        }
    };
    if lagged {
        tracing::debug!("a stream client lagged: cutting it off");
        let _ = tx.try_send(Frame::Lagged(last_sent.map(|q| event_id(run, q))));
        drop(tx);
        // The client has a moment to read what is queued; then the connection closes.
        tokio::time::sleep(cfg.cutoff_grace).await;
        if !finished.load(Ordering::Acquire) {
            if let Some(c) = control {
                c.kill();
            }
        }
    }
}

/// What became of changes handed to a client's queue.
enum Sent {
    All,
    /// The queue is full (its last slot is kept for the `lagged` message).
    Lagged,
    /// The client went away.
    Gone,
}

fn send(tx: &mpsc::Sender<Frame>, changes: Vec<Arc<Change>>, last_sent: &mut Option<u64>) -> Sent {
    for c in changes {
        if tx.capacity() <= 1 {
            return Sent::Lagged;
        }
        let seq = c.seq;
        if tx.try_send(Frame::Change(c)).is_err() {
            return Sent::Gone;
        }
        *last_sent = Some(seq);
    }
    Sent::All
}

fn acquire(s: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    s.stream_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "too many open streams (the limit is {}); retry later",
            s.streams.max_streams
        ))
    })
}

/// Opens a stream: the first frames are queued, the forwarder runs.
async fn open(
    s: &ApiState,
    filter: Filter,
    resume: Option<String>,
    control: Option<Arc<ConnControl>>,
) -> Result<(mpsc::Receiver<Frame>, Arc<AtomicBool>), ApiError> {
    let (frames, after) = {
        let (s, filter) = (s.clone(), filter.clone());
        // A snapshot copies every vehicle: off the async threads.
        tokio::task::spawn_blocking(move || start(&s, &filter, resume.as_deref()))
            .await
            .map_err(|e| ApiError::Internal(format!("stream snapshot: {e}")))?
    };
    let (tx, rx) = mpsc::channel(s.streams.queue.max(frames.len() + 2));
    for f in frames {
        tx.try_send(f)
            .expect("the queue has room for the first frames");
    }
    let finished = Arc::new(AtomicBool::new(false));
    tokio::spawn(forward(
        s.clone(),
        filter,
        after,
        tx,
        control,
        finished.clone(),
    ));
    Ok((rx, finished))
}

/// Server-Sent Events: a snapshot, then every change, each with `id` and `as_of`;
/// `Last-Event-ID` resumes from the replay buffer (or a `reset` and a new snapshot).
#[utoipa::path(get, path = "/v1/stream", tag = "streams", params(StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String),
        (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody), (status = 429, body = crate::openapi::ErrorBody),
        (status = 503, body = crate::openapi::ErrorBody, description = "Too many open streams"),
    ))]
pub(crate) async fn sse(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    conn: Option<Extension<ConnectInfo<Conn>>>,
    headers: HeaderMap,
    Params(q): Params<StreamParams>,
) -> Result<Response, ApiError> {
    let (filter, from_query, _) = Filter::from_query(q, &access)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(from_query);
    let permit = acquire(&s)?;
    let control = conn.map(|Extension(ConnectInfo(c))| c.control);
    let (mut rx, finished) = open(&s, filter, resume, control).await?;
    let run = s.changes.run();
    let mut first = true;
    // The stream's slot is the body's: it is freed when the response ends or the
    // connection is closed (by the client, or cut off by the forwarder).
    let _slot = permit;
    let body = futures::stream::poll_fn(move |cx| {
        let _ = &_slot;
        let mut frames = Vec::new();
        match rx.poll_recv_many(cx, &mut frames, 512) {
            Poll::Ready(0) => {
                finished.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(_) => {
                let mut out = Vec::with_capacity(frames.len() * 256);
                if std::mem::take(&mut first) {
                    out.extend_from_slice(b"retry: 1000\n\n");
                }
                for f in &frames {
                    f.sse(run, &mut out);
                }
                Poll::Ready(Some(Ok::<_, std::convert::Infallible>(Bytes::from(out))))
            }
            Poll::Pending => Poll::Pending,
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The same stream over WebSocket; subscriptions are JSON messages
/// (`{"subscribe": {...}, "resume": "ID"}`), or the query parameters.
#[utoipa::path(get, path = "/v1/ws", tag = "streams", params(StreamParams),
    responses(
        (status = 101, description = "Switching to WebSocket"),
        (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody), (status = 429, body = crate::openapi::ErrorBody),
        (status = 503, body = crate::openapi::ErrorBody, description = "Too many open streams"),
    ))]
pub(crate) async fn ws(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    conn: Option<Extension<ConnectInfo<Conn>>>,
    Params(q): Params<StreamParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Parameters are checked before the upgrade, so a bad one is a plain 400.
    let (filter, resume, subscribes) = Filter::from_query(q, &access)?;
    let initial = subscribes.then_some((filter, resume));
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!(
            "not a WebSocket upgrade request: {}",
            e.body_text()
        ))
    })?;
    let permit = acquire(&s)?;
    let control = conn.map(|Extension(ConnectInfo(c))| c.control);
    Ok(upgrade.on_upgrade(move |socket| async move {
        run_ws(socket, s, access, initial, control, permit).await
    }))
}

async fn run_ws(
    mut socket: WebSocket,
    s: ApiState,
    access: Access,
    initial: Option<(Filter, Option<String>)>,
    control: Option<Arc<ConnControl>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let run = s.changes.run();
    let grace = s.streams.cutoff_grace;
    let mut stop = s.stop.subscribe();
    // The stream's slot is the connection's.
    let _slot = permit;
    let mut current: Option<(mpsc::Receiver<Frame>, Arc<AtomicBool>)> = None;
    if let Some((filter, resume)) = initial {
        match open(&s, filter, resume, control.clone()).await {
            Ok(sub) => current = Some(sub),
            Err(e) => {
                let _ = socket.send(error_message(&e)).await;
                return;
            }
        }
    }
    loop {
        let next = async {
            match current.as_mut() {
                Some((rx, _)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = next => {
                let Some(frame) = frame else {
                    // The forwarder ended (lagged, or the server stops).
                    if let Some((_, finished)) = current.take() {
                        finished.store(true, Ordering::Release);
                    }
                    let _ = tokio::time::timeout(grace, socket.send(Message::Close(None))).await;
                    return;
                };
                let msg = match frame.json(run) {
                    Some(json) => Message::Text(Utf8Bytes::try_from(json).expect("JSON is UTF-8")),
                    None => Message::Ping(Bytes::new()),
                };
                match tokio::time::timeout(grace, socket.send(msg)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let parsed = serde_json::from_str::<ClientMessage>(&text)
                    .map_err(|e| ApiError::BadRequest(format!("bad subscription message: {e}")))
                    .and_then(|m| Ok((Filter::new(m.subscribe, &access)?, m.resume)));
                match parsed {
                    Ok((filter, resume)) => {
                        // Dropping the old queue ends its forwarder.
                        current = None;
                        match open(&s, filter, resume, control.clone()).await {
                            Ok(sub) => current = Some(sub),
                            Err(e) => {
                                if socket.send(error_message(&e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if socket.send(error_message(&e)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ = stop.changed() => {
                let _ = tokio::time::timeout(grace, socket.send(Message::Close(None))).await;
                return;
            }
        }
    }
}

fn error_message(e: &ApiError) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::json!({"type": "error", "message": e.to_string()}).to_string(),
    ))
}
