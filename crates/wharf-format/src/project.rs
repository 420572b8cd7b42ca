//! Evaluating keys against a resource: resolving a column's path (with gcloud's camelCase/snake_case
//! leniency and implicit list slices), applying its transforms, and projecting a resource down to a
//! set of keys for the structured formats. How values are printed is `printers`' job.

use serde_json::{Map, Value};

use crate::spec::{Column, Segment, Transform};

/// The value of `column` in `record` after its transforms; `Null` when the key is missing.
pub(crate) fn value(record: &Value, column: &Column) -> Value {
    let resolved = resolve(record, &column.path).unwrap_or(Value::Null);
    column.transforms.iter().fold(resolved, |value, transform| apply(transform, value))
}

fn resolve(value: &Value, path: &[Segment]) -> Option<Value> {
    let Some((segment, rest)) = path.split_first() else {
        return Some(value.clone());
    };
    match (segment, value) {
        (Segment::Key(key), Value::Object(map)) => resolve(lookup(map, key)?.1, rest),
        (Segment::Index(i), Value::Array(items)) => resolve(items.get(index(*i, items.len())?)?, rest),
        // `[]`, or a key applied to a list (gcloud's implicit slice), maps over the items.
        (Segment::Slice | Segment::Key(_), Value::Array(items)) => {
            let rest = if *segment == Segment::Slice { rest } else { path };
            let flatten = rest.contains(&Segment::Slice);
            let mut out = Vec::new();
            for item in items.iter().filter_map(|item| resolve(item, rest)) {
                match item {
                    Value::Array(inner) if flatten => out.extend(inner),
                    other => out.push(other),
                }
            }
            Some(Value::Array(out))
        }
        _ => None,
    }
}

/// Finds `key` in `map` as written, else as camelCase, else as snake_case (gcloud accepts either).
fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<(&'a String, &'a Value)> {
    map.get_key_value(key)
        .or_else(|| map.get_key_value(&camel_case(key)))
        .or_else(|| map.get_key_value(&snake_case(key)))
}

fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Resolves a possibly negative list index against `len`.
fn index(i: i64, len: usize) -> Option<usize> {
    let n = usize::try_from(i.unsigned_abs()).ok()?;
    if i >= 0 { (n < len).then_some(n) } else { len.checked_sub(n) }
}

fn apply(transform: &Transform, value: Value) -> Value {
    match (transform, value) {
        (Transform::Len, value) => Value::from(match &value {
            Value::String(s) => s.chars().count(),
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        }),
        (Transform::Join(separator), Value::Array(items)) => {
            Value::String(items.iter().map(text).collect::<Vec<_>>().join(separator))
        }
        (Transform::YesNo { yes, no }, value) => {
            if truthy(&value) {
                yes.clone().map_or(value, Value::String)
            } else {
                Value::String(no.clone())
            }
        }
        // The string transforms apply to each item of a list.
        (Transform::Basename | Transform::Lower | Transform::Upper, Value::Array(items)) => {
            Value::Array(items.into_iter().map(|item| apply(transform, item)).collect())
        }
        (Transform::Basename, Value::Null) => Value::String(String::new()),
        (Transform::Basename, value) => {
            let text = text(&value);
            Value::String(text.rsplit(['/', '\\']).next().unwrap_or_default().to_owned())
        }
        (Transform::Lower, Value::String(s)) => Value::String(s.to_lowercase()),
        (Transform::Upper, Value::String(s)) => Value::String(s.to_uppercase()),
        (_, value) => value,
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// A value as gcloud prints a cell: null is empty, booleans are `True`/`False` (Python's spelling),
/// floats have at most 6 significant digits, and lists and objects are compact JSON.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => float_text(n.as_f64().unwrap_or_default()),
        Value::Number(n) => n.to_string(),
        other => sorted(other).to_string(),
    }
}

/// Approximates gcloud's `'{:.6}'` float rendering: `100.0`, `0.333333`.
fn float_text(f: f64) -> String {
    let rounded: f64 = format!("{f:.5e}").parse().unwrap_or(f);
    if rounded.fract() == 0.0 && rounded.abs() < 1e15 { format!("{rounded:.1}") } else { rounded.to_string() }
}

/// A copy of `value` with every object's keys in sorted order, as gcloud prints them.
pub(crate) fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// `record` reduced to the keys of `columns`, keeping their nested structure (for `yaml(...)` and
/// `json(...)`); keys missing from the record are left out.
pub(crate) fn project(record: &Value, columns: &[Column]) -> Value {
    let mut tree = Tree::default();
    for column in columns {
        tree.insert(&column.path, &column.transforms);
    }
    tree.project(record).unwrap_or_else(|| Value::Object(Map::new()))
}

/// The union of the projection's key paths, so one walk over the record projects all of them.
#[derive(Debug, Default)]
struct Tree<'a> {
    /// Set when a key ends here: the whole value is kept, after these transforms.
    leaf: Option<&'a [Transform]>,
    keys: Vec<(&'a str, Tree<'a>)>,
    every: Option<Box<Tree<'a>>>,
    at: Vec<(i64, Tree<'a>)>,
}

impl<'a> Tree<'a> {
    fn insert(&mut self, path: &'a [Segment], transforms: &'a [Transform]) {
        let Some((segment, rest)) = path.split_first() else {
            self.leaf.get_or_insert(transforms);
            return;
        };
        let child = match segment {
            Segment::Key(key) => child(&mut self.keys, key.as_str()),
            Segment::Index(i) => child(&mut self.at, *i),
            Segment::Slice => self.every.get_or_insert_default(),
        };
        child.insert(rest, transforms);
    }

    fn project(&self, value: &Value) -> Option<Value> {
        if let Some(transforms) = self.leaf {
            return Some(transforms.iter().fold(value.clone(), |value, transform| apply(transform, value)));
        }
        match value {
            Value::Object(map) => self.project_object(map),
            Value::Array(items) => {
                let projected = items.iter().enumerate().filter_map(|(i, item)| {
                    let indexed = self.at.iter().filter(|(n, _)| index(*n, items.len()) == Some(i));
                    let by_index = indexed.map(|(_, tree)| tree.project(item));
                    let by_slice = self.every.iter().map(|tree| tree.project(item));
                    let implicit = item.as_object().map(|map| self.project_object(map));
                    by_index.chain(by_slice).chain(implicit).flatten().reduce(merge)
                });
                let out: Vec<Value> = projected.collect();
                (!out.is_empty()).then_some(Value::Array(out))
            }
            _ => None,
        }
    }

    fn project_object(&self, map: &Map<String, Value>) -> Option<Value> {
        let out: Map<String, Value> = self
            .keys
            .iter()
            .filter_map(|(key, tree)| {
                let (name, value) = lookup(map, key)?;
                Some((name.clone(), tree.project(value)?))
            })
            .collect();
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

fn child<'v, 'a, K: PartialEq>(children: &'v mut Vec<(K, Tree<'a>)>, key: K) -> &'v mut Tree<'a> {
    let at = match children.iter().position(|(k, _)| *k == key) {
        Some(at) => at,
        None => {
            children.push((key, Tree::default()));
            children.len() - 1
        }
    };
    &mut children[at].1
}

/// Deep-merges two projections of the same value.
fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (key, value) in b {
                let merged = match a.remove(&key) {
                    Some(old) => merge(old, value),
                    None => value,
                };
                a.insert(key, merged);
            }
            Value::Object(a)
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            Value::Array(a.into_iter().zip(b).map(|(a, b)| merge(a, b)).collect())
        }
        (_, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::spec::parse;

    fn values(record: &Value, spec: &str) -> Vec<Value> {
        parse(spec).unwrap().columns.iter().map(|column| value(record, column)).collect()
    }

    #[test]
    fn resolves_paths_indexes_and_slices() {
        let record = json!({"a": {"bC": [{"d": 1, "e": ["x", "y"]}, {"d": 2, "e": ["z"]}]}});
        assert_eq!(
            values(&record, "value(a.bC[0].d, a.bC[-1].d, a.bC[].d, a.bC.d, a.b_c[1].d, a.bC[].e[], a.bC[5].d, x.y)"),
            vec![
                json!(1),
                json!(2),
                json!([1, 2]),
                json!([1, 2]),
                json!(2),
                json!(["x", "y", "z"]),
                json!(null),
                json!(null)
            ]
        );
    }

    #[test]
    fn snake_case_keys_in_the_record_match_camel_case_keys_in_the_spec() {
        let record = json!({"latest_ready": "r1"});
        assert_eq!(values(&record, "value(latestReady)"), vec![json!("r1")]);
    }

    #[test]
    fn transforms() {
        let record = json!({"name": "projects/p/services/hello", "t": [{"r": "a/b"}, {"r": "c/d"}], "f": false});
        assert_eq!(
            values(
                &record,
                "value(name.basename(), t.len(), t[].r.basename(), name.upper(), t[].r.join(;), f.yesno(on))"
            ),
            vec![
                json!("hello"),
                json!(2),
                json!(["b", "d"]),
                json!("PROJECTS/P/SERVICES/HELLO"),
                json!("a/b;c/d"),
                json!("No")
            ]
        );
        assert_eq!(values(&record, "value(missing.basename(), missing.len())"), vec![json!(""), json!(0)]);
    }

    #[test]
    fn text_follows_gcloud() {
        assert_eq!(text(&json!(true)), "True");
        assert_eq!(text(&json!(null)), "");
        assert_eq!(text(&json!(100.0)), "100.0");
        assert_eq!(text(&json!(1.0 / 3.0)), "0.333333");
        assert_eq!(text(&json!({"b": 1, "a": [2]})), r#"{"a":[2],"b":1}"#);
    }

    #[test]
    fn projection_merges_keys_of_the_same_list() {
        let record = json!({"s": {"t": [{"p": 1, "r": "a", "x": 0}, {"p": 2, "r": "b"}], "u": "url"}, "m": 1});
        let columns = parse("yaml(s.t[].p, s.t.r, s.t[0].x, nothing)").unwrap().columns;
        assert_eq!(project(&record, &columns), json!({"s": {"t": [{"p": 1, "r": "a", "x": 0}, {"p": 2, "r": "b"}]}}));
    }
}
