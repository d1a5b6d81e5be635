//! The approvers map: which addresses review apps published to a stream.
//!
//! A CSV file with one stream per row, identified by its id or its name, followed by addresses:
//!
//! ```csv
//! stream,email
//! 7f3c2e51-0b7a-4e4d-9a1f-3c2b1d0e9f88,anna.berg@company.com
//! Finance Review,"Jürgen Groß <juergen.gross@company.com>; lena@company.com"
//! Finance Review,lena@company.com
//! ```
//!
//! - A header row is optional (a first row whose first column is `stream` is skipped).
//! - A row may carry several address columns, and a column several addresses separated by `;`.
//! - Lines starting with `#` are comments. Excel's UTF-8 byte-order mark and `;` as the column
//!   separator (some locales) are recognised.
//! - Stream ids and names are trimmed and compared without regard to case; addresses are trimmed,
//!   validated and de-duplicated (per stream, case-insensitively).
//! - Bad rows are reported with their line number; the good rows are still used.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use lettre::message::Mailbox;

/// Stream id or name (lower-cased) -> approver mailboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApproversMap {
    streams: BTreeMap<String, Vec<Mailbox>>,
}

/// A row of the approvers CSV that was not (fully) usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvProblem {
    /// 1-based line number in the file.
    pub line: u64,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for CsvProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl ApproversMap {
    /// The approvers of a stream, found by its id and by its name (both rows count),
    /// de-duplicated, in file order.
    pub fn lookup(&self, stream_id: Option<&str>, stream_name: Option<&str>) -> Vec<Mailbox> {
        let mut out: Vec<Mailbox> = Vec::new();
        for key in [stream_id, stream_name].into_iter().flatten() {
            let key = normalise_key(key);
            if key.is_empty() {
                continue;
            }
            if let Some(list) = self.streams.get(&key) {
                for m in list {
                    push_unique(&mut out, m.clone());
                }
            }
        }
        out
    }

    /// Number of streams with at least one approver.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream has an approver.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// Reads and parses the approvers CSV at `path`. Only a missing or unreadable file is an error;
/// bad rows come back as problems next to the usable map.
pub fn load_approvers_csv(path: &Path) -> anyhow::Result<(ApproversMap, Vec<CsvProblem>)> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the approvers file {} (email.approvers_csv): {e}",
            path.display()
        )
    })?;
    Ok(parse_approvers_csv(&bytes))
}

/// Parses the approvers CSV (see the module documentation for the format).
pub fn parse_approvers_csv(input: &[u8]) -> (ApproversMap, Vec<CsvProblem>) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let delimiter = sniff_delimiter(input);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .delimiter(delimiter)
        .from_reader(input);

    let mut map = ApproversMap::default();
    let mut problems = Vec::new();
    let mut first_row = true;
    for result in reader.records() {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                problems.push(CsvProblem {
                    line,
                    message: format!("cannot be read: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let stream = record.get(0).unwrap_or("");
        if std::mem::take(&mut first_row)
            && matches!(
                stream.to_lowercase().as_str(),
                "stream" | "stream id" | "stream_id" | "streamid" | "stream name"
            )
        {
            continue;
        }
        if stream.is_empty() {
            problems.push(CsvProblem {
                line,
                message: "the first column (stream id or name) is empty".into(),
            });
            continue;
        }
        let mut found = 0;
        for field in record.iter().skip(1) {
            for raw in field.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                match parse_mailbox(raw) {
                    Ok(mbox) => {
                        found += 1;
                        let list = map.streams.entry(normalise_key(stream)).or_default();
                        push_unique(list, mbox);
                    }
                    Err(why) => problems.push(CsvProblem {
                        line,
                        message: format!("\"{raw}\" is not an email address ({why})"),
                    }),
                }
            }
        }
        if found == 0 && !problems.iter().any(|p| p.line == line) {
            problems.push(CsvProblem {
                line,
                message: format!("stream \"{stream}\" has no address; add one after a comma"),
            });
        }
    }
    (map, problems)
}

/// Parses `addr@host` or `Name <addr@host>`, refusing control characters.
pub(crate) fn parse_mailbox(raw: &str) -> Result<Mailbox, String> {
    if raw.chars().any(char::is_control) {
        return Err("it contains a line break or control character".into());
    }
    raw.trim().parse::<Mailbox>().map_err(|e| e.to_string())
}

fn normalise_key(key: &str) -> String {
    key.trim().to_lowercase()
}

fn push_unique(list: &mut Vec<Mailbox>, mbox: Mailbox) {
    let addr = mbox.email.to_string().to_lowercase();
    if !list
        .iter()
        .any(|m| m.email.to_string().to_lowercase() == addr)
    {
        list.push(mbox);
    }
}

/// `;` when the first data line uses it and has no comma; `,` otherwise.
fn sniff_delimiter(input: &[u8]) -> u8 {
    let first = input
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .find(|l| !l.is_empty() && !l.starts_with(b"#"))
        .unwrap_or_default();
    if first.contains(&b';') && !first.contains(&b',') {
        b';'
    } else {
        b','
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[Mailbox]) -> Vec<String> {
        list.iter().map(|m| m.email.to_string()).collect()
    }

    #[test]
    fn trims_validates_and_deduplicates() {
        let csv = "\u{feff}stream,email\n\
                   # comment line\n\
                   \x20 ABC-123 \x20, anna@example.com \n\
                   abc-123,ANNA@example.com\n\
                   Finance Review,\"Jürgen Groß <jg@example.com>; lena@example.com\",x@example.com\n\
                   \n\
                   Finance Review,lena@example.com\n";
        let (map, problems) = parse_approvers_csv(csv.as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(map.len(), 2);
        assert_eq!(
            addrs(&map.lookup(Some("abc-123"), None)),
            ["anna@example.com"]
        );
        let finance = map.lookup(None, Some("finance review"));
        assert_eq!(
            addrs(&finance),
            ["jg@example.com", "lena@example.com", "x@example.com"]
        );
        assert_eq!(finance[0].name.as_deref(), Some("Jürgen Groß"));
    }

    #[test]
    fn id_and_name_rows_are_combined() {
        let csv = "s-1,a@example.com\nSales,b@example.com\nSales,a@example.com\n";
        let (map, problems) = parse_approvers_csv(csv.as_bytes());
        assert!(problems.is_empty());
        assert_eq!(
            addrs(&map.lookup(Some("S-1"), Some("Sales"))),
            ["a@example.com", "b@example.com"]
        );
        assert!(map.lookup(Some("other"), Some("Other")).is_empty());
        assert!(map.lookup(None, None).is_empty());
    }

    #[test]
    fn bad_rows_are_reported_with_their_line_number() {
        let csv = "stream,email\n\
                   good,ok@example.com\n\
                   ,orphan@example.com\n\
                   nobody\n\
                   bad,not-an-address,fine@example.com\n\
                   evil,\"a@example.com\r\nBcc: b@example.com\"\n";
        let (map, problems) = parse_approvers_csv(csv.as_bytes());
        let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4, 5, 6], "{problems:?}");
        assert!(problems[0].to_string().starts_with("line 3: "));
        assert!(problems[1].message.contains("nobody"));
        assert!(problems[2].message.contains("not-an-address"));
        // The good address on a row with a bad one is kept.
        assert_eq!(addrs(&map.lookup(None, Some("bad"))), ["fine@example.com"]);
        assert!(map.lookup(None, Some("evil")).is_empty());
        assert_eq!(addrs(&map.lookup(None, Some("good"))), ["ok@example.com"]);
    }

    #[test]
    fn semicolon_separated_files_from_excel_are_read() {
        let csv = "Stream;Email\r\nSales;a@example.com\r\nSales;b@example.com\r\n";
        let (map, problems) = parse_approvers_csv(csv.as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            addrs(&map.lookup(None, Some("sales"))),
            ["a@example.com", "b@example.com"]
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load_approvers_csv(Path::new("/nonexistent/approvers.csv")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/approvers.csv"));
    }
}
