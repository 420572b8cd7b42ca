//! Hostile input over HTTP: out-of-range durations, quantities, counts and oversized strings
//! sent to the admin API each get a 400 `INVALID_ARGUMENT` whose message names the field and
//! the allowed range, the connection stays usable (no handler panicked), and nothing is
//! stored.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wharf_testsupport::WharfServer;

const PARENT: &str = "/v2/projects/hostile/locations/us-central1";

fn container(extra: Value) -> Value {
    let mut c = json!({"image": "127.0.0.1:5000/nothing:v1"});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

fn service(template: Value) -> Value {
    json!({ "template": template })
}

#[tokio::test]
async fn out_of_range_input_is_a_400_naming_the_field_never_a_panic() {
    let mut server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
    let client = wharf_testsupport::http_client().timeout(Duration::from_secs(30)).build().unwrap();
    let big = "x".repeat(40 * 1024);
    let services: Vec<(Value, &str)> = vec![
        (service(json!({"timeout": "1e20s", "containers": [container(json!({}))]})), "template.timeout"),
        (
            service(json!({"timeout": "100000000000000000000s", "containers": [container(json!({}))]})),
            "between 1s and 3600s",
        ),
        (service(json!({"timeout": "3601s", "containers": [container(json!({}))]})), "between 1s and 3600s"),
        (
            service(json!({"containers": [container(json!({"env": [{"name": "BIG", "value": big}]}))]})),
            "at most 32768 bytes (32 KiB)",
        ),
        (
            service(json!({"containers": [container(json!({"startupProbe":
                {"tcpSocket": {}, "periodSeconds": 2147483647}}))]})),
            "startupProbe.periodSeconds 2147483647 is out of range",
        ),
        (
            service(json!({"containers": [container(json!({"livenessProbe":
                {"httpGet": {"path": "/ok"}, "failureThreshold": -5}}))]})),
            "livenessProbe.failureThreshold -5 is out of range",
        ),
        (
            service(json!({"containers": [container(json!({"resources": {"limits": {"cpu": "0.01"}}}))]})),
            "between 0.08 (80m) and 8 CPUs",
        ),
        (
            service(json!({"containers": [container(json!({"resources": {"limits": {"memory": "1e400Gi"}}}))]})),
            "invalid memory",
        ),
        (
            service(json!({"maxInstanceRequestConcurrency": 100000, "containers": [container(json!({}))]})),
            "between 1 and 1000",
        ),
        (
            service(json!({"scaling": {"minInstanceCount": 2000, "maxInstanceCount": 3000},
                "containers": [container(json!({}))]})),
            "min instances 2000 is out of range",
        ),
        (service(json!({"labels": {"Not A Key": "v"}, "containers": [container(json!({}))]})), "template.labels key"),
        (
            service(json!({"containers": [container(json!({"ports": [{"containerPort": 70000}]}))]})),
            "port 70000 is out of range",
        ),
    ];
    for (i, (body, expected)) in services.iter().enumerate() {
        let r = client
            .post(server.api_url(&format!("{PARENT}/services?serviceId=bad-{i}")))
            .bearer_auth(&server.token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("case {i}: the request failed (a handler panicked?): {e}"));
        let status = r.status().as_u16();
        let error: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "case {i}: {error}");
        assert_eq!(error["error"]["status"], "INVALID_ARGUMENT", "case {i}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "case {i}: expected {expected:?} in {message:?}");
    }
    let jobs: Vec<(Value, &str)> = vec![
        (
            json!({"template": {"template": {"timeout": "169h", "containers": [container(json!({}))]}}}),
            "between 1s and 168h",
        ),
        (json!({"template": {"taskCount": 10001, "template": {"containers": [container(json!({}))]}}}), "1 to 10000"),
        (
            json!({"template": {"template": {"maxRetries": 11, "containers": [container(json!({}))]}}}),
            "max retries 11 is out of range",
        ),
        (
            json!({"template": {"parallelism": -1, "template": {"containers": [container(json!({}))]}}}),
            "parallelism -1 is out of range",
        ),
    ];
    for (i, (body, expected)) in jobs.iter().enumerate() {
        let r = client
            .post(server.api_url(&format!("{PARENT}/jobs?jobId=bad-{i}")))
            .bearer_auth(&server.token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("job case {i}: the request failed: {e}"));
        let status = r.status().as_u16();
        let error: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "job case {i}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "job case {i}: expected {expected:?} in {message:?}");
    }
    // Nothing was stored.
    for kind in ["services", "jobs"] {
        let r = client.get(server.api_url(&format!("{PARENT}/{kind}"))).bearer_auth(&server.token).send().await;
        let list: Value = r.unwrap().json().await.unwrap();
        assert_eq!(list[kind].as_array().map(Vec::len).unwrap_or(0), 0, "{list}");
    }
    assert!(!server.log().contains("panicked"), "a handler panicked:\n{}", server.log());
    let left = server.stop_and_check().unwrap();
    assert!(left.is_empty(), "{left:?}");
}
