//! Instance networking. Each instance gets its own network namespace (`wharf-<id>`, bound
//! under `/run/netns` so `ip netns` shows it) with loopback up and one veth, `eth0`, holding a
//! /32 address from the instance subnet (default 10.213.0.0/16). The host end (`wh<id>`) has
//! no address: a host route sends the instance's /32 to it, and proxy ARP answers for the
//! instance's gateway 169.254.1.1. So the platform reaches `<ip>:<port>` with an ordinary
//! connect, and the instance reaches the world through NAT (masquerade).
//!
//! What an instance may reach is the egress policy in [`host`] (nftables, table
//! `inet wharf_instances`): the public internet, and of the host only Wharf's own services,
//! which this module maps per instance interface ([`InstanceServices`]):
//!
//! | instance connects to | is DNAT'd to |
//! |---|---|
//! | `169.254.169.254:53` (UDP, TCP) | the server's DNS resolver (`wharf-metadata`) |
//! | `169.254.169.254:80` | the server's metadata HTTP server |
//! | `169.254.1.2:<ingress port>` | the server's ingress (service URL hosts resolve here) |
//!
//! Everything else of the host (every address, loopback included), link-local and private
//! ranges, other instances and IPv6 are refused. Packets to 169.254.169.254 are either
//! DNAT'd to a local listener or dropped: none leaves the machine.
//!
//! Setup shells out to `ip` and `nft` (iproute2, nftables), batching commands to keep a
//! start to a handful of process spawns.

mod host;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::error::RuntimeError;
pub use host::BLOCKED_IPV4;

/// The gateway address instances route through; the host answers ARP for it.
const GATEWAY: &str = "169.254.1.1";
/// Where instances find the metadata server and the DNS resolver, as on Google's VMs.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Where instances reach the ingress: the DNS resolver answers service URL hosts with it.
pub const INGRESS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 2);
pub const DNS_PORT: u16 = 53;
/// Every instance's `/etc/resolv.conf`: Wharf's resolver, as on Google's VMs (whose search
/// list ends in `google.internal`, so `metadata` alone resolves too).
pub const INSTANCE_RESOLV_CONF: &str = "nameserver 169.254.169.254\nsearch google.internal\n";
pub const METADATA_HTTP_PORT: u16 = 80;

/// The host-side listeners of one server that its instances reach through DNAT. Each must
/// listen on an IPv4 address of the host (loopback is fine: instance interfaces get
/// `route_localnet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceServices {
    /// The DNS resolver, on UDP and TCP at the same port.
    pub dns: SocketAddrV4,
    /// The metadata HTTP server.
    pub metadata: SocketAddrV4,
    /// The ingress; instances use the same port at [`INGRESS_ADDR`] (the port in service URLs).
    pub ingress: Option<SocketAddrV4>,
}

impl InstanceServices {
    /// `(address the instance uses, port, host-side listener)` for each service.
    fn mappings(&self) -> Vec<(Ipv4Addr, u16, SocketAddrV4)> {
        let mut m = vec![(METADATA_ADDR, DNS_PORT, self.dns), (METADATA_ADDR, METADATA_HTTP_PORT, self.metadata)];
        if let Some(ingress) = self.ingress {
            m.push((INGRESS_ADDR, ingress.port(), ingress));
        }
        m
    }
}

/// An instance's network, everything needed to tear it down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceNetwork {
    pub netns: String,
    pub host_interface: String,
    pub ip: Ipv4Addr,
    /// The `(address, port)` keys of this interface's elements in the services map.
    #[serde(default)]
    pub service_keys: Vec<(Ipv4Addr, u16)>,
}

impl InstanceNetwork {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// The instance subnet (address, prefix length): every instance's address is in it, which is
/// how the ingress tells Wharf's instances (internal traffic) from other clients.
pub const INSTANCE_SUBNET: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(10, 213, 0, 0), 16);

/// The host side of instance networking.
#[derive(Debug, Clone)]
pub struct Network {
    /// First two octets of the /16 instance subnet.
    prefix: [u8; 2],
    /// This user's registration file name: `<pid>-<unique>`.
    holder: String,
    /// Where this server's instances find its DNS, metadata and ingress; `None` leaves them
    /// unmapped (instances then have no DNS: only tests of the runtime alone do that).
    services: Option<InstanceServices>,
}

impl Network {
    pub fn new(services: Option<InstanceServices>) -> Network {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let [a, b, _, _] = INSTANCE_SUBNET.0.octets();
        Network { prefix: [a, b], holder: format!("{}-{}", std::process::id(), &unique[..12]), services }
    }

    pub fn services(&self) -> Option<&InstanceServices> {
        self.services.as_ref()
    }
}

pub(crate) async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), RuntimeError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let describe = || format!("{program} {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|e| RuntimeError::CommandFailed {
        command: describe(),
        status: "not started".to_owned(),
        stderr: format!("{e} (is {program} installed?)"),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(RuntimeError::io("write to", program))?;
    }
    let output = child.wait_with_output().await.map_err(RuntimeError::io("wait for", program))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::CommandFailed {
            command: describe(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Writes a per-interface sysctl under `/proc/sys/net/<path>`.
fn set_interface_sysctl(path: &str, value: &str, what: &'static str) -> Result<(), RuntimeError> {
    let path = format!("/proc/sys/net/{path}");
    std::fs::write(&path, value).map_err(RuntimeError::io(what, &path))
}

impl Network {
    pub fn subnet(&self) -> String {
        format!("{}.{}.0.0/16", self.prefix[0], self.prefix[1])
    }

    /// Registers this user of the host rules, enables forwarding (recording its old value)
    /// and installs the egress policy (the same for every wharf server on the machine;
    /// reinstalling it is atomic and keeps other servers' per-instance mappings).
    pub async fn setup_host(&self) -> Result<(), RuntimeError> {
        let _lock = host::lock_holders().await?;
        host::register(&self.holder)?;
        let installed = run("nft", &["-f", "-"], Some(&host::ruleset(&self.subnet()))).await;
        if installed.is_err() {
            host::unregister(&self.holder);
        }
        installed
    }

    /// Unregisters this user of the host rules; if it was the last one (servers that died
    /// unregistered are not counted) and no instance veth is left, removes the rules and
    /// restores `ip_forward`.
    pub async fn teardown_host(&self) {
        let _lock = match host::lock_holders().await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the host-network lock; leaving the host rules in place");
                return;
            }
        };
        host::unregister(&self.holder);
        let others = host::live_holders();
        if !others.is_empty() {
            tracing::debug!(?others, "other servers use the host rules; keeping them");
            return;
        }
        let links = Command::new("ip").args(["-o", "link", "show"]).output().await;
        let in_use = links.map(|o| String::from_utf8_lossy(&o.stdout).contains(": wh")).unwrap_or(true);
        if !in_use {
            host::remove_rules().await;
            host::restore_sysctls();
        }
    }

    /// Creates the namespace and veth of instance `id`. On failure nothing is left behind.
    pub async fn create(&self, id: &str) -> Result<InstanceNetwork, RuntimeError> {
        let netns = format!("wharf-{id}");
        let host_interface = format!("wh{}", &id[..id.len().min(12)]);
        run("ip", &["netns", "add", &netns], None).await?;
        let mut net = InstanceNetwork { netns, host_interface, ip: Ipv4Addr::UNSPECIFIED, service_keys: Vec::new() };
        match self.configure(&mut net).await {
            Ok(()) => Ok(net),
            Err(e) => {
                self.destroy(&net).await;
                Err(e)
            }
        }
    }

    async fn configure(&self, net: &mut InstanceNetwork) -> Result<(), RuntimeError> {
        let host_if = net.host_interface.clone();
        let host_batch =
            format!("link add {host_if} type veth peer name eth0 netns {}\nlink set {host_if} up\n", net.netns);
        run("ip", &["-batch", "-"], Some(&host_batch)).await?;
        set_interface_sysctl(&format!("ipv4/conf/{host_if}/proxy_arp"), "1", "enable proxy ARP in")?;
        // Proxy ARP answers after a random delay of up to 0.8 s by default; the instance's
        // first reply waits on that answer, so without this a start takes hundreds of ms.
        set_interface_sysctl(&format!("ipv4/neigh/{host_if}/proxy_delay"), "0", "set proxy ARP delay in")?;
        // DNAT to the server's loopback listeners needs loopback destinations accepted from
        // this interface; the egress policy rejects every other packet to them.
        set_interface_sysctl(&format!("ipv4/conf/{host_if}/route_localnet"), "1", "allow DNAT to loopback in")?;
        // Instances get no IPv6: no link-local address on the host end either. A kernel booted
        // without IPv6 has no such file, and nothing to disable.
        let no_ipv6 = format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6");
        match std::fs::write(&no_ipv6, "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(RuntimeError::io("disable IPv6 in", &no_ipv6))?,
        }
        if let Some(services) = &self.services {
            self.map_services(net, services).await?;
        }
        // Claim an address by adding its host route: the kernel refuses a duplicate, which
        // keeps concurrent wharf servers (and instances) from sharing one.
        net.ip = self.claim_address(&host_if).await?;
        let ns_batch = format!(
            "link set lo up\naddr add {ip}/32 dev eth0\nlink set eth0 up\n\
             route add {GATEWAY} dev eth0 scope link\nroute add default via {GATEWAY} dev eth0\n",
            ip = net.ip
        );
        run("ip", &["-n", &net.netns, "-batch", "-"], Some(&ns_batch)).await
    }

    /// Adds this interface's DNAT elements to the services map, recording their keys in `net`
    /// first so that a failure half-way is still cleaned up.
    async fn map_services(&self, net: &mut InstanceNetwork, services: &InstanceServices) -> Result<(), RuntimeError> {
        let mappings = services.mappings();
        net.service_keys = mappings.iter().map(|(addr, port, _)| (*addr, *port)).collect();
        let elements: Vec<String> = mappings
            .iter()
            .map(|(addr, port, to)| {
                format!("\"{}\" . {addr} . {port} : {} . {}", net.host_interface, to.ip(), to.port())
            })
            .collect();
        let command =
            format!("add element inet {} {} {{ {} }}\n", host::TABLE, host::SERVICES_MAP, elements.join(", "));
        run("nft", &["-f", "-"], Some(&command)).await
    }

    async fn claim_address(&self, host_if: &str) -> Result<Ipv4Addr, RuntimeError> {
        let mut seed = u16::from_le_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[1, 0]));
        for _ in 0..64 {
            seed = seed.wrapping_mul(25173).wrapping_add(13849);
            let [hi, lo] = seed.to_be_bytes();
            if lo == 0 || lo == 255 {
                continue;
            }
            let ip = Ipv4Addr::new(self.prefix[0], self.prefix[1], hi, lo);
            match run("ip", &["route", "add", &format!("{ip}/32"), "dev", host_if, "scope", "link"], None).await {
                Ok(()) => return Ok(ip),
                Err(RuntimeError::CommandFailed { stderr, .. }) if stderr.contains("File exists") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RuntimeError::AddressesExhausted(self.subnet()))
    }

    /// Deletes the namespace, which takes the veth pair and the host route with it, and the
    /// interface's DNAT elements.
    pub async fn destroy(&self, net: &InstanceNetwork) {
        if let Err(e) = run("ip", &["netns", "delete", &net.netns], None).await {
            tracing::warn!(netns = %net.netns, error = %e, "deleting network namespace failed");
        }
        // The veth normally dies with the namespace; make sure, for a half-built network.
        if std::path::Path::new("/sys/class/net").join(&net.host_interface).exists() {
            let _ = run("ip", &["link", "delete", &net.host_interface], None).await;
        }
        if !net.service_keys.is_empty() {
            // Added in one transaction, so either all of them exist or none does.
            let keys: Vec<String> = net
                .service_keys
                .iter()
                .map(|(addr, port)| format!("\"{}\" . {addr} . {port}", net.host_interface))
                .collect();
            let command =
                format!("delete element inet {} {} {{ {} }}\n", host::TABLE, host::SERVICES_MAP, keys.join(", "));
            if let Err(e) = run("nft", &["-f", "-"], Some(&command)).await {
                tracing::debug!(interface = %net.host_interface, error = %e, "removing DNAT elements failed");
            }
        }
    }
}
