//! Keyed hashing (HMAC-SHA256): the only form in which identities are stored.
//!
//! Plain hashes of short values (12 digits, a date) are reversible by
//! enumeration; a secret key stops that. Every value is domain-separated by a
//! tag, and record fields are **bound to the record**: they are hashed after
//! the record's lookup key, so two people with the same name have unrelated
//! stored name hashes and the store reveals no equalities across records.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::citizen_id::CitizenId;
use super::msisdn::Msisdn;

type HmacSha256 = Hmac<Sha256>;

/// HMAC of a canonical ID number: the mirror's primary key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupKey(pub [u8; 32]);

/// A record-bound field hash, truncated to 128 bits: enough to make accidental
/// equality negligible, and it halves cache and store size.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldHash(pub [u8; 16]);

/// Keyed hash of a canonical MSISDN, for audit queries by phone number.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsisdnHash(pub [u8; 32]);

macro_rules! hex_debug {
    ($t:ty) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // A keyed hash is safe to show; the first bytes are enough to
                // tell values apart in a log.
                for b in &self.0[..6] {
                    write!(f, "{b:02x}")?;
                }
                f.write_str("…")
            }
        }
    };
}
hex_debug!(LookupKey);
hex_debug!(FieldHash);
hex_debug!(MsisdnHash);

impl FieldHash {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }
}

impl LookupKey {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }
}

/// Domain-separation tags: one per kind of hashed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FieldTag {
    Name = b'n',
    FoldedName = b'f',
    Token = b't',
    Dob = b'd',
    Sex = b's',
}

/// The secret key's keyed HMAC state, computed once. Cloning the state is much
/// cheaper than re-keying per call (the key schedule is two SHA-256 blocks).
#[derive(Clone)]
pub struct KeyedHasher {
    base: HmacSha256,
    key_id: u16,
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedHasher")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Shortest key we accept: the key is what keeps 12-digit IDs from being
/// enumerated, so it needs full strength.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("the hash key must be at least {MIN_KEY_BYTES} bytes")]
pub struct WeakKeyError;

impl KeyedHasher {
    pub fn new(key: &[u8], key_id: u16) -> Result<Self, WeakKeyError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(WeakKeyError);
        }
        let base = HmacSha256::new_from_slice(key).map_err(|_| WeakKeyError)?;
        Ok(Self { base, key_id })
    }

    /// Identifies the key, so records can be re-keyed when it rotates.
    pub fn key_id(&self) -> u16 {
        self.key_id
    }

    /// A value that identifies the key without revealing it, stored with the
    /// mirror so a gateway started with the wrong key can refuse to serve.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut m = self.base.clone();
        m.update(b"simverify key fingerprint\0");
        m.finalize().into_bytes().into()
    }

    pub fn lookup_key(&self, id: &CitizenId) -> LookupKey {
        let mut m = self.base.clone();
        m.update(b"id\0");
        m.update(id.as_bytes());
        LookupKey(m.finalize().into_bytes().into())
    }

    pub fn msisdn(&self, msisdn: &Msisdn) -> MsisdnHash {
        let mut m = self.base.clone();
        m.update(b"msisdn\0");
        m.update(msisdn.nsn_bytes());
        MsisdnHash(m.finalize().into_bytes().into())
    }

    /// A hasher for the fields of the record with this lookup key.
    pub fn record(&self, key: &LookupKey) -> RecordHasher {
        let mut m = self.base.clone();
        m.update(b"rec\0");
        m.update(&key.0);
        RecordHasher { state: m }
    }
}

/// HMAC state that has already absorbed a record's lookup key.
#[derive(Clone)]
pub struct RecordHasher {
    state: HmacSha256,
}

impl RecordHasher {
    pub fn field(&self, tag: FieldTag, value: &[u8]) -> FieldHash {
        let mut m = self.state.clone();
        m.update(&[tag as u8]);
        m.update(value);
        let full: [u8; 32] = m.finalize().into_bytes().into();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        FieldHash(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> KeyedHasher {
        KeyedHasher::new(&[7u8; 32], 1).unwrap()
    }

    #[test]
    fn rejects_short_keys() {
        assert!(KeyedHasher::new(&[1u8; 31], 1).is_err());
    }

    #[test]
    fn deterministic_and_keyed() {
        let id = CitizenId::parse("001090123456").unwrap();
        let a = hasher().lookup_key(&id);
        assert_eq!(a, hasher().lookup_key(&id));
        let other = KeyedHasher::new(&[8u8; 32], 2).unwrap().lookup_key(&id);
        assert_ne!(a, other);
    }

    #[test]
    fn fields_are_bound_to_their_record() {
        let h = hasher();
        let k1 = h.lookup_key(&CitizenId::parse("001090123456").unwrap());
        let k2 = h.lookup_key(&CitizenId::parse("001090123457").unwrap());
        let n1 = h
            .record(&k1)
            .field(FieldTag::Name, "nguyễn văn an".as_bytes());
        let n2 = h
            .record(&k2)
            .field(FieldTag::Name, "nguyễn văn an".as_bytes());
        assert_ne!(n1, n2);
        // Tags separate domains: the same bytes as a token hash differently.
        let t1 = h
            .record(&k1)
            .field(FieldTag::Token, "nguyễn văn an".as_bytes());
        assert_ne!(n1, t1);
    }

    #[test]
    fn debug_shows_no_key() {
        assert!(!format!("{:?}", hasher()).contains("07"));
    }
}
