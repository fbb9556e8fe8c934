//! `tanh` with the bits of glibc's `tanhf`, in a form that vectorizes.
//!
//! The recurrent cells' `tanh` went through `f32::tanh`, glibc's `tanhf`
//! (fdlibm's algorithm over its `expm1f`): one call per element, half the
//! LSTM's training step in a profile. [`tanh_in_place`] is the same
//! algorithm step for step, the same operations on the same values in the
//! same order, with every branch computed and the result selected, so that
//! LLVM vectorizes its loops and every result has glibc's bits, denormal
//! flushing included (the branches test the input's bits, as glibc does).
//! `every_float_...` in the tests compares it with `f32::tanh` over every
//! 31st float; the whole range, in both modes, in 77 s here (`cargo test
//! --lib every_float -- --ignored`).

const LN2_HI: f32 = f32::from_bits(0x3f31_7180);
const LN2_LO: f32 = f32::from_bits(0x3717_f7d1);
const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b);
/// fdlibm's scaled coefficients of `expm1`'s rational approximation.
const Q: [f32; 5] = [
    f32::from_bits(0xbd08_8889),
    f32::from_bits(0x3ad0_0d01),
    f32::from_bits(0xb8a6_70cd),
    f32::from_bits(0x3686_7e54),
    f32::from_bits(0xb457_edbb),
];
/// 1.5 * 2^23: adding it to an integer-valued float puts the integer in the
/// low mantissa bits (integer conversions keep LLVM from vectorizing).
const ROUND: f32 = 12_582_912.0;

/// Values per block of [`tanh_in_place`]: the stages' intermediate values
/// for a block stay in L1 cache.
const BLOCK: usize = 128;

/// Every value of `values` replaced by the bits of its `f32::tanh` (glibc
/// 2.36's `tanhf`, as x86-64 Debian ships it), in the widest vectors the
/// CPU has.
///
/// The computation is one long chain of dependent operations, about 150
/// cycles from `x` to `tanh(x)`: written as one loop, the core could not
/// overlap the chains of successive vectors, and ran at 2.6 ns a value
/// here. Each block goes through four loops instead, each a part of the
/// chain ([`reduce`], [`remainder`], [`expm1`], [`finish`]), whose short
/// iterations the core overlaps: 1.0 ns a value.
pub fn tanh_in_place(values: &mut [f32]) {
    super::kernels::widest_simd(
        #[inline(always)]
        || {
            let [mut k, mut r, mut c, mut t] = [[0.0f32; BLOCK]; 4];
            for x in values.chunks_mut(BLOCK) {
                let n = x.len();
                let (k, r, c, t) = (&mut k[..n], &mut r[..n], &mut c[..n], &mut t[..n]);
                for (((k, r), c), &x) in k.iter_mut().zip(r.iter_mut()).zip(c.iter_mut()).zip(x.iter()) {
                    (*k, *r, *c) = reduce(expm1_argument(x));
                }
                for (t, &r) in t.iter_mut().zip(r.iter()) {
                    *t = remainder(r);
                }
                for ((((t, &x), &k), &r), &c) in t.iter_mut().zip(x.iter()).zip(k.iter()).zip(r.iter()).zip(c.iter()) {
                    *t = expm1(expm1_argument(x), k, r, c, *t);
                }
                for (x, &t) in x.iter_mut().zip(t.iter()) {
                    *x = finish(*x, t);
                }
            }
        },
    )
}

/// The argument glibc's `tanhf` passes to `expm1f`: `2|x|` from one up,
/// `-2|x|` below.
#[inline(always)]
fn expm1_argument(x: f32) -> f32 {
    let a = x.abs();
    if x.to_bits() & 0x7fff_ffff >= 0x3f80_0000 {
        2.0 * a
    } else {
        -2.0 * a
    }
}

/// glibc's `expm1f` argument reduction for the arguments [`tanh_in_place`]
/// passes it (finite, below 44 in magnitude), every branch computed: `(k,
/// r, c)` with `x = k ln2 + r + c`.
#[inline(always)]
fn reduce(x: f32) -> (f32, f32, f32) {
    let magnitude = x.to_bits() & 0x7fff_ffff;
    let negative = x.to_bits() >> 31 != 0;
    // Argument reduction, x = k ln2 + r, |r| <= ln2 / 2.
    let reduced = magnitude > 0x3eb1_7218;
    let k = if magnitude < 0x3f85_1592 {
        // 0.5 ln2 < |x| < 1.5 ln2: k = +-1.
        if negative { -1.0 } else { 1.0 }
    } else {
        (INV_LN2 * x + if negative { -0.5 } else { 0.5 }).trunc()
    };
    let k = if reduced { k } else { 0.0 };
    let hi = x - k * LN2_HI;
    let lo = k * LN2_LO;
    let r = if reduced { hi - lo } else { x };
    let c = if reduced { (hi - r) - lo } else { 0.0 };
    (k, r, c)
}

/// `expm1f`'s rational approximation on the reduced argument: its `e`.
#[inline(always)]
fn remainder(r: f32) -> f32 {
    let half = 0.5 * r;
    let square_half = r * half;
    let r1 = 1.0
        + square_half
            * (Q[0] + square_half * (Q[1] + square_half * (Q[2] + square_half * (Q[3] + square_half * Q[4]))));
    let t = 3.0 - r1 * half;
    square_half * ((r1 - t) / (6.0 - r * t))
}

/// `tanhf(x)` from `t`, the `expm1f` of its [`expm1_argument`].
#[inline(always)]
fn finish(x: f32, t: f32) -> f32 {
    let bits = x.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    let at_least_one = magnitude >= 0x3f80_0000;
    // One division for both branches: `2 / (t + 2)` or `-t / (t + 2)`.
    let quotient = (if at_least_one { 2.0 } else { -t }) / (t + 2.0);
    let z = if at_least_one { 1.0 - quotient } else { quotient };
    // |x| >= 22: one minus a tiny number, which rounds to one.
    let z = if magnitude >= 0x41b0_0000 { 1.0 - 1.0e-30 } else { z };
    let signed = if bits >> 31 == 0 { z } else { -z };
    if magnitude >= 0x7f80_0000 {
        // Infinities and NaN: glibc's `1 / x + 1` (`- 1` below zero) is
        // one with x's sign, or x's NaN quieted, which `x + x` gives.
        if x.is_nan() {
            x + x
        } else if bits >> 31 == 0 {
            1.0
        } else {
            -1.0
        }
    } else if magnitude == 0 {
        x
    } else if magnitude < 0x2400_0000 {
        // |x| < 2^-55.
        x * (1.0 + x)
    } else {
        signed
    }
}

/// glibc's `expm1f(x)` from its [`reduce`]d argument and [`remainder`]
/// `e`, every branch computed.
#[inline(always)]
fn expm1(x: f32, k: f32, r: f32, c: f32, e: f32) -> f32 {
    let magnitude = x.to_bits() & 0x7fff_ffff;
    let negative = x.to_bits() >> 31 != 0;
    let half = 0.5 * r;
    let square_half = r * half;
    let unreduced = r - (r * e - square_half);
    let e = (r * (e - c) - c) - square_half;
    let k_int = (k + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = |y: f32| f32::from_bits(y.to_bits().wrapping_add((k_int as u32).wrapping_shl(23)));
    let minus_one = 0.5 * (r - e) - 0.5;
    let plus_one = if r < -0.25 {
        -2.0 * (e - (r + 0.5))
    } else {
        1.0 + 2.0 * (r - e)
    };
    let far = scale(1.0 - (e - r)) - 1.0;
    let shift = k_int.clamp(0, 31) as u32;
    let below_23 = scale(f32::from_bits(0x3f80_0000u32.wrapping_sub(0x0100_0000u32.wrapping_shr(shift))) - (e - r));
    let from_23 = scale(r - (e + f32::from_bits(0x7fu32.wrapping_sub(shift).wrapping_shl(23))) + 1.0);
    let result = match k_int {
        0 => unreduced,
        -1 => minus_one,
        1 => plus_one,
        k if k <= -2 || k > 56 => far,
        k if k < 23 => below_23,
        _ => from_23,
    };
    if magnitude < 0x3300_0000 {
        // |x| < 2^-25: x itself.
        x
    } else if negative && magnitude >= 0x4195_b844 {
        // x < -27 ln2: -1.
        -1.0
    } else {
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::assert_every_float_matches;

    /// Compares [`tanh_in_place`] with `f32::tanh` on every `step`-th bit
    /// pattern, with denormals kept and flushed.
    fn compare_every(step: usize) {
        assert_every_float_matches(step, "tanh", &[("vectors", &tanh_in_place)], f32::tanh);
    }

    #[test]
    fn every_31st_float_has_the_bits_of_glibcs_tanhf() {
        compare_every(31);
    }

    #[test]
    #[ignore = "every float, twice: minutes"]
    fn every_float_has_the_bits_of_glibcs_tanhf() {
        compare_every(1);
    }
}
