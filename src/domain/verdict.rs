//! The answer to one verification, independent of any wire format.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    Verified,
    Mismatch,
    NotFound,
    Deceased,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldResult {
    Match,
    Mismatch,
    NotProvided,
    NotAvailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameTier {
    Exact,
    DiacriticsOnly,
    TokenOverlap,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecommendedAction {
    None,
    UpdateSubscriberRecord,
    SuspendOutgoing,
    CorrectInput,
}

/// Stable small integers for storage. They are part of the audit format:
/// never renumber, only append.
macro_rules! stable_codes {
    ($t:ty { $($v:ident = $n:literal => $s:literal),+ $(,)? }) => {
        impl $t {
            pub const ALL: &'static [$t] = &[$(<$t>::$v),+];
            pub fn as_i16(self) -> i16 {
                match self { $(<$t>::$v => $n),+ }
            }
            pub fn from_i16(v: i16) -> Option<Self> {
                match v { $($n => Some(<$t>::$v),)+ _ => None }
            }
            /// The name used on the wire, in CSV output and in reports.
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
            pub fn parse_str(s: &str) -> Option<Self> {
                match s { $($s => Some(<$t>::$v),)+ _ => None }
            }
        }
    };
}

stable_codes!(Decision {
    Verified = 1 => "VERIFIED",
    Mismatch = 2 => "MISMATCH",
    NotFound = 3 => "NOT_FOUND",
    Deceased = 4 => "DECEASED",
    Invalid = 5 => "INVALID",
});
stable_codes!(FieldResult {
    Match = 1 => "MATCH",
    Mismatch = 2 => "MISMATCH",
    NotProvided = 3 => "NOT_PROVIDED",
    NotAvailable = 4 => "NOT_AVAILABLE",
});
stable_codes!(NameTier {
    Exact = 1 => "EXACT",
    DiacriticsOnly = 2 => "DIACRITICS_ONLY",
    TokenOverlap = 3 => "TOKEN_OVERLAP",
    None = 4 => "NONE",
});
stable_codes!(RecommendedAction {
    None = 1 => "NONE",
    UpdateSubscriberRecord = 2 => "UPDATE_SUBSCRIBER_RECORD",
    SuspendOutgoing = 3 => "SUSPEND_OUTGOING",
    CorrectInput = 4 => "CORRECT_INPUT",
});

/// Machine-readable reasons behind a decision. The discriminant is the bit
/// position in [`Reasons`], stored in the audit log: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    IdNotFound = 0,
    PersonDeceased = 1,
    FullNameMismatch = 2,
    FullNameDiacriticsOnly = 3,
    FullNameNotProvided = 4,
    DateOfBirthMismatch = 5,
    DateOfBirthNotProvided = 6,
    DobYearOnlyInMirror = 7,
    SexMismatch = 8,
    IdSexDigitConflict = 9,
    IdBirthYearConflict = 10,
    InvalidInput = 11,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Self::IdNotFound,
        Self::PersonDeceased,
        Self::FullNameMismatch,
        Self::FullNameDiacriticsOnly,
        Self::FullNameNotProvided,
        Self::DateOfBirthMismatch,
        Self::DateOfBirthNotProvided,
        Self::DobYearOnlyInMirror,
        Self::SexMismatch,
        Self::IdSexDigitConflict,
        Self::IdBirthYearConflict,
        Self::InvalidInput,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdNotFound => "ID_NOT_FOUND",
            Self::PersonDeceased => "PERSON_DECEASED",
            Self::FullNameMismatch => "FULL_NAME_MISMATCH",
            Self::FullNameDiacriticsOnly => "FULL_NAME_DIACRITICS_ONLY",
            Self::FullNameNotProvided => "FULL_NAME_NOT_PROVIDED",
            Self::DateOfBirthMismatch => "DATE_OF_BIRTH_MISMATCH",
            Self::DateOfBirthNotProvided => "DATE_OF_BIRTH_NOT_PROVIDED",
            Self::DobYearOnlyInMirror => "DOB_YEAR_ONLY_IN_MIRROR",
            Self::SexMismatch => "SEX_MISMATCH",
            Self::IdSexDigitConflict => "ID_SEX_DIGIT_CONFLICT",
            Self::IdBirthYearConflict => "ID_BIRTH_YEAR_CONFLICT",
            Self::InvalidInput => "INVALID_INPUT",
        }
    }
}

/// A set of [`Reason`]s as a bit set: no allocation on the hot path, and a
/// single integer in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Reasons(u32);

impl Reasons {
    pub fn insert(&mut self, r: Reason) {
        self.0 |= 1 << (r as u8);
    }
    pub fn contains(self, r: Reason) -> bool {
        self.0 & (1 << (r as u8)) != 0
    }
    pub fn bits(self) -> u32 {
        self.0
    }
    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

/// Everything the gateway concludes about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub id_number: FieldResult,
    pub full_name: FieldResult,
    pub date_of_birth: FieldResult,
    pub sex: FieldResult,
    /// `None` when there was nothing to compare (not found, invalid).
    pub name_tier: Option<NameTier>,
    pub name_score: u8,
    pub action: RecommendedAction,
    pub reasons: Reasons,
}

impl Verdict {
    /// The verdict for a request that failed validation (streams only).
    pub fn invalid() -> Self {
        let mut reasons = Reasons::default();
        reasons.insert(Reason::InvalidInput);
        Self {
            decision: Decision::Invalid,
            id_number: FieldResult::NotAvailable,
            full_name: FieldResult::NotAvailable,
            date_of_birth: FieldResult::NotAvailable,
            sex: FieldResult::NotAvailable,
            name_tier: None,
            name_score: 0,
            action: RecommendedAction::CorrectInput,
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in Decision::ALL {
            assert_eq!(Decision::from_i16(d.as_i16()), Some(*d));
            assert_eq!(Decision::parse_str(d.as_str()), Some(*d));
        }
        for r in RecommendedAction::ALL {
            assert_eq!(RecommendedAction::from_i16(r.as_i16()), Some(*r));
        }
    }

    #[test]
    fn reasons_bitset() {
        let mut r = Reasons::default();
        r.insert(Reason::SexMismatch);
        r.insert(Reason::IdNotFound);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [Reason::IdNotFound, Reason::SexMismatch]
        );
        assert_eq!(Reasons::from_bits(r.bits()), r);
    }
}
