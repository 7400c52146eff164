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
//! **Privacy:** the span holds the method's path and the status code only;
//! a request's fields never reach it, and the statuses' messages are left
//! out because an `INVALID_ARGUMENT`'s details name fields (never values),
//! which the code already tells apart.

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
                let resp = call.await?;
                // A call refused before its first message (a bad argument,
                // authentication, admission) answers with the status in
                // the headers ("trailers-only").
                if let Some(code) = status_code(resp.headers()) {
                    record_status(&span, code);
                }
                Ok(resp.map(|body| Body::new(SpannedBody { inner: body, span })))
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

fn record_status(span: &Span, code: i64) {
    span.record("rpc.grpc.status_code", code);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
}

fn status_code(headers: &HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The response body, carrying the call's span until its last frame.
struct SpannedBody {
    inner: Body,
    span: Span,
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
