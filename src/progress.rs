//! Progress of long work (reading, copying, verifying a million keys or a gigabyte), logged every 5 s
//! by a thread of its own, so that a phase waiting on etcd or on a disk still shows it is moving:
//! done/total, rate and ETA as fields, in text and JSON logs alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::info;

const EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Keys,
    Bytes,
    Revisions,
}

/// Logs `what`'s progress every 5 s until dropped.
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Option<mpsc::Sender<()>>,
    reporter: Option<JoinHandle<()>>,
}

impl Progress {
    /// `total` is `None` where it cannot be known in advance.
    pub fn start(what: &'static str, unit: Unit, total: Option<u64>) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let counter = done.clone();
        let started = Instant::now();
        let reporter = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                report(what, unit, counter.load(Ordering::Relaxed), total, started.elapsed());
            }
        });
        Progress { done, stop: Some(stop), reporter: Some(reporter) }
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// For work measured from outside (another process's reads).
    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(reporter) = self.reporter.take() {
            let _ = reporter.join();
        }
    }
}

fn report(what: &str, unit: Unit, done: u64, total: Option<u64>, elapsed: Duration) {
    let per_second = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let rate = match unit {
        Unit::Keys => format!("{per_second:.0} keys/s"),
        Unit::Bytes => format!("{:.0} MB/s", per_second / 1e6),
        Unit::Revisions => format!("{per_second:.0} revisions/s"),
    };
    let eta = match total {
        Some(total) if per_second > 0.0 => format!("{:.0}s", total.saturating_sub(done) as f64 / per_second),
        _ => "unknown".to_string(),
    };
    let total = total.map_or_else(|| "unknown".to_string(), |total| total.to_string());
    info!(done, total = %total, rate = %rate, eta = %eta, "{what}");
}
