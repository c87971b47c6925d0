//! The browser page on the web listener: `/` (the chat, and the dashboard at `/#dashboard`)
//! and its two assets, embedded in the binary at build time from `crates/duplex-server/web/`
//! — so serving the page needs no Node and building the server no npm. `app.js` is the
//! esbuild bundle of `web/src` (rebuilt by `web/build.sh`, checked by `scripts/test`).
//!
//! Responses say `no-cache` (the asset names carry no hash, so a browser revalidates
//! rather than run an old bundle against a new server) and carry a Content-Security-Policy
//! that allows only this origin's scripts, styles and connections (the WebSocket and
//! gRPC-Web), so injected markup could run nothing.

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// Only this origin; `connect-src 'self'` covers `ws:`/`wss:` to it (CSP level 3).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes, merged into the web listener's router.
pub(crate) fn routes() -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

/// One embedded file with its type and the page's headers.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
}
