//! gcloud-compatible `--format` output, so scripts written for `gcloud run ... --format ...` work with
//! `wharf run ...`.
//!
//! [`render`] takes a resource (or a JSON array of resources) as a [`serde_json::Value`] and a format
//! spec, and returns the text to print. It is responsible for parsing the spec and printing; it is not
//! responsible for fetching resources, `--filter`, `--sort-by`, `--limit` or `--flatten`.
//!
//! # Spec grammar
//!
//! ```text
//! spec      := NAME [ '[' attribute (',' attribute)* ']' ] [ '(' [ key (',' key)* ] ')' ]
//! attribute := [no-]name [ '=' value ]                 e.g. separator=',', no-heading, title="Services"
//! key       := path ( '.' transform '(' args ')' )* ( ':' key-attribute )*
//! path      := segment ( '.' segment )*                 e.g. status.conditions[0].type, traffic[].percent
//! segment   := name | 'quoted.name' | segment '[' [ N | -N ] ']'
//! key-attribute := label=NAME | sort=N | reverse | align=left|center|right
//! ```
//!
//! Key names match the resource's JSON field names (camelCase) and also their snake_case spelling. A
//! key applied to a list maps over its items, like `[]`. Unknown printer attributes are ignored, as in
//! gcloud; unknown formats, transforms and key attributes are errors.
//!
//! # Formats
//!
//! - `json`: pretty JSON, 2-space indents, keys sorted; a list prints as one array.
//! - `yaml` (alias `default`): YAML, keys sorted; each record of a list starts with `---`.
//! - `text` (alias `flattened`): `key.sub[0]: value` lines, values aligned (`no-pad` to not align).
//! - `value` (alias `get`): one line per record, values tab-separated, list items `;`-separated.
//!   Attributes `separator=`, `delimiter=`, `terminator=`, `quote`.
//! - `csv`: like `value` with `,` separators, a lower-case heading line and quoting.
//! - `table`: aligned columns under ANGRY_SNAKE_CASE headings (`:label=` overrides), 2 spaces apart.
//!   Attributes `no-heading`, `pad=N`, `title=`; key attributes `sort=N`, `reverse`, `align=`.
//! - `none`, `disable`: print nothing.
//!
//! `json(...)`, `yaml(...)` and `text(...)` print only the projected keys, keeping their nesting;
//! `value`, `csv` and `table` require a projection.
//!
//! Transforms: `basename()`, `join([SEP])`, `len()`, `lower()`, `upper()`, `yesno([YES], [NO])`.
//!
//! ```
//! let service = serde_json::json!({"metadata": {"name": "hello"}, "status": {"url": "https://hello.example"}});
//! assert_eq!(wharf_format::render(&service, "value(status.url)").unwrap(), "https://hello.example\n");
//! ```

mod printers;
mod project;
mod spec;

/// The format names [`render`] accepts.
pub const SUPPORTED_FORMATS: &[&str] =
    &["csv", "default", "disable", "flattened", "get", "json", "none", "table", "text", "value", "yaml"];

const SPEC_FORM: &str = "NAME[ATTRIBUTE,...](KEY[.TRANSFORM()][:label=NAME], ...), e.g. 'value(status.url)'";

/// Why a format spec could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The spec does not follow the grammar.
    #[error("invalid format '{spec}' at column {column}: {problem}; expected {SPEC_FORM}")]
    Syntax { spec: String, column: usize, problem: String },
    /// The format name is not one of [`SUPPORTED_FORMATS`].
    #[error("unknown format '{name}'; supported formats are: {}", SUPPORTED_FORMATS.join(", "))]
    UnknownFormat { name: String },
    /// A key uses a transform this crate does not implement.
    #[error("unknown transform '{transform}()' in key '{key}'; supported transforms are: {}", spec::TRANSFORMS)]
    UnknownTransform { transform: String, key: String },
    /// A transform got more arguments than it takes.
    #[error("transform '{transform}()' in key '{key}' takes {accepted}, but {given} were given")]
    TransformArguments { transform: String, key: String, accepted: &'static str, given: usize },
    /// A key has an attribute other than `label`, `sort`, `reverse`, `align`, `optional` or `wrap`.
    #[error(
        "unknown attribute '{attribute}' on key '{key}'; supported key attributes are: label=NAME, sort=N, \
         reverse, align=left|center|right"
    )]
    UnknownKeyAttribute { attribute: String, key: String },
    /// A known key attribute has a missing or malformed value.
    #[error("attribute '{attribute}' on key '{key}' expects {expected}")]
    InvalidKeyAttribute { attribute: String, key: String, expected: &'static str },
    /// `value`, `csv` and `table` print nothing without a list of keys.
    #[error("format '{format}' requires a projection listing the keys to print, e.g. '{format}(metadata.name)'")]
    ProjectionRequired { format: &'static str },
    /// Serializing the (projected) resource as JSON failed.
    #[error("could not print the resource as JSON")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    /// Serializing the (projected) resource as YAML failed.
    #[error("could not print the resource as YAML")]
    Yaml {
        #[source]
        source: serde_norway::Error,
    },
}

/// Renders `value` per the gcloud format spec `spec`. A JSON array is treated as a list of resources
/// (one output record per element). Returns the text to print (ending with a newline unless empty).
pub fn render(value: &serde_json::Value, spec: &str) -> Result<String, FormatError> {
    printers::render(value, &spec::parse(spec)?)
}

/// Checks that `spec` parses and names a supported format, transforms and attributes, without a
/// resource: lets a CLI reject a bad `--format` before calling the API. A spec that passes can still
/// fail in [`render`] only with [`FormatError::ProjectionRequired`] (checked here too) or a
/// serialization error.
pub fn check(spec: &str) -> Result<(), FormatError> {
    let spec = spec::parse(spec)?;
    match spec.format {
        spec::Format::Value | spec::Format::Get | spec::Format::Csv | spec::Format::Table
            if spec.columns.is_empty() =>
        {
            Err(FormatError::ProjectionRequired { format: spec.format.name() })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A Cloud Run Admin API v2 service, as `wharf run services describe` returns it.
    fn v2_service() -> Value {
        json!({
            "name": "projects/p/locations/us-central1/services/hello",
            "uid": "8d4c2b1e-0000-4000-8000-000000000001",
            "generation": "2",
            "labels": {"team": "web", "env": "prod"},
            "createTime": "2024-05-01T10:00:00.000000Z",
            "creator": "owner@example.com",
            "ingress": "INGRESS_TRAFFIC_ALL",
            "launchStage": "GA",
            "template": {
                "containers": [{
                    "image": "us-docker.pkg.dev/p/r/hello:v2",
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}
                }],
                "scaling": {"maxInstanceCount": 10}
            },
            "traffic": [
                {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 90},
                {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "hello-00001-abc", "percent": 10,
                 "tag": "old"}
            ],
            "uri": "https://hello-abc123-uc.a.run.app",
            "terminalCondition": {
                "type": "Ready", "state": "CONDITION_SUCCEEDED", "lastTransitionTime": "2024-05-01T10:01:00Z"
            },
            "conditions": [
                {"type": "RoutesReady", "state": "CONDITION_SUCCEEDED"},
                {"type": "ConfigurationsReady", "state": "CONDITION_SUCCEEDED"}
            ],
            "latestReadyRevision": "projects/p/locations/us-central1/services/hello/revisions/hello-00002-xyz",
            "latestCreatedRevision": "projects/p/locations/us-central1/services/hello/revisions/hello-00002-xyz",
            "reconciling": false,
            "etag": "\"abc\""
        })
    }

    /// The same service in the Knative serving.knative.dev/v1 shape (`gcloud run services describe`).
    fn knative_service() -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {
                "name": "hello",
                "namespace": "p",
                "annotations": {"run.googleapis.com/ingress": "all"}
            },
            "spec": {"template": {"spec": {"containers": [{"image": "us-docker.pkg.dev/p/r/hello:v2"}]}}},
            "status": {
                "url": "https://hello-abc123-uc.a.run.app",
                "latestReadyRevisionName": "hello-00002-xyz",
                "traffic": [{"latestRevision": true, "percent": 100, "revisionName": "hello-00002-xyz"}],
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        })
    }

    fn second_v2_service() -> Value {
        json!({
            "name": "projects/p/locations/europe-west1/services/api",
            "uri": "https://api-abc123-ew.a.run.app",
            "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
            "terminalCondition": {"type": "Ready", "state": "CONDITION_FAILED"}
        })
    }

    #[track_caller]
    fn ok(value: &Value, spec: &str) -> String {
        match render(value, spec) {
            Ok(text) => text,
            Err(e) => panic!("render({spec:?}) failed: {e}"),
        }
    }

    #[track_caller]
    fn err(value: &Value, spec: &str) -> FormatError {
        match render(value, spec) {
            Ok(text) => panic!("render({spec:?}) should fail, printed {text:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn value_prints_the_knative_url() {
        assert_eq!(ok(&knative_service(), "value(status.url)"), "https://hello-abc123-uc.a.run.app\n");
    }

    #[test]
    fn value_prints_the_v2_uri_and_basename() {
        assert_eq!(ok(&v2_service(), "value(uri)"), "https://hello-abc123-uc.a.run.app\n");
        assert_eq!(
            ok(&v2_service(), "value(name.basename(), latestReadyRevision.basename())"),
            "hello\thello-00002-xyz\n"
        );
    }

    #[test]
    fn value_separates_columns_with_tabs_and_list_items_with_semicolons() {
        let text =
            ok(&v2_service(), "value(terminalCondition.state, traffic[].percent, missing.key, labels, reconciling)");
        assert_eq!(text, "CONDITION_SUCCEEDED\t90;10\t\tenv=prod;team=web\tFalse\n");
    }

    #[test]
    fn value_indexes_slices_and_snake_case() {
        let service = v2_service();
        assert_eq!(
            ok(&service, "value(conditions[0].type, conditions[-1].type, traffic[1].tag)"),
            "RoutesReady\tConfigurationsReady\told\n"
        );
        assert_eq!(ok(&service, "value(traffic.percent, traffic.len())"), "90;10\t2\n");
        assert_eq!(
            ok(&service, "value(terminal_condition.state, latest_ready_revision.basename())"),
            "CONDITION_SUCCEEDED\thello-00002-xyz\n"
        );
        assert_eq!(
            ok(&knative_service(), "value(status.latest_ready_revision_name, status.traffic[].percent)"),
            "hello-00002-xyz\t100\n"
        );
        assert_eq!(ok(&knative_service(), "value(metadata.annotations.'run.googleapis.com/ingress')"), "all\n");
    }

    #[test]
    fn value_attributes() {
        let service = v2_service();
        assert_eq!(
            ok(&service, "value[separator=','](name.basename(), uri)"),
            "hello,https://hello-abc123-uc.a.run.app\n"
        );
        assert_eq!(ok(&service, "value[delimiter=' '](traffic[].percent)"), "90 10\n");
        assert_eq!(ok(&service, "value[terminator=' '](traffic[].percent)"), "90;10 ");
        assert_eq!(ok(&service, "value[quote](etag)"), "\"\"\"abc\"\"\"\n");
    }

    #[test]
    fn value_prints_one_line_per_listed_resource() {
        let list = json!([v2_service(), second_v2_service()]);
        assert_eq!(
            ok(&list, "value(name.basename(), terminalCondition.state)"),
            "hello\tCONDITION_SUCCEEDED\napi\tCONDITION_FAILED\n"
        );
        assert_eq!(ok(&json!([]), "value(name)"), "");
    }

    #[test]
    fn json_prints_the_resource_and_lists_as_arrays() {
        let service = v2_service();
        let text = ok(&service, "json");
        assert!(text.starts_with("{\n  \"conditions\": [\n    {\n"), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), service);
        let list = json!([v2_service(), second_v2_service()]);
        assert_eq!(serde_json::from_str::<Value>(&ok(&list, "json")).unwrap(), list);
        assert_eq!(ok(&json!([]), "json"), "[]\n");
    }

    #[test]
    fn json_projection_keeps_nesting() {
        let text = ok(&knative_service(), "json(metadata.name, status.url)");
        let expected = r#"{
  "metadata": {
    "name": "hello"
  },
  "status": {
    "url": "https://hello-abc123-uc.a.run.app"
  }
}
"#;
        assert_eq!(text, expected);
        let list = json!([v2_service(), second_v2_service()]);
        assert_eq!(
            serde_json::from_str::<Value>(&ok(&list, "json(name.basename(), traffic[].percent)")).unwrap(),
            json!([
                {"name": "hello", "traffic": [{"percent": 90}, {"percent": 10}]},
                {"name": "api", "traffic": [{"percent": 100}]}
            ])
        );
    }

    #[test]
    fn yaml_prints_the_resource_and_separates_listed_ones() {
        let service = knative_service();
        let text = ok(&service, "yaml");
        assert!(text.starts_with("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n"), "{text}");
        assert!(text.contains("  conditions:\n  - status: 'True'\n    type: Ready\n"), "{text}");
        assert_eq!(serde_norway::from_str::<Value>(&text).unwrap(), service);
        assert_eq!(ok(&service, "default"), text);
        let two = ok(&json!([v2_service(), second_v2_service()]), "yaml(uri)");
        assert_eq!(two, "---\nuri: https://hello-abc123-uc.a.run.app\n---\nuri: https://api-abc123-ew.a.run.app\n");
    }

    #[test]
    fn yaml_projection_of_knative_traffic() {
        let expected =
            "status:\n  traffic:\n  - latestRevision: true\n    percent: 100\n    revisionName: hello-00002-xyz\n";
        assert_eq!(ok(&knative_service(), "yaml(status.traffic)"), expected);
        assert_eq!(ok(&knative_service(), "yaml(status.traffic[].percent)"), "status:\n  traffic:\n  - percent: 100\n");
        assert_eq!(ok(&knative_service(), "yaml(nothing.here)"), "{}\n");
    }

    #[test]
    fn yaml_projection_of_v2_traffic() {
        let expected = "\
traffic:
- percent: 90
  type: TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
- percent: 10
  type: TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
";
        assert_eq!(ok(&v2_service(), "yaml(traffic[].percent, traffic[].type)"), expected);
    }

    #[test]
    fn text_flattens_with_aligned_values() {
        let expected = "metadata.name:                    hello\n\
                        status.traffic[0].latestRevision: True\n\
                        status.traffic[0].percent:        100\n\
                        status.traffic[0].revisionName:   hello-00002-xyz\n";
        assert_eq!(ok(&knative_service(), "text(metadata.name, status.traffic)"), expected);
        assert_eq!(
            ok(&knative_service(), "text[no-pad](metadata.name, status.url)"),
            "metadata.name: hello\nstatus.url: https://hello-abc123-uc.a.run.app\n"
        );
        let list = json!([v2_service(), second_v2_service()]);
        assert_eq!(
            ok(&list, "flattened(uri)"),
            "---\nuri: https://hello-abc123-uc.a.run.app\n---\nuri: https://api-abc123-ew.a.run.app\n"
        );
        let full = ok(&v2_service(), "text");
        assert!(full.contains("\ntemplate.containers[0].ports[0].containerPort:  8080\n"), "{full}");
        assert!(full.contains("\nreconciling:                                    False\n"), "{full}");
    }

    #[test]
    fn table_aligns_columns_under_headings() {
        let list = json!([v2_service(), second_v2_service()]);
        let text = ok(&list, "table(name.basename():label=SERVICE, name.segment, uri, terminalCondition.state)");
        let expected = "\
SERVICE  SEGMENT  URI                                STATE
hello             https://hello-abc123-uc.a.run.app  CONDITION_SUCCEEDED
api               https://api-abc123-ew.a.run.app    CONDITION_FAILED
";
        assert_eq!(text, expected);
    }

    #[test]
    fn table_sorting_alignment_and_attributes() {
        let list = json!([v2_service(), second_v2_service()]);
        let text = ok(&list, "table[no-heading](uri:sort=1, traffic[].percent:align=right)");
        let expected = "\
https://api-abc123-ew.a.run.app      [100]
https://hello-abc123-uc.a.run.app  [90,10]
";
        assert_eq!(text, expected);
        let text =
            ok(&list, "table[title=Services](latestReadyRevision.basename(), terminalCondition.state:sort=1:reverse)");
        let expected = "                 Services
LATEST_READY_REVISION  STATE
hello-00002-xyz        CONDITION_SUCCEEDED
                       CONDITION_FAILED
";
        assert_eq!(text, expected);
        assert_eq!(ok(&json!([]), "table(name)"), "");
    }

    #[test]
    fn csv_has_a_heading_and_quotes() {
        let text = ok(&v2_service(), "csv(name.basename(), traffic[].percent, etag:label=Tag)");
        assert_eq!(text, "name,percent,tag\nhello,90;10,\"\"\"abc\"\"\"\n");
    }

    #[test]
    fn none_prints_nothing() {
        assert_eq!(ok(&v2_service(), "none"), "");
    }

    #[test]
    fn unknown_format_lists_supported_ones() {
        let e = err(&v2_service(), "xml");
        assert!(matches!(&e, FormatError::UnknownFormat { name } if name == "xml"), "{e:?}");
        assert!(e.to_string().contains("json, none, table, text, value, yaml"), "{e}");
    }

    #[test]
    fn unknown_transform_lists_supported_ones() {
        let e = err(&v2_service(), "value(name.date())");
        assert!(matches!(&e, FormatError::UnknownTransform { transform, .. } if transform == "date"), "{e:?}");
        assert_eq!(
            e.to_string(),
            "unknown transform 'date()' in key 'name.date()'; supported transforms are: basename(), \
             join([SEPARATOR]), len(), lower(), upper(), yesno([YES], [NO])"
        );
        let e = err(&v2_service(), "value(name.basename(x))");
        assert!(matches!(&e, FormatError::TransformArguments { given: 1, .. }), "{e:?}");
    }

    #[test]
    fn malformed_specs_are_explained() {
        let e = err(&v2_service(), "value(status.url");
        assert_eq!(
            e.to_string(),
            "invalid format 'value(status.url' at column 17: missing ')' to close the key list; expected \
             NAME[ATTRIBUTE,...](KEY[.TRANSFORM()][:label=NAME], ...), e.g. 'value(status.url)'"
        );
        assert!(
            matches!(err(&v2_service(), "table(,)"), FormatError::Syntax { problem, .. } if problem == "empty key")
        );
        assert!(matches!(err(&v2_service(), "table"), FormatError::ProjectionRequired { format: "table" }));
        assert!(matches!(err(&v2_service(), "table(uri:colour=red)"), FormatError::UnknownKeyAttribute { .. }));
        assert!(matches!(err(&v2_service(), "table(uri:sort=first)"), FormatError::InvalidKeyAttribute { .. }));
    }

    #[test]
    fn check_validates_without_a_resource() {
        assert_eq!(check("value(status.url)").ok(), Some(()));
        assert_eq!(check("yaml").ok(), Some(()));
        assert!(matches!(check("value"), Err(FormatError::ProjectionRequired { format: "value" })));
        assert!(matches!(check("value(a"), Err(FormatError::Syntax { .. })));
    }

    #[test]
    fn supported_formats_all_parse() {
        for name in SUPPORTED_FORMATS {
            assert_eq!(spec::parse(name).map(|s| s.format.name()).ok(), Some(*name));
        }
    }

    /// Odd specs and every prefix of some valid ones must give Ok or Err, never a panic.
    #[test]
    fn odd_specs_never_panic() {
        let odd = [
            "",
            " ",
            "value(",
            "value)",
            "table(,)",
            "json(a.b[",
            "(",
            ")",
            "[",
            "]",
            "value[",
            "value[]",
            "value[,]",
            "value[separator='",
            "value['",
            "table(a:label=)",
            "table(a:)",
            "value(a.b()",
            "value(a.())",
            "value(.)",
            "value(a[)",
            "value(a[]]",
            "value(a[-0])",
            "value(a[99999999999999999999])",
            "value(a[-9223372036854775808])",
            "value(a.basename().b)",
            "value(a.basename()[0])",
            "value(\"\")",
            "value('')",
            "value('a\\",
            "yaml(a..b)",
            "value(a,,b)",
            "value(a,)",
            "json()",
            "text[no-pad, separator=]()",
            "table[pad=x](a)",
            "table[pad=0](a)",
            "table[title=é](é)",
            "value(é.ü[0])",
            "\u{0}",
            "value(\u{0})",
            "väl(ue)",
            "value(a:sort=99999999999)",
            "value(a:reverse=1)",
            "value(a:label)",
            "value(len())",
            "json(basename())",
            "yaml([0])",
            "yaml([])",
        ];
        let complex = [
            "table[box,title=S](metadata.name.basename():label=N:sort=1, status.traffic[].percent.len():align=left)",
            "value[separator=\",\",terminator='\\n'](status.conditions[-1].type, metadata.annotations.'a.b/c')",
            "yaml(status.traffic[0].percent, status.traffic[].revisionName.join(' '), spec.x.yesno(\"a\", b))",
        ];
        let prefixes = complex.iter().flat_map(|spec| spec.char_indices().map(move |(i, _)| &spec[..i]));
        let records =
            [v2_service(), knative_service(), json!([v2_service(), knative_service()]), json!(null), json!([[1]])];
        for spec in odd.into_iter().chain(prefixes) {
            for record in &records {
                // Either outcome is fine; reaching the next iteration means there was no panic.
                let _ = render(record, spec);
            }
        }
    }
}
