//! Source builds end to end, with a real `wharf server`, real buildah and real containers:
//! `wharf run deploy --source` with a Dockerfile whose base image is only in Wharf's registry
//! (by short name), the service answering with content from the source, ignore rules
//! honoured, a second build of the same service taken from the layer cache (read from
//! buildah's own log lines), `wharf builds list|describe|log`; a failing build failing the
//! deploy with its last lines and creating no revision; a source with no Dockerfile detected
//! as Python and built on the server's default base image (from Wharf's registry);
//! `wharf builds submit --config cloudbuild.yaml`; a source nothing is detected in; with
//! `--build-network egress`, RUN steps reaching a test-made address but not the host, and the
//! seed lab's Flask color API built without and with a Dockerfile, `pip install` reading a
//! package index the test serves behind a veth, and a Node.js app without a Dockerfile,
//! `npm install` reading an npm registry the test serves there, on a Node.js base image made
//! from the host's node (only in Wharf's registry).
//!
//! Needs `buildah` (scripts/test installs it). Build durations are printed, not asserted.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wharf_testsupport::dns::UpstreamResolver;
use wharf_testsupport::{WharfServer, service_host, testapp_image};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

struct Env {
    server: WharfServer,
    work: tempfile::TempDir,
}

/// A server with the testapp image in its registry under each of `tags`.
fn setup(tags: &[&str]) -> Env {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start(wharf()).unwrap();
    for tag in tags {
        let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", tag]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    Env { server, work }
}

impl Env {
    fn wharf(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.server.cli(args).unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let (ok, stdout, stderr) = self.wharf(args);
        assert!(ok, "wharf {args:?} failed:\n{stderr}\n--- server log ---\n{}", self.server.log());
        (stdout, stderr)
    }

    /// A source directory `name` with `files`.
    fn source(&self, name: &str, files: &[(&str, &str)]) -> String {
        let dir = self.work.path().join(name);
        for (file, text) in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir.to_string_lossy().into_owned()
    }

    fn builds(&self) -> Vec<Value> {
        let (out, _) = self.ok(&["builds", "list", "--format", "json"]);
        serde_json::from_str::<Value>(&out).unwrap().as_array().cloned().unwrap_or_default()
    }

    async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let client = wharf_testsupport::http_client().timeout(Duration::from_secs(60)).build().unwrap();
        let r = client
            .get(format!("http://{}{path}", self.server.addrs.ingress_addr))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test]
async fn deploy_from_source_serves_the_source_and_rebuilds_from_the_cache() {
    let env = setup(&["testapp:v1"]);
    let dir = env.source(
        "color-api",
        &[
            // `testapp` is a short name: it resolves in Wharf's registry, not on the internet.
            ("Dockerfile", "FROM testapp:v1\nCOPY . /srv/\nENV COLOR=blue\n"),
            ("index.html", "blue from the source directory\n"),
            ("secret.txt", "must not be uploaded\n"),
            (".gcloudignore", "secret.txt\n.gcloudignore\n"),
        ],
    );
    let cold = std::time::Instant::now();
    let (stdout, stderr) = env.ok(&["run", "deploy", "color-api", "--source", &dir, "--allow-unauthenticated"]);
    let cold = cold.elapsed();
    assert!(stderr.contains("Logs are available at [http://"), "{stderr}");
    assert!(stderr.contains("STEP 2/3: COPY . /srv/"), "the build's progress is printed: {stderr}");
    assert!(stdout.contains("Service URL: http://"), "{stdout}");

    let host = service_host("color-api", "default");
    assert_eq!(env.get(&host, "/file?path=/srv/index.html").await, (200, "blue from the source directory\n".into()));
    let (status, _) = env.get(&host, "/file?path=/srv/secret.txt").await;
    assert_ne!(status, 200, "a file .gcloudignore leaves out reached the image");
    let (_, body) = env.get(&host, "/env").await;
    assert!(body.contains("COLOR=blue") || body.contains("\"COLOR\":\"blue\""), "{body}");

    let builds = env.builds();
    assert_eq!(builds.len(), 1);
    let first = &builds[0];
    assert_eq!(first["status"], "SUCCESS");
    assert_eq!(first["imageUri"], "default/cloud-run-source-deploy/color-api");
    let digest = first["imageDigest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{first}");
    let (service, _) = env.ok(&["run", "services", "describe", "color-api", "--format", "json"]);
    assert!(
        service.contains(&format!("cloud-run-source-deploy/color-api@{digest}")),
        "the revision pins the build's digest: {service}"
    );

    // The same source again: buildah takes the steps from its layer cache.
    let cached = std::time::Instant::now();
    let (_, stderr) = env.ok(&["run", "deploy", "color-api", "--source", &dir]);
    let cached = cached.elapsed();
    assert!(stderr.contains("steps from the layer cache"), "{stderr}");
    let builds = env.builds();
    assert_eq!(builds.len(), 2);
    let second = &builds[0];
    assert_eq!(second["status"], "SUCCESS");
    let id = second["id"].as_str().unwrap();
    let (log, _) = env.ok(&["builds", "log", id]);
    assert!(log.contains("--> Using cache"), "buildah's log shows no cached step:\n{log}");
    let token = std::fs::read_to_string(env.server.data_dir().join("owner.token")).unwrap();
    assert!(!log.contains(token.trim()), "the registry credential is in the build log");
    assert!(second["cachedSteps"].as_u64().unwrap() >= 2, "{second}");
    let (describe, _) = env.ok(&["builds", "describe", id, "--format", "json"]);
    let describe: Value = serde_json::from_str(&describe).unwrap();
    assert_eq!(describe["logUrl"], format!("/v2/projects/default/locations/us-central1/builds/{id}/log"));
    // Figures for docs/benchmarks.md (printed, never asserted).
    eprintln!(
        "run deploy --source: cold {:.2}s (build {}), cached {:.2}s (build {})",
        cold.as_secs_f64(),
        builds[1]["duration"],
        cached.as_secs_f64(),
        second["duration"]
    );
    assert!(env.server.data_dir().join("build/builds").join(format!("{id}.log")).is_file());
}

#[tokio::test]
async fn a_failing_build_fails_the_deploy_and_creates_no_revision() {
    let env = setup(&["testapp:v1"]);
    let dir = env.source("broken", &[("Dockerfile", "FROM testapp:v1\nCOPY missing-file.txt /srv/\n")]);
    let (ok, _, stderr) = env.wharf(&["run", "deploy", "broken", "--source", &dir]);
    assert!(!ok, "the deploy of a failing build succeeded:\n{stderr}");
    assert!(stderr.contains("Build ["), "{stderr}");
    assert!(stderr.contains("missing-file.txt"), "the build's last lines name what failed: {stderr}");
    let (ok, _, stderr) = env.wharf(&["run", "services", "describe", "broken"]);
    assert!(!ok, "a service exists after a failed build");
    assert!(stderr.contains("Cannot find service [broken]"), "{stderr}");
    let builds = env.builds();
    assert_eq!(builds[0]["status"], "FAILURE");

    // Nothing to build: the error names what was looked for.
    let dir = env.source("docs-only", &[("README.md", "hello")]);
    let (ok, _, stderr) = env.wharf(&["builds", "submit", &dir, "--tag", "docs:v1"]);
    assert!(!ok);
    assert!(stderr.contains("no language Wharf can build was detected"), "{stderr}");
    assert!(stderr.contains("requirements.txt") && stderr.contains("go.mod"), "{stderr}");

    // A registry other than Wharf's own is refused before anything is built.
    let (ok, _, stderr) = env.wharf(&["builds", "submit", &dir, "--tag", "gcr.io/p/app:v1"]);
    assert!(!ok);
    assert!(stderr.contains("Wharf builds push only to its own registry"), "{stderr}");
}

#[tokio::test]
async fn a_python_source_without_dockerfile_builds_on_the_default_base_image_from_wharfs_registry() {
    // The server's default Python base image, `python:3.12-slim`, is only in Wharf's
    // registry (the testapp image under that name: the build has no step that runs Python).
    let env = setup(&["python:3.12-slim", "testapp:v1"]);
    let dir = env.source("flask-app", &[("main.py", "print('hello')\n")]);
    let (stdout, stderr) = env.ok(&["builds", "submit", &dir, "--tag", "team/flask-app:v1"]);
    assert!(stderr.contains("no Dockerfile; detected Python"), "{stderr}");
    assert!(stderr.contains("exec python main.py"), "{stderr}");
    let registry = env.server.addrs.registry_addr.to_string();
    assert!(stdout.trim().starts_with(&format!("{registry}/team/flask-app@sha256:")), "{stdout}");
    let build = &env.builds()[0];
    assert_eq!(build["detectedLanguage"], "Python");
    let (table, _) = env.ok(&["builds", "list"]);
    assert!(table.contains(build["id"].as_str().unwrap()) && table.contains("SUCCESS"), "{table}");

    // The image is in the registry under its tag.
    let (images, _) = env.ok(&["images", "list", "--format", "json"]);
    assert!(images.contains("team/flask-app"), "{images}");

    // A Dockerfile's `FROM python:...` is Wharf's image too, though Debian's short-name
    // aliases send `python` to docker.io (which this machine cannot reach).
    let dir = env.source("aliased", &[("Dockerfile", "FROM python:3.12-slim\nCOPY . /srv/\n"), ("a.txt", "a")]);
    let (_, stderr) = env.ok(&["builds", "submit", &dir, "--tag", "team/aliased:v1"]);
    assert!(stderr.contains(&format!("FROM python:3.12-slim is read as FROM {registry}/python:3.12-slim")), "{stderr}");

    // cloudbuild.yaml's docker step.
    let dir = env.source(
        "with-config",
        &[
            ("docker/Dockerfile", "FROM testapp:v1\nCOPY hello.txt /srv/\n"),
            ("hello.txt", "hi\n"),
            (
                "cloudbuild.yaml",
                "steps:\n- name: gcr.io/cloud-builders/docker\n  args: ['build', '-t', 'team/$PROJECT_ID-app:v2', '-f', 'docker/Dockerfile', '.']\nimages: ['team/$PROJECT_ID-app:v2']\n",
            ),
        ],
    );
    let config = format!("{dir}/cloudbuild.yaml");
    let (stdout, _) = env.ok(&["builds", "submit", &dir, "--config", &config]);
    assert!(stdout.trim().starts_with(&format!("{registry}/team/default-app@sha256:")), "{stdout}");
    let bad = env.source("bad-config", &[("cloudbuild.yaml", "steps: []\noptions: {logging: NONE}\n")]);
    let (ok, _, stderr) = env.wharf(&["builds", "submit", &bad, "--config", &format!("{bad}/cloudbuild.yaml")]);
    assert!(!ok);
    assert!(stderr.contains("field `options` is not supported"), "{stderr}");
}

/// The build's cgroup directory (memory controller on v1) and its memory limit file.
fn build_cgroup(id: &str) -> (std::path::PathBuf, &'static str) {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        (root.join("wharf").join(format!("build-{id}")), "memory.max")
    } else {
        (root.join("memory/wharf").join(format!("build-{id}")), "memory.limit_in_bytes")
    }
}

#[tokio::test]
async fn a_build_runs_in_its_own_bounded_cgroup_and_stops_at_its_timeout() {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start_with_env(
        wharf(),
        &[("WHARF_BUILD_TIMEOUT", "15s"), ("WHARF_BUILD_MEMORY_LIMIT", "256Mi"), ("WHARF_BUILD_CPU_LIMIT", "500m")],
    )
    .unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = Env { server, work };
    // A RUN step that never ends: the testapp told not to listen waits forever.
    let dir =
        env.source("hangs", &[("Dockerfile", "FROM testapp:v1\nENV TESTAPP_NO_LISTEN=1\nRUN [\"/app/testapp\"]\n")]);
    let (_, stderr) = env.ok(&["builds", "submit", &dir, "--tag", "hangs:v1", "--async"]);
    assert!(stderr.contains("submitted"), "{stderr}");
    let id = env.builds()[0]["id"].as_str().unwrap().to_owned();

    // While the step runs, its processes are in the build's cgroup (runc's `steps` child),
    // under the limits.
    let (cgroup, memory_file) = build_cgroup(&id);
    let in_cgroup =
        |pid: &str| std::fs::read_link(format!("/proc/{}/exe", pid.trim())).is_ok_and(|exe| exe.ends_with("testapp"));
    wharf_testsupport::wait_until("the RUN step's process in the build's cgroup", Duration::from_secs(60), || {
        let procs = std::fs::read_to_string(cgroup.join("steps/cgroup.procs")).ok()?;
        procs.lines().any(in_cgroup).then_some(())
    })
    .unwrap();
    let memory = std::fs::read_to_string(cgroup.join(memory_file)).unwrap();
    assert_eq!(memory.trim(), (256u64 << 20).to_string());

    // The deadline ends it: status TIMEOUT, processes and cgroup gone.
    let build = wharf_testsupport::wait_until("the build to end", Duration::from_secs(120), || {
        let build = env.builds().into_iter().find(|b| b["id"] == id.as_str())?;
        (build["status"] != "WORKING" && build["status"] != "QUEUED").then_some(build)
    })
    .unwrap();
    assert_eq!(build["status"], "TIMEOUT", "{build}");
    assert!(build["failureDetail"].as_str().unwrap().contains("longer than its timeout (15s)"), "{build}");
    assert!(!cgroup.exists(), "the build's cgroup {} is left", cgroup.display());
}

/// "Another host": a network namespace holding an address of 203.0.113.0/24 (TEST-NET-3)
/// behind a veth, with a host route to it, so a process in the host's network namespace (or
/// routed through it) reaches it and one in a network namespace of its own cannot. No traffic
/// leaves the machine. Removed on drop.
struct OtherHost {
    netns: String,
    host_link: String,
    ip: std::net::Ipv4Addr,
}

impl OtherHost {
    /// `tag` keeps the names of tests running at once apart (one letter).
    fn create(tag: &str, ip: std::net::Ipv4Addr) -> OtherHost {
        let n = std::process::id() % 100_000;
        let host = OtherHost { netns: format!("wharf-test-bld{tag}-{n}"), host_link: format!("tbld{tag}{n}h"), ip };
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["netns", "add", &host.netns]);
        run(&["link", "add", &host.host_link, "type", "veth", "peer", "name", "eth0", "netns", &host.netns]);
        run(&["link", "set", &host.host_link, "up"]);
        run(&["-n", &host.netns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        run(&["-n", &host.netns, "link", "set", "eth0", "up"]);
        run(&["-n", &host.netns, "link", "set", "lo", "up"]);
        run(&["-n", &host.netns, "route", "add", "default", "dev", "eth0"]);
        run(&["route", "add", &format!("{ip}/32"), "dev", &host.host_link]);
        host
    }

    /// A listener inside the namespace (bound from a thread that entered it).
    fn listen(&self) -> std::net::TcpListener {
        let path = Path::new("/run/netns").join(&self.netns);
        let ip = self.ip;
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind((ip, 0)).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["route", "del", &format!("{}/32", self.ip)]).output();
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.netns]).output();
        let _ = std::process::Command::new("ip").args(["link", "delete", &self.host_link]).output();
    }
}

/// Whether a connection waits on `listener` (a connect that succeeded has put it there).
fn has_pending_connection(listener: &std::net::TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[tokio::test]
async fn run_steps_are_isolated_held_to_a_disk_quota_and_cancellable() {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_BUILD_DISK_QUOTA", "64MiB")]).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = Env { server, work };

    // Listeners a RUN step sharing the host's network would reach: one on the host's
    // loopback, one on an address behind a veth, and Wharf's own API (loopback).
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = OtherHost::create("i", std::net::Ipv4Addr::new(203, 0, 113, 77));
    let elsewhere = other.listen();
    let targets = [
        loopback.local_addr().unwrap().to_string(),
        elsewhere.local_addr().unwrap().to_string(),
        env.server.addrs.api_addr.clone(),
    ];
    let probe = format!(
        "FROM testapp:v1\nRUN [\"/app/testapp\", \"build-probe\", {}]\n",
        targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
    );
    let dir = env.source("probe", &[("Dockerfile", probe.as_str())]);
    let (_, log) = env.ok(&["builds", "submit", &dir, "--tag", "probe:v1"]);
    for target in &targets {
        assert!(log.contains(&format!("connect {target}: failed")), "a RUN step reached {target}:\n{log}");
    }
    assert!(!has_pending_connection(&loopback) && !has_pending_connection(&elsewhere));
    // Its own PID namespace: the step sees itself only, none of the host's processes.
    assert!(log.contains("processes: 1 [testapp]"), "a RUN step saw other processes:\n{log}");
    assert!(log.contains("RUN steps run in containers with no network"), "{log}");

    // A step writing past the disk quota (64 MiB) fails the build and says so.
    let dir =
        env.source("fill", &[("Dockerfile", "FROM testapp:v1\nRUN [\"/app/testapp\", \"fill\", \"/big\", \"256\"]\n")]);
    let (ok, _, stderr) = env.wharf(&["builds", "submit", &dir, "--tag", "fill:v1"]);
    assert!(!ok, "a build over its quota succeeded");
    let build = env.builds()[0].clone();
    assert_eq!(build["status"], "FAILURE", "{build}");
    let detail = build["failureDetail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("more than its disk quota (64 MiB, the server's --build-disk-quota)"),
        "{detail}\n{stderr}"
    );

    // Cancel: a step that never ends is killed, its cgroup goes, the build is CANCELLED.
    let dir =
        env.source("hangs", &[("Dockerfile", "FROM testapp:v1\nENV TESTAPP_NO_LISTEN=1\nRUN [\"/app/testapp\"]\n")]);
    env.ok(&["builds", "submit", &dir, "--tag", "hangs:v1", "--async"]);
    let id = env.builds()[0]["id"].as_str().unwrap().to_owned();
    let (cgroup, _) = build_cgroup(&id);
    let is_testapp =
        |pid: &str| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("testapp"));
    let pid = wharf_testsupport::wait_until("the RUN step running", Duration::from_secs(60), || {
        let procs = std::fs::read_to_string(cgroup.join("steps/cgroup.procs")).ok()?;
        procs.lines().map(str::trim).find(|p| is_testapp(p)).map(str::to_owned)
    })
    .unwrap();
    let (_, stderr) = env.ok(&["builds", "cancel", &id]);
    assert!(stderr.contains("Cancelled ["), "{stderr}");
    let build = env.builds().into_iter().find(|b| b["id"] == id.as_str()).unwrap();
    assert_eq!(build["status"], "CANCELLED", "{build}");
    assert!(build["failureDetail"].as_str().unwrap_or_default().starts_with("cancelled by owner"), "{build}");
    assert!(!is_testapp(&pid), "the cancelled step still runs");
    assert!(!cgroup.exists(), "the build's cgroup {} is left", cgroup.display());
    let runc_state: Vec<_> = std::fs::read_dir(env.server.data_dir().join("build/runc"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(runc_state, Vec::<std::path::PathBuf>::new(), "runc state of killed steps is left");
    let (ok, _, stderr) = env.wharf(&["builds", "cancel", &id]);
    assert!(!ok && stderr.contains("only QUEUED and WORKING builds can be cancelled"), "{stderr}");
}

#[tokio::test]
async fn a_build_the_server_died_during_is_failed_and_killed_at_the_next_start() {
    // With egress, so the build's network is left too (and must be swept).
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_BUILD_NETWORK", "egress")]).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut env = Env { server, work };
    let dir =
        env.source("hangs", &[("Dockerfile", "FROM testapp:v1\nENV TESTAPP_NO_LISTEN=1\nRUN [\"/app/testapp\"]\n")]);
    env.ok(&["builds", "submit", &dir, "--tag", "hangs:v1", "--async"]);
    let id = env.builds()[0]["id"].as_str().unwrap().to_owned();
    let (cgroup, _) = build_cgroup(&id);
    let is_testapp =
        |pid: &str| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("testapp"));
    let pid =
        wharf_testsupport::wait_until("the RUN step running in the build's cgroup", Duration::from_secs(60), || {
            let procs = std::fs::read_to_string(cgroup.join("steps/cgroup.procs")).ok()?;
            procs.lines().map(str::trim).find(|p| is_testapp(p)).map(str::to_owned)
        })
        .unwrap();
    let compact = id.replace('-', "");
    let netns = Path::new("/run/netns").join(format!("wharf-bld{}", &compact[..9]));
    let veth = Path::new("/sys/class/net").join(format!("whbld{}", &compact[..9]));
    let record = env.server.data_dir().join("build-networks").join(format!("bld{}.json", &compact[..9]));
    assert!(netns.exists() && veth.exists() && record.exists(), "the egress build has no network of its own");

    // SIGKILL: the server cannot stop its build; buildah and the step outlive it.
    env.server.crash_and_restart().unwrap();
    // The next start removed the build's network (namespace, veth, record).
    assert!(!netns.exists() && !veth.exists() && !record.exists(), "the crashed build's network is left");
    let build = env.builds().into_iter().find(|b| b["id"] == id.as_str()).unwrap();
    assert_eq!(build["status"], "INTERNAL_ERROR", "{build}");
    assert_eq!(build["failureDetail"], "The server restarted before this build completed.");
    wharf_testsupport::wait_until("the orphaned step to be gone", Duration::from_secs(30), || {
        (!is_testapp(&pid)).then_some(())
    })
    .unwrap();
    assert!(!cgroup.exists(), "the build's cgroup {} is left", cgroup.display());
    // Builds work after it.
    let ok = env.source("ok", &[("Dockerfile", "FROM testapp:v1\nCOPY . /srv/\n")]);
    env.ok(&["builds", "submit", &ok, "--tag", "ok:v1"]);
}

#[tokio::test]
async fn jobs_deploy_from_source_creates_then_updates_the_job() {
    let env = setup(&["testapp:v1"]);
    let dockerfile = |echo: &str| format!("FROM testapp:v1\nENV TESTAPP_ECHO={echo}\nCMD [\"job\"]\n");
    let dir = env.source("nightly", &[("Dockerfile", &dockerfile("first-build"))]);
    let (_, stderr) = env.ok(&["run", "jobs", "deploy", "nightly", "--source", &dir]);
    assert!(stderr.contains("Job [nightly] has successfully been created."), "{stderr}");
    env.ok(&["run", "jobs", "execute", "nightly", "--wait"]);
    let (logs, _) = env.ok(&["logs", "read", "--job", "nightly"]);
    assert!(logs.contains("echo first-build"), "{logs}");

    std::fs::write(Path::new(&dir).join("Dockerfile"), dockerfile("second-build")).unwrap();
    let (_, stderr) = env.ok(&["run", "jobs", "deploy", "nightly", "--source", &dir]);
    assert!(stderr.contains("Job [nightly] has been updated."), "{stderr}");
    env.ok(&["run", "jobs", "execute", "nightly", "--wait"]);
    let (logs, _) = env.ok(&["logs", "read", "--job", "nightly"]);
    assert!(logs.contains("echo second-build"), "{logs}");
    let (job, _) = env.ok(&["run", "jobs", "describe", "nightly", "--format", "json"]);
    assert!(job.contains("cloud-run-source-deploy/nightly@sha256:"), "{job}");
}

#[tokio::test]
async fn the_build_api_refuses_what_it_does_not_support_by_name() {
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_BUILD_MAX_SOURCE_SIZE", "1KiB")]).unwrap();
    let token = std::fs::read_to_string(server.data_dir().join("owner.token")).unwrap();
    let client = wharf_testsupport::http_client().build().unwrap();
    let base = "/v2/projects/default/locations/us-central1";
    let post = |path: String| client.post(server.api_url(&path)).bearer_auth(token.trim());

    // An upload over the server's limit: 413, naming the setting.
    let r = post(format!("/wharf/v1{}/sources", base.trim_start_matches("/v2")))
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("max_source_size"), "{body}");

    // A small upload, then submits with fields Wharf does not have.
    let r =
        post(format!("/wharf/v1{}/sources", base.trim_start_matches("/v2"))).body(vec![1u8; 10]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let source: Value = r.json().await.unwrap();
    let storage = serde_json::json!({"bucket": source["bucket"], "object": source["object"]});
    let cases = [
        (
            serde_json::json!({"storageSource": storage, "imageUri": "a:v1", "buildpackBuild": {"runtime": "python312"}}),
            "buildpackBuild.runtime is not supported",
        ),
        (
            serde_json::json!({"storageSource": storage, "imageUri": "a:v1", "workerPool": "p"}),
            "workerPool is not supported",
        ),
        (serde_json::json!({"storageSource": storage, "imageUri": "a:v1", "machineType": "big"}), "machineType"),
        (
            serde_json::json!({"storageSource": storage, "imageUri": "a:v1", "dockerBuild": {"dockerfile": "../Dockerfile"}}),
            "must be a path inside the source directory",
        ),
        (
            serde_json::json!({"storageSource": {"bucket": "wharf-build-sources", "object": "nope.tar.gz"}, "imageUri": "a:v1"}),
            "is not an uploaded source",
        ),
        (serde_json::json!({"storageSource": storage, "imageUri": "Bad Name"}), "imageUri \"Bad Name\""),
    ];
    for (request, expected) in cases {
        let r = post(format!("{base}/builds:submit")).json(&request).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{request}: {body}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        assert!(body["error"]["message"].as_str().unwrap().contains(expected), "{request}: {body}");
    }
    let r = client
        .get(server.api_url(&format!("{base}/builds/no-such-build")))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// A small HTTP/1.1 server for a test's package index: `respond(path)` (the request path
/// without its leading `/`) gives the content type and body, `None` is a 404. Serves
/// `listener` (inside another host's namespace) from a thread until the test process ends;
/// returns the paths it answered 200, in order.
fn serve_http(
    listener: std::net::TcpListener,
    respond: impl Fn(&str) -> Option<(&'static str, Vec<u8>)> + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{BufRead as _, Write as _};
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
            let (status, kind, body) = match respond(&path) {
                Some((kind, body)) => {
                    log.lock().unwrap().push(path);
                    ("200 OK", kind, body)
                }
                None => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    served
}

/// A find-links package index: `GET /` lists the wheels in `dir` as HTML links (what pip's
/// `--find-links URL` reads), `GET /<wheel>` serves one. Counts wheels served.
fn serve_wheels(listener: std::net::TcpListener, dir: std::path::PathBuf) -> impl Fn() -> usize {
    let served = serve_http(listener, move |path| {
        if path.is_empty() {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let links: String = names.iter().map(|n| format!("<a href=\"{n}\">{n}</a>\n")).collect();
            Some(("text/html", format!("<html><body>\n{links}</body></html>\n").into_bytes()))
        } else if !path.contains('/') && dir.join(path).is_file() {
            Some(("application/octet-stream", std::fs::read(dir.join(path)).unwrap()))
        } else {
            None
        }
    });
    move || served.lock().unwrap().iter().filter(|p| !p.is_empty()).count()
}

/// An npm package tarball (`package/...` entries, gzipped) of `files`.
fn npm_tarball(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        tar.append_data(&mut header, format!("package/{name}"), text.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A one-package npm registry at `listener` (inside another host's namespace, reached as
/// `base_url`): `GET /<name>`
/// answers the package's metadata (the "packument" npm resolves versions from, with the
/// tarball's sha512 integrity), `GET /<name>/-/<name>-<version>.tgz` the tarball. Returns the
/// paths it answered.
fn serve_npm_registry(
    listener: std::net::TcpListener,
    base_url: &str,
    name: &'static str,
    version: &'static str,
    tarball: Vec<u8>,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let tarball_path = format!("{name}/-/{name}-{version}.tgz");
    let integrity =
        format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tarball)));
    let packument = serde_json::json!({
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {version: {
            "name": name,
            "version": version,
            "main": "index.js",
            "dist": {"tarball": format!("{base_url}/{tarball_path}"), "integrity": integrity},
        }},
    });
    serve_http(listener, move |path| {
        if path == name {
            Some(("application/json", serde_json::to_vec(&packument).unwrap()))
        } else if path == tarball_path {
            Some(("application/octet-stream", tarball.clone()))
        } else {
            None
        }
    })
}

/// An IPv4 address of this host other than loopback, link-local, the instances' subnet and
/// the test's own 203.0.113.0/24.
fn a_host_address() -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
        let ip = i.address?.as_sockaddr_in()?.ip();
        let [a, b, c, _] = ip.octets();
        let ours = (a, b) == (10, 213) || (a, b, c) == (203, 0, 113);
        (!ip.is_loopback() && !ip.is_link_local() && !ours).then_some(ip)
    })
}

/// Where the egress test's other host is: its package indexes and npm registry.
const OTHER_HOST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 78);

/// The seed lab's color API (Flask, gunicorn).
const COLOR_API_MAIN: &str = "import os\n\nfrom flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route(\"/\")\ndef color():\n    return {\"color\": os.environ.get(\"COLOR\", \"blue\")}\n";

#[tokio::test]
async fn egress_run_steps_reach_an_index_not_the_host_and_build_the_flask_color_api_and_a_node_app_from_source() {
    let work = tempfile::tempdir().unwrap();
    let wheels = wharf_testsupport::python::download_wheels(&["flask", "gunicorn"]).unwrap();
    let testapp = testapp_image(work.path(), "v1").unwrap();
    // The server's default Python base image, only in Wharf's registry: Debian's python3 with
    // /bin/sh and pip.
    let python = wharf_testsupport::python_build_image(work.path(), "python-build").unwrap();
    // The server's default Node.js base image, only in Wharf's registry: the host's node and
    // npm with /bin/sh (whatever its version, under the default's name).
    let node = wharf_testsupport::node_build_image(work.path(), "node-build").unwrap();
    // The host's resolver, as Wharf's resolver sees it: on the host's loopback, which RUN steps
    // cannot reach themselves, so a name it answers resolves in a step only through Wharf's
    // resolver (169.254.169.254:53). It knows one name: the test's npm registry.
    let upstream = UpstreamResolver::start(
        std::net::Ipv4Addr::new(127, 78, 0, u8::try_from(std::process::id() % 250 + 1).unwrap()),
        "registry.wharf-test",
        OTHER_HOST_IP,
    );
    let resolv_conf = work.path().join("upstream-resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {}\n", upstream.addr)).unwrap();
    let server = WharfServer::start_with_env(
        wharf(),
        &[
            ("WHARF_BUILD_NETWORK", "egress"),
            // Builds reach the test's other host only: not the public address of a second one.
            ("WHARF_BUILD_EGRESS_ALLOW", "203.0.113.0/24"),
            ("WHARF_UPSTREAM_RESOLV_CONF", resolv_conf.to_str().unwrap()),
        ],
    )
    .unwrap();
    for (image, tag) in [(&testapp, "testapp:v1"), (&python, "python:3.12-slim"), (&node, "node:22-slim")] {
        let out = server.cli(&["images", "import", &image.layout.to_string_lossy(), "--tag", tag]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let env = Env { server, work };

    // A RUN step reaches an address behind a veth (what the internet is to a build), but
    // not the host's loopback, Wharf's API, the host's own address, or the metadata address.
    let other = OtherHost::create("e", OTHER_HOST_IP);
    let elsewhere = other.listen();
    // A public address too (TEST-NET-2), behind a veth of its own, outside the allow-list.
    let not_allowed_host = OtherHost::create("n", std::net::Ipv4Addr::new(198, 51, 100, 78));
    let not_allowed = not_allowed_host.listen();
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let any_address = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mut refused = vec![
        loopback.local_addr().unwrap().to_string(),
        env.server.addrs.api_addr.clone(),
        env.server.addrs.registry_addr.to_string(),
        // No DNAT for builds at 169.254.169.254: the policy drops it on this machine.
        "169.254.169.254:80".to_owned(),
        not_allowed.local_addr().unwrap().to_string(),
    ];
    if let Some(ip) = a_host_address() {
        refused.push(format!("{ip}:{}", any_address.local_addr().unwrap().port()));
    }
    let reached = elsewhere.local_addr().unwrap().to_string();
    // Names, through Wharf's resolver: one the host's resolver knows, one nobody does.
    let names = ["resolve:registry.wharf-test".to_owned(), "resolve:unknown.wharf-test".to_owned()];
    let targets: Vec<String> = std::iter::once(reached.clone()).chain(refused.iter().cloned()).chain(names).collect();
    let probe = format!(
        "FROM testapp:v1\nRUN [\"/app/testapp\", \"build-probe\", {}]\n",
        targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
    );
    let dir = env.source("probe", &[("Dockerfile", probe.as_str())]);
    let (_, log) = env.ok(&["builds", "submit", &dir, "--tag", "probe:v1"]);
    assert!(log.contains("RUN steps reach only 203.0.113.0/24 (the server's --build-egress-allow)"), "{log}");
    assert!(log.contains(&format!("connect {reached}: reached")), "an egress RUN step did not reach {reached}:\n{log}");
    for target in &refused {
        assert!(log.contains(&format!("connect {target}: failed")), "a RUN step reached {target}:\n{log}");
    }
    assert!(log.contains(&format!("resolve registry.wharf-test: {OTHER_HOST_IP}\n")), "{log}");
    assert!(log.contains("resolve unknown.wharf-test: failed ("), "an unknown name resolved:\n{log}");
    let asked = upstream.asked.lock().unwrap().clone();
    assert!(asked.iter().any(|n| n == "unknown.wharf-test"), "Wharf's resolver did not forward: {asked:?}");
    assert!(has_pending_connection(&elsewhere));
    assert!(!has_pending_connection(&loopback) && !has_pending_connection(&any_address));
    assert!(!has_pending_connection(&not_allowed), "a step reached a public address outside the allow-list");
    // The build's namespace, veth and record are gone with it.
    let id = env.builds()[0]["id"].as_str().unwrap().replace('-', "");
    let leftover = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
            .unwrap_or(false)
    };
    assert!(!leftover("/run/netns", &format!("wharf-bld{}", &id[..9])), "the build's netns is left");
    assert!(!leftover("/sys/class/net", &format!("whbld{}", &id[..9])), "the build's veth is left");
    let records = env.server.data_dir().join("build-networks");
    assert!(!leftover(&records.to_string_lossy(), "b"), "the build network's record is left");

    // The seed lab's color API, no Dockerfile: detected as Python, `pip install -r
    // requirements.txt` in a RUN step, from the test's index behind the veth (never PyPI).
    let index_listener = other.listen();
    let index_addr = index_listener.local_addr().unwrap();
    let wheels_served_so_far = serve_wheels(index_listener, wheels);
    // The index reaches pip as build environment variables (gcloud's --set-build-env-vars);
    // the seed's requirements.txt stays as it is.
    let requirements = "flask\ngunicorn\n";
    let build_env = format!("PIP_NO_INDEX=1,PIP_FIND_LINKS=http://{index_addr}/,PIP_TRUSTED_HOST={}", index_addr.ip());
    let dir = env.source("color-api", &[("requirements.txt", requirements), ("main.py", COLOR_API_MAIN)]);
    let (ok, _, stderr) =
        env.wharf(&["run", "deploy", "color-api", "--source", &dir, "--set-build-env-vars", "PATH=/x"]);
    assert!(!ok && stderr.contains("build environment variable PATH is not allowed"), "{stderr}");
    let cold = std::time::Instant::now();
    let (stdout, stderr) = env.ok(&[
        "run",
        "deploy",
        "color-api",
        "--source",
        &dir,
        "--allow-unauthenticated",
        "--set-build-env-vars",
        &build_env,
    ]);
    let cold = cold.elapsed();
    assert!(stdout.contains("Service URL: http://"), "{stdout}");
    assert!(stderr.contains("ARG PIP_FIND_LINKS\nARG PIP_NO_INDEX\nARG PIP_TRUSTED_HOST\n"), "{stderr}");
    assert!(stderr.contains("no Dockerfile; detected Python"), "{stderr}");
    assert!(stderr.contains("RUN pip install --no-cache-dir -r requirements.txt"), "{stderr}");
    assert!(stderr.contains("Successfully installed") && stderr.contains(" flask-"), "pip installed nothing: {stderr}");
    let wheels_served = wheels_served_so_far();
    assert!(wheels_served >= 2, "pip took {wheels_served} wheels from the test's index");
    let host = service_host("color-api", "default");
    let client = wharf_testsupport::http_client().timeout(Duration::from_secs(60)).build().unwrap();
    let ask = || async {
        let r = client
            .get(format!("http://{}/", env.server.addrs.ingress_addr))
            .header("Host", &host)
            .send()
            .await
            .unwrap();
        let server = r.headers().get("server").map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default();
        (r.status().as_u16(), server, r.text().await.unwrap())
    };
    let (status, server_header, body) = ask().await;
    assert_eq!((status, body.trim()), (200, r#"{"color":"blue"}"#), "{}", env.server.log());
    assert!(server_header.starts_with("gunicorn"), "served by {server_header:?}, not gunicorn");
    let generated = &env.builds()[0];
    assert_eq!(generated["detectedLanguage"], "Python");

    // The same app with its own Dockerfile: the dependency steps are the generated ones, so
    // they come from the layer cache and pip downloads nothing.
    let dockerfile = "FROM python:3.12-slim\nARG PIP_FIND_LINKS\nARG PIP_NO_INDEX\nARG PIP_TRUSTED_HOST\nWORKDIR /app\nCOPY requirements.txt ./\n\
                      RUN pip install --no-cache-dir -r requirements.txt\nCOPY . ./\nENV COLOR=green\n\
                      CMD [\"/bin/sh\", \"-c\", \"exec gunicorn --bind :$PORT main:app\"]\n";
    let dir = env.source(
        "color-api-dockerfile",
        &[("requirements.txt", requirements), ("main.py", COLOR_API_MAIN), ("Dockerfile", dockerfile)],
    );
    let cached = std::time::Instant::now();
    let (_, stderr) = env.ok(&["run", "deploy", "color-api", "--source", &dir, "--set-build-env-vars", &build_env]);
    let cached = cached.elapsed();
    assert!(!stderr.contains("no Dockerfile"), "{stderr}");
    let with_dockerfile = &env.builds()[0];
    assert!(with_dockerfile["cachedSteps"].as_u64().unwrap() >= 3, "{with_dockerfile}");
    assert_eq!(wheels_served_so_far(), wheels_served, "a cached pip step downloaded");
    let (status, server_header, body) = ask().await;
    assert_eq!((status, body.trim()), (200, r#"{"color":"green"}"#));
    assert!(server_header.starts_with("gunicorn"), "served by {server_header:?}");
    // Figures for docs/benchmarks.md (printed, never asserted).
    eprintln!(
        "flask color-api run deploy --source: cold {:.2}s (build {}), dependencies cached {:.2}s (build {})",
        cold.as_secs_f64(),
        generated["duration"],
        cached.as_secs_f64(),
        with_dockerfile["duration"]
    );

    // A Node.js app, no Dockerfile: detected by its package.json, built on the Node.js base
    // image, its one dependency installed by the generated `npm install` from an npm registry
    // the test serves behind the veth, named by a host name the step resolves through Wharf's
    // resolver (NPM_CONFIG_REGISTRY as a build variable; the package exists on no public
    // registry), started with `npm start`.
    let registry_listener = other.listen();
    let registry_url = format!("http://registry.wharf-test:{}", registry_listener.local_addr().unwrap().port());
    let greeting = npm_tarball(&[
        ("package.json", r#"{"name": "wharf-test-greeting", "version": "1.2.0", "main": "index.js"}"#),
        ("index.js", "module.exports = (name) => `hello ${name}, from wharf-test-greeting`;\n"),
    ]);
    let registry = serve_npm_registry(registry_listener, &registry_url, "wharf-test-greeting", "1.2.0", greeting);
    let npm_env = format!("NPM_CONFIG_REGISTRY={registry_url}/");
    let dir = env.source(
        "node-hello",
        &[("package.json", NODE_HELLO_PACKAGE), ("server.js", &NODE_HELLO_SERVER.replace("NAME", "node-hello"))],
    );
    let cold = std::time::Instant::now();
    let (stdout, stderr) = env.ok(&[
        "run",
        "deploy",
        "node-hello",
        "--source",
        &dir,
        "--allow-unauthenticated",
        "--set-build-env-vars",
        &npm_env,
    ]);
    let cold = cold.elapsed();
    assert!(stdout.contains("Service URL: http://"), "{stdout}");
    assert!(stderr.contains("no Dockerfile; detected Node.js (package.json, runs `npm start`)"), "{stderr}");
    assert!(stderr.contains("RUN npm install --omit=dev --no-audit --no-fund"), "{stderr}");
    assert!(stderr.contains("added 1 package"), "npm installed nothing: {stderr}");
    // The step's resolv.conf (printed by the app's postinstall script): Wharf's resolver only.
    assert!(stderr.contains("> cat /etc/resolv.conf\n\nnameserver 169.254.169.254\n\n"), "{stderr}");
    let tarball_path = "wharf-test-greeting/-/wharf-test-greeting-1.2.0.tgz";
    assert_eq!(
        *registry.lock().unwrap(),
        ["wharf-test-greeting", tarball_path],
        "npm asked the test's registry for something else"
    );
    let node_build = env.builds()[0].clone();
    assert_eq!(node_build["detectedLanguage"], "Node.js");
    let node_host = service_host("node-hello", "default");
    let (status, body) = env.get(&node_host, "/").await;
    assert_eq!(status, 200, "{body}\n{}", env.server.log());
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["greeting"], "hello node-hello, from wharf-test-greeting");
    let host_node = std::process::Command::new("/usr/bin/node").arg("--version").output().unwrap();
    assert_eq!(answer["node"], String::from_utf8_lossy(&host_node.stdout).trim(), "not the base image's node");
    assert_eq!(answer["resolved"], format!("{registry_url}/{tarball_path}"), "{answer}");
    assert!(
        upstream.asked.lock().unwrap().iter().any(|name| name == "registry.wharf-test"),
        "the step's lookup did not reach the host's resolver through Wharf's"
    );
    assert_eq!(answer["startedBy"], "npm start", "{answer}");

    // The app changed, its dependencies did not: the install step comes from the layer cache
    // and the registry is asked nothing.
    std::fs::write(Path::new(&dir).join("server.js"), NODE_HELLO_SERVER.replace("NAME", "node-hello v2")).unwrap();
    let cached = std::time::Instant::now();
    env.ok(&["run", "deploy", "node-hello", "--source", &dir, "--set-build-env-vars", &npm_env]);
    let cached = cached.elapsed();
    let node_rebuild = env.builds()[0].clone();
    assert!(node_rebuild["cachedSteps"].as_u64().unwrap() >= 3, "{node_rebuild}");
    assert_eq!(registry.lock().unwrap().len(), 2, "a cached npm step asked the registry");
    let (status, body) = env.get(&node_host, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello node-hello v2, from wharf-test-greeting"), "{body}");
    eprintln!(
        "node-hello run deploy --source: cold {:.2}s (build {}), dependencies cached {:.2}s (build {})",
        cold.as_secs_f64(),
        node_build["duration"],
        cached.as_secs_f64(),
        node_rebuild["duration"]
    );
}

/// The Node.js app: `npm start`, one dependency (from the test's registry), and a postinstall
/// script showing the build step's `/etc/resolv.conf` in the build log.
const NODE_HELLO_PACKAGE: &str = r#"{
  "name": "node-hello",
  "version": "1.0.0",
  "private": true,
  "scripts": {"start": "node server.js", "postinstall": "cat /etc/resolv.conf"},
  "dependencies": {"wharf-test-greeting": "^1.2.0"}
}
"#;

/// Its server (NAME replaced): the greeting from the dependency, the node that runs it, where
/// npm took the dependency from (the lock file `npm install` wrote in the build) and whether
/// npm started it.
const NODE_HELLO_SERVER: &str = r#"const http = require("http");
const greet = require("wharf-test-greeting");
const lock = require("./package-lock.json");

const resolved = lock.packages["node_modules/wharf-test-greeting"].resolved;
const startedBy = process.env.npm_lifecycle_event === "start" ? "npm start" : "node";
http
  .createServer((req, res) => {
    res.setHeader("Content-Type", "application/json");
    res.end(JSON.stringify({ greeting: greet("NAME"), node: process.version, resolved, startedBy }));
  })
  .listen(Number(process.env.PORT || 8080));
"#;
