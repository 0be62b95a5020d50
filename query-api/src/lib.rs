//! The query API (axum): vehicle state, geofences, health and metrics.
//!
//! - [`view`]: the shared vehicle view the dataflow publishes into and handlers read.
//! - [`geofences`]: the geofence catalogue, runtime changes and the occupancy/event view.
//! - [`error`]: the JSON error body.
//! - [`map`]: the live fleet map at `/` (a page, its script and style, in the binary).
//! - [`router`]: every route; [`serve`] binds it.
//!
//! Every answer that reflects results carries `as_of`: the job clock (epoch ms) through
//! which the view is complete. Handlers only read the view: they never block a worker.
#![deny(missing_docs)]

pub mod auth;
pub mod changes;
mod conflate;
pub mod conn;
pub mod error;
mod geofence_routes;
pub mod geofences;
pub mod lake_routes;
pub mod map;
pub mod openapi;
mod params;
pub mod stream;
pub mod view;

use auth::Access;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use changes::ChangeLog;
use error::ApiError;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::records::VehicleState;
use params::{decode_cursor, encode_cursor, ListParams, NearbyParams, Params};
use serde::Serialize;
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
    /// The live map at `/`.
    map: Arc<map::MapPage>,
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
            map: Arc::default(),
        }
    }

    /// The same, the map at `/` drawing base-map tiles from `tiles` (a URL template with
    /// `{z}`, `{x}` and `{y}`).
    pub fn with_map_tiles(mut self, tiles: Option<&str>) -> Self {
        self.map = Arc::new(map::MapPage::new(tiles));
        self
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
        .merge(map::routes())
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

/// A page of vehicles.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VehicleListAnswer {
    items: Vec<VehicleState>,
    next_cursor: Option<String>,
    as_of: Option<i64>,
}

/// Vehicles by id, filtered by tenant, status and bounding box, cursor-paginated.
#[utoipa::path(get, path = "/v1/vehicles", tag = "vehicles", params(ListParams),
    responses(
        (status = 200, body = VehicleListAnswer),
        (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody),
        (status = 403, body = openapi::ErrorBody), (status = 429, body = openapi::ErrorBody),
    ))]
pub(crate) async fn list_vehicles(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Params(q): Params<ListParams>,
) -> Result<Json<VehicleListAnswer>, ApiError> {
    let limit = params::limit(q.limit, 1000)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let bbox = q.bbox.as_deref().map(params::parse_bbox).transpose()?;
    let tenant = access.narrow(q.tenant)?;
    let as_of = s.vehicles.as_of();
    let (items, more) = s.vehicles.page(cursor.as_deref(), limit, |v| {
        tenant.as_deref().is_none_or(|t| v.fix.tenant == t)
            && q.status.is_none_or(|st| v.status == st)
            && bbox.is_none_or(|[a, b, c, d]| {
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
#[utoipa::path(get, path = "/v1/vehicles/nearby", tag = "vehicles", params(NearbyParams),
    responses(
        (status = 200, body = NearbyAnswer),
        (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody),
        (status = 403, body = openapi::ErrorBody), (status = 429, body = openapi::ErrorBody),
    ))]
pub(crate) async fn nearby(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Params(q): Params<NearbyParams>,
) -> Result<Json<NearbyAnswer>, ApiError> {
    let lat = params::within("lat", q.lat, -90.0..=90.0)?;
    let lon = params::within("lon", q.lon, -180.0..=180.0)?;
    let radius_m = params::within("radius_m", q.radius_m.unwrap_or(1000.0), 0.0..=MAX_RADIUS_M)?;
    let limit = params::limit(q.limit, 1000)?;
    let tenant = access.narrow(q.tenant)?;
    // A query may rebuild the spatial index (tens of ms for 100,000 vehicles): off the
    // async threads.
    let (items, as_of) = tokio::task::spawn_blocking(move || {
        s.vehicles.nearby(lat, lon, radius_m, limit, |v| {
            tenant.as_deref().is_none_or(|t| v.fix.tenant == t)
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
    use fleetflow_runtime::metrics::export::{encode, gauge};
    let mut families = s.metrics.families();
    families.push(gauge(
        "fleetflow_vehicles",
        "Vehicles in the state view.",
        s.vehicles.len() as f64,
    ));
    families.push(gauge(
        "fleetflow_api_streams",
        "Live streams (SSE and WebSocket) open.",
        s.open_streams() as f64,
    ));
    families.push(gauge(
        "fleetflow_geofences",
        "Geofences in force.",
        s.geofences.len() as f64,
    ));
    let (text, content_type) = encode(&families);
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text).into_response()
}

#[cfg(test)]
mod tests;
