//! Instance networking. Each instance gets its own network namespace (`wharf-<id>`, bound
//! under `/run/netns` so `ip netns` shows it) with loopback up and one veth, `eth0`, holding a
//! /32 address from the instance subnet (default 10.213.0.0/16). The host end (`wh<id>`) has
//! no address: a host route sends the instance's /32 to it, and proxy ARP answers for the
//! instance's gateway 169.254.1.1. So the platform reaches `<ip>:<port>` with an ordinary
//! connect, the instance reaches the world through NAT (masquerade), and one nftables rule
//! drops traffic from one instance's veth to another's: instances cannot reach each other.
//!
//! Setup shells out to `ip` and `nft` (iproute2, nftables), batching commands to keep a
//! start to a handful of process spawns.
//!
//! The host rules (tables `inet wharf` and `ip wharf_nat`) are shared by every wharf server on
//! the machine. Each server registers itself while it uses them (a file
//! `/run/wharf/host-network/<pid>-<n>`, under the lock `/run/wharf/host-network.lock`); the
//! last one to leave removes them, so stopping one server never strips another's instances
//! of NAT and isolation. Registrations of servers that died are pruned by the next one to
//! leave.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::error::RuntimeError;

/// The gateway address instances route through; the host answers ARP for it.
const GATEWAY: &str = "169.254.1.1";

/// An instance's network, everything needed to tear it down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceNetwork {
    pub netns: String,
    pub host_interface: String,
    pub ip: Ipv4Addr,
}

impl InstanceNetwork {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// Where servers using the shared host rules register, and the lock that orders them.
const HOLDERS_DIR: &str = "/run/wharf/host-network";
const HOLDERS_LOCK: &str = "/run/wharf/host-network.lock";

/// The host side of instance networking.
#[derive(Debug, Clone)]
pub struct Network {
    /// First two octets of the /16 instance subnet.
    prefix: [u8; 2],
    /// This user's registration file name under [`HOLDERS_DIR`]: `<pid>-<unique>`.
    holder: String,
}

impl Default for Network {
    fn default() -> Network {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Network { prefix: [10, 213], holder: format!("{}-{}", std::process::id(), &unique[..12]) }
    }
}

/// Takes the host-network lock (blocking, off the async threads); released when dropped.
async fn lock_holders() -> Result<nix::fcntl::Flock<std::fs::File>, RuntimeError> {
    tokio::task::spawn_blocking(|| {
        std::fs::create_dir_all(HOLDERS_DIR).map_err(RuntimeError::io("create directory", HOLDERS_DIR))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(HOLDERS_LOCK)
            .map_err(RuntimeError::io("open", HOLDERS_LOCK))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| RuntimeError::io("lock", HOLDERS_LOCK)(std::io::Error::from(errno)))
    })
    .await
    .map_err(|e| RuntimeError::io("lock", HOLDERS_LOCK)(std::io::Error::other(e)))?
}

/// Registrations under [`HOLDERS_DIR`] whose process is still alive, after removing those
/// whose process is gone. Call with the lock held.
fn live_holders() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(HOLDERS_DIR) else { return Vec::new() };
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| std::path::Path::new("/proc").join(pid.to_string()).exists()) {
            live.push(name);
        } else {
            tracing::info!(registration = %name, "removing the host-network registration of a server that is gone");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    live
}

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), RuntimeError> {
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

impl Network {
    pub fn subnet(&self) -> String {
        format!("{}.{}.0.0/16", self.prefix[0], self.prefix[1])
    }

    /// Enables forwarding, registers this user of the host rules and installs the isolation
    /// and NAT rules (the same for every wharf server on the machine; reinstalling them is
    /// atomic, so servers already running keep them throughout).
    pub async fn setup_host(&self) -> Result<(), RuntimeError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(RuntimeError::io("enable forwarding in", "/proc/sys/net/ipv4/ip_forward"))?;
        let _lock = lock_holders().await?;
        let holder = std::path::Path::new(HOLDERS_DIR).join(&self.holder);
        std::fs::write(&holder, b"").map_err(RuntimeError::io("register in", &holder))?;
        let rules = format!(
            "table inet wharf {{}}
             delete table inet wharf
             table inet wharf {{
               chain forward {{
                 type filter hook forward priority 0; policy accept;
                 iifname \"wh*\" oifname \"wh*\" drop
               }}
             }}
             table ip wharf_nat {{}}
             delete table ip wharf_nat
             table ip wharf_nat {{
               chain postrouting {{
                 type nat hook postrouting priority 100; policy accept;
                 ip saddr {} oifname != \"wh*\" masquerade
               }}
             }}\n",
            self.subnet()
        );
        let installed = run("nft", &["-f", "-"], Some(&rules)).await;
        if installed.is_err() {
            let _ = std::fs::remove_file(&holder);
        }
        installed
    }

    /// Unregisters this user of the host rules and removes the rules if it was the last one
    /// (servers that died unregistered are not counted) and no instance veth is left.
    pub async fn teardown_host(&self) {
        let _lock = match lock_holders().await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the host-network lock; leaving the host rules in place");
                return;
            }
        };
        let _ = std::fs::remove_file(std::path::Path::new(HOLDERS_DIR).join(&self.holder));
        let others = live_holders();
        if !others.is_empty() {
            tracing::debug!(?others, "other servers use the host rules; keeping them");
            return;
        }
        let links = Command::new("ip").args(["-o", "link", "show"]).output().await;
        let in_use = links.map(|o| String::from_utf8_lossy(&o.stdout).contains(": wh")).unwrap_or(true);
        if !in_use {
            let _ = run("nft", &["delete", "table", "inet", "wharf"], None).await;
            let _ = run("nft", &["delete", "table", "ip", "wharf_nat"], None).await;
        }
    }

    /// Creates the namespace and veth of instance `id`. On failure nothing is left behind.
    pub async fn create(&self, id: &str) -> Result<InstanceNetwork, RuntimeError> {
        let netns = format!("wharf-{id}");
        let host_interface = format!("wh{}", &id[..id.len().min(12)]);
        run("ip", &["netns", "add", &netns], None).await?;
        let mut net = InstanceNetwork { netns, host_interface, ip: Ipv4Addr::UNSPECIFIED };
        match self.configure(&mut net).await {
            Ok(()) => Ok(net),
            Err(e) => {
                self.destroy(&net).await;
                Err(e)
            }
        }
    }

    async fn configure(&self, net: &mut InstanceNetwork) -> Result<(), RuntimeError> {
        let host_if = net.host_interface.as_str();
        let host_batch =
            format!("link add {host_if} type veth peer name eth0 netns {}\nlink set {host_if} up\n", net.netns);
        run("ip", &["-batch", "-"], Some(&host_batch)).await?;
        let proxy_arp = format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp");
        std::fs::write(&proxy_arp, "1").map_err(RuntimeError::io("enable proxy ARP in", &proxy_arp))?;
        // Proxy ARP answers after a random delay of up to 0.8 s by default; the instance's
        // first reply waits on that answer, so without this a start takes hundreds of ms.
        let proxy_delay = format!("/proc/sys/net/ipv4/neigh/{host_if}/proxy_delay");
        std::fs::write(&proxy_delay, "0").map_err(RuntimeError::io("set proxy ARP delay in", &proxy_delay))?;
        // Claim an address by adding its host route: the kernel refuses a duplicate, which
        // keeps concurrent wharf servers (and instances) from sharing one.
        net.ip = self.claim_address(host_if).await?;
        let ns_batch = format!(
            "link set lo up\naddr add {ip}/32 dev eth0\nlink set eth0 up\n\
             route add {GATEWAY} dev eth0 scope link\nroute add default via {GATEWAY} dev eth0\n",
            ip = net.ip
        );
        run("ip", &["-n", &net.netns, "-batch", "-"], Some(&ns_batch)).await
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

    /// Deletes the namespace, which takes the veth pair and the host route with it.
    pub async fn destroy(&self, net: &InstanceNetwork) {
        if let Err(e) = run("ip", &["netns", "delete", &net.netns], None).await {
            tracing::warn!(netns = %net.netns, error = %e, "deleting network namespace failed");
        }
        // The veth normally dies with the namespace; make sure, for a half-built network.
        if std::path::Path::new("/sys/class/net").join(&net.host_interface).exists() {
            let _ = run("ip", &["link", "delete", &net.host_interface], None).await;
        }
    }
}
