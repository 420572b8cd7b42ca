//! A DNS server for tests, standing for the host's resolver (`wharf server
//! --upstream-resolv-conf`): answers the A query of one name, so a test can show a name
//! resolving through Wharf's resolver without any query leaving the machine.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A DNS server standing for the host's resolver: answers A queries for `known` with
/// `answer`, everything else with an empty NOERROR, and records the names it was asked.
#[derive(Debug)]
pub struct UpstreamResolver {
    pub addr: Ipv4Addr,
    /// The names it was asked, in order.
    pub asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl UpstreamResolver {
    /// Listens on UDP `addr`:53 from a thread until dropped.
    pub fn start(addr: Ipv4Addr, known: &'static str, answer: Ipv4Addr) -> UpstreamResolver {
        let socket = UdpSocket::bind((addr, 53)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (recorded, stopped) = (asked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else { continue };
                let Some((name, qtype, end)) = read_question(&buf[..len]) else { continue };
                recorded.lock().unwrap().push(name.clone());
                let found = name == known && qtype == 1;
                let mut reply = buf[..end].to_vec();
                reply[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
                reply[6..12].copy_from_slice(&[0, u8::from(found), 0, 0, 0, 0]);
                if found {
                    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    reply.extend_from_slice(&answer.octets());
                }
                let _ = socket.send_to(&reply, peer);
            }
        });
        UpstreamResolver { addr, asked, stop }
    }
}

impl Drop for UpstreamResolver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `(name, qtype, end of question)` of a query.
fn read_question(query: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}
