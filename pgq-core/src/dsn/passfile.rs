//! libpq's password file: `host:port:database:user:password` lines, `*` matching anything,
//! `\\` escaping `:` and `\\`; ignored when group or world can access it.

use std::fs;
use std::path::Path;

use super::settings::DEFAULT_SOCKET_DIR;

/// The password for a connection from a libpq password file, if the file is usable and has a
/// matching line.
pub(super) fn passfile_password(
    path: &Path,
    host: &str,
    port: &str,
    db: &str,
    user: &str,
) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; permissions should be u=rw (0600) \
                 or less; ignoring it"
            );
            return None;
        }
    }
    let text = fs::read_to_string(path).ok()?;
    let host = if host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    passfile_lookup(&text, host, port, db, user)
}

/// The password of the first password-file line matching the connection.
fn passfile_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let fields = passfile_fields(line);
            let [h, p, d, u, password, ..] = fields.as_slice() else {
                return None;
            };
            let matches = |(raw, value): &(&str, String), want: &str| raw == &"*" || value == want;
            (matches(h, host) && matches(p, port) && matches(d, db) && matches(u, user))
                .then(|| password.1.clone())
        })
}

/// Splits a password-file line at unescaped `:`, giving each field raw and unescaped.
fn passfile_fields(line: &str) -> Vec<(&str, String)> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut value = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => value.push('\\'),
            },
            ':' => {
                fields.push((&line[start..i], std::mem::take(&mut value)));
                start = i + 1;
            }
            c => value.push(c),
        }
    }
    fields.push((&line[start..], value));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_lines() {
        let text = "# comment\n\
                    \n\
                    db1:5432:app:alice:first\n\
                    db1:5432:app:alice:shadowed\n\
                    *:*:other:alice:wild\n\
                    h\\:x:5432:*:*:escaped\\:pw\\\\\n\
                    \\*:5432:*:*:literal-star\r\n\
                    short:line\n";
        let lookup = |host, port, db, user| passfile_lookup(text, host, port, db, user);
        assert_eq!(
            lookup("db1", "5432", "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup("anyhost", "1", "other", "alice").as_deref(),
            Some("wild")
        );
        assert_eq!(
            lookup("h:x", "5432", "x", "y").as_deref(),
            Some(r"escaped:pw\")
        );
        assert_eq!(
            lookup("*", "5432", "x", "y").as_deref(),
            Some("literal-star")
        );
        assert_eq!(lookup("zzz", "5432", "x", "y"), None);
        assert_eq!(lookup("db1", "5433", "app", "alice"), None);
    }
}
