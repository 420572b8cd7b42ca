//! The Cloud Logging query language, as users write it in `gcloud logging read`:
//! comparisons `FIELD OP VALUE` with `=`, `!=`, `<`, `<=`, `>`, `>=`, `:` (has), `=~` and `!~`
//! (RE2 regular expressions), joined by `AND` (or juxtaposition), `OR` and `NOT`/`-`, with
//! parentheses; field paths with quoted segments (`labels."run.googleapis.com/execution_name"`);
//! bare values that search every text field. As in Cloud Logging, `OR` binds tighter than
//! `AND`: `a OR b c` is `(a OR b) AND c`.
//!
//! [`Filter::parse`] reports the first error with its column; [`Filter::matches`] evaluates a
//! parsed filter on an entry in Logging v2's JSON shape ([`crate::entry`]).

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

/// A parsed filter: the conjunction of its top-level terms (empty: everything matches).
#[derive(Debug, Clone)]
pub struct Filter {
    /// The top-level conjuncts; [`crate::query`] pushes some of them down to the store.
    pub terms: Vec<Expr>,
}

#[derive(Debug, Clone)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Comparison),
    /// A bare value: some text field of the entry contains it (case-insensitive).
    Global(String),
}

#[derive(Debug, Clone)]
pub struct Comparison {
    /// `httpRequest.status` is `["httpRequest", "status"]`.
    pub path: Vec<String>,
    pub op: Op,
    pub value: String,
    /// For `=~`/`!~`, the compiled expression.
    pub regex: Option<regex::Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
    Matches,
    NotMatches,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
            Op::Matches => "=~",
            Op::NotMatches => "!~",
        }
    }
}

/// A filter that does not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at column {column}: {message}")]
pub struct ParseError {
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// Bounds that keep a hostile filter from costing more than a filter should.
const MAX_FILTER_CHARS: usize = 20_000;
const MAX_DEPTH: usize = 64;
const MAX_REGEX_BYTES: usize = 1 << 20;

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, ParseError> {
        if text.chars().count() > MAX_FILTER_CHARS {
            return Err(ParseError {
                column: MAX_FILTER_CHARS,
                message: format!("the filter is longer than {MAX_FILTER_CHARS} characters"),
            });
        }
        let tokens = lex(text)?;
        let mut parser = Parser { tokens, at: 0, depth: 0, end: text.chars().count() + 1 };
        let terms = parser.conjunction()?;
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(token, "expected AND, OR, a comparison or the end of the filter"));
        }
        Ok(Filter { terms })
    }

    /// Whether `entry` (Logging v2 JSON) passes the filter.
    pub fn matches(&self, entry: &Value) -> bool {
        self.terms.iter().all(|t| t.matches(entry))
    }
}

impl Expr {
    pub fn matches(&self, entry: &Value) -> bool {
        match self {
            Expr::And(all) => all.iter().all(|e| e.matches(entry)),
            Expr::Or(any) => any.iter().any(|e| e.matches(entry)),
            Expr::Not(inner) => !inner.matches(entry),
            Expr::Global(text) => contains_text(entry, &text.to_lowercase()),
            Expr::Compare(c) => c.matches(entry),
        }
    }
}

impl Comparison {
    fn matches(&self, entry: &Value) -> bool {
        let field = lookup(entry, &self.path);
        match self.op {
            // Cloud Logging: `x != v` is `NOT x = v`, so it matches entries without the field.
            Op::Ne => !self.equal(field),
            Op::NotMatches => !field.is_some_and(|f| self.regex_matches(f)),
            Op::Eq => self.equal(field),
            Op::Matches => field.is_some_and(|f| self.regex_matches(f)),
            Op::Has => field.is_some_and(|f| has(f, &self.value)),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let Some(ordering) = field.and_then(|f| self.order(f)) else { return false };
                match self.op {
                    Op::Lt => ordering == Ordering::Less,
                    Op::Le => ordering != Ordering::Greater,
                    Op::Gt => ordering == Ordering::Greater,
                    _ => ordering != Ordering::Less,
                }
            }
        }
    }

    fn equal(&self, field: Option<&Value>) -> bool {
        field.is_some_and(|f| self.order(f) == Some(Ordering::Equal))
    }

    fn regex_matches(&self, field: &Value) -> bool {
        let Some(regex) = &self.regex else { return false };
        scalar_text(field).is_some_and(|text| regex.is_match(&text))
    }

    /// How the field compares with the value: severities by rank, timestamps as instants,
    /// numbers as numbers, everything else as text.
    fn order(&self, field: &Value) -> Option<Ordering> {
        if self.path == ["severity"] {
            let field = field.as_str().and_then(severity_rank)?;
            let value = severity_rank(&self.value).or_else(|| self.value.parse().ok())?;
            return Some(field.cmp(&value));
        }
        if self.path.first().is_some_and(|p| p == "timestamp" || p == "receiveTimestamp") {
            let field: jiff::Timestamp = field.as_str()?.parse().ok()?;
            let value: jiff::Timestamp = self.value.parse().ok()?;
            return Some(field.cmp(&value));
        }
        match field {
            Value::Number(n) => {
                let value: f64 = self.value.parse().ok()?;
                n.as_f64()?.partial_cmp(&value)
            }
            Value::Bool(b) => Some(b.to_string().as_str().cmp(self.value.to_ascii_lowercase().as_str())),
            Value::String(s) => {
                // A numeric string compares numerically with a number (`httpRequest.latency`
                // is "0.25s"-style text; `status` is a number).
                if let (Ok(a), Ok(b)) = (s.parse::<f64>(), self.value.parse::<f64>()) {
                    return a.partial_cmp(&b);
                }
                Some(s.as_str().cmp(self.value.as_str()))
            }
            _ => None,
        }
    }
}

/// Cloud Logging's severity ranks.
pub fn severity_rank(name: &str) -> Option<i64> {
    Some(match name.to_ascii_uppercase().as_str() {
        "DEFAULT" => 0,
        "DEBUG" => 100,
        "INFO" => 200,
        "NOTICE" => 300,
        "WARNING" | "WARN" => 400,
        "ERROR" => 500,
        "CRITICAL" => 600,
        "ALERT" => 700,
        "EMERGENCY" => 800,
        _ => return None,
    })
}

fn lookup<'a>(entry: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = entry;
    for segment in path {
        at = at.as_object()?.get(segment)?;
    }
    (!at.is_null()).then_some(at)
}

/// `field:value`: `*` means the field is present; on text, a case-insensitive substring; on
/// an object or array, any member has it.
fn has(field: &Value, value: &str) -> bool {
    if value == "*" {
        return true;
    }
    let needle = value.to_lowercase();
    match field {
        Value::Object(map) => map.values().any(|v| has(v, value)),
        Value::Array(items) => items.iter().any(|v| has(v, value)),
        other => scalar_text(other).is_some_and(|t| t.to_lowercase().contains(&needle)),
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn contains_text(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(s) => s.to_lowercase().contains(needle),
        Value::Object(map) => map.values().any(|v| contains_text(v, needle)),
        Value::Array(items) => items.iter().any(|v| contains_text(v, needle)),
        Value::Number(n) => n.to_string().contains(needle),
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Open,
    Close,
    And,
    Or,
    Not,
    Minus,
    Op(Op),
    /// A field path or a bare value (quoted segments already unquoted).
    Term {
        segments: Vec<String>,
        text: String,
    },
    /// A quoted string.
    Quoted(String),
    /// What follows an operator: a quoted string or a bare run up to space or parenthesis.
    Value(String),
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    column: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let error = |column: usize, message: String| ParseError { column: column + 1, message };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let after_op = matches!(tokens.last(), Some(Token { kind: TokenKind::Op(_), .. }));
        if after_op && c != '(' {
            let value = if c == '"' {
                let (s, next) = quoted(&chars, i).map_err(|m| error(start, m))?;
                i = next;
                s
            } else {
                while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '(' && chars[i] != ')' {
                    i += 1;
                }
                chars[start..i].iter().collect()
            };
            tokens.push(Token { kind: TokenKind::Value(value), column: start + 1 });
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let op = match two.as_str() {
            "=~" => Some((Op::Matches, 2)),
            "!~" => Some((Op::NotMatches, 2)),
            "!=" => Some((Op::Ne, 2)),
            "<=" => Some((Op::Le, 2)),
            ">=" => Some((Op::Ge, 2)),
            _ => match c {
                '=' => Some((Op::Eq, 1)),
                '<' => Some((Op::Lt, 1)),
                '>' => Some((Op::Gt, 1)),
                ':' => Some((Op::Has, 1)),
                _ => None,
            },
        };
        if let Some((op, len)) = op {
            tokens.push(Token { kind: TokenKind::Op(op), column: start + 1 });
            i += len;
            continue;
        }
        let kind = match c {
            '(' => {
                i += 1;
                TokenKind::Open
            }
            ')' => {
                i += 1;
                TokenKind::Close
            }
            '-' if i + 1 < chars.len() && !chars[i + 1].is_whitespace() => {
                i += 1;
                TokenKind::Minus
            }
            '"' => {
                let (s, next) = quoted(&chars, i).map_err(|m| error(start, m))?;
                i = next;
                TokenKind::Quoted(s)
            }
            '!' => return Err(error(start, "'!' must be followed by '=' or '~' (write NOT to negate)".into())),
            _ => {
                let mut segments = Vec::new();
                let mut segment = String::new();
                while i < chars.len() {
                    let c = chars[i];
                    if c == '.' {
                        segments.push(std::mem::take(&mut segment));
                        i += 1;
                        if chars.get(i) == Some(&'"') {
                            let (s, next) = quoted(&chars, i).map_err(|m| error(i, m))?;
                            segment = s;
                            i = next;
                        }
                        continue;
                    }
                    if c.is_whitespace() || "()=<>:!\"".contains(c) {
                        break;
                    }
                    segment.push(c);
                    i += 1;
                }
                segments.push(segment);
                let text: String = chars[start..i].iter().collect();
                match text.as_str() {
                    "AND" => TokenKind::And,
                    "OR" => TokenKind::Or,
                    "NOT" => TokenKind::Not,
                    _ => TokenKind::Term { segments, text },
                }
            }
        };
        tokens.push(Token { kind, column: start + 1 });
    }
    Ok(tokens)
}

/// A double-quoted string starting at `at`, with `\"` and `\\` escapes (any other backslash
/// stays, so regular expressions keep `\d`); returns it and the index after its closing quote.
fn quoted(chars: &[char], at: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut i = at + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return Ok((out, i + 1)),
            '\\' if matches!(chars.get(i + 1), Some('"' | '\\')) => {
                out.push(chars[i + 1]);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err("a quoted string is not closed: add the closing '\"'".to_owned())
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    /// The column just past the filter's last character.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn error_at(&self, token: &Token, expected: &str) -> ParseError {
        ParseError { column: token.column, message: format!("unexpected {}: {expected}", describe(&token.kind)) }
    }

    fn end_error(&self, expected: &str) -> ParseError {
        ParseError { column: self.end, message: format!("the filter ends too early: {expected}") }
    }

    /// Terms joined by AND or juxtaposition, up to `)` or the end.
    fn conjunction(&mut self) -> Result<Vec<Expr>, ParseError> {
        let mut terms = Vec::new();
        loop {
            match self.peek().map(|t| &t.kind) {
                None | Some(TokenKind::Close) => break,
                Some(TokenKind::And) => {
                    let and = self.next().unwrap_or_else(|| unreachable!());
                    if terms.is_empty() {
                        return Err(self.error_at(&and, "AND needs a term before it"));
                    }
                    match self.peek().map(|t| &t.kind) {
                        None => return Err(self.end_error("AND needs a term after it")),
                        Some(TokenKind::Close | TokenKind::And | TokenKind::Or) => {
                            let t = self.peek().cloned().unwrap_or_else(|| unreachable!());
                            return Err(self.error_at(&t, "AND needs a term after it"));
                        }
                        _ => {}
                    }
                }
                _ => terms.push(self.disjunction()?),
            }
        }
        Ok(terms)
    }

    fn disjunction(&mut self) -> Result<Expr, ParseError> {
        let mut any = vec![self.unary()?];
        while matches!(self.peek().map(|t| &t.kind), Some(TokenKind::Or)) {
            self.next();
            if self.peek().is_none() {
                return Err(self.end_error("OR needs a term after it"));
            }
            any.push(self.unary()?);
        }
        Ok(if any.len() == 1 { any.pop().unwrap_or_else(|| unreachable!()) } else { Expr::Or(any) })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek().map(|t| &t.kind) {
            Some(TokenKind::Not | TokenKind::Minus) => {
                self.next();
                if self.peek().is_none() {
                    return Err(self.end_error("NOT needs a term after it"));
                }
                Ok(Expr::Not(Box::new(self.nested(Self::unary)?)))
            }
            _ => self.primary(),
        }
    }

    fn nested(&mut self, f: fn(&mut Parser) -> Result<Expr, ParseError>) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let column = self.peek().map_or(1, |t| t.column);
            return Err(ParseError { column, message: format!("the filter nests deeper than {MAX_DEPTH} levels") });
        }
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let Some(token) = self.next() else { return Err(self.end_error("expected a comparison")) };
        match token.kind {
            TokenKind::Open => {
                let inner = self.nested(|p| p.conjunction().map(Expr::And))?;
                match self.next() {
                    Some(Token { kind: TokenKind::Close, .. }) => {}
                    Some(other) => return Err(self.error_at(&other, "expected ')'")),
                    None => return Err(self.end_error("a '(' is not closed: add ')'")),
                }
                if matches!(&inner, Expr::And(terms) if terms.is_empty()) {
                    return Err(ParseError { column: token.column, message: "empty parentheses".to_owned() });
                }
                Ok(inner)
            }
            TokenKind::Quoted(text) => Ok(Expr::Global(text)),
            TokenKind::Term { segments, text } => {
                let Some(Token { kind: TokenKind::Op(op), column }) = self.peek().cloned() else {
                    return Ok(Expr::Global(text));
                };
                self.next();
                if segments.iter().any(String::is_empty) {
                    return Err(ParseError {
                        column: token.column,
                        message: format!("field path '{text}' has an empty segment"),
                    });
                }
                let value = match self.next() {
                    Some(Token { kind: TokenKind::Value(v), .. }) => v,
                    Some(other) => {
                        return Err(self.error_at(&other, &format!("expected a value after '{}'", op.text())));
                    }
                    None => return Err(self.end_error(&format!("expected a value after '{}'", op.text()))),
                };
                let regex = match op {
                    Op::Matches | Op::NotMatches => {
                        Some(regex::RegexBuilder::new(&value).size_limit(MAX_REGEX_BYTES).build().map_err(|e| {
                            ParseError {
                                column: column + op.text().len(),
                                message: format!("invalid regular expression: {e}"),
                            }
                        })?)
                    }
                    _ => None,
                };
                if segments == ["severity"]
                    && matches!(op, Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge)
                    && severity_rank(&value).is_none()
                    && value.parse::<i64>().is_err()
                {
                    return Err(ParseError {
                        column: column + op.text().len(),
                        message: format!(
                            "'{value}' is not a severity: use DEFAULT, DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL, ALERT or EMERGENCY"
                        ),
                    });
                }
                if segments.first().is_some_and(|s| s == "timestamp" || s == "receiveTimestamp")
                    && matches!(op, Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge)
                    && value.parse::<jiff::Timestamp>().is_err()
                {
                    return Err(ParseError {
                        column: column + op.text().len(),
                        message: format!(
                            "'{value}' is not an RFC 3339 timestamp: write e.g. timestamp>=\"2026-11-24T10:00:00Z\""
                        ),
                    });
                }
                Ok(Expr::Compare(Comparison { path: segments, op, value, regex }))
            }
            other => {
                Err(self.error_at(&Token { kind: other, column: token.column }, "expected a comparison or a value"))
            }
        }
    }
}

fn describe(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Open => "'('".into(),
        TokenKind::Close => "')'".into(),
        TokenKind::And => "AND".into(),
        TokenKind::Or => "OR".into(),
        TokenKind::Not => "NOT".into(),
        TokenKind::Minus => "'-'".into(),
        TokenKind::Op(op) => format!("'{}'", op.text()),
        TokenKind::Term { text, .. } => format!("'{text}'"),
        TokenKind::Quoted(text) | TokenKind::Value(text) => format!("\"{text}\""),
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.path.join("."), self.op.text(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry() -> Value {
        json!({
            "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
            "resource": {"type": "cloud_run_revision", "labels": {"service_name": "api", "revision_name": "api-00002-abc", "location": "us-central1"}},
            "severity": "ERROR",
            "timestamp": "2026-11-24T10:00:00.123456Z",
            "textPayload": "upstream timeout after 30s",
            "labels": {"instanceId": "i-1", "run.googleapis.com/execution_name": "exec-1"},
            "httpRequest": {"requestMethod": "GET", "status": 504, "latency": "30.001s"},
        })
    }

    fn check(filter: &str) -> bool {
        Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}")).matches(&entry())
    }

    #[test]
    fn the_seed_queries_select_what_they_say() {
        assert!(check("resource.type=cloud_run_revision AND resource.labels.service_name=api AND severity>=ERROR"));
        assert!(!check("resource.type=cloud_run_revision AND resource.labels.service_name=web"));
        assert!(check("textPayload:timeout"));
        assert!(check("textPayload:TIMEOUT"));
        assert!(!check("textPayload:refused"));
        assert!(check("httpRequest.status>=500"));
        assert!(!check("httpRequest.status<500"));
        assert!(check(r#"labels."run.googleapis.com/execution_name"="exec-1""#));
        assert!(check(r#"timestamp>="2026-11-24T09:00:00Z" timestamp<"2026-11-24T11:00:00Z""#));
        assert!(!check(r#"timestamp>"2026-11-24T10:00:01Z""#));
        assert!(check("severity>WARNING"));
        assert!(!check("severity=INFO"));
        assert!(check(r#"logName="projects/p/logs/run.googleapis.com%2Fstdout""#));
        assert!(check(r#"textPayload=~"time(out)? after \d+s""#));
        assert!(check(r#"textPayload!~"^ok""#));
        assert!(check("httpRequest:*"));
        assert!(!check("jsonPayload:*"));
    }

    #[test]
    fn boolean_structure_follows_cloud_loggings_precedence() {
        assert!(check("severity=INFO OR severity=ERROR"));
        assert!(check("NOT severity=INFO"));
        assert!(check("-severity=INFO"));
        assert!(!check("NOT (severity=ERROR AND textPayload:timeout)"));
        // OR binds tighter than AND: (INFO OR ERROR) AND web -> false.
        assert!(!check("severity=INFO OR severity=ERROR resource.labels.service_name=web"));
        assert!(check("(severity=INFO OR severity=ERROR) AND resource.labels.service_name=api"));
        // A missing field: '=' is false, '!=' (NOT =) is true.
        assert!(!check("jsonPayload.user=ann"));
        assert!(check("jsonPayload.user!=ann"));
        // A bare value searches every text field.
        assert!(check("upstream"));
        assert!(check("\"api-00002\""));
        assert!(!check("nowhere"));
        assert!(check(""));
    }

    #[test]
    fn errors_point_at_the_bad_token() {
        let err = |f: &str| Filter::parse(f).unwrap_err();
        assert_eq!(err("severity>=ERROR AND").column, 20);
        assert!(err("severity>=ERROR AND").message.contains("AND needs a term after it"));
        let e = err("severity>=LOUD");
        assert_eq!(e.column, 11);
        assert!(e.message.contains("not a severity"), "{e}");
        let e = err("(severity=ERROR");
        assert!(e.message.contains("not closed"), "{e}");
        let e = err("severity=ERROR)");
        assert_eq!(e.column, 15);
        let e = err("textPayload=~\"(\"");
        assert!(e.message.contains("invalid regular expression"), "{e}");
        let e = err("timestamp>=yesterday");
        assert!(e.message.contains("RFC 3339"), "{e}");
        let e = err("textPayload:\"open");
        assert!(e.message.contains("not closed"), "{e}");
        let e = err("textPayload=");
        assert!(e.message.contains("expected a value after '='"), "{e}");
        let e = err("a ! b");
        assert!(e.message.contains("NOT"), "{e}");
        assert!(err(&"(".repeat(100)).message.contains("nests deeper"));
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_fails_cleanly(text in ".{0,200}") {
            if let Ok(filter) = Filter::parse(&text) {
                let _ = filter.matches(&entry());
            }
        }

        #[test]
        fn filter_shaped_input_never_panics(text in r#"[a-zA-Z_."():=<>!~ \-*0-9]{0,80}"#) {
            if let Ok(filter) = Filter::parse(&text) {
                let _ = filter.matches(&entry());
            }
        }
    }
}
