//! The cleanup client's requests, encoded as rows are read.
//!
//! Building a `pb::VerifyBatch` costs five owned strings per row, allocated
//! on the reader thread and freed on the runtime's after encoding: a fifth of
//! the client's CPU went to the allocator, and the client shares the machine
//! with the gateway it is measured against. Here each row's fields are
//! written straight from the input record into one buffer per batch, in the
//! exact bytes prost writes for the same message (a test holds the two
//! equal), and the buffer is handed to tonic as an already-encoded message.

use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::domain::RawRequest;
use crate::grpc::convert;
use crate::proto as pb;

/// `simverify.v1.VerifyBatch` field numbers.
const BATCH_SEQ: u32 = 1;
const JOB_ID: u32 = 2;
const REQUESTS: u32 = 3;

/// `simverify.v1.VerifyRequest` field numbers.
const REQUEST_ID: u32 = 1;
const MSISDN: u32 = 2;
const ID_NUMBER: u32 = 3;
const FULL_NAME: u32 = 4;
const DATE_OF_BIRTH: u32 = 5;
const SEX: u32 = 6;
const PURPOSE: u32 = 7;
const CONSENT_REF: u32 = 8;

/// A `VerifyBatch` being written, request by request.
pub struct BatchEncoder {
    buf: Vec<u8>,
    /// The request being written: its length precedes it on the wire.
    scratch: Vec<u8>,
    requests: usize,
}

impl BatchEncoder {
    pub fn new(batch_seq: u64, job_id: &str, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        // proto3 leaves fields at their default value off the wire, as prost does.
        if batch_seq != 0 {
            encode_key(BATCH_SEQ, WireType::Varint, &mut buf);
            encode_varint(batch_seq, &mut buf);
        }
        put_str(&mut buf, JOB_ID, job_id);
        Self {
            buf,
            scratch: Vec::with_capacity(256),
            requests: 0,
        }
    }

    /// Appends `r`, the row's fields as read (the gateway parses them).
    pub fn push(&mut self, r: &RawRequest<'_>, purpose: pb::Purpose) {
        let s = &mut self.scratch;
        s.clear();
        put_str(s, REQUEST_ID, r.request_id);
        put_str(s, MSISDN, r.msisdn);
        put_str(s, ID_NUMBER, r.id_number);
        put_str(s, FULL_NAME, r.full_name);
        put_str(s, DATE_OF_BIRTH, r.date_of_birth);
        put_enum(s, SEX, convert::sex_to_pb(r.sex) as i32);
        put_enum(s, PURPOSE, purpose as i32);
        // An optional field is on the wire whenever it is set, even empty.
        if let Some(c) = r.consent_ref {
            put_bytes(s, CONSENT_REF, c);
        }
        encode_key(REQUESTS, WireType::LengthDelimited, &mut self.buf);
        encode_varint(s.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(s);
        self.requests += 1;
    }

    /// Requests written so far.
    pub fn len(&self) -> usize {
        self.requests
    }

    pub fn finish(self) -> EncodedBatch {
        EncodedBatch(self.buf)
    }
}

fn put_str(buf: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(buf, tag, s);
    }
}

fn put_bytes(buf: &mut Vec<u8>, tag: u32, s: &str) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

/// Our enums have no negative values, so a varint of the value as is.
fn put_enum(buf: &mut Vec<u8>, tag: u32, v: i32) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v as u64, buf);
    }
}

/// A `VerifyBatch` already in its wire form. It is a `prost::Message` only
/// so that tonic's prost codec can send it: encoding copies the bytes, and
/// decoding (which the client never does) keeps nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedBatch(Vec<u8>);

impl prost::Message for EncodedBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Sex;
    use proptest::prelude::*;
    use prost::Message;

    type Row = (Vec<String>, Option<Sex>, Option<String>);

    fn raw(r: &Row) -> RawRequest<'_> {
        let (f, sex, consent_ref) = r;
        RawRequest {
            request_id: &f[0],
            msisdn: &f[1],
            id_number: &f[2],
            full_name: &f[3],
            date_of_birth: &f[4],
            sex: *sex,
            consent_ref: consent_ref.as_deref(),
        }
    }

    fn by_prost(seq: u64, job_id: &str, rows: &[Row]) -> Vec<u8> {
        pb::VerifyBatch {
            batch_seq: seq,
            job_id: job_id.to_owned(),
            requests: rows
                .iter()
                .map(|row| {
                    let r = raw(row);
                    pb::VerifyRequest {
                        request_id: r.request_id.to_owned(),
                        msisdn: r.msisdn.to_owned(),
                        id_number: r.id_number.to_owned(),
                        full_name: r.full_name.to_owned(),
                        date_of_birth: r.date_of_birth.to_owned(),
                        sex: convert::sex_to_pb(r.sex) as i32,
                        purpose: pb::Purpose::Cleanup as i32,
                        consent_ref: r.consent_ref.map(str::to_owned),
                    }
                })
                .collect(),
        }
        .encode_to_vec()
    }

    proptest! {
        /// The gateway must read exactly what prost would have sent: same
        /// bytes, including empty fields left out, a set but empty optional
        /// field kept, and long fields whose lengths take more than one
        /// varint byte.
        #[test]
        fn batches_are_encoded_as_prost_encodes_them(
            seq in prop_oneof![Just(0u64), 1u64..200, proptest::num::u64::ANY],
            job_id in "[ -~]{0,64}",
            rows in proptest::collection::vec(
                (
                    proptest::collection::vec("\\PC{0,40}|[a-z]{120,200}", 5),
                    prop_oneof![Just(None), Just(Some(Sex::Male)), Just(Some(Sex::Female))],
                    proptest::option::of("[ -~]{0,20}"),
                ),
                0..20,
            ),
        ) {
            let mut enc = BatchEncoder::new(seq, &job_id, 64);
            for row in &rows {
                enc.push(&raw(row), pb::Purpose::Cleanup);
            }
            prop_assert_eq!(enc.len(), rows.len());
            let encoded = enc.finish();
            prop_assert_eq!(encoded.encoded_len(), encoded.0.len());
            prop_assert_eq!(encoded.encode_to_vec(), by_prost(seq, &job_id, &rows));
        }
    }
}
