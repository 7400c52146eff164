//! VerifyStream over gRPC: order, item-level errors, limits, audit.

use simverify::proto::{Decision, Sex, VerifyBatch, VerifyBatchResult};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::both_backends;
use crate::helpers::{AppOptions, Backend, spawn_app, spawn_app_with};
use crate::verify::request;

fn batch(seq: u64, requests: Vec<simverify::proto::VerifyRequest>) -> VerifyBatch {
    VerifyBatch {
        batch_seq: seq,
        job_id: "job-7".into(),
        requests,
    }
}

async fn answers_in_order_with_item_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let good = request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    );
    let mut cmnd = request(
        "123456789",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    );
    cmnd.request_id = "bad-1".into();
    let mut phone = request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    );
    phone.msisdn = "12345".into();
    let unknown = request("001190099999", "Ai Đó", "1990-05-17", Sex::Unspecified);
    let sent = vec![
        batch(1, vec![good.clone(), cmnd.clone(), unknown.clone()]),
        batch(2, vec![phone.clone()]),
        batch(3, (0..50).map(|_| good.clone()).collect()),
    ];
    let expected_ids: Vec<Vec<String>> = sent
        .iter()
        .map(|b| b.requests.iter().map(|r| r.request_id.clone()).collect())
        .collect();
    let out: Vec<VerifyBatchResult> = client
        .verify_stream(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|b| b.batch_seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for (b, ids) in out.iter().zip(&expected_ids) {
        let got: Vec<&String> = b.results.iter().map(|r| &r.request_id).collect();
        assert_eq!(got, ids.iter().collect::<Vec<_>>());
    }
    let first = &out[0].results;
    assert_eq!(first[0].decision(), Decision::Verified);
    assert_eq!(first[1].decision(), Decision::Invalid);
    assert_eq!(first[1].violations[0].field, "id_number");
    assert_eq!(first[1].violations[0].reason, "CMND_NO_LONGER_VALID");
    assert!(first[1].reasons.contains(&"INVALID_INPUT".to_owned()));
    assert_eq!(first[2].decision(), Decision::NotFound);
    assert_eq!(out[1].results[0].decision(), Decision::Invalid);
    assert_eq!(out[1].results[0].violations[0].field, "msisdn");
    assert!(
        out[2]
            .results
            .iter()
            .all(|r| r.decision() == Decision::Verified)
    );

    // Every item, invalid ones included, has its audit record with the job id.
    app.synced().await;
    let mut audited = 0;
    for r in out.iter().flat_map(|b| &b.results) {
        let rec = app
            .store
            .audit_by_id(&r.audit_id)
            .await
            .unwrap()
            .expect("audited");
        assert_eq!(rec.job_id.as_deref(), Some("job-7"));
        assert_eq!(rec.purpose, simverify::domain::Purpose::Activation);
        audited += 1;
    }
    assert_eq!(audited, 54);
    assert_eq!(app.store.audit_count().await.unwrap(), 54);
    app.stop().await;
}

async fn oversized_batch_ends_the_stream_clearly(backend: Backend) {
    let app = spawn_app_with(
        backend,
        AppOptions {
            max_batch_items: 10,
            ..Default::default()
        },
    )
    .await;
    let mut client = app.client().await;
    let good = request(
        "001190012345",
        "Nguyễn Thị Minh Khai",
        "1990-05-17",
        Sex::Female,
    );
    let sent = vec![
        batch(1, vec![good.clone()]),
        batch(2, (0..11).map(|_| good.clone()).collect()),
    ];
    let mut stream = client
        .verify_stream(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.results.len(), 1);
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 10"), "{}", err.message());
    assert!(stream.next().await.is_none());
    app.stop().await;
}

async fn empty_and_unspecified_purpose_defaults_to_cleanup(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client().await;
    let mut r = request("079085001234", "Tran Van Hoa", "1985-03-02", Sex::Male);
    r.purpose = 0;
    let sent = vec![batch(1, vec![]), batch(2, vec![r])];
    let out: Vec<VerifyBatchResult> = client
        .verify_stream(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert!(out[0].results.is_empty());
    app.synced().await;
    let rec = app
        .store
        .audit_by_id(&out[1].results[0].audit_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.purpose, simverify::domain::Purpose::Cleanup);
    assert_eq!(out[1].results[0].decision(), Decision::Mismatch);
    app.stop().await;
}

both_backends!(
    answers_in_order_with_item_errors,
    oversized_batch_ends_the_stream_clearly,
    empty_and_unspecified_purpose_defaults_to_cleanup,
);
