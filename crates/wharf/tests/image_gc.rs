//! The registry under abuse and its garbage collection, end to end against a real server:
//! blob size limits answer 413 and store nothing, abandoned uploads expire, and garbage
//! collection (automatic after a delete, and `wharf images gc`) frees the blobs and
//! snapshots of deleted images while keeping a push in flight and the image of a deployed
//! service (pushed with skopeo, running in a real container).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wharf_image::Digest;
use wharf_image::manifest::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST};
use wharf_testsupport::{WharfServer, testapp_image, wait_until};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

fn cli_ok(server: &WharfServer, args: &[&str]) -> String {
    let out = server.cli(args).unwrap();
    assert!(out.status.success(), "wharf {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skopeo_push(server: &WharfServer, layout: &Path, tag: &str, dest: &str) {
    let creds = format!("wharf:{}", server.token);
    let output = Command::new("skopeo")
        .args(["--insecure-policy", "--tmpdir", &std::env::temp_dir().to_string_lossy()])
        .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{dest}", server.addrs.registry_addr))
        .output()
        .unwrap();
    assert!(output.status.success(), "skopeo push failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The digests of the manifest `repo:tag` names, its config and its one layer, as stored
/// (skopeo compresses a layer it pushes, so they are not those of the layout).
async fn pushed_digests(server: &WharfServer, repo: &str, tag: &str) -> [Digest; 3] {
    let r = wharf_testsupport::http_client()
        .build()
        .unwrap()
        .get(server.registry_url(&format!("/v2/{repo}/manifests/{tag}")))
        .bearer_auth(&server.token)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.bytes().await.unwrap();
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let digest = |v: &Value| v.as_str().unwrap().parse::<Digest>().unwrap();
    [Digest::of(&bytes), digest(&manifest["config"]["digest"]), digest(&manifest["layers"][0]["digest"])]
}

/// A one-layer image (a single file holding `content`) as an OCI layout.
fn tiny_image(dir: &Path, content: &str) -> PathBuf {
    let layout = dir.join(format!("tiny-{}", Digest::of(content.as_bytes()).hex()));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "content.txt", content.as_bytes()).unwrap();
    let layer = tar.into_inner().unwrap();
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "config": {}})).unwrap();
    let write = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        digest
    };
    let (layer_digest, config_digest) = (write(&layer), write(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest);
    std::fs::write(blobs.join(manifest_digest.hex()), &manifest).unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layout
}

fn blob_path(server: &WharfServer, digest: &Digest) -> PathBuf {
    server.data_dir().join("blobs/sha256").join(digest.hex())
}

fn snapshot_path(server: &WharfServer, digest: &Digest) -> PathBuf {
    server.data_dir().join("snapshots/sha256").join(digest.hex())
}

/// Moves the mtime of every stored blob and snapshot two hours back, as if they had been
/// pushed and unpacked then (the server's grace period is one hour).
fn age_everything(server: &WharfServer) {
    let then = SystemTime::now() - Duration::from_secs(7200);
    for dir in ["blobs/sha256", "snapshots/sha256"] {
        for entry in std::fs::read_dir(server.data_dir().join(dir)).unwrap() {
            std::fs::File::open(entry.unwrap().path()).unwrap().set_modified(then).unwrap();
        }
    }
}

#[tokio::test]
async fn oversized_blobs_get_413_and_abandoned_uploads_expire() {
    let server =
        WharfServer::start_with_env(wharf(), &[("WHARF_MAX_BLOB_SIZE", "1MiB"), ("WHARF_UPLOAD_EXPIRY", "2s")])
            .unwrap();
    // A refused upload's unread body ends its connection: no pooled connections.
    let http = wharf_testsupport::http_client().pool_max_idle_per_host(0).build().unwrap();
    let req = |method: Method, path: &str| {
        let url = if path.starts_with("http") { path.to_owned() } else { server.registry_url(path) };
        http.request(method, url).bearer_auth(&server.token)
    };
    let stored = || std::fs::read_dir(server.data_dir().join("blobs/sha256")).unwrap().count();

    // Monolithic: refused from its Content-Length, nothing stored, no session left.
    let big = vec![1u8; (1 << 20) + 1];
    let r = req(Method::POST, &format!("/v2/r/blobs/uploads/?digest={}", Digest::of(&big)))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("blob size limit of 1048576 bytes") && message.contains("--max-blob-size"), "{message}");
    assert_eq!(stored(), 0);
    assert_eq!(std::fs::read_dir(server.data_dir().join("uploads")).unwrap().count(), 0);

    // Chunked, with a streamed body that announces no length: cut off at the limit.
    let r = req(Method::POST, "/v2/r/blobs/uploads/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let location = server.registry_url(&location);
    let half = vec![2u8; 600 << 10];
    let r = req(Method::PATCH, &location).body(half.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The client goes on sending 12 MiB past the limit without waiting, more than the sockets
    // buffer: it still reads the 413 rather than a broken pipe.
    let overshoot = std::iter::repeat_n(vec![3u8; 1 << 20], 12);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = std::iter::once(half.clone()).chain(overshoot).map(Ok).collect();
    let r = req(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The session is as it was before the refused chunk.
    let r = req(Method::GET, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"].to_str().unwrap(), format!("0-{}", half.len() - 1));

    // Abandoned, the session expires: its id is unknown and its file gone.
    let upload_files = || std::fs::read_dir(server.data_dir().join("uploads")).unwrap().count();
    assert_eq!(upload_files(), 1);
    let status = || async { req(Method::GET, &location).send().await.unwrap().status() };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status().await != StatusCode::NOT_FOUND {
        assert!(std::time::Instant::now() < deadline, "the abandoned upload did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upload_files(), 0);
    assert_eq!(stored(), 0);
}

#[tokio::test]
async fn gc_frees_deleted_images_and_keeps_pushes_in_flight_and_deployed_images() {
    let work = tempfile::tempdir().unwrap();
    let mut server = WharfServer::start(wharf()).unwrap();
    let registry = server.addrs.registry_addr.clone();

    // An image that will be deleted, pulled once so its layer has a snapshot.
    let old_layout = tiny_image(work.path(), "old image");
    skopeo_push(&server, &old_layout, "v1", "apps/old:v1");
    let old = pushed_digests(&server, "apps/old", "v1").await;
    cli_ok(&server, &["images", "pull", &format!("{registry}/apps/old:v1")]);
    assert!(snapshot_path(&server, &old[2]).is_dir());

    // The testapp image, deployed as a service, then untagged: only the service keeps it.
    let app = testapp_image(work.path(), "v1").unwrap();
    skopeo_push(&server, &app.layout, "v1", "apps/svc:v1");
    let image = format!("{registry}/apps/svc:v1");
    cli_ok(&server, &["run", "deploy", "svc", "--image", &image, "--project", "demo", "--min-instances", "1"]);
    for layer in &app.layers {
        assert!(snapshot_path(&server, layer).is_dir());
    }
    age_everything(&server);

    // A push in flight: one blob finished but named by no manifest yet, one session open.
    let http = wharf_testsupport::http_client().build().unwrap();
    let in_flight = b"a layer of a push in progress".to_vec();
    let in_flight_digest = Digest::of(&in_flight);
    let r = http
        .post(server.registry_url(&format!("/v2/apps/next/blobs/uploads/?digest={in_flight_digest}")))
        .bearer_auth(&server.token)
        .body(in_flight.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r =
        http.post(server.registry_url("/v2/apps/next/blobs/uploads/")).bearer_auth(&server.token).send().await.unwrap();
    let session = server.registry_url(r.headers()["location"].to_str().unwrap());
    let r = http.patch(&session).bearer_auth(&server.token).body(vec![3u8; 1000]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Deleting the old image collects its blobs and snapshot on its own.
    cli_ok(&server, &["images", "delete", &format!("apps/old@{}", old[0])]);
    // Blobs go first, then the snapshot, in the same collection: wait for both.
    wait_until("garbage collection after the delete", Duration::from_secs(30), || {
        (old.iter().all(|d| !blob_path(&server, d).exists()) && !snapshot_path(&server, &old[2]).exists()).then_some(())
    })
    .unwrap();

    // Untag the deployed image and collect by hand: the service's image stays.
    cli_ok(&server, &["images", "delete", &format!("apps/svc@{}", app.manifest_digest)]);
    let report: Value = serde_json::from_str(&cli_ok(&server, &["images", "gc", "--format", "json"])).unwrap();
    assert_eq!(report["snapshotsRemoved"], 0, "{report}");
    assert!(blob_path(&server, &app.manifest_digest).exists());
    for layer in &app.layers {
        assert!(blob_path(&server, layer).exists(), "layer {layer} of the deployed image was collected");
        assert!(snapshot_path(&server, layer).is_dir(), "snapshot {layer} of the deployed image was collected");
    }
    assert!(blob_path(&server, &in_flight_digest).exists(), "the in-flight push's blob was collected");
    let r = http.get(&session).bearer_auth(&server.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"].to_str().unwrap(), "0-999");
    // The push completes: its manifest may name the blob uploaded before the collection.
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": in_flight_digest, "size": in_flight.len()}, "layers": []});
    let r = http
        .put(server.registry_url("/v2/apps/next/manifests/v1"))
        .bearer_auth(&server.token)
        .header("Content-Type", OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());

    // The instance still runs its (unpinned-by-tag) image; deleting the service frees it.
    cli_ok(&server, &["run", "services", "delete", "svc", "--project", "demo", "--quiet"]);
    wait_until("the service's instances to stop", Duration::from_secs(30), || {
        let n = std::fs::read_dir(server.data_dir().join("instances")).map(|d| d.count()).unwrap_or(0);
        (n == 0).then_some(())
    })
    .unwrap();
    let report: Value = serde_json::from_str(&cli_ok(&server, &["images", "gc", "--format", "json"])).unwrap();
    assert_eq!(report["snapshotsRemoved"], app.layers.len(), "{report}");
    for layer in &app.layers {
        assert!(!blob_path(&server, layer).exists());
        assert!(!snapshot_path(&server, layer).exists());
    }
    let text = cli_ok(&server, &["images", "gc"]);
    assert!(text.starts_with("Removed 0 blobs"), "{text}");
    assert!(server.stop_and_check().unwrap().is_empty());
}

/// The attack measured in issue 13, end to end: an image whose layer is a GNU sparse file of
/// 8 GiB apparent size. Resolving it (as a deploy does) is refused with an error naming the
/// limit, and nothing is left in the snapshot store.
#[tokio::test]
async fn a_sparse_bomb_image_is_refused_naming_the_limit() {
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_MAX_IMAGE_SIZE", "64MiB")]).unwrap();
    let http = wharf_testsupport::http_client().build().unwrap();
    let push = |bytes: Vec<u8>| {
        let digest = Digest::of(&bytes);
        let request = http
            .post(server.registry_url(&format!("/v2/bomb/blobs/uploads/?digest={digest}")))
            .bearer_auth(&server.token)
            .body(bytes);
        async move {
            assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED);
            digest
        }
    };
    let apparent: u64 = 8 << 30;
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb").unwrap();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_size(512);
    {
        let gnu = header.as_gnu_mut().unwrap();
        let offset = format!("{:011o}", apparent - 512);
        gnu.sparse[0].offset[..11].copy_from_slice(offset.as_bytes());
        gnu.sparse[0].numbytes[..11].copy_from_slice(b"00000001000");
        gnu.realsize = [0; 12];
        gnu.realsize[0] = 0x80;
        gnu.realsize[4..].copy_from_slice(&apparent.to_be_bytes());
    }
    header.set_cksum();
    let mut layer = header.as_bytes().to_vec();
    layer.extend(std::iter::repeat_n(0u8, 512 + 1024));
    let layer_size = layer.len();
    let layer = push(layer).await;
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "config": {}})).unwrap();
    let config_size = config.len();
    let config = push(config).await;
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer, "size": layer_size}]});
    let r = http
        .put(server.registry_url("/v2/bomb/manifests/v1"))
        .bearer_auth(&server.token)
        .header("Content-Type", OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let out = server.cli(&["images", "pull", &format!("{}/bomb:v1", server.addrs.registry_addr)]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("goes past the unpacked size limit of 67108864 bytes per image")
            && stderr.contains("--max-image-size"),
        "{stderr}"
    );
    for dir in ["snapshots/sha256", "snapshots/tmp"] {
        assert_eq!(std::fs::read_dir(server.data_dir().join(dir)).unwrap().count(), 0, "{dir}");
    }
}
