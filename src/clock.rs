//! Time as the old server counted it: whole seconds since the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> i64 {
    epoch_of(SystemTime::now())
}

pub fn epoch_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// An ISO 8601 time in UTC (`2026-12-03T18:38:54Z`), as spreadsheets and monitoring read it.
pub fn iso8601(epoch: i64) -> String {
    let seconds = epoch.max(0) as u64;
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let time_of_day = seconds % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", time_of_day / 3600, time_of_day % 3600 / 60, time_of_day % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_times() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        // a leap day
        assert_eq!(super::iso8601(951_782_400 + 86_399), "2000-02-29T23:59:59Z");
    }
}
