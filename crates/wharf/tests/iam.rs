//! Identity and access end to end (issue 14): every admin call checks the caller's permission
//! (403 PERMISSION_DENIED naming it), the policy API on projects, services and jobs (etags,
//! 409 on a stale one, 400 naming an unknown role), and each `wharf iam`, `wharf projects`,
//! `wharf auth` and policy verb of `wharf run`, run as a user would, against a real server.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, testapp_image};

const PROJECT: &str = "iamp";
const BASE: &str = "/v2/projects/iamp/locations/us-central1";

struct Env {
    server: WharfServer,
    http: reqwest::Client,
    image: String,
    work: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let work = tempfile::tempdir().unwrap();
        let built = testapp_image(work.path(), "v1").unwrap();
        let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
        let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let image = format!("{}/testapp:v1", server.addrs.registry_addr);
        Env { server, http: wharf_testsupport::http_client().build().unwrap(), image, work }
    }

    /// Runs the CLI as the owner (`token` None) or with a token; asserts success; returns stdout.
    fn cli(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli_output(token, args);
        assert!(out.status.success(), "wharf {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_output(&self, token: Option<&str>, args: &[&str]) -> Output {
        let env: Vec<(&str, &str)> = token.map(|t| vec![("WHARF_TOKEN", t)]).unwrap_or_default();
        self.server.cli_with_env(args, &env).unwrap()
    }

    /// The CLI's failure message.
    fn cli_fails(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli_output(token, args);
        assert!(!out.status.success(), "wharf {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, self.server.api_url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn expect(&self, token: &str, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, answer) = self.call(token, method, path, body).await;
        assert_eq!(got, status, "{method} {path} answered {got}: {answer}");
        answer
    }

    /// Asserts a 403 that names `permission`, in Google's words.
    async fn denied(&self, token: &str, method: &str, path: &str, body: Option<Value>, permission: &str) {
        let answer = self.expect(token, method, path, body, 403).await;
        assert_eq!(answer["error"]["status"], "PERMISSION_DENIED", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("Permission '{permission}' denied on resource")), "{message}");
    }

    async fn wait(&self, op: &Value) {
        let name = op["name"].as_str().unwrap();
        let owner = self.server.token.clone();
        let done =
            self.expect(&owner, "POST", &format!("/v2/{name}:wait"), Some(json!({"timeout": "120s"})), 200).await;
        assert_eq!(done["done"], true, "{done}");
        assert!(done.get("error").is_none(), "{done}");
    }

    fn create_user(&self, email: &str) -> String {
        self.cli(None, &["iam", "users", "create", email]).trim().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_call_checks_the_callers_permission_and_policies_guard_services_and_jobs() {
    let env = Env::start();
    let owner = env.server.token.clone();
    let op = env
        .expect(
            &owner,
            "POST",
            &format!("{BASE}/services?serviceId=api"),
            Some(json!({"template": {"containers": [{"image": env.image}]}})),
            200,
        )
        .await;
    env.wait(&op).await;
    let service = format!("{BASE}/services/api");
    let job_body = json!({"template": {"template": {"containers": [{"image": env.image}]}}});
    let op = env.expect(&owner, "POST", &format!("{BASE}/jobs?jobId=batch"), Some(job_body.clone()), 200).await;
    env.wait(&op).await;
    let job = format!("{BASE}/jobs/batch");

    let ann = env.create_user("ann@example.com");
    // With no binding, every kind of admin call is refused by name.
    env.denied(&ann, "GET", &service, None, "run.services.get").await;
    env.denied(&ann, "GET", &format!("{BASE}/services"), None, "run.services.list").await;
    env.denied(
        &ann,
        "POST",
        &format!("{BASE}/services?serviceId=x"),
        Some(json!({"template": {"containers": [{"image": env.image}]}})),
        "run.services.create",
    )
    .await;
    env.denied(&ann, "DELETE", &service, None, "run.services.delete").await;
    env.denied(&ann, "GET", &format!("{service}/revisions"), None, "run.revisions.list").await;
    env.denied(&ann, "GET", &format!("{service}:getIamPolicy"), None, "run.services.getIamPolicy").await;
    env.denied(&ann, "GET", &job, None, "run.jobs.get").await;
    env.denied(&ann, "POST", &format!("{job}:run"), Some(json!({})), "run.jobs.run").await;
    env.denied(&ann, "GET", &format!("{job}/executions"), None, "run.executions.list").await;
    env.denied(&ann, "GET", &format!("{BASE}/operations"), None, "run.operations.list").await;
    env.denied(&ann, "GET", "/wharf/v1/images", None, "artifactregistry.repositories.downloadArtifacts").await;
    env.denied(&ann, "GET", "/wharf/v1/logs?service=api", None, "logging.logEntries.list").await;
    let entries = json!({"resourceNames": ["projects/iamp"]});
    env.denied(&ann, "POST", "/v2/entries:list", Some(entries.clone()), "logging.logEntries.list").await;
    env.denied(
        &ann,
        "POST",
        "/v1/projects/iamp:getIamPolicy",
        Some(json!({})),
        "resourcemanager.projects.getIamPolicy",
    )
    .await;
    env.denied(&ann, "GET", "/v1/projects/iamp/serviceAccounts", None, "iam.serviceAccounts.list").await;
    let users = env.expect(&ann, "GET", "/wharf/v1/users", None, 403).await;
    assert!(users["error"]["message"].as_str().unwrap().contains("only the server's owner"), "{users}");
    // The registry refuses a pull the same way (distribution-spec DENIED).
    let pull =
        env.http.get(env.server.registry_url("/v2/testapp/manifests/v1")).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(pull.status().as_u16(), 403);
    assert!(pull.text().await.unwrap().contains("artifactregistry.repositories.downloadArtifacts"));
    // Roles are readable by anyone authenticated.
    let roles = env.cli(Some(&ann), &["iam", "roles", "list", "--format", "value(name)"]);
    assert!(roles.lines().any(|r| r == "roles/run.invoker"), "{roles}");
    let invoker = env.cli(Some(&ann), &["iam", "roles", "describe", "roles/run.invoker", "--format", "json"]);
    let invoker: Value = serde_json::from_str(&invoker).unwrap();
    assert!(invoker["includedPermissions"].as_array().unwrap().contains(&json!("run.routes.invoke")), "{invoker}");

    // roles/run.viewer on the project: reads pass, writes still fail.
    env.cli(
        None,
        &["projects", "add-iam-policy-binding", PROJECT, "--member=user:ann@example.com", "--role=roles/run.viewer"],
    );
    let project_policy: Value =
        serde_json::from_str(&env.cli(None, &["projects", "get-iam-policy", PROJECT, "--format", "json"])).unwrap();
    assert_eq!(project_policy["bindings"], json!([{"role": "roles/run.viewer", "members": ["user:ann@example.com"]}]));
    env.expect(&ann, "GET", &service, None, 200).await;
    let listed = env.expect(&ann, "GET", &format!("{BASE}/services"), None, 200).await;
    assert_eq!(listed["services"].as_array().unwrap().len(), 1, "{listed}");
    env.expect(&ann, "GET", &format!("{job}/executions"), None, 200).await;
    env.expect(&ann, "POST", "/v2/entries:list", Some(entries.clone()), 200).await;
    // The role is on project iamp: another project's entries stay closed.
    let elsewhere = json!({"resourceNames": ["projects/other"]});
    env.denied(&ann, "POST", "/v2/entries:list", Some(elsewhere), "logging.logEntries.list").await;
    env.expect(&ann, "GET", "/wharf/v1/images", None, 403).await; // images are on the server-wide project
    env.denied(
        &ann,
        "PATCH",
        &service,
        Some(json!({"template": {"containers": [{"image": env.image}]}})),
        "run.services.update",
    )
    .await;
    env.denied(
        &ann,
        "POST",
        &format!("{service}:setIamPolicy"),
        Some(json!({"policy": {}})),
        "run.services.setIamPolicy",
    )
    .await;
    let held = env
        .expect(
            &ann,
            "POST",
            &format!("{service}:testIamPermissions"),
            Some(json!({"permissions": ["run.services.get", "run.services.update", "bogus.perm"]})),
            200,
        )
        .await;
    assert_eq!(held, json!({"permissions": ["run.services.get"]}));

    // Service policy: the CLI's binding verbs, set-iam-policy from YAML, etags, bad roles.
    env.cli(
        None,
        &[
            "run",
            "services",
            "add-iam-policy-binding",
            "api",
            "--project",
            PROJECT,
            "--member=user:ann@example.com",
            "--role=roles/run.developer",
        ],
    );
    let held = env
        .expect(
            &ann,
            "POST",
            &format!("{service}:testIamPermissions"),
            Some(json!({"permissions": ["run.services.update"]})),
            200,
        )
        .await;
    assert_eq!(held, json!({"permissions": ["run.services.update"]}));
    let policy: Value = serde_json::from_str(
        &env.cli(None, &["run", "services", "get-iam-policy", "api", "--project", PROJECT, "--format", "json"]),
    )
    .unwrap();
    assert_eq!(policy["bindings"], json!([{"role": "roles/run.developer", "members": ["user:ann@example.com"]}]));
    let stale = json!({"policy": {"bindings": [], "etag": "ACAB"}});
    let conflict = env.expect(&owner, "POST", &format!("{service}:setIamPolicy"), Some(stale), 409).await;
    assert_eq!(conflict["error"]["status"], "ABORTED", "{conflict}");
    let unknown = json!({"policy": {"bindings": [{"role": "roles/run.superuser", "members": ["allUsers"]}]}});
    let bad = env.expect(&owner, "POST", &format!("{service}:setIamPolicy"), Some(unknown), 400).await;
    assert!(bad["error"]["message"].as_str().unwrap().contains("roles/run.superuser"), "{bad}");
    let group = json!({"policy": {"bindings": [{"role": "roles/run.invoker", "members": ["group:g@example.com"]}]}});
    let bad = env.expect(&owner, "POST", &format!("{service}:setIamPolicy"), Some(group), 400).await;
    assert!(bad["error"]["message"].as_str().unwrap().contains("'group' is not supported"), "{bad}");
    env.cli(
        None,
        &[
            "run",
            "services",
            "remove-iam-policy-binding",
            "api",
            "--project",
            PROJECT,
            "--member=user:ann@example.com",
            "--role=roles/run.developer",
        ],
    );
    let missing = env.cli_fails(
        None,
        &[
            "run",
            "services",
            "remove-iam-policy-binding",
            "api",
            "--project",
            PROJECT,
            "--member=user:ann@example.com",
            "--role=roles/run.developer",
        ],
    );
    assert!(missing.contains("not found"), "{missing}");
    let file = env.work.path().join("policy.yaml");
    std::fs::write(
        &file,
        "bindings:\n- role: roles/run.invoker\n  members:\n  - serviceAccount:caller@iamp.iam.gserviceaccount.com\n",
    )
    .unwrap();
    env.cli(None, &["run", "services", "set-iam-policy", "api", &file.to_string_lossy(), "--project", PROJECT]);
    let policy = env.expect(&owner, "GET", &format!("{service}:getIamPolicy"), None, 200).await;
    assert_eq!(policy["bindings"][0]["members"], json!(["serviceAccount:caller@iamp.iam.gserviceaccount.com"]));
    std::fs::write(&file, "bindings:\n- role: roles/run.nope\n  members: [allUsers]\n").unwrap();
    let refused = env
        .cli_fails(None, &["run", "services", "set-iam-policy", "api", &file.to_string_lossy(), "--project", PROJECT]);
    assert!(refused.contains("roles/run.nope"), "{refused}");

    // --allow-unauthenticated binds allUsers to the invoker role; --no-allow-unauthenticated removes it.
    env.cli(None, &["run", "services", "update", "api", "--project", PROJECT, "--allow-unauthenticated"]);
    let policy = env.expect(&owner, "GET", &format!("{service}:getIamPolicy"), None, 200).await;
    let invokers = policy["bindings"].as_array().unwrap().iter().find(|b| b["role"] == "roles/run.invoker").unwrap();
    assert!(invokers["members"].as_array().unwrap().contains(&json!("allUsers")), "{policy}");
    env.cli(None, &["run", "services", "update", "api", "--project", PROJECT, "--no-allow-unauthenticated"]);
    let policy = env.expect(&owner, "GET", &format!("{service}:getIamPolicy"), None, 200).await;
    assert!(!policy.to_string().contains("allUsers"), "{policy}");

    // Jobs: the invoker role lets a user run one; a deleted job's policy is forgotten.
    env.cli(
        None,
        &[
            "run",
            "jobs",
            "add-iam-policy-binding",
            "batch",
            "--project",
            PROJECT,
            "--member=user:ann@example.com",
            "--role=roles/run.invoker",
        ],
    );
    let held = env
        .expect(
            &ann,
            "POST",
            &format!("{job}:testIamPermissions"),
            Some(json!({"permissions": ["run.jobs.run", "run.jobs.delete"]})),
            200,
        )
        .await;
    assert_eq!(held, json!({"permissions": ["run.jobs.run"]}));
    let job_policy: Value = serde_json::from_str(
        &env.cli(None, &["run", "jobs", "get-iam-policy", "batch", "--project", PROJECT, "--format", "json"]),
    )
    .unwrap();
    assert_eq!(job_policy["bindings"][0]["role"], "roles/run.invoker");
    env.expect(&owner, "DELETE", &job, None, 200).await;
    let op = env.expect(&owner, "POST", &format!("{BASE}/jobs?jobId=batch"), Some(job_body), 200).await;
    env.wait(&op).await;
    let fresh = env.expect(&owner, "GET", &format!("{job}:getIamPolicy"), None, 200).await;
    assert_eq!(fresh, json!({"version": 1, "etag": "ACAB"}), "a new job of the same name starts with no policy");
    env.expect(&owner, "GET", &format!("{BASE}/jobs/nope:getIamPolicy"), None, 404).await;
    env.cli(
        None,
        &["projects", "remove-iam-policy-binding", PROJECT, "--member=user:ann@example.com", "--role=roles/run.viewer"],
    );
    env.denied(&ann, "GET", &service, None, "run.services.get").await;

    // The audit log: who did what to which resource, allowed or denied.
    let audit = env.cli(None, &["logs", "read", "--audit", "--limit", "1000", "--format", "json"]);
    let entries: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let found = |principal: &str, method: &str, resource: &str, outcome: &str| {
        entries.iter().any(|e| {
            let p = &e["payload"];
            p["principal"] == principal && p["method"] == method && p["resource"] == resource && p["outcome"] == outcome
        })
    };
    let svc = service.as_str();
    assert!(found("user:ann@example.com", "GET", svc, "denied"), "{audit}");
    assert!(found("user:ann@example.com", "DELETE", svc, "denied"), "{audit}");
    assert!(found("owner", "POST", &format!("{svc}:setIamPolicy"), "allowed"), "{audit}");
    assert!(found("owner", "POST", "/v1/projects/iamp:setIamPolicy", "allowed"), "{audit}");
    assert!(!found("user:ann@example.com", "GET", svc, "allowed"), "reads that pass are not audited: {audit}");
    let text = env.cli(None, &["logs", "read", "--audit"]);
    assert!(text.contains(&format!("user:ann@example.com DELETE {svc}: denied (403)")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_service_accounts_keys_and_the_token_endpoint() {
    let env = Env::start();
    let owner = env.server.token.clone();
    // Users: created by the owner, token shown once, `auth login` stores it, delete revokes it.
    let bob = env.create_user("bob@example.com");
    let listed = env.cli(None, &["iam", "users", "list", "--format", "value(email)"]);
    assert_eq!(listed.trim(), "bob@example.com");
    let again = env.cli_fails(None, &["iam", "users", "create", "bob@example.com"]);
    assert!(again.contains("already exists"), "{again}");
    let token_file = env.work.path().join("bob.token");
    std::fs::write(&token_file, format!("{bob}\n")).unwrap();
    let bad_file = env.work.path().join("bad.token");
    std::fs::write(&bad_file, "wharf_not_a_token").unwrap();
    let refused = env.cli_fails(None, &["auth", "login", "--token-file", &bad_file.to_string_lossy()]);
    assert!(refused.contains("refused"), "{refused}");
    env.cli(None, &["auth", "login", "--token-file", &token_file.to_string_lossy()]);
    let config = env.server.home().join(".config/wharf/config.toml");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    // The CLI now sends bob's token: bob cannot list users.
    assert_eq!(env.cli(None, &["auth", "print-access-token"]).trim(), bob);
    let denied = env.cli_fails(None, &["iam", "users", "list"]);
    assert!(denied.contains("only the server's owner"), "{denied}");
    std::fs::remove_file(&config).unwrap();

    // Service accounts: Google's email shape, the default account listed, disable/enable.
    env.cli(
        None,
        &["iam", "service-accounts", "create", "deployer-sa", "--display-name", "Deployer", "--project", PROJECT],
    );
    let sa = "deployer-sa@iamp.iam.gserviceaccount.com";
    let accounts =
        env.cli(None, &["iam", "service-accounts", "list", "--project", PROJECT, "--format", "value(email)"]);
    let accounts: Vec<&str> = accounts.lines().collect();
    assert_eq!(accounts.len(), 2, "{accounts:?}");
    assert!(accounts[0].ends_with("-compute@developer.gserviceaccount.com"), "{accounts:?}");
    assert_eq!(accounts[1], sa);
    let described: Value = serde_json::from_str(
        &env.cli(None, &["iam", "service-accounts", "describe", sa, "--project", PROJECT, "--format", "json"]),
    )
    .unwrap();
    assert_eq!(described["displayName"], "Deployer");
    let bad_id = env.cli_fails(None, &["iam", "service-accounts", "create", "x", "--project", PROJECT]);
    assert!(bad_id.contains("6-30"), "{bad_id}");
    let default_sa = accounts[0].to_owned();
    let refused = env.cli_fails(None, &["iam", "service-accounts", "delete", &default_sa, "--project", PROJECT]);
    assert!(refused.contains("default service account"), "{refused}");

    // Keys: Google's JSON key file, private to its owner; the server keeps the public half.
    let key_file = env.work.path().join("key.json");
    env.cli(
        None,
        &[
            "iam",
            "service-accounts",
            "keys",
            "create",
            &key_file.to_string_lossy(),
            "--iam-account",
            sa,
            "--project",
            PROJECT,
        ],
    );
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let key: Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    assert_eq!(key["type"], "service_account");
    assert_eq!(key["client_email"], sa);
    assert_eq!(key["project_id"], PROJECT);
    assert_eq!(key["token_uri"], format!("http://{}/token", env.server.addrs.api_addr));
    assert!(key["private_key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    let key_id = key["private_key_id"].as_str().unwrap().to_owned();
    let keys = env.cli(
        None,
        &[
            "iam",
            "service-accounts",
            "keys",
            "list",
            "--iam-account",
            sa,
            "--project",
            PROJECT,
            "--format",
            "value(keyId)",
        ],
    );
    assert_eq!(keys.trim(), key_id);

    // The token endpoint refuses what is not a valid grant, in RFC 6749's words.
    let token_url = env.server.api_url("/token");
    let answer = env.http.post(&token_url).body("grant_type=password&username=a").send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    assert_eq!(answer.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let answer = env
        .http
        .post(&token_url)
        .body("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=eyJhbGciOiJIUzI1NiJ9.e30.x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("RS256"), "{body}");

    // --service-account needs the account to exist and actAs on it; the owner passes.
    let job_with = |account: &str| json!({"template": {"template": {"serviceAccount": account, "containers": [{"image": env.image}]}}});
    let missing = env
        .expect(
            &owner,
            "POST",
            &format!("{BASE}/jobs?jobId=j1"),
            Some(job_with("ghost-sa@iamp.iam.gserviceaccount.com")),
            400,
        )
        .await;
    assert!(missing["error"]["message"].as_str().unwrap().contains("does not exist"), "{missing}");
    env.cli(
        None,
        &["projects", "add-iam-policy-binding", PROJECT, "--member=user:bob@example.com", "--role=roles/run.developer"],
    );
    let path = format!("{BASE}/jobs?jobId=j2");
    env.denied(&bob, "POST", &path, Some(job_with(sa)), "iam.serviceAccounts.actAs").await;
    env.cli(
        None,
        &[
            "iam",
            "service-accounts",
            "add-iam-policy-binding",
            sa,
            "--project",
            PROJECT,
            "--member=user:bob@example.com",
            "--role=roles/iam.serviceAccountUser",
        ],
    );
    let sa_policy: Value = serde_json::from_str(
        &env.cli(None, &["iam", "service-accounts", "get-iam-policy", sa, "--project", PROJECT, "--format", "json"]),
    )
    .unwrap();
    assert_eq!(sa_policy["bindings"][0]["role"], "roles/iam.serviceAccountUser");
    env.cli(
        Some(&bob),
        &["run", "jobs", "create", "j2", "--project", PROJECT, "--image", &env.image, "--service-account", sa],
    );
    let stored = env.expect(&owner, "GET", &format!("{BASE}/jobs/j2"), None, 200).await;
    assert_eq!(stored["template"]["template"]["serviceAccount"], sa);

    // A disabled account's tokens are refused until it is enabled; deleting it ends them.
    let sa_token = mint(&key_file);
    env.expect(&sa_token, "GET", "/v1/roles", None, 200).await;
    env.cli(None, &["iam", "service-accounts", "disable", sa, "--project", PROJECT]);
    let refused = env.expect(&sa_token, "GET", "/v1/roles", None, 401).await;
    assert!(refused["error"]["message"].as_str().unwrap().contains("disabled"), "{refused}");
    env.cli(None, &["iam", "service-accounts", "enable", sa, "--project", PROJECT]);
    env.expect(&sa_token, "GET", "/v1/roles", None, 200).await;
    env.cli(None, &["iam", "service-accounts", "keys", "delete", &key_id, "--iam-account", sa, "--project", PROJECT]);
    let keys = env.cli(
        None,
        &[
            "iam",
            "service-accounts",
            "keys",
            "list",
            "--iam-account",
            sa,
            "--project",
            PROJECT,
            "--format",
            "value(keyId)",
        ],
    );
    assert_eq!(keys.trim(), "");
    env.cli(None, &["iam", "service-accounts", "delete", sa, "--project", PROJECT]);
    env.expect(&sa_token, "GET", "/v1/roles", None, 401).await;
    env.expect(&owner, "GET", &format!("/v1/projects/{PROJECT}/serviceAccounts/{sa}"), None, 404).await;

    // A deleted user's token stops working at once.
    env.cli(None, &["iam", "users", "delete", "bob@example.com"]);
    env.expect(&bob, "GET", "/v1/roles", None, 401).await;
}

/// An access token for the key file's account from Wharf's token endpoint, obtained the way
/// a user's program gets one: google-auth signs the JWT-bearer grant with the key file.
fn mint(key_file: &Path) -> String {
    // The boundary set first keeps google-auth from looking one up at googleapis.com.
    let script = "import sys, datetime\nfrom google.oauth2 import service_account\n\
from google.auth.transport.requests import Request\n\
c = service_account.Credentials.from_service_account_file(sys.argv[1])\n\
far = datetime.datetime.utcnow() + datetime.timedelta(days=1)\n\
c = c._set_regional_access_boundary({'encodedLocations': '0x0', 'expiry': far})\n\
c.refresh(Request())\nprint(c.token)\n";
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(key_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
