//! Google's Python client library for Cloud Run (`google-cloud-run`, REST transport) works
//! against Wharf unchanged (services, revisions, jobs, executions, tasks, operations):
//! `scripts/test` installs it from PyPI.

use std::path::Path;
use std::process::Command;

use wharf_testsupport::{WharfServer, testapp_image};

/// Runs `tests/python/{script}` against a fresh server with the testapp image; returns stdout.
fn run_python(script: &str) -> String {
    run_python_with(script, |_, _| Vec::new())
}

/// Like [`run_python`]; `setup` prepares the server (with the CLI) and returns extra env.
fn run_python_with(script: &str, setup: impl FnOnce(&WharfServer, &Path) -> Vec<(String, String)>) -> String {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start(Path::new(env!("CARGO_BIN_EXE_wharf"))).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = setup(&server, work.path());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new("python3")
        .arg(&script)
        .env("WHARF_API", format!("http://{}", server.addrs.api_addr))
        .env("WHARF_TOKEN", &server.token)
        .env("WHARF_IMAGE", format!("{}/testapp:v1", server.addrs.registry_addr))
        .envs(env)
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

/// Issue 14's role boundaries through google-auth and google-cloud-run: a key file from
/// `wharf iam service-accounts keys create`, 403 before a binding and 200 after
/// `roles/run.viewer`, `roles/run.invoker` cannot list, a developer cannot set a policy, a
/// stale etag is refused, a disabled account's credentials are refused.
#[test]
fn google_auth_key_file_credentials_meet_each_role_boundary() {
    let stdout = run_python_with("service_account_roles.py", |server, work| {
        let cli = |args: &[&str]| {
            let out = server.cli(args).unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        cli(&["iam", "service-accounts", "create", "py-caller", "--project", "pyiam"]);
        let email = "py-caller@pyiam.iam.gserviceaccount.com";
        let key = work.join("key.json");
        cli(&[
            "iam",
            "service-accounts",
            "keys",
            "create",
            &key.to_string_lossy(),
            "--iam-account",
            email,
            "--project",
            "pyiam",
        ]);
        vec![("WHARF_KEY_FILE".into(), key.to_string_lossy().into_owned()), ("WHARF_SA".into(), email.into())]
    });
    for step in [
        "token endpoint ok",
        "403 before binding",
        "invoker cannot list",
        "200 after run.viewer",
        "developer cannot setIamPolicy",
        "stale etag refused",
        "disabled account refused",
        "deleted",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}
