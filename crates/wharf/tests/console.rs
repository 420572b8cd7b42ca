//! The web console (`/console`), end to end against a real `wharf server`:
//! - over plain HTTP: the security headers on every console response, the session cookie's
//!   attributes, the CSRF rule (a change authenticated by the cookie without the session's
//!   CSRF token is 403; with it, it goes through), cross-site refusals, sign-out, and a
//!   viewer's refusal by the API's own authorization;
//! - over HTTPS (the HTTPS ingress with the server's local CA, host `console.localhost`): the
//!   console and the API it calls, a `Secure` cookie; a session surviving a server restart;
//!   sign-in failures limited per address (429 with `Retry-After`);
//! - in a real browser (headless Debian chromium through chromedriver): sign in, create a
//!   service, deploy a second revision, split traffic 50/50 and see both revisions answer
//!   through the ingress, see those requests in the service's charts and their tables (and in
//!   the metrics API), roll back in one click, create a job from the form, execute a job with
//!   an override and read its task logs, reveal a secret's value on request, and see a
//!   viewer's deploy and reveal refused with the API's messages.
//!
//! Screenshots of the main pages are written to `$WHARF_CONSOLE_SCREENSHOTS` when it is set
//! (`WHARF_CONSOLE_SCREENSHOTS=$PWD/docs/console bash scripts/test -p wharf --test console`).

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wharf_testsupport::browser::Browser;
use wharf_testsupport::{WharfServer, http_client, service_host, testapp_image};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

/// A client that keeps no cookies: each request says exactly what it carries.
fn client() -> reqwest::Client {
    http_client().timeout(Duration::from_secs(30)).build().unwrap()
}

fn cli_ok(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(out.status.success(), "wharf {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Signs in with `credential`; returns the cookie pair (`wharf_session=...`), the CSRF token
/// and the whole Set-Cookie value.
async fn sign_in(http: &reqwest::Client, server: &WharfServer, credential: &str) -> (String, String, String) {
    let r =
        http.post(server.api_url("/console/session")).json(&json!({ "credential": credential })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (cookie, body["csrfToken"].as_str().unwrap().to_owned(), set_cookie)
}

fn assert_console_headers(response: &reqwest::Response, what: &str) {
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-security-policy").as_deref(), Some(CSP), "{what}");
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{what}");
    assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"), "{what}");
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{what}");
}

#[tokio::test]
async fn console_headers_cookie_csrf_a_viewers_refusal_https_sessions_across_restarts_and_sign_in_limits() {
    let mut server = WharfServer::start_with_env(binary(), &[("WHARF_HTTPS_ADDR", "127.0.0.1:0")]).unwrap();
    let http = client();

    // The page and every asset it loads: strict headers, no inline script or style.
    let page = http.get(server.api_url("/console")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_console_headers(&page, "/console");
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/assets/app.js"></script>"#), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "one external script, nothing inline");
    assert!(!html.contains("style=") && !html.contains("<style"), "no inline style");
    for (asset, kind) in [
        ("app.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("ui.js", "text/javascript"),
        ("services.js", "text/javascript"),
        ("service.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("jobs.js", "text/javascript"),
        ("resources.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let r = http.get(server.api_url(&format!("/console/assets/{asset}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert_console_headers(&r, asset);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("innerHTML") && !text.contains("eval("), "{asset} builds no markup from strings");
    }
    let missing = http.get(server.api_url("/console/assets/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_console_headers(&missing, "a missing asset");

    // No session yet; bad credentials and foreign or non-JSON sign-ins are refused.
    let r = http.get(server.api_url("/console/session")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r =
        http.post(server.api_url("/console/session")).json(&json!({"credential": "wharf_wrong"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED", "{body}");
    assert!(
        http.post(server.api_url("/console/session"))
            .header("content-type", "text/plain")
            .body(format!("{{\"credential\": \"{}\"}}", server.token))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::BAD_REQUEST,
        "a form post (text/plain) cannot sign in"
    );
    let r = http
        .post(server.api_url("/console/session"))
        .header("origin", "http://evil.example")
        .json(&json!({ "credential": server.token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another site cannot sign a browser in");

    // The owner signs in: the cookie is HttpOnly, SameSite=Strict, Path=/ (Secure behind HTTPS).
    let (cookie, csrf, set_cookie) = sign_in(&http, &server, &server.token).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert!(!set_cookie.contains(&server.token), "the cookie holds a session id, not the credential");
    let behind_https = http
        .post(server.api_url("/console/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "credential": server.token }))
        .send()
        .await
        .unwrap();
    assert!(behind_https.headers()["set-cookie"].to_str().unwrap().ends_with("; Secure"));
    let session: Value = http
        .get(server.api_url("/console/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["principal"], "owner", "{session}");
    assert_eq!(session["csrfToken"], csrf.as_str());

    // Reads with the cookie alone; changes only with the CSRF token, from this origin.
    let services = server.api_url("/v2/projects/web/locations/-/services");
    let r = http.get(&services).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let secrets = server.api_url("/v1/projects/web/secrets");
    let create = |secret: &str| {
        http.post(format!("{secrets}?secretId={secret}"))
            .header("cookie", &cookie)
            .json(&json!({"replication": {"automatic": {}}}))
    };
    let r = create("one").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a cookie without the CSRF token changes nothing");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert!(body["error"]["message"].as_str().unwrap().contains("X-CSRF-Token"), "{body}");
    let r = create("one").header("x-csrf-token", "0".repeat(64)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a wrong CSRF token");
    let r = create("one").header("x-csrf-token", &csrf).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a cross-site request, even with the token");
    let r = create("one").header("x-csrf-token", &csrf).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a foreign Origin, even with the token");
    let listed: Value = http.get(&secrets).header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["secrets"], json!([]), "nothing was created by the refused requests: {listed}");
    let r = create("one")
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "same-origin")
        .header("origin", format!("http://{}", server.addrs.api_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let listed: Value = http.get(&secrets).header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["secrets"][0]["name"], "projects/web/secrets/one", "{listed}");

    // A viewer signs in, reads, and is refused a change by the API's authorization.
    let viewer_token = cli_ok(&server, &["iam", "users", "create", "vic@example.com"]).trim().to_owned();
    cli_ok(
        &server,
        &["projects", "add-iam-policy-binding", "web", "--member=user:vic@example.com", "--role=roles/run.viewer"],
    );
    let (viewer_cookie, viewer_csrf, _) = sign_in(&http, &server, &viewer_token).await;
    let r = http.get(&services).header("cookie", &viewer_cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(server.api_url("/v2/projects/web/locations/us-central1/services?serviceId=nope"))
        .header("cookie", &viewer_cookie)
        .header("x-csrf-token", &viewer_csrf)
        .json(&json!({"template": {"containers": [{"image": "127.0.0.1:1/x:v1"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("Permission 'run.services.create' denied"),
        "{body}"
    );
    // A deleted user's session stops working at once: the credential is checked every time.
    cli_ok(&server, &["iam", "users", "delete", "vic@example.com"]);
    let r = http.get(&services).header("cookie", &viewer_cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Sign-out needs the CSRF token too, then the session is gone.
    let signout = || http.delete(server.api_url("/console/session")).header("cookie", &cookie);
    assert_eq!(signout().send().await.unwrap().status(), StatusCode::FORBIDDEN);
    let r = signout().header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let r = http.get(&services).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("sign in again"), "{body}");

    // Over HTTPS: the HTTPS ingress serves the console and the API for console.localhost with
    // a certificate of the server's local CA; the cookie is Secure.
    let https: std::net::SocketAddr = server.addrs.https_addr.as_deref().expect("httpsAddr").parse().unwrap();
    let ca = std::fs::read(server.data_dir().join("tls/local-ca.pem")).unwrap();
    let tls = http_client()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("console.localhost", https)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let origin = format!("https://console.localhost:{}", https.port());
    let page = tls.get(format!("{origin}/console")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_console_headers(&page, "/console over HTTPS");
    assert!(page.text().await.unwrap().contains("/console/assets/app.js"));
    let r = tls
        .post(format!("{origin}/console/session"))
        .header("x-forwarded-proto", "http")
        .json(&json!({ "credential": server.token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.ends_with("; Secure") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let https_cookie = set_cookie.split(';').next().unwrap().to_owned();
    let https_csrf = r.json::<Value>().await.unwrap()["csrfToken"].as_str().unwrap().to_owned();
    let r = tls
        .post(format!("{origin}/v1/projects/web/secrets?secretId=over-https"))
        .header("cookie", &https_cookie)
        .header("x-csrf-token", &https_csrf)
        .header("origin", &origin)
        .json(&json!({"replication": {"automatic": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a change through the HTTPS console: {}", r.text().await.unwrap());
    // The plain HTTP ingress does not serve the console host (cookies would travel in the clear).
    let plain = http
        .get(format!("http://{}/console", server.addrs.ingress_addr))
        .header("host", "console.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::NOT_FOUND);

    // Sessions are kept across a restart (the database holds the id's hash, not the id).
    server.restart().unwrap();
    let http = client();
    let session: Value = http
        .get(server.api_url("/console/session"))
        .header("cookie", &https_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (session["principal"].as_str(), session["csrfToken"].as_str()),
        (Some("owner"), Some(https_csrf.as_str()))
    );
    let r = http
        .delete(server.api_url("/v1/projects/web/secrets/over-https"))
        .header("cookie", &https_cookie)
        .header("x-csrf-token", &https_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a change with the restored session: {}", r.text().await.unwrap());
    let state_db = std::fs::read(server.data_dir().join("state.db")).unwrap();
    let session_id = https_cookie.trim_start_matches("wharf_session=");
    assert!(!state_db.windows(session_id.len()).any(|w| w == session_id.as_bytes()), "the session id is not stored");

    // Sign-in failures: 10 a minute per address, then 429 with Retry-After, even for a good
    // credential, in google.rpc.Status's shape.
    let attempt = |credential: String| {
        let http = http.clone();
        let url = server.api_url("/console/session");
        async move { http.post(url).json(&json!({ "credential": credential })).send().await.unwrap() }
    };
    for i in 0..10 {
        assert_eq!(attempt(format!("wharf_guess_{i}")).await.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let limited = attempt(server.token.clone()).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
    assert_eq!(body["error"]["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("too many failed sign-ins"), "{body}");
    // The existing session is not affected.
    let r = http.get(server.api_url("/console/session")).header("cookie", &https_cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The revision that answered `/` on `host` through the ingress (the testapp says
/// "Hello from REVISION!"), with the owner's token.
async fn who_answers(http: &reqwest::Client, server: &WharfServer, host: &str) -> String {
    let r = http
        .get(format!("http://{}/", server.addrs.ingress_addr))
        .header("host", host)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap().trim().trim_start_matches("Hello from ").trim_end_matches('!').to_owned()
}

/// Saves a screenshot when `WHARF_CONSOLE_SCREENSHOTS` names a directory.
async fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("WHARF_CONSOLE_SCREENSHOTS") {
        browser.script("window.scrollTo(0, 0)", vec![]).await.unwrap();
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        browser.screenshot(&dir.join(format!("{name}.png"))).await.unwrap();
    }
}

/// Every input, textarea and select on the page has a label (screen readers name them).
async fn assert_all_labelled(browser: &Browser, page: &str) {
    let unlabelled = browser
        .script(
            "return [...document.querySelectorAll('input, textarea, select')].filter(e => !e.labels || !e.labels.length).map(e => e.outerHTML)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "unlabelled controls on {page}");
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_browser_signs_in_deploys_splits_traffic_rolls_back_and_runs_a_job() {
    assert!(
        wharf_testsupport::browser::available(),
        "this test drives Debian's chromium through chromedriver: apt-get install chromium chromium-driver (scripts/test does)"
    );
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start(binary()).unwrap();
    cli_ok(&server, &["images", "import", &built.layout.to_string_lossy(), "--tag", "hello:v1"]);
    let image = format!("{}/hello:v1", server.addrs.registry_addr);
    cli_ok(
        &server,
        &[
            "run",
            "jobs",
            "create",
            "echo",
            "--image",
            &image,
            "--args",
            "job",
            "--project",
            "default",
            "--region",
            "us-central1",
        ],
    );
    let viewer_token = cli_ok(&server, &["iam", "users", "create", "vera@example.com"]).trim().to_owned();
    // roles/viewer: reads services and secrets' names and versions, not their values.
    cli_ok(
        &server,
        &["projects", "add-iam-policy-binding", "default", "--member=user:vera@example.com", "--role=roles/viewer"],
    );
    let http = client();
    let service_api = server.api_url("/v2/projects/default/locations/us-central1/services/hello");
    let owner_api = server.client_builder().build().unwrap();

    // A secret with one version: the console lists it, never its value ("hunter2-value").
    let secrets_api = server.api_url("/v1/projects/default/secrets");
    let r = owner_api
        .post(format!("{secrets_api}?secretId=db-password"))
        .json(&json!({"replication": {"automatic": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = owner_api
        .post(format!("{secrets_api}/db-password:addVersion"))
        .json(&json!({"payload": {"data": "aHVudGVyMi12YWx1ZQ=="}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let browser = Browser::start(1280, 1000).await.unwrap();
    let console = server.api_url("/console");

    // Sign in with the owner token.
    browser.goto(&console).await.unwrap();
    browser.find("#sign-in input[name=credential]").await.unwrap();
    assert_all_labelled(&browser, "sign-in").await;
    screenshot(&browser, "sign-in").await;
    browser.type_into("#sign-in input[name=credential]", "wharf_not_a_token").await.unwrap();
    browser.click("#sign-in button[type=submit]").await.unwrap();
    let refusal = browser
        .wait(
            "the refusal next to the credential",
            WAIT,
            "return document.querySelector('#sign-in .field-error').textContent",
        )
        .await
        .unwrap();
    assert!(refusal.as_str().unwrap().contains("token"), "{refusal}");
    browser.type_into("#sign-in input[name=credential]", &server.token).await.unwrap();
    browser.click("#sign-in button[type=submit]").await.unwrap();
    browser
        .wait("the services page", WAIT, "return document.querySelector('h1')?.textContent === 'Services'")
        .await
        .unwrap();
    assert_eq!(browser.text("#principal").await.unwrap(), "owner");

    // Create a service from the form; the page follows the operation to the service page.
    assert_all_labelled(&browser, "services").await;
    browser.type_into("#create-form input[name=serviceId]", "hello").await.unwrap();
    browser.type_into("#create-form input[name=image]", &image).await.unwrap();
    browser.type_into("#create-form textarea[name=env]", "GREETING=one").await.unwrap();
    browser.click("#create-form button[type=submit]").await.unwrap();
    browser
        .wait("the new service's page", WAIT, "return location.hash === '#/services/us-central1/hello' && document.querySelectorAll('#traffic-form tbody tr[data-revision]').length === 1")
        .await
        .unwrap();
    let first: Value = owner_api.get(&service_api).send().await.unwrap().json().await.unwrap();
    assert_eq!((first["creator"].as_str(), first["lastModifier"].as_str()), (Some("owner"), Some("owner")), "{first}");
    let first_revision = first["latestReadyRevision"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let shown_image = browser.text("#revision-image").await.unwrap();
    assert!(shown_image.contains("@sha256:"), "the revision's image is pinned by digest: {shown_image}");
    assert_all_labelled(&browser, "service").await;

    // A bad value: the API's message appears next to the field it names, nothing deploys.
    browser.type_into("#deploy-form input[name=timeout]", "forever").await.unwrap();
    browser.click("#deploy-form button[type=submit]").await.unwrap();
    let message = browser
        .wait(
            "the API's message next to the timeout",
            WAIT,
            "return document.querySelector(\"#deploy-form [data-field='template.timeout'] .field-error\")?.textContent",
        )
        .await
        .unwrap();
    assert!(message.as_str().unwrap().starts_with("template.timeout"), "{message}");
    browser.type_into("#deploy-form input[name=timeout]", "300s").await.unwrap();

    // Deploy a second revision with the deploy form (it takes all traffic).
    browser.type_into("#deploy-form textarea[name=env]", "GREETING=two").await.unwrap();
    browser.type_into("#deploy-form input[name=memory]", "256Mi").await.unwrap();
    browser.click("#deploy-form button[type=submit]").await.unwrap();
    browser
        .wait(
            "two revisions",
            WAIT,
            "return document.querySelectorAll('#traffic-form tbody tr[data-revision]').length === 2",
        )
        .await
        .unwrap();
    let second: Value = owner_api.get(&service_api).send().await.unwrap().json().await.unwrap();
    let second_revision = second["latestReadyRevision"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    assert_ne!(first_revision, second_revision);
    let host = service_host("hello", "default");
    // Every request through the ingress is counted, for the charts' figures below (all 200).
    let mut served = 1u64;
    assert_eq!(who_answers(&http, &server, &host).await, second_revision);

    // Split 50/50 in the traffic editor; both revisions answer through the ingress.
    for revision in [&first_revision, &second_revision] {
        browser
            .type_into(&format!("#traffic-form input[name=percent][data-revision='{revision}']"), "50")
            .await
            .unwrap();
    }
    browser
        .type_into(&format!("#traffic-form input[name=tag][data-revision='{first_revision}']"), "blue")
        .await
        .unwrap();
    browser.click("#traffic-form button[type=submit]").await.unwrap();
    let split_script = format!(
        "return document.querySelector(\"#traffic-form input[name=percent][data-revision='{first_revision}']\")?.value === '50' && !document.querySelector('#traffic-form button[type=submit]').disabled && document.querySelector(\"#traffic-form input[name=tag][data-revision='{first_revision}']\")?.value === 'blue'"
    );
    browser.wait("the 50/50 split applied", WAIT, &split_script).await.unwrap();
    let service: Value = owner_api.get(&service_api).send().await.unwrap().json().await.unwrap();
    let mut split: Vec<(String, i64)> = service["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["percent"].as_i64().unwrap_or(0) > 0)
        .map(|t| (t["revision"].as_str().unwrap().to_owned(), t["percent"].as_i64().unwrap()))
        .collect();
    split.sort();
    let mut expected = vec![(first_revision.clone(), 50), (second_revision.clone(), 50)];
    expected.sort();
    assert_eq!(split, expected, "{service}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        served += 1;
        seen.insert(who_answers(&http, &server, &host).await);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, [first_revision.clone(), second_revision.clone()].into_iter().collect(), "both revisions serve");
    let tagged = format!("blue---{host}");
    served += 1;
    assert_eq!(who_answers(&http, &server, &tagged).await, first_revision, "the tag's own URL");
    screenshot(&browser, "service").await;

    // Roll back: one click sends all traffic to the first revision.
    browser
        .click(&format!("#traffic-form tr[data-revision='{first_revision}'] button[aria-label^='Roll back']"))
        .await
        .unwrap();
    let rolled_back = format!(
        "return document.querySelector(\"#traffic-form input[name=percent][data-revision='{first_revision}']\")?.value === '100'"
    );
    browser.wait("the rollback applied", WAIT, &rolled_back).await.unwrap();
    for _ in 0..10 {
        served += 1;
        assert_eq!(who_answers(&http, &server, &host).await, first_revision);
    }

    // The metrics API has every one of those requests, in the last hour's points, with
    // latencies and the instances that served them; a window it does not keep is refused.
    let metrics_api = server.api_url("/wharf/v1/projects/default/locations/us-central1/services/hello/metrics");
    // A request is counted when its response ends on the server's side, which may be just
    // after the client read it: wait for the count, then hold it exact.
    let mut series = Value::Null;
    for _ in 0..400 {
        series = owner_api.get(format!("{metrics_api}?window=1h")).send().await.unwrap().json().await.unwrap();
        if series["totalRequests"]["2xx"] == json!(served) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(series["totalRequests"]["2xx"], json!(served), "{series}");
    assert_eq!(series["totalRequests"]["5xx"], json!(0), "{series}");
    let in_points: u64 =
        series["points"].as_array().unwrap().iter().map(|p| p["requests"]["2xx"].as_u64().unwrap()).sum();
    assert_eq!(in_points, served, "{series}");
    assert!(series["totalLatencyMs"]["p99"].as_f64().unwrap() > 0.0, "{series}");
    assert!(series["peakInstances"].as_u64().unwrap() >= 1, "{series}");
    let r = owner_api.get(format!("{metrics_api}?window=2h")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().starts_with("window \"2h\""), "{body}");
    let r = owner_api
        .get(server.api_url("/wharf/v1/projects/default/locations/us-central1/services/nope/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    browser
        .wait(
            "logs of the service",
            WAIT,
            "return document.querySelector('#service-logs')?.textContent.includes('listening on port')",
        )
        .await
        .unwrap();

    // The services list: filter by name.
    browser.goto(&format!("{console}#/services")).await.unwrap();
    browser.find("#services-body a").await.unwrap();
    let row = browser.text("#services-body tr").await.unwrap();
    assert!(
        row.contains("hello") && row.contains("us-central1") && row.contains("owner") && row.contains("Ready"),
        "{row}"
    );
    screenshot(&browser, "services").await;
    browser.type_into("input[name=filter]", "zzz").await.unwrap();
    browser
        .wait("the filter to hide hello", WAIT, "return document.querySelectorAll('#services-body tr').length === 0")
        .await
        .unwrap();

    // Create a job from the form: the page follows the operation to the new job's page.
    browser.goto(&format!("{console}#/jobs")).await.unwrap();
    browser.type_into("#create-job-form input[name=jobId]", "made-here").await.unwrap();
    browser.type_into("#create-job-form input[name=image]", &image).await.unwrap();
    browser.type_into("#create-job-form input[name=args]", "job").await.unwrap();
    browser.type_into("#create-job-form input[name=taskCount]", "2").await.unwrap();
    assert_all_labelled(&browser, "jobs").await;
    browser.click("#create-job-form button[type=submit]").await.unwrap();
    browser
        .wait(
            "the new job's page",
            WAIT,
            "return location.hash === '#/jobs/us-central1/made-here' && document.querySelector('h1')?.textContent === 'made-here'",
        )
        .await
        .unwrap();
    let made: Value = owner_api
        .get(server.api_url("/v2/projects/default/locations/us-central1/jobs/made-here"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made["template"]["taskCount"], 2, "{made}");
    assert_eq!(made["template"]["template"]["containers"][0]["args"], json!(["job"]), "{made}");

    // Execute the job with an override and read its task logs.
    browser.goto(&format!("{console}#/jobs")).await.unwrap();
    browser.click("a[href='#/jobs/us-central1/echo']").await.unwrap();
    browser.type_into("#execute-form textarea[name=env]", "TESTAPP_ECHO=from-the-console").await.unwrap();
    browser.click("#execute-form button[type=submit]").await.unwrap();
    browser
        .wait(
            "the execution to succeed",
            WAIT,
            "return document.querySelector('#executions tbody')?.textContent.includes('Succeeded')",
        )
        .await
        .unwrap();
    browser.click("#executions tbody button").await.unwrap();
    browser
        .wait(
            "the task's logs",
            WAIT,
            "return document.querySelector('#execution-logs')?.textContent.includes('echo from-the-console')",
        )
        .await
        .unwrap();
    assert_all_labelled(&browser, "job").await;
    screenshot(&browser, "job").await;

    // Images: the imported repository with its digest.
    browser.goto(&format!("{console}#/images")).await.unwrap();
    browser
        .wait("the images table", WAIT, "return document.querySelector('main table')?.textContent.includes('hello')")
        .await
        .unwrap();

    // Secrets: names and versions, never values.
    browser.goto(&format!("{console}#/secrets")).await.unwrap();
    browser
        .wait(
            "the secrets table",
            WAIT,
            "return document.querySelector('main table')?.textContent.includes('db-password')",
        )
        .await
        .unwrap();
    let secrets_page = browser.text("main").await.unwrap();
    assert!(secrets_page.contains("1 (enabled)"), "{secrets_page}");
    assert!(!secrets_page.contains("hunter2"), "a secret's value on the page");
    // Revealed only on request, hidden again with the same button.
    browser.click("li[data-version='1'] button.reveal").await.unwrap();
    let revealed = browser
        .wait(
            "the revealed value",
            WAIT,
            "return document.querySelector('li[data-version=\"1\"] .secret-value')?.textContent",
        )
        .await
        .unwrap();
    assert_eq!(revealed, json!("hunter2-value"));
    browser.click("li[data-version='1'] button.reveal").await.unwrap();
    assert!(!browser.text("main").await.unwrap().contains("hunter2"), "hidden again");

    // Narrow window: nothing overflows sideways, the page still works.
    browser.set_window_size(400, 900).await.unwrap();
    browser.goto(&format!("{console}#/services/us-central1/hello")).await.unwrap();
    browser.find("#traffic-form").await.unwrap();
    // The charts show the requests: bars in the SVG summing to the count, and the same number
    // in the table beside it; latency dots and a title on every chart.
    let charted = browser
        .wait(
            "the request chart",
            WAIT,
            "const cell = document.querySelector(\"#table-requests td[data-class='2xx']\"); return cell && cell.textContent",
        )
        .await
        .unwrap();
    assert_eq!(charted, json!(served.to_string()));
    let drawn = browser
        .script(
            "return [...document.querySelectorAll(\"#chart-requests rect[data-class='2xx']\")].reduce((n, r) => n + Number(r.dataset.count), 0)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(drawn, json!(served));
    let charts = browser
        .script(
            "return [...document.querySelectorAll('svg.chart')].map(svg => [svg.id, svg.querySelector('title')?.textContent, svg.getAttribute('role'), svg.querySelectorAll('circle, rect, polyline').length > 0])",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        charts,
        json!([
            ["chart-requests", "Request count by response class", "img", true],
            ["chart-latency", "Request latency p50, p95 and p99", "img", true],
            ["chart-instances", "Instance count", "img", true]
        ])
    );
    let p50 = browser.text("#table-latency td[data-percentile='p50']").await.unwrap();
    assert!(p50.parse::<f64>().unwrap() > 0.0, "{p50}");
    let overflow = browser
        .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth", vec![])
        .await
        .unwrap();
    assert_eq!(overflow, json!(0), "the service page scrolls sideways at 400 px");
    screenshot(&browser, "narrow").await;
    browser.set_window_size(1280, 1000).await.unwrap();
    if std::env::var_os("WHARF_CONSOLE_SCREENSHOTS").is_some() {
        browser.goto(&format!("{console}#/services/us-central1/hello")).await.unwrap();
        browser.find("#table-requests td[data-class='2xx']").await.unwrap();
        browser.script("document.getElementById('metrics-heading').scrollIntoView()", vec![]).await.unwrap();
        let dir = std::path::PathBuf::from(std::env::var_os("WHARF_CONSOLE_SCREENSHOTS").unwrap());
        browser.screenshot(&dir.join("metrics.png")).await.unwrap();
    }

    // Sign out; a viewer signs in, sees the service, and the deploy is refused by the API.
    browser.click("#sign-out").await.unwrap();
    browser.find("#sign-in").await.unwrap();
    // By keyboard alone: the sign-in page puts focus on the credential; Enter submits.
    browser
        .wait("focus on the credential", WAIT, "return document.activeElement?.name === 'credential'")
        .await
        .unwrap();
    browser.keys_to_active(&format!("{viewer_token}\u{E007}")).await.unwrap();
    browser
        .wait(
            "the viewer signed in",
            WAIT,
            "return document.querySelector('#principal')?.textContent === 'user:vera@example.com'",
        )
        .await
        .unwrap();
    browser.goto(&format!("{console}#/services/us-central1/hello")).await.unwrap();
    browser.find("#deploy-form").await.unwrap();
    browser.click("#deploy-form button[type=submit]").await.unwrap();
    let refused = browser
        .wait("the viewer's refusal", WAIT, "return document.querySelector('#deploy-form .form-error')?.textContent")
        .await
        .unwrap();
    assert!(refused.as_str().unwrap().starts_with("Permission 'run.services.update' denied"), "{refused}");
    let after: Value = owner_api.get(&service_api).send().await.unwrap().json().await.unwrap();
    assert_eq!(after["latestCreatedRevision"], second["latestCreatedRevision"], "the viewer deployed nothing");
    // The viewer lists secrets but may not read a value: the API's refusal, next to the button.
    browser.goto(&format!("{console}#/secrets")).await.unwrap();
    browser.click("li[data-version='1'] button.reveal").await.unwrap();
    let refused = browser
        .wait(
            "the viewer's reveal refused",
            WAIT,
            "return document.querySelector('li[data-version=\"1\"] .error')?.textContent",
        )
        .await
        .unwrap();
    assert!(refused.as_str().unwrap().starts_with("Permission 'secretmanager.versions.access' denied"), "{refused}");
    assert!(!browser.text("main").await.unwrap().contains("hunter2"));

    browser.quit().await.unwrap();
}
