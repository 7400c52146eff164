//! Overload, deadlines, oversize messages, shutdown with work in flight, and
//! reflection.

use std::time::Duration;

use simverify::config::{Config, Role};
use simverify::proto::verification_client::VerificationClient;
use simverify::proto::{Decision, Sex, VerifyBatch, VerifyBatchResult};
use sqlx::Connection;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::helpers::{
    AppOptions, Backend, TestApp, TestPki, principal, spawn_app, spawn_app_with, spawn_tls_app,
    tls_channel,
};
use crate::verify::request;

const CARRIER: &str = "urn:simverify:carrier:carrier-a";

fn khai() -> simverify::proto::VerifyRequest {
    request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    )
}

/// Holds a lock that stops the audit writer from committing until dropped.
enum AuditBlocker {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl AuditBlocker {
    async fn hold(app: &TestApp) -> Self {
        match app.db.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Self::Sqlite(c)
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Self::Postgres(c)
            }
        }
    }

    async fn release(self) {
        match self {
            Self::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            Self::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}

async fn tls_app(backend: Backend, pki: &TestPki, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut cfg = Config {
        principals: vec![principal(CARRIER, "carrier-a", Role::Carrier)],
        ..Config::default()
    };
    tweak(&mut cfg);
    spawn_tls_app(backend, pki, cfg).await
}

/// Audit commits go straight to the database here, so that holding a lock
/// on it keeps a request in flight.
async fn overload_is_shed_at_once(backend: Backend) {
    let pki = TestPki::new();
    let app = tls_app(backend, &pki, |c| {
        c.server.max_concurrent_requests = 1;
        c.audit.commit = simverify::config::AuditCommit::Database;
    })
    .await;
    let id = pki.client("carrier-a", CARRIER);
    let channel = tls_channel(app.addr, &pki.ca_path(), Some(&id))
        .await
        .unwrap();
    let blocker = AuditBlocker::hold(&app).await;
    let mut first = VerificationClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { first.verify(khai()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let e = VerificationClient::new(channel.clone())
        .verify(khai())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.get_error_details().retry_info().is_some());
    // Shed, not queued behind the blocked request.
    assert!(started.elapsed() < Duration::from_secs(5));

    blocker.release().await;
    let r = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(r.decision(), Decision::Verified);
    let r = VerificationClient::new(channel)
        .verify(khai())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::Verified);
    app.synced().await;
    assert_eq!(app.store.audit_count().await.unwrap(), 2);
    app.stop().await;
}

/// A gateway committing audit records straight to the database, whose first
/// request's commit is held behind a lock, so that what comes next queues
/// behind it. (The journal drops such submissions the same way; its own
/// tests show that.)
struct HeldAudit {
    app: TestApp,
    channel: tonic::transport::Channel,
    blocker: AuditBlocker,
    first: tokio::task::JoinHandle<
        Result<tonic::Response<simverify::proto::VerifyResponse>, tonic::Status>,
    >,
}

impl HeldAudit {
    async fn start(backend: Backend) -> Self {
        let app = spawn_app_with(
            backend,
            AppOptions {
                commit_to_database: true,
                ..AppOptions::default()
            },
        )
        .await;
        let channel = app.channel().await;
        let blocker = AuditBlocker::hold(&app).await;
        let mut client = VerificationClient::new(channel.clone());
        let first = tokio::spawn(async move { client.verify(khai()).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        Self {
            app,
            channel,
            blocker,
            first,
        }
    }

    /// Releases the lock, answers one more request, and returns how many
    /// records the audit log then holds.
    async fn release_and_count(self) -> i64 {
        self.blocker.release().await;
        self.first.await.unwrap().unwrap();
        // Audit commits are in submission order: once this one is durable,
        // everything queued before it has been dealt with too.
        VerificationClient::new(self.channel)
            .verify(khai())
            .await
            .unwrap();
        self.app.synced().await;
        let n = self.app.store.audit_count().await.unwrap();
        self.app.stop().await;
        n
    }
}

async fn expired_deadlines_are_not_audited_as_answered(backend: Backend) {
    let held = HeldAudit::start(backend).await;
    let mut late = tonic::Request::new(khai());
    late.set_timeout(Duration::from_millis(300));
    let e = VerificationClient::new(held.channel.clone())
        .verify(late)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    assert_eq!(held.release_and_count().await, 2);
}

/// A stream the client abandons while its batch waits for the audit log is
/// not audited as answered, although the gateway works on each batch in a
/// task of its own.
async fn abandoned_stream_batches_are_not_audited_as_answered(backend: Backend) {
    let held = HeldAudit::start(backend).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut streaming = VerificationClient::new(held.channel.clone());
    let call = tokio::spawn(async move {
        let mut answers = streaming
            .verify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        answers.next().await
    });
    tx.send(VerifyBatch {
        batch_seq: 1,
        job_id: "job-abandoned".into(),
        requests: vec![khai(), khai(), khai()],
    })
    .await
    .unwrap();
    // Long enough for the batch to be verified and queued for the audit log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    drop(tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(held.release_and_count().await, 2);
}

async fn oversize_messages_get_a_clear_error(backend: Backend) {
    let pki = TestPki::new();
    let app = tls_app(backend, &pki, |c| c.server.max_message_bytes = 4096).await;
    let id = pki.client("carrier-a", CARRIER);
    let mut client = VerificationClient::new(
        tls_channel(app.addr, &pki.ca_path(), Some(&id))
            .await
            .unwrap(),
    );
    let mut big = khai();
    big.full_name = "Nguyễn ".repeat(1000);
    let e = client.verify(big).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    assert!(e.message().contains("too large"), "{}", e.message());
    // A long name under the message limit is an INVALID_ARGUMENT on the field.
    let mut long = khai();
    long.full_name = "a".repeat(700);
    let e = client.verify(long).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .reason,
        "TOO_LONG"
    );
    // The connection survives both.
    assert_eq!(
        client.verify(khai()).await.unwrap().into_inner().decision(),
        Decision::Verified
    );
    app.stop().await;
}

async fn shutdown_finishes_in_flight_work(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<VerifyBatch>(4);
    let mut results = client
        .verify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let feeder = tokio::spawn(async move {
        for seq in 0..20 {
            let batch = VerifyBatch {
                batch_seq: seq,
                job_id: "drain".into(),
                requests: (0..50).map(|_| khai()).collect(),
            };
            if tx.send(batch).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let first: VerifyBatchResult = results.next().await.unwrap().unwrap();
    let url = app.db.url.clone();
    // Ask the server to stop while the stream is still being fed.
    let stopping = tokio::spawn(app.stop());
    let mut got = vec![first];
    while let Some(r) = results.next().await {
        got.push(r.unwrap());
    }
    feeder.await.unwrap();
    let _db = stopping.await.unwrap();
    assert_eq!(
        got.len(),
        20,
        "every batch sent before the stream closed is answered"
    );
    let store = simverify::store::Store::connect(&url).await.unwrap();
    for r in got.iter().flat_map(|b| &b.results) {
        assert!(
            store.audit_by_id(&r.audit_id).await.unwrap().is_some(),
            "answer without audit record"
        );
    }
    assert_eq!(store.audit_count().await.unwrap(), 1000);
    store.close().await;
}

async fn reflection_lists_services_and_error_details(backend: Backend) {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let app = spawn_app(backend).await;
    let channel = app.channel().await;
    let mut client = ServerReflectionClient::new(channel);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "google.rpc.BadRequest".into(),
            )),
        },
    ];
    let mut out = client
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let MessageResponse::ListServicesResponse(list) =
        out.next().await.unwrap().unwrap().message_response.unwrap()
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["simverify.v1.Verification", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let r = out.next().await.unwrap().unwrap().message_response.unwrap();
    assert!(
        matches!(r, MessageResponse::FileDescriptorResponse(_)),
        "{r:?}"
    );
    app.stop().await;
}

both_backends!(
    internal_errors_leak_nothing,
    overload_is_shed_at_once,
    expired_deadlines_are_not_audited_as_answered,
    abandoned_stream_batches_are_not_audited_as_answered,
    oversize_messages_get_a_clear_error,
    shutdown_finishes_in_flight_work,
    reflection_lists_services_and_error_details,
);

/// Health follows the store: NOT_SERVING while PostgreSQL refuses
/// connections, SERVING again once it accepts them. (An embedded SQLite file
/// cannot become unreachable this way, so this runs on PostgreSQL only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_store_postgres() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app(Backend::Postgres).await;
    let channel = app.channel().await;
    let mut health = HealthClient::new(channel);
    let status = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "simverify.v1.Verification".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
        }
    };
    assert_eq!(status(&mut health).await, ServingStatus::Serving);
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(crate::helpers::PG_ADMIN_URL)
        .await
        .unwrap();
    let set = |allow: bool| {
        sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"))
    };
    sqlx::query(set(false)).execute(&mut admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut seen = ServingStatus::Serving;
    for _ in 0..100 {
        seen = status(&mut health).await;
        if seen == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ServingStatus::NotServing);
    sqlx::query(set(true)).execute(&mut admin).await.unwrap();
    for _ in 0..100 {
        seen = status(&mut health).await;
        if seen == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ServingStatus::Serving);
    app.stop().await;
}

/// When the store fails, the caller gets INTERNAL with a correlation id and
/// nothing of the cause (no SQL, no table names, no paths).
async fn internal_errors_leak_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = VerificationClient::new(app.channel().await);
    // A mirror lookup that fails (the answer would need it: nothing is cached yet).
    let rename = "ALTER TABLE mirror_records RENAME TO mirror_records_gone";
    match app.db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(rename).execute(&mut c).await.unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(rename).execute(&mut c).await.unwrap();
        }
    }
    let e = client.verify(khai()).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message().starts_with("internal error (correlation id "),
        "{}",
        e.message()
    );
    for leak in [
        "mirror_records",
        "audit_head",
        "SQL",
        "sqlite",
        "postgres",
        "/",
        "does not exist",
        "no such",
        "table",
    ] {
        assert!(
            !e.message().contains(leak),
            "status leaks {leak:?}: {}",
            e.message()
        );
    }
    let info = e
        .get_error_details()
        .request_info()
        .cloned()
        .expect("RequestInfo");
    assert!(
        e.message().contains(&info.request_id),
        "the correlation id is in the details too"
    );
}
