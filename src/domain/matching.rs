//! Comparing a keyed probe with a mirror record, and the decision rules.

use super::date::{DateOfBirth, DobPrecision};
use super::hashing::{FieldHash, FieldTag, LookupKey, MsisdnHash, RecordHasher};
use super::name::FullName;
use super::request::Sex;
use super::verdict::{
    Decision, FieldResult, NameTier, Reason, Reasons, RecommendedAction, Verdict,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    Active,
    Deceased,
}

impl RecordStatus {
    pub fn as_i16(self) -> i16 {
        match self {
            Self::Active => 0,
            Self::Deceased => 1,
        }
    }
    pub fn from_i16(v: i16) -> Option<Self> {
        match v {
            0 => Some(Self::Active),
            1 => Some(Self::Deceased),
            _ => None,
        }
    }
}

/// A person as the mirror stores them: record-bound keyed hashes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRecord {
    pub name: FieldHash,
    pub folded: FieldHash,
    /// Distinct folded name tokens.
    pub tokens: Vec<FieldHash>,
    pub dob: FieldHash,
    pub dob_precision: DobPrecision,
    pub sex: FieldHash,
    pub status: RecordStatus,
    pub key_id: u16,
    pub source_version: i64,
}

/// A request in matchable form. It still holds the parsed name and date in
/// memory, so hashes the common case does not need (folded name, tokens,
/// year-only date) are computed only when a cheaper comparison failed.
pub struct Probe {
    pub lookup_key: LookupKey,
    pub msisdn_hash: MsisdnHash,
    pub record: RecordHasher,
    pub name: Option<FullName>,
    pub dob: Option<DateOfBirth>,
    pub sex: Option<Sex>,
    pub id_conflicts: Reasons,
}

fn compare_name(name: &FullName, h: &RecordHasher, r: &MirrorRecord) -> (NameTier, u8) {
    if h.field(FieldTag::Name, name.canonical().as_bytes()) == r.name {
        return (NameTier::Exact, 100);
    }
    if h.field(FieldTag::FoldedName, name.folded().as_bytes()) == r.folded {
        return (NameTier::DiacriticsOnly, 99);
    }
    // MOSIP's partial rule on folded token sets: order-insensitive, and every
    // unmatched token on either side lowers the score.
    let (mut matched, mut total) = (0usize, 0usize);
    for t in name.folded_tokens() {
        total += 1;
        if r.tokens.contains(&h.field(FieldTag::Token, t.as_bytes())) {
            matched += 1;
        }
    }
    if matched == 0 {
        return (NameTier::None, 0);
    }
    let denom = r.tokens.len() + (total - matched);
    // 100 is reserved for EXACT.
    let score = (matched * 100 / denom.max(1)).min(99) as u8;
    (NameTier::TokenOverlap, score)
}

/// The verdict for a probe and the record its lookup key found, if any.
pub fn decide(p: &Probe, record: Option<&MirrorRecord>) -> Verdict {
    let mut reasons = p.id_conflicts;
    let Some(r) = record else {
        reasons.insert(Reason::IdNotFound);
        return Verdict {
            decision: Decision::NotFound,
            id_number: FieldResult::NotAvailable,
            full_name: FieldResult::NotAvailable,
            date_of_birth: FieldResult::NotAvailable,
            sex: FieldResult::NotAvailable,
            name_tier: None,
            name_score: 0,
            action: RecommendedAction::SuspendOutgoing,
            reasons,
        };
    };
    let h = &p.record;

    let (full_name, tier, score) = match &p.name {
        None => {
            reasons.insert(Reason::FullNameNotProvided);
            (FieldResult::NotProvided, NameTier::None, 0)
        }
        Some(name) => {
            let (tier, score) = compare_name(name, h, r);
            match tier {
                NameTier::Exact => {}
                NameTier::DiacriticsOnly => reasons.insert(Reason::FullNameDiacriticsOnly),
                _ => reasons.insert(Reason::FullNameMismatch),
            }
            let res = if tier == NameTier::Exact {
                FieldResult::Match
            } else {
                FieldResult::Mismatch
            };
            (res, tier, score)
        }
    };

    let date_of_birth = match p.dob {
        None => {
            reasons.insert(Reason::DateOfBirthNotProvided);
            FieldResult::NotProvided
        }
        Some(dob) => {
            if r.dob_precision == DobPrecision::Year {
                reasons.insert(Reason::DobYearOnlyInMirror);
            }
            let (bytes, n) = dob.canonical_bytes(r.dob_precision);
            if h.field(FieldTag::Dob, &bytes[..n]) == r.dob {
                FieldResult::Match
            } else {
                reasons.insert(Reason::DateOfBirthMismatch);
                FieldResult::Mismatch
            }
        }
    };

    let sex = match p.sex {
        None => FieldResult::NotProvided,
        Some(s) if h.field(FieldTag::Sex, s.as_letter().as_bytes()) == r.sex => FieldResult::Match,
        Some(_) => {
            reasons.insert(Reason::SexMismatch);
            FieldResult::Mismatch
        }
    };
    let sex_ok = matches!(sex, FieldResult::Match | FieldResult::NotProvided);

    let (decision, action) = if r.status == RecordStatus::Deceased {
        reasons.insert(Reason::PersonDeceased);
        (Decision::Deceased, RecommendedAction::SuspendOutgoing)
    } else if full_name == FieldResult::Match && date_of_birth == FieldResult::Match && sex_ok {
        (Decision::Verified, RecommendedAction::None)
    } else if tier == NameTier::DiacriticsOnly && date_of_birth == FieldResult::Match && sex_ok {
        // The person is right; the carrier's record lost its diacritics.
        (
            Decision::Mismatch,
            RecommendedAction::UpdateSubscriberRecord,
        )
    } else {
        // Circular 08/2026: one-way suspension comes first.
        (Decision::Mismatch, RecommendedAction::SuspendOutgoing)
    };

    Verdict {
        decision,
        id_number: FieldResult::Match,
        full_name,
        date_of_birth,
        sex,
        name_tier: Some(tier),
        name_score: score,
        action,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::date::CivilDate;
    use crate::domain::hashing::KeyedHasher;
    use crate::domain::request::{Identity, RawRequest, VerifyInput};
    use unicode_normalization::UnicodeNormalization;

    const TODAY: CivilDate = CivilDate {
        year: 2026,
        month: 11,
        day: 22,
    };
    const ID: &str = "001190012345";

    fn hasher() -> KeyedHasher {
        KeyedHasher::new(b"0123456789abcdef0123456789abcdef", 1).unwrap()
    }

    fn record(name: &str, dob: &str, status: &str) -> MirrorRecord {
        Identity::parse(ID, name, dob, "F", status, TODAY)
            .unwrap()
            .to_record(&hasher(), 1)
            .1
    }

    fn verify(
        rec: Option<&MirrorRecord>,
        id: &str,
        name: &str,
        dob: &str,
        sex: Option<Sex>,
    ) -> Verdict {
        let raw = RawRequest {
            request_id: "r",
            msisdn: "0912345678",
            id_number: id,
            full_name: name,
            date_of_birth: dob,
            sex,
            consent_ref: None,
        };
        decide(
            &VerifyInput::parse(&raw, TODAY)
                .unwrap()
                .into_probe(&hasher()),
            rec,
        )
    }

    fn khai() -> MirrorRecord {
        record("Nguyễn Thị Minh Khai", "1990-05-17", "")
    }

    #[test]
    fn exact_in_every_byte_form() {
        let r = khai();
        let nfd: String = "Nguyễn Thị Minh Khai".nfd().collect();
        for name in [
            "Nguyễn Thị Minh Khai",
            nfd.as_str(),
            "NGUYỄN  THỊ\u{a0}MINH KHAI",
            " nguyễn thị minh khai ",
        ] {
            let v = verify(Some(&r), ID, name, "1990-05-17", Some(Sex::Female));
            assert_eq!(v.decision, Decision::Verified, "{name}");
            assert_eq!((v.name_tier, v.name_score), (Some(NameTier::Exact), 100));
            assert_eq!(v.action, RecommendedAction::None);
            assert!(v.reasons.is_empty());
        }
    }

    #[test]
    fn tone_placement_is_exact() {
        let r = record("Trần Thị Hoà", "1990-05-17", "");
        let v = verify(Some(&r), ID, "Trần Thị Hòa", "1990-05-17", None);
        assert_eq!(v.decision, Decision::Verified);
        assert_eq!(v.sex, FieldResult::NotProvided);
    }

    #[test]
    fn missing_diacritics_is_a_record_fix() {
        let v = verify(
            Some(&khai()),
            ID,
            "NGUYEN THI MINH KHAI",
            "1990-05-17",
            Some(Sex::Female),
        );
        assert_eq!(v.decision, Decision::Mismatch);
        assert_eq!(v.full_name, FieldResult::Mismatch);
        assert_eq!(
            (v.name_tier, v.name_score),
            (Some(NameTier::DiacriticsOnly), 99)
        );
        assert_eq!(v.action, RecommendedAction::UpdateSubscriberRecord);
        assert!(v.reasons.contains(Reason::FullNameDiacriticsOnly));
    }

    #[test]
    fn d_with_stroke_folds() {
        let r = record("Đặng Thị Đào", "1990-05-17", "");
        let v = verify(Some(&r), ID, "Dang Thi Dao", "1990-05-17", None);
        assert_eq!(v.name_tier, Some(NameTier::DiacriticsOnly));
    }

    #[test]
    fn swapped_tokens_overlap() {
        let v = verify(
            Some(&khai()),
            ID,
            "Khai Nguyễn Thị Minh",
            "1990-05-17",
            None,
        );
        assert_eq!(v.name_tier, Some(NameTier::TokenOverlap));
        assert_eq!(v.name_score, 99);
        assert_eq!(v.action, RecommendedAction::SuspendOutgoing);
        // 3 of 4 stored tokens, one extra request token: 3*100/(4+1) = 60.
        let v = verify(Some(&khai()), ID, "Nguyễn Thị Minh Hoa", "1990-05-17", None);
        assert_eq!(
            (v.name_tier, v.name_score),
            (Some(NameTier::TokenOverlap), 60)
        );
        let v = verify(Some(&khai()), ID, "Trần Văn Bình", "1990-05-17", None);
        assert_eq!((v.name_tier, v.name_score), (Some(NameTier::None), 0));
        assert!(v.reasons.contains(Reason::FullNameMismatch));
    }

    #[test]
    fn wrong_date_and_sex() {
        let v = verify(
            Some(&khai()),
            ID,
            "Nguyễn Thị Minh Khai",
            "1990-05-18",
            Some(Sex::Female),
        );
        assert_eq!(
            (v.decision, v.date_of_birth),
            (Decision::Mismatch, FieldResult::Mismatch)
        );
        assert_eq!(v.action, RecommendedAction::SuspendOutgoing);
        let v = verify(
            Some(&khai()),
            ID,
            "Nguyễn Thị Minh Khai",
            "1990-05-17",
            Some(Sex::Male),
        );
        assert_eq!(
            (v.decision, v.sex),
            (Decision::Mismatch, FieldResult::Mismatch)
        );
        assert!(v.reasons.contains(Reason::IdSexDigitConflict));
        assert!(v.reasons.contains(Reason::SexMismatch));
        // Diacritics-only plus a wrong date is not a mere record fix.
        let v = verify(
            Some(&khai()),
            ID,
            "Nguyen Thi Minh Khai",
            "1990-05-18",
            None,
        );
        assert_eq!(v.action, RecommendedAction::SuspendOutgoing);
    }

    #[test]
    fn birth_year_conflict_is_flagged() {
        let v = verify(
            Some(&khai()),
            ID,
            "Nguyễn Thị Minh Khai",
            "1991-05-17",
            None,
        );
        assert!(v.reasons.contains(Reason::IdBirthYearConflict));
        assert_eq!(v.date_of_birth, FieldResult::Mismatch);
    }

    #[test]
    fn not_found_and_deceased() {
        let v = verify(None, ID, "Nguyễn Thị Minh Khai", "1990-05-17", None);
        assert_eq!(v.decision, Decision::NotFound);
        assert_eq!(v.name_tier, None);
        assert!(v.reasons.contains(Reason::IdNotFound));
        let r = record("Nguyễn Thị Minh Khai", "1990-05-17", "deceased");
        let v = verify(Some(&r), ID, "Nguyễn Thị Minh Khai", "1990-05-17", None);
        assert_eq!(v.decision, Decision::Deceased);
        assert_eq!(v.full_name, FieldResult::Match);
    }

    #[test]
    fn missing_fields_cannot_verify() {
        let v = verify(Some(&khai()), ID, "", "1990-05-17", None);
        assert_eq!(
            (v.decision, v.full_name),
            (Decision::Mismatch, FieldResult::NotProvided)
        );
        let v = verify(Some(&khai()), ID, "Nguyễn Thị Minh Khai", "", None);
        assert_eq!(
            (v.decision, v.date_of_birth),
            (Decision::Mismatch, FieldResult::NotProvided)
        );
    }

    #[test]
    fn year_only_mirror_dates() {
        let r = record("Nguyễn Thị Minh Khai", "1990", "");
        let v = verify(Some(&r), ID, "Nguyễn Thị Minh Khai", "1990-05-17", None);
        assert_eq!(v.decision, Decision::Verified);
        assert!(v.reasons.contains(Reason::DobYearOnlyInMirror));
    }

    #[test]
    fn another_records_hashes_never_match() {
        // Same person data under a different ID: record binding makes every
        // field hash differ, so nothing can be matched across records.
        let r = khai();
        let other = "001190012346";
        let v = verify(
            Some(&r),
            other,
            "Nguyễn Thị Minh Khai",
            "1990-05-17",
            Some(Sex::Female),
        );
        assert_eq!(v.full_name, FieldResult::Mismatch);
        assert_eq!(v.date_of_birth, FieldResult::Mismatch);
        assert_eq!(v.name_tier, Some(NameTier::None));
    }

    proptest::proptest! {
        #[test]
        fn score_is_bounded(name in "[a-zA-Zđăâêôơư ]{1,40}") {
            if FullName::parse(&name).is_ok() {
                let v = verify(Some(&khai()), ID, &name, "1990-05-17", None);
                proptest::prop_assert!(v.name_score <= 100);
                proptest::prop_assert_eq!(v.name_score == 100, v.name_tier == Some(NameTier::Exact));
            }
        }
    }
}
