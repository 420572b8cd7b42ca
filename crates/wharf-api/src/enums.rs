//! Enum values. Resources carry enums by name (`"CONDITION_SUCCEEDED"`), as Google APIs do in
//! JSON by default; a client that sends `$alt=json;enum-encoding=int` (Google's own client
//! libraries do) gets integers. Requests may use either form.

use serde_json::Value;

/// `(field, name, number)` for every enum value Wharf reads or writes.
const TABLE: &[(&str, &str, i64)] = &[
    ("state", "STATE_UNSPECIFIED", 0),
    ("state", "CONDITION_PENDING", 1),
    ("state", "CONDITION_RECONCILING", 2),
    ("state", "CONDITION_FAILED", 3),
    ("state", "CONDITION_SUCCEEDED", 4),
    ("severity", "SEVERITY_UNSPECIFIED", 0),
    ("severity", "ERROR", 1),
    ("severity", "WARNING", 2),
    ("severity", "INFO", 3),
    ("reason", "COMMON_REASON_UNDEFINED", 0),
    ("reason", "UNKNOWN", 1),
    ("reason", "REVISION_FAILED", 3),
    ("reason", "PROGRESS_DEADLINE_EXCEEDED", 4),
    ("reason", "CONTAINER_MISSING", 6),
    ("reason", "WAITING_FOR_OPERATION", 13),
    ("reason", "INTERNAL", 16),
    ("revisionReason", "REVISION_REASON_UNDEFINED", 0),
    ("revisionReason", "PENDING", 1),
    ("revisionReason", "RESERVE", 2),
    ("revisionReason", "RETIRED", 3),
    ("revisionReason", "RETIRING", 4),
    ("revisionReason", "HEALTH_CHECK_CONTAINER_ERROR", 6),
    ("revisionReason", "MIN_INSTANCES_NOT_PROVISIONED", 8),
    ("executionReason", "EXECUTION_REASON_UNDEFINED", 0),
    ("executionReason", "JOB_STATUS_SERVICE_POLLING_ERROR", 1),
    ("executionReason", "NON_ZERO_EXIT_CODE", 2),
    ("executionReason", "CANCELLED", 3),
    ("executionReason", "CANCELLING", 4),
    ("executionReason", "DELETED", 5),
    ("type", "TRAFFIC_TARGET_ALLOCATION_TYPE_UNSPECIFIED", 0),
    ("type", "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", 1),
    ("type", "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", 2),
    ("ingress", "INGRESS_TRAFFIC_UNSPECIFIED", 0),
    ("ingress", "INGRESS_TRAFFIC_ALL", 1),
    ("ingress", "INGRESS_TRAFFIC_INTERNAL_ONLY", 2),
    ("ingress", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER", 3),
    ("ingress", "INGRESS_TRAFFIC_NONE", 4),
    ("launchStage", "LAUNCH_STAGE_UNSPECIFIED", 0),
    ("launchStage", "EARLY_ACCESS", 1),
    ("launchStage", "ALPHA", 2),
    ("launchStage", "BETA", 3),
    ("launchStage", "GA", 4),
    ("launchStage", "DEPRECATED", 5),
    ("executionEnvironment", "EXECUTION_ENVIRONMENT_UNSPECIFIED", 0),
    ("executionEnvironment", "EXECUTION_ENVIRONMENT_GEN1", 1),
    ("executionEnvironment", "EXECUTION_ENVIRONMENT_GEN2", 2),
];

/// Whether `key: value` is an enum occurrence (Condition `type` is a free string, traffic
/// `type` an enum: they differ by value).
fn lookup_name(key: &str, name: &str) -> Option<i64> {
    TABLE.iter().find(|(k, n, _)| *k == key && *n == name).map(|(_, _, v)| *v)
}

fn lookup_number(key: &str, number: i64) -> Option<&'static str> {
    TABLE.iter().find(|(k, _, v)| *k == key && *v == number).map(|(_, n, _)| *n)
}

/// Rewrites every enum name in `value` as its number.
pub fn encode_as_ints(value: &mut Value) {
    walk(value, &|key, v| {
        if let Value::String(name) = v
            && let Some(n) = lookup_name(key, name)
        {
            *v = Value::from(n);
        }
    });
}

/// Rewrites every enum number in a request body as its name, so the rest of the server only
/// sees names.
pub fn decode_ints(value: &mut Value) {
    walk(value, &|key, v| {
        if let Some(n) = v.as_i64()
            && let Some(name) = lookup_number(key, n)
        {
            *v = Value::from(name);
        }
    });
}

fn walk(value: &mut Value, f: &dyn Fn(&str, &mut Value)) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if v.is_string() || v.is_number() {
                    f(key, v);
                } else {
                    walk(v, f);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| walk(v, f)),
        _ => {}
    }
}

/// Whether a request asked for integer enums (`$alt=json;enum-encoding=int`).
pub fn wants_ints(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.replace("%3B", ";").replace("%3b", ";").replace("%3D", "=").replace("%3d", "=");
            (k == "$alt" || k == "%24alt") && v.contains("enum-encoding=int")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_enums_and_leaves_free_strings() {
        let mut v = serde_json::json!({
            "terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"},
            "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
            "ingress": "INGRESS_TRAFFIC_ALL"
        });
        encode_as_ints(&mut v);
        assert_eq!(v["terminalCondition"]["state"], 4);
        assert_eq!(v["terminalCondition"]["type"], "Ready");
        assert_eq!(v["traffic"][0]["type"], 1);
        assert_eq!(v["traffic"][0]["percent"], 100);
        decode_ints(&mut v);
        assert_eq!(v["terminalCondition"]["state"], "CONDITION_SUCCEEDED");
        assert_eq!(v["traffic"][0]["type"], "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST");
        assert_eq!(v["ingress"], "INGRESS_TRAFFIC_ALL");
    }

    #[test]
    fn detects_the_int_encoding_parameter() {
        assert!(wants_ints(Some("$alt=json;enum-encoding=int")));
        assert!(wants_ints(Some("serviceId=x&%24alt=json%3Benum-encoding%3Dint")));
        assert!(!wants_ints(Some("$alt=json")));
        assert!(!wants_ints(None));
    }
}
