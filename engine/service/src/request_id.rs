//! Request ids: every call carries one through its logs. A caller's `x-request-id` is kept (if it is a short
//! printable value), otherwise the server makes one; either way it is echoed in the response headers and
//! every log line of the call sits in a `request` span with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

const HEADER: &str = "x-request-id";

/// Adds request ids to every call.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// The service [`RequestIdLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// Server-made ids: a per-process prefix (start time) and a counter, unique enough to grep logs by.
fn next_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
            & 0xFF_FFFF
    });
    format!("{prefix:06x}-{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl<S, B, R> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let given = request
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
            .map(str::to_owned);
        let id = given.unwrap_or_else(next_id);
        let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        request.headers_mut().insert(HEADER, value.clone());
        let span = tracing::info_span!("request", id = %id, path = %request.uri().path());
        // Clone-and-swap: the instance that was polled ready is the one that serves the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut response = inner.call(request).await?;
                response.headers_mut().insert(HEADER, value);
                Ok(response)
            }
            .instrument(span),
        )
    }
}
