//! The metadata server from inside a real instance, with Google's own auth library: a Python
//! app (the host's python3 with google-auth and requests from PyPI, `python/metadata_app`)
//! deployed as service A with `--service-account caller@demo.iam.gserviceaccount.com`, and a
//! private service B of the same image:
//!
//! - inside A, `google.auth.default()` finds the account and the project, and its credentials
//!   refresh (an access token that Wharf's API takes as that account);
//! - `google.oauth2.id_token.fetch_id_token(Request(), B_URL)` returns a Wharf ID token for the
//!   account; calling B's URL (the one `describe` prints) with it gets 403 before
//!   `roles/run.invoker` is granted on B and 200 after, and B sees the token without its
//!   signature;
//! - a request without `Metadata-Flavor: Google` gets 403; a disabled account gets no token.
//!
//! One server, one test: everything runs against the same two services.

use std::path::Path;
use std::time::Duration;

use wharf_testsupport::{WharfServer, python_image};

const APP: &[u8] = include_bytes!("python/metadata_app/main.py");
const ACCOUNT: &str = "caller@demo.iam.gserviceaccount.com";

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

/// Runs the CLI, asserts success, returns stdout.
fn cli(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(out.status.success(), "wharf {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    String::from_utf8(out.stdout).unwrap()
}

/// GET `path` of service `a` through the ingress with the owner's token; the JSON it answers.
async fn ask_a(server: &WharfServer, a_url: &str, path: &str) -> serde_json::Value {
    let client = server.client_builder().timeout(Duration::from_secs(120)).build().unwrap();
    let host = a_url.trim_start_matches("http://").split(':').next().unwrap().to_owned();
    let response =
        client.get(format!("http://{}{path}", server.addrs.ingress_addr)).header("Host", host).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "A {path}: {body}\n{}", server.log());
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("A {path} answered {body}: {e}"))
}

fn query(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn google_auth_inside_an_instance_gets_its_accounts_credentials_and_id_tokens() {
    let work = tempfile::tempdir().unwrap();
    let built = python_image(work.path(), "v1", &["google-auth", "requests"], &[("main.py", APP)]).unwrap();
    let server = WharfServer::start(wharf()).unwrap();
    cli(&server, &["images", "import", &built.layout.to_string_lossy(), "--tag", "python-app:v1"]);
    let image = format!("{}/python-app:v1", server.addrs.registry_addr);
    cli(&server, &["iam", "service-accounts", "create", "caller", "--project", "demo"]);
    let deploy = |name: &str, extra: &[&str]| {
        cli(&server, &[&["run", "deploy", name, "--image", &image, "--project", "demo"][..], extra].concat());
        cli(&server, &["run", "services", "describe", name, "--project", "demo", "--format", "value(status.url)"])
            .trim()
            .to_owned()
    };
    let b_url = deploy("b", &[]);
    let a_url = deploy("a", &["--service-account", ACCOUNT]);

    // Before the grant: the token is the account's, for B's URL, and B refuses it.
    let identity = format!("/identity?target={}", query(&b_url));
    let seen = ask_a(&server, &a_url, &identity).await;
    assert_eq!(seen["project"], "demo", "{seen}");
    assert_eq!(seen["email"], ACCOUNT, "{seen}");
    assert_eq!(
        (seen["idTokenEmail"].as_str(), seen["idTokenAudience"].as_str()),
        (Some(ACCOUNT), Some(b_url.as_str()))
    );
    assert_eq!(seen["status"], 403, "{seen}");

    // The access token the credentials refreshed to is Wharf's, for the account: the API
    // authenticates it as the account (its own ID token names it) and lets it do what the
    // account may (not list services).
    let access_token = seen["accessToken"].as_str().unwrap().to_owned();
    let api = wharf_testsupport::http_client().build().unwrap();
    let response = api
        .get(server.api_url("/v2/projects/demo/locations/us-central1/services"))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403, "authenticated, not allowed");
    let own: serde_json::Value = api
        .post(server.api_url("/wharf/v1/idToken"))
        .bearer_auth(&access_token)
        .json(&serde_json::json!({"audience": "http://anywhere.example"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let payload = own["token"].as_str().unwrap().split('.').nth(1).unwrap().to_owned();
    use base64::Engine as _;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["email"], ACCOUNT);

    // After the grant: 200, and B got the token without its signature.
    cli(
        &server,
        &[
            "run",
            "services",
            "add-iam-policy-binding",
            "b",
            &format!("--member=serviceAccount:{ACCOUNT}"),
            "--role=roles/run.invoker",
            "--project",
            "demo",
        ],
    );
    let seen = ask_a(&server, &a_url, &identity).await;
    assert_eq!(seen["status"], 200, "{seen}");
    let b_saw: serde_json::Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    let id_token = seen["idToken"].as_str().unwrap();
    let (unsigned, signature) = id_token.rsplit_once('.').unwrap();
    assert!(!signature.is_empty());
    assert_eq!(b_saw["service"], "b");
    assert_eq!(b_saw["authorization"], format!("Bearer {unsigned}."), "B reads the claims, cannot replay the token");

    // Raw requests: the flavor header is required, and answered with.
    let project_id = format!("/metadata?path={}", query("/computeMetadata/v1/project/project-id"));
    let without = ask_a(&server, &a_url, &project_id).await;
    assert_eq!(without["status"], 403, "{without}");
    assert!(without["body"].as_str().unwrap().contains("Metadata-Flavor"), "{without}");
    let with = ask_a(&server, &a_url, &format!("{project_id}&flavor=1")).await;
    assert_eq!((&with["status"], &with["body"], &with["flavor"]), (&200.into(), &"demo".into(), &"Google".into()));

    // A disabled account gets no token.
    cli(&server, &["iam", "service-accounts", "disable", ACCOUNT, "--project", "demo"]);
    let token =
        format!("/metadata?path={}&flavor=1", query("/computeMetadata/v1/instance/service-accounts/default/token"));
    let refused = ask_a(&server, &a_url, &token).await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(refused["body"].as_str().unwrap().contains("is disabled or deleted"), "{refused}");
}
