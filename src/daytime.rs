//! The daytime line (RFC 867) in each [`DaytimeFormat`], in UTC, and the
//! time service's four bytes (RFC 868).
//!
//! The calendar arithmetic is H. Hinnant's `civil_from_days`: exact for every
//! date the Unix epoch can name, with no time-zone database and no crate.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::DaytimeFormat;

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A UTC calendar time, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday
    weekday: usize,
}

impl Civil {
    fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: in_day / 3600,
            minute: in_day / 60 % 60,
            second: in_day % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as usize,
        }
    }
}

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a
    // year, then count in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The daytime line for `secs` seconds since the Unix epoch, `\r\n` included.
pub fn line_at(format: DaytimeFormat, secs: i64) -> String {
    let t = Civil::from_unix(secs);
    let weekday = WEEKDAYS[t.weekday];
    let month = MONTHS[t.month as usize - 1];
    let (h, m, s) = (t.hour, t.minute, t.second);
    match format {
        DaytimeFormat::Ctime => {
            format!(
                "{weekday} {month} {:>2} {h:02}:{m:02}:{s:02} {}\r\n",
                t.day, t.year
            )
        }
        DaytimeFormat::Rfc5322 => {
            format!(
                "{weekday}, {:02} {month} {} {h:02}:{m:02}:{s:02} +0000\r\n",
                t.day, t.year
            )
        }
        DaytimeFormat::Rfc3339 => format!(
            "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}Z\r\n",
            t.year, t.month, t.day
        ),
    }
}

/// The daytime line for the current time.
pub fn line_now(format: DaytimeFormat) -> String {
    line_at(format, unix_now())
}

/// Seconds since 1970-01-01 UTC, now.
fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        // A clock set before 1970 still gets an answer rather than a panic.
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// Seconds from 1900-01-01 to 1970-01-01 (RFC 868).
const SECONDS_1900_TO_1970: i64 = 2_208_988_800;

/// The time service's answer for `unix_secs`: seconds since 1900-01-01 UTC
/// as a 32-bit number in network order. It wraps in 2036, as RFC 868's
/// 32 bits do, and clients expect exactly that.
pub fn time_bytes_at(unix_secs: i64) -> [u8; 4] {
    ((unix_secs + SECONDS_1900_TO_1970) as u32).to_be_bytes()
}

/// The time service's answer for now.
pub fn time_bytes_now() -> [u8; 4] {
    time_bytes_at(unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctime(secs: i64) -> String {
        line_at(DaytimeFormat::Ctime, secs)
    }

    #[test]
    fn time_counts_from_1900_in_network_order() {
        assert_eq!(time_bytes_at(0), 2_208_988_800u32.to_be_bytes());
        // RFC 868's own example: 2,629,584,000 is 1983-05-01T00:00:00Z.
        assert_eq!(time_bytes_at(420_595_200), [0x9c, 0xbc, 0x44, 0x80]);
        // 2036-02-07T06:28:16Z is 2^32 seconds after 1900: it wraps to 0.
        assert_eq!(time_bytes_at(2_085_978_496), [0, 0, 0, 0]);
    }

    #[test]
    fn ctime_matches_known_instants() {
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970\r\n");
        assert_eq!(ctime(951_782_400), "Tue Feb 29 00:00:00 2000\r\n");
        assert_eq!(ctime(4_107_542_400), "Mon Mar  1 00:00:00 2100\r\n");
        assert_eq!(ctime(1_793_633_934), "Mon Nov  2 15:38:54 2026\r\n");
        assert_eq!(ctime(1_795_361_934), "Sun Nov 22 15:38:54 2026\r\n");
        assert_eq!(ctime(-1), "Wed Dec 31 23:59:59 1969\r\n");
    }

    #[test]
    fn rfc5322_pads_the_day_with_zero() {
        assert_eq!(
            line_at(DaytimeFormat::Rfc5322, 1_795_361_934),
            "Sun, 22 Nov 2026 15:38:54 +0000\r\n"
        );
        assert_eq!(
            line_at(DaytimeFormat::Rfc5322, 1_793_633_934),
            "Mon, 02 Nov 2026 15:38:54 +0000\r\n"
        );
    }

    #[test]
    fn rfc3339_is_utc_with_z() {
        assert_eq!(
            line_at(DaytimeFormat::Rfc3339, 1_795_361_934),
            "2026-11-22T15:38:54Z\r\n"
        );
        assert_eq!(
            line_at(DaytimeFormat::Rfc3339, 0),
            "1970-01-01T00:00:00Z\r\n"
        );
    }

    #[test]
    fn civil_from_days_round_trips_every_day_for_eight_centuries() {
        // Walk day by day and check the calendar advances as it should.
        let (mut year, mut month, mut day) = civil_from_days(-200 * 366);
        for days in (-200 * 366 + 1)..(600 * 366) {
            let next = civil_from_days(days);
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][month as usize - 1];
            let expected = if day < month_len {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
            assert_eq!(next, expected, "day {days}");
            (year, month, day) = next;
        }
    }
}
