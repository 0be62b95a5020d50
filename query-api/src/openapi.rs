//! The OpenAPI 3 description at `GET /openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the answer types' `ToSchema` derives.
//!
//! Query parameters are described by the very structs the handlers parse them into
//! (`params.rs`), so the spec and the parser cannot disagree.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

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
