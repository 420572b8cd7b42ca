//! Cloud Logging's query language over Wharf's logs, end to end: lines written by real
//! instances are read back with `wharf logging read FILTER` and with Google's own
//! `google-cloud-logging` client (`entries:list`), and bad filters are refused with the column
//! of the bad token.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wharf_testsupport::{WharfLab, service_host};

wharf_testsupport::suite_lab!(Env);

fn setup() -> Env {
    Env(WharfLab::start(Path::new(env!("CARGO_BIN_EXE_wharf")), &[], "testapp:v1"))
}

impl Env {
    async fn get_ok(&self, host: &str, path: &str) {
        let (status, body) = self.get(host, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    /// `wharf logging read FILTER` in project demo, as JSON entries.
    fn read(&self, filter: &str) -> Vec<Value> {
        let out = self.ok(&["logging", "read", filter, "--project", "demo", "--format", "json", "--limit", "100"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

fn payload(entry: &Value) -> String {
    entry["textPayload"].as_str().or_else(|| entry["jsonPayload"]["message"].as_str()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn cloud_logging_filters_select_lines_of_real_instances() {
    let env = setup();
    for service in ["api", "web"] {
        env.ok(&["run", "deploy", service, "--image", &env.image, "--project", "demo", "--allow-unauthenticated"]);
    }
    let api = service_host("api", "demo");
    env.get_ok(&api, "/log?json=1&severity=ERROR&message=upstream%20timeout%20after%2030s").await;
    env.get_ok(&api, "/log?json=1&severity=WARNING&message=slow%20disk").await;
    env.get_ok(&api, "/log?message=all%20good").await;
    env.get_ok(&service_host("web", "demo"), "/log?json=1&severity=ERROR&message=web%20broke").await;
    wharf_testsupport::wait_until("all four lines", Duration::from_secs(20), || {
        let all = env.read("textPayload:good OR jsonPayload.message:broke OR jsonPayload.message:timeout");
        (all.len() == 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", env.read("")));

    // The seeds' troubleshooting query: one service's errors, nothing of the other service.
    let errors = env.read("resource.type=cloud_run_revision AND resource.labels.service_name=api AND severity>=ERROR");
    let messages: Vec<String> = errors.iter().map(payload).collect();
    assert_eq!(messages, ["upstream timeout after 30s"], "{errors:?}");
    let entry = &errors[0];
    assert_eq!(entry["resource"]["labels"]["location"], "us-central1", "{entry}");
    assert_eq!(entry["resource"]["labels"]["project_id"], "demo", "{entry}");
    assert!(entry["resource"]["labels"]["revision_name"].as_str().unwrap().starts_with("api-00001-"), "{entry}");
    assert_eq!(entry["logName"], "projects/demo/logs/run.googleapis.com%2Fstdout", "{entry}");

    // textPayload has, regular expressions, NOT and OR (which binds tighter than AND).
    let good: Vec<String> = env.read("textPayload:GOOD").iter().map(payload).collect();
    assert_eq!(good, ["all good"]);
    let regex: Vec<String> = env.read(r#"jsonPayload.message=~"^(slow|web) ""#).iter().map(payload).collect();
    assert_eq!(regex.len(), 2, "{regex:?}");
    let mut either: Vec<String> = env
        .read("severity=WARNING OR severity=ERROR resource.labels.service_name=api -jsonPayload.message:timeout")
        .iter()
        .map(payload)
        .collect();
    either.sort();
    assert_eq!(either, ["slow disk"]);
    // Newest first by default; --order asc reverses. (The order is the store's arrival
    // order: container lines only here, since a request log entry is stamped when its
    // response ended and may arrive a moment before a line stamped later.)
    let newest = env.read(r#"resource.labels.service_name=api -logName:"requests""#);
    let stamps: Vec<&str> = newest.iter().map(|e| e["timestamp"].as_str().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "{stamps:?}");

    // A bad filter is refused naming the column of the bad token.
    let (ok, _, stderr) = env.wharf(&["logging", "read", "severity>=LOUD", "--project", "demo"]);
    assert!(!ok);
    assert!(stderr.contains("column 11") && stderr.contains("not a severity"), "{stderr}");
    let (ok, _, stderr) = env.wharf(&["logging", "read", "(severity>=ERROR", "--project", "demo"]);
    assert!(!ok);
    assert!(stderr.contains("not closed"), "{stderr}");

    // Google's Python client lists the same entries with the same filter.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/cloud_logging_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("WHARF_API", format!("http://{}", env.server.addrs.api_addr))
        .env("WHARF_TOKEN", &env.server.token)
        .env("WHARF_PROJECT", "demo")
        .env("WHARF_SERVICE", "api")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ERROR cloud_run_revision api upstream timeout after 30s"), "{stdout}");
    assert!(!stdout.contains("web broke"), "{stdout}");
    assert!(stdout.contains("refused:") && stdout.contains("not a severity"), "{stdout}");
}
