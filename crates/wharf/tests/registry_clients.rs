//! The embedded registry against real clients: skopeo pushes, inspects and copies out a
//! multi-layer image; `wharf images` imports, lists and deletes; contents survive a restart.

use std::path::Path;
use std::process::Command;

use wharf_testsupport::{WharfServer, testapp_image};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn skopeo(args: &[&str]) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "--tmpdir", &std::env::temp_dir().to_string_lossy()]);
    cmd.args(args);
    cmd
}

fn blob_files(layout: &Path) -> Vec<(String, Vec<u8>)> {
    let mut blobs: Vec<(String, Vec<u8>)> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    blobs.sort();
    blobs
}

#[test]
fn skopeo_push_inspect_and_copy_out_preserve_every_blob() {
    let work = tempfile::tempdir().unwrap();
    let image = testapp_image(work.path(), "v1").unwrap();
    assert_eq!(image.layers.len(), 3);
    let mut server = WharfServer::start(wharf()).unwrap();
    let creds = format!("wharf:{}", server.token);
    let dest = format!("docker://{}/apps/testapp:v1", server.addrs.registry_addr);

    run(skopeo(&["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
        .arg(format!("oci:{}:v1", image.layout.display()))
        .arg(&dest));

    let inspect = run(&mut skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &dest]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], image.manifest_digest.to_string());
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3);

    let out = work.path().join("copied-out");
    run(skopeo(&["copy", "--src-tls-verify=false", "--src-creds", &creds, &dest])
        .arg(format!("oci:{}:v1", out.display())));
    let original = blob_files(&image.layout);
    let copied = blob_files(&out);
    assert_eq!(copied.len(), original.len());
    assert_eq!(copied, original, "blobs copied out differ from those pushed");

    // Registry contents survive a restart.
    server.restart().unwrap();
    let dest = format!("docker://{}/apps/testapp:v1", server.addrs.registry_addr);
    let creds = format!("wharf:{}", server.token);
    let again = run(&mut skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &dest]));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["Digest"], image.manifest_digest.to_string());
}

#[test]
fn unauthenticated_push_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let image = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start(wharf()).unwrap();
    for creds in [None, Some("wharf:wharf_wrong")] {
        let mut cmd = skopeo(&["copy", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let output = cmd
            .arg(format!("oci:{}:v1", image.layout.display()))
            .arg(format!("docker://{}/apps/testapp:v1", server.addrs.registry_addr))
            .output()
            .unwrap();
        assert!(!output.status.success(), "push with {creds:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"), "{stderr}");
    }
    let images = server.cli(&["images", "list", "--format", "json"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&images.stdout).trim(), "[]");
}

#[test]
fn cli_imports_lists_and_deletes_images() {
    let work = tempfile::tempdir().unwrap();
    let image = testapp_image(work.path(), "v1").unwrap();
    let mut server = WharfServer::start(wharf()).unwrap();
    let layout = image.layout.to_string_lossy().into_owned();

    let out = server.cli(&["images", "import", &layout, "--tag", "hello:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(image.manifest_digest.as_str()));

    // A docker-archive tarball of the same image imports to the same layers.
    let archive = work.path().join("testapp.tar");
    run(skopeo(&["copy"])
        .arg(format!("oci:{layout}:v1"))
        .arg(format!("docker-archive:{}:hello:v2", archive.display())));
    let out = server.cli(&["images", "import", &archive.to_string_lossy(), "--tag", "hello:v2"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    server.restart().unwrap();
    let out = server.cli(&["images", "list", "--format", "json"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tags: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["v1", "v2"]);
    assert_eq!(listed[0]["digest"], image.manifest_digest.to_string());

    let table = server.cli(&["images", "list"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("REPOSITORY") && table.contains("hello"), "{table}");

    let out = server.cli(&["images", "delete", "hello:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&["images", "delete", "hello:v1"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not known"), "{}", String::from_utf8_lossy(&out.stderr));
    // Deleting a tag leaves the manifest, untagged; deleting by digest removes it.
    let list = || -> Vec<Option<String>> {
        let out = server.cli(&["images", "list", "--format", "json"]).unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        listed.as_array().unwrap().iter().map(|i| i["tag"].as_str().map(str::to_owned)).collect()
    };
    assert_eq!(list(), [None, Some("v2".to_owned())]);
    let by_digest = format!("hello@{}", image.manifest_digest);
    let out = server.cli(&["images", "delete", &by_digest]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(list(), [Some("v2".to_owned())]);

    let out = server.cli(&["images", "import", &layout, "--tag", "Bad Name:v1"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("repository name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
