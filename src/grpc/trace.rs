//! One span per RPC, for the OpenTelemetry export.
//!
//! The layer is in the server's stack only while traces are exported: a span
//! per call, with its boxed future and body, is work nobody reads otherwise
//! (building the verifier's span for every request once cost the unary path
//! a few percent of its CPU; see `Verifier::verify`). The span
//! joins the caller's trace when the request carries a W3C `traceparent`
//! header, lives until the last frame of the response has been sent (a
//! stream's span covers the whole stream), and records the gRPC status,
//! including one sent in the trailers after a stream.
//!
//! **Privacy:** the span holds the method's path, the caller's principal
//! (a carrier or auditor id from configuration) and the status code only;
//! a request's fields never reach it, and neither do the statuses' messages
//! (the code says how the call ended).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::{Bytes, Service};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Wraps every call in a `simverify::rpc` span at `info`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpanLayer;

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpans<S>;

    fn layer(&self, inner: S) -> RpcSpans<S> {
        RpcSpans { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcSpans<S> {
    inner: S,
}

type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send + 'static>>;

impl<S, B> Service<http::Request<B>> for RpcSpans<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = rpc_span(req.uri().path(), req.headers());
        let call = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let outer = span.clone();
        Box::pin(
            async move {
                // Dropped before the answer: tonic's own deadline or the
                // client's reset ended the call.
                let mut unanswered = Unanswered(Some(span.clone()));
                let resp = call.await;
                unanswered.0 = None;
                let resp = resp?;
                // A call refused before its first message (a bad argument,
                // authentication, admission) answers with the status in
                // the headers ("trailers-only").
                let status = status_code(resp.headers());
                if let Some(code) = status {
                    record_status(&span, code);
                }
                Ok(resp.map(|body| {
                    Body::new(SpannedBody {
                        inner: body,
                        span,
                        status_seen: status.is_some(),
                    })
                }))
            }
            .instrument(outer),
        )
    }
}

/// The span of one call, a child of the caller's trace when it sent one.
fn rpc_span(path: &str, headers: &HeaderMap) -> Span {
    let (service, method) = service_and_method(path);
    let span = tracing::info_span!(
        target: "simverify::rpc",
        "rpc",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        // Filled in by the identity check (`auth::RequireRole`).
        simverify.caller = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when the span is disabled (the export filtered it out).
    let _ = span.set_parent(parent);
    span
}

/// `/simverify.v1.Verification/Verify` → (`simverify.v1.Verification`,
/// `Verify`); empty parts for a path that is not a gRPC method's.
fn service_and_method(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""))
}

/// The codes a server counts as its own failure (OpenTelemetry's semantic
/// conventions for gRPC servers); a caller's mistake is not the span's error.
fn is_server_error(code: i64) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// gRPC's CANCELLED: what a call that ends without a status of its own is
/// recorded as, as tonic tells the client when its deadline drops a call.
const CANCELLED: i64 = 1;

/// Records CANCELLED on the span it holds when dropped still holding it.
struct Unanswered(Option<Span>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(span) = &self.0 {
            record_status(span, CANCELLED);
        }
    }
}

fn record_status(span: &Span, code: i64) {
    span.record("rpc.grpc.status_code", code);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
}

fn status_code(headers: &HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The response body, carrying the call's span until its last frame. One
/// dropped before its trailers (the client reset the stream) is recorded
/// as CANCELLED.
struct SpannedBody {
    inner: Body,
    span: Span,
    status_seen: bool,
}

impl Drop for SpannedBody {
    fn drop(&mut self) {
        if !self.status_seen {
            record_status(&self.span, CANCELLED);
        }
    }
}

impl http_body::Body for SpannedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame.trailers_ref().and_then(status_code)
        {
            record_status(&this.span, code);
            this.status_seen = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the trace context from a request's headers (gRPC metadata).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

    /// Every `rpc.grpc.status_code` recorded, in order.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<i64>>>);

    struct Codes<'a>(&'a Recorded);

    impl tracing::field::Visit for Codes<'_> {
        fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
            if field.name() == "rpc.grpc.status_code" {
                self.0.0.lock().unwrap().push(value);
            }
        }
        fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorded {
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: LayerContext<'_, S>,
        ) {
            values.record(&mut Codes(self));
        }
    }

    /// A response body that yields `frames` and then waits forever.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            match self.0.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Poll::Pending,
            }
        }
    }

    fn trailers(code: &'static str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(code));
        Frame::trailers(t)
    }

    /// Runs `calls` against a layer over `inner` and returns the codes its
    /// spans recorded.
    fn recorded<S, F>(inner: S, drive: F) -> Vec<i64>
    where
        S: Service<http::Request<()>, Response = http::Response<Body>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static,
        F: AsyncFnOnce(RpcSpans<S>),
    {
        let codes = Recorded::default();
        let subscriber = tracing_subscriber::registry().with(codes.clone());
        tracing::subscriber::with_default(subscriber, || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(drive(tower::Layer::layer(&RpcSpanLayer, inner)));
        });
        codes.0.lock().unwrap().clone()
    }

    fn request() -> http::Request<()> {
        http::Request::builder()
            .uri("/simverify.v1.Verification/Verify")
            .body(())
            .unwrap()
    }

    fn answering(
        headers_status: Option<&'static str>,
        frames: fn() -> Vec<Frame<Bytes>>,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Send
    + 'static {
        tower::service_fn(move |_: http::Request<()>| async move {
            let mut resp = http::Response::new(Body::new(Frames(frames().into())));
            if let Some(code) = headers_status {
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(code));
            }
            Ok::<_, Infallible>(resp)
        })
    }

    async fn poll_once<B: http_body::Body + Unpin>(body: &mut B) {
        std::future::poll_fn(|cx| {
            let _ = Pin::new(&mut *body).poll_frame(cx);
            Poll::Ready(())
        })
        .await
    }

    #[test]
    fn a_call_dropped_before_its_answer_is_cancelled() {
        let never = tower::service_fn(|_: http::Request<()>| {
            std::future::pending::<Result<http::Response<Body>, Infallible>>()
        });
        let codes = recorded(never, async |mut svc| {
            let mut call = svc.call(request());
            // Started, then dropped (tonic's deadline, or the client's reset).
            std::future::poll_fn(|cx| {
                let _ = call.as_mut().poll(cx);
                Poll::Ready(())
            })
            .await;
        });
        assert_eq!(codes, [CANCELLED]);
    }

    #[test]
    fn a_stream_dropped_before_its_trailers_is_cancelled() {
        let one_answer = || vec![Frame::data(Bytes::from_static(b"answer"))];
        let codes = recorded(answering(None, one_answer), async |mut svc| {
            let mut body = svc.call(request()).await.unwrap().into_body();
            poll_once(&mut body).await;
        });
        assert_eq!(codes, [CANCELLED]);
    }

    #[test]
    fn the_status_is_taken_from_trailers_or_headers_and_only_once() {
        let answer_and_ok = || vec![Frame::data(Bytes::from_static(b"answer")), trailers("0")];
        let codes = recorded(answering(None, answer_and_ok), async |mut svc| {
            let mut body = svc.call(request()).await.unwrap().into_body();
            poll_once(&mut body).await;
            poll_once(&mut body).await;
        });
        assert_eq!(codes, [0]);
        let codes = recorded(answering(Some("3"), Vec::new), async |mut svc| {
            let _ = svc.call(request()).await.unwrap();
        });
        assert_eq!(codes, [3]);
    }

    #[test]
    fn the_path_names_service_and_method() {
        assert_eq!(
            service_and_method("/simverify.v1.Verification/Verify"),
            ("simverify.v1.Verification", "Verify")
        );
        assert_eq!(
            service_and_method("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        for not_a_method in ["", "/", "/x", "x/y"] {
            assert_eq!(
                service_and_method(not_a_method),
                ("", ""),
                "{not_a_method:?}"
            );
        }
    }

    #[test]
    fn server_errors_are_the_servers_own() {
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(is_server_error(code), "{code}");
        }
        // Caller mistakes and refusals: INVALID_ARGUMENT, NOT_FOUND,
        // PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAUTHENTICATED, OK.
        for code in [0, 3, 5, 7, 8, 16] {
            assert!(!is_server_error(code), "{code}");
        }
    }

    #[test]
    fn the_status_is_read_from_headers_or_trailers() {
        let mut h = HeaderMap::new();
        assert_eq!(status_code(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(status_code(&h), Some(3));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(status_code(&h), None);
    }
}
