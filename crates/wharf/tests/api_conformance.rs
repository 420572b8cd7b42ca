//! The admin API behaves like Google's Cloud Run Admin API v2 on the points where Wharf once
//! did not: each row of the tables below is a request and the status and body Google's endpoint
//! would answer, tried against a real server. Dry runs (`validateOnly`) are checked to change
//! nothing: the resource is still there, no execution was started, no operation was stored.

use std::path::Path;

use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, testapp_image};

const BASE: &str = "/v2/projects/conf/locations/us-central1";

struct Api {
    server: WharfServer,
    client: reqwest::Client,
    image: String,
    _work: tempfile::TempDir,
}

impl Api {
    fn start() -> Api {
        let work = tempfile::tempdir().unwrap();
        let built = testapp_image(work.path(), "v1").unwrap();
        let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
        let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let image = format!("{}/testapp:v1", server.addrs.registry_addr);
        Api { client: server.client_builder().build().unwrap(), server, image, _work: work }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.server.api_url(path)).bearer_auth(&self.server.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Calls and asserts the status; returns the body.
    async fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, answer) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path} answered {got}: {answer}");
        answer
    }

    /// Waits for the operation in `op` to be done; returns it.
    async fn wait(&self, op: &Value) -> Value {
        let name = op["name"].as_str().unwrap().to_owned();
        let answer = self.expect("POST", &format!("/v2/{name}:wait"), Some(json!({"timeout": "120s"})), 200).await;
        assert_eq!(answer["done"], true, "{answer}");
        answer
    }

    fn job_body(&self, args: &[&str]) -> Value {
        json!({"template": {"taskCount": 1, "template": {"maxRetries": 0, "containers": [{"image": self.image, "args": args}]}}})
    }
}

/// The JSON error body of a failed call: `{"error": {"code", "message", "status", "details"}}`.
fn assert_status(body: &Value, http: u16, status: &str, message_has: &str) {
    let error = &body["error"];
    assert_eq!(error["code"], http, "{body}");
    assert_eq!(error["status"], status, "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(message_has), "{message:?} lacks {message_has:?}");
}

#[tokio::test]
async fn request_bodies_are_read_strictly_and_errors_are_google_rpc_statuses() {
    let mut api = Api::start();
    let service = |extra: Value| {
        let mut body = json!({"template": {"containers": [{"image": api.image}]}});
        merge(&mut body, extra);
        body
    };
    let create = format!("{BASE}/services?serviceId=strict");
    // (body, the field named, the message's gist)
    let refused: Vec<(Value, &str, &str)> = vec![
        (service(json!({"bogusField": 1})), "bogusField", "Unknown name \"bogusField\""),
        (
            service(json!({"template": {"volumes": [{"name": "v", "nfs": {"server": "s"}}]}})),
            "template.volumes[0].nfs",
            "does not support yet",
        ),
        (service(json!({"scaling": {"minInstanceCount": 1}})), "scaling", "does not support yet"),
        (service(json!({"template": {"encryptionKey": "k"}})), "template.encryptionKey", "does not support yet"),
        (
            service(json!({"template": {"nodeSelector": {"accelerator": "x"}}})),
            "template.nodeSelector",
            "does not support yet",
        ),
        (
            service(json!({"template": {"containers": [{"image": api.image, "readinessProbe": {}}]}})),
            "template.containers[0].readinessProbe",
            "does not support yet",
        ),
        (
            service(json!({"template": {"containers": [{"image": api.image, "dependsOn": ["x"]}]}})),
            "template.containers[0].dependsOn",
            "does not support yet",
        ),
        (
            service(json!({"template": {"containers": [{"image": api.image, "baseImageUri": "x"}]}})),
            "template.containers[0].baseImageUri",
            "does not support yet",
        ),
        (
            service(
                json!({"template": {"containers": [{"image": api.image, "startupProbe": {"httpGet": {"httpHeaders": []}}}]}}),
            ),
            "template.containers[0].startupProbe.httpGet.httpHeaders",
            "does not support yet",
        ),
        (
            service(json!({"template": {"maxInstanceRequestConcurrency": "many"}})),
            "template.maxInstanceRequestConcurrency",
            "Invalid value",
        ),
    ];
    for (body, field, gist) in refused {
        let answer = api.expect("POST", &create, Some(body.clone()), 400).await;
        assert_status(&answer, 400, "INVALID_ARGUMENT", gist);
        let detail = &answer["error"]["details"][0];
        assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest", "{answer}");
        assert_eq!(detail["fieldViolations"][0]["field"], field, "{body} -> {answer}");
    }
    // vpcAccess is read, but this server allows no VPC networks (network.rs tests one that does).
    let vpc = service(json!({"template": {"vpcAccess": {"connector": "c"}}}));
    let answer = api.expect("POST", &create, Some(vpc), 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "allows no VPC networks");
    // A duration out of any range is a 400, never a dropped connection.
    let answer = api.expect("POST", &create, Some(service(json!({"template": {"timeout": "1e20s"}}))), 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "timeout");
    // Ports name a protocol: http1 or h2c; anything else is refused with both named.
    let h3 = service(
        json!({"template": {"containers": [{"image": api.image, "ports": [{"name": "h3", "containerPort": 8080}]}]}}),
    );
    let answer = api.expect("POST", &create, Some(h3), 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "use http1 (HTTP/1.1, the default) or h2c");
    // A gRPC probe names a gRPC service, or none.
    let bad_grpc = service(json!({"template": {"containers": [{"image": api.image,
        "startupProbe": {"grpc": {"service": "no spaces"}}}]}}));
    let answer = api.expect("POST", &create, Some(bad_grpc), 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "startupProbe.grpc.service");
    let relative = service(json!({"template": {"containers": [{"image": api.image, "workingDir": "tmp"}]}}));
    let answer = api.expect("POST", &create, Some(relative), 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "workingDir");
    // Output-only fields a client read back are ignored, as Google ignores them; workingDir is
    // honoured: a relative path written inside the instance lands under it.
    let body = service(
        json!({"satisfiesPzs": true, "template": {"containers": [{"image": api.image, "workingDir": "/tmp"}]}}),
    );
    let op = api.expect("POST", &create, Some(body), 200).await;
    let done = api.wait(&op).await;
    let uri = done["response"]["uri"].as_str().expect("a URL").to_owned();
    let host = uri.trim_start_matches("http://").split(':').next().unwrap().to_owned();
    let ingress = format!("http://{}", api.server.addrs.ingress_addr);
    let put =
        api.client.put(format!("{ingress}/file?path=marker")).header("Host", &host).body("here").send().await.unwrap();
    assert_eq!(put.status().as_u16(), 201, "{}", put.text().await.unwrap());
    let got = api.client.get(format!("{ingress}/file?path=/tmp/marker")).header("Host", &host).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "here");

    // Unknown routes and methods answer with a google.rpc.Status body too.
    let answer = api.expect("GET", "/v2/projects/conf/locations/us-central1/widgets", None, 404).await;
    assert_status(&answer, 404, "NOT_FOUND", "is not an API method");
    let (status, answer) = api.call("PUT", &format!("{BASE}/services/strict"), Some(json!({}))).await;
    assert_eq!(status, 405, "{answer}");
    assert_status(&answer, 405, "UNIMPLEMENTED", "PUT is not a method");
    // Booleans are booleans.
    let answer = api.expect("DELETE", &format!("{BASE}/services/strict?validateOnly=yes"), None, 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "validateOnly");
    assert!(api.server.stop_and_check().unwrap().is_empty());
}

#[tokio::test]
async fn dry_runs_change_nothing_and_etags_allow_missing_and_paging_hold_on_every_rpc() {
    let mut api = Api::start();
    let service = json!({"template": {"containers": [{"image": api.image}]}});
    let op = api.expect("POST", &format!("{BASE}/services?serviceId=dry"), Some(service.clone()), 200).await;
    api.wait(&op).await;
    let svc = format!("{BASE}/services/dry");

    // DeleteService: validateOnly deletes nothing; a stale etag is ABORTED.
    let dry = api.expect("DELETE", &format!("{svc}?validateOnly=true"), None, 200).await;
    assert_eq!(dry["done"], true, "{dry}");
    api.expect("GET", &svc, None, 200).await;
    let answer = api.expect("DELETE", &format!("{svc}?etag=%22stale%22"), None, 409).await;
    assert_status(&answer, 409, "ABORTED", "etag");
    let revisions = api.expect("GET", &format!("{svc}/revisions"), None, 200).await;
    let revision = revisions["revisions"][0]["name"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let answer = api.expect("DELETE", &format!("{svc}/revisions/{revision}?validateOnly=true"), None, 400).await;
    assert_status(&answer, 400, "FAILED_PRECONDITION", "serves 100% of traffic");

    // Jobs: a dry-run create stores nothing, a dry-run run starts nothing.
    let jobs = format!("{BASE}/jobs");
    let body = api.job_body(&["job"]);
    api.expect("POST", &format!("{jobs}?jobId=dryjob&validateOnly=true"), Some(body.clone()), 200).await;
    api.expect("GET", &format!("{jobs}/dryjob"), None, 404).await;
    api.expect("POST", &format!("{jobs}?jobId=dryjob"), Some(body.clone()), 200).await;
    let dry = api.expect("POST", &format!("{jobs}/dryjob:run"), Some(json!({"validateOnly": true})), 200).await;
    assert_eq!(dry["done"], true, "{dry}");
    let executions = api.expect("GET", &format!("{jobs}/dryjob/executions"), None, 200).await;
    assert_eq!(executions["executions"], json!([]), "a dry run started an execution: {executions}");
    let job = api.expect("GET", &format!("{jobs}/dryjob"), None, 200).await;
    assert!(job.get("executionCount").is_none(), "{job}");
    // Stale etags are refused on run, update and delete.
    let stale = Some(json!({"etag": "\"999\""}));
    let answer = api.expect("POST", &format!("{jobs}/dryjob:run"), stale, 409).await;
    assert_status(&answer, 409, "ABORTED", "etag");
    let mut stale_update = body.clone();
    stale_update["etag"] = json!("\"999\"");
    api.expect("PATCH", &format!("{jobs}/dryjob"), Some(stale_update), 409).await;
    api.expect("DELETE", &format!("{jobs}/dryjob?etag=%22999%22"), None, 409).await;
    // A dry-run update changes nothing; allowMissing creates.
    let mut changed = body.clone();
    changed["template"]["taskCount"] = json!(2);
    api.expect("PATCH", &format!("{jobs}/dryjob?validateOnly=true"), Some(changed.clone()), 200).await;
    let job = api.expect("GET", &format!("{jobs}/dryjob"), None, 200).await;
    assert_eq!(job["generation"], "1", "{job}");
    api.expect("PATCH", &format!("{jobs}/ghost"), Some(body.clone()), 404).await;
    api.expect("PATCH", &format!("{jobs}/ghost?allowMissing=true"), Some(body.clone()), 200).await;
    api.expect("GET", &format!("{jobs}/ghost"), None, 200).await;

    // Executions: run one that waits, then dry-run cancel and delete it.
    let mut slow = api.job_body(&["job"]);
    slow["template"]["template"]["containers"][0]["env"] = json!([{"name": "TESTAPP_SLEEP_MS", "value": "60000"}]);
    api.expect("POST", &format!("{jobs}?jobId=slow"), Some(slow), 200).await;
    let op = api.expect("POST", &format!("{jobs}/slow:run"), Some(json!({})), 200).await;
    let execution = op["metadata"]["name"].as_str().unwrap().to_owned();
    let id = execution.rsplit('/').next().unwrap().to_owned();
    let dry = api
        .expect("POST", &format!("{jobs}/slow/executions/{id}:cancel"), Some(json!({"validateOnly": true})), 200)
        .await;
    assert_eq!(dry["done"], true);
    api.expect("DELETE", &format!("{jobs}/slow/executions/{id}?validateOnly=true"), None, 200).await;
    let running = api.expect("GET", &format!("/v2/{execution}"), None, 200).await;
    assert!(running.get("completionTime").is_none(), "a dry run ended the execution: {running}");
    api.expect("POST", &format!("{jobs}/slow/executions/{id}:cancel"), Some(json!({})), 200).await;
    // The run's operation completes when the execution ends.
    let ended = api.wait(&op).await;
    assert_eq!(ended["error"]["code"], 10, "{ended}");
    let cancelled = api.expect("GET", &format!("/v2/{execution}"), None, 200).await;
    assert_eq!(cancelled["conditions"][0]["executionReason"], "CANCELLED", "{cancelled}");

    // Paging on jobs (three now), with a token that walks the list and a foreign one refused.
    let first = api.expect("GET", &format!("{jobs}?pageSize=2"), None, 200).await;
    assert_eq!(first["jobs"].as_array().unwrap().len(), 2, "{first}");
    let token = first["nextPageToken"].as_str().expect("a next page").to_owned();
    let second = api.expect("GET", &format!("{jobs}?pageSize=2&pageToken={token}"), None, 200).await;
    assert_eq!(second["jobs"].as_array().unwrap().len(), 1, "{second}");
    assert!(second.get("nextPageToken").is_none(), "{second}");
    let answer = api.expect("GET", &format!("{jobs}?pageToken=nope"), None, 400).await;
    assert_status(&answer, 400, "INVALID_ARGUMENT", "pageToken");

    // Operations: listed, filtered, deleted.
    let ops = format!("{BASE}/operations");
    let all = api.expect("GET", &ops, None, 200).await;
    let listed = all["operations"].as_array().unwrap();
    assert!(listed.len() >= 4, "{all}");
    let done = api.expect("GET", &format!("{ops}?filter=done%3Dtrue"), None, 200).await;
    assert!(done["operations"].as_array().unwrap().iter().all(|op| op["done"] == true), "{done}");
    api.expect("GET", &format!("{ops}?filter=metadata.x%3D1"), None, 400).await;
    let name = listed[0]["name"].as_str().unwrap().to_owned();
    assert_eq!(api.expect("DELETE", &format!("/v2/{name}"), None, 200).await, json!({}));
    api.expect("GET", &format!("/v2/{name}"), None, 404).await;
    assert!(api.server.stop_and_check().unwrap().is_empty());
}

/// Merges `extra` into `base`, objects key by key.
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

impl Api {
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = args.to_vec();
        full.extend(["--project", "conf", "--region", "us-central1"]);
        let out = self.server.cli(&full).unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.cli(args);
        assert!(ok, "wharf {args:?} failed:\n{stderr}");
        stdout
    }

    fn revision_count(&self, service: &str) -> usize {
        let out = self.cli_ok(&["run", "revisions", "list", "--service", service, "--format", "json"]);
        serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len()
    }
}

#[tokio::test]
async fn knative_yaml_replaces_and_an_unchanged_export_is_a_no_op() {
    let mut api = Api::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kn.yaml");
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: kn\n  labels:\n    team: web\n\
         spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/maxScale: '3'\n\
         \x20       run.googleapis.com/execution-environment: gen2\n    spec:\n      containerConcurrency: 5\n\
         \x20     containers:\n      - image: {}\n        env:\n        - name: GREETING\n          value: hi\n",
        api.image
    );
    std::fs::write(&file, &yaml).unwrap();
    let path = file.to_string_lossy().into_owned();
    api.cli_ok(&["run", "services", "replace", &path]);
    assert_eq!(api.revision_count("kn"), 1);

    // A summary by default, as gcloud prints one.
    let summary = api.cli_ok(&["run", "services", "describe", "kn"]);
    for part in
        ["Service kn in region us-central1", "URL:", "Traffic:", "100% LATEST", "GREETING", "Max Instances:   3"]
    {
        assert!(summary.contains(part), "{part:?} missing from:\n{summary}");
    }
    // An export has no status or server-set metadata, and replacing it changes nothing.
    let export = api.cli_ok(&["run", "services", "describe", "kn", "--format", "export"]);
    for absent in ["status:", "uid:", "generation:", "creationTimestamp:"] {
        assert!(!export.contains(absent), "{absent:?} in the export:\n{export}");
    }
    assert!(export.contains("autoscaling.knative.dev/maxScale: '3'") || export.contains("maxScale: \"3\""), "{export}");
    let before = api.cli_ok(&["run", "services", "describe", "kn", "--format", "value(metadata.generation)"]);
    std::fs::write(&file, &export).unwrap();
    api.cli_ok(&["run", "services", "replace", &path]);
    let after = api.cli_ok(&["run", "services", "describe", "kn", "--format", "value(metadata.generation)"]);
    assert_eq!(
        (before.trim(), api.revision_count("kn")),
        (after.trim(), 1),
        "an unchanged replace changed the service"
    );
    // A changed export makes a revision.
    std::fs::write(&file, export.replace("value: hi", "value: hello")).unwrap();
    api.cli_ok(&["run", "services", "replace", &path]);
    assert_eq!(api.revision_count("kn"), 2);

    // YAML errors name the field and the line; unsupported annotations are refused by name.
    std::fs::write(&file, yaml.replace("        env:\n", "        envv:\n")).unwrap();
    let (ok, _, stderr) = api.cli(&["run", "services", "replace", &path]);
    assert!(!ok && stderr.contains("envv") && stderr.contains("line 17"), "{stderr}");
    std::fs::write(&file, yaml.replace("gen2", "gen2\n        run.googleapis.com/cloudsql-instances: c")).unwrap();
    let (ok, _, stderr) = api.cli(&["run", "services", "replace", &path]);
    assert!(!ok && stderr.contains("cloudsql-instances") && stderr.contains("not supported"), "{stderr}");
    // The VPC annotations are read (as vpcAccess); this server has no VPC network to give.
    std::fs::write(&file, yaml.replace("gen2", "gen2\n        run.googleapis.com/vpc-access-connector: c")).unwrap();
    let (ok, _, stderr) = api.cli(&["run", "services", "replace", &path]);
    assert!(!ok && stderr.contains("vpcAccess") && stderr.contains("allows no VPC networks"), "{stderr}");
    let (ok, _, stderr) = api.cli(&["run", "jobs", "list", "--format", "export"]);
    assert!(!ok && stderr.contains("--format export"), "{stderr}");

    // Jobs: run.googleapis.com/v1 Job YAML, created by replace, exported, replaced unchanged
    // (nothing changes), then changed.
    let job_yaml = format!(
        "apiVersion: run.googleapis.com/v1\nkind: Job\nmetadata:\n  name: crunch\nspec:\n  template:\n    spec:\n\
         \x20     taskCount: 2\n      template:\n        spec:\n          maxRetries: 0\n          timeoutSeconds: '60'\n\
         \x20         containers:\n          - image: {}\n            args: [job]\n",
        api.image
    );
    std::fs::write(&file, &job_yaml).unwrap();
    api.cli_ok(&["run", "jobs", "replace", &path]);
    let generation = || {
        let job: Value =
            serde_json::from_str(&api.cli_ok(&["run", "jobs", "describe", "crunch", "--format", "json"])).unwrap();
        (job["generation"].clone(), job["template"]["taskCount"].clone())
    };
    assert_eq!(generation(), (json!("1"), json!(2)));
    let export = api.cli_ok(&["run", "jobs", "describe", "crunch", "--format", "export"]);
    assert!(export.contains("run.googleapis.com/v1") && !export.contains("etag"), "{export}");
    std::fs::write(&file, &export).unwrap();
    api.cli_ok(&["run", "jobs", "replace", &path]);
    assert_eq!(generation(), (json!("1"), json!(2)), "an unchanged job replace changed the job");
    std::fs::write(&file, export.replace("taskCount: 2", "taskCount: 3")).unwrap();
    api.cli_ok(&["run", "jobs", "replace", &path]);
    assert_eq!(generation(), (json!("2"), json!(3)));
    assert!(api.server.stop_and_check().unwrap().is_empty());
}
