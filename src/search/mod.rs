//! How a sweep chooses its trials, as ask/tell: the sweep asks a [`Method`]
//! for trial `k` given what is known of the trials before it, and tells it
//! each result by passing it in the next [`History`]. `grid` and `random`
//! ignore the results (every trial is known before the first runs); `tpe`
//! ([`tpe::Tpe`]) reads them. Any method's trials may also be stopped early
//! ([`asha`]).
//!
//! Determinism: trial `k` sees the results of exactly the first
//! [`Method::known_before`]`(k)` trials and sees the trials between them and
//! `k` as running, whatever finished first, so the same sweep and seed ask
//! the same trials for any number of trials at once and on any executor.

pub mod asha;
pub mod tpe;

use rand_chacha::rand_core::Rng as _;
use serde_json::Value as Json;

use crate::data::rng;

/// How one sweep parameter varies.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// `values:` (or `distribution: choice`): listed values, unordered.
    Values(Vec<Json>),
    /// `distribution: log_uniform` between `min` and `max`.
    LogUniform(f64, f64),
    /// `distribution: uniform` between `min` and `max`.
    Uniform(f64, f64),
    /// `distribution: int_uniform`: the integers from `min` to `max`.
    IntUniform(i64, i64),
}

/// A trial as the method knows it: its parameter values (in the sweep's
/// parameter order) and, once it ended, the sweep metric's value.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// The trial's parameter values.
    pub params: &'a [Json],
    /// The metric, `None` when the trial failed or did not report it.
    pub value: Option<f64>,
}

/// What a method is told when asked for a trial.
#[derive(Debug, Clone, Default)]
pub struct History<'a> {
    /// The first trials, ended, in order.
    pub ended: Vec<Known<'a>>,
    /// The trials after them, asked but treated as running.
    pub running: Vec<&'a [Json]>,
}

/// A way of choosing the trials of a sweep.
pub trait Method: Send + Sync {
    /// How many of the first trials must have ended before trial `k` is
    /// asked for (default 0: the trials do not depend on results).
    fn known_before(&self, k: usize) -> usize {
        let _ = k;
        0
    }

    /// The parameter values of trial `k`, or `None` when the sweep has no
    /// more trials; `history` holds the trials before `k`, of which the
    /// first [`Method::known_before`]`(k)` have ended.
    fn ask(&self, k: usize, history: &History) -> Option<Vec<Json>>;
}

/// `method: grid`: every combination of the listed values, the first
/// parameter varying slowest.
pub struct Grid {
    /// Each parameter's values.
    values: Vec<Vec<Json>>,
    /// How many combinations (checked against `usize` by [`Grid::new`]).
    size: usize,
}

impl Grid {
    /// The grid over `domains`, which must all be [`Domain::Values`];
    /// `None` when it has more combinations than a `usize` counts.
    pub fn new(domains: &[Domain]) -> Option<Grid> {
        let values: Vec<Vec<Json>> = domains
            .iter()
            .map(|d| match d {
                Domain::Values(values) => values.clone(),
                _ => panic!("a grid's parameters list values"),
            })
            .collect();
        let size = values.iter().try_fold(1usize, |n, v| n.checked_mul(v.len()))?;
        Some(Grid { values, size })
    }

    /// How many combinations the grid has.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Method for Grid {
    fn ask(&self, k: usize, _: &History) -> Option<Vec<Json>> {
        if k >= self.size {
            return None;
        }
        // Mixed radix, the last parameter the fastest digit.
        let mut rest = k;
        let mut params = vec![Json::Null; self.values.len()];
        for (p, values) in self.values.iter().enumerate().rev() {
            params[p] = values[rest % values.len()].clone();
            rest /= values.len();
        }
        Some(params)
    }
}

/// `method: random`: `trials` independent draws from the parameters'
/// distributions, one stream from the sweep's seed.
pub struct Random {
    draws: Vec<Vec<Json>>,
}

impl Random {
    /// The first `trials` draws over `domains` under `seed`.
    pub fn new(domains: &[Domain], trials: usize, seed: u64) -> Random {
        let mut stream = rng::stream(seed, "sweep/random");
        let mut unit = move || (stream.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let draws = (0..trials)
            .map(|_| domains.iter().map(|d| draw(d, unit())).collect())
            .collect();
        Random { draws }
    }
}

impl Method for Random {
    fn ask(&self, k: usize, _: &History) -> Option<Vec<Json>> {
        self.draws.get(k).cloned()
    }
}

/// The value of `domain` at the uniform draw `u` in `[0, 1)`.
fn draw(domain: &Domain, u: f64) -> Json {
    match domain {
        Domain::Values(values) => values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone(),
        Domain::LogUniform(min, max) => Json::from((min.ln() + u * (max.ln() - min.ln())).exp()),
        Domain::Uniform(min, max) => Json::from(min + u * (max - min)),
        Domain::IntUniform(min, max) => {
            let span = (max - min + 1) as f64;
            Json::from(min + ((u * span) as i64).min(max - min))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_the_cartesian_product_first_parameter_slowest() {
        let grid = Grid::new(&[
            Domain::Values(vec![1.into(), 2.into()]),
            Domain::Values(vec!["x".into(), "y".into(), "z".into()]),
        ])
        .unwrap();
        let none = History::default();
        let combos: Vec<Vec<Json>> = (0..).map_while(|k| grid.ask(k, &none)).collect();
        assert_eq!(combos.len(), 6);
        assert_eq!(combos[0], vec![Json::from(1), Json::from("x")]);
        assert_eq!(combos[1], vec![Json::from(1), Json::from("y")]);
        assert_eq!(combos[5], vec![Json::from(2), Json::from("z")]);
    }

    #[test]
    fn a_grid_too_large_to_count_is_refused() {
        let ten = Domain::Values((0..10).map(Json::from).collect());
        assert!(Grid::new(&vec![ten; 30]).is_none());
    }

    #[test]
    fn random_draws_are_reproducible_and_in_range() {
        let domains = [Domain::LogUniform(1e-5, 1e-1), Domain::IntUniform(1, 3)];
        let none = History::default();
        let draws = |trials, seed| -> Vec<Vec<Json>> {
            let random = Random::new(&domains, trials, seed);
            (0..).map_while(|k| random.ask(k, &none)).collect()
        };
        let a = draws(50, 7);
        assert_eq!(a.len(), 50);
        assert_eq!(a, draws(50, 7));
        assert_eq!(a[..5], draws(5, 7)[..], "a longer sweep starts with the same trials");
        for c in &a {
            let lr = c[0].as_f64().unwrap();
            assert!((1e-5..=1e-1).contains(&lr), "{lr}");
            let layers = c[1].as_i64().unwrap();
            assert!((1..=3).contains(&layers), "{layers}");
        }
        let distinct: std::collections::BTreeSet<i64> = a.iter().map(|c| c[1].as_i64().unwrap()).collect();
        assert_eq!(distinct.len(), 3, "all integers are drawn");
        assert_ne!(draws(5, 8)[0][0], a[0][0], "another seed, other draws");
    }
}
