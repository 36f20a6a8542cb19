//! The `DUR` argument: `2.5` (seconds), `500ms`, `30s`, `2m`, `1h`.

use std::time::Duration;

/// Parses a `DUR` argument.
///
/// A bare number is seconds (fractions allowed, as `flock -w 2.5`); a number
/// followed by `ms`, `s`, `m` or `h` is in that unit. Compound forms such as
/// `1m30s` are accepted too (humantime syntax). Negative, non-finite and
/// absurdly large values are refused.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".to_owned());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => Some(1.0),
        "ms" => Some(0.001),
        "m" | "min" | "mins" => Some(60.0),
        "h" => Some(3600.0),
        _ => None,
    };
    if let (Some(scale), false) = (scale, number.is_empty()) {
        let value: f64 = number.parse().map_err(|_| {
            format!("invalid duration {text:?} (expected e.g. 2.5, 500ms, 30s, 2m)")
        })?;
        return Duration::try_from_secs_f64(value * scale)
            .map_err(|_| format!("duration {text:?} is out of range"));
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 2.5, 500ms, 30s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("2.5", ms(2500)),
            ("0", ms(0)),
            ("0.5", ms(500)),
            ("500ms", ms(500)),
            ("30s", ms(30_000)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1.5m", ms(90_000)),
            ("1m30s", ms(90_000)),
            (" 3 ", ms(3000)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_forms() {
        for text in [
            "",
            "-1",
            "abc",
            "1x",
            "ms",
            "1e999",
            "1..2",
            "nan",
            "inf",
            "-0.5s",
            "1e3",
            "99999999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} accepted");
        }
    }
}
