//! Reproducible randomness: every use draws from its own ChaCha8 stream,
//! derived from the pipeline seed and a purpose string, so results do not
//! depend on thread count, iteration order or other stages.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// The random stream for one purpose (e.g. "shuffle/train") under a seed.
pub fn stream(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose.as_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// A uniform integer in `0..n` without modulo bias (Lemire's method).
pub fn below(rng: &mut impl Rng, n: u64) -> u64 {
    assert!(n > 0, "below(0) has no values");
    let threshold = n.wrapping_neg() % n;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(n);
        if (product as u64) >= threshold {
            return (product >> 64) as u64;
        }
    }
}

/// A uniform float in `[0, 1)` with 24 random bits.
pub fn unit(rng: &mut impl Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

/// A standard normal float (Box-Muller on two uniform draws).
pub fn normal(rng: &mut impl Rng) -> f32 {
    let u1 = (f64::from(rng.next_u32() >> 8) + 1.0) / f64::from(1u32 << 24);
    let u2 = f64::from(rng.next_u32() >> 8) / f64::from(1u32 << 24);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Shuffles a slice in place (Fisher-Yates).
pub fn shuffle<T>(rng: &mut impl Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A random permutation of `0..n`.
pub fn permutation(rng: &mut impl Rng, n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    shuffle(rng, &mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a = permutation(&mut stream(7, "shuffle/train"), 100);
        assert_eq!(a, permutation(&mut stream(7, "shuffle/train"), 100));
        assert_ne!(a, permutation(&mut stream(7, "shuffle/test"), 100));
        assert_ne!(a, permutation(&mut stream(8, "shuffle/train"), 100));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = stream(1, "test");
        assert!((0..1000).all(|_| below(&mut rng, 3) < 3));
    }
}
