//! Positions in TOML configuration files, so every daemon's config errors name the file, the
//! line, the column and the `table.key` at fault.

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
