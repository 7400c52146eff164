//! Where the process's diagnostics go: logs to stderr always, and traces to
//! an OpenTelemetry collector over OTLP/gRPC when an endpoint is given.
//!
//! Only simverify's own spans and events are exported (target `simverify`):
//! one span per RPC (see `grpc::trace`) with the events logged inside it.
//! The SDK's and the exporter's own diagnostics go to the log only, so an
//! unreachable collector is reported on stderr and never traced into itself.
//!
//! The standard OpenTelemetry variables apply: `OTEL_SERVICE_NAME` (default
//! `simverify`), `OTEL_RESOURCE_ATTRIBUTES`, and `OTEL_TRACES_SAMPLER` with
//! `OTEL_TRACES_SAMPLER_ARG` (default: every call whose caller did not
//! decline to sample it).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// How long the exit waits for the last spans to reach the collector.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "--otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) {0:?}: expected http://HOST:PORT of an \
         OTLP/gRPC collector (export over plaintext to a collector agent on the host or a trusted \
         network)"
    )]
    Endpoint(String),
    #[error("the OTLP exporter could not be set up: {0}")]
    Exporter(String),
}

/// Keeps the trace pipeline; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported (and so RPC spans are worth building).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered, waiting at most a few seconds. Call
    /// it while the async runtime still runs: the exporter's channel is one
    /// of its tasks.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(FLUSH_AT_EXIT)
        {
            tracing::warn!(error = %e, "the last traces could not be exported");
        }
    }
}

/// Installs the global subscriber. With `otlp_endpoint`, call it inside the
/// tokio runtime: the exporter's gRPC channel is spawned on it.
pub fn init(
    log_filter: &str,
    ansi: bool,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(filter);
    // Two arms rather than an `Option` layer: an absent layer in the stack
    // answers "always interested", which would turn the log filter's cached
    // "never" for disabled callsites into a check on every hit.
    let Some(url) = otlp_endpoint else {
        Registry::default().with(log).init();
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(url)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("simverify"))
        .with_filter(Targets::new().with_target("simverify", tracing::Level::INFO));
    Registry::default().with(log).with(traces).init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn tracer_provider(url: &str) -> Result<SdkTracerProvider, TelemetryError> {
    if !endpoint_is_valid(url) {
        return Err(TelemetryError::Endpoint(url.to_owned()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let version = KeyValue::new("service.version", env!("CARGO_PKG_VERSION"));
    // The environment's name (`OTEL_SERVICE_NAME`, or `service.name` in
    // `OTEL_RESOURCE_ATTRIBUTES`) wins; the SDK's fallback is replaced.
    let detected = Resource::builder().with_attribute(version.clone()).build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|n| !n.as_str().starts_with("unknown_service"));
    let resource = if named {
        detected
    } else {
        Resource::builder()
            .with_service_name("simverify")
            .with_attribute(version)
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// `http://HOST:PORT` with nothing after the authority but an optional `/`.
fn endpoint_is_valid(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("http")
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.port_u16().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
}

#[cfg(test)]
mod tests {
    use super::endpoint_is_valid;

    #[test]
    fn endpoints_are_plain_grpc_authorities() {
        for ok in [
            "http://127.0.0.1:4317",
            "http://collector.internal:4317/",
            "http://[::1]:4317",
        ] {
            assert!(endpoint_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:4317",
            "https://collector:4317",
            "http://collector",
            "http://collector:4317/v1/traces",
            "http://:4317",
            "grpc://collector:4317",
        ] {
            assert!(!endpoint_is_valid(bad), "{bad}");
        }
    }
}
