//! Unary Verify over gRPC: decisions, tiers, errors and audit.

use simverify::proto::{
    Decision, FieldResult, NameTier, Purpose, RecommendedAction, Sex, VerifyRequest, VerifyResponse,
};
use tonic::Code;
use tonic_types::StatusExt;
use unicode_normalization::UnicodeNormalization;

use crate::both_backends;
use crate::helpers::{AppOptions, Backend, spawn_app, spawn_app_with};

pub fn request(id: &str, name: &str, dob: &str, sex: Sex) -> VerifyRequest {
    VerifyRequest {
        request_id: format!("t-{}", uuid::Uuid::new_v4().simple()),
        msisdn: "+84 912 345 678".into(),
        id_number: id.into(),
        full_name: name.into(),
        date_of_birth: dob.into(),
        sex: sex as i32,
        purpose: Purpose::Activation as i32,
        consent_ref: Some("consent-42".into()),
    }
}

struct Case {
    what: &'static str,
    id: &'static str,
    name: String,
    dob: &'static str,
    sex: Sex,
    decision: Decision,
    tier: NameTier,
    score: u32,
    action: RecommendedAction,
    reason: Option<&'static str>,
}

fn case(what: &'static str, id: &'static str, name: &str, dob: &'static str, sex: Sex) -> Case {
    Case {
        what,
        id,
        name: name.to_owned(),
        dob,
        sex,
        decision: Decision::Verified,
        tier: NameTier::Exact,
        score: 100,
        action: RecommendedAction::None,
        reason: None,
    }
}

impl Case {
    fn expect(mut self, d: Decision, t: NameTier, score: u32, a: RecommendedAction) -> Self {
        (self.decision, self.tier, self.score, self.action) = (d, t, score, a);
        self
    }
    fn reason(mut self, r: &'static str) -> Self {
        self.reason = Some(r);
        self
    }
}

const KHAI: &str = "001190012345";

async fn decisions_and_tiers(backend: Backend) {
    use Decision as D;
    use NameTier as T;
    use RecommendedAction as A;
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let nfd: String = "Nguyễn Thị Minh Khai".nfd().collect();
    let cases = vec![
        case(
            "nfc",
            KHAI,
            "Nguyễn Thị Minh Khai",
            "1990-05-17",
            Sex::Female,
        ),
        case("nfd", KHAI, &nfd, "1990-05-17", Sex::Female),
        case(
            "case and spacing",
            KHAI,
            "  NGUYỄN\u{a0}THỊ   minh\tKhai ",
            "1990-05-17",
            Sex::Unspecified,
        ),
        case(
            "tone placement hoà/hòa",
            "079085001234",
            "Trần Văn Hòa",
            "1985-03-02",
            Sex::Male,
        ),
        case(
            "tone placement thuỷ/thủy",
            "048199000777",
            "Đặng Thị Thủy",
            "1999-12-31",
            Sex::Female,
        ),
        case(
            "no diacritics",
            KHAI,
            "NGUYEN THI MINH KHAI",
            "1990-05-17",
            Sex::Female,
        )
        .expect(
            D::Mismatch,
            T::DiacriticsOnly,
            99,
            A::UpdateSubscriberRecord,
        )
        .reason("FULL_NAME_DIACRITICS_ONLY"),
        case(
            "đ folded",
            "048199000777",
            "Dang Thi Thuy",
            "1999-12-31",
            Sex::Female,
        )
        .expect(
            D::Mismatch,
            T::DiacriticsOnly,
            99,
            A::UpdateSubscriberRecord,
        ),
        case(
            "swapped tokens",
            KHAI,
            "Minh Khai Nguyễn Thị",
            "1990-05-17",
            Sex::Female,
        )
        .expect(D::Mismatch, T::TokenOverlap, 99, A::SuspendOutgoing)
        .reason("FULL_NAME_MISMATCH"),
        case(
            "one token differs",
            KHAI,
            "Nguyễn Thị Minh Hoa",
            "1990-05-17",
            Sex::Female,
        )
        .expect(D::Mismatch, T::TokenOverlap, 60, A::SuspendOutgoing),
        case(
            "other person",
            KHAI,
            "Trần Văn Bình",
            "1990-05-17",
            Sex::Female,
        )
        .expect(D::Mismatch, T::None, 0, A::SuspendOutgoing),
        case(
            "wrong day",
            KHAI,
            "Nguyễn Thị Minh Khai",
            "1990-05-18",
            Sex::Female,
        )
        .expect(D::Mismatch, T::Exact, 100, A::SuspendOutgoing)
        .reason("DATE_OF_BIRTH_MISMATCH"),
        case(
            "wrong sex",
            KHAI,
            "Nguyễn Thị Minh Khai",
            "1990-05-17",
            Sex::Male,
        )
        .expect(D::Mismatch, T::Exact, 100, A::SuspendOutgoing)
        .reason("ID_SEX_DIGIT_CONFLICT"),
        case(
            "birth year contradicts id",
            KHAI,
            "Nguyễn Thị Minh Khai",
            "1991-05-17",
            Sex::Female,
        )
        .expect(D::Mismatch, T::Exact, 100, A::SuspendOutgoing)
        .reason("ID_BIRTH_YEAR_CONFLICT"),
        case(
            "unknown id",
            "001190099999",
            "Nguyễn Thị Minh Khai",
            "1990-05-17",
            Sex::Female,
        )
        .expect(D::NotFound, T::Unspecified, 0, A::SuspendOutgoing)
        .reason("ID_NOT_FOUND"),
        case(
            "deceased",
            "036060123456",
            "Phạm Văn Đồng",
            "1960-01-01",
            Sex::Male,
        )
        .expect(D::Deceased, T::Exact, 100, A::SuspendOutgoing)
        .reason("PERSON_DECEASED"),
        case(
            "year-only mirror date",
            "001075000001",
            "Lê Văn Tám",
            "1975-08-19",
            Sex::Male,
        )
        .reason("DOB_YEAR_ONLY_IN_MIRROR"),
        case("name not provided", KHAI, "", "1990-05-17", Sex::Female)
            .expect(D::Mismatch, T::None, 0, A::SuspendOutgoing)
            .reason("FULL_NAME_NOT_PROVIDED"),
    ];
    for c in cases {
        let r: VerifyResponse = client
            .verify(request(c.id, &c.name, c.dob, c.sex))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.what))
            .into_inner();
        assert_eq!(r.decision(), c.decision, "{}: {r:?}", c.what);
        assert_eq!(r.name_tier(), c.tier, "{}: {r:?}", c.what);
        assert_eq!(r.name_score, c.score, "{}: {r:?}", c.what);
        assert_eq!(r.recommended_action(), c.action, "{}: {r:?}", c.what);
        if let Some(reason) = c.reason {
            assert!(
                r.reasons.iter().any(|x| x == reason),
                "{}: {reason} in {:?}",
                c.what,
                r.reasons
            );
        }
        if c.decision == D::Verified {
            assert!(r.full_name() == FieldResult::Match && r.date_of_birth() == FieldResult::Match);
        }
        assert!(!r.audit_id.is_empty());
        assert_eq!(r.mirror_version, 1);
    }
    app.stop().await;
}

async fn per_field_results(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let r = client
        .verify(request(
            KHAI,
            "Nguyễn Thị Minh Khai",
            "1990-05-18",
            Sex::Male,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.id_number(), FieldResult::Match);
    assert_eq!(r.full_name(), FieldResult::Match);
    assert_eq!(r.date_of_birth(), FieldResult::Mismatch);
    assert_eq!(r.sex(), FieldResult::Mismatch);
    let r = client
        .verify(request("001190099999", "A", "1990-05-17", Sex::Unspecified))
        .await
        .unwrap();
    let r = r.into_inner();
    assert_eq!(r.id_number(), FieldResult::NotAvailable);
    assert_eq!(r.full_name(), FieldResult::NotAvailable);
    app.stop().await;
}

async fn invalid_input_names_each_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let mut req = request("123456789", "Nguyễn Văn 3", "2023-02-30", Sex::Male);
    req.msisdn = "0241234567".into();
    let status = client.verify(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("id_number: 9-digit CMND numbers are no longer valid"),
        "{}",
        status.message()
    );
    for secret in ["123456789", "0241234567", "Nguyễn", "2023-02-30"] {
        assert!(!status.message().contains(secret), "status leaks {secret}");
    }
    let details = status.get_error_details();
    let bad = details.bad_request().expect("BadRequest details");
    let fields: Vec<(&str, &str)> = bad
        .field_violations
        .iter()
        .map(|v| (v.field.as_str(), v.reason.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("msisdn", "UNKNOWN_MOBILE_PREFIX"),
            ("id_number", "CMND_NO_LONGER_VALID"),
            ("full_name", "CONTAINS_DIGIT"),
            ("date_of_birth", "NOT_A_DATE"),
        ]
    );

    for (msisdn, reason) in [
        ("", "REQUIRED"),
        ("09123", "BAD_FORMAT"),
        ("0912x45678", "BAD_CHARACTER"),
    ] {
        let mut req = request(KHAI, "Nguyễn Thị Minh Khai", "1990-05-17", Sex::Female);
        req.msisdn = msisdn.into();
        let status = client.verify(req).await.unwrap_err();
        let details = status.get_error_details();
        let v = &details.bad_request().unwrap().field_violations[0];
        assert_eq!((v.field.as_str(), v.reason.as_str()), ("msisdn", reason));
    }
    let mut req = request(KHAI, "Nguyễn Thị Minh Khai", "2990-05-17", Sex::Female);
    req.request_id = "x".repeat(65);
    let status = client.verify(req).await.unwrap_err();
    let details = status.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["request_id", "date_of_birth"]);
    app.stop().await;
}

async fn every_answer_is_audited(backend: Backend) {
    answers_are_audited(backend, false).await;
}

/// The same with `audit.commit = "database"`: no journal, each answer waits
/// for the database commit.
async fn every_answer_is_audited_with_database_commit(backend: Backend) {
    answers_are_audited(backend, true).await;
}

async fn answers_are_audited(backend: Backend, commit_to_database: bool) {
    let app = spawn_app_with(
        backend,
        AppOptions {
            commit_to_database,
            ..AppOptions::default()
        },
    )
    .await;
    let mut client = app.client().await;
    let mut ids = Vec::new();
    for (id, name) in [(KHAI, "Nguyễn Thị Minh Khai"), ("001190099999", "Ai Đó")] {
        let req = request(id, name, "1990-05-17", Sex::Female);
        let request_id = req.request_id.clone();
        let r = client.verify(req).await.unwrap().into_inner();
        assert_eq!(r.request_id, request_id);
        let decision = r.decision();
        ids.push((r.audit_id, request_id, decision));
    }
    if !commit_to_database {
        app.synced().await;
    }
    for (audit_id, request_id, decision) in ids {
        let rec = app
            .store
            .audit_by_id(&audit_id)
            .await
            .unwrap()
            .expect("audit record exists");
        assert_eq!(rec.request_id, request_id);
        assert_eq!(&*rec.caller, "dev-carrier");
        assert_eq!(rec.purpose, simverify::domain::Purpose::Activation);
        assert_eq!(rec.consent_ref.as_deref(), Some("consent-42"));
        assert!(rec.lookup_key.is_some() && rec.msisdn_hash.is_some());
        assert_eq!(rec.mirror_version, 1);
        let expected = match decision {
            Decision::Verified => simverify::domain::Decision::Verified,
            _ => simverify::domain::Decision::NotFound,
        };
        assert_eq!(rec.verdict.decision, expected);
    }
    assert_eq!(app.store.audit_count().await.unwrap(), 2);
    app.stop().await;
}

async fn imports_reach_a_running_gateway(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let newcomer = "001302000001";
    let ask = |name: &str| request(newcomer, name, "2002-02-02", Sex::Female);
    // Cached as NOT_FOUND first.
    let r = client.verify(ask("Vũ Thị Mai")).await.unwrap().into_inner();
    assert_eq!(r.decision(), Decision::NotFound);

    let csv =
        "id_number,full_name,date_of_birth,sex,status\n001302000001,Vũ Thị Mai,2002-02-02,F,\n";
    let report = crate::helpers::import(&app.store, csv).await;
    assert_eq!((report.version, report.changed), (2, 1));
    let r = wait_for(&mut client, ask("Vũ Thị Mai"), Decision::Verified).await;
    assert_eq!(r.mirror_version, 2);

    let csv = "id_number,full_name,date_of_birth,sex,status\n001302000001,Vũ Thị Mai,2002-02-02,F,deleted\n";
    assert_eq!(crate::helpers::import(&app.store, csv).await.deleted, 1);
    wait_for(&mut client, ask("Vũ Thị Mai"), Decision::NotFound).await;
    app.stop().await;
}

/// Polls until the gateway's watcher has applied an import (bounded).
async fn wait_for(
    client: &mut simverify::proto::verification_client::VerificationClient<
        tonic::transport::Channel,
    >,
    req: VerifyRequest,
    want: Decision,
) -> VerifyResponse {
    for _ in 0..100 {
        let r = client.verify(req.clone()).await.unwrap().into_inner();
        if r.decision() == want {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("gateway never answered {want:?}");
}

async fn health_reports_serving(backend: Backend) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let app = spawn_app(backend).await;
    let channel = app.channel().await;
    let mut health = HealthClient::new(channel);
    let r = health
        .check(HealthCheckRequest {
            service: "simverify.v1.Verification".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);
    app.stop().await;
}

both_backends!(
    decisions_and_tiers,
    per_field_results,
    invalid_input_names_each_field,
    every_answer_is_audited,
    every_answer_is_audited_with_database_commit,
    imports_reach_a_running_gateway,
    health_reports_serving,
);
