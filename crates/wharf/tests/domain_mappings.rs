//! Domain mappings end to end, with certificates from a real ACME server: Debian's `pebble`,
//! started by the test on loopback ports with its own TLS certificate (from a CA the test makes
//! and hands Wharf as `--acme-ca-file`), resolving names through `pebble-challtestsrv`'s DNS
//! (every name is 127.0.0.1), and validating against Wharf's own HTTPS ingress (TLS-ALPN-01).
//!
//! One test, one server: map a domain (and see bad mappings refused by name), wait for
//! `CertificateProvisioned`, fetch the service over HTTPS by that name trusting only pebble's
//! root (with `X-Forwarded-Proto`/`X-Forwarded-For` and HSTS), see plain HTTP redirected with a
//! 308, restart and see the stored certificate served again (no new order), then unmap.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, service_host, testapp_image};

const DOMAIN: &str = "api.wharf-test.example";
const MAPPINGS: &str = "/apis/domains.cloudrun.com/v1/namespaces/demo/domainmappings";

/// A process the test started, killed and reaped when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA for pebble's own HTTPS listener, and pebble's certificate from it.
fn pebble_tls(dir: &Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(rcgen::DnType::CommonName, "pebble listener test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("pebble.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    (s(&paths.0), s(&paths.1), s(&paths.2))
}

/// Polls `probe` until it answers, for at most `timeout`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn api(server: &WharfServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = server.client_builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut request = client.request(method, server.api_url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn ok(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(out.status.success(), "wharf {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn condition<'a>(mapping: &'a Value, kind: &str) -> &'a Value {
    mapping["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {mapping}"))
}

/// Waits until the mapping's certificate is provisioned; fails at once if it failed.
async fn provisioned(server: &WharfServer) -> Value {
    eventually("CertificateProvisioned=True", Duration::from_secs(60), || async {
        let (status, mapping) = api(server, reqwest::Method::GET, &format!("{MAPPINGS}/{DOMAIN}"), None).await;
        assert_eq!(status, 200, "{mapping}");
        let certificate = condition(&mapping, "CertificateProvisioned");
        assert_ne!(certificate["status"], "False", "{mapping}\n{}", server.log());
        (certificate["status"] == "True").then_some(mapping)
    })
    .await
}

/// An HTTPS client that trusts only `root` and sends `DOMAIN` to `https`.
fn https_client(root: &[u8], https: SocketAddr) -> reqwest::Client {
    wharf_testsupport::http_client()
        .tls_certs_only([reqwest::Certificate::from_pem(root).unwrap()])
        .tls_info(true)
        .resolve(DOMAIN, https)
        .build()
        .unwrap()
}

/// The leaf certificate the HTTPS ingress presents for `DOMAIN`, and the app's view of the
/// request (its headers) with the response's HSTS header.
async fn fetch_https(root: &[u8], https: SocketAddr) -> (Vec<u8>, Value, String) {
    let response =
        https_client(root, https).get(format!("https://{DOMAIN}:{}/headers", https.port())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let leaf = response.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).unwrap();
    let leaf = leaf.to_vec();
    let hsts =
        response.headers().get("strict-transport-security").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (leaf, response.json().await.unwrap(), hsts)
}

#[tokio::test]
async fn a_mapped_domain_gets_an_acme_certificate_serves_https_and_redirects_http() {
    let work = tempfile::tempdir().unwrap();
    let (ca, pebble_cert, pebble_key) = pebble_tls(work.path());
    let (acme_port, acme_management, dns_port, dns_management) =
        (free_tcp_port(), free_tcp_port(), free_udp_port(), free_tcp_port());
    let https_port = free_tcp_port();
    let https: SocketAddr = ([127, 0, 0, 1], https_port).into();
    let directory = format!("https://127.0.0.1:{acme_port}/dir");
    let https_addr = https.to_string();
    let mut server = WharfServer::start_with_env(
        Path::new(env!("CARGO_BIN_EXE_wharf")),
        &[
            ("WHARF_HTTPS_ADDR", &https_addr),
            ("WHARF_ACME_DIRECTORY", &directory),
            ("WHARF_ACME_CA_FILE", &ca),
            ("WHARF_ACME_EMAIL", "ops@wharf-test.example"),
            ("WHARF_ACME_CHALLENGE", "tls-alpn-01"),
            ("WHARF_HSTS_MAX_AGE", "600"),
        ],
    )
    .unwrap();

    // pebble-challtestsrv answers every A query with 127.0.0.1 (no AAAA), for pebble only.
    let dns = Process(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; scripts/test installs it)"),
    );
    let ingress_port: u16 = server.addrs.ingress_addr.rsplit(':').next().unwrap().parse().unwrap();
    let config = json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{acme_management}"),
        "certificate": pebble_cert,
        "privateKey": pebble_key,
        "httpPort": ingress_port,
        "tlsPort": https_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    let config_path = work.path().join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let pebble_log = std::fs::File::create(work.path().join("pebble.log")).unwrap();
    let pebble = Process(
        Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(pebble_log.try_clone().unwrap())
            .stderr(pebble_log)
            .spawn()
            .expect("pebble (Debian package pebble; scripts/test installs it)"),
    );
    let trust_ca = wharf_testsupport::http_client()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .build()
        .unwrap();
    // Pebble's root, which signs what it issues, once it is up.
    let root = eventually("pebble to serve its root", Duration::from_secs(20), || async {
        let response = trust_ca.get(format!("https://127.0.0.1:{acme_management}/roots/0")).send().await.ok()?;
        (response.status() == 200).then_some(())?;
        Some(response.bytes().await.ok()?.to_vec())
    })
    .await;

    let built = testapp_image(work.path(), "v1").unwrap();
    ok(&server, &["images", "import", &built.layout.to_string_lossy(), "--tag", "web:v1"]);
    let image = format!("{}/web:v1", server.addrs.registry_addr);
    ok(&server, &["projects", "add-iam-policy-binding", "demo", "--member=allUsers", "--role=roles/run.invoker"]);
    ok(&server, &["run", "deploy", "web", "--image", &image, "--project", "demo"]);

    // Bad mappings are refused, by name.
    let create = |domain: &str, service: &str| {
        json!({"apiVersion": "domains.cloudrun.com/v1", "kind": "DomainMapping",
               "metadata": {"name": domain, "namespace": "demo"}, "spec": {"routeName": service}})
    };
    for (domain, service, code, says) in [
        ("Bad_Name.example", "web", 400, "metadata.name: the domain \"Bad_Name.example\" has uppercase letters"),
        ("x.us-central1.localhost", "web", 400, "under this server's own domain"),
        ("other.wharf-test.example", "nosuch", 404, "service \"nosuch\" not found in project \"demo\""),
    ] {
        let (status, body) = api(&server, reqwest::Method::POST, MAPPINGS, Some(create(domain, service))).await;
        assert_eq!(status, code, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
    }
    let (status, body) = api(
        &server,
        reqwest::Method::POST,
        MAPPINGS,
        Some(json!({"metadata": {"name": DOMAIN}, "spec": {"routeName": "web", "bogus": 1}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("bogus"), "{body}");

    // The CLI maps the domain and prints the DNS records to create.
    let out = server
        .cli(&["run", "domain-mappings", "create", "--service", "web", "--domain", DOMAIN, "--project", "demo"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("RECORD TYPE"), "{stdout}");
    // Mapped once only.
    let (status, body) = api(&server, reqwest::Method::POST, MAPPINGS, Some(create(DOMAIN, "web"))).await;
    assert_eq!((status, body["error"]["status"].as_str()), (409, Some("ALREADY_EXISTS")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("already mapped to service \"web\""), "{body}");

    let mapping = provisioned(&server).await;
    assert_eq!(condition(&mapping, "Ready")["status"], "True", "{mapping}");
    assert_eq!(condition(&mapping, "DomainRoutable")["status"], "True", "{mapping}");
    assert_eq!(condition(&mapping, "CertificateProvisioned")["reason"], "CertificateIssued", "{mapping}");
    assert_eq!(mapping["status"]["url"], format!("https://{DOMAIN}:{https_port}"), "{mapping}");
    assert_eq!(mapping["spec"]["routeName"], "web");
    assert_eq!(mapping["metadata"]["labels"]["cloud.googleapis.com/location"], "us-central1");

    // HTTPS by the mapped name, trusting only pebble's root; the app learns the scheme and the
    // client's address; HSTS as configured.
    let (leaf, headers, hsts) = fetch_https(&root, https).await;
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(hsts, "max-age=600");

    // Plain HTTP on the mapped domain: 308 to HTTPS, except ACME challenge paths.
    let plain = wharf_testsupport::http_client().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let ingress = &server.addrs.ingress_addr;
    let r = plain.get(format!("http://{ingress}/headers?x=1")).header("Host", DOMAIN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], format!("https://{DOMAIN}:{https_port}/headers?x=1").as_str());
    let r = plain
        .get(format!("http://{ingress}/.well-known/acme-challenge/none"))
        .header("Host", DOMAIN)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status().as_u16(), 308);
    // The service's own host keeps working over plain HTTP, without HSTS.
    let web = service_host("web", "demo");
    let r = plain.get(format!("http://{ingress}/headers")).header("Host", &web).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("strict-transport-security").is_none());

    // Keys are the server's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let acme_dir = server.data_dir().join("tls/acme");
    for file in ["account.json".to_owned(), format!("certs/{DOMAIN}/key.pem")] {
        let mode = std::fs::metadata(acme_dir.join(&file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // describe and list, as gcloud shows them.
    let described: Value = serde_json::from_str(&ok(
        &server,
        &["run", "domain-mappings", "describe", "--domain", DOMAIN, "--project", "demo", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(described["kind"], "DomainMapping");
    assert_eq!(condition(&described, "CertificateProvisioned")["status"], "True");
    let listed = ok(&server, &["run", "domain-mappings", "list", "--project", "demo"]);
    assert!(listed.contains(DOMAIN) && listed.contains("web"), "{listed}");

    // After a restart, the stored certificate is served again: no new order.
    server.restart().unwrap();
    let mapping = provisioned(&server).await;
    assert_eq!(condition(&mapping, "CertificateProvisioned")["reason"], "CertificateStored", "{mapping}");
    let (leaf_again, _, _) = fetch_https(&root, https).await;
    assert_eq!(leaf_again, leaf, "the restarted server ordered a new certificate");

    // Unmapped: the name serves nothing, and its certificate is gone.
    ok(&server, &["run", "domain-mappings", "delete", "--domain", DOMAIN, "--project", "demo"]);
    let (status, _) = api(&server, reqwest::Method::GET, &format!("{MAPPINGS}/{DOMAIN}"), None).await;
    assert_eq!(status, 404);
    let r =
        plain.get(format!("http://{}/headers", server.addrs.ingress_addr)).header("Host", DOMAIN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // No certificate for the name any more: the handshake fails.
    let refused = https_client(&root, https).get(format!("https://{DOMAIN}:{https_port}/")).send().await;
    assert!(refused.as_ref().is_err_and(reqwest::Error::is_connect), "{refused:?}");
    assert!(!acme_dir.join("certs").join(DOMAIN).exists());

    drop((pebble, dns));
    assert_eq!(server.stop_and_check().unwrap(), Vec::new());
}
