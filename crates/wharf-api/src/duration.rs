//! Durations as Cloud Run's API and gcloud's flags write them: the one parser the server's
//! config, the control plane and the CLI share. It accepts the protobuf JSON form the API uses
//! (`"300s"`, `"1.5s"`), gcloud's plain seconds (`"300"`) and gcloud's unit form (`"500ms"`,
//! `"5m"`, `"1h30m"`, `"1d"`). It checks only the form: each caller applies its own limits.

use std::time::Duration;

/// The forms [`parse`] accepts, for error messages.
pub const ACCEPTED_FORMS: &str =
    "write seconds (\"300\", \"300s\", \"1.5s\") or a sum of units ms, s, m, h, d (\"500ms\", \"5m\", \"1h30m\")";

/// Why a duration was refused; each variant carries the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("the duration is empty: {ACCEPTED_FORMS}")]
    Empty,
    #[error("{text:?} is not a duration: {part:?} has no number before its unit; {ACCEPTED_FORMS}")]
    MissingNumber { text: String, part: String },
    #[error("{text:?} is not a duration: {number:?} is not a number; {ACCEPTED_FORMS}")]
    BadNumber { text: String, number: String },
    #[error("{text:?} is not a duration: unknown unit {unit:?}; {ACCEPTED_FORMS}")]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?} is not a duration: a number needs a unit after another part; {ACCEPTED_FORMS}")]
    MissingUnit { text: String },
    #[error("{text:?} is too long a duration")]
    TooLong { text: String },
}

/// Parses `text` (surrounding whitespace ignored) into a non-negative duration.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let number_char = |c: char| c.is_ascii_digit() || c == '.';
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !number_char(c)).unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let unit_end = after.find(number_char).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        if number.is_empty() {
            return Err(DurationError::MissingNumber { text: text.to_owned(), part: rest.to_owned() });
        }
        let seconds_per_unit = match unit {
            // Plain seconds, as gcloud takes them, only as the whole text.
            "" if rest.len() == text.len() => 1.0,
            "" => return Err(DurationError::MissingUnit { text: text.to_owned() }),
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(DurationError::UnknownUnit { text: text.to_owned(), unit: unit.to_owned() }),
        };
        let n: f64 = number
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| DurationError::BadNumber { text: text.to_owned(), number: number.to_owned() })?;
        let part = Duration::try_from_secs_f64(n * seconds_per_unit)
            .map_err(|_| DurationError::TooLong { text: text.to_owned() })?;
        total = total.checked_add(part).ok_or_else(|| DurationError::TooLong { text: text.to_owned() })?;
        rest = after;
    }
    Ok(total)
}

/// `duration` in the protobuf JSON form the API uses: `"300s"`, `"1.5s"`.
pub fn to_proto(duration: Duration) -> String {
    match duration.subsec_nanos() {
        0 => format!("{}s", duration.as_secs()),
        nanos => {
            let fraction = format!("{nanos:09}");
            format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_api_and_gcloud_forms() {
        let secs = Duration::from_secs;
        assert_eq!(parse("300s"), Ok(secs(300)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("300"), Ok(secs(300)));
        assert_eq!(parse(" 60 "), Ok(secs(60)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5m"), Ok(secs(300)));
        assert_eq!(parse("1h30m"), Ok(secs(5400)));
        assert_eq!(parse("1h30m15s"), Ok(secs(5415)));
        assert_eq!(parse("1d"), Ok(secs(86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn says_what_was_wrong() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("soon"), Err(DurationError::MissingNumber { text: "soon".into(), part: "soon".into() }));
        assert_eq!(parse("5x"), Err(DurationError::UnknownUnit { text: "5x".into(), unit: "x".into() }));
        assert_eq!(parse("-5s"), Err(DurationError::MissingNumber { text: "-5s".into(), part: "-5s".into() }));
        assert_eq!(parse("1.2.3s"), Err(DurationError::BadNumber { text: "1.2.3s".into(), number: "1.2.3".into() }));
        assert_eq!(parse("1h30"), Err(DurationError::MissingUnit { text: "1h30".into() }));
        assert_eq!(parse("1e999s"), Err(DurationError::UnknownUnit { text: "1e999s".into(), unit: "e".into() }));
        assert_eq!(
            parse("99999999999999999999d"),
            Err(DurationError::TooLong { text: "99999999999999999999d".into() })
        );
        let message = parse("5x").unwrap_err().to_string();
        assert!(message.contains("\"1h30m\""), "{message}");
    }

    #[test]
    fn prints_the_api_form() {
        assert_eq!(to_proto(Duration::from_secs(300)), "300s");
        assert_eq!(to_proto(Duration::from_millis(1500)), "1.5s");
        assert_eq!(to_proto(parse("5m").unwrap()), "300s");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

            /// Any text: an answer, never a panic.
            #[test]
            fn never_panics(text in prop_oneof!["[0-9.emshd ]{0,24}", ".{0,32}"]) {
                let _ = parse(&text);
            }

            /// Whole seconds in the API's form parse to themselves and print back the same.
            #[test]
            fn seconds_round_trip(secs in 0u64..=10_000_000_000) {
                let text = format!("{secs}s");
                prop_assert_eq!(parse(&text), Ok(Duration::from_secs(secs)));
                prop_assert_eq!(to_proto(Duration::from_secs(secs)), text);
            }

            /// A sum of units is the sum of its parts.
            #[test]
            fn units_add_up(h in 0u64..1000, m in 0u64..1000, s in 0u64..1000, ms in 0u64..1000) {
                let text = format!("{h}h{m}m{s}s{ms}ms");
                let expected = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(ms);
                let got = parse(&text).unwrap();
                let diff = got.abs_diff(expected);
                prop_assert!(diff < Duration::from_micros(1), "{text}: {got:?} != {expected:?}");
            }
        }
    }
}
