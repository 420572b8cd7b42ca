//! The metadata server's answers, over its real router with a real IAM (a temporary state
//! database). The caller's address comes in as the connection's peer, as the server sets it;
//! the table of instances is a small map standing in for the runtime's (the end-to-end test
//! `crates/wharf/tests/metadata.rs` asks from inside a real instance).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http_body_util::BodyExt as _;
use tower_service::Service as _;

use super::*;

#[derive(Debug)]
struct Table(Vec<(IpAddr, Caller)>);

impl Callers for Table {
    fn caller(&self, ip: IpAddr) -> Option<Caller> {
        self.0.iter().find(|(at, _)| *at == ip).map(|(_, c)| c.clone())
    }
}

const INSTANCE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 7);
const DEFAULT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 8);
const ACCOUNT: &str = "caller@demo.iam.gserviceaccount.com";

struct Fixture {
    _dir: tempfile::TempDir,
    iam: Iam,
    router: Router,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let iam = Iam::open(wharf_store::Store::open(&dir.path().join("state.db")).unwrap(), dir.path()).unwrap();
    iam.issuer.set_url("http://127.0.0.1:8000");
    iam.create_service_account("demo", "caller", "", "").unwrap();
    let caller = |instance: &str, account: &str| Caller {
        instance: instance.to_owned(),
        project: "demo".to_owned(),
        region: "us-central1".to_owned(),
        service_account: account.to_owned(),
    };
    let table = Table(vec![
        (IpAddr::V4(INSTANCE_IP), caller("0a1b2c3d4e5f", ACCOUNT)),
        (IpAddr::V4(DEFAULT_IP), caller("ffff00001111", "")),
    ]);
    let router = router(MetadataServer::new(Arc::new(table), iam.clone()));
    Fixture { _dir: dir, iam, router }
}

impl Fixture {
    /// GET `path` from `from` with `headers`; status, content type and body.
    async fn get_from(&self, from: Ipv4Addr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from((from, 41000))));
        let response = self.router.clone().call(request).await.unwrap();
        assert_eq!(response.headers()["metadata-flavor"], "Google", "{path}");
        let status = response.status().as_u16();
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        self.get_from(INSTANCE_IP, path, &[("Metadata-Flavor", "Google")]).await
    }

    async fn text(&self, path: &str) -> String {
        let (status, content_type, body) = self.get(path).await;
        assert_eq!((status, content_type.as_str()), (200, TEXT), "{path}: {body}");
        body
    }

    async fn json(&self, path: &str) -> Value {
        let (status, content_type, body) = self.get(path).await;
        assert_eq!((status, content_type.as_str()), (200, JSON), "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

#[tokio::test]
async fn it_answers_what_google_libraries_ask_for_the_calling_instance() {
    let f = fixture();
    let number = wharf_iam::project_number("demo");
    // google-auth's ping.
    assert_eq!(f.text("/").await, "computeMetadata/\n");
    assert_eq!(f.text("/computeMetadata/v1/").await, "instance/\nproject/\n");
    assert_eq!(f.text("/computeMetadata/v1/project/project-id").await, "demo");
    assert_eq!(f.text("/computeMetadata/v1/project/numeric-project-id").await, number.to_string());
    assert_eq!(f.text("/computeMetadata/v1/instance/region").await, format!("projects/{number}/regions/us-central1"));
    assert_eq!(f.text("/computeMetadata/v1/instance/zone").await, format!("projects/{number}/zones/us-central1-1"));
    assert_eq!(f.text("/computeMetadata/v1/instance/id").await, "0a1b2c3d4e5f");
    assert_eq!(f.json("/computeMetadata/v1/project/project-id?alt=json").await, json!("demo"));
    assert_eq!(
        f.json("/computeMetadata/v1/project/?recursive=true").await,
        json!({"numericProjectId": number, "projectId": "demo"})
    );

    // The account, by its alias and by its email, as google-auth reads it.
    assert_eq!(f.text("/computeMetadata/v1/instance/service-accounts/").await, format!("default/\n{ACCOUNT}/\n"));
    let info = json!({"aliases": ["default"], "email": ACCOUNT, "scopes": [CLOUD_PLATFORM_SCOPE]});
    assert_eq!(f.json("/computeMetadata/v1/instance/service-accounts/default/?recursive=true").await, info);
    assert_eq!(f.json(&format!("/computeMetadata/v1/instance/service-accounts/{ACCOUNT}/?recursive=true")).await, info);
    assert_eq!(f.text("/computeMetadata/v1/instance/service-accounts/default/email").await, ACCOUNT);
    assert_eq!(
        f.text("/computeMetadata/v1/instance/service-accounts/default/scopes").await,
        format!("{CLOUD_PLATFORM_SCOPE}\n")
    );
    assert_eq!(f.text("/computeMetadata/v1/instance/service-accounts/default/").await, "aliases\nemail\nscopes\n");
    assert_eq!(
        f.json("/computeMetadata/v1/instance/service-accounts/?recursive=true").await,
        json!({"default": info, ACCOUNT: info})
    );

    // An instance of a revision naming no account acts as the project's default one.
    let (status, _, body) = f
        .get_from(
            DEFAULT_IP,
            "/computeMetadata/v1/instance/service-accounts/default/email",
            &[("Metadata-Flavor", "Google")],
        )
        .await;
    assert_eq!((status, body), (200, wharf_iam::default_service_account("demo")));
}

#[tokio::test]
async fn tokens_are_wharfs_own_for_the_instances_account() {
    let f = fixture();
    let principal = Principal::ServiceAccount(ACCOUNT.to_owned());
    let token = f.json("/computeMetadata/v1/instance/service-accounts/default/token?scopes=a,b").await;
    assert_eq!(token["token_type"], "Bearer");
    let expires_in = token["expires_in"].as_i64().unwrap();
    assert!((3500..=3600).contains(&expires_in), "{token}");
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(f.iam.authenticate(Some(&format!("Bearer {access}"))).unwrap(), principal);
    // Handed out again while it lives long enough, as Google's server does.
    let again = f.json(&format!("/computeMetadata/v1/instance/service-accounts/{ACCOUNT}/token")).await;
    assert_eq!(again["access_token"], token["access_token"]);

    let audience = "http://api-abc.us-central1.localhost:8080/";
    let path = format!(
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience={}&format=full",
        "http%3A%2F%2Fapi-abc.us-central1.localhost%3A8080%2F"
    );
    let id_token = f.text(&path).await;
    let claims = f.iam.issuer.verify(&id_token, |aud| aud == audience).unwrap();
    assert_eq!(claims.email, ACCOUNT);

    let (status, _, body) = f.get("/computeMetadata/v1/instance/service-accounts/default/identity").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("non-empty audience parameter required"), "{body}");
    let (status, _, body) = f.get(&format!("{path}&format=compact")).await;
    assert_eq!(status, 400, "{body}");

    // A disabled account gets nothing; enabled again, it does; deleted, nothing again.
    f.iam.set_service_account_disabled("demo", ACCOUNT, true).unwrap();
    for path in [path.as_str(), "/computeMetadata/v1/instance/service-accounts/default/token"] {
        let (status, _, body) = f.get(path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains(&format!("service account {ACCOUNT} is disabled or deleted")), "{body}");
    }
    f.iam.set_service_account_disabled("demo", ACCOUNT, false).unwrap();
    f.json("/computeMetadata/v1/instance/service-accounts/default/token").await;
    f.iam.delete_service_account("demo", ACCOUNT).unwrap();
    assert_eq!(f.get("/computeMetadata/v1/instance/service-accounts/default/token").await.0, 403);
}

#[tokio::test]
async fn requests_without_the_flavor_from_proxies_or_from_strangers_are_refused() {
    let f = fixture();
    let path = "/computeMetadata/v1/project/project-id";
    let (status, _, body) = f.get_from(INSTANCE_IP, path, &[]).await;
    assert_eq!(status, 403);
    assert!(body.starts_with("Missing Metadata-Flavor:Google header"), "{body}");
    assert_eq!(f.get_from(INSTANCE_IP, "/", &[("Metadata-Flavor", "google-ish")]).await.0, 403);
    let (status, _, body) =
        f.get_from(INSTANCE_IP, path, &[("Metadata-Flavor", "Google"), ("X-Forwarded-For", "10.0.0.1")]).await;
    assert_eq!(status, 403);
    assert!(body.contains("X-Forwarded-For"), "{body}");
    assert_eq!(f.get_from(INSTANCE_IP, path, &[("X-Google-Metadata-Request", "True")]).await.0, 200);

    // An address no instance holds (the host itself, say) learns nothing.
    let (status, _, body) = f.get_from(Ipv4Addr::LOCALHOST, path, &[("Metadata-Flavor", "Google")]).await;
    assert_eq!(status, 403);
    assert!(body.contains("127.0.0.1 is not the address of an instance"), "{body}");

    // Another account, an unknown path, another method.
    let (status, _, body) =
        f.get("/computeMetadata/v1/instance/service-accounts/other@demo.iam.gserviceaccount.com/token").await;
    assert_eq!(status, 404);
    assert!(body.contains("is not this instance's"), "{body}");
    assert_eq!(f.get("/computeMetadata/v1/instance/attributes/").await.0, 404);
    assert_eq!(f.get("/computeMetadata/v1/project/project-id?alt=yaml").await.0, 400);
    let mut request = Request::post("/computeMetadata/v1/project/project-id")
        .header("Metadata-Flavor", "Google")
        .body(axum::body::Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from((INSTANCE_IP, 41000))));
    assert_eq!(f.router.clone().call(request).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
}
