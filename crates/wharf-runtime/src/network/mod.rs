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
//! Everything is done over netlink ([`rtnl`] for namespaces, links, addresses and routes;
//! [`nft`] for the nftables rules and maps): no `ip` or `nft` binary is needed, and an
//! instance start spawns no process for its network.

mod host;
mod netlink;
mod nft;
mod rtnl;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use crate::error::RuntimeError;
pub use host::BLOCKED_IPV4;
pub use netlink::NetlinkError;
use rtnl::Rtnl;

/// The gateway address instances route through; the host answers ARP for it.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
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
    fn mappings(&self, reach: ServiceReach) -> Vec<(Ipv4Addr, u16, SocketAddrV4)> {
        if reach == ServiceReach::DnsOnly {
            return vec![(METADATA_ADDR, DNS_PORT, self.dns)];
        }
        let mut m = vec![(METADATA_ADDR, DNS_PORT, self.dns), (METADATA_ADDR, METADATA_HTTP_PORT, self.metadata)];
        if let Some(ingress) = self.ingress {
            m.push((INGRESS_ADDR, ingress.port(), ingress));
        }
        m
    }
}

/// Which of the server's [`InstanceServices`] a network reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceReach {
    /// DNS, metadata and the ingress: an instance.
    All,
    /// Only the DNS resolver: a build's `RUN` steps, which have no identity for the metadata
    /// server and no business with the server's services (their packets to 169.254.169.254:80
    /// and to the ingress address have no DNAT element and are dropped by the policy).
    DnsOnly,
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
    /// Whether this interface has (or may have) an element in the VPC access map.
    #[serde(default)]
    pub vpc_mapped: bool,
}

/// A private network instances may opt into (`vpcAccess` of their revision or job): a name
/// and the address ranges it stands for, from the server's `--vpc-network NAME=CIDR,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcNetwork {
    pub name: String,
    pub cidrs: Vec<(Ipv4Addr, u8)>,
}

/// Ranges no VPC network may include: what the egress policy must hold whatever the
/// configuration says (loopback, link-local with the metadata address, "this" network,
/// multicast and reserved) and the instance subnet (instances never reach each other).
const NEVER_VPC: [&str; 5] = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "10.213.0.0/16"];

fn overlaps((a, a_len): (Ipv4Addr, u8), (b, b_len): (Ipv4Addr, u8)) -> bool {
    let len = a_len.min(b_len);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(a) & mask == u32::from(b) & mask
}

impl std::str::FromStr for VpcNetwork {
    type Err = String;

    /// `NAME=CIDR[,CIDR...]`, e.g. `office=10.20.0.0/16,192.168.7.0/24`.
    fn from_str(text: &str) -> Result<VpcNetwork, String> {
        let form = "give NAME=CIDR[,CIDR...], e.g. office=10.20.0.0/16";
        let (name, cidrs) = text.split_once('=').ok_or_else(|| format!("{text:?} has no '=': {form}"))?;
        let name = name.trim();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!("network name {name:?} must be 1-63 lowercase letters, digits, - or _"));
        }
        let mut parsed = Vec::new();
        for cidr in cidrs.split(',').map(str::trim) {
            let (addr, prefix) = host::parse_cidr(cidr)
                .ok_or_else(|| format!("{cidr:?} in network {name} is not an IPv4 CIDR: {form}"))?;
            if let Some(never) =
                NEVER_VPC.iter().find(|n| host::parse_cidr(n).is_some_and(|n| overlaps(n, (addr, prefix))))
            {
                return Err(format!(
                    "{cidr} in network {name} overlaps {never}, which instances may never reach (loopback, \
                     link-local and the metadata address, multicast, or the instance subnet)"
                ));
            }
            parsed.push((addr, prefix));
        }
        Ok(VpcNetwork { name: name.to_owned(), cidrs: parsed })
    }
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
    /// The private networks instances may opt into, each with its chain in the host table.
    vpc_networks: Vec<VpcNetwork>,
    /// The only destinations builds' `RUN` steps may reach (`--build-egress-allow`), with
    /// their chain in the host table; `None`: every public address.
    build_egress_allow: Option<Vec<(Ipv4Addr, u8)>>,
}

impl Network {
    pub fn new(services: Option<InstanceServices>, vpc_networks: Vec<VpcNetwork>) -> Network {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let [a, b, _, _] = INSTANCE_SUBNET.0.octets();
        let holder = format!("{}-{}", std::process::id(), &unique[..12]);
        Network { prefix: [a, b], holder, services, vpc_networks, build_egress_allow: None }
    }

    /// Limits builds' `RUN` steps to `cidrs` (still never the host, blocked ranges or
    /// instances); `None` leaves them every public address.
    pub fn with_build_egress_allow(mut self, cidrs: Option<Vec<(Ipv4Addr, u8)>>) -> Network {
        self.build_egress_allow = cidrs;
        self
    }

    /// The chain of this server's build egress allow-list in the host table.
    fn build_allow_chain(&self) -> String {
        format!("bldallow-{}", self.holder)
    }

    /// The chain of this server's network `name` in the host table: named after the server
    /// too, as every server on the machine shares the table and may define `name` its way.
    fn vpc_chain(&self, name: &str) -> String {
        format!("vpc-{}-{name}", self.holder)
    }

    pub fn services(&self) -> Option<&InstanceServices> {
        self.services.as_ref()
    }
}

/// Writes a per-interface sysctl under `/proc/sys/net/<path>`.
fn set_interface_sysctl(path: &str, value: &str, what: &'static str) -> Result<(), RuntimeError> {
    let path = format!("/proc/sys/net/{path}");
    std::fs::write(&path, value).map_err(RuntimeError::io(what, &path))
}

/// Runs blocking netlink work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::io("run", "network setup")(std::io::Error::other(e)))?
}

/// `true` if an instance's host interface (`wh*`) exists on this machine.
fn instance_interfaces_exist() -> bool {
    match std::fs::read_dir("/sys/class/net") {
        Ok(entries) => entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("wh")),
        Err(_) => true,
    }
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
        let mut ruleset = host::ruleset((Ipv4Addr::new(self.prefix[0], self.prefix[1], 0, 0), 16));
        for network in &self.vpc_networks {
            host::vpc_chain(&mut ruleset, &self.vpc_chain(&network.name), &network.cidrs);
        }
        if let Some(cidrs) = &self.build_egress_allow {
            host::build_allow_chain(&mut ruleset, &self.build_allow_chain(), cidrs);
        }
        let installed = blocking(move || ruleset.commit().map_err(RuntimeError::from)).await;
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
            let build_chain = self.build_egress_allow.as_ref().map(|_| self.build_allow_chain());
            let chains = self.vpc_networks.iter().map(|n| self.vpc_chain(&n.name)).chain(build_chain);
            for chain in chains {
                // One transaction each: a chain still jumped to fails only its own removal.
                let mut batch = nft::Batch::new();
                batch.delete_chain(nft::Family::Inet, host::TABLE, &chain);
                if let Err(e) = batch.commit() {
                    tracing::debug!(%chain, error = %e, "keeping a VPC or build allow-list chain");
                }
            }
            return;
        }
        if !instance_interfaces_exist() {
            host::remove_rules();
            host::restore_settings();
        }
    }

    /// Creates the namespace and veth of instance `id`, with access to the private network
    /// `vpc` if given. On failure nothing is left behind.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn create(&self, id: &str, vpc: Option<&str>) -> Result<InstanceNetwork, RuntimeError> {
        let vpc_chain = match vpc {
            None => None,
            Some(name) if self.vpc_networks.iter().any(|n| n.name == name) => Some(self.vpc_chain(name)),
            Some(name) => {
                let known: Vec<&str> = self.vpc_networks.iter().map(|n| n.name.as_str()).collect();
                let known = if known.is_empty() { "it has none".to_owned() } else { known.join(", ") };
                return Err(RuntimeError::UnknownVpcNetwork { name: name.to_owned(), known });
            }
        };
        let this = self.clone();
        let id = id.to_owned();
        blocking(move || this.create_blocking(&id, vpc_chain.as_deref(), ServiceReach::All)).await
    }

    /// Creates a network like an instance's (same namespace, veth, address, NAT and egress
    /// policy: the public internet yes, the host, private and link-local ranges and other
    /// instances no) that reaches only the server's DNS resolver of its services: what a
    /// build's `RUN` steps get with `--build-network egress`. `id` names it as an instance id
    /// does (`wharf-<id>`, `wh<id>`); it must not collide with instance ids.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn create_for_build(&self, id: &str) -> Result<InstanceNetwork, RuntimeError> {
        let this = self.clone();
        let id = id.to_owned();
        let allow_chain = self.build_egress_allow.as_ref().map(|_| self.build_allow_chain());
        blocking(move || this.create_blocking(&id, allow_chain.as_deref(), ServiceReach::DnsOnly)).await
    }

    fn create_blocking(
        &self,
        id: &str,
        vpc_chain: Option<&str>,
        reach: ServiceReach,
    ) -> Result<InstanceNetwork, RuntimeError> {
        let netns = format!("wharf-{id}");
        let host_interface = format!("wh{}", &id[..id.len().min(12)]);
        let (netns_file, inside) = rtnl::create_netns(&netns)?;
        let mut net = InstanceNetwork {
            netns,
            host_interface,
            ip: Ipv4Addr::UNSPECIFIED,
            service_keys: Vec::new(),
            vpc_mapped: false,
        };
        match self.configure(&mut net, &netns_file, inside, vpc_chain, reach) {
            Ok(()) => Ok(net),
            Err(e) => {
                self.destroy_blocking(&net);
                Err(e)
            }
        }
    }

    fn configure(
        &self,
        net: &mut InstanceNetwork,
        netns: &std::fs::File,
        mut inside: Rtnl,
        vpc_chain: Option<&str>,
        reach: ServiceReach,
    ) -> Result<(), RuntimeError> {
        let host_if = net.host_interface.clone();
        let mut host = Rtnl::open()?;
        host.add_veth(&host_if, "eth0", rtnl::fd(netns))?;
        set_interface_sysctl(&format!("ipv4/conf/{host_if}/proxy_arp"), "1", "enable proxy ARP in")?;
        // Proxy ARP answers after a random delay of up to 0.8 s by default; the instance's
        // first reply waits on that answer, so without this a start takes hundreds of ms.
        set_interface_sysctl(&format!("ipv4/neigh/{host_if}/proxy_delay"), "0", "set proxy ARP delay in")?;
        // DNAT to the server's loopback listeners needs loopback destinations accepted from
        // this interface; the egress policy rejects every other packet to them.
        set_interface_sysctl(&format!("ipv4/conf/{host_if}/route_localnet"), "1", "allow DNAT to loopback in")?;
        // Instances get no IPv6: no link-local address on the host end either (set before the
        // link is up). A kernel booted without IPv6 has no such file, and nothing to disable.
        let no_ipv6 = format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6");
        match std::fs::write(&no_ipv6, "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(RuntimeError::io("disable IPv6 in", &no_ipv6))?,
        }
        host.set_up(&host_if)?;
        if let Some(services) = &self.services {
            self.map_services(net, services, reach)?;
        }
        if let Some(chain) = vpc_chain {
            // Recorded first, so that a failure half-way is still cleaned up.
            net.vpc_mapped = true;
            let element =
                (nft::ifname_bytes(&host_if).to_vec(), nft::ElementData::Verdict(nft::Verdict::Jump(chain.to_owned())));
            let mut batch = nft::Batch::new();
            batch.add_elements(nft::Family::Inet, host::TABLE, host::VPC_MAP, &[element]);
            batch.commit()?;
        }
        // Claim an address by adding its host route: the kernel refuses a duplicate, which
        // keeps concurrent wharf servers (and instances) from sharing one.
        let host_index = host.index(&host_if)?;
        net.ip = self.claim_address(&mut host, host_index)?;
        inside.set_up("lo")?;
        let eth0 = inside.index("eth0")?;
        // The host reaches the instance without ARP: with one neighbour entry per instance
        // the host's table overflows its limit (1,024 by default) near 1,000 instances, and
        // new connections to instances then stall until entries expire.
        let mac = inside.hardware_address("eth0")?;
        host.add_permanent_neighbour(host_index, net.ip, &mac)?;
        inside.add_address(eth0, net.ip, 32)?;
        inside.set_up("eth0")?;
        let gateway = GATEWAY;
        inside.add_route(gateway, 32, eth0, None)?;
        inside.add_route(Ipv4Addr::UNSPECIFIED, 0, eth0, Some(gateway))?;
        Ok(())
    }

    /// Adds this interface's DNAT elements to the services map, recording their keys in `net`
    /// first so that a failure half-way is still cleaned up.
    fn map_services(
        &self,
        net: &mut InstanceNetwork,
        services: &InstanceServices,
        reach: ServiceReach,
    ) -> Result<(), RuntimeError> {
        let mappings = services.mappings(reach);
        net.service_keys = mappings.iter().map(|(addr, port, _)| (*addr, *port)).collect();
        let elements: Vec<(Vec<u8>, nft::ElementData)> = mappings
            .iter()
            .map(|(addr, port, to)| {
                let mut value = to.ip().octets().to_vec();
                value.extend_from_slice(&to.port().to_be_bytes());
                value.extend_from_slice(&[0, 0]);
                (service_key(&net.host_interface, *addr, *port), nft::ElementData::Data(value))
            })
            .collect();
        let mut batch = nft::Batch::new();
        batch.add_elements(nft::Family::Inet, host::TABLE, host::SERVICES_MAP, &elements);
        Ok(batch.commit()?)
    }

    fn claim_address(&self, host: &mut Rtnl, host_index: u32) -> Result<Ipv4Addr, RuntimeError> {
        let mut seed = u16::from_le_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[1, 0]));
        for _ in 0..64 {
            seed = seed.wrapping_mul(25173).wrapping_add(13849);
            let [hi, lo] = seed.to_be_bytes();
            if lo == 0 || lo == 255 {
                continue;
            }
            let ip = Ipv4Addr::new(self.prefix[0], self.prefix[1], hi, lo);
            match host.add_route(ip, 32, host_index, None) {
                Ok(()) => return Ok(ip),
                Err(e) if e.errno() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RuntimeError::AddressesExhausted(self.subnet()))
    }

    /// Deletes the namespace, which takes the veth pair and the host route with it, and the
    /// interface's DNAT elements.
    pub async fn destroy(&self, net: &InstanceNetwork) {
        let this = self.clone();
        let net = net.clone();
        let removed = blocking(move || {
            this.destroy_blocking(&net);
            Ok(())
        });
        if let Err(e) = removed.await {
            tracing::warn!(error = %e, "removing an instance network failed");
        }
    }

    fn destroy_blocking(&self, net: &InstanceNetwork) {
        rtnl::delete_netns(&net.netns);
        // The veth normally dies with the namespace (asynchronously, in the kernel); make
        // sure, for a half-built network.
        if std::path::Path::new("/sys/class/net").join(&net.host_interface).exists()
            && let Err(e) = Rtnl::open().and_then(|mut host| host.delete_link(&net.host_interface))
        {
            tracing::debug!(interface = %net.host_interface, error = %e, "deleting the host interface failed");
        }
        if !net.service_keys.is_empty() {
            // Added in one transaction, so either all of them exist or none does.
            let keys: Vec<Vec<u8>> =
                net.service_keys.iter().map(|(addr, port)| service_key(&net.host_interface, *addr, *port)).collect();
            let mut batch = nft::Batch::new();
            batch.delete_elements(nft::Family::Inet, host::TABLE, host::SERVICES_MAP, &keys);
            if let Err(e) = batch.commit() {
                tracing::debug!(interface = %net.host_interface, error = %e, "removing DNAT elements failed");
            }
        }
        if net.vpc_mapped {
            let mut batch = nft::Batch::new();
            let key = nft::ifname_bytes(&net.host_interface).to_vec();
            batch.delete_elements(nft::Family::Inet, host::TABLE, host::VPC_MAP, &[key]);
            if let Err(e) = batch.commit() {
                tracing::debug!(interface = %net.host_interface, error = %e, "removing the VPC element failed");
            }
        }
    }
}

/// A services map key: `ifname . ipv4_addr . inet_service`, each field 4-byte aligned.
fn service_key(interface: &str, addr: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut key = nft::ifname_bytes(interface).to_vec();
    key.extend_from_slice(&addr.octets());
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}
