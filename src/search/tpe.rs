//! `method: tpe`: the Tree-structured Parzen Estimator (Bergstra et al.,
//! "Algorithms for Hyper-Parameter Optimization", 2011) with the defaults
//! of Optuna 5's `TPESampler` (multivariate, constant liar): the first
//! `startup_trials` (10) trials are random draws (the same as `method:
//! random`'s), then the ended trials split into the best `gamma(n) =
//! min(ceil(n / 10), 25)` ("below") and the rest ("above", with the trials
//! still running: a constant liar that keeps running trials' regions from
//! being asked again); each group becomes a Parzen mixture of product
//! kernels, one per trial plus the prior (weight `prior_weight` 1.0, over
//! the whole range), weighted equally for the latest 25 trials and ramping
//! up before them. A numeric parameter's kernel is a normal truncated to
//! its range (in log space for `log_uniform`; rounded for `int_uniform`,
//! whose range widens by half a step each side) with Optuna's bandwidth:
//! the larger distance to a neighbour in sorted order, clipped to
//! `[range / min(100, kernels + 1), range]`; a listed parameter's kernel
//! puts `1 + prior_weight / kernels` on its trial's value and
//! `prior_weight / kernels` on each value, normalized. `candidates` (24)
//! joint draws from the below mixture are scored by `log l(x) - log g(x)`
//! and the best is asked.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng as _;
use serde::Deserialize;
use serde_json::Value as Json;

use super::{Domain, History, Method, Random};
use crate::data::rng;

/// `tpe:` in a sweep file: the sampler's settings.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpeSettings {
    /// Random trials before the estimator is used (Optuna: `n_startup_trials`, 10).
    pub startup_trials: usize,
    /// Draws from the good trials' mixture scored per parameter (Optuna: `n_ei_candidates`, 24).
    pub candidates: usize,
    /// Weight of the prior kernel (Optuna: `prior_weight`, 1.0).
    pub prior_weight: f64,
    /// How many trials before trial `k` may still be running when it is
    /// asked (they count as running whether or not they ended, so the
    /// trials do not depend on `parallel`); more than `parallel - 1` keeps
    /// every slot busy, fewer makes each trial see more results. Default 4.
    pub in_flight: usize,
}

impl Default for TpeSettings {
    fn default() -> Self {
        TpeSettings {
            startup_trials: 10,
            candidates: 24,
            prior_weight: 1.0,
            in_flight: 4,
        }
    }
}

/// The sampler over a sweep's parameters.
pub struct Tpe {
    domains: Vec<Domain>,
    maximize: bool,
    trials: usize,
    seed: u64,
    settings: TpeSettings,
    startup: Random,
}

/// Rounds of candidates (then random draws) tried to find a combination no
/// trial has before the sweep ends early.
const FRESH_TRIES: usize = 64;

impl Tpe {
    /// `trials` trials over `domains`, the metric maximized or not, under `seed`.
    pub fn new(domains: &[Domain], maximize: bool, trials: usize, seed: u64, settings: TpeSettings) -> Tpe {
        Tpe {
            domains: domains.to_vec(),
            maximize,
            trials,
            seed,
            settings,
            startup: Random::new(domains, trials.min(settings.startup_trials), seed),
        }
    }
}

impl Method for Tpe {
    fn known_before(&self, k: usize) -> usize {
        if k < self.settings.startup_trials {
            0
        } else {
            k.saturating_sub(self.settings.in_flight)
        }
    }

    fn ask(&self, k: usize, history: &History) -> Option<Vec<Json>> {
        if k >= self.trials {
            return None;
        }
        if k < self.settings.startup_trials {
            return self.startup.ask(k, history);
        }
        let mut stream = rng::stream(self.seed, &format!("sweep/tpe/{k}"));
        let asked =
            |params: &[Json]| history.ended.iter().any(|t| t.params == params) || history.running.contains(&params);
        // The ended trials with a value, best first (ties: the earlier trial).
        let mut scored: Vec<(usize, f64)> = history
            .ended
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.value.filter(|v| v.is_finite()).map(|v| (i, v)))
            .map(|(i, v)| (i, if self.maximize { -v } else { v }))
            .collect();
        scored.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let n_below = gamma(scored.len());
        let mut below: Vec<usize> = scored[..n_below].iter().map(|&(i, _)| i).collect();
        let mut above: Vec<usize> = scored[n_below..].iter().map(|&(i, _)| i).collect();
        below.sort_unstable();
        above.sort_unstable();
        let values = |trials: &[usize]| -> Vec<&[Json]> { trials.iter().map(|&i| history.ended[i].params).collect() };
        let good = values(&below);
        let mut bad = values(&above);
        bad.extend(history.running.iter().copied());
        let prior_weight = self.settings.prior_weight;
        let l = Mixture::new(&self.domains, &good, prior_weight);
        let g = Mixture::new(&self.domains, &bad, prior_weight);
        for _ in 0..FRESH_TRIES {
            let mut best: Option<(f64, Vec<f64>)> = None;
            for _ in 0..self.settings.candidates.max(1) {
                let x = l.sample(&mut stream);
                let score = l.log_pdf(&x) - g.log_pdf(&x);
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, x));
                }
            }
            let x = best.expect("at least one candidate").1;
            let params: Vec<Json> = self.domains.iter().zip(x).map(|(d, x)| value(d, x)).collect();
            if !asked(&params) {
                return Some(params);
            }
        }
        // The estimator keeps asking for tried points: draw at random.
        let mut unit = move || (stream.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (0..FRESH_TRIES)
            .map(|_| {
                self.domains
                    .iter()
                    .map(|d| super::draw(d, unit()))
                    .collect::<Vec<Json>>()
            })
            .find(|params| !asked(params))
    }
}

/// The parameter value at `x` in its internal space.
fn value(domain: &Domain, x: f64) -> Json {
    match domain {
        Domain::Values(values) => values[x as usize].clone(),
        Domain::LogUniform(min, max) => Json::from(x.exp().clamp(*min, *max)),
        Domain::Uniform(min, max) => Json::from(x.clamp(*min, *max)),
        Domain::IntUniform(..) => Json::from(x as i64),
    }
}

/// Optuna's `default_gamma`: how many of `n` ended trials are the good ones.
fn gamma(n: usize) -> usize {
    n.div_ceil(10).min(25)
}

/// Optuna's `default_weights`: equal for the latest 25 trials, a ramp from
/// `1/n` before them (in trial order).
fn weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut weights: Vec<f64> = match ramp {
        0 => Vec::new(),
        1 => vec![1.0 / n as f64],
        _ => (0..ramp)
            .map(|i| 1.0 / n as f64 + i as f64 * (1.0 - 1.0 / n as f64) / (ramp - 1) as f64)
            .collect(),
    };
    weights.extend([1.0; 25]);
    weights
}

/// A Parzen mixture of product kernels over the parameters, in their
/// internal space (log for `log_uniform`, the value's index for `values`):
/// one kernel per observation and the prior, with normalized weights.
struct Mixture {
    weights: Vec<f64>,
    /// Per parameter, its factor of every kernel.
    dimensions: Vec<Kernels>,
}

/// One parameter's factor of each kernel of a mixture.
enum Kernels {
    /// Normals truncated to `[low, high]`; `step` 1 for integers (a value's
    /// mass is its interval of width 1).
    Normal {
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        low: f64,
        high: f64,
        step: Option<f64>,
    },
    /// Per kernel, each value's probability.
    Categorical(Vec<Vec<f64>>),
}

impl Mixture {
    fn new(domains: &[Domain], observed: &[&[Json]], prior_weight: f64) -> Mixture {
        let mut weights = weights(observed.len());
        weights.push(if observed.is_empty() { 1.0 } else { prior_weight });
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        let dimensions = domains
            .iter()
            .enumerate()
            .map(|(p, domain)| {
                let values: Vec<&Json> = observed.iter().map(|params| &params[p]).collect();
                Kernels::new(domain, &values, prior_weight)
            })
            .collect();
        Mixture { weights, dimensions }
    }

    /// A draw: a kernel by weight, then each parameter from it.
    fn sample(&self, stream: &mut ChaCha8Rng) -> Vec<f64> {
        let kernel = pick(&self.weights, unit(stream));
        self.dimensions.iter().map(|d| d.sample(kernel, stream)).collect()
    }

    /// The mixture's log density at `x` (log probability for values and integers).
    fn log_pdf(&self, x: &[f64]) -> f64 {
        log_sum_exp(self.weights.iter().enumerate().map(|(k, w)| {
            w.ln()
                + self
                    .dimensions
                    .iter()
                    .zip(x)
                    .map(|(d, &x)| d.log_pdf(k, x))
                    .sum::<f64>()
        }))
    }
}

fn unit(stream: &mut ChaCha8Rng) -> f64 {
    (stream.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl Kernels {
    fn new(domain: &Domain, observed: &[&Json], prior_weight: f64) -> Kernels {
        let (low, high, step) = match domain {
            Domain::Values(values) => {
                let n = values.len();
                if observed.is_empty() {
                    return Kernels::Categorical(vec![vec![1.0 / n as f64; n]]);
                }
                let kernels = observed.len() + 1;
                let mut rows: Vec<Vec<f64>> = observed
                    .iter()
                    .map(|v| {
                        let mut row = vec![prior_weight / kernels as f64; n];
                        if let Some(i) = values.iter().position(|value| value == *v) {
                            row[i] += 1.0;
                        }
                        row
                    })
                    .collect();
                rows.push(vec![prior_weight / kernels as f64; n]);
                for row in &mut rows {
                    let sum: f64 = row.iter().sum();
                    if sum > 0.0 {
                        row.iter_mut().for_each(|p| *p /= sum);
                    }
                }
                return Kernels::Categorical(rows);
            }
            Domain::LogUniform(min, max) => (min.ln(), max.ln(), None),
            Domain::Uniform(min, max) => (*min, *max, None),
            Domain::IntUniform(min, max) => (*min as f64, *max as f64, Some(1.0)),
        };
        let internal = |v: &Json| {
            let x = v.as_f64().unwrap_or(f64::NAN);
            if matches!(domain, Domain::LogUniform(..)) {
                x.ln()
            } else {
                x
            }
        };
        let mut mus: Vec<f64> = observed.iter().map(|v| internal(v)).collect();
        let width = high - low + step.unwrap_or(0.0);
        let mut sigmas = bandwidths(&mus, low, high, step.unwrap_or(0.0));
        let min_sigma = width / 100f64.min(1.0 + (mus.len() + 1) as f64);
        sigmas.iter_mut().for_each(|s| *s = s.clamp(min_sigma, width));
        mus.push(0.5 * (low + high));
        sigmas.push(width);
        Kernels::Normal {
            mus,
            sigmas,
            low,
            high,
            step,
        }
    }

    /// A value from kernel `k`.
    fn sample(&self, k: usize, stream: &mut ChaCha8Rng) -> f64 {
        match self {
            Kernels::Categorical(rows) => pick(&rows[k], unit(stream)) as f64,
            Kernels::Normal {
                mus,
                sigmas,
                low,
                high,
                step,
            } => {
                let (mu, sigma) = (mus[k], sigmas[k]);
                let half = step.unwrap_or(0.0) / 2.0;
                let z = truncated_normal((low - half - mu) / sigma, (high + half - mu) / sigma, unit(stream));
                let x = mu + sigma * z;
                match step {
                    Some(step) => (low + ((x - low) / step).round() * step).clamp(*low, *high),
                    None => x.clamp(*low, *high),
                }
            }
        }
    }

    /// Kernel `k`'s log density (log probability for values and integers) at `x`.
    fn log_pdf(&self, k: usize, x: f64) -> f64 {
        match self {
            Kernels::Categorical(rows) => rows[k][x as usize].ln(),
            Kernels::Normal {
                mus,
                sigmas,
                low,
                high,
                step,
            } => {
                let (mu, sigma) = (mus[k], sigmas[k]);
                match step {
                    None => {
                        let z = (x - mu) / sigma;
                        -0.5 * z * z
                            - 0.5 * (2.0 * std::f64::consts::PI).ln()
                            - sigma.ln()
                            - log_mass((low - mu) / sigma, (high - mu) / sigma)
                    }
                    Some(step) => {
                        let (lower, upper) = (low - step / 2.0, high + step / 2.0);
                        let (a, b) = ((x - step / 2.0).max(lower), (x + step / 2.0).min(upper));
                        log_mass((a - mu) / sigma, (b - mu) / sigma)
                            - log_mass((lower - mu) / sigma, (upper - mu) / sigma)
                    }
                }
            }
        }
    }
}

/// Optuna's univariate bandwidths: each observation's larger distance to
/// its neighbours in sorted order (the range's ends count as neighbours),
/// the first and last taking their inner distance instead when there are
/// at least two (`consider_endpoints=False`).
fn bandwidths(mus: &[f64], low: f64, high: f64, step: f64) -> Vec<f64> {
    let n = mus.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]).then(a.cmp(&b)));
    let mut points = Vec::with_capacity(n + 2);
    points.push(low - step / 2.0);
    points.extend(order.iter().map(|&i| mus[i]));
    points.push(high + step / 2.0);
    let mut sorted: Vec<f64> = (1..=n)
        .map(|i| (points[i] - points[i - 1]).max(points[i + 1] - points[i]))
        .collect();
    if n >= 2 {
        sorted[0] = points[2] - points[1];
        sorted[n - 1] = points[n] - points[n - 1];
    }
    let mut sigmas = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        sigmas[i] = sorted[rank];
    }
    sigmas
}

/// The index whose cumulative weight first exceeds `u` (in `[0, 1)`) of the total.
fn pick(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut sum = 0.0;
    for (i, w) in weights.iter().enumerate() {
        sum += w;
        if target < sum {
            return i;
        }
    }
    weights.len() - 1
}

fn log_sum_exp(terms: impl Iterator<Item = f64>) -> f64 {
    let terms: Vec<f64> = terms.collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// `ln Q(z)`, the log of the standard normal's upper tail `P(Z > z)`,
/// accurate far into the tail.
fn log_upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    if x < 25.0 {
        (0.5 * libm::erfc(x)).ln()
    } else {
        // erfc(x) ~ exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4)).
        let inv = 1.0 / (x * x);
        -x * x - (x * std::f64::consts::PI.sqrt()).ln() + (1.0 - 0.5 * inv + 0.75 * inv * inv).ln() + 0.5f64.ln()
    }
}

/// `ln (Phi(b) - Phi(a))` for `a <= b`, computed in the tail where it is small.
fn log_mass(a: f64, b: f64) -> f64 {
    if b <= a {
        return f64::NEG_INFINITY;
    }
    if a > 0.0 {
        // Both in the upper tail: Q(a) - Q(b).
        let (qa, qb) = (log_upper_tail(a), log_upper_tail(b));
        qa + (-(qb - qa).exp()).ln_1p()
    } else if b < 0.0 {
        log_mass(-b, -a)
    } else {
        // Around the middle: 1 - Q(-a) - Q(b), neither term near 1.
        (1.0 - 0.5 * libm::erfc(-a / std::f64::consts::SQRT_2) - 0.5 * libm::erfc(b / std::f64::consts::SQRT_2)).ln()
    }
}

/// A standard normal draw truncated to `[a, b]`, by inverting the CDF at `u`.
fn truncated_normal(a: f64, b: f64, u: f64) -> f64 {
    if a > 0.0 {
        // Work in the lower tail, where the CDF keeps its precision.
        return -truncated_normal(-b, -a, 1.0 - u);
    }
    let cdf = |z: f64| 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
    let (pa, pb) = (cdf(a), cdf(b));
    if pb <= pa {
        // Both ends beyond what the CDF resolves: the nearer end.
        return if b.abs() < a.abs() { b } else { a };
    }
    inverse_cdf(pa + u * (pb - pa)).clamp(a, b)
}

/// The standard normal quantile: Acklam's rational approximation refined
/// by one Halley step.
fn inverse_cdf(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        let r = (-2.0 * q.ln()).sqrt();
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    let x = if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    // Halley's step on Phi(x) - p.
    let e = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

#[cfg(test)]
mod tests {
    use super::super::Known;
    use super::*;

    #[test]
    fn the_quantile_inverts_the_normal_cdf() {
        for &p in &[1e-12, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0 - 1e-9] {
            let z = inverse_cdf(p);
            let back = 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
            assert!((back - p).abs() <= 1e-12 * p.max(1e-3), "p {p}: z {z}, back {back}");
        }
    }

    #[test]
    fn truncated_draws_stay_in_their_interval_far_in_the_tail() {
        for &(a, b) in &[(-1.0, 1.0), (3.0, 3.5), (-40.0, -39.0), (8.0, 9.0), (-0.5, 30.0)] {
            for i in 0..50 {
                let z = truncated_normal(a, b, i as f64 / 50.0);
                assert!((a..=b).contains(&z), "[{a}, {b}]: {z}");
            }
        }
        // The upper tail's mass, close to Q(a) - Q(b) where that is exact.
        let direct =
            (0.5 * libm::erfc(3.0 / std::f64::consts::SQRT_2) - 0.5 * libm::erfc(3.5 / std::f64::consts::SQRT_2)).ln();
        assert!((log_mass(3.0, 3.5) - direct).abs() < 1e-10);
        assert!(log_mass(60.0, 61.0).is_finite(), "no underflow to -inf");
    }

    #[test]
    fn weights_ramp_before_the_latest_25() {
        assert_eq!(weights(3), vec![1.0; 3]);
        let w = weights(30);
        assert_eq!(w.len(), 30);
        assert!((w[0] - 1.0 / 30.0).abs() < 1e-15 && (w[4] - 1.0).abs() < 1e-15);
        assert!(w[..5].windows(2).all(|p| p[0] < p[1]));
        assert_eq!(gamma(1), 1);
        assert_eq!(gamma(10), 1);
        assert_eq!(gamma(11), 2);
        assert_eq!(gamma(1000), 25);
    }

    #[test]
    fn bandwidths_are_the_larger_distance_to_a_neighbour() {
        // Sorted 0.2, 0.5, 0.6 in [0, 1]: the ends take their inner distance.
        let sigmas = bandwidths(&[0.6, 0.2, 0.5], 0.0, 1.0, 0.0);
        let expected = [0.1, 0.3, 0.3];
        for (s, e) in sigmas.iter().zip(expected) {
            assert!((s - e).abs() < 1e-12, "{sigmas:?}");
        }
        assert_eq!(bandwidths(&[0.3], 0.0, 1.0, 0.0), vec![0.7]);
    }

    /// A 1-d problem with its best at x = 0.3: TPE's trials close in on it.
    #[test]
    fn tpe_asks_near_the_best_once_it_has_results() {
        let domains = [Domain::Uniform(0.0, 1.0), Domain::Values(vec!["a".into(), "b".into()])];
        let settings = TpeSettings {
            in_flight: 0,
            ..TpeSettings::default()
        };
        let tpe = Tpe::new(&domains, false, 40, 3, settings);
        let loss = |p: &[Json]| (p[0].as_f64().unwrap() - 0.3).abs() + if p[1] == "b" { 0.0 } else { 0.5 };
        let mut trials: Vec<(Vec<Json>, f64)> = Vec::new();
        for k in 0..40 {
            assert_eq!(tpe.known_before(k), if k < 10 { 0 } else { k });
            let history = History {
                ended: trials
                    .iter()
                    .map(|(p, v)| Known {
                        params: p,
                        value: Some(*v),
                    })
                    .collect(),
                running: Vec::new(),
            };
            let params = tpe.ask(k, &history).expect("40 trials");
            let value = loss(&params);
            trials.push((params, value));
        }
        assert!(tpe.ask(40, &History::default()).is_none());
        let late: Vec<f64> = trials[30..].iter().map(|(_, v)| *v).collect();
        let early: Vec<f64> = trials[..10].iter().map(|(_, v)| *v).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&late) < 0.5 * mean(&early), "late {late:?} early {early:?}");
        let b = trials[30..].iter().filter(|(p, _)| p[1] == "b").count();
        assert!(b >= 8, "the better value is asked for most of the time: {b} of 10");
        let ids: std::collections::BTreeSet<String> = trials.iter().map(|(p, _)| format!("{p:?}")).collect();
        assert_eq!(ids.len(), 40, "no trial repeats another");
    }

    #[test]
    fn tpe_starts_with_the_random_methods_trials_and_is_reproducible() {
        let domains = [Domain::LogUniform(1e-5, 1e-1), Domain::IntUniform(1, 3)];
        let tpe = Tpe::new(&domains, true, 20, 5, TpeSettings::default());
        let random = Random::new(&domains, 20, 5);
        let none = History::default();
        for k in 0..10 {
            assert_eq!(tpe.ask(k, &none), random.ask(k, &none));
        }
        let ended: Vec<Vec<Json>> = (0..10).map(|k| tpe.ask(k, &none).unwrap()).collect();
        let history = History {
            ended: ended
                .iter()
                .enumerate()
                .map(|(i, p)| Known {
                    params: p,
                    value: Some(i as f64),
                })
                .collect(),
            running: Vec::new(),
        };
        let first = tpe.ask(10, &history).unwrap();
        assert_eq!(first, tpe.ask(10, &history).unwrap());
        let lr = first[0].as_f64().unwrap();
        assert!((1e-5..=1e-1).contains(&lr));
        assert!((1..=3).contains(&first[1].as_i64().unwrap()));
    }

    #[test]
    fn a_finite_space_runs_out() {
        let domains = [Domain::Values(vec![1.into(), 2.into()])];
        let settings = TpeSettings {
            startup_trials: 1,
            in_flight: 0,
            ..TpeSettings::default()
        };
        let tpe = Tpe::new(&domains, true, 5, 0, settings);
        let first = tpe.ask(0, &History::default()).unwrap();
        let ended = [Known {
            params: &first,
            value: Some(1.0),
        }];
        let second = tpe
            .ask(
                1,
                &History {
                    ended: ended.to_vec(),
                    running: Vec::new(),
                },
            )
            .unwrap();
        assert_ne!(first, second);
        let both = [
            ended[0],
            Known {
                params: &second,
                value: Some(0.0),
            },
        ];
        assert!(
            tpe.ask(
                2,
                &History {
                    ended: both.to_vec(),
                    running: Vec::new()
                }
            )
            .is_none()
        );
    }
}
