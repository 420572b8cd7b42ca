//! Links, addresses, routes and named network namespaces over rtnetlink (with
//! `netlink-packet-route` messages), replacing the `ip` binary: what `ip netns add`,
//! `ip link add ... type veth`, `ip addr add` and `ip route add` do, without a process spawn.
//!
//! A named namespace is what `ip netns` makes: a bind mount of the namespace onto
//! `/run/netns/<name>` (a shared mount, so it propagates as `ip`'s do), which keeps it alive
//! without a process and lets `ip netns exec` and libcontainer find it. A socket opened by a
//! thread inside the namespace configures it from outside.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{NetlinkError, NetlinkSocket};

const NETNS_DIR: &str = "/run/netns";

/// An rtnetlink socket, in the namespace of the thread that opened it.
#[derive(Debug)]
pub struct Rtnl {
    socket: NetlinkSocket,
}

fn failed(request: String) -> impl FnOnce(std::io::Error) -> NetlinkError {
    move |source| NetlinkError { request, source }
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, NetlinkError> {
        NetlinkSocket::open(netlink_sys::protocols::NETLINK_ROUTE)
            .map(|socket| Rtnl { socket })
            .map_err(failed("opening an rtnetlink socket".to_owned()))
    }

    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: String,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        request.header.sequence_number = self.socket.seq();
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.exchange(&buf, &[(request.header.sequence_number, what)])
    }

    /// Creates the veth pair `name` (here, down) and `peer` (in the namespace `peer_netns`).
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> Result<(), NetlinkError> {
        let mut peer_message = LinkMessage::default();
        peer_message.attributes.push(LinkAttribute::IfName(peer.to_owned()));
        peer_message.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("creating veth {name} (peer {peer})"),
        )
        .map(drop)
    }

    /// Sets the link `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(message), 0, format!("setting link {name} up")).map(drop)
    }

    /// The link `name`, as the kernel describes it.
    fn link(&mut self, name: &str) -> Result<LinkMessage, NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let what = format!("looking up link {name}");
        let replies = self.request(RouteNetlinkMessage::GetLink(message), 0, what.clone())?;
        replies
            .iter()
            .filter_map(|reply| NetlinkMessage::<RouteNetlinkMessage>::deserialize(reply).ok())
            .find_map(|reply| match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Some(link),
                _ => None,
            })
            .ok_or_else(|| NetlinkError { request: what, source: std::io::Error::other("no link in the answer") })
    }

    /// The index of the link `name`.
    pub fn index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        self.link(name).map(|link| link.header.index)
    }

    /// The hardware (MAC) address of the link `name`.
    pub fn hardware_address(&mut self, name: &str) -> Result<Vec<u8>, NetlinkError> {
        let link = self.link(name)?;
        link.attributes
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => Some(mac),
                _ => None,
            })
            .ok_or_else(|| NetlinkError {
                request: format!("looking up the address of link {name}"),
                source: std::io::Error::other("the link has no hardware address"),
            })
    }

    /// Adds (or replaces) a permanent neighbour entry: `ip` is at `mac` on the link with
    /// index `index`. Permanent entries need no ARP and do not count toward the neighbour
    /// table's garbage-collection limits (`gc_thresh3`, 1,024 entries by default).
    pub fn add_permanent_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: &[u8]) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unicast;
        message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("adding the neighbour {ip}"),
        )
        .map(drop)
    }

    /// Deletes the link `name`; `false` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::DelLink(message), 0, format!("deleting link {name}")) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `ip/prefix` to the link with index `index`.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.scope = AddressScope::Universe;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(ip.into()));
        message.attributes.push(AddressAttribute::Address(ip.into()));
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("adding address {ip}/{prefix}"),
        )
        .map(drop)
    }

    /// Adds a route to `dst/prefix` in the main table out of the link `oif`, through
    /// `gateway` or (without one) directly on the link. Fails with `EEXIST` if the route
    /// exists: callers use that to claim an address.
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        oif: u32,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = prefix;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
        message.header.kind = RouteType::Unicast;
        if prefix > 0 {
            message.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gateway) = gateway {
            message.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("adding route {dst}/{prefix}"),
        )
        .map(drop)
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so the namespaces
/// bound under it propagate to mount namespaces that share with the host.
fn prepare_netns_dir() -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(NETNS_DIR)?;
    let shared = || mount(None::<&str>, NETNS_DIR, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(Some(NETNS_DIR), NETNS_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
            Ok(shared()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the named network namespace `name` (`/run/netns/<name>`) and returns the file
/// that holds it and an rtnetlink socket inside it. On failure nothing is left behind.
pub fn create_netns(name: &str) -> Result<(std::fs::File, Rtnl), NetlinkError> {
    static PREPARED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let what = || format!("creating network namespace {name}");
    if PREPARED.get().is_none() {
        prepare_netns_dir().map_err(failed(format!("making {NETNS_DIR} a shared mount")))?;
        let _ = PREPARED.set(());
    }
    let path = netns_path(name);
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(failed(what()))?;
    let bind_path = path.clone();
    // unshare(2) moves the calling thread: do it on a thread of its own that ends here.
    let made = std::thread::spawn(move || -> Result<Rtnl, NetlinkError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| failed("unsharing the network namespace".to_owned())(e.into()))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &bind_path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| failed(format!("binding the namespace to {}", bind_path.display()))(e.into()))?;
        Rtnl::open()
    })
    .join()
    .unwrap_or_else(|_| Err(failed(what())(std::io::Error::other("the namespace thread panicked"))));
    let opened = made.and_then(|rtnl| {
        let file = std::fs::File::open(&path).map_err(failed(what()))?;
        Ok((file, rtnl))
    });
    if opened.is_err() {
        delete_netns(name);
    }
    opened
}

/// Removes the named namespace; it goes away once no process and no interface holds it.
pub fn delete_netns(name: &str) {
    let path = netns_path(name);
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(netns = %name, error = %e, "unmounting the network namespace failed"),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(netns = %name, error = %e, "removing the network namespace file failed"),
    }
}

/// The raw descriptor of an open namespace file, for `IFLA_NET_NS_FD`.
pub fn fd(file: &std::fs::File) -> RawFd {
    file.as_raw_fd()
}
