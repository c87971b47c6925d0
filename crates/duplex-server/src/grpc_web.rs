//! gRPC-Web on the web listener: the Hub and Chat services the gRPC port serves, behind
//! `tonic_web::GrpcWebLayer`, for browsers (unary and server-streaming calls: `Publish`,
//! `History`, `Presence`, `Subscribe`, `WatchStats`; gRPC-Web has no client streaming, so
//! bidi sessions go over `/ws`).
//!
//! Layer order, outermost first: CORS (only with `--cors-origin`), gRPC-Web translation,
//! then the gRPC port's own request layers (`edge.rs`). The translation must come before
//! `GrpcRequestLayer`, which answers 415 to `application/grpc-web` and 405 to a preflight
//! `OPTIONS`. tonic-web has no CORS of its own; the one here allows the headers a gRPC-Web
//! client sends and exposes the status headers it reads, since a trailers-only error
//! arrives as headers. Native gRPC (`application/grpc`) is refused here: it belongs on the
//! gRPC port, behind the frame guard.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::App;
use crate::config::ServeConfig;

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The gRPC-Web routes: every method of `duplex.v1.Hub` and `chat.Chat` (and the `/Chat/`
/// alias), with CORS for `config.cors_origins` when there are any.
pub(crate) fn routes(app: &App, config: &ServeConfig) -> axum::Router {
    // Sessions (`Connect`) do not run over gRPC-Web, so no connection age applies here.
    let edge = crate::server::edge_service(app, config, None);
    let service = tower::ServiceBuilder::new()
        .option_layer(cors(&config.cors_origins))
        .layer(GrpcWebLayer::new())
        .service(edge);
    axum::Router::new()
        .route_service("/duplex.v1.Hub/{method}", service.clone())
        .route_service("/chat.Chat/{method}", service.clone())
        .route_service("/Chat/{method}", service)
        .layer(axum::middleware::from_fn(refuse_native_grpc))
}

/// Native gRPC belongs on the gRPC port, behind its frame guard (PING policy, DATA
/// merging, GOAWAY on abuse); tonic-web would pass it through to the services here, over
/// an HTTP/2 connection no guard reads. Answered 415 with where to go instead.
async fn refuse_native_grpc(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if crate::edge::is_grpc_content_type(request.headers().get(http::header::CONTENT_TYPE)) {
        return (
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "native gRPC is served on the gRPC port (--listen); this listener takes gRPC-Web\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// CORS for gRPC-Web calls from `origins` (none: off).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    // The flag's parser checked each origin is a valid header value.
    let origins = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok());
    let allow = [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
        crate::auth::NAME_HEADER,
    ];
    let expose = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::POST])
            .allow_headers(allow.map(HeaderName::from_static))
            .expose_headers(expose.map(HeaderName::from_static))
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
