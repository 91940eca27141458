//! Pyroscope's time parameter grammar, used by `/ingest` (`from`, `until`) and
//! `/pyroscope/render`: digits by length (13 ms, 16 µs, 19 ns, else seconds; 8 digits that
//! form a date are `YYYYMMDD`), or `now` with an optional `+`/`-` offset such as `now-1h30m`.
//! Anything unparseable is `now`, as in Pyroscope.

/// Parses `s` to Unix nanoseconds, given the current time in nanoseconds.
pub fn parse_time_ns(s: &str, now_ns: i64) -> i64 {
    let cleaned: String = s.trim().chars().filter(|c| !matches!(c, '_' | ',' | ' ')).collect();
    if cleaned.is_empty() {
        return now_ns;
    }
    if cleaned.bytes().all(|b| b.is_ascii_digit()) {
        if cleaned.len() == 8 {
            if let Some(ns) = yyyymmdd(&cleaned) {
                return ns;
            }
        }
        let Ok(v) = cleaned.parse::<i64>() else {
            return now_ns;
        };
        return match cleaned.len() {
            13 => v.saturating_mul(1_000_000),
            16 => v.saturating_mul(1_000),
            19 => v,
            _ => v.saturating_mul(1_000_000_000),
        };
    }
    let Some(rest) = cleaned.strip_prefix("now") else {
        return now_ns;
    };
    if rest.is_empty() {
        return now_ns;
    }
    let (sign, rest) = match rest.as_bytes()[0] {
        b'-' => (-1, &rest[1..]),
        b'+' => (1, &rest[1..]),
        _ => return now_ns,
    };
    match parse_offset_ns(rest) {
        Some(off) => now_ns.saturating_add(sign * off),
        None => now_ns,
    }
}

/// `1h30m`, `15min`, `2d`, `1mon`…: groups of an integer and a unit chosen by prefix.
fn parse_offset_ns(s: &str) -> Option<i64> {
    const S: i64 = 1_000_000_000;
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n: i64 = s[start..i].parse().ok()?;
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
            return None;
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

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
    // Years far from the epoch do not fit in i64 nanoseconds: clamp rather than overflow.
    Some(days_from_civil(y, m, d).saturating_mul(86_400_000_000_000))
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
        assert_eq!(parse_time_ns("1700000000", NOW), NOW);
        assert_eq!(parse_time_ns("1700000000000", NOW), NOW);
        assert_eq!(parse_time_ns("1700000000000000", NOW), NOW);
        assert_eq!(parse_time_ns("1700000000000000000", NOW), NOW);
        assert_eq!(parse_time_ns("1_700_000_000", NOW), NOW);
        assert_eq!(parse_time_ns("20231114", NOW), 1_699_920_000_000_000_000);
        // Found by fuzzing: a date far before the epoch overflowed.
        assert_eq!(parse_time_ns("11111111", NOW), i64::MIN);
    }

    #[test]
    fn relative() {
        let h = 3_600_000_000_000;
        assert_eq!(parse_time_ns("now", NOW), NOW);
        assert_eq!(parse_time_ns("now-1h", NOW), NOW - h);
        assert_eq!(parse_time_ns("now-1h30m", NOW), NOW - h - h / 2);
        assert_eq!(parse_time_ns("now+15min", NOW), NOW + h / 4);
        assert_eq!(parse_time_ns("now-7d", NOW), NOW - 7 * 24 * h);
        assert_eq!(parse_time_ns("now-1mon", NOW), NOW - 30 * 24 * h);
        assert_eq!(parse_time_ns("garbage", NOW), NOW);
        assert_eq!(parse_time_ns("now-1x", NOW), NOW);
    }
}
