//! RFC 3339 time stamps: written by hand on the access log's hot path (a fixed 24-byte buffer,
//! no `fmt`), read with `jiff` everywhere (cold paths: admin queries, CLI flags, events).

use std::time::{SystemTime, UNIX_EPOCH};

/// Format milliseconds since the epoch as RFC 3339 UTC (negative times as the epoch).
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// Format a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    String::from_utf8_lossy(&rfc3339_bytes(t)).into_owned()
}

/// [`rfc3339`] into a fixed buffer (`YYYY-MM-DDTHH:MM:SS.mmmZ`), without `fmt`; years past
/// 9999 are written as 9999.
pub fn rfc3339_bytes(t: SystemTime) -> [u8; 24] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, v: u64| {
        let mut v = v;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, u64::try_from(y).unwrap_or(0).min(9999));
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(day));
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 3, u64::from(d.subsec_millis()));
    out
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Milliseconds since the epoch of an RFC 3339 time (`Z` or an offset such as `+02:00`, any
/// fraction; impossible dates such as February 31 are refused), or of a plain integer.
pub fn parse_ms(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    s.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_rfc_3339_allows_and_nothing_else() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("2026-11-26T10:42:00.5Z"), Some(1_795_689_720_500));
        assert_eq!(
            parse_ms("2026-11-26T10:42:00+00:00"),
            Some(1_795_689_720_000)
        );
        assert_eq!(
            parse_ms("2026-11-26T12:42:00+02:00"),
            Some(1_795_689_720_000)
        );
        assert_eq!(parse_ms("1795689720500"), Some(1_795_689_720_500));
        assert_eq!(parse_ms("2026-02-31T00:00:00Z"), None, "no February 31");
        assert_eq!(parse_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(
            parse_ms("2026-11-26T10:42:00"),
            None,
            "no offset: ambiguous"
        );
        assert_eq!(parse_ms("yesterday"), None);
    }

    #[test]
    fn the_hand_written_writer_far_from_the_epoch() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    proptest! {
        /// The access log's writer against jiff, from 1970 to 9999 (differential).
        #[test]
        fn the_writer_agrees_with_jiff(ms in 0i64..253_402_300_800_000) {
            let ours = rfc3339_ms(ms);
            let theirs = jiff::Timestamp::from_millisecond(ms)
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.%3fZ").to_string())
                .unwrap_or_default();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(parse_ms(&ours), Some(ms));
        }
    }
}
