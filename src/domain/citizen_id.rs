//! The 12-digit personal ID number (số định danh cá nhân): `PPP G YY NNNNNN`.

use std::fmt;

use super::request::Sex;

/// Province/city codes of birth registration (the 63 pre-2025 codes; the 2025
/// merger did not renumber existing IDs).
pub const PROVINCE_CODES: [(u16, &str); 63] = [
    (1, "Hà Nội"),
    (2, "Hà Giang"),
    (4, "Cao Bằng"),
    (6, "Bắc Kạn"),
    (8, "Tuyên Quang"),
    (10, "Lào Cai"),
    (11, "Điện Biên"),
    (12, "Lai Châu"),
    (14, "Sơn La"),
    (15, "Yên Bái"),
    (17, "Hoà Bình"),
    (19, "Thái Nguyên"),
    (20, "Lạng Sơn"),
    (22, "Quảng Ninh"),
    (24, "Bắc Giang"),
    (25, "Phú Thọ"),
    (26, "Vĩnh Phúc"),
    (27, "Bắc Ninh"),
    (30, "Hải Dương"),
    (31, "Hải Phòng"),
    (33, "Hưng Yên"),
    (34, "Thái Bình"),
    (35, "Hà Nam"),
    (36, "Nam Định"),
    (37, "Ninh Bình"),
    (38, "Thanh Hoá"),
    (40, "Nghệ An"),
    (42, "Hà Tĩnh"),
    (44, "Quảng Bình"),
    (45, "Quảng Trị"),
    (46, "Thừa Thiên Huế"),
    (48, "Đà Nẵng"),
    (49, "Quảng Nam"),
    (51, "Quảng Ngãi"),
    (52, "Bình Định"),
    (54, "Phú Yên"),
    (56, "Khánh Hoà"),
    (58, "Ninh Thuận"),
    (60, "Bình Thuận"),
    (62, "Kon Tum"),
    (64, "Gia Lai"),
    (66, "Đắk Lắk"),
    (67, "Đắk Nông"),
    (68, "Lâm Đồng"),
    (70, "Bình Phước"),
    (72, "Tây Ninh"),
    (74, "Bình Dương"),
    (75, "Đồng Nai"),
    (77, "Bà Rịa–Vũng Tàu"),
    (79, "TP. Hồ Chí Minh"),
    (80, "Long An"),
    (82, "Tiền Giang"),
    (83, "Bến Tre"),
    (84, "Trà Vinh"),
    (86, "Vĩnh Long"),
    (87, "Đồng Tháp"),
    (89, "An Giang"),
    (91, "Kiên Giang"),
    (92, "Cần Thơ"),
    (93, "Hậu Giang"),
    (94, "Sóc Trăng"),
    (95, "Bạc Liêu"),
    (96, "Cà Mau"),
];

/// Whether `code` is one of the 63 province codes.
pub fn is_province_code(code: u16) -> bool {
    // The table is sorted, so a binary search keeps this off the profile.
    PROVINCE_CODES
        .binary_search_by_key(&code, |&(c, _)| c)
        .is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CitizenIdError {
    #[error("is empty")]
    Empty,
    #[error(
        "9-digit CMND numbers are no longer valid since 2025-01-01; use the 12-digit personal ID"
    )]
    LegacyCmnd,
    #[error("must contain only digits")]
    NotDigits,
    #[error("must be exactly 12 digits")]
    WrongLength,
    #[error("does not start with a known province code")]
    UnknownProvince,
    #[error("has a sex/century digit for a birth after 2099")]
    CenturyOutOfRange,
}

impl CitizenIdError {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "REQUIRED",
            Self::LegacyCmnd => "CMND_NO_LONGER_VALID",
            Self::NotDigits => "NOT_DIGITS",
            Self::WrongLength => "WRONG_LENGTH",
            Self::UnknownProvince => "UNKNOWN_PROVINCE_CODE",
            Self::CenturyOutOfRange => "CENTURY_DIGIT_OUT_OF_RANGE",
        }
    }
}

/// A structurally valid personal ID number. Its digits never leave the
/// process: only its keyed hash does. `Debug` is redacted for that reason.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CitizenId {
    digits: [u8; 12],
}

impl CitizenId {
    /// Parses an ID number; surrounding whitespace is ignored.
    pub fn parse(input: &str) -> Result<Self, CitizenIdError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(CitizenIdError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CitizenIdError::NotDigits);
        }
        match s.len() {
            12 => {}
            9 => return Err(CitizenIdError::LegacyCmnd),
            _ => return Err(CitizenIdError::WrongLength),
        }
        let mut digits = [0u8; 12];
        digits.copy_from_slice(s.as_bytes());
        let id = Self { digits };
        if !is_province_code(id.province_code()) {
            return Err(CitizenIdError::UnknownProvince);
        }
        // Century digits 4..9 denote births from 2100 on: not a person alive today.
        if id.century_digit() > 3 {
            return Err(CitizenIdError::CenturyOutOfRange);
        }
        Ok(id)
    }

    /// Builds an ID from its parts; used by the synthetic data generator.
    pub fn from_parts(province: u16, sex: Sex, birth_year: i32, serial: u32) -> Option<Self> {
        if !is_province_code(province) || !(1900..=2099).contains(&birth_year) || serial > 999_999 {
            return None;
        }
        let century = (birth_year / 100 - 19) as u32;
        let g = century * 2 + if sex == Sex::Female { 1 } else { 0 };
        let s = format!(
            "{province:03}{g}{:02}{serial:06}",
            birth_year.rem_euclid(100)
        );
        Self::parse(&s).ok()
    }

    /// The 12 ASCII digits, for keyed hashing only.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.digits
    }

    pub fn province_code(&self) -> u16 {
        let d = |i: usize| u16::from(self.digits[i] - b'0');
        d(0) * 100 + d(1) * 10 + d(2)
    }

    fn century_digit(&self) -> u8 {
        self.digits[3] - b'0'
    }

    /// Sex encoded by the ID: even digit male, odd female.
    pub fn sex(&self) -> Sex {
        if self.century_digit().is_multiple_of(2) {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    /// Birth year encoded by the ID: century = G/2 + 19, plus YY.
    pub fn birth_year(&self) -> i32 {
        let century = i32::from(self.century_digit() / 2) + 19;
        let yy = i32::from(self.digits[4] - b'0') * 10 + i32::from(self.digits[5] - b'0');
        century * 100 + yy
    }
}

impl fmt::Debug for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CitizenId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_structure() {
        let id = CitizenId::parse(" 001090123456 ").unwrap();
        assert_eq!(id.province_code(), 1);
        assert_eq!(id.sex(), Sex::Male);
        assert_eq!(id.birth_year(), 1990);
        let id = CitizenId::parse("079305000001").unwrap();
        assert_eq!(id.sex(), Sex::Female);
        assert_eq!(id.birth_year(), 2005);
        let id = CitizenId::parse("096199000001").unwrap();
        assert_eq!((id.sex(), id.birth_year()), (Sex::Female, 1999));
    }

    #[test]
    fn rejects_with_specific_errors() {
        assert_eq!(CitizenId::parse(""), Err(CitizenIdError::Empty));
        assert_eq!(
            CitizenId::parse("123456789"),
            Err(CitizenIdError::LegacyCmnd)
        );
        assert_eq!(
            CitizenId::parse("00109012345"),
            Err(CitizenIdError::WrongLength)
        );
        assert_eq!(
            CitizenId::parse("0010901234567"),
            Err(CitizenIdError::WrongLength)
        );
        assert_eq!(
            CitizenId::parse("00109012345a"),
            Err(CitizenIdError::NotDigits)
        );
        assert_eq!(
            CitizenId::parse("003090123456"),
            Err(CitizenIdError::UnknownProvince)
        );
        assert_eq!(
            CitizenId::parse("097090123456"),
            Err(CitizenIdError::UnknownProvince)
        );
        assert_eq!(
            CitizenId::parse("001490123456"),
            Err(CitizenIdError::CenturyOutOfRange)
        );
    }

    #[test]
    fn debug_never_shows_digits() {
        let id = CitizenId::parse("001090123456").unwrap();
        assert!(!format!("{id:?}").contains("123456"));
    }

    #[test]
    fn from_parts_round_trips() {
        for &(p, _) in PROVINCE_CODES.iter() {
            for (sex, year) in [(Sex::Male, 1930), (Sex::Female, 1999), (Sex::Female, 2010)] {
                let id = CitizenId::from_parts(p, sex, year, 4711).unwrap();
                assert_eq!(
                    (id.province_code(), id.sex(), id.birth_year()),
                    (p, sex, year)
                );
            }
        }
        assert!(CitizenId::from_parts(3, Sex::Male, 1990, 1).is_none());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = CitizenId::parse(&s);
        }

        #[test]
        fn every_valid_structure_parses(p in 0usize..63, female: bool, year in 1900i32..2100, serial in 0u32..1_000_000) {
            let sex = if female { Sex::Female } else { Sex::Male };
            let id = CitizenId::from_parts(PROVINCE_CODES[p].0, sex, year, serial).unwrap();
            proptest::prop_assert_eq!(id.birth_year(), year);
            proptest::prop_assert_eq!(id.sex(), sex);
        }
    }
}
