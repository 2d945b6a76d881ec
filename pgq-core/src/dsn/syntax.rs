//! libpq's connection string syntax, both ways: keyword/value strings and URLs read into
//! settings, and values quoted so that libpq reads them back.

use super::settings::invalid;
use crate::error::Result;

/// What follows a `postgres://` or `postgresql://` prefix.
pub(super) fn uri_rest(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

/// Splits a libpq keyword/value string into pairs.
pub(super) fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_ascii_whitespace()) {
            key.push(c);
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return Err(invalid(format!(
                "missing \"=\" after {key:?} in connection info string"
            )));
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(invalid(format!(
                            "unterminated quoted value for {key:?} in connection info string"
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Splits the part of a URL after the scheme into keyword/value pairs, like libpq.
pub(super) fn parse_uri(rest: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_owned(), percent_decode(user, "user name")?));
            }
            if let Some(password) = password {
                pairs.push(("password".to_owned(), percent_decode(password, "password")?));
            }
            hostspec
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in hostspec.split(',') {
            let (host, port) = split_host_port(spec)?;
            hosts.push(percent_decode(host, "host")?);
            ports.push(percent_decode(port, "port")?);
        }
        pairs.push(("host".to_owned(), hosts.join(",")));
        if ports.iter().any(|port| !port.is_empty()) {
            pairs.push(("port".to_owned(), ports.join(",")));
        }
    }
    if let Some(dbname) = path.filter(|path| !path.is_empty()) {
        pairs.push((
            "dbname".to_owned(),
            percent_decode(dbname, "database name")?,
        ));
    }
    for param in query.unwrap_or_default().split('&') {
        if param.is_empty() {
            continue;
        }
        let Some((key, value)) = param.split_once('=') else {
            return Err(invalid(format!(
                "missing key/value separator \"=\" in URL query parameter {param:?}"
            )));
        };
        let key = percent_decode(key, "query parameter name")?;
        let value = percent_decode(value, "query parameter value")?;
        if key == "ssl" {
            if value != "true" {
                return Err(invalid(format!(
                    "invalid URL query parameter ssl={value:?} (only ssl=true is accepted)"
                )));
            }
            pairs.push(("sslmode".to_owned(), "require".to_owned()));
        } else {
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

/// Splits `host[:port]` or `[v6addr][:port]`.
fn split_host_port(spec: &str) -> Result<(&str, &str)> {
    if let Some(bracketed) = spec.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| {
            invalid(format!(
                "unterminated IPv6 address {spec:?} in URL (missing \"]\")"
            ))
        })?;
        if host.is_empty() {
            return Err(invalid("empty IPv6 address in URL".to_owned()));
        }
        return match after {
            "" => Ok((host, "")),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, port)),
                None => Err(invalid(format!(
                    "unexpected {after:?} after IPv6 address in URL"
                ))),
            },
        };
    }
    Ok(spec.split_once(':').unwrap_or((spec, "")))
}

/// Decodes `%XX` escapes; `what` names the part of the URL for errors, which never echo the
/// input (it may be a password).
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(hi), Some(lo)) => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
                _ => None,
            }
            .ok_or_else(|| invalid(format!("invalid percent-encoding in URL {what}")))?;
            if byte == 0 {
                return Err(invalid(format!("forbidden %00 in URL {what}")));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("URL {what} is not valid UTF-8")))
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Quotes a value for a libpq keyword/value connection string, the way libpq reads it back:
/// bare when it can be (not empty, no white space, `'` or `\`), else in single quotes with `'`
/// and `\` escaped by `\`.
///
/// ```
/// use pgq_core::quote_conninfo_value;
///
/// assert_eq!(quote_conninfo_value("app"), "app");
/// assert_eq!(format!("dbname={}", quote_conninfo_value("my db")), "dbname='my db'");
/// assert_eq!(quote_conninfo_value(r"it's\"), r"'it\'s\\'");
/// ```
pub fn quote_conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_when_needed() {
        assert_eq!(quote_conninfo_value("abc"), "abc");
        assert_eq!(quote_conninfo_value(""), "''");
        assert_eq!(quote_conninfo_value("a b"), "'a b'");
        assert_eq!(quote_conninfo_value(r"it's\"), r"'it\'s\\'");
    }
}
