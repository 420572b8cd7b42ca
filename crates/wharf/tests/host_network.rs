//! Two wharf servers on one machine share the host network rules (the egress policy, NAT,
//! the DNAT of each server's instances to its own DNS resolver): stopping one must not take
//! them from the other. The "outside" is a network namespace this test makes, reached only
//! through the host's forwarding and NAT; no traffic leaves the machine.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf_testsupport::image::testapp_binary;
use wharf_testsupport::{WharfServer, service_host, testapp_image, wait_until};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace standing for "the outside": a veth to the host holding 198.51.100.1/30
/// (TEST-NET-2) on the host side and .2 inside, with no route back to the instance subnet, so
/// an instance reaches it only if the host masquerades its traffic. The test app listens
/// inside on port 8099. Removed on drop, also when the test panics.
struct Outside {
    netns: String,
    host_link: String,
    app: Option<Child>,
    addr: SocketAddr,
}

impl Outside {
    fn start() -> Outside {
        let id = std::process::id() % 100_000;
        // Names that match neither wharf's (`wharf-*`, `wh*`) nor its isolation rule.
        let netns = format!("outside-test-{id}");
        let host_link = format!("otst{id}h");
        let mut outside = Outside {
            netns: netns.clone(),
            host_link: host_link.clone(),
            app: None,
            addr: "198.51.100.2:8099".parse().unwrap(),
        };
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        ip(&["addr", "add", "198.51.100.1/30", "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&["-n", &netns, "addr", "add", "198.51.100.2/30", "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let app = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(testapp_binary().unwrap())
            .env("PORT", "8099")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        outside.app = Some(app);
        wait_until("the outside app to listen", Duration::from_secs(10), || {
            let out = Command::new("ip").args(["netns", "exec", &netns, "ss", "-ltn"]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).contains(":8099").then_some(())
        })
        .unwrap();
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut app) = self.app.take() {
            let _ = app.kill();
            let _ = app.wait();
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "delete", &self.host_link]).output();
    }
}

struct Node {
    server: WharfServer,
    image: String,
}

fn node(work: &Path, idle: &str) -> Node {
    let built = testapp_image(work, "v1").unwrap();
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_IDLE_TIMEOUT", idle)]).unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{}/testapp:v1", server.addrs.registry_addr);
    Node { server, image }
}

impl Node {
    fn deploy(&self, service: &str) {
        let out = self
            .server
            .cli(&["run", "deploy", service, "--image", &self.image, "--project", "net", "--max-instances", "1"])
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    async fn get(&self, service: &str, path: &str) -> (u16, String) {
        let client = self.server.client_builder().timeout(Duration::from_secs(30)).build().unwrap();
        let r = client
            .get(format!("http://{}{path}", self.server.addrs.ingress_addr))
            .header("Host", service_host(service, "net"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    fn instances(&self) -> Vec<String> {
        std::fs::read_dir(self.server.data_dir().join("instances"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// The address of the instance that answers `service`, as the instance sees it.
    async fn instance_addr(&self, service: &str) -> String {
        let (status, ip) = self.get(service, "/ip").await;
        assert_eq!(status, 200, "{ip}");
        assert!(ip.starts_with("10.213."), "{ip}");
        format!("{}:8080", ip.trim())
    }

    /// Checks from inside `from`'s instance: egress through NAT to the outside namespace
    /// works, its server's DNS resolver answers (its DNAT mapping is in place), and `to`'s
    /// instance cannot be reached.
    async fn check_network(&self, from: &str, to: &str, outside: &Outside, when: &str) {
        let (status, body) = self.get(from, "/resolve?name=metadata.google.internal").await;
        assert_eq!((status, body.as_str()), (200, "169.254.169.254\n"), "{when}: no DNS in {from}'s instance");
        let (status, body) = self.get(from, &format!("/connect?addr={}", outside.addr)).await;
        assert_eq!((status, body.as_str()), (200, "connected\n"), "{when}: no egress (NAT) from {from}'s instance");
        let target = self.instance_addr(to).await;
        let (status, body) = self.get(from, &format!("/connect?addr={target}")).await;
        assert_ne!(status, 200, "{when}: {from}'s instance reached {to}'s at {target}: {body}");
    }
}

#[tokio::test]
async fn stopping_one_server_keeps_the_other_servers_host_network() {
    let work = tempfile::tempdir().unwrap();
    let outside = Outside::start();
    let mut first = node(work.path(), "60s");
    let second = node(&work.path().join("second"), "1s");
    first.deploy("alpha");
    second.deploy("beta");
    second.deploy("gamma");
    second.check_network("beta", "gamma", &outside, "with both servers running").await;
    let (status, _) = first.get("alpha", "/").await;
    assert_eq!(status, 200);

    // The second server idles down to no instances (no instance veth left on its side), then
    // the first stops: the shared rules must stay for the second.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !second.instances().is_empty() {
        assert!(Instant::now() < deadline, "the second server's instances never idled out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leftovers = first.server.stop_and_check().unwrap();
    assert_eq!(leftovers, Vec::new(), "the first server left things behind");

    // New instances of the second server: ingress, egress through NAT, and isolation.
    let (status, body) = second.get("beta", "/").await;
    assert_eq!(status, 200, "no ingress after the other server stopped: {body}");
    second.check_network("beta", "gamma", &outside, "after the other server stopped").await;
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(tables.contains("table inet wharf_instances"), "{tables}");
}
