//! Services end to end, through the CLI and the API, with real containers: deploy and get a
//! URL, new revisions on env changes, describe with --format, scale to zero and cold start,
//! scale-out under load up to and never past max-instances, the concurrency limit measured
//! inside each instance, request timeouts, bad input, delete.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testsupport::{WharfLab, WharfServer, service_host};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

wharf_testsupport::suite_lab!(Env);

fn setup(idle: &str) -> Env {
    Env(WharfLab::start(wharf(), &[("WHARF_IDLE_TIMEOUT", idle)], "testapp:v1"))
}

impl Env {
    async fn wait_for_instances(&self, what: &str, want: impl Fn(usize) -> bool, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.instances();
            if want(n) {
                return n;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {n} instances");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn deploy_update_describe_scale_to_zero_and_delete() {
    let env = setup("2s");
    let (ok, stdout, stderr) = env.wharf(&[
        "run",
        "deploy",
        "hello",
        "--image",
        &env.image,
        "--project",
        "demo",
        "--region",
        "us-central1",
        "--allow-unauthenticated",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("has been deployed and is serving 100 percent of traffic"), "{stderr}");
    assert!(stdout.contains(&format!("Service URL: http://{}:", service_host("hello", "demo"))), "{stdout}");
    let host = &service_host("hello", "demo");
    let (status, body) = env.get(host, "/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("Hello from hello-00001-"), "{body}");

    env.ok(&[
        "run",
        "deploy",
        "hello",
        "--image",
        &env.image,
        "--project",
        "demo",
        "--update-env-vars",
        "GREETING=bonjour",
    ]);
    let (_, body) = env.get(host, "/env").await;
    let vars: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(vars["GREETING"], "bonjour");
    assert!(vars["K_REVISION"].as_str().unwrap().starts_with("hello-00002-"), "{vars}");

    let url = env.ok(&["run", "services", "describe", "hello", "--project", "demo", "--format", "value(status.url)"]);
    assert_eq!(url.trim(), format!("http://{host}:{}", env.server.addrs.ingress_addr.rsplit(':').next().unwrap()));
    let revisions = env.ok(&[
        "run",
        "revisions",
        "list",
        "--service",
        "hello",
        "--project",
        "demo",
        "--format",
        "value(metadata.name)",
    ]);
    assert_eq!(revisions.lines().count(), 2, "{revisions}");

    // Idle past the idle timeout: no instances; the next request cold-starts one.
    env.wait_for_instances("scale to zero", |n| n == 0, Duration::from_secs(20)).await;
    let (status, body) = env.get(host, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("hello-00002-"), "{body}");

    let logs = env.ok(&["logs", "read", "hello", "--severity", "INFO", "--limit", "50"]);
    assert!(logs.contains("testapp: listening on port 8080"), "{logs}");

    env.ok(&["run", "services", "delete", "hello", "--project", "demo", "--quiet"]);
    assert_eq!(env.get(host, "/").await.0, 404);
    env.wait_for_instances("instances of the deleted service to stop", |n| n == 0, Duration::from_secs(20)).await;
    let (ok, _, stderr) = env.wharf(&["run", "services", "describe", "hello", "--project", "demo"]);
    assert!(!ok);
    assert!(stderr.contains("Cannot find service [hello]"), "{stderr}");
}

/// Counts the instance directories of `server` every 5 ms on a thread until stopped; the
/// peak is returned when stopped.
struct InstanceSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl InstanceSampler {
    fn start(server: &WharfServer) -> InstanceSampler {
        let dir = server.data_dir().join("instances");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        InstanceSampler { stop, thread }
    }

    fn peak(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Fires `n` concurrent `GET /work?ms={ms}` at `host`; returns each answer's status and body.
async fn fire_work(env: &Env, host: &str, n: usize, ms: u64) -> Vec<(u16, String)> {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let client = env.server.client_builder().timeout(Duration::from_secs(60)).build().unwrap();
            let url = format!("http://{}/work?ms={ms}", env.server.addrs.ingress_addr);
            let host = host.to_owned();
            tokio::spawn(async move {
                let r = client.get(url).header("Host", host).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    answers
}

/// The most `/work` requests each instance had in flight at once, from the answers that
/// succeeded (each reports the instance's count when it arrived).
fn max_in_flight_per_instance(answers: &[(u16, String)]) -> std::collections::BTreeMap<String, u64> {
    let mut per_instance = std::collections::BTreeMap::new();
    for (status, body) in answers.iter().filter(|(s, _)| *s == 200) {
        let report: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: {body}: {e}"));
        let instance = report["instance"].as_str().unwrap().to_owned();
        let inflight = report["inflight"].as_u64().unwrap();
        let max = per_instance.entry(instance).or_insert(0);
        *max = inflight.max(*max);
    }
    per_instance
}

#[tokio::test]
async fn scales_out_under_load_within_max_instances_and_back_to_zero() {
    let env = setup("2s");
    env.ok(&[
        "run",
        "deploy",
        "busy",
        "--image",
        &env.image,
        "--project",
        "demo",
        "--concurrency",
        "1",
        "--max-instances",
        "4",
        "--timeout",
        "60",
    ]);
    let host = &service_host("busy", "demo");
    let started = Instant::now();
    // The instance count is sampled every 5 ms for as long as the load runs.
    let sampler = InstanceSampler::start(&env.server);
    let answers = fire_work(&env, host, 20, 1500).await;
    let peak = sampler.peak();
    assert!(peak <= 4, "{peak} instances at once with --max-instances 4");
    assert_eq!(peak, 4, "20 requests of 1.5 s at concurrency 1 never scaled out to --max-instances 4");
    // 4 instances serve 20 requests of 1.5 s one at a time: some wait in the queue past its
    // 10 s bound and get the documented "no available instance" answer; the rest succeed.
    let served = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(served >= 16, "only {served} served; {refused:?}");
    for (status, body) in &refused {
        assert!(*status == 503 || *status == 429, "{status}: {body}");
        assert!(body.contains("no available instance"), "{body}");
    }
    let per_instance = max_in_flight_per_instance(&answers);
    assert!(per_instance.len() <= 4, "{} instances answered: {per_instance:?}", per_instance.len());
    assert!(per_instance.values().all(|m| *m == 1), "--concurrency 1 broken: {per_instance:?}");
    assert!(started.elapsed() < Duration::from_secs(40));
    env.wait_for_instances("scale back to zero", |n| n == 0, Duration::from_secs(30)).await;
}

/// `--concurrency` is a hard per-instance limit: under more concurrent requests than the
/// instances can take, no instance ever has more than the limit in flight, and the load
/// reaches the limit (so the test would notice a limit that is not enforced and a load that
/// never exercised it).
#[tokio::test]
async fn concurrency_is_a_hard_per_instance_limit() {
    let env = setup("60s");
    for (service, concurrency, max_instances, requests) in [("one", 1u64, 2u64, 12), ("three", 3, 1, 12)] {
        env.ok(&[
            "run",
            "deploy",
            service,
            "--image",
            &env.image,
            "--project",
            "demo",
            "--concurrency",
            &concurrency.to_string(),
            "--max-instances",
            &max_instances.to_string(),
            "--timeout",
            "60",
        ]);
        let host = &service_host(service, "demo");
        let answers = fire_work(&env, host, requests, 400).await;
        let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
        assert_eq!(failed, Vec::<&(u16, String)>::new(), "{service}: requests within the queue bound failed");
        let per_instance = max_in_flight_per_instance(&answers);
        assert!(
            per_instance.len() as u64 <= max_instances,
            "{service}: {} instances served with --max-instances {max_instances}",
            per_instance.len()
        );
        for (instance, max) in &per_instance {
            assert!(
                *max <= concurrency,
                "{service}: instance {instance} had {max} requests in flight, limit {concurrency}"
            );
        }
        let reached = per_instance.values().max().copied().unwrap_or(0);
        assert_eq!(reached, concurrency, "{service}: the load never reached the limit: {per_instance:?}");
        if max_instances == 1 {
            // The instance's own gauge agrees with what the answers reported.
            let (status, body) = env.get(host, "/inflight").await;
            assert_eq!(status, 200, "{body}");
            let gauge: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(gauge["max"], concurrency, "{gauge}");
            assert_eq!(gauge["inflight"], 0, "{gauge}");
        }
    }
}

#[tokio::test]
async fn request_timeout_gives_504_and_the_instance_keeps_serving() {
    let env = setup("60s");
    env.ok(&["run", "deploy", "slow", "--image", &env.image, "--project", "demo", "--timeout", "1"]);
    let host = &service_host("slow", "demo");
    let (status, body) = env.get(host, "/sleep?ms=3000").await;
    assert_eq!(status, 504, "{body}");
    let (status, body) = env.get(host, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.instances(), 1);
    // Headers and trace context reach the container.
    let (_, headers) = env.get(host, "/headers").await;
    let headers: Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers["traceparent"].as_str().unwrap().starts_with("00-"), "{headers}");
    assert!(headers["x-cloud-trace-context"].is_string(), "{headers}");
}

#[tokio::test]
async fn bad_input_is_refused_with_400_and_creates_nothing() {
    let env = setup("60s");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["Bad_Name".into()], "lowercase letters, digits and hyphens"),
        (vec!["x".repeat(50)], "at most 49 characters"),
        (
            vec!["ok".into(), "--image".into(), format!("{}/nothing:v9", env.server.addrs.registry_addr)],
            "could not be resolved",
        ),
        (vec!["ok".into(), "--memory".into(), "64Mi".into()], "between 128Mi and 32Gi"),
        (vec!["ok".into(), "--cpu".into(), "lots".into()], "invalid cpu"),
        (vec!["ok".into(), "--concurrency".into(), "5000".into()], "between 1 and 1000"),
        (
            vec!["ok".into(), "--max-instances".into(), "2".into(), "--min-instances".into(), "3".into()],
            "may not exceed",
        ),
        (vec!["ok".into(), "--set-env-vars".into(), "K_SERVICE=spoof".into()], "K_SERVICE is reserved"),
        (
            vec!["ok".into(), "--service-account".into(), "ghost-sa@demo.iam.gserviceaccount.com".into()],
            "service account ghost-sa@demo.iam.gserviceaccount.com does not exist",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["run", "deploy"];
        full.extend(args.iter().map(String::as_str));
        if !args.iter().any(|a| a == "--image") {
            full.extend(["--image", env.image.as_str()]);
        }
        full.extend(["--project", "demo"]);
        let (ok, _, stderr) = env.wharf(&full);
        assert!(!ok, "{full:?} succeeded");
        assert!(stderr.contains(expected), "{full:?}: expected {expected:?} in:\n{stderr}");
    }
    let bad_file = env.work.path().join("env.yaml");
    std::fs::write(&bad_file, "- not\n- a map\n").unwrap();
    let (ok, _, stderr) = env.wharf(&[
        "run",
        "deploy",
        "ok",
        "--image",
        &env.image,
        "--project",
        "demo",
        "--env-vars-file",
        &bad_file.to_string_lossy(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("is not a YAML map"), "{stderr}");

    // Over the API: the right status and a Cloud Run-style body.
    let client = wharf_testsupport::http_client().build().unwrap();
    let r = client
        .post(env.server.api_url("/v2/projects/demo/locations/us-central1/services?serviceId=Nope"))
        .bearer_auth(&env.server.token)
        .json(&serde_json::json!({"template": {"containers": [{"image": env.image}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let r = client
        .get(env.server.api_url("/v2/projects/demo/locations/us-central1/services/ghost"))
        .bearer_auth(&env.server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client.get(env.server.api_url("/v2/projects/demo/locations/us-central1/services")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");

    let list = env.ok(&["run", "services", "list", "--project", "demo", "--format", "json"]);
    assert_eq!(list.trim(), "[]");
    assert_eq!(env.instances(), 0);
}

#[tokio::test]
async fn restart_keeps_services_and_urls() {
    let mut env = setup("60s");
    env.ok(&["run", "deploy", "keep", "--image", &env.image, "--project", "demo", "--min-instances", "1"]);
    let url_before =
        env.ok(&["run", "services", "describe", "keep", "--project", "demo", "--format", "value(status.url)"]);
    env.server.restart().unwrap();
    // min-instances come back on their own.
    env.wait_for_instances("min-instances after restart", |n| n == 1, Duration::from_secs(20)).await;
    let url_after =
        env.ok(&["run", "services", "describe", "keep", "--project", "demo", "--format", "value(status.url)"]);
    let path_of = |u: &str| u.trim().split(':').take(2).collect::<Vec<_>>().join(":");
    assert_eq!(path_of(&url_before), path_of(&url_after), "the service host changed");
    let (status, body) = env.get(&service_host("keep", "demo"), "/").await;
    assert_eq!(status, 200, "{body}");
}

/// Reads one unmasked WebSocket frame's payload (server frames are never masked).
async fn read_ws_frame(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126, "test frames are short");
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    payload
}

#[tokio::test]
async fn h2c_websocket_and_streamed_bodies_pass_through() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let env = setup("60s");
    env.ok(&["run", "deploy", "proto", "--image", &env.image, "--project", "demo"]);
    let host = &service_host("proto", "demo");
    let ingress = &env.server.addrs.ingress_addr;

    // HTTP/2 cleartext with prior knowledge.
    let h2 = env.server.client_builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(format!("http://{ingress}/")).header("Host", host).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().starts_with("Hello from proto-00001-"));

    // A streamed response arrives chunk by chunk, and a streamed request body is echoed.
    let client = env.server.client_builder().build().unwrap();
    let mut r =
        client.get(format!("http://{ingress}/stream?chunks=3&ms=200")).header("Host", host).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"chunk 0\n");
    let started = Instant::now();
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"chunk 1\nchunk 2\n");
    assert!(started.elapsed() >= Duration::from_millis(300), "the body was buffered, not streamed");
    let body = reqwest::Body::wrap_stream(futures_stream());
    let r = client.post(format!("http://{ingress}/echo")).header("Host", host).body(body).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "part one, part two");

    // WebSocket upgrade, then an echoed text frame.
    let mut ws = tokio::net::TcpStream::connect(ingress.as_str()).await.unwrap();
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Authorization: Bearer {}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        env.server.token
    );
    ws.write_all(handshake.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        ws.read_exact(&mut byte).await.unwrap();
        response.push(byte[0]);
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{response}");
    let mask = [1u8, 2, 3, 4];
    let text = b"ahoy";
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).await.unwrap();
    assert_eq!(read_ws_frame(&mut ws).await, b"ahoy");
}

fn futures_stream() -> impl futures::Stream<Item = Result<&'static str, std::io::Error>> + Send + 'static {
    futures::stream::iter([Ok("part one, "), Ok("part two")])
}

/// The harness runs the CLI with a sealed `HOME`/`XDG_CONFIG_HOME`: the CLI config it reads
/// is the test's own (here naming the default project), never the developer's.
#[tokio::test]
async fn the_cli_reads_the_tests_own_config_home() {
    let env = setup("60s");
    let config_dir = env.server.home().join(".config/wharf");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("config.toml"), "project = \"sealed\"\n").unwrap();
    let out = env.ok(&["run", "deploy", "homed", "--image", &env.image]);
    assert!(out.contains(&format!("Service URL: http://{}:", service_host("homed", "sealed"))), "{out}");
}
