//! Calendar dates without a clock: the caller supplies "today".

use std::fmt;

/// A proleptic Gregorian calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilDate {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

pub fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

impl CivilDate {
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        (1..=12)
            .contains(&month)
            .then_some(())
            .filter(|_| day >= 1 && day <= days_in_month(year, month))
            .map(|_| Self { year, month, day })
    }

    /// The date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
    pub fn from_unix_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// Days since 1970-01-01.
    pub fn to_unix_days(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
}

impl fmt::Display for CivilDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Oldest age we accept; older claims are data errors, not people.
pub const MAX_AGE_YEARS: i32 = 130;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DobError {
    #[error("is empty")]
    Empty,
    #[error("must be written YYYY-MM-DD")]
    BadFormat,
    #[error("is not a real calendar date")]
    NotADate,
    #[error("is in the future")]
    InFuture,
    #[error("implies an age over {MAX_AGE_YEARS} years")]
    TooOld,
}

impl DobError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "REQUIRED",
            Self::BadFormat => "BAD_FORMAT",
            Self::NotADate => "NOT_A_DATE",
            Self::InFuture => "IN_FUTURE",
            Self::TooOld => "TOO_OLD",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DobPrecision {
    /// Year, month and day are known.
    Day,
    /// Only the birth year is known (some population records).
    Year,
}

impl DobPrecision {
    pub fn as_i16(self) -> i16 {
        match self {
            Self::Day => 0,
            Self::Year => 1,
        }
    }
    pub fn from_i16(v: i16) -> Option<Self> {
        match v {
            0 => Some(Self::Day),
            1 => Some(Self::Year),
            _ => None,
        }
    }
}

/// A plausible date of birth, possibly known only to the year. `Debug` is
/// redacted: a date of birth is identifying.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DateOfBirth {
    year: i32,
    month_day: Option<(u8, u8)>,
}

impl fmt::Debug for DateOfBirth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DateOfBirth(<redacted>)")
    }
}

fn parse_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl DateOfBirth {
    /// A full `YYYY-MM-DD` date, as carriers send it.
    pub fn parse_full(input: &str, today: CivilDate) -> Result<Self, DobError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(DobError::Empty);
        }
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(DobError::BadFormat);
        }
        let (Some(y), Some(m), Some(d)) = (
            parse_digits(&s[0..4]),
            parse_digits(&s[5..7]),
            parse_digits(&s[8..10]),
        ) else {
            return Err(DobError::BadFormat);
        };
        let date = CivilDate::new(y as i32, m as u8, d as u8).ok_or(DobError::NotADate)?;
        Self::check_range(date, today)?;
        Ok(Self {
            year: date.year,
            month_day: Some((date.month, date.day)),
        })
    }

    /// `YYYY-MM-DD` or a bare `YYYY`, as population extracts have it.
    pub fn parse_mirror(input: &str, today: CivilDate) -> Result<Self, DobError> {
        let s = input.trim();
        if s.len() == 4 {
            let y = parse_digits(s).ok_or(DobError::BadFormat)? as i32;
            if y > today.year {
                return Err(DobError::InFuture);
            }
            if y < today.year - MAX_AGE_YEARS {
                return Err(DobError::TooOld);
            }
            return Ok(Self {
                year: y,
                month_day: None,
            });
        }
        Self::parse_full(s, today)
    }

    fn check_range(date: CivilDate, today: CivilDate) -> Result<(), DobError> {
        if date > today {
            return Err(DobError::InFuture);
        }
        let limit = CivilDate {
            year: today.year - MAX_AGE_YEARS,
            month: today.month,
            day: today.day,
        };
        if date < limit {
            return Err(DobError::TooOld);
        }
        Ok(())
    }

    pub fn year(&self) -> i32 {
        self.year
    }

    pub fn precision(&self) -> DobPrecision {
        if self.month_day.is_some() {
            DobPrecision::Day
        } else {
            DobPrecision::Year
        }
    }

    /// Bytes hashed for comparison at the given precision: `YYYY-MM-DD` or
    /// `YYYY`. Requesting day precision of a year-only date gives the year form.
    pub fn canonical_bytes(&self, precision: DobPrecision) -> ([u8; 10], usize) {
        let mut out = [0u8; 10];
        let y = self.year as u32;
        let put = |out: &mut [u8; 10], at: usize, v: u32, n: usize| {
            for i in 0..n {
                out[at + n - 1 - i] = b'0' + ((v / 10u32.pow(i as u32)) % 10) as u8;
            }
        };
        put(&mut out, 0, y, 4);
        match (precision, self.month_day) {
            (DobPrecision::Day, Some((m, d))) => {
                out[4] = b'-';
                put(&mut out, 5, u32::from(m), 2);
                out[7] = b'-';
                put(&mut out, 8, u32::from(d), 2);
                (out, 10)
            }
            _ => (out, 4),
        }
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

    #[test]
    fn unix_days_round_trip() {
        assert_eq!(
            CivilDate::from_unix_days(0),
            CivilDate {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        assert_eq!(CivilDate::from_unix_days(20_414).to_string(), "2025-11-22");
        for d in [-800_000i64, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            assert_eq!(CivilDate::from_unix_days(d).to_unix_days(), d);
        }
    }

    #[test]
    fn full_dates() {
        let d = DateOfBirth::parse_full("1990-02-28", TODAY).unwrap();
        assert_eq!(&d.canonical_bytes(DobPrecision::Day).0[..], b"1990-02-28");
        assert_eq!(&d.canonical_bytes(DobPrecision::Year).0[..4], b"1990");
        assert_eq!(d.canonical_bytes(DobPrecision::Year).1, 4);
        assert!(DateOfBirth::parse_full("2000-02-29", TODAY).is_ok());
        assert_eq!(
            DateOfBirth::parse_full("2023-02-29", TODAY),
            Err(DobError::NotADate)
        );
        assert_eq!(
            DateOfBirth::parse_full("2023-02-30", TODAY),
            Err(DobError::NotADate)
        );
        assert_eq!(
            DateOfBirth::parse_full("2023-13-01", TODAY),
            Err(DobError::NotADate)
        );
        assert_eq!(
            DateOfBirth::parse_full("2026-11-23", TODAY),
            Err(DobError::InFuture)
        );
        assert!(DateOfBirth::parse_full("2026-11-22", TODAY).is_ok());
        assert_eq!(
            DateOfBirth::parse_full("1896-11-21", TODAY),
            Err(DobError::TooOld)
        );
        assert!(DateOfBirth::parse_full("1896-11-22", TODAY).is_ok());
        assert_eq!(
            DateOfBirth::parse_full("22/11/1990", TODAY),
            Err(DobError::BadFormat)
        );
        assert_eq!(
            DateOfBirth::parse_full("1990-1-01", TODAY),
            Err(DobError::BadFormat)
        );
        assert_eq!(
            DateOfBirth::parse_full("+990-01-01", TODAY),
            Err(DobError::BadFormat)
        );
        assert_eq!(DateOfBirth::parse_full("", TODAY), Err(DobError::Empty));
    }

    #[test]
    fn mirror_dates_may_be_year_only() {
        let d = DateOfBirth::parse_mirror("1975", TODAY).unwrap();
        assert_eq!(d.precision(), DobPrecision::Year);
        assert_eq!(&d.canonical_bytes(DobPrecision::Day).0[..4], b"1975");
        assert_eq!(
            DateOfBirth::parse_mirror("2030", TODAY),
            Err(DobError::InFuture)
        );
        assert_eq!(
            DateOfBirth::parse_mirror("1800", TODAY),
            Err(DobError::TooOld)
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = DateOfBirth::parse_full(&s, TODAY);
            let _ = DateOfBirth::parse_mirror(&s, TODAY);
        }

        #[test]
        fn valid_dates_round_trip(days in -20_000i64..20_000) {
            let date = CivilDate::from_unix_days(days);
            let text = date.to_string();
            let dob = DateOfBirth::parse_full(&text, TODAY).unwrap();
            let (bytes, n) = dob.canonical_bytes(DobPrecision::Day);
            proptest::prop_assert_eq!(&bytes[..n], text.as_bytes());
        }
    }
}
