//! FHIR `date`, `dateTime` and `instant` values as sortable instants.
//!
//! The stored resource keeps the original text (timezone and precision
//! untouched); this only computes the start of the period a value names, in
//! milliseconds since the Unix epoch (UTC), for the date indexes. A value
//! without a timezone is read as UTC.

/// Milliseconds since 1970-01-01T00:00:00Z of the start of the period named
/// by `s`, or `None` if `s` is not a FHIR date, dateTime or instant.
pub fn parse_fhir_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    let year = num(0..4)?;
    let (mut month, mut day) = (1, 1);
    let mut i = 4;
    if b.len() > i {
        if b.get(i) != Some(&b'-') {
            return None;
        }
        month = num(i + 1..i + 3)?;
        i += 3;
        if b.len() > i {
            if b.get(i) != Some(&b'-') {
                return None;
            }
            day = num(i + 1..i + 3)?;
            i += 3;
        }
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if i == b.len() {
        return Some(ms);
    }
    if b.get(i) != Some(&b'T') || i != 10 {
        return None;
    }
    let (h, m) = (num(11..13)?, num(14..16)?);
    if b.get(13) != Some(&b':') || h > 23 || m > 59 {
        return None;
    }
    let mut sec = 0;
    i = 16;
    if b.get(i) == Some(&b':') {
        sec = num(17..19)?;
        if sec > 60 {
            return None;
        }
        i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while b.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == start {
                return None;
            }
            // Milliseconds: the first three fraction digits.
            let digits = &s[start..end.min(start + 3)];
            let mut frac: i64 = digits.parse().ok()?;
            for _ in digits.len()..3 {
                frac *= 10;
            }
            ms += frac;
            i = end;
        }
    }
    ms += (h * 3600 + m * 60 + sec) * 1000;
    match b.get(i) {
        None => Some(ms),
        Some(b'Z') if i + 1 == b.len() => Some(ms),
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if b.get(i + 3) != Some(&b':') || oh > 14 || om > 59 {
                return None;
            }
            let off = (oh * 60 + om) * 60_000;
            Some(if sign == b'+' { ms - off } else { ms + off })
        }
        _ => None,
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ms` since the epoch as a FHIR instant, `YYYY-MM-DDThh:mm:ss.sssZ`.
pub fn format_instant(ms: u64) -> String {
    let ms = ms as i64;
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// An instant as an 8-byte key that sorts like the number.
pub(crate) fn date_key(ms: Option<i64>) -> [u8; 8] {
    // No date sorts before every real one.
    let v = ms.unwrap_or(i64::MIN);
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_fhir_forms() {
        assert_eq!(parse_fhir_date("1970"), Some(0));
        assert_eq!(parse_fhir_date("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_fhir_date("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_fhir_date("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(parse_fhir_date("1969-12-31T23:00:00-01:00"), Some(0));
        assert_eq!(
            parse_fhir_date("2013-04-02T09:30:10+01:00"),
            parse_fhir_date("2013-04-02T08:30:10Z")
        );
        for bad in [
            "",
            "19",
            "2013-13",
            "2013-02-30",
            "2013-04-02T",
            "2013-04-02T25:00:00Z",
            "2013-04-02T09:30:10+1",
            "2013-4-2",
            "abcd",
            "2013-04-02X",
            "2013-04-02T09:30:10.Z",
        ] {
            assert_eq!(parse_fhir_date(bad), None, "{bad}");
        }
        assert_eq!(parse_fhir_date("2024-02-29"), Some(1_709_164_800_000));
    }

    #[test]
    fn formats_instants() {
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_instant(1_709_164_800_123),
            "2024-02-29T00:00:00.123Z"
        );
    }

    proptest! {
        #[test]
        fn format_then_parse(ms in 0u64..253_402_300_799_999) {
            prop_assert_eq!(parse_fhir_date(&format_instant(ms)), Some(ms as i64));
        }

        #[test]
        fn keys_sort_like_numbers(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(a.cmp(&b), date_key(Some(a)).cmp(&date_key(Some(b))));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_fhir_date(&s);
        }
    }
}
