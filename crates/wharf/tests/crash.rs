//! Crash safety with real `SIGKILL`s of `wharf server`: killed during a deploy (its operation
//! running), during a registry push (skopeo uploading), during a job execution (tasks
//! running) and during a service delete; then started again on the same data directory.
//! After each: the API shows consistent resources, every operation completes (or fails with a
//! reason), the execution finishes, and the final stop leaves nothing on the machine (the
//! server's leak guard: processes, mounts, cgroups, namespaces, links, host-network
//! registrations). What the restarted server does is documented in docs/architecture.md
//! ("Crashes and restarts").

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, testapp_image};

const PARENT: &str = "/v2/projects/crash/locations/us-central1";

struct Env {
    server: WharfServer,
    image: String,
    /// The test image's OCI layout, for pushes.
    layout: PathBuf,
    _work: tempfile::TempDir,
}

fn setup() -> Env {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "crash:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{}/crash:v1", server.addrs.registry_addr);
    Env { server, image, layout: built.layout, _work: work }
}

impl Env {
    fn client(&self) -> reqwest::Client {
        self.server.client_builder().timeout(Duration::from_secs(60)).build().unwrap()
    }

    /// Sends an API request and returns the status and JSON body.
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client().request(method, self.server.api_url(path)).bearer_auth(&self.server.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, path, None).await
    }

    /// Polls the operation until it is done (bounded), and returns it.
    async fn operation_done(&self, name: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, op) = self.get(&format!("/v2/{name}")).await;
            assert_eq!(status, 200, "{op}");
            if op["done"] == true {
                return op;
            }
            assert!(Instant::now() < deadline, "operation {name} never completed after the restart: {op}\n{}", {
                self.server.log()
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn instances(&self) -> usize {
        std::fs::read_dir(self.server.data_dir().join("instances")).map(|d| d.count()).unwrap_or(0)
    }

    /// Waits (bounded) until `n` instances exist on disk.
    async fn wait_for_instances(&self, what: &str, want: impl Fn(usize) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !want(self.instances()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {} instances", self.instances());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET / on a service through the ingress, by the host of its URI.
    async fn through_ingress(&self, uri: &str) -> (u16, String) {
        let host = uri.trim_start_matches("http://").split('/').next().unwrap().to_owned();
        let r = self
            .client()
            .get(format!("http://{}/", self.server.addrs.ingress_addr))
            .header("Host", host.split(':').next().unwrap())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Stops the server cleanly and asserts nothing it (or the killed one) started is left.
    fn stop_clean(mut self) {
        let left = self.server.stop_and_check().unwrap();
        assert!(left.is_empty(), "left on the machine after the final stop: {left:?}");
    }
}

/// A deploy whose revision takes a few seconds to become ready (startup probe with an initial
/// delay) is killed while its operation runs. The restarted server proves the revision
/// again, the same operation completes without error, and the service serves.
#[tokio::test]
async fn a_kill_during_a_deploy_leaves_an_operation_that_completes_after_restart() {
    let mut env = setup();
    let body = json!({"template": {"containers": [{
        "image": env.image,
        "startupProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3, "periodSeconds": 1}
    }]}});
    let (status, op) = env.api(reqwest::Method::POST, &format!("{PARENT}/services?serviceId=slow"), Some(body)).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["done"], Value::Null, "the deploy finished before it could be killed: {op}");
    let op_name = op["name"].as_str().unwrap().to_owned();
    env.wait_for_instances("the revision's first instance", |n| n >= 1).await;

    env.server.crash_and_restart().unwrap();

    let op = env.operation_done(&op_name, Duration::from_secs(90)).await;
    assert_eq!(op["error"], Value::Null, "{op}");
    let (status, service) = env.get(&format!("{PARENT}/services/slow")).await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["terminalCondition"]["state"], "CONDITION_SUCCEEDED", "{service}");
    assert_eq!(service["latestReadyRevision"], service["latestCreatedRevision"], "{service}");
    let (status, revisions) = env.get(&format!("{PARENT}/services/slow/revisions")).await;
    assert_eq!(status, 200);
    assert_eq!(revisions["revisions"].as_array().map(Vec::len), Some(1), "one revision, not two: {revisions}");
    let (status, body) = env.through_ingress(service["uri"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    env.stop_clean();
}

/// A job execution killed with both tasks running: the restarted server counts each running
/// attempt as failed, retries it, the execution succeeds, and the operation `:run` answered
/// with completes.
#[tokio::test]
async fn a_kill_during_a_job_execution_then_it_finishes_and_its_run_operation_completes() {
    let mut env = setup();
    let body = json!({"template": {"taskCount": 2, "template": {"maxRetries": 3, "containers": [{
        "image": env.image, "args": ["job"], "env": [{"name": "TESTAPP_SLEEP_MS", "value": "3000"}]
    }]}}});
    let (status, op) = env.api(reqwest::Method::POST, &format!("{PARENT}/jobs?jobId=batch"), Some(body)).await;
    assert_eq!(status, 200, "{op}");
    let (status, op) = env.api(reqwest::Method::POST, &format!("{PARENT}/jobs/batch:run"), Some(json!({}))).await;
    assert_eq!(status, 200, "{op}");
    let op_name = op["name"].as_str().unwrap().to_owned();
    let execution = op["metadata"]["name"].as_str().unwrap().to_owned();
    env.wait_for_instances("both tasks to run", |n| n == 2).await;

    env.server.crash_and_restart().unwrap();

    let op = env.operation_done(&op_name, Duration::from_secs(120)).await;
    assert_eq!(op["error"], Value::Null, "{op}");
    let (status, e) = env.get(&format!("/v2/{execution}")).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["conditions"][0]["state"], "CONDITION_SUCCEEDED", "{e}");
    assert_eq!(e["succeededCount"], 2, "{e}");
    assert_eq!(e["retriedCount"], 2, "each interrupted attempt counts as a failed one: {e}");
    assert_eq!(e["runningCount"].as_i64().unwrap_or(0), 0, "{e}");
    assert_eq!(env.instances(), 0, "task instances are still there");
    env.stop_clean();
}

/// A delete killed right after it was accepted: the service and its revisions are gone after
/// the restart (one transaction), the delete's operation completes, and its instance was
/// stopped by the restarted server's sweep.
#[tokio::test]
async fn a_kill_during_a_service_delete_keeps_it_deleted_and_completes_the_operation() {
    let mut env = setup();
    let out = env
        .server
        .cli(&[
            "run",
            "deploy",
            "doomed",
            "--image",
            &env.image,
            "--project",
            "crash",
            "--region",
            "us-central1",
            "--min-instances",
            "1",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.wait_for_instances("the min instance", |n| n >= 1).await;
    let (status, op) = env.api(reqwest::Method::DELETE, &format!("{PARENT}/services/doomed"), None).await;
    assert_eq!(status, 200, "{op}");
    let op_name = op["name"].as_str().unwrap().to_owned();

    env.server.crash_and_restart().unwrap();

    let (status, body) = env.get(&format!("{PARENT}/services/doomed")).await;
    assert_eq!(status, 404, "the deleted service came back: {body}");
    let (status, list) = env.get(&format!("{PARENT}/services")).await;
    assert_eq!(status, 200);
    assert_eq!(list["services"].as_array().map(Vec::len).unwrap_or(0), 0, "{list}");
    let (status, revisions) = env.get(&format!("{PARENT}/services/-/revisions")).await;
    assert_eq!(status, 200);
    assert_eq!(revisions["revisions"].as_array().map(Vec::len).unwrap_or(0), 0, "{revisions}");
    let op = env.operation_done(&op_name, Duration::from_secs(30)).await;
    assert_eq!(op["error"], Value::Null, "{op}");
    assert_eq!(env.instances(), 0, "the deleted service's instance survived the restart");
    env.stop_clean();
}

fn skopeo(args: &[&str]) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "--tmpdir", &std::env::temp_dir().to_string_lossy()]);
    cmd.args(args);
    cmd
}

/// Upload sessions the registry has open on disk.
fn uploads(data_dir: &Path) -> usize {
    let mut count = 0;
    for dir in [data_dir.join("uploads"), data_dir.join("images/uploads")] {
        count += std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    }
    count
}

/// A push killed while skopeo uploads blobs: after the restart the half-pushed tag does not
/// exist (no manifest without its blobs), the same push then succeeds, and the image is
/// whole and deployable.
#[tokio::test]
async fn a_kill_during_a_registry_push_leaves_no_half_image_and_the_push_can_be_repeated() {
    let mut env = setup();
    let creds = format!("wharf:{}", env.server.token);
    let source = format!("oci:{}:v1", env.layout.display());
    let dest = format!("docker://{}/pushed/app:v1", env.server.addrs.registry_addr);
    let mut push = skopeo(&["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
        .arg(&source)
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while uploads(env.server.data_dir()) == 0 {
        assert!(Instant::now() < deadline, "skopeo never started an upload");
        assert!(push.try_wait().unwrap().is_none(), "the push ended before it could be killed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    env.server.crash_and_restart().unwrap();
    let status = push.wait().unwrap();
    assert!(!status.success(), "skopeo's push survived the kill of its registry");

    // The killed push left no tag behind, and the registry answers for it.
    let (status, tags) = {
        let r = env
            .client()
            .get(env.server.registry_url("/v2/pushed/app/tags/list"))
            .basic_auth("wharf", Some(&env.server.token))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert!(status == 404 || !tags.contains("\"v1\""), "a half-pushed tag exists: {status} {tags}");

    // The same push now goes through (new ports: a new destination address).
    let dest = format!("docker://{}/pushed/app:v1", env.server.addrs.registry_addr);
    let out = skopeo(&["copy", "--dest-tls-verify=false", "--dest-creds", &creds]).arg(&source).arg(&dest).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{}/pushed/app:v1", env.server.addrs.registry_addr);
    let out = env
        .server
        .cli(&["run", "deploy", "pushed", "--image", &image, "--project", "crash", "--region", "us-central1"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, service) = env.get(&format!("{PARENT}/services/pushed")).await;
    assert_eq!(status, 200, "{service}");
    let (status, body) = env.through_ingress(service["uri"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    env.stop_clean();
}
