//! The printers: turning records (already parsed spec, raw JSON values) into gcloud-shaped text.
//!
//! Each printer mirrors the gcloud printer of the same name; key evaluation is in `project`.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::Value;

use crate::FormatError;
use crate::project::{self, sorted, text};
use crate::spec::{Align, Column, Format, Spec};

/// Renders `value` (a record, or a JSON array of records) per `spec`.
pub(crate) fn render(value: &Value, spec: &Spec) -> Result<String, FormatError> {
    let (records, list): (Vec<&Value>, bool) = match value {
        Value::Array(items) => (items.iter().collect(), true),
        one => (vec![one], false),
    };
    match spec.format {
        Format::Json => json(&records, list, spec),
        Format::Yaml | Format::Default => yaml(&records, list, spec),
        Format::Text | Format::Flattened => flattened(&records, list, spec),
        Format::Value | Format::Get => {
            let delimited = Delimited {
                separator: spec.attribute("separator").unwrap_or("\t"),
                quote: spec.flag("quote"),
                heading: false,
                ..Delimited::new(spec)
            };
            delimited.render(&records, spec)
        }
        Format::Csv => {
            let delimited = Delimited {
                separator: spec.attribute("separator").unwrap_or(","),
                quote: !spec.flag("no-quote"),
                heading: !spec.flag("no-heading"),
                ..Delimited::new(spec)
            };
            delimited.render(&records, spec)
        }
        Format::Table => table(&records, spec),
        Format::None | Format::Disable => Ok(String::new()),
    }
}

/// The record as the structured formats print it: projected when there is a projection, keys sorted.
fn shape(record: &Value, spec: &Spec) -> Value {
    if spec.columns.is_empty() { sorted(record) } else { sorted(&project::project(record, &spec.columns)) }
}

fn require_projection(spec: &Spec) -> Result<(), FormatError> {
    if spec.columns.is_empty() {
        return Err(FormatError::ProjectionRequired { format: spec.format.name() });
    }
    Ok(())
}

/// Pretty JSON with 2-space indents; a list prints as one array (`[]` when empty).
fn json(records: &[&Value], list: bool, spec: &Spec) -> Result<String, FormatError> {
    let mut shaped: Vec<Value> = records.iter().map(|record| shape(record, spec)).collect();
    let value = if list { Value::Array(shaped) } else { shaped.pop().unwrap_or_default() };
    let mut out = serde_json::to_string_pretty(&value).map_err(|source| FormatError::Json { source })?;
    out.push('\n');
    Ok(out)
}

/// One YAML document per record; each record of a list starts with `---`.
fn yaml(records: &[&Value], list: bool, spec: &Spec) -> Result<String, FormatError> {
    let mut out = String::new();
    for record in records {
        if list {
            out.push_str("---\n");
        }
        out.push_str(&serde_norway::to_string(&shape(record, spec)).map_err(|source| FormatError::Yaml { source })?);
    }
    Ok(out)
}

/// gcloud's `flattened` (alias `text`): one `key.sub[0]: value` line per leaf, values aligned unless
/// `no-pad`; `separator=` replaces `": "`. Each record of a list starts with `---`.
fn flattened(records: &[&Value], list: bool, spec: &Spec) -> Result<String, FormatError> {
    let separator = spec.attribute("separator").unwrap_or(": ");
    let pad = !spec.flag("no-pad");
    let mut out = String::new();
    for record in records {
        if list {
            out.push_str("---\n");
        }
        let mut lines = Vec::new();
        flatten(&shape(record, spec), String::new(), &mut lines);
        let width = if pad { lines.iter().map(|(key, _)| key.chars().count()).max().unwrap_or(0) } else { 0 };
        for (key, value) in lines {
            let padding = if pad { width - key.chars().count() } else { 0 };
            out.push_str(&format!("{key}{separator}{:padding$}{}\n", "", quote_line(&value)));
        }
    }
    Ok(out)
}

fn flatten(value: &Value, name: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Array(items) if items.is_empty() => out.push((name, "[]".to_owned())),
        Value::Object(map) if map.is_empty() => out.push((name, "{}".to_owned())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(item, format!("{name}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter().filter(|(_, item)| !item.is_null()) {
                flatten(item, if name.is_empty() { key.clone() } else { format!("{name}.{key}") }, out);
            }
        }
        scalar => out.push((name, text(scalar))),
    }
}

/// Quotes a flattened value that would not read back as one line: newlines, leading/trailing space.
fn quote_line(value: &str) -> String {
    if !value.contains('\n') && !value.starts_with(char::is_whitespace) && !value.ends_with(char::is_whitespace) {
        return value.to_owned();
    }
    let mut out = String::from('"');
    for c in value.chars() {
        match c {
            '\\' | '"' => out.extend(['\\', c]),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `value` and `csv`: one line per record, projected values joined by the separator; list items joined by
/// the delimiter and objects printed as `k=v` pairs.
#[derive(Debug)]
struct Delimited<'a> {
    separator: &'a str,
    delimiter: &'a str,
    terminator: &'a str,
    quote: bool,
    heading: bool,
}

impl<'a> Delimited<'a> {
    fn new(spec: &'a Spec) -> Self {
        Delimited {
            separator: "\t",
            delimiter: spec.attribute("delimiter").unwrap_or(";"),
            terminator: spec.attribute("terminator").unwrap_or("\n"),
            quote: false,
            heading: false,
        }
    }

    fn render(&self, records: &[&Value], spec: &Spec) -> Result<String, FormatError> {
        require_projection(spec)?;
        let mut out = String::new();
        if self.heading && !records.is_empty() {
            let labels: Vec<String> = labels(&spec.columns).iter().map(|l| self.quote(&l.to_lowercase())).collect();
            out.push_str(&labels.join(self.separator));
            out.push_str(self.terminator);
        }
        for record in records {
            let cells: Vec<String> = spec.columns.iter().map(|c| self.cell(&project::value(record, c))).collect();
            out.push_str(&cells.join(self.separator));
            out.push_str(self.terminator);
        }
        Ok(out)
    }

    fn cell(&self, value: &Value) -> String {
        let joined: Vec<String> = match value {
            Value::Array(items) => items.iter().map(|item| self.quote(&text(item))).collect(),
            Value::Object(map) => {
                let mut pairs: Vec<_> = map.iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(b.0));
                pairs.into_iter().map(|(k, v)| self.quote(&format!("{k}={}", text(v)))).collect()
            }
            scalar => return self.quote(&text(scalar)),
        };
        joined.join(self.delimiter)
    }

    fn quote(&self, field: &str) -> String {
        let special = [self.delimiter, "\"", self.separator, self.terminator];
        let needs = special.iter().any(|s| !s.is_empty() && field.contains(s))
            || field.starts_with(char::is_whitespace)
            || field.ends_with(char::is_whitespace);
        if self.quote && needs { format!("\"{}\"", field.replace('"', "\"\"")) } else { field.to_owned() }
    }
}

/// Left-aligned columns under ANGRY_SNAKE_CASE headings, at least `pad` (default 2) spaces apart, trailing
/// space trimmed. Attributes: `no-heading`, `pad=N`, `title=TEXT`; key attributes `sort=N`, `reverse`,
/// `align=`. Prints nothing for an empty list.
fn table(records: &[&Value], spec: &Spec) -> Result<String, FormatError> {
    require_projection(spec)?;
    let mut rows: Vec<Vec<String>> =
        records.iter().map(|record| spec.columns.iter().map(|c| text(&project::value(record, c))).collect()).collect();
    if rows.is_empty() {
        return Ok(String::new());
    }
    sort_rows(&mut rows, &spec.columns);
    let heading = (!spec.flag("no-heading")).then(|| labels(&spec.columns));
    let pad: usize = spec.attribute("pad").and_then(|pad| pad.parse().ok()).unwrap_or(2);
    let mut widths = vec![0; spec.columns.len()];
    for row in heading.iter().chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    if let Some(title) = spec.attribute("title") {
        let total = widths.iter().sum::<usize>() + pad * widths.len().saturating_sub(1);
        out.push_str(format!("{title:^total$}").trim_end());
        out.push('\n');
    }
    for row in heading.iter().chain(&rows) {
        let mut line = String::new();
        for (i, ((cell, &width), column)) in row.iter().zip(&widths).zip(&spec.columns).enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(pad));
            }
            line.push_str(&match column.align {
                Align::Left => format!("{cell:<width$}"),
                Align::Center => format!("{cell:^width$}"),
                Align::Right => format!("{cell:>width$}"),
            });
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Sorts by the `sort=N` columns, lowest N first, each optionally `reverse`d (gcloud compares the text).
fn sort_rows(rows: &mut [Vec<String>], columns: &[Column]) {
    let mut order: Vec<(u32, usize, bool)> =
        columns.iter().enumerate().filter_map(|(i, c)| c.sort.map(|n| (n, i, c.reverse))).collect();
    if order.is_empty() {
        return;
    }
    order.sort_by_key(|&(n, i, _)| (n, i));
    rows.sort_by(|a, b| {
        order
            .iter()
            .map(|&(_, i, reverse)| {
                let ordering = a.get(i).cmp(&b.get(i));
                if reverse { ordering.reverse() } else { ordering }
            })
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
    });
}

/// Column headings: `label=` when given, else the key's last name in ANGRY_SNAKE_CASE, prefixed with
/// earlier names while that collides with a previous heading (`metadata.name, spec.name` gives `NAME`,
/// `SPEC_NAME`), as gcloud does.
pub(crate) fn labels(columns: &[Column]) -> Vec<String> {
    let mut used = HashSet::new();
    columns
        .iter()
        .map(|column| {
            if let Some(label) = &column.label {
                return label.clone();
            }
            let mut names: Vec<&str> = column.path.iter().rev().filter_map(|s| s.key()).collect();
            if names.is_empty() {
                names.extend(column.transforms.first().map(|t| t.name()));
            }
            let mut label = String::new();
            for name in names {
                let snake = angry_snake_case(name);
                label = if label.is_empty() { snake } else { format!("{snake}_{label}") };
                if used.insert(label.clone()) {
                    break;
                }
            }
            label
        })
        .collect()
}

/// `latestReadyRevisionName` -> `LATEST_READY_REVISION_NAME`, `URLMap` -> `URL_MAP`, like gcloud's
/// `((?<=[a-z0-9])[A-Z]+|(?!^)[A-Z](?=[a-z]))` -> `_\1`.
fn angry_snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let prev = i.checked_sub(1).and_then(|p| chars.get(p));
        if c.is_ascii_uppercase() && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit()) {
            out.push('_');
            while let Some(&upper) = chars.get(i).filter(|c| c.is_ascii_uppercase()) {
                out.push(upper);
                i += 1;
            }
            continue;
        }
        if c.is_ascii_uppercase() && prev.is_some() && chars.get(i + 1).is_some_and(char::is_ascii_lowercase) {
            out.push('_');
        }
        out.push(c);
        i += 1;
    }
    out.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    #[test]
    fn angry_snake_case_matches_gcloud() {
        assert_eq!(angry_snake_case("latestReadyRevisionName"), "LATEST_READY_REVISION_NAME");
        assert_eq!(angry_snake_case("URLMap"), "URL_MAP");
        assert_eq!(angry_snake_case("uri"), "URI");
        assert_eq!(angry_snake_case("ipV4"), "IP_V4");
        assert_eq!(angry_snake_case("fooURLMap"), "FOO_URLMAP");
    }

    #[test]
    fn labels_are_disambiguated_with_parent_names() {
        let spec = parse("table(metadata.name, spec.template.metadata.name, status.url:label=Url, len())").unwrap();
        assert_eq!(labels(&spec.columns), ["NAME", "METADATA_NAME", "Url", "LEN"]);
    }

    #[test]
    fn flattened_quotes_values_that_are_not_one_clean_line() {
        assert_eq!(quote_line("plain text"), "plain text");
        assert_eq!(quote_line(" a\"b\n"), r#"" a\"b\n""#);
    }
}
