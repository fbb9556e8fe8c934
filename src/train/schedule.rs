//! Learning-rate schedules, as in Hugging Face `transformers`
//! (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`): step `s` (0-based) trains at
//! `lr * factor(s)`.

use serde::{Deserialize, Serialize};

/// `stages.train.schedule`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The peak rate throughout (after any warm-up).
    #[default]
    Constant,
    /// Linear decay to 0 at the last step (the HF Trainer's default).
    Linear,
    /// Half a cosine from the peak to 0 at the last step.
    Cosine,
}

impl Schedule {
    /// The multiplier of the peak rate at `step` out of `total`, after a
    /// linear warm-up of `warmup` steps.
    pub fn factor(self, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_with_warmup_matches_transformers() {
        // transformers: lr_lambda(s) = s / w for s < w, else (T - s) / (T - w).
        let f = |s| Schedule::Linear.factor(s, 100, 10);
        assert_eq!(f(0), 0.0);
        assert_eq!(f(5), 0.5);
        assert_eq!(f(10), 1.0);
        assert_eq!(f(55), 0.5);
        assert_eq!(f(100), 0.0);
        assert_eq!(Schedule::Constant.factor(99, 100, 0), 1.0);
        assert!((Schedule::Cosine.factor(50, 100, 0) - 0.5).abs() < 1e-12);
    }
}
