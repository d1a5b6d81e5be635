//! The QRS filter language (`filter=` query parameter), parsed and evaluated against an entity's
//! JSON.
//!
//! `path op value [and|or ...]` with parentheses; operators `eq ne gt ge lt le sw ew so`;
//! strings in single quotes with `''` for a quote; GUIDs, enums, numbers, `true`/`false` and
//! `null` unquoted. Dotted paths walk into references and collections; a path through a collection
//! matches when any element matches, and two predicates on one collection are evaluated
//! independently. Property names and string comparisons ignore case, as QRS does.

use serde_json::Value;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    /// Starts with.
    Sw,
    /// Ends with.
    Ew,
    /// Substring of (contains).
    So,
}

/// A literal on the right of an operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'quoted'`.
    Str(String),
    /// An unquoted word: a GUID, an enum value.
    Bare(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Pred {
        path: Vec<String>,
        op: Op,
        value: Literal,
    },
}

/// A filter that cannot be parsed; `Display` is QRS's 400 text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub filter: String,
    pub reason: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cannot parse the expression: {}", self.filter)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Str(String),
    Word(String),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' {
            chars.next();
            out.push(Token::Open);
        } else if c == ')' {
            chars.next();
            out.push(Token::Close);
        } else if c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some('\'') => {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                            text.push('\'');
                        } else {
                            break;
                        }
                    }
                    Some(ch) => text.push(ch),
                }
            }
            out.push(Token::Str(text));
        } else {
            let mut word = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '(' || ch == ')' || ch == '\'' {
                    break;
                }
                word.push(ch);
                chars.next();
            }
            out.push(Token::Word(word));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.factor()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Open) => {
                self.pos += 1;
                let e = self.or()?;
                match self.tokens.get(self.pos) {
                    Some(Token::Close) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err("missing )".into()),
                }
            }
            Some(Token::Word(path)) => {
                self.pos += 1;
                let path: Vec<String> = path.split('.').map(str::to_string).collect();
                if path.iter().any(|p| {
                    p.is_empty()
                        || !p
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '@')
                }) {
                    return Err(format!("bad property path {}", path.join(".")));
                }
                let op = match self.tokens.get(self.pos) {
                    Some(Token::Word(w)) => {
                        parse_op(w).ok_or_else(|| format!("unknown operator {w}"))?
                    }
                    _ => return Err("missing operator".into()),
                };
                self.pos += 1;
                let value = match self.tokens.get(self.pos).cloned() {
                    Some(Token::Str(s)) => Literal::Str(s),
                    Some(Token::Word(w)) => parse_bare(&w),
                    _ => return Err("missing value".into()),
                };
                self.pos += 1;
                Ok(Expr::Pred { path, op, value })
            }
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("unexpected end".into()),
        }
    }
}

fn parse_op(w: &str) -> Option<Op> {
    Some(match w.to_ascii_lowercase().as_str() {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        "lt" => Op::Lt,
        "le" => Op::Le,
        "sw" => Op::Sw,
        "ew" => Op::Ew,
        "so" => Op::So,
        _ => return None,
    })
}

fn parse_bare(w: &str) -> Literal {
    match w.to_ascii_lowercase().as_str() {
        "null" => Literal::Null,
        "true" => Literal::Bool(true),
        "false" => Literal::Bool(false),
        _ => match w.parse::<f64>() {
            Ok(n) if w.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') => {
                Literal::Num(n)
            }
            _ => Literal::Bare(w.to_string()),
        },
    }
}

/// Parses a filter. An empty filter is `None` (everything matches).
pub fn parse(filter: &str) -> Result<Option<Expr>, FilterError> {
    let err = |reason: String| FilterError {
        filter: filter.to_string(),
        reason,
    };
    if filter.trim().is_empty() {
        return Ok(None);
    }
    let tokens = tokenize(filter).map_err(err)?;
    let mut p = Parser { tokens, pos: 0 };
    let e = p.or().map_err(err)?;
    if p.pos != p.tokens.len() {
        return Err(err(format!("unexpected {:?}", p.tokens[p.pos])));
    }
    Ok(Some(e))
}

/// Whether `entity` (its full JSON) matches.
pub fn matches(expr: &Expr, entity: &Value) -> bool {
    match expr {
        Expr::And(a, b) => matches(a, entity) && matches(b, entity),
        Expr::Or(a, b) => matches(a, entity) || matches(b, entity),
        Expr::Pred { path, op, value } => {
            let mut found = Vec::new();
            collect(entity, path, &mut found);
            found.iter().any(|v| compare(v, *op, value))
        }
    }
}

fn collect<'a>(v: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, path, out)),
        _ if path.is_empty() => out.push(v),
        Value::Object(map) => {
            let key = &path[0];
            match map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                Some((_, child)) => collect(child, &path[1..], out),
                None => out.push(&Value::Null),
            }
        }
        _ => out.push(&Value::Null),
    }
}

fn literal_text(l: &Literal) -> Option<String> {
    match l {
        Literal::Str(s) | Literal::Bare(s) => Some(s.to_lowercase()),
        Literal::Num(n) => Some(n.to_string()),
        Literal::Bool(b) => Some(b.to_string()),
        Literal::Null => None,
    }
}

fn compare(v: &Value, op: Op, lit: &Literal) -> bool {
    if matches!(lit, Literal::Null) {
        return match op {
            Op::Eq => v.is_null(),
            Op::Ne => !v.is_null(),
            _ => false,
        };
    }
    let Some(want) = literal_text(lit) else {
        return false;
    };
    if v.is_null() {
        return op == Op::Ne;
    }
    if let (Value::Number(n), Some(x)) = (
        v,
        match lit {
            Literal::Num(x) => Some(*x),
            Literal::Str(s) | Literal::Bare(s) => s.parse::<f64>().ok(),
            _ => None,
        },
    ) {
        let n = n.as_f64().unwrap_or(f64::NAN);
        return match op {
            Op::Eq => n == x,
            Op::Ne => n != x,
            Op::Gt => n > x,
            Op::Ge => n >= x,
            Op::Lt => n < x,
            Op::Le => n <= x,
            Op::Sw | Op::Ew | Op::So => false,
        };
    }
    let have = match v {
        Value::String(s) => s.to_lowercase(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => return false,
    };
    match op {
        Op::Eq => have == want,
        Op::Ne => have != want,
        Op::Gt => have > want,
        Op::Ge => have >= want,
        Op::Lt => have < want,
        Op::Le => have <= want,
        Op::Sw => have.starts_with(&want),
        Op::Ew => have.ends_with(&want),
        Op::So => have.contains(&want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app() -> Value {
        json!({
            "id": "3f1c0e2a-1111-4222-8333-944455556666",
            "name": "O'Brien & Sons #1 / Ünïcode",
            "published": true,
            "fileSize": 2048,
            "publishTime": "2024-05-01T10:00:00.000Z",
            "stream": {"id": "aaaaaaaa-0000-0000-0000-000000000001", "name": "Sales",
                       "customProperties": [{"value": "Production", "definition": {"name": "Env"}}]},
            "owner": {"userId": "alice", "userDirectory": "CORP"},
            "customProperties": [
                {"value": "test - Overwrite", "definition": {"name": "PromoteToServer"}},
                {"value": "Approve", "definition": {"name": "PromotionApproval"}}
            ],
            "tags": [{"name": "Certified"}],
            "description": null
        })
    }

    #[test]
    fn table() {
        let cases: &[(&str, bool)] = &[
            ("name eq 'O''Brien & Sons #1 / Ünïcode'", true),
            ("name eq 'o''brien & sons #1 / ünïcode'", true),
            ("NAME Eq 'o''brien & sons #1 / ünïcode'", true),
            ("name ne 'x'", true),
            ("name sw 'o''bri'", true),
            ("name ew 'ÜNÏCODE'", true),
            ("name so '#1 /'", true),
            ("name so 'zzz'", false),
            ("id eq 3f1c0e2a-1111-4222-8333-944455556666", true),
            ("id eq 3F1C0E2A-1111-4222-8333-944455556666", true),
            ("id eq 00000000-0000-0000-0000-000000000000", false),
            ("stream.name eq 'Sales'", true),
            ("stream.id eq aaaaaaaa-0000-0000-0000-000000000001", true),
            ("stream.customProperties.value eq 'Production'", true),
            (
                "owner.userId eq 'ALICE' and owner.userDirectory eq 'corp'",
                true,
            ),
            (
                "customProperties.definition.name eq 'PromoteToServer'",
                true,
            ),
            (
                "customProperties.definition.name eq 'PromoteToStream'",
                false,
            ),
            (
                "customProperties.definition.name eq 'PromotionApproval' and customProperties.value eq 'approve'",
                true,
            ),
            ("customProperties.value ne null", true),
            ("tags.name eq 'certified'", true),
            ("tags.name eq 'other'", false),
            ("published eq true", true),
            ("published eq false", false),
            ("fileSize gt 1000", true),
            ("fileSize le 1000", false),
            ("fileSize eq 2048", true),
            ("publishTime gt '2024-01-01'", true),
            ("description eq null", true),
            ("description ne null", false),
            ("missing eq null", true),
            (
                "(name eq 'x' or stream.name eq 'Sales') and published eq true",
                true,
            ),
            (
                "name eq 'x' or stream.name eq 'Sales' and published eq false",
                false,
            ),
            ("(name eq 'x') or (stream.name eq 'Sales')", true),
        ];
        let a = app();
        for (f, want) in cases {
            let e = parse(f).unwrap_or_else(|e| panic!("{f}: {e:?}")).unwrap();
            assert_eq!(matches(&e, &a), *want, "{f}");
        }
    }

    #[test]
    fn unpublished_app_has_null_stream() {
        let a = json!({"name": "x", "stream": null, "tags": []});
        for (f, want) in [
            ("stream eq null", true),
            ("stream.name eq 'Sales'", false),
            ("stream.name ne 'Sales'", true),
            ("tags.name eq 'x'", false),
            ("tags.name ne 'x'", false),
        ] {
            assert_eq!(matches(&parse(f).unwrap().unwrap(), &a), want, "{f}");
        }
    }

    #[test]
    fn parse_errors_carry_qrs_text() {
        for f in [
            "name eq 'O'Brien'",
            "name eq",
            "name xx 'a'",
            "(name eq 'a'",
            "name eq 'a' and",
            "name eq 'a')",
            "'a' eq name",
        ] {
            let e = parse(f).unwrap_err();
            assert_eq!(e.to_string(), format!("Cannot parse the expression: {f}"));
        }
        assert_eq!(parse("  ").unwrap(), None);
    }

    #[test]
    fn precedence_and_binds_tighter_than_or() {
        let e = parse("a eq 1 or b eq 2 and c eq 3").unwrap().unwrap();
        assert!(matches!(e, Expr::Or(_, ref r) if matches!(**r, Expr::And(..))));
    }
}
