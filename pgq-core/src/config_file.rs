//! Positions in TOML configuration files, so every daemon's config errors name the file, the
//! line, the column and the `table.key` at fault.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Where a TOML parse or deserialization error is: 1-based line and column, and the
/// `table.key` assigned on that line (or the nearest one above it).
pub fn toml_error_position(text: &str, err: &toml::de::Error) -> (usize, usize, Option<String>) {
    match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (line, column, key_at(text, line))
        }
        None => (1, 1, None),
    }
}

/// The 1-based line and column where `table.key` is assigned, else where its table starts,
/// else the start of the file: for errors found after parsing (a value out of range).
pub fn toml_key_position(text: &str, dotted: &str) -> (usize, usize) {
    locate(text, dotted)
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The `table.key` a line belongs to: the key assigned on it or on the nearest line above
/// (values may span lines), inside the nearest table header above; a header line names its
/// table.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let upto = line.min(lines.len());
    let mut key = None;
    for l in lines[..upto].iter().rev() {
        let l = l.trim();
        if let Some(header) = table_header(l) {
            return Some(match key {
                Some(k) => format!("{header}.{k}"),
                None => header.to_owned(),
            });
        }
        if key.is_none() {
            key = assigned_key(l);
        }
    }
    key.map(str::to_owned)
}

/// The 1-based line and column where `table.key` is assigned, else where its table starts,
/// else the start of the file.
fn locate(text: &str, dotted: &str) -> (usize, usize) {
    let (table, key) = dotted.split_once('.').unwrap_or(("", dotted));
    let mut current = "";
    let mut table_line = None;
    for (i, l) in text.lines().enumerate() {
        let trimmed = l.trim();
        if let Some(header) = table_header(trimmed) {
            current = header;
            if current == table {
                table_line = Some(i + 1);
            }
            continue;
        }
        if current == table && assigned_key(trimmed) == Some(key) {
            return (i + 1, l.len() - l.trim_start().len() + 1);
        }
    }
    (table_line.unwrap_or(1), 1)
}

fn table_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?;
    let end = inner.find(']')?;
    Some(inner[..end].trim_matches(|c| c == '[' || c == ' '))
}

fn assigned_key(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(key)
}

/// A period: a string with a unit, or an integer of seconds.
pub struct Period(pub Duration);

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PeriodVisitor;

        impl Visitor<'_> for PeriodVisitor {
            type Value = Period;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a period such as \"500ms\", \"1s\", \"2m\" or a number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Period, E> {
                parse_duration(v).map(Period).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Period, E> {
                u64::try_from(v)
                    .map(|secs| Period(Duration::from_secs(secs)))
                    .map_err(|_| E::custom("a period must not be negative"))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Period, E> {
                Ok(Period(Duration::from_secs(v)))
            }
        }

        deserializer.deserialize_any(PeriodVisitor)
    }
}

/// Parses a period: a non-negative number and a unit (`ms`, `s`, `m`, `h`, `d`, or their long
/// forms such as `seconds`), with or without a space between them.
///
/// # Errors
///
/// A message saying what is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a period (e.g. \"500ms\", \"1s\", \"2m\")"))?;
    let seconds_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "msec" | "millisecond" | "milliseconds" => 0.001,
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        "" => return Err(format!("{text:?} has no unit (e.g. \"{text}s\")")),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_keys_are_located() {
        let text = "[a]\nx = 1\n\n[b]\ny = \"s\"\nz = 2\n";
        assert_eq!(toml_key_position(text, "b.z"), (6, 1));
        assert_eq!(toml_key_position(text, "b.missing"), (4, 1));
        assert_eq!(toml_key_position(text, "c.x"), (1, 1));
        type File = std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>;
        let err = toml::from_str::<File>("[a]\nx = \"no\"\n").unwrap_err();
        assert_eq!(
            toml_error_position("[a]\nx = \"no\"\n", &err),
            (2, 5, Some("a.x".to_owned()))
        );
    }
}
