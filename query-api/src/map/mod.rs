//! The live fleet map at `GET /`: one HTML page, its script and its style sheet, compiled
//! into the binary (`include_str!`), so the page works on an offline machine and needs no
//! build step. The page itself is plain JavaScript over the public API (`/v1/stream`,
//! `/v1/geofences`, `/v1/vehicles/{id}/history`): it holds no privilege of its own, and
//! with `[api].tokens` it asks for a token and sees what that token's tenant sees.
//!
//! A base map is optional: `[api].map_tiles` (a raster tile URL template) is handed to the
//! page in a `<meta>` element; without it the page draws on a plain background and
//! fetches nothing outside the job. The content security policy says so to the browser.

use crate::ApiState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("map.js");
const STYLE: &str = include_str!("map.css");

/// The page as served: the tile template filled in, and the security policy that goes
/// with it.
#[derive(Debug)]
pub struct MapPage {
    html: String,
    policy: String,
}

impl MapPage {
    /// The page, with base-map tiles from `tiles` (a URL template with `{z}`, `{x}` and
    /// `{y}`) or none.
    pub fn new(tiles: Option<&str>) -> MapPage {
        let tiles = tiles.unwrap_or("");
        let images = match origin(tiles) {
            Some(o) => format!("'self' data: {o}"),
            None => "'self' data:".into(),
        };
        MapPage {
            html: PAGE.replace("{{TILES}}", &escape_attr(tiles)),
            policy: format!(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src {images}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
        }
    }
}

impl Default for MapPage {
    fn default() -> Self {
        MapPage::new(None)
    }
}

/// `scheme://host[:port]` of a tile URL template (the host may not be templated).
fn origin(url: &str) -> Option<&str> {
    let rest = url.find("://").map(|i| i + 3)?;
    let end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    let o = &url[..end];
    (!o.contains('{')).then_some(o)
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page's routes (outside the token check: the page asks for a token itself).
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(page))
        .route(
            "/map.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/map.css", get(|| asset("text/css; charset=utf-8", STYLE)))
}

async fn page(State(s): State<ApiState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, s.map.policy.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        s.map.html.clone(),
    )
        .into_response()
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_tiles_only_when_configured_and_escapes_them() {
        let plain = MapPage::default();
        assert!(plain.html.contains(r#"name="fleetflow-tiles" content="""#));
        assert!(
            plain.policy.contains("img-src 'self' data:;"),
            "{}",
            plain.policy
        );
        let osm = MapPage::new(Some(
            "https://tile.openstreetmap.org/{z}/{x}/{y}.png?a=1&b=\"",
        ));
        assert!(osm.html.contains(
            r#"content="https://tile.openstreetmap.org/{z}/{x}/{y}.png?a=1&amp;b=&quot;""#
        ));
        assert!(osm
            .policy
            .contains("img-src 'self' data: https://tile.openstreetmap.org;"));
        assert_eq!(origin("http://{s}.tiles.example/{z}/{x}/{y}.png"), None);
    }

    #[test]
    fn the_page_loads_nothing_from_outside_the_job() {
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn") && !text.contains("@import"));
        }
    }
}
