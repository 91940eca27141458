//! Pyroscope's time parameter grammar, used by `/ingest` (`from`, `until`) and
//! `/pyroscope/render`: digits by length (13 ms, 16 µs, 19 ns, else seconds; 8 digits that
//! form a date are `YYYYMMDD`), or `now` with an optional `+`/`-` offset such as `now-1h30m`.
//! Anything unparseable is `now`, as in Pyroscope; a time that parses but does not fit in
//! i64 nanoseconds (before 1677 or after 2262) is an error, not a silent `now` or a clamp.

/// Parses `s` to Unix nanoseconds, given the current time in nanoseconds. `Err` (a message
/// for a 400) when the time it names is out of range.
pub fn parse_time_ns(s: &str, now_ns: i64) -> Result<i64, String> {
    let out_of_range =
        || format!("time {s:?} is out of range: times must lie between the years 1677 and 2262 (64-bit nanoseconds)");
    let cleaned: String = s.trim().chars().filter(|c| !matches!(c, '_' | ',' | ' ')).collect();
    if cleaned.is_empty() {
        return Ok(now_ns);
    }
    if cleaned.bytes().all(|b| b.is_ascii_digit()) {
        if cleaned.len() == 8 {
            if let Some(days) = yyyymmdd(&cleaned) {
                return days.checked_mul(86_400_000_000_000).ok_or_else(out_of_range);
            }
        }
        // All digits: a parse error is an overflow.
        let v = cleaned.parse::<i64>().map_err(|_| out_of_range())?;
        let scaled = match cleaned.len() {
            13 => v.checked_mul(1_000_000),
            16 => v.checked_mul(1_000),
            19 => Some(v),
            _ => v.checked_mul(1_000_000_000),
        };
        return scaled.ok_or_else(out_of_range);
    }
    let Some(rest) = cleaned.strip_prefix("now") else {
        return Ok(now_ns);
    };
    if rest.is_empty() {
        return Ok(now_ns);
    }
    let (sign, rest) = match rest.as_bytes()[0] {
        b'-' => (-1, &rest[1..]),
        b'+' => (1, &rest[1..]),
        _ => return Ok(now_ns),
    };
    match parse_offset_ns(rest) {
        Offset::Ns(off) => now_ns.checked_add(sign * off).ok_or_else(out_of_range),
        Offset::Unparseable => Ok(now_ns),
        Offset::Overflow => Err(out_of_range()),
    }
}

enum Offset {
    Ns(i64),
    Unparseable,
    Overflow,
}

/// `1h30m`, `15min`, `2d`, `1mon`…: groups of an integer and a unit chosen by prefix.
fn parse_offset_ns(s: &str) -> Offset {
    const S: i64 = 1_000_000_000;
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    if b.is_empty() {
        return Offset::Unparseable;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Offset::Unparseable;
        }
        let Ok(n) = s[start..i].parse::<i64>() else {
            return Offset::Overflow; // digits only: too many of them
        };
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let mult = if unit.starts_with("mon") || unit == "M" {
            30 * 86400 * S
        } else if unit.starts_with("min") || unit.starts_with('m') {
            60 * S
        } else if unit.starts_with('s') {
            S
        } else if unit.starts_with('h') {
            3600 * S
        } else if unit.starts_with('d') {
            86400 * S
        } else if unit.starts_with('w') {
            7 * 86400 * S
        } else if unit.starts_with('y') {
            365 * 86400 * S
        } else {
            return Offset::Unparseable;
        };
        match n.checked_mul(mult).and_then(|v| total.checked_add(v)) {
            Some(t) => total = t,
            None => return Offset::Overflow,
        }
    }
    Offset::Ns(total)
}

/// Days since the epoch of a valid `YYYYMMDD` date.
fn yyyymmdd(s: &str) -> Option<i64> {
    let y: i64 = s[0..4].parse().ok()?;
    let m: i64 = s[4..6].parse().ok()?;
    let d: i64 = s[6..8].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1000..=9999).contains(&y) {
        return None;
    }
    let days_in = [
        31,
        if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 29 } else { 28 },
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
    ];
    if d > days_in[(m - 1) as usize] {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01 (the inverse
/// of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A time in ns as RFC 3339 UTC, with `frac` digits of fractional seconds (0, 3, 6 or 9).
pub fn rfc3339(ns: i64, frac: u32) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if frac > 0 {
        let sub = ns.rem_euclid(1_000_000_000) / 10i64.pow(9 - frac.min(9));
        out.push_str(&format!(".{sub:0width$}", width = frac.min(9) as usize));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    const NOW: i64 = 1_700_000_000_000_000_000;

    #[test]
    fn digits_by_length() {
        let p = |s: &str| parse_time_ns(s, NOW).unwrap();
        assert_eq!(p("1700000000"), NOW);
        assert_eq!(p("1700000000000"), NOW);
        assert_eq!(p("1700000000000000"), NOW);
        assert_eq!(p("1700000000000000000"), NOW);
        assert_eq!(p("1_700_000_000"), NOW);
        assert_eq!(p("20231114"), 1_699_920_000_000_000_000);
    }

    #[test]
    fn out_of_range_times_are_errors() {
        // Found by fuzzing: a date far before the epoch overflowed (it was then clamped).
        for s in [
            "11111111",
            "99991231",
            "now-10000000y",
            "now+300y",
            "now-99999999999999999999s",
            "99999999999",
            "99999999999999999999999",
        ] {
            let e = parse_time_ns(s, NOW).unwrap_err();
            assert!(e.contains("out of range"), "{s}: {e}");
        }
        assert_eq!(parse_time_ns("now-200y", NOW).unwrap(), NOW - 200 * 365 * 86_400_000_000_000);
    }

    #[test]
    fn relative() {
        let h = 3_600_000_000_000;
        let p = |s: &str| parse_time_ns(s, NOW).unwrap();
        assert_eq!(p("now"), NOW);
        assert_eq!(p("now-1h"), NOW - h);
        assert_eq!(p("now-1h30m"), NOW - h - h / 2);
        assert_eq!(p("now+15min"), NOW + h / 4);
        assert_eq!(p("now-7d"), NOW - 7 * 24 * h);
        assert_eq!(p("now-1mon"), NOW - 30 * 24 * h);
        // Unparseable is now, as in Pyroscope.
        assert_eq!(p("garbage"), NOW);
        assert_eq!(p("now-1x"), NOW);
        assert_eq!(p("now-h"), NOW);
        assert_eq!(p("now-"), NOW);
    }
}
