//! Human durations on the command line: `500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`. Every
//! number and every sum is range-checked: a duration longer than [`MAX`] (a century) is an
//! error that says so, never a wrapped or saturated value, never a panic.

use std::time::Duration;

use maos_coordination::lock::MAX_TTL;

/// The longest duration any option accepts: 100 years (for a wait, "as long as it takes").
pub(crate) const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

fn too_long(s: &str, limit: Duration, what: &str) -> String {
    format!(
        "invalid duration {s:?}: longer than {} ({what})",
        maos_coordination::core::human_duration(limit)
    )
}

/// Parses a duration such as `30s`, `5m`, `1h30m` or `250ms`. A bare number means seconds.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration: give a number and a unit, such as 30s or 5m".into());
    }
    let limit_error = || too_long(s, MAX, "the limit is a century");
    if let Ok(n) = s.parse::<u64>() {
        let d = Duration::from_secs(n);
        return if d > MAX { Err(limit_error()) } else { Ok(d) };
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number at {rest:?}"
            ));
        }
        // Too many digits for u64 is too long for any unit.
        let n: u64 = rest[..digits].parse().map_err(|_| limit_error())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let per: u64 = match unit {
            "ms" => {
                total = total
                    .checked_add(Duration::from_millis(n))
                    .filter(|t| *t <= MAX)
                    .ok_or_else(limit_error)?;
                continue;
            }
            "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ));
            }
        };
        let secs = n.checked_mul(per).ok_or_else(limit_error)?;
        total = total
            .checked_add(Duration::from_secs(secs))
            .filter(|t| *t <= MAX)
            .ok_or_else(limit_error)?;
    }
    Ok(total)
}

/// Parses a lease length: a duration of at most [`MAX_TTL`] and more than zero.
pub(crate) fn ttl(s: &str) -> Result<Duration, String> {
    let d = parse(s)?;
    if d > MAX_TTL {
        return Err(too_long(
            s,
            MAX_TTL,
            "the longest lease; renew it with `maos lock renew` to hold a lock longer",
        ));
    }
    if d.is_zero() {
        return Err(format!(
            "invalid lease {s:?}: a lease must last more than 0s"
        ));
    }
    Ok(d)
}

/// Formats a duration compactly (`1h30m`, `45s`, `250ms`).
pub(crate) fn format(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for (input, secs) in [
            ("30", 30),
            ("30s", 30),
            ("5m", 300),
            ("1h30m", 5400),
            ("2d", 172800),
        ] {
            assert_eq!(parse(input).unwrap(), Duration::from_secs(secs), "{input}");
        }
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse("5x").unwrap_err().contains("5x"));
        assert!(parse("").is_err());
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn out_of_range_durations_are_clear_errors_not_panics_or_wraps() {
        // (input, words the error must contain)
        let cases = [
            ("18446744073709551615s1s", "longer than"),
            ("307445734561825861m", "longer than"),
            ("99999999999999999d", "longer than"),
            ("18446744073709551616", "longer than"),
            ("99999999999999999999999ms", "longer than"),
            ("36501d", "longer than"),
            ("3155760001", "longer than"),
        ];
        for (input, words) in cases {
            let r = std::panic::catch_unwind(|| parse(input));
            let err = r.unwrap_or_else(|_| panic!("{input}: panicked"));
            let err = err.expect_err(input);
            assert!(err.contains(words) && err.contains(input), "{input}: {err}");
        }
        // The largest accepted value, exactly.
        assert_eq!(parse("36500d").unwrap(), MAX);
    }

    #[test]
    fn leases_are_capped_and_positive() {
        assert_eq!(ttl("30d").unwrap(), MAX_TTL);
        let err = ttl("31d").unwrap_err();
        assert!(
            err.contains("longer than 30d") && err.contains("renew"),
            "{err}"
        );
        assert!(ttl("0s").unwrap_err().contains("more than 0s"));
        assert!(
            ttl("99999999999999999d")
                .unwrap_err()
                .contains("longer than")
        );
    }
}
