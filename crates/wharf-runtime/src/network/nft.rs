//! A small encoder of nftables netlink (nfnetlink) messages: exactly the objects and
//! expressions Wharf's egress policy uses ([`super::host`]), batched into one transaction the
//! kernel applies atomically, as `nft -f` does. It replaces the `nft` binary (which a fresh
//! Debian machine lacks) and its process spawn on every instance start.
//!
//! The kernel's side of this format is `include/uapi/linux/netfilter/nf_tables.h`: every
//! message is a netlink header, a `nfgenmsg` (family, version, resource id) and attributes;
//! integers in nftables attributes are big-endian. A transaction is the messages between a
//! `NFNL_MSG_BATCH_BEGIN` and a `NFNL_MSG_BATCH_END`; each message asks for an
//! acknowledgement so that an error names the message that failed.

use std::net::Ipv4Addr;

use super::netlink::{NetlinkError, NetlinkSocket, align4};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

/// Address families of nftables tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    Inet = 1,
    Ipv4 = 2,
}

/// The netfilter hooks base chains attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Postrouting = 4,
}

/// A base chain: its type (`filter`, `nat`), hook and priority; policy accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

/// The 16-byte registers (1..=4) and the 4-byte ones (8..=23, `NFT_REG32_00` on) share one
/// space; 0 is the verdict register.
pub type Register = u32;
pub const REG_VERDICT: Register = 0;
pub const REG_1: Register = 1;
pub const REG32_00: Register = 8;

/// What a packet's field is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// `meta` keys Wharf loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetaKey {
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

/// Conntrack keys Wharf loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CtKey {
    State = 0,
    Status = 2,
    /// The destination address of the given direction (`ct original ip daddr`).
    DstIp = 20,
}

/// Where a payload offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

/// A rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Back to the chain that jumped here, after its jump rule.
    Return,
    Jump(String),
}

/// The expressions of Wharf's rules, each one kernel expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: MetaKey,
        dreg: Register,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Register,
    },
    Cmp {
        sreg: Register,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: Register,
        dreg: Register,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Ct {
        key: CtKey,
        dreg: Register,
        original_direction: bool,
    },
    /// Looks `sreg` up in a named set or map; a map's value goes to `dreg`.
    Lookup {
        set: String,
        sreg: Register,
        dreg: Option<Register>,
    },
    /// `fib daddr type`: the route type (`RTN_*`, host byte order) of the destination.
    FibDaddrType {
        dreg: Register,
    },
    Counter,
    /// `reject with icmpx admin-prohibited`.
    RejectAdminProhibited,
    /// Destination NAT to the IPv4 address in `addr` and the port in `port`.
    DnatIpv4 {
        addr: Register,
        port: Register,
    },
    Masquerade,
    Immediate(Verdict),
}

/// Conntrack state bits (`ct state`), host byte order.
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;
/// `IPS_DST_NAT` of `ct status`, host byte order.
pub const CT_STATUS_DNAT: u32 = 1 << 5;
/// Protocol numbers compared with `meta nfproto` and `meta l4proto`.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

impl Expr {
    /// `iifname` / `oifname` compared with a name; a trailing `*` matches the prefix.
    pub fn interface(key: MetaKey, op: CmpOp, pattern: &str) -> [Expr; 2] {
        let data = match pattern.strip_suffix('*') {
            Some(prefix) => prefix.as_bytes().to_vec(),
            None => ifname_bytes(pattern).to_vec(),
        };
        [Expr::Meta { key, dreg: REG_1 }, Expr::Cmp { sreg: REG_1, op, data }]
    }

    /// `ip saddr|daddr <net>/<prefix>` in an `inet` table (with the `meta nfproto ipv4`
    /// nft adds for it).
    pub fn ipv4_in(offset: u32, net: Ipv4Addr, prefix: u8) -> Vec<Expr> {
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
        let network = u32::from(net) & mask;
        let mut exprs = vec![
            Expr::Meta { key: MetaKey::NfProto, dreg: REG_1 },
            Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![NFPROTO_IPV4] },
            Expr::Payload { base: PayloadBase::Network, offset, len: 4, dreg: REG_1 },
        ];
        if mask != u32::MAX {
            exprs.push(Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: mask.to_be_bytes().to_vec(), xor: vec![0; 4] });
        }
        exprs.push(Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: network.to_be_bytes().to_vec() });
        exprs
    }

    /// Loads a host-order u32 (ct state, ct status), masks it, and matches if any bit is set.
    pub fn any_bit(load: Expr, bits: u32) -> [Expr; 3] {
        [
            load,
            Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: bits.to_ne_bytes().to_vec(), xor: vec![0; 4] },
            Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: vec![0; 4] },
        ]
    }
}

/// An interface name as nftables stores it: `IFNAMSIZ` bytes, NUL-padded.
pub fn ifname_bytes(name: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let n = name.len().min(15);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    bytes
}

/// The types of a set's key or data as nft names them (stored for `nft list`, unused by the
/// kernel): `TYPE_IPADDR`, `TYPE_INET_SERVICE`, `TYPE_IFNAME`; a concatenation is their ids
/// shifted by 6 bits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataType {
    Ipv4Addr = 7,
    InetService = 13,
    IfName = 41,
}

impl DataType {
    fn len(self) -> u32 {
        match self {
            DataType::Ipv4Addr => 4,
            DataType::InetService => 2,
            DataType::IfName => 16,
        }
    }
}

fn concat_type(fields: &[DataType]) -> (u32, u32) {
    let id = fields.iter().fold(0u32, |id, t| (id << 6) | *t as u32);
    let len = fields.iter().map(|t| (t.len() + 3) & !3).sum();
    (id, len)
}

/// A map's values: concatenated data, or verdicts (a vmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapData<'a> {
    Data(&'a [DataType]),
    Verdict,
}

/// A map element's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementData {
    Data(Vec<u8>),
    Verdict(Verdict),
}

const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_SET_MAP: u32 = 0x8;

/// Attributes being written: a buffer with nesting.
#[derive(Debug, Default)]
struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        // Wharf's attributes are far below the 64 KiB a netlink attribute can hold.
        self.buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }

    fn put_u32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        fill(&mut inner);
        self.put(kind | NLA_F_NESTED, &inner.buf);
    }

    /// `NFTA_DATA_VALUE` inside a nest of `kind`.
    fn put_data(&mut self, kind: u16, value: &[u8]) {
        self.nest(kind, |a| a.put(1, value));
    }

    fn put_verdict(&mut self, kind: u16, verdict: &Verdict) {
        self.nest(kind, |data| {
            data.nest(2, |v| match verdict {
                Verdict::Accept => v.put_u32(1, 1),
                // NFT_RETURN
                Verdict::Return => v.put_u32(1, (-5i32) as u32),
                Verdict::Jump(chain) => {
                    v.put_u32(1, (-3i32) as u32);
                    v.put_str(2, chain);
                }
            })
        });
    }
}

/// Writes one expression's attributes.
type FillAttrs<'a> = dyn Fn(&mut Attrs) + 'a;

fn encode_expr(list: &mut Attrs, expr: &Expr) {
    let (name, fill): (&str, Box<FillAttrs<'_>>) = match expr {
        Expr::Meta { key, dreg } => (
            "meta",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, *dreg);
                a.put_u32(2, *key as u32);
            }),
        ),
        Expr::Payload { base, offset, len, dreg } => (
            "payload",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, *dreg);
                a.put_u32(2, *base as u32);
                a.put_u32(3, *offset);
                a.put_u32(4, *len);
            }),
        ),
        Expr::Cmp { sreg, op, data } => (
            "cmp",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, *sreg);
                a.put_u32(2, *op as u32);
                a.put_data(3, data);
            }),
        ),
        Expr::Bitwise { sreg, dreg, mask, xor } => (
            "bitwise",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, *sreg);
                a.put_u32(2, *dreg);
                a.put_u32(3, u32::try_from(mask.len()).unwrap_or(u32::MAX));
                a.put_data(4, mask);
                a.put_data(5, xor);
            }),
        ),
        Expr::Ct { key, dreg, original_direction } => (
            "ct",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, *dreg);
                a.put_u32(2, *key as u32);
                if *original_direction {
                    a.put(3, &[0]);
                }
            }),
        ),
        Expr::Lookup { set, sreg, dreg } => (
            "lookup",
            Box::new(|a: &mut Attrs| {
                a.put_str(1, set);
                a.put_u32(2, *sreg);
                if let Some(dreg) = *dreg {
                    a.put_u32(3, dreg);
                }
            }),
        ),
        Expr::FibDaddrType { dreg } => (
            "fib",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, *dreg);
                // NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR
                a.put_u32(2, 3);
                a.put_u32(3, 2);
            }),
        ),
        Expr::Counter => (
            "counter",
            Box::new(|a: &mut Attrs| {
                a.put(1, &0u64.to_be_bytes());
                a.put(2, &0u64.to_be_bytes());
            }),
        ),
        Expr::RejectAdminProhibited => (
            "reject",
            Box::new(|a: &mut Attrs| {
                // NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED
                a.put_u32(1, 2);
                a.put(2, &[3]);
            }),
        ),
        Expr::DnatIpv4 { addr, port } => (
            "nat",
            Box::new(|a: &mut Attrs| {
                // NFT_NAT_DNAT, NFPROTO_IPV4; NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED
                a.put_u32(1, 1);
                a.put_u32(2, u32::from(NFPROTO_IPV4));
                a.put_u32(3, *addr);
                a.put_u32(5, *port);
                a.put_u32(7, 0x1 | 0x2);
            }),
        ),
        Expr::Masquerade => ("masq", Box::new(|_: &mut Attrs| {})),
        Expr::Immediate(verdict) => (
            "immediate",
            Box::new(|a: &mut Attrs| {
                a.put_u32(1, REG_VERDICT);
                a.put_verdict(2, verdict);
            }),
        ),
    };
    list.nest(1, |elem| {
        elem.put_str(1, name);
        elem.nest(2, |data| fill(data));
    });
}

/// One nftables transaction being built.
#[derive(Debug)]
pub struct Batch {
    messages: Vec<(u16, u16, Family, Attrs, String)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch { messages: Vec::new() }
    }

    fn push(&mut self, kind: u16, flags: u16, family: Family, what: String, attrs: Attrs) {
        self.messages.push((kind, flags, family, attrs, what));
    }

    pub fn add_table(&mut self, family: Family, table: &str) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, format!("adding table {table}"), a);
    }

    pub fn delete_table(&mut self, family: Family, table: &str) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        self.push(NFT_MSG_DELTABLE, 0, family, format!("deleting table {table}"), a);
    }

    /// Adds a chain (or, if it exists, leaves it as it is).
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &str, base: Option<BaseChain>) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(3, chain);
        if let Some(base) = base {
            a.nest(4, |hook| {
                hook.put_u32(1, base.hook as u32);
                hook.put_u32(2, base.priority as u32);
            });
            a.put_u32(5, 1);
            a.put_str(7, base.kind);
        }
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, format!("adding chain {table} {chain}"), a);
    }

    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(3, chain);
        self.push(NFT_MSG_DELCHAIN, 0, family, format!("deleting chain {table} {chain}"), a);
    }

    /// Removes every rule of a chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(2, chain);
        self.push(NFT_MSG_DELRULE, 0, family, format!("flushing chain {table} {chain}"), a);
    }

    /// Appends a rule.
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, exprs: &[Expr]) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(2, chain);
        a.nest(4, |list| exprs.iter().for_each(|e| encode_expr(list, e)));
        self.push(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | 0x800, /* NLM_F_APPEND */
            family,
            format!("adding a rule to chain {table} {chain}"),
            a,
        );
    }

    /// Adds a named map with a (concatenated) key (or leaves an existing one as it is).
    pub fn add_map(&mut self, family: Family, table: &str, map: &str, key: &[DataType], data: MapData<'_>) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(2, map);
        a.put_u32(3, NFT_SET_MAP);
        let (key_type, key_len) = concat_type(key);
        a.put_u32(4, key_type);
        a.put_u32(5, key_len);
        match data {
            MapData::Data(fields) => {
                let (data_type, data_len) = concat_type(fields);
                a.put_u32(6, data_type);
                a.put_u32(7, data_len);
            }
            MapData::Verdict => a.put_u32(6, NFT_DATA_VERDICT),
        }
        // NFTA_SET_ID: any number unique in this transaction.
        a.put_u32(10, u32::try_from(self.messages.len()).unwrap_or(u32::MAX).wrapping_add(1));
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, family, format!("adding map {table} {map}"), a);
    }

    pub fn add_elements(&mut self, family: Family, table: &str, map: &str, elements: &[(Vec<u8>, ElementData)]) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(2, map);
        a.nest(3, |list| {
            for (key, data) in elements {
                list.nest(1, |elem| {
                    elem.put_data(1, key);
                    match data {
                        ElementData::Data(bytes) => elem.put_data(2, bytes),
                        ElementData::Verdict(verdict) => elem.put_verdict(2, verdict),
                    }
                });
            }
        });
        self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, format!("adding elements to {table} {map}"), a);
    }

    pub fn delete_elements(&mut self, family: Family, table: &str, map: &str, keys: &[Vec<u8>]) {
        let mut a = Attrs::default();
        a.put_str(1, table);
        a.put_str(2, map);
        a.nest(3, |list| {
            for key in keys {
                list.nest(1, |elem| elem.put_data(1, key));
            }
        });
        self.push(NFT_MSG_DELSETELEM, 0, family, format!("removing elements from {table} {map}"), a);
    }

    /// The transaction as bytes, sequence numbers from `seq`, and what each acknowledged
    /// message was (for errors).
    pub fn encode(&self, mut seq: impl FnMut() -> u32) -> (Vec<u8>, Vec<(u32, String)>) {
        let mut buf = Vec::new();
        let mut acks = Vec::new();
        let subsys_id = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        let begin_end_attrs = Attrs::default();
        write_message(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq(), 0, subsys_id, &begin_end_attrs);
        for (kind, flags, family, attrs, what) in &self.messages {
            let s = seq();
            let message_type = (NFNL_SUBSYS_NFTABLES << 8) | kind;
            write_message(&mut buf, message_type, NLM_F_REQUEST | NLM_F_ACK | flags, s, *family as u8, [0, 0], attrs);
            acks.push((s, what.clone()));
        }
        write_message(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq(), 0, subsys_id, &begin_end_attrs);
        (buf, acks)
    }

    /// Sends the transaction on a fresh nfnetlink socket; the kernel applies all of it or
    /// none of it.
    pub fn commit(&self) -> Result<(), NetlinkError> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let mut socket = NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)
            .map_err(|source| NetlinkError { request: "opening an nftables netlink socket".to_owned(), source })?;
        let (buf, acks) = self.encode(|| socket.seq());
        socket.exchange(&buf, &acks).map(drop)
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

fn write_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: [u8; 2], attrs: &Attrs) {
    let len = 16 + 4 + attrs.buf.len();
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0, res_id[0], res_id[1]]);
    buf.extend_from_slice(&attrs.buf);
}

#[cfg(test)]
mod tests {
    //! Decodes what the encoder wrote back into messages and attribute trees, and checks them
    //! against the kernel's format.

    use super::*;

    /// `(type without NLA_F_NESTED, nested?, value)` of each attribute in `buf`.
    fn attrs(mut buf: &[u8]) -> Vec<(u16, bool, &[u8])> {
        let mut out = Vec::new();
        while buf.len() >= 4 {
            let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
            let kind = u16::from_ne_bytes([buf[2], buf[3]]);
            assert!(len >= 4 && len <= buf.len(), "attribute length {len} out of {}", buf.len());
            out.push((kind & !NLA_F_NESTED, kind & NLA_F_NESTED != 0, &buf[4..len]));
            buf = &buf[align4(len).min(buf.len())..];
        }
        assert!(buf.is_empty(), "trailing bytes after attributes");
        out
    }

    fn attr<'a>(list: &[(u16, bool, &'a [u8])], kind: u16) -> &'a [u8] {
        list.iter().find(|(k, _, _)| *k == kind).unwrap_or_else(|| panic!("no attribute {kind}")).2
    }

    /// `(type, flags, seq, family, attributes)` of each message.
    type Message = (u16, u16, u32, u8, Vec<u8>);

    fn messages(mut buf: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let flags = u16::from_ne_bytes([buf[6], buf[7]]);
            let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
            out.push((kind, flags, seq, buf[16], buf[20..len].to_vec()));
            buf = &buf[len..];
        }
        out
    }

    fn encoded(batch: &Batch) -> (Vec<Message>, Vec<(u32, String)>) {
        let mut n = 100;
        let (buf, acks) = batch.encode(|| {
            n += 1;
            n
        });
        (messages(&buf), acks)
    }

    #[test]
    fn a_batch_is_wrapped_in_begin_and_end_and_every_message_asks_for_an_ack() {
        let mut batch = Batch::new();
        batch.add_table(Family::Inet, "t");
        batch.delete_table(Family::Inet, "t");
        let (msgs, acks) = encoded(&batch);
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[3].0, NFNL_MSG_BATCH_END);
        assert_eq!(msgs[1].0, (10 << 8) | NFT_MSG_NEWTABLE);
        assert_eq!(msgs[2].0, (10 << 8) | NFT_MSG_DELTABLE);
        assert_eq!(msgs[1].3, Family::Inet as u8);
        assert!(msgs[1].1 & NLM_F_ACK != 0 && msgs[1].1 & NLM_F_CREATE != 0);
        assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), vec![msgs[1].2, msgs[2].2]);
        assert_eq!(attr(&attrs(&msgs[1].4), 1), b"t\0");
    }

    #[test]
    fn a_base_chain_carries_hook_priority_policy_and_type() {
        let mut batch = Batch::new();
        let base = BaseChain { kind: "nat", hook: Hook::Prerouting, priority: -100 };
        batch.add_chain(Family::Inet, "t", "prerouting", Some(base));
        let (msgs, _) = encoded(&batch);
        let a = attrs(&msgs[1].4);
        assert_eq!(attr(&a, 3), b"prerouting\0");
        let hook = attrs(attr(&a, 4));
        assert_eq!(attr(&hook, 1), 0u32.to_be_bytes());
        assert_eq!(i32::from_be_bytes(attr(&hook, 2).try_into().unwrap()), -100);
        assert_eq!(attr(&a, 5), 1u32.to_be_bytes());
        assert_eq!(attr(&a, 7), b"nat\0");
    }

    #[test]
    fn a_rule_lists_its_expressions_with_their_registers_and_data() {
        let mut batch = Batch::new();
        let mut exprs: Vec<Expr> = Expr::interface(MetaKey::IifName, CmpOp::Eq, "wh*").to_vec();
        exprs.extend(Expr::ipv4_in(16, Ipv4Addr::new(10, 1, 2, 3), 8));
        exprs.push(Expr::Immediate(Verdict::Jump("next".into())));
        batch.add_rule(Family::Inet, "t", "c", &exprs);
        let (msgs, _) = encoded(&batch);
        let a = attrs(&msgs[1].4);
        assert_eq!(attr(&a, 2), b"c\0");
        let list = attrs(attr(&a, 4));
        let names: Vec<&[u8]> = list.iter().map(|(_, _, e)| attr(&attrs(e), 1)).collect();
        let expected: [&[u8]; 8] =
            [b"meta\0", b"cmp\0", b"meta\0", b"cmp\0", b"payload\0", b"bitwise\0", b"cmp\0", b"immediate\0"];
        assert_eq!(names, expected);
        let data = |i: usize| attrs(attr(&attrs(list[i].2), 2));
        // iifname "wh*" compares the two-byte prefix only.
        assert_eq!(attr(&data(0), 2), (MetaKey::IifName as u32).to_be_bytes());
        assert_eq!(attr(&attrs(attr(&data(1), 3)), 1), b"wh");
        // 10.1.2.3/8 is masked to 10.0.0.0.
        assert_eq!(attr(&data(4), 3), 16u32.to_be_bytes());
        assert_eq!(attr(&attrs(attr(&data(5), 4)), 1), [255, 0, 0, 0]);
        assert_eq!(attr(&attrs(attr(&data(6), 3)), 1), [10, 0, 0, 0]);
        // jump next: verdict code NFT_JUMP and the chain.
        let verdict = attrs(attr(&attrs(attr(&data(7), 2)), 2));
        assert_eq!(i32::from_be_bytes(attr(&verdict, 1).try_into().unwrap()), -3);
        assert_eq!(attr(&verdict, 2), b"next\0");
    }

    #[test]
    fn a_concatenated_map_and_its_elements_use_four_byte_aligned_fields() {
        let mut batch = Batch::new();
        let key = [DataType::IfName, DataType::Ipv4Addr, DataType::InetService];
        batch.add_map(Family::Inet, "t", "m", &key, MapData::Data(&[DataType::Ipv4Addr, DataType::InetService]));
        let mut element = ifname_bytes("wh1").to_vec();
        element.extend_from_slice(&[169, 254, 169, 254, 0, 53, 0, 0]);
        batch.add_elements(
            Family::Inet,
            "t",
            "m",
            &[(element.clone(), ElementData::Data(vec![127, 0, 0, 1, 0x13, 0x88, 0, 0]))],
        );
        batch.delete_elements(Family::Inet, "t", "m", std::slice::from_ref(&element));
        let (msgs, _) = encoded(&batch);
        let set = attrs(&msgs[1].4);
        assert_eq!(attr(&set, 3), NFT_SET_MAP.to_be_bytes());
        assert_eq!(attr(&set, 4), ((41u32 << 12) | (7 << 6) | 13).to_be_bytes());
        assert_eq!(attr(&set, 5), 24u32.to_be_bytes());
        assert_eq!(attr(&set, 7), 8u32.to_be_bytes());
        let elems = attrs(attr(&attrs(&msgs[2].4), 3));
        assert_eq!(elems.len(), 1);
        let elem = attrs(elems[0].2);
        assert_eq!(attr(&attrs(attr(&elem, 1)), 1), element.as_slice());
        assert_eq!(attr(&attrs(attr(&elem, 2)), 1), [127, 0, 0, 1, 0x13, 0x88, 0, 0]);
        assert_eq!(msgs[3].0, (10 << 8) | NFT_MSG_DELSETELEM);
        let deleted = attrs(attr(&attrs(&msgs[3].4), 3));
        assert_eq!(attr(&attrs(attr(&attrs(deleted[0].2), 1)), 1), element.as_slice());
    }

    #[test]
    fn a_verdict_map_has_no_data_length_and_its_elements_carry_verdicts() {
        let mut batch = Batch::new();
        batch.add_map(Family::Inet, "t", "v", &[DataType::IfName], MapData::Verdict);
        let key = ifname_bytes("wh2").to_vec();
        batch.add_elements(Family::Inet, "t", "v", &[(key, ElementData::Verdict(Verdict::Jump("vpc".into())))]);
        let (msgs, _) = encoded(&batch);
        let set = attrs(&msgs[1].4);
        assert_eq!(attr(&set, 6), NFT_DATA_VERDICT.to_be_bytes());
        assert!(set.iter().all(|(k, _, _)| *k != 7));
        let elem = attrs(attrs(attr(&attrs(&msgs[2].4), 3))[0].2);
        let verdict = attrs(attr(&attrs(attr(&elem, 2)), 2));
        assert_eq!(attr(&verdict, 2), b"vpc\0");
    }
}
