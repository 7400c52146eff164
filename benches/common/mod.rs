//! Inputs shared by the benchmark binaries.

use simverify::domain::{DobPrecision, FieldHash, LookupKey, MirrorRecord, RecordStatus};

/// A distinct lookup key per `i`, its first bytes spread the way HMAC
/// output is (the cache picks buckets from them).
pub fn lookup_key(i: u64) -> LookupKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    LookupKey(k)
}

/// A mirror record of the usual shape (a three-token name), distinct per `i`.
pub fn mirror_record(i: u64) -> MirrorRecord {
    let h = |t: u8| {
        let mut b = [t; 16];
        b[..8].copy_from_slice(&i.to_le_bytes());
        FieldHash(b)
    };
    MirrorRecord {
        name: h(1),
        folded: h(2),
        tokens: vec![h(3), h(4), h(5)],
        dob: h(6),
        dob_precision: DobPrecision::Day,
        sex: h(7),
        status: RecordStatus::Active,
        key_id: 1,
        source_version: 1,
    }
}
