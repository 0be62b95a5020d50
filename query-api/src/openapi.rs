//! The OpenAPI 3 description at `GET /openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the answer types' `ToSchema` derives.
//!
//! Handlers parse their query strings themselves (strictly: unknown parameters are 400s);
//! the parameter structs here describe what they accept, next to one another in
//! [`ApiDoc`], so that a route without its description does not compile into the spec.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// The JSON body of every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `rate_limited`, `unavailable` or `internal`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

/// `GET /v1/vehicles` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this tenant's vehicles (a tenant's token implies its own).
    tenant: Option<String>,
    /// Only vehicles with this status.
    status: Option<fleetflow_types::records::Status>,
    /// `minLon,minLat,maxLon,maxLat`.
    bbox: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/vehicles/nearby` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct NearbyParams {
    /// Latitude of the centre, degrees.
    #[param(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Longitude of the centre, degrees.
    #[param(minimum = -180.0, maximum = 180.0)]
    lon: f64,
    /// Great-circle radius in metres (default 1000).
    #[param(minimum = 0.0, maximum = 20016000.0)]
    radius_m: Option<f64>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only this tenant's vehicles.
    tenant: Option<String>,
}

/// `GET /v1/vehicles/{id}/history` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Start (inclusive): epoch ms or RFC 3339.
    from: String,
    /// End (exclusive): epoch ms or RFC 3339.
    to: String,
    /// `auto` (default: the finest tier under 10,000 rows), `raw` or a window tier.
    tier: Option<String>,
}

/// `GET /v1/fuel-efficiency` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FuelParams {
    /// The UTC day, `YYYY-MM-DD` (default: the results' current day).
    date: Option<String>,
    /// Only this tenant's vehicles.
    tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/geofences` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GeofenceListParams {
    /// Geofences that apply to this tenant (its own and those for every tenant).
    tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/geofence-events` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventParams {
    /// Only events of this geofence.
    geofence: Option<String>,
    /// Only events of this vehicle.
    vehicle: Option<String>,
    /// Only events at or after this time: epoch ms or RFC 3339.
    since: Option<String>,
    /// Only events of this kind.
    kind: Option<fleetflow_types::records::GeofenceEventKind>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /v1/stream` and `GET /v1/ws` parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamParams {
    /// Comma-separated: `vehicles`, `geofence_events` (default both).
    topics: Option<String>,
    /// Only these vehicles (comma-separated or repeated).
    vehicle: Option<String>,
    /// Only events of this geofence.
    geofence: Option<String>,
    /// Only this tenant.
    tenant: Option<String>,
    /// Resume after this id (as the `Last-Event-ID` header).
    last_event_id: Option<String>,
    /// The bearer token, for clients that cannot set headers.
    access_token: Option<String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetflow query API",
        description = "Vehicle state, geofences, history and live streams of a fleetflow job. Every answer that reflects results carries `as_of`, the job clock (epoch ms): the median of the vehicles' clocks, the engine's \"now\" in event time (see docs/time.md). With `[api].tokens`, every /v1 route needs `Authorization: Bearer TOKEN`."
    ),
    paths(
        crate::list_vehicles,
        crate::nearby,
        crate::get_vehicle,
        crate::lake_routes::history,
        crate::lake_routes::fuel_efficiency,
        crate::geofence_routes::list,
        crate::geofence_routes::get_one,
        crate::geofence_routes::put_one,
        crate::geofence_routes::delete_one,
        crate::geofence_routes::occupants,
        crate::geofence_routes::events,
        crate::stream::sse,
        crate::stream::ws,
        crate::healthz,
        crate::readyz,
        crate::metrics,
        crate::openapi_json,
    ),
    modifiers(&Security),
    security((), ("bearer" = []))
)]
pub struct ApiDoc;
