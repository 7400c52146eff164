//! Trace export: `simverify serve --otlp-endpoint` sends a span per call to a
//! real OTLP/gRPC collector (this test's), joined to the caller's W3C trace,
//! with the status each call ended with, and nothing of a subscriber's
//! identity.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use simverify::proto::verification_client::VerificationClient;
use simverify::proto::{Sex, VerifyBatch};
use unicode_normalization::UnicodeNormalization;

use crate::both_backends;
use crate::cli::{serve_demo, start_server};
use crate::helpers::{Backend, TestDb};
use crate::verify::request;

/// Keeps every export it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn spawn_collector() -> (Collector, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (collector, url)
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::IntValue(i) => Some(i),
        _ => None,
    }
}

type Answers = tonic::Streaming<simverify::proto::VerifyBatchResult>;

/// Opens a `VerifyStream`, sends one batch and reads its answer; the
/// request side stays open until the returned sender is dropped.
async fn open_stream(
    client: &mut VerificationClient<tonic::transport::Channel>,
    id: &str,
    name: &str,
    dob: &str,
) -> (tokio::sync::mpsc::Sender<VerifyBatch>, Answers) {
    let (batches, rx) = tokio::sync::mpsc::channel(1);
    batches
        .send(VerifyBatch {
            batch_seq: 1,
            job_id: "trace-test".into(),
            requests: vec![request(id, name, dob, Sex::Female)],
        })
        .await
        .unwrap();
    let mut answers = client
        .verify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    (batches, answers)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn calls_are_traced_into_the_callers_trace(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let (collector, url) = spawn_collector().await;
    let mut cmd = serve_demo(&dir, &db);
    cmd.args(["--insecure-plaintext", "--otlp-endpoint", &url]);
    let (mut server, addr, log, _) = start_server(&mut cmd);

    let mut client = VerificationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // The README's example subscriber, in every demo population.
    let (id, name, dob) = ("040199224981", "Đoàn Thị Hằng", "1999-10-31");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut call = tonic::Request::new(request(id, name, dob, Sex::Female));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01").parse().unwrap(),
    );
    let answer = client.verify(call).await.unwrap().into_inner();
    assert_eq!(answer.decision, simverify::proto::Decision::Verified as i32);
    // Refused before any work: the status travels in the headers.
    let refused = client
        .verify(request("123456789", name, dob, Sex::Female))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // A stream's status travels in the trailers, after its answers; the
    // client keeps its side open a while after the first answer, so a span
    // that ended with the response's headers would be far shorter.
    let held_open = std::time::Duration::from_millis(300);
    let (batches, mut answers) = open_stream(&mut client, id, name, dob).await;
    tokio::time::sleep(held_open).await;
    drop(batches);
    while answers.message().await.unwrap().is_some() {}
    // A stream the client abandons after its first answer.
    let (batches, abandoned) = open_stream(&mut client, id, name, dob).await;
    drop(abandoned);
    drop(batches);
    // A clean stop flushes the spans still buffered.
    let log = server.stop(log);

    let exports = collector.0.lock().unwrap().clone();
    let spans: Vec<&Span> = exports
        .iter()
        .flat_map(|e| &e.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let named =
        |name: &str| -> Vec<&Span> { spans.iter().copied().filter(|s| s.name == name).collect() };
    // Only the gateway's own spans: one per call, named after its method.
    assert!(
        spans.iter().all(|s| s.name.starts_with("/simverify.v1.")),
        "{spans:#?}"
    );
    let verifies = named("/simverify.v1.Verification/Verify");
    assert_eq!(verifies.len(), 2, "{spans:#?}");
    let joined = verifies
        .iter()
        .find(|s| hex::encode(&s.trace_id) == trace_id)
        .expect("the traced call's span is in the caller's trace");
    assert_eq!(hex::encode(&joined.parent_span_id), parent);
    assert_eq!(int_attr(joined, "rpc.grpc.status_code"), Some(0));
    assert_eq!(
        attr(joined, "rpc.method"),
        Some(Value::StringValue("Verify".into()))
    );
    // The development principal every plaintext caller is.
    assert_eq!(
        attr(joined, "simverify.caller"),
        Some(Value::StringValue("dev-carrier".into()))
    );
    let untraced = verifies
        .iter()
        .find(|s| s.trace_id != joined.trace_id)
        .unwrap();
    assert!(
        untraced.parent_span_id.is_empty(),
        "a call without a trace starts one"
    );
    assert_eq!(int_attr(untraced, "rpc.grpc.status_code"), Some(3));
    let mut streams = named("/simverify.v1.Verification/VerifyStream");
    assert_eq!(streams.len(), 2, "{spans:#?}");
    streams.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(int_attr(streams[0], "rpc.grpc.status_code"), Some(0));
    // The client's end of the request and its reset race to the gateway:
    // the abandoned stream ends with trailers (OK) or is reset (CANCELLED;
    // the layer's unit tests pin that path).
    assert!(
        matches!(int_attr(streams[1], "rpc.grpc.status_code"), Some(0 | 1)),
        "the abandoned stream: {:?}",
        streams[1]
    );
    // Whatever ended a call, its span says how.
    for s in &spans {
        assert!(int_attr(s, "rpc.grpc.status_code").is_some(), "{s:#?}");
    }
    // The span covers the stream, not just its opening.
    let lasted = streams[0].end_time_unix_nano - streams[0].start_time_unix_nano;
    assert!(lasted >= held_open.as_nanos() as u64, "{lasted} ns");

    let service = exports[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.clone()?.value);
    assert_eq!(service, Some(Value::StringValue("simverify".into())));

    // Nothing of the subscriber in anything exported, in any form.
    let bytes: Vec<u8> = exports.iter().flat_map(|e| e.encode_to_vec()).collect();
    let nfd: String = name.nfd().collect();
    let phone = request(id, name, dob, Sex::Female).msisdn;
    for secret in [
        id,
        name,
        &nfd,
        dob,
        "19991031",
        "123456789",
        &phone,
        "84912345678",
        "0912345678",
        "doan thi hang",
    ] {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "exported traces hold {secret:?}"
        );
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
}

/// A malformed endpoint is a usage error before anything starts.
async fn a_bad_collector_endpoint_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().join("data");
    let out = serve_demo(&dir, &db)
        .args(["--otlp-endpoint", "https://collector.example:4317"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--otlp-endpoint") && err.contains("http://HOST:PORT"),
        "{err}"
    );
    assert!(!dir.join("simverify.db").exists(), "nothing may be created");
}

both_backends!(
    calls_are_traced_into_the_callers_trace,
    a_bad_collector_endpoint_is_refused,
);
