//! `early_terminate: {type: asha}`: asynchronous successive halving (Li et
//! al. 2020), with the stopping rule of Ray Tune's `ASHAScheduler`. Rung `r`
//! is at `grace_steps * reduction_factor^r` training steps; a trial's value
//! at a rung is its metric at its first evaluation at or after that step. A
//! trial goes on past a rung only while its value is at least as good as the
//! rung's cut-off: the `1 - 1/reduction_factor` quantile (linear
//! interpolation, NumPy's default) of the earlier trials' values there, the
//! best third for the default factor of 3. The first trial at a rung always
//! goes on; NaN values count in no cut-off and a NaN trial is pruned where
//! an earlier trial has a value.
//!
//! Determinism: trial `k` is compared with trials `0..k` only, and waits at
//! a rung until each of them has reached it or ended, so the decisions do
//! not depend on which trial is faster, on `parallel` or on the executor.
//! The wait cannot deadlock: trials start in order, trial 0 never waits,
//! and trial `k` waits only on trials before it. A trial's final
//! evaluation is recorded but never pruned (it ends anyway).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::stage::Verdict;

/// `early_terminate:` in a sweep file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyTerminate {
    /// `type:`, the rule (`asha`).
    #[serde(rename = "type")]
    pub rule: Rule,
    /// The evaluation metric compared at the rungs (default: the sweep's metric).
    #[serde(default)]
    pub metric: Option<String>,
    /// Training steps of the first rung.
    pub grace_steps: usize,
    /// Each rung is this many times further; the best `1/reduction_factor`
    /// of a rung go on (default 3, as Ray Tune's and Hyperband's).
    #[serde(default = "three")]
    pub reduction_factor: usize,
}

fn three() -> usize {
    3
}

/// The early-stopping rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Asynchronous successive halving.
    Asha,
}

/// The rungs of a sweep's trials, as they reach them.
pub struct Asha {
    grace_steps: usize,
    reduction_factor: usize,
    maximize: bool,
    /// Per trial (by index), its values at the rungs it reached and whether it ended.
    board: Mutex<Vec<Rungs>>,
    changed: Condvar,
}

#[derive(Debug, Clone, Default)]
struct Rungs {
    values: Vec<f64>,
    ended: bool,
}

/// How long a trial waiting at a rung sleeps before it looks at `cancel` again.
const CANCEL_POLL: Duration = Duration::from_millis(100);

impl Asha {
    /// The rungs for `settings`, `maximize` saying whether a larger metric is better.
    pub fn new(settings: &EarlyTerminate, maximize: bool) -> Asha {
        Asha {
            grace_steps: settings.grace_steps,
            reduction_factor: settings.reduction_factor,
            maximize,
            board: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }
    }

    /// The training step of rung `r`.
    pub fn rung_step(&self, r: usize) -> usize {
        let factor = self
            .reduction_factor
            .saturating_pow(u32::try_from(r).unwrap_or(u32::MAX));
        self.grace_steps.saturating_mul(factor)
    }

    /// Trial `k` was evaluated at `step` with `value`: records the rungs
    /// this reaches and says whether it goes on, waiting at each rung for
    /// the earlier trials (until `cancel` is set: then it goes on, and the
    /// stage sees the interruption itself). `last`: the trial's final
    /// evaluation, recorded but never pruned.
    pub fn evaluated(&self, k: usize, step: usize, value: f64, last: bool, cancel: &AtomicBool) -> Verdict {
        let mut board = self.board.lock().expect("asha lock");
        if board.len() <= k {
            board.resize_with(k + 1, Rungs::default);
        }
        loop {
            let r = board[k].values.len();
            if self.rung_step(r) > step {
                return Verdict::Continue;
            }
            board[k].values.push(value);
            self.changed.notify_all();
            if last {
                continue;
            }
            while !(0..k).all(|j| board.get(j).is_some_and(|t| t.ended || t.values.len() > r)) {
                if cancel.load(Ordering::SeqCst) {
                    return Verdict::Continue;
                }
                board = self.changed.wait_timeout(board, CANCEL_POLL).expect("asha lock").0;
            }
            if !self.promoted(&board, k, r) {
                return Verdict::Prune;
            }
        }
    }

    /// Trial `k` ended: records the rungs of `evaluations` (its `(step,
    /// value)` pairs, in step order) it had not reported, as for a trial
    /// found in the cache, and stops the later trials waiting on it.
    pub fn ended(&self, k: usize, evaluations: &[(usize, f64)]) {
        let mut board = self.board.lock().expect("asha lock");
        if board.len() <= k {
            board.resize_with(k + 1, Rungs::default);
        }
        let trial = &mut board[k];
        if !trial.ended {
            for &(step, value) in evaluations {
                while self.rung_step(trial.values.len()) <= step {
                    trial.values.push(value);
                }
            }
            trial.ended = true;
        }
        self.changed.notify_all();
    }

    /// Whether trial `k`'s value at rung `r` is at least as good as the
    /// cut-off of trials `0..k` there.
    fn promoted(&self, board: &[Rungs], k: usize, r: usize) -> bool {
        // Larger is better in these scores.
        let score = |value: f64| if self.maximize { value } else { -value };
        let mut earlier: Vec<f64> = board[..k]
            .iter()
            .filter_map(|t| t.values.get(r).copied())
            .filter(|value| !value.is_nan())
            .map(score)
            .collect();
        if earlier.is_empty() {
            return true;
        }
        earlier.sort_by(f64::total_cmp);
        // `mine >= NaN` is false: a NaN trial is pruned.
        score(board[k].values[r]) >= quantile(&earlier, 1.0 - 1.0 / self.reduction_factor as f64)
    }
}

/// The `q` quantile of `sorted` (not empty), interpolated linearly between
/// the two nearest values (NumPy's default method).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = (sorted.len() - 1) as f64 * q;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(grace_steps: usize, reduction_factor: usize, maximize: bool) -> Asha {
        let settings = EarlyTerminate {
            rule: Rule::Asha,
            metric: None,
            grace_steps,
            reduction_factor,
        };
        Asha::new(&settings, maximize)
    }

    #[test]
    fn rungs_grow_by_the_reduction_factor() {
        let a = asha(10, 3, true);
        assert_eq!([0, 1, 2, 3].map(|r| a.rung_step(r)), [10, 30, 90, 270]);
        assert_eq!(a.rung_step(200), usize::MAX, "saturates");
    }

    #[test]
    fn a_trial_goes_on_only_at_or_above_the_cut_off_of_the_earlier_ones() {
        let a = asha(10, 3, true);
        let go = AtomicBool::new(false);
        let mut next = 0;
        let mut evaluate = |value: f64| {
            let verdict = a.evaluated(next, 10, value, false, &go);
            a.ended(next, &[]);
            next += 1;
            verdict
        };
        // The first trial at a rung always goes on.
        assert_eq!(evaluate(0.5), Verdict::Continue);
        // One earlier value is the cut-off; a tie goes on.
        assert_eq!(evaluate(0.4), Verdict::Prune);
        assert_eq!(evaluate(0.5), Verdict::Continue);
        // Earlier 0.4, 0.5, 0.5: the cut-off is 0.5 (position 1.33 of 0..=2).
        assert_eq!(evaluate(0.49), Verdict::Prune);
        // Earlier 0.4, 0.49, 0.5, 0.5: position 2 of 0..=3, 0.5.
        assert_eq!(evaluate(0.8), Verdict::Continue);
        // Earlier 0.4, 0.49, 0.5, 0.5, 0.8: position 2.67, between two 0.5s.
        assert_eq!(evaluate(0.5), Verdict::Continue);
        let b = asha(10, 3, true);
        b.ended(0, &[(10, 0.5)]);
        b.ended(1, &[(10, 0.8)]);
        // Between 0.5 and 0.8 at two thirds: 0.7.
        assert_eq!(b.evaluated(2, 10, 0.69, false, &go), Verdict::Prune);
        b.ended(2, &[]);
        let c = asha(10, 3, true);
        c.ended(0, &[(10, 0.5)]);
        c.ended(1, &[(10, 0.8)]);
        assert_eq!(c.evaluated(2, 10, 0.71, false, &go), Verdict::Continue);
        // Its final evaluation is recorded, never pruned.
        assert_eq!(c.evaluated(2, 30, 0.1, true, &go), Verdict::Continue);
    }

    #[test]
    fn lower_is_better_when_minimizing_and_nan_is_worst() {
        let a = asha(5, 2, false);
        let go = AtomicBool::new(false);
        assert_eq!(a.evaluated(0, 5, f64::NAN, false, &go), Verdict::Continue);
        a.ended(0, &[]);
        assert_eq!(a.evaluated(1, 5, 0.9, false, &go), Verdict::Continue);
        a.ended(1, &[]);
        assert_eq!(a.evaluated(2, 5, 0.95, false, &go), Verdict::Prune);
        a.ended(2, &[]);
        assert_eq!(a.evaluated(3, 5, f64::NAN, false, &go), Verdict::Prune);
    }

    #[test]
    fn one_evaluation_past_several_rungs_is_decided_rung_by_rung() {
        let a = asha(10, 3, true);
        let go = AtomicBool::new(false);
        a.ended(0, &[(10, 0.9), (30, 0.5), (90, 0.95)]);
        // At step 40, trial 1 reaches rungs 0 (10) and 1 (30): behind at 10, so pruned there.
        assert_eq!(a.evaluated(1, 40, 0.8, false, &go), Verdict::Prune);
        a.ended(1, &[]);
        // Trial 2 is the best of 3 at rung 0 and of 2 at rung 1 (trial 1 stopped before it).
        assert_eq!(a.evaluated(2, 40, 0.99, false, &go), Verdict::Continue);
    }

    #[test]
    fn a_trial_waits_at_a_rung_for_the_earlier_ones() {
        let a = asha(10, 3, true);
        let go = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let later = scope.spawn(|| a.evaluated(1, 10, 0.5, false, &go));
            std::thread::sleep(Duration::from_millis(150));
            assert!(!later.is_finished(), "trial 1 waits for trial 0 to reach the rung");
            assert_eq!(a.evaluated(0, 10, 0.8, false, &go), Verdict::Continue);
            assert_eq!(later.join().unwrap(), Verdict::Prune, "decided against trial 0's value");
        });
        // An earlier trial that ended before the rung does not hold a later one.
        a.ended(0, &[]);
        a.ended(1, &[]);
        let b = asha(10, 3, true);
        b.ended(0, &[(5, 0.9)]);
        assert_eq!(b.evaluated(1, 10, 0.1, false, &go), Verdict::Continue);
    }
}
