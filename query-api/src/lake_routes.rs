//! Routes answered from the lake (and today's running values): a vehicle's history from
//! the tiers, and fuel efficiency per vehicle day.

use crate::auth::Access;
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::params::{
    self, decode_cursor, encode_cursor, parse_time, FuelParams, HistoryParams, Params,
};
use crate::ApiState;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use fleetflow_sinks::catalogue::{Catalogue, DatasetKind, Partitioning};
use fleetflow_sinks::read::{read, Dataset, Query, Snapshots};
use fleetflow_types::time::{day_of, parse_date, Millis, DAY_MS};
use serde::Serialize;
use serde_json::{Map, Value};

/// Rows one history answer may hold. `tier=auto` picks the finest tier that stays under
/// it; an explicit tier whose rows could exceed it is refused.
pub const HISTORY_MAX_ROWS: u64 = 10_000;

/// The finest time between two fixes of one vehicle the raw tier is sized for: the
/// raw-row estimate of a range is one row per second.
const RAW_ROW_MS: Millis = 1_000;

/// One dataset the API can read.
#[derive(Debug, Clone)]
pub struct TierInfo {
    /// Its name (`raw`, `1m`, ...).
    pub name: String,
    /// Window size; `None` for raw.
    pub size_ms: Option<Millis>,
    /// Its partitioning, as the catalogue gives it.
    pub partitioning: Partitioning,
}

/// The job's lake, as the API reads it.
#[derive(Debug, Clone)]
pub struct LakeAccess {
    /// The lake's tables, read through their logs.
    pub tables: std::sync::Arc<Snapshots>,
    /// Its tiers, finest first.
    pub tiers: Vec<TierInfo>,
}

impl LakeAccess {
    /// Access to `lake`'s history datasets: `raw` (when kept) and the window tiers.
    pub fn new(tables: Snapshots, catalogue: &Catalogue) -> Self {
        let mut tiers: Vec<TierInfo> = catalogue
            .iter()
            .filter_map(|d| match &d.kind {
                DatasetKind::Raw => Some(TierInfo {
                    name: d.name.clone(),
                    size_ms: None,
                    partitioning: d.partitioning,
                }),
                DatasetKind::Tier(t) => Some(TierInfo {
                    name: d.name.clone(),
                    size_ms: Some(t.size_ms),
                    partitioning: d.partitioning,
                }),
                DatasetKind::GeofenceEvents | DatasetKind::DeadLetter => None,
            })
            .collect();
        tiers.sort_by_key(|t| t.size_ms.unwrap_or(0));
        LakeAccess {
            tables: std::sync::Arc::new(tables),
            tiers,
        }
    }

    fn dataset(t: &TierInfo) -> Dataset {
        Dataset {
            name: t.name.clone(),
            partitioning: t.partitioning,
            time_column: if t.size_ms.is_some() {
                "window_start"
            } else {
                "ts"
            },
        }
    }
}

/// Rows tier `t` may hold for one vehicle over `span` ms.
fn estimate(t: &TierInfo, span: Millis) -> u64 {
    let size = t.size_ms.unwrap_or(RAW_ROW_MS).max(1);
    (span.max(0) as u64).div_ceil(size as u64) + u64::from(t.size_ms.is_some())
}

fn lake_of(s: &ApiState) -> Result<&LakeAccess, ApiError> {
    s.lake
        .as_deref()
        .ok_or_else(|| ApiError::NotFound("this API has no lake to read".into()))
}

/// Rows of one tier.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct HistoryAnswer {
    vehicle_id: String,
    /// The tier the rows come from.
    tier: String,
    from: Millis,
    to: Millis,
    /// Rows with the tier's columns (semantics §4; raw: the event fields), times in epoch ms.
    #[schema(value_type = Vec<Object>)]
    items: Vec<Map<String, Value>>,
    /// Whether more rows matched than one answer holds.
    truncated: bool,
    as_of: Option<Millis>,
}

/// A vehicle's rows from the lake tiers; `tier=auto` picks the finest tier whose rows
/// stay under 10,000, and a range too long for the tier asked for is a 400.
#[utoipa::path(get, path = "/v1/vehicles/{id}/history", tag = "vehicles",
    params(("id" = String, Path, description = "Vehicle id"), HistoryParams),
    responses(
        (status = 200, body = HistoryAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn history(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    Params(q): Params<HistoryParams>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let (from, to) = (parse_time("from", &q.from)?, parse_time("to", &q.to)?);
    let tier = q.tier.unwrap_or_else(|| "auto".to_string());
    if from >= to {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    let lake = lake_of(&s)?;
    let names = || {
        lake.tiers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let span = to - from;
    let chosen = if tier == "auto" {
        lake.tiers
            .iter()
            .find(|t| estimate(t, span) <= HISTORY_MAX_ROWS)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "the range is too long for every tier ({}): an answer holds at most {HISTORY_MAX_ROWS} rows",
                    names()
                ))
            })?
    } else {
        let t = lake.tiers.iter().find(|t| t.name == tier).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown tier {tier:?}: this job keeps auto, {}",
                names()
            ))
        })?;
        let rows = estimate(t, span);
        if rows > HISTORY_MAX_ROWS {
            return Err(ApiError::BadRequest(format!(
                "the range spans up to {rows} rows of tier {tier:?}, over the limit of {HISTORY_MAX_ROWS} rows: narrow it or use a coarser tier (tier=auto picks one)"
            )));
        }
        t
    };
    // The vehicle must exist and be the token's tenant's.
    match s.vehicles.get(&id) {
        Some(v) if access.sees(&v.fix.tenant) => {}
        _ => return Err(ApiError::NotFound(format!("no vehicle {id:?}"))),
    }
    let as_of = s.metrics.lake_clock();
    let q = Query {
        vehicle: Some(id.clone()),
        from,
        to,
        limit: HISTORY_MAX_ROWS as usize,
    };
    let rows = read(&lake.tables, &LakeAccess::dataset(chosen), &q)
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the lake: {e}")))?;
    let items = rows
        .rows
        .into_iter()
        .filter(|r| {
            r.get("tenant")
                .and_then(Value::as_str)
                .is_none_or(|t| access.sees(t))
        })
        .collect();
    Ok(Json(HistoryAnswer {
        vehicle_id: id,
        tier: chosen.name.clone(),
        from,
        to,
        items,
        truncated: rows.truncated,
        as_of,
    }))
}

/// One vehicle day of `GET /v1/fuel-efficiency`.
#[derive(Serialize, Debug, Clone, PartialEq, utoipa::ToSchema)]
pub(crate) struct FuelItem {
    vehicle_id: String,
    tenant: String,
    distance_km: f64,
    fuel_used_l: f64,
    km_per_l: Option<f64>,
    l_per_100km: Option<f64>,
    idle_s: f64,
}

impl FuelItem {
    fn new(vehicle_id: &str, tenant: &str, km: f64, l: f64, idle_s: f64) -> Self {
        FuelItem {
            vehicle_id: vehicle_id.to_string(),
            tenant: tenant.to_string(),
            distance_km: km,
            fuel_used_l: l,
            km_per_l: (l > 0.0).then(|| km / l),
            l_per_100km: (km > 0.0).then(|| l / km * 100.0),
            idle_s,
        }
    }
}

/// Fuel efficiency per vehicle for one day.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FuelAnswer {
    date: String,
    /// `running` (today's values so far, from the vehicle state) or the tier read.
    source: String,
    /// Whether the day is over and its values final.
    complete: bool,
    items: Vec<FuelItem>,
    next_cursor: Option<String>,
    as_of: Option<Millis>,
}

/// Per vehicle day: distance, fuel, km/L, L/100 km and idle time; today's running values
/// for the current day, the `1d` tier before it.
#[utoipa::path(get, path = "/v1/fuel-efficiency", tag = "vehicles", params(FuelParams),
    responses(
        (status = 200, body = FuelAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn fuel_efficiency(
    State(s): State<ApiState>,
    Extension(access): Extension<Access>,
    Params(q): Params<FuelParams>,
) -> Result<Json<FuelAnswer>, ApiError> {
    let date = q
        .date
        .map(|v| {
            parse_date(&v)
                .filter(|_| v.len() == 10)
                .ok_or_else(|| ApiError::BadRequest(format!("date must be YYYY-MM-DD, got {v:?}")))
        })
        .transpose()?;
    let limit = params::limit(q.limit, 1000)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let tenant = access.narrow(q.tenant)?;
    let now = s.vehicles.as_of();
    let today = now.map(|w| day_of(w) * DAY_MS);
    let day = match (date, today) {
        (Some(d), _) => d,
        (None, Some(t)) => t,
        (None, None) => {
            return Err(ApiError::Unavailable(
                "no job clock yet: give a date".into(),
            ))
        }
    };
    let date_str = fleetflow_types::time::date_string(day);
    if let Some(t) = today.filter(|t| day > *t) {
        return Err(ApiError::BadRequest(format!(
            "date {date_str} is after the results' current day {}",
            fleetflow_types::time::date_string(t)
        )));
    }
    let keep = |t: &str| tenant.as_deref().is_none_or(|want| t == want);
    let (mut items, source, complete, as_of) = if Some(day) == today {
        let (states, as_of) = s
            .vehicles
            .scan(|v| v.fix.ts >= day && v.fix.ts < day + DAY_MS && keep(&v.fix.tenant));
        let items = states
            .iter()
            .map(|v| {
                FuelItem::new(
                    &v.fix.vehicle_id,
                    &v.fix.tenant,
                    v.today_distance_km,
                    v.today_fuel_used_l,
                    v.today_idle_s,
                )
            })
            .collect::<Vec<_>>();
        (items, "running".to_string(), false, as_of)
    } else {
        let lake = lake_of(&s)?;
        let tier = lake
            .tiers
            .iter()
            .find(|t| t.size_ms == Some(DAY_MS))
            .ok_or_else(|| {
                ApiError::NotFound(
                    "past days come from the 1d tier, which this job does not keep".into(),
                )
            })?;
        let as_of = s.metrics.lake_clock();
        let q = Query {
            vehicle: None,
            from: day,
            to: day + 1,
            limit: usize::MAX - 1,
        };
        let rows = read(&lake.tables, &LakeAccess::dataset(tier), &q)
            .await
            .map_err(|e| ApiError::Unavailable(format!("reading the lake: {e}")))?;
        let num = |r: &Map<String, Value>, k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let items = rows
            .rows
            .iter()
            .filter_map(|r| {
                let vid = r.get("vehicle_id")?.as_str()?;
                let t = r.get("tenant")?.as_str()?;
                keep(t).then(|| {
                    FuelItem::new(
                        vid,
                        t,
                        num(r, "distance_km"),
                        num(r, "fuel_used_l"),
                        num(r, "idle_s"),
                    )
                })
            })
            .collect::<Vec<_>>();
        // Every vehicle's day closed (not only the job clock's): complete.
        let complete = s
            .metrics
            .lake_complete_of(&tier.name)
            .is_some_and(|c| c >= day + DAY_MS);
        (items, tier.name.clone(), complete, as_of)
    };
    items.retain(|i| access.sees(&i.tenant));
    items.sort_by(|a, b| a.vehicle_id.cmp(&b.vehicle_id));
    if let Some(c) = &cursor {
        items.retain(|i| i.vehicle_id.as_str() > c.as_str());
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = more
        .then(|| items.last().map(|i| encode_cursor(&i.vehicle_id)))
        .flatten();
    Ok(Json(FuelAnswer {
        date: date_str,
        source,
        complete,
        items,
        next_cursor,
        as_of,
    }))
}
