//! Pacing for the threads that consume per-request work (access log, inspection). A producer's
//! `try_send` wakes the consumer only when it is blocked in `recv`, so a consumer that waits a
//! moment after each wake-up before draining turns one wake-up per request into one per
//! interval. At 2,000 requests a second the access-log and inspection threads had woken about
//! once every three requests, each wake-up a futex call on the proxy worker and a context
//! switch competing with it for the cores.
//!
//! The wait adapts to the queue: a drained batch bigger than a quarter of the queue halves it
//! (the queue must never fill while the consumer sleeps), a batch under an eighth doubles it
//! back, up to the cap.

use std::time::Duration;

/// The longest wait after a wake-up: how late an access-log line or an inspection result may be.
pub const MAX_GATHER: Duration = Duration::from_millis(5);

/// The shortest wait, under a load that nearly fills the queue every interval.
pub const MIN_GATHER: Duration = Duration::from_micros(250);

/// How long the consumer waits after a wake-up, adjusted after each batch.
#[derive(Debug, Clone)]
pub struct Gather {
    delay: Duration,
    capacity: usize,
}

impl Gather {
    /// Pacing for a queue of `capacity` items, starting at the longest wait.
    pub fn new(capacity: usize) -> Self {
        Self {
            delay: MAX_GATHER,
            capacity: capacity.max(1),
        }
    }

    /// The current wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Wait before draining (called after a blocking receive returned an item).
    pub fn wait(&self) {
        std::thread::sleep(self.delay);
    }

    /// A batch of `n` items was drained: shorten the wait when the queue came close to full,
    /// lengthen it back when the batches are small.
    pub fn drained(&mut self, n: usize) {
        if n > self.capacity / 4 {
            self.delay = (self.delay / 2).max(MIN_GATHER);
        } else if n <= self.capacity / 8 {
            self.delay = (self.delay * 2).min(MAX_GATHER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_halves_when_batches_near_the_queue_and_recovers_when_small() {
        let mut g = Gather::new(1024);
        assert_eq!(g.delay(), MAX_GATHER);
        g.drained(300); // over a quarter
        assert_eq!(g.delay(), MAX_GATHER / 2);
        g.drained(300);
        assert_eq!(g.delay(), MAX_GATHER / 4);
        g.drained(200); // between an eighth and a quarter: unchanged
        assert_eq!(g.delay(), MAX_GATHER / 4);
        for _ in 0..20 {
            g.drained(1000);
        }
        assert_eq!(g.delay(), MIN_GATHER);
        g.drained(10);
        assert_eq!(g.delay(), MIN_GATHER * 2);
        for _ in 0..20 {
            g.drained(1);
        }
        assert_eq!(g.delay(), MAX_GATHER);
    }

    #[test]
    fn a_queue_of_one_still_paces() {
        let mut g = Gather::new(1);
        g.drained(1); // a full queue of one
        assert_eq!(g.delay(), MAX_GATHER / 2);
        g.drained(0);
        assert_eq!(g.delay(), MAX_GATHER);
    }
}
