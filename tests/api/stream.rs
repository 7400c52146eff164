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

/// A request as a client careless of UTF-8 sends it: its text as bytes.
/// Same field numbers as `VerifyRequest`; on the wire the two are alike.
#[derive(Clone, PartialEq, prost::Message)]
struct LooseRequest {
    #[prost(bytes = "vec", tag = "1")]
    request_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    msisdn: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    id_number: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    full_name: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    date_of_birth: Vec<u8>,
    #[prost(int32, tag = "6")]
    sex: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LooseBatch {
    #[prost(uint64, tag = "1")]
    batch_seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    job_id: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    requests: Vec<LooseRequest>,
}

async fn text_that_is_not_utf8_is_refused_field_by_field(backend: Backend) {
    use simverify::proto::VerifyResponse;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic_prost::ProstCodec;
    use tonic_types::StatusExt;

    let app = spawn_app(backend).await;
    let channel = app.channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    let loose = |name: &[u8], n: u32| LooseRequest {
        request_id: format!("loose-{n}").into_bytes(),
        msisdn: b"+84 912 345 678".to_vec(),
        id_number: b"001190012345".to_vec(),
        full_name: name.to_vec(),
        date_of_birth: b"1990-05-17".to_vec(),
        sex: Sex::Female as i32,
    };
    // "Nguyễn Thị Minh Khai" with one byte of "Thị" that no UTF-8 has.
    let good_name = "Nguyễn Thị Minh Khai".as_bytes();
    let mut bad_name = good_name.to_vec();
    bad_name[10] = 0xff;
    assert!(std::str::from_utf8(&bad_name).is_err());

    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(loose(&bad_name, 1)),
            PathAndQuery::from_static("/simverify.v1.Verification/Verify"),
            ProstCodec::<LooseRequest, VerifyResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let details = status.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["full_name"]);

    let stream_path = PathAndQuery::from_static("/simverify.v1.Verification/VerifyStream");
    let batch = LooseBatch {
        batch_seq: 1,
        job_id: b"job-8".to_vec(),
        requests: vec![loose(&bad_name, 2), loose(good_name, 3)],
    };
    grpc.ready().await.unwrap();
    let out: Vec<VerifyBatchResult> = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([batch])),
            stream_path.clone(),
            ProstCodec::<LooseBatch, VerifyBatchResult>::default(),
        )
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    let results = &out[0].results;
    assert_eq!(results[0].request_id, "loose-2");
    assert_eq!(results[0].decision(), Decision::Invalid);
    assert_eq!(results[0].violations[0].field, "full_name");
    assert_eq!(results[1].request_id, "loose-3");
    assert_eq!(results[1].decision(), Decision::Verified);

    // A job id that is not UTF-8 is refused like any unprintable one.
    let batch = LooseBatch {
        batch_seq: 1,
        job_id: b"job-\xff".to_vec(),
        requests: vec![loose(good_name, 4)],
    };
    grpc.ready().await.unwrap();
    let err = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([batch])),
            stream_path,
            ProstCodec::<LooseBatch, VerifyBatchResult>::default(),
        )
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("job_id:"), "{}", err.message());
    app.stop().await;
}

both_backends!(
    answers_in_order_with_item_errors,
    oversized_batch_ends_the_stream_clearly,
    empty_and_unspecified_purpose_defaults_to_cleanup,
    text_that_is_not_utf8_is_refused_field_by_field,
);
