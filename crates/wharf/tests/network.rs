//! The network sandbox end to end, attacked from inside real instances of a real server:
//!
//! - egress: an instance cannot open a connection to the host's primary address, to its
//!   loopback, or to a link-local or private address of this machine (added to `lo` by the
//!   test), nor to 169.254.169.254 beyond Wharf's own services there; it does reach a
//!   "public" host (198.51.100.7, TEST-NET-2, in a network namespace the test creates and
//!   routes to) and Wharf's metadata server.
//! - DNS: instances resolve `metadata.google.internal` and the hosts of the server's service
//!   URLs (and fetch one service's URL from inside another), and other names through the
//!   upstream resolver of `--upstream-resolv-conf`, here a resolver the test runs on loopback.
//!
//! - VPC egress: only a service deployed with `--network` (a network of the server's
//!   `--vpc-network`) reaches a private address of this machine in that network's range.
//!
//! Every listener is the test's own; every address is on this machine or in a namespace the
//! test made; guards remove addresses, namespaces, links and routes also when a test fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wharf_testsupport::dns::UpstreamResolver;
use wharf_testsupport::{WharfServer, service_host, testapp_image};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A number in 1..=250 that differs between test processes running at once, for addresses
/// and names this test adds to the machine.
fn unique() -> u32 {
    std::process::id() % 250 + 1
}

/// A server with the testapp image imported and one service per name deployed in project
/// `demo`.
struct Env {
    server: WharfServer,
    _work: tempfile::TempDir,
}

impl Env {
    fn start(server_env: &[(&str, &str)], services: &[&str]) -> Env {
        let work = tempfile::tempdir().unwrap();
        let built = testapp_image(work.path(), "v1").unwrap();
        let server = WharfServer::start_with_env(wharf(), server_env).unwrap();
        let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let image = format!("{}/testapp:v1", server.addrs.registry_addr);
        for service in services {
            let args = ["run", "deploy", service, "--image", &image, "--project", "demo", "--region", "us-central1"];
            let out = server.cli(&[&args[..], &["--allow-unauthenticated"]].concat()).unwrap();
            assert!(out.status.success(), "deploy {service}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Env { server, _work: work }
    }

    fn ingress_port(&self) -> &str {
        self.server.addrs.ingress_addr.rsplit(':').next().unwrap()
    }

    /// GET `path` of service `service` (in project demo) through the ingress.
    async fn get(&self, service: &str, path: &str) -> (u16, String) {
        let client = self.server.client_builder().timeout(Duration::from_secs(60)).build().unwrap();
        let sent = client
            .get(format!("http://{}{path}", self.server.addrs.ingress_addr))
            .header("Host", service_host(service, "demo"))
            .send()
            .await;
        let response = match sent {
            Ok(r) => (r.status().as_u16(), r.text().await),
            Err(e) => (0, Err(e)),
        };
        match response {
            (status, Ok(body)) => (status, body),
            (_, Err(e)) => {
                let log = self.server.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("GET {path} on {service}: {e:?}\n--- server.log (end) ---\n{}", tail.join("\n"))
            }
        }
    }
}

/// The host's source address towards the outside (asks the routing table; sends nothing).
fn host_primary_address() -> Ipv4Addr {
    let out = Command::new("ip").args(["-o", "-4", "route", "get", "192.0.2.1"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "src").expect("a source address");
    words.next().unwrap().parse().unwrap()
}

/// Addresses added to `lo` for the test (scope host), removed on drop.
struct LoopbackAddresses(Vec<String>);

impl LoopbackAddresses {
    fn add(addrs: &[Ipv4Addr]) -> LoopbackAddresses {
        let mut added = LoopbackAddresses(Vec::new());
        for addr in addrs {
            let cidr = format!("{addr}/32");
            // Scope host: the kernel never picks it as the source of the host's own connections
            // (the proxy's to instances of servers running in parallel would break when it goes).
            ip(&["addr", "add", &cidr, "dev", "lo", "scope", "host"]);
            added.0.push(cidr);
        }
        added
    }
}

impl Drop for LoopbackAddresses {
    fn drop(&mut self) {
        for cidr in &self.0 {
            let _ = Command::new("ip").args(["addr", "del", cidr, "dev", "lo"]).output();
        }
    }
}

/// "A public host": a network namespace holding 198.51.100.7/32 behind a veth, with a host
/// route to it, so an instance reaches it only through the host's forwarding and NAT. No
/// traffic leaves the machine. Removed on drop.
struct PublicHost {
    netns: String,
    host_link: String,
    addr: Ipv4Addr,
}

impl PublicHost {
    fn create() -> PublicHost {
        let n = unique();
        // Names that match neither wharf's (`wharf-*`, `wh*`) nor its rules.
        let host = PublicHost {
            netns: format!("wharf-test-pub-{n}"),
            host_link: format!("tpub{n}h"),
            addr: Ipv4Addr::new(198, 51, 100, 7),
        };
        ip(&["netns", "add", &host.netns]);
        ip(&["link", "add", &host.host_link, "type", "veth", "peer", "name", "eth0", "netns", &host.netns]);
        ip(&["link", "set", &host.host_link, "up"]);
        ip(&["-n", &host.netns, "addr", "add", &format!("{}/32", host.addr), "dev", "eth0"]);
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &host.netns, "link", "set", "lo", "up"]);
        ip(&["-n", &host.netns, "route", "add", "default", "dev", "eth0"]);
        ip(&["route", "add", &format!("{}/32", host.addr), "dev", &host.host_link]);
        host
    }

    /// A listener inside the namespace: bound from a thread that entered it, the socket
    /// stays in that namespace.
    fn listen(&self, port: u16) -> std::net::TcpListener {
        let path = Path::new("/run/netns").join(&self.netns);
        let addr = SocketAddr::from((self.addr, port));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for PublicHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", &format!("{}/32", self.addr)]).output();
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "delete", &self.host_link]).output();
    }
}

/// Whether a connection is waiting on `listener` (non-blocking: an instance's connect that
/// reported success has put it there already; a refused one never does).
fn has_pending_connection(listener: &std::net::TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[tokio::test]
async fn instances_reach_the_internet_and_wharfs_services_but_nothing_else_of_the_host() {
    let env = Env::start(&[], &["probe"]);
    let n = u8::try_from(unique()).unwrap();
    let (link_local, private) = (Ipv4Addr::new(169, 254, 77, n), Ipv4Addr::new(10, 77, 0, n));
    let _lo = LoopbackAddresses::add(&[link_local, private]);
    let public = PublicHost::create();

    let targets = [
        ("the host's primary address", host_primary_address()),
        ("the host's loopback", Ipv4Addr::LOCALHOST),
        ("a link-local address of the host", link_local),
        ("a private address of the host", private),
    ];
    let mut listeners = Vec::new();
    for (what, addr) in targets {
        let listener = std::net::TcpListener::bind((addr, 0)).unwrap();
        // Control: the listener works, from the host itself.
        std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(has_pending_connection(&listener), "{what}: the host cannot reach its own listener");
        listeners.push((what, listener));
    }

    let mut reached = Vec::new();
    for (what, listener) in &listeners {
        let target = listener.local_addr().unwrap();
        let (status, body) = env.get("probe", &format!("/connect?addr={target}")).await;
        if status == 200 || has_pending_connection(listener) {
            reached.push(format!("{what} ({target}): {status} {body}"));
        }
    }
    // Cloud metadata must never be fetched from outside the machine: only Wharf's ports
    // there answer, everything else at 169.254.169.254 is refused.
    let (status, body) = env.get("probe", "/connect?addr=169.254.169.254:8080").await;
    if status == 200 {
        reached.push(format!("169.254.169.254:8080: {body}"));
    }
    assert_eq!(reached, Vec::<String>::new(), "instances reached what the egress policy forbids");

    let (status, body) = env.get("probe", "/fetch?addr=169.254.169.254:80&path=/computeMetadata/v1/").await;
    assert_eq!(status, 200, "{body}");
    // Wharf's metadata server (a request without Metadata-Flavor is refused, as Google's is).
    assert!(body.starts_with("HTTP/1.1 403"), "{body}");
    assert!(body.to_ascii_lowercase().contains("metadata-flavor: google"), "{body}");
    assert!(body.contains("Missing Metadata-Flavor:Google header"), "{body}");

    let listener = tokio::net::TcpListener::from_std({
        let l = public.listen(8099);
        l.set_nonblocking(true).unwrap();
        l
    })
    .unwrap();
    let (status, body) = env.get("probe", &format!("/connect?addr={}:8099", public.addr)).await;
    assert_eq!((status, body.as_str()), (200, "connected\n"), "no egress to a public address");
    let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
    let (_, peer) = accepted.expect("the public host saw no connection").unwrap();
    // Masqueraded: the public host sees the machine, not the instance's private address.
    assert!(!peer.ip().to_string().starts_with("10.213."), "not masqueraded: {peer}");
}

/// VPC egress, Cloud Run's opt-in to private ranges: the server allows network `office` (a
/// /24 of its own in 10.79.0.0/16); a service deployed with `--network office` reaches a
/// listener on a private address of this machine in that range, a service without it does
/// not, the same for a job's task, and a revision or job naming a network the server lacks is
/// refused naming `office`.
#[tokio::test]
async fn only_instances_that_opt_into_a_vpc_network_reach_its_private_ranges() {
    let n = u8::try_from(unique()).unwrap();
    let cidr = format!("office=10.79.{n}.0/24");
    let env = Env::start(&[("WHARF_VPC_NETWORKS", &cidr)], &["plain"]);
    let private = Ipv4Addr::new(10, 79, n, 1);
    let _lo = LoopbackAddresses::add(&[private]);
    let listener = std::net::TcpListener::bind((private, 0)).unwrap();
    let target = listener.local_addr().unwrap();

    let image = format!("{}/testapp:v1", env.server.addrs.registry_addr);
    let deploy = |service: &str, extra: &[&str]| {
        let args = ["run", "deploy", service, "--image", &image, "--project", "demo", "--region", "us-central1"];
        env.server.cli(&[&args[..], extra].concat()).unwrap()
    };
    let out = deploy("vpc", &["--network", "office", "--subnet", "office", "--vpc-egress", "private-ranges-only"]);
    assert!(out.status.success(), "deploy with --network: {}", String::from_utf8_lossy(&out.stderr));

    // Without the opt-in: refused, as every private address is.
    let (status, body) = env.get("plain", &format!("/connect?addr={target}")).await;
    assert!(status != 200 && !body.starts_with("connected"), "a service without vpcAccess reached {target}: {body}");
    assert!(!has_pending_connection(&listener), "a service without vpcAccess reached {target}");
    // With it: reached.
    let (status, body) = env.get("vpc", &format!("/connect?addr={target}")).await;
    assert_eq!((status, body.as_str()), (200, "connected\n"), "the opted-in service did not reach {target}");
    assert!(has_pending_connection(&listener), "no connection from the opted-in service");
    // The rest of the private ranges stay closed to it.
    let (status, body) = env.get("vpc", &format!("/connect?addr={}:9", host_primary_address())).await;
    assert!(status != 200 && !body.starts_with("connected"), "vpcAccess opened the host's primary address: {body}");

    // The opt-in round-trips through the API and the Knative export.
    let out = env
        .server
        .cli(&[
            "run",
            "services",
            "describe",
            "vpc",
            "--project",
            "demo",
            "--region",
            "us-central1",
            "--format",
            "export",
        ])
        .unwrap();
    let export = String::from_utf8_lossy(&out.stdout);
    assert!(export.contains("run.googleapis.com/network-interfaces"), "{export}");
    assert!(export.contains("run.googleapis.com/vpc-access-egress: private-ranges-only"), "{export}");

    // A job opts in the same way: its task reaches the address, a task of a job without
    // the opt-in does not.
    let job_reaches = |job: &str, extra: &[&str]| -> String {
        let create = [
            "run",
            "jobs",
            "create",
            job,
            "--image",
            &image,
            "--project",
            "demo",
            "--region",
            "us-central1",
            "--args",
            "job",
            "--set-env-vars",
            &format!("TESTAPP_CONNECT={target}"),
        ];
        let out = env.server.cli(&[&create[..], extra].concat()).unwrap();
        assert!(out.status.success(), "jobs create {job}: {}", String::from_utf8_lossy(&out.stderr));
        let run = ["run", "jobs", "execute", job, "--wait", "--project", "demo", "--region", "us-central1"];
        let out = env.server.cli(&run).unwrap();
        assert!(out.status.success(), "jobs execute {job}: {}", String::from_utf8_lossy(&out.stderr));
        let logs = env.server.cli(&["logs", "read", "--job", job, "--limit", "50"]).unwrap();
        String::from_utf8_lossy(&logs.stdout).into_owned()
    };
    let logs = job_reaches("plain-job", &[]);
    assert!(logs.contains(&format!("connect {target}: ")) && !logs.contains("connected"), "{logs}");
    assert!(!has_pending_connection(&listener), "a job without vpcAccess reached {target}");
    let logs =
        job_reaches("vpc-job", &["--network", "office", "--subnet", "office", "--vpc-egress", "private-ranges-only"]);
    assert!(logs.contains(&format!("connect {target}: connected")), "the opted-in job did not reach {target}: {logs}");
    assert!(has_pending_connection(&listener), "no connection from the opted-in job");

    // Unknown networks are refused at deploy, naming the known ones.
    let out = deploy("other", &["--vpc-connector", "projects/demo/locations/us-central1/connectors/lab"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("\"lab\"") && stderr.contains("office"), "{stderr}");
    let job = [
        "run",
        "jobs",
        "create",
        "j",
        "--image",
        &image,
        "--project",
        "demo",
        "--region",
        "us-central1",
        "--network",
        "lab",
    ];
    let out = env.server.cli(&job).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("\"lab\"") && stderr.contains("office"), "{stderr}");
}

#[tokio::test]
async fn instances_resolve_wharfs_names_and_forward_the_rest_to_the_hosts_resolver() {
    let work = tempfile::tempdir().unwrap();
    let n = u8::try_from(unique()).unwrap();
    // On loopback, as systemd-resolved would be: reachable only by forwarding on the host.
    let upstream =
        UpstreamResolver::start(Ipv4Addr::new(127, 77, 0, n), "upstream-only.wharf-test", [203, 0, 113, 9].into());
    let resolv_conf = work.path().join("resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {}\n", upstream.addr)).unwrap();
    let env = Env::start(
        &[("WHARF_UPSTREAM_RESOLV_CONF", resolv_conf.to_str().unwrap()), ("WHARF_LOG", "info,wharf_metadata=debug")],
        &["target", "caller"],
    );

    let resolve = async |name: &str| env.get("caller", &format!("/resolve?name={name}")).await;
    assert_eq!(resolve("metadata.google.internal").await, (200, "169.254.169.254\n".to_owned()));
    assert_eq!(resolve("metadata").await, (200, "169.254.169.254\n".to_owned()), "search google.internal");
    assert_eq!(resolve(&service_host("target", "demo")).await, (200, "169.254.1.2\n".to_owned()));
    assert_eq!(resolve("upstream-only.wharf-test").await, (200, "203.0.113.9\n".to_owned()));
    assert!(upstream.asked.lock().unwrap().iter().any(|name| name == "upstream-only.wharf-test"));
    let (status, body) = resolve("unknown.wharf-test").await;
    assert_ne!(status, 200, "{body}");
    // Wharf answers its own names itself: the upstream never saw them.
    let asked = upstream.asked.lock().unwrap().clone();
    assert!(!asked.iter().any(|name| name.starts_with("metadata") || name.ends_with(".localhost")), "{asked:?}");

    // A service's URL works from inside another service's instance (with credentials: services
    // are private).
    let url_host = format!("{}:{}", service_host("target", "demo"), env.ingress_port());
    let auth = format!("Authorization:%20Bearer%20{}", env.server.token);
    let (status, body) = env.get("caller", &format!("/fetch?addr={url_host}&path=/&header={auth}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("Hello from target-00001-"), "{body}");
}
