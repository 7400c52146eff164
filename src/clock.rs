//! The wall clock, kept out of the domain so domain rules stay deterministic.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::domain::CivilDate;

/// Vietnam keeps UTC+7 all year (no daylight saving).
pub const VN_OFFSET_SECS: i64 = 7 * 3600;

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Today's date in Vietnam, which is what "not in the future" means for a
/// date of birth written by a Vietnamese carrier.
pub fn today_vn() -> CivilDate {
    vn_date_at(now_micros())
}

/// Seconds since 1970-01-01 00:00 Vietnam time, at `micros` after the Unix epoch.
fn vn_secs(micros: i64) -> i64 {
    micros.div_euclid(1_000_000) + VN_OFFSET_SECS
}

fn vn_date_at(micros: i64) -> CivilDate {
    CivilDate::from_unix_days(vn_secs(micros).div_euclid(86_400))
}

/// When a call arrived, on both clocks: the monotonic one for its latency
/// and deadline, the wall clock for dates and record times. A call reads
/// them once and derives the rest; admission, parsing and the audit stamp
/// used to read them six times between them (tens of nanoseconds each).
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub instant: Instant,
    pub wall_micros: i64,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall_micros: now_micros(),
        }
    }

    /// The date in Vietnam at this moment.
    pub fn today_vn(&self) -> CivilDate {
        vn_date_at(self.wall_micros)
    }

    /// How long from this moment until midnight in Vietnam, when a day's
    /// quota starts again (a whole day at midnight itself).
    pub fn until_midnight_vn(&self) -> Duration {
        let into_day = vn_secs(self.wall_micros).rem_euclid(86_400);
        Duration::from_secs((86_400 - into_day) as u64)
    }

    /// The wall time `elapsed` after this moment, in microseconds. Measured
    /// on the monotonic clock, so a wall-clock step during a call does not
    /// move it (it moves the next call's reading).
    pub fn wall_after(&self, elapsed: Duration) -> i64 {
        self.wall_micros
            .saturating_add(i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wall_micros: i64) -> Moment {
        Moment {
            instant: Instant::now(),
            wall_micros,
        }
    }

    #[test]
    fn the_day_in_vietnam_turns_at_five_in_the_afternoon_utc() {
        // 2026-12-04T16:59:59.999999Z is 23:59:59.999999 in Hanoi.
        let midnight_hanoi = 1_796_403_600_000_000;
        assert_eq!(
            at(midnight_hanoi - 1).today_vn(),
            CivilDate::new(2026, 12, 4).unwrap()
        );
        assert_eq!(
            at(midnight_hanoi).today_vn(),
            CivilDate::new(2026, 12, 5).unwrap()
        );
        // Before the epoch the division still rounds down.
        assert_eq!(at(-1).today_vn(), CivilDate::new(1970, 1, 1).unwrap());
        assert_eq!(
            at(midnight_hanoi - 1).until_midnight_vn(),
            Duration::from_secs(1)
        );
        assert_eq!(
            at(midnight_hanoi).until_midnight_vn(),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn a_moments_wall_time_moves_with_the_monotonic_clock() {
        let m = at(1_000_000);
        assert_eq!(m.wall_after(Duration::from_micros(250)), 1_000_250);
        assert_eq!(m.wall_after(Duration::MAX), i64::MAX);
        let now = Moment::now();
        let later = now.wall_after(now.instant.elapsed());
        assert!(later >= now.wall_micros);
    }
}
