//! Vietnamese full names: canonical and diacritic-folded forms.
//!
//! The same name reaches us in many byte forms (NFC/NFD, case, odd spaces,
//! tone mark on either vowel of oa/oe/uy, no diacritics at all). Matching works
//! on keyed hashes only, so everything that should compare equal must be made
//! byte-equal here, before hashing.

use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

/// Longest raw input we look at, in bytes; anything longer is rejected before
/// normalisation so hostile input cannot make us do unbounded work.
pub const MAX_INPUT_BYTES: usize = 600;
/// Most letters a name may have after normalisation.
pub const MAX_LETTERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_LETTERS} letters")]
    TooLong,
    #[error("contains a control character")]
    ControlCharacter,
    #[error("contains a digit")]
    Digit,
    #[error("contains a character that is not a letter, space, apostrophe or hyphen")]
    BadCharacter,
}

impl NameError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "REQUIRED",
            Self::TooLong => "TOO_LONG",
            Self::ControlCharacter => "CONTROL_CHARACTER",
            Self::Digit => "CONTAINS_DIGIT",
            Self::BadCharacter => "BAD_CHARACTER",
        }
    }
}

/// A parsed full name in its two comparison forms. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct FullName {
    canonical: String,
    folded: String,
}

impl std::fmt::Debug for FullName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FullName(<redacted>)")
    }
}

const fn is_tone_mark(c: char) -> bool {
    // grave, acute, tilde, hook above, dot below
    matches!(c, '\u{300}' | '\u{301}' | '\u{303}' | '\u{309}' | '\u{323}')
}

impl FullName {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if input.len() > MAX_INPUT_BYTES {
            return Err(NameError::TooLong);
        }
        // Pass 1: decompose, lower-case, collapse whitespace, check characters.
        let mut nfd: Vec<char> = Vec::with_capacity(input.len() + 8);
        let mut pending_space = false;
        for c in input.nfd() {
            if c.is_whitespace() {
                pending_space = !nfd.is_empty();
                continue;
            }
            if c.is_control() {
                return Err(NameError::ControlCharacter);
            }
            if matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}') {
                // Zero-width characters pasted from other systems carry no letters.
                continue;
            }
            if c.is_numeric() {
                return Err(NameError::Digit);
            }
            let mapped = if is_combining_mark(c) {
                c
            } else if c.is_alphabetic() {
                if pending_space {
                    nfd.push(' ');
                    pending_space = false;
                }
                for l in c.to_lowercase() {
                    // Latin-1 'Ð'/'ð' is what Windows-1258 text read as
                    // Latin-1 turns 'Đ' into; treat it as the letter it was.
                    nfd.push(if l == 'ð' { 'đ' } else { l });
                }
                continue;
            } else if matches!(c, '\'' | '\u{2019}' | '\u{02BC}') {
                '\''
            } else if matches!(c, '-' | '\u{2010}' | '\u{2011}') {
                '-'
            } else {
                return Err(NameError::BadCharacter);
            };
            if pending_space {
                nfd.push(' ');
                pending_space = false;
            }
            nfd.push(mapped);
        }
        place_tone_marks(&mut nfd);

        let letters = nfd.iter().filter(|c| c.is_alphabetic()).count();
        if letters == 0 {
            return Err(NameError::Empty);
        }
        if letters > MAX_LETTERS {
            return Err(NameError::TooLong);
        }
        let canonical: String = nfd.iter().copied().nfc().collect();
        let folded: String = nfd
            .iter()
            .filter(|&&c| !is_combining_mark(c))
            .map(|&c| if c == 'đ' { 'd' } else { c })
            .collect();
        Ok(Self { canonical, folded })
    }

    /// NFC, lower case, single spaces, canonical tone placement.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The canonical form without any diacritic, đ folded to d.
    pub fn folded(&self) -> &str {
        &self.folded
    }

    /// Distinct folded tokens, in first-seen order.
    pub fn folded_tokens(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::with_capacity(6);
        self.folded.split(' ').filter(move |t| {
            if seen.contains(t) {
                false
            } else {
                seen.push(t);
                true
            }
        })
    }
}

/// Moves a tone mark written on the first vowel of `oa`, `oe` or `uy` onto
/// the second ("hòa" → "hoà", "thủy" → "thuỷ"). Both placements are in common
/// use and they are different code points even under NFC, so one must be
/// chosen; the second vowel is where both styles agree once a final consonant
/// follows ("hoàng"), which makes it the stable choice.
fn place_tone_marks(s: &mut Vec<char>) {
    let mut i = 0;
    while i + 2 < s.len() {
        let (first, mark, second) = (s[i], s[i + 1], s[i + 2]);
        let pair = matches!((first, second), ('o', 'a') | ('o', 'e') | ('u', 'y'));
        if pair && is_tone_mark(mark) {
            let second_has_tone = s[i + 3..]
                .iter()
                .take_while(|&&c| is_combining_mark(c))
                .any(|&c| is_tone_mark(c));
            if !second_has_tone {
                s.remove(i + 1);
                // NFC re-orders marks canonically, so inserting right after
                // the base letter is enough.
                s.insert(i + 2, mark);
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        FullName::parse(s).unwrap().canonical().to_owned()
    }
    fn fold(s: &str) -> String {
        FullName::parse(s).unwrap().folded().to_owned()
    }

    #[test]
    fn nfc_and_nfd_agree() {
        let nfc = "Nguyễn Thị Minh Khai";
        let nfd: String = nfc.nfd().collect();
        assert_ne!(nfc, nfd);
        assert_eq!(canon(nfc), canon(&nfd));
        assert_eq!(canon(nfc), "nguyễn thị minh khai");
    }

    #[test]
    fn case_and_whitespace() {
        assert_eq!(
            canon("  NGUYỄN\u{a0}\u{a0}thị\tMINH   khai "),
            "nguyễn thị minh khai"
        );
    }

    #[test]
    fn tone_placement_is_canonical() {
        assert_eq!(canon("Hoà"), canon("Hòa"));
        assert_eq!(canon("Thuỷ"), canon("Thủy"));
        assert_eq!(canon("Khoẻ"), canon("Khỏe"));
        assert_eq!(canon("Hòa"), "hoà");
        // With a final consonant both styles already agree; nothing moves.
        assert_eq!(canon("Hoàng"), "hoàng");
        // Other vowel pairs keep their mark.
        assert_eq!(canon("Của"), "của");
        assert_eq!(canon("Nguyễn"), "nguyễn");
        // oa with a circumflex-less o but tone on both is left alone.
        assert_ne!(canon("Hòa"), canon("Hoa"));
    }

    #[test]
    fn folding() {
        assert_eq!(fold("Đặng Thị Ngọc Hoà"), "dang thi ngoc hoa");
        assert_eq!(fold("Trương Văn Ơn"), "truong van on");
        assert_eq!(fold("Lê Ðức Thọ"), "le duc tho");
        assert_eq!(fold("NGUYEN THI MINH KHAI"), fold("Nguyễn Thị Minh Khai"));
        assert_eq!(fold("Ăn Ắt"), "an at");
    }

    #[test]
    fn d_with_stroke_has_no_decomposition() {
        // U+0110/U+0111 survive NFD; folding maps them explicitly.
        assert_eq!(fold("Đỗ"), "do");
        assert_eq!(canon("ĐỖ"), "đỗ");
    }

    #[test]
    fn tokens_are_distinct() {
        let n = FullName::parse("Nguyễn Nguyễn Văn An").unwrap();
        assert_eq!(
            n.folded_tokens().collect::<Vec<_>>(),
            ["nguyen", "van", "an"]
        );
    }

    #[test]
    fn minority_names_keep_apostrophes() {
        assert_eq!(canon("H’Hen Niê"), "h'hen niê");
    }

    #[test]
    fn rejects() {
        assert_eq!(FullName::parse(""), Err(NameError::Empty));
        assert_eq!(FullName::parse("  \u{a0} "), Err(NameError::Empty));
        assert_eq!(FullName::parse("Nguyễn Văn 2"), Err(NameError::Digit));
        assert_eq!(
            FullName::parse("Nguyễn\u{7}Văn"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(
            FullName::parse("Nguyễn <Văn>"),
            Err(NameError::BadCharacter)
        );
        assert_eq!(FullName::parse(&"a".repeat(101)), Err(NameError::TooLong));
        assert!(FullName::parse(&"a".repeat(100)).is_ok());
        assert_eq!(FullName::parse(&"a ".repeat(400)), Err(NameError::TooLong));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,120}") {
            let _ = FullName::parse(&s);
        }

        #[test]
        fn idempotent(s in "[a-zA-Zàáảãạăắằẳẵặâấầẩẫậđèéẻẽẹêếềểễệìíỉĩịòóỏõọôốồổỗộơớờởỡợùúủũụưứừửữựỳýỷỹỵ ]{1,60}") {
            if let Ok(n) = FullName::parse(&s) {
                let again = FullName::parse(n.canonical()).unwrap();
                proptest::prop_assert_eq!(again.canonical(), n.canonical());
                proptest::prop_assert_eq!(again.folded(), n.folded());
            }
        }

        #[test]
        fn nfd_and_case_invariant(s in "[a-zA-ZàáảãạăắằẳẵặâấầẩẫậđĐèéẻẽẹêếềểễệìíỉĩịòóỏõọôốồổỗộơớờởỡợùúủũụưứừửữựỳýỷỹỵ ]{1,60}") {
            let a = FullName::parse(&s);
            let b = FullName::parse(&s.nfd().collect::<String>().to_uppercase());
            match (a, b) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a.canonical(), b.canonical()),
                (a, b) => proptest::prop_assert_eq!(a.is_err(), b.is_err()),
            }
        }

        #[test]
        fn folded_is_ascii_for_vietnamese(s in "[a-zA-ZàáảãạăắằẳẵặâấầẩẫậđĐèéẻẽẹêếềểễệìíỉĩịòóỏõọôốồổỗộơớờởỡợùúủũụưứừửữựỳýỷỹỵ ]{1,60}") {
            if let Ok(n) = FullName::parse(&s) {
                proptest::prop_assert!(n.folded().is_ascii());
            }
        }
    }
}
