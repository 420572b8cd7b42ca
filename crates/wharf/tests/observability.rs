//! Observability end to end, on one real server with `--metrics-addr`: a load of requests
//! (some answered 500 and 404 by the app) through the ingress, then
//! - a `/metrics` scrape whose `wharf_run_request_count_total` adds up exactly to the requests
//!   sent, by class, which `promtool check metrics` accepts, with instance counts and the
//!   server's own API and registry counts;
//! - request log entries for each of them, found with `httpRequest.status>=500`;
//! - the service's usage (`wharf run services usage`) counting the same requests and more
//!   instance time with CPU always allocated than with CPU throttled;
//! - container CPU utilisation from the instance's cgroup that rises with a CPU-burning
//!   request, and memory utilisation within (0, 1];
//! - that request's log entry stamped with its arrival (its latency running to the end), and
//!   the project's entries invisible from another project;
//! - a job's usage (task run time per execution), and both usages the same after a restart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wharf_testsupport::{WharfServer, service_host, testapp_image, wait_until};

/// `wharf_run_request_count_total` of `service`, summed by `response_code_class`.
fn requests_by_class(scrape: &str, service: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for line in scrape.lines().filter(|l| l.starts_with("wharf_run_request_count_total{")) {
        if !line.contains(&format!("service_name=\"{service}\"")) {
            continue;
        }
        let class = line.split("response_code_class=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *sums.entry(class.to_owned()).or_default() += value;
    }
    sums
}

/// A histogram of `service` summed over its revisions: (count, sum, count at `le="1"`).
fn histogram(scrape: &str, name: &str, service: &str) -> (f64, f64, f64) {
    let of_service = format!("service_name=\"{service}\"");
    let total = |prefix: &str, extra: &str| -> f64 {
        scrape
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(&of_service) && l.contains(extra))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        total(&format!("{name}_count{{"), ""),
        total(&format!("{name}_sum{{"), ""),
        total(&format!("{name}_bucket{{"), r#"le="1"}"#),
    )
}

/// `wharf ARGS` on `server`, which must succeed: its standard output as JSON.
fn cli_json(server: &WharfServer, args: &[&str]) -> Value {
    let out = server.cli(args).unwrap();
    assert!(out.status.success(), "wharf {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(scrape: &str, prefix: &str) -> Option<f64> {
    scrape.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_load_shows_up_exactly_in_metrics_request_logs_and_usage() {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server =
        WharfServer::start_with_env(Path::new(env!("CARGO_BIN_EXE_wharf")), &[("WHARF_METRICS_ADDR", "127.0.0.1:0")])
            .unwrap();
    let metrics_addr = server.addrs.metrics_addr.clone().expect("server.json names metricsAddr");
    let cli = |args: &[&str]| {
        let out = server.cli(args).unwrap();
        assert!(out.status.success(), "wharf {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]);
    let image = format!("{}/testapp:v1", server.addrs.registry_addr);
    cli(&["run", "deploy", "api", "--image", &image, "--project", "demo"]);

    // The load: 30 answered 200, 4 answered 404, 6 answered 500 by the app.
    let client = server.client_builder().timeout(Duration::from_secs(60)).build().unwrap();
    let host = service_host("api", "demo");
    let paths = [("/", 30, 200), ("/status?code=404", 4, 404), ("/status?code=500", 6, 500)];
    for (path, times, status) in paths {
        for _ in 0..times {
            let r = client
                .get(format!("http://{}{path}", server.addrs.ingress_addr))
                .header("Host", &host)
                .header("X-Cloud-Trace-Context", "0123456789abcdef0123456789abcdef/1;o=1")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{path}");
            r.bytes().await.unwrap();
        }
    }

    // A request is counted when its response ends on the server's side, which may be just
    // after the client has read it: wait for the counts, then hold them exact.
    let scraper = wharf_testsupport::http_client().build().unwrap();
    let scrape_url = format!("http://{metrics_addr}/metrics");
    let expected: BTreeMap<String, u64> = [("2xx".to_owned(), 30), ("4xx".to_owned(), 4), ("5xx".to_owned(), 6)].into();
    let mut scrape = String::new();
    for _ in 0..200 {
        let r = scraper.get(&scrape_url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        scrape = r.text().await.unwrap();
        if requests_by_class(&scrape, "api") == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests_by_class(&scrape, "api"), expected, "{scrape}");
    let labels = r#"{project_id="demo",location="us-central1",service_name="api",revision_name="api-00001-"#;
    assert!(scrape.contains(&format!("wharf_run_request_count_total{labels}")), "{scrape}");
    assert!(scrape.contains(r#"response_code="500",response_code_class="5xx"} 6"#), "{scrape}");
    let latencies = sample(&scrape, "wharf_run_request_latencies_seconds_count{").unwrap();
    assert_eq!(latencies, 40.0, "one latency observation per request");
    let instances: f64 = ["active", "idle"]
        .iter()
        .filter_map(|state| {
            scrape
                .lines()
                .find(|l| l.starts_with("wharf_run_container_instances{") && l.contains(&format!("state=\"{state}\"")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
        .sum();
    assert!(instances >= 1.0, "the instance that served the load: {scrape}");
    assert!(
        sample(&scrape, r#"wharf_server_request_count_total{surface="api",method="POST",response_code_class="2xx"}"#)
            .is_some_and(|n| n >= 1.0),
        "the deploy's API calls: {scrape}"
    );
    assert!(scrape.contains(r#"wharf_server_request_count_total{surface="registry""#), "the import's pushes: {scrape}");

    // promtool accepts the real scrape (format and Prometheus' naming lints).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; scripts/test installs it)");
    promtool.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n{scrape}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Request logs: one entry per request, Cloud Run's shape, found by status.
    let read = |filter: &str| -> Vec<Value> {
        let out = cli(&["logging", "read", filter, "--project", "demo", "--format", "json", "--limit", "100"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let errors = wait_until("the six 500s in the request log", Duration::from_secs(20), || {
        let errors = read("httpRequest.status>=500");
        (errors.len() == 6).then_some(errors)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", read("")));
    let entry = &errors[0];
    assert_eq!(entry["logName"], "projects/demo/logs/run.googleapis.com%2Frequests", "{entry}");
    assert_eq!(entry["severity"], "ERROR", "{entry}");
    assert_eq!(entry["resource"]["type"], "cloud_run_revision", "{entry}");
    assert_eq!(entry["resource"]["labels"]["service_name"], "api", "{entry}");
    let http = &entry["httpRequest"];
    assert_eq!((http["requestMethod"].as_str(), http["status"].as_u64()), (Some("GET"), Some(500)), "{entry}");
    assert_eq!(http["requestUrl"], format!("http://{host}/status?code=500"), "{entry}");
    assert_eq!(http["protocol"], "HTTP/1.1", "{entry}");
    assert_eq!(http["responseSize"], "11", "the body 'status 500\\n': {entry}");
    assert!(http["latency"].as_str().is_some_and(|l| l.ends_with('s') && l.contains('.')), "{entry}");
    assert_eq!(http["remoteIp"], "127.0.0.1", "{entry}");
    assert_eq!(entry["trace"], "projects/demo/traces/0123456789abcdef0123456789abcdef", "{entry}");
    assert!(entry["labels"]["instanceId"].as_str().is_some_and(|i| !i.is_empty()), "{entry}");
    assert_eq!(read("httpRequest.status=404 severity=WARNING").len(), 4);
    assert_eq!(read(r#"logName:"requests" resource.labels.service_name=api"#).len(), 40);

    // Usage: the same requests; always-allocated instance time covers the throttled time.
    let usage: Value =
        serde_json::from_str(&cli(&["run", "services", "usage", "api", "--project", "demo", "--format", "json"]))
            .unwrap();
    assert_eq!(usage["name"], "projects/demo/locations/us-central1/services/api", "{usage}");
    assert_eq!(usage["requests"], 40, "{usage}");
    let throttled = usage["cpuThrottled"]["vcpuSeconds"].as_f64().unwrap();
    let always = usage["cpuAlwaysAllocated"]["vcpuSeconds"].as_f64().unwrap();
    assert!(throttled > 0.0 && always >= throttled, "{usage}");
    assert_eq!(usage["revisions"][0]["vcpu"], 1.0, "{usage}");
    let missing = server.cli(&["run", "services", "usage", "nope", "--project", "demo"]).unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Cannot find service [nope]"));

    // Utilisation from the instances' cgroups: a request that burns CPU raises the CPU
    // utilisation observed over the next window; the instance is frozen between requests
    // (CPU throttled), so nothing else would.
    let scrape_now = || async {
        let r = scraper.get(&scrape_url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap()
    };
    let (cpu_count, cpu_sum, _) = histogram(&scrape_now().await, "wharf_run_container_cpu_utilizations", "api");
    let sent_at = jiff::Timestamp::now();
    let burn = client
        .get(format!("http://{}/cpu?ms=400", server.addrs.ingress_addr))
        .header("Host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(burn.status().as_u16(), 200);
    burn.bytes().await.unwrap();
    let done_at = jiff::Timestamp::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let scrape = scrape_now().await;
        if histogram(&scrape, "wharf_run_container_cpu_utilizations", "api").0 > cpu_count {
            break scrape;
        }
        assert!(std::time::Instant::now() < deadline, "no new CPU utilisation window: {scrape}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, burnt_sum, _) = histogram(&scrape, "wharf_run_container_cpu_utilizations", "api");
    assert!(burnt_sum - cpu_sum > 0.01, "400 ms of CPU shows as utilisation: {cpu_sum} -> {burnt_sum}\n{scrape}");
    let (memory_count, memory_sum, memory_le_1) = histogram(&scrape, "wharf_run_container_memory_utilizations", "api");
    assert!(memory_count >= 1.0 && memory_sum > 0.0, "{scrape}");
    assert_eq!(memory_le_1, memory_count, "memory utilisation never above the limit: {scrape}");

    // The burn's request log entry is stamped when the request arrived, as Cloud Run does:
    // after it was sent, and early enough that its latency (the 400 ms burn and more) ends
    // before the response was read.
    let burns = wait_until("the burn's request log entry", Duration::from_secs(20), || {
        let found = read(r#"httpRequest.requestUrl:"/cpu?ms=400""#);
        (found.len() == 1).then_some(found)
    })
    .unwrap();
    let stamped: jiff::Timestamp = burns[0]["timestamp"].as_str().unwrap().parse().unwrap();
    let latency = burns[0]["httpRequest"]["latency"].as_str().unwrap().trim_end_matches('s').parse::<f64>().unwrap();
    assert!(latency >= 0.4, "{}", burns[0]);
    let ended = stamped + jiff::SignedDuration::from_secs_f64(latency);
    // Stamps keep microseconds: allow the truncation.
    let micro = jiff::SignedDuration::from_micros(1);
    assert!(stamped + micro >= sent_at && ended <= done_at + micro, "{sent_at} <= {stamped} + {latency}s <= {done_at}");

    // Entries carry their project: another project's reader sees none of demo's.
    let own = read("resource.labels.service_name=api");
    assert!(own.len() >= 41, "demo's 41 request entries at least: {}", own.len());
    assert!(own.iter().all(|e| e["resource"]["labels"]["project_id"] == "demo"), "{own:?}");
    let other = cli(&["logging", "read", "resource.labels.service_name=api", "--project", "other", "--format", "json"]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&other).unwrap(), Vec::<Value>::new(), "{other}");

    // A job's usage: its tasks' run time, per execution. Each task sleeps 300 ms.
    cli(&[
        "run",
        "jobs",
        "create",
        "crunch",
        "--image",
        &image,
        "--args",
        "job",
        "--tasks",
        "2",
        "--set-env-vars",
        "TESTAPP_SLEEP_MS=300",
        "--project",
        "demo",
    ]);
    let execution = cli(&["run", "jobs", "execute", "crunch", "--wait", "--project", "demo"]).trim().to_owned();
    let job_usage_args = ["run", "jobs", "usage", "crunch", "--project", "demo", "--format", "json"];
    let job_usage = cli_json(&server, &job_usage_args);
    assert_eq!(job_usage["name"], "projects/demo/locations/us-central1/jobs/crunch", "{job_usage}");
    let executions = job_usage["executions"].as_array().unwrap();
    assert_eq!(executions.len(), 1, "{job_usage}");
    assert!(execution.ends_with(executions[0]["execution"].as_str().unwrap()), "{execution}: {job_usage}");
    let task_seconds = job_usage["tasks"]["instanceSeconds"].as_f64().unwrap();
    assert!(task_seconds >= 0.6, "two tasks of at least 300 ms each: {job_usage}");
    assert_eq!(job_usage["tasks"]["vcpuSeconds"], job_usage["tasks"]["instanceSeconds"], "1 vCPU: {job_usage}");

    // Usage is kept in the state database: after a restart it reads the same (instances
    // idle since: no request time added; instance time only grows).
    let service_usage_args = ["run", "services", "usage", "api", "--project", "demo", "--format", "json"];
    let before = cli_json(&server, &service_usage_args);
    let mut server = server;
    server.restart().unwrap();
    let after = cli_json(&server, &service_usage_args);
    assert_eq!((&after["requests"], &after["cpuThrottled"]), (&before["requests"], &before["cpuThrottled"]), "{after}");
    assert_eq!(after["requests"], 41, "{after}");
    let always = |u: &Value| u["cpuAlwaysAllocated"]["instanceSeconds"].as_f64().unwrap();
    assert!(always(&after) >= always(&before), "{before} -> {after}");
    assert_eq!(cli_json(&server, &job_usage_args), job_usage);
}
