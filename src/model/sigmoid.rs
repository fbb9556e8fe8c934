//! The logistic sigmoid `1 / (1 + e^-x)` with the bits of its scalar form
//! over glibc's `expf`, in a form that vectorizes.
//!
//! The recurrent cells' gates called `f32::exp` per element, glibc's
//! `expf`: 8 % of an LSTM training step in a profile. On a CPU with FMA
//! glibc runs its FMA variant, which works in doubles: `x * 32 / ln 2 =
//! k + r` rounded to an integer `k` by adding 1.5 * 2^52 (fused, as is
//! the remainder `r`), `2^(k / 32)` from a table of 32 values and the
//! exponent bits, and a cubic in `r` through fused multiply-adds.
//! [`sigmoid`] is that computation step for step (read from the machine
//! code of Debian's glibc 2.36 libm), with the table built from `exp2` and
//! every branch computed and selected, so every result has glibc's bits;
//! on a CPU without FMA, where glibc would pick its other variant, ours
//! keeps these bits (its `mul_add`s become library calls there).
//! `every_float_...` in the tests compares it with the scalar form over
//! every 31st float; the whole range, in both denormal modes, with
//! `cargo test --lib every_float -- --ignored`.

use std::sync::LazyLock;

/// 32 / ln 2.
const INV_LN2_32: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// glibc's cubic for `2^(r / 32)`: `(C[0] r + C[1]) r^2 + C[2] r + 1`.
const C: [f64; 3] = [
    f64::from_bits(0x3ebc_6af8_4b91_2394),
    f64::from_bits(0x3f2e_bfce_50fa_c4f3),
    f64::from_bits(0x3f96_2e42_ff0c_52d6),
];
/// Above this `e^x` overflows a float (glibc returns infinity).
const OVERFLOW: f32 = f32::from_bits(0x42b1_7217);
/// Below this `e^x` is far below the precision of `1 + e^x`; glibc's own
/// special cases start at `|x| >= 88`.
const NEGLIGIBLE: f32 = -88.0;

/// `2^(i / 32)`'s bits minus `i << 47`, so that adding `k << 47` for any
/// `k` with `k % 32 == i` gives `2^(k / 32)`.
static TABLE: LazyLock<[u64; 32]> =
    LazyLock::new(|| std::array::from_fn(|i| (i as f64 / 32.0).exp2().to_bits().wrapping_sub((i as u64) << 47)));

/// `1 / (1 + e^-x)` with the bits of `1.0 / (1.0 + (-x).exp())` on glibc
/// 2.36's `expf` (its FMA variant), without a call; `table` is [`TABLE`].
#[inline(always)]
fn sigmoid(x: f32, table: &[u64; 32]) -> f32 {
    let y = -x;
    let yd = f64::from(y);
    let kd = INV_LN2_32.mul_add(yd, SHIFT);
    let ki = kd.to_bits();
    let kd = kd - SHIFT;
    let r = INV_LN2_32.mul_add(yd, -kd);
    let scale = f64::from_bits(table[(ki & 31) as usize].wrapping_add(ki << 47));
    let z = r.mul_add(C[0], C[1]);
    let r2 = r * r;
    let p = r.mul_add(C[2], 1.0);
    let e = (r2.mul_add(z, p) * scale) as f32;
    let e = if y > OVERFLOW {
        f32::INFINITY
    } else if y < NEGLIGIBLE {
        0.0
    } else {
        e
    };
    1.0 / (1.0 + e)
}

/// Every value of `values` replaced by its [`sigmoid`], 16 at a time where
/// the CPU has AVX-512F.
pub fn sigmoid_in_place(values: &mut [f32]) {
    let table = &*TABLE;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { sigmoid_avx512(values, table) };
    }
    super::kernels::widest_simd(
        #[inline(always)]
        || {
            for v in values.iter_mut() {
                *v = sigmoid(*v, table);
            }
        },
    );
}

/// [`sigmoid_in_place`] in AVX-512 registers: the same operations on 8
/// doubles at a time, the table read with two-source permutes (LLVM kept
/// the loop scalar rather than gather from it).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sigmoid_avx512(values: &mut [f32], table: &[u64; 32]) {
    use std::arch::x86_64::*;
    // SAFETY: the table's four 64-byte quarters are within it.
    let quarter = |q: usize| unsafe { _mm512_maskz_loadu_epi64(!0, table.as_ptr().add(8 * q).cast()) };
    let quarters = [quarter(0), quarter(1), quarter(2), quarter(3)];
    let half = |yd: __m512d| {
        let kd = _mm512_fmadd_pd(_mm512_set1_pd(INV_LN2_32), yd, _mm512_set1_pd(SHIFT));
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, _mm512_set1_pd(SHIFT));
        let r = _mm512_fmsub_pd(_mm512_set1_pd(INV_LN2_32), yd, kd);
        let low = _mm512_permutex2var_epi64(quarters[0], ki, quarters[1]);
        let high = _mm512_permutex2var_epi64(quarters[2], ki, quarters[3]);
        let from_high = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
        let entry = _mm512_mask_blend_epi64(from_high, low, high);
        let scale = _mm512_castsi512_pd(_mm512_add_epi64(entry, _mm512_slli_epi64::<47>(ki)));
        let z = _mm512_fmadd_pd(r, _mm512_set1_pd(C[0]), _mm512_set1_pd(C[1]));
        let r2 = _mm512_mul_pd(r, r);
        let p = _mm512_fmadd_pd(r, _mm512_set1_pd(C[2]), _mm512_set1_pd(1.0));
        _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_fmadd_pd(r2, z, p), scale))
    };
    for chunk in values.chunks_mut(16) {
        let mask: __mmask16 = if chunk.len() == 16 { !0 } else { (1 << chunk.len()) - 1 };
        // SAFETY: the mask covers `chunk` only.
        let x = unsafe { _mm512_maskz_loadu_ps(mask, chunk.as_ptr()) };
        let y = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
        let low = _mm512_castps512_ps256(y);
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(y)));
        let e_low = half(_mm512_cvtps_pd(low));
        let e_high = half(_mm512_cvtps_pd(upper));
        let e = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(e_low)),
            _mm256_castps_pd(e_high),
        ));
        let e = _mm512_mask_mov_ps(
            e,
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm512_set1_ps(OVERFLOW)),
            _mm512_set1_ps(f32::INFINITY),
        );
        let e = _mm512_mask_mov_ps(
            e,
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, _mm512_set1_ps(NEGLIGIBLE)),
            _mm512_setzero_ps(),
        );
        let one = _mm512_set1_ps(1.0);
        // SAFETY: as the load.
        unsafe { _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, _mm512_div_ps(one, _mm512_add_ps(one, e))) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::assert_every_float_matches;

    /// Compares [`sigmoid_in_place`], and the portable [`sigmoid`] the CPUs
    /// without AVX-512F run, with the scalar form on every `step`-th bit
    /// pattern, with denormals kept and flushed.
    fn compare_every(step: usize) {
        let portable = |values: &mut [f32]| values.iter_mut().for_each(|v| *v = sigmoid(*v, &TABLE));
        assert_every_float_matches(
            step,
            "sigmoid",
            &[("vectors", &sigmoid_in_place), ("portable", &portable)],
            |x| 1.0 / (1.0 + (-x).exp()),
        );
    }

    #[test]
    fn every_31st_float_has_the_bits_of_the_scalar_form_over_glibcs_expf() {
        compare_every(31);
    }

    #[test]
    fn slices_of_every_length_up_to_three_vectors_match_too() {
        for len in 0..48 {
            let inputs: Vec<f32> = (0..len).map(|i| (i as f32 - 20.0) * 0.37).collect();
            let mut ours = inputs.clone();
            sigmoid_in_place(&mut ours);
            let expected: Vec<f32> = inputs.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
            assert_eq!(ours, expected, "{len} values");
        }
    }

    #[test]
    #[ignore = "every float, twice: minutes"]
    fn every_float_has_the_bits_of_the_scalar_form_over_glibcs_expf() {
        compare_every(1);
    }
}
