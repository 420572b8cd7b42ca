//! Failures as a service's clients and owner see them, with real containers: an instance that
//! runs out of memory and one that crashes mid-request answer 502 and say why in the logs
//! (`wharf logs read --severity ERROR`), the revision stays ready and the next request gets a
//! fresh instance; a revision whose container exits at start-up is not ready, says why, and
//! takes no traffic; structured JSON log lines are stored with their own severity and message.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wharf_testsupport::{WharfLab, service_host};

wharf_testsupport::suite_lab!(Env);

fn setup() -> Env {
    Env(WharfLab::start(Path::new(env!("CARGO_BIN_EXE_wharf")), &[], "testapp:v1"))
}

impl Env {
    /// `wharf logs read` entries (as JSON objects) of `service` at or above `severity`.
    fn log_entries(&self, service: &str, severity: &str) -> Vec<Value> {
        let out = self.ok(&["logs", "read", service, "--severity", severity, "--limit", "500", "--format", "json"]);
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
    }

    /// Waits until `service`'s logs at or above `severity` have an entry whose message
    /// contains `text` (the platform's line about a failed instance is written as it is reaped,
    /// which can be just after the client saw the failure).
    fn wait_for_log(&self, service: &str, severity: &str, text: &str) -> Vec<Value> {
        let found = wharf_testsupport::wait_until(
            &format!("a {severity} log line containing {text:?}"),
            Duration::from_secs(20),
            || {
                let entries = self.log_entries(service, severity);
                entries.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains(text))).then_some(entries)
            },
        );
        found.unwrap_or_else(|e| panic!("{e}: {:?}", self.log_entries(service, "DEFAULT")))
    }

    fn ready_condition(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["--project", "demo", "--format", "json"]);
        let resource: Value = serde_json::from_str(&self.ok(&full)).unwrap();
        resource["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_else(|| panic!("no Ready condition: {resource}"))
    }
}

#[tokio::test]
async fn out_of_memory_and_crashed_instances_answer_502_and_log_why() {
    let env = setup();
    env.ok(&[
        "run",
        "deploy",
        "fragile",
        "--image",
        &env.image,
        "--project",
        "demo",
        "--memory",
        "128Mi",
        "--max-instances",
        "1",
    ]);
    let host = &service_host("fragile", "demo");
    let (status, first) = env.get(host, "/hostname").await;
    assert_eq!(status, 200, "{first}");

    // Out of memory: the client gets a 502, the logs say which limit was exceeded.
    let (status, body) = env.get(host, "/alloc?mib=400").await;
    assert_eq!(status, 502, "allocating 400 MiB under a 128 MiB limit answered: {body}");
    assert_eq!(body.trim(), "The upstream instance failed to answer the request.");
    let errors = env.wait_for_log("fragile", "ERROR", "Memory limit of 128 MiB exceeded");
    assert!(errors.iter().all(|e| e["severity"] == "ERROR"), "--severity ERROR returned lower entries: {errors:?}");
    assert!(errors.iter().all(|e| e["service"] == "fragile"), "{errors:?}");

    // The revision stays ready and the next request is served by a new instance.
    let (status, second) = env.get(host, "/hostname").await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first, second, "the OOM-killed instance still answered");

    // A crash mid-request: 502 too, and the exit code in the logs, after the app's own line.
    let (status, body) = env.get(host, "/exit?code=3").await;
    assert_eq!(status, 502, "{body}");
    env.wait_for_log("fragile", "ERROR", "Container called exit(3).");
    let all = env.log_entries("fragile", "DEFAULT");
    assert!(all.iter().any(|e| e["message"] == "testapp: exiting with code 3" && e["severity"] == "INFO"), "{all:?}");
    let (status, third) = env.get(host, "/hostname").await;
    assert_eq!(status, 200, "{third}");
    assert_ne!(second, third);

    let ready = env.ready_condition(&["run", "services", "describe", "fragile"]);
    assert_eq!(ready["status"], "True", "a crashed instance made the service unready: {ready}");

    // A revision whose container exits at start-up: the deploy fails and says why, the
    // revision is not ready, and traffic stays on the previous revision.
    let (ok, _, stderr) = env.wharf(&[
        "run",
        "deploy",
        "fragile",
        "--image",
        &env.image,
        "--project",
        "demo",
        "--update-env-vars",
        "TESTAPP_EXIT_CODE=4",
    ]);
    assert!(!ok, "a deploy whose container exits at start-up succeeded");
    assert!(stderr.contains("Container called exit(4)."), "{stderr}");
    let revisions = env.ok(&[
        "run",
        "revisions",
        "list",
        "--service",
        "fragile",
        "--project",
        "demo",
        "--format",
        "value(metadata.name)",
    ]);
    let broken = revisions.lines().find(|r| r.starts_with("fragile-00002-")).unwrap_or_else(|| panic!("{revisions}"));
    let ready = env.ready_condition(&["run", "revisions", "describe", broken]);
    assert_eq!(ready["status"], "False", "{ready}");
    assert!(ready["message"].as_str().unwrap_or_default().contains("Container called exit(4)."), "{ready}");
    let (status, body) = env.get(host, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("Hello from fragile-00001-"), "traffic moved to the broken revision: {body}");
}

#[tokio::test]
async fn structured_json_log_lines_keep_their_severity_and_message() {
    let env = setup();
    env.ok(&["run", "deploy", "chatty", "--image", &env.image, "--project", "demo"]);
    let host = &service_host("chatty", "demo");
    for path in [
        "/log?json=1&severity=WARNING&message=disk%20low",
        "/log?json=1&severity=NOTICE&message=noted%20on%20stderr&stream=stderr",
        "/log?json=1&severity=DEBUG&message=fine%20detail",
        "/log?message=plain%20stderr%20line&stream=stderr",
    ] {
        let (status, body) = env.get(host, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let entries = wharf_testsupport::wait_until("the logged lines", Duration::from_secs(20), || {
        let entries = env.log_entries("chatty", "DEFAULT");
        entries.iter().any(|e| e["message"] == "plain stderr line").then_some(entries)
    })
    .unwrap();
    let severity_of = |message: &str| {
        let entry =
            entries.iter().find(|e| e["message"] == message).unwrap_or_else(|| panic!("{message}: {entries:?}"));
        entry["severity"].as_str().unwrap().to_owned()
    };
    assert_eq!(severity_of("disk low"), "WARNING");
    // A structured line's severity wins over the stream's default (stderr is ERROR).
    assert_eq!(severity_of("noted on stderr"), "NOTICE");
    assert_eq!(severity_of("fine detail"), "DEBUG");
    assert_eq!(severity_of("plain stderr line"), "ERROR");
    let warning = entries.iter().find(|e| e["message"] == "disk low").unwrap();
    assert_eq!(warning["payload"]["severity"], "WARNING", "{warning}");
    assert!(
        entries.iter().all(|e| !e["message"].as_str().unwrap_or_default().starts_with('{')),
        "a JSON line was stored unparsed: {entries:?}"
    );

    // The severity filter applies to the parsed severity.
    let warnings: Vec<String> =
        env.log_entries("chatty", "WARNING").iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect();
    assert!(warnings.contains(&"disk low".to_owned()), "{warnings:?}");
    assert!(warnings.contains(&"plain stderr line".to_owned()), "{warnings:?}");
    assert!(!warnings.contains(&"noted on stderr".to_owned()), "NOTICE passed --severity WARNING: {warnings:?}");
    assert!(!warnings.contains(&"fine detail".to_owned()), "{warnings:?}");
    // The text format shows the parsed severity and message.
    let text = env.ok(&["logs", "read", "chatty", "--severity", "WARNING"]);
    let line = text.lines().find(|l| l.contains("disk low")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("WARNING"), "{line}");
    assert!(!line.contains("\"severity\""), "the raw JSON was printed: {line}");
}
