//! The masters' resident memory while something happens: sampled every
//! 5 ms from /proc, so a scenario can say how much more it took at most.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Resident memory of a process in MB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches(" kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Samples the processes' memory from `start` until `stop`.
pub struct PeakSampler {
    baseline: Vec<f64>,
    sampling: Arc<AtomicBool>,
    task: JoinHandle<Vec<f64>>,
}

/// What a `PeakSampler` saw, in MB per process.
pub struct Peaks {
    pub baseline: Vec<f64>,
    pub peaks: Vec<f64>,
}

impl Peaks {
    /// The most any process grew over its baseline.
    pub fn extra_mb(&self) -> f64 {
        self.peaks.iter().zip(&self.baseline).map(|(peak, base)| peak - base).fold(0.0, f64::max)
    }
}

impl PeakSampler {
    pub fn start(pids: &[u32]) -> PeakSampler {
        let baseline = pids.iter().map(|&pid| rss_mb(pid).unwrap_or(0.0)).collect();
        let sampling = Arc::new(AtomicBool::new(true));
        let (pids, running) = (pids.to_vec(), sampling.clone());
        let task = tokio::spawn(async move {
            let mut peaks = vec![0.0f64; pids.len()];
            while running.load(Ordering::Relaxed) {
                for (peak, &pid) in peaks.iter_mut().zip(&pids) {
                    *peak = peak.max(rss_mb(pid).unwrap_or(0.0));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peaks
        });
        PeakSampler { baseline, sampling, task }
    }

    pub async fn stop(self) -> anyhow::Result<Peaks> {
        self.sampling.store(false, Ordering::Relaxed);
        Ok(Peaks { baseline: self.baseline, peaks: self.task.await? })
    }
}
