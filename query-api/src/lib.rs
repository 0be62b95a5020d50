//! The query API (axum): vehicle state, geofences, health and metrics.
//!
//! - [`view`]: the shared vehicle view the dataflow publishes into and handlers read.
//! - [`geofences`]: the geofence catalogue, runtime changes and the occupancy/event view.
//! - [`error`]: the JSON error body.
//! - [`router`]: every route; [`serve`] binds it.
//!
//! Every answer that reflects results carries `as_of`: the job clock (epoch ms) through
//! which the view is complete. Handlers only read the view: they never block a worker.
#![deny(missing_docs)]

pub mod auth;
pub mod changes;
pub mod conn;
pub mod error;
mod geofence_routes;
pub mod geofences;
pub mod lake_routes;
pub mod openapi;
pub mod stream;
pub mod view;

use auth::Access;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use base64::Engine;
use changes::ChangeLog;
use error::ApiError;
use fleetflow_types::metrics::Metrics;
use fleetflow_types::records::{Reason, Status, VehicleState};
use fleetflow_types::time::{parse_rfc3339, Millis};
use serde::Serialize;
use std::fmt::Write;
use std::sync::Arc;
use stream::StreamConfig;
use view::VehicleView;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Vehicle state.
    pub vehicles: Arc<VehicleView>,
    /// Geofences: catalogue, changes, occupancy and events.
    pub geofences: Arc<geofences::GeofenceView>,
    /// Job counters.
    pub metrics: Arc<Metrics>,
    /// Every change the views applied (the live streams read it).
    pub changes: Arc<ChangeLog>,
    /// Tokens, tenants and the rate limit.
    pub auth: Arc<auth::Auth>,
    /// Limits of the live streams.
    pub streams: Arc<StreamConfig>,
    /// The lake, for history and past days (none: those routes answer 404).
    pub lake: Option<Arc<lake_routes::LakeAccess>>,
    stream_slots: Arc<tokio::sync::Semaphore>,
    /// Set when the server stops: the live streams end.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ApiState {
    /// The state of an API over these views. `changes` must be the log the views append
    /// to (`VehicleView::with_changes`, `GeofenceView::with_changes`).
    pub fn new(
        vehicles: Arc<VehicleView>,
        geofences: Arc<geofences::GeofenceView>,
        metrics: Arc<Metrics>,
        changes: Arc<ChangeLog>,
        auth: Arc<auth::Auth>,
        streams: StreamConfig,
    ) -> Self {
        ApiState {
            vehicles,
            geofences,
            metrics,
            changes,
            auth,
            lake: None,
            stream_slots: Arc::new(tokio::sync::Semaphore::new(streams.max_streams)),
            streams: Arc::new(streams),
            stop: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// The same, reading history and past days from `lake`.
    pub fn with_lake(mut self, lake: lake_routes::LakeAccess) -> Self {
        self.lake = Some(Arc::new(lake));
        self
    }

    /// Live streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.max_streams - self.stream_slots.available_permits()
    }

    /// Ends every live stream (the server is stopping).
    pub fn stop_streams(&self) {
        self.stop.send_replace(true);
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/vehicles", get(list_vehicles))
        .route("/v1/vehicles/nearby", get(nearby))
        .route("/v1/vehicles/{id}", get(get_vehicle))
        .route("/v1/vehicles/{id}/history", get(lake_routes::history))
        .route("/v1/fuel-efficiency", get(lake_routes::fuel_efficiency))
        .route("/v1/stream", get(stream::sse))
        .route("/v1/ws", get(stream::ws))
        .merge(geofence_routes::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

/// Serves the router on `listener` until `shutdown` resolves; live streams end then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopper = state.clone();
    let app = router(state).into_make_service_with_connect_info::<conn::Conn>();
    axum::serve(conn::KillableListener(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopper.stop_streams();
        })
        .await
}

/// A vehicle's state and the job clock it reflects.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VehicleAnswer {
    #[serde(flatten)]
    state: VehicleState,
    as_of: Option<i64>,
}

/// The vehicle state of semantics §3.
#[utoipa::path(get, path = "/v1/vehicles/{id}", tag = "vehicles",
    params(("id" = String, Path, description = "Vehicle id")),
    responses(
        (status = 200, body = VehicleAnswer),
        (status = 401, body = openapi::ErrorBody), (status = 404, body = openapi::ErrorBody),
        (status = 429, body = openapi::ErrorBody),
    ))]
pub(crate) async fn get_vehicle(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<VehicleAnswer>, ApiError> {
    let as_of = s.vehicles.as_of();
    match s.vehicles.get(&id) {
        Some(state) if access.sees(&state.fix.tenant) => Ok(Json(VehicleAnswer { state, as_of })),
        _ => Err(ApiError::NotFound(format!("no vehicle {id:?}"))),
    }
}

pub(crate) fn params(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
}

/// Parsed `GET /v1/vehicles` parameters.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    tenant: Option<String>,
    status: Option<Status>,
    bbox: Option<[f64; 4]>,
    limit: usize,
    cursor: Option<String>,
}

fn parse_list(raw: Option<String>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in params(raw)? {
        match k.as_str() {
            "tenant" => q.tenant = Some(v),
            "status" => q.status = Some(v.parse().map_err(ApiError::BadRequest)?),
            "limit" => q.limit = parse_limit(&v, 1000)?,
            "cursor" => q.cursor = Some(decode_cursor(&v)?),
            "bbox" => {
                let parts: Vec<f64> = v
                    .split(',')
                    .map(|p| p.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "bbox must be minLon,minLat,maxLon,maxLat, got {v:?}"
                        ))
                    })?;
                let [a, b, c, d]: [f64; 4] = parts.try_into().map_err(|_| {
                    ApiError::BadRequest(format!("bbox needs 4 numbers, got {v:?}"))
                })?;
                if !(a.is_finite() && b.is_finite() && c.is_finite() && d.is_finite())
                    || a > c
                    || b > d
                    || b < -90.0
                    || d > 90.0
                    || a < -180.0
                    || c > 180.0
                {
                    return Err(ApiError::BadRequest(format!(
                        "bbox {v:?} is inverted or out of range (minLon,minLat,maxLon,maxLat)"
                    )));
                }
                q.bbox = Some([a, b, c, d]);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other:?} (tenant, status, bbox, limit, cursor)"
                )))
            }
        }
    }
    Ok(q)
}

/// The opaque cursor of a page that ends at `id`.
pub(crate) fn encode_cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The id a cursor from [`encode_cursor`] stands for.
pub(crate) fn decode_cursor(v: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API issued".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// Parses a time parameter: epoch milliseconds or RFC 3339.
pub(crate) fn parse_time(k: &str, v: &str) -> Result<Millis, ApiError> {
    v.parse::<Millis>()
        .ok()
        .or_else(|| parse_rfc3339(v))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{k} must be epoch milliseconds or an RFC 3339 time, got {v:?}"
            ))
        })
}

/// Parses `limit` (1..=`max`).
pub(crate) fn parse_limit(v: &str, max: usize) -> Result<usize, ApiError> {
    v.parse()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "limit must be an integer from 1 to {max}, got {v:?}"
            ))
        })
}

/// A page of vehicles.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VehicleListAnswer {
    items: Vec<VehicleState>,
    next_cursor: Option<String>,
    as_of: Option<i64>,
}

/// Vehicles by id, filtered by tenant, status and bounding box, cursor-paginated.
#[utoipa::path(get, path = "/v1/vehicles", tag = "vehicles", params(openapi::ListParams),
    responses(
        (status = 200, body = VehicleListAnswer),
        (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody),
        (status = 403, body = openapi::ErrorBody), (status = 429, body = openapi::ErrorBody),
    ))]
pub(crate) async fn list_vehicles(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Json<VehicleListAnswer>, ApiError> {
    let mut q = parse_list(raw)?;
    q.tenant = access.narrow(q.tenant)?;
    let as_of = s.vehicles.as_of();
    let (items, more) = s.vehicles.page(q.cursor.as_deref(), q.limit, |v| {
        q.tenant.as_deref().is_none_or(|t| v.fix.tenant == t)
            && q.status.is_none_or(|st| v.status == st)
            && q.bbox.is_none_or(|[a, b, c, d]| {
                v.fix.lon >= a && v.fix.lon <= c && v.fix.lat >= b && v.fix.lat <= d
            })
    });
    let next_cursor = more
        .then(|| items.last().map(|v| encode_cursor(&v.fix.vehicle_id)))
        .flatten();
    Ok(Json(VehicleListAnswer {
        items,
        next_cursor,
        as_of,
    }))
}

/// Parsed `GET /v1/vehicles/nearby` parameters.
#[derive(Debug, PartialEq)]
struct NearbyQuery {
    lat: f64,
    lon: f64,
    radius_m: f64,
    limit: usize,
    tenant: Option<String>,
}

fn parse_nearby(raw: Option<String>) -> Result<NearbyQuery, ApiError> {
    let (mut lat, mut lon, mut radius_m) = (None, None, 1000.0);
    let (mut limit, mut tenant) = (100, None);
    let number = |k: &str, v: &str, range: std::ops::RangeInclusive<f64>| {
        v.parse::<f64>()
            .ok()
            .filter(|x| range.contains(x))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{k} must be a number from {} to {}, got {v:?}",
                    range.start(),
                    range.end()
                ))
            })
    };
    for (k, v) in params(raw)? {
        match k.as_str() {
            "lat" => lat = Some(number("lat", &v, -90.0..=90.0)?),
            "lon" => lon = Some(number("lon", &v, -180.0..=180.0)?),
            "radius_m" => radius_m = number("radius_m", &v, 0.0..=MAX_RADIUS_M)?,
            "limit" => limit = parse_limit(&v, 1000)?,
            "tenant" => tenant = Some(v),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other:?} (lat, lon, radius_m, limit, tenant)"
                )))
            }
        }
    }
    let missing = |k: &str| ApiError::BadRequest(format!("{k} is required"));
    Ok(NearbyQuery {
        lat: lat.ok_or_else(|| missing("lat"))?,
        lon: lon.ok_or_else(|| missing("lon"))?,
        radius_m,
        limit,
        tenant,
    })
}

/// Half the earth's circumference: every point is within it.
const MAX_RADIUS_M: f64 = 20_016_000.0;

/// A vehicle and its distance.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NearbyItem {
    #[serde(flatten)]
    state: VehicleState,
    /// Great-circle distance from the centre, metres.
    distance_m: f64,
}

/// Vehicles nearest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NearbyAnswer {
    items: Vec<NearbyItem>,
    as_of: Option<i64>,
}

/// Vehicles within a radius, nearest first, from a spatial index (at most 100 ms behind).
#[utoipa::path(get, path = "/v1/vehicles/nearby", tag = "vehicles", params(openapi::NearbyParams),
    responses(
        (status = 200, body = NearbyAnswer),
        (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody),
        (status = 403, body = openapi::ErrorBody), (status = 429, body = openapi::ErrorBody),
    ))]
pub(crate) async fn nearby(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Json<NearbyAnswer>, ApiError> {
    let mut q = parse_nearby(raw)?;
    q.tenant = access.narrow(q.tenant)?;
    // A query may rebuild the spatial index (tens of ms for 100,000 vehicles): off the
    // async threads.
    let (items, as_of) = tokio::task::spawn_blocking(move || {
        s.vehicles.nearby(q.lat, q.lon, q.radius_m, q.limit, |v| {
            q.tenant.as_deref().is_none_or(|t| v.fix.tenant == t)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("nearby query: {e}")))?;
    let items = items
        .into_iter()
        .map(|(state, d)| NearbyItem {
            state,
            distance_m: (d * 10.0).round() / 10.0,
        })
        .collect();
    Ok(Json(NearbyAnswer { items, as_of }))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Object, description = "`{\"status\": \"ok\"}`")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// The OpenAPI 3 description of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, body = Object, description = "This document")))]
pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    Json(
        DOC.get_or_init(<openapi::ApiDoc as utoipa::OpenApi>::openapi)
            .clone(),
    )
}

/// Readiness: ready once the job clock exists (a vehicle has reported).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = Object, description = "`{\"status\": \"ready\", \"as_of\": ...}`"),
        (status = 503, body = openapi::ErrorBody),
    ))]
pub(crate) async fn readyz(State(s): State<ApiState>) -> Response {
    match s.vehicles.as_of() {
        Some(w) => Json(serde_json::json!({"status": "ready", "as_of": w})).into_response(),
        None => ApiError::Unavailable("no job clock yet: no vehicle has reported".into())
            .into_response(),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(s): State<ApiState>) -> Response {
    let m = &s.metrics;
    let r = std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let counters: [(&str, &str, u64); 6] = [
        (
            "fleetflow_events_in_total",
            "Events read from every source.",
            m.events_in.load(r),
        ),
        (
            "fleetflow_bytes_in_total",
            "Payload bytes read.",
            m.bytes_in.load(r),
        ),
        (
            "fleetflow_events_accepted_total",
            "Fixes accepted into the results.",
            m.accepted.load(r),
        ),
        (
            "fleetflow_duplicates_total",
            "Duplicate fixes dropped.",
            m.duplicates.load(r),
        ),
        (
            "fleetflow_lake_files_total",
            "Parquet files committed.",
            m.files_written.load(r),
        ),
        (
            "fleetflow_lake_bytes_total",
            "Bytes committed to the lake.",
            m.bytes_written.load(r),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(out, "# HELP fleetflow_dead_letters_total Rejected events by reason.\n# TYPE fleetflow_dead_letters_total counter");
    for reason in Reason::ALL {
        let _ = writeln!(
            out,
            "fleetflow_dead_letters_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            m.dead_letters_of(reason)
        );
    }
    if !m.inputs.is_empty() {
        type Read = fn(&fleetflow_types::metrics::InputMetrics) -> Option<i64>;
        let per_input: [(&str, &str, &str, Read); 3] = [
            (
                "fleetflow_input_messages_total",
                "counter",
                "Messages (lines) read per input (Kafka partition, file, generator partition).",
                |i| Some(i.messages.load(std::sync::atomic::Ordering::Relaxed) as i64),
            ),
            (
                "fleetflow_input_bytes_total",
                "counter",
                "Payload bytes read per input.",
                |i| Some(i.bytes.load(std::sync::atomic::Ordering::Relaxed) as i64),
            ),
            (
                "fleetflow_input_event_time_ms",
                "gauge",
                "Greatest event time seen per input, epoch ms.",
                |i| {
                    Some(i.max_ts.load(std::sync::atomic::Ordering::Relaxed))
                        .filter(|t| *t != fleetflow_types::metrics::NO_TIME)
                },
            ),
        ];
        for (name, kind, help, read) in per_input {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for i in &m.inputs {
                if let Some(v) = read(i) {
                    let _ = writeln!(out, "{name}{{input=\"{}\"}} {v}", i.name);
                }
            }
        }
        let _ = writeln!(out, "# HELP fleetflow_kafka_consumer_lag Messages behind the partition's high watermark.\n# TYPE fleetflow_kafka_consumer_lag gauge");
        for i in &m.inputs {
            let lag = i.lag.load(r);
            if lag >= 0 {
                let _ = writeln!(
                    out,
                    "fleetflow_kafka_consumer_lag{{input=\"{}\"}} {lag}",
                    i.name
                );
            }
        }
    }
    if let Some(c) = m.clock() {
        let _ = writeln!(
            out,
            "# HELP fleetflow_job_clock_delay_ms Wall clock minus the job clock.\n# TYPE fleetflow_job_clock_delay_ms gauge\nfleetflow_job_clock_delay_ms {}",
            fleetflow_types::time::now_ms().saturating_sub(c)
        );
    }
    let gauges: [(&str, &str, u64); 3] = [
        ("fleetflow_clock_voters", "Vehicles that vote for the job clock (heard from within idle_timeout on live inputs, all on bounded ones).", m.clock_voters.load(r)),
        ("fleetflow_clock_ahead_vehicles", "Vehicles whose clock is more than offline_after ahead of the job clock (a tracker reporting local time as UTC, a wrong clock).", m.clock_ahead.load(r)),
        ("fleetflow_clock_behind_vehicles", "Vehicles still reporting whose clock is more than offline_after behind the job clock (a slow or wrong clock, a store-and-forward backlog).", m.clock_behind.load(r)),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let _ = writeln!(out, "# HELP fleetflow_dropped_fields_total Optional fields of accepted events dropped as of the wrong type or out of range (the fix was kept).\n# TYPE fleetflow_dropped_fields_total counter");
    for (i, field) in fleetflow_types::metrics::OPTIONAL_FIELDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "fleetflow_dropped_fields_total{{field=\"{field}\"}} {}",
            m.dropped_fields[i].load(r)
        );
    }
    let _ = writeln!(out, "# HELP fleetflow_lake_rows_total Rows committed per dataset.\n# TYPE fleetflow_lake_rows_total counter");
    for (i, d) in m.datasets.iter().enumerate() {
        let _ = writeln!(
            out,
            "fleetflow_lake_rows_total{{dataset=\"{d}\"}} {}",
            m.rows_written[i].load(r)
        );
    }
    let _ = writeln!(out, "# HELP fleetflow_job_clock_ms The job clock: the median of the vehicles' clocks, epoch ms.\n# TYPE fleetflow_job_clock_ms gauge");
    if let Some(c) = m.clock() {
        let _ = writeln!(out, "fleetflow_job_clock_ms {c}");
    }
    let _ = writeln!(out, "# HELP fleetflow_vehicles Vehicles in the state view.\n# TYPE fleetflow_vehicles gauge\nfleetflow_vehicles {}", s.vehicles.len());
    let _ = writeln!(out, "# HELP fleetflow_api_streams Live streams (SSE and WebSocket) open.\n# TYPE fleetflow_api_streams gauge\nfleetflow_api_streams {}", s.open_streams());
    let _ = writeln!(out, "# HELP fleetflow_geofences Geofences in force.\n# TYPE fleetflow_geofences gauge\nfleetflow_geofences {}", s.geofences.len());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
