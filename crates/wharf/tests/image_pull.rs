//! Image resolution against a remote registry: a second wharf server plays the remote, with
//! credentials from a docker `config.json`; indexes resolve to linux/amd64; pulled layers are
//! unpacked into snapshots; a pinned image needs no network afterwards.

use std::path::Path;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wharf_image::Digest;
use wharf_testsupport::{WharfServer, testapp_image};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

fn cli_ok(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(out.status.success(), "wharf {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn pulls_from_a_remote_registry_with_docker_config_credentials() {
    let work = tempfile::tempdir().unwrap();
    let image = testapp_image(work.path(), "v1").unwrap();
    let remote = WharfServer::start(wharf()).unwrap();
    cli_ok(&remote, &["images", "import", &image.layout.to_string_lossy(), "--tag", "team/hello:v1"]);

    // A multi-arch index on the remote: an arm64 image (a different config) and the amd64 one.
    let http = wharf_testsupport::http_client().build().unwrap();
    let arm_config = br#"{"architecture":"arm64","os":"linux","config":{}}"#;
    let arm_config_digest = Digest::of(arm_config);
    let r = http
        .post(remote.registry_url(&format!("/v2/team/hello/blobs/uploads/?digest={arm_config_digest}")))
        .bearer_auth(&remote.token)
        .body(arm_config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let amd_manifest = http
        .get(remote.registry_url("/v2/team/hello/manifests/v1"))
        .bearer_auth(&remote.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut arm_manifest: Value = serde_json::from_slice(&amd_manifest).unwrap();
    arm_manifest["config"] = json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": arm_config_digest, "size": arm_config.len()});
    let arm_bytes = serde_json::to_vec(&arm_manifest).unwrap();
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json";
    let push_manifest = |reference: String, media_type: &'static str, body: Vec<u8>| {
        http.request(Method::PUT, remote.registry_url(&format!("/v2/team/hello/manifests/{reference}")))
            .bearer_auth(&remote.token)
            .header("Content-Type", media_type)
            .body(body)
            .send()
    };
    let r = push_manifest(Digest::of(&arm_bytes).to_string(), oci_manifest, arm_bytes.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": oci_manifest, "digest": Digest::of(&arm_bytes), "size": arm_bytes.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        {"mediaType": oci_manifest, "digest": image.manifest_digest, "size": amd_manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
    ]});
    let r =
        push_manifest("multi".into(), "application/vnd.oci.image.index.v1+json", serde_json::to_vec(&index).unwrap())
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The local server knows the remote's credentials only through a docker config.json.
    let docker_dir = work.path().join("docker");
    std::fs::create_dir(&docker_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("someone:{}", remote.token));
    let config = json!({"auths": {remote.addrs.registry_addr.clone(): {"auth": auth}}});
    std::fs::write(docker_dir.join("config.json"), config.to_string()).unwrap();
    let local = WharfServer::start_with_env(wharf(), &[("DOCKER_CONFIG", docker_dir.to_str().unwrap())]).unwrap();
    let no_creds = WharfServer::start(wharf()).unwrap();

    let remote_ref = format!("{}/team/hello:multi", remote.addrs.registry_addr);
    let out = no_creds.cli(&["images", "pull", &remote_ref]).unwrap();
    assert!(!out.status.success(), "pull without credentials succeeded");
    // Refused for want of credentials (the remote answered 401 UNAUTHORIZED to the manifest
    // request), not for any other reason.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let manifest_url = format!("http://{}/v2/team/hello/manifests/multi", remote.addrs.registry_addr);
    assert!(stderr.contains(&format!("pulling {remote_ref} failed")), "{stderr}");
    assert!(stderr.contains(&format!("Not authorized: url {manifest_url}")), "not refused as unauthorized: {stderr}");

    let pulled = cli_ok(&local, &["images", "pull", &remote_ref]);
    assert!(pulled.contains(image.manifest_digest.as_str()), "index did not resolve to the amd64 image: {pulled}");

    // Every layer was unpacked into a snapshot, and the app binary is in one of them.
    let snapshots = local.data_dir().join("snapshots/sha256");
    for layer in &image.layers {
        assert!(snapshots.join(layer.hex()).is_dir(), "layer {layer} not unpacked");
    }
    assert!(snapshots.join(image.layers[1].hex()).join("app/testapp").is_file());

    let listed: Value = serde_json::from_str(&cli_ok(&local, &["images", "list", "--format", "json"])).unwrap();
    let repo = format!("{}/team/hello", remote.addrs.registry_addr.replace(':', "-"));
    assert!(
        listed.as_array().unwrap().iter().any(|i| i["repository"] == repo.as_str() && i["tag"] == "multi"),
        "{listed}"
    );

    // Pinned by digest and already stored: no network needed once the remote is gone.
    let pinned = format!("{}/team/hello@{}", remote.addrs.registry_addr, image.manifest_digest);
    drop(remote);
    let again = cli_ok(&local, &["images", "pull", &pinned]);
    assert!(again.contains(image.manifest_digest.as_str()), "{again}");
}
