//! Validated queue and consumer names, and identifier quoting.
//!
//! PGQ stores names as `text` and never splices them into SQL, so nearly anything is a valid
//! name: quotes, semicolons, spaces and any Unicode are fine. What is refused, before any SQL
//! runs, is what cannot travel or print safely: the empty string, NUL (PostgreSQL `text` cannot
//! hold it), other control characters (they garble logs and terminals), and names longer than
//! [`MAX_NAME_BYTES`] bytes of UTF-8.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The longest accepted queue or consumer name, in bytes of UTF-8.
const MAX_NAME_BYTES: usize = 255;

/// Quotes an SQL identifier: wraps it in double quotes and doubles the double quotes inside, so
/// any name can be used where SQL expects an identifier (cursor, table, schema).
///
/// ```
/// assert_eq!(pgq_core::quote_ident("my \"cursor\""), "\"my \"\"cursor\"\"\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Quotes a string as an SQL literal that reads back as `value` whatever the session's
/// `standard_conforming_strings`: quotes are doubled, and a value with a backslash becomes an
/// escape string (`E'…'`) with its backslashes doubled, as PostgreSQL's own `quote_literal` does.
/// For the places a value cannot be a bind parameter (utility statements, trigger arguments).
///
/// ```
/// assert_eq!(pgq_core::quote_literal("it's"), "'it''s'");
/// assert_eq!(pgq_core::quote_literal(r"C:\tmp"), r"E'C:\\tmp'");
/// ```
pub fn quote_literal(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        quoted.push('E');
    }
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push(c);
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Checks a name against the rules in the module docs.
fn validate(kind: &'static str, name: String) -> Result<String> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.contains('\0') {
        Some("must not contain NUL")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.len() > MAX_NAME_BYTES {
        Some("must be at most 255 bytes long")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName { kind, name, reason }),
        None => Ok(name),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Validates `name` as a ", $kind, " name.")]
            ///
            /// # Errors
            ///
            /// [`Error::InvalidName`] when the name is empty, contains NUL or another control
            /// character, or is longer than 255 bytes.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                validate($kind, name.into()).map(Self)
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;

            fn try_from(name: &str) -> Result<Self> {
                Self::new(name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;

            fn try_from(name: String) -> Result<Self> {
                Self::new(name)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(name: &str) -> Result<Self> {
                Self::new(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }
    };
}

name_type!(
    /// A queue name, validated (see [`QueueName::new`]).
    ///
    /// ```
    /// use pgq_core::QueueName;
    ///
    /// let queue: QueueName = "orders; \"eu\" ✓".parse()?;
    /// assert_eq!(queue.as_str(), "orders; \"eu\" ✓");
    /// assert!(QueueName::new("").is_err());
    /// # Ok::<(), pgq_core::Error>(())
    /// ```
    QueueName,
    "queue"
);

name_type!(
    /// A consumer name, validated like a [`QueueName`] (see [`ConsumerName::new`]).
    ConsumerName,
    "consumer"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<QueueName>) -> &'static str {
        match result {
            Err(Error::InvalidName { kind, reason, .. }) => {
                assert_eq!(kind, "queue");
                reason
            }
            other => panic!("expected InvalidName, got {other:?}"),
        }
    }

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_ident("ünï;code"), "\"ünï;code\"");
    }

    #[test]
    fn quote_literal_doubles_quotes_and_escapes_backslashes() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(quote_literal(r"\'"), r"E'\\'''");
    }

    #[test]
    fn accepts_quotes_semicolons_unicode() {
        for name in [
            "q",
            "a'b",
            "a\"b",
            "x; DROP TABLE y",
            "очередь ✓",
            "with space",
        ] {
            assert_eq!(QueueName::new(name).unwrap().as_str(), name);
        }
        let max = "é".repeat(127) + "x";
        assert_eq!(max.len(), 255);
        assert!(QueueName::new(max).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(reason(QueueName::new("")), "must not be empty");
        assert_eq!(reason(QueueName::new("a\0b")), "must not contain NUL");
        assert_eq!(
            reason(QueueName::new("a\nb")),
            "must not contain control characters"
        );
        assert_eq!(
            reason(QueueName::new("a\u{7f}")),
            "must not contain control characters"
        );
        assert_eq!(
            reason(QueueName::new("x".repeat(256))),
            "must be at most 255 bytes long"
        );
        match ConsumerName::new("") {
            Err(Error::InvalidName { kind, name, .. }) => {
                assert_eq!(kind, "consumer");
                assert_eq!(name, "");
            }
            other => panic!("expected InvalidName, got {other:?}"),
        }
    }

    #[test]
    fn conversions_validate() {
        assert!(QueueName::try_from("ok").is_ok());
        assert!(QueueName::try_from(String::new()).is_err());
        assert!("".parse::<ConsumerName>().is_err());
        let name = ConsumerName::new("c").unwrap();
        assert_eq!(name.to_string(), "c");
        assert_eq!(String::from(name), "c");
    }

    #[test]
    fn serde_validates() {
        let ok: QueueName = serde_json::from_str("\"q\"").unwrap();
        assert_eq!(ok.as_str(), "q");
        assert!(serde_json::from_str::<QueueName>("\"\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"q\"");
    }
}
