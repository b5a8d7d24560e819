//! Time helpers every crate shares: deadlines that cannot overflow, and one way of printing a
//! duration.

use std::time::{Duration, Instant};

/// `start + d`, saturating at a point a century away instead of overflowing (a `--wait` of
/// `u64::MAX` seconds means "wait forever", not a panic).
pub fn deadline_after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(start)
}

/// A duration as people read it, the same everywhere maos prints one: `350ms`, `2.5s`, `42s`,
/// `9m59s`, `30m`, `2h05m`, `3d04h`.
///
/// ```
/// use std::time::Duration;
/// use maos_core::human_duration;
/// assert_eq!(human_duration(Duration::from_millis(350)), "350ms");
/// assert_eq!(human_duration(Duration::from_millis(2_500)), "2.5s");
/// assert_eq!(human_duration(Duration::from_secs(599)), "9m59s");
/// assert_eq!(human_duration(Duration::from_secs(7_500)), "2h05m");
/// ```
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 10 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    if s < 60 {
        return format!("{s}s");
    }
    let (m, s) = (s / 60, s % 60);
    if m < 60 {
        return if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s:02}s")
        };
    }
    let (h, m) = (m / 60, m % 60);
    if h < 24 {
        return format!("{h}h{m:02}m");
    }
    format!("{}d{:02}h", h / 24, h % 24)
}

/// [`human_duration`] of a number of milliseconds.
pub fn human_ms(ms: u64) -> String {
    human_duration(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_one_way() {
        let cases = [
            (0, "0ms"),
            (999, "999ms"),
            (1_000, "1.0s"),
            (9_999, "10.0s"),
            (10_000, "10s"),
            (59_999, "59s"),
            (60_000, "1m"),
            (61_000, "1m01s"),
            (3_599_000, "59m59s"),
            (3_600_000, "1h00m"),
            (86_399_000, "23h59m"),
            (86_400_000, "1d00h"),
            (u64::MAX, "213503982334d14h"),
        ];
        for (ms, want) in cases {
            assert_eq!(human_ms(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn deadlines_saturate() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::MAX) > now);
    }
}
