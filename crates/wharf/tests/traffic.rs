//! Revisions and traffic: the blue/green lab of seed 002 (Tasks 1-5) with `gcloud` replaced by
//! `wharf` and `--source` by `--image`; a restart in the middle keeps traffic and tags; and a
//! continuous 200 requests/s load across deploy -> 10% -> 50% -> 100% -> rollback sees no
//! failed request.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wharf_testsupport::{WharfLab, service_host};

wharf_testsupport::suite_lab!(Lab);

const REGION: &str = "us-central1";

impl Lab {
    fn start() -> Lab {
        Lab::start_with_env(&[])
    }

    /// A lab whose server gets extra environment (settings such as `WHARF_INSTANCE_MEMORY_LIMIT`).
    fn start_with_env(env: &[(&str, &str)]) -> Lab {
        Lab(WharfLab::start(Path::new(env!("CARGO_BIN_EXE_wharf")), env, "color-api:v1"))
    }

    /// `wharf ARGS --project lab --region us-central1`, which must succeed; its stdout.
    fn wharf(&self, args: &[&str]) -> String {
        let mut full = args.to_vec();
        full.extend(["--project", "lab", "--region", REGION]);
        let out = self.server.cli(&full).unwrap();
        assert!(out.status.success(), "wharf {full:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wharf_err(&self, args: &[&str]) -> String {
        let mut full = args.to_vec();
        full.extend(["--project", "lab", "--region", REGION]);
        let out = self.server.cli(&full).unwrap();
        assert!(!out.status.success(), "wharf {full:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn ingress_port(&self) -> String {
        self.server.addrs.ingress_addr.rsplit(':').next().unwrap().to_owned()
    }

    /// `status.traffic` as (revision, percent, tag, url) in the order the service lists it;
    /// a revision named only as "latest" appears under its resolved name.
    fn traffic(&self) -> Vec<(String, i64, String, String)> {
        let json = self.wharf(&["run", "services", "describe", "color-api", "--format=json"]);
        let service: serde_json::Value = serde_json::from_str(&json).unwrap();
        let field = |t: &serde_json::Value, k: &str| t[k].as_str().unwrap_or_default().to_owned();
        service["status"]["traffic"]
            .as_array()
            .unwrap_or_else(|| panic!("no status.traffic in {service}"))
            .iter()
            .map(|t| (field(t, "revisionName"), t["percent"].as_i64().unwrap_or(0), field(t, "tag"), field(t, "url")))
            .collect()
    }

    fn client(&self) -> reqwest::Client {
        self.server.client_builder().timeout(Duration::from_secs(60)).build().unwrap()
    }

    /// Which revision answered `/` on `host`.
    async fn who(&self, client: &reqwest::Client, host: &str) -> String {
        let r = client
            .get(format!("http://{}/", self.server.addrs.ingress_addr))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap().trim().trim_start_matches("Hello from ").trim_end_matches('!').to_owned()
    }

    async fn count(&self, host: &str, n: usize, revision: &str) -> usize {
        let client = self.client();
        let mut hits = 0;
        for _ in 0..n {
            if self.who(&client, host).await == revision {
                hits += 1;
            }
        }
        hits
    }
}

fn host() -> String {
    service_host("color-api", "lab")
}

#[tokio::test]
async fn blue_green_lab_with_tags_canary_cutover_rollback_and_restart() {
    let mut lab = Lab::start();
    // Task 1: blue.
    lab.wharf(&[
        "run",
        "deploy",
        "color-api",
        "--image",
        &lab.image,
        "--allow-unauthenticated",
        "--set-env-vars=APP_VERSION=1.0.0",
        "--memory=256Mi",
        "--cpu=1",
        "--min-instances=0",
        "--max-instances=5",
    ]);
    let url = lab.wharf(&["run", "services", "describe", "color-api", "--format=value(status.url)"]);
    assert!(url.starts_with(&format!("http://{}:", service_host("color-api", "lab"))), "{url}");

    // Task 2: green, without traffic, with a tag and its own URL.
    lab.wharf(&[
        "run",
        "deploy",
        "color-api",
        "--image",
        &lab.image,
        "--set-env-vars=APP_VERSION=2.0.0",
        "--no-traffic",
        "--tag=green",
    ]);
    let green_url = lab.wharf(&["run", "services", "describe", "color-api", "--format=value(status.traffic[1].url)"]);
    assert!(
        green_url.trim().starts_with(&format!("http://green---{}:", service_host("color-api", "lab"))),
        "{green_url}"
    );
    let revisions = lab.wharf(&["run", "revisions", "list", "--service=color-api", "--format=value(metadata.name)"]);
    let names: Vec<&str> = revisions.lines().collect();
    let (green, blue) = (names[0].to_owned(), names[names.len() - 1].to_owned());
    assert_eq!(names.len(), 2, "{revisions}");
    let client = lab.client();
    assert_eq!(lab.who(&client, &format!("green---{}", service_host("color-api", "lab"))).await, green);
    assert_eq!(lab.count(&host(), 20, &blue).await, 20, "--no-traffic must leave all traffic on blue");

    // Task 3: canary, 10% to green, checked over 1,000 requests (within 3 points).
    lab.wharf(&["run", "services", "update-traffic", "color-api", &format!("--to-revisions={blue}=90,{green}=10")]);
    let yaml = lab.wharf(&["run", "services", "describe", "color-api", "--format=yaml(status.traffic)"]);
    assert!(yaml.contains("percent: 90") && yaml.contains("percent: 10") && yaml.contains("tag: green"), "{yaml}");
    let green_hits = lab.count(&host(), 1000, &green).await;
    assert!((70..=130).contains(&green_hits), "{green_hits} of 1000 went to green, expected 100 +- 30");

    // A restart keeps the split and the tag: the same revisions, percents and tags, and tag
    // URLs that differ only by the new ingress port.
    let before = lab.traffic();
    let expected = vec![
        (blue.clone(), 90, String::new(), String::new()),
        (green.clone(), 10, String::new(), String::new()),
        // As in Cloud Run, the tag is an entry of its own at 0%, with the tag's URL.
        (
            green.clone(),
            0,
            "green".to_owned(),
            format!("http://green---{}:{}", service_host("color-api", "lab"), lab.ingress_port()),
        ),
    ];
    let mut before_sorted = before.clone();
    before_sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(before_sorted, expected_sorted, "{yaml}");
    lab.server.restart().unwrap();
    let after = lab.traffic();
    let expected_after: Vec<_> = before
        .iter()
        .map(|(revision, percent, tag, url)| {
            let url = match url.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{}", lab.ingress_port()),
                None => url.clone(),
            };
            (revision.clone(), *percent, tag.clone(), url)
        })
        .collect();
    assert_eq!(after, expected_after, "the traffic split changed across the restart");
    assert_eq!(lab.who(&client, &format!("green---{}", service_host("color-api", "lab"))).await, green);

    // Task 4: full cutover to the latest (green).
    lab.wharf(&["run", "services", "update-traffic", "color-api", "--to-latest"]);
    assert_eq!(lab.count(&host(), 20, &green).await, 20);

    // Task 5: instant rollback to blue.
    lab.wharf(&["run", "services", "update-traffic", "color-api", &format!("--to-revisions={blue}=100")]);
    assert_eq!(lab.count(&host(), 20, &blue).await, 20);

    // Validation: nothing changes on bad traffic.
    let err = lab.wharf_err(&["run", "services", "update-traffic", "color-api", "--to-revisions=nope=100"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = lab.wharf_err(&["run", "services", "update-traffic", "color-api", "--set-tags=Bad_Tag=LATEST"]);
    assert!(err.contains("is invalid"), "{err}");
    let err = lab.wharf_err(&[
        "run",
        "services",
        "update-traffic",
        "color-api",
        &format!("--to-revisions={blue}=60,{green}=60"),
    ]);
    assert!(err.contains("sum to at most 100"), "{err}");
    // A revision that serves traffic or carries a tag cannot be deleted.
    let err = lab.wharf_err(&["run", "revisions", "delete", &blue, "--quiet"]);
    assert!(err.contains("serves 100% of traffic"), "{err}");
    let err = lab.wharf_err(&["run", "revisions", "delete", &green, "--quiet"]);
    assert!(err.contains("carries tag"), "{err}");
    lab.wharf(&["run", "services", "update-traffic", "color-api", "--remove-tags=green"]);
    lab.wharf(&["run", "revisions", "delete", &green, "--quiet"]);
    assert_eq!(lab.count(&host(), 5, &blue).await, 5);
}

#[tokio::test]
async fn no_request_fails_under_load_across_a_rollout() {
    let lab = Arc::new(Lab::start());
    lab.wharf(&["run", "deploy", "color-api", "--image", &lab.image, "--concurrency", "20"]);
    let blue =
        lab.wharf(&["run", "services", "describe", "color-api", "--format=value(status.latestReadyRevisionName)"]);
    let blue = blue.trim().to_owned();

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (lab, ok, failed, stop) = (lab.clone(), ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let client = lab.client();
            let mut tick = tokio::time::interval(Duration::from_millis(5)); // 200 requests per second
            let mut inflight = tokio::task::JoinSet::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.is_cancelled() && Instant::now() < deadline {
                tick.tick().await;
                let (client, url, ok, failed) =
                    (client.clone(), format!("http://{}/", lab.server.addrs.ingress_addr), ok.clone(), failed.clone());
                inflight.spawn(async move {
                    match client.get(url).header("Host", &host()).send().await {
                        Ok(r) if r.status().is_success() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("HTTP {}", r.status())),
                        Err(e) => failed.lock().unwrap().push(format!("error: {e}")),
                    }
                });
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    let step = |args: Vec<String>| {
        let lab = lab.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tokio::task::spawn_blocking({
                let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
                move || lab.wharf(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    tokio::time::sleep(Duration::from_secs(1)).await;
    step(s(&[
        "run",
        "deploy",
        "color-api",
        "--image",
        &lab.image,
        "--no-traffic",
        "--tag",
        "green",
        "--update-env-vars",
        "V=2",
    ]))
    .await;
    let revisions = lab.wharf(&["run", "revisions", "list", "--service=color-api", "--format=value(metadata.name)"]);
    let green = revisions.lines().next().unwrap().to_owned();
    step(s(&["run", "services", "update-traffic", "color-api", &format!("--to-revisions={blue}=90,{green}=10")])).await;
    step(s(&["run", "services", "update-traffic", "color-api", &format!("--to-revisions={blue}=50,{green}=50")])).await;
    step(s(&["run", "services", "update-traffic", "color-api", "--to-latest"])).await;
    step(s(&["run", "services", "update-traffic", "color-api", &format!("--to-revisions={blue}=100")])).await;
    stop.cancel();
    load.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 1000, "the load generator only completed {served} requests");
    assert_eq!(failed, Vec::<String>::new(), "{} of {} requests failed", failed.len(), served + failed.len());
}

#[tokio::test]
async fn session_affinity_keeps_a_client_on_its_instance() {
    let lab = Lab::start();
    lab.wharf(&["run", "deploy", "sticky", "--image", &lab.image, "--session-affinity", "--min-instances", "2"]);
    let host: &'static str = service_host("sticky", "lab").leak();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(lab.server.data_dir().join("instances")).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "min-instances never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = lab.client();
    let base = format!("http://{}", lab.server.addrs.ingress_addr);
    // Keep one instance busy so the next cookie-less request lands on the other one (B).
    let slow = {
        let (client, url) = (client.clone(), format!("{base}/sleep?ms=2000"));
        tokio::spawn(async move { client.get(url).header("Host", host).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = client.get(format!("{base}/hostname")).header("Host", host).send().await.unwrap();
    let cookie = first.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("wharf-affinity=sticky-"), "{cookie}");
    let b = first.text().await.unwrap();
    assert_eq!(slow.await.unwrap(), 200);
    // Without the cookie the least-loaded pick goes to the other instance (A) ...
    let a = client.get(format!("{base}/hostname")).header("Host", host).send().await.unwrap().text().await.unwrap();
    assert_ne!(a, b, "both requests reached one instance; the test cannot tell affinity from chance");
    // ... with it, every request returns to B.
    for _ in 0..20 {
        let r =
            client.get(format!("{base}/hostname")).header("Host", host).header("Cookie", &cookie).send().await.unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "the affinity moved");
        assert_eq!(r.text().await.unwrap(), b);
    }
}

/// A server whose instances may use 256 MiB in total runs two 128 MiB instances; a request
/// that needs a third gets a 429 that says why, and the parent cgroup holds the limit.
#[tokio::test]
async fn a_request_needing_an_instance_past_the_server_memory_limit_gets_429_with_the_reason() {
    let parent = format!("wharf/e2e-{}", std::process::id());
    let lab = Lab::start_with_env(&[("WHARF_INSTANCE_MEMORY_LIMIT", "256Mi"), ("WHARF_CGROUP_PARENT", &parent)]);
    let limit = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"].iter().find_map(|h| {
        std::fs::read_to_string(Path::new(h).join(&parent).join("memory.limit_in_bytes"))
            .ok()
            .or_else(|| std::fs::read_to_string(Path::new(h).join(&parent).join("memory.max")).ok())
    });
    assert_eq!(limit.map(|l| l.trim().to_owned()), Some((256u64 << 20).to_string()));
    lab.wharf(&["run", "deploy", "full", "--image", &lab.image, "--concurrency", "1", "--memory", "128Mi"]);
    let client = lab.client();
    let (base, host): (String, &'static str) =
        (format!("http://{}", lab.server.addrs.ingress_addr), service_host("full", "lab").leak());
    // Two requests keep two instances busy for a while (the second starts the second
    // instance); every further request needs a third instance. On a loaded machine the two
    // cold starts can take seconds, so the busy requests last long enough to be seen.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}/sleep?ms=25000"));
            tokio::spawn(async move { client.get(url).header("Host", host).send().await.unwrap().status().as_u16() })
        })
        .collect();
    // The probes start only once both busy requests hold an instance: a probe sent earlier
    // could take an instance itself and leave a busy request the 429.
    let started = Instant::now() + Duration::from_secs(20);
    while lab.instances() < 2 {
        assert!(Instant::now() < started, "two instances did not start in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(24);
    let (status, body) = loop {
        let r = client.get(format!("{base}/")).header("Host", host).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
    };
    let mut busy_statuses = Vec::new();
    for b in busy {
        busy_statuses.push(b.await.unwrap());
    }
    assert_eq!(busy_statuses, [200, 200]);
    let instances = lab.instances();
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("wharf: no capacity: instances use 256 MiB of 256 MiB (--instance-memory-limit); this instance needs 128 MiB"),
        "{body}"
    );
    assert_eq!(instances, 2, "no third instance was started");
}
