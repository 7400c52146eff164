//! Carrier access over mutual TLS: who may connect, who may call what, and
//! how abuse and overload are answered.

use std::time::Duration;

use simverify::config::{Config, Role};
use simverify::proto::verification_client::VerificationClient;
use simverify::proto::{Decision, Sex, VerifyBatch};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::helpers::{Backend, TestPki, principal, spawn_tls_app, tls_channel};
use crate::verify::request;

const CARRIER: &str = "urn:simverify:carrier:carrier-a";
const AUDITOR: &str = "urn:simverify:auditor:auditor-1";

fn config(extra: &[simverify::config::PrincipalEntry]) -> Config {
    let mut principals = vec![
        principal(CARRIER, "carrier-a", Role::Carrier),
        principal(AUDITOR, "auditor-1", Role::Auditor),
    ];
    principals.extend(extra.iter().cloned());
    Config {
        principals,
        ..Config::default()
    }
}

fn khai() -> simverify::proto::VerifyRequest {
    request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    )
}

/// Connects and makes one call; a TLS rejection may surface at either step.
async fn call_with(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<simverify::proto::VerifyResponse, tonic::Status> {
    let channel = tls_channel(addr, &pki.ca_path(), identity)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    VerificationClient::new(channel)
        .verify(khai())
        .await
        .map(|r| r.into_inner())
}

async fn carrier_verifies_and_is_audited_as_itself(backend: Backend) {
    let pki = TestPki::new();
    let app = spawn_tls_app(backend, &pki, config(&[])).await;
    let id = pki.client("carrier-a", CARRIER);
    let r = call_with(app.addr, &pki, Some(&id)).await.unwrap();
    assert_eq!(r.decision(), Decision::Verified);
    app.synced().await;
    let rec = app.store.audit_by_id(&r.audit_id).await.unwrap().unwrap();
    assert_eq!(&*rec.caller, "carrier-a");
    app.stop().await;
}

async fn handshake_rejections(backend: Backend) {
    let pki = TestPki::new();
    let app = spawn_tls_app(backend, &pki, config(&[])).await;
    // No client certificate at all.
    assert!(call_with(app.addr, &pki, None).await.is_err());
    // A certificate from another CA, with a registered subject.
    let other = simverify::pki::Ca::new("rogue CA", pki.validity).unwrap();
    let rogue = pki.client_with(&other, "rogue", CARRIER, pki.validity);
    assert!(call_with(app.addr, &pki, Some(&rogue)).await.is_err());
    // An expired certificate from the right CA.
    let expired = simverify::pki::Validity {
        not_before: simverify::domain::CivilDate {
            year: 2020,
            month: 1,
            day: 1,
        },
        not_after: simverify::domain::CivilDate {
            year: 2021,
            month: 1,
            day: 1,
        },
    };
    let expired_id = pki.client_with(&pki.ca, "expired", CARRIER, expired);
    assert!(call_with(app.addr, &pki, Some(&expired_id)).await.is_err());
    // Nothing of this reached the audit log.
    app.synced().await;
    assert_eq!(app.store.audit_count().await.unwrap(), 0);
    app.stop().await;
}

async fn unregistered_and_wrong_role(backend: Backend) {
    let pki = TestPki::new();
    let app = spawn_tls_app(backend, &pki, config(&[])).await;
    let stranger = pki.client("stranger", "urn:simverify:carrier:stranger");
    let e = call_with(app.addr, &pki, Some(&stranger))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let auditor = pki.client("auditor", AUDITOR);
    let e = call_with(app.addr, &pki, Some(&auditor)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    app.synced().await;
    assert_eq!(app.store.audit_count().await.unwrap(), 0);
    app.stop().await;
}

async fn rate_limit_and_quota(backend: Backend) {
    let pki = TestPki::new();
    let mut slow = principal("urn:simverify:carrier:slow", "slow", Role::Carrier);
    (slow.rate_per_sec, slow.burst) = (Some(0.01), Some(3));
    let mut capped = principal("urn:simverify:carrier:capped", "capped", Role::Carrier);
    capped.daily_quota = Some(2);
    let mut streamer = principal("urn:simverify:carrier:streamer", "streamer", Role::Carrier);
    (streamer.rate_per_sec, streamer.burst) = (Some(0.01), Some(10));
    let app = spawn_tls_app(backend, &pki, config(&[slow, capped, streamer])).await;

    let slow_id = pki.client("slow", "urn:simverify:carrier:slow");
    let mut client = VerificationClient::new(
        tls_channel(app.addr, &pki.ca_path(), Some(&slow_id))
            .await
            .unwrap(),
    );
    for _ in 0..3 {
        client.verify(khai()).await.unwrap();
    }
    let e = client.verify(khai()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let retry = e
        .get_error_details()
        .retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("delay");
    assert!(retry > Duration::from_secs(1), "{retry:?}");

    let capped_id = pki.client("capped", "urn:simverify:carrier:capped");
    let mut client = VerificationClient::new(
        tls_channel(app.addr, &pki.ca_path(), Some(&capped_id))
            .await
            .unwrap(),
    );
    client.verify(khai()).await.unwrap();
    client.verify(khai()).await.unwrap();
    let e = client.verify(khai()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("daily quota"), "{}", e.message());
    assert!(e.get_error_details().retry_info().is_some());

    // Streams are charged per item: 4 + 4 fit a burst of 10, the third batch does not.
    let streamer_id = pki.client("streamer", "urn:simverify:carrier:streamer");
    let mut client = VerificationClient::new(
        tls_channel(app.addr, &pki.ca_path(), Some(&streamer_id))
            .await
            .unwrap(),
    );
    let batches: Vec<VerifyBatch> = (1..=3)
        .map(|seq| VerifyBatch {
            batch_seq: seq,
            job_id: String::new(),
            requests: (0..4).map(|_| khai()).collect(),
        })
        .collect();
    let mut out = client
        .verify_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut ok = 0;
    let err = loop {
        match out.next().await {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => break e,
            None => panic!("stream ended without the quota error"),
        }
    };
    assert_eq!(ok, 2);
    assert_eq!(err.code(), Code::ResourceExhausted);
    // 3 + 2 unary + 8 stream items answered and audited; nothing for refusals.
    app.synced().await;
    assert_eq!(app.store.audit_count().await.unwrap(), 13);
    app.stop().await;
}

both_backends!(
    carrier_verifies_and_is_audited_as_itself,
    handshake_rejections,
    unregistered_and_wrong_role,
    rate_limit_and_quota,
);
