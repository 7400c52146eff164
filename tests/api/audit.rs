//! The Audit service: who may read what, filters on hashed identities,
//! paging, statistics, and the record of every query.

use simverify::config::{Config, Role};
use simverify::proto::audit_client::AuditClient;
use simverify::proto::verification_client::VerificationClient;
use simverify::proto::{AuditFilter, AuditQuery, AuditStatsRequest, Decision, Sex};
use sqlx::Connection;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, TestPki, principal, spawn_tls_app, tls_channel};
use crate::verify::request;

const A: &str = "urn:simverify:carrier:carrier-a";
const B: &str = "urn:simverify:carrier:carrier-b";
const AUDITOR: &str = "urn:simverify:auditor:auditor-1";
const ADMIN: &str = "urn:simverify:admin:admin-1";

async fn as_(app: &TestApp, pki: &TestPki, name: &str, uri: &str) -> Channel {
    let id = pki.client(name, uri);
    tls_channel(app.addr, &pki.ca_path(), Some(&id))
        .await
        .unwrap()
}

fn query(filter: AuditFilter) -> AuditQuery {
    AuditQuery {
        filter: Some(filter),
        page_size: 0,
        page_token: String::new(),
    }
}

async fn all_filters_and_roles(backend: Backend) {
    let pki = TestPki::new();
    let cfg = Config {
        principals: vec![
            principal(A, "carrier-a", Role::Carrier),
            principal(B, "carrier-b", Role::Carrier),
            principal(AUDITOR, "auditor-1", Role::Auditor),
            principal(ADMIN, "admin-1", Role::Admin),
        ],
        ..Config::default()
    };
    let app = spawn_tls_app(backend, &pki, cfg).await;
    let (a, b) = (as_(&app, &pki, "a", A).await, as_(&app, &pki, "b", B).await);
    let khai = || {
        request(
            "001190012345",
            "Nguyễn Thị Minh Khai",
            "1990-05-17",
            Sex::Female,
        )
    };
    let mut va = VerificationClient::new(a.clone());
    va.verify(khai()).await.unwrap();
    va.verify(khai()).await.unwrap();
    let mut other = request("079085001234", "Trần Văn Hoà", "1985-03-02", Sex::Male);
    other.msisdn = "0987000111".into();
    va.verify(other).await.unwrap();
    let mut vb = VerificationClient::new(b.clone());
    vb.verify(khai()).await.unwrap();
    vb.verify(request("001190099999", "Ai Đó", "1990-05-17", Sex::Female))
        .await
        .unwrap();

    let mut auditor = AuditClient::new(as_(&app, &pki, "auditor", AUDITOR).await);
    let count = |page: simverify::proto::AuditPage| page.records.len();
    let all = auditor
        .query(query(AuditFilter::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.records.len(), 5);
    assert!(
        all.records
            .windows(2)
            .all(|w| w[0].recorded_at.unwrap().seconds <= w[1].recorded_at.unwrap().seconds)
    );
    let f = AuditFilter {
        carrier_id: "carrier-b".into(),
        ..Default::default()
    };
    assert_eq!(
        count(auditor.query(query(f)).await.unwrap().into_inner()),
        2
    );
    // By plaintext MSISDN, in another written form than was verified.
    let f = AuditFilter {
        msisdn: "84 912 345 678".into(),
        ..Default::default()
    };
    let r = auditor.query(query(f)).await.unwrap().into_inner();
    // Every request but the one sent from 0987000111.
    assert_eq!(r.records.len(), 4);
    assert!(r.records.iter().all(|x| !x.msisdn_ref.is_empty()));
    let f = AuditFilter {
        id_number: "001190012345".into(),
        carrier_id: "carrier-a".into(),
        ..Default::default()
    };
    assert_eq!(
        count(auditor.query(query(f)).await.unwrap().into_inner()),
        2
    );
    let f = AuditFilter {
        decision: Decision::NotFound as i32,
        ..Default::default()
    };
    assert_eq!(
        count(auditor.query(query(f)).await.unwrap().into_inner()),
        1
    );
    let f = AuditFilter {
        since: Some(simverify::grpc::audit::timestamp(
            simverify::clock::now_micros() + 60_000_000,
        )),
        ..Default::default()
    };
    assert_eq!(
        count(auditor.query(query(f)).await.unwrap().into_inner()),
        0
    );

    // Paging: stable order, opaque tokens, nothing lost or repeated.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = auditor
            .query(AuditQuery {
                filter: None,
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.records.into_iter().map(|r| r.audit_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        all.records
            .iter()
            .map(|r| r.audit_id.clone())
            .collect::<Vec<_>>()
    );
    let e = auditor
        .query(AuditQuery {
            page_token: "garbage".into(),
            ..query(AuditFilter::default())
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = auditor
        .query(query(AuditFilter {
            msisdn: "12345".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "msisdn"
    );

    // A carrier sees its own records only, and may not ask for another's.
    let mut ca = AuditClient::new(a.clone());
    let own = ca
        .query(query(AuditFilter::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.records.len(), 3);
    assert!(own.records.iter().all(|r| r.caller == "carrier-a"));
    let e = ca
        .query(query(AuditFilter {
            carrier_id: "carrier-b".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Admins have no audit access; auditors may not verify.
    let mut admin = AuditClient::new(as_(&app, &pki, "admin", ADMIN).await);
    assert_eq!(
        admin
            .query(query(AuditFilter::default()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // Statistics.
    let stats = auditor
        .stats(AuditStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.rows.iter().map(|r| r.count).sum::<u64>(), 5);
    assert!(
        stats
            .rows
            .iter()
            .all(|r| r.day == simverify::clock::today_vn().to_string())
    );
    let mine = ca
        .stats(AuditStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.rows.iter().map(|r| r.count).sum::<u64>(), 3);
    assert!(mine.rows.iter().all(|r| r.carrier_id == "carrier-a"));

    // Every query was recorded, with identifiers hashed.
    let db = app.stop().await;
    let filters: Vec<(String, String)> = match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_as("SELECT caller, filters FROM audit_queries")
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_as("SELECT caller, filters FROM audit_queries")
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
    };
    // 12 answered calls; refused ones (bad token, bad msisdn, wrong carrier, admin) are not.
    assert_eq!(filters.len(), 12, "{filters:#?}");
    assert!(filters.iter().any(|(_, f)| f.contains("msisdn_ref")));
    for (_, f) in &filters {
        for secret in ["912345678", "001190012345"] {
            assert!(!f.contains(secret), "audit query log holds {secret}: {f}");
        }
    }
}

both_backends!(all_filters_and_roles);
