//! CPU allocation like Cloud Run, end to end with real containers: by default an instance gets
//! CPU only while requests are in flight (its cgroup is frozen between them), so the test
//! app's background counter (`/spin/*`) makes no progress while the instance is idle; with
//! `--no-cpu-throttling` it does. A liveness probe thaws a frozen instance instead of killing
//! it; a frozen instance scaled down still handles SIGTERM; `--cpu-boost` starts an instance
//! with twice its CPU quota and ends with its limit. One server for all of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, service_host, testapp_image};

const PARENT: &str = "/v2/projects/demo/locations/us-central1";

/// How long an instance stays idle in the measurement (not a synchronisation: what is
/// measured is what happens during it).
const IDLE: Duration = Duration::from_secs(1);

struct Env {
    server: WharfServer,
    image: String,
    client: reqwest::Client,
    _work: tempfile::TempDir,
}

impl Env {
    fn ok(&self, args: &[&str]) -> String {
        let out = self.server.cli(args).unwrap();
        assert!(out.status.success(), "wharf {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn get(&self, service: &str, path: &str) -> Value {
        let response = self
            .client
            .get(format!("http://{}{path}", self.server.addrs.ingress_addr))
            .header("Host", service_host(service, "demo"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path} on {service}");
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, self.server.api_url(path)).bearer_auth(&self.server.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn instances(&self) -> usize {
        std::fs::read_dir(self.server.data_dir().join("instances")).map(|d| d.count()).unwrap_or(0)
    }
}

/// The directory of instance `id`'s cgroup in `hierarchy` (`freezer`, `cpuacct`, `cpu`; on
/// pure v2 the one unified directory).
fn cgroup_dir(hierarchy: &str, id: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup").join(hierarchy).join("wharf").join(format!("wharf-{id}"));
    if v1.is_dir() { v1 } else { Path::new("/sys/fs/cgroup/wharf").join(format!("wharf-{id}")) }
}

/// Whether instance `id`'s cgroup is frozen, as the kernel says.
fn frozen(id: &str) -> bool {
    let v1 = cgroup_dir("freezer", id).join("freezer.state");
    match std::fs::read_to_string(&v1) {
        Ok(state) => state.trim() == "FROZEN",
        Err(_) => std::fs::read_to_string(cgroup_dir("", id).join("cgroup.events"))
            .is_ok_and(|e| e.lines().any(|l| l == "frozen 1")),
    }
}

/// CPU time instance `id`'s cgroup has used, in microseconds.
fn cpu_usage_us(id: &str) -> u64 {
    if let Ok(ns) = std::fs::read_to_string(cgroup_dir("cpuacct", id).join("cpuacct.usage")) {
        return ns.trim().parse::<u64>().unwrap() / 1000;
    }
    let stat = std::fs::read_to_string(cgroup_dir("", id).join("cpu.stat")).unwrap();
    stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).unwrap().trim().parse().unwrap()
}

/// Waits until instance `id` is frozen (its last request ended a moment ago).
async fn until_frozen(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !frozen(id) {
        assert!(Instant::now() < deadline, "instance {id} was never frozen while idle");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn count(spin: &Value) -> u64 {
    spin["count"].as_u64().unwrap()
}

#[tokio::test]
async fn cpu_only_during_requests_unless_always_on() {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    // Idle instances are stopped after 6 s: long enough for the measurements, short enough
    // to see the frozen ones scaled down at the end.
    let server =
        WharfServer::start_with_env(Path::new(env!("CARGO_BIN_EXE_wharf")), &[("WHARF_IDLE_TIMEOUT", "6s")]).unwrap();
    let client = server.client_builder().timeout(Duration::from_secs(30)).build().unwrap();
    let env = Env { image: format!("{}/testapp:v1", server.addrs.registry_addr), server, client, _work: work };
    env.ok(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]);
    let deploy = |name: &str, extra: &[&str]| {
        let mut args = vec!["run", "deploy", name, "--image", &env.image, "--project", "demo"];
        args.extend(extra);
        env.ok(&args);
    };
    deploy("frugal", &["--cpu-boost"]);
    deploy("busy", &["--no-cpu-throttling"]);
    // Throttled (the default) with a liveness probe every second that fails at the first
    // unanswered check.
    let probe =
        json!({"httpGet": {"path": "/hostname"}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1});
    let (status, op) = env
        .api(
            reqwest::Method::POST,
            &format!("{PARENT}/services?serviceId=probed"),
            Some(json!({"template": {"containers": [{"image": env.image, "livenessProbe": probe}]}})),
        )
        .await;
    assert_eq!(status, 200, "{op}");

    // The settings round-trip through the API and describe's export (Knative annotations).
    let (_, frugal) = env.api(reqwest::Method::GET, &format!("{PARENT}/services/frugal"), None).await;
    let resources = &frugal["template"]["containers"][0]["resources"];
    assert_eq!(resources["startupCpuBoost"], true, "{frugal}");
    assert_eq!(resources.get("cpuIdle"), None, "{frugal}");
    let (_, busy) = env.api(reqwest::Method::GET, &format!("{PARENT}/services/busy"), None).await;
    assert_eq!(busy["template"]["containers"][0]["resources"]["cpuIdle"], false, "{busy}");
    let export = env.ok(&["run", "services", "describe", "busy", "--project", "demo", "--format", "export"]);
    assert!(
        ["'false'", "\"false\""].iter().any(|v| export.contains(&format!("run.googleapis.com/cpu-throttling: {v}"))),
        "{export}"
    );
    let text = env.ok(&["run", "services", "describe", "frugal", "--project", "demo"]);
    assert!(text.contains("only during requests") && text.contains("Startup boost"), "{text}");

    // Throttled: once idle the instance is frozen, and over an idle period it uses no CPU at
    // all while its background loop would have counted all along.
    let started = env.get("frugal", "/spin/start").await;
    let id = started["instance"].as_str().unwrap().to_owned();
    let before = env.get("frugal", "/spin/count").await;
    until_frozen(&id).await;
    let (usage, since) = (cpu_usage_us(&id), Instant::now());
    tokio::time::sleep(IDLE).await;
    let idle_for = since.elapsed();
    assert!(frozen(&id), "the idle instance was thawed without a request");
    assert_eq!(cpu_usage_us(&id), usage, "a frozen instance used CPU over {idle_for:?}");
    let after = env.get("frugal", "/spin/count").await;
    assert_eq!(after["instance"], before["instance"]);
    let pause = after["longestPauseMs"].as_u64().unwrap();
    assert!(pause >= u64::try_from(IDLE.as_millis()).unwrap(), "the loop never stopped for the idle period: {after}");
    // The request thawed it: the loop runs again while requests are in flight.
    env.get("frugal", "/sleep?ms=300").await;
    assert!(count(&env.get("frugal", "/spin/count").await) > count(&after), "the loop did not resume");
    // --cpu-boost: the instance started with twice its quota and runs with its limit.
    let config: Value = serde_json::from_slice(
        &std::fs::read(env.server.data_dir().join("instances").join(&id).join("scratch/bundle/config.json"))
            .unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    if let Some(quota) = config["linux"]["resources"]["cpu"]["quota"].as_i64() {
        assert!(quota > 100_000, "no start-up boost in the instance's spec: quota {quota}");
    }
    if let Ok(quota) = std::fs::read_to_string(cgroup_dir("cpu", &id).join("cpu.cfs_quota_us")) {
        assert_eq!(quota.trim(), "100000", "the start-up boost did not end");
    }

    // Always on: the background loop counts between requests, the cgroup uses CPU.
    let busy = env.get("busy", "/spin/start").await;
    let busy_id = busy["instance"].as_str().unwrap().to_owned();
    let before = env.get("busy", "/spin/count").await;
    let usage = cpu_usage_us(&busy_id);
    tokio::time::sleep(IDLE).await;
    assert!(!frozen(&busy_id), "an always-on instance was frozen");
    assert!(cpu_usage_us(&busy_id) > usage, "the always-on instance used no CPU while idle");
    let after = env.get("busy", "/spin/count").await;
    assert!(count(&after) > count(&before), "the always-on loop made no progress: {before} then {after}");

    // A liveness probe thaws the frozen instance to check it: it stays the same healthy
    // instance over several probe periods, frozen in between.
    let wait_operation = async {
        let name = op["name"].as_str().unwrap();
        loop {
            let (_, op) = env.api(reqwest::Method::GET, &format!("/v2/{name}"), None).await;
            if op["done"] == true {
                return op;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(60), wait_operation).await.unwrap();
    assert_eq!(done["error"], Value::Null, "{done}");
    let probed = env.get("probed", "/hostname").await;
    let probed_id = probed.as_str().unwrap().trim().to_owned();
    until_frozen(&probed_id).await;
    let since = Instant::now();
    let mut thaws = 0;
    let mut was_frozen = true;
    while since.elapsed() < Duration::from_secs(3) {
        let now = frozen(&probed_id);
        if was_frozen && !now {
            thaws += 1;
        }
        was_frozen = now;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(env.get("probed", "/hostname").await.as_str().map(str::trim), Some(probed_id.as_str()));
    assert!(!env.server.log().contains("Liveness probe failed"), "{}", env.server.log());
    eprintln!("the probed instance was thawed {thaws} times in 3 s");

    // Scaled down while frozen: each instance is thawed first and exits on SIGTERM.
    assert!(frozen(&id) || !cgroup_dir("freezer", &id).exists());
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.instances() > 0 {
        assert!(Instant::now() < deadline, "the idle instances were never scaled down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = env.ok(&["logs", "read", "--limit", "500"]);
    assert_eq!(
        logs.matches("testapp: received SIGTERM, exiting").count(),
        3,
        "not every instance exited on SIGTERM:\n{logs}"
    );
}
