//! Realistic synthetic data for demos, tests and benchmarks.
//!
//! Two generators, both deterministic for a given seed and both streaming
//! (memory does not grow with the row count):
//!
//! * [`write_population`] writes a population extract (the mirror's source):
//!   `id_number,full_name,date_of_birth,sex,status`.
//! * [`write_subscribers`] reads such an extract and writes a carrier's
//!   subscriber file `msisdn,id_number,full_name,date_of_birth,sex`, with a
//!   configurable share of realistic errors and, optionally, two label columns
//!   `error_kind,expected_decision` saying what the gateway should answer.
//!
//! No clock is read: "today" is part of each configuration.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use crate::domain::citizen_id::{CitizenId, PROVINCE_CODES};
use crate::domain::date::{CivilDate, MAX_AGE_YEARS, days_in_month};
use crate::domain::msisdn::PrefixCarrier;
use crate::domain::name::FullName;
use crate::domain::request::{Identity, ImportStatus, Sex};
use crate::domain::verdict::Decision;

/// Errors of the generators.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("population file is missing column {0}")]
    MissingColumn(&'static str),
    #[error("invalid generator configuration: {0}")]
    InvalidConfig(String),
}

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// Population serials are `< POPULATION_SERIALS`; serials at or above it are
/// reserved for IDs that must not exist (the `unknown_id` error kind).
pub const POPULATION_SERIALS: u32 = 900_000;
/// Step between consecutive serials of one bucket. Coprime to
/// [`POPULATION_SERIALS`] (= 2^5·3^2·5^5), so `counter * STRIDE + offset`
/// visits every serial exactly once before repeating.
const SERIAL_STRIDE: u64 = 387_419;
/// Lowest and highest age of generated people.
const MIN_AGE: i32 = 14;
const MAX_AGE: i32 = 90;

/// SplitMix64 finaliser: a cheap, well-mixed hash of a 64-bit value.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fixed table of weights, sampled by cumulative sum.
struct Weighted {
    cum: Vec<u32>,
}

impl Weighted {
    fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut total = 0u32;
        let cum = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect::<Vec<_>>();
        assert!(total > 0, "weights must not all be zero");
        Self { cum }
    }

    fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        let total = *self.cum.last().expect("non-empty");
        let x = rng.random_range(0..total);
        self.cum.partition_point(|&c| c <= x)
    }
}

fn pick<'a, R: Rng>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// Which vowel of an open `oa`/`oe`/`uy` syllable carries the tone mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToneStyle {
    /// "Hoà", "Thuỷ": on the second vowel (the canonical form of `FullName`).
    Second,
    /// "Hòa", "Thủy": on the first vowel.
    First,
}

const fn is_tone_mark(c: char) -> bool {
    // grave, acute, tilde, hook above, dot below
    matches!(c, '\u{300}' | '\u{301}' | '\u{303}' | '\u{309}' | '\u{323}')
}

/// Rewrites every `oa`/`oe`/`uy` syllable without a final letter (not after
/// `q`, where `u` belongs to the consonant) to carry its tone mark in `style`.
/// The result is NFC.
fn with_tone_style(s: &str, style: ToneStyle) -> String {
    let mut v: Vec<char> = s.nfd().collect();
    let marks_end = |v: &[char], from: usize| {
        let mut k = from;
        while k < v.len() && is_combining_mark(v[k]) {
            k += 1;
        }
        k
    };
    let mut i = 0;
    while i < v.len() {
        if is_combining_mark(v[i]) {
            i += 1;
            continue;
        }
        let j = marks_end(&v, i + 1);
        if j >= v.len() {
            break;
        }
        let pair = matches!(
            (v[i].to_ascii_lowercase(), v[j].to_ascii_lowercase()),
            ('o', 'a') | ('o', 'e') | ('u', 'y')
        );
        let after_q = i > 0 && matches!(v[i - 1], 'q' | 'Q');
        if !pair || after_q {
            i = j;
            continue;
        }
        let k = marks_end(&v, j + 1);
        let open = k == v.len() || !v[k].is_alphabetic();
        if open {
            let on_first = (i + 1..j).find(|&p| is_tone_mark(v[p]));
            let on_second = (j + 1..k).find(|&p| is_tone_mark(v[p]));
            match (style, on_first, on_second) {
                (ToneStyle::Second, Some(p), None) => {
                    let m = v.remove(p);
                    // The second vowel's base letter is now at j - 1.
                    v.insert(j, m);
                }
                (ToneStyle::First, None, Some(p)) => {
                    let m = v.remove(p);
                    v.insert(i + 1, m);
                }
                _ => {}
            }
        }
        i = k;
    }
    v.into_iter().nfc().collect()
}

/// Removes every diacritic (đ → d) and upper-cases, like legacy carrier
/// systems stored names.
fn strip_diacritics_upper(s: &str) -> String {
    s.nfd()
        .filter(|&c| !is_combining_mark(c))
        .map(|c| match c {
            'đ' => 'd',
            'Đ' => 'D',
            c => c,
        })
        .collect::<String>()
        .to_uppercase()
}

fn fold_token(s: &str) -> String {
    strip_diacritics_upper(s).to_lowercase()
}

// ---------------------------------------------------------------------------
// Name and province tables
// ---------------------------------------------------------------------------

/// Family names with rough frequencies (per mille of the population).
const FAMILY_NAMES: [(&str, u32); 28] = [
    ("Nguyễn", 380),
    ("Trần", 110),
    ("Lê", 95),
    ("Phạm", 70),
    ("Hoàng", 40),
    ("Huỳnh", 11),
    ("Phan", 45),
    ("Vũ", 20),
    ("Võ", 19),
    ("Đặng", 21),
    ("Bùi", 20),
    ("Đỗ", 14),
    ("Hồ", 13),
    ("Ngô", 13),
    ("Dương", 10),
    ("Lý", 5),
    ("Đào", 10),
    ("Đoàn", 10),
    ("Vương", 9),
    ("Trịnh", 10),
    ("Trương", 10),
    ("Lâm", 9),
    ("Phùng", 9),
    ("Mai", 9),
    ("Tô", 9),
    ("Hà", 10),
    ("Tạ", 9),
    ("Quách", 8),
];

/// Male middle names; "Văn" dominates.
const MALE_MIDDLE: [(&str, u32); 20] = [
    ("Văn", 300),
    ("Hữu", 60),
    ("Đức", 70),
    ("Minh", 80),
    ("Quang", 50),
    ("Công", 40),
    ("Thành", 40),
    ("Xuân", 30),
    ("Ngọc", 30),
    ("Gia", 30),
    ("Đình", 40),
    ("Bá", 15),
    ("Trọng", 25),
    ("Quốc", 40),
    ("Tuấn", 20),
    ("Hoàng", 25),
    ("Mạnh", 15),
    ("Duy", 25),
    ("Thế", 20),
    ("Anh", 25),
];

/// Female middle names; "Thị" dominates.
const FEMALE_MIDDLE: [(&str, u32); 20] = [
    ("Thị", 380),
    ("Ngọc", 70),
    ("Thu", 50),
    ("Thanh", 50),
    ("Kim", 40),
    ("Mỹ", 30),
    ("Bích", 25),
    ("Thuỳ", 30),
    ("Hoài", 20),
    ("Phương", 30),
    ("Hồng", 30),
    ("Minh", 30),
    ("Diệu", 15),
    ("Khánh", 20),
    ("Bảo", 20),
    ("Thảo", 15),
    ("Hải", 15),
    ("Như", 20),
    ("Quỳnh", 15),
    ("Tuyết", 15),
];

const MALE_GIVEN: [&str; 56] = [
    "An", "Anh", "Bảo", "Bình", "Cường", "Dũng", "Dương", "Đạt", "Đức", "Hải", "Hiếu", "Hoà",
    "Hoàng", "Huy", "Hùng", "Hưng", "Khang", "Khánh", "Khoa", "Khôi", "Kiên", "Lâm", "Long", "Lộc",
    "Lợi", "Lực", "Mạnh", "Minh", "Nam", "Nghĩa", "Nhân", "Phát", "Phong", "Phúc", "Quân", "Quang",
    "Quý", "Sơn", "Tài", "Tâm", "Thắng", "Thành", "Thịnh", "Toàn", "Trung", "Tuấn", "Tùng", "Vinh",
    "Vũ", "Thuỵ", "Duy", "Đăng", "Thuỷ", "Hoè", "Khải", "Định",
];

const FEMALE_GIVEN: [&str; 56] = [
    "Anh", "Bích", "Chi", "Dung", "Dương", "Giang", "Hà", "Hạnh", "Hằng", "Hiền", "Hoa", "Hoà",
    "Hoè", "Hồng", "Huệ", "Hương", "Huyền", "Khuê", "Lan", "Liên", "Linh", "Loan", "Mai", "My",
    "Nga", "Ngân", "Ngọc", "Nhung", "Oanh", "Phương", "Quyên", "Quỳnh", "Tâm", "Thảo", "Thơ",
    "Thu", "Thuý", "Thuỷ", "Thư", "Trang", "Trâm", "Uyên", "Vân", "Vy", "Xuân", "Yến", "Ánh",
    "Đào", "Ngoan", "Xoà", "Thuỵ", "Mỹ", "Ly", "Ân", "Hoài", "Ngà",
];

/// Approximate population of each province (tens of thousands, 2019 census).
const PROVINCE_WEIGHTS: [(u16, u32); 63] = [
    (1, 825),
    (2, 85),
    (4, 53),
    (6, 31),
    (8, 78),
    (10, 73),
    (11, 60),
    (12, 46),
    (14, 125),
    (15, 82),
    (17, 85),
    (19, 129),
    (20, 78),
    (22, 132),
    (24, 180),
    (25, 146),
    (26, 115),
    (27, 137),
    (30, 189),
    (31, 203),
    (33, 125),
    (34, 186),
    (35, 85),
    (36, 178),
    (37, 98),
    (38, 364),
    (40, 333),
    (42, 129),
    (44, 90),
    (45, 63),
    (46, 113),
    (48, 113),
    (49, 150),
    (51, 123),
    (52, 149),
    (54, 87),
    (56, 123),
    (58, 59),
    (60, 123),
    (62, 54),
    (64, 151),
    (66, 187),
    (67, 62),
    (68, 130),
    (70, 99),
    (72, 117),
    (74, 243),
    (75, 310),
    (77, 115),
    (79, 899),
    (80, 169),
    (82, 176),
    (83, 129),
    (84, 101),
    (86, 102),
    (87, 160),
    (89, 191),
    (91, 172),
    (92, 124),
    (93, 73),
    (94, 120),
    (95, 91),
    (96, 119),
];

/// Relative weight of each age (per year of age), skewed toward 20–50.
fn age_weight(age: i32) -> u32 {
    match age {
        ..=19 => 24,
        20..=29 => 40,
        30..=39 => 40,
        40..=49 => 36,
        50..=59 => 26,
        60..=69 => 18,
        70..=79 => 8,
        _ => 3,
    }
}

/// Name tables sampled per row.
struct NameTables {
    family: Weighted,
    male_middle: Weighted,
    female_middle: Weighted,
}

impl NameTables {
    fn new() -> Self {
        Self {
            family: Weighted::new(FAMILY_NAMES.iter().map(|&(_, w)| w)),
            male_middle: Weighted::new(MALE_MIDDLE.iter().map(|&(_, w)| w)),
            female_middle: Weighted::new(FEMALE_MIDDLE.iter().map(|&(_, w)| w)),
        }
    }

    /// A full name in NFC, family name first, in a random tone style.
    fn full_name<R: Rng>(&self, rng: &mut R, sex: Sex) -> String {
        let (middles, middle_w, given): (&[(&str, u32)], _, &[&str]) = match sex {
            Sex::Male => (&MALE_MIDDLE, &self.male_middle, &MALE_GIVEN),
            Sex::Female => (&FEMALE_MIDDLE, &self.female_middle, &FEMALE_GIVEN),
        };
        let family = FAMILY_NAMES[self.family.sample(rng)].0;
        let m1 = middles[middle_w.sample(rng)].0;
        // About one in six people has two middle names ("Nguyễn Thị Minh Khai").
        let m2 = if rng.random_bool(0.16) {
            let m = middles[rng.random_range(1..middles.len())].0;
            (m != m1).then_some(m)
        } else {
            None
        };
        let last_middle = m2.unwrap_or(m1);
        let mut g = pick(rng, given);
        while g == last_middle {
            g = pick(rng, given);
        }
        let mut s = String::with_capacity(32);
        s.push_str(family);
        s.push(' ');
        s.push_str(m1);
        if let Some(m2) = m2 {
            s.push(' ');
            s.push_str(m2);
        }
        s.push(' ');
        s.push_str(g);
        let style = if rng.random_bool(0.5) {
            ToneStyle::Second
        } else {
            ToneStyle::First
        };
        with_tone_style(&s, style)
    }
}

// ---------------------------------------------------------------------------
// Population
// ---------------------------------------------------------------------------

/// Settings of [`write_population`].
#[derive(Debug, Clone)]
pub struct PopulationConfig {
    /// Rows to write.
    pub count: u64,
    pub seed: u64,
    /// Reference date: ages are computed against it, no date is after it.
    pub today: CivilDate,
    /// Share of rows with status `deceased` (default 0.01).
    pub deceased_share: f64,
    /// Share of rows whose date of birth is only a year (default 0.005).
    pub year_only_share: f64,
}

impl PopulationConfig {
    pub fn new(count: u64, seed: u64, today: CivilDate) -> Self {
        Self {
            count,
            seed,
            today,
            deceased_share: 0.01,
            year_only_share: 0.005,
        }
    }
}

fn check_share(name: &str, v: f64) -> Result<(), GenError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(GenError::InvalidConfig(format!(
            "{name} must be between 0 and 1"
        )))
    }
}

fn check_today(today: CivilDate) -> Result<(), GenError> {
    if CivilDate::new(today.year, today.month, today.day).is_none() {
        return Err(GenError::InvalidConfig(
            "today is not a calendar date".into(),
        ));
    }
    // Every birth year must be one an ID number can encode (1900–2099).
    if today.year - MAX_AGE - 1 < 1900 || today.year - MIN_AGE > 2099 {
        return Err(GenError::InvalidConfig(format!(
            "today must be in {}..={}",
            1900 + MAX_AGE + 1,
            2099 + MIN_AGE
        )));
    }
    Ok(())
}

/// `today`'s month and day in `year` (28 Feb for 29 Feb in a common year).
fn anniversary(today: CivilDate, year: i32) -> CivilDate {
    let day = today.day.min(days_in_month(year, today.month));
    CivilDate {
        year,
        month: today.month,
        day,
    }
}

/// A uniformly random birth date of someone exactly `age` years old today.
fn birth_date_for_age<R: Rng>(rng: &mut R, today: CivilDate, age: i32) -> CivilDate {
    let hi = anniversary(today, today.year - age).to_unix_days();
    let lo = anniversary(today, today.year - age - 1).to_unix_days() + 1;
    CivilDate::from_unix_days(rng.random_range(lo..=hi))
}

/// Hands out serials that never repeat within a (province, sex/century, YY)
/// bucket, using one small counter per bucket.
struct SerialAllocator {
    counters: Vec<u32>,
    seed: u64,
}

impl SerialAllocator {
    const BUCKETS: usize = PROVINCE_CODES.len() * 4 * 100;

    fn new(seed: u64) -> Self {
        Self {
            counters: vec![0; Self::BUCKETS],
            seed,
        }
    }

    /// The next serial of the bucket, or `None` once it is exhausted.
    fn next(&mut self, province_idx: usize, sex: Sex, year: i32) -> Option<u32> {
        let g = ((year / 100 - 19) * 2) as usize + usize::from(sex == Sex::Female);
        let bucket = (province_idx * 4 + g) * 100 + year.rem_euclid(100) as usize;
        let n = self.counters[bucket];
        if n >= POPULATION_SERIALS {
            return None;
        }
        self.counters[bucket] = n + 1;
        let offset = mix64(self.seed ^ (bucket as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let serial = (u64::from(n) * SERIAL_STRIDE + offset) % u64::from(POPULATION_SERIALS);
        Some(serial as u32)
    }
}

fn id_digits(id: &CitizenId) -> &str {
    std::str::from_utf8(id.as_bytes()).expect("ID digits are ASCII")
}

/// Writes a population extract of `cfg.count` people as CSV with header
/// `id_number,full_name,date_of_birth,sex,status`; returns the rows written.
///
/// IDs are unique and consistent with each row's sex and birth year; their
/// serials are all below [`POPULATION_SERIALS`].
pub fn write_population<W: Write>(cfg: &PopulationConfig, out: W) -> Result<u64, GenError> {
    check_today(cfg.today)?;
    check_share("deceased_share", cfg.deceased_share)?;
    check_share("year_only_share", cfg.year_only_share)?;

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let names = NameTables::new();
    let provinces = Weighted::new(PROVINCE_WEIGHTS.iter().map(|&(_, w)| w));
    let ages = Weighted::new((MIN_AGE..=MAX_AGE).map(age_weight));
    let mut serials = SerialAllocator::new(mix64(cfg.seed ^ 0x5E12_1A15));

    let mut w = csv::Writer::from_writer(out);
    w.write_record(["id_number", "full_name", "date_of_birth", "sex", "status"])?;
    let mut rows = 0u64;
    while rows < cfg.count {
        let sex = if rng.random_bool(0.495) {
            Sex::Female
        } else {
            Sex::Male
        };
        let age = MIN_AGE + ages.sample(&mut rng) as i32;
        let dob = birth_date_for_age(&mut rng, cfg.today, age);
        // PROVINCE_WEIGHTS lists the codes in PROVINCE_CODES order.
        let mut p = provinces.sample(&mut rng);
        let mut serial = serials.next(p, sex, dob.year);
        let mut tries = 0;
        while serial.is_none() && tries < 1000 {
            p = rng.random_range(0..PROVINCE_CODES.len());
            serial = serials.next(p, sex, dob.year);
            tries += 1;
        }
        let Some(serial) = serial else {
            // Every province is (nearly) full for this sex and year: draw again.
            continue;
        };
        let id = CitizenId::from_parts(PROVINCE_CODES[p].0, sex, dob.year, serial)
            .expect("valid parts by construction");
        let name = names.full_name(&mut rng, sex);
        let dob_text = if rng.random_bool(cfg.year_only_share) {
            format!("{:04}", dob.year)
        } else {
            dob.to_string()
        };
        let status = if rng.random_bool(cfg.deceased_share) {
            "deceased"
        } else {
            ""
        };
        w.write_record([id_digits(&id), &name, &dob_text, sex.as_letter(), status])?;
        rows += 1;
    }
    w.flush()?;
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// Settings of [`write_subscribers`].
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub seed: u64,
    /// Upper bound on the lines written: generation stops when it is reached
    /// or when the population is exhausted, whichever comes first.
    pub count: Option<u64>,
    /// Share of lines with a data error (split evenly among the error kinds
    /// other than `none` and `unknown_id`). Default 0.2.
    pub error_share: f64,
    /// Share of lines whose ID is not in the population. Default 0.02.
    pub unknown_id_share: f64,
    /// Share of people with 2–6 lines (different MSISDNs). Default 0.01.
    pub multi_line_share: f64,
    /// Whether to add the `error_kind,expected_decision` columns.
    pub label: bool,
    pub today: CivilDate,
}

impl SubscriberConfig {
    pub fn new(seed: u64, today: CivilDate) -> Self {
        Self {
            seed,
            count: None,
            error_share: 0.2,
            unknown_id_share: 0.02,
            multi_line_share: 0.01,
            label: false,
            today,
        }
    }
}

/// What [`write_subscribers`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberSummary {
    /// Lines written.
    pub rows: u64,
    /// Lines per error kind (see [`ERROR_KINDS`]).
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Population rows not used: status `deleted`, or not a valid identity.
    pub skipped: u64,
}

/// Error kinds, as written in the `error_kind` column, and the decision the
/// gateway should reach for a living person (for a deceased person every
/// kind but `unknown_id` is expected to be `DECEASED`).
pub const ERROR_KINDS: [(&str, Decision); 7] = [
    ("none", Decision::Verified),
    ("no_diacritics", Decision::Mismatch),
    ("swapped_tokens", Decision::Mismatch),
    ("name_typo", Decision::Mismatch),
    ("wrong_day", Decision::Mismatch),
    ("wrong_sex", Decision::Mismatch),
    ("unknown_id", Decision::NotFound),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    NoDiacritics,
    SwappedTokens,
    NameTypo,
    WrongDay,
    WrongSex,
    UnknownId,
}

/// The error kinds drawn from `error_share`.
const DATA_ERRORS: [Kind; 5] = [
    Kind::NoDiacritics,
    Kind::SwappedTokens,
    Kind::NameTypo,
    Kind::WrongDay,
    Kind::WrongSex,
];

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::NoDiacritics => "no_diacritics",
            Self::SwappedTokens => "swapped_tokens",
            Self::NameTypo => "name_typo",
            Self::WrongDay => "wrong_day",
            Self::WrongSex => "wrong_sex",
            Self::UnknownId => "unknown_id",
        }
    }

    fn expected(self, deceased: bool) -> Decision {
        match self {
            Self::UnknownId => Decision::NotFound,
            _ if deceased => Decision::Deceased,
            Self::None => Decision::Verified,
            _ => Decision::Mismatch,
        }
    }
}

/// A usable population row.
struct Person {
    id: CitizenId,
    name: String,
    canonical: String,
    /// `None` when the extract only knows the year.
    dob: Option<CivilDate>,
    year: i32,
    sex: Sex,
    deceased: bool,
}

/// One subscriber line before formatting.
struct Line {
    id: String,
    name: String,
    dob: CivilDate,
    sex: Sex,
}

/// A permutation of every valid national number (prefix + 7 digits): line
/// `n` gets number `perm(n)`, so numbers never repeat yet look random.
/// A 4-round Feistel network on 2k bits, cycle-walked into range.
struct MsisdnSpace {
    prefixes: Vec<u8>,
    size: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl MsisdnSpace {
    fn new(seed: u64) -> Self {
        let prefixes: Vec<u8> = PrefixCarrier::all_prefixes().collect();
        let size = prefixes.len() as u64 * 10_000_000;
        let bits = 64 - (size - 1).leading_zeros();
        let half_bits = bits.div_ceil(2);
        let keys = std::array::from_fn(|i| mix64(seed ^ (0xC0FF_EE00 + i as u64)));
        Self {
            prefixes,
            size,
            half_bits,
            keys,
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for &k in &self.keys {
            let f = mix64(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    /// The 9-digit national significant number of line `n`.
    fn nth(&self, n: u64) -> Option<String> {
        if n >= self.size {
            return None;
        }
        let mut x = self.feistel(n);
        while x >= self.size {
            x = self.feistel(x);
        }
        let prefix = self.prefixes[(x / 10_000_000) as usize];
        Some(format!("{prefix:02}{:07}", x % 10_000_000))
    }
}

/// The number in one of the forms carriers' files use.
fn format_msisdn<R: Rng>(rng: &mut R, nsn: &str) -> String {
    let (p, a, b) = (&nsn[..2], &nsn[2..5], &nsn[5..]);
    match rng.random_range(0..100) {
        0..55 => format!("0{nsn}"),
        55..67 => format!("84{nsn}"),
        67..85 => format!("+84{nsn}"),
        85..93 => format!("0{p} {a} {b}"),
        93..97 => format!("+84 {p} {a} {b}"),
        _ => format!("0{p}-{a}-{b}"),
    }
}

/// A random full date in `year`, not after today nor older than the oldest
/// accepted age.
fn random_day_in_year<R: Rng>(rng: &mut R, year: i32, today: CivilDate) -> CivilDate {
    let oldest = anniversary(today, today.year - MAX_AGE_YEARS).to_unix_days();
    let lo = CivilDate {
        year,
        month: 1,
        day: 1,
    }
    .to_unix_days()
    .max(oldest);
    let hi = CivilDate {
        year,
        month: 12,
        day: 31,
    }
    .to_unix_days()
    .min(today.to_unix_days());
    CivilDate::from_unix_days(if lo <= hi {
        rng.random_range(lo..=hi)
    } else {
        hi
    })
}

/// Harmless byte-form changes: the gateway must still see the same name.
fn vary_bytes<R: Rng>(rng: &mut R, name: &str) -> String {
    let mut s = name.to_owned();
    let mut changed = false;
    while !changed {
        if rng.random_bool(0.35) {
            let (a, b) = (
                with_tone_style(&s, ToneStyle::First),
                with_tone_style(&s, ToneStyle::Second),
            );
            if a != s {
                s = a;
                changed = true;
            } else if b != s {
                s = b;
                changed = true;
            }
        }
        if rng.random_bool(0.3) {
            s = s.to_uppercase();
            changed = true;
        }
        if rng.random_bool(0.3) {
            let mut t = String::with_capacity(s.len() + 8);
            if rng.random_bool(0.3) {
                t.push(' ');
            }
            for (i, tok) in s.split(' ').enumerate() {
                if i > 0 {
                    t.push_str(pick(rng, &[" ", "  ", "\u{a0}", " \u{a0}", "   "]));
                }
                t.push_str(tok);
            }
            if rng.random_bool(0.3) {
                t.push(' ');
            }
            s = t;
            changed = true;
        }
        if rng.random_bool(0.35) {
            s = s.nfd().collect();
            changed = true;
        }
    }
    s
}

/// Applies `kind` to `p`; `None` when it cannot produce a real instance of
/// that error for this person (the caller then picks another kind).
fn make_line<R: Rng>(rng: &mut R, kind: Kind, p: &Person, today: CivilDate) -> Option<Line> {
    let dob = p
        .dob
        .unwrap_or_else(|| random_day_in_year(rng, p.year, today));
    let mut line = Line {
        id: id_digits(&p.id).to_owned(),
        name: p.name.clone(),
        dob,
        sex: p.sex,
    };
    let differs = |name: &str| FullName::parse(name).is_ok_and(|n| n.canonical() != p.canonical);
    match kind {
        Kind::None => {
            if rng.random_bool(0.3) {
                line.name = vary_bytes(rng, &p.name);
            }
        }
        Kind::NoDiacritics => {
            line.name = strip_diacritics_upper(&p.name);
            if !differs(&line.name) {
                return None;
            }
        }
        Kind::SwappedTokens => {
            let mut toks: Vec<&str> = p.name.split_whitespace().collect();
            if toks.len() < 2 {
                return None;
            }
            if rng.random_bool(0.6) {
                // Given name first, as foreign-style forms put it.
                toks.rotate_right(1);
            } else {
                let i = rng.random_range(0..toks.len() - 1);
                toks.swap(i, i + 1);
            }
            line.name = toks.join(" ");
            if !differs(&line.name) {
                return None;
            }
        }
        Kind::NameTypo => {
            let toks: Vec<&str> = p.name.split_whitespace().collect();
            if toks.len() < 2 {
                return None;
            }
            let i = rng.random_range(1..toks.len());
            let pool: &[&str] = match (p.sex, rng.random_bool(0.5)) {
                (Sex::Male, true) => &MALE_GIVEN,
                (Sex::Female, true) => &FEMALE_GIVEN,
                (Sex::Male, false) => &["Văn", "Hữu", "Đức", "Minh", "Quang", "Công", "Đình"],
                (Sex::Female, false) => &["Thị", "Ngọc", "Thu", "Thanh", "Kim", "Mỹ", "Bích"],
            };
            let old = fold_token(toks[i]);
            let new = (0..20)
                .map(|_| pick(rng, pool))
                .find(|t| fold_token(t) != old)?;
            let mut out: Vec<&str> = toks.clone();
            out[i] = new;
            line.name = out.join(" ");
            if !differs(&line.name) {
                return None;
            }
        }
        Kind::WrongDay => {
            // A year-only mirror date matches any day of the year.
            let dob = p.dob?;
            let base = dob.to_unix_days();
            line.dob = (0..20).find_map(|_| {
                let delta = rng.random_range(1..=27i64);
                let d = if rng.random_bool(0.5) { delta } else { -delta };
                let c = CivilDate::from_unix_days(base + d);
                (c.year == dob.year && c <= today).then_some(c)
            })?;
        }
        Kind::WrongSex => {
            line.sex = match p.sex {
                Sex::Male => Sex::Female,
                Sex::Female => Sex::Male,
            };
        }
        Kind::UnknownId => {
            let serial = POPULATION_SERIALS + rng.random_range(0..1_000_000 - POPULATION_SERIALS);
            let id = CitizenId::from_parts(p.id.province_code(), p.sex, p.year, serial)?;
            line.id = id_digits(&id).to_owned();
        }
    }
    Some(line)
}

fn column(headers: &csv::StringRecord, name: &'static str) -> Option<usize> {
    headers
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}').trim() == name)
}

fn parse_dob_text(s: &str) -> Option<CivilDate> {
    let s = s.trim();
    if s.len() != 10 {
        return None;
    }
    CivilDate::new(
        s[0..4].parse().ok()?,
        s[5..7].parse().ok()?,
        s[8..10].parse().ok()?,
    )
}

/// Reads a population extract (columns found by header name; `status` is
/// optional) and writes one subscriber line per person — 2–6 lines for a
/// `multi_line_share` of people — with errors injected per `cfg`.
///
/// `cfg.count` is an upper bound: generation stops at the end of the
/// population. Rows with status `deleted` and rows that are not a valid
/// identity are skipped. Every MSISDN is distinct.
pub fn write_subscribers<R: Read, W: Write>(
    population: R,
    cfg: &SubscriberConfig,
    out: W,
) -> Result<SubscriberSummary, GenError> {
    check_share("error_share", cfg.error_share)?;
    check_share("unknown_id_share", cfg.unknown_id_share)?;
    check_share("multi_line_share", cfg.multi_line_share)?;
    if cfg.error_share + cfg.unknown_id_share > 1.0 {
        return Err(GenError::InvalidConfig(
            "error_share + unknown_id_share must not exceed 1".into(),
        ));
    }

    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(population);
    let headers = rdr.headers()?.clone();
    let col = |name| column(&headers, name).ok_or(GenError::MissingColumn(name));
    let (c_id, c_name, c_dob, c_sex) = (
        col("id_number")?,
        col("full_name")?,
        col("date_of_birth")?,
        col("sex")?,
    );
    let c_status = column(&headers, "status");

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let space = MsisdnSpace::new(mix64(cfg.seed ^ 0x4D53_4953_444E));
    let mut w = csv::Writer::from_writer(out);
    let mut header = vec!["msisdn", "id_number", "full_name", "date_of_birth", "sex"];
    if cfg.label {
        header.extend(["error_kind", "expected_decision"]);
    }
    w.write_record(&header)?;

    let mut summary = SubscriberSummary::default();
    for (k, _) in ERROR_KINDS {
        summary.by_kind.insert(k, 0);
    }
    let limit = cfg.count.unwrap_or(u64::MAX);
    let mut rec = csv::StringRecord::new();
    'rows: while summary.rows < limit && rdr.read_record(&mut rec)? {
        let field = |i: usize| rec.get(i).unwrap_or("");
        let status = c_status.map_or("", field);
        if ImportStatus::parse(status) == Some(ImportStatus::Deleted) {
            summary.skipped += 1;
            continue;
        }
        let Ok(ident) = Identity::parse(
            field(c_id),
            field(c_name),
            field(c_dob),
            field(c_sex),
            status,
            cfg.today,
        ) else {
            summary.skipped += 1;
            continue;
        };
        let person = Person {
            id: ident.id.clone(),
            name: field(c_name).trim().to_owned(),
            canonical: ident.name.canonical().to_owned(),
            dob: parse_dob_text(field(c_dob)),
            year: ident.dob.year(),
            sex: ident.sex,
            deceased: ident.status == ImportStatus::Deceased,
        };

        let lines = if rng.random_bool(cfg.multi_line_share) {
            rng.random_range(2..=6)
        } else {
            1
        };
        for _ in 0..lines {
            if summary.rows >= limit {
                break 'rows;
            }
            let u: f64 = rng.random();
            let mut kind = if u < cfg.unknown_id_share {
                Kind::UnknownId
            } else if u < cfg.unknown_id_share + cfg.error_share {
                DATA_ERRORS[rng.random_range(0..DATA_ERRORS.len())]
            } else {
                Kind::None
            };
            let mut line = make_line(&mut rng, kind, &person, cfg.today);
            if line.is_none() {
                // This person cannot carry that error: use another data error.
                let start = rng.random_range(0..DATA_ERRORS.len());
                for i in 0..DATA_ERRORS.len() {
                    kind = DATA_ERRORS[(start + i) % DATA_ERRORS.len()];
                    line = make_line(&mut rng, kind, &person, cfg.today);
                    if line.is_some() {
                        break;
                    }
                }
            }
            let line = match line {
                Some(l) => l,
                None => {
                    kind = Kind::None;
                    make_line(&mut rng, kind, &person, cfg.today).expect("none always applies")
                }
            };
            let nsn = space.nth(summary.rows).ok_or_else(|| {
                GenError::InvalidConfig("more lines than distinct mobile numbers".into())
            })?;
            let msisdn = format_msisdn(&mut rng, &nsn);
            let dob = line.dob.to_string();
            let mut row = vec![
                msisdn.as_str(),
                line.id.as_str(),
                line.name.as_str(),
                dob.as_str(),
                line.sex.as_letter(),
            ];
            if cfg.label {
                row.push(kind.as_str());
                row.push(kind.expected(person.deceased).as_str());
            }
            w.write_record(&row)?;
            summary.rows += 1;
            *summary.by_kind.entry(kind.as_str()).or_insert(0) += 1;
        }
    }
    w.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use unicode_normalization::is_nfc;

    use super::*;
    use crate::domain::citizen_id::is_province_code;
    use crate::domain::hashing::{KeyedHasher, LookupKey};
    use crate::domain::matching::{MirrorRecord, decide};
    use crate::domain::msisdn::Msisdn;
    use crate::domain::request::{RawRequest, VerifyInput};

    const TODAY: CivilDate = CivilDate {
        year: 2026,
        month: 3,
        day: 15,
    };

    fn population(count: u64, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_population(&PopulationConfig::new(count, seed, TODAY), &mut out).unwrap();
        assert_eq!(n, count);
        out
    }

    fn rows(csv_bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
        let mut r = csv::Reader::from_reader(csv_bytes);
        let h = r.headers().unwrap().iter().map(str::to_owned).collect();
        let rows = r
            .records()
            .map(|x| x.unwrap().iter().map(str::to_owned).collect())
            .collect();
        (h, rows)
    }

    #[test]
    fn tables_are_sound() {
        assert_eq!(PROVINCE_WEIGHTS.len(), PROVINCE_CODES.len());
        for (&(a, _), &(b, _)) in PROVINCE_WEIGHTS.iter().zip(PROVINCE_CODES.iter()) {
            assert_eq!(a, b);
            assert!(is_province_code(a));
        }
        let all = FAMILY_NAMES
            .iter()
            .chain(&MALE_MIDDLE)
            .chain(&FEMALE_MIDDLE)
            .map(|&(n, _)| n)
            .chain(MALE_GIVEN)
            .chain(FEMALE_GIVEN);
        for n in all {
            assert!(is_nfc(n), "{n}");
            assert!(FullName::parse(n).is_ok(), "{n}");
        }
        let distinct = |l: &[&str]| l.iter().collect::<HashSet<_>>().len();
        assert!(distinct(&MALE_GIVEN) >= 40 && distinct(&FEMALE_GIVEN) >= 40);
        assert_eq!(distinct(&MALE_GIVEN), MALE_GIVEN.len());
        assert_eq!(distinct(&FEMALE_GIVEN), FEMALE_GIVEN.len());
        // STRIDE is coprime to the serial range.
        let gcd = |mut a: u64, mut b: u64| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        assert_eq!(gcd(SERIAL_STRIDE, u64::from(POPULATION_SERIALS)), 1);
    }

    #[test]
    fn tone_styles() {
        let first = ToneStyle::First;
        let second = ToneStyle::Second;
        assert_eq!(with_tone_style("Hoà Thuỷ Hoè", first), "Hòa Thủy Hòe");
        assert_eq!(with_tone_style("Hòa Thủy Hòe", second), "Hoà Thuỷ Hoè");
        assert_eq!(with_tone_style("HOÀ", first), "HÒA");
        // Closed syllables, "qu" and already-placed marks are left alone.
        for s in ["Hoàng Toàn Quý Hoài Nguyễn Quỳnh Huy Khoa", "Thuý"] {
            assert_eq!(with_tone_style(s, second), s);
        }
        assert_eq!(with_tone_style("Thuý", first), "Thúy");
        let nfd: String = "Thủy".nfd().collect();
        assert_eq!(with_tone_style(&nfd, second), "Thuỷ");
        assert_eq!(
            strip_diacritics_upper("Đặng Thị Thuỷ Ngân"),
            "DANG THI THUY NGAN"
        );
    }

    #[test]
    fn serials_never_repeat_in_a_bucket() {
        let mut a = SerialAllocator::new(7);
        let mut seen = HashSet::new();
        for _ in 0..POPULATION_SERIALS {
            let s = a.next(3, Sex::Female, 1990).unwrap();
            assert!(s < POPULATION_SERIALS);
            assert!(seen.insert(s));
        }
        assert_eq!(a.next(3, Sex::Female, 1990), None);
        assert!(a.next(3, Sex::Male, 1990).is_some());
    }

    #[test]
    fn msisdn_space_is_a_permutation() {
        let s = MsisdnSpace::new(1);
        let mut seen = HashSet::new();
        for n in 0..20_000 {
            let nsn = s.nth(n).unwrap();
            assert!(Msisdn::parse(&format!("0{nsn}")).is_ok());
            assert!(seen.insert(nsn));
        }
        assert!(s.nth(s.size).is_none());
    }

    #[test]
    fn population_is_deterministic() {
        assert_eq!(population(500, 42), population(500, 42));
        assert_ne!(population(500, 42), population(500, 43));
    }

    #[test]
    fn population_rows_are_valid_and_realistic() {
        let (header, rows) = rows(&population(50_000, 9));
        assert_eq!(
            header,
            ["id_number", "full_name", "date_of_birth", "sex", "status"]
        );
        assert_eq!(rows.len(), 50_000);
        let mut ids = HashSet::new();
        let (mut nguyen, mut deceased, mut year_only, mut first, mut second) = (0, 0, 0, 0, 0);
        let mut ages = [0u32; 10];
        for (i, r) in rows.iter().enumerate() {
            let ident = Identity::parse(&r[0], &r[1], &r[2], &r[3], &r[4], TODAY)
                .unwrap_or_else(|e| panic!("row {i}: {e}"));
            assert!(ids.insert(r[0].clone()), "duplicate ID");
            let serial: u32 = r[0][6..].parse().unwrap();
            assert!(serial < POPULATION_SERIALS);
            assert!(is_nfc(&r[1]));
            if i < 20_000 && r[1].starts_with("Nguyễn ") {
                nguyen += 1;
            }
            deceased += u32::from(ident.status == ImportStatus::Deceased);
            year_only += u32::from(r[2].len() == 4);
            first += u32::from(with_tone_style(&r[1], ToneStyle::Second) != r[1]);
            second += u32::from(with_tone_style(&r[1], ToneStyle::First) != r[1]);
            let age = TODAY.year - ident.dob.year();
            assert!((MIN_AGE..=MAX_AGE + 1).contains(&age));
            ages[(age / 10) as usize] += 1;
        }
        let share = f64::from(nguyen) / 20_000.0;
        assert!((0.30..=0.46).contains(&share), "Nguyễn {share}");
        assert!((300..=700).contains(&deceased), "deceased {deceased}");
        assert!((120..=400).contains(&year_only), "year only {year_only}");
        assert!(first > 100 && second > 100, "tone styles {first}/{second}");
        // Skewed toward 20–50.
        assert!(ages[2] + ages[3] + ages[4] > 25_000, "{ages:?}");
    }

    fn subscribers(pop: &[u8], cfg: &SubscriberConfig) -> (SubscriberSummary, Vec<u8>) {
        let mut out = Vec::new();
        let s = write_subscribers(pop, cfg, &mut out).unwrap();
        (s, out)
    }

    #[test]
    fn subscriber_lines_match_their_labels() {
        let pop = population(10_000, 5);
        let mut cfg = SubscriberConfig::new(11, TODAY);
        cfg.label = true;
        let (summary, out) = subscribers(&pop, &cfg);
        let (header, lines) = rows(&out);
        assert_eq!(
            header,
            [
                "msisdn",
                "id_number",
                "full_name",
                "date_of_birth",
                "sex",
                "error_kind",
                "expected_decision"
            ]
        );
        assert_eq!(summary.rows, lines.len() as u64);
        assert!(
            summary.rows > 10_000 && summary.rows < 10_600,
            "{}",
            summary.rows
        );
        assert_eq!(summary.by_kind.values().sum::<u64>(), summary.rows);

        // Shares near the configuration.
        let n = summary.rows as f64;
        let share = |k| summary.by_kind[k] as f64 / n;
        assert!(
            (0.78 - share("none")).abs() < 0.02,
            "none {:?}",
            summary.by_kind
        );
        assert!(
            (0.02 - share("unknown_id")).abs() < 0.006,
            "unknown {}",
            share("unknown_id")
        );
        for k in [
            "no_diacritics",
            "swapped_tokens",
            "name_typo",
            "wrong_day",
            "wrong_sex",
        ] {
            assert!((0.04 - share(k)).abs() < 0.01, "{k} {}", share(k));
        }

        // Check every label against the real matcher.
        let hasher = KeyedHasher::new(&[7u8; 32], 1).unwrap();
        let (_, prow) = rows(&pop);
        let mut mirror: HashMap<LookupKey, MirrorRecord> = HashMap::new();
        let mut people: HashMap<String, (Identity, &str)> = HashMap::new();
        for r in &prow {
            let ident = Identity::parse(&r[0], &r[1], &r[2], &r[3], &r[4], TODAY).unwrap();
            let (key, rec) = ident.to_record(&hasher, 1);
            mirror.insert(key, rec);
            people.insert(r[0].clone(), (ident, r[1].as_str()));
        }
        let mut msisdns = HashSet::new();
        let mut lines_per_id: HashMap<&str, u32> = HashMap::new();
        let mut byte_variants = 0;
        for l in &lines {
            let m = Msisdn::parse(&l[0]).unwrap_or_else(|e| panic!("{}: {e}", l[0]));
            assert!(msisdns.insert(m.e164()), "repeated MSISDN");
            *lines_per_id.entry(&l[1]).or_default() += 1;
            let raw = RawRequest {
                request_id: "r",
                msisdn: &l[0],
                id_number: &l[1],
                full_name: &l[2],
                date_of_birth: &l[3],
                sex: Sex::parse(&l[4]),
                consent_ref: None,
            };
            let input = VerifyInput::parse(&raw, TODAY).unwrap();
            let probe = input.into_probe(&hasher);
            let verdict = decide(&probe, mirror.get(&probe.lookup_key));
            assert_eq!(verdict.decision.as_str(), l[6], "{} {:?}", l[5], l);
            let (person, original) = match people.get(&l[1]) {
                Some((p, o)) => (Some(p), *o),
                None => (None, ""),
            };
            match l[5].as_str() {
                "none" => {
                    let p = person.unwrap();
                    let name = FullName::parse(&l[2]).unwrap();
                    assert_eq!(name.canonical(), p.name.canonical());
                    byte_variants += u32::from(original != l[2]);
                }
                "no_diacritics" => assert!(l[2].is_ascii() && l[2] == l[2].to_uppercase()),
                "unknown_id" => {
                    assert!(person.is_none());
                    assert!(CitizenId::parse(&l[1]).is_ok());
                }
                "wrong_day" => {
                    let p = person.unwrap();
                    assert_eq!(p.dob.year(), l[3][..4].parse::<i32>().unwrap());
                }
                "wrong_sex" => assert_ne!(Sex::parse(&l[4]), Some(person.unwrap().sex)),
                "swapped_tokens" | "name_typo" => {
                    let name = FullName::parse(&l[2]).unwrap();
                    assert_ne!(name.canonical(), person.unwrap().name.canonical());
                }
                k => panic!("unknown kind {k}"),
            }
        }
        assert!(byte_variants > 1000, "byte variants {byte_variants}");
        let multi = lines_per_id.values().filter(|&&c| c > 1).count();
        assert!((50..=160).contains(&multi), "multi-line people {multi}");
        assert!(lines_per_id.values().all(|&c| c <= 6));
    }

    #[test]
    fn subscriber_options() {
        let pop = population(2_000, 1);
        let mut cfg = SubscriberConfig::new(3, TODAY);
        let (s1, out1) = subscribers(&pop, &cfg);
        let (s2, out2) = subscribers(&pop, &cfg);
        assert_eq!((s1.clone(), &out1), (s2, &out2));
        let (header, lines) = rows(&out1);
        assert_eq!(
            header,
            ["msisdn", "id_number", "full_name", "date_of_birth", "sex"]
        );
        assert!(lines.iter().all(|l| l.len() == 5));

        cfg.count = Some(500);
        let (s, out) = subscribers(&pop, &cfg);
        assert_eq!(s.rows, 500);
        assert_eq!(rows(&out).1.len(), 500);

        cfg.count = Some(1_000_000);
        assert_eq!(subscribers(&pop, &cfg).0.rows, s1.rows);

        // Deleted rows are skipped; a missing column is reported by name.
        let text = "id_number,full_name,date_of_birth,sex,status\n\
                    001090123456,Nguyễn Văn An,1990-05-17,M,deleted\n\
                    001090123457,Nguyễn Văn Bình,1990,M,deceased\n";
        let mut cfg = SubscriberConfig::new(3, TODAY);
        cfg.label = true;
        cfg.multi_line_share = 0.0;
        let (s, out) = subscribers(text.as_bytes(), &cfg);
        assert_eq!((s.rows, s.skipped), (1, 1));
        let (_, lines) = rows(&out);
        assert_eq!(lines[0][1].len(), 12);
        assert!(lines[0][3].starts_with("1990-"));
        let expected = if lines[0][5] == "unknown_id" {
            "NOT_FOUND"
        } else {
            "DECEASED"
        };
        assert_eq!(lines[0][6], expected);
        let e = write_subscribers("id_number,full_name,sex\n".as_bytes(), &cfg, Vec::new());
        assert!(matches!(e, Err(GenError::MissingColumn("date_of_birth"))));
    }
}
