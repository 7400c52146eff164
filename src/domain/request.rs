//! Turning untrusted request fields into domain values (parse, don't
//! validate), collecting every bad field rather than stopping at the first.

use super::citizen_id::{CitizenId, CitizenIdError};
use super::date::{CivilDate, DateOfBirth};
use super::hashing::{FieldTag, KeyedHasher, LookupKey, MsisdnHash};
use super::matching::{MirrorRecord, Probe, RecordStatus};
use super::msisdn::Msisdn;
use super::name::FullName;
use super::verdict::{Reason, Reasons};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sex {
    Male,
    Female,
}

impl Sex {
    /// `M`/`F` (or the words) as population and subscriber files write it.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_lowercase().as_str() {
            "m" | "male" | "nam" => Some(Self::Male),
            "f" | "female" | "nữ" | "nu" => Some(Self::Female),
            _ => None,
        }
    }
    pub fn as_letter(self) -> &'static str {
        match self {
            Self::Male => "M",
            Self::Female => "F",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    Activation,
    Reverification,
    Cleanup,
    OwnershipTransfer,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [
        Self::Activation,
        Self::Reverification,
        Self::Cleanup,
        Self::OwnershipTransfer,
    ];
    /// Stable code stored in the audit log: append only.
    pub fn as_i16(self) -> i16 {
        match self {
            Self::Activation => 1,
            Self::Reverification => 2,
            Self::Cleanup => 3,
            Self::OwnershipTransfer => 4,
        }
    }
    pub fn from_i16(v: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_i16() == v)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activation => "ACTIVATION",
            Self::Reverification => "REVERIFICATION",
            Self::Cleanup => "CLEANUP",
            Self::OwnershipTransfer => "OWNERSHIP_TRANSFER",
        }
    }
}

/// Request fields, named as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RequestId,
    Msisdn,
    IdNumber,
    FullName,
    DateOfBirth,
    Sex,
    ConsentRef,
    Status,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestId => "request_id",
            Self::Msisdn => "msisdn",
            Self::IdNumber => "id_number",
            Self::FullName => "full_name",
            Self::DateOfBirth => "date_of_birth",
            Self::Sex => "sex",
            Self::ConsentRef => "consent_ref",
            Self::Status => "status",
        }
    }
}

/// One bad field. The description never contains the submitted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: Field,
    pub code: &'static str,
    pub description: String,
}

impl Violation {
    fn new(field: Field, code: &'static str, err: impl std::fmt::Display) -> Self {
        Self {
            field,
            code,
            description: err.to_string(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field.as_str(), self.description)
    }
}

pub const MAX_REQUEST_ID_LEN: usize = 64;
pub const MAX_CONSENT_REF_LEN: usize = 128;

/// Whether `s` is 1..=max printable ASCII characters (0x21–0x7E).
pub fn is_printable_token(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A request as it arrives, borrowed from the wire message.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    pub request_id: &'a str,
    pub msisdn: &'a str,
    pub id_number: &'a str,
    pub full_name: &'a str,
    pub date_of_birth: &'a str,
    pub sex: Option<Sex>,
    pub consent_ref: Option<&'a str>,
}

/// A valid verification request.
#[derive(Debug, Clone)]
pub struct VerifyInput {
    pub msisdn: Msisdn,
    pub id: CitizenId,
    pub name: Option<FullName>,
    pub dob: Option<DateOfBirth>,
    pub sex: Option<Sex>,
}

impl VerifyInput {
    /// Parses every field; on failure returns one violation per bad field.
    /// `request_id` and `consent_ref` are checked here too, though they are
    /// carried outside the domain value.
    pub fn parse(raw: &RawRequest<'_>, today: CivilDate) -> Result<Self, Vec<Violation>> {
        Self::parse_with(raw, today, |_| ())
    }

    /// `parse`, calling `id_known` with the ID number as soon as it is
    /// known to be valid, before the other fields are parsed.
    fn parse_with(
        raw: &RawRequest<'_>,
        today: CivilDate,
        id_known: impl FnOnce(&CitizenId),
    ) -> Result<Self, Vec<Violation>> {
        // The ID number first, though its violation keeps its place in the
        // list: what the caller starts on it overlaps the other fields.
        let id = CitizenId::parse(raw.id_number);
        if let Ok(id) = &id {
            id_known(id);
        }
        let mut bad = Vec::new();
        if !is_printable_token(raw.request_id, MAX_REQUEST_ID_LEN) {
            bad.push(Violation::new(
                Field::RequestId,
                if raw.request_id.is_empty() {
                    "REQUIRED"
                } else {
                    "BAD_FORMAT"
                },
                format_args!("must be 1–{MAX_REQUEST_ID_LEN} printable ASCII characters"),
            ));
        }
        let msisdn = Msisdn::parse(raw.msisdn)
            .map_err(|e| bad.push(Violation::new(Field::Msisdn, e.code(), e)))
            .ok();
        let id = id
            .map_err(|e: CitizenIdError| bad.push(Violation::new(Field::IdNumber, e.code(), e)))
            .ok();
        let name = if raw.full_name.trim().is_empty() {
            None
        } else {
            FullName::parse(raw.full_name)
                .map_err(|e| bad.push(Violation::new(Field::FullName, e.code(), e)))
                .ok()
        };
        let dob = if raw.date_of_birth.trim().is_empty() {
            None
        } else {
            DateOfBirth::parse_full(raw.date_of_birth, today)
                .map_err(|e| bad.push(Violation::new(Field::DateOfBirth, e.code(), e)))
                .ok()
        };
        if let Some(c) = raw.consent_ref
            && !is_printable_token(c, MAX_CONSENT_REF_LEN)
        {
            bad.push(Violation::new(
                Field::ConsentRef,
                "BAD_FORMAT",
                format_args!("must be 1–{MAX_CONSENT_REF_LEN} printable ASCII characters"),
            ));
        }
        match (msisdn, id) {
            (Some(msisdn), Some(id)) if bad.is_empty() => Ok(Self {
                msisdn,
                id,
                name,
                dob,
                sex: raw.sex,
            }),
            _ => Err(bad),
        }
    }

    /// Contradictions between the claim and the ID number's own digits.
    pub fn id_conflicts(&self) -> Reasons {
        let mut r = Reasons::default();
        if self.sex.is_some_and(|s| s != self.id.sex()) {
            r.insert(Reason::IdSexDigitConflict);
        }
        if self.dob.is_some_and(|d| d.year() != self.id.birth_year()) {
            r.insert(Reason::IdBirthYearConflict);
        }
        r
    }

    /// Parses a request and works out its keyed form in one pass, calling
    /// `progress` with the lookup key at three points along the way: as
    /// soon as the ID number is parsed and hashed, once the other fields
    /// are parsed, and once the phone number is hashed. A caller that will
    /// look the key up can start reading its memory at the first call and
    /// go a step further at each next one, so that the lookup's cache
    /// misses overlap this work instead of following it.
    pub fn parse_into_probe(
        raw: &RawRequest<'_>,
        today: CivilDate,
        hasher: &KeyedHasher,
        mut progress: impl FnMut(&LookupKey),
    ) -> Result<Probe, Vec<Violation>> {
        let mut key = None;
        let input = Self::parse_with(raw, today, |id| {
            let k = hasher.lookup_key(id);
            progress(&k);
            key = Some(k);
        })?;
        // A valid input has a valid ID number, so the key was made.
        let lookup_key = key.unwrap_or_else(|| hasher.lookup_key(&input.id));
        progress(&lookup_key);
        let msisdn_hash = hasher.msisdn(&input.msisdn);
        progress(&lookup_key);
        Ok(input.probe(hasher, lookup_key, msisdn_hash))
    }

    /// The keyed form the matcher works on.
    pub fn into_probe(self, hasher: &KeyedHasher) -> Probe {
        let lookup_key = hasher.lookup_key(&self.id);
        let msisdn_hash = hasher.msisdn(&self.msisdn);
        self.probe(hasher, lookup_key, msisdn_hash)
    }

    fn probe(self, hasher: &KeyedHasher, lookup_key: LookupKey, msisdn_hash: MsisdnHash) -> Probe {
        let id_conflicts = self.id_conflicts();
        Probe {
            lookup_key,
            msisdn_hash,
            record: hasher.record(&lookup_key),
            name: self.name,
            dob: self.dob,
            sex: self.sex,
            id_conflicts,
        }
    }
}

/// What a population extract row asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    Active,
    Deceased,
    Deleted,
}

impl ImportStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "active" => Some(Self::Active),
            "deceased" => Some(Self::Deceased),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub Violation);

/// One person of a population extract.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: CitizenId,
    pub name: FullName,
    pub dob: DateOfBirth,
    pub sex: Sex,
    pub status: ImportStatus,
}

impl Identity {
    /// Parses an extract row. The mirror is the authority, but a row whose ID
    /// digits contradict its own sex or birth year cannot be matched sensibly,
    /// so it is rejected for the data owner to fix.
    pub fn parse(
        id_number: &str,
        full_name: &str,
        date_of_birth: &str,
        sex: &str,
        status: &str,
        today: CivilDate,
    ) -> Result<Self, IdentityError> {
        let err = |f, c, e: &dyn std::fmt::Display| IdentityError(Violation::new(f, c, e));
        let id = CitizenId::parse(id_number).map_err(|e| err(Field::IdNumber, e.code(), &e))?;
        let status = ImportStatus::parse(status).ok_or_else(|| {
            err(
                Field::Status,
                "BAD_STATUS",
                &"must be active, deceased or deleted",
            )
        })?;
        let name = FullName::parse(full_name).map_err(|e| err(Field::FullName, e.code(), &e))?;
        let dob = DateOfBirth::parse_mirror(date_of_birth, today)
            .map_err(|e| err(Field::DateOfBirth, e.code(), &e))?;
        let sex = Sex::parse(sex).ok_or_else(|| err(Field::Sex, "BAD_SEX", &"must be M or F"))?;
        if sex != id.sex() {
            return Err(err(
                Field::Sex,
                "ID_SEX_DIGIT_CONFLICT",
                &"contradicts the ID number's sex digit",
            ));
        }
        if dob.year() != id.birth_year() {
            return Err(err(
                Field::DateOfBirth,
                "ID_BIRTH_YEAR_CONFLICT",
                &"contradicts the birth year encoded in the ID number",
            ));
        }
        Ok(Self {
            id,
            name,
            dob,
            sex,
            status,
        })
    }

    /// The stored form: keyed, record-bound hashes only.
    pub fn to_record(
        &self,
        hasher: &KeyedHasher,
        source_version: i64,
    ) -> (LookupKey, MirrorRecord) {
        let key = hasher.lookup_key(&self.id);
        let rec = hasher.record(&key);
        let precision = self.dob.precision();
        let (dob, n) = self.dob.canonical_bytes(precision);
        let record = MirrorRecord {
            name: rec.field(FieldTag::Name, self.name.canonical().as_bytes()),
            folded: rec.field(FieldTag::FoldedName, self.name.folded().as_bytes()),
            tokens: self
                .name
                .folded_tokens()
                .map(|t| rec.field(FieldTag::Token, t.as_bytes()))
                .collect(),
            dob: rec.field(FieldTag::Dob, &dob[..n]),
            dob_precision: precision,
            sex: rec.field(FieldTag::Sex, self.sex.as_letter().as_bytes()),
            status: if self.status == ImportStatus::Deceased {
                RecordStatus::Deceased
            } else {
                RecordStatus::Active
            },
            key_id: hasher.key_id(),
            source_version,
        };
        (key, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: CivilDate = CivilDate {
        year: 2026,
        month: 11,
        day: 22,
    };

    fn raw<'a>() -> RawRequest<'a> {
        RawRequest {
            request_id: "req-1",
            msisdn: "0987654321",
            id_number: "001090123456",
            full_name: "Nguyễn Văn An",
            date_of_birth: "1990-05-17",
            sex: Some(Sex::Male),
            consent_ref: None,
        }
    }

    #[test]
    fn valid_request_parses() {
        let v = VerifyInput::parse(&raw(), TODAY).unwrap();
        assert!(v.id_conflicts().is_empty());
    }

    #[test]
    fn collects_every_bad_field() {
        let r = RawRequest {
            request_id: "",
            msisdn: "12345",
            id_number: "123456789",
            full_name: "Nguyen 3",
            date_of_birth: "2023-02-30",
            ..raw()
        };
        let v = VerifyInput::parse(&r, TODAY).unwrap_err();
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "request_id",
                "msisdn",
                "id_number",
                "full_name",
                "date_of_birth"
            ]
        );
        let cmnd = v.iter().find(|v| v.field == Field::IdNumber).unwrap();
        assert_eq!(cmnd.code, "CMND_NO_LONGER_VALID");
        assert_eq!(
            cmnd.to_string(),
            "id_number: 9-digit CMND numbers are no longer valid since 2025-01-01; use the 12-digit personal ID"
        );
    }

    #[test]
    fn violations_never_echo_values() {
        let r = RawRequest {
            id_number: "999999999999",
            full_name: "Secret Name 42",
            ..raw()
        };
        for v in VerifyInput::parse(&r, TODAY).unwrap_err() {
            assert!(!v.description.contains("999999") && !v.description.contains("Secret"));
        }
    }

    #[test]
    fn name_and_dob_are_optional() {
        let r = RawRequest {
            full_name: " ",
            date_of_birth: "",
            sex: None,
            ..raw()
        };
        let v = VerifyInput::parse(&r, TODAY).unwrap();
        assert!(v.name.is_none() && v.dob.is_none());
    }

    #[test]
    fn conflicts_with_id_digits() {
        let r = RawRequest {
            sex: Some(Sex::Female),
            date_of_birth: "1991-01-01",
            ..raw()
        };
        let c = VerifyInput::parse(&r, TODAY).unwrap().id_conflicts();
        assert!(c.contains(Reason::IdSexDigitConflict));
        assert!(c.contains(Reason::IdBirthYearConflict));
    }

    #[test]
    fn identity_rows() {
        assert!(
            Identity::parse(
                "001090123456",
                "Nguyễn Văn An",
                "1990-05-17",
                "M",
                "",
                TODAY
            )
            .is_ok()
        );
        assert!(
            Identity::parse(
                "001090123456",
                "Nguyễn Văn An",
                "1990",
                "m",
                "deceased",
                TODAY
            )
            .is_ok()
        );
        let e = Identity::parse(
            "001090123456",
            "Nguyễn Văn An",
            "1990-05-17",
            "F",
            "",
            TODAY,
        );
        assert_eq!(e.unwrap_err().0.code, "ID_SEX_DIGIT_CONFLICT");
        let e = Identity::parse(
            "001090123456",
            "Nguyễn Văn An",
            "1991-05-17",
            "M",
            "",
            TODAY,
        );
        assert_eq!(e.unwrap_err().0.code, "ID_BIRTH_YEAR_CONFLICT");
        let e = Identity::parse(
            "001090123456",
            "Nguyễn Văn An",
            "1990-05-17",
            "M",
            "gone",
            TODAY,
        );
        assert_eq!(e.unwrap_err().0.field, Field::Status);
    }

    #[test]
    fn a_probe_made_in_one_pass_is_the_probe_made_in_two() {
        let hasher = KeyedHasher::new(&[7u8; 32], 1).unwrap();
        let bad_name = RawRequest {
            full_name: "Nguyen 3",
            ..raw()
        };
        let bad_id = RawRequest {
            request_id: "",
            id_number: "123456789",
            ..raw()
        };
        let conflicting = RawRequest {
            sex: Some(Sex::Female),
            date_of_birth: "1991-05-17",
            ..raw()
        };
        for r in [raw(), bad_name, bad_id, conflicting] {
            let mut seen = Vec::new();
            let one = VerifyInput::parse_into_probe(&r, TODAY, &hasher, |k| seen.push(*k));
            match (one, VerifyInput::parse(&r, TODAY)) {
                (Ok(p), Ok(input)) => {
                    let q = input.into_probe(&hasher);
                    assert!(p.lookup_key == q.lookup_key && p.msisdn_hash == q.msisdn_hash);
                    assert!(p.name == q.name && p.dob == q.dob && p.sex == q.sex);
                    assert_eq!(p.id_conflicts, q.id_conflicts);
                    // Told of the key three times, the same key each time.
                    assert_eq!(seen, [p.lookup_key; 3]);
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a, b);
                    // Told of the key once if the ID number was valid.
                    let id_valid = CitizenId::parse(r.id_number).is_ok();
                    assert_eq!(seen.len(), usize::from(id_valid));
                }
                (one, two) => panic!("one pass {:?}, two {:?}", one.is_ok(), two.is_ok()),
            }
        }
    }
}
