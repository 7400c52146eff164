//! The requests the gateway reads, decoded without copying their text.
//!
//! prost decodes a `string` field into a `String` of its own: for a stream
//! of batches that is six allocations and copies per request, freed later on
//! whichever worker answered it, and the allocator was the largest single
//! cost of a warm stream. These types have the same fields and tags as
//! `VerifyRequest` and `VerifyBatch` (a test holds them to the generated
//! ones), but their text fields are `Bytes`: slices of the buffer tonic
//! received the message into, shared rather than copied.
//!
//! `string` and `bytes` fields are the same on the wire, so nothing checks
//! UTF-8 while decoding; [`VerifyRequestIn::text`] does, field by field. A
//! field that is not UTF-8 then fails that field's validation (as text with
//! U+FFFD in place of the bad bytes, which no field accepts) and is answered
//! INVALID with the field named, where prost would refuse the whole message.

use std::borrow::Cow;

use prost::bytes::Bytes;

/// `simverify.v1.VerifyRequest`, as the gateway reads it.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct VerifyRequestIn {
    #[prost(bytes = "bytes", tag = "1")]
    pub request_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub msisdn: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub id_number: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub full_name: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub date_of_birth: Bytes,
    /// `pb::Sex`; an enum is an int32 on the wire.
    #[prost(int32, tag = "6")]
    pub sex: i32,
    /// `pb::Purpose`.
    #[prost(int32, tag = "7")]
    pub purpose: i32,
    #[prost(bytes = "bytes", optional, tag = "8")]
    pub consent_ref: Option<Bytes>,
}

/// Never prints the subscriber's data.
impl std::fmt::Debug for VerifyRequestIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyRequestIn(<redacted>)")
    }
}

/// `simverify.v1.VerifyBatch`, as the gateway reads it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VerifyBatchIn {
    #[prost(uint64, tag = "1")]
    pub batch_seq: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub job_id: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub requests: Vec<VerifyRequestIn>,
}

/// A request's fields as text: borrowed from the message when they are
/// UTF-8, which a conforming client's always are.
pub struct RequestText<'a> {
    pub request_id: Cow<'a, str>,
    pub msisdn: Cow<'a, str>,
    pub id_number: Cow<'a, str>,
    pub full_name: Cow<'a, str>,
    pub date_of_birth: Cow<'a, str>,
    pub consent_ref: Option<Cow<'a, str>>,
    pub sex: i32,
    pub purpose: i32,
}

impl VerifyRequestIn {
    pub fn text(&self) -> RequestText<'_> {
        fn t(b: &Bytes) -> Cow<'_, str> {
            // `from_utf8` checks ASCII a word at a time; `from_utf8_lossy`
            // walks every byte even when there is nothing to replace.
            match std::str::from_utf8(b) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(b),
            }
        }
        RequestText {
            request_id: t(&self.request_id),
            msisdn: t(&self.msisdn),
            id_number: t(&self.id_number),
            full_name: t(&self.full_name),
            date_of_birth: t(&self.date_of_birth),
            consent_ref: self.consent_ref.as_ref().map(t),
            sex: self.sex,
            purpose: self.purpose,
        }
    }
}

impl VerifyBatchIn {
    /// The job id, if it is UTF-8.
    pub fn job_id(&self) -> Option<&str> {
        std::str::from_utf8(&self.job_id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto as pb;
    use prost::Message;

    fn request() -> impl proptest::strategy::Strategy<Value = pb::VerifyRequest> {
        use proptest::prelude::*;
        (
            proptest::collection::vec("\\PC{0,40}|[a-z]{130,200}", 5),
            any::<i32>(),
            any::<i32>(),
            proptest::option::of("\\PC{0,20}"),
        )
            .prop_map(|(f, sex, purpose, consent_ref)| pb::VerifyRequest {
                request_id: f[0].clone(),
                msisdn: f[1].clone(),
                id_number: f[2].clone(),
                full_name: f[3].clone(),
                date_of_birth: f[4].clone(),
                sex,
                purpose,
                consent_ref,
            })
    }

    fn same(a: &pb::VerifyRequest, b: &VerifyRequestIn) -> bool {
        let t = b.text();
        t.request_id == a.request_id
            && t.msisdn == a.msisdn
            && t.id_number == a.id_number
            && t.full_name == a.full_name
            && t.date_of_birth == a.date_of_birth
            && t.consent_ref.as_deref() == a.consent_ref.as_deref()
            && t.sex == a.sex
            && t.purpose == a.purpose
            && b.encode_to_vec() == a.encode_to_vec()
    }

    proptest::proptest! {
        /// Whatever a client built with the generated types sends, the
        /// gateway reads the same values, and would write the same bytes.
        #[test]
        fn requests_and_batches_read_as_the_generated_types_write_them(
            seq in proptest::num::u64::ANY,
            job_id in "[ -~]{0,64}",
            requests in proptest::collection::vec(request(), 0..12),
        ) {
            for r in &requests {
                let read = VerifyRequestIn::decode(r.encode_to_vec().as_slice()).unwrap();
                proptest::prop_assert!(same(r, &read));
            }
            let batch = pb::VerifyBatch { batch_seq: seq, job_id: job_id.clone(), requests: requests.clone() };
            let read = VerifyBatchIn::decode(batch.encode_to_vec().as_slice()).unwrap();
            proptest::prop_assert_eq!(read.batch_seq, seq);
            proptest::prop_assert_eq!(read.job_id(), Some(job_id.as_str()));
            proptest::prop_assert_eq!(read.requests.len(), requests.len());
            for (a, b) in requests.iter().zip(&read.requests) {
                proptest::prop_assert!(same(a, b));
            }
            proptest::prop_assert_eq!(read.encode_to_vec(), batch.encode_to_vec());
        }
    }

    #[test]
    fn text_that_is_not_utf8_reads_as_text_every_field_refuses() {
        let r = VerifyRequestIn {
            full_name: Bytes::from_static(b"Nguy\xffn V\xe1n A"),
            ..Default::default()
        };
        let t = r.text();
        assert!(t.full_name.contains('\u{fffd}'));
        assert!(crate::domain::FullName::parse(&t.full_name).is_err());
    }

    #[test]
    fn debug_output_names_no_field_value() {
        let r = VerifyRequestIn {
            full_name: Bytes::from_static("Nguyễn Văn An".as_bytes()),
            id_number: Bytes::from_static(b"001203004567"),
            ..Default::default()
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("001203004567") && !shown.contains("Nguy"));
    }
}
