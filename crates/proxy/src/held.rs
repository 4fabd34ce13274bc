//! The global bound of backpressure: bytes of answers handed to client connections and not yet
//! written to their sockets. Each exchange holds little ([`crate::server::UPSTREAM_READ_BUF`],
//! the HTTP/2 send buffer); many clients that do not read could still add up. Chunks of
//! [`ACCOUNTED`] bytes or more are counted while hyper holds them (the count drops when hyper
//! has written and dropped the chunk); over `limits.max_held_response_bytes`, new requests are
//! refused with 503 until clients drain or leave (as Envoy's overload manager stops accepting
//! requests), so memory stops growing with more of them.

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;

/// Smaller chunks (most answers: one small JSON body) cost nothing here and hold little.
const ACCOUNTED: usize = 4096;

/// The count, shared by every connection's stack: `modelstamp_response_bytes_held`.
#[derive(Clone, Debug, Default)]
pub struct Held {
    gauge: Gauge,
}

impl Held {
    /// Count into `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self { gauge }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.gauge.get()).unwrap_or(0)
    }

    /// `data`, counted until the last copy of it is dropped.
    pub fn account(&self, data: Bytes) -> Bytes {
        if data.len() < ACCOUNTED {
            return data;
        }
        let n = i64::try_from(data.len()).unwrap_or(i64::MAX);
        self.gauge.inc_by(n);
        Bytes::from_owner(Chunk {
            data,
            gauge: self.gauge.clone(),
            n,
        })
    }
}

struct Chunk {
    data: Bytes,
    gauge: Gauge,
    n: i64,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.gauge.dec_by(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_chunks_count_until_every_copy_is_dropped() {
        let held = Held::default();
        let small = held.account(Bytes::from(vec![1u8; ACCOUNTED - 1]));
        assert_eq!(held.bytes(), 0, "small chunks are not counted");
        let big = held.account(Bytes::from(vec![2u8; 10_000]));
        assert_eq!(held.bytes(), 10_000);
        assert_eq!(&big[..3], &[2, 2, 2]);
        let part = big.slice(100..200);
        drop(big);
        assert_eq!(held.bytes(), 10_000, "a slice still holds the chunk");
        drop(part);
        assert_eq!(held.bytes(), 0);
        drop(small);
    }
}
