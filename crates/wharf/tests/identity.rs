//! Identity end to end, against a real server with real instances:
//!
//! - services are private by default: no credentials -> 401 with Cloud Run's page; the owner's
//!   token or the owner's ID token for the service URL (`wharf auth print-identity-token`) ->
//!   200; an ID token for another URL, a tampered one, or garbage -> 401; a service account's
//!   ID token (impersonated by the owner) without `run.invoker` -> 403;
//! - Wharf is an OIDC issuer: Google's Python library (`google.oauth2.id_token.verify_token`
//!   with Wharf's JWKS URL) accepts its tokens, also across a key rotation, and tokens signed
//!   before the rotation keep working at the ingress;
//! - `--ingress internal`: 404 for a client on an address the test adds to this machine, 200
//!   from loopback and from inside another service's instance.
//!
//! Every address is on this machine; the guard removes the one the test adds, also on failure.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wharf_testsupport::{WharfServer, service_host, testapp_image};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

struct Env {
    server: WharfServer,
    image: String,
    _work: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let work = tempfile::tempdir().unwrap();
        let built = testapp_image(work.path(), "v1").unwrap();
        let server = WharfServer::start(wharf()).unwrap();
        let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let image = format!("{}/testapp:v1", server.addrs.registry_addr);
        Env { server, image, _work: work }
    }

    /// Runs `wharf run ...` (project demo), asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.wharf(&[args, &["--project", "demo"]].concat())
    }

    /// Runs the CLI, asserts success, returns stdout.
    fn wharf(&self, args: &[&str]) -> String {
        let out = self.server.cli(args).unwrap();
        assert!(
            out.status.success(),
            "wharf {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn deploy(&self, service: &str, extra: &[&str]) -> String {
        self.ok(&[&["run", "deploy", service, "--image", &self.image][..], extra].concat());
        self.ok(&["run", "services", "describe", service, "--format", "value(status.url)"]).trim().to_owned()
    }

    /// GET `/` of `service` through the ingress with `authorization` (if any), from `client`.
    async fn get(&self, client: &reqwest::Client, service: &str, authorization: Option<&str>) -> (u16, String) {
        let mut request = client
            .get(format!("http://{}/", self.server.addrs.ingress_addr))
            .header("Host", service_host(service, "demo"));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

fn anonymous() -> reqwest::Client {
    wharf_testsupport::http_client().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Verifies `token` with Google's library against Wharf's JWKS; returns its email or the error.
fn google_verify(server: &WharfServer, token: &str, audience: &str) -> Result<String, String> {
    let script = "import sys\n\
        from google.auth.transport.requests import Request\n\
        from google.oauth2 import id_token\n\
        claims = id_token.verify_token(sys.argv[1], Request(), audience=sys.argv[2], certs_url=sys.argv[3])\n\
        print(claims['email'])\n";
    let jwks = server.api_url("/oauth2/v3/certs");
    let out = Command::new("python3").args(["-c", script, token, audience, &jwks]).output().expect("python3 runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn services_are_private_and_take_wharfs_tokens_which_google_auth_verifies() {
    let env = Env::start();
    let url = env.deploy("private", &[]);
    let client = anonymous();

    let (status, body) = env.get(&client, "private", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("<h1>Error: Unauthorized</h1>"), "{body}");
    let owner = format!("Bearer {}", env.server.token);
    let (status, body) = env.get(&client, "private", Some(&owner)).await;
    assert_eq!((status, body.starts_with("Hello from private-00001-")), (200, true), "{body}");

    // The owner's own ID token for the service URL.
    let id_token = env.wharf(&["auth", "print-identity-token", &format!("--audiences={url}")]).trim().to_owned();
    assert_eq!(env.get(&client, "private", Some(&format!("Bearer {id_token}"))).await.0, 200);
    assert_eq!(google_verify(&env.server, &id_token, &url), Ok("owner@wharf.invalid".to_owned()));
    let wrong_audience = google_verify(&env.server, &id_token, "http://elsewhere.example").unwrap_err();
    assert!(wrong_audience.to_ascii_lowercase().contains("audience"), "{wrong_audience}");

    // Not valid here: another audience, a tampered signature, garbage.
    let elsewhere =
        env.wharf(&["auth", "print-identity-token", "--audiences=http://elsewhere.example"]).trim().to_owned();
    let mut tampered = id_token.clone();
    tampered.replace_range(tampered.len() - 8.., "AAAAAAAA");
    for bad in [elsewhere.as_str(), tampered.as_str(), "not-a-token"] {
        let (status, body) = env.get(&client, "private", Some(&format!("Bearer {bad}"))).await;
        assert_eq!(status, 401, "{bad}: {body}");
    }

    // A service account's ID token (the owner may impersonate any): valid, but the account
    // has no run.invoker on the service until a binding grants it.
    env.wharf(&["iam", "service-accounts", "create", "caller", "--project", "demo"]);
    let account = "caller@demo.iam.gserviceaccount.com";
    let sa_token = env
        .wharf(&[
            "auth",
            "print-identity-token",
            &format!("--audiences={url}"),
            &format!("--impersonate-service-account={account}"),
        ])
        .trim()
        .to_owned();
    assert_eq!(google_verify(&env.server, &sa_token, &url), Ok(account.to_owned()));
    let (status, body) = env.get(&client, "private", Some(&format!("Bearer {sa_token}"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<h1>Error: Forbidden</h1>"), "{body}");
    env.wharf(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "private",
        &format!("--member=serviceAccount:{account}"),
        "--role=roles/run.invoker",
        "--project",
        "demo",
    ]);
    let (status, body) = env.get(&client, "private", Some(&format!("Bearer {sa_token}"))).await;
    assert_eq!(status, 200, "the binding admits the account's token: {body}");

    // Discovery names the JWKS; a rotation keeps tokens in flight valid, everywhere.
    let discovery: serde_json::Value =
        client.get(env.server.api_url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], format!("http://{}", env.server.addrs.api_addr));
    assert_eq!(discovery["jwks_uri"], env.server.api_url("/oauth2/v3/certs"));
    env.wharf(&["auth", "rotate-signing-key"]);
    let jwks: serde_json::Value =
        client.get(env.server.api_url("/oauth2/v3/certs")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert_eq!(env.get(&client, "private", Some(&format!("Bearer {id_token}"))).await.0, 200);
    assert_eq!(google_verify(&env.server, &id_token, &url), Ok("owner@wharf.invalid".to_owned()));
    let fresh = env.wharf(&["auth", "print-identity-token", &format!("--audiences={url}")]).trim().to_owned();
    assert_ne!(fresh.split('.').next(), id_token.split('.').next(), "the new token names the new key");
    assert_eq!(env.get(&client, "private", Some(&format!("Bearer {fresh}"))).await.0, 200);
    assert_eq!(google_verify(&env.server, &fresh, &url), Ok("owner@wharf.invalid".to_owned()));

    // Only the owner rotates: a service account's access token may not.
    let access = env
        .wharf(&["auth", "print-access-token", &format!("--impersonate-service-account={account}")])
        .trim()
        .to_owned();
    let out = env.server.cli_with_env(&["auth", "rotate-signing-key"], &[("WHARF_TOKEN", &access)]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(HTTP 403)"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An address added to `lo` for the test (scope host), removed on drop.
struct LoopbackAddress(String);

impl LoopbackAddress {
    fn add(addr: Ipv4Addr) -> LoopbackAddress {
        let cidr = format!("{addr}/32");
        let out = Command::new("ip").args(["addr", "add", &cidr, "dev", "lo", "scope", "host"]).output().unwrap();
        assert!(out.status.success(), "ip addr add: {}", String::from_utf8_lossy(&out.stderr));
        LoopbackAddress(cidr)
    }
}

impl Drop for LoopbackAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["addr", "del", &self.0, "dev", "lo"]).output();
    }
}

#[tokio::test]
async fn an_internal_service_answers_only_loopback_and_instances() {
    let env = Env::start();
    env.deploy("inside", &["--ingress", "internal"]);
    env.deploy("caller", &[]);
    let owner = format!("Bearer {}", env.server.token);

    // From loopback: internal.
    let (status, body) = env.get(&anonymous(), "inside", Some(&owner)).await;
    assert_eq!((status, body.starts_with("Hello from inside-00001-")), (200, true), "{body}");

    // From another address of this machine: not internal, and the service does not exist.
    let n = u8::try_from(std::process::id() % 250 + 1).unwrap();
    let outside = Ipv4Addr::new(10, 78, 0, n);
    let _address = LoopbackAddress::add(outside);
    let from_outside = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::V4(outside))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (status, body) = env.get(&from_outside, "inside", Some(&owner)).await;
    assert_eq!(status, 404, "{body}");
    // A service with ingress all answers the same client.
    assert_eq!(env.get(&from_outside, "caller", Some(&owner)).await.0, 200);

    // From inside another service's instance, by the URL describe prints.
    let port = env.server.addrs.ingress_addr.rsplit(':').next().unwrap().to_owned();
    let target = format!("{}:{port}", service_host("inside", "demo"));
    let auth = format!("Authorization:%20Bearer%20{}", env.server.token);
    let (status, body) = env.get(&anonymous(), "caller", Some(&owner)).await;
    assert_eq!(status, 200, "{body}");
    let response = anonymous()
        .get(format!("http://{}/fetch?addr={target}&path=/&header={auth}", env.server.addrs.ingress_addr))
        .header("Host", service_host("caller", "demo"))
        .header("Authorization", &owner)
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("Hello from inside-00001-"), "{body}");
}
