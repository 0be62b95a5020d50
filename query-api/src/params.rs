//! Query parameters: one struct per route, parsed by axum's `Query` and described to
//! OpenAPI by the same struct (`IntoParams`), so the spec cannot drift from what the
//! handlers accept.
//!
//! Parsing is strict: an unknown parameter, a missing required one or a value of the
//! wrong type is a 400 whose message names the parameter. Range checks that serde cannot
//! express (limits, bounding boxes, times) are the handlers' helpers below.

use crate::error::ApiError;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use base64::Engine;
use fleetflow_types::records::{GeofenceEventKind, Status};
use fleetflow_types::time::{parse_rfc3339, Millis};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

/// The query string of a request as `T`; a string that does not parse is a 400.
pub(crate) struct Params<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(Params(t)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// `GET /v1/vehicles` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this tenant's vehicles (a tenant's token implies its own).
    pub tenant: Option<String>,
    /// Only vehicles with this status.
    pub status: Option<Status>,
    /// `minLon,minLat,maxLon,maxLat`.
    pub bbox: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/vehicles/nearby` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct NearbyParams {
    /// Latitude of the centre, degrees.
    #[param(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude of the centre, degrees.
    #[param(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
    /// Great-circle radius in metres (default 1000).
    #[param(minimum = 0.0, maximum = 20016000.0)]
    pub radius_m: Option<f64>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only this tenant's vehicles.
    pub tenant: Option<String>,
}

/// `GET /v1/vehicles/{id}/history` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Start (inclusive): epoch ms or RFC 3339.
    pub from: String,
    /// End (exclusive): epoch ms or RFC 3339.
    pub to: String,
    /// `auto` (default: the finest tier under 10,000 rows), `raw` or a window tier.
    pub tier: Option<String>,
}

/// `GET /v1/fuel-efficiency` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FuelParams {
    /// The UTC day, `YYYY-MM-DD` (default: the results' current day).
    pub date: Option<String>,
    /// Only this tenant's vehicles.
    pub tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/geofences` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct GeofenceListParams {
    /// Geofences that apply to this tenant (its own and those for every tenant).
    pub tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/geofence-events` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventParams {
    /// Only events of this geofence.
    pub geofence: Option<String>,
    /// Only events of this vehicle.
    pub vehicle: Option<String>,
    /// Only events at or after this time: epoch ms or RFC 3339.
    pub since: Option<String>,
    /// Only events of this kind.
    pub kind: Option<GeofenceEventKind>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `GET /v1/stream` and `GET /v1/ws` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamParams {
    /// Comma-separated: `vehicles`, `geofence_events` (default both).
    pub topics: Option<String>,
    /// Only these vehicles, comma-separated.
    pub vehicle: Option<String>,
    /// Only events of this geofence.
    pub geofence: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Resume after this id (as the `Last-Event-ID` header).
    pub last_event_id: Option<String>,
    /// Each vehicle's latest state at most once per this many ms (1 to 60000), every
    /// geofence event kept, in log order: for clients that draw the fleet rather than
    /// follow every fix.
    pub conflate_ms: Option<u64>,
    /// The bearer token, for clients that cannot set headers.
    // Read by the auth layer from the raw query; declared here so it is documented
    // and accepted by the strict parser.
    #[allow(dead_code)]
    pub access_token: Option<String>,
}

/// The page size of `limit` (1..=`max`, default 100).
pub(crate) fn limit(v: Option<u32>, max: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(100.min(max)),
        Some(l) if (1..=max).contains(&(l as usize)) => Ok(l as usize),
        Some(l) => Err(ApiError::BadRequest(format!(
            "limit must be an integer from 1 to {max}, got {l}"
        ))),
    }
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

/// Checks that parameter `k` is within `range`.
pub(crate) fn within(
    k: &str,
    v: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, ApiError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(format!(
            "{k} must be a number from {} to {}, got {v}",
            range.start(),
            range.end()
        )))
    }
}

/// Parses `bbox=minLon,minLat,maxLon,maxLat`.
pub(crate) fn parse_bbox(v: &str) -> Result<[f64; 4], ApiError> {
    let parts: Vec<f64> = v
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "bbox must be minLon,minLat,maxLon,maxLat, got {v:?}"
            ))
        })?;
    let [a, b, c, d]: [f64; 4] = parts
        .try_into()
        .map_err(|_| ApiError::BadRequest(format!("bbox needs 4 numbers, got {v:?}")))?;
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
    Ok([a, b, c, d])
}
