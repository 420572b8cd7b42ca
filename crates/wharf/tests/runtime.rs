//! The runtime with real containers (as root): testapp starts and answers; instances share
//! port 8080 in their own namespaces; the env contract is visible inside; the rootfs is fresh
//! each time; memory and CPU limits bite; SIGTERM is honoured; start-up failures explain
//! themselves; instances reach neither each other nor the host; the sandbox refuses
//! escapes tried from inside (seccomp, capabilities, rlimits, pids limit); an unclean exit is
//! swept up on the next start; and nothing is left behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wharf_image::archive::ImageArchive;
use wharf_image::remote::RemoteRegistry;
use wharf_image::{ImageStore, ResolvedImage, Resolver, SnapshotStore};
use wharf_runtime::contract::EnvError;
use wharf_runtime::logs::LogFilter;
use wharf_runtime::spec::SpecError;
use wharf_runtime::{
    Instance, InstanceSpec, InstanceState, Owner, Probe, ProbeAction, Resources, Runtime, RuntimeConfig, RuntimeError,
};
use wharf_store::Store;
use wharf_testsupport::leaks::{LeakGuard, Leftover, Scope, wharf_leftovers};

struct Harness {
    runtime: Runtime,
    image: ResolvedImage,
    layers: Vec<PathBuf>,
    /// Checks and cleans this harness's scope when dropped, also when the test panics.
    /// Declared before `dir`, so it runs before the data directory is deleted.
    guard: LeakGuard,
    dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(|config| config).await
}

/// A harness whose runtime settings `adjust` changes.
async fn harness_with(adjust: impl FnOnce(RuntimeConfig) -> RuntimeConfig) -> Harness {
    let dir = tempfile::Builder::new().prefix("wharf-rt-").tempdir().unwrap();
    let db = Store::open(&dir.path().join("state.db")).unwrap();
    let images = ImageStore::open(dir.path(), db.clone()).unwrap();
    let built = wharf_testsupport::testapp_image(dir.path(), "v1").unwrap();
    let archive = ImageArchive::open(&built.layout, Some("v1")).unwrap();
    images.import(&archive, "testapp", "v1").unwrap();
    let snapshots = Arc::new(SnapshotStore::open(&dir.path().join("snapshots"), images.blobs().clone()).unwrap());
    let resolver = Resolver::new(images, snapshots, Arc::new(RemoteRegistry::new(None)), vec![]);
    let image = resolver.load("testapp", "v1").unwrap();
    let layers = resolver.snapshots(&image).await.unwrap();
    let config = adjust(RuntimeConfig {
        log_retention_lines: 100_000,
        ..RuntimeConfig::new(dir.path().to_owned(), PathBuf::from(env!("CARGO_BIN_EXE_wharf")))
    });
    let guard = LeakGuard::new(dir.path());
    let runtime = Runtime::open(config, db.clone()).await.unwrap();
    Harness { runtime, image, layers, guard, dir }
}

impl Harness {
    fn spec(&self, revision: &str) -> InstanceSpec {
        InstanceSpec {
            owner: Owner::Service { service: "hello".into(), revision: revision.into(), configuration: "hello".into() },
            image: self.image.clone(),
            layers: self.layers.clone(),
            command: None,
            args: None,
            working_dir: None,
            env: vec![],
            port: 8080,
            resources: Resources::default(),
            cpu: Default::default(),
            startup_probe: Some(Probe::default_startup(8080)),
            liveness_probe: None,
            grace_period: Duration::from_secs(10),
            vpc_network: None,
            secret_files: Vec::new(),
            memory_volumes: Vec::new(),
        }
    }

    /// Starts an instance, remembering its id for the leak check.
    async fn start(&self, spec: InstanceSpec) -> Result<Arc<Instance>, RuntimeError> {
        let result = self.runtime.start(spec).await;
        if let Ok(instance) = &result {
            self.guard.instance(&instance.id);
        }
        result
    }

    fn scope(&self) -> Scope {
        self.guard.scope()
    }

    /// Stops everything and checks that nothing of this runtime is left on the machine (the
    /// guard checks again, and cleans, when the harness is dropped).
    async fn finish(self) {
        self.runtime.shutdown().await;
        let instances = std::fs::read_dir(self.dir.path().join("instances")).unwrap().count();
        let leftovers = self.guard.check_and_clean();
        assert_eq!(leftovers, Vec::<Leftover>::new(), "instances left things behind");
        assert_eq!(instances, 0, "instance directories left behind");
    }
}

fn client() -> reqwest::Client {
    wharf_testsupport::http_client().timeout(Duration::from_secs(20)).build().unwrap()
}

async fn get(instance: &Instance, path: &str) -> (u16, String) {
    let r = client().get(format!("http://{}{path}", instance.addr)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Pids of the helper processes (`wharf supervise`, `wharf shim`) working for the runtime on
/// `data_dir`.
fn helpers(data_dir: &std::path::Path) -> Vec<i32> {
    let dir = data_dir.to_string_lossy().into_owned();
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            let helper = cmdline.contains(" supervise ") || cmdline.contains(" shim ");
            (helper && cmdline.contains(&dir)).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The parent process of `pid`.
fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok())
}

/// The runtime's supervisor and its children other than helpers (its shim forker), once it
/// has exactly `expected` of them (the shims exit right after their containers run), bounded.
async fn supervisor_and_children(data_dir: &std::path::Path, expected: usize) -> (i32, Vec<i32>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let own = i32::try_from(std::process::id()).ok();
        let found_helpers = helpers(data_dir);
        let found: Vec<i32> = found_helpers.iter().copied().filter(|p| parent_of(*p) == own).collect();
        if let [supervisor] = found[..] {
            let children: Vec<i32> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
                .filter(|p| parent_of(*p) == Some(supervisor) && !found_helpers.contains(p))
                .collect();
            if children.len() == expected {
                return (supervisor, children);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no supervisor with {expected} children: helpers {found:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_instances_share_port_8080_and_stop_gracefully() {
    let h = harness().await;
    let a = h.start(h.spec("hello-00001-aaa")).await.unwrap();
    let b = h.start(h.spec("hello-00002-bbb")).await.unwrap();
    assert_eq!((a.addr.port(), b.addr.port()), (8080, 8080));
    assert_ne!(a.addr.ip(), b.addr.ip());
    assert_eq!(get(&a, "/").await, (200, "Hello from hello-00001-aaa!\n".to_owned()));
    assert_eq!(get(&b, "/").await, (200, "Hello from hello-00002-bbb!\n".to_owned()));
    // The host knows each instance's MAC from the start (a permanent neighbour entry, outside
    // the neighbour table's 1,024-entry limit), instead of an ARP entry per instance.
    for instance in [&a, &b] {
        let device = format!("wh{}", &instance.id[..instance.id.len().min(12)]);
        let out = std::process::Command::new("ip").args(["-4", "neigh", "show", "dev", &device]).output().unwrap();
        let neighbours = String::from_utf8_lossy(&out.stdout).into_owned();
        let ip = instance.addr.ip().to_string();
        assert!(
            neighbours.lines().any(|l| l.starts_with(&format!("{ip} ")) && l.trim_end().ends_with("PERMANENT")),
            "{device}: {neighbours}"
        );
    }
    let phases = a.phases();
    assert!(phases.total_us > 0 && phases.create_us > 0, "{phases:?}");
    assert_eq!(a.state(), InstanceState::Ready);
    // Two helper processes for all instances: the supervisor, parent of both containers' init
    // processes once their shims have exited, and its shim forker; no process of its own
    // beside each instance.
    let (supervisor, children) = supervisor_and_children(h.dir.path(), 2).await;
    let others: Vec<i32> = helpers(h.dir.path()).into_iter().filter(|p| *p != supervisor).collect();
    assert!(
        matches!(others[..], [forker] if parent_of(forker) == Some(supervisor)),
        "helpers other than the supervisor and its forker: {others:?}"
    );
    // Each shim's mount namespace is copied from the forker's, which holds no instance's
    // mounts however many run (the host's holds each one's scratch and network namespace),
    // and a container sees no other instance's mounts.
    let mount_points = |mountinfo: &str| -> Vec<String> {
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(str::to_owned).collect()
    };
    let instances = h.dir.path().join("instances");
    let host = mount_points(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    let forker = mount_points(&std::fs::read_to_string(format!("/proc/{}/mountinfo", others[0])).unwrap());
    for instance in [&a, &b] {
        let scratch = instances.join(&instance.id).join("scratch").to_string_lossy().into_owned();
        assert!(host.contains(&scratch), "{scratch} is not mounted on the host: {host:?}");
    }
    let instance_mounts = |points: &[String]| -> Vec<String> {
        points
            .iter()
            .filter(|p| std::path::Path::new(p).starts_with(&instances) || p.starts_with("/run/netns/"))
            .cloned()
            .collect()
    };
    assert_eq!(instance_mounts(&forker), Vec::<String>::new(), "the forker's mount namespace: {forker:?}");
    let (_, inside) = get(&b, "/file?path=/proc/self/mountinfo").await;
    assert!(!inside.contains(&a.id), "instance b's container sees instance a's mounts: {inside}");
    let mut cgroups: Vec<String> = children
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default())
        .map(|c| {
            if c.contains(&format!("wharf-{}", a.id)) {
                "a"
            } else if c.contains(&format!("wharf-{}", b.id)) {
                "b"
            } else {
                "?"
            }
        })
        .map(str::to_owned)
        .collect();
    cgroups.sort();
    assert_eq!(cgroups, ["a", "b"], "the supervisor's children are not the two containers");

    let status = h.runtime.stop(&a).await;
    assert_eq!(status.state, InstanceState::Stopped);
    let exit = status.exit.unwrap();
    assert_eq!((exit.code, exit.signal), (Some(0), None), "testapp should exit on SIGTERM, before SIGKILL");
    let logs = h
        .runtime
        .logs()
        .query(&LogFilter { instance: Some(a.id.clone()), limit: 50, ..LogFilter::default() })
        .await
        .unwrap();
    let lines: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    assert!(lines.contains(&"testapp: received SIGTERM, exiting"), "{lines:?}");
    assert!(logs.iter().all(|l| l.revision.as_deref() == Some("hello-00001-aaa")));
    h.finish().await;
}

#[tokio::test]
async fn env_contract_is_visible_inside_and_reserved_names_are_refused() {
    let h = harness().await;
    let mut spec = h.spec("hello-00003-env");
    spec.env = vec![("GREETING".into(), "bonjour".into())];
    let service = h.start(spec).await.unwrap();
    let (status, body) = get(&service, "/env").await;
    assert_eq!(status, 200);
    let env: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["K_SERVICE"], "hello");
    assert_eq!(env["K_REVISION"], "hello-00003-env");
    assert_eq!(env["K_CONFIGURATION"], "hello");
    assert_eq!(env["GREETING"], "bonjour");

    let mut task = h.spec("unused");
    task.owner = Owner::Task { job: "batch".into(), execution: "batch-abc12".into(), index: 7, attempt: 1, count: 10 };
    let task = h.start(task).await.unwrap();
    let env: serde_json::Value = serde_json::from_str(&get(&task, "/env").await.1).unwrap();
    assert_eq!(env["CLOUD_RUN_JOB"], "batch");
    assert_eq!(env["CLOUD_RUN_EXECUTION"], "batch-abc12");
    assert_eq!(env["CLOUD_RUN_TASK_INDEX"], "7");
    assert_eq!(env["CLOUD_RUN_TASK_ATTEMPT"], "1");
    assert_eq!(env["CLOUD_RUN_TASK_COUNT"], "10");
    assert!(env.get("K_SERVICE").is_none());

    let mut bad = h.spec("hello-00004-bad");
    bad.env = vec![("K_REVISION".into(), "spoofed".into())];
    match h.start(bad).await {
        Err(RuntimeError::InvalidEnv(EnvError::Reserved { name })) => assert_eq!(name, "K_REVISION"),
        other => panic!("expected InvalidEnv, got {other:?}"),
    }
    h.finish().await;
}

#[tokio::test]
async fn rootfs_writes_vanish_with_the_instance() {
    let h = harness().await;
    let first = h.start(h.spec("hello-00005-fs")).await.unwrap();
    let r = client().put(format!("http://{}/file?path=/scratch.txt", first.addr)).body("written").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(get(&first, "/file?path=/scratch.txt").await, (200, "written".to_owned()));
    // The overlay is mounted in the instance's own mount namespace: the container's `/` is
    // an overlay, and the host's mount table holds none at the instance's rootfs (only the
    // scratch tmpfs), so it does not grow by an overlay line per running instance.
    let (_, inside) = get(&first, "/file?path=/proc/self/mountinfo").await;
    assert!(inside.lines().any(|l| l.split(' ').nth(4) == Some("/") && l.contains(" - overlay ")), "{inside}");
    let instance_dir = h.dir.path().join("instances").join(&first.id);
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let host_mounts: Vec<&str> = host.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    assert!(!host_mounts.contains(&instance_dir.join("rootfs").to_str().unwrap()), "{host}");
    assert!(host_mounts.contains(&instance_dir.join("scratch").to_str().unwrap()), "{host}");
    // The instances directory is a mount point of its own: each shim detaches every other
    // instance's scratch at once from the mount namespace its container is copied from.
    assert!(host_mounts.contains(&h.dir.path().join("instances").to_str().unwrap()), "{host}");
    h.runtime.stop(&first).await;
    // The image's USER, by name, is resolved in the merged tree (by the shim, whose mount
    // namespace alone holds the overlay).
    let mut as_nobody = h.spec("hello-00005-fs");
    as_nobody.image.config.config.set_user(Some("nobody".into()));
    let second = h.start(as_nobody).await.unwrap();
    let (_, status) = get(&second, "/file?path=/proc/self/status").await;
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Uid:", "65534", "65534", "65534", "65534"]),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Gid:", "65534", "65534", "65534", "65534"]),
        "{status}"
    );
    assert_eq!(get(&second, "/file?path=/scratch.txt").await.0, 404);
    // The image's own files are there, read through the overlay.
    assert_eq!(get(&second, "/file?path=/etc/group").await.0, 200);
    h.finish().await;
}

#[tokio::test]
async fn exceeding_the_memory_limit_kills_with_a_recorded_reason() {
    let h = harness().await;
    let mut spec = h.spec("hello-00006-mem");
    spec.resources = Resources::from_user(Some("128Mi"), None).unwrap();
    let instance = h.start(spec).await.unwrap();
    let _ = client().get(format!("http://{}/alloc?mib=400", instance.addr)).send().await;
    let status = tokio::time::timeout(Duration::from_secs(30), instance.wait_terminal()).await.unwrap();
    assert_eq!(status.state, InstanceState::Failed);
    let reason = status.reason.unwrap();
    assert!(reason.contains("Memory limit of 128 MiB exceeded"), "{reason}");
    assert!(status.exit.unwrap().oom_killed);
    let logs = h
        .runtime
        .logs()
        .query(&LogFilter {
            instance: Some(instance.id.clone()),
            min_severity: Some(500),
            limit: 10,
            ..LogFilter::default()
        })
        .await
        .unwrap();
    assert!(logs.iter().any(|l| l.message.contains("Memory limit of 128 MiB exceeded")), "{logs:?}");
    h.finish().await;
}

#[tokio::test]
async fn half_a_cpu_throttles_a_cpu_burn() {
    let h = harness().await;
    let mut spec = h.spec("hello-00007-cpu");
    spec.resources = Resources::from_user(None, Some("0.5")).unwrap();
    let instance = h.start(spec).await.unwrap();
    let before = instance.cpu_stats().expect("cpu.stat readable");
    // Two burning threads want two CPUs, more than the half CPU the quota allows; on a machine
    // so busy that they get less than half a CPU anyway, nothing is throttled yet, so burn
    // again (a bounded number of times) until a period has hit the quota.
    let mut after = before;
    for _ in 0..20 {
        let (status, body) = get(&instance, "/cpu?ms=1000&threads=2").await;
        assert_eq!(status, 200, "{body}");
        after = instance.cpu_stats().unwrap();
        if after.throttled_periods > before.throttled_periods {
            break;
        }
    }
    assert!(after.throttled_periods > before.throttled_periods, "no throttling under 0.5 CPU: {before:?} -> {after:?}");
    h.finish().await;
}

#[tokio::test]
async fn startup_failures_explain_themselves() {
    let h = harness().await;
    let mut never = h.spec("hello-00008-quiet");
    never.env = vec![("TESTAPP_NO_LISTEN".into(), "1".into())];
    never.startup_probe = Some(Probe {
        action: ProbeAction::Tcp { port: 8080 },
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
        failure_threshold: 2,
    });
    match h.start(never).await {
        Err(RuntimeError::StartupFailed { reason }) => {
            assert!(reason.contains("failed to start and listen on the port defined by the PORT=8080"), "{reason}")
        }
        other => panic!("expected a startup failure, got {other:?}"),
    }

    let mut early = h.spec("hello-00009-exit");
    early.env = vec![("TESTAPP_EXIT_CODE".into(), "3".into())];
    match h.start(early).await {
        Err(RuntimeError::StartupFailed { reason }) => {
            assert!(reason.contains("Container called exit(3)."), "{reason}");
            assert!(reason.contains("testapp: exiting early with code 3"), "{reason}");
        }
        other => panic!("expected a startup failure, got {other:?}"),
    }
    h.finish().await;
}

#[tokio::test]
async fn http_startup_and_liveness_probes() {
    let h = harness().await;
    let http = |path: &str, period_ms: u64, threshold: u32| Probe {
        action: ProbeAction::HttpGet { port: 8080, path: path.to_owned() },
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(period_ms),
        timeout: Duration::from_millis(500),
        failure_threshold: threshold,
    };
    let mut spec = h.spec("hello-00012-http");
    spec.startup_probe = Some(http("/status?code=204", 2000, 1));
    spec.liveness_probe = Some(http("/status?code=503", 100, 3));
    let instance = h.start(spec).await.unwrap();
    assert_eq!(instance.state(), InstanceState::Ready);
    let status = tokio::time::timeout(Duration::from_secs(10), instance.wait_terminal()).await.unwrap();
    assert_eq!(status.state, InstanceState::Failed);
    let reason = status.reason.unwrap();
    assert!(reason.starts_with("Liveness probe failed: HTTP probe GET /status?code=503"), "{reason}");
    assert!(reason.contains("HTTP status 503"), "{reason}");

    let mut spec = h.spec("hello-00013-http");
    // A budget of 4 s: the app must get to listen (slow on a loaded 2-core machine) before the
    // probe can see its 500s.
    spec.startup_probe = Some(http("/status?code=500", 2000, 2));
    match h.start(spec).await {
        Err(RuntimeError::StartupFailed { reason }) => assert!(reason.contains("HTTP status 500"), "{reason}"),
        other => panic!("expected a startup failure, got {other:?}"),
    }
    h.finish().await;
}

/// testapp's `/sandbox` tries, from inside a real instance, what the sandbox must refuse and
/// reports each errno; the controls (allowed operations of the same kind) must report `ok`,
/// which shows a refused probe is the sandbox at work and not a broken probe.
#[tokio::test]
async fn the_sandbox_refuses_escapes_tried_from_inside() {
    let h = harness().await;
    let mut spec = h.spec("hello-00020-sandbox");
    spec.resources.pids = 48;
    // Everything inside the instance happens first and cannot panic; the instance is gone
    // before any assertion runs, so a failing check leaves nothing behind.
    let probed = async {
        let instance = h.start(spec).await.map_err(|e| format!("start: {e}"))?;
        let fetch = async |path: &str| -> Result<(u16, String), String> {
            let response = client().get(format!("http://{}{path}", instance.addr)).send().await;
            let response = response.map_err(|e| format!("GET {path}: {e}"))?;
            let status = response.status().as_u16();
            Ok((status, response.text().await.map_err(|e| format!("GET {path}: {e}"))?))
        };
        let report = fetch("/sandbox?fork_max=200").await?;
        let after_bomb = fetch("/").await?;
        Ok::<_, String>((report, after_bomb))
    }
    .await;
    h.finish().await;
    let ((status, body), after_bomb) = probed.unwrap();
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let expected = [
        // seccomp
        ("unshare_user", "EPERM"),
        ("unshare_user_single_threaded", "EPERM"),
        ("unshare_net", "EPERM"),
        ("setns", "EPERM"),
        ("clone3", "ENOSYS"),
        ("mount", "EPERM"),
        ("keyctl", "EPERM"),
        ("bpf", "EPERM"),
        ("ptrace_attach", "EPERM"),
        ("personality_addr_no_randomize", "EPERM"),
        // capabilities: no CAP_MKNOD, no CAP_NET_RAW
        ("mknod_block_tmp", "EPERM"),
        ("mknod_block_dev", "EPERM"),
        ("raw_socket", "EPERM"),
        ("packet_socket", "EPERM"),
        // controls
        ("personality_query", "ok"),
        ("mknod_fifo", "ok"),
        ("udp_socket", "ok"),
        ("fork", "ok"),
    ];
    let actual: Vec<(&str, &str)> =
        expected.iter().map(|(name, _)| (*name, report[*name].as_str().unwrap_or("missing"))).collect();
    assert_eq!(actual, expected, "{report:#}");
    assert_eq!(report.get("open_block_tmp"), None, "a block device node was created: {report:#}");

    // NOFILE: the spec's limits, not the server's; the 1025th descriptor fails.
    let (soft, hard) = wharf_runtime::spec::host_nofile();
    let nofile = &report["nofile"];
    assert_eq!((nofile["soft"].as_str(), nofile["hard"].as_str()), (Some("1024"), Some(hard.to_string().as_str())));
    assert_eq!(soft, 1024);
    assert_eq!(nofile["error"], "EMFILE", "{nofile}");
    let opened = nofile["opened"].as_u64().unwrap();
    assert!(opened > 1000 && opened < 1024, "{nofile}");

    // The fork bomb hits the pids limit (48 tasks, testapp's own threads included), not its
    // bound of 200, and the instance still answers once its children are reaped.
    let bomb = &report["fork_bomb"];
    assert_eq!(bomb["error"], "EAGAIN", "{bomb}");
    let spawned = bomb["spawned"].as_u64().unwrap();
    assert!(spawned > 30 && spawned < 48, "{bomb}");
    assert_eq!(after_bomb, (200, "Hello from hello-00020-sandbox!\n".to_owned()));
}

/// The host's address on its default route (asks the routing table; sends nothing).
fn host_address() -> Option<std::net::IpAddr> {
    let out = std::process::Command::new("ip").args(["-o", "route", "get", "192.0.2.1"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "src")?;
    words.next()?.parse().ok()
}

/// Neither another instance nor the host itself is reachable from an instance (the egress
/// policy; `tests/network.rs` attacks every kind of host address and checks public egress).
#[tokio::test]
async fn instances_reach_neither_each_other_nor_the_host() {
    let h = harness().await;
    let a = h.start(h.spec("hello-00010-a")).await.unwrap();
    let b = h.start(h.spec("hello-00010-b")).await.unwrap();
    let (status, body) = get(&a, &format!("/connect?addr={}", b.addr)).await;
    assert_ne!(status, 200, "instance a reached instance b: {body}");

    if let Some(host) = host_address() {
        let listener = std::net::TcpListener::bind((host, 0)).unwrap();
        let target = listener.local_addr().unwrap();
        let (status, body) = get(&a, &format!("/connect?addr={target}")).await;
        assert_ne!(status, 200, "instance a reached the host at {target}: {body}");
        listener.set_nonblocking(true).unwrap();
        assert_eq!(listener.accept().map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::WouldBlock));
    }
    h.finish().await;
}

/// The type of the filesystem `path` is on, as `stat -f` names it.
fn filesystem_type(path: &std::path::Path) -> String {
    let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().unwrap();
    assert!(out.status.success(), "stat -f {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn an_unclean_exit_is_swept_up_on_the_next_start() {
    let (dir, scope, _guard);
    {
        // A runtime whose process "dies": its tokio runtime is dropped with instances running.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = rt.block_on(harness());
        let instance = rt.block_on(h.start(h.spec("hello-00011-crash"))).unwrap();
        assert_eq!(instance.state(), InstanceState::Ready);
        // The container's state and the instance's own files are in memory, not on disk.
        let state = h.dir.path().join("containers").join(&instance.id);
        assert!(state.join("state.json").exists(), "no state at {}", state.display());
        assert_eq!(filesystem_type(&state), "tmpfs");
        for file in ["hosts", "resolv.conf", "stdout", "stderr", "shim.log"] {
            let path = h.dir.path().join("instances").join(&instance.id).join("scratch").join(file);
            assert_eq!(filesystem_type(&path), "tmpfs", "{}", path.display());
        }
        scope = h.scope();
        // Lines already stored must survive the crash.
        rt.block_on(h.runtime.logs().flush());
        let Harness { dir: d, guard, .. } = h;
        dir = d;
        _guard = guard;
        drop(rt);
    }
    assert!(!wharf_leftovers(&scope).is_empty(), "the simulated crash left nothing to sweep");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let config = RuntimeConfig {
            log_retention_lines: 1000,
            ..RuntimeConfig::new(dir.path().to_owned(), PathBuf::from(env!("CARGO_BIN_EXE_wharf")))
        };
        let runtime = Runtime::open(config, db).await.unwrap();
        // The orphaned shim notices its server is gone and kills its container; the sweep
        // removes the rest. Give the shim a moment, bounded. What stays is the running
        // runtime's own mount points, gone at its shutdown: the instances directory, and the
        // tmpfs of the containers' states (the crashed runtime's, kept and emptied).
        let own = vec![Leftover::Mount(dir.path().join("instances")), Leftover::Mount(dir.path().join("containers"))];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while wharf_leftovers(&scope) != own && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(wharf_leftovers(&scope), own);
        assert_eq!(std::fs::read_dir(dir.path().join("instances")).unwrap().count(), 0);
        // What the crashed instance logged survived the crash.
        let filter = LogFilter { revision: Some("hello-00011-crash".into()), limit: 10, ..LogFilter::default() };
        let logs = runtime.logs().query(&filter).await.unwrap();
        assert!(logs.iter().any(|l| l.message == "testapp: listening on port 8080"), "{logs:?}");
        runtime.shutdown().await;
        assert_eq!(wharf_leftovers(&scope), Vec::<Leftover>::new());
    });
}

#[tokio::test]
async fn failed_starts_release_what_they_created() {
    let h = harness().await;
    // Both fail after the rootfs and network exist, while writing the bundle.
    let mut no_command = h.spec("hello-00012-nocmd");
    no_command.image.config.config.set_entrypoint(None);
    no_command.image.config.config.set_cmd(None);
    match h.start(no_command).await {
        Err(RuntimeError::InvalidSpec(SpecError::NoCommand)) => {}
        other => panic!("expected NoCommand, got {other:?}"),
    }
    let mut ghost = h.spec("hello-00013-ghost");
    ghost.image.config.config.set_user(Some("ghost".into()));
    match h.start(ghost).await {
        // The shim resolves the user in the merged tree, only its mount namespace holds.
        Err(RuntimeError::Shim(error)) => {
            assert!(error.contains("user \"ghost\" is not in the image's /etc/passwd"), "{error}")
        }
        other => panic!("expected the unknown user, got {other:?}"),
    }
    h.finish().await;
}

/// All instances live under the parent cgroup with the server-wide memory limit in the kernel,
/// and admission holds the total: with 256 MiB for instances, two of 128 MiB start, the third
/// is refused with the reason, and starts once one of the others is gone. The parent is
/// removed when the runtime shuts down with no instance left in it.
#[tokio::test]
async fn instances_live_under_the_parent_cgroup_and_admission_holds_the_total() {
    let parent = format!("wharf/cap-{}", std::process::id());
    let h = harness_with(|config| RuntimeConfig {
        cgroup_parent: parent.clone(),
        instance_limits: wharf_runtime::cgroup::ParentLimits { memory_bytes: 256 << 20, cpu_millis: 2000 },
        ..config
    })
    .await;
    // An open runtime has the cgroup2 mount favour moving processes between cgroups: without
    // it each of these starts waits for an RCU grace period (wharf_runtime::cgroup::FAVOR_DYNMODS).
    if let Some(mount) = wharf_runtime::cgroup::Cgroup2Mount::find() {
        assert!(mount.favors_dynmods(), "{mount:?} lacks favordynmods while a runtime is open");
    }
    let mut spec = h.spec("hello-00030-cap");
    spec.resources.memory_bytes = 128 << 20;
    let a = h.start(spec.clone()).await.unwrap();
    let b = h.start(spec.clone()).await.unwrap();
    let third = h.start(spec.clone()).await;
    let a_dirs = wharf_runtime::cgroup::directories(&a.id);
    let kernel_limit = h.runtime.cgroup_parent().kernel_memory_limit();
    h.runtime.stop(&a).await;
    let after_stop = h.start(spec.clone()).await;
    let used_with_b_and_new = h.runtime.admission().used();
    if let Ok(c) = &after_stop {
        h.runtime.stop(c).await;
    }
    h.runtime.stop(&b).await;
    h.finish().await;

    match third {
        Err(RuntimeError::NoCapacity(e)) => assert_eq!(
            e.to_string(),
            "wharf: no capacity: instances use 256 MiB of 256 MiB (--instance-memory-limit); this instance needs 128 MiB"
        ),
        other => panic!("expected no capacity, got {other:?}"),
    }
    assert!(!a_dirs.is_empty());
    for dir in &a_dirs {
        let dir = dir.to_string_lossy();
        assert!(dir.contains(&format!("/{parent}/wharf-")), "instance cgroup {dir} is not under {parent}");
    }
    assert_eq!(kernel_limit, Some(256 << 20), "the parent's memory limit in the kernel");
    assert!(after_stop.is_ok(), "a freed reservation admits the next instance: {after_stop:?}");
    assert_eq!(used_with_b_and_new, 256 << 20);
    for hierarchy in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        let dir = std::path::Path::new(hierarchy).join(&parent);
        assert!(!dir.exists(), "the parent cgroup {} was left behind", dir.display());
    }
}

/// A noisy instance is held to its log rate: what it wrote past the limit is dropped and
/// counted in marker lines (stored plus dropped is everything it wrote), and a quiet
/// instance's line still arrives.
#[tokio::test]
async fn a_noisy_instance_gets_dropped_markers_and_a_quiet_one_still_logs() {
    let limits = wharf_runtime::logs::LogLimits { lines_per_second: 200, ..Default::default() };
    let h = harness_with(|config| RuntimeConfig { log_limits: limits, ..config }).await;
    let noisy = h.start(h.spec("hello-00040-noisy")).await.unwrap();
    let quiet = h.start(h.spec("hello-00040-quiet")).await.unwrap();
    let written = get(&noisy, "/log?message=noise&count=20000").await;
    let quiet_logged = get(&quiet, "/log?message=quiet%20line").await;
    h.runtime.stop(&noisy).await;
    h.runtime.stop(&quiet).await;
    let query = |revision: &str| LogFilter { revision: Some(revision.into()), limit: 100_000, ..LogFilter::default() };
    let noisy_lines = h.runtime.logs().query(&query("hello-00040-noisy")).await.unwrap();
    let quiet_lines = h.runtime.logs().query(&query("hello-00040-quiet")).await.unwrap();
    h.finish().await;

    assert_eq!(written, (200, "logged 20000\n".to_owned()));
    assert_eq!(quiet_logged.0, 200);
    let stored_noise = noisy_lines.iter().filter(|l| l.message.starts_with("noise ")).count() as u64;
    let suffix = " lines (rate limit 200 lines/s, 1048576 bytes/s)";
    let dropped: u64 = noisy_lines
        .iter()
        .filter_map(|l| l.message.strip_prefix("wharf: dropped ")?.strip_suffix(suffix)?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "no marker line: {:?}", noisy_lines.iter().rev().take(5).collect::<Vec<_>>());
    assert!(stored_noise < 20_000, "{stored_noise} noise lines stored: no rate limit");
    // Every line is accounted for (the instance's own few lines besides the noise may be
    // among the dropped ones).
    assert!((20_000..20_005).contains(&(stored_noise + dropped)), "{stored_noise} stored + {dropped} dropped");
    assert!(quiet_lines.iter().any(|l| l.message == "quiet line"), "{quiet_lines:?}");
}
