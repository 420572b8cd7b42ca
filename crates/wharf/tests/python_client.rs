//! Google's Python client library for Cloud Run (`google-cloud-run`, REST transport) works
//! against Wharf unchanged (services, revisions, jobs, executions, tasks, operations):
//! `scripts/test` installs it from PyPI.

use std::path::Path;
use std::process::Command;

use wharf_testsupport::{WharfServer, testapp_image};

/// Runs `tests/python/{script}` against a fresh server with the testapp image; returns stdout.
fn run_python(script: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new("python3")
        .arg(&script)
        .env("WHARF_API", format!("http://{}", server.addrs.api_addr))
        .env("WHARF_TOKEN", &server.token)
        .env("WHARF_IMAGE", format!("{}/testapp:v1", server.addrs.registry_addr))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed:\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    stdout.into_owned()
}

#[test]
fn google_cloud_run_python_client_manages_a_service() {
    let stdout = run_python("cloud_run_client.py");
    assert!(stdout.contains("deleted"), "{stdout}");
}

#[test]
fn google_cloud_run_python_clients_run_a_job_and_read_executions_and_tasks() {
    let stdout = run_python("cloud_run_jobs_client.py");
    for step in ["dry run stored nothing", "executed", "tasks 3", "operations", "deleted"] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}

/// Google's Secret Manager client (`google-cloud-secret-manager`, REST transport) against
/// Wharf: create, add versions, access 1 and `latest`, states, IAM, delete. The payload never
/// lands in the data directory or the server log in clear.
#[test]
fn google_secret_manager_python_client_round_trip() {
    let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
    let value = format!("py-secret-{}", std::process::id());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/secret_manager_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("WHARF_API", format!("http://{}", server.addrs.api_addr))
        .env("WHARF_TOKEN", &server.token)
        .env("WHARF_SECRET_VALUE", &value)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    for step in ["created", "accessed 1 and latest", "disabled, enabled, destroyed", "iam policy set", "deleted"] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert!(!server.log().contains(&value));
}
