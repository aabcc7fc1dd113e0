//! What waits to be streamed to one aggregator replica: bounded in entries and in bytes, the
//! oldest dropped first (and counted by the caller), and taken out in batches that always fit
//! in one gRPC message.

use std::collections::VecDeque;

use kubenurse_proto::v1::{CheckResult, ResultBatch, RoundEnd, UdpResult};
use kubenurse_proto::{MAX_MESSAGE_BYTES, MAX_RESULTS_PER_BATCH};
use prost::Message as _;

/// Entries one replica's queue holds before dropping the oldest.
pub const QUEUE_CAPACITY: usize = 20_000;
/// Encoded bytes one replica's queue holds before dropping the oldest (an aggregator away for
/// minutes costs each agent at most this much memory per replica).
pub const QUEUE_BYTES: usize = 8 << 20;
/// Encoded bytes of one batch at most: half the message limit leaves room for framing.
pub const BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// One queued thing to say.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A finished check.
    Result(CheckResult),
    /// The end of a round.
    RoundEnd(RoundEnd),
    /// A round's UDP probes to one neighbour.
    Udp(UdpResult),
}

impl Item {
    fn encoded_len(&self) -> usize {
        // Field tag and length prefix of the repeated field included.
        let len = match self {
            Item::Result(r) => r.encoded_len(),
            Item::RoundEnd(e) => e.encoded_len(),
            Item::Udp(u) => u.encoded_len(),
        };
        len + prost::length_delimiter_len(len) + 1
    }
}

/// A bounded FIFO of items with their encoded sizes.
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<(Item, usize)>,
    bytes: usize,
}

impl Outbox {
    /// Entries queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Encoded bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `item` last; returns how many of the oldest were dropped to make room.
    pub fn push(&mut self, item: Item) -> u64 {
        let size = item.encoded_len();
        let mut dropped = 0;
        while !self.items.is_empty() && (self.items.len() >= QUEUE_CAPACITY || self.bytes + size > QUEUE_BYTES) {
            if let Some((_, s)) = self.items.pop_front() {
                self.bytes -= s;
                dropped += 1;
            }
        }
        self.bytes += size;
        self.items.push_back((item, size));
        dropped
    }

    /// Takes the oldest items making one batch: at most [`MAX_RESULTS_PER_BATCH`] entries and
    /// [`BATCH_BYTES`] (a single item larger than that goes alone).
    pub fn take_batch(&mut self) -> Vec<Item> {
        let (mut n, mut bytes) = (0, 0);
        for (_, size) in &self.items {
            if n == MAX_RESULTS_PER_BATCH || (n > 0 && bytes + size > BATCH_BYTES) {
                break;
            }
            n += 1;
            bytes += size;
        }
        self.bytes -= bytes;
        self.items.drain(..n).map(|(item, _)| item).collect()
    }

    /// Puts a batch that could not be sent back in front, as far as the bounds allow (newer
    /// items win: they are what the aggregator lacks most). Returns how many were dropped.
    pub fn put_back(&mut self, batch: Vec<Item>) -> u64 {
        let mut dropped = 0;
        for item in batch.into_iter().rev() {
            let size = item.encoded_len();
            if self.items.len() < QUEUE_CAPACITY && self.bytes + size <= QUEUE_BYTES {
                self.bytes += size;
                self.items.push_front((item, size));
            } else {
                dropped += 1;
            }
        }
        dropped
    }
}

/// The batch message for `items`.
pub fn batch_of(items: Vec<Item>) -> ResultBatch {
    let mut batch = ResultBatch::default();
    for item in items {
        match item {
            Item::Result(r) => batch.results.push(r),
            Item::RoundEnd(e) => batch.round_ends.push(e),
            Item::Udp(u) => batch.udp_results.push(u),
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(error_len: usize) -> Item {
        Item::Result(CheckResult { error: "x".repeat(error_len), round: 1, ..CheckResult::default() })
    }

    #[test]
    fn bounded_in_entries_and_bytes_oldest_first() {
        let mut q = Outbox::default();
        let mut dropped = 0;
        for _ in 0..QUEUE_CAPACITY + 10 {
            dropped += q.push(result(1));
        }
        assert_eq!((q.len(), dropped), (QUEUE_CAPACITY, 10));
        let mut q = Outbox::default();
        let mut dropped = 0;
        for _ in 0..100 {
            dropped += q.push(result(200_000));
        }
        assert!(q.bytes() <= QUEUE_BYTES, "{} bytes", q.bytes());
        assert_eq!(q.len() as u64 + dropped, 100);
        assert!(dropped > 50, "{dropped}");
    }

    #[test]
    fn batches_fit_one_message_and_the_byte_count_stays_true() {
        let mut q = Outbox::default();
        for i in 0..3000 {
            q.push(result(if i % 10 == 0 { 2000 } else { 100 }));
        }
        let mut sent = 0;
        while !q.is_empty() {
            let before = q.bytes();
            let items = q.take_batch();
            assert!(!items.is_empty() && items.len() <= MAX_RESULTS_PER_BATCH);
            let encoded = batch_of(items.clone()).encoded_len();
            assert!(encoded <= BATCH_BYTES, "{encoded}");
            assert_eq!(before - q.bytes(), encoded, "bytes accounted as encoded");
            sent += items.len();
        }
        assert_eq!((sent, q.bytes()), (3000, 0));
        // A failed send goes back in front, in order.
        q.push(result(3));
        let batch = vec![result(1), result(2)];
        assert_eq!(q.put_back(batch.clone()), 0);
        assert_eq!(q.take_batch(), [batch, vec![result(3)]].concat());
    }
}
