//! The UDP echo datagram: fixed size, so a reply is never larger than its request (the echo
//! cannot amplify), and typed request/reply, so two echo ports can never bounce one datagram
//! between them (an echo answers requests only).

/// `KNUE`: a kubenurse UDP echo datagram.
pub const MAGIC: [u8; 4] = *b"KNUE";
/// The layout revision.
pub const VERSION: u8 = 1;
/// Bytes of every datagram, request and reply.
pub const LEN: usize = 32;

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a probing agent: answer it.
    Request = 1,
    /// From an echo: match it to a request.
    Reply = 2,
}

/// One datagram's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Request or reply.
    pub direction: Direction,
    /// The probing agent's random number for this neighbour and round.
    pub nonce: u64,
    /// The packet's number within the round, from 0.
    pub seq: u32,
    /// The sender's clock when sent (µs since the prober started); informational, the prober
    /// times replies from its own records.
    pub sent_micros: u64,
}

/// Why a datagram is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not [`LEN`] bytes.
    #[error("{0} bytes, expected {LEN}")]
    Length(usize),
    /// No magic, an unknown version or direction, or non-zero reserved bytes.
    #[error("not a kubenurse echo datagram")]
    Header,
}

impl Datagram {
    /// The bytes on the wire.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.direction as u8;
        b[8..16].copy_from_slice(&self.nonce.to_be_bytes());
        b[16..20].copy_from_slice(&self.seq.to_be_bytes());
        b[24..32].copy_from_slice(&self.sent_micros.to_be_bytes());
        b
    }

    /// Parses exactly [`LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != LEN {
            return Err(Malformed::Length(b.len()));
        }
        let direction = match b[5] {
            1 => Direction::Request,
            2 => Direction::Reply,
            _ => return Err(Malformed::Header),
        };
        if b[0..4] != MAGIC || b[4] != VERSION || b[6..8] != [0, 0] || b[20..24] != [0; 4] {
            return Err(Malformed::Header);
        }
        let u64_at =
            |i: usize| u64::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
        Ok(Self {
            direction,
            nonce: u64_at(8),
            seq: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            sent_micros: u64_at(24),
        })
    }

    /// The echo's answer to a request: the same datagram, marked a reply.
    pub fn reply(self) -> Self {
        Self { direction: Direction::Reply, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_ours() {
        let d = Datagram { direction: Direction::Request, nonce: u64::MAX - 7, seq: 9, sent_micros: 123_456 };
        let bytes = d.encode();
        assert_eq!(Datagram::decode(&bytes), Ok(d));
        assert_eq!(Datagram::decode(&d.reply().encode()).map(|r| r.direction), Ok(Direction::Reply));
        assert_eq!(d.reply().encode().len(), bytes.len(), "a reply is never larger");
        assert_eq!(Datagram::decode(&bytes[..31]), Err(Malformed::Length(31)));
        assert_eq!(Datagram::decode(&[0u8; 64]), Err(Malformed::Length(64)));
        for (i, v) in [(0, b'X'), (4, 2), (5, 0), (5, 3), (6, 1), (21, 1)] {
            let mut b = bytes;
            b[i] = v;
            assert_eq!(Datagram::decode(&b), Err(Malformed::Header), "byte {i} = {v}");
        }
    }
}
