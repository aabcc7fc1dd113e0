//! Go-style duration strings (`5s`, `1m30s`, `250ms`), so upstream kubenurse values keep working.

use std::time::Duration;

/// Why a duration string was rejected; the caller adds the variable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// Negative durations make no sense for intervals and timeouts.
    #[error("negative duration")]
    Negative,
    /// A number had no unit (`5` instead of `5s`); Go rejects this too, except for `0`.
    #[error("missing unit in duration (use ns, us, ms, s, m or h)")]
    MissingUnit,
    /// A unit Go does not know.
    #[error("unknown unit {0:?} in duration (use ns, us, ms, s, m or h)")]
    UnknownUnit(String),
    /// Not a number where one was expected.
    #[error("invalid number in duration")]
    InvalidNumber,
    /// Larger than any sensible interval.
    #[error("duration out of range")]
    Overflow,
}

/// Parses a Go `time.ParseDuration` string: a sequence of decimal numbers with units.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let s = match s.as_bytes()[0] {
        b'-' => {
            return if s[1..].chars().all(|c| c == '0' || c == '.') && s.len() > 1 {
                Ok(Duration::ZERO)
            } else {
                Err(DurationError::Negative)
            }
        }
        b'+' => &s[1..],
        _ => s,
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::InvalidNumber);
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::InvalidNumber);
        }
        let value: f64 = number.parse().map_err(|_| DurationError::InvalidNumber)?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "" => return Err(DurationError::MissingUnit),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(DurationError::UnknownUnit(other.to_string())),
        };
        total_nanos += value * scale;
    }
    // Go's limit is ~292 years; anything near that is a typo for an interval.
    if !total_nanos.is_finite() || total_nanos > 9.2e18 {
        return Err(DurationError::Overflow);
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_forms() {
        assert_eq!(parse_go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("2h45m"), Ok(Duration::from_secs(9900)));
        assert_eq!(parse_go_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_go_duration("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("+3s"), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_go_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_go_duration("5"), Err(DurationError::MissingUnit));
        assert_eq!(parse_go_duration("-5s"), Err(DurationError::Negative));
        assert_eq!(parse_go_duration("5 seconds"), Err(DurationError::UnknownUnit(" seconds".into())));
        assert_eq!(parse_go_duration("abc"), Err(DurationError::InvalidNumber));
        assert_eq!(parse_go_duration("1..2s"), Err(DurationError::InvalidNumber));
        assert_eq!(parse_go_duration("99999999999h"), Err(DurationError::Overflow));
    }
}
