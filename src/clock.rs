//! The wall clock, kept out of the domain so domain rules stay deterministic.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::CivilDate;

/// Vietnam keeps UTC+7 all year (no daylight saving).
const VN_OFFSET_SECS: i64 = 7 * 3600;

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Today's date in Vietnam, which is what "not in the future" means for a
/// date of birth written by a Vietnamese carrier.
pub fn today_vn() -> CivilDate {
    let secs = now_micros() / 1_000_000 + VN_OFFSET_SECS;
    CivilDate::from_unix_days(secs.div_euclid(86_400))
}
