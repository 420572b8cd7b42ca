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
//!
//! The cgroup v2 mount's `favordynmods` option ([`crate::cgroup::FAVOR_DYNMODS`]) is the other
//! machine-wide setting, for instance starts rather than networking, kept here because it
//! follows the same rule: registering turns it on (the first server records in
//! `/run/wharf/host-network.cgroup` that it was off), and the last server to leave turns it off
//! again if it was.

use std::path::Path;

use std::net::Ipv4Addr;

use super::nft::{self, Batch, Family};
use super::{INGRESS_ADDR, METADATA_ADDR};
use crate::cgroup::{Cgroup2Mount, FAVOR_DYNMODS};
use crate::error::RuntimeError;

/// The host ends of instance veths are all named `wh<id>`: rules match them by prefix.
const INSTANCE_INTERFACES: &str = "wh*";

/// The table holding every rule Wharf adds; `inet`, so IPv6 from instances is covered too.
pub(crate) const TABLE: &str = "wharf_instances";
/// The map from (instance interface, Wharf address, port) to the host-side listener.
pub(crate) const SERVICES_MAP: &str = "services";
/// The verdict map from an instance interface to the chain of the private network its
/// revision opted into (`vpcAccess`): `jump vpc-<server>-<network>`.
pub(crate) const VPC_MAP: &str = "vpc_access";
/// Tables of Wharf versions before the egress policy; removed by the last server to leave.
const LEGACY_TABLES: [(Family, &str); 2] = [(Family::Inet, "wharf"), (Family::Ipv4, "wharf_nat")];

/// Where servers using the shared host rules register, and the lock that orders them.
const HOLDERS_DIR: &str = "/run/wharf/host-network";
const HOLDERS_LOCK: &str = "/run/wharf/host-network.lock";
/// The value `net.ipv4.ip_forward` had before the first wharf server set it.
const SAVED_SYSCTL: &str = "/run/wharf/host-network.sysctl";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// `favordynmods=0` when the cgroup2 mount did not have the option before the first server.
const SAVED_CGROUP: &str = "/run/wharf/host-network.cgroup";

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

/// The whole rule set, in one nftables transaction. Chains are created if missing and
/// flushed, the map is created if missing and never flushed: reinstalling (a second server
/// starting) is atomic and keeps the per-instance elements other servers added. In `nft`
/// syntax (what `nft list table inet wharf_instances` shows):
///
/// - `prerouting`: an instance's packets to 169.254.169.254 or the ingress address are
///   DNAT'd to the listener its own server registered for that interface and port
///   (`dnat ip to iifname . ip daddr . th dport map @services`); any other port there has no
///   element and stays undelivered (dropped in `forward`).
/// - `input` -> `instance_to_host`: packets from instances to any address of the host
///   (every interface, loopback included, since `route_localnet` is on for instance
///   interfaces) are rejected, except replies on connections the host opened (the proxy and
///   probes) and the DNAT'd services.
/// - `forward` -> `instance_egress`: no IPv6, no instance-to-instance, none of
///   [`BLOCKED_IPV4`], no local/broadcast/anycast/multicast destination (`fib daddr type`);
///   the rest (the public internet) is accepted. Nobody but the host opens connections *to*
///   an instance.
/// - `postrouting`: instance traffic leaving the machine is masqueraded.
pub(crate) fn ruleset(subnet: (Ipv4Addr, u8)) -> Batch {
    use nft::{BaseChain, CmpOp, CtKey, DataType, Expr, Hook, MapData, MetaKey, PayloadBase, Verdict};
    const F: Family = Family::Inet;
    const IP_DADDR: u32 = 16;
    const IP_SADDR: u32 = 12;
    let ours = [METADATA_ADDR, INGRESS_ADDR];
    let mut b = Batch::new();
    b.add_table(F, TABLE);
    b.add_map(
        F,
        TABLE,
        SERVICES_MAP,
        &[DataType::IfName, DataType::Ipv4Addr, DataType::InetService],
        MapData::Data(&[DataType::Ipv4Addr, DataType::InetService]),
    );
    b.add_map(F, TABLE, VPC_MAP, &[DataType::IfName], MapData::Verdict);
    let base = |kind, hook, priority| Some(BaseChain { kind, hook, priority });
    let chains = [
        ("prerouting", base("nat", Hook::Prerouting, -100)),
        ("input", base("filter", Hook::Input, 0)),
        ("forward", base("filter", Hook::Forward, 0)),
        ("postrouting", base("nat", Hook::Postrouting, 100)),
        ("instance_to_host", None),
        ("instance_egress", None),
    ];
    for (chain, hook) in chains {
        b.add_chain(F, TABLE, chain, hook);
    }
    for (chain, _) in chains {
        b.flush_chain(F, TABLE, chain);
    }
    let from_instance = || Expr::interface(MetaKey::IifName, CmpOp::Eq, INSTANCE_INTERFACES).to_vec();
    let to_instance = || Expr::interface(MetaKey::OifName, CmpOp::Eq, INSTANCE_INTERFACES).to_vec();
    let established = || {
        Expr::any_bit(
            Expr::Ct { key: CtKey::State, dreg: nft::REG_1, original_direction: false },
            nft::CT_STATE_ESTABLISHED | nft::CT_STATE_RELATED,
        )
        .to_vec()
    };
    let reject = || vec![Expr::Counter, Expr::RejectAdminProhibited];
    let accept = || vec![Expr::Immediate(Verdict::Accept)];
    let jump = |chain: &str| vec![Expr::Immediate(Verdict::Jump(chain.to_owned()))];
    let rule = |b: &mut Batch, chain: &str, parts: Vec<Vec<Expr>>| b.add_rule(F, TABLE, chain, &parts.concat());
    // iifname vmap @vpc_access: an instance whose revision opted into a private network
    // jumps to that network's chain, which accepts its ranges.
    let vpc_access = || {
        vec![
            Expr::Meta { key: MetaKey::IifName, dreg: nft::REG_1 },
            Expr::Lookup { set: VPC_MAP.to_owned(), sreg: nft::REG_1, dreg: Some(nft::REG_VERDICT) },
        ]
    };

    // prerouting: iifname "wh*" ip daddr { ours } meta l4proto { tcp, udp }
    //             dnat ip to iifname . ip daddr . th dport map @services
    for addr in ours {
        for proto in [nft::IPPROTO_TCP, nft::IPPROTO_UDP] {
            let key = nft::REG32_00;
            rule(
                &mut b,
                "prerouting",
                vec![
                    from_instance(),
                    Expr::ipv4_in(IP_DADDR, addr, 32),
                    vec![
                        Expr::Meta { key: MetaKey::L4Proto, dreg: nft::REG_1 },
                        Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: vec![proto] },
                        Expr::Meta { key: MetaKey::IifName, dreg: key },
                        Expr::Payload { base: PayloadBase::Network, offset: IP_DADDR, len: 4, dreg: key + 4 },
                        Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: key + 5 },
                        Expr::Lookup { set: SERVICES_MAP.to_owned(), sreg: key, dreg: Some(key) },
                        Expr::DnatIpv4 { addr: key, port: key + 1 },
                    ],
                ],
            );
        }
    }
    // input: iifname "wh*" jump instance_to_host
    rule(&mut b, "input", vec![from_instance(), jump("instance_to_host")]);
    // instance_to_host: ct state established,related accept;
    //                   ct status dnat ct original ip daddr { ours } accept; counter reject
    rule(&mut b, "instance_to_host", vec![established(), accept()]);
    rule(&mut b, "instance_to_host", vec![vpc_access()]);
    for addr in ours {
        rule(
            &mut b,
            "instance_to_host",
            vec![
                Expr::any_bit(
                    Expr::Ct { key: CtKey::Status, dreg: nft::REG_1, original_direction: false },
                    nft::CT_STATUS_DNAT,
                )
                .to_vec(),
                vec![
                    Expr::Ct { key: CtKey::DstIp, dreg: nft::REG_1, original_direction: true },
                    Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: addr.octets().to_vec() },
                ],
                accept(),
            ],
        );
    }
    rule(&mut b, "instance_to_host", vec![reject()]);
    // forward: iifname "wh*" jump instance_egress; oifname "wh*" ct state established,related
    //          accept; oifname "wh*" counter reject
    rule(&mut b, "forward", vec![from_instance(), jump("instance_egress")]);
    rule(&mut b, "forward", vec![to_instance(), established(), accept()]);
    rule(&mut b, "forward", vec![to_instance(), reject()]);
    // instance_egress: ct state established,related accept; meta nfproto ipv6 counter reject;
    //   oifname "wh*" counter reject; ip daddr { BLOCKED_IPV4 } counter reject;
    //   fib daddr type { local, broadcast, anycast, multicast } counter reject
    rule(&mut b, "instance_egress", vec![established(), accept()]);
    rule(
        &mut b,
        "instance_egress",
        vec![
            vec![
                Expr::Meta { key: MetaKey::NfProto, dreg: nft::REG_1 },
                Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: vec![nft::NFPROTO_IPV6] },
            ],
            reject(),
        ],
    );
    rule(&mut b, "instance_egress", vec![to_instance(), reject()]);
    rule(&mut b, "instance_egress", vec![vpc_access()]);
    for cidr in BLOCKED_IPV4 {
        let (net, prefix) = parse_cidr(cidr).unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        rule(&mut b, "instance_egress", vec![Expr::ipv4_in(IP_DADDR, net, prefix), reject()]);
    }
    // RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST
    for route_type in [2u32, 3, 4, 5] {
        rule(
            &mut b,
            "instance_egress",
            vec![
                vec![
                    Expr::FibDaddrType { dreg: nft::REG_1 },
                    Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: route_type.to_ne_bytes().to_vec() },
                ],
                reject(),
            ],
        );
    }
    // postrouting: ip saddr <subnet> oifname != "wh*" masquerade
    rule(
        &mut b,
        "postrouting",
        vec![
            Expr::ipv4_in(IP_SADDR, subnet.0, subnet.1),
            Expr::interface(MetaKey::OifName, CmpOp::Neq, INSTANCE_INTERFACES).to_vec(),
            vec![Expr::Masquerade],
        ],
    );
    b
}

/// Adds (or refills) the chain of one private network: `ip daddr <cidr> accept` for each of
/// its ranges. Instances of revisions that opted into it jump here from `instance_to_host`
/// (addresses of this machine in the ranges) and `instance_egress` (forwarded traffic),
/// before the blocked ranges are rejected.
pub(crate) fn vpc_chain(b: &mut Batch, chain: &str, cidrs: &[(Ipv4Addr, u8)]) {
    use nft::{Expr, Verdict};
    b.add_chain(Family::Inet, TABLE, chain, None);
    b.flush_chain(Family::Inet, TABLE, chain);
    for (net, prefix) in cidrs {
        let mut exprs = Expr::ipv4_in(16, *net, *prefix);
        exprs.push(Expr::Immediate(Verdict::Accept));
        b.add_rule(Family::Inet, TABLE, chain, &exprs);
    }
}

/// Adds (or refills) the chain limiting builds' `RUN` steps to the server's egress allow-list
/// (`--build-egress-allow`): a build's interface jumps here through the same `vpc_access` map
/// as a VPC, from `instance_to_host` and `instance_egress`. DNAT'd packets (the DNS resolver)
/// and destinations in `cidrs` return to the normal policy, which still refuses the host, the
/// blocked ranges and other instances; anything else is rejected here.
pub(crate) fn build_allow_chain(b: &mut Batch, chain: &str, cidrs: &[(Ipv4Addr, u8)]) {
    use nft::{CtKey, Expr, Verdict};
    b.add_chain(Family::Inet, TABLE, chain, None);
    b.flush_chain(Family::Inet, TABLE, chain);
    let mut dnat = Expr::any_bit(
        Expr::Ct { key: CtKey::Status, dreg: nft::REG_1, original_direction: false },
        nft::CT_STATUS_DNAT,
    )
    .to_vec();
    dnat.push(Expr::Immediate(Verdict::Return));
    b.add_rule(Family::Inet, TABLE, chain, &dnat);
    for (net, prefix) in cidrs {
        let mut exprs = Expr::ipv4_in(16, *net, *prefix);
        exprs.push(Expr::Immediate(Verdict::Return));
        b.add_rule(Family::Inet, TABLE, chain, &exprs);
    }
    b.add_rule(Family::Inet, TABLE, chain, &[Expr::Counter, Expr::RejectAdminProhibited]);
}

/// `a.b.c.d/n` as an address and a prefix length.
pub(crate) fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
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

/// Registers `holder`, recording `ip_forward` and the cgroup2 mount's `favordynmods` first if
/// no live server holds the host side (and no record survives from a server that died holding
/// it), then enables forwarding and turns `favordynmods` on.
/// Call with the lock held. On error nothing is registered.
pub(crate) fn register(holder: &str) -> Result<(), RuntimeError> {
    let first = live_holders().is_empty();
    if first && !Path::new(SAVED_SYSCTL).exists() {
        let value = std::fs::read_to_string(IP_FORWARD).map_err(RuntimeError::io("read", IP_FORWARD))?;
        std::fs::write(SAVED_SYSCTL, format!("net.ipv4.ip_forward={}\n", value.trim()))
            .map_err(RuntimeError::io("record forwarding in", SAVED_SYSCTL))?;
    }
    std::fs::write(IP_FORWARD, "1").map_err(RuntimeError::io("enable forwarding in", IP_FORWARD))?;
    if let Some(mount) = Cgroup2Mount::find().filter(|m| !m.favors_dynmods()) {
        if first && !Path::new(SAVED_CGROUP).exists() {
            std::fs::write(SAVED_CGROUP, format!("{FAVOR_DYNMODS}=0\n"))
                .map_err(RuntimeError::io("record the cgroup2 options in", SAVED_CGROUP))?;
        }
        favor_dynamic_modifications(&mount);
    }
    let path = Path::new(HOLDERS_DIR).join(holder);
    std::fs::write(&path, b"").map_err(RuntimeError::io("register in", &path))
}

pub(crate) fn unregister(holder: &str) {
    let _ = std::fs::remove_file(Path::new(HOLDERS_DIR).join(holder));
}

/// Turns the cgroup2 mount's [`FAVOR_DYNMODS`] on; without it each instance start waits for
/// an RCU grace period, which is logged, and instances still start.
fn favor_dynamic_modifications(mount: &Cgroup2Mount) {
    match mount.set_favor_dynmods(true) {
        Ok(()) => {
            tracing::info!(mount = %mount.mount_point.display(), "turned on {FAVOR_DYNMODS} on the cgroup2 mount")
        }
        Err(e) => tracing::warn!(
            error = %e, cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(),
            "cannot turn on {FAVOR_DYNMODS}: each instance start waits for an RCU grace period (several ms)"
        ),
    }
}

/// Writes back what [`register`] recorded. Call with the lock held, as the last server
/// leaving, once no instance interface is left.
pub(crate) fn restore_settings() {
    if let Ok(saved) = std::fs::read_to_string(SAVED_CGROUP) {
        if saved.trim() == format!("{FAVOR_DYNMODS}=0")
            && let Some(mount) = Cgroup2Mount::find().filter(Cgroup2Mount::favors_dynmods)
        {
            match mount.set_favor_dynmods(false) {
                Ok(()) => tracing::info!("turned {FAVOR_DYNMODS} off again on the cgroup2 mount"),
                Err(e) => tracing::warn!(error = %e, "cannot turn {FAVOR_DYNMODS} off again"),
            }
        }
        let _ = std::fs::remove_file(SAVED_CGROUP);
    }
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
pub(crate) fn remove_rules() {
    let tables = std::iter::once((Family::Inet, TABLE)).chain(LEGACY_TABLES);
    for (family, name) in tables {
        // One transaction each: a table that is not there fails only its own.
        let mut batch = Batch::new();
        batch.delete_table(family, name);
        if let Err(e) = batch.commit() {
            tracing::debug!(table = name, error = %e, "not removing nftables table");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rule set installed for real, in a network namespace of the test's own (so no
    //! other server's table is touched), and read back with `nft list` (nftables' own
    //! decoder of what the kernel holds).

    use super::*;

    /// Runs `f` on a thread inside a fresh network namespace, with the path of that
    /// namespace for other processes to enter; the namespace ends with the thread.
    fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce(&str) -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace (root)");
            let path = format!("/proc/{}/task/{}/ns/net", std::process::id(), nix::unistd::gettid());
            f(&path)
        })
        .join()
        .unwrap()
    }

    fn nft_list(netns: &str) -> String {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["nft", "list", "table", "inet", TABLE])
            .output()
            .expect("nsenter and nft (scripts/test installs nftables)");
        assert!(out.status.success(), "nft list: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The cgroup2 mount's options, its mount flags included, as one mountinfo line.
    fn mountinfo_line(mount: &Cgroup2Mount) -> String {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let point = format!(" {} ", mount.mount_point.display());
        mountinfo.lines().find(|l| l.contains(&point) && l.contains(" - cgroup2 ")).unwrap().to_owned()
    }

    /// Under the host lock, so that no server registers or leaves meanwhile; and not while
    /// servers of other tests run with the option on, which they rely on (and check).
    #[tokio::test]
    async fn favordynmods_goes_on_and_off_and_nothing_else_of_the_cgroup2_mount_changes() {
        if Cgroup2Mount::find().is_none() {
            eprintln!("no cgroup2 mount on this machine: nothing to test");
            return;
        }
        let _lock = lock_holders().await.unwrap();
        let before = Cgroup2Mount::find().unwrap();
        if before.favors_dynmods() && !live_holders().is_empty() {
            eprintln!("wharf servers are running with {FAVOR_DYNMODS} on: not turning it off under them");
            return;
        }
        let line_before = mountinfo_line(&before);
        let was_on = before.favors_dynmods();
        before.set_favor_dynmods(!was_on).unwrap();
        let toggled = Cgroup2Mount::find().unwrap();
        let others = |m: &Cgroup2Mount| m.options.iter().filter(|o| *o != FAVOR_DYNMODS).cloned().collect::<Vec<_>>();
        assert_eq!(toggled.favors_dynmods(), !was_on, "{toggled:?}");
        assert_eq!(others(&toggled), others(&before));
        toggled.set_favor_dynmods(was_on).unwrap();
        assert_eq!(mountinfo_line(&Cgroup2Mount::find().unwrap()), line_before);
    }

    #[test]
    fn the_ruleset_installs_twice_and_reads_back_as_the_policy() {
        let listed = in_fresh_netns(|netns| {
            let mut first = ruleset((Ipv4Addr::new(10, 213, 0, 0), 16));
            vpc_chain(&mut first, "vpc-test-office", &[(Ipv4Addr::new(10, 78, 0, 0), 16)]);
            build_allow_chain(&mut first, "bldallow-test", &[(Ipv4Addr::new(203, 0, 113, 0), 24)]);
            first.commit().unwrap();
            // Reinstalling (a second server starting) is accepted and leaves one copy.
            ruleset((Ipv4Addr::new(10, 213, 0, 0), 16)).commit().unwrap();
            let listed = nft_list(netns);
            remove_rules();
            listed
        });
        let normal: Vec<String> = listed.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        let has = |rule: &str| assert!(normal.iter().any(|l| l == rule), "no `{rule}` in:\n{listed}");
        has("type ifname . ipv4_addr . inet_service : ipv4_addr . inet_service");
        has("iifname \"wh*\" ip daddr 169.254.169.254 dnat ip to iifname . ip daddr . udp dport map @services");
        has("iifname vmap @vpc_access");
        has("type ifname : verdict");
        has("ip daddr 10.78.0.0/16 accept");
        // The build allow-list: the DNS resolver's DNAT and the allowed range go back to the
        // policy, the rest is rejected.
        has("ct status dnat return");
        has("ip daddr 203.0.113.0/24 return");
        let allow_chain = listed.split("chain bldallow-test {").nth(1).unwrap_or_default();
        let last_rule = allow_chain.lines().map(str::trim).take_while(|l| *l != "}").last().unwrap_or_default();
        assert_eq!(last_rule, "counter packets 0 bytes 0 reject with icmpx admin-prohibited", "{listed}");
        has("iifname \"wh*\" jump instance_to_host");
        has("ct status dnat ct original ip daddr 169.254.1.2 accept");
        has("ip daddr 10.0.0.0/8 counter packets 0 bytes 0 reject with icmpx admin-prohibited");
        has("ip daddr 127.0.0.0/8 counter packets 0 bytes 0 reject with icmpx admin-prohibited");
        has("fib daddr type local counter packets 0 bytes 0 reject with icmpx admin-prohibited");
        has("meta nfproto ipv6 counter packets 0 bytes 0 reject with icmpx admin-prohibited");
        has("ip saddr 10.213.0.0/16 oifname != \"wh*\" masquerade");
        assert_eq!(normal.iter().filter(|l| l.as_str() == "iifname \"wh*\" jump instance_egress").count(), 1);
    }
}
