//! QRS filter expressions (`filter=` query parameter) and URL encoding of every value.
//!
//! String values are single-quoted with `'` doubled; GUIDs are unquoted. The finished filter
//! is percent-encoded like any other query value by the client, so `&`, `#`, `+`, `?`, `/`
//! and non-ASCII text reach QRS intact.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything except RFC 3986 unreserved characters is encoded (space becomes `%20`).
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment (a `/` inside it becomes `%2F`).
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

/// Percent-encodes one query name or value (`&`, `=`, `+`, `#`, `'` and spaces included).
pub fn encode_query(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

/// Quotes a string for a filter: `O'Brien` becomes `'O''Brien'`.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Whether `s` looks like a GUID (hex digits and dashes, 8-4-4-4-12), so it may go unquoted.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A QRS filter expression, built safely.
///
/// ```
/// use promoter::qrs::Filter;
/// let f = Filter::eq("name", "O'Brien & Co").and(Filter::eq("stream.name", "Sales"));
/// assert_eq!(f.as_str(), "name eq 'O''Brien & Co' and stream.name eq 'Sales'");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    text: String,
    /// Joined with `and`/`or` at the top level (needs parentheses inside another join).
    compound: bool,
}

impl Filter {
    fn cmp(property: &str, op: &str, value: String) -> Filter {
        debug_assert!(
            property
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'),
            "filter property names are code constants: {property}"
        );
        Filter {
            text: format!("{property} {op} {value}"),
            compound: false,
        }
    }

    /// `property eq 'value'` (case-insensitive in QRS).
    pub fn eq(property: &str, value: &str) -> Filter {
        Filter::cmp(property, "eq", quote(value))
    }

    /// `property ne 'value'`.
    pub fn ne(property: &str, value: &str) -> Filter {
        Filter::cmp(property, "ne", quote(value))
    }

    /// `property sw 'value'` (starts with).
    pub fn starts_with(property: &str, value: &str) -> Filter {
        Filter::cmp(property, "sw", quote(value))
    }

    /// `property ew 'value'` (ends with).
    pub fn ends_with(property: &str, value: &str) -> Filter {
        Filter::cmp(property, "ew", quote(value))
    }

    /// `property so 'value'` (substring of).
    pub fn contains(property: &str, value: &str) -> Filter {
        Filter::cmp(property, "so", quote(value))
    }

    /// `property eq <guid>`, unquoted as QRS expects GUIDs. A value that is not a GUID is
    /// quoted instead, so it can never change the expression.
    pub fn id_eq(property: &str, guid: &str) -> Filter {
        let v = if is_guid(guid) {
            guid.to_string()
        } else {
            quote(guid)
        };
        Filter::cmp(property, "eq", v)
    }

    /// `property ne null`.
    pub fn not_null(property: &str) -> Filter {
        Filter::cmp(property, "ne", "null".into())
    }

    /// `self and other`.
    pub fn and(self, other: Filter) -> Filter {
        self.join("and", other)
    }

    /// `self or other`.
    pub fn or(self, other: Filter) -> Filter {
        self.join("or", other)
    }

    fn join(self, op: &str, other: Filter) -> Filter {
        let part = |f: Filter| {
            if f.compound {
                format!("({})", f.text)
            } else {
                f.text
            }
        };
        Filter {
            text: format!("{} {op} {}", part(self), part(other)),
            compound: true,
        }
    }

    /// The expression as QRS reads it (before URL encoding).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::percent_decode_str;

    const NASTY: &[&str] = &[
        "O'Brien",
        "A & B",
        "#1 report",
        "1+1=2",
        "a/b\\c",
        "why?",
        "  spaced  out  ",
        "Ventes été 2024 – 北京",
        "''",
        "x' or name ne 'y",
        "100%",
    ];

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote("O'Brien"), "'O''Brien'");
        assert_eq!(quote("''"), "''''''");
        assert_eq!(
            Filter::eq("name", "x' or name ne 'y").as_str(),
            "name eq 'x'' or name ne ''y'"
        );
    }

    #[test]
    fn joins_parenthesise_compound_operands() {
        let a = Filter::eq("name", "a");
        let b = Filter::eq("stream.name", "b");
        let c = Filter::id_eq("id", "3f1c2d4e-0000-4000-8000-000000000001");
        assert_eq!(
            a.clone().and(b.clone()).as_str(),
            "name eq 'a' and stream.name eq 'b'"
        );
        assert_eq!(
            a.clone().and(b.clone()).or(c.clone()).as_str(),
            "(name eq 'a' and stream.name eq 'b') or id eq 3f1c2d4e-0000-4000-8000-000000000001"
        );
        assert_eq!(
            c.or(a.and(b)).as_str(),
            "id eq 3f1c2d4e-0000-4000-8000-000000000001 or (name eq 'a' and stream.name eq 'b')"
        );
        assert_eq!(
            Filter::not_null("customProperties.value").as_str(),
            "customProperties.value ne null"
        );
        assert_eq!(Filter::starts_with("name", "x").as_str(), "name sw 'x'");
        assert_eq!(Filter::ends_with("name", "x").as_str(), "name ew 'x'");
        assert_eq!(Filter::contains("name", "x").as_str(), "name so 'x'");
        assert_eq!(Filter::ne("name", "x").as_str(), "name ne 'x'");
    }

    #[test]
    fn non_guids_are_quoted() {
        assert_eq!(
            Filter::id_eq("id", "abc' or 1 eq 1").as_str(),
            "id eq 'abc'' or 1 eq 1'"
        );
        assert!(is_guid("3F1C2D4E-0000-4000-8000-00000000000a"));
        assert!(!is_guid("3f1c2d4e00004000800000000000000a"));
    }

    #[test]
    fn encoded_values_contain_no_reserved_characters_and_round_trip() {
        for v in NASTY {
            let f = Filter::eq("name", v);
            let enc = encode_query(f.as_str());
            assert!(
                enc.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~%".contains(c)),
                "{enc}"
            );
            assert_eq!(percent_decode_str(&enc).decode_utf8().unwrap(), f.as_str());
            let seg = encode_segment(v);
            assert!(!seg.contains('/') && !seg.contains('?') && !seg.contains('#'));
            assert_eq!(percent_decode_str(&seg).decode_utf8().unwrap(), *v);
        }
        assert_eq!(encode_query("a b"), "a%20b");
        assert_eq!(encode_query("a+b&c#d"), "a%2Bb%26c%23d");
    }
}
