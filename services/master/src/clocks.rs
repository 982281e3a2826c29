//! One clock for a build's times. A worker's times (a step's start and end,
//! a build's end) are its own clock's, which may be minutes off; recorded
//! as they are, a worker behind shows negative durations and has its logs
//! pruned early. Every event says when its worker sent it, so a master
//! learns by how much each worker's clock differs from its own and records
//! times on its own clock. The difference is the smallest seen in the last
//! minute: an event that waited in a queue (a broker outage) looks later
//! than it is, never earlier, so the smallest is the closest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shared::ids::WorkerName;

/// How long one measurement stands before a later one replaces it even if
/// it is larger (the worker's clock may have been set right meanwhile).
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct WorkerClocks {
    offsets: Mutex<HashMap<WorkerName, (chrono::Duration, Instant)>>,
}

impl WorkerClocks {
    /// What to add to `worker`'s times to have this master's, learning
    /// from an event it sent at `sent_at` (its clock) that arrived now.
    /// Nothing is known without `sent_at` (workers of the previous version).
    pub fn offset(&self, worker: &WorkerName, sent_at: Option<DateTime<Utc>>) -> chrono::Duration {
        let mut offsets = self.offsets.lock().expect("clock lock poisoned");
        let Some(sent_at) = sent_at else {
            return offsets.get(worker).map_or(chrono::Duration::zero(), |(offset, _)| *offset);
        };
        let sample = Utc::now() - sent_at;
        let kept = offsets.get(worker).filter(|(offset, at)| at.elapsed() < WINDOW && *offset <= sample);
        match kept {
            Some((offset, _)) => *offset,
            None => {
                offsets.insert(worker.clone(), (sample, Instant::now()));
                sample
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_difference_seen_lately_is_the_clocks() {
        let clocks = WorkerClocks::default();
        let worker = WorkerName::new("w1");
        let behind = Utc::now() - chrono::Duration::minutes(10);
        let offset = clocks.offset(&worker, Some(behind));
        assert!((offset - chrono::Duration::minutes(10)).num_seconds().abs() <= 1, "{offset}");
        // An event that waited 30 s in a queue changes nothing.
        let delayed = clocks.offset(&worker, Some(behind - chrono::Duration::seconds(30)));
        assert_eq!(delayed, offset);
        assert_eq!(clocks.offset(&worker, None), offset, "an event without a time uses what is known");
        assert_eq!(clocks.offset(&WorkerName::new("w2"), None), chrono::Duration::zero());
    }
}
