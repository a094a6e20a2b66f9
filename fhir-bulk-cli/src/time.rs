//! Timestamps for log lines and plain output (RFC 3339, UTC), and durations for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `now` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn now() -> String {
    format_utc(SystemTime::now())
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 print as the epoch): the
/// library's `Timestamp` truncated to the millisecond, which it prints with three digits, or
/// none for a whole second.
pub(crate) fn format_utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let stamp = fhir_bulk::resource::Timestamp::from_unix(secs, since.subsec_millis() * 1_000_000)
        .unwrap_or(fhir_bulk::resource::Timestamp::UNIX_EPOCH)
        .to_string();
    match stamp.strip_suffix('Z') {
        Some(whole) if !whole.contains('.') => format!("{whole}.000Z"),
        _ => stamp,
    }
}

/// Seconds as a `Retry-After`-like string: `30`, or `0.4` for fractions (to the millisecond).
pub(crate) fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        d.as_secs().to_string()
    } else {
        let text = format!("{:.3}", d.as_secs_f64());
        text.trim_end_matches('0').to_owned()
    }
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub(crate) fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!("{} h {:02} min", secs / 3600, secs % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_314_502_123);
        assert_eq!(format_utc(t), "2024-03-01T17:35:02.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_utc(leap), "2000-02-29T00:00:00.000Z");
        let end = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert_eq!(format_utc(end), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn seconds_like_retry_after() {
        assert_eq!(seconds(Duration::from_secs(30)), "30");
        assert_eq!(seconds(Duration::from_millis(400)), "0.4");
        assert_eq!(seconds(Duration::from_millis(1250)), "1.25");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(human_duration(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(human_duration(Duration::from_secs(7380)), "2 h 03 min");
    }
}
