//! Just enough of the DNS wire format (RFC 1035) to read a query's question and to answer it
//! with one A record, an empty answer or an error code. Queries Wharf does not answer itself
//! are forwarded as the bytes that came in, so nothing else needs decoding.

use std::net::Ipv4Addr;

const HEADER_LEN: usize = 12;
pub const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const FLAG_RESPONSE: u16 = 0x8000;
const FLAG_AUTHORITATIVE: u16 = 0x0400;
const FLAG_RECURSION_DESIRED: u16 = 0x0100;
const FLAG_RECURSION_AVAILABLE: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;

/// Response codes Wharf sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
}

/// The single question of a standard query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message (the answer copies it).
    end: usize,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The query's ID, if the message is long enough to have a header.
pub fn id(query: &[u8]) -> Option<u16> {
    (query.len() >= HEADER_LEN).then(|| u16_at(query, 0)).flatten()
}

/// The question of a standard query (not a response, opcode QUERY, exactly one question
/// with an uncompressed name); `None` for anything else.
pub fn question(query: &[u8]) -> Option<Question> {
    let flags = u16_at(query, 2)?;
    if flags & FLAG_RESPONSE != 0 || flags & OPCODE_MASK != 0 || u16_at(query, 4)? != 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers do not occur in questions
        }
        let label = query.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16_at(query, at)?;
    let qclass = u16_at(query, at + 2)?;
    Some(Question { name: labels.join("."), qtype, qclass, end: at + 4 })
}

/// A response to `query` (whose question is `question`): `answer` as one A record with
/// `ttl` if given, else no answer records, with `rcode`. Additional records (EDNS) of the
/// query are not echoed.
pub fn respond(query: &[u8], question: &Question, answer: Option<(Ipv4Addr, u32)>, rcode: Rcode) -> Vec<u8> {
    let query_flags = u16_at(query, 2).unwrap_or(0);
    let flags = FLAG_RESPONSE
        | FLAG_AUTHORITATIVE
        | FLAG_RECURSION_AVAILABLE
        | (query_flags & (OPCODE_MASK | FLAG_RECURSION_DESIRED))
        | rcode as u16;
    let mut out = Vec::with_capacity(question.end + 16);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[HEADER_LEN..question.end]);
    if let Some((addr, ttl)) = answer {
        out.extend_from_slice(&[0xc0, 12]); // a pointer to the question's name, right after the header
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}

/// An error response carrying only the header (for a query whose question cannot be read).
pub fn error_header(id: u16, rcode: Rcode) -> Vec<u8> {
    let flags = FLAG_RESPONSE | FLAG_RECURSION_AVAILABLE | rcode as u16;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// Whether `class` is the Internet class that A answers belong to.
pub fn is_internet(question: &Question) -> bool {
    question.qclass == CLASS_IN
}

#[cfg(test)]
pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&FLAG_RECURSION_DESIRED.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_read_lowercase_without_the_root() {
        let q = query(7, "Metadata.Google.Internal.", TYPE_A);
        let question = question(&q).unwrap();
        assert_eq!(question.name, "metadata.google.internal");
        assert_eq!(question.qtype, TYPE_A);
        assert_eq!(id(&q), Some(7));
    }

    #[test]
    fn an_a_answer_points_back_at_the_question() {
        let q = query(0x1234, "metadata.google.internal", TYPE_A);
        let question = question(&q).unwrap();
        let r = respond(&q, &question, Some((Ipv4Addr::new(169, 254, 169, 254), 60)), Rcode::NoError);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(u16_at(&r, 2).unwrap() & 0x800f, 0x8000); // a response, NOERROR
        assert_eq!(u16_at(&r, 6), Some(1)); // one answer
        assert_eq!(&r[r.len() - 4..], &[169, 254, 169, 254]);
        assert_eq!(&r[r.len() - 16..r.len() - 14], &[0xc0, 12]);
    }

    #[test]
    fn truncated_and_non_queries_have_no_question() {
        let q = query(1, "example.com", TYPE_A);
        assert_eq!(question(&q[..q.len() - 1]), None);
        assert_eq!(question(&q[..5]), None);
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(question(&response), None);
        let mut label_too_long = q;
        label_too_long[12] = 0xc0;
        assert_eq!(question(&label_too_long), None);
    }
}
