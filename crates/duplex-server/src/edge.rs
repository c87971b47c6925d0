//! Tower layers between HTTP/2 and the tonic router: what every call gets before routing.
//!
//! - [`PathAliasLayer`]: serves `/Chat/Chat` as `/chat.Chat/Chat`, so stubs generated from
//!   the article's package-less proto work against our packaged service unchanged.
//! - [`CallDeadlineLayer`]: honours `grpc-timeout` for the whole call. tonic's own timeout
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

/// Path prefixes of package-less service names and the packaged names they stand for.
const PATH_ALIASES: &[(&str, &str)] = &[("/Chat/", "/chat.Chat/")];

/// Rewrites request paths listed in [`PATH_ALIASES`] before routing.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathAliasLayer;

impl<S> Layer<S> for PathAliasLayer {
    type Service = PathAlias<S>;

    fn layer(&self, inner: S) -> PathAlias<S> {
        PathAlias { inner }
    }
}

/// The service made by [`PathAliasLayer`].
#[derive(Debug, Clone)]
pub struct PathAlias<S> {
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
pub struct CallDeadlineLayer;

impl<S> Layer<S> for CallDeadlineLayer {
    type Service = CallDeadline<S>;

    fn layer(&self, inner: S) -> CallDeadline<S> {
        CallDeadline { inner }
    }
}

/// The service made by [`CallDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct CallDeadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CallDeadline<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
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
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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
    fn only_aliased_paths_are_rewritten() {
        let uri: Uri = "http://host/Chat/Chat".parse().unwrap();
        assert_eq!(aliased_uri(&uri).unwrap().path(), "/chat.Chat/Chat");
        let uri: Uri = "/chat.Chat/Chat".parse().unwrap();
        assert_eq!(aliased_uri(&uri), None);
        let uri: Uri = "/ChatRoom/Chat".parse().unwrap();
        assert_eq!(aliased_uri(&uri), None);
    }
}
