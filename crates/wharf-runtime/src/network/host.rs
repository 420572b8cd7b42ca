//! The host side shared by every wharf server on the machine: the nftables table
//! `inet wharf_instances` (egress policy, DNAT to Wharf's own services, NAT), the
//! registrations of the servers using it, and the one global sysctl Wharf changes.
//!
//! Each server registers itself while it uses the table (a file
//! `/run/wharf/host-network/<pid>-<n>`, under the lock `/run/wharf/host-network.lock`); the
//! last one to leave removes the table, so stopping one server never strips another's
//! instances of NAT and isolation. Registrations of servers that died are pruned by the next
//! one to leave.
//!
//! `net.ipv4.ip_forward` is the only global setting: forwarding is decided per *input*
//! interface, and replies from the internet arrive on the host's uplinks, so per-interface
//! forwarding cannot replace it. The first server to register records its value in
//! `/run/wharf/host-network.sysctl` before setting it to 1; the last one to leave writes the
//! recorded value back. Everything else (proxy ARP, its delay, `route_localnet`, IPv6 off)
//! is set on each instance's own host interface and dies with it.

use std::path::Path;

use super::{INGRESS_ADDR, METADATA_ADDR, run};
use crate::error::RuntimeError;

/// The table holding every rule Wharf adds; `inet`, so IPv6 from instances is covered too.
pub(crate) const TABLE: &str = "wharf_instances";
/// The map from (instance interface, Wharf address, port) to the host-side listener.
pub(crate) const SERVICES_MAP: &str = "services";
/// Tables of Wharf versions before the egress policy; removed by the last server to leave.
const LEGACY_TABLES: [(&str, &str); 2] = [("inet", "wharf"), ("ip", "wharf_nat")];

/// Where servers using the shared host rules register, and the lock that orders them.
const HOLDERS_DIR: &str = "/run/wharf/host-network";
const HOLDERS_LOCK: &str = "/run/wharf/host-network.lock";
/// The value `net.ipv4.ip_forward` had before the first wharf server set it.
const SAVED_SYSCTL: &str = "/run/wharf/host-network.sysctl";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Destinations an instance may never reach unless its service opts into them: "this"
/// network, RFC 1918, CGNAT (RFC 6598), loopback, link-local (the cloud metadata address
/// 169.254.169.254 among them), IETF protocol assignments, benchmarking (RFC 2544),
/// multicast, reserved and broadcast.
pub const BLOCKED_IPV4: [&str; 10] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// The whole rule set, in one `nft -f` transaction. Chains are created if missing and
/// flushed, the map is created if missing and never flushed: reinstalling (a second server
/// starting) is atomic and keeps the per-instance elements other servers added.
///
/// - `prerouting`: an instance's packets to 169.254.169.254 or the ingress address are
///   DNAT'd to the listener its own server registered for that interface and port; any
///   other port there has no element and stays undelivered (dropped in `forward`).
/// - `input` -> `instance_to_host`: packets from instances to any address of the host
///   (every interface, loopback included, since `route_localnet` is on for instance
///   interfaces) are rejected, except replies on connections the host opened (the proxy and
///   probes) and the DNAT'd services.
/// - `forward` -> `instance_egress`: no IPv6, no instance-to-instance, none of
///   [`BLOCKED_IPV4`], no local/broadcast/multicast destination; the rest (the public
///   internet) is accepted. Nobody but the host opens connections *to* an instance.
/// - `postrouting`: instance traffic leaving the machine is masqueraded.
pub(crate) fn ruleset(subnet: &str) -> String {
    let t = format!("inet {TABLE}");
    let ours = format!("{{ {METADATA_ADDR}, {INGRESS_ADDR} }}");
    let blocked = BLOCKED_IPV4.join(", ");
    let reject = "reject with icmpx admin-prohibited";
    let chains = ["prerouting", "input", "forward", "postrouting", "instance_to_host", "instance_egress"];
    let mut text = format!(
        "table {t} {{}}
add map {t} {SERVICES_MAP} {{ type ifname . ipv4_addr . inet_service : ipv4_addr . inet_service; }}
add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain {t} input {{ type filter hook input priority filter; policy accept; }}
add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}
add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain {t} instance_to_host
add chain {t} instance_egress
"
    );
    for chain in chains {
        text.push_str(&format!("flush chain {t} {chain}\n"));
    }
    text.push_str(&format!(
        "add rule {t} prerouting iifname \"wh*\" ip daddr {ours} meta l4proto {{ tcp, udp }} dnat ip to iifname . ip daddr . th dport map @{SERVICES_MAP}
add rule {t} input iifname \"wh*\" jump instance_to_host
add rule {t} instance_to_host ct state established,related accept
add rule {t} instance_to_host ct status dnat ct original ip daddr {ours} accept
add rule {t} instance_to_host counter {reject}
add rule {t} forward iifname \"wh*\" jump instance_egress
add rule {t} forward oifname \"wh*\" ct state established,related accept
add rule {t} forward oifname \"wh*\" counter {reject}
add rule {t} instance_egress ct state established,related accept
add rule {t} instance_egress meta nfproto ipv6 counter {reject}
add rule {t} instance_egress oifname \"wh*\" counter {reject}
add rule {t} instance_egress ip daddr {{ {blocked} }} counter {reject}
add rule {t} instance_egress fib daddr type {{ local, broadcast, anycast, multicast }} counter {reject}
add rule {t} postrouting ip saddr {subnet} oifname != \"wh*\" masquerade
"
    ));
    text
}

/// Takes the host-network lock (blocking, off the async threads); released when dropped.
pub(crate) async fn lock_holders() -> Result<nix::fcntl::Flock<std::fs::File>, RuntimeError> {
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
pub(crate) fn live_holders() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(HOLDERS_DIR) else { return Vec::new() };
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists()) {
            live.push(name);
        } else {
            tracing::info!(registration = %name, "removing the host-network registration of a server that is gone");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    live
}

/// Registers `holder`, recording `ip_forward` first if no live server holds the host side
/// (and no record survives from a server that died holding it), then enables forwarding.
/// Call with the lock held. On error nothing is registered.
pub(crate) fn register(holder: &str) -> Result<(), RuntimeError> {
    let first = live_holders().is_empty();
    if first && !Path::new(SAVED_SYSCTL).exists() {
        let value = std::fs::read_to_string(IP_FORWARD).map_err(RuntimeError::io("read", IP_FORWARD))?;
        std::fs::write(SAVED_SYSCTL, format!("net.ipv4.ip_forward={}\n", value.trim()))
            .map_err(RuntimeError::io("record forwarding in", SAVED_SYSCTL))?;
    }
    std::fs::write(IP_FORWARD, "1").map_err(RuntimeError::io("enable forwarding in", IP_FORWARD))?;
    let path = Path::new(HOLDERS_DIR).join(holder);
    std::fs::write(&path, b"").map_err(RuntimeError::io("register in", &path))
}

pub(crate) fn unregister(holder: &str) {
    let _ = std::fs::remove_file(Path::new(HOLDERS_DIR).join(holder));
}

/// Writes back what [`register`] recorded. Call with the lock held, as the last server
/// leaving, once no instance interface is left.
pub(crate) fn restore_sysctls() {
    let Ok(saved) = std::fs::read_to_string(SAVED_SYSCTL) else { return };
    let value = saved.trim().strip_prefix("net.ipv4.ip_forward=").unwrap_or("");
    if value == "0" || value == "1" {
        match std::fs::write(IP_FORWARD, value) {
            Ok(()) => tracing::info!(value, "restored net.ipv4.ip_forward"),
            Err(e) => tracing::warn!(error = %e, "cannot restore net.ipv4.ip_forward"),
        }
    } else {
        tracing::warn!(record = %saved.trim(), "ignoring an unreadable record of net.ipv4.ip_forward");
    }
    let _ = std::fs::remove_file(SAVED_SYSCTL);
}

/// Removes the table (and those of older Wharf versions). Call as the last server leaving.
pub(crate) async fn remove_rules() {
    let _ = run("nft", &["delete", "table", "inet", TABLE], None).await;
    for (family, name) in LEGACY_TABLES {
        let _ = run("nft", &["delete", "table", family, name], None).await;
    }
}
