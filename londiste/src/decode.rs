//! Reading the capture trigger's events: `ev_type` (`I:id`, `U:id`, `D:id`, `R`), the
//! urlencoded row in `ev_data` (`id=1&name=a+b&note` — a key without `=` is NULL), and
//! `txid_snapshot` text for the copy snapshot.

/// One row as the trigger sent it: column names and values, in the provider's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlRow {
    pub(crate) columns: Vec<String>,
    pub(crate) values: Vec<Option<String>>,
}

impl UrlRow {
    /// Drops the values of these columns (a subscriber's generated columns, which a capture
    /// trigger may have recorded).
    pub(crate) fn without(mut self, columns: &[String]) -> UrlRow {
        if columns.is_empty() {
            return self;
        }
        let mut values = std::mem::take(&mut self.values).into_iter();
        let mut kept = UrlRow {
            columns: Vec::with_capacity(self.columns.len()),
            values: Vec::with_capacity(self.columns.len()),
        };
        for column in self.columns {
            let value = values.next().flatten();
            if !columns.contains(&column) {
                kept.columns.push(column);
                kept.values.push(value);
            }
        }
        kept
    }

    /// The value of `column`; `None` when the row has no such column.
    pub(crate) fn get(&self, column: &str) -> Option<&Option<String>> {
        self.columns
            .iter()
            .position(|c| c == column)
            .map(|i| &self.values[i])
    }
}

/// What an event does to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    /// Every operation, in declaration order (`op as usize` indexes it).
    pub(crate) const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    /// The letter `ev_type` gives it.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
            Op::Truncate => "R",
        }
    }
}

/// Splits `ev_type` into the operation and the primary key columns it names.
pub(crate) fn parse_ev_type(ev_type: &str) -> Result<(Op, Vec<String>), String> {
    let (op, keys) = ev_type.split_once(':').unwrap_or((ev_type, ""));
    let op = match op {
        "I" => Op::Insert,
        "U" => Op::Update,
        "D" => Op::Delete,
        "R" => return Ok((Op::Truncate, Vec::new())),
        _ => {
            return Err(format!(
                "unknown ev_type {ev_type:?}: expected I:, U:, D: or R (pgq.logutriga)"
            ))
        }
    };
    if keys.is_empty() {
        return Err(format!("ev_type {ev_type:?} names no primary key column"));
    }
    Ok((op, keys.split(',').map(str::to_owned).collect()))
}

/// Decodes `a=1&b=x+y&c`.
pub(crate) fn parse_urlencoded(data: &str) -> Result<UrlRow, String> {
    let mut row = UrlRow {
        columns: Vec::new(),
        values: Vec::new(),
    };
    if data.is_empty() {
        return Ok(row);
    }
    for pair in data.split('&') {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        row.columns.push(unescape(key)?);
        row.values.push(value.map(unescape).transpose()?);
    }
    Ok(row)
}

fn unescape(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad %-escape in {text:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

/// A `txid_snapshot`: which transactions it sees as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    xmin: i64,
    xmax: i64,
    xip: Vec<i64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip,xip`.
    pub(crate) fn parse(text: &str) -> Result<Snapshot, String> {
        let bad = || format!("bad txid_snapshot {text:?}");
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xip = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// Whether this snapshot sees every transaction `earlier` sees: then no event beyond this
    /// snapshot comes from a transaction `earlier` saw.
    pub(crate) fn covers(&self, earlier: &Snapshot) -> bool {
        self.xmax >= earlier.xmax && self.xip.iter().all(|&t| !earlier.sees(t))
    }

    /// Whether transaction `txid` had committed for this snapshot (if it committed at all).
    pub(crate) fn sees(&self, txid: i64) -> bool {
        txid < self.xmin || (txid < self.xmax && !self.xip.contains(&txid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_decode_as_the_trigger_encodes_them() {
        let row = parse_urlencoded("id=1&Val=a+b%26c%3dd%2be%25&b=%5cx00ff&n").unwrap();
        assert_eq!(row.columns, ["id", "Val", "b", "n"]);
        assert_eq!(
            row.values,
            [
                Some("1".to_owned()),
                Some("a b&c=d+e%".to_owned()),
                Some("\\x00ff".to_owned()),
                None
            ]
        );
        assert_eq!(row.get("n"), Some(&None));
        assert_eq!(row.get("zz"), None);
        let row = parse_urlencoded("k=%c3%a9t%c3%a9&e=").unwrap();
        assert_eq!(row.values, [Some("été".to_owned()), Some(String::new())]);
        assert!(parse_urlencoded("a=%zz")
            .unwrap_err()
            .contains("bad %-escape"));
        assert!(parse_urlencoded("a=%ff").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn ev_types() {
        assert_eq!(
            parse_ev_type("U:a,b").unwrap(),
            (Op::Update, vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(parse_ev_type("R").unwrap().0, Op::Truncate);
        assert!(parse_ev_type("X:id")
            .unwrap_err()
            .contains("unknown ev_type"));
        assert!(parse_ev_type("I:").unwrap_err().contains("no primary key"));
    }

    #[test]
    fn snapshots() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert!(s.sees(9) && s.sees(11) && s.sees(19));
        assert!(!s.sees(12) && !s.sees(15) && !s.sees(20) && !s.sees(25));
        assert_eq!(Snapshot::parse("5:5:").unwrap().xmax, 5);
        assert!(Snapshot::parse("x").is_err());
        let copy = Snapshot::parse("10:20:12").unwrap();
        // A transaction running through both (12) does not hold the table back.
        assert!(Snapshot::parse("12:30:12,25").unwrap().covers(&copy));
        assert!(!Snapshot::parse("11:30:11").unwrap().covers(&copy));
        assert!(!Snapshot::parse("12:19:12").unwrap().covers(&copy));
    }
}
