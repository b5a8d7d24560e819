//! Human durations on the command line: `500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`.

use std::time::Duration;

/// Parses a duration such as `30s`, `5m`, `1h30m` or `250ms`. A bare number means seconds.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
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
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" | "sec" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ));
            }
        };
        total += d;
    }
    Ok(total)
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
}
