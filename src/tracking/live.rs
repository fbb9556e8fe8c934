//! Step metrics sent while a stage runs: a [`Progress`] that passes
//! everything on to the console and also forwards the stage's step metrics
//! to its runs, gathered into one call at most every [`SEND_EVERY`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Metric;
use super::tracker::{RunHandle, Tracker, now_ms};
use crate::stage::Progress;

/// The shortest time between two calls that carry a stage's step metrics.
pub const SEND_EVERY: Duration = Duration::from_secs(1);

/// A stage's progress whose step metrics also go to MLflow runs as they come.
/// What is still gathered when it is dropped (the stage ended) is sent then.
pub struct LiveMetrics<'a> {
    inner: Box<dyn Progress + 'a>,
    tracker: &'a Tracker,
    runs: Vec<RunHandle>,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    metrics: Vec<Metric>,
    last_sent: Option<Instant>,
}

impl<'a> LiveMetrics<'a> {
    /// Wraps `inner`; step metrics go to every run of `runs`.
    pub fn new(inner: Box<dyn Progress + 'a>, tracker: &'a Tracker, runs: Vec<RunHandle>) -> LiveMetrics<'a> {
        LiveMetrics {
            inner,
            tracker,
            runs,
            pending: Mutex::default(),
        }
    }

    fn send(&self, pending: &mut Pending) {
        if pending.metrics.is_empty() {
            return;
        }
        for &run in &self.runs {
            self.tracker.log(run, &pending.metrics, Vec::new(), Vec::new());
        }
        pending.metrics.clear();
        pending.last_sent = Some(Instant::now());
    }
}

impl Progress for LiveMetrics<'_> {
    fn set_total(&self, total: u64, unit: &str) {
        self.inner.set_total(total, unit);
    }

    fn advance(&self, n: u64) {
        self.inner.advance(n);
    }

    fn message(&self, text: &str) {
        self.inner.message(text);
    }

    fn metrics(&self, step: u64, values: &[(&str, f64)]) {
        self.inner.metrics(step, values);
        let timestamp = now_ms();
        let mut pending = self.pending.lock().expect("live metrics lock");
        pending.metrics.extend(values.iter().map(|&(key, value)| Metric {
            key: key.to_string(),
            value,
            timestamp,
            step: step as i64,
        }));
        if pending.last_sent.is_none_or(|t| t.elapsed() >= SEND_EVERY) {
            self.send(&mut pending);
        }
    }
}

impl Drop for LiveMetrics<'_> {
    fn drop(&mut self) {
        let mut pending = std::mem::take(self.pending.get_mut().expect("live metrics lock"));
        self.send(&mut pending);
    }
}
