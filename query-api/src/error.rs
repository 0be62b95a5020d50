//! The JSON error body of every failed request: `{"error": {"code", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A request that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is malformed or out of range (400).
    #[error("{0}")]
    BadRequest(String),
    /// No token, or an unknown one (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The token's tenant may not see this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The token's rate limit is spent (429, with `Retry-After`).
    #[error("rate limit exceeded: retry in {retry_after_s} s")]
    TooManyRequests {
        /// Seconds until a request will be admitted.
        retry_after_s: u64,
    },
    /// No such resource (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the job's state (409).
    #[error("{0}")]
    Conflict(String),
    /// This process cannot serve the request; another one of the cluster can (421).
    #[error("{0}")]
    Misdirected(String),
    /// Not ready yet (503).
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the server, not of the request (500): a query task that panicked.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let mut resp = (
            status,
            Json(crate::openapi::ErrorBody {
                error: crate::openapi::ErrorDetail {
                    code: code.to_string(),
                    message: self.to_string(),
                },
            }),
        )
            .into_response();
        match self {
            ApiError::TooManyRequests { retry_after_s } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
