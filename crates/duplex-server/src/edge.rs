//! Tower layers between HTTP/2 and the tonic router: what every call gets before routing.
//!
//! - [`GrpcRequestLayer`]: what the gRPC spec asks of a request before anything routes it:
//!   POST (else HTTP 405) and a `application/grpc*` content-type (else HTTP 415). Plain
//!   tonic checks neither.
//! - [`PathAliasLayer`]: serves `/Chat/Chat` as `/chat.Chat/Chat`, so stubs generated from
//!   the article's package-less proto work against our packaged service unchanged.
//! - [`CallDeadlineLayer`]: honours `grpc-timeout` for the whole call (a malformed one gets
//!   HTTP 400, as grpc-go answers). tonic's own timeout
//!   stops at the response headers; a bidi call's body can stream for hours after that.
//!   This layer ends the response body with DEADLINE_EXCEEDED trailers when the deadline
//!   passes, which also drops the handler's streams and so cancels its work.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// Rejects requests that are not gRPC, with the HTTP status and gRPC status grpc-go gives.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcRequestLayer;

impl<S> Layer<S> for GrpcRequestLayer {
    type Service = GrpcRequest<S>;

    fn layer(&self, inner: S) -> GrpcRequest<S> {
        GrpcRequest { inner }
    }
}

/// The service made by [`GrpcRequestLayer`].
#[derive(Debug, Clone)]
pub(crate) struct GrpcRequest<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for GrpcRequest<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match refusal(&request) {
            Some(response) => Box::pin(std::future::ready(Ok(response))),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

/// The trailers-only answer to a request that is not gRPC, if it is not.
fn refusal<B>(request: &Request<B>) -> Option<Response<Body>> {
    let (http, status) = if request.method() != http::Method::POST {
        (
            http::StatusCode::METHOD_NOT_ALLOWED,
            Status::internal(format!(
                "invalid gRPC request method {:?}",
                request.method().as_str()
            )),
        )
    } else if !is_grpc_content_type(request.headers().get(http::header::CONTENT_TYPE)) {
        let shown = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        (
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::invalid_argument(format!("invalid gRPC request content-type {shown:?}")),
        )
    } else {
        return None;
    };
    let mut response = trailers_only(http, status);
    if http == http::StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    }
    Some(response)
}

/// A trailers-only gRPC answer carrying `status`, with HTTP status `http`.
fn trailers_only(http: http::StatusCode, status: Status) -> Response<Body> {
    let mut response: Response<Body> = status.into_http();
    *response.status_mut() = http;
    response
}

/// `application/grpc`, or it followed by `+format` or `;parameters`.
pub(crate) fn is_grpc_content_type(value: Option<&http::HeaderValue>) -> bool {
    let Some(value) = value else { return false };
    let value = value.as_bytes();
    let Some(rest) = value.strip_prefix(b"application/grpc") else {
        return false;
    };
    rest.is_empty() || rest[0] == b'+' || rest[0] == b';'
}

/// Path prefixes of package-less service names and the packaged names they stand for.
const PATH_ALIASES: &[(&str, &str)] = &[("/Chat/", "/chat.Chat/")];

/// Whether `path` is `canonical`, directly or through an alias in `PATH_ALIASES` (for
/// whoever sees a request before [`PathAliasLayer`] rewrites it). Allocates nothing.
pub(crate) fn names_path(path: &str, canonical: &str) -> bool {
    path == canonical
        || PATH_ALIASES.iter().any(|(alias, target)| {
            path.strip_prefix(alias)
                .is_some_and(|rest| canonical.strip_prefix(target) == Some(rest))
        })
}

/// Rewrites request paths listed in `PATH_ALIASES` before routing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathAliasLayer;

impl<S> Layer<S> for PathAliasLayer {
    type Service = PathAlias<S>;

    fn layer(&self, inner: S) -> PathAlias<S> {
        PathAlias { inner }
    }
}

/// The service made by [`PathAliasLayer`].
#[derive(Debug, Clone)]
pub(crate) struct PathAlias<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for PathAlias<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if let Some(uri) = aliased_uri(request.uri()) {
            *request.uri_mut() = uri;
        }
        self.inner.call(request)
    }
}

/// The packaged form of `uri` when its path uses a package-less alias.
fn aliased_uri(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let (alias, target) = PATH_ALIASES
        .iter()
        .find(|(alias, _)| path.starts_with(alias))?;
    let path = format!("{target}{}", &path[alias.len()..]);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Bounds each call's response body by the deadline its client sent in `grpc-timeout`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallDeadlineLayer;

impl<S> Layer<S> for CallDeadlineLayer {
    type Service = CallDeadline<S>;

    fn layer(&self, inner: S) -> CallDeadline<S> {
        CallDeadline { inner }
    }
}

/// The service made by [`CallDeadlineLayer`].
#[derive(Debug, Clone)]
pub(crate) struct CallDeadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CallDeadline<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let deadline = match request.headers().get("grpc-timeout") {
            None => None,
            Some(value) => match value.to_str().ok().and_then(parse_grpc_timeout) {
                Some(timeout) => Some(Instant::now() + timeout),
                // As grpc-go answers; never a call that silently has no deadline.
                None => {
                    let refused = trailers_only(
                        http::StatusCode::BAD_REQUEST,
                        Status::internal("malformed grpc-timeout"),
                    );
                    return Box::pin(std::future::ready(Ok(refused)));
                }
            },
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match deadline {
                Some(deadline) => response.map(|body| Body::new(DeadlineBody::new(body, deadline))),
                None => response,
            })
        })
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A response body that ends with DEADLINE_EXCEEDED trailers once its deadline passes.
struct DeadlineBody {
    inner: Body,
    /// The timer; `None` once the call has ended or the deadline has fired.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set once the body has yielded its last frame.
    done: bool,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant) -> Self {
        Self {
            inner,
            timer: Some(Box::pin(tokio::time::sleep_until(deadline))),
            done: false,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(timer) = this.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            this.timer = None;
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(deadline_trailers()))));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.done = true,
            Some(Ok(frame)) if frame.is_trailers() => this.timer = None,
            Some(Ok(_)) => {}
            Some(Err(_)) => this.done = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn deadline_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    Status::deadline_exceeded("deadline exceeded while the call was streaming")
        .add_header(&mut trailers)
        .expect("a static status message is a valid header value");
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aliased_path_names_its_canonical_method() {
        assert!(names_path("/chat.Chat/Chat", "/chat.Chat/Chat"));
        assert!(names_path("/Chat/Chat", "/chat.Chat/Chat"));
        assert!(!names_path("/Chat/Chat", "/duplex.v1.Hub/Connect"));
        assert!(!names_path("/Chat/Other", "/chat.Chat/Chat"));
        assert!(!names_path("/chat.Chat/Chat", "/Chat/Chat"));
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
    }

    #[test]
    fn grpc_content_types() {
        let ct = |v: &'static str| Some(http::HeaderValue::from_static(v));
        assert!(is_grpc_content_type(ct("application/grpc").as_ref()));
        assert!(is_grpc_content_type(ct("application/grpc+proto").as_ref()));
        assert!(is_grpc_content_type(
            ct("application/grpc;charset=utf-8").as_ref()
        ));
        assert!(!is_grpc_content_type(ct("application/grpcx").as_ref()));
        assert!(!is_grpc_content_type(ct("text/plain").as_ref()));
        assert!(!is_grpc_content_type(None));
    }

    #[test]
    fn only_aliased_paths_are_rewritten() {
        let uri: Uri = "http://host/Chat/Chat".parse().unwrap();
        assert_eq!(aliased_uri(&uri).unwrap().path(), "/chat.Chat/Chat");
        let uri: Uri = "/chat.Chat/Chat".parse().unwrap();
        assert_eq!(aliased_uri(&uri), None);
        let uri: Uri = "/ChatRoom/Chat".parse().unwrap();
        assert_eq!(aliased_uri(&uri), None);
    }
}
