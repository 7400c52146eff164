//! Vietnamese mobile numbers (MSISDN), canonicalised to E.164 `+84` + 9 digits.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsisdnError {
    #[error("is empty")]
    Empty,
    #[error("may contain only digits, a leading '+', spaces and dashes")]
    BadCharacter,
    #[error("must be written 0xxxxxxxxx, 84xxxxxxxxx or +84xxxxxxxxx (9 digits after the prefix)")]
    BadFormat,
    #[error("does not carry a Vietnamese mobile prefix")]
    UnknownPrefix,
}

impl MsisdnError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "REQUIRED",
            Self::BadCharacter => "BAD_CHARACTER",
            Self::BadFormat => "BAD_FORMAT",
            Self::UnknownPrefix => "UNKNOWN_MOBILE_PREFIX",
        }
    }
}

/// The network a mobile prefix was assigned to (after the 2018 renumbering).
/// A prefix is a hint, not proof: numbers can be ported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrefixCarrier {
    Viettel,
    Vinaphone,
    Mobifone,
    Vietnamobile,
    Gmobile,
    Itel,
}

impl PrefixCarrier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viettel => "viettel",
            Self::Vinaphone => "vinaphone",
            Self::Mobifone => "mobifone",
            Self::Vietnamobile => "vietnamobile",
            Self::Gmobile => "gmobile",
            Self::Itel => "itel",
        }
    }

    /// The carrier a two-digit national prefix (the digits after the leading 0)
    /// was assigned to.
    pub fn of_prefix(prefix: u8) -> Option<Self> {
        use PrefixCarrier::*;
        Some(match prefix {
            86 | 96..=98 | 32..=39 => Viettel,
            88 | 91 | 94 | 81..=85 => Vinaphone,
            89 | 90 | 93 | 70 | 76..=79 => Mobifone,
            92 | 56 | 58 => Vietnamobile,
            99 | 59 => Gmobile,
            87 => Itel,
            _ => return None,
        })
    }

    /// Every assigned two-digit prefix, for generators.
    pub fn all_prefixes() -> impl Iterator<Item = u8> {
        (10u8..100).filter(|&p| Self::of_prefix(p).is_some())
    }
}

/// A canonical Vietnamese mobile number: the 9 national significant digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Msisdn {
    nsn: [u8; 9],
}

impl Msisdn {
    pub fn parse(input: &str) -> Result<Self, MsisdnError> {
        let mut digits = [0u8; 13];
        let mut n = 0usize;
        let mut plus = false;
        let mut seen_any = false;
        for (i, c) in input.trim().chars().enumerate() {
            match c {
                '0'..='9' => {
                    if n == digits.len() {
                        return Err(MsisdnError::BadFormat);
                    }
                    digits[n] = c as u8;
                    n += 1;
                    seen_any = true;
                }
                '+' if i == 0 => plus = true,
                ' ' | '-' | '.' if seen_any => {}
                _ => return Err(MsisdnError::BadCharacter),
            }
        }
        if n == 0 {
            return if plus {
                Err(MsisdnError::BadFormat)
            } else {
                Err(MsisdnError::Empty)
            };
        }
        let d = &digits[..n];
        let nsn: &[u8] = match (plus, d) {
            (true, [b'8', b'4', rest @ ..]) if rest.len() == 9 => rest,
            (false, [b'8', b'4', rest @ ..]) if rest.len() == 9 => rest,
            (false, [b'0', rest @ ..]) if rest.len() == 9 => rest,
            _ => return Err(MsisdnError::BadFormat),
        };
        let prefix = (nsn[0] - b'0') * 10 + (nsn[1] - b'0');
        if PrefixCarrier::of_prefix(prefix).is_none() {
            return Err(MsisdnError::UnknownPrefix);
        }
        let mut out = [0u8; 9];
        out.copy_from_slice(nsn);
        Ok(Self { nsn: out })
    }

    /// E.164 form, `+84xxxxxxxxx`.
    pub fn e164(&self) -> String {
        let mut s = String::with_capacity(12);
        s.push_str("+84");
        s.extend(self.nsn.iter().map(|&b| b as char));
        s
    }

    /// The national significant number's digits, for keyed hashing.
    pub fn nsn_bytes(&self) -> &[u8; 9] {
        &self.nsn
    }

    /// The national prefix as dialled, e.g. `b"098"`: three ASCII digits,
    /// without an allocation (the cleanup report counts one per row).
    pub fn national_prefix(&self) -> [u8; 3] {
        [b'0', self.nsn[0], self.nsn[1]]
    }

    pub fn prefix_carrier(&self) -> PrefixCarrier {
        let p = (self.nsn[0] - b'0') * 10 + (self.nsn[1] - b'0');
        PrefixCarrier::of_prefix(p).expect("checked at parse time")
    }
}

impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A phone number is personal data too: keep it out of debug output.
        f.write_str("Msisdn(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_written_forms() {
        for s in [
            "0987654321",
            "84987654321",
            "+84987654321",
            "098-765 4321",
            " +84 98 765 43 21 ",
        ] {
            assert_eq!(Msisdn::parse(s).unwrap().e164(), "+84987654321", "{s}");
        }
    }

    #[test]
    fn knows_prefixes() {
        assert_eq!(
            Msisdn::parse("0321234567").unwrap().prefix_carrier(),
            PrefixCarrier::Viettel
        );
        assert_eq!(
            Msisdn::parse("0881234567").unwrap().prefix_carrier(),
            PrefixCarrier::Vinaphone
        );
        assert_eq!(
            Msisdn::parse("0701234567").unwrap().prefix_carrier(),
            PrefixCarrier::Mobifone
        );
        assert_eq!(
            Msisdn::parse("0561234567").unwrap().prefix_carrier(),
            PrefixCarrier::Vietnamobile
        );
        assert_eq!(
            Msisdn::parse("0591234567").unwrap().prefix_carrier(),
            PrefixCarrier::Gmobile
        );
        assert_eq!(
            Msisdn::parse("0871234567").unwrap().prefix_carrier(),
            PrefixCarrier::Itel
        );
        assert_eq!(
            &Msisdn::parse("0871234567").unwrap().national_prefix(),
            b"087"
        );
    }

    #[test]
    fn rejects_clearly() {
        assert_eq!(Msisdn::parse(""), Err(MsisdnError::Empty));
        assert_eq!(Msisdn::parse("098765432"), Err(MsisdnError::BadFormat));
        assert_eq!(Msisdn::parse("09876543210"), Err(MsisdnError::BadFormat));
        assert_eq!(Msisdn::parse("+0987654321"), Err(MsisdnError::BadFormat));
        assert_eq!(Msisdn::parse("0241234567"), Err(MsisdnError::UnknownPrefix));
        assert_eq!(Msisdn::parse("0111234567"), Err(MsisdnError::UnknownPrefix));
        assert_eq!(Msisdn::parse("098x654321"), Err(MsisdnError::BadCharacter));
        assert_eq!(Msisdn::parse("+"), Err(MsisdnError::BadFormat));
        assert_eq!(
            Msisdn::parse("98765432100000000000"),
            Err(MsisdnError::BadFormat)
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,30}") {
            let _ = Msisdn::parse(&s);
        }

        #[test]
        fn forms_agree(idx in 0usize..31, rest in 0u32..10_000_000) {
            let prefix = PrefixCarrier::all_prefixes().nth(idx % PrefixCarrier::all_prefixes().count()).unwrap();
            let nsn = format!("{prefix:02}{rest:07}");
            let a = Msisdn::parse(&format!("0{nsn}")).unwrap();
            let b = Msisdn::parse(&format!("84{nsn}")).unwrap();
            let c = Msisdn::parse(&format!("+84{nsn}")).unwrap();
            proptest::prop_assert!(a == b && b == c);
            proptest::prop_assert_eq!(a.e164(), format!("+84{nsn}"));
        }
    }
}
