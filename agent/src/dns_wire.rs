//! The DNS messages of a `dns://server:port/name` extra check (RFC 1035, pure): one question
//! for A or AAAA, and the count of matching addresses in the reply. Only what a check needs,
//! bounds-checked throughout: a malformed or hostile reply is an error, never a panic.

/// Record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type AAAA (an IPv6 address).
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Longest reply read (EDNS-less servers send at most 512 bytes over UDP).
pub const MAX_REPLY: usize = 4096;

/// Why a reply gives no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Cut short or inconsistent.
    #[error("malformed reply ({0})")]
    Malformed(&'static str),
    /// The server says the name does not exist.
    #[error("NXDOMAIN")]
    NxDomain,
    /// Any other non-zero response code (2 SERVFAIL, 5 REFUSED, …).
    #[error("response code {0}")]
    Rcode(u8),
}

/// A query for `name` (a validated DNS name) of `qtype`, recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// The id of a reply (`None` when too short to have one), to match it to its query.
pub fn reply_id(reply: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*reply.first()?, *reply.get(1)?]))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, DnsError> {
    match (b.get(at), b.get(at + 1)) {
        (Some(&hi), Some(&lo)) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(DnsError::Malformed("cut short")),
    }
}

/// The offset after the (possibly compressed) name at `at`.
fn skip_name(b: &[u8], mut at: usize) -> Result<usize, DnsError> {
    // A name has at most 127 labels; a longer walk is a loop.
    for _ in 0..128 {
        let len = *b.get(at).ok_or(DnsError::Malformed("name cut short"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                b.get(at + 1).ok_or(DnsError::Malformed("pointer cut short"))?;
                return Ok(at + 2);
            }
            l if l & 0xc0 != 0 => return Err(DnsError::Malformed("unknown label type")),
            l => at += 1 + usize::from(l),
        }
    }
    Err(DnsError::Malformed("name too long"))
}

/// How many `qtype` addresses the reply to query `id` holds (CNAMEs on the way are skipped).
pub fn addresses(reply: &[u8], id: u16, qtype: u16) -> Result<usize, DnsError> {
    if reply.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    if reply_id(reply) != Some(id) || reply[2] & 0x80 == 0 {
        return Err(DnsError::Malformed("not the reply to this query"));
    }
    match reply[3] & 0x0f {
        0 => {}
        3 => return Err(DnsError::NxDomain),
        rcode => return Err(DnsError::Rcode(rcode)),
    }
    let (questions, answers) = (u16_at(reply, 4)?, u16_at(reply, 6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(reply, at)? + 4;
    }
    let want_len = if qtype == TYPE_A { 4 } else { 16 };
    let mut found = 0;
    for _ in 0..answers {
        at = skip_name(reply, at)?;
        let (rtype, class) = (u16_at(reply, at)?, u16_at(reply, at + 2)?);
        let rdlength = usize::from(u16_at(reply, at + 8)?);
        at += 10;
        if reply.len() < at + rdlength {
            return Err(DnsError::Malformed("record data cut short"));
        }
        if rtype == qtype && class == CLASS_IN {
            if rdlength != want_len {
                return Err(DnsError::Malformed("address of the wrong length"));
            }
            found += 1;
        }
        at += rdlength;
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A reply to `q` with a CNAME then `ips` (4 or 16 bytes each), names compressed.
    pub(crate) fn reply(q: &[u8], rcode: u8, ips: &[&[u8]]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] = 0x81;
        r[3] = 0x80 | rcode;
        let answers = if ips.is_empty() { 0 } else { ips.len() + 1 };
        r[6..8].copy_from_slice(&(answers as u16).to_be_bytes());
        let qtype = u16::from_be_bytes([q[q.len() - 4], q[q.len() - 3]]);
        if !ips.is_empty() {
            // owner = pointer to the question's name; a CNAME to "x" + pointer
            r.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 4, 1, b'x', 0xc0, 12]);
            for ip in ips {
                r.extend_from_slice(&[0xc0, 12]);
                r.extend_from_slice(&qtype.to_be_bytes());
                r.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
                r.extend_from_slice(&(ip.len() as u16).to_be_bytes());
                r.extend_from_slice(ip);
            }
        }
        r
    }

    #[test]
    fn a_query_is_rfc_1035() {
        let q = query(0x1234, "kube-dns.kube-system", TYPE_A);
        let mut want = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 8];
        want.extend_from_slice(b"kube-dns");
        want.push(11);
        want.extend_from_slice(b"kube-system");
        want.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(q, want);
    }

    #[test]
    fn counts_addresses_past_cnames_and_names_the_failures() {
        let q = query(7, "a.example", TYPE_A);
        assert_eq!(addresses(&reply(&q, 0, &[&[10, 0, 0, 1], &[10, 0, 0, 2]]), 7, TYPE_A), Ok(2));
        assert_eq!(addresses(&reply(&q, 0, &[]), 7, TYPE_A), Ok(0), "NOERROR without data");
        assert_eq!(addresses(&reply(&q, 3, &[]), 7, TYPE_A), Err(DnsError::NxDomain));
        assert_eq!(addresses(&reply(&q, 2, &[]), 7, TYPE_A), Err(DnsError::Rcode(2)));
        let six = query(8, "a.example", TYPE_AAAA);
        assert_eq!(addresses(&reply(&six, 0, &[&[0; 16]]), 8, TYPE_AAAA), Ok(1));
        assert!(matches!(addresses(&reply(&q, 0, &[&[1, 2]]), 7, TYPE_A), Err(DnsError::Malformed(_))));
        assert!(matches!(addresses(&reply(&q, 0, &[]), 9, TYPE_A), Err(DnsError::Malformed(_))), "another id");
        assert!(matches!(addresses(&q, 7, TYPE_A), Err(DnsError::Malformed(_))), "a query is not a reply");
    }

    #[test]
    fn every_cut_or_corrupted_reply_is_an_error_not_a_panic() {
        let q = query(7, "a.example", TYPE_A);
        let good = reply(&q, 0, &[&[10, 0, 0, 1]]);
        for n in 0..good.len() {
            assert!(addresses(&good[..n], 7, TYPE_A).is_err(), "cut at {n}");
        }
        for i in 0..good.len() {
            for v in [0x00, 0x3f, 0x40, 0xc0, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = addresses(&bad, 7, TYPE_A);
            }
        }
        // A pointer loop in the answer's owner name ends (a pointer is never followed).
        let mut looped = good.clone();
        let owner = q.len();
        looped[owner..owner + 2].copy_from_slice(&[0xc0, owner as u8]);
        assert!(addresses(&looped, 7, TYPE_A).is_ok());
    }
}
