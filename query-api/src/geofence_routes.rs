//! Geofence routes: the catalogue, runtime changes, occupants and recent events.

use crate::auth::Access;
use crate::error::ApiError;
use crate::geofences::{ChangeError, NotApplied};
use crate::openapi::ErrorBody;
use crate::params::{
    self, decode_cursor, encode_cursor, parse_time, EventParams, GeofenceListParams, Params,
};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::GeofenceEvent;
use fleetflow_types::time::Millis;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// How long a change request waits for the dataflow to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/geofences", get(list))
        .route(
            "/v1/geofences/{id}",
            get(get_one).put(put_one).delete(delete_one),
        )
        .route("/v1/geofences/{id}/occupants", get(occupants))
        .route("/v1/geofence-events", get(events))
}

/// A geofence as listed.
#[derive(Serialize, ToSchema)]
pub(crate) struct GeofenceListing {
    id: String,
    /// Its tenant; null when it applies to every tenant.
    tenant: Option<String>,
    /// `polygon` or `circle`.
    kind: String,
    /// `[minLon, minLat, maxLon, maxLat]`.
    bbox: Vec<f64>,
    /// The GeoJSON Feature.
    #[schema(value_type = Object)]
    feature: Value,
}

fn listing(g: &Geofence) -> GeofenceListing {
    GeofenceListing {
        id: g.id.to_string(),
        tenant: g.tenant.as_deref().map(str::to_string),
        kind: g.kind().to_string(),
        bbox: g.bbox().to_vec(),
        feature: g.to_feature(),
    }
}

/// A page of geofences.
#[derive(Serialize, ToSchema)]
pub(crate) struct GeofenceListAnswer {
    items: Vec<GeofenceListing>,
    next_cursor: Option<String>,
    as_of: Option<Millis>,
}

/// One geofence.
#[derive(Serialize, ToSchema)]
pub(crate) struct GeofenceAnswer {
    #[serde(flatten)]
    listing: GeofenceListing,
    as_of: Option<Millis>,
}

/// The outcome of a change.
#[derive(Serialize, ToSchema)]
pub(crate) struct GeofenceChangeAnswer {
    id: String,
    /// The change's sequence number.
    seq: u64,
    /// The job clock it took effect at; null while pending.
    effective_at: Option<Millis>,
    /// `pending` when it has not taken effect yet (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

/// A vehicle inside a geofence.
#[derive(Serialize, ToSchema)]
pub(crate) struct Occupant {
    vehicle_id: String,
    entered_at: Millis,
}

/// The vehicles inside a geofence.
#[derive(Serialize, ToSchema)]
pub(crate) struct OccupantsAnswer {
    items: Vec<Occupant>,
    as_of: Option<Millis>,
}

/// Recent geofence events, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct GeofenceEventsAnswer {
    items: Vec<GeofenceEvent>,
    as_of: Option<Millis>,
}

/// The geofences in force (a tenant sees its own and those for every tenant).
#[utoipa::path(get, path = "/v1/geofences", tag = "geofences", params(GeofenceListParams),
    responses(
        (status = 200, body = GeofenceListAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Params(q): Params<GeofenceListParams>,
) -> Result<Json<GeofenceListAnswer>, ApiError> {
    let limit = params::limit(q.limit, 1000)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let tenant = access.narrow(q.tenant)?;
    // A tenant sees its own geofences and those that apply to every tenant.
    let (items, more) = s.geofences.page(cursor.as_deref(), limit, |g| {
        tenant.as_deref().is_none_or(|t| g.applies_to(t))
    });
    let next_cursor = more
        .then(|| items.last().map(|g| encode_cursor(&g.id)))
        .flatten();
    Ok(Json(GeofenceListAnswer {
        items: items.iter().map(|g| listing(g)).collect(),
        next_cursor,
        as_of: s.geofences.as_of(),
    }))
}

/// Geofence `id` if the request may see it (its tenant's, or one for every tenant).
fn visible(s: &ApiState, access: &Access, id: &str) -> Result<Arc<Geofence>, ApiError> {
    s.geofences
        .get(id)
        .filter(|g| match access {
            Access::All => true,
            Access::Tenant(t) => g.applies_to(t),
        })
        .ok_or_else(|| ApiError::NotFound(format!("no geofence {id:?}")))
}

/// Checks that the request may change geofence `id` (a tenant's token changes only its
/// tenant's geofences; those for every tenant need `*`).
fn may_change(s: &ApiState, access: &Access, id: &str) -> Result<(), ApiError> {
    let Access::Tenant(t) = access else {
        return Ok(());
    };
    match s.geofences.get(id) {
        Some(g) if g.tenant.as_deref() == Some(t.as_str()) => Ok(()),
        Some(g) if g.applies_to(t) => Err(ApiError::Forbidden(format!(
            "geofence {id:?} applies to every tenant: only a token for all tenants may change it"
        ))),
        Some(_) => Err(ApiError::Forbidden(format!(
            "geofence id {id:?} is taken by another tenant"
        ))),
        None => Ok(()),
    }
}

/// One geofence.
#[utoipa::path(get, path = "/v1/geofences/{id}", tag = "geofences",
    params(("id" = String, Path, description = "Geofence id")),
    responses(
        (status = 200, body = GeofenceAnswer),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn get_one(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<GeofenceAnswer>, ApiError> {
    let g = visible(&s, &access, &id)?;
    Ok(Json(GeofenceAnswer {
        listing: listing(&g),
        as_of: s.geofences.as_of(),
    }))
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::NotRunning => ApiError::Conflict(e.to_string()),
        ChangeError::Unknown(_) => ApiError::NotFound(e.to_string()),
        ChangeError::Follower(_) => ApiError::Misdirected(e.to_string()),
    }
}

/// Waits for the change to take effect and answers with the job clock it took effect at
/// (202 when the dataflow has not applied it within [`APPLY_TIMEOUT`]).
async fn applied(s: &ApiState, id: &str, seq: u64, ok: StatusCode) -> Response {
    let answer = |effective_at, status: Option<&str>| {
        Json(GeofenceChangeAnswer {
            id: id.to_string(),
            seq,
            effective_at,
            status: status.map(str::to_string),
        })
    };
    match s.geofences.wait_applied(seq, APPLY_TIMEOUT).await {
        Ok(at) => (ok, answer(at, None)).into_response(),
        Err(NotApplied::Pending) => {
            (StatusCode::ACCEPTED, answer(None, Some("pending"))).into_response()
        }
        Err(NotApplied::Stopped) => ApiError::Conflict(
            "the job stopped before the change took effect; it is not in effect".into(),
        )
        .into_response(),
    }
}

/// Adds or replaces a geofence (a GeoJSON Feature: Polygon, MultiPolygon, or Point with
/// `properties.radius_m`); answers once the dataflow applied it (202 if still pending).
#[utoipa::path(put, path = "/v1/geofences/{id}", tag = "geofences",
    params(("id" = String, Path, description = "Geofence id")),
    request_body(content = Object, description = "A GeoJSON Feature"),
    responses(
        (status = 200, body = GeofenceChangeAnswer, description = "Replaced"),
        (status = 201, body = GeofenceChangeAnswer, description = "Created"),
        (status = 202, body = GeofenceChangeAnswer, description = "Accepted, not in effect yet"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 421, body = ErrorBody, description = "In a cluster, changes go to process 0"),
        (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn put_one(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if id.is_empty() || id.len() > 256 {
        return Err(ApiError::BadRequest(
            "a geofence id has 1 to 256 bytes".into(),
        ));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))?;
    if let Some(own) = value.get("id") {
        let own = match own {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if own != id {
            return Err(ApiError::BadRequest(format!(
                "the feature's id {own:?} differs from the path's {id:?}"
            )));
        }
    }
    let mut g = Geofence::from_feature(&value, Some(&id), None, &id)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Access::Tenant(t) = &access {
        // A tenant's geofence is its own: unnamed, it becomes the token's tenant's.
        match g.tenant.as_deref() {
            None => g.tenant = Some(t.as_str().into()),
            Some(own) if own == t => {}
            Some(own) => {
                return Err(ApiError::Forbidden(format!(
                    "this token may not define geofences of tenant {own:?}"
                )))
            }
        }
    }
    may_change(&s, &access, &id)?;
    let sub = s.geofences.submit(&id, Some(g)).map_err(change_error)?;
    let status = if sub.existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(applied(&s, &id, sub.seq, status).await)
}

/// Removes a geofence; answers once the dataflow applied it (202 if still pending).
#[utoipa::path(delete, path = "/v1/geofences/{id}", tag = "geofences",
    params(("id" = String, Path, description = "Geofence id")),
    responses(
        (status = 200, body = GeofenceChangeAnswer), (status = 202, body = GeofenceChangeAnswer),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 421, body = ErrorBody, description = "In a cluster, changes go to process 0"),
        (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn delete_one(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    visible(&s, &access, &id)?;
    may_change(&s, &access, &id)?;
    let sub = s.geofences.submit(&id, None).map_err(change_error)?;
    Ok(applied(&s, &id, sub.seq, StatusCode::OK).await)
}

/// The vehicles inside a geofence, with the time they entered.
#[utoipa::path(get, path = "/v1/geofences/{id}/occupants", tag = "geofences",
    params(("id" = String, Path, description = "Geofence id")),
    responses(
        (status = 200, body = OccupantsAnswer),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn occupants(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<OccupantsAnswer>, ApiError> {
    let as_of = s.geofences.as_of();
    let items = s.geofences.occupants(&id);
    let known = s.geofences.get(&id);
    if items.is_empty() && known.is_none() {
        return Err(ApiError::NotFound(format!("no geofence {id:?}")));
    }
    if known.is_some() {
        visible(&s, &access, &id)?;
    }
    let items: Vec<Occupant> = items
        .into_iter()
        .filter(|(v, _)| {
            access == Access::All
                || s.vehicles
                    .get(v)
                    .is_some_and(|state| access.sees(&state.fix.tenant))
        })
        .map(|(v, t)| Occupant {
            vehicle_id: v.to_string(),
            entered_at: t,
        })
        .collect();
    Ok(Json(OccupantsAnswer { items, as_of }))
}

/// Recent geofence events, newest first (the lake's `geofence_events` has all of them).
#[utoipa::path(get, path = "/v1/geofence-events", tag = "geofences", params(EventParams),
    responses(
        (status = 200, body = GeofenceEventsAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn events(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Params(q): Params<EventParams>,
) -> Result<Json<GeofenceEventsAnswer>, ApiError> {
    let limit = params::limit(q.limit, 1000)?;
    let since = q
        .since
        .as_deref()
        .map(|v| parse_time("since", v))
        .transpose()?;
    let (geofence, vehicle, kind) = (q.geofence, q.vehicle, q.kind);
    let as_of = s.geofences.as_of();
    let items: Vec<GeofenceEvent> = s.geofences.recent_events(limit, |e| {
        geofence.as_deref().is_none_or(|g| e.geofence_id == g)
            && vehicle.as_deref().is_none_or(|v| e.vehicle_id == v)
            && since.is_none_or(|t| e.ts >= t)
            && kind.is_none_or(|k| e.kind == k)
            && access.sees(&e.tenant)
    });
    Ok(Json(GeofenceEventsAnswer { items, as_of }))
}
