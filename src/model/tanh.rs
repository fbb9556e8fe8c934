//! `tanh` with the bits of glibc's `tanhf`, in a form that vectorizes.
//!
//! The recurrent cells' `tanh` went through `f32::tanh`, glibc's `tanhf`
//! (fdlibm's algorithm over its `expm1f`): one call per element, half the
//! LSTM's training step in a profile. [`tanh`] is the same algorithm step
//! for step, the same operations on the same values in the same order, with
//! every branch computed and the result selected, so LLVM vectorizes a loop
//! of it and every result has glibc's bits, denormal flushing included (the
//! branches test the input's bits, as glibc does). `every_float_...` in the
//! tests compares it with `f32::tanh` over every 31st float; the whole
//! range, in both modes, in 78 s here (`cargo test --lib every_float -- --ignored`).

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

/// The bits of `f32::tanh(x)` (glibc 2.36's `tanhf`, as x86-64 Debian
/// ships it) without a call.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let bits = x.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    let a = x.abs();
    let at_least_one = magnitude >= 0x3f80_0000;
    let t = expm1(if at_least_one { 2.0 * a } else { -2.0 * a });
    let z = if at_least_one {
        1.0 - 2.0 / (t + 2.0)
    } else {
        -t / (t + 2.0)
    };
    // |x| >= 22: one minus a tiny number, which rounds to one.
    let z = if magnitude >= 0x41b0_0000 { 1.0 - 1.0e-30 } else { z };
    let signed = if bits >> 31 == 0 { z } else { -z };
    if magnitude >= 0x7f80_0000 {
        // Infinities and NaN.
        if bits >> 31 == 0 { 1.0 / x + 1.0 } else { 1.0 / x - 1.0 }
    } else if magnitude == 0 {
        x
    } else if magnitude < 0x2400_0000 {
        // |x| < 2^-55.
        x * (1.0 + x)
    } else {
        signed
    }
}

/// glibc's `expm1f` for the arguments [`tanh`] passes it (finite, below 44
/// in magnitude), every branch computed.
#[inline(always)]
fn expm1(x: f32) -> f32 {
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
    let half = 0.5 * r;
    let square_half = r * half;
    let r1 = 1.0
        + square_half
            * (Q[0] + square_half * (Q[1] + square_half * (Q[2] + square_half * (Q[3] + square_half * Q[4]))));
    let t = 3.0 - r1 * half;
    let e = square_half * ((r1 - t) / (6.0 - r * t));
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

/// Every value of `values` replaced by its [`tanh`], in the widest vectors
/// the CPU has.
pub fn tanh_in_place(values: &mut [f32]) {
    super::kernels::widest_simd(
        #[inline(always)]
        || {
            for v in values.iter_mut() {
                *v = tanh(*v);
            }
        },
    );
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
