//! Secret Manager end to end against a real server: the `wharf secrets` CLI round trip, the
//! payloads never in clear under the data directory (database, WAL, server log) nor in any
//! output but `access`, key rotation surviving a restart, IAM: a service account without
//! `roles/secretmanager.secretAccessor` is denied `:access` and admitted once granted, and the
//! API's refusals of what Wharf does not support.

use std::path::Path;

use serde_json::{Value, json};
use wharf_testsupport::WharfServer;

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
    let api = Api { server: &server, client: reqwest::Client::builder().no_proxy().build().unwrap() };
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

    // A real token for a service account, minted in the server's own database as the
    // metadata server would mint one.
    let account = "app@iam-p.iam.gserviceaccount.com";
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
    let api = Api { server: &server, client: reqwest::Client::builder().no_proxy().build().unwrap() };
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
