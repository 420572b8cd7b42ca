//! Secret Manager end to end against a real server: the `wharf secrets` CLI round trip, the
//! payloads never in clear under the data directory (database, WAL, server log) nor in any
//! output but `access`, key rotation surviving a restart, IAM: a service account without
//! `roles/secretmanager.secretAccessor` is denied `:access` and admitted once granted, and the
//! API's refusals of what Wharf does not support; and delivery: a real instance reads an env
//! secret and a file secret (read-only, in memory), the deploy is refused for a service
//! account without access, and a destroyed version fails new instances naming the secret.

use std::path::Path;

use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, service_host, testapp_image};

fn server() -> WharfServer {
    WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap()
}

/// Runs the CLI; asserts success and returns stdout.
fn cli_ok(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(
        out.status.success(),
        "wharf {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI; asserts failure and returns stderr.
fn cli_err(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(!out.status.success(), "wharf {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, recursively, whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn unique_secret(tag: &str) -> String {
    format!("wharf-test-{tag}-{}", uuid_like())
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn cli_round_trip_keeps_payloads_encrypted_on_disk_and_out_of_logs() {
    let mut server = server();
    let work = tempfile::tempdir().unwrap();
    let first = unique_secret("first");
    let second = unique_secret("second");
    std::fs::write(work.path().join("v1"), &first).unwrap();
    std::fs::write(work.path().join("v2"), &second).unwrap();
    let v1 = work.path().join("v1").display().to_string();
    let v2 = work.path().join("v2").display().to_string();

    cli_ok(&server, &["secrets", "create", "db-password", &format!("--data-file={v1}"), "--labels=team=db"]);
    cli_ok(&server, &["secrets", "versions", "add", "db-password", &format!("--data-file={v2}")]);
    assert_eq!(cli_ok(&server, &["secrets", "versions", "access", "1", "--secret=db-password"]), first);
    assert_eq!(cli_ok(&server, &["secrets", "versions", "access", "latest", "--secret=db-password"]), second);

    let described = cli_ok(&server, &["secrets", "describe", "db-password", "--format=json"]);
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["name"], "projects/default/secrets/db-password");
    assert_eq!(described["labels"]["team"], "db");
    let listed = cli_ok(&server, &["secrets", "list", "--format=value(name.basename())"]);
    assert_eq!(listed.trim(), "db-password");
    let versions =
        cli_ok(&server, &["secrets", "versions", "list", "db-password", "--format=value(name.basename(),state)"]);
    assert_eq!(versions.split_whitespace().collect::<Vec<_>>(), ["2", "ENABLED", "1", "ENABLED"]);

    cli_ok(&server, &["secrets", "versions", "disable", "2", "--secret=db-password"]);
    let refused = cli_err(&server, &["secrets", "versions", "access", "latest", "--secret=db-password"]);
    assert!(refused.contains("projects/default/secrets/db-password/versions/2] is in DISABLED state"), "{refused}");
    cli_ok(&server, &["secrets", "versions", "enable", "2", "--secret=db-password"]);
    cli_ok(&server, &["secrets", "versions", "destroy", "1", "--secret=db-password"]);
    let refused = cli_err(&server, &["secrets", "versions", "access", "1", "--secret=db-password"]);
    assert!(refused.contains("versions/1] is in DESTROYED state"), "{refused}");

    let policy = cli_ok(
        &server,
        &[
            "secrets",
            "add-iam-policy-binding",
            "db-password",
            "--member=serviceAccount:app@default.iam.gserviceaccount.com",
            "--role=roles/secretmanager.secretAccessor",
            "--format=json",
        ],
    );
    let policy: Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["bindings"][0]["members"][0], "serviceAccount:app@default.iam.gserviceaccount.com");

    // Rotation re-wraps; the payload reads the same, before and after a restart.
    let key_before = std::fs::read(server.data_dir().join("secrets.kek")).unwrap();
    cli_ok(&server, &["secrets", "rotate-key"]);
    assert_ne!(std::fs::read(server.data_dir().join("secrets.kek")).unwrap(), key_before);
    assert_eq!(cli_ok(&server, &["secrets", "versions", "access", "2", "--secret=db-password"]), second);
    server.restart().unwrap();
    assert_eq!(cli_ok(&server, &["secrets", "versions", "access", "latest", "--secret=db-password"]), second);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(server.data_dir().join("secrets.kek")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Nothing under the data directory holds either payload in clear or in base64: not the
    // database, not its WAL, not the server's log.
    use base64::Engine as _;
    for secret in [&first, &second] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        assert_eq!(files_containing(server.data_dir(), secret.as_bytes()), Vec::<String>::new(), "{secret}");
        assert_eq!(files_containing(server.data_dir(), encoded.as_bytes()), Vec::<String>::new(), "{encoded}");
        assert!(!server.log().contains(secret.as_str()));
    }
    assert!(server.data_dir().join("server.log").exists());
    assert!(server.data_dir().join("state.db").exists());

    cli_ok(&server, &["secrets", "delete", "db-password", "--quiet"]);
    let gone = cli_err(&server, &["secrets", "describe", "db-password"]);
    assert!(gone.contains("not found"), "{gone}");
    assert!(server.stop().unwrap());
}

struct Api<'a> {
    server: &'a WharfServer,
    client: reqwest::Client,
}

impl Api<'_> {
    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.server.api_url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

#[tokio::test]
async fn a_service_account_needs_the_accessor_role_to_access_a_secret() {
    let server = server();
    let api = Api { server: &server, client: wharf_testsupport::http_client().build().unwrap() };
    let owner = server.token.clone();
    let (status, body) = api
        .call(
            &owner,
            "POST",
            "/v1/projects/iam-p/secrets?secretId=api-key",
            Some(json!({"replication": {"automatic": {}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .call(
            &owner,
            "POST",
            "/v1/projects/iam-p/secrets/api-key:addVersion",
            Some(json!({"payload": {"data": "c2VjcmV0"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A real token for a service account (created through the CLI), minted in the server's
    // own database as the metadata server would mint one.
    let out = server.cli(&["iam", "service-accounts", "create", "app-runner", "--project", "iam-p"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let account = "app-runner@iam-p.iam.gserviceaccount.com";
    let db = wharf_store::Store::open(&server.data_dir().join("state.db")).unwrap();
    let iam = wharf_iam::Iam::open(db, server.data_dir()).unwrap();
    let token = iam.mint_access_token(&wharf_iam::Principal::ServiceAccount(account.into()), 600).unwrap().token;

    let access = "/v1/projects/iam-p/secrets/api-key/versions/latest:access";
    let (status, body) = api.call(&token, "GET", access, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        body["error"]["message"],
        "Permission 'secretmanager.versions.access' denied on resource 'projects/iam-p/secrets/api-key' (or it may not exist)."
    );
    let (status, _) = api.call(&token, "GET", "/v1/projects/iam-p/secrets", None).await;
    assert_eq!(status, 403);
    let (status, _) = api.call(&token, "POST", "/wharf/v1/secrets:rotateKey", Some(json!({}))).await;
    assert_eq!(status, 403);

    let policy = json!({"policy": {"bindings": [
        {"role": "roles/secretmanager.secretAccessor", "members": [format!("serviceAccount:{account}")]}
    ]}});
    let (status, body) =
        api.call(&owner, "POST", "/v1/projects/iam-p/secrets/api-key:setIamPolicy", Some(policy)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.call(&token, "GET", access, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"]["data"], "c2VjcmV0");
    assert_eq!(body["payload"]["dataCrc32c"], crc32c::crc32c(b"secret").to_string());
    // The accessor role reads payloads; it does not manage the secret.
    let (status, _) = api.call(&token, "DELETE", "/v1/projects/iam-p/secrets/api-key", None).await;
    assert_eq!(status, 403);
    let (status, _) = api
        .call(&token, "POST", "/v1/projects/iam-p/secrets/api-key:addVersion", Some(json!({"payload": {"data": ""}})))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_api_refuses_what_wharf_does_not_support_by_name() {
    let server = server();
    let api = Api { server: &server, client: wharf_testsupport::http_client().build().unwrap() };
    let owner = server.token.clone();
    let cases = [
        (
            "POST",
            "/v1/projects/p/secrets?secretId=s",
            json!({"replication": {"userManaged": {"replicas": [{"location": "us-east1"}]}}}),
            400,
            "replication.userManaged",
        ),
        (
            "POST",
            "/v1/projects/p/secrets?secretId=s",
            json!({"topics": [{"name": "t"}]}),
            400,
            "topics is not supported",
        ),
        ("POST", "/v1/projects/p/secrets?secretId=bad%20id", json!({}), 400, "not a valid secret id"),
        ("POST", "/v1/projects/p/secrets", json!({}), 400, "secretId is required"),
        ("POST", "/v1/projects/p/secrets/missing:addVersion", json!({"payload": {"data": "eA=="}}), 404, "not found"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, answer) = api.call(&owner, method, path, Some(body)).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: {message}");
    }
    let (status, _) = api.call(&owner, "POST", "/v1/projects/p/secrets?secretId=s", Some(json!({}))).await;
    assert_eq!(status, 200);
    let (status, answer) = api.call(&owner, "POST", "/v1/projects/p/secrets?secretId=s", Some(json!({}))).await;
    assert_eq!((status, answer["error"]["status"].as_str()), (409, Some("ALREADY_EXISTS")));
    use base64::Engine as _;
    let too_big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 64 * 1024 + 1]);
    let (status, answer) = api
        .call(&owner, "POST", "/v1/projects/p/secrets/s:addVersion", Some(json!({"payload": {"data": too_big}})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["details"][0]["fieldViolations"][0]["field"], "payload.data");
    let (status, answer) = api
        .call(
            &owner,
            "POST",
            "/v1/projects/p/secrets/s:addVersion",
            Some(json!({"payload": {"data": "eA==", "dataCrc32c": "7"}})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["details"][0]["fieldViolations"][0]["field"], "payload.dataCrc32c");
    let (status, answer) =
        api.call(&owner, "PATCH", "/v1/projects/p/secrets/s?updateMask=replication", Some(json!({}))).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = api.call(&owner, "GET", "/v1/projects/p/secrets/s/versions/latest:access", None).await;
    assert_eq!(status, 404, "a secret without versions has no latest");
    let (status, answer) = api.call(&owner, "DELETE", "/v1/projects/p/secrets/s?etag=%22stale%22", None).await;
    assert_eq!((status, answer["error"]["status"].as_str()), (409, Some("ABORTED")));
}

/// Every regular file under `dir` on `dir`'s own filesystem (what is on disk: the mounts of
/// running instances, their in-memory scratch and overlay, are skipped) containing `needle`.
fn disk_files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let device = std::fs::metadata(dir).unwrap().dev();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.dev() != device {
                continue;
            }
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The Python app that reads its secrets (tests/python/secrets_app/main.py).
const PYTHON_APP: &[u8] = include_bytes!("python/secrets_app/main.py");

#[tokio::test]
async fn an_instance_reads_env_and_file_secrets_and_a_destroyed_version_fails_new_instances() {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = server();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{}/testapp:v1", server.addrs.registry_addr);
    let api = Api { server: &server, client: wharf_testsupport::http_client().build().unwrap() };
    let owner = server.token.clone();
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let password = unique_secret("password");
    let key = unique_secret("key");
    for (secret, value) in [("db-password", &password), ("api-key", &key)] {
        let (status, body) =
            api.call(&owner, "POST", &format!("/v1/projects/deliver/secrets?secretId={secret}"), Some(json!({}))).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = api
            .call(
                &owner,
                "POST",
                &format!("/v1/projects/deliver/secrets/{secret}:addVersion"),
                Some(json!({"payload": {"data": b64(value)}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let template = |service_account: &str, marker: &str| {
        json!({"template": {
            "serviceAccount": service_account,
            "containers": [{
                "image": image,
                "env": [
                    {"name": "MARKER", "value": marker},
                    {"name": "DB_PASSWORD", "valueSource": {"secretKeyRef": {"secret": "db-password", "version": "latest"}}}
                ],
                "volumeMounts": [{"name": "keys", "mountPath": "/secrets"}, {"name": "cache", "mountPath": "/cache"}]
            }],
            "volumes": [
                {"name": "keys", "secret": {"secret": "api-key", "items": [{"path": "key.txt", "version": "1", "mode": 256}]}},
                {"name": "cache", "emptyDir": {"medium": "MEMORY", "sizeLimit": "2Mi"}}
            ]
        }})
    };
    let services = "/v2/projects/deliver/locations/us-central1/services";

    // A service account that holds no role on the secrets: refused, nothing created.
    let out = server.cli(&["iam", "service-accounts", "create", "stranger", "--project", "deliver"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stranger = "stranger@deliver.iam.gserviceaccount.com";
    let (status, body) =
        api.call(&owner, "POST", &format!("{services}?serviceId=denied"), Some(template(stranger, "a"))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["status"], "FAILED_PRECONDITION");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("projects/deliver/secrets/db-password") && message.contains(stranger), "{message}");
    let (status, _) = api.call(&owner, "GET", &format!("{services}/denied"), None).await;
    assert_eq!(status, 404, "a refused deploy creates nothing");

    // The project's default service account may read its project's secrets.
    let (status, op) = api.call(&owner, "POST", &format!("{services}?serviceId=app"), Some(template("", "a"))).await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let (status, done) = api.call(&owner, "POST", &format!("/v2/{name}:wait"), Some(json!({"timeout": "120s"}))).await;
    assert_eq!(status, 200, "{done}");
    assert!(done["error"].is_null(), "the deploy failed: {done}\n{}", server.log());

    let client = wharf_testsupport::http_client().build().unwrap();
    let host = service_host("app", "deliver");
    let get = |path: &str| {
        client
            .get(format!("http://{}{path}", server.addrs.ingress_addr))
            .header("Host", host.clone())
            .bearer_auth(&owner)
            .send()
    };
    let env: Value = get("/env").await.unwrap().json().await.unwrap();
    assert_eq!(env["DB_PASSWORD"], password.as_str());
    let file = get("/file?path=/secrets/key.txt").await.unwrap();
    assert_eq!(file.status().as_u16(), 200);
    assert_eq!(file.text().await.unwrap(), key);

    // A real Python app reads the same two secrets, the env var and the file.
    let python = wharf_testsupport::python_image(work.path(), "v1", &[], &[("main.py", PYTHON_APP)]).unwrap();
    let out = server.cli(&["images", "import", &python.layout.to_string_lossy(), "--tag", "python-app:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut python_template = template("", "a");
    python_template["template"]["containers"][0]["image"] =
        json!(format!("{}/python-app:v1", server.addrs.registry_addr));
    let (status, op) = api.call(&owner, "POST", &format!("{services}?serviceId=py"), Some(python_template)).await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let (_, done) = api.call(&owner, "POST", &format!("/v2/{name}:wait"), Some(json!({"timeout": "120s"}))).await;
    assert!(done["error"].is_null(), "the Python deploy failed: {done}\n{}", server.log());
    let read: Value = client
        .get(format!("http://{}/", server.addrs.ingress_addr))
        .header("Host", service_host("py", "deliver"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((read["env"].as_str(), read["file"].as_str()), (Some(password.as_str()), Some(key.as_str())), "{read}");
    // The mount is read-only.
    let write = client
        .put(format!("http://{}/file?path=/secrets/other", server.addrs.ingress_addr))
        .header("Host", host.clone())
        .bearer_auth(&owner)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status().as_u16(), 500);
    assert!(write.text().await.unwrap().contains("Read-only file system"));

    // The in-memory volume takes writes up to its sizeLimit (2 MiB), then ENOSPC.
    let put = |path: &str, bytes: usize| {
        client
            .put(format!("http://{}/file?path={path}", server.addrs.ingress_addr))
            .header("Host", host.clone())
            .bearer_auth(&owner)
            .body(vec![b'x'; bytes])
            .send()
    };
    let written = put("/cache/a", 1 << 20).await.unwrap();
    assert_eq!(written.status().as_u16(), 201);
    assert_eq!(get("/file?path=/cache/a").await.unwrap().bytes().await.unwrap().len(), 1 << 20);
    let full = put("/cache/b", 3 << 19).await.unwrap();
    assert_eq!(full.status().as_u16(), 500);
    let why = full.text().await.unwrap();
    assert!(why.contains("No space left on device"), "a write past the size limit fails with ENOSPC: {why}");
    // A size limit above the memory limit is refused by name, and nothing is created.
    let mut too_big = template("", "a");
    too_big["template"]["volumes"][1]["emptyDir"]["sizeLimit"] = json!("1Gi");
    let (status, body) = api.call(&owner, "POST", &format!("{services}?serviceId=too-big"), Some(too_big)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("template.volumes[1].emptyDir.sizeLimit 1Gi"), "{message}");

    // The API and the Knative view show references, never values.
    let (_, described) = api.call(&owner, "GET", &format!("{services}/app"), None).await;
    let described = described.to_string();
    assert!(described.contains("projects/deliver/secrets/db-password"), "{described}");
    let export = server.cli(&["run", "services", "describe", "app", "--project=deliver", "--format=export"]).unwrap();
    let export_yaml = String::from_utf8_lossy(&export.stdout).into_owned();
    let export = export_yaml.clone() + &String::from_utf8_lossy(&export.stderr);

    // On disk under the data directory (database, WAL, logs, instance directories): nothing.
    for value in [&password, &key] {
        assert!(!described.contains(value.as_str()));
        assert!(!export.contains(value.as_str()), "{export}");
        for needle in [value.clone(), b64(value)] {
            assert_eq!(disk_files_containing(server.data_dir(), needle.as_bytes()), Vec::<String>::new(), "{needle}");
        }
        assert!(!server.log().contains(value.as_str()));
    }

    // The export, changed and replaced (Knative's valueFrom.secretKeyRef, secret and emptyDir
    // volumes): the new revision's instance reads the same secrets, and its in-memory volume
    // is its own (the old instance's file is not there).
    let mut document: Value = serde_norway::from_str(&export_yaml).unwrap();
    let env = document["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut().unwrap();
    let marker = env.iter_mut().find(|e| e["name"] == "MARKER").unwrap();
    marker["value"] = json!("replaced");
    let file = work.path().join("app.yaml");
    std::fs::write(&file, serde_norway::to_string(&document).unwrap()).unwrap();
    let out = server.cli(&["run", "services", "replace", &file.to_string_lossy(), "--project=deliver"]).unwrap();
    assert!(out.status.success(), "replace failed: {}\n{export}", String::from_utf8_lossy(&out.stderr));
    let env: Value = get("/env").await.unwrap().json().await.unwrap();
    assert_eq!((env["MARKER"].as_str(), env["DB_PASSWORD"].as_str()), (Some("replaced"), Some(password.as_str())));
    assert_eq!(get("/file?path=/secrets/key.txt").await.unwrap().text().await.unwrap(), key);
    assert_eq!(get("/file?path=/cache/a").await.unwrap().status().as_u16(), 404, "the volume died with its instance");
    assert_eq!(put("/cache/a", 1024).await.unwrap().status().as_u16(), 201);

    // A job's :run overrides that name a secret are checked as its template is: the job's
    // service account must be able to read it.
    let jobs = "/v2/projects/deliver/locations/us-central1/jobs";
    let job = json!({"template": {"template": {"serviceAccount": stranger, "containers": [{"image": image}]}}});
    let (status, body) = api.call(&owner, "POST", &format!("{jobs}?jobId=nightly"), Some(job)).await;
    assert_eq!(status, 200, "{body}");
    let run = json!({"overrides": {"containerOverrides": [{"env": [
        {"name": "DB_PASSWORD", "valueSource": {"secretKeyRef": {"secret": "db-password", "version": "latest"}}}
    ]}]}});
    let (status, body) = api.call(&owner, "POST", &format!("{jobs}/nightly:run"), Some(run)).await;
    assert_eq!((status, body["error"]["status"].as_str()), (400, Some("FAILED_PRECONDITION")), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("projects/deliver/secrets/db-password") && message.contains(stranger), "{message}");
    let (_, executions) = api.call(&owner, "GET", &format!("{jobs}/nightly/executions"), None).await;
    assert_eq!(
        executions["executions"].as_array().map_or(0, Vec::len),
        0,
        "a refused run starts nothing: {executions}"
    );

    // Regional secrets are refused by name, not answered as if global.
    let (status, body) = api.call(&owner, "GET", "/v1/projects/deliver/locations/us-central1/secrets", None).await;
    assert_eq!((status, body["error"]["status"].as_str()), (501, Some("UNIMPLEMENTED")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("use /v1/projects/deliver/secrets"));

    // Version 1 of api-key destroyed: the next revision's first instance cannot start, and
    // says which secret.
    let (status, body) =
        api.call(&owner, "POST", "/v1/projects/deliver/secrets/api-key/versions/1:destroy", Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, op) = api.call(&owner, "PATCH", &format!("{services}/app"), Some(template("", "b"))).await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let (_, done) = api.call(&owner, "POST", &format!("/v2/{name}:wait"), Some(json!({"timeout": "120s"}))).await;
    let error = done["error"]["message"].as_str().unwrap_or_default();
    assert!(
        error.contains("projects/deliver/secrets/api-key") && error.contains("DESTROYED"),
        "the update should fail naming the secret: {done}"
    );
}
