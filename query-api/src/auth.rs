//! Tenants and bearer tokens (`[api].tokens`), and the per-token rate limit.
//!
//! With tokens configured, every `/v1` request needs `Authorization: Bearer TOKEN` (the
//! live streams also take `access_token=TOKEN`, since browsers cannot set headers on
//! EventSource or WebSocket requests). The token's tenant decides what the request sees:
//! - asking for another tenant (`tenant=B` with a token of A) is 403;
//! - a single resource of another tenant (a vehicle, a geofence) is 404, exactly as if it
//!   did not exist, so that ids do not leak across tenants;
//! - lists, nearby answers, events and streams only ever contain the token's tenant.
//!
//! `*` sees every tenant. Without tokens the API is open and sees every tenant.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

/// Which tenants a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every tenant (`*`, or no tokens configured).
    All,
    /// Only this one.
    Tenant(String),
}

impl Access {
    /// Whether data of `tenant` may be shown.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Access::All => true,
            Access::Tenant(t) => t == tenant,
        }
    }

    /// The tenant filter of a request that asked for `requested`: the token's own tenant
    /// when it asked for none, 403 when it asked for another.
    pub fn narrow(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match (self, requested) {
            (Access::All, r) => Ok(r),
            (Access::Tenant(t), None) => Ok(Some(t.clone())),
            (Access::Tenant(t), Some(r)) if &r == t => Ok(Some(r)),
            (Access::Tenant(_), Some(r)) => Err(ApiError::Forbidden(format!(
                "this token may not see tenant {r:?}"
            ))),
        }
    }
}

/// Tokens and the rate limit.
pub struct Auth {
    tokens: BTreeMap<String, String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

impl Auth {
    /// `tokens` maps bearer tokens to tenants (`*` for all); `rate_limit` is each token's
    /// requests per second (a burst of as many is allowed), `None` for no limit.
    pub fn new(tokens: BTreeMap<String, String>, rate_limit: Option<NonZeroU32>) -> Self {
        Auth {
            tokens,
            limiter: rate_limit.map(|r| governor::RateLimiter::keyed(Quota::per_second(r))),
        }
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The access a request with `token` has.
    pub fn check(&self, token: Option<&str>) -> Result<Access, ApiError> {
        if self.tokens.is_empty() {
            return Ok(Access::All);
        }
        let token = token.ok_or_else(|| {
            ApiError::Unauthorized("this API needs Authorization: Bearer TOKEN".into())
        })?;
        // Only configured tokens reach the limiter, so it keeps one bucket per token.
        let (token, tenant) = self
            .tokens
            .get_key_value(token)
            .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))?;
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(token) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::TooManyRequests {
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        Ok(if tenant == "*" {
            Access::All
        } else {
            Access::Tenant(tenant.clone())
        })
    }
}

/// The bearer token of a request: the `Authorization` header, or for the live streams the
/// `access_token` query parameter.
fn token_of(req: &Request) -> Option<String> {
    if let Some(h) = req.headers().get(axum::http::header::AUTHORIZATION) {
        let h = h.to_str().ok()?;
        let (scheme, token) = h.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let path = req.uri().path();
    if path == "/v1/stream" || path == "/v1/ws" {
        let query = req.uri().query().unwrap_or("");
        let params: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
        return params
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v);
    }
    None
}

/// Middleware of every `/v1` route: checks the token and the rate limit, and hands the
/// handlers the request's [`Access`].
pub(crate) async fn authorize(
    State(s): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let access = s.auth.check(token_of(&req).as_deref())?;
    req.extensions_mut().insert(access);
    Ok(next.run(req).await)
}

/// An [`Auth`] from the job spec's `[api]`.
pub fn from_spec(tokens: &BTreeMap<String, String>, rate_limit: Option<u32>) -> Arc<Auth> {
    Arc::new(Auth::new(
        tokens.clone(),
        rate_limit.and_then(NonZeroU32::new),
    ))
}
