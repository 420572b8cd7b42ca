//! Parsing of a gcloud format spec, `NAME[ATTRIBUTES](KEYS)`, into a small AST ([`Spec`]).
//!
//! This module only checks syntax and names (formats, transforms, key attributes); it never looks at
//! a resource. Evaluating keys is `project`'s job and printing is `printers`'.

use crate::FormatError;

/// The output formats this crate implements, by their gcloud names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Default,
    Disable,
    Flattened,
    Get,
    Json,
    None,
    Table,
    Text,
    Value,
    Yaml,
}

impl Format {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "csv" => Self::Csv,
            "default" => Self::Default,
            "disable" => Self::Disable,
            "flattened" => Self::Flattened,
            "get" => Self::Get,
            "json" => Self::Json,
            "none" => Self::None,
            "table" => Self::Table,
            "text" => Self::Text,
            "value" => Self::Value,
            "yaml" => Self::Yaml,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Default => "default",
            Self::Disable => "disable",
            Self::Flattened => "flattened",
            Self::Get => "get",
            Self::Json => "json",
            Self::None => "none",
            Self::Table => "table",
            Self::Text => "text",
            Self::Value => "value",
            Self::Yaml => "yaml",
        }
    }
}

/// A parsed format spec.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) format: Format,
    /// Printer attributes in `[...]`, e.g. `("separator", Some(","))` or `("no-heading", None)`.
    pub(crate) attributes: Vec<(String, Option<String>)>,
    /// The projection in `(...)`; empty when there is none.
    pub(crate) columns: Vec<Column>,
}

impl Spec {
    /// Whether the printer attribute `name` was given (with or without a value).
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.attributes.iter().any(|(n, _)| n == name)
    }

    /// The value of the last `name=VALUE` printer attribute.
    pub(crate) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }
}

/// One projection key with its transforms and attributes, e.g. `name.basename():label=SERVICE`.
#[derive(Debug, Default)]
pub(crate) struct Column {
    /// The key as written (without attributes), for messages.
    pub(crate) key: String,
    pub(crate) path: Vec<Segment>,
    pub(crate) transforms: Vec<Transform>,
    pub(crate) label: Option<String>,
    pub(crate) sort: Option<u32>,
    pub(crate) reverse: bool,
    pub(crate) align: Align,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// `name`: a field of an object (on a list, applies to every item).
    Key(String),
    /// `[N]` or `[-N]`: one list item, counted from the end when negative.
    Index(i64),
    /// `[]`: every list item.
    Slice,
}

impl Segment {
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Self::Key(key) => Some(key),
            Self::Index(_) | Self::Slice => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Align {
    #[default]
    Left,
    Center,
    Right,
}

/// The transforms that may follow a key, e.g. `name.basename()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transform {
    Basename,
    Join(String),
    Len,
    Lower,
    Upper,
    YesNo { yes: Option<String>, no: String },
}

/// The supported transforms, as listed in error messages.
pub(crate) const TRANSFORMS: &str = "basename(), join([SEPARATOR]), len(), lower(), upper(), yesno([YES], [NO])";

impl Transform {
    fn new(name: &str, args: Vec<String>, key: &str) -> Result<Self, FormatError> {
        let given = args.len();
        let at_most = |max: usize, accepted: &'static str| {
            if given > max {
                Err(FormatError::TransformArguments {
                    transform: name.to_owned(),
                    key: key.to_owned(),
                    accepted,
                    given,
                })
            } else {
                Ok(())
            }
        };
        let mut args = args.into_iter();
        Ok(match name {
            "basename" => at_most(0, "no arguments").map(|()| Self::Basename)?,
            "len" => at_most(0, "no arguments").map(|()| Self::Len)?,
            "lower" => at_most(0, "no arguments").map(|()| Self::Lower)?,
            "upper" => at_most(0, "no arguments").map(|()| Self::Upper)?,
            "join" => {
                at_most(1, "at most one argument, the separator (default '/')")?;
                Self::Join(args.next().unwrap_or_else(|| "/".to_owned()))
            }
            "yesno" => {
                at_most(2, "at most two arguments, YES and NO")?;
                Self::YesNo { yes: args.next(), no: args.next().unwrap_or_else(|| "No".to_owned()) }
            }
            _ => return Err(FormatError::UnknownTransform { transform: name.to_owned(), key: key.to_owned() }),
        })
    }

    /// The gcloud name, used for default table headings of keyless columns.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Basename => "basename",
            Self::Join(_) => "join",
            Self::Len => "len",
            Self::Lower => "lower",
            Self::Upper => "upper",
            Self::YesNo { .. } => "yesno",
        }
    }
}

/// Parses `text` as `NAME[ATTRIBUTES](KEYS)`; the attribute list and the projection are optional.
pub(crate) fn parse(text: &str) -> Result<Spec, FormatError> {
    let mut p = Parser { text, chars: text.chars().collect(), pos: 0 };
    p.skip_space();
    let name = p.take_while(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() {
        let problem = if p.peek().is_none() { "the format is empty" } else { "expected a format name" };
        return Err(p.error(problem));
    }
    let format = Format::from_name(&name).ok_or(FormatError::UnknownFormat { name })?;
    p.skip_space();
    let attributes = if p.eat('[') { p.attributes()? } else { Vec::new() };
    p.skip_space();
    let columns = if p.eat('(') { p.columns()? } else { Vec::new() };
    p.skip_space();
    match p.peek() {
        None => Ok(Spec { format, attributes, columns }),
        Some(c) => Err(p.error(format!("unexpected '{c}' after the format"))),
    }
}

/// A cursor over the spec's characters. Positions are character indexes, so no slicing can panic.
struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += 1;
        }
        found
    }

    fn skip_space(&mut self) {
        self.take_while(char::is_whitespace);
    }

    fn take_while(&mut self, mut keep: impl FnMut(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&mut keep) {
            self.pos += 1;
        }
        self.since(start)
    }

    fn since(&self, start: usize) -> String {
        self.chars.get(start..self.pos).unwrap_or_default().iter().collect()
    }

    fn error(&self, problem: impl Into<String>) -> FormatError {
        self.error_at(self.pos, problem)
    }

    fn error_at(&self, pos: usize, problem: impl Into<String>) -> FormatError {
        FormatError::Syntax { spec: self.text.to_owned(), column: pos + 1, problem: problem.into() }
    }

    /// An error for a list that ended without `closer`, or `otherwise` when something else is in the way.
    fn unclosed_or(&self, closer: char, list: &str, otherwise: &str) -> FormatError {
        match self.peek() {
            None => self.error(format!("missing '{closer}' to close the {list}")),
            Some(c) => self.error(format!("unexpected '{c}': {otherwise}")),
        }
    }

    /// Reads a quoted string (`'...'` or `"..."`, with `\n`, `\t` and `\<char>` escapes) or a bare word
    /// ending before whitespace (unless `spaces`; then trailing space is trimmed) or a char in `stops`.
    fn word(&mut self, stops: &str, spaces: bool) -> Result<String, FormatError> {
        self.skip_space();
        let open = self.pos;
        let Some(quote @ ('\'' | '"')) = self.peek() else {
            let word = self.take_while(|c| !stops.contains(c) && (spaces || !c.is_whitespace()));
            return Ok(word.trim_end().to_owned());
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or_else(|| self.error_at(open, "unterminated quoted string"))?;
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let escaped = self.peek().ok_or_else(|| self.error_at(open, "unterminated quoted string"))?;
                    self.pos += 1;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
    }

    /// Parses `name[=value], ...]` after the `[`.
    fn attributes(&mut self) -> Result<Vec<(String, Option<String>)>, FormatError> {
        let mut attributes = Vec::new();
        loop {
            let name = self.word("=,[]()", false)?;
            self.skip_space();
            if name.is_empty() {
                if self.eat(']') {
                    return Ok(attributes);
                }
                return Err(self.unclosed_or(']', "attribute list", "expected an attribute name"));
            }
            let value = if self.eat('=') { Some(self.word(",]", true)?) } else { None };
            attributes.push((name, value));
            self.skip_space();
            if !self.eat(',') {
                return if self.eat(']') {
                    Ok(attributes)
                } else {
                    Err(self.unclosed_or(']', "attribute list", "expected ',' or ']' after an attribute"))
                };
            }
        }
    }

    /// Parses `key, key, ...)` after the `(`.
    fn columns(&mut self) -> Result<Vec<Column>, FormatError> {
        self.skip_space();
        let mut columns = Vec::new();
        if self.eat(')') {
            return Ok(columns);
        }
        loop {
            columns.push(self.column()?);
            self.skip_space();
            if !self.eat(',') {
                return if self.eat(')') {
                    Ok(columns)
                } else {
                    Err(self.unclosed_or(')', "key list", "expected ',' or ')' after a key"))
                };
            }
        }
    }

    /// Parses one `seg.seg[N].transform(args):attr=value` key.
    fn column(&mut self) -> Result<Column, FormatError> {
        self.skip_space();
        if self.peek().is_none() {
            return Err(self.error("missing ')' to close the key list"));
        }
        let start = self.pos;
        let mut column = Column::default();
        loop {
            let before = self.pos;
            let name = self.word(".[]():,=\"'", false)?;
            if !name.is_empty() && self.eat('(') {
                let args = self.arguments()?;
                column.transforms.push(Transform::new(&name, args, self.since(start).trim())?);
            } else if name.is_empty() && self.peek() != Some('[') {
                let first = column.path.is_empty() && column.transforms.is_empty();
                return Err(self.error(if first { "empty key" } else { "empty key name after '.'" }));
            } else if !column.transforms.is_empty() {
                return Err(self.error_at(before, "a key must come before its transforms, e.g. name.basename()"));
            } else {
                if !name.is_empty() {
                    column.path.push(Segment::Key(name));
                }
                while self.eat('[') {
                    column.path.push(self.index()?);
                }
            }
            if !self.eat('.') {
                break;
            }
        }
        column.key = self.since(start).trim().to_owned();
        self.skip_space();
        while self.eat(':') {
            self.key_attribute(&mut column)?;
            self.skip_space();
        }
        Ok(column)
    }

    /// Parses `N]`, `-N]` or `]` after a `[`.
    fn index(&mut self) -> Result<Segment, FormatError> {
        let start = self.pos;
        let inner = self.take_while(|c| c != ']' && c != ')' && c != ',');
        if !self.eat(']') {
            return Err(self.unclosed_or(']', "list index", "expected ']' after the list index"));
        }
        let inner = inner.trim();
        if inner.is_empty() {
            return Ok(Segment::Slice);
        }
        inner.parse().map(Segment::Index).map_err(|_| {
            self.error_at(start, format!("list index '{inner}' is not an integer; use [N], [-N], or [] for all items"))
        })
    }

    /// Parses `arg, arg, ...)` after a transform's `(`.
    fn arguments(&mut self) -> Result<Vec<String>, FormatError> {
        self.skip_space();
        let mut args = Vec::new();
        if self.eat(')') {
            return Ok(args);
        }
        loop {
            args.push(self.word(",)", true)?);
            self.skip_space();
            if !self.eat(',') {
                return if self.eat(')') {
                    Ok(args)
                } else {
                    Err(self.unclosed_or(')', "transform arguments", "expected ',' or ')' after an argument"))
                };
            }
        }
    }

    /// Parses one `name[=value]` key attribute after its `:`.
    fn key_attribute(&mut self, column: &mut Column) -> Result<(), FormatError> {
        let name = self.word("=:,()", false)?;
        let value = if self.eat('=') { Some(self.word(":,)", true)?) } else { None };
        let invalid = |expected: &'static str| FormatError::InvalidKeyAttribute {
            attribute: name.clone(),
            key: column.key.clone(),
            expected,
        };
        match (name.as_str(), value) {
            ("label", Some(label)) => column.label = Some(label),
            ("sort", Some(n)) => column.sort = Some(n.parse().map_err(|_| invalid("a number, e.g. sort=1"))?),
            ("align", Some(align)) => {
                column.align = match align.as_str() {
                    "left" => Align::Left,
                    "center" => Align::Center,
                    "right" => Align::Right,
                    _ => return Err(invalid("left, center or right")),
                }
            }
            ("reverse", None) => column.reverse = true,
            ("no-reverse", None) => column.reverse = false,
            // Accepted for compatibility; they only matter for terminal-width wrapping and empty columns.
            ("optional" | "no-optional" | "wrap" | "no-wrap", None) => {}
            ("label" | "sort" | "align", None) => return Err(invalid("a value, e.g. label=NAME")),
            ("reverse" | "no-reverse" | "optional" | "no-optional" | "wrap" | "no-wrap", Some(_)) => {
                return Err(invalid("no value"));
            }
            _ => return Err(FormatError::UnknownKeyAttribute { attribute: name, key: column.key.clone() }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_attributes_and_keys() {
        let spec = parse(" table[no-heading, title='My services'](name.basename():label=SERVICE:sort=1, x[0].y, z[]) ")
            .unwrap();
        assert_eq!(spec.format, Format::Table);
        assert_eq!(
            spec.attributes,
            vec![("no-heading".to_owned(), None), ("title".to_owned(), Some("My services".to_owned()))]
        );
        assert_eq!(spec.columns.len(), 3);
        let name = &spec.columns[0];
        assert_eq!(name.key, "name.basename()");
        assert_eq!(name.path, vec![Segment::Key("name".into())]);
        assert_eq!(name.transforms, vec![Transform::Basename]);
        assert_eq!(name.label.as_deref(), Some("SERVICE"));
        assert_eq!(name.sort, Some(1));
        assert_eq!(spec.columns[1].path, vec![Segment::Key("x".into()), Segment::Index(0), Segment::Key("y".into())]);
        assert_eq!(spec.columns[2].path, vec![Segment::Key("z".into()), Segment::Slice]);
    }

    #[test]
    fn quoted_segments_and_arguments() {
        let spec = parse(r#"value(metadata.annotations.'run.googleapis.com/ingress', a.join(', '), b.yesno(y, "n"))"#)
            .unwrap();
        assert_eq!(
            spec.columns[0].path,
            vec![
                Segment::Key("metadata".into()),
                Segment::Key("annotations".into()),
                Segment::Key("run.googleapis.com/ingress".into())
            ]
        );
        assert_eq!(spec.columns[1].transforms, vec![Transform::Join(", ".into())]);
        assert_eq!(spec.columns[2].transforms, vec![Transform::YesNo { yes: Some("y".into()), no: "n".into() }]);
    }

    #[test]
    fn separator_attribute_value_is_unquoted() {
        let spec = parse("value[separator=',', terminator=\"\\n\"](a)").unwrap();
        assert_eq!(spec.attribute("separator"), Some(","));
        assert_eq!(spec.attribute("terminator"), Some("\n"));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let column = |text: &str| match parse(text) {
            Err(FormatError::Syntax { column, .. }) => column,
            other => panic!("expected a syntax error for {text:?}, got {other:?}"),
        };
        assert_eq!(column("table(,)"), 7);
        assert_eq!(column("value(a"), 8);
        assert_eq!(column("json(a.b["), 10);
        assert_eq!(column("value(a[x])"), 9);
        assert_eq!(column("value(a) b"), 10);
        assert_eq!(column("value(a..b)"), 9);
    }
}
