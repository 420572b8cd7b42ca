//! The registry's distribution-spec endpoints over raw HTTP: each success path and the error
//! codes the spec defines, checking that failures store nothing.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wharf_image::Digest;
use wharf_testsupport::WharfServer;

struct Registry {
    server: WharfServer,
    http: reqwest::Client,
}

impl Registry {
    fn start() -> Registry {
        let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
        Registry { server, http: wharf_testsupport::http_client().build().unwrap() }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") { path.to_owned() } else { self.server.registry_url(path) };
        self.http.request(method, url).bearer_auth(&self.server.token)
    }

    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        digest
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &Value) -> reqwest::Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .unwrap()
    }

    fn stored_blob_count(&self) -> usize {
        std::fs::read_dir(self.server.data_dir().join("blobs/sha256")).unwrap().count()
    }

    fn upload_file_count(&self) -> usize {
        std::fs::read_dir(self.server.data_dir().join("uploads")).unwrap().count()
    }
}

async fn error_code(r: reqwest::Response) -> String {
    let body: Value = r.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

fn image_manifest(media_type: &str, config: &Digest, config_size: usize, layers: &[(&Digest, usize)]) -> Value {
    let (config_type, layer_type) = if media_type.contains("docker") {
        ("application/vnd.docker.container.image.v1+json", "application/vnd.docker.image.rootfs.diff.tar.gzip")
    } else {
        ("application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip")
    };
    json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config, "size": config_size},
        "layers": layers.iter().map(|(d, s)| json!({"mediaType": layer_type, "digest": d, "size": s})).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn version_check_requires_credentials() {
    let reg = Registry::start();
    let r = reqwest::get(reg.server.registry_url("/v2/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"wharf\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    let r = reg.req(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    let r =
        reg.http.get(reg.server.registry_url("/v2/")).basic_auth("any", Some(&reg.server.token)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_digest_is_rejected_and_nothing_is_stored() {
    let reg = Registry::start();
    let before = reg.stored_blob_count();
    let wrong = Digest::of(b"something else");
    let r =
        reg.req(Method::POST, &format!("/v2/app/blobs/uploads/?digest={wrong}")).body("payload").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(reg.stored_blob_count(), before);
    assert_eq!(reg.upload_file_count(), 0);
    let r = reg.req(Method::HEAD, &format!("/v2/app/blobs/{}", Digest::of(b"payload"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reg.req(Method::GET, &format!("/v2/app/blobs/{wrong}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = reg.req(Method::POST, "/v2/app/blobs/uploads/?digest=sha256:nothex").body("x").send().await.unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn chunked_upload_with_status_range_reads_and_cancel() {
    let reg = Registry::start();
    let r = reg.req(Method::POST, "/v2/team/app/blobs/uploads/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key("docker-upload-uuid"));

    let r = reg.req(Method::PATCH, &location).header("Content-Range", "0-4").body("hello").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-4");
    let r = reg.req(Method::GET, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-4");

    // Out of order: the next chunk must start at 5.
    let r = reg.req(Method::PATCH, &location).header("Content-Range", "10-14").body("world").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");
    // A chunk whose body disagrees with its Content-Range is cut back out.
    let r = reg.req(Method::PATCH, &location).header("Content-Range", "5-20").body(" world").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = reg.req(Method::GET, &location).send().await.unwrap();
    assert_eq!(r.headers()["range"], "0-4");

    let r = reg.req(Method::PATCH, &location).header("Content-Range", "5-10").body(" world").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let digest = Digest::of(b"hello world!");
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = reg.req(Method::PUT, &format!("{location}{sep}digest={digest}")).body("!").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(reg.upload_file_count(), 0);

    let blob = format!("/v2/team/app/blobs/{digest}");
    let r = reg.req(Method::GET, &blob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "hello world!");
    let r = reg.req(Method::HEAD, &blob).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "12");
    let r = reg.req(Method::GET, &blob).header("Range", "bytes=6-10").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 6-10/12");
    assert_eq!(r.text().await.unwrap(), "world");
    let r = reg.req(Method::GET, &blob).header("Range", "bytes=50-60").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Cancel: the session and its bytes are gone.
    let r = reg.req(Method::POST, "/v2/team/app/blobs/uploads/").send().await.unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    reg.req(Method::PATCH, &location).body("partial").send().await.unwrap();
    let r = reg.req(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = reg.req(Method::GET, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(reg.upload_file_count(), 0);
}

#[tokio::test]
async fn cross_repository_mount() {
    let reg = Registry::start();
    let digest = reg.push_blob("source", b"shared layer").await;
    let r =
        reg.req(Method::POST, &format!("/v2/target/blobs/uploads/?mount={digest}&from=source")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], format!("/v2/target/blobs/{digest}").as_str());
    let r = reg.req(Method::GET, &format!("/v2/target/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "shared layer");
    // Mounting from a repository that lacks the blob falls back to an upload session.
    let r =
        reg.req(Method::POST, &format!("/v2/third/blobs/uploads/?mount={digest}&from=nowhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // A repository never sees a blob it does not hold.
    let r = reg.req(Method::GET, &format!("/v2/third/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manifests_of_every_format_tags_catalog_and_errors() {
    let reg = Registry::start();
    let config = br#"{"architecture":"amd64","os":"linux","config":{}}"#;
    let config_digest = reg.push_blob("app", config).await;
    let layer_digest = reg.push_blob("app", b"layer bytes").await;
    let oci_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = image_manifest(oci_type, &config_digest, config.len(), &[(&layer_digest, 11)]);

    // A manifest naming a blob the repository lacks is refused.
    let missing = Digest::of(b"never pushed");
    let bad = image_manifest(oci_type, &config_digest, config.len(), &[(&missing, 5)]);
    let r = reg.put_manifest("app", "bad", oci_type, &bad).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = reg
        .req(Method::PUT, "/v2/app/manifests/bad")
        .header("Content-Type", oci_type)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = reg.put_manifest("app", Digest::of(b"x").as_str(), oci_type, &manifest).await;
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = reg.put_manifest("Bad/Name", "v1", oci_type, &manifest).await;
    assert_eq!(error_code(r).await, "NAME_INVALID");
    let r = reg.req(Method::GET, "/v2/app/manifests/bad").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    let r = reg.put_manifest("app", "v1", oci_type, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    assert_eq!(digest, Digest::of(&serde_json::to_vec(&manifest).unwrap()).as_str());
    for reference in ["v1", digest.as_str()] {
        let r = reg.req(Method::GET, &format!("/v2/app/manifests/{reference}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], oci_type);
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(r.json::<Value>().await.unwrap(), manifest);
        let r = reg.req(Method::HEAD, &format!("/v2/app/manifests/{reference}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    // Docker schema2 manifest, manifest list and OCI index.
    let docker_type = "application/vnd.docker.distribution.manifest.v2+json";
    let docker = image_manifest(docker_type, &config_digest, config.len(), &[(&layer_digest, 11)]);
    let r = reg.put_manifest("app", "docker", docker_type, &docker).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let docker_digest = r.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    for (list_type, tag) in [
        ("application/vnd.docker.distribution.manifest.list.v2+json", "list"),
        ("application/vnd.oci.image.index.v1+json", "index"),
    ] {
        let list = json!({"schemaVersion": 2, "mediaType": list_type, "manifests": [
            {"mediaType": docker_type, "digest": docker_digest, "size": 300, "platform": {"architecture": "amd64", "os": "linux"}}
        ]});
        let r = reg.put_manifest("app", tag, list_type, &list).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{tag}");
        let r = reg.req(Method::GET, &format!("/v2/app/manifests/{tag}")).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], list_type);
    }
    let dangling = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": oci_type, "digest": Digest::of(b"nope"), "size": 1}
    ]});
    let r = reg.put_manifest("app", "dangling", "application/vnd.oci.image.index.v1+json", &dangling).await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    // Tags and catalog, with pagination.
    let r = reg.req(Method::GET, "/v2/app/tags/list").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"name": "app", "tags": ["docker", "index", "list", "v1"]}));
    let r = reg.req(Method::GET, "/v2/app/tags/list?n=2").send().await.unwrap();
    assert_eq!(r.headers()["link"], "</v2/app/tags/list?n=2&last=index>; rel=\"next\"");
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["docker", "index"]));
    let r = reg.req(Method::GET, "/v2/app/tags/list?n=2&last=index").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["list", "v1"]));
    reg.push_blob("zeta", b"z").await;
    let r = reg.req(Method::GET, "/v2/_catalog").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"repositories": ["app", "zeta"]}));
    let r = reg.req(Method::GET, "/v2/_catalog?n=1").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"repositories": ["app"]}));
    let r = reg.req(Method::GET, "/v2/nothing/tags/list").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    // Delete by digest removes the manifest and its tags.
    let r = reg.req(Method::DELETE, &format!("/v2/app/manifests/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg.req(Method::GET, "/v2/app/manifests/v1").send().await.unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = reg.req(Method::DELETE, "/v2/app/manifests/docker").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg.req(Method::GET, &format!("/v2/app/manifests/{docker_digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "deleting a tag keeps the manifest");
}

#[tokio::test]
async fn unsupported_methods_and_paths() {
    let reg = Registry::start();
    let r = reg.req(Method::POST, "/v2/_catalog").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    let r = reg.req(Method::GET, "/elsewhere").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
