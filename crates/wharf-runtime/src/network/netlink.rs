//! The one netlink exchange the network code needs, for both protocols it speaks (rtnetlink
//! for links, addresses and routes; nfnetlink for nftables): send a buffer of requests, each
//! asking for an acknowledgement, and wait until every one is acknowledged or one fails.
//! Every call is a few microseconds of syscalls; callers run it off the async threads.

use std::io;

use netlink_sys::Socket;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// How long an exchange waits for the kernel's next answer.
const ANSWER_TIMEOUT_SECS: i64 = 5;

/// A failed netlink request: which one (the caller's description of the message with that
/// sequence number) and the kernel's errno.
#[derive(Debug, thiserror::Error)]
#[error("{request} failed: {source}")]
pub struct NetlinkError {
    pub request: String,
    #[source]
    pub source: io::Error,
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A bound netlink socket of one protocol, in the network namespace of the thread that
/// opened it (it stays there whatever that thread does afterwards).
#[derive(Debug)]
pub struct NetlinkSocket {
    socket: Socket,
    next_seq: u32,
}

impl NetlinkSocket {
    pub fn open(protocol: isize) -> io::Result<NetlinkSocket> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        // The kernel answers at once; a request it never acknowledged must not hang a start.
        let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT_SECS, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        Ok(NetlinkSocket { socket, next_seq: 1 })
    }

    /// The next sequence number to put in a request.
    pub fn seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Sends `requests` (one or more netlink messages) and waits for an acknowledgement of
    /// each sequence number in `acks`, whose string says what that request was for errors.
    /// Returns the other messages answering those sequence numbers (e.g. a `RTM_NEWLINK`
    /// answering a `RTM_GETLINK`). The first error fails the whole exchange.
    pub fn exchange(&mut self, requests: &[u8], acks: &[(u32, String)]) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let fail = |request: &str, source: io::Error| NetlinkError { request: request.to_owned(), source };
        let sent = self.socket.send(requests, 0).map_err(|e| fail("sending netlink requests", e))?;
        if sent != requests.len() {
            return Err(fail("sending netlink requests", io::Error::other("short send")));
        }
        let mut pending: Vec<&(u32, String)> = acks.iter().collect();
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = self.socket.recv(&mut &mut buf[..], 0).map_err(|e| fail("receiving netlink answers", e))?;
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(fail("receiving netlink answers", io::Error::other("malformed netlink message")));
                }
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                let message = &rest[..len];
                rest = &rest[align4(len).min(rest.len())..];
                let error_code = (kind == NLMSG_ERROR && message.len() >= NLMSG_HDRLEN + 4)
                    .then(|| i32::from_ne_bytes([message[16], message[17], message[18], message[19]]));
                let Some(position) = pending.iter().position(|(s, _)| *s == seq) else {
                    // The socket is this exchange's alone: an error for another sequence
                    // number is the kernel refusing the batch frame itself (its begin or end).
                    if let Some(code) = error_code.filter(|c| *c != 0) {
                        return Err(fail("a netlink batch", io::Error::from_raw_os_error(-code)));
                    }
                    continue;
                };
                match kind {
                    NLMSG_ERROR if message.len() >= NLMSG_HDRLEN + 4 => {
                        let code = i32::from_ne_bytes([message[16], message[17], message[18], message[19]]);
                        if code != 0 {
                            return Err(fail(&pending[position].1, io::Error::from_raw_os_error(-code)));
                        }
                        pending.remove(position);
                    }
                    NLMSG_DONE => {}
                    _ => replies.push(message.to_vec()),
                }
            }
        }
        Ok(replies)
    }
}

pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}
